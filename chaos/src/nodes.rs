//! The three Sluice nodes (broker + controller each), one per host namespace: their
//! configs, processes, signals (kill -9, SIGSTOP/SIGCONT, SIGTERM), restarts on the same
//! data, and what the cluster says about itself (asked from the client host with the
//! `sluice` CLI, as an operator would).
//!
//! Invariant: no node outlives the harness — `Drop` resumes and kills every process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::network::{Network, CLIENT, NODES};

/// Clients' listener (the client host connects here directly).
pub const KAFKA_PORT: u16 = 9092;
/// The controller port other nodes use: the link proxy's, relayed to [`CONTROLLER_LISTENER`].
pub const CONTROLLER_PORT: u16 = 9093;
/// The inter-broker port other nodes use (advertised): the link proxy's, relayed to
/// [`INTERNAL_LISTENER`].
pub const INTERNAL_PORT: u16 = 9094;
/// Where the node itself listens for inter-broker and controller traffic.
pub const INTERNAL_LISTENER: u16 = 9194;
pub const CONTROLLER_LISTENER: u16 = 9193;
pub const ADMIN_PORT: u16 = 9644;

pub struct Nodes<'a> {
    net: &'a Network,
    bin: PathBuf,
    dir: PathBuf,
    processes: Vec<Option<Child>>,
    paused: Vec<bool>,
}

