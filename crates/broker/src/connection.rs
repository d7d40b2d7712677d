//! One client connection: read a frame, parse the header, answer, in order (Kafka's
//! ordering guarantee; a client may pipeline requests and gets the answers in the order it
//! sent them). Any malformed input ends this connection and nothing else.

use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use sluice_protocol::response::encode_response;
use sluice_protocol::{
    parse_request, read_frame, Chunk, ChunkWriter, RequestFrame, SupportedApis, WriteStats,
};
use tokio::net::TcpStream;

use crate::listener::ListenerConfig;

pub struct ConnectionContext {
    pub config: ListenerConfig,
    pub apis: SupportedApis,
    pub stats: Arc<WriteStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] sluice_protocol::FrameError),
    #[error(transparent)]
    Request(#[from] sluice_protocol::RequestError),
    #[error("unsupported {api_key:?} version {api_version}")]
    UnsupportedVersion { api_key: ApiKey, api_version: i16 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn serve_connection(
    mut stream: TcpStream,
    context: &ConnectionContext,
) -> Result<(), ConnectionError> {
    let mut writer = ChunkWriter::new(context.config.use_sendfile);
    loop {
        let Some(frame) = read_frame(&mut stream, context.config.socket_request_max_bytes).await?
        else {
            return Ok(());
        };
        let request = parse_request(frame)?;
        let chunks = handle(&request, context)?;
        writer.write(&mut stream, &chunks, &context.stats).await?;
    }
}

fn handle(
    request: &RequestFrame,
    context: &ConnectionContext,
) -> Result<Vec<Chunk>, ConnectionError> {
    let apis = &context.apis;
    if request.api_key == ApiKey::ApiVersions {
        if !apis.is_supported(ApiKey::ApiVersions, request.api_version) {
            return Ok(vec![Chunk::Bytes(
                apis.unsupported_api_versions_frame(request.correlation_id),
            )]);
        }
        // the ApiVersions response header is always v0, whatever the request's
        let body = apis.response();
        let bytes = encode_response(request.correlation_id, 0, &body, request.api_version)?;
        return Ok(vec![Chunk::Bytes(bytes)]);
    }
    // Kafka closes the connection on a version (or API) it does not serve
    Err(ConnectionError::UnsupportedVersion {
        api_key: request.api_key,
        api_version: request.api_version,
    })
}
