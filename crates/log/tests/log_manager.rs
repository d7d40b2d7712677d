//! The data directory: many partitions, clean-shutdown marker, checkpoint files.

mod common;

use std::collections::BTreeMap;

use common::*;
use sluice_log::{lock, LogConfig, LogManager, CLEAN_SHUTDOWN_MARKER, RECOVERY_POINT_CHECKPOINT};
use sluice_record::{Compression, LeaderEpoch, Offset, TopicPartition};

fn append(manager: &LogManager, tp: &TopicPartition, n: usize) {
    let log = manager.get(tp).unwrap();
    let mut log = lock(&log);
    for i in 0..n {
        log.append_as_leader(
            &mut batch(2, T0 + i as i64, 50, Compression::None),
            LeaderEpoch(0),
            T0,
        )
        .unwrap();
    }
}

#[test]
fn partitions_survive_clean_and_unclean_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[1]);
    let tps = [
        TopicPartition::new("orders", 0),
        TopicPartition::new("orders", 1),
        TopicPartition::new("a-b-c", 3),
    ];
    let mut manager = LogManager::open(dir.path(), config.clone(), T0).unwrap();
    assert!(!manager.loaded_clean());
    for (i, tp) in tps.iter().enumerate() {
        manager.get_or_create(tp, None, T0).unwrap();
        append(&manager, tp, 10 * (i + 1));
    }
    let ends: Vec<Offset> = tps
        .iter()
        .map(|tp| lock(&manager.get(tp).unwrap()).log_end_offset())
        .collect();
    let contents: Vec<Vec<u8>> = tps
        .iter()
        .map(|tp| read_all(&lock(&manager.get(tp).unwrap()), 1 << 20))
        .collect();
    manager.shutdown().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_MARKER).exists());
    let checkpoint = std::fs::read_to_string(dir.path().join(RECOVERY_POINT_CHECKPOINT)).unwrap();
    assert_eq!(
        checkpoint,
        format!(
            "0\n3\na-b-c 3 {}\norders 0 {}\norders 1 {}\n",
            ends[2].0, ends[0].0, ends[1].0
        )
    );

    let manager = LogManager::open(dir.path(), config.clone(), T0).unwrap();
    assert!(manager.loaded_clean());
    assert!(
        !dir.path().join(CLEAN_SHUTDOWN_MARKER).exists(),
        "marker removed once loaded"
    );
    let mut found: Vec<TopicPartition> = manager.topic_partitions().cloned().collect();
    found.sort();
    let mut expected = tps.to_vec();
    expected.sort();
    assert_eq!(found, expected);
    for (i, tp) in tps.iter().enumerate() {
        let log = manager.get(tp).unwrap();
        let log = lock(&log);
        assert_eq!(log.log_end_offset(), ends[i]);
        assert_eq!(read_all(&log, 1 << 20), contents[i]);
        assert_eq!(log.load_report().recovered_segments, 0);
    }
    append(&manager, &tps[0], 5);
    drop(manager); // crash

    let manager = LogManager::open(dir.path(), config, T0).unwrap();
    assert!(!manager.loaded_clean());
    let log = manager.get(&tps[0]).unwrap();
    let log = lock(&log);
    assert_eq!(log.log_end_offset(), Offset(ends[0].0 + 10));
    assert!(log.load_report().recovered_segments >= 1);
}

#[test]
fn deleting_a_partition_removes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = LogManager::open(dir.path(), LogConfig::default(), T0).unwrap();
    let tp = TopicPartition::new("gone", 0);
    manager.get_or_create(&tp, None, T0).unwrap();
    append(&manager, &tp, 3);
    assert!(dir.path().join("gone-0").is_dir());
    assert!(manager.delete(&tp, T0).unwrap());
    assert!(!manager.delete(&tp, T0).unwrap());
    assert!(manager.get(&tp).is_none());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        0
    );
    // a leftover from a crash mid-delete is removed at open
    std::fs::create_dir(dir.path().join("x-0.123-delete")).unwrap();
    std::fs::write(
        dir.path().join("x-0.123-delete/00000000000000000000.log"),
        b"junk",
    )
    .unwrap();
    drop(manager);
    let manager = LogManager::open(dir.path(), LogConfig::default(), T0).unwrap();
    assert!(!dir.path().join("x-0.123-delete").exists());
    assert_eq!(manager.topic_partitions().count(), 0);
}

#[test]
fn high_watermarks_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let manager = LogManager::open(dir.path(), LogConfig::default(), T0).unwrap();
    assert!(manager.read_high_watermarks().unwrap().is_empty());
    let mut hws = BTreeMap::new();
    hws.insert(TopicPartition::new("t", 0), Offset(17));
    hws.insert(TopicPartition::new("t", 1), Offset(0));
    manager.write_high_watermarks(&hws).unwrap();
    assert_eq!(manager.read_high_watermarks().unwrap(), hws);
}

