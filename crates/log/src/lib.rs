//! Sluice's storage engine: Kafka's on-disk log layout, synchronous and network-free.
//!
//! ```text
//! data/<topic>-<partition>/00000000000000000000.log        batches exactly as on the wire
//!                           00000000000000000000.index      offset -> position (mmap, sparse)
//!                           00000000000000000000.timeindex  timestamp -> offset (mmap, sparse)
//!                           00000000000000000000.snapshot   producer state at that offset
//!                           leader-epoch-checkpoint
//! data/recovery-point-offset-checkpoint, data/replication-offset-checkpoint
//! ```
//!
//! [`LogManager`] owns a data directory of partition [`Log`]s; a `Log` is a list of
//! [`LogSegment`]s, each a [`FileRecords`](file_records) file with an [`OffsetIndex`] and a
//! [`TimeIndex`]. Reads return [`FileRegion`]s for `sendfile(2)`; nothing here copies
//! record bytes into user space on the read path.
//!
//! This crate knows nothing of replication, high-watermark rules or the network: callers
//! pass bounds in (`max_offset`, `deletable_below`) and persist high watermarks through
//! [`LogManager::write_high_watermarks`].

mod batch_damage;
mod checkpoint;
mod config;
mod error;
mod file_records;
mod index_file;
mod leader_epoch;
mod log;
mod log_manager;
mod offset_index;
mod open_files;
mod producer_snapshot;
mod producer_state;
mod segment;
mod time_index;
mod unchecked_bytes;

pub use batch_damage::{check_chunk, check_region, split_at_damage, Damage, RegionCheck};
pub use checkpoint::{sync_dir, write_atomically, OffsetCheckpointFile};
pub use config::{AppendMode, LogConfig, HYBRID_MMAP_MAX_APPEND_BYTES};
pub use error::{LogError, Result};
pub use file_records::FileRegion;
pub use leader_epoch::{EpochEntry, LeaderEpochCache, LEADER_EPOCH_CHECKPOINT};
pub use log::{AppendInfo, LoadReport, Log, LogReadInfo, ScrubRegion};
pub use log_manager::{
    disk_space, lock, LogManager, SharedLog, CLEAN_SHUTDOWN_MARKER, CLUSTER_METADATA_DIR,
    RECOVERY_POINT_CHECKPOINT, REPLICATION_OFFSET_CHECKPOINT,
};
pub use offset_index::{OffsetIndex, OffsetPosition};
pub use open_files::OpenFileBudget;
pub use producer_snapshot::{list_snapshots, snapshot_path, SNAPSHOT_SUFFIX};
pub use producer_state::{
    increment_sequence, BatchMetadata, ProducerBatch, ProducerCheck, ProducerEntry,
    ProducerStateError, ProducerStateManager, MAX_CACHED_BATCHES,
};
pub use segment::{
    segment_file, LogSegment, SegmentRead, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
pub use time_index::{TimeIndex, TimestampOffset};
