//! Kafka's RecordBatch v2 (magic 2) as Sluice stores and moves it.
//!
//! The bytes a producer sends are the bytes on disk are the bytes a consumer receives, so
//! this crate works on borrowed byte slices: [`BatchHeader`] parses and validates the
//! 61-byte header without copying, [`stamp_base_offset`] and
//! [`stamp_partition_leader_epoch`] rewrite the two fields that sit outside the CRC, and
//! record iteration (with decompression) happens only when a caller asks for it.
//! [`BatchBuilder`] and the [`Compression`] codecs are for clients, tests and tools.
//!
//! Invariants: nothing here panics on any input bytes; a [`RecordBatch`] value only exists
//! for bytes whose header, length, magic, offset delta and CRC32C have been checked.

mod batch;
mod builder;
mod compression;
mod error;
mod ids;
pub mod limits;
mod record;
mod varint;

pub use batch::{
    crc32c, stamp_base_offset, stamp_partition_leader_epoch, stamp_producer, BatchHeader,
    RecordBatch, RecordBatches, TimestampType, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2,
};
pub use builder::BatchBuilder;
pub use compression::Compression;
pub use error::RecordError;
pub use ids::{BrokerId, LeaderEpoch, Offset, TopicPartition};
pub use record::{Header, Record, RecordIter, Records};

/// Wall-clock time in milliseconds since the Unix epoch: what record timestamps
/// (CreateTime) and log times are measured in. 0 if the clock is before 1970.
pub fn now_ms() -> i64 {
    // (no u128 division: a producer reads this for every record)
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.as_secs() as i64 * 1000 + i64::from(d.subsec_millis())
        })
}
