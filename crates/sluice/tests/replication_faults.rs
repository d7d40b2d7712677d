//! Replication under faults, with real processes on loopback: three `sluice broker`
//! processes (ports from the OS, temp data dirs, every process killed on drop), real Kafka
//! clients (confluent-kafka, kcat) and real signals (kill -9, SIGSTOP/SIGCONT).
//!
//! - every partition leader killed once under a stream of acks=all writes: each
//!   acknowledged record is read back exactly once at its acknowledged offset, and the
//!   three replicas hold identical batches below the high watermark;
//! - one replica alive: acks=all is refused NOT_ENOUGH_REPLICAS and acks=1 writes stay
//!   invisible until the replicas return and rejoin;
//! - a deposed leader that wrote uncommitted batches truncates them and matches the new
//!   leader;
//! - a follower paused past replica.lag.time.max.ms leaves the ISR and rejoins.
//!
//! The first test runs the deployment users run (three combined broker+controller
//! nodes). The others stop two brokers at once, which in combined mode would also stop two
//! of three controllers; they run three broker-only nodes and one controller-only node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_record::RecordBatches;

mod common;
use common::{check, free_ports, python, run, run_to_end, stdout_lines, NodeProcess};
const WAIT: Duration = Duration::from_secs(60);
const CONTROLLER_ID: i32 = 9;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Three nodes, each a broker and a controller voter (the default deployment).
    Combined,
    /// Three broker-only nodes and one controller-only node.
    DedicatedController,
}

struct ProcessCluster {
    dir: tempfile::TempDir,
    layout: Layout,
    broker_ports: BTreeMap<i32, u16>,
    /// Voter id → controller port.
    controller_ports: BTreeMap<i32, u16>,
    settings: Vec<String>,
    brokers: BTreeMap<i32, NodeProcess>,
    controller: Option<NodeProcess>,
    paused: BTreeSet<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    isr: Vec<i32>,
}

