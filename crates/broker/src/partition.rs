//! One partition replica on this broker: its log and its role, as the metadata image last
//! set them.
//!
//! As leader it owns the high watermark (HW): HW = min LEO over the ISR — its own log end
//! offset and each follower's last reported fetch offset — so a record below the HW is on
//! every in-sync replica. Invariants, asserted: HW ≤ LEO; HW never decreases while this
//! broker leads; leader epochs never decrease; the HW does not advance while
//! |ISR| < `min.insync.replicas` (Kafka's strict min ISR, KIP-966). Consumers read below the
//! HW only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_log::{LogError, LogReadInfo, SharedLog};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::metadata as pb;
use sluice_record::{LeaderEpoch, Offset, TopicPartition};
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("this broker is not the leader")]
    NotLeader,
    #[error("the request's leader epoch {request} is older than the current {current}")]
    FencedLeaderEpoch { request: i32, current: i32 },
    #[error("the request's leader epoch {request} is newer than the current {current}")]
    UnknownLeaderEpoch { request: i32, current: i32 },
    #[error("{isr} in-sync replicas, below min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: usize },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl PartitionError {
    /// The Kafka error code a client gets.
    pub fn error_code(&self) -> i16 {
        use sluice_record::RecordError as R;
        match self {
            PartitionError::NotLeader => ec::NOT_LEADER_OR_FOLLOWER,
            PartitionError::FencedLeaderEpoch { .. } => ec::FENCED_LEADER_EPOCH,
            PartitionError::UnknownLeaderEpoch { .. } => ec::UNKNOWN_LEADER_EPOCH,
            PartitionError::NotEnoughReplicas { .. } => ec::NOT_ENOUGH_REPLICAS,
            PartitionError::Log(e) => match e {
                LogError::OffsetOutOfRange { .. } => ec::OFFSET_OUT_OF_RANGE,
                LogError::RecordSetTooLarge { .. } => ec::RECORD_LIST_TOO_LARGE,
                LogError::EmptyRecordSet => ec::CORRUPT_MESSAGE,
                LogError::InvalidRecord(r) => match r {
                    R::TooLarge { .. } => ec::MESSAGE_TOO_LARGE,
                    R::UnsupportedMagic(_) => ec::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                    R::InvalidOffsetDelta { .. } => ec::INVALID_RECORD,
                    _ => ec::CORRUPT_MESSAGE,
                },
                LogError::EpochRegression { .. } => ec::FENCED_LEADER_EPOCH,
                LogError::Io { .. }
                | LogError::Closed
                | LogError::CorruptLog { .. }
                | LogError::CorruptIndex { .. }
                | LogError::CorruptCheckpoint { .. } => ec::KAFKA_STORAGE_ERROR,
                _ => ec::UNKNOWN_SERVER_ERROR,
            },
        }
    }
}

/// Who may read how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchIsolation {
    /// Consumers: below the high watermark.
    HighWatermark,
    /// Followers: the whole log.
    LogEnd,
}

struct Inner {
    state: PartitionState,
    high_watermark: Offset,
    /// Followers' log end offsets, as their fetches report them (replication, issue 5).
    follower_leos: BTreeMap<i32, Offset>,
    min_insync_replicas: usize,
}

pub struct Partition {
    topic_partition: TopicPartition,
    topic_id: Vec<u8>,
    broker_id: i32,
    log: SharedLog,
    inner: Mutex<Inner>,
    /// Bumped whenever a log end offset or high watermark moves: wakes long-polling
    /// fetches and parked acks=all produces.
    data_version: Arc<watch::Sender<u64>>,
}

pub struct AppendResult {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub log_start_offset: Offset,
}

