//! A three-node Sluice cluster of real processes on loopback (ports from the OS, a temp
//! dir, every process killed on drop), with the faults the tests inject: kill -9, restart
//! on the old data, SIGSTOP/SIGCONT. Two layouts: three combined broker+controller nodes
//! (what users run), or three broker-only nodes and one controller-only node (for tests
//! that stop two brokers at once without losing the controller quorum).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_record::RecordBatches;

use crate::{check, free_ports, run, sluice_bin, stdout_lines, NodeProcess};

pub const WAIT: Duration = Duration::from_secs(60);
pub const CONTROLLER_ID: i32 = 9;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Three nodes, each a broker and a controller voter (the default deployment).
    Combined,
    /// Three broker-only nodes and one controller-only node.
    DedicatedController,
}

pub struct ProcessCluster {
    dir: tempfile::TempDir,
    layout: Layout,
    broker_ports: BTreeMap<i32, u16>,
    /// Voter id → controller port.
    controller_ports: BTreeMap<i32, u16>,
    /// Node id → HTTP admin port (`admin.listener`: /metrics, /healthz, /readyz).
    admin_ports: BTreeMap<i32, u16>,
    settings: Vec<String>,
    brokers: BTreeMap<i32, NodeProcess>,
    controller: Option<NodeProcess>,
    paused: BTreeSet<i32>,
    /// Brokers whose `log.dirs` is not the default `data-<id>` in the cluster's dir.
    data_dirs: BTreeMap<i32, PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: i32,
    pub leader: i32,
    /// Preferred leader first; the controller elects the first live ISR member in it.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl ProcessCluster {
    /// Starts the cluster and waits until every node says it is ready.
    pub fn start(layout: Layout, settings: &[&str]) -> Self {
        Self::start_with_data_dirs(layout, settings, &[])
    }

    /// [`Self::start`], with the given brokers' `log.dirs` elsewhere (a small tmpfs, say).
    /// Controllers keep their metadata log in the cluster's own dir (`meta-<id>`).
    pub fn start_with_data_dirs(
        layout: Layout,
        settings: &[&str],
        data_dirs: &[(i32, PathBuf)],
    ) -> Self {
        let ports = free_ports(10);
        let broker_ports: BTreeMap<i32, u16> = (1..=3).zip(ports[..3].iter().copied()).collect();
        let admin_ports: BTreeMap<i32, u16> = [1, 2, 3, CONTROLLER_ID]
            .into_iter()
            .zip(ports[6..].iter().copied())
            .collect();
        let controller_ports = match layout {
            Layout::Combined => (1..=3).zip(ports[3..].iter().copied()).collect(),
            Layout::DedicatedController => BTreeMap::from([(CONTROLLER_ID, ports[3])]),
        };
        let mut cluster = ProcessCluster {
            dir: tempfile::tempdir().unwrap(),
            layout,
            broker_ports,
            controller_ports,
            admin_ports,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            brokers: BTreeMap::new(),
            controller: None,
            paused: BTreeSet::new(),
            data_dirs: data_dirs.iter().cloned().collect(),
        };
        let mut starting = Vec::new();
        if layout == Layout::DedicatedController {
            let (node, ready) = cluster.spawn(CONTROLLER_ID);
            cluster.controller = Some(node);
            starting.push((CONTROLLER_ID, ready));
        }
        for id in 1..=3 {
            let (node, ready) = cluster.spawn(id);
            cluster.brokers.insert(id, node);
            starting.push((id, ready));
        }
        // combined nodes are ready only once a quorum runs: start all, then wait
        for (id, ready) in starting {
            cluster.wait_ready(id, &ready);
        }
        cluster
    }

    /// `host:port` of node `id`'s HTTP admin listener.
    pub fn admin_address(&self, id: i32) -> String {
        format!("127.0.0.1:{}", self.admin_ports[&id])
    }

    pub fn voters(&self) -> String {
        self.controller_ports
            .iter()
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.data_dirs
            .get(&id)
            .cloned()
            .unwrap_or_else(|| self.dir.path().join(format!("data-{id}")))
    }

