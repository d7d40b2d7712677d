//! `sluice bench produce`: kafka-producer-perf-test's workload and output with Sluice's own
//! producer (`sluice-client`). `--producers` producers (each its own connections) send
//! `--num-records` records of `--record-size` bytes (one random payload, as the Java tool
//! sends) at `--throughput` records/s in all (-1: as fast as they go); each record's
//! latency is from `send` to its delivery report, kept in an HDR histogram (µs). Every 5 s
//! a progress line (a progress bar on a terminal), then Kafka's summary line:
//! `N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, P50 ms
//! 50th, P95 ms 95th, P99 ms 99th, P999 ms 99.9th.` (MB = 1024², percentiles in whole
//! ms), or the same figures as JSON with `--json`. Failed records are counted and make
//! the command fail.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use sluice_client::accumulator::AccumulatorConfig;
use sluice_client::{Producer, ProducerConfig, ProducerRecord};
use sluice_record::Compression;

/// `sluice bench produce`'s flags (kafka-producer-perf-test's, plus the producer's).
#[derive(clap::Args)]
pub struct ProduceArgs {
    /// A topic, or several separated by commas: records go to each in turn (a load
    /// spread over many topics' partitions).
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 1_000_000)]
    num_records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Records per second in all (-1: as fast as they go).
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    throughput: f64,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Partitions of the topic if this creates it.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Replication factor of the topic if this creates it (-1: the broker's default).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i16,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Producers, each with its own connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value_t = 16_384)]
    batch_size: usize,
    /// enable.idempotence (needs acks=all).
    #[arg(long)]
    idempotence: bool,
    /// max.in.flight.requests.per.connection (at most 5 with idempotence).
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Print the figures as one JSON object instead of Kafka's summary line.
    #[arg(long)]
    json: bool,
}

impl ProduceArgs {
    /// The flags checked: a known codec, acks 0, 1 or all.
    pub fn bench(self) -> Result<ProduceBench> {
        let Some(compression) = Compression::from_name(&self.compression) else {
            bail!(
                "unknown compression {:?} (none, gzip, snappy, lz4, zstd)",
                self.compression
            );
        };
        if self.max_in_flight == 0 || (self.idempotence && self.max_in_flight > 5) {
            bail!(
                "--max-in-flight must be 1 or more, and at most 5 with --idempotence (got {})",
                self.max_in_flight
            );
        }
        Ok(ProduceBench {
            acks: crate::console_producer::parse_acks(&self.acks)?,
            compression,
            topic: self.topic,
            num_records: self.num_records,
            record_size: self.record_size,
            throughput: self.throughput,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            producers: self.producers,
            linger_ms: self.linger_ms,
            batch_size: self.batch_size,
            idempotence: self.idempotence,
            max_in_flight: self.max_in_flight,
            json: self.json,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ProduceBench {
    pub topic: String,
    pub num_records: u64,
    pub record_size: usize,
    /// Records per second in all; <= 0: unthrottled.
    pub throughput: f64,
    pub acks: i16,
    /// Partitions and replication factor of the topic if this creates it.
    pub partitions: i32,
    pub replication_factor: i16,
    pub compression: Compression,
    pub producers: usize,
    pub linger_ms: u64,
    pub batch_size: usize,
    pub idempotence: bool,
    pub max_in_flight: usize,
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub records: u64,
    pub failed: u64,
    pub seconds: f64,
    pub record_size: usize,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub p999_ms: u64,
}

impl Summary {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }

    fn mb_per_s(&self) -> f64 {
        self.records_per_s() * self.record_size as f64 / (1024.0 * 1024.0)
    }

    /// kafka-producer-perf-test's last line.
    pub fn line(&self) -> String {
        format!(
            "{} records sent, {:.6} records/sec ({:.2} MB/sec), {:.2} ms avg latency, {:.2} ms max latency, {} ms 50th, {} ms 95th, {} ms 99th, {} ms 99.9th.",
            self.records,
            self.records_per_s(),
            self.mb_per_s(),
            self.avg_ms,
            self.max_ms,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.p999_ms
        )
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"records\":{},\"failed\":{},\"seconds\":{:.3},\"records_per_sec\":{:.1},\"mb_per_sec\":{:.3},\"avg_latency_ms\":{:.3},\"max_latency_ms\":{:.3},\"p50_ms\":{},\"p95_ms\":{},\"p99_ms\":{},\"p999_ms\":{}}}",
            self.records,
            self.failed,
            self.seconds,
            self.records_per_s(),
            self.mb_per_s(),
            self.avg_ms,
            self.max_ms,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.p999_ms
        )
    }

    /// Percentiles from the histogram; the average and the maximum exact, as Kafka's tool
    /// computes them.
    pub(crate) fn of(latencies: &Latencies, failed: u64, seconds: f64, size: usize) -> Self {
        let histogram = &latencies.histogram;
        let whole_ms = |q: f64| histogram.value_at_quantile(q) / 1000;
        let records = histogram.len();
        Summary {
            records,
            failed,
            seconds,
            record_size: size,
            avg_ms: latencies.sum_us as f64 / records.max(1) as f64 / 1000.0,
            max_ms: latencies.max_us as f64 / 1000.0,
            p50_ms: whole_ms(0.5),
            p95_ms: whole_ms(0.95),
            p99_ms: whole_ms(0.99),
            p999_ms: whole_ms(0.999),
        }
    }
}

/// Acknowledged records' latencies (µs): an HDR histogram for percentiles, exact sum
/// and maximum.
pub(crate) struct Latencies {
    histogram: Histogram<u64>,
    sum_us: u64,
    max_us: u64,
}

impl Latencies {
    pub(crate) fn new() -> Result<Self> {
        Ok(Latencies {
            // 1 µs .. 10 min, 3 significant digits
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("creating the latency histogram")?,
            sum_us: 0,
            max_us: 0,
        })
    }

    pub(crate) fn record(&mut self, us: u64) {
        self.histogram.saturating_record(us);
        self.sum_us += us;
        self.max_us = self.max_us.max(us);
    }

    fn add(&mut self, other: &Latencies) -> Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging latency histograms")?;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
        Ok(())
    }
}

/// Counters the progress reporter reads.
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Sum and max of latencies (µs) since the last progress line.
    window: Mutex<(u64, u64, u64)>,
}

