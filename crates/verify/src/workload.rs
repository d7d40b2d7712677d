//! The workload: librdkafka producers and group consumers against one topic, every
//! operation recorded in a history (`history.rs`).
//!
//! - **Producers** (one thread and one librdkafka producer each) send unique values
//!   (`<producer>-<sequence>`, also the key, so they spread over the partitions) at a
//!   fixed total rate. Each send is recorded as `invoke`, then as `ok` (partition and
//!   offset), `fail` (librdkafka reports the record NOT_PERSISTED: it was never written)
//!   or `info` (POSSIBLY_PERSISTED: a timeout or a lost connection). librdkafka retries
//!   on its own without telling the application; the checker accounts for that.
//! - **Group consumers** (one thread each, one group) subscribe, record every record a
//!   poll returns, every assignment (librdkafka's eager rebalance: a revocation records
//!   an empty one) and every successful commit (auto-commit each second).
//! - When the producers are done (`duration`, or `stop`), the **final read** takes each
//!   partition's high watermark and reads everything from the start up to it, with a
//!   client of its own. The group consumers then keep polling until they have reached
//!   those ends (or `final_read_timeout` passes), and close.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::history::{Event, Recorder};
use crate::VerifyError;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub bootstrap: String,
    pub topic: String,
    /// Used when the workload creates the topic (it keeps an existing one as it is).
    pub partitions: i32,
    pub replication_factor: i32,
    /// `min.insync.replicas` of a topic the workload creates.
    pub min_insync_replicas: i32,
    /// `all`, `1` or `0`.
    pub acks: String,
    pub idempotent: bool,
    pub producers: u32,
    pub consumers: u32,
    /// Records per second, all producers together.
    pub rate: u32,
    pub duration: Duration,
    /// librdkafka's `message.timeout.ms`: how long a send may be retried.
    pub message_timeout: Duration,
    /// How long the final read (and the consumers' catching up) may take.
    pub final_read_timeout: Duration,
    pub history: PathBuf,
    /// More librdkafka settings for every client (`key`, `value`).
    pub client_settings: Vec<(String, String)>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            bootstrap: "127.0.0.1:9092".into(),
            topic: "sluice-verify".into(),
            partitions: 6,
            replication_factor: 3,
            min_insync_replicas: 2,
            acks: "all".into(),
            idempotent: false,
            producers: 2,
            consumers: 2,
            rate: 1000,
            duration: Duration::from_secs(60),
            message_timeout: Duration::from_secs(30),
            final_read_timeout: Duration::from_secs(120),
            history: PathBuf::from("history.jsonl"),
            client_settings: Vec::new(),
        }
    }
}

