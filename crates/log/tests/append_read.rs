//! Appends and reads: offsets, stamping, whole-batch regions, limits, bad input.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_log::{LogConfig, LogError};
use sluice_record::{Compression, LeaderEpoch, Offset, RecordBatch, RecordBatches, RecordError};

#[test]
fn leader_appends_assign_offsets_and_read_back_byte_for_byte() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for i in 0..300usize {
            let records = 1 + i % 7;
            let before = log.log_end_offset();
            let mut bytes = batch(
                records,
                T0 + i as i64 * 10,
                20 + (i * 13) % 200,
                Compression::None,
            );
            let info = log
                .append_as_leader(&mut bytes, LeaderEpoch(2), T0)
                .unwrap();
            assert_eq!(info.base_offset, before);
            assert_eq!(info.last_offset, Offset(before.0 + records as i64 - 1));
            assert_eq!(info.record_count, records as u64);
            assert_eq!(log.log_end_offset(), info.last_offset.next());
            let stamped = RecordBatch::parse(&bytes).unwrap();
            assert_eq!(stamped.base_offset(), before);
            assert_eq!(stamped.header().partition_leader_epoch, LeaderEpoch(2));
            model
                .batches
                .push((info.base_offset, info.last_offset, bytes));
        }
        assert!(log.segments().count() > 5, "{mode:?}: small segments roll");
        for max_bytes in [1, 100, 700, 5000, 1 << 20] {
            assert_eq!(
                read_all(&log, max_bytes),
                model.bytes(),
                "{mode:?} max_bytes {max_bytes}"
            );
        }
        // every offset reads back from the batch that holds it
        for offset in (0..log.log_end_offset().0).step_by(7) {
            let info = log
                .read(Offset(offset), 1 << 20, log.log_end_offset(), true)
                .unwrap();
            let bytes = info.region.unwrap().read_to_vec().unwrap();
            let expected = model.bytes_from(Offset(offset));
            assert_eq!(
                &expected[..bytes.len()],
                &bytes[..],
                "{mode:?} offset {offset}"
            );
        }
    }
}

#[test]
fn a_fetch_inside_a_batch_returns_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let mut model = Model::default();
    model.append_leader(&mut log, batch(5, T0, 10, Compression::None), 0);
    model.append_leader(&mut log, batch(5, T0, 10, Compression::Gzip), 0);
    let info = log
        .read(Offset(7), 1 << 20, log.log_end_offset(), true)
        .unwrap();
    let bytes = info.region.unwrap().read_to_vec().unwrap();
    assert_eq!(bytes, model.batches[1].2);
    assert_eq!(info.next_offset, Offset(10));
}

