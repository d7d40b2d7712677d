//! One log segment: the `.log` file of batches starting at `base_offset` and its two
//! sparse indexes. Files are named by the 20-digit base offset, as Kafka names them.
//!
//! Invariants: batches in the file have ascending, non-overlapping offsets, all at or
//! after `base_offset` and within `u32` of it (index entries are relative); `next_offset` is
//! one past the last batch (`base_offset` when empty); every index entry points at a batch
//! start.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_record::limits::MAX_BATCH_SIZE_BYTES;
use sluice_record::{BatchHeader, LeaderEpoch, Offset, RecordBatch};

use crate::config::LogConfig;
use crate::file_records::{FileRecords, FileRegion};
use crate::offset_index::OffsetIndex;
use crate::producer_state::ProducerBatch;
use crate::time_index::TimeIndex;
use crate::unchecked_bytes::UncheckedBytes;
use crate::{LogError, Result};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// What the segment needs to know about each batch of a record set being appended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchInfo {
    pub size_bytes: usize,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    pub partition_leader_epoch: LeaderEpoch,
    /// The producer fields, for a batch with a producer id.
    pub producer: Option<ProducerBatch>,
}

impl BatchInfo {
    pub fn of(h: &BatchHeader) -> BatchInfo {
        BatchInfo {
            size_bytes: h.total_size(),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            partition_leader_epoch: h.partition_leader_epoch,
            producer: ProducerBatch::of(h),
        }
    }
}

/// The result of reading one segment.
#[derive(Debug, Clone)]
pub struct SegmentRead {
    /// Whole batches; empty when the first batch did not fit the limits.
    pub region: FileRegion,
    /// Where the next read should start.
    pub next_offset: Offset,
}

/// What [`LogSegment::recover`] cut from the end of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub cut_bytes: u64,
    /// Whether any cut byte was data (a torn or damaged batch), not preallocated zeros.
    pub cut_data: bool,
}

pub struct LogSegment {
    base_offset: Offset,
    log: FileRecords,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    next_offset: Offset,
    max_timestamp_so_far: i64,
    offset_of_max_timestamp: Offset,
    bytes_since_last_index_entry: usize,
    first_batch_timestamp: Option<i64>,
    created_ms: i64,
    index_interval_bytes: usize,
    index_size_max_bytes: usize,
    /// Bytes loaded from disk whose batches nothing has checked yet (see
    /// [`UncheckedBytes`]).
    unchecked: UncheckedBytes,
}

pub fn segment_file(dir: &Path, base_offset: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{:020}.{suffix}", base_offset.0))
}

impl LogSegment {
    /// Opens the segment's files (creating missing ones). When `writable`, the indexes are
    /// preallocated for appends. State is loaded by a short scan from the last index entry;
    /// an error means the segment needs [`LogSegment::recover`].
    pub fn open(
        dir: &Path,
        base_offset: Offset,
        config: &LogConfig,
        writable: bool,
        now_ms: i64,
    ) -> Result<Self> {
        let mut segment = Self::open_files(dir, base_offset, config, writable, now_ms)?;
        segment.load_state()?;
        Ok(segment)
    }

    /// Opens the files without loading state; follow with `load_state` or `recover`.
    pub(crate) fn open_files(
        dir: &Path,
        base_offset: Offset,
        config: &LogConfig,
        writable: bool,
        now_ms: i64,
    ) -> Result<Self> {
        let index_max = writable.then_some(config.index_size_max_bytes);
        let log = FileRecords::open(
            &segment_file(dir, base_offset, LOG_SUFFIX),
            config.append_mode,
            config.segment_bytes,
            writable,
            &config.open_files,
        )?;
        Ok(LogSegment {
            base_offset,
            unchecked: UncheckedBytes::whole(log.size()),
            log,
            offset_index: OffsetIndex::open(
                &segment_file(dir, base_offset, INDEX_SUFFIX),
                base_offset,
                index_max,
            )?,
            time_index: TimeIndex::open(
                &segment_file(dir, base_offset, TIME_INDEX_SUFFIX),
                base_offset,
                index_max,
            )?,
            next_offset: base_offset,
            max_timestamp_so_far: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_last_index_entry: 0,
            first_batch_timestamp: None,
            created_ms: now_ms,
            index_interval_bytes: config.index_interval_bytes,
            index_size_max_bytes: config.index_size_max_bytes,
        })
    }

