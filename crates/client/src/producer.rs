//! The producer: `send` puts a record into the accumulator (`accumulator.rs`) on the
//! partition the partitioner picks, waiting while `buffer.memory` is used up (at most
//! `max.block.ms`); a sender task drains ready batches, groups them by partition leader
//! (from `metadata_cache.rs`), keeps up to `max.in.flight.requests.per.connection`
//! Produce requests in flight per broker on one pipelined connection (each answer taken
//! as it comes, never waiting for other brokers'), and turns each partition's answer into
//! delivery reports, retries or failures (`produce_error.rs`). Retries wait `retry.backoff.ms`, doubling up to
//! `retry.backoff.max.ms`, and refresh metadata when the error says the leader moved; a
//! batch fails once `delivery.timeout.ms` has passed since it was created or it used up
//! `retries`. With `enable.idempotence` the producer takes an id (InitProducerId) and
//! numbers each partition's batches; a retry keeps its sequence, so the broker drops a
//! batch it already has.
//!
//! Order: a partition's batches leave in `send` order, each request carrying at most one
//! batch per partition, and a retried batch goes back into its queue in that order and is
//! sent again only once nothing of its partition is in flight. With idempotence the broker enforces the order: a batch behind a
//! failed one is refused (OUT_OF_ORDER_SEQUENCE_NUMBER) and retried after it, so records
//! are written in `send` order, at most five batches in flight per partition (the batches
//! a broker remembers per producer). Without idempotence and with more than one request
//! in flight, a retry may land behind later batches (as in Kafka); with one in flight,
//! order is kept.
//!
//! Invariants: every record sent gets exactly one delivery report; a failure says "not
//! written" only when the broker proved it (`Persisted::No`), and "maybe" once any
//! attempt may have been appended.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::PipelinedConnection;
use sluice_record::TopicPartition;
use tokio::sync::{mpsc, Notify};

use crate::accumulator::{
    AccumulatorConfig, AccumulatorError, Appended, ProducerBatch, RecordAccumulator,
};
use crate::broker_io::{BrokerIo, NoBroker};
use crate::metadata_cache::MetadataCache;
use crate::partitioner::{DefaultPartitioner, Partitioner};
use crate::produce_error::{produce_error_action, Persisted};

const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// A broker remembers a producer's last 5 batches per partition (`MAX_CACHED_BATCHES`):
/// more in flight and a retry could no longer be told from a new batch.
const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;
use crate::broker_io::CLIENT_ID;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `bootstrap.servers`: host:port[,host:port...].
    pub bootstrap_servers: String,
    /// `acks`: 0, 1 or -1 (all).
    pub acks: i16,
    pub accumulator: AccumulatorConfig,
    /// `retries`.
    pub retries: u32,
    /// `retry.backoff.ms` and `retry.backoff.max.ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// `delivery.timeout.ms`: from a record's send to its final report.
    pub delivery_timeout_ms: u64,
    /// `request.timeout.ms`: one request's answer (and one connect).
    pub request_timeout_ms: u64,
    /// `enable.idempotence` (needs acks=all).
    pub enable_idempotence: bool,
    /// `max.block.ms`: how long `send` waits for memory or metadata.
    pub max_block_ms: u64,
    /// `max.in.flight.requests.per.connection`: Produce requests sent to one broker and
    /// not yet answered (at most 5 with idempotence).
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    /// Kafka's producer defaults, idempotence off.
    fn default() -> Self {
        ProducerConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            acks: -1,
            accumulator: AccumulatorConfig::default(),
            retries: u32::MAX,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1000,
            delivery_timeout_ms: 120_000,
            request_timeout_ms: 30_000,
            enable_idempotence: false,
            max_block_ms: 60_000,
            max_in_flight: 5,
        }
    }
}

/// One record to send. `partition` None: the partitioner picks; `timestamp` None: now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// Kafka's error code of the last answer (-1: no answer: a connection or timeout).
    pub code: i16,
    pub persisted: Persisted,
    pub message: String,
}

/// The outcome of one `send`: its partition and offset, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub record_id: u64,
    pub partition: i32,
    /// The record's offset (-1 when not known: acks=0, or a duplicate the broker dropped).
    pub result: Result<i64, DeliveryError>,
}

