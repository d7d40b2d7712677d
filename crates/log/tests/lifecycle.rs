//! Roll, retention, truncation, leader epochs and the flush policy.

mod common;

use common::*;
use sluice_log::{segment_file, LogConfig, LogError, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use sluice_record::{Compression, LeaderEpoch, Offset};

#[test]
fn segments_roll_at_segment_bytes_and_are_named_by_base_offset() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for i in 0..100 {
            model.append_leader(&mut log, batch(3, T0 + i, 100, Compression::None), 0);
        }
        let segments: Vec<_> = log.segments().collect();
        assert!(segments.len() > 3);
        let mut expected_base = Offset(0);
        for (i, s) in segments.iter().enumerate() {
            assert_eq!(s.base_offset(), expected_base);
            assert!(s.size_bytes() <= config.segment_bytes, "{mode:?}");
            let name = format!("{:020}.log", s.base_offset().0);
            assert_eq!(s.log_path().file_name().unwrap().to_str().unwrap(), name);
            let index = segment_file(dir.path(), s.base_offset(), INDEX_SUFFIX);
            let time_index = segment_file(dir.path(), s.base_offset(), TIME_INDEX_SUFFIX);
            if i + 1 < segments.len() {
                // sealed: files trimmed to their contents
                assert_eq!(file_len(s.log_path()), s.size_bytes());
                assert_eq!(file_len(&index), s.offset_index().len() as u64 * 8);
                assert_eq!(file_len(&time_index), s.time_index().len() as u64 * 12);
                assert!(
                    !s.time_index().is_empty(),
                    "sealing writes the final time entry"
                );
            } else {
                // active: indexes preallocated
                assert_eq!(file_len(&index), 4096 / 8 * 8);
                assert_eq!(file_len(&time_index), 4096 / 12 * 12);
            }
            expected_base = s.next_offset();
        }
        assert_eq!(expected_base, log.log_end_offset());
    }
}

#[test]
fn segments_roll_after_roll_ms_of_record_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        roll_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    let mut model = Model::default();
    model.append_leader(&mut log, batch(1, T0, 10, Compression::None), 0);
    model.append_leader(&mut log, batch(1, T0 + 1000, 10, Compression::None), 0);
    assert_eq!(
        log.segments().count(),
        1,
        "exactly roll.ms later does not roll"
    );
    model.append_leader(&mut log, batch(1, T0 + 1001, 10, Compression::None), 0);
    assert_eq!(log.segments().count(), 2);
    assert_eq!(log.segments().last().unwrap().base_offset(), Offset(2));
    assert_eq!(read_all(&log, 1 << 20), model.bytes());
}

#[test]
fn a_full_index_rolls_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 1,
        index_size_max_bytes: 24,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    let mut model = Model::default();
    for i in 0..20 {
        model.append_leader(&mut log, batch(1, T0 + i, 10, Compression::None), 0);
    }
    assert!(
        log.segments().count() >= 5,
        "3 index entries per segment force rolls"
    );
    assert!(log.segments().all(|s| s.offset_index().len() <= 3));
    assert_eq!(read_all(&log, 1 << 20), model.bytes());
}

#[test]
fn retention_by_time_deletes_old_segments_and_moves_the_start() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_ms: 10_000,
            ..small_config(mode)
        };
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        // timestamps grow by 100 ms per batch
        for i in 0..200 {
            model.append_leader(&mut log, batch(2, T0 + i * 100, 100, Compression::None), 0);
        }
        let segments: Vec<(Offset, Offset)> = log
            .segments()
            .map(|s| (s.base_offset(), s.next_offset()))
            .collect();
        assert!(segments.len() > 4);
        let now = T0 + 5_000;
        assert_eq!(
            log.delete_retained_segments(now, log.log_end_offset())
                .unwrap(),
            0
        );
        // at now = T0 + 25_000 every segment whose newest record is before T0 + 15_000 expired
        let now = T0 + 25_000;
        let deleted = log
            .delete_retained_segments(now, log.log_end_offset())
            .unwrap();
        assert!(deleted > 0);
        let start = log.log_start_offset();
        assert_eq!(start, segments[deleted].0);
        // every deleted segment's newest record was older than the retention
        let last_deleted_batch = model.batches.iter().rfind(|b| b.last < start).unwrap();
        let ts = T0
            + 100
                * (model
                    .batches
                    .iter()
                    .position(|b| b.base == last_deleted_batch.base)
                    .unwrap() as i64)
            + 1;
        assert!(now - ts > 10_000);
        assert!(deleted < segments.len() - 1, "younger segments stay");
        let first_kept = log.segments().next().unwrap().largest_timestamp();
        assert!(now - first_kept <= 10_000);
        assert!(!segment_file(dir.path(), segments[0].0, LOG_SUFFIX).exists());
        assert!(matches!(
            log.read(Offset(0), 100, log.log_end_offset(), true),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        let kept: Vec<u8> = model
            .batches
            .iter()
            .filter(|b| b.base >= start)
            .flat_map(|b| b.bytes.clone())
            .collect();
        assert_eq!(read_all(&log, 1 << 20), kept);
        assert_eq!(log.leader_epochs().entries()[0].start_offset, start);
    }
}

