//! The consumer: reads a topic's assigned partitions from their leaders. A fetcher task
//! keeps one Fetch in flight per leader broker, all leaders at once, and queues what
//! they return (`queued.max.fetches` record sets ahead of `poll`: back-pressure, as
//! librdkafka's pre-fetch queue). Positions start at the earliest or latest offset
//! (ListOffsets) or a given one; a leader change (NOT_LEADER_OR_FOLLOWER, a fenced or
//! unknown leader epoch, a storage error) refreshes metadata and backs the partition
//! off `retry.backoff.ms`; OFFSET_OUT_OF_RANGE resets the position by
//! `auto.offset.reset`. Each fetch names the leader epoch the client knows (KIP-320), so
//! a deposed leader cannot serve it. Records are handed out as the fetched bytes, decoded
//! in place by [`Fetched::for_each_record`] (no copy, no allocation per record).
//!
//! Invariants: a partition's position only moves forward, except by an offset reset;
//! `poll` hands out each partition's record sets in offset order, each starting where
//! the one before it ended.
//!
//! Not built: consumer groups (this consumer is assigned partitions, as `assign()` is);
//! the CLI and tests use real Kafka clients for groups.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_protocol::ClientConnection;
use sluice_record::{BatchHeader, Record, RecordBatches, RecordError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::broker_io::{BrokerIo, NoBroker, CLIENT_ID};
use crate::metadata_cache::MetadataCache;

const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
/// ListOffsets' special timestamps.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// Where a partition's reading starts when it has no position (or an invalid one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

/// Kafka's consumer settings, with its defaults.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub bootstrap_servers: String,
    /// `fetch.min.bytes`.
    pub fetch_min_bytes: i32,
    /// `fetch.max.wait.ms`.
    pub fetch_max_wait_ms: i32,
    /// `fetch.max.bytes`: one Fetch response at most.
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub max_partition_fetch_bytes: i32,
    /// `request.timeout.ms`.
    pub request_timeout_ms: u64,
    /// `retry.backoff.ms`.
    pub retry_backoff_ms: u64,
    /// `auto.offset.reset`.
    pub auto_offset_reset: OffsetReset,
    /// Fetched record sets queued ahead of `poll` (librdkafka's pre-fetch queue).
    pub queued_max_fetches: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap_servers: String::new(),
            fetch_min_bytes: 1,
            fetch_max_wait_ms: 500,
            fetch_max_bytes: 52_428_800,
            max_partition_fetch_bytes: 1_048_576,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            auto_offset_reset: OffsetReset::Latest,
            queued_max_fetches: 16,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    NoBroker(#[from] NoBroker),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("{topic}-{partition}: {reason}")]
    Partition {
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error("{topic}-{partition}: a fetched batch: {error}")]
    Record {
        topic: String,
        partition: i32,
        error: RecordError,
    },
    #[error("the consumer's fetcher stopped")]
    Closed,
}

/// One partition's record set from one Fetch: whole batches, the first holding
/// `fetch_offset`.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The partition's high watermark when the leader answered.
    pub high_watermark: i64,
    /// Where the read asked to start (records below it in the first batch are skipped).
    pub fetch_offset: i64,
    /// The offset after the last whole batch: the partition's next position.
    pub next_offset: i64,
    records: Bytes,
}