/// The outcome of one batch's records: what the reports channel carries (one message per
/// batch, not per record). [`BatchReport::records`] gives each record's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub partition: i32,
    /// The records' ids, in offset order.
    pub record_ids: Vec<u64>,
    /// The first record's offset (-1 when not known), or why none was written.
    pub result: Result<i64, DeliveryError>,
}

impl BatchReport {
    /// How many records the batch held.
    pub fn len(&self) -> usize {
        self.record_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.record_ids.is_empty()
    }

    /// One report per record, in offset order.
    pub fn records(&self) -> impl Iterator<Item = DeliveryReport> + '_ {
        self.record_ids
            .iter()
            .enumerate()
            .map(move |(i, id)| DeliveryReport {
                record_id: *id,
                partition: self.partition,
                result: match &self.result {
                    Ok(base) if *base >= 0 => Ok(base + i as i64),
                    Ok(_) => Ok(-1),
                    Err(e) => Err(e.clone()),
                },
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    NoBroker(#[from] NoBroker),
    #[error("{0}")]
    Config(String),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("send waited max.block.ms ({0} ms) for buffer.memory or metadata")]
    Blocked(u64),
    #[error(transparent)]
    Accumulator(#[from] AccumulatorError),
    #[error("the producer's sender stopped")]
    Closed,
}

/// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER.
const OUT_OF_ORDER_SEQUENCE: i16 = 45;

/// Per-batch state the sender keeps beside the accumulator's batch.
struct Attempt {
    topic_partition: TopicPartition,
    attempts: u32,
    maybe_written: bool,
    retry_at: Option<Instant>,
    base_sequence: Option<i32>,
}

impl Attempt {
    fn new(topic_partition: &TopicPartition) -> Self {
        Attempt {
            topic_partition: topic_partition.clone(),
            attempts: 0,
            maybe_written: false,
            retry_at: None,
            base_sequence: None,
        }
    }
}

struct Shared {
    accumulator: RecordAccumulator,
    partitioner: Box<dyn Partitioner>,
    metadata: MetadataCache,
    next_record_id: u64,
    /// Records sent and not yet reported (flush waits for 0).
    unreported: u64,
    /// Topics whose metadata the sender should fetch.
    wanted_topics: HashSet<String>,
    /// Every topic a record was sent to (refreshed when metadata goes stale).
    topics_in_use: rustc_hash::FxHashSet<String>,
    metadata_stale: bool,
    flushing: usize,
    /// Batches sent again after a retriable error (for tests and `sluice bench`).
    retries: u64,
    closed: bool,
}

pub struct Producer {
    config: ProducerConfig,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the sender: a record appended, a flush, metadata wanted.
    wake: Arc<Notify>,
    /// Wakes senders waiting for memory or metadata, and flushes.
    progress: Arc<Notify>,
    started: Instant,
    sender: Option<tokio::task::JoinHandle<()>>,
}

/// The reports channel: one [`BatchReport`] per batch, every record in exactly one.
pub type DeliveryReports = mpsc::UnboundedReceiver<BatchReport>;

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Producer {
    /// Connects (metadata from the first bootstrap broker that answers) and starts the
    /// sender. Delivery reports arrive on the returned channel, one per `send`.
    pub async fn connect(
        config: ProducerConfig,
    ) -> Result<(Producer, DeliveryReports), ProducerError> {
        Self::with_partitioner(config, Box::new(DefaultPartitioner::new())).await
    }

    pub async fn with_partitioner(
        config: ProducerConfig,
        partitioner: Box<dyn Partitioner>,
    ) -> Result<(Producer, DeliveryReports), ProducerError> {
        if !matches!(config.acks, -1..=1) {
            return Err(ProducerError::Config(format!(
                "acks must be 0, 1 or all (-1), got {}",
                config.acks
            )));
        }
        if config.enable_idempotence && config.acks != -1 {
            return Err(ProducerError::Config(
                "enable.idempotence needs acks=all".into(),
            ));
        }
        if config.max_in_flight == 0 {
            return Err(ProducerError::Config(
                "max.in.flight.requests.per.connection must be at least 1".into(),
            ));
        }
        if config.enable_idempotence && config.max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
            return Err(ProducerError::Config(format!(
                "enable.idempotence needs max.in.flight.requests.per.connection <= \
                 {MAX_IN_FLIGHT_IDEMPOTENT}, got {}",
                config.max_in_flight
            )));
        }
        let mut io = BrokerIo::new(
            &config.bootstrap_servers,
            Duration::from_millis(config.request_timeout_ms),
        );
        let mut metadata = MetadataCache::default();
        metadata.update(&io.metadata(&metadata, &[]).await?);
        let producer_id = if config.enable_idempotence {
            Some(init_producer_id(&mut io, &metadata, None).await?)
        } else {
            None
        };
        let shared = Arc::new(Mutex::new(Shared {
            accumulator: RecordAccumulator::new(config.accumulator.clone()),
            partitioner,
            metadata,
            next_record_id: 0,
            unreported: 0,
            wanted_topics: HashSet::new(),
            topics_in_use: Default::default(),
            metadata_stale: false,
            flushing: 0,
            retries: 0,
            closed: false,
        }));
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        // one clock for batch creation, linger and delivery timeouts
        let started = Instant::now();
        let wake = Arc::new(Notify::new());
        let progress = Arc::new(Notify::new());
        let sender = Sender {
            config: config.clone(),
            shared: shared.clone(),
            wake: wake.clone(),
            progress: progress.clone(),
            reports: reports_tx,
            io,
            connections: HashMap::new(),
            requests_in_flight: HashMap::new(),
            producer_id,
            epoch_bump_needed: false,
            sequences: HashMap::new(),
            attempts: HashMap::new(),
            in_flight: HashMap::new(),
            started,
        };
        let handle = tokio::spawn(sender.run());
        Ok((
            Producer {
                config,
                shared,
                wake,
                progress,
                started,
                sender: Some(handle),
            },
            reports_rx,
        ))
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Queues a record; returns its id (its delivery report carries it): ids run 0, 1,
    /// 2, ... in the order `send` accepted the records. Waits while
    /// `buffer.memory` is used up or the topic's metadata is not known yet, at most
    /// `max.block.ms`.
    pub async fn send(&self, record: ProducerRecord<'_>) -> Result<u64, ProducerError> {
        // set at the first wait (most sends never wait: no clock read for them)
        let mut deadline: Option<Instant> = None;
        loop {
            let progressed = self.progress.notified();
            {
                let mut guard = lock(&self.shared);
                let s = &mut *guard;
                if s.closed {
                    return Err(ProducerError::Closed);
                }
                // one lookup of the topic's metadata per record
                match s.metadata.topic_with_available(record.topic) {
                    None => {
                        s.wanted_topics.insert(record.topic.to_string());
                        self.wake.notify_one();
                    }
                    Some((crate::metadata_cache::TopicState::Error(code), _)) => {
                        return Err(ProducerError::Topic {
                            topic: record.topic.to_string(),
                            reason: format!("metadata error code {code}"),
                        });
                    }
                    Some((crate::metadata_cache::TopicState::Known(known), available)) => {
                        let partitions = known.len() as i32;
                        let id = s.next_record_id;
                        let timestamp = record.timestamp.unwrap_or_else(sluice_record::now_ms);
                        if partitions == 0 {
                            return Err(ProducerError::Topic {
                                topic: record.topic.to_string(),
                                reason: "no partitions".into(),
                            });
                        }
                        let partition = match record.partition {
                            Some(p) if (0..partitions).contains(&p) => p,
                            Some(p) => {
                                return Err(ProducerError::Topic {
                                    topic: record.topic.to_string(),
                                    reason: format!(
                                        "partition {p} does not exist ({partitions} partitions)"
                                    ),
                                })
                            }
                            None => {
                                let chosen = s.partitioner.partition(
                                    record.topic,
                                    record.key,
                                    partitions,
                                    available,
                                );
                                if record.key.is_some() {
                                    chosen
                                } else if let Some(appended) = s.accumulator.append_to_open(
                                    record.topic,
                                    chosen,
                                    id,
                                    timestamp,
                                    record.key,
                                    record.value,
                                    record.headers,
                                ) {
                                    // the common case: room in the sticky partition's batch
                                    return Ok(self.accepted(s, record.topic, appended));
                                } else {
                                    // a keyless record that would open a new batch on the
                                    // sticky partition moves it first (Kafka's onNewBatch)
                                    s.partitioner
                                        .on_new_batch(record.topic, chosen, partitions, available)
                                        .filter(|p| (0..partitions).contains(p))
                                        .unwrap_or(chosen)
                                }
                            }
                        };
                        match s.accumulator.append_record(
                            record.topic,
                            partition,
                            id,
                            timestamp,
                            record.key,
                            record.value,
                            record.headers,
                            || self.now_ms(),
                        ) {
                            Ok(appended) => return Ok(self.accepted(s, record.topic, appended)),
                            Err(AccumulatorError::BufferExhausted { .. }) => {
                                self.wake.notify_one();
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            let deadline = *deadline.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(self.config.max_block_ms)
            });
            if tokio::time::timeout_at(deadline.into(), progressed)
                .await
                .is_err()
            {
                return Err(ProducerError::Blocked(self.config.max_block_ms));
            }
        }
    }

    /// A record the accumulator took: numbered, counted, and the sender woken if a batch
    /// is ready for it. Returns the record's id.
    fn accepted(&self, s: &mut Shared, topic: &str, appended: Appended) -> u64 {
        let id = s.next_record_id;
        s.next_record_id += 1;
        if !s.topics_in_use.contains(topic) {
            s.topics_in_use.insert(topic.to_string());
        }
        s.unreported += 1;
        if appended.new_batch || appended.batch_full || s.accumulator.config().linger_ms == 0 {
            self.wake.notify_one();
        }
        id
    }

    /// Sends everything queued now, without waiting for linger, and waits until every
    /// record sent before has its delivery report.
    pub async fn flush(&self) {
        lock(&self.shared).flushing += 1;
        self.wake.notify_one();
        loop {
            let progressed = self.progress.notified();
            {
                let s = lock(&self.shared);
                if s.unreported == 0 {
                    break;
                }
            }
            // bounded: the sender reports every record within delivery.timeout.ms
            let _ = tokio::time::timeout(Duration::from_millis(100), progressed).await;
        }
        lock(&self.shared).flushing -= 1;
    }

    /// How many times a batch was put back for another attempt.
    pub fn retries(&self) -> u64 {
        lock(&self.shared).retries
    }

    /// Flushes, then stops the sender.
    pub async fn close(mut self) {
        self.flush().await;
        lock(&self.shared).closed = true;
        self.wake.notify_one();
        if let Some(handle) = self.sender.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.wake.notify_one();
    }
}

/// Takes a producer id (InitProducerId) from any broker: a new one, or with `current`
/// the next epoch of that id (KIP-360; a new id if its epochs are used up).
async fn init_producer_id(
    io: &mut BrokerIo,
    metadata: &MetadataCache,
    current: Option<(i64, i16)>,
) -> Result<(i64, i16), ProducerError> {
    let (producer_id, epoch) = current.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(kafka_protocol::messages::ProducerId(producer_id))
        .with_producer_epoch(epoch);
    let r: InitProducerIdResponse = io
        .ask_any(
            metadata,
            ApiKey::InitProducerId,
            INIT_PRODUCER_ID_VERSION,
            &request,
            |r: &InitProducerIdResponse| match r.error_code {
                0 => Ok(()),
                code => Err(format!("InitProducerId: error code {code}")),
            },
        )
        .await?;
    Ok((r.producer_id.0, r.producer_epoch))
}

/// The sender task's state.
struct Sender {
    config: ProducerConfig,
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    progress: Arc<Notify>,
    reports: mpsc::UnboundedSender<BatchReport>,
    /// Metadata and InitProducerId, one request at a time.
    io: BrokerIo,
    /// Produce requests, pipelined, by broker address.
    connections: HashMap<String, PipelinedConnection>,
    /// Produce requests in flight per leader.
    requests_in_flight: HashMap<i32, usize>,
    producer_id: Option<(i64, i16)>,
    /// A numbered batch failed for good: send nothing until the epoch is bumped.
    epoch_bump_needed: bool,
    sequences: HashMap<TopicPartition, i32>,
    /// Per batch sent at least once and not yet reported (keyed by its first record id).
    attempts: HashMap<u64, Attempt>,
    /// Batches in flight per partition (no entry: none).
    in_flight: HashMap<TopicPartition, usize>,
    started: Instant,
}

/// What one broker's Produce request carried.
struct InFlight {
    leader: i32,
    batches: Vec<ProducerBatch>,
}

/// A finished Produce exchange: the request, its built batches and the answer.
struct Exchange {
    request: InFlight,
    built: Vec<Result<bytes::Bytes, sluice_record::RecordError>>,
    answer: Result<ProduceResponse, (i16, Persisted, String)>,
}

impl Sender {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(mut self) {
        let wake = self.wake.clone();
        // up to max_in_flight Produce requests per leader; each answer is taken as soon
        // as it comes, without waiting for the others
        let mut running: tokio::task::JoinSet<Exchange> = tokio::task::JoinSet::new();
        loop {
            let woken = wake.notified();
            {
                let s = lock(&self.shared);
                if s.closed && s.accumulator.is_empty() && running.is_empty() {
                    break;
                }
            }
            if let Err(e) = self.refresh_metadata_if_needed().await {
                tracing::debug!(error = %e, "metadata refresh");
            }
            if self.epoch_bump_needed && running.is_empty() {
                self.bump_epoch().await;
            }
            for request in self.drain_ready() {
                *self.requests_in_flight.entry(request.leader).or_default() += 1;
                running.spawn(self.start(request));
            }
            // waiting senders and flushes hear only of progress (batches done, memory
            // released): waking them for nothing would have a blocked `send` and this
            // loop wake each other in turn while the buffer is full
            if self.fail_expired() {
                self.progress.notify_waiters();
            }
            let wait = self.next_wake();
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    // (a panicked exchange: its request stays counted, its batches lost)
                    if let Ok(done) = done {
                        if let Some(n) = self.requests_in_flight.get_mut(&done.request.leader) {
                            *n = n.saturating_sub(1);
                        }
                        self.complete(done.request, done.built, done.answer);
                        self.progress.notify_waiters();
                    }
                }
                _ = tokio::time::timeout(wait, woken) => {}
            }
        }
        self.progress.notify_waiters();
    }

    /// How long to sleep: until the next linger or retry backoff runs out (at most 100 ms,
    /// so delivery timeouts and metadata needs are noticed).
    fn next_wake(&self) -> Duration {
        let s = lock(&self.shared);
        let (_, linger) = s.accumulator.ready(self.now_ms());
        let mut wait = Duration::from_millis(linger.unwrap_or(100).min(100));
        let now = Instant::now();
        // a backoff that ran out but whose batch is held back (its partition or leader has
        // requests in flight) waits for an answer, which wakes the loop: no 1 ms spin
        for a in self.attempts.values() {
            if let Some(at) = a.retry_at.filter(|at| *at > now) {
                wait = wait.min(at - now);
            }
        }
        wait.max(Duration::from_millis(1))
    }

    async fn refresh_metadata_if_needed(&mut self) -> Result<(), ProducerError> {
        let (wanted, all, known) = {
            let s = lock(&self.shared);
            if s.wanted_topics.is_empty() && !s.metadata_stale {
                return Ok(());
            }
            let wanted: Vec<String> = s.wanted_topics.iter().cloned().collect();
            let mut all = wanted.clone();
            if s.metadata_stale {
                all.extend(s.topics_in_use.iter().cloned());
            }
            all.sort();
            all.dedup();
            (wanted, all, s.metadata.clone())
        };
        let response = self.io.metadata(&known, &all).await?;
        let mut s = lock(&self.shared);
        s.metadata.update(&response);
        for t in &wanted {
            s.wanted_topics.remove(t);
        }
        s.metadata_stale = false;
        drop(s);
        self.progress.notify_waiters();
        Ok(())
    }

    /// Takes the ready batches, at most one per partition, grouped by leader: those whose
    /// leader has fewer than `max_in_flight` requests in flight and whose partition has
    /// fewer than that many batches in flight; a retry only once nothing of its
    /// partition is in flight, and not before its backoff ran out.
    fn drain_ready(&mut self) -> Vec<InFlight> {
        if self.epoch_bump_needed {
            // nothing is numbered with the old epoch any more
            return Vec::new();
        }
        let max_in_flight = self.config.max_in_flight;
        let mut s = lock(&self.shared);
        let now_ms = self.now_ms();
        let linger_now = if s.flushing > 0 || s.closed {
            u64::MAX / 2
        } else {
            now_ms
        };
        let (ready, _) = s.accumulator.ready(linger_now);
        let mut by_leader: HashMap<i32, Vec<ProducerBatch>> = HashMap::new();
        let now = Instant::now();
        for tp in ready {
            let batches_in_flight = self.in_flight.get(&tp).copied().unwrap_or(0);
            if batches_in_flight >= max_in_flight {
                continue;
            }
            let Some(info) = s.metadata.partition(&tp.topic, tp.partition) else {
                s.wanted_topics.insert(tp.topic.clone());
                continue;
            };
            if info.leader < 0 {
                s.metadata_stale = true;
                continue;
            }
            if self
                .requests_in_flight
                .get(&info.leader)
                .copied()
                .unwrap_or(0)
                >= max_in_flight
            {
                continue;
            }
            let Some(mut batch) = s.accumulator.drain(&tp, linger_now) else {
                continue;
            };
            let key = batch.record_ids.first().copied().unwrap_or_default();
            let attempt = self
                .attempts
                .entry(key)
                .or_insert_with(|| Attempt::new(&batch.topic_partition));
            if attempt.retry_at.is_some_and(|at| at > now)
                || (attempt.attempts > 0 && batches_in_flight > 0)
            {
                s.accumulator.reenqueue(batch);
                continue;
            }
            attempt.retry_at = None;
            // numbered once, at its first send (again after an epoch bump); a retry keeps
            // its number
            if let Some((pid, epoch)) = self.producer_id {
                if attempt.base_sequence.is_none() {
                    let next = self.sequences.entry(tp.clone()).or_insert(0);
                    let seq = *next;
                    *next = next.wrapping_add(batch.record_count() as i32) & i32::MAX;
                    attempt.base_sequence = Some(seq);
                    if let Err(e) = batch.set_producer(pid, epoch, seq) {
                        tracing::warn!(error = %e, "numbering a built batch");
                    }
                }
            }
            self.in_flight.insert(tp, batches_in_flight + 1);
            by_leader.entry(info.leader).or_default().push(batch);
        }
        by_leader
            .into_iter()
            .map(|(leader, batches)| InFlight { leader, batches })
            .collect()
    }

    /// One Produce request queued on its leader's connection (made if there is none
    /// or it failed), and a future for its answer. Queued here, in drain order, so a
    /// partition's batches reach the broker in order.
    fn start(&mut self, mut request: InFlight) -> impl std::future::Future<Output = Exchange> {
        let address = lock(&self.shared)
            .metadata
            .broker_address(request.leader)
            .map(str::to_string);
        // built once, in place, into buffers the request shares
        let built: Vec<_> = request.batches.iter_mut().map(|b| b.bytes()).collect();
        let produce = self.produce_request(&request, &built);
        let expect_response = self.config.acks != 0;
        let timeout = self.io.timeout;
        let pending = address.map(|address| {
            let connection = self
                .connections
                .entry(address)
                .and_modify(|c| {
                    if c.is_closed() {
                        *c = PipelinedConnection::connect(c.address(), CLIENT_ID, timeout);
                    }
                })
                .or_insert_with_key(|a| PipelinedConnection::connect(a, CLIENT_ID, timeout));
            connection.send(ApiKey::Produce, PRODUCE_VERSION, &produce, expect_response)
        });
        async move {
            let answer = match pending {
                None => Err((-1, Persisted::No, "leader's address unknown".into())),
                Some(pending) => pending.await.map_err(|e| {
                    let persisted = if e.written {
                        // sent, maybe processed
                        Persisted::Maybe
                    } else {
                        Persisted::No
                    };
                    (-1, persisted, e.to_string())
                }),
            };
            Exchange {
                request,
                built,
                answer,
            }
        }
    }

    fn produce_request(
        &self,
        request: &InFlight,
        built: &[Result<bytes::Bytes, sluice_record::RecordError>],
    ) -> ProduceRequest {
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (batch, bytes) in request.batches.iter().zip(built) {
            let Ok(bytes) = bytes else { continue };
            let tp = &batch.topic_partition;
            let data = PartitionProduceData::default()
                .with_index(tp.partition)
                .with_records(Some(bytes.clone()));
            match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
                Some(t) => t.partition_data.push(data),
                None => topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                        .with_partition_data(vec![data]),
                ),
            }
        }
        ProduceRequest::default()
            .with_acks(self.config.acks)
            .with_timeout_ms(self.config.request_timeout_ms.min(i32::MAX as u64) as i32)
            .with_topic_data(topics)
    }

    fn complete(
        &mut self,
        request: InFlight,
        built: Vec<Result<bytes::Bytes, sluice_record::RecordError>>,
        answer: Result<ProduceResponse, (i16, Persisted, String)>,
    ) {
        let acks_zero = self.config.acks == 0;
        for (batch, bytes) in request.batches.into_iter().zip(built) {
            let tp = &batch.topic_partition;
            if let Some(n) = self.in_flight.get_mut(tp) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(tp);
                }
            }
            match bytes {
                Err(e) => {
                    self.finish(
                        batch,
                        Err((-1, Persisted::No, format!("building the batch: {e}"))),
                    );
                    continue;
                }
                // the request's copy let go: the batch's buffer can be reused when done
                Ok(bytes) => drop(bytes),
            }
            let outcome = match &answer {
                Err((code, persisted, message)) => Err((*code, *persisted, message.clone())),
                Ok(_) if acks_zero => Ok(-1),
                Ok(response) => partition_answer(response, tp),
            };
            match outcome {
                Ok(base_offset) => self.finish(batch, Ok(base_offset)),
                Err((code, persisted, message)) => {
                    let action = if code == -1 {
                        // no answer: the connection broke or timed out
                        crate::produce_error::ErrorAction {
                            retriable: true,
                            refresh_metadata: true,
                            persisted,
                        }
                    } else if code == OUT_OF_ORDER_SEQUENCE
                        && (self.epoch_bump_needed || self.behind_a_retry(&batch))
                    {
                        // refused (not appended) because a batch before it is missing:
                        // that one is retried first, then this one — or it failed for
                        // good, and this one goes again renumbered in the next epoch
                        crate::produce_error::ErrorAction {
                            retriable: true,
                            refresh_metadata: false,
                            persisted: Persisted::No,
                        }
                    } else {
                        produce_error_action(code, self.config.acks == -1)
                    };
                    if action.persisted == Persisted::Yes {
                        // a duplicate of a batch the broker has: written
                        self.finish(batch, Ok(-1));
                        continue;
                    }
                    self.retry_or_fail(batch, code, action, message);
                }
            }
        }
    }

