//! Builds RecordBatch v2 bytes: for clients, tools, tests and benchmarks. The broker never
//! builds batches on the data path; it stores what producers built.
//!
//! One pass: each record is written once, straight into the batch's buffer, behind room
//! kept for the batch header; [`BatchBuilder::into_bytes`] then writes the header into that
//! room, so an uncompressed batch leaves as the very buffer its records were written to.
//! Invariant: `records` always starts with [`BATCH_HEADER_BYTES`] of header room.

use crate::batch::{write_crc, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2};
use crate::varint::{varint_size, varlong_size, write_varint, write_varlong};
use crate::{Compression, LeaderEpoch, Offset, RecordError};

/// Accumulates records and encodes them as one batch. Producer id/epoch/sequence are
/// "none" (-1) unless [`BatchBuilder::producer`] sets them (an idempotent producer).
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    base_offset: Offset,
    partition_leader_epoch: LeaderEpoch,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    record_count: i32,
    /// Header room, then the records.
    records: Vec<u8>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            base_offset: Offset::ZERO,
            partition_leader_epoch: LeaderEpoch::NONE,
            base_timestamp: None,
            max_timestamp: -1,
            record_count: 0,
            records: vec![0; BATCH_HEADER_BYTES],
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// A builder writing into `buffer` (cleared; its allocation reused: a producer's
    /// finished batch's).
    pub fn with_buffer(compression: Compression, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.resize(BATCH_HEADER_BYTES, 0);
        let mut builder = BatchBuilder::new(compression);
        builder.records = buffer;
        builder
    }

    /// The builder's buffer back, to reuse (see [`Self::with_buffer`]).
    pub fn into_buffer(self) -> Vec<u8> {
        self.records
    }

    /// Room for `bytes` of record data up front (no reallocation while the batch fills).
    pub fn reserve_records(mut self, bytes: usize) -> Self {
        self.records.reserve(bytes);
        self
    }

    pub fn base_offset(mut self, base_offset: Offset) -> Self {
        self.base_offset = base_offset;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: LeaderEpoch) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// An idempotent producer's batch: its producer id, epoch and first sequence.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Bytes of record data so far (before compression).
    pub fn records_size_bytes(&self) -> usize {
        self.records.len() - BATCH_HEADER_BYTES
    }

    /// Appends a record; its offset is the next one in the batch.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> &mut Self {
        let base_timestamp = *self.base_timestamp.get_or_insert(timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(base_timestamp);
        // the record's length comes first: sized here, so the body is written once
        let len = 1
            + varlong_size(timestamp_delta)
            + varint_size(self.record_count)
            + nullable_size(key)
            + nullable_size(value)
            + varint_size(headers.len() as i32)
            + headers
                .iter()
                .map(|(k, v)| nullable_size(Some(k)) + nullable_size(*v))
                .sum::<usize>();
        let out = &mut self.records;
        out.reserve(varint_size(len as i32) + len);
        write_varint(out, len as i32);
        let body_start = out.len();
        out.push(0); // attributes
        write_varlong(out, timestamp_delta);
        write_varint(out, self.record_count);
        write_nullable(out, key);
        write_nullable(out, value);
        write_varint(out, headers.len() as i32);
        for (k, v) in headers {
            write_nullable(out, Some(k));
            write_nullable(out, *v);
        }
        debug_assert_eq!(out.len() - body_start, len);
        self.record_count += 1;
        self
    }

    /// Encodes the batch: compresses the records, writes the header and the CRC32C.
    pub fn build(&self) -> Result<Vec<u8>, RecordError> {
        self.clone().into_bytes()
    }

    /// [`Self::build`], consuming the builder: an uncompressed batch is its own buffer
    /// (no copy), a compressed one a new buffer with the compressed records.
    pub fn into_bytes(self) -> Result<Vec<u8>, RecordError> {
        let mut out = if self.compression == Compression::None {
            self.records
        } else {
            let payload = self
                .compression
                .compress(&self.records[BATCH_HEADER_BYTES..])?;
            let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + payload.len());
            out.resize(BATCH_HEADER_BYTES, 0);
            out.extend_from_slice(&payload);
            out
        };
        let header = BatchHeaderFields {
            base_offset: self.base_offset,
            partition_leader_epoch: self.partition_leader_epoch,
            compression: self.compression,
            record_count: self.record_count,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
        };
        header.write(&mut out);
        write_crc(&mut out);
        Ok(out)
    }
}

/// What the header of a built batch says (the builder's state without its records).
struct BatchHeaderFields {
    base_offset: Offset,
    partition_leader_epoch: LeaderEpoch,
    compression: Compression,
    record_count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchHeaderFields {
    /// Writes the header (CRC zero) into `batch`'s first [`BATCH_HEADER_BYTES`], the
    /// records already behind them.
    fn write(&self, batch: &mut [u8]) {
        let total = batch.len();
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES);
        out.extend_from_slice(&self.base_offset.0.to_be_bytes());
        out.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.0.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&[0; 4]); // crc, written last
        out.extend_from_slice(&i16::from(self.compression.id()).to_be_bytes());
        out.extend_from_slice(&(self.record_count - 1).max(0).to_be_bytes());
        let base_timestamp = self.base_timestamp.unwrap_or(-1);
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.record_count.to_be_bytes());
        debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);
        batch[..BATCH_HEADER_BYTES].copy_from_slice(&out);
    }
}

fn nullable_size(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_size(-1),
        Some(b) => varint_size(b.len() as i32) + b.len(),
    }
}

fn write_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => write_varint(out, -1),
        Some(b) => {
            write_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}
