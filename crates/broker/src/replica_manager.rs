//! The partitions this broker holds a replica of (Kafka's `ReplicaManager`): it turns the
//! metadata image into local partitions — a log for every partition assigned here, its
//! role and epochs from the image — and removes the logs of partitions no longer assigned
//! here (a deleted topic, or one re-created under the same name with a new topic id).
//!
//! Invariants: a partition's directory holds `partition.metadata` with its topic id, so a
//! log left over from an older topic of the same name is never served as the new one;
//! nothing is deleted until the local image has caught up with the controller (an empty or
//! stale image at startup must not look like "every topic was deleted").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use sluice_log::{LogError, LogManager};
use sluice_metadata::MetadataImage;
use sluice_record::{now_ms, Offset, TopicPartition};
use tokio::sync::watch;

use crate::broker_config::BrokerConfig;
use crate::controller_lease::ControllerLease;
use crate::log_dir_health::LogDirHealth;
use crate::offline_replicas::OfflineReplicas;
use crate::partition::{Partition, PartitionSignals};
use crate::replica_fetcher::ReplicaFetchers;

const PARTITION_METADATA: &str = "partition.metadata";

pub struct ReplicaManager {
    config: BrokerConfig,
    logs: Mutex<LogManager>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// High watermarks read at startup; a partition created later starts from its entry.
    checkpointed_high_watermarks: Mutex<BTreeMap<TopicPartition, Offset>>,
    /// The image index last synced, and whether it was known current then.
    synced: Mutex<(u64, bool)>,
    signals: Arc<PartitionSignals>,
    /// Replicas assigned here whose log cannot be opened (reported to the controller).
    offline_replicas: Arc<OfflineReplicas>,
    fetchers: ReplicaFetchers,
}

/// Whether a failure to open a partition's log is the directory's (a full disk, a failing
/// device: every log would fail) rather than that one log's (a stray file where its
/// directory goes, too many open files, a damaged directory).
fn is_log_dir_failure(e: &LogError) -> bool {
    const EIO: i32 = 5;
    const ENOSPC: i32 = 28;
    const EROFS: i32 = 30;
    const EDQUOT: i32 = 122;
    matches!(e, LogError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(EIO | ENOSPC | EROFS | EDQUOT)))
}

/// Kafka's `partition.metadata` content for a topic id.
fn partition_metadata_text(topic_id: &[u8]) -> String {
    format!(
        "version: 0\ntopic_id: {}\n",
        sluice_metadata::format_topic_id(topic_id)
    )
}

impl ReplicaManager {
    /// Opens (and if needed recovers) the data directory.
    pub fn open(config: BrokerConfig) -> Result<Self, LogError> {
        let logs = LogManager::open(&config.log_dir, config.log.clone(), now_ms())?;
        let high_watermarks = logs.read_high_watermarks()?;
        Ok(ReplicaManager {
            logs: Mutex::new(logs),
            partitions: RwLock::new(HashMap::new()),
            checkpointed_high_watermarks: Mutex::new(high_watermarks),
            synced: Mutex::new((0, false)),
            signals: Arc::new(PartitionSignals::default()),
            offline_replicas: Arc::new(OfflineReplicas::default()),
            fetchers: ReplicaFetchers::new(config.broker_id, config.replica_fetch_sessions),
            config,
        })
    }

    /// The replicas whose log cannot be opened (the heartbeat reports them).
    pub fn offline_replicas(&self) -> &Arc<OfflineReplicas> {
        &self.offline_replicas
    }

    /// Whether the log directory takes writes (shared by every partition).
    /// Broker-wide signals and counters every partition shares.
    pub fn signals(&self) -> &Arc<PartitionSignals> {
        &self.signals
    }

    /// Whether the active controller still vouches for this broker's leaderships (the
    /// heartbeats renew it).
    pub fn controller_lease(&self) -> &Arc<ControllerLease> {
        &self.signals.controller_lease
    }

    pub fn log_dir_health(&self) -> &Arc<LogDirHealth> {
        &self.signals.log_dir
    }

