//! `sluice produce TOPIC`: stdin lines become records (Kafka's kafka-console-producer /
//! `kcat -P`), batched per partition and sent to each partition's leader with the chosen
//! acks. Records with a key go to murmur2(key) like Kafka's default partitioner; without
//! one, each batch goes to the next partition in turn.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_record::{now_ms, BatchBuilder, Compression};

use crate::kafka_client::{self, error_name, Cluster};
use sluice_client::murmur2::partition_for_key;

pub struct ProduceOptions {
    pub acks: i16,
    pub key: Option<String>,
    pub partition: Option<i32>,
    pub compression: Compression,
    pub batch_records: usize,
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
    let mut cluster = Cluster::connect(bootstrap).await?;
    // like a Kafka producer, the first Metadata request may auto-create the topic
    let metadata = cluster.metadata_allowing_creation(topic).await?;
    let t = metadata.topics.first().context("empty Metadata response")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    let mut leaders: Vec<(i32, i32)> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    leaders.sort();
    let partitions = leaders.len() as i32;
    if partitions == 0 {
        bail!("topic {topic} has no partitions");
    }
    let fixed = match (options.partition, &options.key) {
        (Some(p), _) if p < 0 || p >= partitions => {
            bail!(
                "--partition {p}: topic {topic} has partitions 0..{}",
                partitions - 1
            )
        }
        (Some(p), _) => Some(p),
        (None, Some(key)) => Some(partition_for_key(key.as_bytes(), partitions)),
        (None, None) => None,
    };
    let mut next_partition = 0;
    let mut produced = 0u64;
    let mut builder = BatchBuilder::new(options.compression);
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = lines.next().transpose().context("reading stdin")?;
        if let Some(line) = &line {
            let key = options.key.as_deref().map(str::as_bytes);
            builder.append(now_ms(), key, Some(line.as_bytes()), &[]);
        }
        let full = builder.record_count() as usize >= options.batch_records;
        if (full || line.is_none()) && builder.record_count() > 0 {
            let partition = fixed.unwrap_or_else(|| {
                next_partition = (next_partition + 1) % partitions;
                next_partition
            });
            let leader = leaders[partition as usize].1;
            if leader < 0 {
                bail!("partition {partition} of {topic} has no leader (LEADER_NOT_AVAILABLE)");
            }
            let batch = builder.build().context("building a record batch")?;
            produced += builder.record_count() as u64;
            builder = BatchBuilder::new(options.compression);
            send(&mut cluster, topic, partition, leader, batch, options.acks).await?;
        }
        if line.is_none() {
            break;
        }
    }
    Ok(format!("produced {produced} records to {topic}"))
}

async fn send(
    cluster: &mut Cluster,
    topic: &str,
    partition: i32,
    leader: i32,
    batch: Vec<u8>,
    acks: i16,
) -> Result<()> {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])]);
    let connection = cluster.broker(leader).await?;
    let response: ProduceResponse = connection
        .send(
            ApiKey::Produce,
            kafka_client::PRODUCE_VERSION,
            &request,
            acks != 0,
        )
        .await?;
    if acks == 0 {
        return Ok(());
    }
    let p = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .context("empty Produce response")?;
    if p.error_code != 0 {
        let message = p.error_message.as_deref().unwrap_or("");
        bail!(
            "producing to {topic}-{partition}: {} {message}",
            error_name(p.error_code)
        );
    }
    Ok(())
}
