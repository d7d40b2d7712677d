//! What idempotent producers cost the log, each against a baseline measured in the same run:
//!
//! `append`: appending 64 MiB of ~16 KiB batches (100-byte records) as leader, with
//! producer ids (checked and recorded, 100 producers taking turns) against the same
//! batches without.
//!
//! `check_update`: the producer checks alone, per batch.
//!
//! `producer_recovery`: how long opening a log takes with 10,000 idempotent producers in it (5 batches each,
//! 50,000 batches of 10 × 100-byte records, ~57 MB in 16 MiB segments), against the same
//! log written without producer ids (the baseline, measured in the same run):
//!
//! - `clean`: after a clean close (the snapshot at the log end; nothing replayed);
//! - `killed`: after a kill -9 (the newest roll snapshot, then the active segment's
//!   batches replayed; the recovery point at the active segment, which is CRC-checked in
//!   both logs);
//! - `no_snapshot`: every snapshot gone: the whole log's batch headers replayed.
//!
//! Run: `cargo bench -p sluice-log --bench producer_state`

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use sluice_log::{list_snapshots, snapshot_path, Log, LogConfig};
use sluice_record::{BatchBuilder, Compression, LeaderEpoch, Offset, TopicPartition};

const PRODUCERS: i64 = 10_000;
const BATCHES_PER_PRODUCER: i32 = 5;
const RECORDS_PER_BATCH: i32 = 10;
const T0: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        ..LogConfig::default()
    }
}

fn tp() -> TopicPartition {
    TopicPartition::new("bench", 0)
}

