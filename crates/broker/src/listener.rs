//! Accepts client connections and runs one task per connection. A connection's failure
//! (malformed frame, oversized request, I/O error) ends that connection only.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use sluice_protocol::{SupportedApis, WriteStats};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::connection::{serve_connection, ConnectionContext};
use crate::handlers::HANDLED_APIS;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The listener's name (`listeners`), which selects the addresses Metadata, FindCoordinator
    /// and DescribeCluster answer with; None: the broker's first (inter-broker) listener.
    pub name: Option<Arc<str>>,
    /// `socket.request.max.bytes` (Kafka: 104857600).
    pub socket_request_max_bytes: usize,
    /// Send file regions with sendfile(2) (off: copy through user space, e.g. for TLS).
    pub use_sendfile: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: None,
            socket_request_max_bytes: 104_857_600,
            use_sendfile: true,
        }
    }
}

pub struct BrokerListener {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<WriteStats>,
}

/// The APIs a listener serves without a broker behind it.
pub const BARE_APIS: &[ApiKey] = &[ApiKey::ApiVersions];

impl BrokerListener {
    /// A listener answering ApiVersions only (tests of the connection layer).
    pub fn start(listener: TcpListener, config: ListenerConfig) -> std::io::Result<Self> {
        Self::start_with(listener, config, None)
    }

    /// A listener serving every API the broker's handlers implement.
    pub fn start_with(
        listener: TcpListener,
        config: ListenerConfig,
        broker: Option<Arc<Broker>>,
    ) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(WriteStats::default());
        let apis: Vec<ApiKey> = match broker {
            Some(_) => BARE_APIS.iter().chain(HANDLED_APIS).copied().collect(),
            None => BARE_APIS.to_vec(),
        };
        let context = Arc::new(ConnectionContext {
            config,
            apis: SupportedApis::new(&apis),
            stats: Arc::clone(&stats),
            broker,
        });
        let task = tokio::spawn(accept_loop(listener, context, stop_rx));
        Ok(BrokerListener {
            address,
            stop,
            task,
            stats,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn stats(&self) -> &Arc<WriteStats> {
        &self.stats
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<ConnectionContext>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let context = Arc::clone(&context);
                    connections.spawn(async move {
                        if let Err(e) = serve_connection(stream, &context).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => break,
        }
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}
