//! `sluice consume TOPIC`: records printed one per line (Kafka's kafka-console-consumer /
//! `kcat -C`), read with Sluice's own consumer (`sluice-client`: every partition's leader
//! at once, following leader changes), starting at the beginning, the end, or an offset;
//! with `--exit` it stops at the end every partition had at the start, with `--count`
//! after that many records, else it waits for more (long poll).
//!
//! `--format` takes kcat's tokens: `%s` value, `%k` key, `%t` topic, `%p` partition,
//! `%o` offset, `%T` timestamp (ms), `%h` headers (k=v,...), `\n` `\t`, `%%`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_client::{Consumer, ConsumerConfig, StartOffset as ClientStart};
use sluice_record::Record;

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

pub async fn run(
    bootstrap: &str,
    topic: &str,
    options: &ConsumeOptions,
    out: &mut impl Write,
) -> Result<()> {
    // the topic and partition checked first: bad input gets Kafka's error name
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(Some(&[topic.to_string()])).await?;
    let t = metadata.topics.first().context("empty Metadata response")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    if let Some(p) = options.partition {
        if !t.partitions.iter().any(|q| q.partition_index == p) {
            bail!("topic {topic} has no partition {p}");
        }
    }
    drop(cluster);
    let config = ConsumerConfig {
        bootstrap_servers: bootstrap.to_string(),
        request_timeout_ms: kafka_client::request_timeout().as_millis() as u64,
        // one partition alone: answer soon, for a terminal
        fetch_max_wait_ms: if options.partition.is_some() {
            500
        } else {
            100
        },
        ..ConsumerConfig::default()
    };
    let start = match options.start {
        StartOffset::Beginning => ClientStart::Earliest,
        StartOffset::End => ClientStart::Latest,
        StartOffset::At(n) => ClientStart::At(n),
    };
    let partitions = options.partition.map(|p| vec![p]);
    let mut consumer = Consumer::assign(config, topic, partitions.as_deref(), start)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ends = consumer.end_offsets().clone();
    // for --exit: the partitions not yet read to the end they had at the start
    let mut unread: BTreeMap<i32, i64> = consumer
        .start_offsets()
        .iter()
        .filter(|(p, start)| ends.get(p).is_some_and(|end| *start < end))
        .map(|(p, _)| (*p, ends[p]))
        .collect();
    let mut printed = 0u64;
    loop {
        if options.exit_at_end && unread.is_empty() {
            return Ok(());
        }
        let fetched = match consumer.poll(Duration::from_millis(500)).await {
            None => {
                out.flush()?;
                continue;
            }
            Some(f) => f.map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        let mut failed = None;
        fetched.for_each_record(|record| {
            if failed.is_some() || options.count.is_some_and(|c| printed >= c) {
                return;
            }
            match write_record(out, &options.format, topic, fetched.partition, record) {
                Ok(()) => printed += 1,
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if options.count.is_some_and(|c| printed >= c) {
            out.flush()?;
            return Ok(());
        }
        if unread
            .get(&fetched.partition)
            .is_some_and(|end| fetched.next_offset >= *end)
        {
            unread.remove(&fetched.partition);
        }
        out.flush()?;
    }
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
