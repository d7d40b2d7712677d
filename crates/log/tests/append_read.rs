//! Appends and reads: offsets, stamping, positions, whole-batch regions, read limits, bad
//! input, follower appends, garbage, and lookup by timestamp. Every writing test runs in
//! both append modes and is checked against an in-memory model of what was appended.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_log::{AppendMode, LogConfig, LogError, HYBRID_MMAP_MAX_APPEND_BYTES};
use sluice_record::{Compression, LeaderEpoch, Offset, RecordBatch, RecordError};

/// ~300 batches of 1..7 records, 20..220-byte values, every fifth one compressed.
fn fill(log: &mut sluice_log::Log, model: &mut Model, batches: usize) {
    for i in 0..batches {
        let codec = if i % 5 == 4 {
            Compression::Gzip
        } else {
            Compression::None
        };
        let b = batch(1 + i % 7, T0 + i as i64 * 10, 20 + (i * 13) % 200, codec);
        model.append_leader(log, b, 2);
    }
}

#[test]
fn leader_appends_assign_offsets_stamp_epochs_and_report_positions() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), &small_config(mode));
        let mut model = Model::default();
        for i in 0..300usize {
            let records = 1 + i % 7;
            let before = log.log_end_offset();
            let codec = if i % 4 == 3 {
                Compression::Zstd
            } else {
                Compression::None
            };
            let ts = T0 + i as i64 * 10;
            let mut bytes = batch(records, ts, 20 + (i * 13) % 200, codec);
            // the producer's base offset and epoch are overwritten
            bytes = stamped(bytes, Offset(999_999), 77);
            let info = log
                .append_as_leader(&mut bytes, LeaderEpoch(2), T0)
                .unwrap();
            assert_eq!(info.base_offset, before, "{mode:?}");
            assert_eq!(info.last_offset, Offset(before.0 + records as i64 - 1));
            assert_eq!(info.record_count, records as u64);
            assert_eq!(info.size_bytes, bytes.len());
            assert_eq!(info.max_timestamp, ts + records as i64 - 1);
            assert_eq!(log.log_end_offset(), info.last_offset.next());
            let parsed = RecordBatch::parse(&bytes).unwrap();
            assert_eq!(parsed.base_offset(), before);
            assert_eq!(parsed.header().partition_leader_epoch, LeaderEpoch(2));
            let offsets: Vec<Offset> = record_offsets_and_timestamps(&bytes)
                .into_iter()
                .map(|r| r.0)
                .collect();
            let expected: Vec<Offset> = (0..records as i64).map(|k| Offset(before.0 + k)).collect();
            assert_eq!(offsets, expected, "record offsets follow the stamped base");
            // the position is where the stored bytes are, in the active segment's file
            let active = log.segments().last().unwrap();
            assert!(active.base_offset() <= before);
            let on_disk = std::fs::read(active.log_path()).unwrap();
            let at = info.position as usize;
            assert!(
                on_disk[at..at + bytes.len()] == bytes[..],
                "{mode:?} batch {i} position"
            );
            model.batches.push(Entry {
                base: info.base_offset,
                last: info.last_offset,
                bytes,
                position: info.position,
                max_timestamp: info.max_timestamp,
                epoch: LeaderEpoch(2),
            });
            model.end = log.log_end_offset();
        }
        assert!(log.segments().count() > 5, "{mode:?}: small segments roll");
        // the segments' files, back to back, are exactly the appended bytes
        let mut all = Vec::new();
        for s in log.segments() {
            all.extend(s.whole_region().unwrap().read_to_vec().unwrap());
        }
        assert!(all == model.bytes(), "{mode:?} segment files");
        assert_log_matches(&log, &model);
    }
}