impl WorkloadConfig {
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c.set("socket.timeout.ms", "10000");
        c.set("topic.metadata.refresh.interval.ms", "5000");
        for (k, v) in &self.client_settings {
            c.set(k, v);
        }
        c
    }

    fn validate(&self) -> Result<(), VerifyError> {
        if !matches!(self.acks.as_str(), "all" | "-1" | "1" | "0") {
            return Err(VerifyError::Config(format!(
                "acks must be all, 1 or 0, got {:?}",
                self.acks
            )));
        }
        if self.idempotent && !matches!(self.acks.as_str(), "all" | "-1") {
            return Err(VerifyError::Config(
                "idempotence needs acks=all (as in Kafka)".into(),
            ));
        }
        if self.producers == 0 || self.rate == 0 {
            return Err(VerifyError::Config(
                "at least one producer and a rate above 0".into(),
            ));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err(VerifyError::Config(
                "partitions and replication factor must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Counts the workload reports while it runs (for a progress line).
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicI64,
    pub acked: AtomicI64,
    pub failed: AtomicI64,
    pub polled: AtomicI64,
}

/// Runs the workload and writes its history to `config.history`. `stop` ends the
/// produce phase early (the final read still runs). Returns the recorded events.
pub fn run(
    config: &WorkloadConfig,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<Vec<Event>, VerifyError> {
    config.validate()?;
    let recorder = Recorder::create(&config.history)?;
    let partitions = ensure_topic(config)?;
    let acks = if config.acks == "-1" {
        "all".to_string()
    } else {
        config.acks.clone()
    };
    recorder.record(&Event::Start {
        topic: config.topic.clone(),
        partitions,
        acks,
        idempotent: config.idempotent,
        producers: config.producers,
        consumers: config.consumers,
        wall_clock_ms: Some(recorder.started_wall_ms()),
    });

    // the group consumers run until told to finish
    let consumers_done = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(Reached::new(partitions));
    let mut consumer_threads = Vec::new();
    for id in 0..config.consumers {
        let (config, recorder, done, reached, progress) = (
            config.clone(),
            recorder.clone(),
            Arc::clone(&consumers_done),
            Arc::clone(&reached),
            Arc::clone(&progress),
        );
        consumer_threads.push(std::thread::spawn(move || {
            group_consumer(&config, id, &recorder, &done, &reached, &progress)
        }));
    }

    let deadline = Instant::now() + config.duration;
    let mut producer_threads = Vec::new();
    for id in 0..config.producers {
        let (config, recorder, stop, progress) = (
            config.clone(),
            recorder.clone(),
            Arc::clone(&stop),
            Arc::clone(&progress),
        );
        producer_threads.push(std::thread::spawn(move || {
            producer(&config, id, &recorder, deadline, &stop, &progress)
        }));
    }
    let observing = Arc::new(AtomicBool::new(true));
    let observer = {
        let (config, recorder, observing) =
            (config.clone(), recorder.clone(), Arc::clone(&observing));
        std::thread::spawn(move || watermark_observer(&config, partitions, &recorder, &observing))
    };
    let mut first_error = join_all(producer_threads, "a producer", None);
    observing.store(false, Ordering::Relaxed);
    first_error = join_all(vec![observer], "the watermark observer", first_error);

    let final_read = final_read(config, partitions, &recorder);
    if let Ok(ends) = &final_read {
        reached.wait_for(ends, config.final_read_timeout);
    }
    consumers_done.store(true, Ordering::Relaxed);
    first_error = join_all(consumer_threads, "a consumer", first_error);
    recorder.finish()?;
    final_read?;
    if let Some(e) = first_error {
        return Err(e);
    }
    crate::history::read(&config.history)
}

/// Waits for every thread; the first error (`first_error` if already set) wins.
fn join_all(
    threads: Vec<std::thread::JoinHandle<Result<(), VerifyError>>>,
    what: &str,
    mut first_error: Option<VerifyError>,
) -> Option<VerifyError> {
    for t in threads {
        let error = match t.join() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => VerifyError::Client(format!("{what} panicked")),
        };
        first_error = first_error.or(Some(error));
    }
    first_error
}

/// Creates the topic if it does not exist; returns its partition count.
fn ensure_topic(config: &WorkloadConfig) -> Result<i32, VerifyError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VerifyError::Client(e.to_string()))?;
    let min_isr = config.min_insync_replicas.to_string();
    let topic = NewTopic::new(
        &config.topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    )
    .set("min.insync.replicas", &min_isr);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime.block_on(admin.create_topics([&topic], &options))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(VerifyError::Client(format!(
                    "creating topic {name}: {code}"
                )))
            }
        }
    }
    // the partition count as the cluster knows it (an existing topic keeps its own)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&config.topic), Duration::from_secs(5));
        if let Ok(m) = metadata {
            if let Some(t) = m.topics().first() {
                let led = t.partitions().iter().all(|p| p.leader() >= 0);
                if t.error().is_none() && !t.partitions().is_empty() && led {
                    return Ok(t.partitions().len() as i32);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(VerifyError::Client(format!(
                "topic {} has no leader for every partition after 30 s",
                config.topic
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct ProducerRecording {
    recorder: Recorder,
    producer: u32,
    progress: Arc<Progress>,
}

impl ClientContext for ProducerRecording {}

impl ProducerContext for ProducerRecording {
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, result: &DeliveryResult<'_>, value: Box<String>) {
        let time_ms = self.recorder.now_ms();
        let (producer, value) = (self.producer, *value);
        let event = match result {
            Ok(m) => {
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
                Event::Ok {
                    time_ms,
                    producer,
                    value,
                    partition: m.partition(),
                    offset: m.offset(),
                }
            }
            Err((e, m)) => {
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the message is valid for the callback's duration
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(m.ptr()) };
                let error = e.to_string();
                if status
                    == rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED
                {
                    Event::Fail {
                        time_ms,
                        producer,
                        value,
                        error,
                    }
                } else {
                    Event::Info {
                        time_ms,
                        producer,
                        value,
                        error,
                    }
                }
            }
        };
        self.recorder.record(&event);
    }
}

fn producer(
    config: &WorkloadConfig,
    id: u32,
    recorder: &Recorder,
    deadline: Instant,
    stop: &AtomicBool,
    progress: &Arc<Progress>,
) -> Result<(), VerifyError> {
    let mut client = config.client();
    client
        .set("acks", &config.acks)
        .set("enable.idempotence", config.idempotent.to_string())
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5");
    let producer: ThreadedProducer<ProducerRecording> =
        client.create_with_context(ProducerRecording {
            recorder: recorder.clone(),
            producer: id,
            progress: Arc::clone(progress),
        })?;
    let interval = Duration::from_secs_f64(f64::from(config.producers) / f64::from(config.rate));
    let started = Instant::now();
    let mut seq: u64 = 0;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        // keep to the rate without drifting
        let due = started + interval.mul_f64(seq as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let value = format!("{id}-{seq}");
        seq += 1;
        recorder.record(&Event::Invoke {
            time_ms: recorder.now_ms(),
            producer: id,
            value: value.clone(),
        });
        progress.sent.fetch_add(1, Ordering::Relaxed);
        let mut opaque = Box::new(value);
        loop {
            let key = opaque.clone();
            let record = BaseRecord::with_opaque_to(&config.topic, opaque)
                .key(key.as_bytes())
                .payload(key.as_bytes());
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), record)) => {
                    opaque = record.delivery_opaque;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, record)) => {
                    // refused before it left the process: never written
                    recorder.record(&Event::Fail {
                        time_ms: recorder.now_ms(),
                        producer: id,
                        value: *record.delivery_opaque,
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
    }
    // every send gets its outcome: librdkafka gives up after message.timeout.ms
    producer
        .flush(config.message_timeout + Duration::from_secs(10))
        .map_err(VerifyError::from)
}

/// The highest offset the group's consumers polled, per partition.
struct Reached {
    offsets: Vec<AtomicI64>,
}

impl Reached {
    fn new(partitions: i32) -> Self {
        Reached {
            offsets: (0..partitions.max(0)).map(|_| AtomicI64::new(-1)).collect(),
        }
    }

    fn polled(&self, partition: i32, offset: i64) {
        if let Some(o) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.offsets.get(p))
        {
            o.fetch_max(offset, Ordering::Relaxed);
        }
    }

    /// Waits until every partition with records was polled up to its end.
    fn wait_for(&self, ends: &HashMap<i32, i64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let all = ends.iter().all(|(p, end)| {
                *end == 0
                    || usize::try_from(*p)
                        .ok()
                        .and_then(|p| self.offsets.get(p))
                        .is_some_and(|o| o.load(Ordering::Relaxed) + 1 >= *end)
            });
            if all {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct GroupRecording {
    recorder: Recorder,
    consumer: u32,
    topic: String,
}

impl ClientContext for GroupRecording {}

impl ConsumerContext for GroupRecording {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Assign(list) => list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect(),
            Rebalance::Revoke(_) | Rebalance::Error(_) => Vec::new(),
        };
        self.recorder.record(&Event::Assign {
            time_ms: self.recorder.now_ms(),
            consumer: self.consumer,
            partitions,
        });
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let (true, Offset::Offset(offset)) = (e.topic() == self.topic, e.offset()) {
                let failed = match (&result, e.error()) {
                    (Err(err), _) => Some(err.to_string()),
                    (Ok(()), Err(err)) => Some(err.to_string()),
                    (Ok(()), Ok(())) => None,
                };
                let time_ms = self.recorder.now_ms();
                let (consumer, partition) = (self.consumer, e.partition());
                self.recorder.record(&match failed {
                    None => Event::Commit {
                        time_ms,
                        consumer,
                        partition,
                        offset,
                    },
                    Some(error) => Event::CommitFailed {
                        time_ms,
                        consumer,
                        partition,
                        offset,
                        error,
                    },
                });
            }
        }
    }
}

fn group_consumer(
    config: &WorkloadConfig,
    id: u32,
    recorder: &Recorder,
    done: &AtomicBool,
    reached: &Reached,
    progress: &Progress,
) -> Result<(), VerifyError> {
    let mut client = config.client();
    client
        .set("group.id", format!("{}-group", config.topic))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("session.timeout.ms", "10000");
    let consumer: BaseConsumer<GroupRecording> = client.create_with_context(GroupRecording {
        recorder: recorder.clone(),
        consumer: id,
        topic: config.topic.clone(),
    })?;
    consumer.subscribe(&[&config.topic])?;
    while !done.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                recorder.record(&Event::Poll {
                    time_ms: recorder.now_ms(),
                    consumer: id,
                    partition: m.partition(),
                    offset: m.offset(),
                    value,
                });
                reached.polled(m.partition(), m.offset());
                progress.polled.fetch_add(1, Ordering::Relaxed);
            }
            // errors during faults are expected; librdkafka recovers on its own
            Some(Err(e)) => tracing::debug!(consumer = id, error = %e, "poll"),
            None => {}
        }
    }
    // a last commit of what was polled, then leave the group
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    drop(consumer);
    Ok(())
}

