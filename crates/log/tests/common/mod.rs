//! Helpers shared by the log integration tests: batch construction, configs for both
//! append modes, an in-memory model of what was appended, and a read-everything loop.
#![allow(dead_code)]

use std::path::Path;

use sluice_log::{AppendMode, Log, LogConfig};
use sluice_record::{
    BatchBuilder, Compression, LeaderEpoch, Offset, RecordBatches, TopicPartition,
};

pub const MODES: [AppendMode; 2] = [AppendMode::Write, AppendMode::Mmap];
pub const T0: i64 = 1_700_000_000_000;

/// A batch of `records` records with timestamps `ts, ts+1, ...` and `value_bytes`-byte values.
pub fn batch(records: usize, ts: i64, value_bytes: usize, codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes).map(|j| (i * 31 + j) as u8).collect();
        let key = format!("k{i}");
        b.append(ts + i as i64, Some(key.as_bytes()), Some(&value), &[]);
    }
    b.build().expect("build batch")
}

pub fn small_config(mode: AppendMode) -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        index_interval_bytes: 256,
        index_size_max_bytes: 4096,
        append_mode: mode,
        ..LogConfig::default()
    }
}

pub fn tp() -> TopicPartition {
    TopicPartition::new("test", 0)
}

pub fn open(dir: &Path, config: &LogConfig) -> Log {
    Log::open(dir, tp(), config.clone(), Offset::ZERO, true, T0).expect("open log")
}

pub fn reopen_unclean(dir: &Path, config: &LogConfig) -> Log {
    Log::open(dir, tp(), config.clone(), Offset::ZERO, false, T0).expect("reopen log")
}

/// What was appended: each batch's stamped bytes with its offsets.
#[derive(Default, Clone)]
pub struct Model {
    pub batches: Vec<(Offset, Offset, Vec<u8>)>,
}

impl Model {
    pub fn append_leader(&mut self, log: &mut Log, mut bytes: Vec<u8>, epoch: i32) {
        let info = log
            .append_as_leader(&mut bytes, LeaderEpoch(epoch), T0)
            .expect("append");
        self.batches
            .push((info.base_offset, info.last_offset, bytes));
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.batches.iter().flat_map(|b| b.2.clone()).collect()
    }

    pub fn end(&self) -> Offset {
        self.batches.last().map_or(Offset::ZERO, |b| b.1.next())
    }

    /// Bytes of the batches from the one holding `offset` to the end.
    pub fn bytes_from(&self, offset: Offset) -> Vec<u8> {
        self.batches
            .iter()
            .filter(|b| b.1 >= offset)
            .flat_map(|b| b.2.clone())
            .collect()
    }

    pub fn truncate_before_batch(&mut self, index: usize) {
        self.batches.truncate(index);
    }
}

/// Reads the whole log from its start with reads of `max_bytes`, checking every region
/// holds whole batches and starts at a batch boundary.
pub fn read_all(log: &Log, max_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let info = log
            .read(offset, max_bytes, log.log_end_offset(), true)
            .expect("read");
        let region = info.region.expect("data below the log end");
        let bytes = region.read_to_vec().expect("read region");
        let mut count = 0;
        for batch in RecordBatches::new(&bytes, usize::MAX) {
            batch.expect("region holds whole valid batches");
            count += 1;
        }
        assert!(count > 0);
        assert!(info.next_offset > offset, "reads make progress");
        out.extend_from_slice(&bytes);
        offset = info.next_offset;
    }
    out
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}
