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

use crate::broker::Broker;
use crate::listener::ListenerConfig;

pub struct ConnectionContext {
    pub config: ListenerConfig,
    pub apis: SupportedApis,
    pub stats: Arc<WriteStats>,
    /// None: a bare listener that answers ApiVersions only.
    pub broker: Option<Arc<Broker>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] sluice_protocol::FrameError),
    #[error(transparent)]
    Request(#[from] sluice_protocol::RequestError),
    #[error("unsupported {api_key:?} version {api_version}")]
    UnsupportedVersion { api_key: ApiKey, api_version: i16 },
    #[error("malformed {api_key:?} request: {reason}")]
    InvalidRequest { api_key: ApiKey, reason: String },
    #[error("acks=0 produce failed with error {0}: closing the connection so the client notices")]
    AcksZeroFailed(i16),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn serve_connection(
    mut stream: TcpStream,
    context: &ConnectionContext,
) -> Result<(), ConnectionError> {
    let mut writer = ChunkWriter::new(context.config.use_sendfile);
    let peer = stream.peer_addr().ok();
    loop {
        let Some(frame) = read_frame(&mut stream, context.config.socket_request_max_bytes).await?
        else {
            return Ok(());
        };
        let received = std::time::Instant::now();
        let mut request = parse_request(frame)?;
        request.peer = peer;
        request.listener = context.config.name.clone();
        let (answer, remote) =
            crate::request_metrics::with_remote_wait(handle(&request, context)).await;
        let handled = received.elapsed();
        if let Some(chunks) = answer? {
            writer.write(&mut stream, &chunks, &context.stats).await?;
        }
        if let Some(broker) = &context.broker {
            let send = received.elapsed().saturating_sub(handled);
            let api = format!("{:?}", request.api_key);
            broker.metrics.record(&api, handled, remote, send);
        }
    }
}

async fn handle(
    request: &RequestFrame,
    context: &ConnectionContext,
) -> Result<Option<Vec<Chunk>>, ConnectionError> {
    let apis = &context.apis;
    if request.api_key == ApiKey::ApiVersions {
        if !apis.is_supported(ApiKey::ApiVersions, request.api_version) {
            return Ok(Some(vec![Chunk::Bytes(
                apis.unsupported_api_versions_frame(request.correlation_id),
            )]));
        }
        // the ApiVersions response header is always v0, whatever the request's
        let body = apis.response();
        let bytes = encode_response(request.correlation_id, 0, &body, request.api_version)?;
        return Ok(Some(vec![Chunk::Bytes(bytes)]));
    }
    if let Some(broker) = &context.broker {
        if apis.is_supported(request.api_key, request.api_version) {
            // as Kafka's broker, nothing but ApiVersions is answered before the metadata
            // image has caught up: a restarting broker would otherwise answer Metadata
            // without the topics it has not replayed yet
            broker.metadata.wait_caught_up().await;
            return crate::handlers::handle(request, broker).await;
        }
    }
    // Kafka closes the connection on a version (or API) it does not serve
    Err(ConnectionError::UnsupportedVersion {
        api_key: request.api_key,
        api_version: request.api_version,
    })
}
