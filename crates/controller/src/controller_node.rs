//! One controller: the Raft node, its gRPC listener (Raft RPCs and the Controller API on
//! the same port), and, while it is the Raft leader, the failure detector loop.
//!
//! The quorum initialises itself once from `controller.quorum.voters` (the lowest voter
//! id calls `initialize` at once, the others only if still uninitialised two election
//! timeouts later, all with the same membership; late calls are refused, harmlessly);
//! restarts reuse the stored vote, log and snapshot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use sluice_metadata::alive_stream::hold_alive_stream;
use sluice_metadata::proto::controller::alive_ping::Sender as AliveSender;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::controller::controller_server::ControllerServer;
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{ApplyOutcome, MetadataBatch, MetadataImage, MetadataRecord, Record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ControllerError, Result};
use crate::failure_detector::FailureDetector;
use crate::partition_election;
use crate::raft_log_store::RaftLogStore;
use crate::raft_network::{
    channel, pb::raft_server::RaftServer, GrpcNetworkFactory, RaftService, MAX_MESSAGE_BYTES,
};
use crate::raft_types::{NodeId, Raft};
use crate::state_machine::MetadataStateMachine;

/// This controller's Raft state, as the metrics endpoint shows it.
#[derive(Debug, Clone, Default)]
pub struct ControllerStatus {
    /// This node leads the quorum (Kafka's ActiveControllerCount).
    pub active: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Registered brokers, fenced ones, and partitions without a leader (cluster-wide).
    pub brokers: usize,
    pub fenced_brokers: usize,
    pub offline_partitions: usize,
    /// Partition leader changes applied since this node started (Kafka's leader
    /// election rate, as a counter).
    pub leader_elections: u64,
}

/// See [`ControllerNode::status_reader`].
#[derive(Clone)]
pub struct ControllerStatusReader {
    core: Arc<Core>,
}

impl ControllerStatusReader {
    pub fn status(&self) -> ControllerStatus {
        let m = self.core.raft.metrics().borrow().clone();
        let (brokers, fenced_brokers, offline_partitions) =
            self.core.state_machine.with_image(|image| {
                let brokers = image.brokers().count();
                let fenced = image.brokers().filter(|b| b.fenced).count();
                let offline = image
                    .topics()
                    .flat_map(|t| &t.partitions)
                    .filter(|p| p.leader == sluice_metadata::NO_LEADER)
                    .count();
                (brokers, fenced, offline)
            });
        ControllerStatus {
            active: m.current_leader == Some(self.core.config.node_id),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            brokers,
            fenced_brokers,
            offline_partitions,
            leader_elections: self.core.state_machine.leader_elections(),
        }
    }
}

/// Settings of one controller, named after Kafka's where Kafka has them.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `node.id`.
    pub node_id: NodeId,
    /// `controller.quorum.voters`: node id → `host:port` of its controller listener.
    pub voters: BTreeMap<NodeId, String>,
    /// Where the Raft log, vote and metadata snapshot live (`metadata.log.dir`).
    pub metadata_dir: PathBuf,
    /// `cluster.id`.
    pub cluster_id: String,
    /// `broker.session.timeout.ms` (Kafka: 9000).
    pub broker_session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms` (Kafka: 2000); the failure detector checks this often.
    pub broker_heartbeat_interval_ms: u64,
    /// `controller.quorum.election.timeout.ms` (1000, as Kafka): about how long after the
    /// leader's last heartbeat a follower starts an election (see [`raft_timeouts`]).
    pub election_timeout_ms: u64,
    /// Raft heartbeat (`controller.quorum.fetch.timeout.ms`-like).
    pub raft_heartbeat_interval_ms: u64,
    /// `unclean.leader.election.enable` cluster default.
    pub unclean_leader_election_enable: bool,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i32,
    /// Committed entries between metadata snapshots.
    pub metadata_snapshot_entries: u64,
    /// `metadata.log.max.record.bytes.between.snapshots` (Kafka: 20 MiB): a snapshot is
    /// also taken once the Raft log grew this much since the last one, and the log is then
    /// purged up to it. Entries differ in size by orders of magnitude (a heartbeat's change
    /// against the fencing of a broker with 10,000 partitions: megabytes), so a count alone
    /// let 157 MB of log pile up at 12,000 partitions, all replayed at every restart. 0: off.
    pub metadata_snapshot_bytes: u64,
    /// Raft log entries a purge removes at least (openraft's `purge_batch_size`).
    pub metadata_purge_batch_entries: u64,
    /// `offsets.retention.minutes` (Kafka: 7 days), in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms` (Kafka: 600000).
    pub offsets_retention_check_interval_ms: u64,
    /// `auto.leader.rebalance.enable` (Kafka: true).
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds` (Kafka: 300), in ms.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage` (Kafka: 10).
    pub leader_imbalance_per_broker_percentage: u32,
}

