//! Followers' fetchers: one task per source (leader) broker, multiplexing every partition
//! this broker follows from it, with the Kafka Fetch API and `replica_id` set — the same
//! path consumers use, served by the leader with sendfile. Record sets are appended as
//! received; the leader's high watermark comes back with each response.
//!
//! Before a partition's first fetch under a new leader epoch, the follower asks the leader
//! (OffsetForLeaderEpoch) where its own latest epoch ends there and truncates only the
//! divergent suffix: to min(leader's end offset for that epoch, its own end offset for
//! it) (KIP-101). When the leader answers with an epoch this log lacks, it truncates to
//! where its own largest epoch below that one ends and asks again (KIP-279). An answer of
//! "unknown epoch" truncates nothing: the follower asks again later. (Kafka falls back to
//! the high watermark there, which is the loss KIP-101 was about; a Sluice leader records
//! its epoch when elected, so it never answers "unknown" for an epoch a follower holds.)
//!
//! A partition the leader refuses (not leading it, a log it cannot open, an epoch not yet
//! known: in Fetch or OffsetForLeaderEpoch) or whose records cannot be appended is left
//! out of the fetches for a while, alone: the others keep fetching at full speed (as Kafka
//! delays only the failing partition). The wait starts at 5 ms — a new partition's leader
//! is usually only a moment behind in the metadata — and doubles up to `RETRY`; the long
//! poll on the others ends when the first waiting partition is due, so its wait is not
//! stretched to `replica.fetch.wait.max.ms`. One that keeps failing is logged at WARN
//! once, and again when it recovers.
//!
//! With `sluice.replica.fetch.sessions.enable` (off by default: see docs/benchmarks.md,
//! issue 19 — at 10,000 partitions the session runs were unstable and the cause is not
//! found yet) each fetcher keeps a fetch session (KIP-227) with its leader: one full fetch, then
//! incremental ones naming only the partitions whose position or epoch changed and the
//! ones it stopped fetching (a failed partition waiting out its delay is forgotten, and
//! added back when due); the leader answers with the partitions that have something new.
//! An answer of FETCH_SESSION_ID_NOT_FOUND or INVALID_FETCH_SESSION_EPOCH, a lost
//! connection or an abandoned fetch starts a new session with a full fetch.
//!
//! A partition added to a fetcher (a new topic, a new leader) is fetched at once: the
//! fetch long-polling on the others (up to `replica.fetch.wait.max.ms`) is abandoned with
//! its connection, instead of holding the new partition's acks=all writes back until it
//! returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_log::LogError;
use sluice_metadata::error_code as ec;
use sluice_protocol::{ClientConnection, ClientError};
use sluice_record::{now_ms, LeaderEpoch, Offset, TopicPartition};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::partition::{Partition, PartitionError};
use sluice_log::split_at_damage;

/// Fetch version used between brokers (topic names, flexible).
const FETCH_VERSION: i16 = 12;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
/// `replica.fetch.wait.max.ms`.
const REPLICA_FETCH_WAIT_MAX_MS: i32 = 500;
/// `replica.fetch.max.bytes` (per partition) and `replica.fetch.response.max.bytes`.
const REPLICA_FETCH_MAX_BYTES: i32 = 1024 * 1024;
const REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
/// The longest a failed partition waits before it is fetched again.
const RETRY: Duration = Duration::from_millis(200);
/// Its first wait (then doubled, up to `RETRY`).
const FIRST_RETRY: Duration = Duration::from_millis(5);
/// Failures in a row (about a second of them) before a partition is logged at WARN.
const FAILURES_BEFORE_WARN: u32 = 9;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Followed {
    partition: Arc<Partition>,
    leader_epoch: i32,
    /// The divergent suffix (if any) was removed for this leader epoch.
    truncated: bool,
    /// The offset of the last corrupt batch the leader sent that was logged (once per
    /// batch, not per fetch).
    corrupt_reported: Option<i64>,
    /// Left out of fetches until then, after a failure.
    retry_at: Option<tokio::time::Instant>,
    /// Failures in a row.
    failures: u32,
}

type FollowedSet = Arc<Mutex<BTreeMap<TopicPartition, Followed>>>;

/// Tells a fetcher that partitions were added (or moved to a new leader epoch).
#[derive(Default)]
struct Added {
    generation: AtomicU64,
    notify: Notify,
}