#[test]
fn reads_span_index_entries_and_segment_boundaries() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), &small_config(mode));
        let mut model = Model::default();
        fill(&mut log, &mut model, 300);
        let sealed: Vec<_> = log.segments().collect();
        let sealed = &sealed[..sealed.len() - 1];
        assert!(sealed.len() >= 4, "{mode:?} several sealed segments");
        for s in sealed {
            assert!(
                s.offset_index().len() >= 5,
                "{mode:?} sparse index has entries"
            );
        }
        let bases: Vec<Offset> = log.segments().map(|s| s.base_offset()).collect();
        let end = model.end;
        // the last batch of each segment: a large read stops at the segment end, and the
        // next read starts the next segment
        for w in bases.windows(2) {
            let last_in_segment = Offset(w[1].0 - 1);
            let info = log.read(last_in_segment, 1 << 20, end, true).unwrap();
            assert_eq!(info.next_offset, w[1], "{mode:?}");
            let info = log.read(w[1], 1 << 20, end, true).unwrap();
            assert_eq!(
                info.region.unwrap().position,
                0,
                "{mode:?} a segment starts at 0"
            );
        }
        // a grid of reads: from every batch, limits just around batch boundaries
        for (i, b) in model.batches.iter().enumerate() {
            let from = [b.base, b.last];
            let later = &model.batches[i..(i + 4).min(model.batches.len())];
            let mut sizes = vec![1usize, 1 << 20];
            let mut sum = 0;
            for l in later {
                sum += l.bytes.len();
                sizes.extend([sum - 1, sum, sum + 1]);
            }
            let mut bounds = vec![end, Offset(end.0 + 100)];
            for l in later {
                bounds.extend([l.last, l.last.next(), l.base]);
            }
            for f in from {
                for &max_bytes in &sizes {
                    for &bound in &bounds {
                        check_read(&log, &model, f, max_bytes, bound, i % 2 == 0);
                    }
                }
            }
        }
    }
}

#[test]
fn a_fetch_inside_a_batch_returns_the_whole_batch() {
    for mode in MODES {
        for codec in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path(), &small_config(mode));
            let mut model = Model::default();
            model.append_leader(&mut log, batch(5, T0, 10, codec), 0);
            model.append_leader(&mut log, batch(5, T0, 10, codec), 0);
            for offset in 5..10 {
                let info = log.read(Offset(offset), 1 << 20, model.end, true).unwrap();
                let region = info.region.unwrap();
                assert_eq!(region.position, model.batches[1].position);
                assert_eq!(region.read_to_vec().unwrap(), model.batches[1].bytes);
                assert_eq!(info.next_offset, Offset(10));
            }
            let info = log.read(Offset(3), 1 << 20, model.end, true).unwrap();
            assert_eq!(info.region.unwrap().read_to_vec().unwrap(), model.bytes());
        }
    }
}

