//! Checking stored batches for damage: which bytes a clean restart leaves unchecked, what
//! reads and the scrub are told to check, and the chunked check itself (chunk boundaries,
//! batches larger than a chunk, damage in the middle, a tail cut short).

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use sluice_log::{check_chunk, check_region, AppendMode, Log};
use sluice_record::{Compression, LeaderEpoch, Offset, RecordError};

/// A log of `batches` batches of 3 records, closed and reopened cleanly.
fn reopened(dir: &std::path::Path, batches: i64) -> Log {
    let config = small_config(AppendMode::Write);
    let mut log = open(dir, &config);
    for i in 0..batches {
        log.append_as_leader(
            &mut batch(3, T0 + i, 100, Compression::None),
            Default::default(),
            T0,
        )
        .unwrap();
    }
    log.close().unwrap();
    drop(log);
    open(dir, &config)
}

#[test]
fn appended_bytes_are_checked_and_loaded_ones_are_not_until_a_read_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(AppendMode::Write);
    let mut log = open(dir.path(), &config);
    log.append_as_leader(
        &mut batch(3, T0, 100, Compression::None),
        Default::default(),
        T0,
    )
    .unwrap();
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(
        !read.unchecked,
        "appends were checked before they were written"
    );
    log.close().unwrap();
    drop(log);

    let mut log = reopened(dir.path(), 0);
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(read.unchecked, "a clean restart loads without a CRC scan");
    let region = read.region.unwrap();
    log.mark_checked(read.segment_base, region.position, region.length);
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(!read.unchecked);

    // after a crash the recovered segments' CRCs were checked, but not the header fields
    // outside them: still unchecked, with the leader epochs to check them against
    drop(log);
    let log = reopen_unclean(dir.path(), &config);
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(read.unchecked);
    assert_eq!(read.leader_epochs, log.leader_epochs().entries());
    assert!(!read.leader_epochs.is_empty());
}

#[test]
fn the_scrub_covers_sealed_segments_whole_and_the_unchecked_part_of_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = reopened(dir.path(), 100);
    let segments: Vec<(Offset, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.size_bytes()))
        .collect();
    assert!(segments.len() > 2);
    let regions = log.scrub_regions().unwrap();
    assert_eq!(regions.len(), segments.len());
    for (r, (base, size)) in regions.iter().zip(&segments) {
        assert_eq!(
            (r.segment_base, r.region.position, r.region.length),
            (*base, 0, *size)
        );
        let check =
            check_region(&r.region, r.first_offset_at_most, &r.leader_epochs, 1000).unwrap();
        assert!(check.damage.is_none());
        assert_eq!(check.valid_bytes, *size);
        log.mark_checked(r.segment_base, 0, check.valid_bytes);
    }
    // checked: the active segment drops out; sealed ones are read again every pass
    let regions = log.scrub_regions().unwrap();
    assert_eq!(regions.len(), segments.len() - 1);
    assert!(regions
        .iter()
        .all(|r| r.segment_base != segments.last().unwrap().0));
}

#[test]
fn a_check_stops_at_the_first_damaged_batch_wherever_chunks_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = reopened(dir.path(), 6);
    let region = log.segments().next().unwrap().whole_region().unwrap();
    let batch_bytes = region.length / 6;
    for chunk in [
        1,
        100,
        batch_bytes as usize,
        batch_bytes as usize + 7,
        1 << 20,
    ] {
        let check = check_region(&region, Offset::ZERO, &[], chunk).unwrap();
        assert!(check.damage.is_none(), "chunk {chunk}");
        assert_eq!(check.valid_bytes, region.length);
        assert_eq!(check.next_offset, Offset(18));
    }
    // a chunk smaller than a batch still reads one whole batch
    let first = check_chunk(&region, Offset::ZERO, &[], 10).unwrap();
    assert_eq!(first.valid_bytes, batch_bytes);
    assert_eq!(first.next_offset, Offset(3));

    // a byte flips in the fourth batch's records
    let at = region.position + 4 * batch_bytes - 5;
    let mut byte = [0u8];
    region.file().read_exact_at(&mut byte, at).unwrap();
    region.file().write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    for chunk in [1, 100, batch_bytes as usize, 1 << 20] {
        let check = check_region(&region, Offset::ZERO, &[], chunk).unwrap();
        assert_eq!(check.valid_bytes, 3 * batch_bytes, "chunk {chunk}");
        assert_eq!(check.damage.unwrap().offset, Offset(9), "chunk {chunk}");
    }
    // damage in the first batch checked: the bound says where it starts at most
    let check = check_region(&region.skip(3 * batch_bytes), Offset(9), &[], 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 0);
    assert_eq!(check.damage.unwrap().offset, Offset(9));

    // a region cut short inside a batch: the cut batch is damage
    let mut cut = region.clone();
    cut.length = 2 * batch_bytes + 20;
    let check = check_region(&cut, Offset::ZERO, &[], 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 2 * batch_bytes);
    assert_eq!(check.damage.unwrap().offset, Offset(6));
}