impl Added {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// What a fetch names of a partition; named again only when it changes, or at every
/// fetch while this replica is out of the ISR (`outside_isr`): the leader then hears its
/// position at each fetch, as without a session, and a join it could not propose at one
/// (a change in flight, this broker still fenced) is proposed at the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Named {
    fetch_offset: i64,
    leader_epoch: i32,
    last_fetched_epoch: i32,
    outside_isr: bool,
}

/// The fetcher's side of its fetch session with the leader (Kafka's FetchSessionHandler).
#[derive(Debug, Default)]
struct FetchSession {
    /// Sessions are used (else every fetch is a full one without a session).
    enabled: bool,
    /// 0: none yet.
    id: i32,
    /// The next fetch's epoch: 0 is a full fetch that opens a new session (closing `id`).
    epoch: i32,
    /// The session's partitions, as last named.
    named: HashMap<TopicPartition, Named>,
}

/// The next fetch of a session: what it names and forgets.
struct SessionFetch<'a> {
    session_id: i32,
    epoch: i32,
    to_name: Vec<&'a TopicPartition>,
    to_forget: Vec<TopicPartition>,
}

impl FetchSession {
    /// The fetch that brings the session to `wanted`.
    fn next<'a>(&self, wanted: &'a [(TopicPartition, Named)]) -> SessionFetch<'a> {
        if !self.enabled {
            return SessionFetch {
                session_id: 0,
                epoch: -1,
                to_name: wanted.iter().map(|(tp, _)| tp).collect(),
                to_forget: Vec::new(),
            };
        }
        let full = self.epoch == 0;
        let to_name = wanted
            .iter()
            .filter(|(tp, named)| full || named.outside_isr || self.named.get(tp) != Some(named))
            .map(|(tp, _)| tp)
            .collect();
        let to_forget = if full {
            Vec::new()
        } else {
            let wanted: std::collections::HashSet<&TopicPartition> =
                wanted.iter().map(|(tp, _)| tp).collect();
            self.named
                .keys()
                .filter(|tp| !wanted.contains(tp))
                .cloned()
                .collect()
        };
        SessionFetch {
            session_id: self.id,
            epoch: self.epoch,
            to_name,
            to_forget,
        }
    }

    /// The leader answered `fetch` (for `wanted`) with `session_id` and `error_code`.
    fn answered(&mut self, wanted: &[(TopicPartition, Named)], session_id: i32, error_code: i16) {
        if !self.enabled {
            return;
        }
        if error_code != ec::NONE {
            // unknown session, wrong epoch: start over
            tracing::debug!(
                session_id = self.id,
                error_code,
                "replica fetcher: fetch session reset"
            );
            self.start_over();
            return;
        }
        if self.epoch == 0 {
            self.id = session_id;
            // no room for a session on the leader: full fetches, asking again each time
            self.epoch = if session_id == 0 { 0 } else { 1 };
        } else {
            self.epoch = if self.epoch == i32::MAX {
                1
            } else {
                self.epoch + 1
            };
        }
        self.named = if self.id == 0 {
            HashMap::new()
        } else {
            wanted.iter().cloned().collect()
        };
    }

    /// Where the session stands is unknown (no answer): the next fetch is a full one,
    /// closing this session on the leader.
    fn start_over(&mut self) {
        self.epoch = 0;
        self.named.clear();
    }
}

struct Fetcher {
    address: String,
    partitions: FollowedSet,
    added: Arc<Added>,
    task: JoinHandle<()>,
}

