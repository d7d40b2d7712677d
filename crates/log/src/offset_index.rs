//! The sparse offset index (`NNN.index`): entries of (offset - base offset: u32, file
//! position: u32), big-endian, as Kafka writes them. Each entry names the last offset of a
//! batch and the position where that batch starts, one entry per
//! `log.index.interval.bytes` of log.
//!
//! Invariants: offsets and positions strictly ascend; every position is a batch start.

use std::path::Path;

use sluice_record::Offset;

use crate::index_file::IndexFile;
use crate::{LogError, Result};

const ENTRY_BYTES: usize = 8;

pub struct OffsetIndex {
    base_offset: Offset,
    file: IndexFile<ENTRY_BYTES>,
}

/// One index entry: an offset and the file position of the batch that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetPosition {
    pub offset: Offset,
    pub position: u32,
}

impl OffsetIndex {
    pub fn open(
        path: &Path,
        base_offset: Offset,
        writable_max_bytes: Option<usize>,
    ) -> Result<Self> {
        Ok(OffsetIndex {
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

    fn decode(&self, e: [u8; ENTRY_BYTES]) -> OffsetPosition {
        let rel = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        OffsetPosition {
            offset: Offset(self.base_offset.0 + i64::from(rel)),
            position: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
        }
    }

    pub fn entry(&self, i: usize) -> OffsetPosition {
        self.decode(self.file.entry(i))
    }

    pub fn last_entry(&self) -> Option<OffsetPosition> {
        self.file.len().checked_sub(1).map(|i| self.entry(i))
    }

    /// Adds an entry. Offsets and positions must ascend (a violation is a bug).
    pub fn append(&mut self, offset: Offset, position: u32) {
        let rel = offset.0 - self.base_offset.0;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&rel),
            "offset {offset} outside segment"
        );
        if let Some(last) = self.last_entry() {
            assert!(
                offset > last.offset && position > last.position,
                "index must ascend"
            );
        }
        let mut e = [0u8; ENTRY_BYTES];
        e[..4].copy_from_slice(&(rel as u32).to_be_bytes());
        e[4..].copy_from_slice(&position.to_be_bytes());
        self.file.push(e);
    }

    /// The last entry whose offset is at most `target`, or (base offset, 0).
    pub fn lookup(&self, target: Offset) -> OffsetPosition {
        let base = self.base_offset.0;
        self.file
            .search(target.0, |e| {
                base + i64::from(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
            })
            .map_or(
                OffsetPosition {
                    offset: self.base_offset,
                    position: 0,
                },
                |i| self.entry(i),
            )
    }

    /// The last entry whose position is at most `position`, or (base offset, 0).
    pub fn lookup_by_position(&self, position: u32) -> OffsetPosition {
        self.file
            .search(i64::from(position), |e| {
                i64::from(u32::from_be_bytes([e[4], e[5], e[6], e[7]]))
            })
            .map_or(
                OffsetPosition {
                    offset: self.base_offset,
                    position: 0,
                },
                |i| self.entry(i),
            )
    }

    /// Removes entries for offsets at or after `offset`.
    pub fn truncate_to(&mut self, offset: Offset) {
        let keep = self.file.search(offset.0 - 1, |e| {
            self.base_offset.0 + i64::from(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
        });
        self.file.truncate_entries(keep.map_or(0, |i| i + 1));
    }

    pub fn truncate_all(&mut self) {
        self.file.truncate_entries(0);
    }

    /// Cheap check after a clean open (as Kafka's sanity check): entries ascend and point
    /// inside the log file.
    pub fn sanity_check(&self, log_size_bytes: u64) -> Result<()> {
        let corrupt = |reason: String| LogError::CorruptIndex {
            path: self.file.path().to_path_buf(),
            reason,
        };
        let mut prev: Option<OffsetPosition> = None;
        for i in 0..self.len() {
            let e = self.entry(i);
            if u64::from(e.position) >= log_size_bytes {
                return Err(corrupt(format!("entry {i} points past the log end")));
            }
            if let Some(p) = prev {
                if e.offset <= p.offset || e.position <= p.position {
                    return Err(corrupt(format!("entry {i} does not ascend")));
                }
            }
            prev = Some(e);
        }
        Ok(())
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