/// The base offset and the partition leader epoch are outside a batch's CRC (a leader
/// stamps the epoch after the client computed it): a bit flipped there passes the CRC, so
/// the check holds them against the log. The chaos suite once read a record whose epoch 1
/// had become 65 (one bit), above records of epoch 1 after it.
#[test]
fn a_flipped_base_offset_or_leader_epoch_is_damage_though_the_crc_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(AppendMode::Write);
    let mut log = open(dir.path(), &config);
    for (i, epoch) in [1, 1, 1, 3, 3, 3].into_iter().enumerate() {
        log.append_as_leader(
            &mut batch(3, T0 + i as i64, 100, Compression::None),
            LeaderEpoch(epoch),
            T0,
        )
        .unwrap();
    }
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), &config);
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(read.unchecked);
    let epochs = read.leader_epochs.clone();
    let region = read.region.unwrap();
    let batch_bytes = region.length / 6;
    let intact = check_region(&region, Offset::ZERO, &epochs, 1 << 20).unwrap();
    assert!(intact.damage.is_none());
    assert_eq!(intact.valid_bytes, region.length);

    let flip = |at: u64, mask: u8| {
        let mut byte = [0u8];
        region.file().read_exact_at(&mut byte, at).unwrap();
        region.file().write_all_at(&[byte[0] ^ mask], at).unwrap();
    };
    // the second batch's epoch (bytes 12..16, big-endian): 1 becomes 65
    let epoch_low_byte = region.position + batch_bytes + 15;
    flip(epoch_low_byte, 0x40);
    let unaware = check_region(&region, Offset::ZERO, &[], 1 << 20).unwrap();
    assert!(unaware.damage.is_none(), "the CRC does not cover the epoch");
    for chunk in [1, batch_bytes as usize, 1 << 20] {
        let check = check_region(&region, Offset::ZERO, &epochs, chunk).unwrap();
        assert_eq!(check.valid_bytes, batch_bytes, "chunk {chunk}");
        let damage = check.damage.unwrap();
        assert_eq!(damage.offset, Offset(3));
        assert!(
            matches!(
                damage.error,
                RecordError::LeaderEpochMismatch {
                    base_offset: 3,
                    found: 65,
                    expected: 1
                }
            ),
            "{:?}",
            damage.error
        );
    }
    // the first batch of epoch 3 claiming epoch 1 is damage too
    flip(epoch_low_byte, 0x40);
    flip(region.position + 3 * batch_bytes + 15, 0x02);
    let check = check_region(&region, Offset::ZERO, &epochs, 1 << 20).unwrap();
    assert_eq!(check.damage.unwrap().offset, Offset(9));
    flip(region.position + 3 * batch_bytes + 15, 0x02);

    // the fifth batch's base offset (bytes 0..8): 12 becomes 12 + 256
    flip(region.position + 4 * batch_bytes + 6, 0x01);
    let check = check_region(&region, Offset::ZERO, &[], 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 4 * batch_bytes);
    let damage = check.damage.unwrap();
    assert_eq!(damage.offset, Offset(12));
    assert!(
        matches!(
            damage.error,
            RecordError::BaseOffsetOutOfSequence {
                expected: 12,
                found: 268
            }
        ),
        "{:?}",
        damage.error
    );
    // a first batch starting above where the read asked is damage as well
    let check = check_region(&region.skip(4 * batch_bytes), Offset(12), &[], 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 0);
    assert_eq!(check.damage.unwrap().offset, Offset(12));
}
