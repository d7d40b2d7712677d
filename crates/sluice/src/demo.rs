//! `sluice demo`: the promise in a few minutes, with nothing to set up. Starts three
//! nodes (broker + controller each) as child processes of this one, on loopback ports
//! the OS hands out, in a temporary directory; creates a topic (3 partitions, RF=3,
//! `min.insync.replicas=2`); produces with acks=all (Sluice's own idempotent producer)
//! while printing progress; kill -9s the leader of partition 0 and prints who took over
//! and how long it took; keeps producing; brings the node back and shows it rejoining
//! the ISR; then reads everything back and reports that every acknowledged record is
//! there exactly once.
//!
//! Invariant: nothing outlives the demo. The nodes die with it (they are killed on
//! drop, on Ctrl-C, and by the kernel if this process dies: `PR_SET_PDEATHSIG`), and the
//! directory goes with them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_client::{Producer, ProducerConfig, ProducerRecord};

use crate::console_consumer::{self, ConsumeOptions, StartOffset};
use crate::kafka_client::Cluster;

const TOPIC: &str = "demo";
const NODES: [i32; 3] = [1, 2, 3];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Records per second the producer sends.
    pub rate: u32,
    /// How long each phase (before the kill, during the outage, after the return) lasts.
    pub phase: Duration,
}

struct Node {
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The three nodes and where they keep their files.
struct DemoCluster {
    exe: PathBuf,
    dir: tempfile::TempDir,
    kafka_ports: HashMap<i32, u16>,
    controller_ports: HashMap<i32, u16>,
    nodes: HashMap<i32, Node>,
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl DemoCluster {
    fn new() -> Result<Self> {
        let exe = std::env::current_exe().context("finding the sluice binary")?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-demo-")
            .tempdir()
            .context("creating the demo's directory")?;
        let mut cluster = DemoCluster {
            exe,
            dir,
            kafka_ports: HashMap::new(),
            controller_ports: HashMap::new(),
            nodes: HashMap::new(),
        };
        cluster.pick_ports()?;
        Ok(cluster)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn bootstrap(&self) -> String {
        NODES
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.kafka_ports[n]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `id` (on its data if it ran before); the receiver hears when it says
    /// `ready` (once it has joined the cluster).
    fn spawn(&mut self, id: i32) -> Result<mpsc::Receiver<()>> {
        let voters: Vec<String> = NODES
            .iter()
            .map(|n| format!("{n}@127.0.0.1:{}", self.controller_ports[n]))
            .collect();
        let (kafka, controller) = (self.kafka_ports[&id], self.controller_ports[&id]);
        let settings = [
            format!("node.id={id}"),
            format!("controller.quorum.voters={}", voters.join(",")),
            format!("listeners=PLAINTEXT://127.0.0.1:{kafka},CONTROLLER://127.0.0.1:{controller}"),
            format!("advertised.listeners=PLAINTEXT://127.0.0.1:{kafka}"),
            format!(
                "log.dirs={}",
                self.path().join(format!("data-{id}")).display()
            ),
            format!(
                "metadata.log.dir={}",
                self.path().join(format!("meta-{id}")).display()
            ),
            "default.replication.factor=3".into(),
            "min.insync.replicas=2".into(),
            // fast failover on one host, as deploy/local-cluster.sh (docs/operations.md)
            "broker.session.timeout.ms=1000".into(),
            "broker.heartbeat.interval.ms=100".into(),
            "controller.quorum.election.timeout.ms=500".into(),
        ];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("node-{id}.log")))?;
        let mut command = Command::new(&self.exe);
        command.arg("broker");
        for s in &settings {
            command.arg("--override").arg(s);
        }
        command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: between fork and exec only prctl(2) runs, which is async-signal-safe
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().context("starting a node")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        self.nodes.insert(id, Node { child: Some(child) });
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        Ok(ready_rx)
    }

    fn log_path(&self, id: i32) -> PathBuf {
        self.path().join(format!("node-{id}.log"))
    }

    fn wait_ready(&self, id: i32, ready: &mpsc::Receiver<()>) -> Result<(), NotReady> {
        match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(NotReady::Late(format!(
                "node {id} was not ready within 60 s (its log: {})",
                self.log_path(id).display()
            ))),
            // its stdout closed: the process ended; its log says why
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(5)..];
                Err(NotReady::Exited {
                    port_taken: log.contains("Address already in use"),
                    message: format!("node {id} stopped while starting:\n{}", tail.join("\n")),
                })
            }
        }
    }

    /// Starts every node at once (a node is ready only once a quorum is up), then waits
    /// for each. The ports were free when picked but are bound only now, by the nodes: if
    /// something else took one meanwhile, starts again on new ports (three tries).
    fn start_all(&mut self) -> Result<()> {
        for attempt in 1.. {
            let mut ready = Vec::new();
            for id in NODES {
                ready.push((id, self.spawn(id)?));
            }
            let outcome = ready
                .iter()
                .try_for_each(|(id, rx)| self.wait_ready(*id, rx));
            match outcome {
                Ok(()) => return Ok(()),
                Err(NotReady::Exited {
                    port_taken: true, ..
                }) if attempt < 3 => {
                    self.nodes.clear();
                    self.pick_ports()?;
                }
                Err(other) => bail!(other.into_message()),
            }
        }
        unreachable!("the loop returns")
    }

    fn pick_ports(&mut self) -> Result<()> {
        let ports = free_ports(6)?;
        self.kafka_ports = NODES
            .iter()
            .copied()
            .zip(ports[..3].iter().copied())
            .collect();
        self.controller_ports = NODES
            .iter()
            .copied()
            .zip(ports[3..].iter().copied())
            .collect();
        Ok(())
    }

    fn restart(&mut self, id: i32) -> Result<()> {
        let ready = self.spawn(id)?;
        self.wait_ready(id, &ready)
            .map_err(|e| anyhow::anyhow!(e.into_message()))
    }

    fn kill(&mut self, id: i32) {
        self.nodes.remove(&id);
    }
}