#[test]
fn read_limits_hold() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            index_interval_bytes: 1,
            ..small_config(mode)
        };
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for i in 0..4 {
            model.append_leader(&mut log, batch(10, T0 + i, 30, Compression::None), 0);
        }
        let len = |i: usize| model.batches[i].bytes.len();
        let bytes_of = |range: std::ops::Range<usize>| -> Vec<u8> {
            model.batches[range]
                .iter()
                .flat_map(|b| b.bytes.clone())
                .collect()
        };
        let end = log.log_end_offset();
        assert_eq!(end, Offset(40));
        // smaller than the first batch: it comes whole with min_one_batch, not at all without
        let info = log.read(Offset(0), 10, end, true).unwrap();
        assert_eq!(
            info.region.unwrap().read_to_vec().unwrap(),
            bytes_of(0..1),
            "{mode:?}"
        );
        assert_eq!(info.next_offset, Offset(10));
        let info = log.read(Offset(0), len(0) - 1, end, false).unwrap();
        assert!(info.region.is_none(), "{mode:?}");
        assert_eq!(info.next_offset, Offset(0));
        // exactly one batch fits without min_one_batch
        let info = log.read(Offset(0), len(0), end, false).unwrap();
        assert_eq!(info.region.unwrap().read_to_vec().unwrap(), bytes_of(0..1));
        // max_bytes holds whole batches only
        for extra in [0, 1, len(2) - 1] {
            let info = log
                .read(Offset(0), len(0) + len(1) + extra, end, true)
                .unwrap();
            assert_eq!(
                info.region.unwrap().read_to_vec().unwrap(),
                bytes_of(0..2),
                "{mode:?}"
            );
            assert_eq!(info.next_offset, Offset(20));
        }
        let info = log.read(Offset(15), len(1) + len(2), end, false).unwrap();
        assert_eq!(info.region.unwrap().read_to_vec().unwrap(), bytes_of(1..3));
        // max_offset is exclusive and never splits a batch
        for (bound, batches, next) in [
            (25, 2, 20),
            (20, 2, 20),
            (19, 1, 10),
            (40, 4, 40),
            (39, 3, 30),
        ] {
            let info = log.read(Offset(0), 1 << 20, Offset(bound), true).unwrap();
            assert_eq!(
                info.region.unwrap().read_to_vec().unwrap(),
                bytes_of(0..batches),
                "{mode:?} max_offset {bound}"
            );
            assert_eq!(info.next_offset, Offset(next));
        }
        for bound in [0, 1, 9] {
            let info = log.read(Offset(0), 1 << 20, Offset(bound), true).unwrap();
            assert!(info.region.is_none(), "{mode:?} max_offset {bound}");
            assert_eq!(info.next_offset, Offset(0));
        }
        // a max_offset past the log end is the log end
        let info = log.read(Offset(0), 1 << 20, Offset(1000), true).unwrap();
        assert_eq!(info.region.unwrap().read_to_vec().unwrap(), model.bytes());
        // at the log end: empty; outside the log: out of range
        let info = log.read(end, 1 << 20, end, true).unwrap();
        assert!(info.region.is_none());
        assert_eq!(info.next_offset, end);
        assert_eq!(
            (info.log_start_offset, info.log_end_offset),
            (Offset(0), end)
        );
        for bad in [
            Offset(end.0 + 1),
            Offset(i64::MAX),
            Offset(-1),
            Offset(i64::MIN),
        ] {
            match log.read(bad, 100, end, true) {
                Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset,
                    log_end_offset,
                }) => {
                    assert_eq!(
                        (offset, log_start_offset, log_end_offset),
                        (bad, Offset(0), end)
                    );
                }
                other => panic!("{mode:?} read at {bad}: {other:?}"),
            }
        }
    }
}

#[test]
fn an_empty_log_reads_empty() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), &small_config(mode));
        let info = log.read(Offset(0), 100, Offset(0), true).unwrap();
        assert!(info.region.is_none());
        assert_eq!(info.next_offset, Offset(0));
        assert!(matches!(
            log.read(Offset(1), 100, Offset(10), true),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    }
}