impl ProcessCluster {
    /// Starts the cluster and waits until every node says it is ready.
    fn start(layout: Layout, settings: &[&str]) -> Self {
        let ports = free_ports(6);
        let broker_ports: BTreeMap<i32, u16> = (1..=3).zip(ports[..3].iter().copied()).collect();
        let controller_ports = match layout {
            Layout::Combined => (1..=3).zip(ports[3..].iter().copied()).collect(),
            Layout::DedicatedController => BTreeMap::from([(CONTROLLER_ID, ports[3])]),
        };
        let mut cluster = ProcessCluster {
            dir: tempfile::tempdir().unwrap(),
            layout,
            broker_ports,
            controller_ports,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            brokers: BTreeMap::new(),
            controller: None,
            paused: BTreeSet::new(),
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

    fn voters(&self) -> String {
        self.controller_ports
            .iter()
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    fn log_path(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Starts node `id`; the receiver gets its stdout lines.
    fn spawn(&self, id: i32) -> (NodeProcess, mpsc::Receiver<String>) {
        let mut settings = vec![
            format!("node.id={id}"),
            format!("controller.quorum.voters={}", self.voters()),
            format!("log.dirs={}", self.data_dir(id).display()),
            "controller.quorum.election.timeout.ms=500".to_string(),
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("broker");
        for s in settings {
            command.arg("--override").arg(s);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let mut child = command
            .env("RUST_LOG", "warn,sluice_broker=info,sluice_controller=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sluice broker");
        let rx = stdout_lines(&mut child);
        (NodeProcess { child }, rx)
    }

    fn wait_ready(&self, id: i32, lines: &mpsc::Receiver<String>) {
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
    fn restart(&mut self, id: i32) {
        assert!(!self.brokers.contains_key(&id), "node {id} is running");
        let (node, ready) = self.spawn(id);
        self.brokers.insert(id, node);
        self.wait_ready(id, &ready);
    }

    /// kill -9.
    fn kill(&mut self, id: i32) {
        drop(self.brokers.remove(&id).expect("a running node"));
        self.paused.remove(&id);
    }

    fn signal(&self, id: i32, signal: &str) {
        let pid = self.brokers[&id].child.id().to_string();
        let status = Command::new("kill")
            .args([signal, pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    fn pause(&mut self, id: i32) {
        self.signal(id, "-STOP");
        self.paused.insert(id);
    }

    fn resume(&mut self, id: i32) {
        self.signal(id, "-CONT");
        self.paused.remove(&id);
    }

    /// The brokers that answer (running and not paused), as a bootstrap list.
    fn bootstrap(&self) -> String {
        self.brokers
            .keys()
            .filter(|id| !self.paused.contains(id))
            .map(|id| format!("127.0.0.1:{}", self.broker_ports[id]))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn bootstrap_of(&self, id: i32) -> String {
        format!("127.0.0.1:{}", self.broker_ports[&id])
    }

    fn sluice(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(args).env("SLUICE_BROKERS", self.bootstrap());
        run(command, b"", Duration::from_secs(90))
    }

    fn create_topic(&self, topic: &str, partitions: i32) {
        let out = self.sluice(&[
            "topic",
            "create",
            topic,
            "-p",
            &partitions.to_string(),
            "-r",
            "3",
            "-c",
            "min.insync.replicas=2",
        ]);
        check(&out, "sluice topic create");
        self.wait_for(topic, "every ISR holds all three brokers", |rows| {
            rows.len() == partitions as usize && rows.iter().all(|r| r.isr.len() == 3)
        });
    }

    /// The topic's partitions as `sluice topic describe` prints them (None if the
    /// answering broker failed).
    fn describe(&self, topic: &str) -> Option<Vec<PartitionRow>> {
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
                    isr: ids(field(l, "Isr: ")),
                })
                .collect(),
        )
    }

    /// Polls `describe` until `ok` holds; fails after [`WAIT`].
    fn wait_for(
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

    fn leader_of(&self, topic: &str, partition: i32) -> i32 {
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
    fn batches(&self, id: i32, topic: &str, partition: i32, below: i64) -> Vec<Vec<u8>> {
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
    fn assert_replicas_identical(&self, topic: &str, partition: i32, high_watermark: i64) {
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
fn kcat_produce(bootstrap: &str, topic: &str, acks: &str, lines: &[String]) -> Output {
    let mut command = Command::new("kcat");
    command.args([
        "-b",
        bootstrap,
        "-P",
        "-t",
        topic,
        "-p",
        "0",
        "-X",
        &format!("acks={acks}"),
        "-X",
        "message.send.max.retries=0",
        "-X",
        "message.timeout.ms=20000",
    ]);
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    run(command, input.as_bytes(), Duration::from_secs(60))
}

/// Every record of `topic` a consumer can read (below the HW): (partition, offset, value).
fn kcat_read_all(bootstrap: &str, topic: &str) -> Vec<(i32, i64, String)> {
    let mut command = Command::new("kcat");
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

fn values(records: &[(i32, i64, String)]) -> Vec<&str> {
    records.iter().map(|(_, _, v)| v.as_str()).collect()
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn read_progress(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the producer reports at least `target` acknowledged records.
fn wait_progress(path: &Path, target: u64, producer: &mut Child) {
    let deadline = Instant::now() + WAIT * 2;
    while read_progress(path) < target {
        if let Ok(Some(status)) = producer.try_wait() {
            panic!("the producer exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the producer stalled at {} acknowledged records (waiting for {target})",
            read_progress(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_acknowledged_record_survives_kill_9_of_each_partition_leader() {
    const PARTITIONS: i32 = 3;
    const RECORDS: u64 = 200_000;
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=5000",
        ],
    );
    let topic = "acked";
    cluster.create_topic(topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let stop = work.path().join("stop");
    let acks_out = work.path().join("acks");
    let producer_log = std::fs::File::create(work.path().join("producer.log")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/acked_producer.py");
    let mut producer = Command::new(python())
        .arg(script)
        .arg(cluster.bootstrap())
        .arg(topic)
        .arg(PARTITIONS.to_string())
        .args(["--records", &RECORDS.to_string(), "--rate", "10000"])
        .arg("--stop-file")
        .arg(&stop)
        .arg("--progress")
        .arg(&progress)
        .arg("--acks-out")
        .arg(&acks_out)
        .stdout(Stdio::piped())
        .stderr(producer_log)
        .spawn()
        .expect(
            "run acked_producer.py (scripts/install-kafka-clients.sh installs confluent-kafka)",
        );
    for partition in 0..PARTITIONS {
        wait_progress(&progress, read_progress(&progress) + 5_000, &mut producer);
        let leader = cluster.leader_of(topic, partition);
        cluster.kill(leader);
        cluster.wait_for(
            topic,
            "a new leader for the killed one's partitions",
            |rows| rows.iter().all(|r| r.leader >= 0 && r.leader != leader),
        );
        // writing goes on through the new leaders
        wait_progress(&progress, read_progress(&progress) + 5_000, &mut producer);
        cluster.restart(leader);
        cluster.wait_for(topic, "the restarted broker back in every ISR", |rows| {
            rows.iter().all(|r| r.isr.len() == 3)
        });
    }
    std::fs::write(&stop, b"").unwrap();
    let out = run_to_end(producer, Duration::from_secs(300));
    check(&out, "acked_producer.py");

    // every acknowledged record, exactly once, at its acknowledged offset
    let acks: Vec<(i32, i64, String)> = std::fs::read_to_string(&acks_out)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect();
    assert!(acks.len() as u64 >= RECORDS, "{} acknowledged", acks.len());
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let mut at: HashMap<(i32, i64), &str> = HashMap::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (p, o, v) in &read {
        assert!(
            at.insert((*p, *o), v).is_none(),
            "offset {p}/{o} read twice"
        );
        *seen.entry(v.as_str()).or_default() += 1;
    }
    for (p, o, v) in &acks {
        assert_eq!(
            at.get(&(*p, *o)).copied(),
            Some(v.as_str()),
            "acknowledged record {v} at {p}/{o}"
        );
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "records stored twice: {duplicated:?}"
    );

    // the replicas hold identical batches below the HW (all three are in every ISR now)
    for partition in 0..PARTITIONS {
        let high_watermark = read
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, o, _)| o + 1)
            .max()
            .unwrap_or(0);
        cluster.assert_replicas_identical(topic, partition, high_watermark);
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn with_one_replica_alive_acks_all_is_refused_and_nothing_uncommitted_is_exposed() {
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let topic = "lonely";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("committed", 100)),
        "kcat acks=all",
    );
    let leader = cluster.leader_of(topic, 0);
    let followers: Vec<i32> = (1..=3).filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.kill(*f);
    }
    // the controller fences both: the ISR is the leader alone, below min.insync.replicas
    cluster.wait_for(topic, "the ISR shrinks to the leader", |rows| {
        rows[0].isr == vec![leader]
    });
    // `sluice cluster status` marks the fenced brokers, and --expect-brokers counts the
    // live ones only
    let out = cluster.sluice(&["cluster", "status", "--expect-brokers", "3"]);
    let status = String::from_utf8_lossy(&out.stdout);
    for id in 1..=3 {
        let fenced = status
            .lines()
            .any(|l| l.starts_with(&format!("broker {id} ")) && l.ends_with(" fenced"));
        assert_eq!(fenced, id != leader, "broker {id}: {status}");
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: 1 of 3 brokers live\n"
    );
    let refused = kcat_produce(&cluster.bootstrap(), topic, "all", &lines("refused", 1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Not enough in-sync replicas"),
        "acks=all with one replica alive: {stderr}"
    );
    // acks=1 is taken (as Kafka does) but not committed: consumers see none of it
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "1", &lines("uncommitted", 50)),
        "kcat acks=1",
    );
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(values(&read), lines("committed", 100));
    // the replicas return, catch up and rejoin; the acks=1 records become visible
    for f in &followers {
        cluster.restart(*f);
    }
    cluster.wait_for(topic, "both replicas rejoin the ISR", |rows| {
        rows[0].isr.len() == 3
    });
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let mut expected = lines("committed", 100);
    expected.extend(lines("uncommitted", 50));
    assert_eq!(values(&read), expected);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("after", 10)),
        "kcat acks=all after the rejoin",
    );
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(read.len(), 160);
    cluster.assert_replicas_identical(topic, 0, 160);
}

#[test]
fn a_deposed_leader_truncates_its_uncommitted_batches_and_matches_the_new_leader() {
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=4000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=30000",
        ],
    );
    let topic = "deposed";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("committed", 100)),
        "kcat acks=all",
    );
    let old = cluster.leader_of(topic, 0);
    let followers: Vec<i32> = (1..=3).filter(|id| *id != old).collect();
    // the followers stop fetching; once their parked fetches have been answered (the
    // replica fetch wait is 500 ms) nothing the leader appends reaches them
    for f in &followers {
        cluster.pause(*f);
    }
    std::thread::sleep(Duration::from_millis(1500));
    check(
        &kcat_produce(&cluster.bootstrap_of(old), topic, "1", &lines("stale", 20)),
        "kcat acks=1 to the leader alone",
    );
    // an acks=all producer through the leader alone: its records are appended and parked,
    // waiting for followers that do not fetch
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/parked_producer.py");
    let parked = Command::new(python())
        .arg(script)
        .arg(cluster.bootstrap_of(old))
        .args([topic, "0", "parked", "--count", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "run parked_producer.py (scripts/install-kafka-clients.sh installs confluent-kafka)",
        );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .batches(old, topic, 0, i64::MAX)
        .iter()
        .any(|b| contains(b, b"parked-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the parked producer's records never reached the leader's log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = cluster.batches(old, topic, 0, i64::MAX);
    assert!(
        written.len() > 1 && written.iter().any(|b| contains(b, b"stale-")),
        "the leader appended the uncommitted batches"
    );
    // the leader goes silent; the followers come back within their session and one of
    // them is elected once the controller fences the old leader
    cluster.pause(old);
    for f in &followers {
        cluster.resume(*f);
    }
    let rows = cluster.wait_for(topic, "a follower takes over", |rows| {
        rows[0].leader >= 0 && rows[0].leader != old
    });
    let new = rows[0].leader;
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("fresh", 30)),
        "kcat acks=all to the new leader",
    );
    // the old leader wakes up, learns the new epoch, truncates the divergent suffix,
    // fetches the new one and rejoins
    cluster.resume(old);
    cluster.wait_for(topic, "the deposed leader rejoins the ISR", |rows| {
        rows[0].isr.len() == 3
    });
    // the deposed leader answers its parked acks=all requests when it learns of the new
    // epoch, not after the request timeout (120 s here, beyond this bound); librdkafka may
    // then send them again to the new leader
    let reports = run_to_end(parked, Duration::from_secs(90));
    let reports = String::from_utf8_lossy(&reports.stdout).to_string();
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let by_offset: BTreeMap<i64, &str> = read.iter().map(|(_, o, v)| (*o, v.as_str())).collect();
    let mut acked = 0;
    for report in reports.lines() {
        let fields: Vec<&str> = report.split_whitespace().collect();
        match fields.as_slice() {
            // an acknowledgement names the offset its record is at: never one of the
            // deposed leader's truncated offsets, now holding the new leader's records
            ["ok", _, offset, value] => {
                let offset: i64 = offset.parse().unwrap();
                assert_eq!(
                    by_offset.get(&offset).copied(),
                    Some(*value),
                    "acknowledged at {offset} but not there: {reports}"
                );
                acked += 1;
            }
            ["err", _, value] => assert!(
                !read.iter().any(|(_, _, v)| v == value),
                "{value} failed but is in the log: {reports}"
            ),
            _ => panic!("unexpected report {report:?}: {reports}"),
        }
    }
    assert_eq!(
        reports.lines().count(),
        10,
        "one report per record: {reports}"
    );
    let mut expected = lines("committed", 100);
    expected.extend(lines("fresh", 30));
    let unparked: Vec<&str> = values(&read)
        .into_iter()
        .filter(|v| !v.starts_with("parked-"))
        .collect();
    assert_eq!(unparked, expected);
    assert_eq!(
        read.len(),
        130 + acked,
        "every parked record in the log was acknowledged"
    );
    cluster.assert_replicas_identical(topic, 0, read.len() as i64);
    assert!(
        !cluster
            .batches(old, topic, 0, i64::MAX)
            .iter()
            .any(|b| contains(b, b"stale-")),
        "broker {old} (deposed; new leader {new}) still holds uncommitted batches"
    );
}

#[test]
fn a_follower_paused_past_the_lag_time_leaves_the_isr_and_rejoins() {
    // sessions last a minute: the ISR shrink seen here is the leader's own
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=60000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=2000",
        ],
    );
    let topic = "paused";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("before", 10)),
        "kcat acks=all",
    );
    let leader = cluster.leader_of(topic, 0);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.pause(follower);
    // new data the paused follower cannot fetch: it falls behind
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "1", &lines("during", 10)),
        "kcat acks=1",
    );
    cluster.wait_for(topic, "the paused follower leaves the ISR", |rows| {
        rows[0].isr.len() == 2 && !rows[0].isr.contains(&follower)
    });
    // two in-sync replicas meet min.insync.replicas=2
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("shrunk", 10)),
        "kcat acks=all with the ISR shrunk",
    );
    cluster.resume(follower);
    cluster.wait_for(topic, "the resumed follower rejoins", |rows| {
        rows[0].isr.len() == 3
    });
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(read.len(), 30);
    cluster.assert_replicas_identical(topic, 0, 30);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
