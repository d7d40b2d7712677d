//! Followers' fetchers: one task per source (leader) broker, multiplexing every partition
//! this broker follows from it, with the Kafka Fetch API and `replica_id` set — the same
//! path consumers use, served by the leader with sendfile. Record sets are appended as
//! received; the leader's high watermark comes back with each response.
//!
//! Before a partition's first fetch under a new leader epoch, the follower asks the leader
//! (OffsetForLeaderEpoch) where its own latest epoch ends there and truncates only the
//! divergent suffix: to min(leader's end offset for that epoch, its own end offset for
//! it) (KIP-101, KIP-279; an epoch the leader does not know falls back to the HW).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_metadata::error_code as ec;
use sluice_protocol::{ClientConnection, ClientError};
use sluice_record::{now_ms, Offset, TopicPartition};
use tokio::task::JoinHandle;

use crate::partition::Partition;

/// Fetch version used between brokers (topic names, flexible).
const FETCH_VERSION: i16 = 12;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
/// `replica.fetch.wait.max.ms`.
const REPLICA_FETCH_WAIT_MAX_MS: i32 = 500;
/// `replica.fetch.max.bytes` (per partition) and `replica.fetch.response.max.bytes`.
const REPLICA_FETCH_MAX_BYTES: i32 = 1024 * 1024;
const REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
const RETRY: Duration = Duration::from_millis(200);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Followed {
    partition: Arc<Partition>,
    leader_epoch: i32,
    /// The divergent suffix (if any) was removed for this leader epoch.
    truncated: bool,
}

type FollowedSet = Arc<Mutex<BTreeMap<TopicPartition, Followed>>>;

struct Fetcher {
    address: String,
    partitions: FollowedSet,
    task: JoinHandle<()>,
}

/// Every fetcher of this broker, by source broker id.
pub struct ReplicaFetchers {
    broker_id: i32,
    fetchers: Mutex<HashMap<i32, Fetcher>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaFetchers {
    pub fn new(broker_id: i32) -> Self {
        ReplicaFetchers {
            broker_id,
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
            let task = tokio::spawn(run(
                self.broker_id,
                address.to_string(),
                Arc::clone(&partitions),
            ));
            Fetcher {
                address: address.to_string(),
                partitions,
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
                },
            );
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

async fn run(broker_id: i32, address: String, partitions: FollowedSet) {
    let mut connection: Option<ClientConnection> = None;
    loop {
        let followed: Vec<(TopicPartition, Followed)> = lock(&partitions)
            .iter()
            .map(|(tp, f)| (tp.clone(), f.clone()))
            .collect();
        if followed.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        let result = async {
            let untruncated: Vec<&(TopicPartition, Followed)> =
                followed.iter().filter(|(_, f)| !f.truncated).collect();
            if !untruncated.is_empty() {
                truncate(c, broker_id, &untruncated, &partitions).await?;
            }
            fetch(c, broker_id, &followed, &partitions).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "replica fetcher: reconnecting");
            connection = None;
            tokio::time::sleep(RETRY).await;
        }
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
) -> Result<(), ClientError> {
    // partition → (its follow state, the latest epoch in its log)
    let mut asked: HashMap<&TopicPartition, (&Followed, i32)> = HashMap::new();
    for (tp, f) in followed {
        match f.partition.fetch_position().1 {
            // nothing appended yet: nothing can diverge
            None => mark(partitions, tp, f.leader_epoch, true),
            Some(epoch) => {
                asked.insert(tp, (f, epoch.0));
            }
        }
    }
    if asked.is_empty() {
        return Ok(());
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
    for topic in &response.topics {
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition);
            let Some(&(f, asked_epoch)) = asked.get(&tp) else {
                continue;
            };
            if p.error_code != ec::NONE {
                tracing::debug!(partition = %tp, error = p.error_code, "OffsetForLeaderEpoch refused");
                continue;
            }
            let (local_end, _) = f.partition.fetch_position();
            let target = if p.leader_epoch < 0 {
                // the leader knows no epoch at or below ours: fall back to the HW
                f.partition.high_watermark()
            } else {
                let ours = f.partition.local_end_offset_for_epoch(p.leader_epoch);
                Offset(p.end_offset).min(ours)
            };
            if target < local_end {
                tracing::warn!(partition = %tp, from = %local_end, to = %target, asked_epoch, leader_epoch = p.leader_epoch, "truncating the divergent suffix");
                if let Err(e) = f.partition.truncate_to(target) {
                    tracing::error!(partition = %tp, error = %e, "truncation failed");
                    continue;
                }
            }
            mark(partitions, &tp, f.leader_epoch, true);
        }
    }
    Ok(())
}

async fn fetch(
    c: &mut ClientConnection,
    broker_id: i32,
    followed: &[(TopicPartition, Followed)],
    partitions: &FollowedSet,
) -> Result<(), ClientError> {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    // what each fetched partition asked from, for reading the response
    let mut sent: HashMap<&TopicPartition, (&Followed, Offset)> = HashMap::new();
    for (tp, f) in followed.iter().filter(|(_, f)| f.truncated) {
        let (leo, epoch) = f.partition.fetch_position();
        sent.insert(tp, (f, leo));
        topics.entry(tp.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(leo.0)
                .with_last_fetched_epoch(epoch.map_or(-1, |e| e.0))
                .with_log_start_offset(-1)
                .with_partition_max_bytes(REPLICA_FETCH_MAX_BYTES),
        );
    }
    if topics.is_empty() {
        tokio::time::sleep(RETRY).await;
        return Ok(());
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(broker_id))
        .with_max_wait_ms(REPLICA_FETCH_WAIT_MAX_MS)
        .with_min_bytes(1)
        .with_max_bytes(REPLICA_FETCH_RESPONSE_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, p)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(p)
                })
                .collect(),
        );
    let response: FetchResponse = c.send(ApiKey::Fetch, FETCH_VERSION, &request, true).await?;
    let mut backoff = false;
    for topic in &response.responses {
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition_index);
            let Some(&(f, fetch_offset)) = sent.get(&tp) else {
                continue;
            };
            match p.error_code {
                ec::NONE => {
                    let records = p.records.as_deref().unwrap_or_default();
                    let leader_hw = Offset(p.high_watermark.max(0));
                    if let Err(e) = f.partition.append_as_follower(records, leader_hw, now_ms()) {
                        tracing::warn!(partition = %tp, error = %e, "follower append failed");
                        mark(partitions, &tp, f.leader_epoch, false);
                        backoff = true;
                    }
                }
                ec::OFFSET_OUT_OF_RANGE if fetch_offset.0 < p.log_start_offset => {
                    // retention on the leader deleted what we lack: start over at its
                    // log start (Kafka's truncateFullyAndStartAt) and go on fetching
                    let start = Offset(p.log_start_offset);
                    if let Err(e) = f.partition.truncate_fully_and_start_at(start) {
                        tracing::warn!(partition = %tp, error = %e, "restarting the log at the leader's log start failed");
                        backoff = true;
                    }
                }
                ec::OFFSET_OUT_OF_RANGE => {
                    // our end is past the leader's: find the divergence again
                    tracing::warn!(partition = %tp, %fetch_offset, "fetch offset out of range on the leader");
                    mark(partitions, &tp, f.leader_epoch, false);
                    backoff = true;
                }
                code => {
                    // not the leader (yet/any more), fenced epoch: the metadata will move us
                    tracing::debug!(partition = %tp, error = code, "replica fetch refused");
                    backoff = true;
                }
            }
        }
    }
    if backoff {
        tokio::time::sleep(RETRY).await;
    }
    Ok(())
}