    /// Whether a batch of the same partition sent before this one is still unreported
    /// (in flight or queued for a retry).
    fn behind_a_retry(&self, batch: &ProducerBatch) -> bool {
        let key = batch.record_ids.first().copied().unwrap_or_default();
        self.attempts
            .iter()
            .any(|(k, a)| *k < key && a.topic_partition == batch.topic_partition)
    }

    fn retry_or_fail(
        &mut self,
        batch: ProducerBatch,
        code: i16,
        action: crate::produce_error::ErrorAction,
        message: String,
    ) {
        let key = batch.record_ids.first().copied().unwrap_or_default();
        let expired =
            self.now_ms().saturating_sub(batch.created_ms) >= self.config.delivery_timeout_ms;
        let attempt = self
            .attempts
            .entry(key)
            .or_insert_with(|| Attempt::new(&batch.topic_partition));
        attempt.maybe_written |= action.persisted == Persisted::Maybe;
        attempt.attempts += 1;
        if action.retriable && attempt.attempts <= self.config.retries && !expired {
            let backoff = self
                .config
                .retry_backoff_ms
                .saturating_mul(1 << attempt.attempts.min(16).saturating_sub(1))
                .min(
                    self.config
                        .retry_backoff_max_ms
                        .max(self.config.retry_backoff_ms),
                );
            attempt.retry_at = Some(Instant::now() + Duration::from_millis(backoff));
            let mut s = lock(&self.shared);
            s.retries += 1;
            if action.refresh_metadata {
                s.metadata.invalidate_leader(
                    &batch.topic_partition.topic,
                    batch.topic_partition.partition,
                );
                s.metadata_stale = true;
            }
            s.accumulator.reenqueue(batch);
            return;
        }
        let persisted = if attempt.maybe_written {
            Persisted::Maybe
        } else {
            action.persisted
        };
        self.finish(batch, Err((code, persisted, message)));
    }