impl Partition {
    pub fn new(
        topic_partition: TopicPartition,
        topic_id: Vec<u8>,
        broker_id: i32,
        log: SharedLog,
        checkpointed_high_watermark: Offset,
        data_version: Arc<watch::Sender<u64>>,
    ) -> Self {
        let leo = sluice_log::lock(&log).log_end_offset();
        Partition {
            topic_partition,
            topic_id,
            broker_id,
            log,
            inner: Mutex::new(Inner {
                state: PartitionState {
                    leader: -1,
                    leader_epoch: -1,
                    partition_epoch: -1,
                    replicas: Vec::new(),
                    isr: Vec::new(),
                },
                high_watermark: checkpointed_high_watermark.min(leo),
                follower_leos: BTreeMap::new(),
                min_insync_replicas: 1,
            }),
            data_version,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.topic_partition
    }

    pub fn topic_id(&self) -> &[u8] {
        &self.topic_id
    }

    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    pub fn state(&self) -> PartitionState {
        self.inner().state.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.inner().state.leader == self.broker_id
    }

    pub fn high_watermark(&self) -> Offset {
        self.inner().high_watermark
    }

    pub fn set_min_insync_replicas(&self, min: usize) {
        self.inner().min_insync_replicas = min.max(1);
    }

    /// Applies the partition's state from the metadata image. Older states (by leader
    /// epoch, then partition epoch) are ignored, so replays are harmless.
    pub fn apply_state(&self, p: &pb::Partition) {
        let mut inner = self.inner();
        let current = &inner.state;
        if (p.leader_epoch, p.partition_epoch) <= (current.leader_epoch, current.partition_epoch) {
            return;
        }
        assert!(
            p.leader_epoch >= current.leader_epoch,
            "leader epochs never decrease"
        );
        let leader_changed = p.leader_epoch != current.leader_epoch;
        inner.state = PartitionState {
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        };
        if leader_changed {
            inner.follower_leos.clear();
        }
        if p.leader == self.broker_id {
            self.maybe_advance_high_watermark(&mut inner);
        }
        drop(inner);
        self.bump();
    }

    fn bump(&self) {
        self.data_version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// HW = min LEO over the ISR, if |ISR| ≥ min.insync.replicas; never decreases.
    fn maybe_advance_high_watermark(&self, inner: &mut Inner) {
        let leo = sluice_log::lock(&self.log).log_end_offset();
        if inner.state.isr.len() < inner.min_insync_replicas {
            return;
        }
        let mut candidate = leo;
        for id in &inner.state.isr {
            if *id == self.broker_id {
                continue;
            }
            let follower = inner.follower_leos.get(id).copied().unwrap_or(Offset::ZERO);
            candidate = candidate.min(follower);
        }
        if candidate > inner.high_watermark {
            inner.high_watermark = candidate;
        }
        assert!(inner.high_watermark <= leo, "HW ≤ LEO");
    }

    fn check_leader_epoch(
        &self,
        state: &PartitionState,
        requested: i32,
    ) -> Result<(), PartitionError> {
        if requested < 0 || requested == state.leader_epoch {
            return Ok(());
        }
        if requested < state.leader_epoch {
            Err(PartitionError::FencedLeaderEpoch {
                request: requested,
                current: state.leader_epoch,
            })
        } else {
            Err(PartitionError::UnknownLeaderEpoch {
                request: requested,
                current: state.leader_epoch,
            })
        }
    }

    /// Appends a producer's record set (validated, stamped, never re-encoded). With
    /// `required_acks == -1` the ISR must hold at least `min.insync.replicas` members.
    pub fn append_as_leader(
        &self,
        records: &mut [u8],
        required_acks: i16,
        now_ms: i64,
    ) -> Result<AppendResult, PartitionError> {
        let mut inner = self.inner();
        if inner.state.leader != self.broker_id {
            return Err(PartitionError::NotLeader);
        }
        if required_acks == -1 && inner.state.isr.len() < inner.min_insync_replicas {
            return Err(PartitionError::NotEnoughReplicas {
                isr: inner.state.isr.len(),
                min: inner.min_insync_replicas,
            });
        }
        let epoch = LeaderEpoch(inner.state.leader_epoch);
        let (info, log_start_offset) = {
            let mut log = sluice_log::lock(&self.log);
            let info = log.append_as_leader(records, epoch, now_ms)?;
            (info, log.log_start_offset())
        };
        self.maybe_advance_high_watermark(&mut inner);
        drop(inner);
        self.bump();
        Ok(AppendResult {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset,
        })
    }

    /// Reads whole batches from `fetch_offset` for a consumer (below the HW) or a follower.
    pub fn read(
        &self,
        fetch_offset: Offset,
        max_bytes: usize,
        isolation: FetchIsolation,
        min_one_batch: bool,
        current_leader_epoch: i32,
    ) -> Result<(LogReadInfo, Offset), PartitionError> {
        let inner = self.inner();
        if inner.state.leader != self.broker_id {
            return Err(PartitionError::NotLeader);
        }
        self.check_leader_epoch(&inner.state, current_leader_epoch)?;
        let high_watermark = inner.high_watermark;
        drop(inner);
        let log = sluice_log::lock(&self.log);
        let max_offset = match isolation {
            FetchIsolation::HighWatermark => high_watermark,
            FetchIsolation::LogEnd => log.log_end_offset(),
        };
        let info = log.read(fetch_offset, max_bytes, max_offset, min_one_batch)?;
        Ok((info, high_watermark))
    }

    /// (log start offset, high watermark, log end offset) for a leader, epoch-checked.
    pub fn offsets(
        &self,
        current_leader_epoch: i32,
    ) -> Result<(Offset, Offset, Offset), PartitionError> {
        let inner = self.inner();
        if inner.state.leader != self.broker_id {
            return Err(PartitionError::NotLeader);
        }
        self.check_leader_epoch(&inner.state, current_leader_epoch)?;
        let hw = inner.high_watermark;
        drop(inner);
        let log = sluice_log::lock(&self.log);
        Ok((log.log_start_offset(), hw, log.log_end_offset()))
    }

    /// ListOffsets by timestamp: the first offset below the HW whose record's timestamp is
    /// at least `timestamp`, as (timestamp, offset).
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        current_leader_epoch: i32,
    ) -> Result<Option<(i64, Offset)>, PartitionError> {
        let (_, hw, _) = self.offsets(current_leader_epoch)?;
        let found = sluice_log::lock(&self.log).offset_for_timestamp(timestamp)?;
        Ok(found.filter(|(_, offset)| *offset < hw))
    }

    pub fn leader_epoch(&self) -> i32 {
        self.inner().state.leader_epoch
    }
}