impl ControllerConfig {
    pub fn new(node_id: NodeId, voters: BTreeMap<NodeId, String>, metadata_dir: PathBuf) -> Self {
        ControllerConfig {
            node_id,
            voters,
            metadata_dir,
            cluster_id: "sluice-cluster".to_string(),
            broker_session_timeout_ms: 9000,
            broker_heartbeat_interval_ms: 2000,
            election_timeout_ms: 1000,
            raft_heartbeat_interval_ms: 100,
            unclean_leader_election_enable: false,
            num_partitions: 1,
            default_replication_factor: 1,
            metadata_snapshot_entries: 10_000,
            metadata_snapshot_bytes: 20 * 1024 * 1024,
            metadata_purge_batch_entries: 256,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
        }
    }

    /// Parses `1@host:port,2@host:port,...`.
    pub fn parse_voters(voters: &str) -> Result<BTreeMap<NodeId, String>> {
        let bad = || {
            ControllerError::InvalidConfig(format!(
                "controller.quorum.voters must look like 1@host:port,2@host:port, got {voters:?}"
            ))
        };
        let mut out = BTreeMap::new();
        for voter in voters.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let (id, address) = voter.split_once('@').ok_or_else(bad)?;
            let id: NodeId = id.parse().map_err(|_| bad())?;
            if !address.contains(':') || out.insert(id, address.to_string()).is_some() {
                return Err(bad());
            }
        }
        if out.is_empty() {
            return Err(bad());
        }
        Ok(out)
    }
}

/// Largest metadata batch one request may commit.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What the services share.
pub(crate) struct Core {
    pub config: ControllerConfig,
    pub raft: Raft,
    pub state_machine: MetadataStateMachine,
    pub log_store: RaftLogStore,
    /// Brokers' liveness (see [`crate::failure_detector`]).
    pub failure_detector: Mutex<FailureDetector<i32>>,
    /// The other voters' liveness, from their `Alive` streams to this node; only whether
    /// a voter's stream ended is used (Raft has its own timers), not its session.
    pub peer_liveness: Mutex<FailureDetector<NodeId>>,
    /// Woken when a broker's `Alive` stream ends, so the leader fences it at once.
    pub liveness_changed: tokio::sync::Notify,
    /// Becomes true when the node stops: long-lived streams end with it.
    pub stopping: watch::Receiver<bool>,
    /// Scans of every partition that found nothing to change, by what they depend on
    /// (see [`ScanMemo`]).
    pub scans: ScanMemo,
    /// Registrations of a new incarnation being committed, as (broker id, incarnation
    /// id): a retry of one meanwhile must not propose the fencing a second time (at
    /// 10,000 partitions each copy is a megabyte of metadata, and a retry storm of them
    /// kept a restarted cluster from converging).
    pub registrations_in_flight: Mutex<std::collections::HashSet<(i32, String)>>,
}

/// What the leader's scans of every partition found nothing to change for. Both scans
/// are pure functions of the image and their inputs, and at idle neither changes: the
/// session check's repair pass ran every tick (a quarter of the heartbeat interval) and
/// the offline-replica check on every heartbeat, each over every partition — an idle
/// cost growing with the partition count (issue 19).
#[derive(Default)]
pub(crate) struct ScanMemo {
    /// The applied index of the image whose repair pass found nothing.
    repair_clean_at: Mutex<Option<u64>>,
    /// Per broker: (applied index, reported offline replicas, whether clearing was
    /// allowed) of a heartbeat whose offline-replica check found nothing.
    offline_clean: Mutex<std::collections::HashMap<i32, OfflineScanKey>>,
}

type OfflineScanKey = (u64, Vec<(Vec<u8>, i32)>, bool);

impl ScanMemo {
    /// `scan()` unless a scan of the image at `applied_index` found nothing already.
    pub fn repair<R>(&self, applied_index: u64, scan: impl FnOnce() -> Vec<R>) -> Vec<R> {
        let mut clean = self
            .repair_clean_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *clean == Some(applied_index) {
            return Vec::new();
        }
        let found = scan();
        *clean = found.is_empty().then_some(applied_index);
        found
    }

