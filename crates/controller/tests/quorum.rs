//! Three controller nodes in one process, on real loopback sockets (ports from the OS):
//! election, replicated metadata, leader failover, restart from disk, AlterPartition's
//! compare-and-set, and the failure detector fencing a silent broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::metadata as pb;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    addresses: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, ControllerNode>,
    session_timeout_ms: u64,
    purge_batch_entries: u64,
    /// Snapshot by the log's bytes only (the entry count policy out of reach), when set.
    snapshot_bytes: Option<u64>,
}

fn config(id: u64, cluster: &Cluster) -> ControllerConfig {
    let voters = cluster
        .addresses
        .iter()
        .map(|(id, a)| (*id, a.to_string()))
        .collect();
    let mut c = ControllerConfig::new(
        id,
        voters,
        cluster.dirs[id as usize - 1].path().to_path_buf(),
    );
    c.election_timeout_ms = 300;
    c.raft_heartbeat_interval_ms = 50;
    c.broker_session_timeout_ms = cluster.session_timeout_ms;
    c.broker_heartbeat_interval_ms = 100;
    c.metadata_snapshot_entries = 5;
    c.metadata_purge_batch_entries = cluster.purge_batch_entries;
    if let Some(bytes) = cluster.snapshot_bytes {
        c.metadata_snapshot_entries = 1_000_000;
        c.metadata_snapshot_bytes = bytes;
    }
    c
}

impl Cluster {
    async fn start(session_timeout_ms: u64) -> Cluster {
        Self::start_only(session_timeout_ms, &[1, 2, 3]).await
    }

    /// Three voters, of which only `running` are started (the others' ports stay closed).
    async fn start_only(session_timeout_ms: u64, running: &[u64]) -> Cluster {
        Self::start_with(session_timeout_ms, running, 256).await
    }

    /// [`Self::start_only`], purging the Raft log in batches of `purge_batch_entries`.
    async fn start_with(
        session_timeout_ms: u64,
        running: &[u64],
        purge_batch_entries: u64,
    ) -> Cluster {
        Self::start_full(session_timeout_ms, running, purge_batch_entries, None).await
    }

