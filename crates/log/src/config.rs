//! Per-log settings, named after Kafka's (`log.segment.bytes`, `log.retention.ms`, ...), with
//! Kafka's defaults. Topic-level overrides arrive as the same struct.

use crate::LogError;

/// How the active segment's `.log` file is written. Sealed segments are always plain files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendMode {
    /// `pwrite(2)` of each batch into the page cache. The default, chosen by
    /// docs/benchmarks.md (tail latency): a write fault on a fresh map reads ahead (zero
    /// pages) for about 2 ms, at each new segment and every few MiB after, under the
    /// partition's lock; `pwrite` has no such step.
    Write,
    /// `memcpy` into a shared memory map of the preallocated file, as the seed articles
    /// describe; the file is trimmed to its logical size when the segment rolls or closes.
    Mmap,
    /// Appends smaller than
    /// [`HYBRID_MMAP_MAX_APPEND_BYTES`] are copied into the map (no syscall per batch),
    /// larger ones are written with `pwrite(2)` (no page fault per 4 KiB). Both land in
    /// the same page cache, so readers see one file.
    Hybrid,
}

/// Hybrid mode: the largest append copied through the memory map; larger ones use `pwrite`.
pub const HYBRID_MMAP_MAX_APPEND_BYTES: usize = 32 * 1024;

impl AppendMode {
    pub fn name(self) -> &'static str {
        match self {
            AppendMode::Write => "write",
            AppendMode::Mmap => "mmap",
            AppendMode::Hybrid => "hybrid",
        }
    }

    pub fn from_name(name: &str) -> Option<AppendMode> {
        match name {
            "write" => Some(AppendMode::Write),
            "mmap" => Some(AppendMode::Mmap),
            "hybrid" => Some(AppendMode::Hybrid),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `log.roll.ms`: roll when the active segment's first batch is older than this.
    pub roll_ms: i64,
    /// `log.retention.ms`: delete segments whose newest timestamp is older (-1 = never).
    pub retention_ms: i64,
    /// `log.retention.bytes`: delete oldest segments while the log is larger (-1 = never).
    pub retention_bytes: i64,
    /// `log.index.interval.bytes`: bytes of batches between two index entries.
    pub index_interval_bytes: usize,
    /// `log.index.size.max.bytes`: preallocated size of each index file.
    pub index_size_max_bytes: usize,
    /// `log.flush.interval.messages`: fsync after this many records (None = never force).
    pub flush_interval_messages: Option<u64>,
    /// `log.flush.interval.ms`: fsync when the last flush is older (None = never force).
    pub flush_interval_ms: Option<i64>,
    /// `max.message.bytes` (topic) / `message.max.bytes` (broker): largest batch accepted.
    pub max_message_bytes: usize,
    /// `sluice.log.append.mode`: how the active segment is written (Sluice's own setting).
    pub append_mode: AppendMode,
    /// `producer.id.expiration.ms`: a producer idle this long (by its newest batch's
    /// timestamp) is forgotten by the partition.
    pub producer_id_expiration_ms: i64,
    /// `producer.id.expiration.check.interval.ms`: how often expiry runs.
    pub producer_id_expiration_check_interval_ms: i64,
    /// `sluice.log.max.open.files`: the broker-wide budget of open segment files, shared
    /// by every log (see `open_files`).
    pub open_files: crate::open_files::OpenFileBudget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            roll_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            index_size_max_bytes: 10 * 1024 * 1024,
            flush_interval_messages: None,
            flush_interval_ms: None,
            max_message_bytes: sluice_record::limits::DEFAULT_MESSAGE_MAX_BYTES,
            append_mode: AppendMode::Write,
            producer_id_expiration_ms: 24 * 60 * 60 * 1000,
            producer_id_expiration_check_interval_ms: 10 * 60 * 1000,
            open_files: crate::open_files::OpenFileBudget::unlimited(),
        }
    }
}

impl LogConfig {
    /// Rejects settings Kafka also rejects (positions are 32-bit, indexes need room).
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |what: &str| Err(LogError::InvalidConfig(what.to_string()));
        if self.segment_bytes < 14 || self.segment_bytes > i32::MAX as u64 {
            return bad("log.segment.bytes must be between 14 and 2147483647");
        }
        if self.index_size_max_bytes < 24 || self.index_size_max_bytes > i32::MAX as usize {
            return bad("log.index.size.max.bytes must be between 24 and 2147483647");
        }
        if self.roll_ms < 1 {
            return bad("log.roll.ms must be at least 1");
        }
        if self.retention_ms < -1 || self.retention_bytes < -1 {
            return bad("log.retention.ms and log.retention.bytes must be -1 or more");
        }
        if self.flush_interval_messages == Some(0)
            || self.flush_interval_ms.is_some_and(|ms| ms < 0)
        {
            return bad("log.flush.interval.messages must be at least 1 and log.flush.interval.ms at least 0");
        }
        if self.producer_id_expiration_ms < 1 || self.producer_id_expiration_check_interval_ms < 1 {
            return bad("producer.id.expiration.ms and producer.id.expiration.check.interval.ms must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return bad("max.message.bytes must be at least 1");
        }
        Ok(())
    }
}