#[test]
fn tick_runs_retention_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 1000,
        ..small_config(MODES[0])
    };
    let mut manager = LogManager::open(dir.path(), config, T0).unwrap();
    let tp = TopicPartition::new("r", 0);
    manager.get_or_create(&tp, None, T0).unwrap();
    append(&manager, &tp, 100);
    let later = T0 + 10_000;
    manager.tick(later, false, |_| None).unwrap();
    assert_eq!(
        lock(&manager.get(&tp).unwrap()).log_start_offset(),
        Offset(0)
    );
    manager.tick(later, true, |_| Some(Offset(0))).unwrap();
    assert_eq!(
        lock(&manager.get(&tp).unwrap()).log_start_offset(),
        Offset(0),
        "bound 0 deletes nothing"
    );
    manager.tick(later, true, |_| None).unwrap();
    let log = manager.get(&tp).unwrap();
    let log = lock(&log);
    assert_eq!(log.log_start_offset(), log.log_end_offset());
    assert_eq!(log.recovery_point(), log.log_end_offset());
}

#[test]
fn the_metadata_log_directory_is_not_a_partition() {
    // combined mode keeps the controller's Raft log in the data directory (Kafka's layout);
    // opening the data directory must leave it alone, clean shutdown or not
    let dir = tempfile::tempdir().unwrap();
    let metadata = dir.path().join(sluice_log::CLUSTER_METADATA_DIR);
    std::fs::create_dir_all(&metadata).unwrap();
    std::fs::write(metadata.join("raft-log"), b"not a segment").unwrap();
    for _ in 0..2 {
        let manager = LogManager::open(dir.path(), LogConfig::default(), T0).unwrap();
        assert_eq!(manager.topic_partitions().count(), 0);
        manager.shutdown().unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(&metadata)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["raft-log".to_string()]);
}

/// What a crash, a full file-descriptor table or a stray file leaves where a partition's
/// log goes (issue 20): a log opens over the leftovers it can use, one it cannot is refused
/// naming its path, and at startup it is left on disk as it is while every other log
/// opens (the broker reports that one replica offline, not the whole directory).
#[test]
fn leftovers_open_or_are_refused_naming_the_path_and_never_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(MODES[0]);
    let good = TopicPartition::new("good", 0);
    {
        let mut manager = LogManager::open(dir.path(), config.clone(), T0).unwrap();
        manager.get_or_create(&good, None, T0).unwrap();
        append(&manager, &good, 3);
        manager.shutdown().unwrap();
    }
    // a file where a partition directory goes
    std::fs::write(dir.path().join("stray-0"), b"").unwrap();
    // a directory left half made: an empty segment file, no indexes
    std::fs::create_dir(dir.path().join("partial-0")).unwrap();
    std::fs::write(dir.path().join("partial-0/00000000000000000000.log"), b"").unwrap();
    // only an index, its segment never created
    std::fs::create_dir(dir.path().join("orphan-0")).unwrap();
    std::fs::write(
        dir.path().join("orphan-0/00000000000000000000.index"),
        [0u8; 8],
    )
    .unwrap();
    // a directory where a segment file goes: nothing can open this log
    std::fs::create_dir_all(dir.path().join("broken-0/00000000000000000000.log")).unwrap();

    let mut manager = LogManager::open(dir.path(), config.clone(), T0).unwrap();
    assert_eq!(
        lock(&manager.get(&good).unwrap()).log_end_offset(),
        Offset(6)
    );
    for name in ["partial", "orphan"] {
        let tp = TopicPartition::new(name, 0);
        let log = manager.get_or_create(&tp, None, T0).unwrap();
        assert_eq!(lock(&log).log_end_offset(), Offset(0), "{name}");
        append(&manager, &tp, 1);
    }
    let broken = TopicPartition::new("broken", 0);
    assert!(manager.get(&broken).is_none(), "left on disk, not opened");
    assert!(manager.get_or_create(&broken, None, T0).is_err());
    assert!(dir
        .path()
        .join("broken-0/00000000000000000000.log")
        .is_dir());
    let err = manager
        .get_or_create(&TopicPartition::new("stray", 0), None, T0)
        .err()
        .expect("a stray file is refused")
        .to_string();
    assert!(
        err.contains("stray-0") && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn a_flush_or_tick_of_a_log_deleted_meanwhile_does_nothing_and_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 1000,
        ..small_config(MODES[0])
    };
    let mut manager = LogManager::open(dir.path(), config, T0).unwrap();
    let tp = TopicPartition::new("gone", 0);
    manager.get_or_create(&tp, None, T0).unwrap();
    // rolls: sealed segments and unsynced producer snapshots to flush
    append(&manager, &tp, 100);
    let listed = manager.shared_logs();
    assert_eq!(listed.len(), 1);
    let log = &listed[0].1;
    let task = lock(log).flush_task(Offset(i64::MAX)).unwrap();
    assert!(manager.delete(&tp, T0).unwrap());
    assert!(!dir.path().join("gone-0").exists());
    // the files, snapshots and directory are gone: nothing left to make durable
    task.run().unwrap();
    LogManager::tick_log(log, T0 + 10_000, Some(None)).unwrap();
    assert!(manager.get(&tp).is_none());
}
