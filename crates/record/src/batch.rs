//! A zero-copy view of one RecordBatch v2 and of a record set (batches back to back).
//!
//! Layout (big-endian): base offset i64 @0, batch length i32 @8 (bytes after this field),
//! partition leader epoch i32 @12, magic i8 @16, CRC32C u32 @17 (over bytes 21..end),
//! attributes i16 @21, last offset delta i32 @23, base timestamp i64 @27, max timestamp
//! i64 @35, producer id i64 @43, producer epoch i16 @51, base sequence i32 @53, record
//! count i32 @57, records @61.
//!
//! Base offset and partition leader epoch lie outside the CRC: the leader stamps them in
//! place and the CRC the producer computed stays valid.

use crate::limits::{MAX_BATCH_SIZE_BYTES, MAX_RECORD_COUNT, MIN_RECORD_SIZE_BYTES};
use crate::record::Records;
use crate::{Compression, LeaderEpoch, Offset, RecordError};

/// Bytes before the first record of a v2 batch.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Base offset + batch length: the part of every batch not counted by its length field.
pub const LOG_OVERHEAD_BYTES: usize = 12;
pub const MAGIC_V2: i8 = 2;

const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The parsed 61-byte header of a v2 batch. Parsing checks the length and magic only;
/// [`BatchHeader::validate`] and [`RecordBatch`] check the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_length: i32,
    pub partition_leader_epoch: LeaderEpoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Reads the base offset and batch length (the 12-byte log overhead) and returns the
    /// total size of the batch they announce, checked against the v2 minimum and `limit`.
    pub fn total_size_from_prefix(buf: &[u8], limit: usize) -> Result<usize, RecordError> {
        if buf.len() < LOG_OVERHEAD_BYTES {
            return Err(RecordError::Truncated {
                needed: LOG_OVERHEAD_BYTES,
                available: buf.len(),
            });
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(RecordError::LengthTooSmall(batch_length));
        }
        let size = batch_length as usize + LOG_OVERHEAD_BYTES;
        let limit = limit.min(MAX_BATCH_SIZE_BYTES);
        if size > limit {
            return Err(RecordError::TooLarge { size, limit });
        }
        Ok(size)
    }

    /// Parses the header at the start of `buf` (which needs at least 61 bytes; the records
    /// need not be present). Checks the length field and the magic byte.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, RecordError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(RecordError::Truncated {
                needed: BATCH_HEADER_BYTES,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(RecordError::UnsupportedMagic(magic));
        }
        Self::total_size_from_prefix(buf, MAX_BATCH_SIZE_BYTES)?;
        Ok(BatchHeader {
            base_offset: Offset(be_i64(buf, 0)),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: LeaderEpoch(be_i32(buf, 12)),
            magic,
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Checks the fields that need no record bytes: codec, record count and offset delta.
    /// `record_count <= last_offset_delta + 1` always holds (compaction may leave gaps);
    /// producers send dense batches, which [`RecordBatch::validate_dense`] checks.
    pub fn validate(&self) -> Result<(), RecordError> {
        self.compression()?;
        let bad_delta = RecordError::InvalidOffsetDelta {
            record_count: self.record_count,
            last_offset_delta: self.last_offset_delta,
        };
        if self.record_count < 0
            || self.record_count > MAX_RECORD_COUNT
            || self.last_offset_delta < 0
            || i64::from(self.record_count) > i64::from(self.last_offset_delta) + 1
        {
            return Err(bad_delta);
        }
        let record_bytes = self.total_size() - BATCH_HEADER_BYTES;
        if !self.is_compressed()
            && (self.record_count as usize) > record_bytes / MIN_RECORD_SIZE_BYTES
        {
            return Err(RecordError::CorruptRecord(
                "record count exceeds what the batch length can hold",
            ));
        }
        Ok(())
    }

    /// Size of the whole batch in bytes, log overhead included.
    pub fn total_size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    /// Wrapping (as release builds computed it before): a producer's base offset is
    /// anything until the leader stamps it, and a follower refuses a batch whose offsets do
    /// not follow its log; neither may panic a debug build.
    pub fn last_offset(&self) -> Offset {
        Offset(
            self.base_offset
                .0
                .wrapping_add(i64::from(self.last_offset_delta)),
        )
    }

    pub fn next_offset(&self) -> Offset {
        Offset(self.last_offset().0.wrapping_add(1))
    }

    pub fn compression(&self) -> Result<Compression, RecordError> {
        Compression::from_id((self.attributes & COMPRESSION_MASK) as u8)
    }

    fn is_compressed(&self) -> bool {
        self.attributes & COMPRESSION_MASK != 0
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// One whole, validated batch: header, length, magic, codec, offset delta and CRC32C have
/// all been checked. Borrowed; never copied.
#[derive(Debug, Clone, Copy)]
pub struct RecordBatch<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> RecordBatch<'a> {
    /// Validates the batch at the start of `buf` and returns it; `buf` may hold more bytes
    /// after it. `max_size_bytes` is the caller's limit (e.g. `message.max.bytes`).
    pub fn parse_prefix(buf: &'a [u8], max_size_bytes: usize) -> Result<Self, RecordError> {
        let size = BatchHeader::total_size_from_prefix(buf, max_size_bytes)?;
        if buf.len() < size {
            return Err(RecordError::Truncated {
                needed: size,
                available: buf.len(),
            });
        }
        let header = BatchHeader::parse(buf)?;
        header.validate()?;
        let bytes = &buf[..size];
        let computed = crc32c(&bytes[ATTRIBUTES_POS..]);
        if computed != header.crc {
            return Err(RecordError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(RecordBatch { header, bytes })
    }

    /// Like [`RecordBatch::parse_prefix`] but `buf` must be exactly one batch.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RecordError> {
        let batch = Self::parse_prefix(buf, MAX_BATCH_SIZE_BYTES)?;
        if batch.bytes.len() != buf.len() {
            return Err(RecordError::CorruptRecord("trailing bytes after the batch"));
        }
        Ok(batch)
    }

    /// Producers send dense batches: at least one record and `last_offset_delta ==
    /// record_count - 1`. The leader requires it before assigning offsets.
    pub fn validate_dense(&self) -> Result<(), RecordError> {
        if self.header.record_count < 1
            || self.header.last_offset_delta != self.header.record_count - 1
        {
            return Err(RecordError::InvalidOffsetDelta {
                record_count: self.header.record_count,
                last_offset_delta: self.header.last_offset_delta,
            });
        }
        Ok(())
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn base_offset(&self) -> Offset {
        self.header.base_offset
    }

    pub fn last_offset(&self) -> Offset {
        self.header.last_offset()
    }

    /// The records, decompressed if the batch is compressed.
    pub fn records(&self) -> Result<Records<'a>, RecordError> {
        let payload = &self.bytes[BATCH_HEADER_BYTES..];
        let data = self.header.compression()?.decompress(payload)?;
        Ok(Records::new(data, &self.header))
    }
}

/// Iterates over the batches of a record set, validating each. Stops at the first error,
/// which it yields once; a record set must hold whole batches only.
pub struct RecordBatches<'a> {
    rest: &'a [u8],
    max_size_bytes: usize,
    failed: bool,
}

impl<'a> RecordBatches<'a> {
    pub fn new(record_set: &'a [u8], max_size_bytes: usize) -> Self {
        RecordBatches {
            rest: record_set,
            max_size_bytes,
            failed: false,
        }
    }
}

impl<'a> Iterator for RecordBatches<'a> {
    type Item = Result<RecordBatch<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match RecordBatch::parse_prefix(self.rest, self.max_size_bytes) {
            Ok(batch) => {
                self.rest = &self.rest[batch.size_bytes()..];
                Some(Ok(batch))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes `base_offset` into the batch at the start of `buf` (outside the CRC).
pub fn stamp_base_offset(buf: &mut [u8], base_offset: Offset) -> Result<(), RecordError> {
    if buf.len() < LOG_OVERHEAD_BYTES {
        return Err(RecordError::Truncated {
            needed: LOG_OVERHEAD_BYTES,
            available: buf.len(),
        });
    }
    buf[..8].copy_from_slice(&base_offset.0.to_be_bytes());
    Ok(())
}

/// Writes the partition leader epoch into the batch at the start of `buf` (outside the CRC).
pub fn stamp_partition_leader_epoch(buf: &mut [u8], epoch: LeaderEpoch) -> Result<(), RecordError> {
    if buf.len() < MAGIC_POS {
        return Err(RecordError::Truncated {
            needed: MAGIC_POS,
            available: buf.len(),
        });
    }
    buf[12..16].copy_from_slice(&epoch.0.to_be_bytes());
    Ok(())
}

/// Rewrites the idempotent-producer fields (producer id, epoch, first sequence) of the
/// batch that is all of `buf`, and its CRC: a producer that bumped its epoch (KIP-360)
/// renumbers a batch it built before.
pub fn stamp_producer(
    buf: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), RecordError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(RecordError::Truncated {
            needed: BATCH_HEADER_BYTES,
            available: buf.len(),
        });
    }
    buf[43..51].copy_from_slice(&producer_id.to_be_bytes());
    buf[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    buf[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    write_crc(buf);
    Ok(())
}

/// Writes the CRC32C of bytes 21..end into the batch at the start of `buf` (builders).
pub(crate) fn write_crc(batch: &mut [u8]) {
    let crc = crc32c(&batch[ATTRIBUTES_POS..]);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// CRC32C (Castagnoli) of `data`, as the batch CRC field holds it. `crc-fast` picks the
/// widest carry-less-multiply path the CPU has (about twice the plain SSE4.2 speed here).
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}
