//! One partition's log (Kafka's `UnifiedLog` + `LocalLog`): an ordered set of segments, the
//! log start and end offsets, the leader-epoch cache, the recovery point and the flush
//! policy. Appends go to the last (active) segment; reads find a segment by binary search.
//!
//! Invariants: segments are never empty as a set and their offset ranges ascend without
//! overlap; `log_start_offset <= recovery_point <= log_end_offset`; the log end offset only
//! moves backwards through `truncate_to`; offsets are dense (no compaction), so every
//! appended batch starts exactly at the log end offset.
//!
//! The log knows nothing of replication: high watermarks and leadership belong to the
//! broker, which passes bounds in (`max_offset` on reads, `deletable_below` on retention).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_record::{
    stamp_base_offset, stamp_partition_leader_epoch, LeaderEpoch, Offset, RecordBatches,
    TopicPartition,
};

use crate::config::LogConfig;
use crate::file_records::FileRegion;
use crate::leader_epoch::{EpochEntry, LeaderEpochCache};
use crate::producer_snapshot::{
    delete_snapshot, list_snapshots, read_snapshot, sync_snapshot, write_snapshot,
};
use crate::producer_state::{ProducerCheck, ProducerStateError, ProducerStateManager};
use crate::segment::{
    segment_file, BatchInfo, LogSegment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::{LogError, Result};

/// What an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// File position of the first batch in its segment.
    pub position: u64,
    pub max_timestamp: i64,
    pub record_count: u64,
    pub size_bytes: usize,
    /// The record set was a producer's retry of a batch already in the log: nothing was
    /// appended, and the offsets are where the batch was first written.
    pub duplicate: bool,
}

/// What a read found. `region` is None when no whole batch fits the limits.
#[derive(Debug, Clone)]
pub struct LogReadInfo {
    pub region: Option<FileRegion>,
    /// Where the next read should start.
    pub next_offset: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    /// The segment the region is in (its base offset).
    pub segment_base: Offset,
    /// Some bytes of the region were loaded from disk and never checked: the caller checks
    /// them (outside the log's lock) and reports with [`Log::mark_checked`].
    pub unchecked: bool,
    /// The log's [`Log::truncations`] when it was read.
    pub truncations: u64,
    /// When `unchecked`: the leader-epoch cache's entries when it was read, which the
    /// batches' epochs are checked against (empty otherwise).
    pub leader_epochs: Vec<EpochEntry>,
}

/// A flush taken under the log's lock and run outside it, so appends and reads never wait
/// for an fsync (Kafka flushes outside its log lock the same way): the files of the
/// segments to make durable, the producer snapshots written since the last flush, and the
/// offset the recovery point moves to once it is done ([`Log::finish_flush`]).
///
/// A segment rolled, trimmed or deleted meanwhile is harmless: its file handles stay
/// valid, and a snapshot or directory that is gone holds nothing left to make durable.
#[derive(Debug)]
pub struct FlushTask {
    up_to: Offset,
    truncations: u64,
    /// The segments' `.log` files, with their descriptor when it was open.
    files: Vec<(PathBuf, Option<Arc<File>>)>,
    /// The segments' index files (opened for the fsync: indexes keep no descriptor).
    index_files: Vec<PathBuf>,
    dir: PathBuf,
    snapshots: Vec<Offset>,
    /// The leader-epoch checkpoint, when it changed since it was last made durable.
    epoch_checkpoint: Option<PathBuf>,
}

impl FlushTask {
    /// The recovery point once this is done.
    pub fn up_to(&self) -> Offset {
        self.up_to
    }

    /// fdatasyncs the segments' files (the pages written through a map too), the
    /// leader-epoch checkpoint, then the snapshots and their directory.
    pub fn run(&self) -> Result<()> {
        for (path, file) in &self.files {
            match file {
                Some(file) => file.sync_data().map_err(LogError::io(path))?,
                None => crate::checkpoint::sync_if_present(path)?,
            }
        }
        for path in &self.index_files {
            crate::checkpoint::sync_if_present(path)?;
        }
        if let Some(path) = &self.epoch_checkpoint {
            crate::checkpoint::sync_file_and_dir(path)?;
        }
        for snapshot in &self.snapshots {
            sync_snapshot(&self.dir, *snapshot)?;
        }
        if !self.snapshots.is_empty() {
            crate::checkpoint::sync_if_present(&self.dir)?;
        }
        Ok(())
    }
}