#[test]
fn retention_honours_the_deletable_bound_and_keeps_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 1000,
        ..small_config(MODES[0])
    };
    let mut log = open(dir.path(), &config);
    let mut model = Model::default();
    for i in 0..60 {
        model.append_leader(&mut log, batch(2, T0 + i, 100, Compression::None), 0);
    }
    let end = log.log_end_offset();
    let second = log.segments().nth(1).unwrap().base_offset();
    let far_future = T0 + 1_000_000;
    // bound at the second segment's base: only the first may go
    assert_eq!(log.delete_retained_segments(far_future, second).unwrap(), 1);
    assert_eq!(log.log_start_offset(), second);
    // unbounded: everything expired, the active segment is rolled, the end survives
    log.delete_retained_segments(far_future, end).unwrap();
    assert_eq!(log.log_start_offset(), end);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segments().count(), 1);
    assert_eq!(log.size_bytes(), 0);
    model.drop_below(end);
    model.append_leader(&mut log, batch(1, far_future, 5, Compression::None), 0);
    assert_eq!(model.batches[0].base, end);
    assert_eq!(read_all(&log, 1 << 20), model.bytes());
}

#[test]
fn retention_by_bytes_keeps_the_log_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 20_000,
        retention_ms: -1,
        ..small_config(MODES[0])
    };
    let mut log = open(dir.path(), &config);
    for i in 0..200 {
        log.append_as_leader(
            &mut batch(2, T0 + i, 100, Compression::None),
            LeaderEpoch(0),
            T0,
        )
        .unwrap();
    }
    let before = log.size_bytes();
    let deleted = log
        .delete_retained_segments(T0, log.log_end_offset())
        .unwrap();
    assert!(deleted > 0);
    let after = log.size_bytes();
    assert!(after <= 20_000 + config.segment_bytes, "{after}");
    assert!(after < before);
    // deleting one more segment would go below the limit: retention keeps it
    let oldest = log.segments().next().unwrap().size_bytes();
    assert!(after - oldest < 20_000);
}

#[test]
fn truncate_to_removes_the_suffix_and_appends_continue() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut log = open(dir.path(), &config);
        let mut model = Model::default();
        for i in 0..80 {
            let epoch = if i < 40 { 1 } else { 2 };
            model.append_leader(&mut log, batch(3, T0 + i, 80, Compression::None), epoch);
        }
        let segments_before = log.segments().count();
        // at a batch boundary in an early segment
        let target = model.batches[20].base;
        log.truncate_to(target).unwrap();
        model.keep_batches(20);
        assert_eq!(log.log_end_offset(), target);
        assert!(log.segments().count() < segments_before);
        for base in log.segments().map(|s| s.base_offset()) {
            assert!(base < target);
        }
        assert_eq!(read_all(&log, 1 << 20), model.bytes());
        assert_eq!(
            log.latest_epoch(),
            Some(LeaderEpoch(1)),
            "epoch 2 entries removed"
        );
        // inside a batch: the whole batch goes
        let inside = Offset(model.batches[10].base.0 + 1);
        log.truncate_to(inside).unwrap();
        model.keep_batches(10);
        assert_eq!(log.log_end_offset(), model.end);
        assert!(log.log_end_offset() < inside);
        // appends continue at the new end, in a new epoch
        model.append_leader(&mut log, batch(2, T0, 5, Compression::None), 3);
        assert_eq!(model.batches.last().unwrap().base, Offset(30));
        assert_eq!(read_all(&log, 1 << 20), model.bytes());
        assert_eq!(
            log.end_offset_for_epoch(LeaderEpoch(1)),
            (LeaderEpoch(1), Offset(30))
        );
        // reopen sees the same state
        let end = log.log_end_offset();
        drop(log);
        let log = reopen_unclean(dir.path(), &config);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 1 << 20), model.bytes());
        assert_eq!(log.latest_epoch(), Some(LeaderEpoch(3)));
    }
}