#[test]
fn read_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let mut model = Model::default();
    for i in 0..4 {
        model.append_leader(&mut log, batch(10, T0 + i, 100, Compression::None), 0);
    }
    let first_len = model.batches[0].2.len();
    let end = log.log_end_offset();
    // smaller than the first batch: it comes whole with min_one_batch, not at all without
    let info = log.read(Offset(0), 10, end, true).unwrap();
    assert_eq!(info.region.unwrap().length as usize, first_len);
    let info = log.read(Offset(0), 10, end, false).unwrap();
    assert!(info.region.is_none());
    assert_eq!(info.next_offset, Offset(0));
    // max_bytes holds whole batches only
    let info = log.read(Offset(0), first_len * 2 + 5, end, true).unwrap();
    assert_eq!(info.region.unwrap().length as usize, first_len * 2);
    assert_eq!(info.next_offset, Offset(20));
    // max_offset is exclusive and never splits a batch
    let info = log.read(Offset(0), 1 << 20, Offset(25), true).unwrap();
    assert_eq!(
        info.region.unwrap().read_to_vec().unwrap(),
        model.bytes_from(Offset(0))[..first_len * 2]
    );
    let info = log.read(Offset(0), 1 << 20, Offset(20), true).unwrap();
    assert_eq!(info.next_offset, Offset(20));
    let info = log.read(Offset(0), 1 << 20, Offset(9), true).unwrap();
    assert!(info.region.is_none());
    // at the log end: empty; outside the log: out of range
    let info = log.read(end, 1 << 20, end, true).unwrap();
    assert!(info.region.is_none());
    assert_eq!(info.log_end_offset, end);
    assert!(matches!(
        log.read(Offset(end.0 + 1), 100, end, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.read(Offset(-1), 100, end, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

fn with_crc_fixed(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32c(data: &[u8]) -> u32 {
    // CRC32C (Castagnoli), bitwise: independent of the crate under test.
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_input_leaves_the_log_untouched() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_message_bytes: 4096,
            ..small_config(mode)
        };
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        model.append_leader(&mut log, batch(3, T0, 10, Compression::None), 1);
        let good = batch(3, T0, 10, Compression::None);
        assert_eq!(
            crc32c(&good[21..]),
            u32::from_be_bytes(good[17..21].try_into().unwrap())
        );

        let mut bad_crc = good.clone();
        *bad_crc.last_mut().unwrap() ^= 0x40;
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        let mut bad_length = good.clone();
        bad_length[8..12].copy_from_slice(&(good.len() as i32).to_be_bytes());
        let mut bad_delta = good.clone();
        bad_delta[23..27].copy_from_slice(&5i32.to_be_bytes());
        let bad_delta = with_crc_fixed(bad_delta);
        let too_big = batch(1, T0, 5000, Compression::None);
        let mut good_then_bad = good.clone();
        good_then_bad.extend_from_slice(&bad_crc);
        let garbage = vec![0xab; 200];

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("crc", bad_crc),
            ("magic", bad_magic),
            ("length", bad_length),
            ("offset delta", bad_delta),
            ("too big", too_big),
            ("good then bad", good_then_bad),
            ("garbage", garbage),
            ("empty", Vec::new()),
            ("truncated", good[..good.len() - 1].to_vec()),
        ];
        let size_before = log.size_bytes();
        for (name, mut bytes) in cases {
            let copy = bytes.clone();
            assert!(
                log.append_as_leader(&mut bytes, LeaderEpoch(1), T0)
                    .is_err(),
                "{mode:?} {name}"
            );
            assert!(
                log.append_as_follower(&copy, T0).is_err(),
                "{mode:?} {name} (follower)"
            );
            assert_eq!(log.log_end_offset(), model.end(), "{mode:?} {name}");
            assert_eq!(log.size_bytes(), size_before, "{mode:?} {name}");
        }
        let err = log.append_as_leader(
            &mut batch(1, T0, 5000, Compression::None),
            LeaderEpoch(1),
            T0,
        );
        assert!(matches!(
            err,
            Err(LogError::InvalidRecord(RecordError::TooLarge { .. }))
        ));
        // the log still works and holds exactly what was appended
        model.append_leader(&mut log, good, 1);
        assert_eq!(read_all(&log, 1 << 20), model.bytes());
        drop(log);
        let log = reopen_unclean(dir.path(), &config);
        assert_eq!(read_all(&log, 1 << 20), model.bytes());
    }
}

#[test]
fn follower_appends_check_offsets_and_epochs() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let mut leader = open(leader_dir.path(), &config);
    let mut follower = open(follower_dir.path(), &config);
    let mut model = Model::default();
    model.append_leader(&mut leader, batch(4, T0, 10, Compression::None), 3);
    model.append_leader(&mut leader, batch(2, T0, 10, Compression::Lz4), 5);
    // replicate the leader's bytes as they are
    let info = leader
        .read(Offset(0), 1 << 20, leader.log_end_offset(), true)
        .unwrap();
    let bytes = info.region.unwrap().read_to_vec().unwrap();
    // not starting at the follower's log end offset
    let second = model.batches[1].2.clone();
    assert!(matches!(
        follower.append_as_follower(&second, T0),
        Err(LogError::UnexpectedAppendOffset { .. })
    ));
    let appended = follower.append_as_follower(&bytes, T0).unwrap();
    assert_eq!(appended.base_offset, Offset(0));
    assert_eq!(appended.last_offset, Offset(5));
    assert_eq!(read_all(&follower, 1 << 20), read_all(&leader, 1 << 20));
    assert_eq!(
        follower.leader_epochs().entries(),
        leader.leader_epochs().entries()
    );
    // an older epoch than the latest is refused
    let mut old = batch(1, T0, 1, Compression::None);
    sluice_record::stamp_base_offset(&mut old, Offset(6)).unwrap();
    sluice_record::stamp_partition_leader_epoch(&mut old, LeaderEpoch(4)).unwrap();
    assert!(matches!(
        follower.append_as_follower(&old, T0),
        Err(LogError::EpochRegression { .. })
    ));
    assert!(matches!(
        leader.append_as_leader(&mut batch(1, T0, 1, Compression::None), LeaderEpoch(4), T0),
        Err(LogError::EpochRegression { .. })
    ));
    assert_eq!(follower.log_end_offset(), Offset(6));
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut log = open(dir.path(), &config);
        // 100 batches of 5 records; record k has timestamp T0 + 10*k; some compressed
        for i in 0..100i64 {
            let codec = if i % 3 == 0 {
                Compression::Zstd
            } else {
                Compression::None
            };
            let mut b = sluice_record::BatchBuilder::new(codec);
            for j in 0..5 {
                let k = i * 5 + j;
                b.append(T0 + 10 * k, None, Some(&[7u8; 60]), &[]);
            }
            log.append_as_leader(&mut b.build().unwrap(), LeaderEpoch(0), T0)
                .unwrap();
        }
        assert!(log.segments().count() > 3);
        for k in [0i64, 1, 4, 5, 17, 250, 333, 499] {
            assert_eq!(
                log.offset_for_timestamp(T0 + 10 * k).unwrap(),
                Some((T0 + 10 * k, Offset(k))),
                "{mode:?} {k}"
            );
            if k > 0 {
                assert_eq!(
                    log.offset_for_timestamp(T0 + 10 * k - 3).unwrap(),
                    Some((T0 + 10 * k, Offset(k)))
                );
            }
        }
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((T0, Offset(0))));
        assert_eq!(log.offset_for_timestamp(T0 + 10 * 499 + 1).unwrap(), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_match_the_model(
        sizes in proptest::collection::vec((1usize..12, 0usize..400), 1..120),
        reads in proptest::collection::vec((any::<u16>(), 1usize..6000, any::<u16>()), 1..40),
        mmap in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(if mmap { MODES[1] } else { MODES[0] });
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for (i, (records, value_bytes)) in sizes.iter().enumerate() {
            model.append_leader(&mut log, batch(*records, T0 + i as i64, *value_bytes, Compression::None), 0);
        }
        let end = log.log_end_offset().0;
        for (from, max_bytes, bound) in reads {
            let from = Offset(i64::from(from) % end);
            let max_offset = Offset(i64::from(bound) % (end + 1));
            let info = log.read(from, max_bytes, max_offset, true).unwrap();
            let bytes = info.region.map(|r| r.read_to_vec().unwrap()).unwrap_or_default();
            // expected: batches from the one holding `from`, whole, below max_offset, within
            // max_bytes (the first may exceed it), all in one segment
            let segment_base = log.segments().map(|s| s.base_offset()).filter(|b| *b <= from).max().unwrap();
            let segment_end = log.segments().map(|s| s.base_offset()).filter(|b| *b > from).min().unwrap_or(Offset(i64::MAX));
            let mut expected = Vec::new();
            for (base, last, b) in &model.batches {
                if *last < from || *base < segment_base { continue; }
                if *base >= segment_end || *last >= max_offset { break; }
                if !expected.is_empty() && expected.len() + b.len() > max_bytes { break; }
                expected.extend_from_slice(b);
            }
            prop_assert_eq!(bytes.len(), expected.len());
            prop_assert!(bytes == expected);
            let batches: Vec<_> = RecordBatches::new(&bytes, usize::MAX).collect::<Result<_, _>>().unwrap();
            if let Some(last) = batches.last() {
                prop_assert_eq!(info.next_offset, last.last_offset().next());
            } else {
                prop_assert_eq!(info.next_offset, from);
            }
        }
    }
}
