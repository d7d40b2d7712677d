//! `sluice dump-log`: prints segment files batch by batch in the format of Kafka's
//! `kafka-dump-log.sh`, validating every batch; stops a file at the first invalid batch
//! and says why (exit 0: the valid part was dumped, as Kafka's tool does). Fails (exit 1),
//! after printing everything, when a file is not a log at all: its first bytes are no
//! valid batch.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sluice_record::limits::MAX_BATCH_SIZE_BYTES;
use sluice_record::{BatchHeader, RecordBatch, TimestampType};

pub fn run(paths: &[PathBuf], print_data_log: bool, out: &mut impl Write) -> Result<()> {
    let mut invalid = Vec::new();
    let mut dump = |file: &Path, out: &mut _| -> Result<()> {
        if !dump_file(file, print_data_log, out)? {
            invalid.push(file.display().to_string());
        }
        Ok(())
    };
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            files.sort();
            for file in files {
                dump(&file, out)?;
            }
        } else {
            dump(path, out)?;
        }
    }
    if !invalid.is_empty() {
        anyhow::bail!("not a log segment: {}", invalid.join(", "));
    }
    Ok(())
}

/// Prints one file; false when not even its first batch is valid (not a log).
fn dump_file(path: &Path, print_data_log: bool, out: &mut impl Write) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    writeln!(out, "Dumping {}", path.display())?;
    let start = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    writeln!(out, "Log starting offset: {start}")?;
    let mut position = 0usize;
    while position < data.len() {
        let rest = &data[position..];
        if rest.iter().all(|&b| b == 0) {
            writeln!(
                out,
                "Found {} zero bytes (preallocated space) at position {position}",
                rest.len()
            )?;
            break;
        }
        let batch = match RecordBatch::parse_prefix(rest, MAX_BATCH_SIZE_BYTES) {
            Ok(batch) => batch,
            Err(e) => {
                writeln!(out, "Invalid batch at position {position}: {e}")?;
                return Ok(position > 0);
            }
        };
        let h = batch.header();
        writeln!(out, "{}", describe(h, position))?;
        if print_data_log {
            match batch.records() {
                Ok(records) => {
                    for record in records.iter() {
                        match record {
                            Ok(r) => {
                                let keys: Vec<String> = r
                                    .headers
                                    .iter()
                                    .map(|h| String::from_utf8_lossy(h.key).into_owned())
                                    .collect();
                                writeln!(
                                    out,
                                    "| offset: {} {}: {} keySize: {} valueSize: {} headerKeys: [{}] key: {} payload: {}",
                                    r.offset,
                                    timestamp_label(h),
                                    r.timestamp,
                                    r.key.map_or(-1, |k| k.len() as i64),
                                    r.value.map_or(-1, |v| v.len() as i64),
                                    keys.join(","),
                                    r.key.map_or("null".into(), String::from_utf8_lossy),
                                    r.value.map_or("null".into(), String::from_utf8_lossy),
                                )?;
                            }
                            Err(e) => {
                                writeln!(out, "| invalid record: {e}")?;
                                break;
                            }
                        }
                    }
                }
                Err(e) => writeln!(out, "| cannot decode records: {e}")?,
            }
        }
        position += batch.size_bytes();
    }
    Ok(true)
}

fn timestamp_label(h: &BatchHeader) -> &'static str {
    match h.timestamp_type() {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    }
}

fn describe(h: &BatchHeader, position: usize) -> String {
    let last_sequence = if h.base_sequence < 0 {
        -1
    } else {
        h.base_sequence.wrapping_add(h.last_offset_delta)
    };
    format!(
        "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} producerId: {} producerEpoch: {} partitionLeaderEpoch: {} isTransactional: {} isControl: {} position: {} {}: {} size: {} magic: {} compresscodec: {} crc: {} isvalid: true",
        h.base_offset,
        h.last_offset(),
        h.record_count,
        h.base_sequence,
        last_sequence,
        h.producer_id,
        h.producer_epoch,
        h.partition_leader_epoch,
        h.is_transactional(),
        h.is_control(),
        position,
        timestamp_label(h),
        h.max_timestamp,
        h.total_size(),
        h.magic,
        h.compression().map_or("unknown", |c| c.name()),
        h.crc,
    )
}
