//! `sluice bench consume` and `sluice bench e2e`, with Sluice's own consumer and producer
//! (`sluice-client`).
//!
//! `consume` reads a topic from its earliest offsets, every partition at once, until each
//! reaches the end it had when reading began (or `--num-records`), and prints
//! kafka-consumer-perf-test's two lines (`start.time, end.time, data.consumed.in.MB,
//! MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms,
//! fetch.MB.sec, fetch.nMsg.sec`; no group, so no rebalance) or `--json`.
//!
//! `e2e` measures end-to-end latency: a consumer reads the topic from its end while a
//! producer sends `--num-records` records at `--throughput`; each value starts with the
//! send instant (µs on this process's monotonic clock), and the consumer's receive
//! instant minus it is the record's latency, kept in an HDR histogram. The summary is
//! `sluice bench produce`'s line (Kafka's), counting the records received.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_client::accumulator::AccumulatorConfig;
use sluice_client::{
    Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, StartOffset,
};
use sluice_record::Compression;

use crate::bench_produce::{Latencies, Summary};

/// How long a bench waits with no record arriving before it gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `sluice bench consume`'s flags (kafka-consumer-perf-test's).
#[derive(clap::Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    topic: String,
    /// Stop after this many records (default: at the end each partition had at the start).
    #[arg(long)]
    num_records: Option<u64>,
    /// Print the figures as one JSON object instead of the tool's two lines.
    #[arg(long)]
    json: bool,
}

/// `sluice bench e2e`'s flags.
#[derive(clap::Args)]
pub struct E2eArgs {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 100_000)]
    num_records: u64,
    /// Bytes of each record's value (at least 8: the send instant).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Records per second (-1: as fast as they go; latency then includes queueing).
    #[arg(long, default_value_t = 10_000.0, allow_negative_numbers = true)]
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
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    #[arg(long)]
    json: bool,
}

fn consumer_config(bootstrap: &str) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap_servers: bootstrap.to_string(),
        ..ConsumerConfig::default()
    }
}

/// kafka-consumer-perf-test's time format: `yyyy-MM-dd HH:mm:ss:SSS` (UTC here).
fn tool_time(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S:%3f")
        .to_string()
}

/// What `bench consume` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeSummary {
    pub start: String,
    pub end: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl ConsumeSummary {
    fn mb(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0)
    }

    /// kafka-consumer-perf-test's header and figures.
    pub fn lines(&self) -> String {
        let s = self.seconds.max(1e-9);
        let (mb_s, n_s) = (self.mb() / s, self.records as f64 / s);
        format!(
            "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n{}, {}, {:.4}, {:.4}, {}, {:.4}, 0, {}, {:.4}, {:.4}",
            self.start,
            self.end,
            self.mb(),
            mb_s,
            self.records,
            n_s,
            (self.seconds * 1000.0) as u64,
            mb_s,
            n_s
        )
    }

    pub fn json(&self) -> String {
        let s = self.seconds.max(1e-9);
        format!(
            "{{\"records\":{},\"bytes\":{},\"seconds\":{:.3},\"records_per_sec\":{:.1},\"mb_per_sec\":{:.3}}}",
            self.records,
            self.bytes,
            self.seconds,
            self.records as f64 / s,
            self.mb() / s
        )
    }
}