fn set_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn bad_input_leaves_the_log_untouched() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_message_bytes: 4096,
            segment_bytes: 16 * 1024,
            ..small_config(mode)
        };
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        model.append_leader(&mut log, batch(3, T0, 10, Compression::None), 1);
        model.append_leader(&mut log, batch(3, T0, 10, Compression::None), 1);
        let good = stamped(batch(3, T0, 10, Compression::None), model.end, 1);
        assert_eq!(
            crc32c(&good[21..]),
            u32::from_be_bytes(good[17..21].try_into().unwrap())
        );

        let mut bad_crc = good.clone();
        *bad_crc.last_mut().unwrap() ^= 0x40;
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        let mut too_long = good.clone();
        set_i32(&mut too_long, 8, good.len() as i32);
        let mut too_short = good.clone();
        set_i32(&mut too_short, 8, good.len() as i32 - 13);
        let mut below_minimum = good.clone();
        set_i32(&mut below_minimum, 8, 48);
        let mut negative_length = good.clone();
        set_i32(&mut negative_length, 8, -5);
        let mut delta_too_big = good.clone();
        set_i32(&mut delta_too_big, 23, 5);
        let delta_too_big = with_crc_fixed(delta_too_big);
        let mut delta_too_small = good.clone();
        set_i32(&mut delta_too_small, 23, 1);
        let delta_too_small = with_crc_fixed(delta_too_small);
        let mut no_records = good.clone();
        set_i32(&mut no_records, 57, 0);
        set_i32(&mut no_records, 23, 0);
        let no_records = with_crc_fixed(no_records);
        let mut unknown_codec = good.clone();
        unknown_codec[22] |= 0x07;
        let unknown_codec = with_crc_fixed(unknown_codec);
        let too_big = stamped(batch(1, T0, 5000, Compression::None), model.end, 1);
        let good_then_bad = [good.clone(), bad_crc.clone()].concat();
        let good_then_truncated = [good.clone(), good[..40].to_vec()].concat();
        let mut second = stamped(
            batch(3, T0, 10, Compression::None),
            Offset(model.end.0 + 3),
            1,
        );
        second[30] ^= 1;
        let good_then_corrupt_second = [good.clone(), second].concat();
        let many = stamped(batch(20, T0, 150, Compression::None), model.end, 1);
        let too_many_bytes: Vec<u8> = (0..6).flat_map(|_| many.clone()).collect();
        assert!(many.len() < 4096 && too_many_bytes.len() > 16 * 1024);

        type Check = fn(&LogError) -> bool;
        let crc: Check = |e| matches!(e, LogError::InvalidRecord(RecordError::CrcMismatch { .. }));
        let any: Check = |_| true;
        let delta: Check = |e| {
            matches!(
                e,
                LogError::InvalidRecord(RecordError::InvalidOffsetDelta { .. })
            )
        };
        // (name, bytes, leader error, whether a follower must refuse it too)
        let cases: Vec<(&str, Vec<u8>, Check, bool)> = vec![
            ("crc", bad_crc, crc, true),
            (
                "magic",
                bad_magic,
                |e| matches!(e, LogError::InvalidRecord(RecordError::UnsupportedMagic(1))),
                true,
            ),
            (
                "length past the end",
                too_long,
                |e| matches!(e, LogError::InvalidRecord(RecordError::Truncated { .. })),
                true,
            ),
            ("length short", too_short, any, true),
            (
                "length below minimum",
                below_minimum,
                |e| matches!(e, LogError::InvalidRecord(RecordError::LengthTooSmall(48))),
                true,
            ),
            (
                "negative length",
                negative_length,
                |e| matches!(e, LogError::InvalidRecord(RecordError::LengthTooSmall(-5))),
                true,
            ),
            ("offset delta too big", delta_too_big, delta, false),
            ("offset delta too small", delta_too_small, delta, true),
            ("no records", no_records, any, false),
            (
                "unknown codec",
                unknown_codec,
                |e| {
                    matches!(
                        e,
                        LogError::InvalidRecord(RecordError::UnknownCompression(7))
                    )
                },
                true,
            ),
            (
                "too big",
                too_big,
                |e| matches!(e, LogError::InvalidRecord(RecordError::TooLarge { .. })),
                true,
            ),
            ("good then bad", good_then_bad, crc, true),
            (
                "good then truncated",
                good_then_truncated,
                |e| matches!(e, LogError::InvalidRecord(RecordError::Truncated { .. })),
                true,
            ),
            (
                "good then corrupt second",
                good_then_corrupt_second,
                crc,
                true,
            ),
            (
                "record set over segment_bytes",
                too_many_bytes,
                |e| matches!(e, LogError::RecordSetTooLarge { .. }),
                true,
            ),
            ("garbage", vec![0xab; 200], any, true),
            (
                "empty",
                Vec::new(),
                |e| matches!(e, LogError::EmptyRecordSet),
                true,
            ),
            ("one byte", vec![0], any, true),
            (
                "truncated",
                good[..good.len() - 1].to_vec(),
                |e| matches!(e, LogError::InvalidRecord(RecordError::Truncated { .. })),
                true,
            ),
        ];
        let files_before = snapshot(dir.path());
        let size_before = log.size_bytes();
        let epochs_before = log.leader_epochs().entries().to_vec();
        for (name, bytes, check, follower_refuses) in cases {
            let mut copy = bytes.clone();
            // a newer epoch must not be recorded either
            match log.append_as_leader(&mut copy, LeaderEpoch(4), T0) {
                Err(e) => assert!(check(&e), "{mode:?} {name}: unexpected error {e:?}"),
                Ok(info) => panic!("{mode:?} {name}: leader accepted {info:?}"),
            }
            if follower_refuses {
                assert!(
                    log.append_as_follower(&bytes, T0).is_err(),
                    "{mode:?} {name} (follower)"
                );
            }
            assert_eq!(log.log_end_offset(), model.end, "{mode:?} {name}");
            assert_eq!(log.size_bytes(), size_before, "{mode:?} {name}");
            assert_eq!(
                log.leader_epochs().entries(),
                &epochs_before[..],
                "{mode:?} {name}"
            );
            assert!(
                snapshot(dir.path()) == files_before,
                "{mode:?} {name}: files changed"
            );
        }
        // the log still works and holds exactly what was appended
        model.append_leader(&mut log, good, 1);
        assert_log_matches(&log, &model);
        drop(log);
        let log = reopen_unclean(dir.path(), &config);
        assert_log_matches(&log, &model);
    }
}