/// Writes the log into `dir` (with producer ids or without) and closes it cleanly.
/// Returns the active segment's base offset (the recovery point after a kill).
fn write_log(dir: &Path, idempotent: bool) -> Offset {
    let mut log = Log::open(dir, tp(), config(), Offset::ZERO, true, T0).expect("open");
    let value = [b'v'; 100];
    for round in 0..BATCHES_PER_PRODUCER {
        for pid in 0..PRODUCERS {
            let mut b = BatchBuilder::new(Compression::None);
            if idempotent {
                b = b.producer(pid, 0, round * RECORDS_PER_BATCH);
            }
            for _ in 0..RECORDS_PER_BATCH {
                b.append(T0, None, Some(&value), &[]);
            }
            let mut bytes = b.build().expect("build");
            log.append_as_leader(&mut bytes, LeaderEpoch(0), T0)
                .expect("append");
        }
    }
    let active = log.segments().last().expect("a segment").base_offset();
    log.close().expect("close");
    active
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

struct Fixture {
    _root: tempfile::TempDir,
    plain: PathBuf,
    idempotent: PathBuf,
    killed: PathBuf,
    no_snapshot: PathBuf,
    active_base: Offset,
    end: Offset,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().expect("temp dir");
    let plain = root.path().join("plain");
    let idempotent = root.path().join("idempotent");
    let killed = root.path().join("killed");
    let no_snapshot = root.path().join("no-snapshot");
    let active_base = write_log(&plain, false);
    assert_eq!(write_log(&idempotent, true), active_base);
    copy_dir(&idempotent, &killed);
    copy_dir(&idempotent, &no_snapshot);
    let snapshots = list_snapshots(&idempotent).expect("list");
    let end = *snapshots.last().expect("the clean close's snapshot");
    std::fs::remove_file(snapshot_path(&killed, end)).expect("rm");
    for offset in snapshots {
        std::fs::remove_file(snapshot_path(&no_snapshot, offset)).expect("rm");
    }
    Fixture {
        _root: root,
        plain,
        idempotent,
        killed,
        no_snapshot,
        active_base,
        end,
    }
}

fn open(dir: &Path, recovery_point: Offset, clean: bool) -> Log {
    let log = Log::open(dir, tp(), config(), recovery_point, clean, T0).expect("open");
    std::hint::black_box(log.producer_state().len());
    log
}

/// Times opening a fresh copy of `dir` each iteration (an open may rebuild files; the
/// copy and the drop are not timed).
fn bench_open(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    dir: &Path,
    recovery_point: Offset,
    clean: bool,
) {
    group.bench_function(id, |b| {
        b.iter_batched(
            || {
                let copy = tempfile::tempdir().expect("temp dir");
                copy_dir(dir, copy.path());
                copy
            },
            |copy| {
                let log = open(copy.path(), recovery_point, clean);
                (log, copy)
            },
            BatchSize::PerIteration,
        )
    });
}

fn bench_recovery(c: &mut Criterion) {
    let f = fixture();
    let end = f.end;
    for (dir, recovery_point, clean) in [
        (&f.idempotent, end, true),
        (&f.killed, f.active_base, false),
        (&f.no_snapshot, end, true),
    ] {
        let copy = tempfile::tempdir().expect("temp dir");
        copy_dir(dir, copy.path());
        let log = open(copy.path(), recovery_point, clean);
        assert_eq!(log.producer_state().len(), PRODUCERS as usize);
    }
    let mut group = c.benchmark_group("producer_recovery");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let id = BenchmarkId::new;
    bench_open(&mut group, id("clean", "baseline"), &f.plain, end, true);
    bench_open(
        &mut group,
        id("clean", "10k_producers"),
        &f.idempotent,
        end,
        true,
    );
    let base = f.active_base;
    bench_open(&mut group, id("killed", "baseline"), &f.plain, base, false);
    bench_open(
        &mut group,
        id("killed", "10k_producers"),
        &f.killed,
        base,
        false,
    );
    bench_open(
        &mut group,
        id("no_snapshot", "10k_producers"),
        &f.no_snapshot,
        end,
        true,
    );
    group.finish();
}

/// ~16 KiB batches of 100-byte records, from `producers` producers taking turns (none:
/// without producer ids), enough for 64 MiB.
fn append_batches(producers: Option<i64>) -> Vec<Vec<u8>> {
    let value = [b'v'; 100];
    let records: usize = 140;
    let count = 64 * 1024 * 1024 / (records * 110);
    (0..count)
        .map(|i| {
            let mut b = BatchBuilder::new(Compression::None);
            if let Some(n) = producers {
                let pid = i as i64 % n;
                let seq = (i as i64 / n) as i32 * records as i32;
                b = b.producer(pid, 0, seq);
            }
            for _ in 0..records {
                b.append(T0, None, Some(&value), &[]);
            }
            b.build().expect("build")
        })
        .collect()
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(15);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    for (name, producers) in [("baseline", None), ("idempotent", Some(100))] {
        let batches = append_batches(producers);
        let bytes: usize = batches.iter().map(Vec::len).sum();
        group.throughput(criterion::Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::new("16KiB", name), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let log = Log::open(dir.path(), tp(), config(), Offset::ZERO, true, T0)
                        .expect("open");
                    (dir, log, batches.clone())
                },
                |(dir, mut log, mut batches)| {
                    for batch in &mut batches {
                        let info = log
                            .append_as_leader(batch, LeaderEpoch(0), T0)
                            .expect("append");
                        assert!(!info.duplicate);
                    }
                    (dir, log)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// The checks alone: `check` + `update` of one batch, 10,000 producers taking turns
/// (the rest of an append's work is the baseline of `append`).
fn bench_check_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_update");
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("per_batch_10k_producers", |b| {
        let mut state = sluice_log::ProducerStateManager::new();
        let mut i: i64 = 0;
        b.iter(|| {
            let pid = i % PRODUCERS;
            let batch = sluice_log::ProducerBatch {
                producer_id: pid,
                epoch: 0,
                first_seq: (i / PRODUCERS) as i32 * 10,
                last_seq: (i / PRODUCERS) as i32 * 10 + 9,
                offset_delta: 9,
                max_timestamp: T0,
                is_transactional: false,
                is_control: false,
            };
            let check = state.check(&batch).expect("in sequence");
            std::hint::black_box(check);
            state.update(&batch, Offset(i * 10 + 9));
            i += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_recovery, bench_check_update);
criterion_main!(benches);