/// Why a node did not say `ready`.
enum NotReady {
    /// Its process ended; `port_taken` when it could not bind a port.
    Exited {
        port_taken: bool,
        message: String,
    },
    Late(String),
}

impl NotReady {
    fn into_message(self) -> String {
        match self {
            NotReady::Exited { message, .. } | NotReady::Late(message) => message,
        }
    }
}

/// Creates the demo topic. Nodes that just started can still be settling (a controller
/// election, a broker fenced for a late heartbeat on a busy machine), so a refusal is
/// tried again for up to 30 s; a topic a timed-out earlier try made is as good.
async fn create_topic(bootstrap: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let error = match crate::topic_admin::create(
            bootstrap,
            TOPIC,
            3,
            3,
            &["min.insync.replicas=2".to_string()],
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let exists = error
            .downcast_ref::<crate::topic_admin::CreateTopicError>()
            .is_some_and(|e| e.code == sluice_metadata::error_code::TOPIC_ALREADY_EXISTS);
        if exists {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(error);
        }
        tracing::debug!("creating the demo topic, trying again: {error:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The leader and ISR of `demo-0`, as the cluster tells a client.
async fn partition_zero(bootstrap: &str) -> Result<(i32, Vec<i32>)> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(Some(&[TOPIC.to_string()])).await?;
    let p = metadata
        .topics
        .first()
        .and_then(|t| t.partitions.iter().find(|p| p.partition_index == 0))
        .context("no partition 0 in the metadata")?;
    Ok((p.leader_id.0, p.isr_nodes.iter().map(|b| b.0).collect()))
}

/// Polls `check` every 50 ms until it says yes; fails after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

/// What the producer task saw.
#[derive(Default)]
struct Produced {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    /// value -> (partition, offset) of every acknowledged record
    acked_at: Mutex<HashMap<String, (i32, i64)>>,
}

/// Sends `demo-<n>` records at `rate` until `stop`; every report is kept.
async fn produce(
    bootstrap: String,
    rate: u32,
    stop: Arc<AtomicBool>,
    produced: Arc<Produced>,
) -> Result<()> {
    let config = ProducerConfig {
        bootstrap_servers: bootstrap,
        acks: -1,
        enable_idempotence: true,
        ..ProducerConfig::default()
    };
    let (producer, mut reports) = Producer::connect(config).await?;
    // the producer numbers records 0, 1, 2... in send order: record n is `demo-<n>`
    let collector = {
        let produced = produced.clone();
        tokio::spawn(async move {
            while let Some(batch) = reports.recv().await {
                for report in batch.records() {
                    match report.result {
                        Ok(offset) => {
                            produced.acked.fetch_add(1, Ordering::Relaxed);
                            produced
                                .acked_at
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(
                                    format!("demo-{}", report.record_id),
                                    (report.partition, offset),
                                );
                        }
                        Err(_) => {
                            produced.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
        let value = format!("demo-{n}");
        let id = producer
            .send(ProducerRecord {
                topic: TOPIC,
                value: Some(value.as_bytes()),
                ..ProducerRecord::default()
            })
            .await?;
        if id != n {
            bail!("the producer numbered record {n} as {id}");
        }
        n += 1;
        produced.sent.store(n, Ordering::Relaxed);
    }
    producer.close().await;
    collector.await.context("the delivery report collector")?;
    Ok(())
}

/// Prints a progress line every second until `stop`.
async fn show_progress(produced: Arc<Produced>, stop: Arc<AtomicBool>, started: Instant) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "  {:>5.1}s  sent {:>7}  acknowledged {:>7}  failed {}",
            started.elapsed().as_secs_f64(),
            produced.sent.load(Ordering::Relaxed),
            produced.acked.load(Ordering::Relaxed),
            produced.failed.load(Ordering::Relaxed)
        );
    }
}

/// Runs the demo; Ctrl-C stops it (and the cluster) at any point.
pub async fn run(options: DemoOptions) -> Result<()> {
    let mut cluster = DemoCluster::new()?;
    let outcome = tokio::select! {
        r = demo(&mut cluster, &options) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let dir = cluster.path().display().to_string();
    drop(cluster);
    println!("Stopped the three nodes and removed {dir}.");
    outcome
}

async fn demo(cluster: &mut DemoCluster, options: &DemoOptions) -> Result<()> {
    println!(
        "Starting three Sluice nodes (broker + controller each) in {}",
        cluster.path().display()
    );
    cluster.start_all()?;
    let bootstrap = cluster.bootstrap();
    println!("  bootstrap: {bootstrap}");
    create_topic(&bootstrap).await?;
    wait_for(
        "every partition of the topic has a leader",
        Duration::from_secs(30),
        || async {
            partition_zero(&bootstrap)
                .await
                .is_ok_and(|(leader, isr)| leader >= 0 && isr.len() == 3)
        },
    )
    .await?;
    println!("Created topic {TOPIC}: 3 partitions, replication factor 3, min.insync.replicas=2.");
    println!(
        "Producing {} records/s with acks=all (idempotent producer)...",
        options.rate
    );
    let produced = Arc::new(Produced::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let producer = tokio::spawn(produce(
        bootstrap.clone(),
        options.rate,
        stop.clone(),
        produced.clone(),
    ));
    let progress = tokio::spawn(show_progress(produced.clone(), stop.clone(), started));
    let result = async {
        tokio::time::sleep(options.phase).await;
        let (leader, _) = partition_zero(&bootstrap).await?;
        println!("kill -9 node {leader}, the leader of {TOPIC}-0");
        cluster.kill(leader);
        let took = wait_for(
            "a new leader of partition 0",
            Duration::from_secs(60),
            || async {
                partition_zero(&bootstrap)
                    .await
                    .is_ok_and(|(l, _)| l >= 0 && l != leader)
            },
        )
        .await?;
        let (new_leader, isr) = partition_zero(&bootstrap).await?;
        println!(
            "node {new_leader} took over {TOPIC}-0 {} ms after the kill (ISR now {isr:?})",
            took.as_millis()
        );
        tokio::time::sleep(options.phase).await;
        println!("Starting node {leader} again on its data...");
        let restarting = Instant::now();
        cluster.restart(leader)?;
        wait_for(
            "the restarted node rejoins the ISR",
            Duration::from_secs(60),
            || async {
                partition_zero(&bootstrap)
                    .await
                    .is_ok_and(|(_, isr)| isr.contains(&leader))
            },
        )
        .await?;
        println!(
            "node {leader} is back in the ISR of {TOPIC}-0, {:.1} s after it was started again",
            restarting.elapsed().as_secs_f64()
        );
        tokio::time::sleep(options.phase).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    producer.await.context("the producer task")??;
    progress.await.ok();
    result?;
    let acked = produced.acked.load(Ordering::Relaxed);
    println!(
        "Stopped producing: {} sent, {acked} acknowledged, {} failed.",
        produced.sent.load(Ordering::Relaxed),
        produced.failed.load(Ordering::Relaxed)
    );
    println!("Reading {TOPIC} back from the beginning...");
    let mut out = Vec::new();
    let options = ConsumeOptions {
        start: StartOffset::Beginning,
        partition: None,
        format: "%p %o %s\n".to_string(),
        count: None,
        exit_at_end: true,
    };
    console_consumer::run(&bootstrap, TOPIC, &options, &mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let mut seen: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ' ');
        let (Some(p), Some(o), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
            seen.entry(v).or_default().push((p, o));
        }
    }
    let acked_at = produced.acked_at.lock().unwrap_or_else(|e| e.into_inner());
    let missing = acked_at
        .keys()
        .filter(|v| !seen.contains_key(v.as_str()))
        .count();
    let moved = acked_at
        .iter()
        .filter(|(v, at)| seen.get(v.as_str()).is_some_and(|s| !s.contains(at)))
        .count();
    let duplicated = seen.values().filter(|s| s.len() > 1).count();
    let read: usize = seen.values().map(Vec::len).sum();
    println!(
        "Read {read} records: every acknowledged record present exactly once? {} ({missing} missing, {duplicated} duplicated, {moved} at another offset than acknowledged)",
        if missing + duplicated + moved == 0 { "yes" } else { "NO" }
    );
    if missing + duplicated + moved > 0 {
        bail!("acknowledged records missing or duplicated");
    }
    Ok(())
}
