//! A running broker role: the data directory (ReplicaManager), the metadata follower, the
//! Kafka listener, and the background work — following metadata into local partitions,
//! retention, high-watermark checkpoints, and the scrub. [`BrokerNode::shutdown`] stops accepting,
//! checkpoints and closes every log cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::LogError;
use sluice_metadata::error_code as ec;
use sluice_protocol::WriteStats;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::broker_config::BrokerConfig;
use crate::controller_client::ControllerClients;
use crate::group_coordinator::GroupChange;
use crate::listener::{BrokerListener, ListenerConfig};
use crate::metadata_follower::{MetadataFollower, MetadataFollowerConfig};
use crate::replica_manager::ReplicaManager;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("data directory: {0}")]
    Log(#[from] LogError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

pub struct BrokerNode {
    broker: Arc<Broker>,
    listener: BrokerListener,
    /// Named listeners besides the inter-broker one.
    more_listeners: Vec<BrokerListener>,
    tasks: Vec<JoinHandle<()>>,
}

impl BrokerNode {
    /// Opens the data directory, starts following the controllers and serves Kafka clients
    /// on `listener`. An advertised endpoint with port 0 gets the listener's bound port.
    pub async fn start(config: BrokerConfig, listener: TcpListener) -> Result<Self, BrokerError> {
        Self::start_with_listeners(config, listener, Vec::new()).await
    }

    /// [`Self::start`] with more named listeners (`listeners` = `INTERNAL://…,EXTERNAL://…`):
    /// `listener` is the inter-broker one (the first advertised endpoint); a client on
    /// another gets that listener's addresses in Metadata, FindCoordinator and
    /// DescribeCluster.
    pub async fn start_with_listeners(
        mut config: BrokerConfig,
        listener: TcpListener,
        more: Vec<(String, TcpListener)>,
    ) -> Result<Self, BrokerError> {
        let address = listener.local_addr()?;
        for e in &mut config.advertised_endpoints {
            if e.port == 0 {
                e.port = u32::from(address.port());
            }
        }
        let replicas = tokio::task::block_in_place(|| ReplicaManager::open(config.clone()))?;
        let metadata = MetadataFollower::start(
            MetadataFollowerConfig {
                broker_id: config.broker_id,
                incarnation_id: new_incarnation_id(),
                endpoints: config.advertised_endpoints.clone(),
                rack: config.rack.clone(),
                controllers: config.controllers.clone(),
                heartbeat_interval_ms: config.heartbeat_interval_ms,
            },
            Arc::clone(replicas.log_dir_health()),
            Arc::clone(replicas.offline_replicas()),
            Arc::clone(replicas.controller_lease()),
        );
        let controllers = ControllerClients::new(&config.controllers);
        let listener_config = ListenerConfig {
            name: None,
            socket_request_max_bytes: config.socket_request_max_bytes,
            use_sendfile: config.use_sendfile,
        };
        let groups = crate::group_coordinator::GroupCoordinator::new(config.group.clone());
        let commits = crate::offset_commit_batcher::OffsetCommitBatcher::start(
            controllers.clone(),
            metadata.broker_epoch_handle(),
        );
        let fetch_sessions =
            crate::fetch_session::FetchSessionCache::new(config.fetch_session_cache_slots);
        let broker = Arc::new(Broker {
            config,
            metadata,
            replicas,
            controllers,
            groups,
            commits,
            producer_ids: Default::default(),
            fetch_sessions,
            metrics: Default::default(),
        });
        let tasks = vec![
            tokio::spawn(follow_metadata(Arc::clone(&broker))),
            tokio::spawn(housekeeping(Arc::clone(&broker))),
            tokio::spawn(crate::isr_changes::run(Arc::clone(&broker))),
            tokio::spawn(probe_offline_log_dir(Arc::clone(&broker))),
            tokio::spawn(crate::log_scrubber::run(Arc::clone(&broker))),
            tokio::spawn(tick_groups(Arc::clone(&broker))),
            tokio::spawn(store_groups(Arc::clone(&broker))),
        ];
        let mut more_listeners = Vec::with_capacity(more.len());
        for (name, tcp) in more {
            let config = ListenerConfig {
                name: Some(name.into()),
                ..listener_config.clone()
            };
            more_listeners.push(BrokerListener::start_with(
                tcp,
                config,
                Some(Arc::clone(&broker)),
            )?);
        }
        let listener =
            BrokerListener::start_with(listener, listener_config, Some(Arc::clone(&broker)))?;
        tracing::info!(broker_id = broker.broker_id(), %address, "broker listening");
        Ok(BrokerNode {
            broker,
            listener,
            more_listeners,
            tasks,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn write_stats(&self) -> &Arc<WriteStats> {
        self.listener.stats()
    }

    /// Waits until the controller has unfenced this broker (its image is current).
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.broker.metadata.caught_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.broker.sync_partitions();
        true
    }

    /// Controlled shutdown (before [`Self::shutdown`]): refuses new writes, waits until
    /// the other ISR members of every partition led here hold the whole log, then asks
    /// the controllers to fence this broker, which moves its leaderships to those members
    /// in one metadata entry, and waits to see that. Returns whether it finished within
    /// `timeout`; a leader whose ISR is only itself leaves its partition offline.
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let broker = &self.broker;
        broker.replicas.close_for_writes();
        // followers catch up with writes that were answered before the close (every HW or
        // ISR move bumps the data version)
        let mut data_version = broker.replicas.data_version();
        while !broker.replicas.followers_caught_up() {
            if !matches!(
                tokio::time::timeout_at(deadline, data_version.changed()).await,
                Ok(Ok(()))
            ) {
                tracing::warn!("controlled shutdown: followers did not catch up in time");
                break;
            }
        }
        broker.metadata.request_controlled_shutdown();
        let me = broker.broker_id();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let moved = broker
            .metadata
            .wait_until(remaining, |image| {
                let fenced = image.broker(me).is_some_and(|b| b.fenced)
                    && image
                        .topics()
                        .all(|t| t.partitions.iter().all(|p| p.leader != me));
                fenced || alone(image, me)
            })
            .await;
        if moved {
            tracing::info!(broker_id = me, "controlled shutdown: leaderships moved");
        } else {
            tracing::warn!(
                broker_id = me,
                "controlled shutdown: leaderships did not move in time"
            );
        }
        moved
    }

    /// Stops serving, then checkpoints and closes every log.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        self.listener.shutdown().await;
        for l in self.more_listeners {
            l.shutdown().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.broker.metadata.stop();
        // connection tasks hold the broker until their aborts land
        let mut broker = self.broker;
        for _ in 0..500 {
            match Arc::try_unwrap(broker) {
                Ok(b) => {
                    return tokio::task::block_in_place(|| b.replicas.shutdown())
                        .map_err(BrokerError::from)
                }
                Err(b) => {
                    broker = b;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        tracing::warn!("requests still running at shutdown: checkpointing without closing");
        broker.replicas.checkpoint_high_watermarks()?;
        Ok(())
    }
}

/// Whether no other live broker shares an ISR with `me`: leadership has nowhere to move
/// and no leader waits for `me` (the whole cluster is stopping, or one broker runs alone),
/// so controlled shutdown has nothing left to do — and the controller quorum may be gone.
fn alone(image: &sluice_metadata::MetadataImage, me: i32) -> bool {
    let live = image.live_broker_ids();
    image.topics().all(|t| {
        t.partitions.iter().all(|p| {
            !p.replicas.contains(&me) || p.isr.iter().all(|b| *b == me || !live.contains(b))
        })
    })
}

fn new_incarnation_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// Applies each metadata change to the local partitions as it arrives.
async fn follow_metadata(broker: Arc<Broker>) {
    let mut applied = broker.metadata.subscribe_partition_changes();
    let mut caught_up = false;
    loop {
        let sync = Arc::clone(&broker);
        let _ = tokio::task::spawn_blocking(move || sync.sync_partitions()).await;
        // wake on new metadata, and once more when the image is first known current (the
        // sync that may remove stale logs)
        let changed = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        if let Ok(Err(_)) = changed {
            return;
        }
        if changed.is_err() && caught_up == broker.metadata.caught_up() {
            continue;
        }
        caught_up = broker.metadata.caught_up();
    }
}

/// Retention checks, rolls and flush policy, and high-watermark checkpoints.
async fn housekeeping(broker: Arc<Broker>) {
    let tick = Duration::from_millis(broker.config.high_watermark_checkpoint_interval_ms.max(100));
    let retention_every = Duration::from_millis(broker.config.retention_check_interval_ms.max(100));
    let mut last_retention = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let health = broker.replicas.log_dir_health();
        if health.is_offline() {
            // nothing is written to an offline directory; the probe brings it back
            continue;
        }
        let run_retention = last_retention.elapsed() >= retention_every;
        if run_retention {
            last_retention = tokio::time::Instant::now();
        }
        let b = Arc::clone(&broker);
        let done = tokio::task::spawn_blocking(move || {
            b.replicas.tick(run_retention)?;
            b.replicas.checkpoint_high_watermarks()
        })
        .await;
        match done {
            // a storage failure takes the directory offline (logged once, there)
            Ok(Err(e @ LogError::Io { .. })) => {
                let _ = health.check(Err::<(), _>(e));
            }
            Ok(Err(e)) => tracing::error!(error = %e, "log housekeeping failed"),
            _ => {}
        }
    }
}

/// Group sessions and rebalance timeouts; groups whose coordinator slot moved away are
/// dropped (their members find the new coordinator).
async fn tick_groups(broker: Arc<Broker>) {
    let me = broker.broker_id();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.groups.tick(std::time::Instant::now());
        broker.with_image(|image| {
            broker.groups.retain(|group| {
                image
                    .coordinator_of_group(group)
                    .is_some_and(|c| c.broker_id == me)
            })
        });
    }
}

/// Stores group states (a rebalance's end, a group emptied) and deletes groups in the
/// metadata log through the controller, in the order they were queued, each store fenced
/// by this broker's ownership of the group's slot.
async fn store_groups(broker: Arc<Broker>) {
    broker.groups.enable_storing();
    loop {
        broker.groups.stores_waiting().await;
        for change in broker.groups.take_changes() {
            match change {
                GroupChange::Store(stored, done) => {
                    store_group(&broker, stored).await;
                    let _ = done.send(());
                }
                GroupChange::Delete { group_id, done } => {
                    let _ = done.send(delete_group(&broker, &group_id).await);
                }
            }
        }
    }
}

async fn store_group(broker: &Broker, mut stored: sluice_metadata::StoredGroup) {
    let me = broker.broker_id();
    let slot = broker.with_image(|i| i.coordinator_of_group(&stored.group_id).cloned());
    let Some(slot) = slot.filter(|s| s.broker_id == me) else {
        return;
    };
    stored.coordinator_broker_id = me;
    stored.state_timestamp_ms = sluice_record::now_ms();
    if stored.coordinator_epoch < 0 {
        stored.coordinator_epoch = slot.epoch;
    }
    let group_id = stored.group_id.clone();
    let generation = stored.generation;
    let answer = broker
        .controllers
        .call(Duration::from_secs(5), |mut c| {
            let request = sluice_metadata::proto::controller::StoreGroupRequest {
                group: Some(stored.clone()),
            };
            async move { c.store_group(request).await }
        })
        .await;
    match answer {
        Ok(r) if r.error_code == 0 => {
            tracing::debug!(group = %group_id, generation, "group state stored")
        }
        Ok(r) => {
            tracing::warn!(group = %group_id, generation, error = %r.error_message, "group state not stored")
        }
        Err(e) => {
            tracing::warn!(group = %group_id, generation, error = %e, "group state not stored")
        }
    }
}

/// Deletes a group's stored state and offsets; the DeleteGroups error code.
async fn delete_group(broker: &Broker, group_id: &str) -> i16 {
    let answer = broker
        .controllers
        .call(Duration::from_secs(5), |mut c| {
            let request = sluice_metadata::proto::controller::DeleteGroupsRequest {
                group_ids: vec![group_id.to_string()],
            };
            async move { c.delete_groups(request).await }
        })
        .await;
    match answer {
        Ok(r) if r.error_code == 0 => {
            tracing::info!(group = group_id, "group deleted");
            // read-your-writes: the deleting client's next request (OffsetDelete,
            // OffsetFetch, DescribeGroups) must not find the group in this broker's image
            // because the image had not yet applied the deletion
            let gone = broker
                .metadata
                .wait_until(Duration::from_secs(5), |image| {
                    !crate::handlers::known_in_image(image, group_id)
                })
                .await;
            if !gone {
                tracing::warn!(
                    group = group_id,
                    "group deleted, but this broker's metadata has not caught up in 5 s"
                );
            }
            ec::NONE
        }
        Ok(r) => {
            tracing::warn!(group = group_id, error = %r.error_message, "group not deleted");
            ec::COORDINATOR_NOT_AVAILABLE
        }
        Err(e) => {
            tracing::warn!(group = group_id, error = %e, "group not deleted");
            ec::REQUEST_TIMED_OUT
        }
    }
}

/// While the log directory is offline, asks it each second for a probe (which runs only
/// for a full disk, once its backoff has passed: see [`crate::log_dir_health`]).
async fn probe_offline_log_dir(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !broker.replicas.log_dir_health().is_offline() {
            continue;
        }
        let b = Arc::clone(&broker);
        let _ = tokio::task::spawn_blocking(move || {
            b.replicas.log_dir_health().probe(&b.config.log_dir)
        })
        .await;
    }
}
