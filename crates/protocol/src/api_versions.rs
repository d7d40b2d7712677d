//! The API versions Sluice speaks, advertised as Apache Kafka 3.9 advertises them, cut to
//! what the `kafka-protocol` crate decodes (research and sources:
//! docs/kafka-api-versions.md), and the ApiVersions answers, including the fallback for a
//! client that asks with a newer ApiVersions version than we speak.
//!
//! Only the APIs the broker implements are advertised (`implemented`): a client that sees
//! an API will call it.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// One API: the range advertised and the range actually decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub api_key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
    /// The lowest version the broker decodes. Below `min_version` only for Produce:
    /// Kafka advertises Produce from v0 (librdkafka before 2.11.1 stops compressing when
    /// it does not see v0) but closes connections that use v0-2, and so do we.
    pub min_decoded_version: i16,
}

const fn range(api_key: ApiKey, min_version: i16, max_version: i16) -> ApiRange {
    ApiRange {
        api_key,
        min_version,
        max_version,
        min_decoded_version: min_version,
    }
}

/// Kafka 3.9's ranges ∩ the crate's decoders.
pub const KAFKA_3_9_RANGES: &[ApiRange] = &[
    ApiRange {
        api_key: ApiKey::Produce,
        min_version: 0,
        max_version: 11,
        min_decoded_version: 3,
    },
    range(ApiKey::Fetch, 4, 17),
    range(ApiKey::ListOffsets, 1, 9),
    range(ApiKey::Metadata, 0, 12),
    range(ApiKey::OffsetCommit, 2, 9),
    range(ApiKey::OffsetFetch, 1, 9),
    range(ApiKey::FindCoordinator, 0, 6),
    range(ApiKey::JoinGroup, 0, 9),
    range(ApiKey::Heartbeat, 0, 4),
    range(ApiKey::LeaveGroup, 0, 5),
    range(ApiKey::SyncGroup, 0, 5),
    range(ApiKey::DescribeGroups, 0, 5),
    range(ApiKey::ListGroups, 0, 5),
    range(ApiKey::DeleteGroups, 0, 2),
    range(ApiKey::OffsetDelete, 0, 0),
    range(ApiKey::ApiVersions, 0, 4),
    range(ApiKey::CreateTopics, 2, 7),
    range(ApiKey::DeleteTopics, 1, 6),
    range(ApiKey::InitProducerId, 0, 5),
    range(ApiKey::OffsetForLeaderEpoch, 2, 4),
    range(ApiKey::DescribeConfigs, 1, 4),
    range(ApiKey::CreatePartitions, 0, 3),
    range(ApiKey::DescribeCluster, 0, 2),
    range(ApiKey::DescribeLogDirs, 1, 4),
    range(ApiKey::ElectLeaders, 0, 2),
];

/// UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The versions this broker speaks.
#[derive(Debug, Clone)]
pub struct SupportedApis {
    ranges: Vec<ApiRange>,
}

impl SupportedApis {
    /// The Kafka 3.9 ranges of the `implemented` APIs (ApiVersions is always included).
    pub fn new(implemented: &[ApiKey]) -> Self {
        SupportedApis {
            ranges: KAFKA_3_9_RANGES
                .iter()
                .copied()
                .filter(|r| r.api_key == ApiKey::ApiVersions || implemented.contains(&r.api_key))
                .collect(),
        }
    }

    pub fn range(&self, api_key: ApiKey) -> Option<ApiRange> {
        self.ranges.iter().copied().find(|r| r.api_key == api_key)
    }

    /// Whether a request of this API and version can be decoded and served.
    pub fn is_supported(&self, api_key: ApiKey, version: i16) -> bool {
        self.range(api_key)
            .is_some_and(|r| r.min_decoded_version <= version && version <= r.max_version)
    }

    /// The body of a successful ApiVersions response (tagged feature fields left at their
    /// defaults, so none is written: librdkafka 2.0.2 mis-skips more than one tag).
    pub fn response(&self) -> ApiVersionsResponse {
        ApiVersionsResponse::default()
            .with_error_code(0)
            .with_api_keys(
                self.ranges
                    .iter()
                    .map(|r| {
                        ApiVersion::default()
                            .with_api_key(r.api_key as i16)
                            .with_min_version(r.min_version)
                            .with_max_version(r.max_version)
                    })
                    .collect(),
            )
    }

    /// Kafka's answer to an ApiVersions request newer than we speak: response header v0,
    /// body in the v0 layout (error code, then the ApiVersions range only), whole frame.
    pub fn unsupported_api_versions_frame(&self, correlation_id: i32) -> Bytes {
        let r = self
            .range(ApiKey::ApiVersions)
            .expect("ApiVersions is always supported");
        let mut out = BytesMut::with_capacity(20);
        out.put_i32(16); // correlation id 4 + error 2 + count 4 + one entry 6
        out.put_i32(correlation_id);
        out.put_i16(UNSUPPORTED_VERSION);
        out.put_i32(1);
        out.put_i16(ApiKey::ApiVersions as i16);
        out.put_i16(r.min_version);
        out.put_i16(r.max_version);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::{Decodable, Encodable};

    #[test]
    fn ranges_stay_inside_what_the_crate_decodes() {
        for r in KAFKA_3_9_RANGES {
            let crate_range = r.api_key.valid_versions();
            assert!(r.min_decoded_version >= crate_range.min, "{:?}", r.api_key);
            assert!(r.max_version <= crate_range.max, "{:?}", r.api_key);
            assert!(r.min_version <= r.min_decoded_version);
        }
    }

    #[test]
    fn only_implemented_apis_are_advertised() {
        let apis = SupportedApis::new(&[ApiKey::Metadata, ApiKey::Produce]);
        let keys: Vec<i16> = apis.response().api_keys.iter().map(|k| k.api_key).collect();
        assert_eq!(keys, vec![0, 3, 18]);
        assert!(apis.is_supported(ApiKey::Produce, 3));
        assert!(
            !apis.is_supported(ApiKey::Produce, 2),
            "advertised but refused"
        );
        assert!(!apis.is_supported(ApiKey::Produce, 12));
        assert!(!apis.is_supported(ApiKey::Fetch, 10));
    }

    #[test]
    fn the_success_response_writes_no_tagged_fields() {
        let body = SupportedApis::new(&[ApiKey::Metadata]).response();
        let mut v3 = Vec::new();
        body.encode(&mut v3, 3).unwrap();
        // error 2 + compact array len 1 + 2 entries * (6 + empty tags 1) + throttle 4 +
        // empty tag buffer 1
        assert_eq!(v3.len(), 2 + 1 + 2 * 7 + 4 + 1);
        assert_eq!(*v3.last().unwrap(), 0, "no tagged fields");
    }

    #[test]
    fn the_fallback_is_kafkas_v0_layout() {
        let frame = SupportedApis::new(&[]).unsupported_api_versions_frame(99);
        assert_eq!(
            &frame[..],
            &[0, 0, 0, 16, 0, 0, 0, 99, 0, 35, 0, 0, 0, 1, 0, 18, 0, 0, 0, 4]
        );
        // and a v0 decoder reads it
        let mut body = frame.slice(8..);
        let decoded = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.error_code, 35);
        assert_eq!(decoded.api_keys.len(), 1);
    }
}
