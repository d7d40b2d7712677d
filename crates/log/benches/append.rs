//! Append throughput of the log (write, mmap and hybrid modes) against a plain sequential
//! `write(2)` of the same bytes to a file, for 1 KiB, 16 KiB and 256 KiB batches.
//!
//! Each iteration writes 64 MiB into a fresh file/log in a temp dir (creation and deletion
//! are not timed), so every mode pays the same page-cache allocation costs.
//! Run: `cargo bench -p sluice-log --bench append`

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_log::{AppendMode, Log, LogConfig};
use sluice_record::{LeaderEpoch, Offset, TopicPartition};

mod common;

const BYTES_PER_ITERATION: usize = 64 * 1024 * 1024;

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(15);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    for (label, size) in [("1KiB", 1024), ("16KiB", 16 * 1024), ("256KiB", 256 * 1024)] {
        let batch = common::batch_of_about(size);
        let batches_per_iteration = BYTES_PER_ITERATION / batch.len();
        group.throughput(Throughput::Bytes(
            (batches_per_iteration * batch.len()) as u64,
        ));

        group.bench_with_input(
            BenchmarkId::new("baseline_write", label),
            &batch,
            |b, batch| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().expect("temp dir");
                        let mut file = File::create(dir.path().join("plain.log")).expect("create");
                        let start = Instant::now();
                        for _ in 0..batches_per_iteration {
                            file.write_all(batch).expect("write");
                        }
                        total += start.elapsed();
                    }
                    total
                })
            },
        );

        for mode in [AppendMode::Write, AppendMode::Mmap, AppendMode::Hybrid] {
            let id = BenchmarkId::new(format!("log_{}", mode.name()), label);
            group.bench_with_input(id, &batch, |b, batch| {
                let mut scratch = batch.clone();
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().expect("temp dir");
                        let config = LogConfig {
                            append_mode: mode,
                            ..LogConfig::default()
                        };
                        let mut log = Log::open(
                            dir.path(),
                            TopicPartition::new("bench", 0),
                            config,
                            Offset::ZERO,
                            true,
                            0,
                        )
                        .expect("open log");
                        let start = Instant::now();
                        for _ in 0..batches_per_iteration {
                            log.append_as_leader(&mut scratch, LeaderEpoch(1), 0)
                                .expect("append");
                        }
                        total += start.elapsed();
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