    /// Recomputes `next_offset`, the max timestamp and the roll timestamp from the indexes
    /// and a scan of the batches after the last offset index entry.
    pub(crate) fn load_state(&mut self) -> Result<()> {
        let size = self.log.size();
        self.offset_index.sanity_check(size)?;
        let start = self.offset_index.last_entry();
        self.next_offset = start.map_or(self.base_offset, |e| e.offset.next());
        match self.time_index.last_entry() {
            Some(e) => {
                self.max_timestamp_so_far = e.timestamp;
                self.offset_of_max_timestamp = e.offset;
            }
            None => {
                self.max_timestamp_so_far = -1;
                self.offset_of_max_timestamp = self.base_offset;
            }
        }
        let from = u64::from(start.map_or(0, |e| e.position));
        let mut scan = self.log.scan(from, size);
        while let Some(h) = scan.peek()? {
            if h.base_offset < self.base_offset {
                return Err(LogError::CorruptLog {
                    path: self.log.path().to_path_buf(),
                    reason: format!("batch at {} is below the base offset", scan.position),
                });
            }
            self.next_offset = h.next_offset();
            if h.max_timestamp > self.max_timestamp_so_far {
                self.max_timestamp_so_far = h.max_timestamp;
                self.offset_of_max_timestamp = h.last_offset();
            }
            scan.advance(&h);
        }
        self.bytes_since_last_index_entry = (size - from) as usize;
        self.first_batch_timestamp = if size == 0 {
            None
        } else {
            self.log.scan(0, size).peek()?.map(|h| h.max_timestamp)
        };
        Ok(())
    }

    /// Rebuilds the indexes from the log file, checking every batch (length, magic, CRC32C,
    /// dense offsets: each batch starts where the one before ended, the first at the
    /// segment's base). Cuts the file at the first bad batch; says how many bytes went and
    /// whether any of them was data (not only the zeros of preallocated space).
    pub fn recover(&mut self) -> Result<Recovered> {
        self.offset_index.make_writable(self.index_size_max_bytes)?;
        self.time_index.make_writable(self.index_size_max_bytes)?;
        self.offset_index.truncate_all();
        self.time_index.truncate_all();
        self.next_offset = self.base_offset;
        self.max_timestamp_so_far = -1;
        self.offset_of_max_timestamp = self.base_offset;
        self.bytes_since_last_index_entry = 0;
        self.first_batch_timestamp = None;
        let file_len = self.log.file_len()?;
        let mut valid_end = 0u64;
        let mut cut_data = false;
        if let Some(map) = self.log.map_for_recovery()? {
            let data: &[u8] = &map;
            while (valid_end as usize) < data.len() {
                let rest = &data[valid_end as usize..];
                let batch = match RecordBatch::parse_prefix(rest, MAX_BATCH_SIZE_BYTES) {
                    Ok(b) => b,
                    Err(e) => {
                        if rest.iter().any(|&b| b != 0) {
                            cut_data = true;
                            tracing::warn!(path = %self.log.path().display(), position = valid_end, error = %e, "truncating invalid log tail");
                        }
                        break;
                    }
                };
                let h = batch.header();
                // the base offset is outside the CRC: one that does not follow the batch
                // before (a flipped bit) would move the log end, and a follower would then
                // skip the offsets between
                if h.base_offset != self.next_offset
                    || h.last_offset().0 - self.base_offset.0 > i64::from(u32::MAX)
                {
                    cut_data = true;
                    tracing::warn!(path = %self.log.path().display(), position = valid_end, base_offset = h.base_offset.0, expected = self.next_offset.0, "truncating log tail: a batch does not start where the one before it ended");
                    break;
                }
                if self.offset_index.is_full() {
                    cut_data = true;
                    tracing::warn!(path = %self.log.path().display(), "index full during recovery; truncating");
                    break;
                }
                self.offset_index.reserve(1)?;
                self.time_index.reserve(1)?;
                self.index_batch(valid_end, &BatchInfo::of(h));
                valid_end += h.total_size() as u64;
            }
        }
        if file_len != valid_end {
            self.log.truncate_to(valid_end)?;
        }
        self.log.set_size(valid_end);
        // CRCs passed, but the fields outside them are checked against the log on first
        // serve (see batch_damage)
        self.unchecked = UncheckedBytes::whole(valid_end);
        Ok(Recovered {
            cut_bytes: file_len - valid_end,
            cut_data,
        })
    }

