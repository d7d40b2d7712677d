//! The one Sluice binary. Today it carries the storage tools and `sluice broker` (the
//! broker and controller roles, KRaft-style, combined by default); `topic`, `produce`,
//! `consume`, `cluster`, `bench` and `demo` arrive with their issues.
//!
//! This is the only crate that parses command lines and configuration.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_log::{AppendMode, LogConfig, LogManager};
use sluice_record::{now_ms, BatchBuilder, Compression, LeaderEpoch, TopicPartition};

mod admin_server;
mod bench_consume;
mod bench_groups;
mod bench_produce;
mod cluster_status;
mod console_consumer;
mod console_producer;
mod demo;
mod dump_log;
mod group_admin;
mod group_client;
mod kafka_client;
mod leader_election;
mod node_config;
mod probe;
mod topic_admin;
mod verify_command;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A replicated, Kafka-compatible commit log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How long a client command waits for each connection and each answer from a broker:
    /// `30s` (the default), `500ms`, `2m`, or plain seconds.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    timeout: std::time::Duration,
}

/// `500ms`, `30s`, `2m` or plain seconds, above zero.
fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let ms = value * unit_ms;
    if !(1.0..=86_400_000.0).contains(&ms) {
        return Err(format!("{text:?}: must be between 1ms and 24h"));
    }
    Ok(std::time::Duration::from_millis(ms as u64))
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: its roles come from `process.roles` (Kafka's KRaft names). Stops on
    /// SIGTERM or SIGINT.
    Broker {
        /// TOML file with Kafka-named settings (`node.id`, `controller.quorum.voters`, ...).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `key=value`, overriding the file and `SLUICE_*` environment variables.
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// GET a node's admin endpoint (default `/readyz`) and exit 0 on HTTP 200: a
    /// healthcheck that needs nothing but this binary.
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:9644/readyz")]
        url: String,
    },
    /// The configuration reference (every node setting and topic config, as Markdown).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create, list, describe or delete topics (like kafka-topics.sh / rpk topic).
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// What clients see of the cluster: brokers, controller, partitions without a leader.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// List, describe, delete consumer groups and reset their offsets (like
    /// kafka-consumer-groups.sh).
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Check a Kafka-compatible cluster from outside as the chaos suite does: librdkafka
    /// producers and group consumers record every operation, then a checker looks for
    /// lost, duplicated, reordered and inconsistent records. Faults are yours to inject.
    Verify(verify_command::VerifyArgs),
    /// Start a 3-node cluster here (child processes, temporary directory), produce with
    /// acks=all, kill -9 a partition leader, watch a follower take over and the node
    /// rejoin, then check that every acknowledged record is there exactly once. Leaves
    /// nothing running.
    Demo {
        /// Records per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Length of each phase: before the kill, during the outage, after the return.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        phase: Duration,
    },
    /// Measure the cluster through the Kafka protocol (figures for docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Produce stdin lines as records to TOPIC (like kcat -P).
    Produce {
        topic: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// 0, 1 or all.
        #[arg(long, default_value = "all")]
        acks: String,
        /// The key of every record (records with a key go to murmur2(key), as in Kafka).
        #[arg(long, short = 'k')]
        key: Option<String>,
        /// Send every record to this partition.
        #[arg(long, short = 'p')]
        partition: Option<i32>,
        /// none, gzip, snappy, lz4, zstd.
        #[arg(long, short = 'z', default_value = "none")]
        compression: String,
        /// `batch.size`: bytes of records per batch.
        #[arg(long, default_value_t = 16_384)]
        batch_size: usize,
        /// `linger.ms`: how long a batch waits for more records.
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// Print records of TOPIC, one per line (like kcat -C).
    Consume {
        topic: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// beginning, end, or an offset.
        #[arg(long, short = 'o', default_value = "beginning")]
        offset: String,
        /// Only this partition.
        #[arg(long, short = 'p')]
        partition: Option<i32>,
        /// kcat-style: %s value, %k key, %t topic, %p partition, %o offset, %T timestamp, %h headers.
        #[arg(long, short = 'f', default_value = "%s\\n")]
        format: String,
        /// Stop after this many records.
        #[arg(long, short = 'c')]
        count: Option<u64>,
        /// Stop at the end of every partition instead of waiting for more.
        #[arg(long, short = 'e')]
        exit: bool,
    },
    /// Print the batches (and with --print-data-log, the records) of segment files, like
    /// Kafka's kafka-dump-log.sh. Accepts .log files or partition directories.
    DumpLog {
        /// Segment files (.log) or partition directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also decode and print every record (decompressing if needed).
        #[arg(long)]
        print_data_log: bool,
    },
    /// Append lines from stdin as records to a partition log in a local data directory
    /// (no broker involved: a way to try the storage engine by hand).
    AppendLog {
        /// The data directory (`log.dirs`).
        #[arg(long)]
        dir: PathBuf,
        /// The partition, as `topic-N` (its directory name).
        partition: String,
        /// Records per batch.
        #[arg(long, default_value_t = 100)]
        batch_records: usize,
        /// Batch codec: none, gzip, snappy, lz4, zstd.
        #[arg(long, default_value = "none")]
        compression: String,
        /// `log.segment.bytes`.
        #[arg(long, default_value_t = 1024 * 1024 * 1024)]
        segment_bytes: u64,
        /// Active segment append mode: write, hybrid or mmap.
        #[arg(long, default_value = "write")]
        append_mode: String,
    },
}

/// Where a client command connects first.
#[derive(clap::Args)]
struct Bootstrap {
    /// Bootstrap brokers, host:port[,host:port...] (env SLUICE_BROKERS).
    #[arg(
        long = "brokers",
        short = 'b',
        global = true,
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print brokers, the active controller and partition health; exit 1 while a
    /// partition has no leader (or fewer than --expect-brokers brokers are live).
    Status {
        #[arg(long)]
        expect_brokers: Option<usize>,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Every group, with its state and protocol type.
    List,
    /// Per partition: committed offset, log end offset, lag, and the member it is
    /// assigned to; the group's state and assignor first.
    Describe { group: String },
    /// Delete a group with no members: its committed offsets go too.
    Delete { group: String },
    /// Move a group's committed offsets (only while it has no members). Prints the new
    /// offsets; commits them only with --execute.
    #[command(group(clap::ArgGroup::new("to").required(true).args([
        "to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"
    ])))]
    ResetOffsets {
        group: String,
        /// TOPIC, or TOPIC:P,P,... for some partitions.
        #[arg(long)]
        topic: String,
        #[arg(long)]
        to_earliest: bool,
        #[arg(long)]
        to_latest: bool,
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<i64>,
        /// YYYY-MM-DDTHH:mm:SS.sss (UTC unless an offset follows).
        #[arg(long, value_name = "DATETIME")]
        to_datetime: Option<String>,
        /// Move each committed offset by N (negative: back).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Only show the new offsets (the default).
        #[arg(long, conflicts_with = "execute")]
        dry_run: bool,
        /// Commit the new offsets.
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Producer throughput and latency, as kafka-producer-perf-test measures them, with
    /// Sluice's own producer. Creates TOPIC if it does not exist.
    Produce(bench_produce::ProduceArgs),
    /// Consumer throughput, as kafka-consumer-perf-test measures it, with Sluice's own
    /// consumer: TOPIC read from its earliest offsets to the end it had at the start.
    Consume(bench_consume::ConsumeArgs),
    /// End-to-end latency (send → receive) of records produced at --throughput while a
    /// consumer reads them; Kafka's summary line. Creates TOPIC if it does not exist.
    E2e(bench_consume::E2eArgs),
    /// Offset commits: one member alone (the baseline), then MEMBERS at once, each commit
    /// carrying an offset for every partition of TOPIC (which must exist).
    Commits {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Commits per second the members offer together (default: as fast as answered).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Rebalance time of a group of MEMBERS when one more member joins.
    Rebalance {
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How often members heartbeat (they learn of a rebalance from a heartbeat).
        #[arg(long, default_value_t = 100)]
        heartbeat_interval_ms: u64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print docs/configuration.md: every setting, its default, environment variable and
    /// meaning.
    Reference,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partitions (-1: the broker's num.partitions).
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        /// Replication factor (-1: the broker's default.replication.factor).
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// Topic config, key=value (repeatable), e.g. retention.ms=3600000.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Describe a topic: partitions, leaders, replicas, ISR, configs set on it.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Move leadership to each partition's preferred replica (the first listed), as
    /// kafka-leader-election.sh: for one partition, a topic, or every partition.
    ElectLeaders {
        /// Only this topic's partitions (default: every partition).
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        /// preferred, or unclean (a leader for leaderless partitions from any live replica).
        #[arg(long, value_enum, default_value = "preferred")]
        election_type: leader_election::ElectionType,
    },
}

/// Runs a client command on a small runtime.
fn client<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn main() {
    if let Err(e) = run() {
        // a reader that went away (`sluice consume ... | head`) is not an error
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    kafka_client::set_request_timeout(cli.timeout);
    // a broker logs its state changes (elections, fencing, ISR moves) by default, as Kafka
    // does at INFO; the command-line tools only warnings. RUST_LOG overrides both.
    // openraft's per-RPC errors about an unreachable voter (~20 a second while one is down:
    // replication retries, every leadership confirmation) are off; the controller logs each
    // voter becoming unreachable and reachable again once instead
    let default_filter = match cli.command {
        Command::Broker { .. } => {
            "info,openraft=warn,openraft::replication=off,openraft::core::raft_core=off,openraft::engine::handler::replication_handler=off"
        }
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Broker { config, overrides } => run_node(config.as_deref(), &overrides),
        Command::Topic { command, bootstrap } => {
            let brokers = bootstrap.brokers;
            let out = client(async {
                match command {
                    TopicCommand::Create {
                        name,
                        partitions,
                        replication_factor,
                        configs,
                    } => topic_admin::create(
                        &brokers,
                        &name,
                        partitions,
                        replication_factor,
                        &configs,
                    )
                    .await
                    .map(|s| s + "\n"),
                    TopicCommand::List => topic_admin::list(&brokers).await,
                    TopicCommand::Describe { name } => topic_admin::describe(&brokers, &name).await,
                    TopicCommand::Delete { name } => {
                        topic_admin::delete(&brokers, &name).await.map(|s| s + "\n")
                    }
                    TopicCommand::ElectLeaders {
                        topic,
                        partition,
                        election_type,
                    } => {
                        leader_election::elect(&brokers, topic.as_deref(), partition, election_type)
                            .await
                            .map(|s| s + "\n")
                    }
                }
            })?;
            print!("{out}");
            Ok(())
        }
        Command::Verify(args) => verify_command::run(args),
        Command::Probe { url } => {
            print!("{}", probe::probe(&url, cli.timeout)?);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Reference,
        } => {
            print!("{}", node_config::reference_markdown());
            Ok(())
        }
        Command::Cluster { command, bootstrap } => match command {
            ClusterCommand::Status { expect_brokers } => {
                client(cluster_status::status(&bootstrap.brokers, expect_brokers))
            }
        },
        Command::Group { command, bootstrap } => {
            let brokers = bootstrap.brokers;
            let out = client(async {
                match command {
                    GroupCommand::List => group_admin::list(&brokers).await,
                    GroupCommand::Describe { group } => {
                        group_admin::describe(&brokers, &group).await
                    }
                    GroupCommand::Delete { group } => group_admin::delete(&brokers, &group).await,
                    GroupCommand::ResetOffsets {
                        group,
                        topic,
                        to_earliest,
                        to_latest,
                        to_offset,
                        to_datetime,
                        shift_by,
                        dry_run: _,
                        execute,
                    } => {
                        let to = if to_earliest {
                            group_admin::ResetTo::Earliest
                        } else if to_latest {
                            group_admin::ResetTo::Latest
                        } else if let Some(n) = to_offset {
                            group_admin::ResetTo::Offset(n)
                        } else if let Some(d) = to_datetime {
                            group_admin::ResetTo::Timestamp(group_admin::parse_datetime(&d)?)
                        } else if let Some(n) = shift_by {
                            group_admin::ResetTo::ShiftBy(n)
                        } else {
                            anyhow::bail!("say where to reset to (--to-earliest, ...)")
                        };
                        group_admin::reset_offsets(&brokers, &group, &topic, to, execute).await
                    }
                }
            })?;
            print!("{out}");
            Ok(())
        }
        Command::Demo { rate, phase } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(demo::run(demo::DemoOptions { rate, phase })),
        Command::Bench { command, bootstrap } => {
            // the producers' sender tasks want more than one thread
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let out = runtime.block_on(async {
                match command {
                    BenchCommand::Produce(args) => {
                        bench_produce::produce(&bootstrap.brokers, args.bench()?).await
                    }
                    BenchCommand::Consume(args) => {
                        bench_consume::consume(&bootstrap.brokers, args).await
                    }
                    BenchCommand::E2e(args) => bench_consume::e2e(&bootstrap.brokers, args).await,
                    BenchCommand::Commits {
                        topic,
                        members,
                        duration_s,
                        rate,
                    } => {
                        bench_groups::commits(
                            &bootstrap.brokers,
                            &topic,
                            members,
                            Duration::from_secs(duration_s),
                            rate,
                        )
                        .await
                    }
                    BenchCommand::Rebalance {
                        members,
                        rounds,
                        heartbeat_interval_ms,
                    } => {
                        bench_groups::rebalance(
                            &bootstrap.brokers,
                            members,
                            rounds,
                            Duration::from_millis(heartbeat_interval_ms),
                        )
                        .await
                    }
                }
            })?;
            println!("{out}");
            Ok(())
        }
        Command::Produce {
            topic,
            bootstrap,
            acks,
            key,
            partition,
            compression,
            batch_size,
            linger_ms,
        } => {
            let Some(compression) = Compression::from_name(&compression) else {
                bail!("unknown compression {compression:?} (none, gzip, snappy, lz4, zstd)");
            };
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let options = console_producer::ProduceOptions {
                acks: console_producer::parse_acks(&acks)?,
                key,
                partition,
                compression,
                batch_size,
                linger_ms,
            };
            let summary = client(console_producer::run(&bootstrap.brokers, &topic, &options))?;
            eprintln!("{summary}");
            Ok(())
        }
        Command::Consume {
            topic,
            bootstrap,
            offset,
            partition,
            format,
            count,
            exit,
        } => {
            let options = console_consumer::ConsumeOptions {
                start: console_consumer::parse_offset(&offset)?,
                partition,
                format,
                count,
                exit_at_end: exit,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            client(console_consumer::run(
                &bootstrap.brokers,
                &topic,
                &options,
                &mut out,
            ))
        }
        Command::DumpLog {
            files,
            print_data_log,
        } => dump_log::run(&files, print_data_log, &mut std::io::stdout().lock()),
        Command::AppendLog {
            dir,
            partition,
            batch_records,
            compression,
            segment_bytes,
            append_mode,
        } => append_log(
            dir,
            &partition,
            batch_records,
            &compression,
            segment_bytes,
            &append_mode,
        ),
    }
}

fn append_log(
    dir: PathBuf,
    partition: &str,
    batch_records: usize,
    compression: &str,
    segment_bytes: u64,
    append_mode: &str,
) -> Result<()> {
    let tp = TopicPartition::parse_dir_name(partition)
        .with_context(|| format!("partition {partition:?} is not of the form topic-N"))?;
    let Some(codec) = Compression::from_name(compression) else {
        bail!("unknown compression {compression:?} (none, gzip, snappy, lz4, zstd)");
    };
    let Some(append_mode) = AppendMode::from_name(append_mode) else {
        bail!("unknown append mode {append_mode:?} (hybrid, write, mmap)");
    };
    if batch_records == 0 {
        bail!("--batch-records must be at least 1");
    }
    let config = LogConfig {
        segment_bytes,
        append_mode,
        ..LogConfig::default()
    };
    let mut manager = LogManager::open(&dir, config.clone(), now_ms())
        .with_context(|| format!("opening data directory {}", dir.display()))?;
    let log = manager.get_or_create(&tp, Some(config), now_ms())?;
    let mut appended = 0u64;
    let mut builder = BatchBuilder::new(codec);
    let flush = |builder: &mut BatchBuilder, appended: &mut u64| -> Result<()> {
        if builder.record_count() == 0 {
            return Ok(());
        }
        let mut batch = builder.build()?;
        let info = sluice_log::lock(&log).append_as_leader(&mut batch, LeaderEpoch(0), now_ms())?;
        *appended += info.record_count;
        *builder = BatchBuilder::new(codec);
        Ok(())
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        builder.append(now_ms(), None, Some(line.as_bytes()), &[]);
        if builder.record_count() as usize >= batch_records {
            flush(&mut builder, &mut appended)?;
        }
    }
    flush(&mut builder, &mut appended)?;
    let end = sluice_log::lock(&log).log_end_offset();
    manager.shutdown().context("closing the data directory")?;
    println!("appended {appended} records to {tp}; log end offset {end}");
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit, as Kafka's start
/// scripts expect operators to and as systemd's services get: every partition replica
/// holds files open, and the soft limit (often 1,024) would stop a broker at a few
/// hundred partitions. Returns the limit in force.
/// `sluice.log.max.open.files`: as set, or (0) half the open files limit — the rest is
/// for connections, index files opened to be resized or synced, checkpoints — at most
/// 4096 (a reopen costs one open(2); a partition being written never needs one).
fn segment_files_budget(setting: usize, open_files_limit: u64) -> usize {
    if setting > 0 {
        return setting;
    }
    let half = usize::try_from(open_files_limit / 2).unwrap_or(usize::MAX);
    half.clamp(64, 4096)
}

fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open files limit");
            0
        }
    }
}

fn run_node(config: Option<&std::path::Path>, overrides: &[String]) -> Result<()> {
    let config = node_config::NodeConfig::load(config, |k| std::env::var(k).ok(), overrides)?;
    let roles = config.roles()?;
    let is_controller = roles.contains(&node_config::Role::Controller);
    let is_broker = roles.contains(&node_config::Role::Broker);
    let node_id = config.node_id()?;
    let mut voters = config.voters()?;
    let controller = if is_controller {
        Some(config.controller_config()?)
    } else {
        None
    };
    // every setting is checked before anything starts
    let broker = if is_broker {
        Some((
            config.broker_listeners()?,
            config.broker_config(Vec::new())?,
        ))
    } else {
        None
    };
    // after every setting is checked: a bad config is one line on stderr and nothing else
    let open_files_limit = raise_open_files_limit();
    let broker = broker.map(|(binds, mut broker_config)| {
        let max_open = segment_files_budget(broker_config.log_max_open_files, open_files_limit);
        broker_config.log.open_files = sluice_log::OpenFileBudget::new(max_open);
        (binds, broker_config)
    });
    tracing::info!(open_files_limit, "open files limit");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut controller_node = None;
        let controller_listener = match &controller {
            Some(_) => {
                let bind = config.controller_bind_address()?;
                Some(
                    tokio::net::TcpListener::bind(&bind)
                        .await
                        .with_context(|| format!("binding the controller listener {bind}"))?,
                )
            }
            None => None,
        };
        // every listener is bound before anything connects out or accepts: once peers
        // reach the controller listener, an outgoing connection of theirs (or ours) could
        // otherwise take the broker port as its ephemeral source port
        let admin_listener = match config.admin_listener()? {
            Some(bind) => Some(
                tokio::net::TcpListener::bind(&bind)
                    .await
                    .with_context(|| format!("binding the admin listener {bind}"))?,
            ),
            None => None,
        };
        let broker = match broker {
            Some((binds, broker_config)) => {
                let mut listeners = Vec::with_capacity(binds.len());
                for (name, bind) in binds {
                    let listener = tokio::net::TcpListener::bind(&bind)
                        .await
                        .with_context(|| format!("binding the {name} listener {bind}"))?;
                    listeners.push((name, listener));
                }
                Some((listeners, broker_config))
            }
            None => None,
        };
        if let (Some(mut controller), Some(listener)) = (controller, controller_listener) {
            let bound = listener
                .local_addr()
                .context("controller listener address")?;
            // a voter address with port 0 (tests, one-node setups) is this node's bound one
            if let Some(me) = controller.voters.get_mut(&node_id) {
                if me.ends_with(":0") {
                    *me = bound.to_string();
                }
            }
            voters = controller.voters.clone();
            let node = sluice_controller::ControllerNode::start(controller, listener)
                .await
                .context("starting the controller")?;
            println!("listening CONTROLLER {bound}");
            tracing::info!(node_id, address = %bound, "controller started");
            controller_node = Some(node);
        }
        let mut broker_node = None;
        if let Some((mut listeners, mut broker_config)) = broker {
            broker_config.controllers = voters.values().cloned().collect();
            // the inter-broker listener first: its endpoint is the one brokers use
            let mut bound = Vec::with_capacity(listeners.len());
            for (name, listener) in &listeners {
                let address = listener.local_addr().context("broker listener address")?;
                broker_config
                    .advertised_endpoints
                    .push(config.advertised_endpoint(name, address)?);
                bound.push((name.clone(), address));
            }
            let (_, primary) = listeners.remove(0);
            let node =
                sluice_broker::BrokerNode::start_with_listeners(broker_config, primary, listeners)
                    .await
                    .context("starting the broker")?;
            for (name, address) in bound {
                println!("listening {name} {address}");
            }
            if node
                .wait_until_ready(std::time::Duration::from_secs(60))
                .await
            {
                println!("ready");
            } else {
                tracing::warn!(
                    node_id,
                    "the controllers have not admitted this broker yet; serving anyway"
                );
            }
            broker_node = Some(node);
        } else {
            println!("ready");
        }
        let admin_task = match admin_listener {
            Some(listener) => {
                let bound = listener.local_addr().context("admin listener address")?;
                let sources = admin_server::AdminSources {
                    broker: broker_node
                        .as_ref()
                        .map(|b| std::sync::Arc::clone(b.broker())),
                    controller: controller_node.as_ref().map(|c| c.status_reader()),
                };
                println!("listening ADMIN {bound}");
                Some(tokio::spawn(admin_server::serve(listener, sources)))
            }
            None => None,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(node_id, "stopping");
        if let Some(task) = admin_task {
            task.abort();
        }
        if let Some(b) = broker_node {
            let config = &b.broker().config;
            if config.controlled_shutdown_enable {
                let timeout =
                    std::time::Duration::from_millis(config.controlled_shutdown_timeout_ms);
                b.controlled_shutdown(timeout).await;
            }
            b.shutdown().await.context("stopping the broker")?;
        }
        if let Some(c) = controller_node {
            c.shutdown().await;
        }
        Ok(())
    })
}
