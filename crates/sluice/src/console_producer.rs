//! `sluice produce TOPIC`: stdin lines become records (Kafka's kafka-console-producer /
//! `kcat -P`), sent with Sluice's own producer (`sluice-client`: batches per partition,
//! `batch.size` and `linger.ms`, retries across leader changes) with the chosen acks.
//! Records with a key go to murmur2(key) like Kafka's default partitioner; without one,
//! to a sticky partition that moves batch by batch (KIP-480). A record not written
//! within one `--timeout` fails the command, which says how many and the first error.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use sluice_client::accumulator::AccumulatorConfig;
use sluice_client::{Producer, ProducerConfig, ProducerRecord};
use sluice_record::Compression;

use crate::kafka_client::{self, error_name, Cluster};

pub struct ProduceOptions {
    pub acks: i16,
    pub key: Option<String>,
    pub partition: Option<i32>,
    pub compression: Compression,
    /// `batch.size`.
    pub batch_size: usize,
    /// `linger.ms`.
    pub linger_ms: u64,
}

/// Parses `--acks`: 0, 1, all (or -1).
pub fn parse_acks(acks: &str) -> Result<i16> {
    match acks {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        other => bail!("--acks must be 0, 1 or all, got {other:?}"),
    }
}

pub async fn run(bootstrap: &str, topic: &str, options: &ProduceOptions) -> Result<String> {
    // the topic and partition checked first: bad input gets Kafka's error name (like a
    // Kafka producer, the Metadata request may auto-create the topic)
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata_allowing_creation(topic).await?;
    drop(cluster);
    let t = metadata.topics.first().context("empty Metadata response")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    let partitions = t.partitions.len() as i32;
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    if let Some(p) = options.partition.filter(|p| !(0..partitions).contains(p)) {
        bail!(
            "--partition {p}: topic {topic} has partitions 0..{}",
            partitions - 1
        );
    }
    let request_timeout_ms = kafka_client::request_timeout().as_millis() as u64;
    let config = ProducerConfig {
        bootstrap_servers: bootstrap.to_string(),
        acks: options.acks,
        request_timeout_ms,
        // a record that cannot be written within one --timeout fails the command
        delivery_timeout_ms: request_timeout_ms + options.linger_ms,
        accumulator: AccumulatorConfig {
            batch_size: options.batch_size,
            linger_ms: options.linger_ms,
            compression: options.compression,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let (producer, mut reports) = Producer::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // stdin is read on a thread of its own: the producer's sender shares this one
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let key = options.key.as_deref().map(str::as_bytes);
    let mut sent = 0u64;
    while let Some(line) = lines.recv().await {
        let line = line.context("reading stdin")?;
        producer
            .send(ProducerRecord {
                topic,
                key,
                value: Some(line.as_bytes()),
                partition: options.partition,
                ..ProducerRecord::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        sent += 1;
    }
    producer.close().await;
    let (mut failed, mut first_failure) = (0u64, None);
    while let Ok(batch) = reports.try_recv() {
        if let Err(e) = &batch.result {
            failed += batch.len() as u64;
            first_failure.get_or_insert_with(|| {
                let code = if e.code >= 0 {
                    format!("{} ", error_name(e.code))
                } else {
                    String::new()
                };
                format!("{topic}-{}: {code}{}", batch.partition, e.message)
            });
        }
    }
    if let Some(first) = first_failure {
        bail!("{failed} of {sent} records not written; the first: {first}");
    }
    Ok(format!("produced {sent} records to {topic}"))
}