    /// `scan()` unless the same inputs for `broker_id` found nothing already. The memo is
    /// not locked while the scan runs: heartbeats of different brokers scan side by side.
    pub fn offline_replicas<R>(
        &self,
        broker_id: i32,
        key: OfflineScanKey,
        scan: impl FnOnce() -> Vec<R>,
    ) -> Vec<R> {
        let lock = || self.offline_clean.lock().unwrap_or_else(|p| p.into_inner());
        if lock().get(&broker_id) == Some(&key) {
            return Vec::new();
        }
        let found = scan();
        let mut clean = lock();
        if found.is_empty() {
            clean.insert(broker_id, key);
        } else {
            clean.remove(&broker_id);
        }
        found
    }
}

impl Core {
    pub fn lock_failure_detector(&self) -> std::sync::MutexGuard<'_, FailureDetector<i32>> {
        self.failure_detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_registrations_in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<(i32, String)>> {
        self.registrations_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn lock_peer_liveness(&self) -> std::sync::MutexGuard<'_, FailureDetector<NodeId>> {
        self.peer_liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ping on an open `Alive` stream.
    pub fn alive_ping(&self, sender: AliveSender, now: Instant) {
        match sender {
            AliveSender::BrokerId(b) => self.lock_failure_detector().heartbeat(b, now),
            AliveSender::ControllerId(c) => self.lock_peer_liveness().heartbeat(c, now),
        }
    }

    /// The first ping of a new `Alive` stream: returns the stream's id.
    pub fn alive_stream_opened(&self, sender: AliveSender, now: Instant) -> u64 {
        match sender {
            AliveSender::BrokerId(b) => self.lock_failure_detector().stream_opened(b, now),
            AliveSender::ControllerId(c) => self.lock_peer_liveness().stream_opened(c, now),
        }
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader && m.current_leader == Some(self.config.node_id)
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Commits `records` as one entry (this node must be the leader) and returns each
    /// record's outcome.
    pub async fn propose(&self, records: Vec<Record>) -> Result<Vec<ApplyOutcome>> {
        let batch = batch_of(records);
        let size = prost::Message::encoded_len(&batch);
        if size > MAX_BATCH_BYTES {
            return Err(ControllerError::InvalidRequest(format!(
                "metadata change of {size} bytes exceeds the {MAX_BATCH_BYTES}-byte limit"
            )));
        }
        // a leader cut off from the quorum never commits: give up rather than hang
        let timeout = Duration::from_millis(self.config.election_timeout_ms * 4);
        match tokio::time::timeout(timeout, self.raft.client_write(batch)).await {
            Err(_) => Err(ControllerError::Timeout("metadata commit".into())),
            Ok(Ok(response)) => Ok(response.data.outcomes),
            Ok(Err(e)) if e.forward_to_leader().is_some() => Err(ControllerError::NotController),
            Ok(Err(e)) => Err(ControllerError::Raft(e.to_string())),
        }
    }

    /// `record` followed by the changes it entails, computed by `consequences` on the
    /// image as it will be once `record` is applied; proposed together, they commit as one.
    pub fn with_consequences(
        &self,
        record: Record,
        consequences: impl FnOnce(&MetadataImage) -> Vec<Record>,
    ) -> Vec<Record> {
        let mut after = self.image();
        after.apply(after.applied_index() + 1, &batch_of(vec![record.clone()]));
        let mut records = vec![record];
        records.extend(consequences(&after));
        // a liveness change moves group coordinators too, in the same entry
        records.extend(crate::coordinator_placement::moves(&after));
        records
    }

    /// `record` (a registration or a fence of `broker_id`) with what fencing that broker
    /// entails: it leaves every ISR and its leaderships move to live ISR members.
    pub fn fencing(&self, record: Record, broker_id: i32) -> Vec<Record> {
        let unclean = self.config.unclean_leader_election_enable;
        self.with_consequences(record, |after| {
            partition_election::on_broker_fenced(after, broker_id, unclean)
        })
    }

    pub fn image(&self) -> MetadataImage {
        self.state_machine.image()
    }
}

/// A running controller. Dropping it does not stop it; call [`ControllerNode::shutdown`].
pub struct ControllerNode {
    core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    address: std::net::SocketAddr,
}

impl ControllerNode {
    /// Starts a controller serving on `listener` (already bound, so tests can use port 0).
    pub async fn start(
        config: ControllerConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Self> {
        let dir = config.metadata_dir.display().to_string();
        // errors name the metadata directory they failed on
        let storage = |e: std::io::Error| ControllerError::Storage(format!("{dir}: {e}"));
        let address = listener
            .local_addr()
            .map_err(|e| ControllerError::Storage(e.to_string()))?;
        let state_machine = MetadataStateMachine::open(&config.metadata_dir, &config.cluster_id)
            .map_err(storage)?;
        // purges wait for the snapshot covering them to be on disk (see RaftLogStore::purge)
        let log_store = RaftLogStore::open(&config.metadata_dir)
            .map_err(storage)?
            .with_snapshot_index(state_machine.subscribe_persisted_snapshot());
        let (election_timeout_min, election_timeout_max) = raft_timeouts(&config);
        let raft_config = Config {
            cluster_name: config.cluster_id.clone(),
            heartbeat_interval: config.raft_heartbeat_interval_ms,
            election_timeout_min,
            election_timeout_max,
            install_snapshot_timeout: config.election_timeout_ms.max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.metadata_snapshot_entries),
            // snapshot bytes travel as a JSON array (~3.5 bytes per byte): keep chunks small
            snapshot_max_chunk_size: 1024 * 1024,
            max_in_snapshot_log_to_keep: config.metadata_snapshot_entries / 2,
            purge_batch_size: config.metadata_purge_batch_entries.max(1),
            ..Config::default()
        }
        .validate()
        .map_err(|e| ControllerError::InvalidConfig(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            GrpcNetworkFactory::default(),
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;

        let (stop, stop_rx) = watch::channel(false);
        let core = Arc::new(Core {
            failure_detector: Mutex::new(FailureDetector::new(config.broker_session_timeout_ms)),
            peer_liveness: Mutex::new(FailureDetector::new(config.election_timeout_ms)),
            liveness_changed: tokio::sync::Notify::new(),
            stopping: stop_rx.clone(),
            scans: ScanMemo::default(),
            registrations_in_flight: Mutex::default(),
            config,
            raft: raft.clone(),
            state_machine,
            log_store,
        });
        let mut tasks = Vec::new();

        let server = tonic::transport::Server::builder()
            .add_service(
                RaftServer::new(RaftService::new(raft.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ControllerServer::new(crate::controller_service::ControllerService::new(
                    Arc::clone(&core),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        // small RPCs: without TCP_NODELAY every reply waits on Nagle + delayed ACK
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut server_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(error = %e, "controller listener failed");
            }
        }));

        if !raft
            .is_initialized()
            .await
            .map_err(|e| ControllerError::Raft(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> = core
                .config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            // the lowest voter id initialises at once; the others only if nobody has
            // reached them after two election timeouts (that voter is down), which keeps
            // openraft's "Can not initialize" errors out of a normal first start
            let first = core.config.voters.keys().next() == Some(&core.config.node_id);
            let delay = if first {
                Duration::ZERO
            } else {
                Duration::from_millis(core.config.election_timeout_ms * 2)
            };
            let raft = raft.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if matches!(raft.is_initialized().await, Ok(false)) {
                    if let Err(e) = raft.initialize(members).await {
                        tracing::info!(error = %e, "quorum already initialising elsewhere");
                    }
                }
            }));
        }

        tasks.push(tokio::spawn(snapshot_by_bytes(
            Arc::clone(&core),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(leader_loop(Arc::clone(&core), stop_rx)));
        // every voter holds an Alive stream to every other voter: its end tells them this
        // process is gone
        let ping_interval = Duration::from_millis(core.config.broker_heartbeat_interval_ms.max(10));
        for (id, address) in &core.config.voters {
            if *id == core.config.node_id {
                continue;
            }
            let Ok(peer) = channel(address) else {
                continue;
            };
            tasks.push(tokio::spawn(hold_alive_stream(
                ControllerClient::new(peer),
                AliveSender::ControllerId(core.config.node_id),
                ping_interval,
                Duration::from_millis(100),
            )));
        }
        Ok(ControllerNode {
            core,
            tasks,
            stop,
            address,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.core.config.node_id
    }

    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    pub fn is_leader(&self) -> bool {
        self.core.is_leader()
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.core.current_leader()
    }

    /// A reader of this node's Raft state and metadata image, for the metrics endpoint;
    /// usable after the node stopped (it then reports the last state).
    pub fn status_reader(&self) -> ControllerStatusReader {
        ControllerStatusReader {
            core: Arc::clone(&self.core),
        }
    }

    /// Turns this node's own election timer off or on (for tests: with it off, only a
    /// lost leader's ended `Alive` stream makes this node campaign).
    #[doc(hidden)]
    pub fn set_election_timer(&self, enabled: bool) {
        self.core.raft.runtime_config().elect(enabled);
    }

    /// A copy of this node's metadata image.
    pub fn image(&self) -> MetadataImage {
        self.core.image()
    }

    /// Waits until this node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.core.state_machine.subscribe_applied();
        tokio::time::timeout(timeout, rx.wait_for(|i| *i >= index))
            .await
            .map_err(|_| ControllerError::Timeout(format!("applied index {index}")))?
            .map_err(|_| ControllerError::Timeout("state machine closed".into()))?;
        Ok(())
    }

    /// Stops the listener, the loops and the Raft node.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.core.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Snapshots once the Raft log grew by `metadata_snapshot_bytes` since the last snapshot
/// (openraft's policy counts entries only), then purges the log up to that snapshot once it
/// is on disk. Every voter does it on its own log, as with the count policy.
async fn snapshot_by_bytes(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let limit = core.config.metadata_snapshot_bytes;
    if limit == 0 {
        return;
    }
    let mut persisted = core.state_machine.subscribe_persisted_snapshot();
    // the counter when a snapshot was last asked for here (0 at start, so a log that
    // came back from disk over the limit is snapshotted soon); a snapshot taken by the
    // entry count does not move it, so the next one by bytes may come early, never late
    let mut baseline = 0u64;
    // a snapshot asked for, not on disk yet: the index persisted before it was asked, and
    // when (openraft builds none when nothing was applied since the last one)
    let mut asked: Option<(u64, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = persisted.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let index = *persisted.borrow_and_update();
        if let Some((before, at)) = asked {
            if at.elapsed() > Duration::from_secs(60) {
                asked = None;
            } else if index > before {
                asked = None;
                // the snapshot is on disk: what it covers is replayed no more
                if let Err(e) = core.raft.trigger().purge_log(index).await {
                    tracing::warn!(error = %e, "purging the metadata log after a snapshot failed");
                }
            }
            continue;
        }
        let written = core.log_store.written_bytes();
        if written.saturating_sub(baseline) < limit {
            continue;
        }
        tracing::info!(
            grown_bytes = written.saturating_sub(baseline),
            "metadata log grew past metadata.log.max.record.bytes.between.snapshots: taking a snapshot"
        );
        baseline = written;
        asked = Some((index, tokio::time::Instant::now()));
        if let Err(e) = core.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "asking for a metadata snapshot failed");
            asked = None;
        }
    }
}

/// openraft's (election_timeout_min, election_timeout_max) for the Kafka-style setting.
/// A follower that knew a leader campaigns only after its leader lease (openraft 0.9:
/// `election_timeout_max`) plus a random timeout in [min, max) — with min = T and
/// max = 2T that was 3–4 × T (3.4 s measured at 1000 ms). The band used is min = T/2,
/// max = 3T/4 (both clear of the heartbeat interval), and the lease still expires before
/// any candidate asks for votes.
///
/// openraft 0.9 draws each node's random timeout once per process, so two followers whose
/// draws are close split the vote in every election (seen: three terms, 1.75 s). So each
/// voter gets its own slot of the band by its place among the voters (the lowest id
/// first), with jitter in the first half of the slot only: different voters' timers are at
/// least half a slot apart. A follower campaigns 1.04–1.42 × T after the leader's last
/// heartbeat with three voters.
fn raft_timeouts(config: &ControllerConfig) -> (u64, u64) {
    raft_timeouts_of(config, config.node_id)
}

/// [`raft_timeouts`] of voter `node_id`.
fn raft_timeouts_of(config: &ControllerConfig, node_id: NodeId) -> (u64, u64) {
    let heartbeat = config.raft_heartbeat_interval_ms.max(1);
    let min = (config.election_timeout_ms / 2).max(heartbeat * 2);
    let max = (config.election_timeout_ms * 3 / 4)
        .max(heartbeat * 3)
        .max(min + heartbeat);
    let voters = config.voters.len().max(1) as u64;
    let place = config
        .voters
        .keys()
        .position(|id| *id == node_id)
        .unwrap_or(0) as u64;
    let slot = ((max - min) / voters).max(2);
    let node_min = min + place * slot;
    (node_min, node_min + slot / 2)
}

/// Who campaigns when the quorum leader `lost` is gone, and how long after: a candidate
/// needs votes from enough other voters to make a majority with its own, and a voter
/// refuses while its leader lease (openraft 0.9: its `election_timeout_max`, counted from
/// its last heartbeat from the leader) runs. So the survivor whose needed voters' leases
/// run out first campaigns (lowest id on a tie); `None` if the survivors cannot make a
/// majority.
fn lost_leader_candidate(config: &ControllerConfig, lost: NodeId) -> Option<(NodeId, u64)> {
    let survivors: Vec<NodeId> = config
        .voters
        .keys()
        .copied()
        .filter(|id| *id != lost)
        .collect();
    let other_votes_needed = config.voters.len() / 2;
    let lease = |id: NodeId| raft_timeouts_of(config, id).1;
    survivors
        .iter()
        .filter_map(|candidate| {
            let mut leases: Vec<u64> = survivors
                .iter()
                .filter(|id| *id != candidate)
                .map(|id| lease(*id))
                .collect();
            leases.sort_unstable();
            let wait_ms = match other_votes_needed {
                0 => 0,
                n => *leases.get(n - 1)?,
            };
            Some((*candidate, wait_ms))
        })
        .min_by_key(|(id, wait_ms)| (*wait_ms, *id))
}

/// An `Alive` stream ended (not because this node is stopping).
pub(crate) fn alive_stream_ended(core: &Arc<Core>, sender: AliveSender, stream_id: u64) {
    let now = Instant::now();
    match sender {
        AliveSender::BrokerId(broker_id) => {
            let gone = core
                .lock_failure_detector()
                .stream_ended(broker_id, stream_id, now);
            if gone {
                tracing::info!(
                    broker_id,
                    "broker's Alive stream ended: its process is gone"
                );
                core.liveness_changed.notify_one();
            }
        }
        AliveSender::ControllerId(peer) => {
            let gone = core.lock_peer_liveness().stream_ended(peer, stream_id, now);
            if gone && core.current_leader() == Some(peer) {
                tokio::spawn(campaign_for_lost_leader(Arc::clone(core), peer));
            }
        }
    }
}

/// The quorum leader `lost`'s process is gone (its `Alive` stream to this node ended). One
/// survivor ([`lost_leader_candidate`]) campaigns as soon as the leases it needs have run
/// out, instead of after its own lease plus election timeout; the others keep their timers
/// (a backup, and no split vote). Nothing happens if the leader is heard from again or a
/// new leader is known by then. Campaigning is always safe in Raft; a needless one only
/// costs an election.
async fn campaign_for_lost_leader(core: Arc<Core>, lost: NodeId) {
    let me = core.config.node_id;
    let Some((candidate, wait_ms)) = lost_leader_candidate(&core.config, lost) else {
        return;
    };
    if candidate != me {
        return;
    }
    // each voter's lease counts from its last heartbeat from the leader, which came before
    // the leader's stream to this node ended
    let wait = Duration::from_millis(wait_ms + LEASE_MARGIN_MS);
    let mut stop = core.stopping.clone();
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let still_gone = core.lock_peer_liveness().is_gone(lost);
    if !still_gone || core.current_leader() != Some(lost) {
        return;
    }
    tracing::info!(
        node = me,
        lost_leader = lost,
        "the controller leader's process is gone: campaigning"
    );
    if let Err(e) = core.raft.trigger().elect().await {
        tracing::warn!(error = %e, "could not start an election");
    }
}

/// Added to the needed leases before campaigning for a lost leader: timer slack.
const LEASE_MARGIN_MS: u64 = 10;

/// While this node leads: fences brokers whose session expired, and gives offline
/// partitions a leader when one of their ISR is live.
async fn leader_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis((core.config.broker_heartbeat_interval_ms / 4).clamp(10, 500));
    // the term this node last started leading in
    let mut led_term: Option<u64> = None;
    let expiry_every = Duration::from_millis(core.config.offsets_retention_check_interval_ms);
    let mut last_expiry = Instant::now();
    let rebalance_every = Duration::from_millis(core.config.leader_imbalance_check_interval_ms);
    let mut last_rebalance = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = core.liveness_changed.notified() => {}
            _ = stop.changed() => return,
        }
        if !core.is_leader() {
            led_term = None;
            continue;
        }
        let term = core.raft.metrics().borrow().current_term;
        if led_term != Some(term) {
            // the image must include everything committed before we took over
            if core.raft.ensure_linearizable().await.is_err() {
                continue;
            }
            let registered = core
                .state_machine
                .with_image(|image| image.brokers().map(|b| b.broker_id).collect::<Vec<_>>());
            core.lock_failure_detector()
                .take_over(&registered, Instant::now());
            led_term = Some(term);
            tracing::info!(
                node = core.config.node_id,
                term,
                "controller leader: failure detector started"
            );
        }
        if let Err(e) = fence_expired_brokers(&core).await {
            tracing::warn!(error = %e, "fencing expired brokers");
        }
        if last_expiry.elapsed() >= expiry_every {
            last_expiry = Instant::now();
            expire_offsets(&core).await;
        }
        if core.config.auto_leader_rebalance_enable && last_rebalance.elapsed() >= rebalance_every {
            last_rebalance = Instant::now();
            rebalance_leaders(&core).await;
        }
    }
}

/// `auto.leader.rebalance.enable`: gives leadership back to preferred replicas where a
/// broker's imbalance passed `leader.imbalance.per.broker.percentage`.
async fn rebalance_leaders(core: &Core) {
    let records = core.state_machine.with_image(|image| {
        partition_election::rebalance_leaders(
            image,
            core.config.leader_imbalance_per_broker_percentage,
        )
    });
    if records.is_empty() {
        return;
    }
    let n = records.len();
    match core.propose(records).await {
        Ok(outcomes) => {
            let moved = outcomes.iter().filter(|o| o.is_ok()).count();
            tracing::info!(
                partitions = n,
                moved,
                "leadership back to preferred replicas"
            );
        }
        Err(e) => tracing::warn!(error = %e, "preferred leader election"),
    }
}

/// Commits the expiry of the offsets `offsets.retention.minutes` says are due.
async fn expire_offsets(core: &Core) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let records = core.state_machine.with_image(|image| {
        crate::offset_expiry::expired(image, now_ms, core.config.offsets_retention_ms)
    });
    if records.is_empty() {
        return;
    }
    let n = records.len();
    match core.propose(records).await {
        Ok(_) => tracing::info!(records = n, "expired committed offsets"),
        Err(e) => tracing::warn!(error = %e, "expiring committed offsets"),
    }
}

async fn fence_expired_brokers(core: &Core) -> Result<()> {
    let unfenced = core.state_machine.with_image(|i| i.live_broker_ids());
    let expired = core
        .lock_failure_detector()
        .expired(&unfenced, Instant::now());
    let unclean = core.config.unclean_leader_election_enable;
    // every broker given out is marked as being fenced until its fence is applied or has
    // failed: heartbeats answered meanwhile say "fenced" (see `broker_heartbeat`)
    let settle = |ids: &[i32]| {
        let mut fd = core.lock_failure_detector();
        ids.iter().for_each(|id| fd.fencing_settled(*id));
    };
    for (i, broker_id) in expired.iter().copied().enumerate() {
        let Some(broker_epoch) = core
            .state_machine
            .with_image(|i| i.broker(broker_id).map(|b| b.broker_epoch))
        else {
            settle(&[broker_id]);
            continue;
        };
        tracing::warn!(broker_id, "broker session expired: fencing");
        let fence = Record::FenceBroker(pb::FenceBroker {
            broker_id,
            broker_epoch,
        });
        let proposed = core.propose(core.fencing(fence, broker_id)).await;
        settle(&[broker_id]);
        if let Err(e) = proposed {
            settle(&expired[i + 1..]);
            return Err(e);
        }
    }
    // repairs, for changes an earlier batch lost to a concurrent one: fenced brokers
    // still leading or in an ISR they can leave, and offline partitions a live ISR member
    // could lead
    let pending = core.state_machine.with_image(|image| {
        core.scans.repair(image.applied_index(), || {
            image
                .brokers()
                .filter(|b| b.fenced)
                .map(|b| partition_election::on_broker_fenced(image, b.broker_id, unclean))
                .find(|records| !records.is_empty())
                .unwrap_or_else(|| partition_election::on_broker_unfenced(image, unclean))
        })
    });
    if !pending.is_empty() {
        core.propose(pending).await?;
    }
    // and coordinator slots not where liveness says (an image from before slots existed,
    // or a move lost the same way)
    let moves = core
        .state_machine
        .with_image(crate::coordinator_placement::moves);
    if let Some(moves) = moves {
        core.propose(vec![moves]).await?;
    }
    Ok(())
}

pub(crate) fn batch_of(records: Vec<Record>) -> MetadataBatch {
    MetadataBatch {
        records: records
            .into_iter()
            .map(|r| MetadataRecord { record: Some(r) })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voter `node_id` of voters 1..=3.
    fn timeouts(
        node_id: u64,
        election_timeout_ms: u64,
        raft_heartbeat_interval_ms: u64,
    ) -> (u64, u64) {
        let voters = (1..=3).map(|id| (id, String::new())).collect();
        let mut c = ControllerConfig::new(node_id, voters, PathBuf::new());
        c.election_timeout_ms = election_timeout_ms;
        c.raft_heartbeat_interval_ms = raft_heartbeat_interval_ms;
        raft_timeouts(&c)
    }

    /// When a follower campaigns after its leader's last heartbeat: lease (max) + [min, max).
    fn campaign_window(node_id: u64, t: u64, hb: u64) -> (u64, u64) {
        let (min, max) = timeouts(node_id, t, hb);
        (max + min, max + max)
    }

    #[test]
    fn a_follower_campaigns_about_the_configured_timeout_after_losing_its_leader() {
        // the defaults `sluice broker` derives: heartbeat = timeout / 5; 1.04–1.42 s, not
        // 3–4 s
        assert_eq!(campaign_window(1, 1000, 200), (1041, 1082));
        assert_eq!(campaign_window(3, 1000, 200), (1373, 1414));
        for (t, hb) in [(1000, 200), (300, 60), (300, 50), (500, 100), (100, 100)] {
            let mut windows = Vec::new();
            for id in 1..=3 {
                let (min, max) = timeouts(id, t, hb);
                assert!(min > hb && max > min, "{t}/{hb}: {min}..{max}");
                windows.push(campaign_window(id, t, hb));
            }
            // different voters never campaign at the same moment (openraft 0.9 draws each
            // node's timeout once per process, so a collision would repeat every election)
            for pair in windows.windows(2) {
                assert!(pair[0].1 < pair[1].0, "{t}/{hb}: {windows:?}");
            }
            // and every voter's lease (its max) has run out when the first one asks for
            // votes, so it is not refused for a lease
            let longest_lease = (1..=3).map(|id| timeouts(id, t, hb).1).max().unwrap();
            assert!(longest_lease < windows[0].0, "{t}/{hb}: {windows:?}");
        }
    }

    #[test]
    fn a_lost_leaders_survivor_campaigns_when_the_lease_of_the_vote_it_needs_runs_out() {
        let config = |voters: std::ops::RangeInclusive<u64>| {
            let voters = voters.map(|id| (id, String::new())).collect();
            let mut c = ControllerConfig::new(1, voters, PathBuf::new());
            c.election_timeout_ms = 500;
            c.raft_heartbeat_interval_ms = 100;
            c
        };
        let three = config(1..=3);
        let lease = |id| raft_timeouts_of(&three, id).1;
        assert!(lease(1) < lease(2) && lease(2) < lease(3));
        // two survivors: each needs the other's vote; the one whose partner's lease is
        // shorter goes, and sooner than any survivor's own timer would fire
        assert_eq!(lost_leader_candidate(&three, 1), Some((3, lease(2))));
        assert_eq!(lost_leader_candidate(&three, 2), Some((3, lease(1))));
        assert_eq!(lost_leader_candidate(&three, 3), Some((2, lease(1))));
        for lost in 1..=3 {
            let (_, wait_ms) = lost_leader_candidate(&three, lost).unwrap();
            let first_timer = (1..=3u64)
                .filter(|id| *id != lost)
                .map(|id| {
                    let (min, max) = raft_timeouts_of(&three, id);
                    max + min
                })
                .min()
                .unwrap();
            assert!(wait_ms + LEASE_MARGIN_MS < first_timer, "lost {lost}");
        }
        // five voters: a candidate needs two other votes, so the second-shortest lease
        let five = config(1..=5);
        let lease5 = |id| raft_timeouts_of(&five, id).1;
        assert_eq!(lost_leader_candidate(&five, 1), Some((4, lease5(3))));
        // one voter alone: nobody to campaign
        assert_eq!(lost_leader_candidate(&config(1..=1), 1), None);
    }

    #[test]
    fn a_scan_that_found_nothing_is_not_run_again_for_the_same_inputs() {
        let memo = ScanMemo::default();
        let runs = std::cell::Cell::new(0);
        let scan = |found: Vec<u8>| {
            runs.set(runs.get() + 1);
            found
        };
        // the repair pass: skipped at the same applied index once it found nothing
        assert!(memo.repair(7, || scan(vec![])).is_empty());
        assert!(memo.repair(7, || scan(vec![1])).is_empty());
        assert_eq!(runs.get(), 1);
        // a new index scans again; what it finds is not remembered
        assert_eq!(memo.repair(8, || scan(vec![1])), vec![1]);
        assert_eq!(memo.repair(8, || scan(vec![1])), vec![1]);
        assert_eq!(runs.get(), 3);
        // offline replicas: per broker, by index, report and whether clearing is allowed
        let key = |index, report: &[i32], may_clear| {
            let report = report.iter().map(|p| (vec![1u8], *p)).collect();
            (index, report, may_clear)
        };
        assert!(memo
            .offline_replicas(1, key(7, &[], true), || scan(vec![]))
            .is_empty());
        assert!(memo
            .offline_replicas(1, key(7, &[], true), || scan(vec![9]))
            .is_empty());
        assert_eq!(runs.get(), 4);
        for (broker, k) in [
            (2, key(7, &[], true)),
            (1, key(8, &[], true)),
            (1, key(7, &[0], true)),
            (1, key(7, &[], false)),
        ] {
            assert_eq!(memo.offline_replicas(broker, k, || scan(vec![9])), vec![9]);
        }
        assert_eq!(runs.get(), 8);
        // a change found forgets the broker's clean scan
        assert_eq!(
            memo.offline_replicas(1, key(7, &[], true), || scan(vec![])),
            Vec::<u8>::new()
        );
        assert_eq!(runs.get(), 9, "the earlier found change cleared the memo");
    }
}
