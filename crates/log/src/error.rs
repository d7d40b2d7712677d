//! The log crate's error type. Each variant carries enough to pick a Kafka error code
//! (OFFSET_OUT_OF_RANGE, CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, KAFKA_STORAGE_ERROR, ...).

use std::path::PathBuf;

use sluice_record::{LeaderEpoch, Offset, RecordError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid record batch: {0}")]
    InvalidRecord(#[from] RecordError),
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: Offset,
        log_start_offset: Offset,
        log_end_offset: Offset,
    },
    #[error("batch base offset {base_offset} does not follow the log end offset {expected}")]
    UnexpectedAppendOffset {
        base_offset: Offset,
        expected: Offset,
    },
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    EpochRegression {
        epoch: LeaderEpoch,
        latest: LeaderEpoch,
    },
    #[error("the log is closed")]
    Closed,
    #[error("{path} is a file, not a directory: the partition's log cannot go there")]
    NotADirectory { path: PathBuf },
    #[error("empty record set")]
    EmptyRecordSet,
    #[error("record set of {size} bytes does not fit a segment of {segment_bytes} bytes")]
    RecordSetTooLarge { size: usize, segment_bytes: u64 },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("corrupt checkpoint file {path}: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },
    #[error("corrupt log segment {path}: {reason}")]
    CorruptLog { path: PathBuf, reason: String },
    #[error(transparent)]
    Producer(#[from] crate::producer_state::ProducerStateError),
    #[error("corrupt index {path}: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },
}

impl LogError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
