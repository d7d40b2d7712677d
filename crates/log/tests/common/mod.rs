//! Helpers shared by the log integration tests: batch construction, configs for both
//! append modes, an in-memory model of what was appended (with the position each batch
//! got), a model-based read check, directory snapshots and an independent CRC32C.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_log::{AppendMode, Log, LogConfig, LogError};
use sluice_record::{
    BatchBuilder, Compression, LeaderEpoch, Offset, RecordBatch, RecordBatches, TopicPartition,
};

pub const MODES: [AppendMode; 3] = [AppendMode::Write, AppendMode::Mmap, AppendMode::Hybrid];
pub const T0: i64 = 1_700_000_000_000;

/// A batch of `records` records with timestamps `ts, ts+1, ...` and `value_bytes`-byte values.
pub fn batch(records: usize, ts: i64, value_bytes: usize, codec: Compression) -> Vec<u8> {
    let timestamps: Vec<i64> = (0..records as i64).map(|i| ts + i).collect();
    batch_with_timestamps(&timestamps, value_bytes, codec)
}

/// A batch with one record per timestamp.
pub fn batch_with_timestamps(
    timestamps: &[i64],
    value_bytes: usize,
    codec: Compression,
) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for (i, ts) in timestamps.iter().enumerate() {
        let value: Vec<u8> = (0..value_bytes).map(|j| (i * 31 + j * 7) as u8).collect();
        let key = format!("k{i}");
        b.append(*ts, Some(key.as_bytes()), Some(&value), &[]);
    }
    b.build().expect("build batch")
}

/// `batch` with its base offset and partition leader epoch already stamped (what a
/// follower receives from the leader).
pub fn stamped(mut bytes: Vec<u8>, base: Offset, epoch: i32) -> Vec<u8> {
    sluice_record::stamp_base_offset(&mut bytes, base).unwrap();
    sluice_record::stamp_partition_leader_epoch(&mut bytes, LeaderEpoch(epoch)).unwrap();
    bytes
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

pub fn open_with(dir: &Path, config: &LogConfig, recovery_point: Offset, clean: bool) -> Log {
    Log::open(dir, tp(), config.clone(), recovery_point, clean, T0).expect("reopen log")
}

/// Reopens after a crash: no clean-shutdown marker, recovery point 0.
pub fn reopen_unclean(dir: &Path, config: &LogConfig) -> Log {
    open_with(dir, config, Offset::ZERO, false)
}

/// One appended batch: its offsets, its bytes as stored, its position in its segment.
#[derive(Debug, Clone)]
pub struct Entry {
    pub base: Offset,
    pub last: Offset,
    pub bytes: Vec<u8>,
    pub position: u64,
    pub max_timestamp: i64,
    pub epoch: LeaderEpoch,
}

/// What the log should hold.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub start: Offset,
    pub end: Offset,
    pub batches: Vec<Entry>,
}

impl Model {
    fn push_set(&mut self, bytes: &[u8], position: u64) {
        let mut at = 0usize;
        for batch in RecordBatches::new(bytes, usize::MAX) {
            let batch = batch.expect("appended batches are valid");
            let h = *batch.header();
            self.batches.push(Entry {
                base: h.base_offset,
                last: h.last_offset(),
                bytes: batch.as_bytes().to_vec(),
                position: position + at as u64,
                max_timestamp: h.max_timestamp,
                epoch: h.partition_leader_epoch,
            });
            at += batch.size_bytes();
            self.end = h.next_offset();
        }
    }

    /// Appends as leader and records what was stored (the stamped bytes).
    pub fn append_leader(&mut self, log: &mut Log, mut bytes: Vec<u8>, epoch: i32) -> Offset {
        let before = log.log_end_offset();
        assert_eq!(before, self.end, "model and log agree before the append");
        let info = log
            .append_as_leader(&mut bytes, LeaderEpoch(epoch), T0)
            .expect("leader append");
        assert_eq!(info.base_offset, before);
        self.push_set(&bytes, info.position);
        assert_eq!(info.last_offset.next(), self.end);
        info.base_offset
    }

