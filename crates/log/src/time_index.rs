//! The sparse time index (`NNN.timeindex`): entries of (max timestamp so far: i64, offset -
//! base offset: u32), big-endian, as Kafka writes them. An entry says "every record before
//! this offset has a timestamp at most this"; entries are added with the offset index and
//! once more when the segment is sealed, so the last entry holds the segment's largest
//! timestamp.
//!
//! Invariants: timestamps strictly ascend; offsets never descend.

use std::path::Path;

use sluice_record::Offset;

use crate::index_file::IndexFile;
use crate::Result;

const ENTRY_BYTES: usize = 12;

pub struct TimeIndex {
    base_offset: Offset,
    file: IndexFile<ENTRY_BYTES>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: Offset,
}

impl TimeIndex {
    pub fn open(
        path: &Path,
        base_offset: Offset,
        writable_max_bytes: Option<usize>,
    ) -> Result<Self> {
        Ok(TimeIndex {
            base_offset,
            file: IndexFile::open(path, writable_max_bytes)?,
        })
    }

    pub fn len(&self) -> usize {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.file.is_full()
    }

    fn decode(&self, e: [u8; ENTRY_BYTES]) -> TimestampOffset {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        TimestampOffset {
            timestamp: i64::from_be_bytes(ts),
            offset: Offset(
                self.base_offset.0 + i64::from(u32::from_be_bytes([e[8], e[9], e[10], e[11]])),
            ),
        }
    }

    pub fn entry(&self, i: usize) -> TimestampOffset {
        self.decode(self.file.entry(i))
    }

    pub fn last_entry(&self) -> Option<TimestampOffset> {
        self.file.len().checked_sub(1).map(|i| self.entry(i))
    }

    /// Adds an entry if `timestamp` is newer than the last one and there is room.
    pub fn maybe_append(&mut self, timestamp: i64, offset: Offset) {
        if self.file.is_full() {
            return;
        }
        if let Some(last) = self.last_entry() {
            if timestamp <= last.timestamp {
                return;
            }
            assert!(offset >= last.offset, "time index offsets must not descend");
        }
        let rel = offset.0 - self.base_offset.0;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&rel),
            "offset {offset} outside segment"
        );
        let mut e = [0u8; ENTRY_BYTES];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&(rel as u32).to_be_bytes());
        self.file.push(e);
    }

    /// The last entry with a timestamp at most `target`, or (-1, base offset).
    pub fn lookup(&self, target: i64) -> TimestampOffset {
        self.file
            .search(target, |e| {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&e[..8]);
                i64::from_be_bytes(ts)
            })
            .map_or(
                TimestampOffset {
                    timestamp: -1,
                    offset: self.base_offset,
                },
                |i| self.entry(i),
            )
    }

    /// Removes entries for offsets at or after `offset`.
    pub fn truncate_to(&mut self, offset: Offset) {
        let mut keep = self.len();
        while keep > 0 && self.entry(keep - 1).offset >= offset {
            keep -= 1;
        }
        self.file.truncate_entries(keep);
    }

    pub fn truncate_all(&mut self) {
        self.file.truncate_entries(0);
    }

    pub fn trim(&mut self) -> Result<()> {
        self.file.trim()
    }

    /// Reserves disk for the next `entries` entries (see `IndexFile::reserve`).
    pub fn reserve(&mut self, entries: usize) -> Result<()> {
        self.file.reserve(entries)
    }

    pub fn make_writable(&mut self, max_bytes: usize) -> Result<()> {
        self.file.make_writable(max_bytes)
    }

    pub(crate) fn durable_path(&self) -> std::path::PathBuf {
        self.file.durable_path()
    }

    pub fn flush(&self) -> Result<()> {
        self.file.flush()
    }

    pub fn delete(self) -> Result<()> {
        self.file.delete()
    }
}
