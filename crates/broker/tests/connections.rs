//! The broker's listener on a real loopback socket: ApiVersions at every version, the
//! fallback for a newer one, pipelined requests answered in order, and malformed input
//! that closes only the offending connection.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_broker::{BrokerListener, ListenerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> BrokerListener {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    BrokerListener::start(
        listener,
        ListenerConfig {
            socket_request_max_bytes: 1 << 20,
            ..ListenerConfig::default()
        },
    )
    .unwrap()
}

fn api_versions_request(version: i16, correlation_id: i32) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")));
    let mut body = BytesMut::new();
    header
        .encode(
            &mut body,
            ApiKey::ApiVersions.request_header_version(version.min(4)),
        )
        .unwrap();
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("sluice-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    request.encode(&mut body, version.min(4)).unwrap();
    let mut frame = Vec::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame
}

async fn read_response(stream: &mut TcpStream) -> Bytes {
    let size = tokio::time::timeout(WAIT, stream.read_i32())
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; size as usize];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    Bytes::from(body)
}

/// True once the peer has closed the connection (reads EOF or a reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_at_every_version_and_the_fallback() {
    let broker = start().await;
    let mut stream = TcpStream::connect(broker.address()).await.unwrap();
    for version in 0..=4i16 {
        stream
            .write_all(&api_versions_request(version, 100 + version as i32))
            .await
            .unwrap();
        let mut bytes = read_response(&mut stream).await;
        let header = ResponseHeader::decode(&mut bytes, 0).unwrap();
        assert_eq!(header.correlation_id, 100 + version as i32);
        let body = ApiVersionsResponse::decode(&mut bytes, version).unwrap();
        assert_eq!(body.error_code, 0);
        let av = body.api_keys.iter().find(|k| k.api_key == 18).unwrap();
        assert_eq!((av.min_version, av.max_version), (0, 4));
        assert!(
            bytes.is_empty(),
            "v{version}: {} bytes left",
            bytes.remaining()
        );
    }
    // kafka-python 3 style: a version we do not speak gets the v0-layout fallback
    stream
        .write_all(&api_versions_request(7, 555))
        .await
        .unwrap();
    let mut bytes = read_response(&mut stream).await;
    assert_eq!(
        ResponseHeader::decode(&mut bytes, 0)
            .unwrap()
            .correlation_id,
        555
    );
    let body = ApiVersionsResponse::decode(&mut bytes, 0).unwrap();
    assert_eq!(body.error_code, 35);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let broker = start().await;
    let mut stream = TcpStream::connect(broker.address()).await.unwrap();
    let mut all = Vec::new();
    for id in 1..=20 {
        all.extend(api_versions_request((id % 5) as i16, id));
    }
    stream.write_all(&all).await.unwrap();
    for id in 1..=20 {
        let mut bytes = read_response(&mut stream).await;
        assert_eq!(
            ResponseHeader::decode(&mut bytes, 0)
                .unwrap()
                .correlation_id,
            id
        );
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_split_across_writes_is_answered_once_complete() {
    let broker = start().await;
    let mut stream = TcpStream::connect(broker.address()).await.unwrap();
    let request = api_versions_request(3, 9);
    stream
        .write_all(&request[..request.len() - 2])
        .await
        .unwrap();
    // the broker waits for the rest (no answer yet) ...
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
            .await
            .is_err()
    );
    // ... and answers once it arrives
    stream
        .write_all(&request[request.len() - 2..])
        .await
        .unwrap();
    let mut bytes = read_response(&mut stream).await;
    assert_eq!(
        ResponseHeader::decode(&mut bytes, 0)
            .unwrap()
            .correlation_id,
        9
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let broker = start().await;
    let mut healthy = TcpStream::connect(broker.address()).await.unwrap();
    let mut metadata_v1 = Vec::new();
    {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(1)
            .with_correlation_id(1);
        let mut body = BytesMut::new();
        header.encode(&mut body, 1).unwrap();
        metadata_v1.put_i32(body.len() as i32);
        metadata_v1.extend_from_slice(&body);
    }
    let bad_inputs: Vec<Vec<u8>> = vec![
        // a 2 GiB size prefix
        i32::MAX.to_be_bytes().to_vec(),
        // over socket.request.max.bytes (1 MiB here)
        ((1 << 20) + 1i32).to_be_bytes().to_vec(),
        // negative size
        (-5i32).to_be_bytes().to_vec(),
        // a frame too short for a header
        vec![0, 0, 0, 3, 1, 2, 3],
        // an unknown api key
        vec![0, 0, 0, 8, 0x7f, 0x00, 0, 0, 0, 0, 0, 1],
        // an API this build does not serve
        metadata_v1,
        // a header whose client id runs past the frame
        vec![0, 0, 0, 10, 0, 18, 0, 1, 0, 0, 0, 1, 0, 50],
        // random bytes
        (0..200u32).map(|i| (i * 97 % 251) as u8).collect(),
    ];
    for bad in bad_inputs {
        let mut stream = TcpStream::connect(broker.address()).await.unwrap();
        stream.write_all(&bad).await.unwrap();
        // each input is refused on its own (our side stays open)
        assert!(
            closed(&mut stream).await,
            "{bad:?} left the connection open"
        );
        // the healthy connection still works
        healthy
            .write_all(&api_versions_request(3, 7))
            .await
            .unwrap();
        let mut bytes = read_response(&mut healthy).await;
        assert_eq!(
            ResponseHeader::decode(&mut bytes, 0)
                .unwrap()
                .correlation_id,
            7
        );
    }
    broker.shutdown().await;
}