    /// Appends (already stamped) batches as follower, as one record set.
    pub fn append_follower(&mut self, log: &mut Log, batches: &[Vec<u8>]) {
        let set: Vec<u8> = batches.concat();
        let info = log.append_as_follower(&set, T0).expect("follower append");
        assert_eq!(info.base_offset, self.end);
        self.push_set(&set, info.position);
        assert_eq!(info.last_offset.next(), self.end);
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.batches.iter().flat_map(|b| b.bytes.clone()).collect()
    }

    /// Keeps the first `n` batches (recovery or truncation removed the rest).
    pub fn keep_batches(&mut self, n: usize) {
        self.batches.truncate(n);
        self.end = self.batches.last().map_or(self.start, |b| b.last.next());
    }

    /// Drops batches below `start` (retention).
    pub fn drop_below(&mut self, start: Offset) {
        self.batches.retain(|b| b.base >= start);
        self.start = start;
        if self.batches.is_empty() {
            self.end = self.end.max(start);
        }
    }

    /// Index of the batch holding `offset`.
    pub fn batch_index(&self, offset: Offset) -> usize {
        self.batches
            .iter()
            .position(|b| b.base <= offset && offset <= b.last)
            .expect("offset inside the model")
    }
}

fn segment_of(bases: &[Offset], offset: Offset) -> Offset {
    *bases
        .iter()
        .rev()
        .find(|b| **b <= offset)
        .expect("a segment holds every offset")
}

/// Reads with the given arguments and checks the answer against the model: out of range
/// outside `[start, end]`; otherwise the whole batches from the one holding `from`, in
/// that batch's segment only, each with a last offset below `max_offset`, within
/// `max_bytes` (a larger first batch only with `min_one_batch`), at the position the
/// batch was appended at; `next_offset` right after the last batch returned.
pub fn check_read(
    log: &Log,
    model: &Model,
    from: Offset,
    max_bytes: usize,
    max_offset: Offset,
    min_one_batch: bool,
) {
    let ctx = format!(
        "{:?} read(from {from}, max_bytes {max_bytes}, max_offset {max_offset}, min_one {min_one_batch})",
        log.config().append_mode
    );
    let result = log.read(from, max_bytes, max_offset, min_one_batch);
    if from < model.start || from > model.end {
        assert!(
            matches!(result, Err(LogError::OffsetOutOfRange { .. })),
            "{ctx}: expected out of range, got {result:?}"
        );
        return;
    }
    let info = result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(info.log_start_offset, model.start, "{ctx}");
    assert_eq!(info.log_end_offset, model.end, "{ctx}");
    let bases: Vec<Offset> = log.segments().map(|s| s.base_offset()).collect();
    let bound = max_offset.min(model.end);
    let mut expected = Vec::new();
    let mut first_position = None;
    let mut next = from;
    if from < bound {
        let i = model.batch_index(from);
        let segment = segment_of(&bases, model.batches[i].base);
        for b in &model.batches[i..] {
            if segment_of(&bases, b.base) != segment || b.last >= bound {
                break;
            }
            let fits = expected.len() + b.bytes.len() <= max_bytes
                || (expected.is_empty() && min_one_batch);
            if !fits {
                break;
            }
            first_position.get_or_insert(b.position);
            expected.extend_from_slice(&b.bytes);
            next = b.last.next();
        }
    }
    match &info.region {
        None => assert!(
            expected.is_empty(),
            "{ctx}: no region, expected {} bytes",
            expected.len()
        ),
        Some(region) => {
            assert!(!expected.is_empty(), "{ctx}: unexpected region {region:?}");
            assert_eq!(
                Some(region.position),
                first_position,
                "{ctx}: region position"
            );
            let bytes = region.read_to_vec().expect("read region");
            assert_eq!(bytes.len(), expected.len(), "{ctx}: region length");
            assert!(bytes == expected, "{ctx}: region bytes differ");
        }
    }
    assert_eq!(info.next_offset, next, "{ctx}: next offset");
}