    /// An idempotent producer whose numbered batch failed for good left a gap in its
    /// partition's sequence, which the broker would refuse every later batch for: once
    /// nothing is in flight, it takes the next epoch of its producer id (KIP-360) and
    /// numbers everything not yet written from 0 again. Tried again on the next round if
    /// no broker answers.
    async fn bump_epoch(&mut self) {
        let Some((producer_id, epoch)) = self.producer_id else {
            self.epoch_bump_needed = false;
            return;
        };
        let metadata = lock(&self.shared).metadata.clone();
        match init_producer_id(&mut self.io, &metadata, Some((producer_id, epoch))).await {
            Ok(next) => {
                tracing::info!(
                    producer_id,
                    from_epoch = epoch,
                    to = ?next,
                    "a batch failed for good: producer epoch bumped, sequences restart at 0"
                );
                self.producer_id = Some(next);
                self.sequences.clear();
                // a batch that may already be in a log keeps its old epoch and numbers:
                // renumbered, the broker would take it for a new batch and append it
                // twice. It leaves first in its partition (record order), so the
                // partition moves to the new epoch only after it.
                for attempt in self.attempts.values_mut() {
                    if !attempt.maybe_written {
                        attempt.base_sequence = None;
                    }
                }
                self.epoch_bump_needed = false;
            }
            Err(e) => tracing::warn!(error = %e, "bumping the producer epoch"),
        }
    }

