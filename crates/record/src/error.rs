//! The one error type of the record crate. Each variant maps to one Kafka error code at the
//! protocol layer (CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, INVALID_RECORD, ...).

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record data truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field {0} is below the 49-byte minimum of a v2 batch")]
    LengthTooSmall(i32),
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported magic byte {0} (only RecordBatch v2, magic 2, is accepted)")]
    UnsupportedMagic(i8),
    #[error("CRC32C mismatch: batch says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record count {record_count} does not fit last offset delta {last_offset_delta}")]
    InvalidOffsetDelta {
        record_count: i32,
        last_offset_delta: i32,
    },
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    #[error("corrupt record: {0}")]
    CorruptRecord(&'static str),
    #[error("{codec} decompression failed: {message}")]
    Decompression {
        codec: &'static str,
        message: String,
    },
    #[error("{codec} compression failed: {message}")]
    Compression {
        codec: &'static str,
        message: String,
    },
    #[error("batch decompresses to more than {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    /// Offsets are dense: each batch starts where the one before it ended. The base offset
    /// is outside the CRC, so this is how a damaged one shows.
    #[error("batch base offset {found} does not follow the batch before it (expected {expected})")]
    BaseOffsetOutOfSequence { expected: i64, found: i64 },
    /// The partition leader epoch is outside the CRC (a leader stamps it): a batch whose
    /// epoch is not the one the log's leader-epoch cache gives its offsets is damaged.
    #[error("batch at offset {base_offset} carries leader epoch {found}, but the log's leader-epoch cache says {expected}")]
    LeaderEpochMismatch {
        base_offset: i64,
        found: i32,
        expected: i32,
    },
}
