//! Idempotent-producer state in a real log: deduplication through the log's append path,
//! followers building the same state, and the state surviving what the log survives —
//! a clean restart (snapshot), a kill -9 (snapshots of rolls plus the tail, or the log
//! alone), truncation below a snapshot, retention, and a damaged snapshot file.

mod common;

use common::{open, open_with, reopen_unclean, small_config, stamped, T0};
use sluice_log::{
    list_snapshots, snapshot_path, AppendMode, Log, LogConfig, LogError, ProducerBatch,
    ProducerStateError, ProducerStateManager,
};
use sluice_record::{BatchBuilder, Compression, LeaderEpoch, Offset, RecordBatches};

/// A batch of `n` 200-byte records from producer `pid` (epoch, first sequence), time `ts`.
fn pbatch(pid: i64, epoch: i16, seq: i32, n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(pid, epoch, seq);
    for i in 0..n {
        b.append(ts, None, Some(&[i as u8; 200]), &[]);
    }
    b.build().unwrap()
}

fn config() -> LogConfig {
    small_config(AppendMode::Hybrid)
}

/// The producer state a log holding exactly `log`'s batches should have.
fn expected_state(log: &Log) -> ProducerStateManager {
    let mut state = ProducerStateManager::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log
            .read(offset, 1 << 20, log.log_end_offset(), true)
            .unwrap();
        let region = read.region.expect("batches to read");
        let bytes = region.read_to_vec().unwrap();
        for batch in RecordBatches::new(&bytes, usize::MAX) {
            let h = *batch.unwrap().header();
            if let Some(p) = ProducerBatch::of(&h) {
                state.update(&p, h.last_offset());
            }
        }
        offset = read.next_offset;
    }
    state
}

/// Appends, as leader, `batches` rounds of one batch from each of `producers` producers,
/// 3 records each, sequences following on. Returns (pid, first seq, base offset) per batch.
fn produce_rounds(log: &mut Log, producers: i64, rounds: i32) -> Vec<(i64, i32, Offset)> {
    let mut written = Vec::new();
    for round in 0..rounds {
        for pid in 0..producers {
            let seq = round * 3;
            let info = log
                .append_as_leader(&mut pbatch(pid, 0, seq, 3, T0), LeaderEpoch(0), T0)
                .unwrap();
            assert!(!info.duplicate);
            written.push((pid, seq, info.base_offset));
        }
    }
    written
}

fn retry(log: &mut Log, pid: i64, seq: i32) -> Result<sluice_log::AppendInfo, LogError> {
    log.append_as_leader(&mut pbatch(pid, 0, seq, 3, T0), LeaderEpoch(0), T0)
}

#[test]
fn a_retry_is_answered_with_its_first_offsets_and_not_appended() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &config());
    let written = produce_rounds(&mut log, 2, 6);
    let end = log.log_end_offset();
    // the last 5 batches of producer 1 are remembered; the first is not
    for &(pid, seq, base) in written.iter().filter(|w| w.0 == 1).skip(1) {
        let info = retry(&mut log, pid, seq).unwrap();
        assert!(info.duplicate);
        assert_eq!(
            (info.base_offset, info.last_offset),
            (base, Offset(base.0 + 2))
        );
    }
    assert_eq!(log.log_end_offset(), end, "nothing appended");
    assert!(matches!(
        retry(&mut log, 1, 0),
        Err(LogError::Producer(
            ProducerStateError::OutOfOrderSequence { .. }
        ))
    ));
    assert!(matches!(
        retry(&mut log, 1, 21),
        Err(LogError::Producer(
            ProducerStateError::OutOfOrderSequence { .. }
        ))
    ));
    // an idempotent batch must come alone in its record set
    let mut two = [pbatch(1, 0, 18, 1, T0), pbatch(1, 0, 19, 1, T0)].concat();
    assert!(matches!(
        log.append_as_leader(&mut two, LeaderEpoch(0), T0),
        Err(LogError::Producer(ProducerStateError::NotAlone))
    ));
    assert_eq!(log.log_end_offset(), end, "refused batches write nothing");
    assert_eq!(*log.producer_state(), expected_state(&log));
}

#[test]
fn a_follower_builds_the_state_it_deduplicates_with_once_it_leads() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(&dir.path().join("leader"), &config());
    let mut follower = open(&dir.path().join("follower"), &config());
    let written = produce_rounds(&mut leader, 3, 4);
    // the follower replicates the leader's batches as they are
    let mut offset = Offset::ZERO;
    while offset < leader.log_end_offset() {
        let read = leader
            .read(offset, 1 << 20, leader.log_end_offset(), true)
            .unwrap();
        let region = read.region.unwrap();
        let bytes = region.read_to_vec().unwrap();
        follower.append_as_follower(&bytes, T0).unwrap();
        offset = read.next_offset;
    }
    assert_eq!(follower.producer_state(), leader.producer_state());
    // it takes over: a retry sent to the old leader is a duplicate here too
    let &(pid, seq, base) = written.last().unwrap();
    let info = retry(&mut follower, pid, seq).unwrap();
    assert!(info.duplicate);
    assert_eq!(info.base_offset, base);
    // a replicated batch with offsets already stamped updates the state too
    let next = follower.log_end_offset();
    follower
        .append_as_follower(&stamped(pbatch(7, 0, 0, 2, T0), next, 1), T0)
        .unwrap();
    let info = follower
        .append_as_leader(&mut pbatch(7, 0, 0, 2, T0), LeaderEpoch(1), T0)
        .unwrap();
    assert!(info.duplicate);
    assert_eq!(info.base_offset, next);
    // the same first sequence with another length is no retry of it
    assert!(matches!(
        follower.append_as_leader(&mut pbatch(7, 0, 0, 3, T0), LeaderEpoch(1), T0),
        Err(LogError::Producer(
            ProducerStateError::OutOfOrderSequence { .. }
        ))
    ));
}