    /// Reports every record of a batch (one message) and frees its memory.
    fn finish(&mut self, mut batch: ProducerBatch, result: Result<i64, (i16, Persisted, String)>) {
        let key = batch.record_ids.first().copied().unwrap_or_default();
        let numbered = self
            .attempts
            .get(&key)
            .is_some_and(|a| a.base_sequence.is_some());
        if numbered && result.is_err() {
            self.epoch_bump_needed = true;
        }
        let record_ids = std::mem::take(&mut batch.record_ids);
        let partition = batch.topic_partition.partition;
        self.attempts.remove(&key);
        let result = result.map_err(|(code, persisted, message)| DeliveryError {
            code,
            persisted,
            message,
        });
        let mut s = lock(&self.shared);
        s.accumulator.release(&batch);
        s.unreported = s.unreported.saturating_sub(record_ids.len() as u64);
        if let Some(buffer) = batch.into_buffer() {
            s.accumulator.recycle(buffer);
        }
        // sent under the lock: a flush that saw `unreported` drop finds the report queued
        let _ = self.reports.send(BatchReport {
            partition,
            record_ids,
            result,
        });
    }

    /// Batches still queued past delivery.timeout.ms (never sent, or waiting for a
    /// retry) fail; a partition with a batch in flight waits for its answer first.
    /// Fails the batches past `delivery.timeout.ms`; whether there were any.
    fn fail_expired(&mut self) -> bool {
        let Some(cutoff) = self.now_ms().checked_sub(self.config.delivery_timeout_ms) else {
            return false;
        };
        let expired = {
            let in_flight = &self.in_flight;
            lock(&self.shared)
                .accumulator
                .drain_created_before(cutoff, |tp| in_flight.contains_key(tp))
        };
        let any = !expired.is_empty();
        for batch in expired {
            let key = batch.record_ids.first().copied().unwrap_or_default();
            let maybe = self.attempts.get(&key).is_some_and(|a| a.maybe_written);
            let persisted = if maybe {
                Persisted::Maybe
            } else {
                Persisted::No
            };
            self.finish(
                batch,
                Err((-1, persisted, "delivery.timeout.ms passed".to_string())),
            );
        }
        any
    }
}

