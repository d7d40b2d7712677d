//! A request frame split into its header and body. The header layout depends on the API
//! and version (v0: key, version, correlation id; v1: + client id; v2: + tagged fields);
//! the body stays as bytes for the handler to decode at the version it supports.
//!
//! The first 8 bytes (api key, api version, correlation id) are read before anything can
//! fail on the rest, so even a request we cannot decode gets an answer with its
//! correlation id where Kafka would answer (ApiVersions' UNSUPPORTED_VERSION fallback).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

#[derive(Debug, Clone)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    /// The request header version this API and version use (0, 1 or 2).
    pub header_version: i16,
    /// The request body, undecoded.
    pub body: Bytes,
    /// The client's address, when the connection knows it (Kafka shows it as a group
    /// member's host).
    pub peer: Option<std::net::SocketAddr>,
    /// The name of the listener the request arrived on (`PLAINTEXT`, `EXTERNAL`, ...), when
    /// the broker has several: Metadata answers with that listener's addresses.
    pub listener: Option<std::sync::Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request of {len} bytes is shorter than a request header")]
    TooShort { len: usize },
    #[error("unknown api key {api_key}")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("malformed request header: {reason}")]
    BadHeader { correlation_id: i32, reason: String },
}

const FIXED_HEADER_BYTES: usize = 8;

/// Splits a frame (as returned by `read_frame`) into header and body.
pub fn parse_request(frame: Bytes) -> Result<RequestFrame, RequestError> {
    if frame.len() < FIXED_HEADER_BYTES {
        return Err(RequestError::TooShort { len: frame.len() });
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(api_key_raw).map_err(|()| RequestError::UnknownApiKey {
        api_key: api_key_raw,
        correlation_id,
    })?;
    let header_version = api_key.request_header_version(api_version);
    let mut buf = frame;
    let client_id = if header_version == 0 {
        buf.advance(FIXED_HEADER_BYTES);
        None
    } else {
        let header = RequestHeader::decode(&mut buf, header_version).map_err(|e| {
            RequestError::BadHeader {
                correlation_id,
                reason: e.to_string(),
            }
        })?;
        header.client_id.map(|s| s.to_string())
    };
    Ok(RequestFrame {
        api_key,
        api_version,
        correlation_id,
        client_id,
        header_version,
        body: buf,
        peer: None,
        listener: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn header_bytes(api_key: ApiKey, version: i16, client_id: &str) -> Vec<u8> {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
        let mut out = Vec::new();
        header
            .encode(&mut out, api_key.request_header_version(version))
            .unwrap();
        out
    }

    #[test]
    fn headers_of_both_layouts_split_off_the_body() {
        // Metadata v1 uses header v1; Metadata v9+ is flexible (header v2)
        for version in [1, 12] {
            let mut frame = header_bytes(ApiKey::Metadata, version, "kcat");
            frame.extend_from_slice(b"BODY");
            let r = parse_request(Bytes::from(frame)).unwrap();
            assert_eq!(r.api_key, ApiKey::Metadata);
            assert_eq!(r.api_version, version);
            assert_eq!(r.correlation_id, 42);
            assert_eq!(r.client_id.as_deref(), Some("kcat"));
            assert_eq!(&r.body[..], b"BODY");
            assert_eq!(r.header_version, if version >= 9 { 2 } else { 1 });
        }
    }

    #[test]
    fn bad_headers_are_errors_with_the_correlation_id() {
        assert!(matches!(
            parse_request(Bytes::from_static(&[0, 3, 0])),
            Err(RequestError::TooShort { len: 3 })
        ));
        let unknown = [0x7f, 0x7f, 0, 0, 0, 0, 0, 9];
        assert!(matches!(
            parse_request(Bytes::copy_from_slice(&unknown)),
            Err(RequestError::UnknownApiKey {
                correlation_id: 9,
                ..
            })
        ));
        // Metadata v1 header claiming a 100-byte client id that is not there
        let mut cut = vec![0, 3, 0, 1, 0, 0, 0, 7, 0, 100, b'k'];
        cut.truncate(11);
        assert!(matches!(
            parse_request(Bytes::from(cut)),
            Err(RequestError::BadHeader {
                correlation_id: 7,
                ..
            })
        ));
    }

    #[test]
    fn no_input_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let _ = parse_request(Bytes::from(bytes));
            }
        }
    }
}
