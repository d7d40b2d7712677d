//! The records inside a batch: decoded lazily from (decompressed) record bytes.
//!
//! A record is: length varint, attributes i8, timestamp delta varlong, offset delta
//! varint, key (varint length, -1 = null), value (same), header count varint, then per
//! header a key (varint length, UTF-8) and a value (varint length, -1 = null).
//! Decoding never reads outside the record's own length and never panics.

use std::borrow::Cow;

use crate::limits::MAX_HEADERS_PER_RECORD;
use crate::varint::{read_varint, read_varlong};
use crate::{BatchHeader, Offset, RecordError};

/// A record header: a key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// One decoded record with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: Offset,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
}

/// The record bytes of one batch (borrowed when uncompressed, owned when decompressed).
#[derive(Debug, Clone)]
pub struct Records<'a> {
    data: Cow<'a, [u8]>,
    record_count: i32,
    base_offset: Offset,
    base_timestamp: i64,
    log_append_time: Option<i64>,
}

impl<'a> Records<'a> {
    pub(crate) fn new(data: Cow<'a, [u8]>, header: &BatchHeader) -> Self {
        let log_append_time = match header.timestamp_type() {
            crate::TimestampType::LogAppendTime => Some(header.max_timestamp),
            crate::TimestampType::CreateTime => None,
        };
        Records {
            data,
            record_count: header.record_count,
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            log_append_time,
        }
    }

    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.data,
            remaining: self.record_count,
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
            log_append_time: self.log_append_time,
        }
    }

    /// Decodes every record, failing on the first corrupt one or on leftover bytes.
    pub fn to_vec(&self) -> Result<Vec<Record<'_>>, RecordError> {
        let mut iter = self.iter();
        let records = iter.by_ref().collect::<Result<Vec<_>, _>>()?;
        if !iter.rest.is_empty() {
            return Err(RecordError::CorruptRecord(
                "bytes left after the last record",
            ));
        }
        Ok(records)
    }
}

/// Iterates over the records of a batch. Yields at most `record_count` items and stops
/// after the first error.
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: i32,
    base_offset: Offset,
    base_timestamp: i64,
    log_append_time: Option<i64>,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let result = self.decode_one();
        if result.is_err() {
            self.remaining = 0;
        }
        Some(result)
    }
}

impl<'a> RecordIter<'a> {
    fn decode_one(&mut self) -> Result<Record<'a>, RecordError> {
        let (length, used) = read_varint(self.rest)?;
        let length = usize::try_from(length)
            .map_err(|_| RecordError::CorruptRecord("negative record length"))?;
        let body = self
            .rest
            .get(used..used + length)
            .ok_or(RecordError::CorruptRecord(
                "record length runs past the batch",
            ))?;
        self.rest = &self.rest[used + length..];

        let mut cur = Cursor { buf: body };
        let _attributes = cur.take(1)?;
        let timestamp_delta = cur.varlong()?;
        let offset_delta = cur.varint()?;
        let key = cur.nullable_bytes()?;
        let value = cur.nullable_bytes()?;
        let header_count = cur.varint()?;
        let header_count = usize::try_from(header_count)
            .ok()
            .filter(|&n| n <= MAX_HEADERS_PER_RECORD)
            .ok_or(RecordError::CorruptRecord("invalid header count"))?;
        let mut headers = Vec::with_capacity(header_count.min(cur.buf.len()));
        for _ in 0..header_count {
            let key = cur
                .nullable_bytes()?
                .ok_or(RecordError::CorruptRecord("null header key"))?;
            let value = cur.nullable_bytes()?;
            headers.push(Header { key, value });
        }
        if !cur.buf.is_empty() {
            return Err(RecordError::CorruptRecord("bytes left inside a record"));
        }
        let timestamp = self
            .log_append_time
            .unwrap_or(self.base_timestamp.wrapping_add(timestamp_delta));
        Ok(Record {
            offset: Offset(self.base_offset.0 + i64::from(offset_delta)),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::CorruptRecord("field runs past the record"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<i32, RecordError> {
        let (v, used) = read_varint(self.buf)?;
        self.buf = &self.buf[used..];
        Ok(v)
    }

    fn varlong(&mut self) -> Result<i64, RecordError> {
        let (v, used) = read_varlong(self.buf)?;
        self.buf = &self.buf[used..];
        Ok(v)
    }

    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, RecordError> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(RecordError::CorruptRecord("negative field length"))
            };
        }
        self.take(len as usize).map(Some)
    }
}
