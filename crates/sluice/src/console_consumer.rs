//! `sluice consume TOPIC`: records printed one per line (Kafka's kafka-console-consumer /
//! `kcat -C`) from each partition's leader, starting at the beginning, the end, or an
//! offset; with `--exit` it stops at the end of every partition, with `--count` after
//! that many records, else it waits for more (long poll).
//!
//! `--format` takes kcat's tokens: `%s` value, `%k` key, `%t` topic, `%p` partition,
//! `%o` offset, `%T` timestamp (ms), `%h` headers (k=v,...), `\n` `\t`, `%%`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_record::{Record, RecordBatches};

use crate::kafka_client::{self, error_name, Cluster};

pub enum StartOffset {
    Beginning,
    End,
    At(i64),
}

pub fn parse_offset(s: &str) -> Result<StartOffset> {
    match s {
        "beginning" => Ok(StartOffset::Beginning),
        "end" => Ok(StartOffset::End),
        n => n
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(StartOffset::At)
            .with_context(|| format!("--offset must be beginning, end or an offset, got {n:?}")),
    }
}

pub struct ConsumeOptions {
    pub start: StartOffset,
    pub partition: Option<i32>,
    pub format: String,
    pub count: Option<u64>,
    pub exit_at_end: bool,
}

const MAX_FETCH_BYTES: i32 = 16 * 1024 * 1024;

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

pub async fn run(
    bootstrap: &str,
    topic: &str,
    options: &ConsumeOptions,
    out: &mut impl Write,
) -> Result<()> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(Some(&[topic.to_string()])).await?;
    let t = metadata.topics.first().context("empty Metadata response")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    let mut leaders: BTreeMap<i32, i32> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    if let Some(p) = options.partition {
        if !leaders.contains_key(&p) {
            bail!("topic {topic} has no partition {p}");
        }
        leaders.retain(|k, _| *k == p);
    }
    // where each partition starts, and (for --exit) where it ends now
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for (&partition, &leader) in &leaders {
        let end = cluster.list_offset(topic, partition, leader, -1).await?;
        let start = match options.start {
            StartOffset::Beginning => cluster.list_offset(topic, partition, leader, -2).await?,
            StartOffset::End => end,
            StartOffset::At(n) => n,
        };
        positions.insert(partition, start);
        ends.insert(partition, end);
    }
    let mut printed = 0u64;
    loop {
        if options.exit_at_end && positions.iter().all(|(p, o)| *o >= ends[p]) {
            return Ok(());
        }
        for (&partition, &leader) in &leaders {
            let offset = positions[&partition];
            if options.exit_at_end && offset >= ends[&partition] {
                continue;
            }
            let wait_ms = if leaders.len() == 1 { 500 } else { 100 };
            let records = fetch(&mut cluster, topic, partition, leader, offset, wait_ms).await?;
            for batch in RecordBatches::new(&records, usize::MAX) {
                let batch = batch.map_err(|e| anyhow::anyhow!("{topic}-{partition}: {e}"))?;
                if batch.header().is_control() {
                    positions.insert(partition, batch.last_offset().0 + 1);
                    continue;
                }
                let decoded = batch
                    .records()
                    .map_err(|e| anyhow::anyhow!("{topic}-{partition}: {e}"))?;
                for record in decoded.iter() {
                    let record = record.map_err(|e| anyhow::anyhow!("{topic}-{partition}: {e}"))?;
                    if record.offset.0 < offset {
                        continue;
                    }
                    write_record(out, &options.format, topic, partition, &record)?;
                    positions.insert(partition, record.offset.0 + 1);
                    printed += 1;
                    if options.count.is_some_and(|c| printed >= c) {
                        out.flush()?;
                        return Ok(());
                    }
                }
                positions.insert(partition, batch.last_offset().0 + 1);
            }
        }
        out.flush()?;
    }
}

async fn fetch(
    cluster: &mut Cluster,
    topic: &str,
    partition: i32,
    leader: i32,
    offset: i64,
    max_wait_ms: i32,
) -> Result<bytes::Bytes> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(MAX_FETCH_BYTES)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(MAX_FETCH_BYTES)])]);
    let response: FetchResponse = cluster
        .broker(leader)
        .await?
        .send(ApiKey::Fetch, kafka_client::FETCH_VERSION, &request, true)
        .await?;
    if response.error_code != 0 {
        bail!(
            "fetching {topic}-{partition}: {}",
            error_name(response.error_code)
        );
    }
    let p = response
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .context("empty Fetch response")?;
    if p.error_code != 0 {
        bail!(
            "fetching {topic}-{partition} at {offset}: {}",
            error_name(p.error_code)
        );
    }
    Ok(p.records.clone().unwrap_or_default())
}

fn write_record(
    out: &mut impl Write,
    format: &str,
    topic: &str,
    partition: i32,
    record: &Record<'_>,
) -> Result<()> {
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('%', Some(t)) => {
                chars.next();
                match t {
                    's' => out.write_all(record.value.unwrap_or_default())?,
                    'k' => out.write_all(record.key.unwrap_or_default())?,
                    't' => out.write_all(topic.as_bytes())?,
                    'p' => write!(out, "{partition}")?,
                    'o' => write!(out, "{}", record.offset.0)?,
                    'T' => write!(out, "{}", record.timestamp)?,
                    'h' => {
                        for (i, h) in record.headers.iter().enumerate() {
                            if i > 0 {
                                out.write_all(b",")?;
                            }
                            out.write_all(h.key)?;
                            out.write_all(b"=")?;
                            out.write_all(h.value.unwrap_or_default())?;
                        }
                    }
                    '%' => out.write_all(b"%")?,
                    other => write!(out, "%{other}")?,
                }
            }
            ('\\', Some('n')) => {
                chars.next();
                out.write_all(b"\n")?;
            }
            ('\\', Some('t')) => {
                chars.next();
                out.write_all(b"\t")?;
            }
            (c, _) => write!(out, "{c}")?,
        }
    }
    Ok(())
}