#[test]
fn follower_appends_check_offsets_and_epochs() {
    for mode in MODES {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut leader = open(leader_dir.path(), &config);
        let mut follower = open(follower_dir.path(), &config);
        let mut model = Model::default();
        for i in 0..40 {
            let epoch = if i < 20 { 3 } else { 5 };
            let codec = if i % 3 == 0 {
                Compression::Lz4
            } else {
                Compression::None
            };
            model.append_leader(
                &mut leader,
                batch(1 + i % 4, T0 + i as i64, 100, codec),
                epoch,
            );
        }
        // replicate the leader's bytes as they are, fetch by fetch
        let mut offset = Offset(0);
        while offset < leader.log_end_offset() {
            let info = leader
                .read(offset, 700, leader.log_end_offset(), true)
                .unwrap();
            let bytes = info.region.unwrap().read_to_vec().unwrap();
            let appended = follower.append_as_follower(&bytes, T0).unwrap();
            assert_eq!(appended.base_offset, offset);
            assert_eq!(appended.last_offset.next(), info.next_offset);
            offset = info.next_offset;
        }
        assert!(read_all(&follower, 1 << 20) == model.bytes(), "{mode:?}");
        assert_eq!(
            follower.leader_epochs().entries(),
            leader.leader_epochs().entries()
        );
        let leo = follower.log_end_offset();
        let before = snapshot(follower_dir.path());
        let b = |base: i64, epoch: i32| {
            stamped(batch(2, T0, 10, Compression::None), Offset(base), epoch)
        };
        for (name, set, base, expected) in [
            ("ahead of the log end", b(leo.0 + 1, 5), leo.0 + 1, leo.0),
            ("behind the log end", b(leo.0 - 1, 5), leo.0 - 1, leo.0),
            ("at zero", b(0, 5), 0, leo.0),
            (
                "gap inside the set",
                [b(leo.0, 5), b(leo.0 + 3, 5)].concat(),
                leo.0 + 3,
                leo.0 + 2,
            ),
            (
                "overlap inside the set",
                [b(leo.0, 5), b(leo.0 + 1, 5)].concat(),
                leo.0 + 1,
                leo.0 + 2,
            ),
        ] {
            match follower.append_as_follower(&set, T0) {
                Err(LogError::UnexpectedAppendOffset {
                    base_offset,
                    expected: e,
                }) => {
                    assert_eq!(
                        (base_offset, e),
                        (Offset(base), Offset(expected)),
                        "{mode:?} {name}"
                    )
                }
                other => panic!("{mode:?} {name}: {other:?}"),
            }
            assert_eq!(follower.log_end_offset(), leo);
            assert!(
                snapshot(follower_dir.path()) == before,
                "{mode:?} {name}: files changed"
            );
        }
        // an older epoch than the latest is refused, alone or after a good batch
        for set in [
            b(leo.0, 4),
            [b(leo.0, 5), b(leo.0 + 2, 4)].concat(),
            [b(leo.0, 6), b(leo.0 + 2, 5)].concat(),
        ] {
            assert!(
                matches!(
                    follower.append_as_follower(&set, T0),
                    Err(LogError::EpochRegression { .. })
                ),
                "{mode:?}"
            );
            assert_eq!(follower.log_end_offset(), leo);
            assert_eq!(follower.latest_epoch(), Some(LeaderEpoch(5)));
            assert!(
                snapshot(follower_dir.path()) == before,
                "{mode:?}: files changed"
            );
        }
        assert!(matches!(
            leader.append_as_leader(&mut batch(1, T0, 1, Compression::None), LeaderEpoch(4), T0),
            Err(LogError::EpochRegression {
                epoch: LeaderEpoch(4),
                latest: LeaderEpoch(5)
            })
        ));
        // a good multi-batch set with a new epoch is taken whole
        let set = [b(leo.0, 5), b(leo.0 + 2, 6), b(leo.0 + 4, 6)];
        let info = follower.append_as_follower(&set.concat(), T0).unwrap();
        assert_eq!(
            (info.base_offset, info.last_offset),
            (leo, Offset(leo.0 + 5))
        );
        assert_eq!(follower.latest_epoch(), Some(LeaderEpoch(6)));
        assert_eq!(
            follower.leader_epochs().latest().unwrap().start_offset,
            Offset(leo.0 + 2),
            "{mode:?} the new epoch starts at its first batch"
        );
        let tail = follower
            .read(leo, 1 << 20, follower.log_end_offset(), true)
            .unwrap();
        assert_eq!(tail.region.unwrap().read_to_vec().unwrap(), set.concat());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_match_the_model(
        sizes in proptest::collection::vec((1usize..12, 0usize..300, 0u8..3), 1..120),
        reads in proptest::collection::vec((any::<u16>(), 1usize..6000, any::<u16>(), any::<bool>()), 1..60),
        mode in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mode = MODES[mode];
        let config = LogConfig { segment_bytes: 4096, index_interval_bytes: 128, ..small_config(mode) };
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for (i, (records, value_bytes, codec)) in sizes.iter().enumerate() {
            let codec = [Compression::None, Compression::Snappy, Compression::Zstd][*codec as usize];
            model.append_leader(&mut log, batch(*records, T0 + i as i64, *value_bytes, codec), 0);
        }
        let end = model.end.0;
        for (from, max_bytes, bound, min_one) in reads {
            let from = Offset(i64::from(from) % (end + 2));
            let max_offset = Offset(i64::from(bound) % (end + 2));
            check_read(&log, &model, from, max_bytes, max_offset, min_one);
        }
    }

    #[test]
    fn garbage_never_panics_and_never_changes_the_log(
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..5),
        fix_crc in any::<bool>(),
        stamp in any::<bool>(),
        mode in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mode = MODES[mode];
        let mut log = open(dir.path(), &small_config(mode));
        let mut model = Model::default();
        model.append_leader(&mut log, batch(2, T0, 10, Compression::None), 1);
        // random bytes, and a valid batch with a few bytes overwritten
        let mut edited = batch(3, T0, 20, Compression::None);
        if stamp {
            edited = stamped(edited, model.end, 1);
        }
        for (at, value) in edits {
            let at = at as usize % edited.len();
            edited[at] = value;
        }
        if fix_crc {
            edited = with_crc_fixed(edited);
        }
        for input in [garbage.clone(), edited.clone(), [edited, garbage].concat()] {
            let size = log.size_bytes();
            let leo = log.log_end_offset();
            let mut copy = input.clone();
            match log.append_as_leader(&mut copy, LeaderEpoch(1), T0) {
                Ok(info) => {
                    prop_assert_eq!(info.base_offset, leo);
                    prop_assert_eq!(log.log_end_offset(), info.last_offset.next());
                    prop_assert_eq!(log.size_bytes(), size + copy.len() as u64);
                }
                Err(_) => {
                    prop_assert_eq!(log.log_end_offset(), leo);
                    prop_assert_eq!(log.size_bytes(), size);
                }
            }
            let size = log.size_bytes();
            let leo = log.log_end_offset();
            match log.append_as_follower(&input, T0) {
                Ok(info) => {
                    prop_assert_eq!(info.base_offset, leo);
                    prop_assert_eq!(log.size_bytes(), size + input.len() as u64);
                }
                Err(_) => {
                    prop_assert_eq!(log.log_end_offset(), leo);
                    prop_assert_eq!(log.size_bytes(), size);
                }
            }
            // whatever was taken reads back as valid batches
            let all = read_all(&log, 1 << 20);
            prop_assert_eq!(all.len() as u64, log.size_bytes());
        }
        prop_assert!(read_all(&log, 1 << 20).starts_with(&model.bytes()));
    }
}