    fn index_batch(&mut self, position: u64, b: &BatchInfo) {
        debug_assert!(b.base_offset >= self.next_offset, "offsets must ascend");
        if b.max_timestamp > self.max_timestamp_so_far {
            self.max_timestamp_so_far = b.max_timestamp;
            self.offset_of_max_timestamp = b.last_offset;
        }
        if self.bytes_since_last_index_entry > self.index_interval_bytes
            && !self.offset_index.is_full()
        {
            self.offset_index.append(b.last_offset, position as u32);
            self.time_index
                .maybe_append(self.max_timestamp_so_far, self.offset_of_max_timestamp);
            self.bytes_since_last_index_entry = 0;
        }
        self.bytes_since_last_index_entry += b.size_bytes;
        self.next_offset = b.last_offset.next();
        self.first_batch_timestamp.get_or_insert(b.max_timestamp);
    }

    /// Appends a record set (whole, validated, stamped batches) with one write and indexes
    /// each batch. Returns the position of the first batch.
    /// Disk for the index entries is reserved first: a full disk fails the append before
    /// anything is written.
    pub(crate) fn append(&mut self, bytes: &[u8], batches: &[BatchInfo]) -> Result<u64> {
        self.offset_index.reserve(batches.len())?;
        self.time_index.reserve(batches.len())?;
        let position = self.log.append(bytes)?;
        let mut at = position;
        for b in batches {
            self.index_batch(at, b);
            at += b.size_bytes as u64;
        }
        debug_assert_eq!(at, self.log.size());
        Ok(position)
    }

    /// Should a new segment start before appending a record set of `set_bytes` whose
    /// newest timestamp is `max_timestamp` and whose last offset is `last_offset`?
    pub(crate) fn should_roll(
        &self,
        config: &LogConfig,
        set_bytes: usize,
        max_timestamp: i64,
        last_offset: Offset,
        now_ms: i64,
    ) -> bool {
        let size = self.log.size();
        let waited_ms = match self.first_batch_timestamp {
            Some(first) if first >= 0 => max_timestamp.saturating_sub(first),
            _ => now_ms.saturating_sub(self.created_ms),
        };
        let has_data = size > 0;
        let full = size + set_bytes as u64 > config.segment_bytes;
        (has_data && (full || waited_ms > config.roll_ms))
            || self.offset_index.is_full()
            || self.time_index.is_full()
            || last_offset.0 - self.base_offset.0 > i64::from(i32::MAX)
    }

    /// Calls `f` with the header of every batch whose last offset is at least `offset`, in
    /// order (a header scan: record bytes are not read).
    pub(crate) fn for_each_batch_from(
        &self,
        offset: Offset,
        mut f: impl FnMut(&BatchHeader),
    ) -> Result<()> {
        if offset >= self.next_offset {
            return Ok(());
        }
        let entry = self.offset_index.lookup(offset);
        let mut scan = self.log.scan(u64::from(entry.position), self.log.size());
        while let Some(h) = scan.peek()? {
            if h.last_offset() >= offset {
                f(&h);
            }
            scan.advance(&h);
        }
        Ok(())
    }