pub async fn consume(bootstrap: &str, args: ConsumeArgs) -> Result<String> {
    let mut consumer = Consumer::assign(
        consumer_config(bootstrap),
        &args.topic,
        None,
        StartOffset::Earliest,
    )
    .await
    .with_context(|| format!("reading {}", args.topic))?;
    let ends: BTreeMap<i32, i64> = consumer.end_offsets().clone();
    let mut reached: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    let start_wall = std::time::SystemTime::now();
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let limit = args.num_records;
    let done = |records: u64, reached: &BTreeMap<i32, bool>| match limit {
        Some(n) => records >= n,
        None => reached.values().all(|r| *r),
    };
    while !done(records, &reached) {
        let fetched = match consumer.poll(IDLE_TIMEOUT).await {
            Some(f) => f.context("fetching")?,
            None => bail!(
                "no record for {} s after {records} records",
                IDLE_TIMEOUT.as_secs()
            ),
        };
        let mut taken = 0u64;
        fetched.for_each_record(|r| {
            if limit.is_none_or(|n| records + taken < n) {
                taken += 1;
                bytes +=
                    r.value.map_or(0, |v| v.len() as u64) + r.key.map_or(0, |k| k.len() as u64);
            }
        })?;
        records += taken;
        if ends
            .get(&fetched.partition)
            .is_some_and(|end| fetched.next_offset >= *end)
        {
            reached.insert(fetched.partition, true);
        }
    }
    let summary = ConsumeSummary {
        start: tool_time(start_wall),
        end: tool_time(std::time::SystemTime::now()),
        records,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(if args.json {
        summary.json()
    } else {
        summary.lines()
    })
}

pub async fn e2e(bootstrap: &str, args: E2eArgs) -> Result<String> {
    if args.record_size < 8 {
        bail!("--record-size must be at least 8 (the value carries the send instant)");
    }
    if args.num_records == 0 {
        bail!("--num-records must be at least 1");
    }
    let Some(compression) = Compression::from_name(&args.compression) else {
        bail!(
            "unknown compression {:?} (none, gzip, snappy, lz4, zstd)",
            args.compression
        );
    };
    let acks = crate::console_producer::parse_acks(&args.acks)?;
    crate::bench_produce::create_topic(
        bootstrap,
        &args.topic,
        args.partitions,
        args.replication_factor,
    )
    .await?;
    // reading from the end before anything is sent: every record sent is received
    let mut consumer = Consumer::assign(
        consumer_config(bootstrap),
        &args.topic,
        None,
        StartOffset::Latest,
    )
    .await
    .with_context(|| format!("reading {}", args.topic))?;
    let config = ProducerConfig {
        bootstrap_servers: bootstrap.to_string(),
        acks,
        accumulator: AccumulatorConfig {
            linger_ms: args.linger_ms,
            compression,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let (producer, mut reports) = Producer::connect(config)
        .await
        .context("connecting the producer")?;
    let failed = Arc::new(AtomicU64::new(0));
    let drain = {
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(batch) = reports.recv().await {
                if batch.result.is_err() {
                    failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let origin = Instant::now();
    let (num, rate, size, topic) = (
        args.num_records,
        (args.throughput > 0.0).then_some(args.throughput),
        args.record_size,
        args.topic.clone(),
    );
    let sender = tokio::spawn(async move {
        let mut value = vec![b'x'; size];
        for i in 0..num {
            if let Some(rate) = rate {
                let due = origin + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let sent_us = origin.elapsed().as_micros() as u64;
            value[..8].copy_from_slice(&sent_us.to_be_bytes());
            producer
                .send(ProducerRecord {
                    topic: &topic,
                    value: Some(&value),
                    ..ProducerRecord::default()
                })
                .await
                .context("send")?;
        }
        producer.close().await;
        Ok::<_, anyhow::Error>(())
    });
    let mut latencies = Latencies::new()?;
    let mut received = 0u64;
    let started = Instant::now();
    while received < num {
        let fetched = match consumer.poll(IDLE_TIMEOUT).await {
            Some(f) => f.context("fetching")?,
            None => bail!(
                "no record for {} s after {received} of {num} records",
                IDLE_TIMEOUT.as_secs()
            ),
        };
        let now_us = origin.elapsed().as_micros() as u64;
        fetched.for_each_record(|r| {
            let sent = r
                .value
                .and_then(|v| v.get(..8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let Some(sent) = sent {
                latencies.record(now_us.saturating_sub(sent).max(1));
                received += 1;
            }
        })?;
    }
    sender.await.context("the sender")??;
    drain.await.context("the delivery reports")?;
    let failed = failed.load(Ordering::Relaxed);
    let summary = Summary::of(&latencies, failed, started.elapsed().as_secs_f64(), size);
    if failed > 0 {
        bail!("{}\n{failed} records failed", summary.line());
    }
    Ok(if args.json {
        summary.json()
    } else {
        summary.line()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_printed_as_kafkas_tool_prints_them() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_796_040_022_123);
        assert_eq!(tool_time(t), "2026-11-30 12:00:22:123");
        assert_eq!(tool_time(std::time::UNIX_EPOCH), "1970-01-01 00:00:00:000");
        let s = ConsumeSummary {
            start: "a".into(),
            end: "b".into(),
            records: 1_000,
            bytes: 1024 * 1024,
            seconds: 2.0,
        };
        assert_eq!(
            s.lines().lines().nth(1),
            Some("a, b, 1.0000, 0.5000, 1000, 500.0000, 0, 2000, 0.5000, 500.0000")
        );
    }
}