/// Records with distinct, not always increasing timestamps; some batches compressed.
fn timestamp_log(mode: AppendMode) -> (tempfile::TempDir, LogConfig, Model, Vec<(Offset, i64)>) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 200,
        ..small_config(mode)
    };
    let mut log = open(dir.path(), &config);
    let mut model = Model::default();
    let mut rng = Rng(0x1234_5678);
    let mut records = Vec::new();
    let mut k = 0i64;
    for i in 0..120 {
        let count = 1 + rng.below(6) as usize;
        // mostly ascending by 10 per record, with jitter that reorders neighbours
        let timestamps: Vec<i64> = (0..count)
            .map(|j| T0 + 10 * (k + j as i64) + rng.below(25) as i64)
            .collect();
        let codec = [Compression::None, Compression::Zstd, Compression::Gzip][i % 3];
        let base = model.append_leader(&mut log, batch_with_timestamps(&timestamps, 40, codec), 0);
        for (j, ts) in timestamps.iter().enumerate() {
            records.push((Offset(base.0 + j as i64), *ts));
        }
        k += count as i64;
    }
    assert!(log.segments().count() >= 4);
    drop(log);
    (dir, config, model, records)
}

fn check_offsets_for_timestamps(log: &sluice_log::Log, records: &[(Offset, i64)]) {
    let mode = log.config().append_mode;
    let mut targets: Vec<i64> = records
        .iter()
        .flat_map(|r| [r.1 - 1, r.1, r.1 + 1])
        .collect();
    targets.extend([0, -1, T0 - 1_000_000]);
    for target in targets {
        let expected = records.iter().find(|r| r.1 >= target).map(|r| (r.1, r.0));
        assert_eq!(
            log.offset_for_timestamp(target).unwrap(),
            expected,
            "{mode:?} target {target}"
        );
    }
    let newest = records.iter().map(|r| r.1).max().unwrap();
    assert_eq!(log.offset_for_timestamp(newest + 1).unwrap(), None);
    assert_eq!(log.offset_for_timestamp(i64::MAX).unwrap(), None);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    for mode in MODES {
        let (dir, config, model, records) = timestamp_log(mode);
        // as written (the log was dropped without a close: recovery rebuilds the indexes)
        let log = reopen_unclean(dir.path(), &config);
        assert_log_matches(&log, &model);
        check_offsets_for_timestamps(&log, &records);
        // after a clean close the indexes are loaded, not rebuilt
        let mut log = log;
        log.close().unwrap();
        drop(log);
        let log = open(dir.path(), &config);
        assert_eq!(log.load_report().recovered_segments, 0);
        check_offsets_for_timestamps(&log, &records);
    }
}

