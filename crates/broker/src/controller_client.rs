//! The broker's gRPC clients to the controller quorum. Any controller will do (it forwards
//! writes to the Raft leader); on a transport error the next one in the list is tried
//! until the deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint};

/// A lazily connected client to one controller at `host:port`.
pub fn connect(address: &str) -> Option<ControllerClient<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{address}")).ok()?;
    // HTTP/2 pings find a controller that vanished without closing the connection (a
    // network partition); a watch on it would otherwise wait forever
    let channel = endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Some(ControllerClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

#[derive(Clone)]
pub struct ControllerClients {
    clients: Arc<Vec<ControllerClient<Channel>>>,
    next: Arc<AtomicUsize>,
}

const RETRY: Duration = Duration::from_millis(100);

impl ControllerClients {
    pub fn new(addresses: &[String]) -> Self {
        ControllerClients {
            clients: Arc::new(addresses.iter().filter_map(|a| connect(a)).collect()),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Calls `f` on one controller after another until one answers or `timeout` passes.
    pub async fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, tonic::Status>
    where
        F: Fn(ControllerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.clients.is_empty() {
            return Err(tonic::Status::unavailable("no controller configured"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let i = self.next.load(Ordering::Relaxed) % self.clients.len();
            let attempt = tokio::time::timeout_at(deadline, f(self.clients[i].clone())).await;
            match attempt {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if !retriable(&status) => return Err(status),
                Ok(Err(status)) => {
                    tracing::debug!(error = %status, "controller call: trying the next controller");
                    self.next.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // the next call starts elsewhere: this controller may be paused
                    self.next.fetch_add(1, Ordering::Relaxed);
                    return Err(tonic::Status::deadline_exceeded(
                        "controller did not answer",
                    ));
                }
            }
            if tokio::time::Instant::now() + RETRY >= deadline {
                return Err(tonic::Status::deadline_exceeded(
                    "controller did not answer",
                ));
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

fn retriable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
    )
}
