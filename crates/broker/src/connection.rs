//! One client connection: read a frame, parse the header, answer, in order (Kafka's
//! ordering guarantee; a client may pipeline requests and gets the answers in the order it
//! sent them). Any malformed input ends this connection and nothing else.
//!
//! Produce requests are handled in two stages, as Redpanda does: each is appended as soon
//! as it is read, in the order read ([`handlers::append_produce`]), and its answer — for
//! acks=all, once the followers have the records — is written after every earlier answer.
//! So a producer's next request is appended (and replicated) while the one before it waits
//! for its followers, instead of waiting in the socket behind it; Kafka reads nothing more
//! from a connection until its request is answered. Every other request is handled alone,
//! as before: once every earlier answer is written, and nothing is read behind it until it
//! is answered. At most [`MAX_IN_FLIGHT_PER_CONNECTION`] answers are outstanding.
//!
//! Invariants: answers are written in request order; produce appends happen in request
//! order; a request other than Produce sees the effects of every request before it
//! answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use kafka_protocol::messages::ApiKey;
use sluice_protocol::response::encode_response;
use sluice_protocol::{
    parse_request, read_frame, Chunk, ChunkWriter, RequestFrame, SupportedApis, WriteStats,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::broker::Broker;
use crate::handlers;
use crate::listener::ListenerConfig;
use crate::request_metrics::{with_remote_wait, RequestTimes};

/// Answers a connection may owe at once (produce requests appended, not yet answered).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 16;

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

/// A request on its way to being answered.
struct Answered {
    api_key: ApiKey,
    answer: Result<handlers::Answer, ConnectionError>,
    received: Instant,
    /// The handler started (after the request queue).
    started: Instant,
    /// The answer was complete.
    completed: Instant,
    /// Of `started..completed`, the time spent waiting on others.
    remote: Duration,
    /// Its pipeline slots, given back once it is written.
    _slots: OwnedSemaphorePermit,
}

impl Answered {
    /// Completed now: `handled` is the handler's answer and its remote wait.
    fn now(
        api_key: ApiKey,
        handled: (Result<handlers::Answer, ConnectionError>, Duration),
        received: Instant,
        started: Instant,
        slots: OwnedSemaphorePermit,
    ) -> Self {
        let (answer, remote) = handled;
        Answered {
            api_key,
            answer,
            received,
            started,
            completed: Instant::now(),
            remote,
            _slots: slots,
        }
    }
}

type Pending<'a> = Pin<Box<dyn Future<Output = Answered> + Send + 'a>>;

pub async fn serve_connection(
    stream: TcpStream,
    context: &ConnectionContext,
) -> Result<(), ConnectionError> {
    let peer = stream.peer_addr().ok();
    let (reader, writer) = stream.into_split();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let (pending_tx, pending_rx) = mpsc::unbounded_channel();
    let read = read_requests(reader, peer, context, slots, pending_tx);
    let write = write_answers(writer, context, pending_rx);
    tokio::pin!(read, write);
    tokio::select! {
        // the reader is done (the client closed, or a request ended the connection): the
        // answers owed so far are still written
        read_result = &mut read => {
            let write_result = write.await;
            read_result.and(write_result)
        }
        // the writer stops early only on an error (the reader holds the queue open)
        write_result = &mut write => write_result,
    }
}

async fn read_requests<'a>(
    mut reader: OwnedReadHalf,
    peer: Option<std::net::SocketAddr>,
    context: &'a ConnectionContext,
    slots: Arc<Semaphore>,
    pending: mpsc::UnboundedSender<Pending<'a>>,
) -> Result<(), ConnectionError> {
    let all_slots = MAX_IN_FLIGHT_PER_CONNECTION as u32;
    loop {
        let Some(frame) = read_frame(&mut reader, context.config.socket_request_max_bytes).await?
        else {
            return Ok(());
        };
        let received = Instant::now();
        let mut request = parse_request(frame)?;
        request.peer = peer;
        request.listener = context.config.name.clone();
        let api_key = request.api_key;
        let next: Pending<'a> = match pipelined_produce(&request, context) {
            Some(broker) => {
                let slot = Arc::clone(&slots)
                    .acquire_many_owned(1)
                    .await
                    .expect("the semaphore is never closed");
                broker.metadata.wait_caught_up().await;
                let started = Instant::now();
                let appended = handlers::append_produce(&request, broker)?;
                Box::pin(async move {
                    let handled = with_remote_wait(appended.answer(&request, broker)).await;
                    Answered::now(api_key, handled, received, started, slot)
                })
            }
            None => {
                // alone: every earlier answer written, nothing read behind it
                let all = Arc::clone(&slots)
                    .acquire_many_owned(all_slots)
                    .await
                    .expect("the semaphore is never closed");
                let started = Instant::now();
                let handled = with_remote_wait(handle(&request, context)).await;
                let answered = Answered::now(api_key, handled, received, started, all);
                if answered.answer.is_err() {
                    // the error ends the connection once the answers before it are out
                    let _ = pending.send(Box::pin(std::future::ready(answered)));
                    return Ok(());
                }
                Box::pin(std::future::ready(answered))
            }
        };
        if pending.send(next).is_err() {
            return Ok(()); // the writer failed, and says why
        }
    }
}

/// The broker, if `request` is a produce the connection pipelines.
fn pipelined_produce<'a>(
    request: &RequestFrame,
    context: &'a ConnectionContext,
) -> Option<&'a Broker> {
    let broker = context.broker.as_deref()?;
    (request.api_key == ApiKey::Produce
        && context
            .apis
            .is_supported(ApiKey::Produce, request.api_version))
    .then_some(broker)
}

async fn write_answers(
    mut stream: OwnedWriteHalf,
    context: &ConnectionContext,
    mut pending: mpsc::UnboundedReceiver<Pending<'_>>,
) -> Result<(), ConnectionError> {
    let mut writer = ChunkWriter::new(context.config.use_sendfile);
    // every owed answer makes progress at once (each acks=all produce watches its own
    // partitions); they come out in order
    let mut owed = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            Some(answered) = owed.next(), if !owed.is_empty() => {
                let answered: Answered = answered;
                let write_started = Instant::now();
                if let Some(chunks) = answered.answer? {
                    writer.write(&mut stream, &chunks, &context.stats).await?;
                }
                if let Some(broker) = &context.broker {
                    let written = Instant::now();
                    let handled = answered.completed - answered.started;
                    let remote = answered.remote.min(handled);
                    let times = RequestTimes {
                        request_queue: answered.started - answered.received,
                        local: handled - remote,
                        remote,
                        response_queue: write_started - answered.completed,
                        send: written - write_started,
                    };
                    broker.metrics.record(&format!("{:?}", answered.api_key), &times);
                }
            }
            next = pending.recv(), if reading => match next {
                Some(next) => owed.push_back(next),
                None => reading = false,
            },
            else => return Ok(()),
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
            return handlers::handle(request, broker).await;
        }
    }
    // Kafka closes the connection on a version (or API) it does not serve
    Err(ConnectionError::UnsupportedVersion {
        api_key: request.api_key,
        api_version: request.api_version,
    })
}
