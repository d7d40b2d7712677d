//! The client side of one Kafka connection with several requests in flight (what a
//! producer's `max.in.flight.requests.per.connection` allows). Requests are written in
//! the order [`PipelinedConnection::send`] is called; a broker answers a connection's
//! requests in the order it read them, so each response belongs to the oldest request
//! still waiting (and its correlation id is checked). A writer task and a reader task own
//! the socket's two halves. The writer also makes the connection, so `send` never waits:
//! requests queued before the connection is up go out once it is.
//!
//! Invariants: every request gets exactly one answer — its response, or an error that
//! says whether the request may have reached the broker ([`SendError::written`]); a
//! request is never written after one written before it failed; after any error (I/O, a
//! response that is not the oldest request's, a request waiting past its timeout) the
//! connection is dead: every request still waiting fails, later sends fail at once, and
//! [`PipelinedConnection::is_closed`] says so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client_connection::{decode_response, encode_request, read_response_frame, ClientError};

/// A failed request, and whether it may have reached the broker (false: never written,
/// so never processed).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    pub error: ClientError,
    pub written: bool,
}

type Answer = Result<Option<Bytes>, SendError>;

/// A request on its way to the writer.
struct Outgoing {
    frame: BytesMut,
    correlation_id: i32,
    /// false: acks=0 produce; answered once written.
    expect_response: bool,
    deadline: Instant,
    what: ApiKey,
    answer: oneshot::Sender<Answer>,
}

/// A written request waiting for its response, in the reader's queue.
struct Waiting {
    correlation_id: i32,
    deadline: Instant,
    what: ApiKey,
    answer: oneshot::Sender<Answer>,
}

pub struct PipelinedConnection {
    address: Arc<str>,
    client_id: &'static str,
    next_correlation_id: i32,
    timeout: Duration,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

impl PipelinedConnection {
    /// Starts connecting to `address` in the background (within `timeout`); each request's
    /// answer is also awaited at most `timeout` from its `send`. Needs a tokio runtime.
    pub fn connect(address: &str, client_id: &'static str, timeout: Duration) -> Self {
        let address: Arc<str> = Arc::from(address);
        let (outgoing, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(address.clone(), timeout, queued));
        PipelinedConnection {
            address,
            client_id,
            next_correlation_id: 1,
            timeout,
            outgoing,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The connection failed (or could not be made): every send fails from now on.
    pub fn is_closed(&self) -> bool {
        self.outgoing.is_closed()
    }

    /// Queues a request behind those sent before it and returns its answer, to await
    /// (dropping it does not take the request back). With `expect_response` false (acks=0
    /// produce) the answer is the default value once the request is written.
    pub fn send<Req: Encodable, Resp: Decodable + Default>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
        expect_response: bool,
    ) -> impl Future<Output = Result<Resp, SendError>> + Send + 'static {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let address = self.address.clone();
        let (answer, answered) = oneshot::channel();
        let queued = encode_request(api_key, version, correlation_id, self.client_id, request)
            .map_err(|reason| SendError {
                error: protocol_error(&address, reason),
                written: false,
            })
            .and_then(|frame| {
                self.outgoing
                    .send(Outgoing {
                        frame,
                        correlation_id,
                        expect_response,
                        deadline: Instant::now() + self.timeout,
                        what: api_key,
                        answer,
                    })
                    .map_err(|_| closed(&address, false))
            });
        async move {
            queued?;
            let body = answered.await.map_err(|_| closed(&address, true))??;
            let Some(body) = body else {
                return Ok(Resp::default());
            };
            decode_response(body, api_key, version, correlation_id).map_err(|reason| SendError {
                error: protocol_error(&address, reason),
                written: true,
            })
        }
    }
}

fn protocol_error(address: &str, reason: String) -> ClientError {
    ClientError::Protocol {
        address: address.to_string(),
        reason,
    }
}

fn closed(address: &str, written: bool) -> SendError {
    SendError {
        error: ClientError::Io {
            address: address.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection closed before the answer",
            ),
        },
        written,
    }
}