#[test]
fn truncate_below_the_start_empties_the_log_at_that_offset() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[0]);
    let mut log = open(dir.path(), &config);
    for i in 0..30 {
        log.append_as_leader(
            &mut batch(2, T0 + i, 100, Compression::None),
            LeaderEpoch(1),
            T0,
        )
        .unwrap();
    }
    log.truncate_fully_and_start_at(Offset(1000)).unwrap();
    assert_eq!(log.log_start_offset(), Offset(1000));
    assert_eq!(log.log_end_offset(), Offset(1000));
    assert_eq!(log.segments().count(), 1);
    assert!(log.leader_epochs().entries().is_empty());
    let mut model = Model {
        start: Offset(1000),
        end: Offset(1000),
        ..Model::default()
    };
    model.append_leader(&mut log, batch(2, T0, 5, Compression::None), 4);
    assert_eq!(model.batches[0].base, Offset(1000));
    assert_eq!(read_all(&log, 1 << 20), model.bytes());
    // truncate_to below the start does the same
    log.truncate_to(Offset(500)).unwrap();
    assert_eq!(log.log_start_offset(), Offset(500));
    assert_eq!(log.log_end_offset(), Offset(500));
}

#[test]
fn leader_epochs_answer_offset_for_leader_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[0]);
    let mut log = open(dir.path(), &config);
    for epoch in [1, 1, 3, 3, 5] {
        log.append_as_leader(
            &mut batch(10, T0, 10, Compression::None),
            LeaderEpoch(epoch),
            T0,
        )
        .unwrap();
    }
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(1)),
        (LeaderEpoch(1), Offset(20))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        (LeaderEpoch(1), Offset(20))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        (LeaderEpoch(3), Offset(40))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(5)),
        (LeaderEpoch(5), Offset(50))
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(6)),
        (LeaderEpoch::NONE, Offset::NONE)
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(0)),
        (LeaderEpoch(0), Offset(0))
    );
    let text = std::fs::read_to_string(dir.path().join("leader-epoch-checkpoint")).unwrap();
    assert_eq!(text, "0\n3\n1 0\n3 20\n5 40\n");
    drop(log);
    let log = open(dir.path(), &config);
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        (LeaderEpoch(3), Offset(40))
    );
}

#[test]
fn an_epoch_assigned_at_election_is_known_before_its_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[0]);
    let mut log = open(dir.path(), &config);
    log.append_as_leader(
        &mut batch(10, T0, 10, Compression::None),
        LeaderEpoch(1),
        T0,
    )
    .unwrap();
    // elected in epoch 4 with nothing written in it yet
    log.assign_epoch_start_offset(LeaderEpoch(4)).unwrap();
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(4)),
        (LeaderEpoch(4), Offset(10))
    );
    // an epoch between (another leader's, never seen here) ends where epoch 4 starts
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        (LeaderEpoch(1), Offset(10))
    );
    // the same epoch again is a no-op; an older one is refused
    log.assign_epoch_start_offset(LeaderEpoch(4)).unwrap();
    assert!(matches!(
        log.assign_epoch_start_offset(LeaderEpoch(2)),
        Err(LogError::EpochRegression { .. })
    ));
    // appending in it keeps the start
    log.append_as_leader(&mut batch(5, T0, 5, Compression::None), LeaderEpoch(4), T0)
        .unwrap();
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        (LeaderEpoch(1), Offset(10))
    );
    // as follower, truncating at an epoch's start drops the epoch, even with no record
    // to remove (an epoch begun with nothing written in it)
    log.truncate_to(Offset(10)).unwrap();
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(1)));
    log.assign_epoch_start_offset(LeaderEpoch(6)).unwrap();
    log.truncate_to(Offset(10)).unwrap();
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(1)));
}

#[test]
fn flush_policy_moves_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_interval_messages: Some(10),
        ..small_config(MODES[0])
    };
    let mut log = open(dir.path(), &config);
    for _ in 0..3 {
        log.append_as_leader(&mut batch(3, T0, 10, Compression::None), LeaderEpoch(0), T0)
            .unwrap();
    }
    assert_eq!(log.recovery_point(), Offset(0));
    log.append_as_leader(&mut batch(3, T0, 10, Compression::None), LeaderEpoch(0), T0)
        .unwrap();
    assert_eq!(
        log.recovery_point(),
        Offset(12),
        "12 >= 10 messages forces a flush"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush_interval_ms: Some(1000),
        ..small_config(MODES[1])
    };
    let mut log = open(dir.path(), &config);
    log.append_as_leader(&mut batch(3, T0, 10, Compression::None), LeaderEpoch(0), T0)
        .unwrap();
    log.tick(T0 + 999).unwrap();
    assert_eq!(log.recovery_point(), Offset(0));
    log.tick(T0 + 1000).unwrap();
    assert_eq!(log.recovery_point(), Offset(3));

    // no forced flush: rolled segments are flushed by tick, explicit flush goes to the end
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[0]);
    let mut log = open(dir.path(), &config);
    for i in 0..50 {
        log.append_as_leader(
            &mut batch(2, T0 + i, 100, Compression::None),
            LeaderEpoch(0),
            T0,
        )
        .unwrap();
    }
    assert_eq!(log.recovery_point(), Offset(0));
    log.tick(T0).unwrap();
    let active_base = log.segments().last().unwrap().base_offset();
    assert!(active_base > Offset(0));
    assert_eq!(log.recovery_point(), active_base);
    log.flush().unwrap();
    assert_eq!(log.recovery_point(), log.log_end_offset());
}

