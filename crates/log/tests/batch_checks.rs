//! Checking stored batches for damage: which bytes a clean restart leaves unchecked, what
//! reads and the scrub are told to check, and the chunked check itself (chunk boundaries,
//! batches larger than a chunk, damage in the middle, a tail cut short).

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use sluice_log::{check_chunk, check_region, AppendMode, Log};
use sluice_record::{Compression, Offset};

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

    // after a crash the recovered segments were checked whole
    drop(log);
    let log = reopen_unclean(dir.path(), &config);
    let read = log
        .read(Offset::ZERO, 1 << 20, Offset(i64::MAX), true)
        .unwrap();
    assert!(!read.unchecked);
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
    let regions = log.scrub_regions();
    assert_eq!(regions.len(), segments.len());
    for (r, (base, size)) in regions.iter().zip(&segments) {
        assert_eq!(
            (r.segment_base, r.region.position, r.region.length),
            (*base, 0, *size)
        );
        let check = check_region(&r.region, r.first_offset_at_most, 1000).unwrap();
        assert!(check.damage.is_none());
        assert_eq!(check.valid_bytes, *size);
        log.mark_checked(r.segment_base, 0, check.valid_bytes);
    }
    // checked: the active segment drops out; sealed ones are read again every pass
    let regions = log.scrub_regions();
    assert_eq!(regions.len(), segments.len() - 1);
    assert!(regions
        .iter()
        .all(|r| r.segment_base != segments.last().unwrap().0));
}

#[test]
fn a_check_stops_at_the_first_damaged_batch_wherever_chunks_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = reopened(dir.path(), 6);
    let region = log.segments().next().unwrap().whole_region();
    let batch_bytes = region.length / 6;
    for chunk in [
        1,
        100,
        batch_bytes as usize,
        batch_bytes as usize + 7,
        1 << 20,
    ] {
        let check = check_region(&region, Offset::ZERO, chunk).unwrap();
        assert!(check.damage.is_none(), "chunk {chunk}");
        assert_eq!(check.valid_bytes, region.length);
        assert_eq!(check.next_offset, Offset(18));
    }
    // a chunk smaller than a batch still reads one whole batch
    let first = check_chunk(&region, Offset::ZERO, 10).unwrap();
    assert_eq!(first.valid_bytes, batch_bytes);
    assert_eq!(first.next_offset, Offset(3));

    // a byte flips in the fourth batch's records
    let at = region.position + 4 * batch_bytes - 5;
    let mut byte = [0u8];
    region.file().read_exact_at(&mut byte, at).unwrap();
    region.file().write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    for chunk in [1, 100, batch_bytes as usize, 1 << 20] {
        let check = check_region(&region, Offset::ZERO, chunk).unwrap();
        assert_eq!(check.valid_bytes, 3 * batch_bytes, "chunk {chunk}");
        assert_eq!(check.damage.unwrap().offset, Offset(9), "chunk {chunk}");
    }
    // damage in the first batch checked: the bound says where it starts at most
    let check = check_region(&region.skip(3 * batch_bytes), Offset(9), 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 0);
    assert_eq!(check.damage.unwrap().offset, Offset(9));

    // a region cut short inside a batch: the cut batch is damage
    let mut cut = region.clone();
    cut.length = 2 * batch_bytes + 20;
    let check = check_region(&cut, Offset::ZERO, 1 << 20).unwrap();
    assert_eq!(check.valid_bytes, 2 * batch_bytes);
    assert_eq!(check.damage.unwrap().offset, Offset(6));
}
