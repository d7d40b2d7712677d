//! The client side of one Kafka connection: encode a request with its header, send it,
//! read and decode the response (checked against the correlation id). Used by brokers
//! fetching from leaders and by the CLI. One request at a time; every wait is bounded.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: no answer to {what} within {timeout:?}")]
    Timeout {
        address: String,
        what: String,
        timeout: Duration,
    },
    #[error("{address}: {reason}")]
    Protocol { address: String, reason: String },
}

/// Largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

pub struct ClientConnection {
    address: String,
    stream: TcpStream,
    client_id: &'static str,
    next_correlation_id: i32,
    timeout: Duration,
}

impl ClientConnection {
    pub async fn connect(
        address: &str,
        client_id: &'static str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout {
                address: address.to_string(),
                what: "connect".to_string(),
                timeout,
            })?
            .map_err(|source| ClientError::Io {
                address: address.to_string(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        Ok(ClientConnection {
            address: address.to_string(),
            stream,
            client_id,
            next_correlation_id: 1,
            timeout,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// Sends a request and decodes its response; with `expect_response` false (acks=0
    /// produce) returns the default value without reading.
    pub async fn send<Req: Encodable, Resp: Decodable + Default>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
        expect_response: bool,
    ) -> Result<Resp, ClientError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request(api_key, version, correlation_id, self.client_id, request)
            .map_err(|e| self.protocol(e))?;
        let timeout = self.timeout;
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(&frame).await?;
            if !expect_response {
                return Ok::<_, std::io::Error>(None);
            }
            read_response_frame(stream).await.map(Some)
        };
        let response = tokio::time::timeout(timeout, io)
            .await
            .map_err(|_| ClientError::Timeout {
                address: self.address.clone(),
                what: format!("{api_key:?}"),
                timeout,
            })?
            .map_err(|source| ClientError::Io {
                address: self.address.clone(),
                source,
            })?;
        let Some(buf) = response else {
            return Ok(Resp::default());
        };
        decode_response(buf, api_key, version, correlation_id).map_err(|e| self.protocol(e))
    }
}

/// One response frame's body (its size read first, at most [`MAX_RESPONSE_BYTES`]).
pub(crate) async fn read_response_frame<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
) -> std::io::Result<Bytes> {
    let size = stream.read_i32().await?;
    if size < 0 || size as usize > MAX_RESPONSE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response size {size}"),
        ));
    }
    match crate::frame::read_exactly(stream, size as usize).await? {
        Ok(body) => Ok(body.freeze()),
        Err(got) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("response cut after {got} of {size} bytes"),
        )),
    }
}

/// A request's frame: size, header (with `correlation_id`), body.
pub(crate) fn encode_request<Req: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
    request: &Req,
) -> Result<BytesMut, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| format!("encoding {api_key:?}: {e}"))?;
    request
        .encode(&mut frame, version)
        .map_err(|e| format!("encoding {api_key:?}: {e}"))?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame)
}

/// A response frame's body (after its size): the header, checked against
/// `correlation_id`, then the whole body decoded.
pub(crate) fn decode_response<Resp: Decodable>(
    mut buf: Bytes,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Result<Resp, String> {
    let header = ResponseHeader::decode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| format!("bad response header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err("a response to another request".into());
    }
    let decoded =
        Resp::decode(&mut buf, version).map_err(|e| format!("bad {api_key:?} response: {e}"))?;
    if buf.has_remaining() {
        return Err(format!(
            "{} unexpected bytes after the {api_key:?} response",
            buf.remaining()
        ));
    }
    Ok(decoded)
}