/// Reads the whole log from its start with reads of `max_bytes`, checking that every
/// region holds whole valid batches and that reads make progress.
pub fn read_all(log: &Log, max_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let info = log
            .read(offset, max_bytes, log.log_end_offset(), true)
            .expect("read");
        let region = info.region.expect("data below the log end");
        let bytes = region.read_to_vec().expect("read region");
        let mut expected_base = None;
        for batch in RecordBatches::new(&bytes, usize::MAX) {
            let batch = batch.expect("region holds whole valid batches");
            if let Some(b) = expected_base {
                assert_eq!(batch.base_offset(), b, "batches in a region are contiguous");
            } else {
                assert!(batch.base_offset() <= offset && offset <= batch.last_offset());
            }
            expected_base = Some(batch.last_offset().next());
        }
        assert_eq!(
            Some(info.next_offset),
            expected_base,
            "next offset follows the region"
        );
        out.extend_from_slice(&bytes);
        offset = info.next_offset;
    }
    out
}

/// Everything a reader can observe matches the model: offsets, the full byte stream
/// (read with several chunk sizes) and reads starting inside every batch.
pub fn assert_log_matches(log: &Log, model: &Model) {
    let mode = log.config().append_mode;
    assert_eq!(log.log_start_offset(), model.start, "{mode:?} log start");
    assert_eq!(log.log_end_offset(), model.end, "{mode:?} log end");
    let expected = model.bytes();
    for max_bytes in [1, 1000, 1 << 20] {
        let got = read_all(log, max_bytes);
        assert_eq!(got.len(), expected.len(), "{mode:?} max_bytes {max_bytes}");
        assert!(
            got == expected,
            "{mode:?} bytes differ, max_bytes {max_bytes}"
        );
    }
    let total: u64 = log.segments().map(|s| s.size_bytes()).sum();
    assert_eq!(total, expected.len() as u64, "{mode:?} segment sizes");
    for b in &model.batches {
        let mid = Offset((b.base.0 + b.last.0) / 2);
        check_read(log, model, mid, 1 << 20, model.end, true);
        check_read(log, model, b.last, 1, model.end, false);
    }
    check_read(log, model, model.end, 1 << 20, model.end, true);
    check_read(log, model, model.end.next(), 1 << 20, model.end, true);
    if model.start.0 > 0 {
        check_read(
            log,
            model,
            Offset(model.start.0 - 1),
            1 << 20,
            model.end,
            true,
        );
    }
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

/// File name -> length, for every file in `dir`.
pub fn file_sizes(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

pub fn file_names(dir: &Path) -> Vec<String> {
    file_sizes(dir).into_keys().collect()
}

pub fn segment_path(dir: &Path, base: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{:020}.{suffix}", base.0))
}

/// Every file of a directory, for restoring the same state many times.
pub type Snapshot = Vec<(String, Vec<u8>)>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut files: Snapshot = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

pub fn restore(snapshot: &Snapshot, dir: &Path) {
    for (name, bytes) in snapshot {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// CRC32C (Castagnoli), bitwise: independent of the crate under test.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the CRC of a (modified) single batch.
pub fn with_crc_fixed(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The records of a batch as (offset, timestamp).
pub fn record_offsets_and_timestamps(bytes: &[u8]) -> Vec<(Offset, i64)> {
    let batch = RecordBatch::parse(bytes).unwrap();
    let records = batch.records().unwrap();
    records
        .iter()
        .map(|r| {
            let r = r.unwrap();
            (r.offset, r.timestamp)
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*) for reproducible "random" choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
