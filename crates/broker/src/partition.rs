//! One partition replica on this broker: its log and its role, as the metadata image last
//! set them.
//!
//! As leader it owns the high watermark (HW): HW = min LEO over the ISR — its own log end
//! offset and each follower's last reported fetch offset — so a record below the HW is on
//! every in-sync replica. Invariants, asserted: HW ≤ LEO; HW never decreases while this
//! broker leads; leader epochs never decrease; the HW does not advance while
//! |ISR| < `min.insync.replicas` (Kafka's strict min ISR, KIP-966). Consumers read below the
//! HW only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sluice_log::{LogError, LogReadInfo, ProducerStateError, SharedLog};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::metadata as pb;
use sluice_record::{LeaderEpoch, Offset, TopicPartition};
use tokio::sync::{watch, Notify};

use crate::controller_lease::ControllerLease;
use crate::leader_state::{LeaderState, SessionClock};
use crate::log_dir_health::LogDirHealth;
use crate::purgatory::{ParkedRequest, SessionWake, WatchList};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// Reads checked before they are served are read in pieces of this size.
const CHECK_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("this broker is not the leader")]
    NotLeader,
    #[error("this broker leads the partition; it does not follow")]
    NotFollower,
    #[error("the request's leader epoch {request} is older than the current {current}")]
    FencedLeaderEpoch { request: i32, current: i32 },
    #[error("the request's leader epoch {request} is newer than the current {current}")]
    UnknownLeaderEpoch { request: i32, current: i32 },
    #[error("{isr} in-sync replicas, below min.insync.replicas {min}")]
    NotEnoughReplicas { isr: usize, min: usize },
    #[error("the log directory is offline (it cannot take writes)")]
    LogDirOffline,
    #[error("this replica's log is damaged at the offset asked for")]
    Damaged,
    #[error("a new leader's high watermark {high_watermark} is still below the start of its epoch {epoch_start}")]
    OffsetNotAvailable {
        high_watermark: i64,
        epoch_start: i64,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl PartitionError {
    /// The Kafka error code a client gets.
    pub fn error_code(&self) -> i16 {
        use sluice_record::RecordError as R;
        match self {
            PartitionError::NotLeader | PartitionError::NotFollower => ec::NOT_LEADER_OR_FOLLOWER,
            PartitionError::FencedLeaderEpoch { .. } => ec::FENCED_LEADER_EPOCH,
            PartitionError::UnknownLeaderEpoch { .. } => ec::UNKNOWN_LEADER_EPOCH,
            PartitionError::NotEnoughReplicas { .. } => ec::NOT_ENOUGH_REPLICAS,
            PartitionError::LogDirOffline | PartitionError::Damaged => ec::KAFKA_STORAGE_ERROR,
            PartitionError::OffsetNotAvailable { .. } => ec::OFFSET_NOT_AVAILABLE,
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
                LogError::Producer(p) => match p {
                    ProducerStateError::InvalidProducerEpoch { .. } => ec::INVALID_PRODUCER_EPOCH,
                    ProducerStateError::OutOfOrderSequence { .. } => {
                        ec::OUT_OF_ORDER_SEQUENCE_NUMBER
                    }
                    ProducerStateError::TransactionalBatch => ec::INVALID_TXN_STATE,
                    ProducerStateError::ControlBatch | ProducerStateError::NotAlone => {
                        ec::INVALID_RECORD
                    }
                },
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
    /// Some while this broker leads the partition.
    leader: Option<LeaderState>,
    /// The high watermark while not leading (the checkpointed value, or the last one led).
    high_watermark: Offset,
    min_insync_replicas: usize,
    /// An AlterPartition for this partition is in flight.
    isr_change_pending: bool,
    /// The last leadership of this broker that ended: its leader epoch and its high
    /// watermark then. An acks=all append of that epoch is committed only below it.
    ended_leadership: Option<(i32, Offset)>,
    /// This replica's log holds a damaged batch from here (found by a read or the scrub): as
    /// leader it asks to leave the ISR so an intact replica takes over; as follower it
    /// truncates here and fetches the rest again.
    damaged_from: Option<Offset>,
}

pub struct Partition {
    topic_partition: TopicPartition,
    topic_id: Vec<u8>,
    broker_id: i32,
    log: SharedLog,
    inner: Mutex<Inner>,
    signals: Arc<PartitionSignals>,
    /// The requests parked on this partition (acks=all produces, long-polling fetches).
    watchers: WatchList,
}

/// Broker-wide signals every partition shares.
#[derive(Default)]
pub struct PartitionSignals {
    /// Bumped whenever any partition's log end offset or high watermark moves (broker-wide:
    /// controlled shutdown waits on it; parked requests wait on their own partitions).
    pub data_version: watch::Sender<u64>,
    /// Set when controlled shutdown begins: producers are refused with
    /// NOT_LEADER_OR_FOLLOWER so the followers can catch up before leadership moves.
    pub writes_closed: AtomicBool,
    /// A follower outside the ISR caught up: the ISR task should propose it now rather
    /// than at its next periodic check (Kafka expands the ISR on the fetch itself).
    pub isr_change_wanted: Notify,
    /// Whether the log directory takes writes; every log write's outcome goes through it.
    pub log_dir: Arc<LogDirHealth>,
    /// Idempotent producers' outcomes, broker-wide (for metrics).
    pub producer_counters: ProducerCounters,
    /// ISR changes this broker proposed as leader and the controller committed: members
    /// dropped (Kafka's IsrShrinksPerSec) and added (IsrExpandsPerSec), as counters.
    pub isr_shrinks: AtomicU64,
    pub isr_expands: AtomicU64,
    /// Whether the active controller still vouches for this broker: without it, no
    /// partition acts as leader (see [`ControllerLease`]).
    pub controller_lease: Arc<ControllerLease>,
}

/// What the idempotent-producer checks did, counted since the broker started.
#[derive(Default, Debug)]
pub struct ProducerCounters {
    /// Retries of batches already in the log, answered without appending them again.
    pub duplicates_suppressed: AtomicU64,
    /// Batches refused with OUT_OF_ORDER_SEQUENCE_NUMBER.
    pub out_of_order_rejections: AtomicU64,
    /// Batches refused with INVALID_PRODUCER_EPOCH.
    pub invalid_epoch_rejections: AtomicU64,
}

/// An ISR change a leader asks the controller for (AlterPartition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub topic_partition: TopicPartition,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// The ISR the change was proposed against.
    pub isr: Vec<i32>,
    pub new_isr: Vec<i32>,
}

pub struct AppendResult {
    /// For a duplicate (a producer's retry of a batch in the log): where it was written.
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub log_start_offset: Offset,
    /// The leader epoch the batch was appended in (for a duplicate: the current one, whose
    /// high watermark commits it now that it is in this leader's log).
    pub leader_epoch: i32,
    /// A producer's retry of a batch already in the log: nothing was appended.
    pub duplicate: bool,
    /// Records appended (0 for a duplicate).
    pub record_count: u64,
}

/// Where an acks=all append stands ([`Partition::acks_all_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksAllOutcome {
    /// The high watermark has not passed it yet, and this broker still leads in its epoch.
    Waiting,
    /// Committed: the high watermark passed it while this broker led in its epoch.
    Committed,
    /// This broker stopped leading before it was committed: it may be truncated, so it
    /// must not be acknowledged (NOT_LEADER_OR_FOLLOWER; the producer retries).
    LeadershipLost,
}

impl Partition {
    pub fn new(
        topic_partition: TopicPartition,
        topic_id: Vec<u8>,
        broker_id: i32,
        log: SharedLog,
        checkpointed_high_watermark: Offset,
        signals: Arc<PartitionSignals>,
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
                leader: None,
                high_watermark: checkpointed_high_watermark.min(leo),
                min_insync_replicas: 1,
                isr_change_pending: false,
                ended_leadership: None,
                damaged_from: None,
            }),
            signals,
            watchers: WatchList::default(),
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

    pub fn is_leader(&self) -> bool {
        self.inner().leader.is_some()
    }

    /// The state from the image this replica last applied (leader, epochs, replicas, ISR).
    /// Whether this broker is in the partition's ISR (as its image has it).
    pub fn in_isr(&self) -> bool {
        self.inner().state.isr.contains(&self.broker_id)
    }

    pub fn state(&self) -> PartitionState {
        self.inner().state.clone()
    }

    /// The partition's `min.insync.replicas`.
    pub fn min_insync_replicas(&self) -> usize {
        self.inner().min_insync_replicas
    }

    pub fn high_watermark(&self) -> Offset {
        Self::high_watermark_of(&self.inner())
    }

    fn high_watermark_of(inner: &Inner) -> Offset {
        inner
            .leader
            .as_ref()
            .map_or(inner.high_watermark, LeaderState::high_watermark)
    }

    pub fn set_min_insync_replicas(&self, min: usize) {
        let mut inner = self.inner();
        inner.min_insync_replicas = min.max(1);
        if let Some(leader) = &mut inner.leader {
            leader.set_min_insync_replicas(min);
        }
    }

    /// Applies the partition's state from the metadata image. Older states (by leader
    /// epoch, then partition epoch) are ignored, so replays are harmless. A new leader
    /// epoch naming this broker starts a fresh [`LeaderState`]; the same epoch only
    /// updates the ISR.
    pub fn apply_state(&self, p: &pb::Partition, now_ms: i64) {
        let mut inner = self.inner();
        let current = &inner.state;
        if (p.leader_epoch, p.partition_epoch) <= (current.leader_epoch, current.partition_epoch) {
            return;
        }
        assert!(
            p.leader_epoch >= current.leader_epoch,
            "leader epochs never decrease"
        );
        let new_epoch = p.leader_epoch != current.leader_epoch;
        inner.isr_change_pending = false;
        if new_epoch {
            // the leadership of the old epoch (if this broker had it) ends here
            Self::end_leadership(&mut inner);
        }
        inner.state = PartitionState {
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        };
        let leads = p.leader == self.broker_id;
        let leo = sluice_log::lock(&self.log).log_end_offset();
        match (&mut inner.leader, leads) {
            (Some(leader), true) if !new_epoch => leader.set_isr(&p.isr),
            (_, true) => {
                // the epoch starts at the log end before anything is appended in it, so
                // OffsetForLeaderEpoch answers for it from the first moment (KIP-101)
                let assigned = self.signals.log_dir.check(
                    sluice_log::lock(&self.log)
                        .assign_epoch_start_offset(LeaderEpoch(p.leader_epoch)),
                );
                match assigned {
                    Ok(()) => {
                        let hw = Self::high_watermark_of(&inner).min(leo);
                        // (Kafka logs each leadership it takes, with where its log stands)
                        tracing::info!(partition = %self.topic_partition, leader_epoch = p.leader_epoch, high_watermark = hw.0, log_end = leo.0, isr = ?p.isr, "leading");
                        inner.leader = Some(LeaderState::new(
                            self.broker_id,
                            &p.replicas,
                            &p.isr,
                            inner.min_insync_replicas,
                            hw,
                            leo,
                            now_ms,
                        ));
                    }
                    Err(e) => {
                        tracing::error!(partition = %self.topic_partition, leader_epoch = p.leader_epoch, error = %e, "cannot record the new leader epoch in the log: not leading");
                    }
                }
            }
            (_, false) => Self::end_leadership(&mut inner),
        }
        let mut join_wanted = false;
        if let Some(leader) = &mut inner.leader {
            leader.maybe_advance_high_watermark(leo);
            // a follower that caught up while a change was in flight: in a fetch session
            // it may not name this partition again, so it is proposed now
            join_wanted = !leader.ready_to_join().is_empty();
        }
        drop(inner);
        if join_wanted {
            self.signals.isr_change_wanted.notify_one();
        }
        self.bump();
    }

    /// As leader: the ISR it should have now — without followers out of sync for longer
    /// than `max_lag_ms`, with followers that caught up — if that differs from the
    /// current one and no change is in flight. Only followers `eligible` says may join
    /// (live, unfenced brokers: the controller refuses others, KIP-841) are added. Marks the
    /// change in flight; joining followers count for the HW from now on.
    pub fn propose_isr_change(
        &self,
        now_ms: i64,
        max_lag_ms: i64,
        eligible: impl Fn(i32) -> bool,
    ) -> Option<IsrChange> {
        let mut inner = self.inner();
        if inner.isr_change_pending {
            return None;
        }
        let leo = sluice_log::lock(&self.log).log_end_offset();
        let state = inner.state.clone();
        if inner.leader.is_some() && inner.damaged_from.is_some() {
            // a damaged leader leaves the ISR: the controller elects an intact member
            let new_isr: Vec<i32> = state
                .isr
                .iter()
                .copied()
                .filter(|id| *id != self.broker_id)
                .collect();
            if new_isr.is_empty() {
                return None;
            }
            inner.isr_change_pending = true;
            tracing::warn!(partition = %self.topic_partition, isr = ?state.isr, new_isr = ?new_isr, "this replica is damaged: leaving the ISR so an intact replica leads");
            return Some(IsrChange {
                topic_partition: self.topic_partition.clone(),
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                isr: state.isr.clone(),
                new_isr,
            });
        }
        // no ISR change without the controller lease, and no follower dropped for lag until
        // the lease has been held for a whole lag time: followers' fetches were refused
        // while it had run out
        let held_for = self
            .signals
            .controller_lease
            .held_for(std::time::Instant::now())?;
        let lag_counts = held_for.as_millis() >= u128::try_from(max_lag_ms).unwrap_or(0);
        let leader = inner.leader.as_mut()?;
        let out = if lag_counts {
            leader.out_of_sync(leo, now_ms, max_lag_ms)
        } else {
            Vec::new()
        };
        let mut join = leader.ready_to_join();
        join.retain(|id| eligible(*id));
        if out.is_empty() && join.is_empty() {
            return None;
        }
        // replicas' order (preferred leader first), like the controller keeps it
        let new_isr: Vec<i32> = state
            .replicas
            .iter()
            .copied()
            .filter(|id| (state.isr.contains(id) && !out.contains(id)) || join.contains(id))
            .collect();
        if new_isr == state.isr {
            return None;
        }
        leader.set_joining(&join);
        inner.isr_change_pending = true;
        tracing::info!(partition = %self.topic_partition, isr = ?state.isr, new_isr = ?new_isr, "proposing an ISR change");
        Some(IsrChange {
            topic_partition: self.topic_partition.clone(),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr: state.isr.clone(),
            new_isr,
        })
    }

    /// The controller refused or lost the change: allow another proposal.
    pub fn isr_change_failed(&self) {
        let mut inner = self.inner();
        inner.isr_change_pending = false;
        if let Some(leader) = &mut inner.leader {
            leader.set_joining(&[]);
        }
    }

    /// The controller says the state a change was proposed against (`leader_epoch`,
    /// `partition_epoch`) is stale (a newer partition or leader epoch exists): stop acting
    /// as leader until the metadata brings the newer state. If this replica has applied a
    /// newer state meanwhile (the answer crossed it), that state stands: resigning then
    /// would wait for a state that has already come, leaderless until the next change.
    pub fn resign(&self, leader_epoch: i32, partition_epoch: i32) {
        let mut inner = self.inner();
        let proposed_against = (leader_epoch, partition_epoch);
        if (inner.state.leader_epoch, inner.state.partition_epoch) != proposed_against {
            drop(inner);
            self.isr_change_failed();
            return;
        }
        if inner.leader.is_some() {
            tracing::warn!(partition = %self.topic_partition, "leadership is stale: no longer acting as leader");
            Self::end_leadership(&mut inner);
        }
        inner.isr_change_pending = false;
        drop(inner);
        self.bump();
    }

    /// The partition is no longer hosted here (deleted or reassigned): stop leading, so
    /// parked acks=all requests are answered at once.
    pub fn stop(&self) {
        let mut inner = self.inner();
        Self::end_leadership(&mut inner);
        drop(inner);
        self.bump();
    }

    /// Stops leading (if leading), remembering the epoch and high watermark it ended at.
    fn end_leadership(inner: &mut Inner) {
        if let Some(leader) = inner.leader.take() {
            let hw = leader.high_watermark();
            inner.high_watermark = hw;
            inner.ended_leadership = Some((inner.state.leader_epoch, hw));
        }
    }

    /// Where an acks=all append ending at `last_offset`, made in `leader_epoch`, stands.
    /// Only the high watermark of that leadership counts: once it ended, a later high
    /// watermark (as follower, or leading again) may cover other records written at
    /// those offsets after a truncation.
    pub fn acks_all_outcome(&self, last_offset: Offset, leader_epoch: i32) -> AcksAllOutcome {
        let inner = self.inner();
        let (hw, still_leading) = match (&inner.leader, inner.ended_leadership) {
            (Some(leader), _) if inner.state.leader_epoch == leader_epoch => {
                (leader.high_watermark(), true)
            }
            (_, Some((epoch, hw))) if epoch == leader_epoch => (hw, false),
            _ => return AcksAllOutcome::LeadershipLost,
        };
        if hw > last_offset {
            AcksAllOutcome::Committed
        } else if still_leading {
            AcksAllOutcome::Waiting
        } else {
            AcksAllOutcome::LeadershipLost
        }
    }

    /// Parks `request` on this partition: it is woken whenever the log end offset or the
    /// high watermark moves, or leadership changes.
    pub fn watch(&self, request: &ParkedRequest) {
        request.watch(&self.watchers);
    }

    /// Retention deleted the log's head: what watches the partition looks again.
    pub fn log_start_moved(&self) {
        self.watchers.wake();
    }

    fn bump(&self) {
        self.watchers.wake();
        self.signals
            .data_version
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Watched by a fetch session as its partition `slot`, for as long as the session
    /// lives or until [`Self::unwatch_session`]: each move marks the slot.
    pub fn watch_session(&self, session: &Arc<SessionWake>, slot: u32) {
        self.watchers.watch_session(session, slot);
    }

    /// No longer in that fetch session.
    pub fn unwatch_session(&self, session: &Arc<SessionWake>, slot: u32) {
        self.watchers.unwatch_session(session, slot);
    }

    /// A follower's fetch from `fetch_offset` (its log end offset) reached the leader.
    pub fn on_follower_fetch(&self, follower_id: i32, fetch_offset: Offset, now_ms: i64) {
        self.on_follower_session_fetch(follower_id, fetch_offset, now_ms, None);
    }

    /// [`Self::on_follower_fetch`], through a fetch session (KIP-227) whose later fetches
    /// name this partition only when its position changes: `session` tells when the
    /// session last fetched (see [`LeaderState::on_leader_append`]).
    pub fn on_follower_session_fetch(
        &self,
        follower_id: i32,
        fetch_offset: Offset,
        now_ms: i64,
        session: Option<Weak<SessionClock>>,
    ) {
        let mut inner = self.inner();
        let pending = inner.isr_change_pending;
        let Ok(leader) = self.leading_mut(&mut inner) else {
            return;
        };
        let leo = sluice_log::lock(&self.log).log_end_offset();
        let moved = leader.on_follower_fetch(follower_id, fetch_offset, leo, now_ms, session);
        if !pending && leader.can_join(follower_id) {
            self.signals.isr_change_wanted.notify_one();
        }
        drop(inner);
        if moved {
            self.bump();
        }
    }

    /// The follower's fetch session no longer holds this partition.
    pub fn end_follower_session(&self, follower_id: i32) {
        if let Some(leader) = &mut self.inner().leader {
            leader.end_follower_session(follower_id);
        }
    }

    /// This replica's leader state, if it may act as leader now: it leads in its image,
    /// and the controller lease holds (a broker cut from the controllers may have been
    /// replaced).
    fn leading<'a>(&self, inner: &'a Inner) -> Result<&'a LeaderState, PartitionError> {
        match &inner.leader {
            Some(leader) if self.signals.controller_lease.is_held() => Ok(leader),
            _ => Err(PartitionError::NotLeader),
        }
    }

    /// [`Self::leading`], to change.
    fn leading_mut<'a>(&self, inner: &'a mut Inner) -> Result<&'a mut LeaderState, PartitionError> {
        match &mut inner.leader {
            Some(leader) if self.signals.controller_lease.is_held() => Ok(leader),
            _ => Err(PartitionError::NotLeader),
        }
    }

    /// Whether this broker leads the partition and may answer as leader now.
    pub fn serves_as_leader(&self) -> bool {
        self.leading(&self.inner()).is_ok()
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
        let leader_epoch = inner.state.leader_epoch;
        let epoch = LeaderEpoch(leader_epoch);
        let isr = inner.state.isr.len();
        let min = inner.min_insync_replicas;
        let leader = self.leading_mut(&mut inner)?;
        // checked under the state lock: once shutdown closed writes and saw HW = LEO, no
        // append slips in behind it
        if self.signals.writes_closed.load(Ordering::SeqCst) {
            return Err(PartitionError::NotLeader);
        }
        if required_acks == -1 && !leader.has_min_isr() {
            return Err(PartitionError::NotEnoughReplicas { isr, min });
        }
        if self.signals.log_dir.is_offline() {
            return Err(PartitionError::LogDirOffline);
        }
        let (appended, log_start_offset, previous_end, leo) = {
            let mut log = sluice_log::lock(&self.log);
            let previous_end = log.log_end_offset();
            let appended = log.append_as_leader(records, epoch, now_ms);
            (
                appended,
                log.log_start_offset(),
                previous_end,
                log.log_end_offset(),
            )
        };
        let counters = &self.signals.producer_counters;
        let info = match self.signals.log_dir.check(appended) {
            Ok(info) => info,
            Err(LogError::Producer(e)) => {
                let counter = match e {
                    ProducerStateError::OutOfOrderSequence { .. } => {
                        Some(&counters.out_of_order_rejections)
                    }
                    ProducerStateError::InvalidProducerEpoch { .. } => {
                        Some(&counters.invalid_epoch_rejections)
                    }
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(partition = %self.topic_partition, error = %e, "producer batch refused");
                return Err(LogError::Producer(e).into());
            }
            Err(e) => return Err(e.into()),
        };
        if info.duplicate {
            counters
                .duplicates_suppressed
                .fetch_add(1, Ordering::Relaxed);
            return Ok(AppendResult {
                base_offset: info.base_offset,
                last_offset: info.last_offset,
                log_start_offset,
                leader_epoch,
                duplicate: true,
                record_count: 0,
            });
        }
        leader.on_leader_append(previous_end, now_ms);
        leader.maybe_advance_high_watermark(leo);
        drop(inner);
        self.bump();
        // the lease again: a broker stalled between the first check and here (a paused
        // process) may have been replaced meanwhile; an acks=0/1 write must then not be
        // acknowledged (it will be truncated). The producer retries it
        if !self.signals.controller_lease.is_held() {
            return Err(PartitionError::NotLeader);
        }
        Ok(AppendResult {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset,
            leader_epoch,
            duplicate: false,
            record_count: info.record_count,
        })
    }

    /// Reads whole batches from `fetch_offset` for a consumer (below the HW) or a follower.
    /// Bytes never checked since this broker loaded them are checked before they are
    /// served (once; see [`Self::check_read`]). Nothing at or past a damaged batch is
    /// served: a consumer fetching there gets KAFKA_STORAGE_ERROR (it asks for metadata
    /// again and finds the intact replica that leads by then), a follower gets nothing.
    pub fn read(
        &self,
        fetch_offset: Offset,
        max_bytes: usize,
        isolation: FetchIsolation,
        min_one_batch: bool,
        current_leader_epoch: i32,
    ) -> Result<(LogReadInfo, Offset), PartitionError> {
        let inner = self.inner();
        self.leading(&inner)?;
        self.check_leader_epoch(&inner.state, current_leader_epoch)?;
        let high_watermark = Self::high_watermark_of(&inner);
        let damaged_from = inner.damaged_from;
        drop(inner);
        if damaged_from.is_some_and(|d| fetch_offset >= d)
            && isolation == FetchIsolation::HighWatermark
        {
            return Err(PartitionError::Damaged);
        }
        let log = sluice_log::lock(&self.log);
        let max_offset = match isolation {
            FetchIsolation::HighWatermark => high_watermark,
            FetchIsolation::LogEnd => log.log_end_offset(),
        };
        let max_offset = damaged_from.map_or(max_offset, |d| max_offset.min(d));
        let mut info = log.read(fetch_offset, max_bytes, max_offset, min_one_batch)?;
        drop(log);
        if info.unchecked {
            let found_by = match isolation {
                FetchIsolation::HighWatermark => "serving a consumer",
                FetchIsolation::LogEnd => "serving a follower",
            };
            self.check_read(&mut info, fetch_offset, found_by)?;
        }
        Ok((info, high_watermark))
    }

    /// Checks a read's region (a pread and a CRC32C pass, outside the log's lock) and
    /// records what passed as checked; a damaged batch is cut off with what follows it and
    /// reported (see [`Self::report_damage`]).
    fn check_read(
        &self,
        info: &mut LogReadInfo,
        fetch_offset: Offset,
        found_by: &'static str,
    ) -> Result<(), PartitionError> {
        let Some(region) = &mut info.region else {
            return Ok(());
        };
        let check = match sluice_log::check_region(
            region,
            fetch_offset,
            &info.leader_epochs,
            CHECK_CHUNK_BYTES,
        ) {
            Ok(check) => check,
            // the file was truncated under the read (this replica stopped leading)
            Err(_) if self.truncated_since(info.truncations) => {
                info.region = None;
                return Ok(());
            }
            Err(e) => {
                let dir = sluice_log::lock(&self.log).dir().to_path_buf();
                let e = LogError::io(dir)(e);
                self.signals.log_dir.take_offline(&e);
                return Err(PartitionError::from(e));
            }
        };
        sluice_log::lock(&self.log).mark_checked(
            info.segment_base,
            region.position,
            check.valid_bytes,
        );
        let Some(damage) = check.damage else {
            return Ok(());
        };
        if check.valid_bytes == 0 {
            info.region = None;
        } else {
            region.length = check.valid_bytes;
        }
        match self.report_damage(damage, found_by, info.truncations) {
            Some(offset) => info.next_offset = offset,
            // the log changed under the read: serve nothing, the next fetch reads again
            None => info.region = None,
        }
        Ok(())
    }

    /// A batch of this replica's log failed its checks (`found_by` a read or the scrub,
    /// reading the log as it was at `truncations`): nothing from there on is served; as
    /// leader this replica leaves the ISR so an intact replica takes over, as follower it
    /// truncates the damage once out of the ISR and fetches it again. Logged once per
    /// damage found lower in the log. Returns where the damage starts (within the log), or
    /// None when the log was truncated (or lost segments to retention) since it was read:
    /// the bytes read may not be the log's any more, so nothing is reported.
    pub fn report_damage(
        &self,
        damage: sluice_log::Damage,
        found_by: &'static str,
        truncations: u64,
    ) -> Option<Offset> {
        // the partition's lock, then the log's: the order every path takes
        let mut inner = self.inner();
        let offset = {
            let log = sluice_log::lock(&self.log);
            if log.truncations() != truncations {
                return None;
            }
            let last = log.log_end_offset().0.saturating_sub(1);
            Offset(
                damage
                    .offset
                    .0
                    .clamp(log.log_start_offset().0, last.max(log.log_start_offset().0)),
            )
        };
        if inner.damaged_from.is_some_and(|d| d <= offset) {
            return Some(offset);
        }
        let leading = inner.leader.is_some();
        tracing::error!(partition = %self.topic_partition, offset = offset.0, found_by, leading, error = %damage.error, "a batch in this replica's log is damaged: not serving it or anything after it; leaving the ISR, then truncating it and fetching it again");
        inner.damaged_from = Some(offset);
        drop(inner);
        self.signals.isr_change_wanted.notify_one();
        Some(offset)
    }

    /// Whether the log was truncated since it counted `truncations` (bytes read from its
    /// files before may not be what it holds now).
    pub fn truncated_since(&self, truncations: u64) -> bool {
        sluice_log::lock(&self.log).truncations() != truncations
    }

    /// What the scrub checks in this replica's log (see [`sluice_log::Log::scrub_regions`]).
    /// A segment file that cannot be opened again (the open-file budget closed it) skips
    /// this pass of the partition; its reads report the error.
    pub fn scrub_regions(&self) -> Vec<sluice_log::ScrubRegion> {
        match sluice_log::lock(&self.log).scrub_regions() {
            Ok(regions) => regions,
            Err(e) => {
                tracing::warn!(partition = %self.topic_partition, error = %e, "scrub: a segment file could not be opened, skipping this pass");
                Vec::new()
            }
        }
    }

    /// The scrub found bytes `[position, position + length)` of a segment valid.
    pub fn mark_checked(&self, segment_base: Offset, position: u64, length: u64) {
        sluice_log::lock(&self.log).mark_checked(segment_base, position, length);
    }

    /// As follower outside the ISR: where this replica's log is damaged, if it is (see
    /// [`Self::read`]). Never while in the ISR: truncating there could leave an electable
    /// replica without committed records.
    pub fn damaged_from(&self) -> Option<Offset> {
        let inner = self.inner();
        let in_isr = inner.state.isr.contains(&self.broker_id);
        inner
            .damaged_from
            .filter(|_| inner.leader.is_none() && !in_isr)
    }

    /// As follower still in the ISR with a damaged log: it does not fetch, so its leader
    /// drops it from the ISR once new records arrive; then it truncates and fetches.
    pub fn damaged_in_isr(&self) -> bool {
        let inner = self.inner();
        inner.damaged_from.is_some()
            && inner.leader.is_none()
            && inner.state.isr.contains(&self.broker_id)
    }

    /// As follower: cuts the damaged suffix off (it is fetched again from the leader).
    pub fn truncate_damage(&self) -> Result<(), PartitionError> {
        let Some(offset) = self.damaged_from() else {
            return Ok(());
        };
        self.truncate_to(offset)?;
        tracing::warn!(partition = %self.topic_partition, offset = offset.0, "truncated the damaged suffix: fetching it again from the leader");
        self.inner().damaged_from = None;
        Ok(())
    }

    /// (log start offset, high watermark, log end offset) for a leader, epoch-checked.
    pub fn offsets(
        &self,
        current_leader_epoch: i32,
    ) -> Result<(Offset, Offset, Offset), PartitionError> {
        self.offsets_and_epoch_start(current_leader_epoch)
            .map(|(start, hw, leo, _)| (start, hw, leo))
    }

    /// [`Self::offsets`], and where this leader's epoch started (read under one lock).
    fn offsets_and_epoch_start(
        &self,
        current_leader_epoch: i32,
    ) -> Result<(Offset, Offset, Offset, Offset), PartitionError> {
        let inner = self.inner();
        let leader = self.leading(&inner)?;
        let epoch_start = leader.epoch_start_offset();
        self.check_leader_epoch(&inner.state, current_leader_epoch)?;
        let hw = Self::high_watermark_of(&inner);
        drop(inner);
        let log = sluice_log::lock(&self.log);
        Ok((
            log.log_start_offset(),
            hw,
            log.log_end_offset(),
            epoch_start,
        ))
    }

    /// [`Self::offsets`] for a client's ListOffsets: OFFSET_NOT_AVAILABLE while this leader's
    /// high watermark is below the start of its epoch (Kafka's rule). A new leader's HW
    /// starts from what it knew as a follower, which may lag the old leader's: answering
    /// it would show clients a high watermark going backwards (committed records hidden
    /// again; the chaos suite's observer saw it). Once the followers have fetched up to
    /// the epoch's start, the HW is at least every HW the old leader gave out.
    pub fn offsets_for_client(
        &self,
        current_leader_epoch: i32,
    ) -> Result<(Offset, Offset, Offset), PartitionError> {
        let (start, hw, leo, epoch_start) = self.offsets_and_epoch_start(current_leader_epoch)?;
        if hw < epoch_start {
            return Err(PartitionError::OffsetNotAvailable {
                high_watermark: hw.0,
                epoch_start: epoch_start.0,
            });
        }
        Ok((start, hw, leo))
    }

    /// ListOffsets by timestamp: the first offset below the HW whose record's timestamp is
    /// at least `timestamp`, as (timestamp, offset).
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        current_leader_epoch: i32,
    ) -> Result<Option<(i64, Offset)>, PartitionError> {
        let (_, hw, _) = self.offsets_for_client(current_leader_epoch)?;
        let found = sluice_log::lock(&self.log).offset_for_timestamp(timestamp)?;
        Ok(found.filter(|(_, offset)| *offset < hw))
    }

    /// OffsetForLeaderEpoch, as leader: the largest epoch at most `epoch` this log has and
    /// where `epoch` ends (the next epoch's start, or the log end for the latest); (-1, -1)
    /// when the log knows no such epoch. What a new follower truncates to (KIP-101/279).
    pub fn end_offset_for_epoch(
        &self,
        current_leader_epoch: i32,
        epoch: i32,
    ) -> Result<(i32, i64), PartitionError> {
        let inner = self.inner();
        self.leading(&inner)?;
        self.check_leader_epoch(&inner.state, current_leader_epoch)?;
        drop(inner);
        let (found, end) = sluice_log::lock(&self.log).end_offset_for_epoch(LeaderEpoch(epoch));
        Ok((found.0, end.0))
    }

    /// As follower: appends a record set fetched from the leader, exactly as the leader
    /// stamped it, and takes the leader's high watermark (capped at the local log end).
    pub fn append_as_follower(
        &self,
        records: &[u8],
        leader_high_watermark: Offset,
        now_ms: i64,
    ) -> Result<(), PartitionError> {
        let mut inner = self.inner();
        if inner.leader.is_some() {
            return Err(PartitionError::NotFollower);
        }
        if self.signals.log_dir.is_offline() {
            return Err(PartitionError::LogDirOffline);
        }
        let leo = {
            let mut log = sluice_log::lock(&self.log);
            if !records.is_empty() {
                self.signals
                    .log_dir
                    .check(log.append_as_follower(records, now_ms))?;
            }
            log.log_end_offset()
        };
        inner.high_watermark = leader_high_watermark.min(leo);
        drop(inner);
        self.bump();
        Ok(())
    }

    /// As follower: removes the log's suffix from `offset` on (what diverged from the
    /// leader). The high watermark follows the log end down if it must.
    pub fn truncate_to(&self, offset: Offset) -> Result<(), PartitionError> {
        let mut inner = self.inner();
        if inner.leader.is_some() {
            return Err(PartitionError::NotFollower);
        }
        let leo = {
            let mut log = sluice_log::lock(&self.log);
            self.signals.log_dir.check(log.truncate_to(offset))?;
            log.log_end_offset()
        };
        if inner.high_watermark > leo {
            tracing::warn!(partition = %self.topic_partition, high_watermark = %inner.high_watermark, log_end = %leo, "truncated below the high watermark");
            inner.high_watermark = leo;
        }
        Ok(())
    }

    /// A follower whose fetch offset fell below the leader's log start (retention deleted
    /// what it lacks): drops its whole log and starts empty at `offset`, the leader's log
    /// start (Kafka's `truncateFullyAndStartAt`). Everything dropped lies below the
    /// leader's log start, so nothing the leader still serves is lost.
    pub fn truncate_fully_and_start_at(&self, offset: Offset) -> Result<(), PartitionError> {
        let mut inner = self.inner();
        if inner.leader.is_some() {
            return Err(PartitionError::NotFollower);
        }
        self.signals
            .log_dir
            .check(sluice_log::lock(&self.log).truncate_fully_and_start_at(offset))?;
        tracing::warn!(partition = %self.topic_partition, %offset, "follower behind the leader's log start: log restarted there");
        // HW <= LEO, and the leader's HW is at least its log start
        inner.high_watermark = offset;
        Ok(())
    }

    /// (log end offset, latest leader epoch in the log): where a follower fetches from.
    pub fn fetch_position(&self) -> (Offset, Option<LeaderEpoch>) {
        let log = sluice_log::lock(&self.log);
        (log.log_end_offset(), log.latest_epoch())
    }

    /// This log's own end offset for `epoch` (see [`Self::end_offset_for_epoch`]).
    pub fn local_end_offset_for_epoch(&self, epoch: i32) -> (LeaderEpoch, Offset) {
        sluice_log::lock(&self.log).end_offset_for_epoch(LeaderEpoch(epoch))
    }

    pub fn leader_epoch(&self) -> i32 {
        self.inner().state.leader_epoch
    }

    /// Whether this broker's log directory is offline (see [`LogDirHealth`]).
    pub fn log_dir_offline(&self) -> bool {
        self.signals.log_dir.is_offline()
    }

    /// As leader with other ISR members: whether they all hold the whole log (HW = LEO),
    /// so one of them can take over without losing a write. True when not leading, or
    /// leading alone (no one could take over anyway).
    pub fn followers_caught_up(&self) -> bool {
        let inner = self.inner();
        let Some(leader) = &inner.leader else {
            return true;
        };
        if inner.state.isr.len() <= 1 {
            return true;
        }
        let leo = sluice_log::lock(&self.log).log_end_offset();
        leader.high_watermark() >= leo
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sluice_log::{Log, LogConfig};
    use sluice_record::{BatchBuilder, Compression};

    use super::*;

    fn partition(dir: &std::path::Path) -> Partition {
        partition_under_lease(dir, Arc::new(ControllerLease::unlimited()))
    }

    fn partition_under_lease(dir: &std::path::Path, lease: Arc<ControllerLease>) -> Partition {
        let tp = TopicPartition::new("t", 0);
        let log = Log::open(
            &dir.join("t-0"),
            tp.clone(),
            LogConfig::default(),
            Offset::ZERO,
            true,
            0,
        )
        .unwrap();
        Partition::new(
            tp,
            vec![0; 16],
            1,
            Arc::new(Mutex::new(log)),
            Offset::ZERO,
            Arc::new(PartitionSignals {
                controller_lease: lease,
                ..PartitionSignals::default()
            }),
        )
    }

    fn state(leader: i32, leader_epoch: i32, partition_epoch: i32, isr: &[i32]) -> pb::Partition {
        pb::Partition {
            partition: 0,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            leader,
            leader_epoch,
            partition_epoch,
            offline_replicas: Vec::new(),
        }
    }

    fn records(n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..n {
            b.append(1, None, Some(b"v"), &[]);
        }
        b.build().unwrap()
    }

    #[test]
    fn the_leader_exposes_only_what_every_isr_member_has() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 0, 0, &[1, 2, 3]), 0);
        let appended = p.append_as_leader(&mut records(5), 1, 0).unwrap();
        assert_eq!(appended.last_offset, Offset(4));
        assert_eq!(
            p.high_watermark(),
            Offset::ZERO,
            "followers have not fetched"
        );
        // consumers see nothing yet; a follower reads to the end
        let (read, _) = p
            .read(
                Offset::ZERO,
                1 << 20,
                FetchIsolation::HighWatermark,
                true,
                -1,
            )
            .unwrap();
        assert!(read.region.is_none());
        let (read, _) = p
            .read(Offset::ZERO, 1 << 20, FetchIsolation::LogEnd, true, -1)
            .unwrap();
        assert!(read.region.is_some());
        p.on_follower_fetch(2, Offset(5), 1);
        assert_eq!(p.high_watermark(), Offset::ZERO);
        p.on_follower_fetch(3, Offset(3), 1);
        assert_eq!(p.high_watermark(), Offset(3));
        p.on_follower_fetch(3, Offset(5), 2);
        assert_eq!(p.high_watermark(), Offset(5));
        // the ISR shrinks to the leader alone (same epoch): with min ISR 2, acks=all is
        // refused and the HW stays; acks=1 still appends
        p.set_min_insync_replicas(2);
        p.apply_state(&state(1, 0, 1, &[1]), 3);
        assert!(matches!(
            p.append_as_leader(&mut records(1), -1, 3),
            Err(PartitionError::NotEnoughReplicas { isr: 1, min: 2 })
        ));
        p.append_as_leader(&mut records(1), 1, 3).unwrap();
        assert_eq!(p.high_watermark(), Offset(5), "not advanced below min ISR");
    }

    #[test]
    fn an_acks_all_append_is_committed_only_by_the_leadership_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 1, 0, &[1, 2, 3]), 0);
        let first = p.append_as_leader(&mut records(3), -1, 0).unwrap();
        let second = p.append_as_leader(&mut records(2), -1, 0).unwrap();
        assert_eq!(first.leader_epoch, 1);
        let outcome = |a: &AppendResult| p.acks_all_outcome(a.last_offset, a.leader_epoch);
        assert_eq!(outcome(&first), AcksAllOutcome::Waiting);
        // the followers reach the first batch only: it is committed
        p.on_follower_fetch(2, Offset(3), 1);
        p.on_follower_fetch(3, Offset(3), 1);
        assert_eq!(outcome(&first), AcksAllOutcome::Committed);
        assert_eq!(outcome(&second), AcksAllOutcome::Waiting);
        // broker 2 takes over in epoch 2 (this one was fenced while alive): the second
        // batch is lost to the waiting producer at once, not left to time out
        p.apply_state(&state(2, 2, 1, &[2, 3]), 2);
        assert_eq!(outcome(&first), AcksAllOutcome::Committed);
        assert_eq!(outcome(&second), AcksAllOutcome::LeadershipLost);
        // as follower: truncated to the new leader's log, then the new leader's records at
        // the same offsets, with a high watermark past the lost batch. The old batch must
        // still not count as committed
        p.truncate_to(Offset(3)).unwrap();
        let mut theirs = records(4);
        sluice_record::stamp_base_offset(&mut theirs, Offset(3)).unwrap();
        p.append_as_follower(&theirs, Offset(7), 3).unwrap();
        assert_eq!(p.high_watermark(), Offset(7));
        assert_eq!(outcome(&second), AcksAllOutcome::LeadershipLost);
        // leading again in a later epoch changes nothing for the old append
        p.apply_state(&state(1, 3, 2, &[1, 2, 3]), 4);
        assert_eq!(outcome(&second), AcksAllOutcome::LeadershipLost);
        assert_eq!(outcome(&first), AcksAllOutcome::Committed);
        // a resigned leader's parked appends are answered too
        let third = p.append_as_leader(&mut records(1), -1, 5).unwrap();
        assert_eq!(outcome(&third), AcksAllOutcome::Waiting);
        p.resign(3, 2);
        assert_eq!(outcome(&third), AcksAllOutcome::LeadershipLost);
    }

    #[test]
    fn a_new_leader_answers_list_offsets_only_once_its_high_watermark_reaches_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        // a follower of broker 2 with 5 records, of which it knows 3 committed
        p.apply_state(&state(2, 1, 0, &[1, 2, 3]), 0);
        let mut theirs = records(5);
        sluice_record::stamp_base_offset(&mut theirs, Offset(0)).unwrap();
        p.append_as_follower(&theirs, Offset(3), 0).unwrap();
        // it takes over in epoch 2: its epoch starts at 5, its HW is still 3 (the old
        // leader may have told clients 5 already)
        p.apply_state(&state(1, 2, 1, &[1, 2, 3]), 1);
        let err = p.offsets_for_client(-1).unwrap_err();
        assert_eq!(err.error_code(), ec::OFFSET_NOT_AVAILABLE, "{err}");
        assert!(p.offset_for_timestamp(0, -1).is_err());
        // the replication path is not held up: followers and the log see the HW as it is
        assert_eq!(p.offsets(-1).unwrap().1, Offset(3));
        // the followers reach the epoch's start: the HW is 5, as high as any given out
        p.on_follower_fetch(2, Offset(5), 2);
        p.on_follower_fetch(3, Offset(5), 2);
        assert_eq!(p.offsets_for_client(-1).unwrap().1, Offset(5));
    }

    fn producer_records(producer_id: i64, epoch: i16, sequence: i32, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).producer(producer_id, epoch, sequence);
        for _ in 0..n {
            b.append(1, None, Some(b"v"), &[]);
        }
        b.build().unwrap()
    }

    #[test]
    fn a_producer_retry_is_committed_by_the_leadership_that_answers_it_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        // broker 2 led epoch 1 and replicated the batch here, uncommitted
        p.apply_state(&state(2, 1, 0, &[1, 2, 3]), 0);
        let mut theirs = producer_records(9, 0, 0, 3);
        sluice_record::stamp_partition_leader_epoch(&mut theirs, LeaderEpoch(1)).unwrap();
        p.append_as_follower(&theirs, Offset::ZERO, 1).unwrap();
        // this broker takes over; the producer's retry reaches it
        p.apply_state(&state(1, 2, 1, &[1, 3]), 2);
        let retry = p
            .append_as_leader(&mut producer_records(9, 0, 0, 3), -1, 3)
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.base_offset, retry.last_offset),
            (Offset(0), Offset(2))
        );
        assert_eq!(retry.leader_epoch, 2);
        let outcome = || p.acks_all_outcome(retry.last_offset, retry.leader_epoch);
        assert_eq!(
            outcome(),
            AcksAllOutcome::Waiting,
            "committed only by this HW"
        );
        p.on_follower_fetch(3, Offset(3), 4);
        assert_eq!(outcome(), AcksAllOutcome::Committed);
        // the counters see what the checks did
        let refused = p.append_as_leader(&mut producer_records(9, 0, 7, 1), -1, 5);
        assert_eq!(
            refused.err().map(|e| e.error_code()),
            Some(ec::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        p.append_as_leader(&mut producer_records(9, 1, 0, 1), 1, 5)
            .unwrap();
        let fenced = p.append_as_leader(&mut producer_records(9, 0, 3, 1), -1, 5);
        assert_eq!(
            fenced.err().map(|e| e.error_code()),
            Some(ec::INVALID_PRODUCER_EPOCH)
        );
        let counters = &p.signals.producer_counters;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(count(&counters.duplicates_suppressed), 1);
        assert_eq!(count(&counters.out_of_order_rejections), 1);
        assert_eq!(count(&counters.invalid_epoch_rejections), 1);
    }

    #[test]
    fn a_removed_partition_answers_its_parked_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 1, 0, &[1, 2, 3]), 0);
        let a = p.append_as_leader(&mut records(2), -1, 0).unwrap();
        assert_eq!(
            p.acks_all_outcome(a.last_offset, a.leader_epoch),
            AcksAllOutcome::Waiting
        );
        p.stop();
        assert!(!p.is_leader());
        assert_eq!(
            p.acks_all_outcome(a.last_offset, a.leader_epoch),
            AcksAllOutcome::LeadershipLost
        );
    }

    #[test]
    fn a_damaged_replica_leaves_the_isr_before_it_truncates_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 1, 0, &[1, 2, 3]), 0);
        for _ in 0..3 {
            p.append_as_leader(&mut records(4), 1, 0).unwrap();
        }
        // bytes appended were checked before they were written: not read back
        let (read, _) = p
            .read(Offset::ZERO, 1 << 20, FetchIsolation::LogEnd, true, -1)
            .unwrap();
        assert!(!read.unchecked);
        let size = sluice_log::lock(p.log()).size_bytes() as usize;
        sluice_log::lock(p.log()).close().unwrap();
        drop(p);
        // a byte of the last batch flips on disk; a clean restart does not scan the log
        let segment = dir.path().join("t-0").join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[size - 3] ^= 0x5a;
        std::fs::write(&segment, bytes).unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 1, 0, &[1, 2, 3]), 0);
        // serving a follower finds it: the two intact batches go out, the damaged one not
        let (read, _) = p
            .read(Offset::ZERO, 1 << 20, FetchIsolation::LogEnd, true, -1)
            .unwrap();
        let region = read.region.unwrap();
        assert_eq!(region.length as usize, size / 3 * 2);
        assert_eq!(read.next_offset, Offset(8));
        // the intact batches were checked once; the damage is not served again
        let (read, _) = p
            .read(Offset::ZERO, 1 << 20, FetchIsolation::LogEnd, true, -1)
            .unwrap();
        assert!(!read.unchecked);
        assert_eq!(read.region.unwrap().length as usize, size / 3 * 2);
        let (read, _) = p
            .read(Offset(8), 1 << 20, FetchIsolation::LogEnd, true, -1)
            .unwrap();
        assert!(read.region.is_none());
        // a consumer asking for it gets KAFKA_STORAGE_ERROR (and looks for the new leader)
        let err = p
            .read(Offset(8), 1 << 20, FetchIsolation::HighWatermark, true, -1)
            .unwrap_err();
        assert_eq!(err.error_code(), ec::KAFKA_STORAGE_ERROR);
        // as leader it asks to leave the ISR
        let change = p.propose_isr_change(1, 30_000, |_| true).unwrap();
        assert_eq!(change.new_isr, vec![2, 3]);
        // a follower still in the ISR keeps its log (and does not fetch)
        p.apply_state(&state(2, 2, 1, &[1, 2, 3]), 2);
        assert!(p.damaged_in_isr());
        assert_eq!(p.damaged_from(), None);
        p.truncate_damage().unwrap();
        assert_eq!(sluice_log::lock(p.log()).log_end_offset(), Offset(12));
        // out of the ISR it truncates the damage
        p.apply_state(&state(2, 2, 2, &[2, 3]), 3);
        assert_eq!(p.damaged_from(), Some(Offset(8)));
        p.truncate_damage().unwrap();
        assert_eq!(sluice_log::lock(p.log()).log_end_offset(), Offset(8));
        assert_eq!(p.damaged_from(), None);
    }

    #[test]
    fn a_new_leader_knows_its_epoch_before_its_first_append() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(2, 1, 0, &[1, 2, 3]), 0);
        let mut theirs = records(4);
        sluice_record::stamp_partition_leader_epoch(&mut theirs, LeaderEpoch(1)).unwrap();
        p.append_as_follower(&theirs, Offset(4), 1).unwrap();
        // elected in epoch 3 (epoch 2 was a leader this broker never fetched from)
        p.apply_state(&state(1, 3, 1, &[1, 3]), 2);
        assert!(p.is_leader());
        assert_eq!(p.end_offset_for_epoch(3, 3).unwrap(), (3, 4));
        assert_eq!(p.end_offset_for_epoch(3, 2).unwrap(), (1, 4));
    }

    /// Grants `lease` for a minute from now.
    fn grant(lease: &ControllerLease) {
        lease.renew(
            std::time::Instant::now(),
            std::time::Duration::from_secs(60),
        );
    }

    /// A partition under a lease granted just now, and the lease.
    fn partition_under_fresh_lease(dir: &std::path::Path) -> (Partition, Arc<ControllerLease>) {
        let lease = Arc::new(ControllerLease::default());
        grant(&lease);
        (partition_under_lease(dir, Arc::clone(&lease)), lease)
    }

    #[test]
    fn a_leader_whose_controller_lease_ran_out_answers_nothing_as_leader() {
        let dir = tempfile::tempdir().unwrap();
        let (p, lease) = partition_under_fresh_lease(dir.path());
        p.apply_state(&state(1, 3, 7, &[1, 2]), 0);
        p.append_as_leader(&mut records(2), 1, 0).unwrap();
        p.on_follower_fetch(2, Offset(1), 1);
        assert_eq!(p.high_watermark(), Offset(1));
        assert_eq!(p.offsets_for_client(3).unwrap().1, Offset(1));
        // cut from the controllers: it may have been replaced, so it serves nothing
        lease.revoke();
        assert!(p.is_leader(), "the image still names it");
        assert!(!p.serves_as_leader());
        let refused = |r: Result<(), PartitionError>| {
            assert!(matches!(r, Err(PartitionError::NotLeader)), "{r:?}");
        };
        refused(p.append_as_leader(&mut records(1), 1, 2).map(|_| ()));
        refused(p.offsets_for_client(3).map(|_| ()));
        refused(p.end_offset_for_epoch(3, 3).map(|_| ()));
        refused(
            p.read(Offset::ZERO, 100, FetchIsolation::LogEnd, true, 3)
                .map(|_| ()),
        );
        // a follower's fetch position does not commit anything meanwhile
        p.on_follower_fetch(2, Offset(2), 3);
        assert_eq!(p.high_watermark(), Offset(1));
        // renewed: it serves again, from where it was
        grant(&lease);
        assert_eq!(p.offsets_for_client(3).unwrap().1, Offset(1));
        p.on_follower_fetch(2, Offset(2), 4);
        assert_eq!(p.high_watermark(), Offset(2));
    }

    #[test]
    fn no_follower_is_dropped_for_lag_until_the_lease_has_been_held_for_a_lag_time() {
        let dir = tempfile::tempdir().unwrap();
        let (p, lease) = partition_under_fresh_lease(dir.path());
        p.apply_state(&state(1, 3, 7, &[1, 2, 3]), 0);
        p.append_as_leader(&mut records(2), 1, 0).unwrap();
        p.on_follower_fetch(2, Offset(2), 100_000);
        // follower 3 never fetched, long ago by the partition's clock: but the lease was
        // granted just now (its fetches may have been refused until then)
        let max_lag_ms = 300;
        assert_eq!(p.propose_isr_change(100_000, max_lag_ms, |_| true), None);
        std::thread::sleep(std::time::Duration::from_millis(320));
        let change = p.propose_isr_change(100_001, max_lag_ms, |_| true).unwrap();
        assert_eq!(change.new_isr, vec![1, 2]);
        p.isr_change_failed();
        // without the lease, no ISR change at all
        lease.revoke();
        assert_eq!(p.propose_isr_change(100_002, max_lag_ms, |_| true), None);
    }

    #[test]
    fn leadership_moves_with_the_epoch_and_stale_states_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 3, 7, &[1]), 0);
        p.append_as_leader(&mut records(2), 1, 0).unwrap();
        assert_eq!(p.high_watermark(), Offset(2));
        // a replayed older state changes nothing
        p.apply_state(&state(2, 2, 9, &[2]), 1);
        assert!(p.is_leader());
        // a newer epoch led by broker 2: this one stops leading, keeps its HW
        p.apply_state(&state(2, 4, 8, &[2, 1]), 2);
        assert!(!p.is_leader());
        assert!(matches!(
            p.append_as_leader(&mut records(1), 1, 2),
            Err(PartitionError::NotLeader)
        ));
        assert_eq!(p.high_watermark(), Offset(2));
        // epoch-checked reads: older epoch fenced, newer unknown
        p.apply_state(&state(1, 5, 9, &[1, 2]), 3);
        assert!(matches!(
            p.read(Offset::ZERO, 100, FetchIsolation::HighWatermark, true, 4),
            Err(PartitionError::FencedLeaderEpoch { .. })
        ));
        assert!(matches!(
            p.read(Offset::ZERO, 100, FetchIsolation::HighWatermark, true, 6),
            Err(PartitionError::UnknownLeaderEpoch { .. })
        ));
        // leading again: the HW starts where it was, not at the log end
        assert_eq!(p.high_watermark(), Offset(2));
    }

    #[test]
    fn isr_changes_are_proposed_once_until_settled_and_a_resigned_leader_proposes_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 0, 0, &[1, 2, 3]), 0);
        p.append_as_leader(&mut records(2), 1, 0).unwrap();
        p.on_follower_fetch(2, Offset(2), 10);
        // follower 3 never fetched: out of sync once 1000 ms have passed
        assert_eq!(p.propose_isr_change(500, 1000, |_| true), None);
        let change = p.propose_isr_change(2000, 1000, |_| true).unwrap();
        assert_eq!((change.new_isr, change.partition_epoch), (vec![1, 2], 0));
        assert_eq!(
            p.propose_isr_change(2001, 1000, |_| true),
            None,
            "one change in flight"
        );
        p.isr_change_failed();
        assert!(
            p.propose_isr_change(2002, 1000, |_| true).is_some(),
            "retried after a failure"
        );
        // the committed state (a newer partition epoch) settles it
        p.apply_state(&state(1, 0, 1, &[1, 2]), 2003);
        assert_eq!(p.propose_isr_change(2004, 1000, |_| true), None);
        // a refusal as stale of a change proposed against (0, 0), answered after this
        // replica applied (0, 1): it still leads by (0, 1) (chaos CI replay: a leader that
        // resigned here waited 40 s for a state it already had)
        p.resign(0, 0);
        assert!(p.is_leader());
        assert!(p.serves_as_leader());
        // a refusal of a change proposed against the current state: it stops leading
        p.resign(0, 1);
        assert!(!p.is_leader());
        assert_eq!(p.propose_isr_change(9999, 1000, |_| true), None);
    }

    #[test]
    fn a_caught_up_follower_joins_the_isr_only_once_eligible() {
        let dir = tempfile::tempdir().unwrap();
        let p = partition(dir.path());
        p.apply_state(&state(1, 0, 0, &[1, 2]), 0);
        p.append_as_leader(&mut records(2), 1, 0).unwrap();
        p.on_follower_fetch(2, Offset(2), 10);
        p.on_follower_fetch(3, Offset(2), 10);
        // broker 3 caught up but is fenced (restarting, not yet unfenced): not proposed
        assert_eq!(p.propose_isr_change(20, 1000, |id| id != 3), None);
        let change = p.propose_isr_change(30, 1000, |_| true).unwrap();
        assert_eq!(change.new_isr, vec![1, 2, 3]);
    }
}
