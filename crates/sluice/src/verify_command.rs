//! `sluice verify`: the chaos suite's workload and checker (crate `sluice-verify`) on
//! their own, against any Kafka-compatible bootstrap address — Sluice, Kafka or Redpanda —
//! with faults left to the operator. Prints progress while it runs, then the checker's
//! table; exits 1 when an anomaly that the chosen acks level forbids was found.
//! `--check HISTORY` checks a recorded history again without running anything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_verify::workload::Progress;
use sluice_verify::{check, WorkloadConfig};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Bootstrap servers, host:port[,host:port...] of any Kafka-compatible cluster.
    #[arg(
        long = "bootstrap-server",
        short = 'b',
        alias = "brokers",
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_server: String,
    /// The topic to write and read (created if missing, else used as it is).
    #[arg(long, default_value = "sluice-verify")]
    topic: String,
    /// Partitions of a topic this creates.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Replication factor of a topic this creates.
    #[arg(long, default_value_t = 3)]
    replication_factor: i32,
    /// `min.insync.replicas` of a topic this creates.
    #[arg(long, default_value_t = 2)]
    min_insync_replicas: i32,
    /// The producers' acks: all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Idempotent producers (enable.idempotence): then no value may be written twice.
    #[arg(long)]
    idempotent: bool,
    #[arg(long, default_value_t = 2)]
    producers: u32,
    /// Consumers of one group, polling while the producers run and until they reach the end.
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Records per second, all producers together.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long the producers run: `60s`, `5m`, ...
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// librdkafka's message.timeout.ms: how long one send may be retried.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    message_timeout: Duration,
    /// How long the final read and the consumers' catching up may take.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    final_read_timeout: Duration,
    /// Where the history goes (one JSON event per line).
    #[arg(long, default_value = "sluice-verify-history.jsonl")]
    history: PathBuf,
    /// A librdkafka setting for every client, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    client_settings: Vec<String>,
    /// Check this recorded history instead of running the workload.
    #[arg(long, value_name = "HISTORY")]
    check: Option<PathBuf>,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let events = match &args.check {
        Some(path) => sluice_verify::history::read(path)?,
        None => run_workload(&args)?,
    };
    let report = check(&events);
    print!("{}", report.table());
    if !report.valid() {
        bail!(
            "verification failed: anomalies the acks level forbids (history kept in {})",
            args.check.as_ref().unwrap_or(&args.history).display()
        );
    }
    Ok(())
}

fn run_workload(args: &VerifyArgs) -> Result<Vec<sluice_verify::Event>> {
    let mut client_settings = Vec::new();
    for kv in &args.client_settings {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("-X {kv:?}: expected KEY=VALUE"))?;
        client_settings.push((k.trim().to_string(), v.trim().to_string()));
    }
    let config = WorkloadConfig {
        bootstrap: args.bootstrap_server.clone(),
        topic: args.topic.clone(),
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        min_insync_replicas: args.min_insync_replicas,
        acks: args.acks.clone(),
        idempotent: args.idempotent,
        producers: args.producers,
        consumers: args.consumers,
        rate: args.rate,
        duration: args.duration,
        message_timeout: args.message_timeout,
        final_read_timeout: args.final_read_timeout,
        history: args.history.clone(),
        client_settings,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    // Ctrl-C ends the produce phase; the final read and the check still run
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
                    eprintln!("interrupted: stopping the producers, then the final read");
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (progress, done) = (Arc::clone(&progress), Arc::clone(&done));
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    eprintln!(
                        "{:>5.0}s sent {} acknowledged {} failed {} polled {}",
                        started.elapsed().as_secs_f64(),
                        progress.sent.load(Ordering::Relaxed),
                        progress.acked.load(Ordering::Relaxed),
                        progress.failed.load(Ordering::Relaxed),
                        progress.polled.load(Ordering::Relaxed),
                    );
                }
            }
        })
    };
    let events = sluice_verify::run(&config, stop, progress);
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    Ok(events?)
}