#[test]
fn closed_logs_refuse_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    log.close().unwrap();
    assert!(matches!(
        log.append_as_leader(&mut batch(1, T0, 1, Compression::None), LeaderEpoch(0), T0),
        Err(LogError::Closed)
    ));
}

#[test]
fn invalid_configs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        LogConfig {
            segment_bytes: 1 << 40,
            ..LogConfig::default()
        },
        LogConfig {
            index_size_max_bytes: 3,
            ..LogConfig::default()
        },
        LogConfig {
            flush_interval_messages: Some(0),
            ..LogConfig::default()
        },
        LogConfig {
            retention_ms: -2,
            ..LogConfig::default()
        },
    ] {
        let result = sluice_log::Log::open(dir.path(), tp(), config, Offset::ZERO, true, T0);
        assert!(matches!(result, Err(LogError::InvalidConfig(_))));
    }
}

#[test]
fn a_flush_runs_outside_the_lock_and_moves_the_recovery_point_only_once_done() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), &small_config(mode));
        let mut model = Model::default();
        for i in 0..50 {
            model.append_leader(&mut log, batch(2, T0 + i, 100, Compression::None), 0);
        }
        let sealed_up_to = log.segments().last().unwrap().base_offset();
        assert!(sealed_up_to > Offset(0));
        // taken under the lock; while it runs the log takes appends and reads
        let task = log.tick_flush_task(T0).expect("sealed segments to flush");
        assert_eq!(task.up_to(), sealed_up_to);
        assert_eq!(log.recovery_point(), Offset(0), "{mode:?}: not durable yet");
        model.append_leader(&mut log, batch(2, T0, 100, Compression::None), 0);
        task.run().unwrap();
        log.finish_flush(task, true);
        assert_eq!(log.recovery_point(), sealed_up_to, "{mode:?}");

        // a failed flush moves nothing, and the next one covers it all
        let task = log.flush_task(log.log_end_offset()).unwrap();
        log.finish_flush(task, false);
        assert_eq!(log.recovery_point(), sealed_up_to, "{mode:?}");

        // a truncation while a flush runs: the offsets it covered may hold other records
        // by the time it is done, so the recovery point stays where it was
        let task = log.flush_task(log.log_end_offset()).unwrap();
        let cut = Offset(log.log_end_offset().0 - 4);
        log.truncate_to(cut).unwrap();
        task.run().unwrap();
        log.finish_flush(task, true);
        assert_eq!(log.recovery_point(), sealed_up_to, "{mode:?}");
        assert!(log.recovery_point() <= log.log_end_offset());
        log.flush().unwrap();
        assert_eq!(log.recovery_point(), log.log_end_offset(), "{mode:?}");
        assert!(log.flush_task(log.log_end_offset()).is_none());
    }
}

#[test]
fn a_new_epochs_checkpoint_is_made_durable_by_the_next_flush_and_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    log.append_as_leader(&mut batch(1, T0, 10, Compression::None), LeaderEpoch(3), T0)
        .unwrap();
    // written on the append path without fsyncs: on disk for a reopen, not durable yet
    assert!(log.leader_epochs().is_unsynced());
    let task = log
        .flush_task(log.log_end_offset())
        .expect("records to flush");
    task.run().unwrap();
    log.finish_flush(task, true);
    assert!(!log.leader_epochs().is_unsynced(), "the flush covered it");
    // a failed flush leaves it for the next one
    log.append_as_leader(&mut batch(1, T0, 10, Compression::None), LeaderEpoch(4), T0)
        .unwrap();
    let task = log
        .flush_task(log.log_end_offset())
        .expect("records to flush");
    log.finish_flush(task, false);
    assert!(log.leader_epochs().is_unsynced());
    // an election's epoch with nothing written after it: close makes it durable
    log.flush().unwrap();
    log.assign_epoch_start_offset(LeaderEpoch(5)).unwrap();
    assert!(log.leader_epochs().is_unsynced());
    log.close().unwrap();
    assert!(!log.leader_epochs().is_unsynced());
    drop(log);
    let checkpoint = std::fs::read_to_string(dir.path().join("leader-epoch-checkpoint")).unwrap();
    assert_eq!(checkpoint, "0\n3\n3 0\n4 1\n5 2\n");
}