    pub fn data_version(&self) -> watch::Receiver<u64> {
        self.signals.data_version.subscribe()
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tp)
            .cloned()
    }

    /// Controlled shutdown, first step: producers get NOT_LEADER_OR_FOLLOWER from now on
    /// (they retry after a metadata refresh), while followers keep fetching.
    pub fn close_for_writes(&self) {
        self.signals.writes_closed.store(true, Ordering::SeqCst);
    }

    /// Whether every partition led here has its whole log on its other ISR members.
    pub fn followers_caught_up(&self) -> bool {
        self.partitions().iter().all(|p| p.followers_caught_up())
    }

    /// Resolves when a follower outside an ISR caught up (or at once if one did since
    /// the last call).
    pub async fn isr_change_wanted(&self) {
        self.signals.isr_change_wanted.notified().await
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Brings local partitions in line with `image`. `caught_up`: the image is known to be
    /// current (the controller unfenced this broker), so partitions missing from it may go.
    pub fn sync(&self, image: &MetadataImage, caught_up: bool) {
        let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_locked(synced, image, caught_up);
    }

    /// Whether an image at `applied_index` (and `caught_up`) may need a sync: it is newer
    /// than the last one synced; `when_busy` while a sync runs (true for a caller that
    /// waits for it, false for one that would skip it). Cheap, for callers that copy the
    /// image before syncing.
    pub fn may_need_sync(&self, applied_index: u64, caught_up: bool, when_busy: bool) -> bool {
        let newer = |synced: &(u64, bool)| applied_index > synced.0 || caught_up != synced.1;
        match self.synced.try_lock() {
            Ok(synced) => newer(&synced),
            Err(std::sync::TryLockError::Poisoned(p)) => newer(&p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => when_busy,
        }
    }

    /// [`Self::sync`], unless a sync is running (then it returns at once: the broker's
    /// metadata task syncs every change, so nothing is missed). For request handlers: a
    /// sync creating logs fsyncs, and a handler must not hold a runtime thread waiting
    /// for it.
    pub fn sync_unless_busy(&self, image: &MetadataImage, caught_up: bool) {
        match self.synced.try_lock() {
            Ok(synced) => self.sync_locked(synced, image, caught_up),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                self.sync_locked(p.into_inner(), image, caught_up)
            }
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }

    fn sync_locked(
        &self,
        mut synced: std::sync::MutexGuard<'_, (u64, bool)>,
        image: &MetadataImage,
        caught_up: bool,
    ) {
        // nothing new: the same image, and the same knowledge of whether it is current
        if image.applied_index() <= synced.0 && caught_up == synced.1 {
            return;
        }
        let me = self.config.broker_id;
        let mut wanted: HashMap<TopicPartition, ()> = HashMap::new();
        // every partition this image assigns here has a log (else the next sync retries)
        let mut complete = true;
        for topic in image.topics() {
            let min_isr = self
                .config
                .topic_defaults
                .min_insync_replicas(&topic.configs);
            for p in &topic.partitions {
                if !p.replicas.contains(&me) {
                    continue;
                }
                let tp = TopicPartition::new(topic.name.clone(), p.partition);
                wanted.insert(tp.clone(), ());
                let partition = match self.partition(&tp) {
                    Some(existing) if existing.topic_id() == topic.topic_id.as_slice() => existing,
                    // nothing is created in an offline log directory: once it is back
                    _ if self.signals.log_dir.is_offline() => {
                        complete = false;
                        continue;
                    }
                    // a log that failed to open is tried again once its wait is over
                    _ if !self
                        .offline_replicas
                        .may_try(&tp, std::time::Instant::now()) =>
                    {
                        complete = false;
                        continue;
                    }
                    existing => {
                        if existing.is_some() {
                            self.remove(&tp);
                        }
                        match self.create(&tp, &topic.topic_id, &topic.configs) {
                            Ok(p) => {
                                self.offline_replicas.cleared(&tp, true);
                                p
                            }
                            Err(e) => {
                                if is_log_dir_failure(&e) {
                                    tracing::error!(partition = %tp, error = %e, "cannot open partition log");
                                    let _ = self.signals.log_dir.check(Err::<(), _>(e));
                                } else {
                                    self.offline_replicas.failed(&tp, &topic.topic_id, &e);
                                }
                                // try again at the next sync, not only at the next change
                                complete = false;
                                continue;
                            }
                        }
                    }
                };
                partition.set_min_insync_replicas(min_isr);
                partition.apply_state(p, now_ms());
                match self.leader_address(image, p.leader) {
                    Some(address) if p.leader != me => {
                        self.fetchers
                            .follow(p.leader, &address, partition, p.leader_epoch)
                    }
                    _ => self.fetchers.unfollow(&tp),
                }
            }
        }
        self.offline_replicas.retain(|tp| wanted.contains_key(tp));
        if caught_up {
            let stale: Vec<TopicPartition> = self
                .partitions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .filter(|tp| !wanted.contains_key(*tp))
                .cloned()
                .collect();
            for tp in stale {
                self.remove(&tp);
            }
            // logs on disk that no partition claims: leftovers of deleted topics
            let orphans: Vec<TopicPartition> = {
                let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
                logs.topic_partitions()
                    .filter(|tp| !wanted.contains_key(*tp))
                    .cloned()
                    .collect()
            };
            for tp in orphans {
                self.delete_log(&tp);
            }
        }
        if complete {
            *synced = (image.applied_index(), caught_up);
        }
    }

    fn create(
        &self,
        tp: &TopicPartition,
        topic_id: &[u8],
        overrides: &BTreeMap<String, String>,
    ) -> Result<Arc<Partition>, LogError> {
        let log_config = self
            .config
            .topic_defaults
            .log_config(overrides, &self.config.log);
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let mut log = logs.get_or_create(tp, Some(log_config.clone()), now_ms())?;
        // a log from before (loaded at startup, or opened only now, having failed then):
        // keep it only if it is this topic's
        let dir = sluice_log::lock(&log).dir().to_path_buf();
        let recorded = std::fs::read_to_string(dir.join(PARTITION_METADATA)).ok();
        if recorded.is_some_and(|r| r != partition_metadata_text(topic_id)) {
            tracing::warn!(partition = %tp, "log belongs to an older topic of the same name: deleting it");
            drop(log);
            logs.delete(tp, now_ms())?;
            log = logs.get_or_create(tp, Some(log_config.clone()), now_ms())?;
        }
        {
            let mut l = sluice_log::lock(&log);
            if l.config() != &log_config {
                l.update_config(log_config)?;
            }
            let dir = l.dir().to_path_buf();
            if !dir.join(PARTITION_METADATA).exists() {
                sluice_log::write_atomically(
                    &dir.join(PARTITION_METADATA),
                    partition_metadata_text(topic_id).as_bytes(),
                )?;
            }
        }
        let hw = self
            .checkpointed_high_watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tp)
            .unwrap_or(Offset::ZERO);
        let partition = Arc::new(Partition::new(
            tp.clone(),
            topic_id.to_vec(),
            self.config.broker_id,
            log,
            hw,
            Arc::clone(&self.signals),
        ));
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.clone(), Arc::clone(&partition));
        tracing::info!(partition = %tp, "partition opened");
        Ok(partition)
    }

    /// `host:port` of `leader`'s listener of the same name as this broker's.
    fn leader_address(&self, image: &MetadataImage, leader: i32) -> Option<String> {
        let e = self.config.endpoint_of(image.broker(leader)?)?;
        Some(format!("{}:{}", e.host, e.port))
    }

    fn remove(&self, tp: &TopicPartition) {
        self.fetchers.unfollow(tp);
        let removed = self
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tp);
        if let Some(partition) = removed {
            partition.stop();
        }
        self.delete_log(tp);
    }

    fn delete_log(&self, tp: &TopicPartition) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        match logs.delete(tp, now_ms()) {
            Ok(_) => tracing::info!(partition = %tp, "partition log deleted"),
            Err(e) => tracing::error!(partition = %tp, error = %e, "cannot delete partition log"),
        }
    }

    /// Writes every partition's high watermark to `replication-offset-checkpoint`.
    pub fn checkpoint_high_watermarks(&self) -> Result<(), LogError> {
        let hws: BTreeMap<TopicPartition, Offset> = self
            .partitions()
            .iter()
            .map(|p| (p.topic_partition().clone(), p.high_watermark()))
            .collect();
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.write_high_watermarks(&hws)?;
        logs.checkpoint_recovery_points()
    }

    /// Retention, rolls and flushes: what the log manager does periodically. Segments at
    /// or above a partition's high watermark are never deleted.
    pub fn tick(&self, run_retention: bool) -> Result<(), LogError> {
        let hws: HashMap<TopicPartition, Offset> = self
            .partitions()
            .iter()
            .map(|p| (p.topic_partition().clone(), p.high_watermark()))
            .collect();
        // the manager is not held across the flushes: creating a partition never waits
        // for another's fsync (the recovery points are checkpointed with the high
        // watermarks, next)
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shared_logs();
        let now = now_ms();
        for (tp, log) in &logs {
            let retention = run_retention.then(|| hws.get(tp).copied());
            if LogManager::tick_log(log, now, retention)? {
                // fetch sessions send a partition again when its log start moved
                if let Some(partition) = self.partition(tp) {
                    partition.log_start_moved();
                }
            }
        }
        Ok(())
    }

    /// Checkpoints and closes every log (writes the clean-shutdown marker last).
    /// With the log directory offline nothing more is written to it, the marker neither:
    /// the next start recovers every log from its recovery point (CRC-checked).
    pub fn shutdown(self) -> Result<(), LogError> {
        self.fetchers.shutdown();
        if self.signals.log_dir.is_offline() {
            tracing::warn!("the log directory is offline: closing without the clean-shutdown marker (the next start runs a full recovery)");
            return Ok(());
        }
        self.checkpoint_high_watermarks()?;
        self.partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.logs
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown()
    }
}
