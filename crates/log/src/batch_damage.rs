//! Finding damaged batches in bytes already in a log or fetched for one: the whole, valid
//! batches before the first damaged one, and where that one starts. A batch is damaged
//! when its length, magic or CRC32C fails its check, or when a header field the CRC does
//! not cover disagrees with the log: its base offset must follow the batch before it
//! (offsets are dense), and its partition leader epoch must be the one the log's
//! leader-epoch cache gives its offset (checked when the caller passes the cache). A clean restart loads segments without a CRC scan (as
//! Kafka does), so damage on disk is found here: by a follower checking what it fetched,
//! by a leader checking what it serves (followers and consumers) the first time, and by
//! the background scrub.
//!
//! The offset reported is where the damage starts as far as intact data can tell: one
//! past the last valid batch, or (when the first batch is damaged, and its header may be
//! too) the lower of its header's base offset and the caller's bound, never negative.

use std::os::unix::fs::FileExt;

use sluice_record::{
    BatchHeader, Offset, RecordBatch, RecordBatches, RecordError, BATCH_HEADER_BYTES,
};

use crate::file_records::FileRegion;
use crate::leader_epoch::{epoch_for_offset, EpochEntry};

/// A batch that failed its checks.
#[derive(Debug)]
pub struct Damage {
    /// Where the damaged batch starts (see the module comment).
    pub offset: Offset,
    pub error: RecordError,
}

/// Splits a record set at its first batch that fails its checks: the whole batches
/// before it, and the damage. `first_offset_at_most` bounds the first batch's base offset
/// (the fetch offset of the read that returned the set). Leader epochs are not checked:
/// the set is not in a log yet.
pub fn split_at_damage(records: &[u8], first_offset_at_most: Offset) -> (&[u8], Option<Damage>) {
    let (valid, _, damage) = scan(records, first_offset_at_most, &[]);
    (&records[..valid], damage)
}

/// A batch's header fields the CRC does not cover, against the log: `next` is where the
/// batch before it ended (None for the first, which starts at or below
/// `first_offset_at_most`).
fn check_unprotected_fields<'a>(
    batch: RecordBatch<'a>,
    next: Option<Offset>,
    first_offset_at_most: Offset,
    leader_epochs: &[EpochEntry],
) -> Result<RecordBatch<'a>, RecordError> {
    let h = batch.header();
    let expected = next.unwrap_or(first_offset_at_most);
    if next.map_or(h.base_offset > expected, |n| h.base_offset != n) {
        return Err(RecordError::BaseOffsetOutOfSequence {
            expected: expected.0,
            found: h.base_offset.0,
        });
    }
    match epoch_for_offset(leader_epochs, h.base_offset) {
        Some(epoch) if epoch != h.partition_leader_epoch => Err(RecordError::LeaderEpochMismatch {
            base_offset: h.base_offset.0,
            found: h.partition_leader_epoch.0,
            expected: epoch.0,
        }),
        _ => Ok(batch),
    }
}

/// (valid bytes, the offset after them, the damage).
fn scan(
    records: &[u8],
    first_offset_at_most: Offset,
    leader_epochs: &[EpochEntry],
) -> (usize, Option<Offset>, Option<Damage>) {
    let mut valid = 0usize;
    let mut next = None;
    for batch in RecordBatches::new(records, usize::MAX) {
        let batch = batch
            .and_then(|b| check_unprotected_fields(b, next, first_offset_at_most, leader_epochs));
        match batch {
            Ok(b) => {
                valid += b.size_bytes();
                next = Some(b.header().next_offset());
            }
            Err(error) => {
                let offset = next.unwrap_or_else(|| {
                    BatchHeader::parse(&records[valid..])
                        .map_or(first_offset_at_most, |h| {
                            h.base_offset.min(first_offset_at_most)
                        })
                        .max(Offset::ZERO)
                });
                return (valid, next, Some(Damage { offset, error }));
            }
        }
    }
    (valid, next, None)
}

/// What checking (part of) a region of a segment file found.
#[derive(Debug)]
pub struct RegionCheck {
    /// The bytes from the region's start that are whole, valid batches.
    pub valid_bytes: u64,
    /// The offset after them (the bound passed in when there are none).
    pub next_offset: Offset,
    pub damage: Option<Damage>,
}

/// Checks the batches at the start of `region` (which starts at a batch) that fit in about
/// `chunk_bytes` (a batch larger than that is read whole): one read. `valid_bytes` is 0
/// only with damage or an empty region. `first_offset_at_most` as in [`split_at_damage`];
/// `leader_epochs`, the log's leader-epoch cache entries when the region was taken.
pub fn check_chunk(
    region: &FileRegion,
    first_offset_at_most: Offset,
    leader_epochs: &[EpochEntry],
    chunk_bytes: usize,
) -> std::io::Result<RegionCheck> {
    let mut buf =
        vec![0u8; (chunk_bytes.max(BATCH_HEADER_BYTES) as u64).min(region.length) as usize];
    region.file().read_exact_at(&mut buf, region.position)?;
    if let Ok(h) = BatchHeader::parse(&buf) {
        let size = h.total_size();
        if size > buf.len() && size as u64 <= region.length {
            // a batch larger than the chunk: read it whole
            buf.resize(size, 0);
            region.file().read_exact_at(&mut buf, region.position)?;
        }
    }
    // whole batches only: one cut short by the chunk's end is for the next read; one cut
    // short by the region's end (or with a damaged header) is damage
    let whole = match whole_batches_len(&buf) {
        0 => buf.len(),
        n if buf.len() as u64 == region.length => buf.len().max(n),
        n => n,
    };
    let (valid, next, damage) = scan(&buf[..whole], first_offset_at_most, leader_epochs);
    Ok(RegionCheck {
        valid_bytes: valid as u64,
        next_offset: next.unwrap_or(first_offset_at_most),
        damage,
    })
}

/// Checks every batch of `region`, one [`check_chunk`] after another.
pub fn check_region(
    region: &FileRegion,
    first_offset_at_most: Offset,
    leader_epochs: &[EpochEntry],
    chunk_bytes: usize,
) -> std::io::Result<RegionCheck> {
    let mut checked = 0u64;
    let mut bound = first_offset_at_most;
    while checked < region.length {
        let chunk = check_chunk(&region.skip(checked), bound, leader_epochs, chunk_bytes)?;
        checked += chunk.valid_bytes;
        bound = chunk.next_offset;
        if chunk.damage.is_some() || chunk.valid_bytes == 0 {
            return Ok(RegionCheck {
                valid_bytes: checked,
                next_offset: bound,
                damage: chunk.damage,
            });
        }
    }
    Ok(RegionCheck {
        valid_bytes: checked,
        next_offset: bound,
        damage: None,
    })
}

/// The length of the whole batches at the start of `buf`, by their headers' sizes.
fn whole_batches_len(buf: &[u8]) -> usize {
    let mut at = 0usize;
    while let Ok(h) = BatchHeader::parse(&buf[at..]) {
        let size = h.total_size();
        if size == 0 || at + size > buf.len() {
            break;
        }
        at += size;
    }
    at
}