/// A partition's answer in a Produce response: its base offset, or its error.
fn partition_answer(
    response: &ProduceResponse,
    tp: &TopicPartition,
) -> Result<i64, (i16, Persisted, String)> {
    let answer = response
        .responses
        .iter()
        .filter(|t| t.name.0.as_str() == tp.topic)
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == tp.partition);
    match answer {
        None => Err((-1, Persisted::Maybe, "no answer for the partition".into())),
        Some(p) if p.error_code == 0 => Ok(p.base_offset),
        Some(p) => Err((
            p.error_code,
            Persisted::Maybe,
            p.error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| format!("error code {}", p.error_code)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_report_gives_each_record_its_offset_or_the_batchs_error() {
        let written = BatchReport {
            partition: 2,
            record_ids: vec![4, 9, 11],
            result: Ok(100),
        };
        let offsets: Vec<_> = written
            .records()
            .map(|r| (r.record_id, r.partition, r.result))
            .collect();
        assert_eq!(
            offsets,
            [(4, 2, Ok(100)), (9, 2, Ok(101)), (11, 2, Ok(102))]
        );
        // acks=0 or a duplicate: no offsets known
        let unknown = BatchReport {
            result: Ok(-1),
            ..written.clone()
        };
        assert!(unknown.records().all(|r| r.result == Ok(-1)));
        let error = DeliveryError {
            code: 7,
            persisted: Persisted::Maybe,
            message: "timed out".into(),
        };
        let failed = BatchReport {
            result: Err(error.clone()),
            ..written
        };
        assert_eq!(failed.len(), 3);
        assert!(failed.records().all(|r| r.result == Err(error.clone())));
    }
}
