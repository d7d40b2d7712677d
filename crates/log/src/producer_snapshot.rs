//! Producer-state snapshot files: `<offset>.snapshot` beside the segments (Kafka's name),
//! the [`ProducerStateManager`] as it stood when the log ended at `offset`. Written at each
//! segment roll and on a clean close, so a restart replays only the log after the newest
//! one instead of the whole log.
//!
//! Format (big-endian): magic `SLPS`, version u16 (1), CRC32C u32 of everything after it,
//! producer count u32, then per producer: id i64, epoch i16, last timestamp i64, batch count
//! u8, and per batch first sequence i32, last sequence i32, last offset i64, offset delta
//! i32, timestamp i64. A file that fails any check is never trusted: the caller deletes it
//! and rebuilds from an older snapshot or from the log itself.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use sluice_record::Offset;

use crate::producer_state::{
    BatchMetadata, ProducerEntry, ProducerStateManager, MAX_CACHED_BATCHES,
};
use crate::{LogError, Result};

pub const SNAPSHOT_SUFFIX: &str = "snapshot";
const MAGIC: &[u8; 4] = b"SLPS";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 4 + 2 + 4;
const PRODUCER_BYTES: usize = 8 + 2 + 8 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 4 + 8;

pub fn snapshot_path(dir: &Path, offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.{SNAPSHOT_SUFFIX}", offset.0))
}

/// The offsets of the snapshot files in `dir`, ascending.
pub fn list_snapshots(dir: &Path) -> Result<Vec<Offset>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX))
            .and_then(|n| n.strip_suffix('.'))
        else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(offset) = stem.parse() {
                offsets.push(Offset(offset));
            }
        }
    }
    offsets.sort();
    Ok(offsets)
}

pub fn encode(state: &ProducerStateManager) -> Vec<u8> {
    let entries = state.entries_sorted();
    let batches: usize = entries.iter().map(|(_, e)| e.batches.len()).sum();
    let mut out = Vec::with_capacity(
        HEADER_BYTES + 4 + entries.len() * PRODUCER_BYTES + batches * BATCH_BYTES,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (producer_id, entry) in entries {
        out.extend_from_slice(&producer_id.to_be_bytes());
        out.extend_from_slice(&entry.epoch.to_be_bytes());
        out.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
        out.push(entry.batches.len() as u8);
        for b in &entry.batches {
            out.extend_from_slice(&b.first_seq.to_be_bytes());
            out.extend_from_slice(&b.last_seq.to_be_bytes());
            out.extend_from_slice(&b.last_offset.0.to_be_bytes());
            out.extend_from_slice(&b.offset_delta.to_be_bytes());
            out.extend_from_slice(&b.timestamp_ms.to_be_bytes());
        }
    }
    let crc = sluice_record::crc32c(&out[HEADER_BYTES..]);
    out[6..10].copy_from_slice(&crc.to_be_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let end = self.at + N;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| format!("ends early at byte {}", self.at))?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }
}