    /// The first batch whose last offset is at least `offset`, with its position.
    pub fn translate_offset(&self, offset: Offset) -> Result<Option<(u64, BatchHeader)>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let entry = self.offset_index.lookup(offset);
        let mut scan = self.log.scan(u64::from(entry.position), self.log.size());
        while let Some(h) = scan.peek()? {
            if h.last_offset() >= offset {
                return Ok(Some((scan.position, h)));
            }
            scan.advance(&h);
        }
        Ok(None)
    }

    /// Reads whole batches starting with the one that holds `start_offset`: at most
    /// `max_bytes` (the first batch is returned whole even when larger, if
    /// `min_one_batch`), and only batches whose last offset is below `max_offset`.
    /// None when `start_offset` is past this segment.
    pub fn read(
        &self,
        start_offset: Offset,
        max_bytes: usize,
        max_offset: Offset,
        min_one_batch: bool,
    ) -> Result<Option<SegmentRead>> {
        let Some((start_pos, first)) = self.translate_offset(start_offset)? else {
            return Ok(None);
        };
        let empty = |next_offset| -> Result<SegmentRead> {
            Ok(SegmentRead {
                region: self.log.region(start_pos, 0)?,
                next_offset,
            })
        };
        if first.last_offset() >= max_offset {
            return Ok(Some(empty(start_offset)?));
        }
        // Jump over batches that the index proves fit both limits.
        let by_bytes = self
            .offset_index
            .lookup_by_position((start_pos + max_bytes as u64).min(u64::from(u32::MAX)) as u32);
        let by_offset = self.offset_index.lookup(Offset(max_offset.0 - 1));
        let jump = u64::from(by_bytes.position.min(by_offset.position));
        let mut scan = self.log.scan(start_pos.max(jump), self.log.size());
        let mut end = scan.position;
        let mut next_offset = start_offset;
        let mut jumped = jump > start_pos;
        while let Some(h) = scan.peek()? {
            if jumped {
                next_offset = h.base_offset;
                jumped = false;
            }
            let fits = (scan.position + h.total_size() as u64 - start_pos) as usize <= max_bytes
                || (end == start_pos && min_one_batch);
            if h.last_offset() >= max_offset || !fits {
                break;
            }
            scan.advance(&h);
            end = scan.position;
            next_offset = h.next_offset();
        }
        if jumped {
            next_offset = self.next_offset;
        }
        if end == start_pos {
            return Ok(Some(empty(start_offset)?));
        }
        Ok(Some(SegmentRead {
            region: self.log.region(start_pos, end - start_pos)?,
            next_offset,
        }))
    }

    /// The first record at or after `starting_offset` whose timestamp is at least
    /// `timestamp`: (its timestamp, its offset). Looks inside (and decompresses) batches.
    pub fn find_offset_by_timestamp(
        &self,
        timestamp: i64,
        starting_offset: Offset,
    ) -> Result<Option<(i64, Offset)>> {
        if self.max_timestamp_so_far < timestamp {
            return Ok(None);
        }
        let from = self
            .time_index
            .lookup(timestamp)
            .offset
            .max(starting_offset);
        let position = self.offset_index.lookup(from).position;
        let mut scan = self.log.scan(u64::from(position), self.log.size());
        let mut buf = Vec::new();
        while let Some(h) = scan.peek()? {
            if h.max_timestamp >= timestamp && h.last_offset() >= starting_offset {
                buf.resize(h.total_size(), 0);
                self.log_file_read(&mut buf, scan.position)?;
                let corrupt = |e: sluice_record::RecordError| LogError::CorruptLog {
                    path: self.log.path().to_path_buf(),
                    reason: e.to_string(),
                };
                let batch = RecordBatch::parse(&buf).map_err(corrupt)?;
                let records = batch.records().map_err(corrupt)?;
                for record in records.iter() {
                    let record = record.map_err(corrupt)?;
                    if record.timestamp >= timestamp && record.offset >= starting_offset {
                        return Ok(Some((record.timestamp, record.offset)));
                    }
                }
            }
            scan.advance(&h);
        }
        Ok(None)
    }

    fn log_file_read(&self, buf: &mut [u8], position: u64) -> Result<()> {
        self.log
            .file()?
            .read_exact_at(buf, position)
            .map_err(LogError::io(self.log.path()))
    }

    /// Removes every batch at or after the one holding `offset` (a batch is never split);
    /// returns the bytes removed.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<u64> {
        let Some((position, h)) = self.translate_offset(offset)? else {
            return Ok(0);
        };
        self.offset_index.truncate_to(h.base_offset);
        self.time_index.truncate_to(h.base_offset);
        let removed = self.log.size() - position;
        self.log.truncate_to(position)?;
        self.unchecked.truncate(position);
        self.load_state()?;
        Ok(removed)
    }

    /// The segment's `.log` file, for an fsync outside the log's lock
    /// ([`crate::log::FlushTask`]).
    /// (None when the open-file budget closed it: it is then opened by path to be synced,
    /// outside the lock.)
    pub(crate) fn durable_handle(&self) -> (PathBuf, Option<Arc<File>>) {
        (self.log.path().to_path_buf(), self.log.file_if_open())
    }

    /// The index files' paths, for an fsync outside the log's lock (indexes keep no
    /// descriptor open: see `index_file`).
    pub(crate) fn index_paths(&self) -> [PathBuf; 2] {
        [
            self.offset_index.durable_path(),
            self.time_index.durable_path(),
        ]
    }

    pub fn flush(&self) -> Result<()> {
        self.log.flush()?;
        self.offset_index.flush()?;
        self.time_index.flush()
    }

    /// The segment stops taking appends (rolled, or closing): the time index gets its final
    /// entry, indexes and file are trimmed to what they hold.
    pub fn seal(&mut self) -> Result<()> {
        self.time_index.reserve(1)?;
        self.time_index
            .maybe_append(self.max_timestamp_so_far, self.offset_of_max_timestamp);
        self.offset_index.trim()?;
        self.time_index.trim()?;
        self.log.seal()
    }

    /// The segment takes appends again (it became the last one after a truncation).
    pub fn make_writable(&mut self) -> Result<()> {
        self.offset_index.make_writable(self.index_size_max_bytes)?;
        self.time_index.make_writable(self.index_size_max_bytes)?;
        self.log.make_writable();
        Ok(())
    }

    /// Deletes the files: the `.log` first, so a crash midway leaves only orphan indexes,
    /// which the next load removes.
    pub fn delete(self) -> Result<()> {
        self.log.delete()?;
        self.offset_index.delete()?;
        self.time_index.delete()
    }

    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.size()
    }

    pub fn is_empty(&self) -> bool {
        self.log.size() == 0
    }

    /// The newest record timestamp in the segment (retention), or the file's mtime when no
    /// batch carries a timestamp.
    pub fn largest_timestamp(&self) -> i64 {
        if self.max_timestamp_so_far >= 0 {
            return self.max_timestamp_so_far;
        }
        std::fs::metadata(self.log.path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64)
    }

    pub fn offset_index(&self) -> &OffsetIndex {
        &self.offset_index
    }

    pub fn time_index(&self) -> &TimeIndex {
        &self.time_index
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Whether any byte of `region` (of this segment's file) is still unchecked.
    pub fn is_unchecked(&self, region: &FileRegion) -> bool {
        self.unchecked
            .overlaps(region.position..region.position + region.length)
    }

    /// Bytes `[position, position + length)` were checked and hold whole, valid batches.
    pub fn mark_checked(&mut self, position: u64, length: u64) {
        self.unchecked.remove(position..position + length);
    }

    /// The unchecked ranges, as regions (the scrub).
    pub fn unchecked_regions(&self) -> Result<Vec<FileRegion>> {
        self.unchecked
            .ranges()
            .iter()
            .map(|r| self.log.region(r.start, r.end - r.start))
            .collect()
    }

    /// Every byte of the segment as a region (tools, replica comparison in tests).
    pub fn whole_region(&self) -> Result<FileRegion> {
        self.log.region(0, self.log.size())
    }

    /// Whether the open-file budget holds the `.log` file's descriptor now.
    pub fn log_file_is_open(&self) -> bool {
        self.log.is_open()
    }
}