/// Records each partition's high watermark (ListOffsets for the latest offset, asked of
/// the leader) every 200 ms while `observing`. Failures during faults are skipped.
fn watermark_observer(
    config: &WorkloadConfig,
    partitions: i32,
    recorder: &Recorder,
    observing: &AtomicBool,
) -> Result<(), VerifyError> {
    let consumer: BaseConsumer = config.client().create()?;
    while observing.load(Ordering::Relaxed) {
        for p in 0..partitions {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(&config.topic, p, Duration::from_secs(2))
            {
                recorder.record(&Event::Watermark {
                    time_ms: recorder.now_ms(),
                    partition: p,
                    high,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The leader epoch a consumed record's batch carries (None: the client did not say).
fn leader_epoch(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<i32> {
    // SAFETY: the message is valid while borrowed
    let epoch = unsafe { rdkafka::bindings::rd_kafka_message_leader_epoch(m.ptr()) };
    (epoch >= 0).then_some(epoch)
}

/// Reads every partition from its start to its high watermark; returns the ends.
fn final_read(
    config: &WorkloadConfig,
    partitions: i32,
    recorder: &Recorder,
) -> Result<HashMap<i32, i64>, VerifyError> {
    let mut client = config.client();
    client
        .set("group.id", format!("{}-final-read", config.topic))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = client.create()?;
    let deadline = Instant::now() + config.final_read_timeout;
    let mut ends = HashMap::new();
    for p in 0..partitions {
        loop {
            match consumer.fetch_watermarks(&config.topic, p, Duration::from_secs(5)) {
                Ok((_, high)) => {
                    ends.insert(p, high);
                    recorder.record(&Event::FinalEnd {
                        partition: p,
                        end_offset: high,
                    });
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(VerifyError::Client(format!(
                        "the final read found no end for partition {p}: {e}"
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&config.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut next: HashMap<i32, i64> = HashMap::new();
    let unfinished = |next: &HashMap<i32, i64>| {
        ends.iter()
            .any(|(p, end)| *end > 0 && next.get(p).copied().unwrap_or(0) < *end)
    };
    while unfinished(&next) {
        if Instant::now() > deadline {
            return Err(VerifyError::Client(format!(
                "the final read did not reach the ends {ends:?} in {:?} (reached {next:?})",
                config.final_read_timeout
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if ends.get(&p).is_some_and(|end| o < *end) {
                    recorder.record(&Event::Final {
                        partition: p,
                        offset: o,
                        value: String::from_utf8_lossy(m.payload().unwrap_or_default())
                            .into_owned(),
                        leader_epoch: leader_epoch(&m),
                    });
                }
                next.insert(p, o + 1);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "final read"),
            None => {}
        }
    }
    Ok(ends)
}
