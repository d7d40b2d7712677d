//! Builds RecordBatch v2 bytes: for clients, tools, tests and benchmarks. The broker never
//! builds batches on the data path; it stores what producers built.

use crate::batch::{write_crc, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2};
use crate::varint::{varint_size, write_varint, write_varlong};
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
    records: Vec<u8>,
    scratch: Vec<u8>,
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
            records: Vec::new(),
            scratch: Vec::new(),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
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

    /// Bytes of record data so far (before compression).
    pub fn records_size_bytes(&self) -> usize {
        self.records.len()
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
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // attributes
        write_varlong(body, timestamp.wrapping_sub(base_timestamp));
        write_varint(body, self.record_count);
        write_nullable(body, key);
        write_nullable(body, value);
        write_varint(body, headers.len() as i32);
        for (k, v) in headers {
            write_nullable(body, Some(k));
            write_nullable(body, *v);
        }
        let len = body.len() as i32;
        self.records.reserve(varint_size(len) + body.len());
        write_varint(&mut self.records, len);
        self.records.extend_from_slice(body);
        self.record_count += 1;
        self
    }

    /// Encodes the batch: compresses the records, writes the header and the CRC32C.
    pub fn build(&self) -> Result<Vec<u8>, RecordError> {
        let payload = self.compression.compress(&self.records)?;
        let total = BATCH_HEADER_BYTES + payload.len();
        let mut out = Vec::with_capacity(total);
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
        out.extend_from_slice(&payload);
        write_crc(&mut out);
        Ok(out)
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