#[test]
fn a_clean_restart_loads_the_snapshot_at_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &config());
    let written = produce_rounds(&mut log, 4, 8);
    assert!(log.segments().count() > 2, "the test needs rolls");
    let before = log.producer_state().clone();
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    assert!(
        snapshot_path(dir.path(), end).exists(),
        "clean close writes <end>.snapshot"
    );
    let mut log = open_with(dir.path(), &config(), end, true);
    assert_eq!(*log.producer_state(), before);
    let &(pid, seq, base) = written.last().unwrap();
    assert_eq!(retry(&mut log, pid, seq).unwrap().base_offset, base);
}

#[test]
fn after_a_kill_the_state_is_rebuilt_from_the_roll_snapshots_or_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &config());
    let written = produce_rounds(&mut log, 4, 8);
    let before = log.producer_state().clone();
    let snapshots = list_snapshots(dir.path()).unwrap();
    assert!(!snapshots.is_empty(), "each roll writes a snapshot");
    assert!(snapshots.iter().all(|s| *s < log.log_end_offset()));
    drop(log); // no close: a crash
    let log = reopen_unclean(dir.path(), &config());
    assert_eq!(
        *log.producer_state(),
        before,
        "newest roll snapshot + the tail"
    );
    drop(log);
    // with no snapshot at all, the log alone gives the same state
    for offset in list_snapshots(dir.path()).unwrap() {
        std::fs::remove_file(snapshot_path(dir.path(), offset)).unwrap();
    }
    let mut log = reopen_unclean(dir.path(), &config());
    assert_eq!(*log.producer_state(), before, "the whole log replayed");
    let &(pid, seq, base) = written.last().unwrap();
    assert_eq!(retry(&mut log, pid, seq).unwrap().base_offset, base);
}

#[test]
fn truncation_below_a_snapshot_forgets_the_truncated_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &config());
    let written = produce_rounds(&mut log, 2, 12);
    let snapshots = list_snapshots(dir.path()).unwrap();
    assert!(snapshots.len() >= 2, "{snapshots:?}");
    // cut below the newest snapshot, at a batch boundary
    let cut = written
        .iter()
        .map(|w| w.2)
        .find(|o| *o > snapshots[0] && *o < *snapshots.last().unwrap())
        .expect("a batch between the snapshots");
    log.truncate_to(cut).unwrap();
    assert_eq!(log.log_end_offset(), cut);
    assert!(list_snapshots(dir.path())
        .unwrap()
        .iter()
        .all(|s| *s <= cut));
    assert_eq!(*log.producer_state(), expected_state(&log));
    // the first truncated batch is new again; a kept one is still a duplicate
    let &(pid, seq, _) = written.iter().find(|w| w.2 == cut).unwrap();
    let &(kept_pid, kept_seq, kept_base) = written
        .iter()
        .rev()
        .find(|w| w.2 < cut && w.0 != pid)
        .unwrap();
    assert_eq!(
        retry(&mut log, kept_pid, kept_seq).unwrap().base_offset,
        kept_base
    );
    let info = retry(&mut log, pid, seq).unwrap();
    assert!(!info.duplicate);
    assert_eq!(info.base_offset, cut);
    // truncating everything (a follower restarted at the leader's log start) forgets all
    log.truncate_fully_and_start_at(Offset(1000)).unwrap();
    assert!(log.producer_state().is_empty());
    assert!(list_snapshots(dir.path()).unwrap().is_empty());
}

#[test]
fn a_damaged_snapshot_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &config());
    produce_rounds(&mut log, 3, 8);
    let before = log.producer_state().clone();
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    let path = snapshot_path(dir.path(), end);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01; // one bit of a batch's timestamp: only the CRC can tell
    std::fs::write(&path, &bytes).unwrap();
    let log = open_with(dir.path(), &config(), end, true);
    assert_eq!(
        *log.producer_state(),
        before,
        "rebuilt from older snapshots and the log"
    );
    assert!(!path.exists(), "the damaged snapshot is deleted");
    drop(log);
    // an empty file (a crash during a write that was never synced) likewise
    std::fs::write(snapshot_path(dir.path(), Offset(3)), b"").unwrap();
    let log = reopen_unclean(dir.path(), &config());
    assert_eq!(*log.producer_state(), before);
}

#[test]
fn retention_keeps_producers_and_expiry_forgets_idle_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: 20 * 1024,
        producer_id_expiration_ms: 60_000,
        producer_id_expiration_check_interval_ms: 1_000,
        ..config()
    };
    let mut log = open(dir.path(), &config);
    // producer 0 writes once, long ago; producer 1 keeps writing
    log.append_as_leader(&mut pbatch(0, 0, 0, 3, T0 - 50_000), LeaderEpoch(0), T0)
        .unwrap();
    for i in 0..60 {
        log.append_as_leader(&mut pbatch(1, 0, i * 3, 3, T0), LeaderEpoch(0), T0)
            .unwrap();
    }
    let deleted = log
        .delete_retained_segments(T0, log.log_end_offset())
        .unwrap();
    assert!(deleted > 0 && log.log_start_offset() > Offset(3));
    // producer 0 has no batch left in the log, yet it is still known (KIP-360)
    assert!(log.producer_state().entry(0).is_some());
    assert!(list_snapshots(dir.path())
        .unwrap()
        .iter()
        .all(|s| *s >= log.log_start_offset()));
    // ten seconds later (its batch is 60 s old): forgotten; producer 1 stays
    log.tick(T0 + 10_000).unwrap();
    assert!(log.producer_state().entry(0).is_none());
    assert!(log.producer_state().entry(1).is_some());
}