impl Fetched {
    /// Calls `f` with each record at or after `fetch_offset`, in order (control batches
    /// skipped); returns how many.
    pub fn for_each_record(&self, mut f: impl FnMut(&Record<'_>)) -> Result<u64, ConsumerError> {
        let mut count = 0u64;
        let error = |error| ConsumerError::Record {
            topic: self.topic.to_string(),
            partition: self.partition,
            error,
        };
        for batch in RecordBatches::new(&self.records, usize::MAX) {
            let batch = batch.map_err(error)?;
            if batch.header().is_control() || batch.last_offset().0 < self.fetch_offset {
                continue;
            }
            let records = batch.records().map_err(error)?;
            for record in records.iter() {
                let record = record.map_err(error)?;
                if record.offset.0 >= self.fetch_offset {
                    f(&record);
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

/// The whole batches at the start of `records` (a response may end inside one): their
/// length and the offset after them.
fn whole_batches(records: &[u8]) -> Option<(usize, i64)> {
    let mut at = 0usize;
    let mut next = None;
    while let Ok(h) = BatchHeader::parse(&records[at..]) {
        let size = h.total_size();
        if size == 0 || at + size > records.len() {
            break;
        }
        at += size;
        next = Some(h.next_offset().0);
    }
    next.map(|n| (at, n))
}

pub struct Consumer {
    fetched: mpsc::Receiver<Result<Fetched, ConsumerError>>,
    task: tokio::task::JoinHandle<()>,
    /// Where each assigned partition's reading started.
    start_offsets: BTreeMap<i32, i64>,
    /// The offset after each assigned partition's last record when reading started.
    end_offsets: BTreeMap<i32, i64>,
}

impl Consumer {
    /// Reads `partitions` of `topic` (all of them if None), each from `start`.
    pub async fn assign(
        config: ConsumerConfig,
        topic: &str,
        partitions: Option<&[i32]>,
        start: StartOffset,
    ) -> Result<Self, ConsumerError> {
        let mut io = BrokerIo::new(
            &config.bootstrap_servers,
            Duration::from_millis(config.request_timeout_ms),
        );
        let mut metadata = MetadataCache::default();
        metadata.update(&io.metadata(&metadata, &[topic.to_string()]).await?);
        let count = metadata
            .partitions(topic)
            .ok_or_else(|| ConsumerError::Topic {
                topic: topic.to_string(),
                reason: match metadata.topic(topic) {
                    Some(crate::metadata_cache::TopicState::Error(code)) => {
                        ResponseError::try_from_code(*code)
                            .map_or(format!("error {code}"), |e| e.to_string())
                    }
                    _ => "not in the cluster's metadata".to_string(),
                },
            })?;
        let assigned: Vec<i32> = match partitions {
            Some(p) => {
                if let Some(bad) = p.iter().find(|p| !(0..count).contains(*p)) {
                    return Err(ConsumerError::Topic {
                        topic: topic.to_string(),
                        reason: format!("no partition {bad} (it has {count})"),
                    });
                }
                p.to_vec()
            }
            None => (0..count).collect(),
        };
        let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms);
        let end_offsets = list_offsets(
            &mut io,
            &mut metadata,
            topic,
            &assigned,
            LATEST_TIMESTAMP,
            deadline,
        )
        .await?;
        let positions = match start {
            StartOffset::Latest => end_offsets.clone(),
            StartOffset::Earliest => {
                list_offsets(
                    &mut io,
                    &mut metadata,
                    topic,
                    &assigned,
                    EARLIEST_TIMESTAMP,
                    deadline,
                )
                .await?
            }
            StartOffset::At(n) => assigned.iter().map(|p| (*p, n)).collect(),
        };
        let (tx, fetched) = mpsc::channel(config.queued_max_fetches.max(1));
        let start_offsets = positions.clone();
        let fetcher = Fetcher {
            config,
            io,
            metadata,
            topic: Arc::from(topic),
            positions,
            backoff_until: HashMap::new(),
            tx,
        };
        Ok(Consumer {
            fetched,
            task: tokio::spawn(fetcher.run()),
            start_offsets,
            end_offsets,
        })
    }

    /// The next record set, waiting at most `timeout` (None: nothing came). A partition's
    /// error is handed out as it happens; the fetcher goes on (it backs that partition off
    /// and asks again).
    pub async fn poll(&mut self, timeout: Duration) -> Option<Result<Fetched, ConsumerError>> {
        match tokio::time::timeout(timeout, self.fetched.recv()).await {
            Ok(Some(f)) => Some(f),
            Ok(None) => Some(Err(ConsumerError::Closed)),
            Err(_) => None,
        }
    }

    /// Where each assigned partition's reading started.
    pub fn start_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.start_offsets
    }

    /// Each assigned partition's log end offset when reading started (ListOffsets latest).
    pub fn end_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.end_offsets
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Whether a partition-level error means the client's view of the leader is stale.
fn leader_moved(error: ResponseError) -> bool {
    use ResponseError as E;
    matches!(
        error,
        E::NotLeaderOrFollower
            | E::UnknownTopicOrPartition
            | E::LeaderNotAvailable
            | E::FencedLeaderEpoch
            | E::UnknownLeaderEpoch
            | E::KafkaStorageError
            | E::ReplicaNotAvailable
            | E::OffsetNotAvailable
    )
}

/// Each partition's offset for `timestamp` (latest, earliest), from its leader; asks
/// again after a leader change or OFFSET_NOT_AVAILABLE (a new leader catching up) until
/// `deadline`.
async fn list_offsets(
    io: &mut BrokerIo,
    metadata: &mut MetadataCache,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
    deadline: Instant,
) -> Result<BTreeMap<i32, i64>, ConsumerError> {
    let mut found = BTreeMap::new();
    let mut last = String::new();
    loop {
        let wanted: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !found.contains_key(p))
            .collect();
        if wanted.is_empty() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(ConsumerError::Partition {
                topic: topic.to_string(),
                partition: wanted[0],
                reason: format!("no offset in time: {last}"),
            });
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in wanted {
            if let Some(info) = metadata.partition(topic, p).filter(|i| i.leader >= 0) {
                by_leader.entry(info.leader).or_default().push(p);
            }
        }
        let mut stale = by_leader.is_empty();
        for (leader, ps) in by_leader {
            let Some(address) = metadata.broker_address(leader).map(str::to_string) else {
                stale = true;
                continue;
            };
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let answer: Result<ListOffsetsResponse, _> = match io.connection(&address).await {
                Ok(c) => {
                    c.send(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request, true)
                        .await
                }
                Err(e) => Err(e),
            };
            let response = match answer {
                Ok(r) => r,
                Err(e) => {
                    io.connections.remove(&address);
                    last = e.to_string();
                    stale = true;
                    continue;
                }
            };
            for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
                match ResponseError::try_from_code(p.error_code) {
                    None => {
                        found.insert(p.partition_index, p.offset);
                    }
                    Some(e) if leader_moved(e) => {
                        metadata.invalidate_leader(topic, p.partition_index);
                        last = e.to_string();
                        stale = true;
                    }
                    Some(e) => {
                        return Err(ConsumerError::Partition {
                            topic: topic.to_string(),
                            partition: p.partition_index,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
        if stale {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(r) = io.metadata(metadata, &[topic.to_string()]).await {
                metadata.update(&r);
            }
        }
    }
}

/// What one Fetch to one broker gave back.
struct FetchDone {
    leader: i32,
    address: String,
    connection: Option<ClientConnection>,
    /// (partition, fetch offset) asked for.
    asked: Vec<(i32, i64)>,
    response: Result<FetchResponse, String>,
}

/// The fetcher task's state.
struct Fetcher {
    config: ConsumerConfig,
    io: BrokerIo,
    metadata: MetadataCache,
    topic: Arc<str>,
    /// Each assigned partition's next offset to read.
    positions: BTreeMap<i32, i64>,
    /// Partitions backed off after an error, until then.
    backoff_until: HashMap<i32, Instant>,
    tx: mpsc::Sender<Result<Fetched, ConsumerError>>,
}

impl Fetcher {
    async fn run(mut self) {
        let mut in_flight: JoinSet<FetchDone> = JoinSet::new();
        // leaders with a fetch in flight
        let mut busy: std::collections::HashSet<i32> = std::collections::HashSet::new();
        let mut refresh = false;
        loop {
            if refresh {
                refresh = false;
                if let Ok(r) = self
                    .io
                    .metadata(&self.metadata, &[self.topic.to_string()])
                    .await
                {
                    self.metadata.update(&r);
                }
            }
            let now = Instant::now();
            let mut by_leader: BTreeMap<i32, Vec<(i32, i64, i32)>> = BTreeMap::new();
            for (&p, &offset) in &self.positions {
                if self.backoff_until.get(&p).is_some_and(|t| *t > now) {
                    continue;
                }
                match self.metadata.partition(&self.topic, p) {
                    Some(info) if info.leader >= 0 => {
                        if !busy.contains(&info.leader) {
                            by_leader.entry(info.leader).or_default().push((
                                p,
                                offset,
                                info.leader_epoch,
                            ));
                        }
                    }
                    _ => refresh = true,
                }
            }
            for (leader, partitions) in by_leader {
                let Some(address) = self.metadata.broker_address(leader).map(str::to_string) else {
                    refresh = true;
                    continue;
                };
                busy.insert(leader);
                let connection = self.io.connections.remove(&address);
                let request = self.fetch_request(&partitions);
                let timeout = self.io.timeout;
                let asked = partitions.iter().map(|(p, o, _)| (*p, *o)).collect();
                in_flight.spawn(async move {
                    let (connection, response) =
                        fetch(&address, connection, &request, timeout).await;
                    FetchDone {
                        leader,
                        address,
                        connection,
                        asked,
                        response,
                    }
                });
            }
            if in_flight.is_empty() {
                // every partition backed off or leaderless: wait, then look again
                let wait = self
                    .backoff_until
                    .values()
                    .min()
                    .map_or(Duration::from_millis(self.config.retry_backoff_ms), |t| {
                        t.saturating_duration_since(Instant::now())
                    })
                    .max(Duration::from_millis(10));
                tokio::time::sleep(wait).await;
                continue;
            }
            let Some(Ok(done)) = in_flight.join_next().await else {
                continue;
            };
            busy.remove(&done.leader);
            if let Some(c) = done.connection {
                self.io.connections.insert(done.address, c);
            }
            match done.response {
                Ok(response) => {
                    if !self.take(response, &done.asked, &mut refresh).await {
                        return;
                    }
                }
                Err(_) => {
                    refresh = true;
                    self.back_off(done.asked.iter().map(|(p, _)| *p));
                }
            }
        }
    }

    fn fetch_request(&self, partitions: &[(i32, i64, i32)]) -> FetchRequest {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(self.config.fetch_max_wait_ms)
            .with_min_bytes(self.config.fetch_min_bytes)
            .with_max_bytes(self.config.fetch_max_bytes)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&self.topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(p, offset, epoch)| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(*offset)
                                .with_current_leader_epoch(*epoch)
                                .with_partition_max_bytes(self.config.max_partition_fetch_bytes)
                        })
                        .collect(),
                )])
    }

    fn back_off(&mut self, partitions: impl Iterator<Item = i32>) {
        let until = Instant::now() + Duration::from_millis(self.config.retry_backoff_ms);
        for p in partitions {
            self.backoff_until.insert(p, until);
        }
    }

    /// Takes one Fetch response in: queues each partition's records (waiting for room),
    /// handles its errors. False once the consumer is gone.
    async fn take(
        &mut self,
        response: FetchResponse,
        asked: &[(i32, i64)],
        refresh: &mut bool,
    ) -> bool {
        if let Some(e) = ResponseError::try_from_code(response.error_code) {
            *refresh = true;
            self.back_off(asked.iter().map(|(p, _)| *p));
            return self
                .tx
                .send(Err(ConsumerError::Topic {
                    topic: self.topic.to_string(),
                    reason: format!("Fetch: {e}"),
                }))
                .await
                .is_ok();
        }
        let asked: HashMap<i32, i64> = asked.iter().copied().collect();
        for topic in response.responses {
            for p in topic.partitions {
                let partition = p.partition_index;
                let Some(&fetch_offset) = asked.get(&partition) else {
                    continue;
                };
                // a reset or an earlier answer moved the position since: not this one's
                if self.positions.get(&partition) != Some(&fetch_offset) {
                    continue;
                }
                match ResponseError::try_from_code(p.error_code) {
                    None => {
                        self.backoff_until.remove(&partition);
                        let records = p.records.unwrap_or_default();
                        let Some((whole, next_offset)) = whole_batches(&records) else {
                            continue;
                        };
                        if next_offset <= fetch_offset {
                            continue;
                        }
                        self.positions.insert(partition, next_offset);
                        let fetched = Fetched {
                            topic: Arc::clone(&self.topic),
                            partition,
                            high_watermark: p.high_watermark,
                            fetch_offset,
                            next_offset,
                            records: records.slice(..whole),
                        };
                        if self.tx.send(Ok(fetched)).await.is_err() {
                            return false;
                        }
                    }
                    Some(ResponseError::OffsetOutOfRange) => {
                        let timestamp = match self.config.auto_offset_reset {
                            OffsetReset::Earliest => EARLIEST_TIMESTAMP,
                            OffsetReset::Latest => LATEST_TIMESTAMP,
                        };
                        let deadline =
                            Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
                        match list_offsets(
                            &mut self.io,
                            &mut self.metadata,
                            &self.topic,
                            &[partition],
                            timestamp,
                            deadline,
                        )
                        .await
                        {
                            Ok(found) => {
                                if let Some(o) = found.get(&partition) {
                                    tracing::info!(topic = %self.topic, partition, from = fetch_offset, to = o, "offset out of range: reset by auto.offset.reset");
                                    self.positions.insert(partition, *o);
                                }
                            }
                            Err(e) => {
                                self.back_off(std::iter::once(partition));
                                if self.tx.send(Err(e)).await.is_err() {
                                    return false;
                                }
                            }
                        }
                    }
                    Some(e) if leader_moved(e) => {
                        self.metadata.invalidate_leader(&self.topic, partition);
                        *refresh = true;
                        self.back_off(std::iter::once(partition));
                    }
                    Some(e) => {
                        self.back_off(std::iter::once(partition));
                        let error = ConsumerError::Partition {
                            topic: self.topic.to_string(),
                            partition,
                            reason: e.to_string(),
                        };
                        if self.tx.send(Err(error)).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
}

/// One Fetch to `address` on `connection` (made if None); gives the connection back
/// unless it broke.
async fn fetch(
    address: &str,
    connection: Option<ClientConnection>,
    request: &FetchRequest,
    timeout: Duration,
) -> (Option<ClientConnection>, Result<FetchResponse, String>) {
    let mut connection = match connection {
        Some(c) => c,
        None => match ClientConnection::connect(address, CLIENT_ID, timeout).await {
            Ok(c) => c,
            Err(e) => return (None, Err(e.to_string())),
        },
    };
    match connection
        .send(ApiKey::Fetch, FETCH_VERSION, request, true)
        .await
    {
        Ok(response) => (Some(connection), Ok(response)),
        Err(e) => (None, Err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_record::{BatchBuilder, Compression, Offset};

    fn batch(base: i64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).base_offset(Offset(base));
        for v in values {
            b.append(0, None, Some(v.as_bytes()), &[]);
        }
        b.build().expect("a batch")
    }

    #[test]
    fn a_record_set_yields_records_from_the_fetch_offset_and_ends_at_its_last_whole_batch() {
        let mut set = batch(10, &["a", "b", "c"]);
        set.extend(batch(13, &["d", "e"]));
        let whole_len = set.len();
        // a response may end inside a batch
        set.extend(&batch(15, &["f"])[..20]);
        let (whole, next) = whole_batches(&set).expect("whole batches");
        assert_eq!((whole, next), (whole_len, 15));
        let fetched = Fetched {
            topic: Arc::from("t"),
            partition: 0,
            high_watermark: 15,
            fetch_offset: 11,
            next_offset: next,
            records: Bytes::from(set).slice(..whole),
        };
        let mut seen = Vec::new();
        let count = fetched
            .for_each_record(|r| {
                seen.push((
                    r.offset.0,
                    String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned(),
                ))
            })
            .unwrap();
        assert_eq!(count, 4);
        assert_eq!(
            seen,
            vec![
                (11, "b".to_string()),
                (12, "c".to_string()),
                (13, "d".to_string()),
                (14, "e".to_string())
            ]
        );
        assert!(whole_batches(&[0u8; 10]).is_none());
    }
}