fn io_error(address: &str, source: std::io::Error, written: bool) -> SendError {
    SendError {
        error: ClientError::Io {
            address: address.to_string(),
            source,
        },
        written,
    }
}

/// Connects, starts the reader, then writes each queued request in turn. On any failure
/// it closes the queue and fails what is in it (never written).
async fn write_loop(
    address: Arc<str>,
    timeout: Duration,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
) {
    let connected = match tokio::time::timeout(timeout, TcpStream::connect(&*address)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )),
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            let reason = e.to_string();
            fail_queued(&mut queued, |_| {
                io_error(
                    &address,
                    std::io::Error::new(e.kind(), reason.clone()),
                    false,
                )
            });
            return;
        }
    };
    stream.set_nodelay(true).ok();
    let (reader, mut writer) = stream.into_split();
    let (waiting_tx, waiting_rx) = mpsc::unbounded_channel();
    tokio::spawn(read_loop(address.clone(), timeout, reader, waiting_rx));
    write_requests(&address, timeout, &mut queued, &mut writer, &waiting_tx).await;
    fail_queued(&mut queued, |_| closed(&address, false));
}

/// Writes requests until the queue ends or the connection fails.
async fn write_requests(
    address: &str,
    timeout: Duration,
    queued: &mut mpsc::UnboundedReceiver<Outgoing>,
    writer: &mut OwnedWriteHalf,
    waiting: &mpsc::UnboundedSender<Waiting>,
) {
    loop {
        let next = tokio::select! {
            next = queued.recv() => next,
            // the reader failed: stop taking requests
            _ = waiting.closed() => None,
        };
        let Some(out) = next else { return };
        // the reader learns of a request before it is written, so the response can
        // never come first
        let answer = if out.expect_response {
            let waits = Waiting {
                correlation_id: out.correlation_id,
                deadline: out.deadline,
                what: out.what,
                answer: out.answer,
            };
            if let Err(mpsc::error::SendError(w)) = waiting.send(waits) {
                let _ = w.answer.send(Err(closed(address, false)));
                return;
            }
            if waiting.is_closed() {
                // the reader failed meanwhile and answered this request: writing it now
                // would put it on the wire after a failure the caller already acts on
                return;
            }
            None
        } else {
            Some(out.answer)
        };
        match tokio::time::timeout(timeout, writer.write_all(&out.frame)).await {
            Ok(Ok(())) => {
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(None));
                }
            }
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"),
                };
                if let Some(answer) = answer {
                    let _ = answer.send(Err(io_error(address, e, true)));
                }
                // (the reader fails the requests it waits for when the socket closes;
                // half-closing it tells the broker nothing more comes)
                let _ = writer.shutdown().await;
                return;
            }
        }
    }
}

/// Reads responses in order, each for the oldest waiting request, until the writer is
/// gone and nothing waits, or the connection fails (then every waiting request fails).
async fn read_loop(
    address: Arc<str>,
    timeout: Duration,
    mut reader: OwnedReadHalf,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(w) = waiting.recv().await {
        let read = tokio::time::timeout_at(w.deadline, read_response_frame(&mut reader)).await;
        let failure = match read {
            Ok(Ok(body)) if body.len() >= 4 && body[..4] == w.correlation_id.to_be_bytes() => {
                let _ = w.answer.send(Ok(Some(body)));
                continue;
            }
            Ok(Ok(_)) => SendError {
                error: protocol_error(&address, "a response to another request".into()),
                written: true,
            },
            Ok(Err(e)) => io_error(&address, e, true),
            Err(_) => SendError {
                error: ClientError::Timeout {
                    address: address.to_string(),
                    what: format!("{:?}", w.what),
                    timeout,
                },
                written: true,
            },
        };
        let _ = w.answer.send(Err(failure));
        // the connection is dead: what waits behind fails too (written, maybe read)
        fail_queued(&mut waiting, |_| closed(&address, true));
        return;
    }
}