/// Creates `topic` unless it exists.
pub(crate) async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<()> {
    match crate::topic_admin::create(bootstrap, topic, partitions, replication_factor, &[]).await {
        Ok(_) => Ok(()),
        Err(e) if format!("{e:#}").contains("TOPIC_ALREADY_EXISTS") => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn produce(bootstrap: &str, bench: ProduceBench) -> Result<String> {
    if bench.producers == 0 || bench.num_records == 0 {
        bail!("--producers and --num-records must be at least 1");
    }
    let topics: Vec<String> = bench
        .topic
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if topics.is_empty() {
        bail!("--topic names no topic");
    }
    for topic in &topics {
        create_topic(bootstrap, topic, bench.partitions, bench.replication_factor).await?;
    }
    let topics = Arc::new(topics);
    let payload: Vec<u8> = {
        use rand::Rng;
        let mut rng = rand::rng();
        // printable, as the Java tool's random payload
        (0..bench.record_size)
            .map(|_| rng.random_range(b'A'..=b'Z'))
            .collect()
    };
    let payload = Arc::new(payload);
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_producer = bench.num_records / bench.producers as u64;
    for p in 0..bench.producers {
        let count =
            per_producer + u64::from((p as u64) < bench.num_records % bench.producers as u64);
        let rate = (bench.throughput > 0.0).then(|| bench.throughput / bench.producers as f64);
        let config = ProducerConfig {
            bootstrap_servers: bootstrap.to_string(),
            acks: bench.acks,
            enable_idempotence: bench.idempotence,
            max_in_flight: bench.max_in_flight,
            accumulator: AccumulatorConfig {
                linger_ms: bench.linger_ms,
                batch_size: bench.batch_size,
                compression: bench.compression,
                ..AccumulatorConfig::default()
            },
            ..ProducerConfig::default()
        };
        let (topics, payload, progress) = (topics.clone(), payload.clone(), progress.clone());
        tasks.spawn(
            async move { run_producer(config, topics, payload, count, rate, progress).await },
        );
    }
    let reporter = tokio::spawn(report_progress(
        progress.clone(),
        bench.num_records,
        bench.record_size,
    ));
    let mut latencies = Latencies::new()?;
    while let Some(done) = tasks.join_next().await {
        latencies.add(&done.context("a producer task")??)?;
    }
    reporter.abort();
    let seconds = started.elapsed().as_secs_f64();
    let failed = progress.failed.load(Ordering::Relaxed);
    let summary = Summary::of(&latencies, failed, seconds, bench.record_size);
    if failed > 0 {
        bail!("{}\n{failed} records failed", summary.line());
    }
    Ok(if bench.json {
        summary.json()
    } else {
        summary.line()
    })
}

async fn run_producer(
    config: ProducerConfig,
    topics: Arc<Vec<String>>,
    payload: Arc<Vec<u8>>,
    count: u64,
    rate: Option<f64>,
    progress: Arc<Progress>,
) -> Result<Latencies> {
    let (producer, mut reports) = Producer::connect(config)
        .await
        .context("connecting the producer")?;
    // send instants (µs from `origin`) by record id: ids run 0, 1, 2... per producer
    let sent_us: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let origin = Instant::now();
    let collector = {
        let (sent_us, progress) = (sent_us.clone(), progress.clone());
        tokio::spawn(async move {
            let mut latencies = Latencies::new()?;
            let mut seen = 0u64;
            let mut arrived = Vec::with_capacity(64);
            while seen < count {
                // the batches reported together share one clock read
                if reports.recv_many(&mut arrived, 64).await == 0 {
                    break;
                }
                let now_us = origin.elapsed().as_micros() as u64;
                let (mut acked, mut failed, mut sum_us, mut max_us) = (0u64, 0u64, 0u64, 0u64);
                for batch in arrived.drain(..) {
                    seen += batch.len() as u64;
                    if batch.result.is_err() {
                        failed += batch.len() as u64;
                        continue;
                    }
                    for id in &batch.record_ids {
                        let sent = sent_us
                            .get(*id as usize)
                            .map_or(now_us, |s| s.load(Ordering::Relaxed));
                        let latency_us = now_us.saturating_sub(sent).max(1);
                        acked += 1;
                        latencies.record(latency_us);
                        sum_us += latency_us;
                        max_us = max_us.max(latency_us);
                    }
                }
                progress.acked.fetch_add(acked, Ordering::Relaxed);
                progress.failed.fetch_add(failed, Ordering::Relaxed);
                let mut w = progress.window.lock().unwrap_or_else(|e| e.into_inner());
                w.0 += acked;
                w.1 += sum_us;
                w.2 = w.2.max(max_us);
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    for i in 0..count {
        if let Some(rate) = rate {
            let due = origin + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let at = origin.elapsed().as_micros() as u64;
        let id = producer
            .send(ProducerRecord {
                topic: &topics[i as usize % topics.len()],
                value: Some(&payload),
                ..ProducerRecord::default()
            })
            .await
            .context("send")?;
        if let Some(slot) = sent_us.get(id as usize) {
            slot.store(at, Ordering::Relaxed);
        }
    }
    producer.close().await;
    collector.await.context("the report collector")?
}

async fn report_progress(progress: Arc<Progress>, total: u64, size: usize) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last = Instant::now();
    let mut last_acked = 0;
    loop {
        let tick = if bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        tokio::time::sleep(tick).await;
        let acked = progress.acked.load(Ordering::Relaxed);
        if let Some(bar) = &bar {
            bar.set_position(acked);
            continue;
        }
        let (n, sum, max) = {
            let mut w = progress.window.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *w)
        };
        let seconds = last.elapsed().as_secs_f64();
        let rate = (acked - last_acked) as f64 / seconds.max(1e-9);
        eprintln!(
            "{} records sent, {:.1} records/sec ({:.2} MB/sec), {:.1} ms avg latency, {:.1} ms max latency.",
            acked - last_acked,
            rate,
            rate * size as f64 / (1024.0 * 1024.0),
            if n == 0 { 0.0 } else { sum as f64 / n as f64 / 1000.0 },
            max as f64 / 1000.0
        );
        last = Instant::now();
        last_acked = acked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_kafkas() {
        let mut l = Latencies::new().unwrap();
        for us in [1_000u64, 2_000, 3_000, 250_000] {
            l.record(us);
        }
        let s = Summary::of(&l, 0, 2.0, 1024 * 1024);
        assert_eq!(
            s.line(),
            "4 records sent, 2.000000 records/sec (2.00 MB/sec), 64.00 ms avg latency, 250.00 ms max latency, 2 ms 50th, 250 ms 95th, 250 ms 99th, 250 ms 99.9th."
        );
        assert!(s.json().starts_with("{\"records\":4,\"failed\":0,"));
    }
}
