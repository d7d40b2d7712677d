//! What the fuzz target (`fuzz/`, run with `cargo fuzz run request_decoder` on a nightly
//! toolchain) drives, and what a stable proptest runs on random input: arbitrary bytes are
//! split into frames, each frame's request header is parsed, and the body is decoded for
//! every API the broker serves, at the version the header names. Nothing may panic.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::{parse_request, read_frame};

fn decode_as<T: Decodable>(mut body: Bytes, version: i16) -> bool {
    T::decode(&mut body, version).is_ok()
}

/// Decodes a request body as the broker would; whether it decoded.
pub fn decode_body(api_key: ApiKey, version: i16, body: Bytes) -> bool {
    match api_key {
        ApiKey::Produce => decode_as::<ProduceRequest>(body, version),
        ApiKey::Fetch => decode_as::<FetchRequest>(body, version),
        ApiKey::ListOffsets => decode_as::<ListOffsetsRequest>(body, version),
        ApiKey::Metadata => decode_as::<MetadataRequest>(body, version),
        ApiKey::ApiVersions => decode_as::<ApiVersionsRequest>(body, version),
        ApiKey::CreateTopics => decode_as::<CreateTopicsRequest>(body, version),
        ApiKey::DeleteTopics => decode_as::<DeleteTopicsRequest>(body, version),
        ApiKey::CreatePartitions => decode_as::<CreatePartitionsRequest>(body, version),
        ApiKey::DescribeConfigs => decode_as::<DescribeConfigsRequest>(body, version),
        ApiKey::DescribeCluster => decode_as::<DescribeClusterRequest>(body, version),
        ApiKey::FindCoordinator => decode_as::<FindCoordinatorRequest>(body, version),
        ApiKey::OffsetForLeaderEpoch => decode_as::<OffsetForLeaderEpochRequest>(body, version),
        _ => false,
    }
}

/// Splits `data` into frames (at most `max_frame_bytes` each) and decodes every request in
/// them; returns how many bodies decoded.
pub fn decode_frames(data: &[u8], max_frame_bytes: usize) -> usize {
    let mut reader = data;
    let mut decoded = 0;
    loop {
        let frame = {
            let future = pin!(read_frame(&mut reader, max_frame_bytes));
            // reading from a slice never waits: one poll finishes it
            match poll_once(future) {
                Some(Ok(Some(frame))) => frame,
                _ => return decoded,
            }
        };
        let Ok(request) = parse_request(frame) else {
            continue;
        };
        if decode_body(request.api_key, request.api_version, request.body) {
            decoded += 1;
        }
    }
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    match future.poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn frame(api_key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("f")))
            .encode(&mut out, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        let mut framed = (out.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        framed
    }

    #[test]
    fn a_huge_array_count_is_an_error_not_an_abort() {
        // found by the fuzz test: kafka-protocol reserved capacity for the claimed count
        // before reading anything, and i32::MAX elements aborted the process (patched in
        // vendor/kafka-protocol)
        for (api_key, version) in [
            (ApiKey::DescribeConfigs, 1),
            (ApiKey::Metadata, 1),
            (ApiKey::Metadata, 12),
            (ApiKey::CreateTopics, 7),
        ] {
            let mut body = i32::MAX.to_be_bytes().to_vec();
            body.extend_from_slice(&[0xff; 8]);
            assert!(!decode_body(api_key, version, Bytes::from(body)));
        }
    }

    #[test]
    fn well_formed_requests_decode_and_garbage_does_not_panic() {
        let mut data = frame(ApiKey::Metadata, 12, &MetadataRequest::default());
        data.extend(frame(ApiKey::Fetch, 12, &FetchRequest::default()));
        data.extend(frame(ApiKey::Produce, 9, &ProduceRequest::default()));
        assert_eq!(decode_frames(&data, 1 << 20), 3);
        // every prefix and every single-byte corruption: no panic
        for cut in 0..data.len() {
            decode_frames(&data[..cut], 1 << 20);
        }
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x5a;
            decode_frames(&bad, 1 << 20);
        }
    }
}