/// A region the scrub checks: a sealed segment whole, or the unchecked part of the active
/// one.
#[derive(Debug, Clone)]
pub struct ScrubRegion {
    pub segment_base: Offset,
    pub region: FileRegion,
    /// The region's first batch starts at or below this offset.
    pub first_offset_at_most: Offset,
    /// The log's [`Log::truncations`] when the region was taken.
    pub truncations: u64,
    /// The leader-epoch cache's entries when the region was taken.
    pub leader_epochs: Vec<EpochEntry>,
}

/// What loading the log found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub segments: usize,
    pub recovered_segments: usize,
    pub truncated_bytes: u64,
    /// Whether recovery cut any data (a torn or damaged batch), not only preallocated zeros.
    pub cut_data: bool,
    pub deleted_segments: usize,
}

pub struct Log {
    dir: PathBuf,
    topic_partition: TopicPartition,
    config: LogConfig,
    segments: BTreeMap<Offset, LogSegment>,
    log_start_offset: Offset,
    log_end_offset: Offset,
    recovery_point: Offset,
    leader_epochs: LeaderEpochCache,
    unflushed_messages: u64,
    last_flush_ms: i64,
    load_report: LoadReport,
    closed: bool,
    /// See [`Log::truncations`].
    truncations: u64,
    /// Idempotent producers' state, as of the log end offset.
    producers: ProducerStateManager,
    /// Producer snapshots written without an fsync (at a roll), synced by the next flush.
    unsynced_snapshots: Vec<Offset>,
    last_producer_expiry_ms: i64,
}

fn parse_base_offset(name: &str, suffix: &str) -> Option<Offset> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(Offset))
        .flatten()
}

