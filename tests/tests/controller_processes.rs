//! Three `sluice broker` processes running the controller role, configured as a user would
//! (a TOML file with Kafka's keys), talked to over gRPC: a leader is elected, a topic made
//! through one node is seen by all, `kill -9` of the leader gives a new leader that
//! commits, and after every process is restarted the metadata is intact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::metadata as pb;

use sluice_system_tests::{free_ports, sluice_bin, NodeProcess};
const WAIT: Duration = Duration::from_secs(30);

struct ProcessCluster {
    dir: tempfile::TempDir,
    ports: BTreeMap<u64, u16>,
    nodes: BTreeMap<u64, NodeProcess>,
}

impl ProcessCluster {
    fn new() -> Self {
        let ports = free_ports(3);
        ProcessCluster {
            dir: tempfile::tempdir().unwrap(),
            ports: (1..=3).zip(ports).collect(),
            nodes: BTreeMap::new(),
        }
    }

    fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.toml"))
    }

    fn start(&mut self, id: u64) {
        let voters: Vec<String> = self
            .ports
            .iter()
            .map(|(i, p)| format!("{i}@127.0.0.1:{p}"))
            .collect();
        let data = self.dir.path().join(format!("data-{id}"));
        let config = format!(
            "\"node.id\" = {id}\n\
             \"process.roles\" = \"controller\"\n\
             \"controller.quorum.voters\" = \"{}\"\n\
             \"listeners\" = \"CONTROLLER://127.0.0.1:{}\"\n\
             \"log.dirs\" = \"{}\"\n\
             \"controller.quorum.election.timeout.ms\" = 300\n",
            voters.join(","),
            self.ports[&id],
            data.display()
        );
        std::fs::write(self.config_path(id), config).unwrap();
        let log = std::fs::File::create(self.dir.path().join(format!("node-{id}.log"))).unwrap();
        let child = Command::new(sluice_bin())
            .args(["broker", "--config"])
            .arg(self.config_path(id))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice broker");
        self.nodes.insert(id, NodeProcess { child });
    }

    fn kill(&mut self, id: u64) {
        drop(self.nodes.remove(&id));
    }

    fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    async fn client(&self, id: u64) -> ControllerClient<tonic::transport::Channel> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match ControllerClient::connect(format!("http://127.0.0.1:{}", self.ports[&id])).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "node {id} never listened: {e}\n{}",
                        self.log_of(id)
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The controller every running node names, once they agree.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for id in self.nodes.keys() {
                let mut c = self.client(*id).await;
                let d = c
                    .describe_cluster(api::DescribeClusterRequest {})
                    .await
                    .map(|r| r.into_inner().controller_id)
                    .unwrap_or(-1);
                seen.push(d);
            }
            if seen[0] > 0
                && self.nodes.contains_key(&(seen[0] as u64))
                && seen.iter().all(|s| *s == seen[0])
            {
                return seen[0] as u64;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node describes `topics` (and returns node → topics).
    async fn wait_for_topics(&self, topics: &[&str]) -> BTreeMap<u64, Vec<pb::Topic>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut all = BTreeMap::new();
            for id in self.nodes.keys() {
                let mut c = self.client(*id).await;
                if let Ok(r) = c.describe_cluster(api::DescribeClusterRequest {}).await {
                    all.insert(*id, r.into_inner().topics);
                }
            }
            let complete = all.len() == self.nodes.len()
                && all
                    .values()
                    .all(|ts| topics.iter().all(|name| ts.iter().any(|t| t.name == *name)));
            if complete {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "topics {topics:?} not everywhere"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn create(
    client: &mut ControllerClient<tonic::transport::Channel>,
    name: &str,
) -> api::TopicResult {
    client
        .create_topics(api::CreateTopicsRequest {
            topics: vec![api::TopicSpec {
                name: name.into(),
                num_partitions: 2,
                replication_factor: 1,
                configs: BTreeMap::new(),
            }],
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner()
        .topics
        .remove(0)
}

/// Placement needs a live broker; with the controller role alone, the test plays one.
async fn register_live_broker(client: &mut ControllerClient<tonic::transport::Channel>) {
    let epoch = client
        .register_broker(api::RegisterBrokerRequest {
            broker_id: 7,
            incarnation_id: "test".into(),
            endpoints: vec![],
            rack: None,
        })
        .await
        .unwrap()
        .into_inner()
        .broker_epoch;
    let hb = client
        .broker_heartbeat(api::BrokerHeartbeatRequest {
            broker_id: 7,
            broker_epoch: epoch,
            metadata_index: u64::MAX,
            want_shut_down: false,
            log_dir_offline: false,
            offline_replicas: Vec::new(),
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.error_code, 0, "{}", hb.error_message);
    assert!(!hb.fenced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_elect_replicate_survive_kill_and_restart() {
    let mut cluster = ProcessCluster::new();
    for id in 1..=3 {
        cluster.start(id);
    }
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut client = cluster.client(follower).await;
    register_live_broker(&mut client).await;
    let r = create(&mut client, "before").await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    cluster.wait_for_topics(&["before"]).await;

    // kill -9 the leader: the two others elect a new one, which commits
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let mut client = cluster.client(new_leader).await;
    let r = create(&mut client, "after").await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);

    // the killed node comes back on its old data and catches up
    cluster.start(leader);
    let all = cluster.wait_for_topics(&["before", "after"]).await;
    let first = all.values().next().unwrap().clone();
    assert!(all.values().all(|t| *t == first));

    // stop everything, start everything: the metadata is intact
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    cluster.leader().await;
    let all = cluster.wait_for_topics(&["before", "after"]).await;
    assert!(all.values().all(|t| *t == first), "{all:?}");
}

#[test]
fn bad_configs_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (contents, expected) in [
        ("\"node.id\" = 1\n\"typo.key\" = 3\n", "unknown setting"),
        ("\"node.id\" = 1\n", "controller.quorum.voters must be set"),
        (
            "\"node.id\" = 1\n\"controller.quorum.voters\" = \"1@127.0.0.1:1\"\n\"listeners\" = \"CONTROLLER://127.0.0.1:0\"\n",
            "no listener for Kafka clients",
        ),
        (
            "\"node.id\" = 1\n\"controller.quorum.voters\" = \"1@127.0.0.1:1\"\n\"log.dirs\" = \"/tmp/a,/tmp/b\"\n",
            "exactly one directory",
        ),
        ("not toml at all [", "parsing config"),
    ] {
        std::fs::write(&path, contents).unwrap();
        let out = Command::new(sluice_bin())
            .args(["broker", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{contents}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