impl<'a> Nodes<'a> {
    pub fn new(net: &'a Network, bin: &Path, dir: &Path) -> Result<Nodes<'a>> {
        let nodes = Nodes {
            net,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            processes: NODES.iter().map(|_| None).collect(),
            paused: NODES.iter().map(|_| false).collect(),
        };
        for n in NODES {
            nodes.write_config(n)?;
        }
        Ok(nodes)
    }

    fn index(n: u32) -> usize {
        (n - 1) as usize
    }

    pub fn node_dir(&self, n: u32) -> PathBuf {
        self.dir.join(format!("node-{n}"))
    }

    pub fn data_dir(&self, n: u32) -> PathBuf {
        self.node_dir(n).join("data")
    }

    pub fn bootstrap(&self) -> String {
        NODES
            .iter()
            .map(|n| format!("{}:{KAFKA_PORT}", self.net.address(*n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn write_config(&self, n: u32) -> Result<()> {
        let dir = self.node_dir(n);
        std::fs::create_dir_all(self.data_dir(n))?;
        let address = self.net.address(n);
        let voters: Vec<String> = NODES
            .iter()
            .map(|v| format!("{v}@{}:{CONTROLLER_PORT}", self.net.address(*v)))
            .collect();
        let config = format!(
            r#"# written by sluice-chaos
"node.id" = {n}
"process.roles" = "broker,controller"
"controller.quorum.voters" = "{voters}"
"listeners" = "PLAINTEXT://{address}:{KAFKA_PORT},INTERNAL://{address}:{INTERNAL_LISTENER},CONTROLLER://{address}:{CONTROLLER_LISTENER}"
"advertised.listeners" = "PLAINTEXT://{address}:{KAFKA_PORT},INTERNAL://{address}:{INTERNAL_PORT}"
"listener.security.protocol.map" = "PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
"inter.broker.listener.name" = "INTERNAL"
"admin.listener" = "{address}:{ADMIN_PORT}"
"log.dirs" = "{data}"
"metadata.log.dir" = "{metadata}"
"sluice.log.scrub.interval.ms" = 5000
"default.replication.factor" = 3
"min.insync.replicas" = 2
"broker.session.timeout.ms" = 2000
"broker.heartbeat.interval.ms" = 200
"controller.quorum.election.timeout.ms" = 1000
"replica.lag.time.max.ms" = 5000
"leader.imbalance.check.interval.seconds" = 10
"#,
            voters = voters.join(","),
            data = self.data_dir(n).display(),
            metadata = self.node_dir(n).join("metadata").display(),
        );
        std::fs::write(dir.join("node.toml"), config)?;
        Ok(())
    }

    /// Starts node `n` if it is not running (on its existing data).
    pub fn start(&mut self, n: u32) -> Result<()> {
        let i = Self::index(n);
        if self.processes[i].is_some() {
            return Ok(());
        }
        let dir = self.node_dir(n);
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("sluice.log"))?;
        let mut command = self.net.command_in(n, &self.bin.display().to_string());
        command
            .args(["broker", "--config"])
            .arg(dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // every offset commit and fetch in the log: what a commit-lost finding needs
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,sluice_broker::handlers::offsets=debug");
        }
        // `ip netns exec` execs the binary: the child's pid is the node's
        self.processes[i] = Some(command.spawn().context("starting a node")?);
        self.paused[i] = false;
        Ok(())
    }

    pub fn is_running(&self, n: u32) -> bool {
        self.processes[Self::index(n)].is_some()
    }

    fn signal(&self, n: u32, signal: Signal) -> Result<()> {
        if let Some(child) = &self.processes[Self::index(n)] {
            kill(Pid::from_raw(child.id() as i32), signal)
                .with_context(|| format!("{signal} to node {n}"))?;
        }
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, n: u32) -> Result<()> {
        let i = Self::index(n);
        if let Some(mut child) = self.processes[i].take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        self.paused[i] = false;
        Ok(())
    }

    pub fn pause(&mut self, n: u32) -> Result<()> {
        self.signal(n, Signal::SIGSTOP)?;
        self.paused[Self::index(n)] = self.is_running(n);
        Ok(())
    }

    pub fn resume(&mut self, n: u32) -> Result<()> {
        self.signal(n, Signal::SIGCONT)?;
        self.paused[Self::index(n)] = false;
        Ok(())
    }

    /// Resumes paused nodes and starts stopped ones.
    pub fn heal(&mut self) -> Result<()> {
        for n in NODES {
            if self.paused[Self::index(n)] {
                self.resume(n)?;
            }
            self.start(n)?;
        }
        Ok(())
    }

    /// SIGTERM to every node at once (controlled shutdown), kill -9 after `timeout`.
    pub fn stop_all(&mut self, timeout: Duration) {
        for n in NODES {
            let _ = self.signal(n, Signal::SIGCONT);
            let _ = self.signal(n, Signal::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        for slot in &mut self.processes {
            if let Some(mut child) = slot.take() {
                loop {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// `sluice ARGS` run on the client host, with the cluster's bootstrap.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut command = self.net.command_in(CLIENT, &self.bin.display().to_string());
        command
            .args(args)
            .args(["-b", &self.bootstrap(), "--timeout", "3s"]);
        let out = command.output().context("running the sluice CLI")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The leader of `topic`'s `partition`, as the cluster tells a client.
    pub fn partition_leader(&self, topic: &str, partition: i32) -> Option<u32> {
        let out = self.cli(&["topic", "describe", topic]).ok()?;
        let needle = format!("Partition: {partition}\tLeader: ");
        out.lines().find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
    }

    /// The node leading the controller quorum (`sluice_controller_active` on /metrics).
    pub fn controller_leader(&self) -> Option<u32> {
        NODES.into_iter().find(|n| {
            let url = format!("http://{}:{ADMIN_PORT}/metrics", self.net.address(*n));
            let mut command = self.net.command_in(CLIENT, &self.bin.display().to_string());
            command.args(["probe", "--url", &url, "--timeout", "2s"]);
            command.output().ok().is_some_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "sluice_controller_active 1")
            })
        })
    }

    /// Waits until every broker is live and every partition led.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.cli(&["cluster", "status", "--expect-brokers", "3"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("the cluster is not healthy after {timeout:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }
}

impl Drop for Nodes<'_> {
    fn drop(&mut self) {
        for slot in &mut self.processes {
            if let Some(mut child) = slot.take() {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}