impl Log {
    /// Opens (or creates) the log in `dir`. After an unclean shutdown every segment from
    /// the one holding `recovery_point` on is checked batch by batch and cut at the first
    /// damage; the segments after a damaged one are deleted, so nothing past the damage is
    /// ever served. Indexes that fail their sanity check are rebuilt.
    pub fn open(
        dir: &Path,
        topic_partition: TopicPartition,
        config: LogConfig,
        recovery_point: Offset,
        clean_shutdown: bool,
        now_ms: i64,
    ) -> Result<Log> {
        config.validate()?;
        if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            // a stray file where the partition's directory goes: refuse, naming it
            return Err(LogError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(LogError::io(dir))?;
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
            let entry = entry.map_err(LogError::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path()).map_err(LogError::io(entry.path()))?;
            } else if let Some(base) = parse_base_offset(&name, LOG_SUFFIX) {
                bases.push(base);
            } else if let Some(base) = parse_base_offset(&name, INDEX_SUFFIX)
                .or_else(|| parse_base_offset(&name, TIME_INDEX_SUFFIX))
            {
                index_files.push((base, entry.path()));
            }
        }
        bases.sort();
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                tracing::info!(path = %path.display(), "removing orphan index");
                std::fs::remove_file(&path).map_err(LogError::io(&path))?;
            }
        }
        if bases.is_empty() {
            bases.push(Offset::ZERO);
        }

        let mut report = LoadReport::default();
        let mut segments = BTreeMap::new();
        let last_base = *bases.last().expect("at least one segment");
        let mut damaged = false;
        for (i, &base) in bases.iter().enumerate() {
            if damaged {
                for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                    let path = segment_file(dir, base, suffix);
                    if path.exists() {
                        std::fs::remove_file(&path).map_err(LogError::io(&path))?;
                    }
                }
                report.deleted_segments += 1;
                continue;
            }
            let writable = base == last_base;
            let next_base = bases.get(i + 1).copied();
            let needs_recovery = !clean_shutdown && next_base.is_none_or(|n| n > recovery_point);
            let index_missing = [INDEX_SUFFIX, TIME_INDEX_SUFFIX]
                .iter()
                .any(|suffix| !segment_file(dir, base, suffix).exists());
            let mut segment = LogSegment::open_files(dir, base, &config, writable, now_ms)?;
            if index_missing && !segment.is_empty() {
                tracing::warn!(dir = %dir.display(), base = base.0, "index file missing; rebuilding");
            }
            let must_rebuild = needs_recovery
                || (index_missing && !segment.is_empty())
                || match segment.load_state() {
                    Ok(()) => false,
                    Err(e @ LogError::Io { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), base = base.0, error = %e, "segment failed its load check; rebuilding");
                        true
                    }
                };
            if must_rebuild {
                let recovered = segment.recover()?;
                let truncated = recovered.cut_bytes;
                report.recovered_segments += 1;
                report.truncated_bytes += truncated;
                report.cut_data |= recovered.cut_data;
                if recovered.cut_data {
                    tracing::warn!(dir = %dir.display(), base = base.0, truncated, "recovery cut the segment");
                } else if truncated > 0 {
                    // an unclean stop leaves the preallocated zeros after the last batch
                    tracing::debug!(dir = %dir.display(), base = base.0, truncated, "recovery dropped the preallocated tail");
                }
                let overflows = next_base.is_some_and(|n| segment.next_offset() > n);
                if (truncated > 0 && next_base.is_some()) || overflows {
                    damaged = true;
                }
                segment.flush()?;
            }
            if let Some((_, prev)) = segments.last_key_value() {
                let prev: &LogSegment = prev;
                if prev.next_offset() > base {
                    return Err(LogError::CorruptLog {
                        path: segment.log_path().to_path_buf(),
                        reason: format!(
                            "segment overlaps the previous one (ends at {})",
                            prev.next_offset()
                        ),
                    });
                }
            }
            segments.insert(base, segment);
        }
        // The segment that took appends may have changed if later ones were deleted.
        let last = segments
            .values_mut()
            .next_back()
            .expect("at least one segment");
        last.make_writable()?;
        let sealed: Vec<Offset> = segments.keys().copied().collect();
        for base in &sealed[..sealed.len() - 1] {
            if let Some(s) = segments.get_mut(base) {
                s.seal()?;
            }
        }
        report.segments = segments.len();

        let log_start_offset = *segments.keys().next().expect("at least one segment");
        let log_end_offset = segments
            .values()
            .next_back()
            .expect("at least one")
            .next_offset();
        let mut leader_epochs = LeaderEpochCache::open(dir)?;
        leader_epochs.truncate_from_end(log_end_offset)?;
        leader_epochs.truncate_from_start(log_start_offset)?;
        let recovery_point = if report.recovered_segments > 0 {
            log_end_offset
        } else {
            recovery_point.clamp(log_start_offset, log_end_offset)
        };
        let mut log = Log {
            dir: dir.to_path_buf(),
            topic_partition,
            config,
            segments,
            log_start_offset,
            log_end_offset,
            recovery_point,
            leader_epochs,
            unflushed_messages: 0,
            last_flush_ms: now_ms,
            load_report: report,
            closed: false,
            truncations: 0,
            producers: ProducerStateManager::new(),
            unsynced_snapshots: Vec::new(),
            last_producer_expiry_ms: now_ms,
        };
        log.load_producer_state(now_ms)?;
        Ok(log)
    }

    /// Rebuilds the producer state for the log as it is: from the newest snapshot at or
    /// below the log end (snapshots past it, or that fail their checks, are deleted and
    /// never trusted) plus the batches after it; from the whole log when there is none.
    /// Producers past `producer.id.expiration.ms` are then dropped.
    fn load_producer_state(&mut self, now_ms: i64) -> Result<()> {
        let mut from = self.log_start_offset;
        self.producers.clear();
        let mut deleted = false;
        for offset in list_snapshots(&self.dir)?.into_iter().rev() {
            if offset > self.log_end_offset || offset < self.log_start_offset {
                delete_snapshot(&self.dir, offset)?;
                deleted = true;
                continue;
            }
            match read_snapshot(&self.dir, offset) {
                Ok(state) => {
                    self.producers = state;
                    from = offset;
                    break;
                }
                Err(reason) => {
                    tracing::warn!(partition = %self.topic_partition, offset = offset.0, reason, "producer snapshot is damaged: deleted, rebuilding from the log");
                    delete_snapshot(&self.dir, offset)?;
                    deleted = true;
                }
            }
        }
        if deleted {
            crate::sync_dir(&self.dir)?;
        }
        let replayed = self.replay_producers(from)?;
        let expired = self
            .producers
            .remove_expired(now_ms, self.config.producer_id_expiration_ms);
        if replayed > 0 || !self.producers.is_empty() {
            tracing::debug!(partition = %self.topic_partition, from = from.0, replayed, expired, producers = self.producers.len(), "loaded producer state");
        }
        Ok(())
    }

    /// Applies every producer batch from `from` to the log end to the producer state.
    /// Returns the number of batches read.
    fn replay_producers(&mut self, from: Offset) -> Result<usize> {
        let start_base = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(self.log_start_offset, |(b, _)| *b);
        let producers = &mut self.producers;
        let mut batches = 0;
        for segment in self.segments.range(start_base..).map(|(_, s)| s) {
            segment.for_each_batch_from(from, |h| {
                batches += 1;
                if let Some(batch) = crate::producer_state::ProducerBatch::of(h) {
                    producers.update(&batch, h.last_offset());
                }
            })?;
        }
        Ok(batches)
    }

    /// Writes the producer state as of the log end to `<log end>.snapshot` (fsynced when
    /// `sync`, else by the next flush).
    fn take_producer_snapshot(&mut self, sync: bool) -> Result<()> {
        let offset = self.log_end_offset;
        write_snapshot(&self.dir, offset, &self.producers, sync)?;
        if !sync {
            self.unsynced_snapshots.push(offset);
        }
        Ok(())
    }

    /// Deletes the snapshots past `end` (after a truncation), durably: a snapshot whose
    /// unlink a crash undid would describe batches the log no longer holds once new ones
    /// are appended past its offset.
    fn delete_snapshots_after(&mut self, end: Offset) -> Result<()> {
        let mut deleted = false;
        for offset in list_snapshots(&self.dir)? {
            if offset > end {
                delete_snapshot(&self.dir, offset)?;
                deleted = true;
            }
        }
        if deleted {
            crate::sync_dir(&self.dir)?;
        }
        self.unsynced_snapshots.retain(|o| *o <= end);
        Ok(())
    }

    /// The idempotent producers' state (as of the log end).
    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producers
    }

    /// The leader's producer checks of a record set (see [`ProducerStateManager::check`]):
    /// Some(offsets) when it is a retry of a batch already in the log. An idempotent
    /// producer's batch must come alone (Kafka accepts one batch per partition from
    /// produce v3 on).
    fn check_producers(
        &self,
        infos: &[crate::segment::BatchInfo],
    ) -> Result<Option<(Offset, Offset)>> {
        let mut found = None;
        for info in infos {
            let Some(batch) = &info.producer else {
                continue;
            };
            if infos.len() > 1 {
                return Err(ProducerStateError::NotAlone.into());
            }
            if let ProducerCheck::Duplicate {
                base_offset,
                last_offset,
            } = self.producers.check(batch)?
            {
                found = Some((base_offset, last_offset));
            }
        }
        Ok(found)
    }

    /// Validates, stamps (base offsets from the log end, `leader_epoch`) and appends a record
    /// set from a producer. Batches must be dense (`last_offset_delta == count - 1`). On any
    /// error nothing is written.
    pub fn append_as_leader(
        &mut self,
        records: &mut [u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        if let Some(latest) = self.leader_epochs.latest_epoch() {
            if leader_epoch < latest {
                return Err(LogError::EpochRegression {
                    epoch: leader_epoch,
                    latest,
                });
            }
        }
        let mut infos = self.validate(records, true)?;
        if self.closed {
            return Err(LogError::Closed);
        }
        if let Some((base_offset, last_offset)) = self.check_producers(&infos)? {
            return Ok(AppendInfo {
                base_offset,
                last_offset,
                position: 0,
                max_timestamp: -1,
                record_count: 0,
                size_bytes: 0,
                duplicate: true,
            });
        }
        let mut next = self.log_end_offset;
        let mut at = 0usize;
        for info in &mut infos {
            let batch = &mut records[at..at + info.size_bytes];
            stamp_base_offset(batch, next)?;
            stamp_partition_leader_epoch(batch, leader_epoch)?;
            let delta = info.last_offset.0.wrapping_sub(info.base_offset.0);
            info.base_offset = next;
            info.last_offset = Offset(next.0 + delta);
            next = info.last_offset.next();
            at += info.size_bytes;
        }
        let epochs = [(leader_epoch, self.log_end_offset)];
        self.append_validated(records, &infos, &epochs, now_ms)
    }

    /// Appends batches replicated from the leader, as they are: offsets already assigned
    /// (the first must be the log end offset, the rest contiguous), leader epochs never
    /// decreasing. On any error nothing is written.
    pub fn append_as_follower(&mut self, records: &[u8], now_ms: i64) -> Result<AppendInfo> {
        let infos = self.validate(records, false)?;
        let mut expected = self.log_end_offset;
        let mut epochs: Vec<(LeaderEpoch, Offset)> = Vec::new();
        let mut latest = self
            .leader_epochs
            .latest_epoch()
            .unwrap_or(LeaderEpoch::NONE);
        for info in &infos {
            if info.base_offset != expected {
                return Err(LogError::UnexpectedAppendOffset {
                    base_offset: info.base_offset,
                    expected,
                });
            }
            expected = info.last_offset.next();
            let epoch = info.partition_leader_epoch;
            if epoch.0 >= 0 {
                if epoch < latest {
                    return Err(LogError::EpochRegression { epoch, latest });
                }
                if epoch > latest {
                    epochs.push((epoch, info.base_offset));
                    latest = epoch;
                }
            }
        }
        self.append_validated(records, &infos, &epochs, now_ms)
    }

    fn validate(&self, records: &[u8], dense: bool) -> Result<Vec<BatchInfo>> {
        if records.is_empty() {
            return Err(LogError::EmptyRecordSet);
        }
        if records.len() as u64 > self.config.segment_bytes {
            return Err(LogError::RecordSetTooLarge {
                size: records.len(),
                segment_bytes: self.config.segment_bytes,
            });
        }
        let mut infos = Vec::new();
        for batch in RecordBatches::new(records, self.config.max_message_bytes) {
            let batch = batch?;
            if dense {
                batch.validate_dense()?;
            }
            infos.push(BatchInfo::of(batch.header()));
        }
        Ok(infos)
    }

    fn append_validated(
        &mut self,
        records: &[u8],
        infos: &[BatchInfo],
        epochs: &[(LeaderEpoch, Offset)],
        now_ms: i64,
    ) -> Result<AppendInfo> {
        if self.closed {
            return Err(LogError::Closed);
        }
        let first = infos.first().ok_or(LogError::EmptyRecordSet)?;
        let last = infos.last().ok_or(LogError::EmptyRecordSet)?;
        assert_eq!(
            first.base_offset, self.log_end_offset,
            "appends start at the log end"
        );
        let max_timestamp = infos.iter().map(|b| b.max_timestamp).max().unwrap_or(-1);
        if self.active().should_roll(
            &self.config,
            records.len(),
            max_timestamp,
            last.last_offset,
            now_ms,
        ) {
            self.roll(now_ms)?;
        }
        // the epochs first: if their checkpoint cannot be written nothing is appended, and
        // an epoch entry at the log end with no record after it is harmless (as one made
        // at election); the other way round a failed checkpoint left a batch in the
        // segment past the log end offset
        for &(epoch, start) in epochs {
            self.leader_epochs.assign(epoch, start)?;
        }
        let position = self.active_mut().append(records, infos)?;
        let old_end = self.log_end_offset;
        self.log_end_offset = last.last_offset.next();
        assert!(self.log_end_offset > old_end, "log end offset must grow");
        for info in infos {
            if let Some(batch) = &info.producer {
                self.producers.update(batch, info.last_offset);
            }
        }
        let record_count = (last.last_offset.0 - first.base_offset.0 + 1) as u64;
        self.unflushed_messages += record_count;
        if self
            .config
            .flush_interval_messages
            .is_some_and(|n| self.unflushed_messages >= n)
        {
            self.flush()?;
            self.last_flush_ms = now_ms;
        }
        Ok(AppendInfo {
            base_offset: first.base_offset,
            last_offset: last.last_offset,
            position,
            max_timestamp,
            record_count,
            size_bytes: records.len(),
            duplicate: false,
        })
    }

    /// Seals the active segment and starts a new one at the log end offset. The sealed
    /// segment is flushed by the next [`Log::tick`] (or [`Log::flush`]), not here, so
    /// appends never wait for an fsync of a whole segment.
    pub fn roll(&mut self, now_ms: i64) -> Result<()> {
        let base = self.log_end_offset;
        if self.active().base_offset() == base {
            return Ok(());
        }
        self.active_mut().seal()?;
        let segment = LogSegment::open(&self.dir, base, &self.config, true, now_ms)?;
        self.segments.insert(base, segment);
        // a restart replays producer batches from here on, not from the log start
        self.take_producer_snapshot(false)?;
        tracing::debug!(partition = %self.topic_partition, base = base.0, "rolled segment");
        Ok(())
    }

    /// Reads whole batches from `from_offset`: a region inside one segment starting at the
    /// batch that holds `from_offset` (a fetch inside a batch gets the whole batch), at most
    /// `max_bytes` unless `min_one_batch` lets a larger first batch through, and only
    /// batches whose last offset is below `max_offset` (the broker passes the high
    /// watermark for consumers, the log end offset for followers).
    pub fn read(
        &self,
        from_offset: Offset,
        max_bytes: usize,
        max_offset: Offset,
        min_one_batch: bool,
    ) -> Result<LogReadInfo> {
        if from_offset < self.log_start_offset || from_offset > self.log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset: from_offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        let mut info = LogReadInfo {
            region: None,
            next_offset: from_offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset,
            segment_base: from_offset,
            unchecked: false,
            truncations: self.truncations,
            leader_epochs: Vec::new(),
        };
        let max_offset = max_offset.min(self.log_end_offset);
        if from_offset >= max_offset {
            return Ok(info);
        }
        let start_base = self
            .segments
            .range(..=from_offset)
            .next_back()
            .map_or(self.log_start_offset, |(b, _)| *b);
        for segment in self.segments.range(start_base..).map(|(_, s)| s) {
            let start = from_offset.max(segment.base_offset());
            if start >= max_offset {
                break;
            }
            if let Some(read) = segment.read(start, max_bytes, max_offset, min_one_batch)? {
                info.next_offset = read.next_offset;
                info.segment_base = segment.base_offset();
                info.unchecked = segment.is_unchecked(&read.region);
                if info.unchecked {
                    info.leader_epochs = self.leader_epochs.entries().to_vec();
                }
                info.region = (read.region.length > 0).then_some(read.region);
                return Ok(info);
            }
        }
        Ok(info)
    }

    /// Bytes `[position, position + length)` of segment `segment_base` were checked (by a
    /// read or the scrub) and hold whole, valid batches. A segment since deleted or
    /// truncated is no matter: what was checked is not unchecked again.
    pub fn mark_checked(&mut self, segment_base: Offset, position: u64, length: u64) {
        if let Some(segment) = self.segments.get_mut(&segment_base) {
            segment.mark_checked(position, length);
        }
    }

    /// What a scrub pass over this log checks: every sealed segment whole (bytes rot after
    /// they were checked too), and the bytes of the active one loaded unchecked.
    pub fn scrub_regions(&self) -> Result<Vec<ScrubRegion>> {
        let active = self.active().base_offset();
        let mut regions = Vec::new();
        for (&base, segment) in &self.segments {
            if base != active {
                regions.push(ScrubRegion {
                    segment_base: base,
                    region: segment.whole_region()?,
                    first_offset_at_most: base,
                    truncations: self.truncations,
                    leader_epochs: self.leader_epochs.entries().to_vec(),
                });
                continue;
            }
            for region in segment.unchecked_regions()? {
                regions.push(ScrubRegion {
                    segment_base: base,
                    // mid-segment, the first batch starts before the segment's end
                    first_offset_at_most: if region.position == 0 {
                        base
                    } else {
                        Offset(segment.next_offset().0 - 1)
                    },
                    region,
                    truncations: self.truncations,
                    leader_epochs: self.leader_epochs.entries().to_vec(),
                });
            }
        }
        Ok(regions)
    }

    /// ListOffsets by timestamp: the first record whose timestamp is at least `timestamp`,
    /// as (its timestamp, its offset); None when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, Offset)>> {
        for segment in self.segments.values() {
            if segment.largest_timestamp() < timestamp || segment.is_empty() {
                continue;
            }
            if let Some(found) =
                segment.find_offset_by_timestamp(timestamp, self.log_start_offset)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Removes everything at or after `offset` (followers, on divergence). A batch is never
    /// split: if `offset` falls inside one, that whole batch goes and the log end offset
    /// ends up below `offset`. Leader epochs starting at or after `offset` are dropped even
    /// when no record is (an epoch a leader began with no record written in it).
    pub fn truncate_to(&mut self, offset: Offset) -> Result<()> {
        if offset >= self.log_end_offset {
            if offset == self.log_end_offset {
                self.leader_epochs.truncate_from_end(offset)?;
            }
            return Ok(());
        }
        if offset <= self.log_start_offset {
            return self.truncate_fully_and_start_at(offset);
        }
        self.truncations += 1;
        // snapshots first: one left behind by a crash mid-truncation must not outlive the
        // batches it describes (snapshots sit at batch boundaries, so none is inside the
        // batch `offset` may cut)
        self.delete_snapshots_after(offset)?;
        let doomed: Vec<Offset> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        for base in doomed {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete()?;
            }
        }
        let active = self.active_mut();
        active.truncate_to(offset)?;
        active.make_writable()?;
        self.log_end_offset = self.active().next_offset();
        assert!(self.log_end_offset <= offset);
        self.leader_epochs.truncate_from_end(self.log_end_offset)?;
        self.recovery_point = self.recovery_point.min(self.log_end_offset);
        // (snapshots past the cut went first, above)
        self.load_producer_state(self.last_producer_expiry_ms)?;
        tracing::info!(partition = %self.topic_partition, offset = offset.0, log_end_offset = self.log_end_offset.0, "truncated log");
        Ok(())
    }

    /// Deletes every segment and starts an empty log at `offset` (a follower whose fetch
    /// offset fell outside the leader's log).
    pub fn truncate_fully_and_start_at(&mut self, offset: Offset) -> Result<()> {
        self.truncations += 1;
        self.delete_snapshots_after(Offset(-1))?;
        for (_, segment) in std::mem::take(&mut self.segments) {
            segment.delete()?;
        }
        let segment = LogSegment::open(&self.dir, offset, &self.config, true, self.last_flush_ms)?;
        self.segments.insert(offset, segment);
        self.log_start_offset = offset;
        self.log_end_offset = offset;
        self.recovery_point = offset;
        self.leader_epochs.clear()?;
        self.producers.clear();
        Ok(())
    }

    /// Retention: deletes the oldest segments while they are older than `log.retention.ms`
    /// or the log is larger than `log.retention.bytes`, never a segment holding offsets at or
    /// past `deletable_below` (the broker passes its high watermark). If every segment has
    /// expired, the active one is rolled first so the log keeps its end offset. Returns the
    /// number of segments deleted.
    pub fn delete_retained_segments(
        &mut self,
        now_ms: i64,
        deletable_below: Offset,
    ) -> Result<usize> {
        let retention_ms = self.config.retention_ms;
        let expired =
            |s: &LogSegment| retention_ms >= 0 && now_ms - s.largest_timestamp() > retention_ms;
        let all_expired = self.segments.values().all(|s| s.is_empty() || expired(s));
        if all_expired && !self.active().is_empty() && self.log_end_offset <= deletable_below {
            self.roll(now_ms)?;
        }
        let mut excess = if self.config.retention_bytes >= 0 {
            self.size_bytes() as i64 - self.config.retention_bytes
        } else {
            0
        };
        let mut doomed = Vec::new();
        let newest = *self
            .segments
            .keys()
            .next_back()
            .expect("at least one segment");
        for (base, s) in &self.segments {
            if *base == newest || s.next_offset() > deletable_below {
                break;
            }
            let by_size = excess - s.size_bytes() as i64 >= 0;
            if !(expired(s) || by_size) {
                break;
            }
            excess -= s.size_bytes() as i64;
            doomed.push(*base);
        }
        for base in &doomed {
            if let Some(segment) = self.segments.remove(base) {
                tracing::info!(partition = %self.topic_partition, base = base.0, "retention deletes segment");
                segment.delete()?;
            }
        }
        if !doomed.is_empty() {
            self.truncations += 1;
            self.log_start_offset = *self
                .segments
                .keys()
                .next()
                .expect("the active segment stays");
            self.leader_epochs
                .truncate_from_start(self.log_start_offset)?;
            self.recovery_point = self.recovery_point.max(self.log_start_offset);
            // producer entries stay (KIP-360): only their expiry forgets them
            for offset in list_snapshots(&self.dir)? {
                if offset < self.log_start_offset {
                    delete_snapshot(&self.dir, offset)?;
                }
            }
        }
        Ok(doomed.len())
    }

    /// fsyncs every segment not yet known durable and moves the recovery point to the log
    /// end offset.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_up_to(self.log_end_offset)
    }

    /// fsyncs the segments holding offsets in `[recovery_point, offset)`.
    pub fn flush_up_to(&mut self, offset: Offset) -> Result<()> {
        match self.flush_task(offset) {
            Some(task) => {
                let result = task.run();
                self.finish_flush(task, result.is_ok());
                result
            }
            None => Ok(()),
        }
    }

    /// What making `[recovery_point, offset)` durable takes (None: nothing), to run outside
    /// the log's lock: [`FlushTask::run`], then [`Log::finish_flush`].
    pub fn flush_task(&mut self, offset: Offset) -> Option<FlushTask> {
        let offset = offset.min(self.log_end_offset);
        if offset <= self.recovery_point {
            return None;
        }
        let from = self
            .segments
            .range(..=self.recovery_point)
            .next_back()
            .map_or(self.log_start_offset, |(b, _)| *b);
        let flushed = || {
            self.segments
                .range(from..offset)
                .map(|(_, segment)| segment)
        };
        let files = flushed().map(LogSegment::durable_handle).collect();
        let index_files = flushed().flat_map(LogSegment::index_paths).collect();
        self.unflushed_messages = 0;
        Some(FlushTask {
            up_to: offset,
            truncations: self.truncations,
            files,
            index_files,
            dir: self.dir.clone(),
            snapshots: std::mem::take(&mut self.unsynced_snapshots),
            epoch_checkpoint: self.leader_epochs.take_unsynced(),
        })
    }

    /// Moves the recovery point to what `task` made durable (`ok`), unless the log was
    /// truncated meanwhile (the offsets it covered may hold other records now); a failed
    /// task's snapshots wait for the next flush.
    pub fn finish_flush(&mut self, task: FlushTask, ok: bool) {
        if !ok {
            self.unsynced_snapshots.extend(task.snapshots);
            if task.epoch_checkpoint.is_some() {
                self.leader_epochs.mark_unsynced();
            }
            return;
        }
        if task.truncations == self.truncations {
            let durable = task.up_to.min(self.log_end_offset);
            self.recovery_point = self.recovery_point.max(durable);
        }
    }

    /// Periodic work: flushes sealed segments (so recovery after a crash starts at the
    /// active segment) and applies `log.flush.interval.ms`.
    pub fn tick(&mut self, now_ms: i64) -> Result<()> {
        if let Some(task) = self.tick_flush_task(now_ms) {
            let result = task.run();
            self.finish_flush(task, result.is_ok());
            result?;
        }
        self.expire_producers(now_ms);
        Ok(())
    }

    /// [`Log::tick`]'s flush, to run outside the log's lock: the sealed segments, and the
    /// whole log when `log.flush.interval.ms` has passed.
    pub fn tick_flush_task(&mut self, now_ms: i64) -> Option<FlushTask> {
        if let Some(interval) = self.config.flush_interval_ms {
            if now_ms - self.last_flush_ms >= interval && self.recovery_point < self.log_end_offset
            {
                self.last_flush_ms = now_ms;
                return self.flush_task(self.log_end_offset);
            }
        }
        let active_base = self.active().base_offset();
        if self.recovery_point < active_base {
            return self.flush_task(active_base);
        }
        None
    }

    /// Forgets idle producer ids (`producer.id.expiration.ms`), checked every
    /// `producer.id.expiration.check.interval.ms`.
    pub fn expire_producers(&mut self, now_ms: i64) {
        if now_ms - self.last_producer_expiry_ms
            >= self.config.producer_id_expiration_check_interval_ms
        {
            self.last_producer_expiry_ms = now_ms;
            let expired = self
                .producers
                .remove_expired(now_ms, self.config.producer_id_expiration_ms);
            if expired > 0 {
                tracing::debug!(partition = %self.topic_partition, expired, "producer ids expired");
            }
        }
    }

    /// Whether [`Log::close`] ran (the log is being deleted, or the broker stops).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Flushes and trims the active segment; the log is then ready for a clean restart and
    /// refuses further appends.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.flush()?;
        if let Some(path) = self.leader_epochs.take_unsynced() {
            if let Err(e) = crate::checkpoint::sync_file_and_dir(&path) {
                self.leader_epochs.mark_unsynced();
                return Err(e);
            }
        }
        self.active_mut().seal()?;
        self.active().flush()?;
        // a clean restart loads this and replays nothing
        self.take_producer_snapshot(true)?;
        self.closed = true;
        Ok(())
    }

    /// Replaces the settings (a topic config change). Takes effect from the next append,
    /// roll or retention pass.
    pub fn update_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Deletes the log's directory with everything in it (topic deletion).
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(LogError::io(&dir))
    }

    fn active(&self) -> &LogSegment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut LogSegment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.topic_partition
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }

    pub fn recovery_point(&self) -> Offset {
        self.recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(LogSegment::size_bytes).sum()
    }

    pub fn segments(&self) -> impl Iterator<Item = &LogSegment> {
        self.segments.values()
    }

    pub fn leader_epochs(&self) -> &LeaderEpochCache {
        &self.leader_epochs
    }

    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.leader_epochs.latest_epoch()
    }

    /// A broker that becomes leader in `epoch` records that the epoch starts at the log end
    /// offset before anything is appended in it (Kafka's `maybeAssignEpochStartOffset`), so
    /// OffsetForLeaderEpoch knows the epoch from the first moment it leads: a follower whose
    /// latest epoch the leader never wrote learns where the leader's log diverges from it
    /// (the start of the next epoch the leader knows), not "unknown epoch". The same epoch
    /// again is a no-op; an older one is `EpochRegression`.
    pub fn assign_epoch_start_offset(&mut self, epoch: LeaderEpoch) -> Result<()> {
        if self.closed {
            return Err(LogError::Closed);
        }
        self.leader_epochs.assign(epoch, self.log_end_offset)
    }

    /// OffsetForLeaderEpoch for this log (see [`LeaderEpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        self.leader_epochs
            .end_offset_for(epoch, self.log_end_offset)
    }

    /// How many times the log was truncated (at its end, or at its start by retention)
    /// since it was opened: bytes read from a segment file are what the log holds only if
    /// this did not change meanwhile (a truncated file may have taken other batches at the
    /// same positions since; a deleted one is no longer the log's).
    pub fn truncations(&self) -> u64 {
        self.truncations
    }

    pub fn load_report(&self) -> LoadReport {
        self.load_report
    }
}