#[test]
fn offset_for_timestamp_on_the_live_log_and_inside_compressed_batches() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(
            dir.path(),
            &LogConfig {
                segment_bytes: 4096,
                ..small_config(mode)
            },
        );
        let mut records = Vec::new();
        // 100 batches of 5 records; record k has timestamp T0 + 10*k; a third compressed
        for i in 0..100i64 {
            let codec = if i % 3 == 0 {
                Compression::Zstd
            } else {
                Compression::None
            };
            let ts: Vec<i64> = (0..5).map(|j| T0 + 10 * (i * 5 + j)).collect();
            let mut b = batch_with_timestamps(&ts, 60, codec);
            let info = log.append_as_leader(&mut b, LeaderEpoch(0), T0).unwrap();
            for (j, t) in ts.iter().enumerate() {
                records.push((Offset(info.base_offset.0 + j as i64), *t));
            }
        }
        assert!(log.segments().count() > 3);
        check_offsets_for_timestamps(&log, &records);
        // a record in the middle of a compressed batch
        assert_eq!(
            log.offset_for_timestamp(T0 + 10 * 302 - 5).unwrap(),
            Some((T0 + 3020, Offset(302)))
        );
    }
}

#[test]
fn extreme_header_values_never_panic() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), &small_config(mode));
        let mut model = Model::default();
        model.append_leader(&mut log, batch(2, T0, 10, Compression::None), 1);
        // base offsets and epochs lie outside the CRC: a producer may send anything there,
        // and the leader overwrites them
        for base in [i64::MAX, i64::MAX - 1, i64::MIN, -1] {
            for epoch in [i32::MAX, i32::MIN, -1] {
                let b = stamped(batch(3, T0, 10, Compression::None), Offset(base), epoch);
                let leo = log.log_end_offset();
                assert!(
                    log.append_as_follower(&b, T0).is_err(),
                    "{mode:?} follower base {base}"
                );
                assert_eq!(log.log_end_offset(), leo);
                model.append_leader(&mut log, b, 1);
            }
        }
        // extreme timestamps are stored as they are
        for ts in [i64::MIN, -1, 0, i64::MAX] {
            model.append_leader(
                &mut log,
                batch_with_timestamps(&[ts], 5, Compression::None),
                1,
            );
        }
        assert_log_matches(&log, &model);
        drop(log);
        let log = reopen_unclean(dir.path(), &small_config(mode));
        assert_log_matches(&log, &model);
    }
}