/// Closes a queue and answers everything in it with `error`.
fn fail_queued<T: Answered>(
    queue: &mut mpsc::UnboundedReceiver<T>,
    error: impl Fn(&T) -> SendError,
) {
    queue.close();
    while let Ok(item) = queue.try_recv() {
        let e = error(&item);
        item.answer(Err(e));
    }
}

trait Answered {
    fn answer(self, answer: Answer);
}

impl Answered for Outgoing {
    fn answer(self, answer: Answer) {
        let _ = self.answer.send(answer);
    }
}

impl Answered for Waiting {
    fn answer(self, answer: Answer) {
        let _ = self.answer.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A broker stand-in that answers each request frame with a response frame holding
    /// the request's correlation id, after reading `hold` requests (so several wait at
    /// once), in order — or, with `swap`, the first two in the wrong order.
    async fn echo_server(hold: usize, swap: bool) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut ids = Vec::new();
            loop {
                let Ok(size) = socket.read_i32().await else {
                    return;
                };
                let mut body = vec![0u8; size as usize];
                if socket.read_exact(&mut body).await.is_err() {
                    return;
                }
                // header v1+: api key, version, correlation id
                let id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                ids.push(id);
                if ids.len() < hold {
                    continue;
                }
                if swap && ids.len() >= 2 {
                    ids.swap(0, 1);
                }
                for id in ids.drain(..) {
                    let mut frame = BytesMut::new();
                    let response = ApiVersionsResponse::default();
                    let mut body = BytesMut::new();
                    bytes::BufMut::put_i32(&mut body, id);
                    response.encode(&mut body, 0).unwrap();
                    bytes::BufMut::put_i32(&mut frame, body.len() as i32);
                    frame.extend_from_slice(&body);
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        });
        (address, task)
    }

    fn versions(
        c: &mut PipelinedConnection,
    ) -> impl Future<Output = Result<ApiVersionsResponse, SendError>> {
        c.send(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default(), true)
    }

    #[tokio::test]
    async fn several_requests_wait_at_once_and_each_gets_its_own_response() {
        let (address, _server) = echo_server(3, false).await;
        let mut c = PipelinedConnection::connect(&address, "test", Duration::from_secs(10));
        // the server answers only once it has read all three: they are in flight together
        let answers = [versions(&mut c), versions(&mut c), versions(&mut c)];
        for answer in answers {
            answer.await.expect("answered");
        }
        assert!(!c.is_closed());
    }

    #[tokio::test]
    async fn a_response_out_of_order_kills_the_connection_and_everything_waiting() {
        let (address, _server) = echo_server(2, true).await;
        let mut c = PipelinedConnection::connect(&address, "test", Duration::from_secs(10));
        let first = versions(&mut c);
        let second = versions(&mut c);
        let e = first.await.expect_err("the second's response came first");
        assert!(e.written);
        assert!(e.to_string().contains("another request"), "{e}");
        assert!(second.await.expect_err("dead connection").written);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.is_closed() {
            assert!(Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = versions(&mut c).await.expect_err("closed");
        assert!(!e.written, "a send on a closed connection is never written");
    }

    #[tokio::test]
    async fn a_connection_refused_fails_every_request_as_not_written() {
        // a port nothing listens on: bind, read it, close
        let address = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let mut c = PipelinedConnection::connect(&address, "test", Duration::from_secs(10));
        let a = versions(&mut c);
        let b = versions(&mut c);
        for answer in [a.await, b.await] {
            assert!(!answer.expect_err("refused").written);
        }
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_fails_as_maybe_written() {
        // the server reads but never answers (it waits for 2 requests; we send 1)
        let (address, _server) = echo_server(2, false).await;
        let mut c = PipelinedConnection::connect(&address, "test", Duration::from_millis(200));
        let e = versions(&mut c).await.expect_err("no answer");
        assert!(e.written);
        assert!(matches!(e.error, ClientError::Timeout { .. }), "{e}");
    }
}