/// Every fetcher of this broker, by source broker id.
pub struct ReplicaFetchers {
    broker_id: i32,
    /// `sluice.replica.fetch.sessions.enable`.
    sessions: bool,
    fetchers: Mutex<HashMap<i32, Fetcher>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaFetchers {
    pub fn new(broker_id: i32, sessions: bool) -> Self {
        ReplicaFetchers {
            broker_id,
            sessions,
            fetchers: Mutex::new(HashMap::new()),
        }
    }

    /// Follows `partition` from `leader` (at `address`) in `leader_epoch`. Idempotent; a
    /// new epoch or leader starts over with truncation.
    pub fn follow(&self, leader: i32, address: &str, partition: Arc<Partition>, leader_epoch: i32) {
        let tp = partition.topic_partition().clone();
        let mut fetchers = lock(&self.fetchers);
        for (id, f) in fetchers.iter() {
            if *id != leader {
                lock(&f.partitions).remove(&tp);
            }
        }
        let stale = fetchers.get(&leader).is_some_and(|f| f.address != address);
        if stale {
            if let Some(old) = fetchers.remove(&leader) {
                old.task.abort();
            }
        }
        let fetcher = fetchers.entry(leader).or_insert_with(|| {
            let partitions: FollowedSet = Arc::new(Mutex::new(BTreeMap::new()));
            let added = Arc::new(Added::default());
            let task = tokio::spawn(run(
                self.broker_id,
                self.sessions,
                address.to_string(),
                Arc::clone(&partitions),
                Arc::clone(&added),
            ));
            Fetcher {
                address: address.to_string(),
                partitions,
                added,
                task,
            }
        });
        let mut partitions = lock(&fetcher.partitions);
        let same = partitions.get(&tp).is_some_and(|f| {
            f.leader_epoch == leader_epoch && Arc::ptr_eq(&f.partition, &partition)
        });
        if !same {
            tracing::info!(partition = %tp, leader, leader_epoch, "following");
            partitions.insert(
                tp,
                Followed {
                    partition,
                    leader_epoch,
                    truncated: false,
                    corrupt_reported: None,
                    retry_at: None,
                    failures: 0,
                },
            );
            drop(partitions);
            fetcher.added.bump();
        }
    }

    /// Stops following `tp` (this broker leads it now, or no longer holds it).
    pub fn unfollow(&self, tp: &TopicPartition) {
        for f in lock(&self.fetchers).values() {
            lock(&f.partitions).remove(tp);
        }
    }

    pub fn shutdown(&self) {
        for (_, f) in lock(&self.fetchers).drain() {
            f.task.abort();
        }
    }
}

impl Drop for ReplicaFetchers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

async fn run(
    broker_id: i32,
    sessions: bool,
    address: String,
    partitions: FollowedSet,
    added: Arc<Added>,
) {
    let mut connection: Option<ClientConnection> = None;
    let mut session = FetchSession {
        enabled: sessions,
        ..FetchSession::default()
    };
    loop {
        let generation = added.generation();
        let now = tokio::time::Instant::now();
        let (followed, waiting): (Vec<_>, Vec<_>) = lock(&partitions)
            .iter()
            .map(|(tp, f)| (tp.clone(), f.clone()))
            .partition(|(_, f)| f.retry_at.is_none_or(|at| at <= now));
        if followed.is_empty() {
            // every partition waits out a failure (or there is none): until the first is due
            let due = waiting.iter().filter_map(|(_, f)| f.retry_at).min();
            let _ = tokio::time::timeout_at(
                due.unwrap_or(now + Duration::from_millis(50)),
                added.notify.notified(),
            )
            .await;
            continue;
        }
        // nothing can be appended to an offline log directory: wait for it to come back
        // (the controller fenced this broker; it rejoins ISRs by catching up afterwards)
        if followed.iter().any(|(_, f)| f.partition.log_dir_offline()) {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let c = match connection.as_mut() {
            Some(c) => c,
            None => {
                match ClientConnection::connect(&address, "sluice-replica", REQUEST_TIMEOUT).await {
                    Ok(c) => connection.insert(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "replica fetcher: leader unreachable");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
        };
        // the partitions waiting out a failure are fetched again once the first is due:
        // the long poll on the others must not outlast that
        let due = waiting.iter().filter_map(|(_, f)| f.retry_at).min();
        let result = async {
            let untruncated: Vec<&(TopicPartition, Followed)> =
                followed.iter().filter(|(_, f)| !f.truncated).collect();
            let settled;
            let to_fetch = if untruncated.is_empty() {
                &followed
            } else {
                if truncate(c, broker_id, &untruncated, &partitions).await? {
                    // KIP-279: ask again at once, with the epochs latest after the truncation
                    return Ok(Fetched::Done);
                }
                // what the truncation step just settled is fetched in this same round (a
                // new partition used to wait out a whole RETRY when nothing else was
                // followed)
                settled = with_current_truncation(&followed, &partitions);
                &settled
            };
            let signal = (&*added, generation);
            fetch(
                c,
                broker_id,
                to_fetch,
                &partitions,
                &mut session,
                signal,
                due,
            )
            .await
        }
        .await;
        match result {
            Ok(Fetched::Done) => {}
            Ok(Fetched::Abandoned) => {
                // a partition was added: its first fetch goes out now, on a new connection
                // (the old one still owes the abandoned answer)
                connection = None;
                session.start_over();
            }
            Err(e) => {
                tracing::debug!(error = %e, "replica fetcher: reconnecting");
                connection = None;
                session.start_over();
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// `tp` failed (`error`): it is left out of fetches for `RETRY`; the failure that makes
/// it keep failing is logged at WARN, once.
fn failed(
    partitions: &FollowedSet,
    tp: &TopicPartition,
    source: &str,
    error: &dyn std::fmt::Display,
) {
    if let Some(f) = lock(partitions).get_mut(tp) {
        f.failures = f.failures.saturating_add(1);
        f.retry_at = Some(tokio::time::Instant::now() + retry_after(f.failures));
        if f.failures == FAILURES_BEFORE_WARN {
            tracing::warn!(partition = %tp, source, error = %error, failures = f.failures, "replica fetch keeps failing for this partition: retrying it every 200 ms, the others fetch on");
        } else {
            tracing::debug!(partition = %tp, source, error = %error, "replica fetch failed for this partition");
        }
    }
}

/// `followed`, each partition's `truncated` read again from the shared set (the truncation
/// step marks them there).
fn with_current_truncation(
    followed: &[(TopicPartition, Followed)],
    partitions: &FollowedSet,
) -> Vec<(TopicPartition, Followed)> {
    let shared = lock(partitions);
    followed
        .iter()
        .map(|(tp, f)| {
            let mut f = f.clone();
            f.truncated = shared
                .get(tp)
                .is_some_and(|now| now.leader_epoch == f.leader_epoch && now.truncated);
            (tp.clone(), f)
        })
        .collect()
}

/// How long a partition that failed `failures` times in a row waits: `FIRST_RETRY`,
/// doubling, at most `RETRY`.
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (FIRST_RETRY * (1u32 << doublings)).min(RETRY)
}

/// `tp` was fetched (its failures, if any, are over).
fn succeeded(partitions: &FollowedSet, tp: &TopicPartition) {
    if let Some(f) = lock(partitions).get_mut(tp) {
        if f.failures >= FAILURES_BEFORE_WARN {
            tracing::warn!(partition = %tp, failures = f.failures, "replica fetch recovered for this partition");
        }
        f.failures = 0;
        f.retry_at = None;
    }
}

/// Whether the corrupt batch at `offset` of `tp` is new (then remembered): each is logged
/// once, not at every fetch that brings it again.
fn first_report(partitions: &FollowedSet, tp: &TopicPartition, offset: i64) -> bool {
    match lock(partitions).get_mut(tp) {
        Some(f) if f.corrupt_reported != Some(offset) => {
            f.corrupt_reported = Some(offset);
            true
        }
        _ => false,
    }
}

/// Marks `tp` truncated if it is still followed in the same epoch.
fn mark(partitions: &FollowedSet, tp: &TopicPartition, epoch: i32, truncated: bool) {
    if let Some(f) = lock(partitions).get_mut(tp) {
        if f.leader_epoch == epoch {
            f.truncated = truncated;
        }
    }
}

async fn truncate(
    c: &mut ClientConnection,
    broker_id: i32,
    followed: &[&(TopicPartition, Followed)],
    partitions: &FollowedSet,
) -> Result<bool, ClientError> {
    // partition → (its follow state, the latest epoch in its log)
    let mut asked: HashMap<&TopicPartition, (&Followed, i32)> = HashMap::new();
    for (tp, f) in followed {
        // a damaged suffix (found while this replica led) goes first: it is fetched again
        if let Err(e) = f.partition.truncate_damage() {
            tracing::error!(partition = %tp, error = %e, "truncating the damaged suffix failed");
            continue;
        }
        match f.partition.fetch_position().1 {
            // nothing appended yet: nothing can diverge
            None => mark(partitions, tp, f.leader_epoch, true),
            Some(epoch) => {
                asked.insert(tp, (f, epoch.0));
            }
        }
    }
    if asked.is_empty() {
        return Ok(false);
    }
    let mut topics: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for (tp, (f, epoch)) in &asked {
        topics.entry(tp.topic.as_str()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_leader_epoch(*epoch),
        );
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(broker_id))
        .with_topics(
            topics
                .into_iter()
                .map(|(t, p)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(p)
                })
                .collect(),
        );
    let response: OffsetForLeaderEpochResponse = c
        .send(
            ApiKey::OffsetForLeaderEpoch,
            OFFSET_FOR_LEADER_EPOCH_VERSION,
            &request,
            true,
        )
        .await?;
    // some partition truncated part way and asks again at once (KIP-279's iteration)
    let mut again = false;
    for topic in &response.topics {
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition);
            let Some(&(f, asked_epoch)) = asked.get(&tp) else {
                continue;
            };
            if p.error_code != ec::NONE {
                failed(
                    partitions,
                    &tp,
                    c.address(),
                    &format_args!("OffsetForLeaderEpoch error {}", p.error_code),
                );
                continue;
            }
            let (local_end, _) = f.partition.fetch_position();
            let local = f.partition.local_end_offset_for_epoch(p.leader_epoch);
            let step = truncation_step((p.leader_epoch, p.end_offset), local, local_end);
            let (target, done) = match step {
                TruncationStep::Unknown => {
                    // a leader records its epoch when elected, so this is an anomaly (a
                    // stale leader, a damaged checkpoint): keep every record and ask again
                    tracing::warn!(partition = %tp, asked_epoch, leader_epoch = p.leader_epoch, end_offset = p.end_offset, "the leader knows no epoch at or below ours: not truncating, asking again");
                    continue;
                }
                TruncationStep::Again(target) => (target, false),
                TruncationStep::Done(target) => (target, true),
            };
            if target < local_end {
                tracing::warn!(partition = %tp, from = %local_end, to = %target, asked_epoch, leader_epoch = p.leader_epoch, "truncating the divergent suffix");
            }
            if target <= local_end {
                if let Err(e) = f.partition.truncate_to(target) {
                    tracing::error!(partition = %tp, error = %e, "truncation failed");
                    continue;
                }
            }
            if !done {
                again = true;
                continue;
            }
            mark(partitions, &tp, f.leader_epoch, true);
        }
    }
    Ok(again)
}

/// What a follower does with the leader's OffsetForLeaderEpoch answer for its latest epoch
/// (KIP-101, KIP-279).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TruncationStep {
    /// Truncate to this offset (when below the log end) and start fetching.
    Done(Offset),
    /// This log lacks the epoch the leader answered with: truncate to where this log's
    /// largest epoch below it ends, then ask again with the epoch latest after that.
    Again(Offset),
    /// The leader knows no epoch at or below the one asked: truncate nothing (falling back
    /// to the high watermark is the very loss KIP-101 fixed) and ask again later.
    Unknown,
}

/// `leader`: the leader's answer (its largest epoch at most the one asked, where that
/// epoch ends in its log); `local`: this log's own answer for the leader's epoch;
/// `local_end`: this log's end offset.
fn truncation_step(
    leader: (i32, i64),
    local: (LeaderEpoch, Offset),
    local_end: Offset,
) -> TruncationStep {
    let (leader_epoch, leader_end) = leader;
    let (local_epoch, local_epoch_end) = local;
    if leader_epoch < 0 || leader_end < 0 || local_epoch_end.0 < 0 {
        return TruncationStep::Unknown;
    }
    if local_epoch.0 != leader_epoch {
        return TruncationStep::Again(local_epoch_end.min(local_end));
    }
    TruncationStep::Done(Offset(leader_end).min(local_epoch_end).min(local_end))
}

/// How long the leader may hold a fetch: `replica.fetch.wait.max.ms`, or less when a
/// partition left out after a failure is due before that.
fn max_wait_ms(due: Option<tokio::time::Instant>, now: tokio::time::Instant) -> i32 {
    let until_due = due.map_or(i32::MAX, |at| {
        i32::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(i32::MAX)
    });
    REPLICA_FETCH_WAIT_MAX_MS.min(until_due)
}

/// How a fetch round ended.
enum Fetched {
    Done,
    /// Partitions were added while it waited for the answer: abandoned (with its
    /// connection), so they are fetched at once.
    Abandoned,
}

/// One fetch of every partition in `followed`. `added`: the fetcher's signal, and its
/// generation when `followed` was taken. `due`: when the first partition left out (after
/// a failure) is to be fetched again; the leader holds the fetch no longer than that.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    c: &mut ClientConnection,
    broker_id: i32,
    followed: &[(TopicPartition, Followed)],
    partitions: &FollowedSet,
    session: &mut FetchSession,
    added: (&Added, u64),
    due: Option<tokio::time::Instant>,
) -> Result<Fetched, ClientError> {
    // what each fetched partition asks from, for the request and for reading the response
    let mut fetching: HashMap<&TopicPartition, (&Followed, Offset, i32)> = HashMap::new();
    let mut wanted: Vec<(TopicPartition, Named)> = Vec::new();
    for (tp, f) in followed
        .iter()
        .filter(|(_, f)| f.truncated && !f.partition.damaged_in_isr())
    {
        // damaged, and out of the ISR since the last truncation step: cut the damage now
        if let Err(e) = f.partition.truncate_damage() {
            tracing::error!(partition = %tp, error = %e, "truncating the damaged suffix failed");
            continue;
        }
        let (leo, epoch) = f.partition.fetch_position();
        let last_fetched_epoch = epoch.map_or(-1, |e| e.0);
        fetching.insert(tp, (f, leo, last_fetched_epoch));
        let named = Named {
            fetch_offset: leo.0,
            leader_epoch: f.leader_epoch,
            last_fetched_epoch,
            outside_isr: !f.partition.in_isr(),
        };
        wanted.push((tp.clone(), named));
    }
    if wanted.is_empty() {
        tokio::time::sleep(RETRY).await;
        return Ok(Fetched::Done);
    }
    let next = session.next(&wanted);
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for tp in &next.to_name {
        let Some(&(f, leo, last_fetched_epoch)) = fetching.get(tp) else {
            continue;
        };
        topics.entry(tp.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(leo.0)
                .with_last_fetched_epoch(last_fetched_epoch)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(REPLICA_FETCH_MAX_BYTES),
        );
    }
    let mut forgotten: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in &next.to_forget {
        forgotten
            .entry(tp.topic.as_str())
            .or_default()
            .push(tp.partition);
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(broker_id))
        .with_max_wait_ms(max_wait_ms(due, tokio::time::Instant::now()))
        .with_min_bytes(1)
        .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
        .with_session_id(next.session_id)
        .with_session_epoch(next.epoch)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, p)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(p)
                })
                .collect(),
        )
        .with_forgotten_topics_data(
            forgotten
                .into_iter()
                .map(|(t, p)| {
                    ForgottenTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(p)
                })
                .collect(),
        );
    let address = c.address().to_string();
    let send = c.send::<_, FetchResponse>(ApiKey::Fetch, FETCH_VERSION, &request, true);
    tokio::pin!(send);
    let (signal, generation) = added;
    let response = loop {
        tokio::select! {
            response = &mut send => break response?,
            _ = signal.notify.notified() => {
                if signal.generation() != generation {
                    return Ok(Fetched::Abandoned);
                }
            }
        }
    };
    session.answered(&wanted, response.session_id, response.error_code);
    if response.error_code != ec::NONE {
        return Ok(Fetched::Done);
    }
    for topic in &response.responses {
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition_index);
            let Some(&(f, fetch_offset, _)) = fetching.get(&tp) else {
                continue;
            };
            match p.error_code {
                ec::NONE => {
                    let records = p.records.as_deref().unwrap_or_default();
                    let leader_hw = Offset(p.high_watermark.max(0));
                    let mut appended = f.partition.append_as_follower(records, leader_hw, now_ms());
                    // a damaged batch: the log refused the whole set (checked once, there);
                    // the batches before the damage are kept, only the damage is refused
                    if let Err(PartitionError::Log(LogError::InvalidRecord(_))) = appended {
                        let (valid, damage) = split_at_damage(records, fetch_offset);
                        appended = f.partition.append_as_follower(valid, leader_hw, now_ms());
                        if let Some(damage) = damage {
                            if first_report(partitions, &tp, damage.offset.0) {
                                tracing::error!(partition = %tp, offset = damage.offset.0, source = %address, error = %damage.error, "the leader sent a corrupt batch: kept every batch before it, not taking it");
                            }
                            if let Err(e) = &appended {
                                tracing::warn!(partition = %tp, error = %e, "follower append failed");
                                mark(partitions, &tp, f.leader_epoch, false);
                            }
                            failed(partitions, &tp, &address, &damage.error);
                            continue;
                        }
                    }
                    match appended {
                        // (the shared set is locked only for a partition that had failed)
                        Ok(_) if f.failures > 0 => succeeded(partitions, &tp),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(partition = %tp, error = %e, "follower append failed");
                            mark(partitions, &tp, f.leader_epoch, false);
                            failed(partitions, &tp, &address, &e);
                        }
                    }
                }
                ec::OFFSET_OUT_OF_RANGE if fetch_offset.0 < p.log_start_offset => {
                    // retention on the leader deleted what we lack: start over at its
                    // log start (Kafka's truncateFullyAndStartAt) and go on fetching
                    let start = Offset(p.log_start_offset);
                    if let Err(e) = f.partition.truncate_fully_and_start_at(start) {
                        tracing::warn!(partition = %tp, error = %e, "restarting the log at the leader's log start failed");
                        failed(partitions, &tp, &address, &e);
                    }
                }
                ec::OFFSET_OUT_OF_RANGE => {
                    // our end is past the leader's: find the divergence again
                    tracing::warn!(partition = %tp, %fetch_offset, "fetch offset out of range on the leader");
                    mark(partitions, &tp, f.leader_epoch, false);
                    failed(partitions, &tp, &address, &"OFFSET_OUT_OF_RANGE");
                }
                code => {
                    // not the leader (yet/any more), fenced epoch, a log it cannot open:
                    // the metadata will move us
                    failed(
                        partitions,
                        &tp,
                        &address,
                        &format_args!("Fetch error {code}"),
                    );
                }
            }
        }
    }
    Ok(Fetched::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(leader: (i32, i64), local: (i32, i64), local_end: i64) -> TruncationStep {
        truncation_step(
            leader,
            (LeaderEpoch(local.0), Offset(local.1)),
            Offset(local_end),
        )
    }

    #[test]
    fn a_failed_partition_waits_5_ms_doubling_up_to_200() {
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(retry_after(u32::MAX), RETRY);
        // logged at WARN after about a second of failures
        let before_warn: u64 = (1..FAILURES_BEFORE_WARN)
            .map(|n| retry_after(n).as_millis() as u64)
            .sum();
        assert!((700..=1200).contains(&before_warn), "{before_warn}");
    }

    #[test]
    fn the_long_poll_ends_when_a_waiting_partition_is_due() {
        let now = tokio::time::Instant::now();
        assert_eq!(max_wait_ms(None, now), REPLICA_FETCH_WAIT_MAX_MS);
        assert_eq!(max_wait_ms(Some(now + Duration::from_millis(40)), now), 40);
        assert_eq!(max_wait_ms(Some(now + Duration::from_secs(5)), now), 500);
        // already due: answer at once
        assert_eq!(max_wait_ms(Some(now), now + Duration::from_millis(3)), 0);
    }

    #[test]
    fn the_divergent_suffix_goes_and_nothing_else() {
        use TruncationStep::*;
        // the leader has our latest epoch and it ends earlier there
        assert_eq!(step((5, 90), (5, 120), 120), Done(Offset(90)));
        // it ends later there: keep everything
        assert_eq!(step((5, 150), (5, 120), 120), Done(Offset(120)));
        // we have an epoch (7) the leader never wrote; the leader answers with its largest
        // epoch below it (5, ending where its next epoch starts, 100), which we have too
        assert_eq!(step((5, 100), (5, 110), 130), Done(Offset(100)));
        // KIP-279: the leader answers with an epoch we lack (4): truncate to where our
        // largest epoch below it ends, then ask again
        assert_eq!(step((4, 80), (3, 60), 130), Again(Offset(60)));
        // an epoch we began with no record in it: the truncation drops only the epoch
        assert_eq!(step((4, 80), (3, 130), 130), Again(Offset(130)));
    }

    #[test]
    fn a_record_set_splits_at_its_first_damaged_batch() {
        let mut set = Vec::new();
        let mut ends = Vec::new();
        for base in [0i64, 3, 6] {
            let mut b = sluice_record::BatchBuilder::new(sluice_record::Compression::None);
            for _ in 0..3 {
                b.append(1, None, Some(b"value"), &[]);
            }
            let mut bytes = b.build().unwrap();
            sluice_record::stamp_base_offset(&mut bytes, Offset(base)).unwrap();
            set.extend_from_slice(&bytes);
            ends.push(set.len());
        }
        let (valid, damage) = split_at_damage(&set, Offset(0));
        assert_eq!(valid.len(), set.len());
        assert!(damage.is_none());
        // a flipped byte in the last batch's records: the first two are kept
        let last = set.len() - 2;
        set[last] ^= 0x40;
        let (valid, damage) = split_at_damage(&set, Offset(0));
        assert_eq!(valid.len(), ends[1]);
        assert_eq!(damage.map(|d| d.offset), Some(Offset(6)));
        // damage in the first batch keeps nothing
        set[ends[0] - 2] ^= 0x40;
        let (valid, damage) = split_at_damage(&set, Offset(0));
        assert!(valid.is_empty());
        assert_eq!(damage.map(|d| d.offset), Some(Offset(0)));
    }

    #[test]
    fn an_unknown_epoch_truncates_nothing() {
        // before the fix this fell back to the high watermark, dropping records the
        // leader held (2,692 acknowledged ones in the fault run)
        assert_eq!(step((-1, -1), (-1, -1), 39853), TruncationStep::Unknown);
        assert_eq!(step((7, -1), (7, 39853), 39853), TruncationStep::Unknown);
    }

    fn named(offset: i64) -> Named {
        Named {
            fetch_offset: offset,
            leader_epoch: 1,
            last_fetched_epoch: 1,
            outside_isr: false,
        }
    }

    #[test]
    fn a_session_names_what_changed_and_forgets_what_is_no_longer_fetched() {
        let tp = |p| TopicPartition::new("t", p);
        // off: every fetch full, without a session
        let mut off = FetchSession::default();
        let some = vec![(tp(0), named(5))];
        off.answered(&some, 42, ec::NONE);
        let next = off.next(&some);
        assert_eq!(
            (next.session_id, next.epoch, next.to_name.len()),
            (0, -1, 1)
        );
        let mut session = FetchSession {
            enabled: true,
            ..FetchSession::default()
        };
        let wanted = vec![(tp(0), named(5)), (tp(1), named(7))];
        // the first fetch is full and opens a session
        let next = session.next(&wanted);
        assert_eq!((next.session_id, next.epoch, next.to_name.len()), (0, 0, 2));
        session.answered(&wanted, 42, ec::NONE);
        // nothing changed: nothing named
        let next = session.next(&wanted);
        assert_eq!((next.session_id, next.epoch), (42, 1));
        assert!(next.to_name.is_empty() && next.to_forget.is_empty());
        session.answered(&wanted, 42, ec::NONE);
        // partition 0 moved on, 1 waits out a failure, 2 is new
        let wanted = vec![(tp(0), named(9)), (tp(2), named(0))];
        let next = session.next(&wanted);
        assert_eq!(next.epoch, 2);
        assert_eq!(next.to_name, vec![&tp(0), &tp(2)]);
        assert_eq!(next.to_forget, vec![tp(1)]);
        session.answered(&wanted, 42, ec::NONE);
        // a partition out of the ISR is named at every fetch
        let mut outside = wanted.clone();
        outside[1].1.outside_isr = true;
        session.answered(&outside, 42, ec::NONE);
        let next = session.next(&outside);
        assert_eq!(next.to_name, vec![&tp(2)]);
        session.answered(&wanted, 42, ec::NONE);
        // the leader lost the session: a full fetch closes it and opens another
        session.answered(&wanted, 0, ec::FETCH_SESSION_ID_NOT_FOUND);
        let next = session.next(&wanted);
        assert_eq!(
            (next.session_id, next.epoch, next.to_name.len()),
            (42, 0, 2)
        );
        // a leader without room for a session: full fetches
        session.answered(&wanted, 0, ec::NONE);
        let next = session.next(&wanted);
        assert_eq!((next.session_id, next.epoch, next.to_name.len()), (0, 0, 2));
        // epochs wrap to 1
        session.answered(&wanted, 43, ec::NONE);
        session.epoch = i32::MAX;
        session.answered(&wanted, 43, ec::NONE);
        assert_eq!(session.epoch, 1);
    }
}