#[test]
fn hybrid_mode_mixes_mapped_and_written_appends_in_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4 * 1024 * 1024,
        ..small_config(AppendMode::Hybrid)
    };
    let mut log = open(dir.path(), &config);
    let mut model = Model::default();
    let mut rng = Rng(7);
    let mut large = 0;
    for i in 0..60 {
        // about a third of the batches are above the threshold and go through pwrite
        let value_bytes = if rng.below(3) == 0 { 40_000 } else { 300 };
        let b = batch(2, T0 + i, value_bytes, Compression::None);
        if b.len() > HYBRID_MMAP_MAX_APPEND_BYTES {
            large += 1;
        }
        model.append_leader(&mut log, b, 1);
    }
    assert!(
        large > 5 && large < 55,
        "both paths used: {large} large batches"
    );
    assert_eq!(log.segments().count(), 1);
    assert_log_matches(&log, &model);
    // a crash leaves the preallocated tail; recovery finds exactly the appended batches
    drop(log);
    let log = reopen_unclean(dir.path(), &config);
    assert_log_matches(&log, &model);
    drop(log);
    let mut log = open(dir.path(), &config);
    model.append_leader(&mut log, batch(1, T0, 50_000, Compression::None), 2);
    model.append_leader(&mut log, batch(1, T0, 10, Compression::None), 2);
    log.close().unwrap();
    let log = open(dir.path(), &config);
    assert_log_matches(&log, &model);
    let file = segment_path(dir.path(), Offset::ZERO, "log");
    assert_eq!(
        file_len(&file),
        model.bytes().len() as u64,
        "closed segment is trimmed"
    );
}