    /// [`Self::start_with`], snapshotting by `snapshot_bytes` of log when set.
    async fn start_full(
        session_timeout_ms: u64,
        running: &[u64],
        purge_batch_entries: u64,
        snapshot_bytes: Option<u64>,
    ) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            listeners.insert(
                id,
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            );
        }
        let mut cluster = Cluster {
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            addresses: listeners
                .iter()
                .map(|(id, l)| (*id, l.local_addr().unwrap()))
                .collect(),
            nodes: BTreeMap::new(),
            session_timeout_ms,
            purge_batch_entries,
            snapshot_bytes,
        };
        for (id, listener) in listeners.into_iter().filter(|(id, _)| running.contains(id)) {
            let node = ControllerNode::start(config(id, &cluster), listener)
                .await
                .unwrap();
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    async fn restart(&mut self, id: u64) {
        let listener = tokio::net::TcpListener::bind(self.addresses[&id])
            .await
            .unwrap();
        let node = ControllerNode::start(config(id, self), listener)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// The leader all running nodes agree on.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<u64>> =
                self.nodes.values().map(|n| n.current_leader()).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l))
                    && self.nodes.get(l).is_some_and(|n| n.is_leader())
                {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client(&self, id: u64) -> ControllerClient<Channel> {
        ControllerClient::connect(format!("http://{}", self.addresses[&id]))
            .await
            .unwrap()
    }

    /// Waits until every running node has applied what `id` has applied, and returns the
    /// images (all equal).
    async fn converged_images(&self, id: u64) -> Vec<sluice_metadata::MetadataImage> {
        let index = self.nodes[&id].image().applied_index();
        for n in self.nodes.values() {
            n.wait_applied(index, WAIT).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let images: Vec<_> = self.nodes.values().map(|n| n.image()).collect();
            let strip = |i: &sluice_metadata::MetadataImage| {
                let mut p = i.to_proto();
                p.applied_index = 0;
                p
            };
            if images.windows(2).all(|w| strip(&w[0]) == strip(&w[1])) {
                return images;
            }
            assert!(tokio::time::Instant::now() < deadline, "images differ");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Registers a broker and keeps it heartbeating (through controller `via`) until aborted.
async fn broker(cluster: &Cluster, via: u64, broker_id: i32) -> (i64, JoinHandle<()>) {
    let mut client = cluster.client(via).await;
    let reg = client
        .register_broker(api::RegisterBrokerRequest {
            broker_id,
            incarnation_id: format!("incarnation-{broker_id}"),
            endpoints: vec![pb::Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
                security_protocol: "PLAINTEXT".into(),
            }],
            rack: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.error_code, 0, "{}", reg.error_message);
    let epoch = reg.broker_epoch;
    let task = tokio::spawn(async move {
        loop {
            let _ = client
                .broker_heartbeat(api::BrokerHeartbeatRequest {
                    broker_id,
                    broker_epoch: epoch,
                    metadata_index: u64::MAX,
                    want_shut_down: false,
                    log_dir_offline: false,
                    offline_replicas: Vec::new(),
                    sequence: 0,
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (epoch, task)
}

async fn wait_until<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_topic(
    client: &mut ControllerClient<Channel>,
    name: &str,
    partitions: i32,
    rf: i32,
) -> api::TopicResult {
    client
        .create_topics(api::CreateTopicsRequest {
            topics: vec![api::TopicSpec {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: rf,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_replicate_fail_over_and_restart() {
    let mut cluster = Cluster::start(60_000).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut brokers = Vec::new();
    for b in 1..=3 {
        brokers.push(broker(&cluster, follower, b).await);
    }
    wait_until("brokers unfenced", || {
        cluster.nodes[&leader].image().live_broker_ids() == vec![1, 2, 3]
    })
    .await;

    // a write sent to a follower is forwarded to the leader and seen everywhere
    let mut client = cluster.client(follower).await;
    let created = create_topic(&mut client, "orders", 6, 3).await;
    assert_eq!(created.error_code, 0, "{}", created.error_message);
    assert_eq!(created.topic_id.len(), 16);
    let again = create_topic(&mut client, "orders", 1, 1).await;
    assert_eq!(again.error_code, i32::from(ec::TOPIC_ALREADY_EXISTS));
    let bad = create_topic(&mut client, "bad name!", 1, 1).await;
    assert_eq!(bad.error_code, i32::from(ec::INVALID_TOPIC_EXCEPTION));
    let too_wide = create_topic(&mut client, "wide", 1, 4).await;
    assert_eq!(
        too_wide.error_code,
        i32::from(ec::INVALID_REPLICATION_FACTOR)
    );
    let images = cluster.converged_images(leader).await;
    let orders = images[0].topic("orders").unwrap();
    assert_eq!(orders.partitions.len(), 6);
    let leaders: Vec<i32> = orders.partitions.iter().map(|p| p.leader).collect();
    for b in 1..=3 {
        assert_eq!(
            leaders.iter().filter(|l| **l == b).count(),
            2,
            "{leaders:?}"
        );
    }

    // AlterPartition: a current partition epoch shrinks the ISR, a stale one is refused
    let p0 = orders.partitions[0].clone();
    let epoch_of_leader = brokers[(p0.leader - 1) as usize].0;
    let shrink = |partition_epoch: i32| api::AlterPartitionRequest {
        broker_id: p0.leader,
        broker_epoch: epoch_of_leader,
        partitions: vec![api::AlterPartitionItem {
            topic: "orders".into(),
            partition: 0,
            leader_epoch: p0.leader_epoch,
            new_isr: vec![p0.leader],
            partition_epoch,
        }],
    };
    let ok = client
        .alter_partition(shrink(p0.partition_epoch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok.partitions[0].error_code, 0,
        "{}",
        ok.partitions[0].error_message
    );
    assert_eq!(
        ok.partitions[0].state.as_ref().unwrap().isr,
        vec![p0.leader]
    );
    let stale = client
        .alter_partition(shrink(p0.partition_epoch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stale.partitions[0].error_code,
        i32::from(ec::INVALID_UPDATE_VERSION)
    );
    assert_eq!(
        stale.partitions[0].state.as_ref().unwrap().partition_epoch,
        p0.partition_epoch + 1
    );

    // a leader whose replica is damaged leaves the ISR: the first remaining member in
    // replica order leads, in a new leader epoch
    let p1 = orders.partitions[1].clone();
    let rest: Vec<i32> = p1.isr.iter().copied().filter(|b| *b != p1.leader).collect();
    let leave = |new_isr: Vec<i32>| api::AlterPartitionRequest {
        broker_id: p1.leader,
        broker_epoch: brokers[(p1.leader - 1) as usize].0,
        partitions: vec![api::AlterPartitionItem {
            topic: "orders".into(),
            partition: 1,
            leader_epoch: p1.leader_epoch,
            new_isr,
            partition_epoch: p1.partition_epoch,
        }],
    };
    let nobody = client
        .alter_partition(leave(Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        nobody.partitions[0].error_code,
        i32::from(ec::INELIGIBLE_REPLICA),
        "an empty ISR is refused"
    );
    let left = client
        .alter_partition(leave(rest.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        left.partitions[0].error_code, 0,
        "{}",
        left.partitions[0].error_message
    );
    let after = left.partitions[0].state.clone().unwrap();
    let first_rest = *p1.replicas.iter().find(|b| rest.contains(b)).unwrap();
    assert_eq!(after.leader, first_rest);
    assert_eq!(after.leader_epoch, p1.leader_epoch + 1);
    assert!(!after.isr.contains(&p1.leader));

    // partitions are added all at once; fewer than now is refused
    let grow = |count: i32| api::CreatePartitionsRequest {
        topics: vec![api::PartitionCount {
            name: "orders".into(),
            count,
        }],
        validate_only: false,
    };
    let grown = client
        .create_partitions(grow(8))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        grown.topics[0].error_code, 0,
        "{}",
        grown.topics[0].error_message
    );
    let shrink_req = client
        .create_partitions(grow(7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        shrink_req.topics[0].error_code,
        i32::from(ec::INVALID_PARTITIONS)
    );
    let images = cluster.converged_images(leader).await;
    let orders = images[0].topic("orders").unwrap();
    assert_eq!(orders.partitions.len(), 8);
    assert!(orders.partitions[6..].iter().all(|p| p.replicas.len() == 3));

    // offsets commit and read back through any node
    client
        .commit_offsets(api::CommitOffsetsRequest {
            offsets: vec![pb::CommittedOffset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 2,
                offset: 1234,
                leader_epoch: 0,
                metadata: "m".into(),
                commit_timestamp_ms: 0,
            }],
            commits: Vec::new(),
        })
        .await
        .unwrap();
    let mut other = cluster.client(leader).await;
    let fetched = other
        .fetch_offsets(api::FetchOffsetsRequest {
            group: "g".into(),
            topics: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.offsets.len(), 1);
    assert_eq!(fetched.offsets[0].offset, 1234);
    assert!(fetched.offsets[0].commit_timestamp_ms > 0);

    // kill the leader: the other two elect a new one and keep committing
    for (_, task) in &brokers {
        task.abort();
    }
    cluster.stop(leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let survivor = *cluster.nodes.keys().next().unwrap();
    let mut client = cluster.client(survivor).await;
    let created = create_topic(&mut client, "after-failover", 2, 2).await;
    assert_eq!(created.error_code, 0, "{}", created.error_message);
    cluster.converged_images(new_leader).await;

    // restart everything from disk: the metadata is intact on all three
    let before = cluster.nodes[&new_leader].image();
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.leader().await;
    let images = cluster.converged_images(leader).await;
    for image in &images {
        for name in ["orders", "after-failover"] {
            assert_eq!(image.topic(name), before.topic(name), "{name}");
        }
        assert_eq!(
            image.committed_offset("g", "orders", 2).unwrap().offset,
            1234
        );
        assert_eq!(image.brokers().count(), 3);
    }
    // snapshots were taken (5 entries apart) and the log still replays on top of them
    assert!(cluster
        .dirs
        .iter()
        .any(|d| d.path().join("metadata-snapshot").exists()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_brokers_are_fenced_and_their_partitions_move_or_go_offline() {
    let cluster = Cluster::start(1000).await;
    let leader = cluster.leader().await;
    let mut brokers = BTreeMap::new();
    for b in 1..=3 {
        brokers.insert(b, broker(&cluster, leader, b).await);
    }
    let node = &cluster.nodes[&leader];
    wait_until("brokers unfenced", || {
        node.image().live_broker_ids() == vec![1, 2, 3]
    })
    .await;
    // group coordinators spread over the three, every slot placed
    let spread = |image: &sluice_metadata::MetadataImage, id: i32| {
        image.coordinators().filter(|c| c.broker_id == id).count()
    };
    wait_until("coordinators placed", || {
        let image = node.image();
        (spread(&image, 1), spread(&image, 2), spread(&image, 3)) == (17, 17, 16)
    })
    .await;
    let mut client = cluster.client(leader).await;
    assert_eq!(
        create_topic(&mut client, "replicated", 3, 2)
            .await
            .error_code,
        0
    );
    assert_eq!(
        create_topic(&mut client, "single", 3, 1).await.error_code,
        0
    );

    // broker 1 goes silent
    brokers.remove(&1).unwrap().1.abort();
    wait_until("broker 1 fenced", || {
        node.image().broker(1).is_some_and(|b| b.fenced)
    })
    .await;
    wait_until("broker 1's coordinator slots moved", || {
        let image = node.image();
        spread(&image, 1) == 0 && image.coordinators().all(|c| c.broker_id != -1)
    })
    .await;
    wait_until("leadership moved off broker 1", || {
        let image = node.image();
        image
            .topic("replicated")
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.leader != 1 && p.leader != -1 && !p.isr.contains(&1))
    })
    .await;
    let image = node.image();
    for p in &image.topic("replicated").unwrap().partitions {
        if p.replicas[0] == 1 {
            assert!(p.leader_epoch >= 1, "{p:?}");
        }
    }
    // single-replica partitions on broker 1 have nobody else: offline, ISR kept
    for p in &image.topic("single").unwrap().partitions {
        if p.replicas == vec![1] {
            assert_eq!((p.leader, p.isr.clone()), (-1, vec![1]));
        } else {
            assert_ne!(p.leader, -1);
        }
    }

    // broker 1 comes back (same incarnation, same epoch): unfenced, leads its offline partitions
    let (_, task) = broker(&cluster, leader, 1).await;
    wait_until("broker 1 back", || {
        let image = node.image();
        !image.broker(1).unwrap().fenced
            && spread(&image, 1) == 17
            && image
                .topic("single")
                .unwrap()
                .partitions
                .iter()
                .all(|p| p.leader != -1)
    })
    .await;
    task.abort();
    for (_, (_, t)) in brokers {
        t.abort();
    }
    cluster.shutdown().await;
}

#[test]
fn voters_parse_like_kafka() {
    let v = ControllerConfig::parse_voters("1@a:1,2@b:2, 3@c:3").unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!(v[&2], "b:2");
    for bad in ["", "1@a", "x@a:1", "1@a:1,1@b:2", "1:a:1"] {
        assert!(ControllerConfig::parse_voters(bad).is_err(), "{bad}");
    }
}

/// Follows WatchMetadata the way a broker will, applying events to its own image.
async fn follow(
    client: &mut ControllerClient<Channel>,
    from_index: u64,
    until: impl Fn(&sluice_metadata::MetadataImage) -> bool,
) -> (sluice_metadata::MetadataImage, Vec<u64>) {
    let mut stream = client
        .watch_metadata(api::WatchMetadataRequest { from_index })
        .await
        .unwrap()
        .into_inner();
    let mut image = sluice_metadata::MetadataImage::new("sluice-cluster");
    let mut indexes = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !until(&image) {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("watch timed out")
            .unwrap()
            .expect("stream ended");
        match event.event.unwrap() {
            api::metadata_event::Event::Image(i) => {
                image = sluice_metadata::MetadataImage::from_proto(i)
            }
            api::metadata_event::Event::Batch(b) => {
                image.apply(event.index, &b);
            }
            api::metadata_event::Event::KeepAlive(_) => continue,
        }
        indexes.push(event.index);
    }
    (image, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_rebuild_the_same_image_from_the_stream() {
    let cluster = Cluster::start(60_000).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (_, task) = broker(&cluster, leader, 1).await;
    let node = &cluster.nodes[&follower];
    wait_until("broker unfenced", || {
        node.image().live_broker_ids() == vec![1]
    })
    .await;
    let mut client = cluster.client(follower).await;
    // a watcher from the start; with snapshots every 5 entries the early log is purged,
    // so it first receives the whole image
    for i in 0..12 {
        assert_eq!(
            create_topic(&mut client, &format!("w{i}"), 1, 1)
                .await
                .error_code,
            0
        );
    }
    cluster.converged_images(leader).await;
    let (image, indexes) = follow(&mut client, 0, |i| i.topic("w11").is_some()).await;
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    let expected = node.image();
    let got = image;
    assert_eq!(got.to_proto().topics, expected.to_proto().topics);
    assert_eq!(got.to_proto().brokers, expected.to_proto().brokers);

    // a watcher from the current index sees only what comes next, live
    let from = node.image().applied_index();
    let mut watch_client = cluster.client(follower).await;
    let watcher = tokio::spawn(async move {
        follow(&mut watch_client, from, |i| i.topic("late").is_some()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(create_topic(&mut client, "late", 1, 1).await.error_code, 0);
    let (image, indexes) = watcher.await.unwrap();
    assert!(
        indexes.iter().all(|i| *i > from),
        "{indexes:?} after {from}"
    );
    assert_eq!(image.topics().count(), 1, "only the new topic");

    // an idle stream says the controller is alive: keep-alives carrying its applied index
    let applied = node.image().applied_index();
    let mut stream = client
        .watch_metadata(api::WatchMetadataRequest {
            from_index: applied,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        let event = tokio::time::timeout(sluice_metadata::WATCH_STALL_TIMEOUT, stream.message())
            .await
            .expect("an idle watch hears from its controller within the stall timeout")
            .unwrap()
            .expect("stream open");
        assert!(matches!(
            event.event,
            Some(api::metadata_event::Event::KeepAlive(_))
        ));
        assert_eq!(event.index, applied);
    }
    task.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_fenced_out_of_every_isr_until_it_heartbeats() {
    let cluster = Cluster::start(60_000).await;
    let leader = cluster.leader().await;
    let mut tasks = Vec::new();
    for b in 1..=3 {
        tasks.push(broker(&cluster, leader, b).await.1);
    }
    let node = &cluster.nodes[&leader];
    wait_until("brokers unfenced", || {
        node.image().live_broker_ids() == vec![1, 2, 3]
    })
    .await;
    let mut client = cluster.client(leader).await;
    assert_eq!(create_topic(&mut client, "t", 3, 3).await.error_code, 0);
    tasks.remove(0).abort();
    // broker 1 restarts: a new incarnation registers
    let reg = client
        .register_broker(api::RegisterBrokerRequest {
            broker_id: 1,
            incarnation_id: "second-life".into(),
            endpoints: vec![],
            rack: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.error_code, 0);
    let image = node.image();
    assert!(image.broker(1).unwrap().fenced);
    assert_eq!(image.broker(1).unwrap().broker_epoch, reg.broker_epoch);
    for p in &image.topic("t").unwrap().partitions {
        assert!(
            p.leader != 1 && p.leader != -1 && !p.isr.contains(&1),
            "{p:?}"
        );
    }
    // a heartbeat with the old epoch is refused; with the new one it is unfenced
    let stale = client
        .broker_heartbeat(api::BrokerHeartbeatRequest {
            broker_id: 1,
            broker_epoch: reg.broker_epoch - 1,
            metadata_index: u64::MAX,
            want_shut_down: false,
            log_dir_offline: false,
            offline_replicas: Vec::new(),
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.error_code, i32::from(ec::STALE_BROKER_EPOCH));
    let fresh = client
        .broker_heartbeat(api::BrokerHeartbeatRequest {
            broker_id: 1,
            broker_epoch: reg.broker_epoch,
            metadata_index: u64::MAX,
            want_shut_down: false,
            log_dir_offline: false,
            offline_replicas: Vec::new(),
            sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((fresh.error_code, fresh.fenced), (0, false));
    for t in tasks {
        t.abort();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gives_brokers_silent_since_the_old_leader_a_session_from_its_takeover() {
    let mut cluster = Cluster::start(3000).await;
    let old = cluster.leader().await;
    let (_, heartbeats_1) = broker(&cluster, old, 1).await;
    let (_, heartbeats_2) = broker(&cluster, old, 2).await;
    let node = &cluster.nodes[&old];
    wait_until("brokers unfenced", || {
        node.image().live_broker_ids() == vec![1, 2]
    })
    .await;
    // broker 1 pings every controller, as real brokers do; broker 2 only heartbeats the
    // leader, so the followers never hear from it. Broker 1's streams stay open when its
    // pings stop (a host that vanished without closing its connections)
    let mut silent_streams = Vec::new();
    let mut ping_senders = Vec::new();
    for id in cluster.nodes.keys() {
        let mut client = cluster.client(*id).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        silent_streams.push(tokio::spawn(async move {
            let _ = client
                .alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        }));
        ping_senders.push(tx);
    }
    let senders = ping_senders.clone();
    let pings_1 = tokio::spawn(async move {
        loop {
            for tx in &senders {
                let _ = tx
                    .send(api::AlivePing {
                        sender: Some(api::alive_ping::Sender::BrokerId(1)),
                    })
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // longer than a session: the followers have been observing for a whole one
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // both brokers and the controller leader die together
    pings_1.abort();
    heartbeats_1.abort();
    heartbeats_2.abort();
    cluster.stop(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let node = &cluster.nodes[&new];
    // the new leader has not heard from broker 2 for over a session, but broker 2 may
    // have reached only the old leader, whose answers renewed its controller lease: it is
    // given a session from the takeover, like broker 1 (whose streams stay open, so
    // neither is known dead). Fencing either earlier could give a partition two leaders
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for b in [1, 2] {
        assert!(
            node.image().broker(b).is_some_and(|b| !b.fenced),
            "broker {b} was fenced before a session from the takeover ran out"
        );
    }
    for b in [1, 2] {
        wait_until("both fenced once the session ran out", || {
            node.image().broker(b).is_some_and(|b| b.fenced)
        })
        .await;
    }
    drop(ping_senders);
    cluster.shutdown().await;
    for s in silent_streams {
        s.abort();
    }
}

/// Holds broker `broker_id`'s `Alive` stream to every controller until aborted.
async fn alive_streams(cluster: &Cluster, broker_id: i32) -> Vec<JoinHandle<()>> {
    let mut streams = Vec::new();
    for id in cluster.nodes.keys() {
        streams.push(tokio::spawn(
            sluice_metadata::alive_stream::hold_alive_stream(
                cluster.client(*id).await,
                api::alive_ping::Sender::BrokerId(broker_id),
                Duration::from_millis(100),
                Duration::from_millis(100),
            ),
        ));
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_process_is_gone_is_fenced_at_once_not_after_its_session() {
    // a session far longer than the test waits: only the streams' end can fence
    let cluster = Cluster::start(600_000).await;
    let leader = cluster.leader().await;
    let (_, heartbeats_1) = broker(&cluster, leader, 1).await;
    let (_, heartbeats_2) = broker(&cluster, leader, 2).await;
    let streams_1 = alive_streams(&cluster, 1).await;
    let streams_2 = alive_streams(&cluster, 2).await;
    let node = &cluster.nodes[&leader];
    wait_until("brokers unfenced", || {
        node.image().live_broker_ids() == vec![1, 2]
    })
    .await;
    // let every stream deliver pings for a while
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // broker 1's process dies: its heartbeats stop and its connections close
    heartbeats_1.abort();
    for s in &streams_1 {
        s.abort();
    }
    wait_until("broker 1 fenced", || {
        node.image().broker(1).is_some_and(|b| b.fenced)
    })
    .await;
    assert!(
        node.image().broker(2).is_some_and(|b| !b.fenced),
        "broker 2 is alive and was fenced"
    );
    // broker 2's streams break but it keeps heartbeating: the leader may fence it at the
    // stream's end, but its next heartbeat (it is alive) brings it back
    for s in &streams_2 {
        s.abort();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        node.image().broker(2).is_some_and(|b| !b.fenced),
        "broker 2 still heartbeats and stayed fenced"
    );
    heartbeats_2.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_quorum_leaders_process_is_gone_a_survivor_campaigns_without_waiting_for_its_timer(
) {
    let mut cluster = Cluster::start(600_000).await;
    let old = cluster.leader().await;
    // the survivors' own election timers are off: only the end of the old leader's
    // Alive streams can start an election
    for (id, node) in &cluster.nodes {
        if *id != old {
            node.set_election_timer(false);
        }
    }
    let (_, heartbeats) = broker(&cluster, old, 1).await;
    // let the voters' streams to each other open
    tokio::time::sleep(Duration::from_millis(1000)).await;
    heartbeats.abort();
    cluster.stop(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    // the new leader commits
    let mut client = cluster.client(new).await;
    let created = create_topic(&mut client, "after-failover", 1, 1).await;
    assert_eq!(created.error_code, 0, "{}", created.error_message);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quorum_forms_on_first_start_without_its_lowest_voter() {
    // voter 1 initialises the quorum at once; with it down the others do so themselves
    // after two election timeouts
    let mut cluster = Cluster::start_only(60_000, &[2, 3]).await;
    let leader = cluster.leader().await;
    assert_ne!(leader, 1);
    let (_, heartbeats) = broker(&cluster, leader, 7).await;
    heartbeats.abort();
    // voter 1 comes up later and catches up with what was committed without it
    cluster.restart(1).await;
    let images = cluster.converged_images(leader).await;
    assert!(images.iter().all(|i| i.broker(7).is_some()));
    cluster.shutdown().await;
}

/// The log index a JSON file in a metadata directory records at `pointer` (0 when the
/// file does not exist).
fn index_in(dir: &std::path::Path, file: &str, pointer: &str) -> u64 {
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v.pointer(pointer).and_then(|i| i.as_u64()).unwrap_or(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("{file}: {e}"),
    }
}

/// openraft purges a follower's log as soon as it hands it a leader's snapshot, before
/// the state machine has written that snapshot, and appends the entries after it at once;
/// a crash in between would leave a node with neither the entries nor the snapshot, or a
/// log with a gap. Here a follower that missed what the leader has purged gets the
/// leader's snapshot while the snapshot's write fails (its temporary file's path is taken
/// by a directory) — what a crash before its fsync leaves on disk: at no moment may the
/// purged index pass the snapshot on disk, and once the obstacle is gone the node
/// restarts from what it kept and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_its_log_until_the_snapshot_it_installs_is_on_disk() {
    // purges as soon as a snapshot covers anything
    let mut cluster = Cluster::start_with(60_000, &[1, 2, 3], 1).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (_, heartbeats) = broker(&cluster, follower, 1).await;
    wait_until("the broker unfenced", || {
        cluster.nodes[&leader].image().live_broker_ids() == vec![1]
    })
    .await;
    let mut client = cluster.client(leader).await;
    for i in 0..3 {
        let r = create_topic(&mut client, &format!("early-{i}"), 1, 1).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
    }
    cluster.converged_images(leader).await;

    // a follower misses more than the leader keeps: it can only catch up from a snapshot
    let lagging = (1..=3).rev().find(|id| *id != leader).unwrap();
    let kept = cluster.nodes[&lagging].image().applied_index();
    cluster.stop(lagging).await;
    let leader_dir = cluster.dirs[leader as usize - 1].path().to_path_buf();
    for i in 0..20 {
        let r = create_topic(&mut client, &format!("topic-{i}"), 1, 1).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
    }
    wait_until("the leader purged past the stopped follower's log", || {
        index_in(&leader_dir, "raft-purged", "/index") > kept + 1
    })
    .await;
    let replaced = lagging;
    let dir = cluster.dirs[replaced as usize - 1].path().to_path_buf();
    let purged_before = index_in(&dir, "raft-purged", "/index");
    let snapshot_before = index_in(&dir, "metadata-snapshot", "/meta/last_log_id/index");
    assert!(purged_before <= snapshot_before);
    std::fs::create_dir(dir.join("metadata-snapshot.tmp")).unwrap();
    cluster.restart(replaced).await;
    // entries that follow the snapshot reach the node while its snapshot is not on disk
    for i in 0..5 {
        let r = create_topic(&mut client, &format!("after-{i}"), 1, 1).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
    }
    // past the log store's 10 s wait for the snapshot
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while tokio::time::Instant::now() < deadline {
        let purged = index_in(&dir, "raft-purged", "/index");
        let snapshot = index_in(&dir, "metadata-snapshot", "/meta/last_log_id/index");
        assert!(
            purged <= snapshot,
            "node {replaced} purged its log to {purged} with only {snapshot} in a snapshot on disk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // nothing on disk leaves a gap (the log store refused entries past a snapshot not on
    // disk): the node restarts from what it kept
    cluster.stop(replaced).await;
    std::fs::remove_dir(dir.join("metadata-snapshot.tmp")).unwrap();
    cluster.restart(replaced).await;
    let images = cluster.converged_images(leader).await;
    assert!(images.iter().all(|i| i.topic("after-4").is_some()));
    assert!(index_in(&dir, "metadata-snapshot", "/meta/last_log_id/index") > 0);
    heartbeats.abort();
    cluster.shutdown().await;
}

/// Entries differ in size by orders of magnitude (a topic of many partitions, the fencing
/// of a broker leading thousands), so a snapshot policy counting entries let the log grow
/// without bound in bytes, every byte replayed at a restart. With the count out of reach,
/// a log grown past `metadata_snapshot_bytes` is snapshotted and purged on every voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_grown_past_its_byte_limit_is_snapshotted_and_purged() {
    let cluster = Cluster::start_full(60_000, &[1, 2, 3], 1, Some(64 * 1024)).await;
    let leader = cluster.leader().await;
    let (_, heartbeats) = broker(&cluster, leader, 1).await;
    wait_until("the broker unfenced", || {
        cluster.nodes[&leader].image().live_broker_ids() == vec![1]
    })
    .await;
    let mut client = cluster.client(leader).await;
    // each entry tens of KB: a few of them pass the limit, far below the entry count
    for i in 0..6 {
        let r = create_topic(&mut client, &format!("wide-{i}"), 300, 1).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
    }
    cluster.converged_images(leader).await;
    for dir in &cluster.dirs {
        let dir = dir.path().to_path_buf();
        wait_until("a snapshot on disk and the log purged up to it", || {
            let snapshot = index_in(&dir, "metadata-snapshot", "/meta/last_log_id/index");
            let purged = index_in(&dir, "raft-purged", "/index");
            snapshot > 0 && purged > 0 && purged <= snapshot
        })
        .await;
    }
    heartbeats.abort();
    cluster.shutdown().await;
}