    pub fn log_path(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Starts node `id`; the receiver gets its stdout lines.
    pub fn spawn(&self, id: i32) -> (NodeProcess, mpsc::Receiver<String>) {
        let mut settings = vec![
            format!("node.id={id}"),
            format!("controller.quorum.voters={}", self.voters()),
            format!("log.dirs={}", self.data_dir(id).display()),
            format!(
                "metadata.log.dir={}",
                self.dir.path().join(format!("meta-{id}")).display()
            ),
            "controller.quorum.election.timeout.ms=500".to_string(),
            format!("admin.listener=127.0.0.1:{}", self.admin_ports[&id]),
        ];
        let broker_listener = |port: u16| format!("PLAINTEXT://127.0.0.1:{port}");
        match (self.layout, id) {
            (Layout::DedicatedController, CONTROLLER_ID) => {
                settings.push("process.roles=controller".into());
                settings.push(format!(
                    "listeners=CONTROLLER://127.0.0.1:{}",
                    self.controller_ports[&id]
                ));
            }
            (Layout::DedicatedController, _) => {
                settings.push("process.roles=broker".into());
                settings.push(format!(
                    "listeners={}",
                    broker_listener(self.broker_ports[&id])
                ));
            }
            (Layout::Combined, _) => {
                settings.push("process.roles=broker,controller".into());
                settings.push(format!(
                    "listeners={},CONTROLLER://127.0.0.1:{}",
                    broker_listener(self.broker_ports[&id]),
                    self.controller_ports[&id]
                ));
            }
        }
        if id != CONTROLLER_ID {
            settings.push(format!(
                "advertised.listeners={}",
                broker_listener(self.broker_ports[&id])
            ));
        }
        settings.extend(self.settings.iter().cloned());
        let mut command = Command::new(sluice_bin());
        command.arg("broker");
        for s in settings {
            command.arg("--override").arg(s);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        // the log a user gets: the binary's default filter
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sluice broker");
        let rx = stdout_lines(&mut child);
        (NodeProcess { child }, rx)
    }

    pub fn wait_ready(&self, id: i32, lines: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == "ready" => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "node {id} not ready within {WAIT:?}\n{}",
                    std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
                ),
            }
        }
    }

    /// Starts broker `id` again on its old data and port.
    pub fn restart(&mut self, id: i32) {
        assert!(!self.brokers.contains_key(&id), "node {id} is running");
        let (node, ready) = self.spawn(id);
        self.brokers.insert(id, node);
        self.wait_ready(id, &ready);
    }

    /// Starts every node in `ids` again on its old data and port, all at once (a quorum
    /// of combined nodes needs the others up before any is ready), then waits for each.
    pub fn restart_all(&mut self, ids: &[i32]) {
        let mut ready = Vec::new();
        for &id in ids {
            assert!(!self.brokers.contains_key(&id), "node {id} is running");
            let (node, lines) = self.spawn(id);
            self.brokers.insert(id, node);
            ready.push((id, lines));
        }
        for (id, lines) in ready {
            self.wait_ready(id, &lines);
        }
    }

    /// How node `id`'s process ended, if it has (a crash, say).
    pub fn exit_status(&mut self, id: i32) -> Option<std::process::ExitStatus> {
        let node = self.brokers.get_mut(&id).expect("a started node");
        node.child.try_wait().ok().flatten()
    }

    /// SIGTERM (controlled shutdown, then a clean close of every log) and waits for the
    /// process to exit.
    pub fn stop(&mut self, id: i32) {
        self.signal(id, "-TERM");
        let mut node = self.brokers.remove(&id).expect("a running node");
        let deadline = Instant::now() + WAIT;
        while node.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not stop within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.paused.remove(&id);
    }

    /// kill -9.
    pub fn kill(&mut self, id: i32) {
        drop(self.brokers.remove(&id).expect("a running node"));
        self.paused.remove(&id);
    }

    /// Sends `signal` to node `id` (a broker, or [`CONTROLLER_ID`]: the controller-only
    /// node of [`Layout::DedicatedController`]).
    pub fn signal(&self, id: i32, signal: &str) {
        let node = match (&self.controller, id) {
            (Some(controller), CONTROLLER_ID) => controller,
            _ => &self.brokers[&id],
        };
        let pid = node.child.id().to_string();
        let status = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: i32) {
        self.signal(id, "-STOP");
        self.paused.insert(id);
    }

    pub fn resume(&mut self, id: i32) {
        self.signal(id, "-CONT");
        self.paused.remove(&id);
    }

    /// The brokers that answer (running and not paused), as a bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .keys()
            .filter(|id| !self.paused.contains(id))
            .map(|id| format!("127.0.0.1:{}", self.broker_ports[id]))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn bootstrap_of(&self, id: i32) -> String {
        format!("127.0.0.1:{}", self.broker_ports[&id])
    }

    pub fn sluice(&self, args: &[&str]) -> Output {
        let mut command = Command::new(sluice_bin());
        command.args(args).env("SLUICE_BROKERS", self.bootstrap());
        run(command, b"", Duration::from_secs(90))
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// [`Self::create_topic`] with more topic configs (`key=value`).
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[&str]) {
        let partition_count = partitions.to_string();
        let mut args = vec![
            "topic",
            "create",
            topic,
            "-p",
            &partition_count,
            "-r",
            "3",
            "-c",
            "min.insync.replicas=2",
        ];
        for c in configs {
            args.extend(["-c", c]);
        }
        let out = self.sluice(&args);
        check(&out, "sluice topic create");
        self.wait_for(topic, "every ISR holds all three brokers", |rows| {
            rows.len() == partitions as usize && rows.iter().all(|r| r.isr.len() == 3)
        });
    }

    /// The topic's partitions as `sluice topic describe` prints them (None if the
    /// answering broker failed).
    pub fn describe(&self, topic: &str) -> Option<Vec<PartitionRow>> {
        let out = self.sluice(&["topic", "describe", topic]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |line: &str, name: &str| -> String {
            line.split('\t')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        let ids = |s: String| -> Vec<i32> { s.split(',').filter_map(|x| x.parse().ok()).collect() };
        Some(
            text.lines()
                .filter(|l| l.contains("Partition: "))
                .map(|l| PartitionRow {
                    partition: field(l, "Partition: ").parse().unwrap(),
                    leader: field(l, "Leader: ").parse().unwrap_or(-1),
                    replicas: ids(field(l, "Replicas: ")),
                    isr: ids(field(l, "Isr: ")),
                })
                .collect(),
        )
    }

    /// Polls `describe` until `ok` holds; fails after [`WAIT`].
    pub fn wait_for(
        &self,
        topic: &str,
        what: &str,
        ok: impl Fn(&[PartitionRow]) -> bool,
    ) -> Vec<PartitionRow> {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(rows) = self.describe(topic) {
                if ok(&rows) {
                    return rows;
                }
                last = Some(rows);
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: {what} — not within {WAIT:?}; last seen {last:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let rows = self.wait_for(topic, "the partition has a leader", |rows| {
            rows.iter()
                .any(|r| r.partition == partition && r.leader >= 0)
        });
        rows.iter()
            .find(|r| r.partition == partition)
            .unwrap()
            .leader
    }

    /// The batches (raw bytes) of broker `id`'s replica of `topic`-`partition` that start
    /// below `below`, read from its segment files.
    pub fn batches(&self, id: i32, topic: &str, partition: i32, below: i64) -> Vec<Vec<u8>> {
        let dir = self.data_dir(id).join(format!("{topic}-{partition}"));
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        let mut out = Vec::new();
        for segment in segments {
            let bytes = std::fs::read(&segment).unwrap();
            // a segment may end in preallocated or torn bytes: whole batches come first
            for batch in RecordBatches::new(&bytes, usize::MAX).map_while(Result::ok) {
                if batch.base_offset().0 < below {
                    out.push(batch.as_bytes().to_vec());
                }
            }
        }
        out
    }

    /// Checks that the three replicas hold the same batches below `high_watermark`, and
    /// that those batches end exactly at it.
    pub fn assert_replicas_identical(&self, topic: &str, partition: i32, high_watermark: i64) {
        let reference = self.batches(1, topic, partition, high_watermark);
        if high_watermark > 0 {
            let last = reference.last().expect("batches below the HW");
            let header = sluice_record::BatchHeader::parse(last).unwrap();
            assert_eq!(
                header.next_offset().0,
                high_watermark,
                "{topic}-{partition}: batches end at the HW"
            );
        }
        for id in 2..=3 {
            let other = self.batches(id, topic, partition, high_watermark);
            assert_eq!(
                other.len(),
                reference.len(),
                "{topic}-{partition}: broker {id} has as many batches below the HW as broker 1"
            );
            for (i, (a, b)) in reference.iter().zip(&other).enumerate() {
                assert!(
                    a == b,
                    "{topic}-{partition}: batch {i} differs between brokers 1 and {id}"
                );
            }
        }
    }
}

/// kcat producing `lines` to `topic` partition 0 with `acks`, no retries by the client.
pub fn kcat_produce(bootstrap: &str, topic: &str, acks: &str, lines: &[String]) -> Output {
    let acks = format!("acks={acks}");
    let settings = ["-p", "0", "-X", &acks, "-X", "message.send.max.retries=0"];
    kcat_produce_with(bootstrap, topic, &settings, lines)
}

/// kcat producing `lines` to `topic` with more kcat arguments (`-X key=value`, `-K :`,
/// ...), each message bounded by a 20 s timeout.
pub fn kcat_produce_with(
    bootstrap: &str,
    topic: &str,
    settings: &[&str],
    lines: &[String],
) -> Output {
    let mut command = crate::external("kcat");
    command.args(["-b", bootstrap, "-P", "-t", topic]);
    command.args(settings);
    command.args(["-X", "message.timeout.ms=20000"]);
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    run(command, input.as_bytes(), Duration::from_secs(120))
}

/// Every record of `topic` a consumer can read (below the HW): (partition, offset, value).
pub fn kcat_read_all(bootstrap: &str, topic: &str) -> Vec<(i32, i64, String)> {
    let mut command = crate::external("kcat");
    command.args([
        "-b",
        bootstrap,
        "-C",
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%p %o %s\\n",
    ]);
    let out = run(command, b"", Duration::from_secs(120));
    check(&out, "kcat -C");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let p = f.next().unwrap().parse().unwrap();
            let o = f.next().unwrap().parse().unwrap();
            (p, o, f.next().unwrap_or_default().to_string())
        })
        .collect()
}