/// Decodes a snapshot; every check (magic, version, CRC, lengths, batch order) must pass.
pub fn decode(bytes: &[u8]) -> std::result::Result<ProducerStateManager, String> {
    if bytes.len() < HEADER_BYTES + 4 || &bytes[..4] != MAGIC {
        return Err("not a producer snapshot".to_string());
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    let crc = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    if sluice_record::crc32c(&bytes[HEADER_BYTES..]) != crc {
        return Err("CRC mismatch".to_string());
    }
    let mut r = Reader {
        bytes,
        at: HEADER_BYTES,
    };
    let count = u32::from_be_bytes(r.take()?) as usize;
    let mut entries = Vec::with_capacity(count.min(bytes.len() / PRODUCER_BYTES));
    for _ in 0..count {
        let producer_id = i64::from_be_bytes(r.take()?);
        let epoch = i16::from_be_bytes(r.take()?);
        let last_timestamp_ms = i64::from_be_bytes(r.take()?);
        let [batch_count] = r.take()?;
        let batch_count = usize::from(batch_count);
        if batch_count == 0 || batch_count > MAX_CACHED_BATCHES || producer_id < 0 {
            return Err(format!("producer {producer_id}: {batch_count} batches"));
        }
        let mut batches = VecDeque::with_capacity(batch_count);
        for _ in 0..batch_count {
            let b = BatchMetadata {
                first_seq: i32::from_be_bytes(r.take()?),
                last_seq: i32::from_be_bytes(r.take()?),
                last_offset: Offset(i64::from_be_bytes(r.take()?)),
                offset_delta: i32::from_be_bytes(r.take()?),
                timestamp_ms: i64::from_be_bytes(r.take()?),
            };
            if batches
                .back()
                .is_some_and(|p: &BatchMetadata| p.last_offset >= b.last_offset)
            {
                return Err(format!("producer {producer_id}: batches out of order"));
            }
            batches.push_back(b);
        }
        entries.push((
            producer_id,
            ProducerEntry {
                epoch,
                batches,
                last_timestamp_ms,
            },
        ));
    }
    if r.at != bytes.len() {
        return Err(format!(
            "{} bytes after the last producer",
            bytes.len() - r.at
        ));
    }
    Ok(ProducerStateManager::from_entries(entries))
}

/// Writes the snapshot for `offset` (a temporary file renamed into place). With `sync` the
/// file and the directory are fsynced before it returns; without, [`sync_snapshot`] does it
/// later (a segment roll must not wait for a disk flush on the append path).
pub fn write_snapshot(
    dir: &Path,
    offset: Offset,
    state: &ProducerStateManager,
    sync: bool,
) -> Result<()> {
    crate::checkpoint::replace_file(&snapshot_path(dir, offset), &encode(state), sync)
}

/// fsyncs a snapshot written without `sync` (gone already is fine: a truncation or
/// retention deleted it).
pub fn sync_snapshot(dir: &Path, offset: Offset) -> Result<()> {
    crate::checkpoint::sync_if_present(&snapshot_path(dir, offset))
}

/// Reads and decodes the snapshot for `offset`.
pub fn read_snapshot(
    dir: &Path,
    offset: Offset,
) -> std::result::Result<ProducerStateManager, String> {
    let path = snapshot_path(dir, offset);
    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    decode(&bytes)
}

pub fn delete_snapshot(dir: &Path, offset: Offset) -> Result<()> {
    let path = snapshot_path(dir, offset);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::io(&path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer_state::ProducerBatch;

    fn state() -> ProducerStateManager {
        let mut s = ProducerStateManager::new();
        for id in 0..50i64 {
            for i in 0..(id % 7) as i32 + 1 {
                let b = ProducerBatch {
                    producer_id: id,
                    epoch: (id % 3) as i16,
                    first_seq: i * 2,
                    last_seq: i * 2 + 1,
                    offset_delta: 1,
                    max_timestamp: 1_000 + id,
                    is_transactional: false,
                    is_control: false,
                };
                s.update(&b, Offset(id * 100 + i64::from(i) * 2 + 1));
            }
        }
        s
    }

    #[test]
    fn a_snapshot_round_trips_and_any_damage_is_refused() {
        let s = state();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes).unwrap(), s);
        assert_eq!(
            decode(&encode(&ProducerStateManager::new())).unwrap().len(),
            0
        );
        for at in [0, 5, 7, 12, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {at} accepted");
        }
        for len in [0, 9, 14, bytes.len() - 1] {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn snapshots_are_listed_by_offset_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = state();
        write_snapshot(dir.path(), Offset(300), &s, false).unwrap();
        write_snapshot(dir.path(), Offset(20), &s, true).unwrap();
        std::fs::write(dir.path().join("junk.snapshot"), b"x").unwrap();
        assert_eq!(
            list_snapshots(dir.path()).unwrap(),
            vec![Offset(20), Offset(300)]
        );
        sync_snapshot(dir.path(), Offset(300)).unwrap();
        assert_eq!(read_snapshot(dir.path(), Offset(300)).unwrap(), s);
        delete_snapshot(dir.path(), Offset(300)).unwrap();
        delete_snapshot(dir.path(), Offset(300)).unwrap();
        sync_snapshot(dir.path(), Offset(300)).unwrap();
        assert_eq!(list_snapshots(dir.path()).unwrap(), vec![Offset(20)]);
    }
}
