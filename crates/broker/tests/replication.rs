//! Three brokers in one process (one-voter controller quorum): followers fetch from the
//! leader with the Fetch API, the high watermark moves as they catch up, acks=all is
//! answered once every ISR member has the batch, and the three logs end identical.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::{BrokerConfig, BrokerNode};
use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_log::Log;
use sluice_metadata::proto::metadata as pb;
use sluice_protocol::ClientConnection;
use sluice_record::{BatchBuilder, Compression, Offset, TopicPartition};

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    brokers: BTreeMap<i32, BrokerNode>,
    configs: BTreeMap<i32, BrokerConfig>,
    controller: Option<ControllerNode>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(n: i32) -> Cluster {
        Self::start_with(n, 60_000, |_| {}).await
    }

    /// `session_timeout_ms`: how long the controller waits before fencing a silent broker.
    async fn start_with(
        n: i32,
        session_timeout_ms: u64,
        tune: impl Fn(&mut BrokerConfig),
    ) -> Cluster {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut c = ControllerConfig::new(
            1,
            BTreeMap::from([(1, address.clone())]),
            dirs[0].path().into(),
        );
        c.election_timeout_ms = 300;
        c.raft_heartbeat_interval_ms = 50;
        c.broker_heartbeat_interval_ms = 100;
        c.broker_session_timeout_ms = session_timeout_ms;
        let controller = ControllerNode::start(c, listener).await.unwrap();
        let mut brokers = BTreeMap::new();
        let mut configs = BTreeMap::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let mut config = BrokerConfig::new(id, dir.path().join("data"), vec![address.clone()]);
            config.heartbeat_interval_ms = 100;
            config.advertised_endpoints = vec![pb::Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 0,
                security_protocol: "PLAINTEXT".into(),
            }];
            tune(&mut config);
            configs.insert(id, config.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            brokers.insert(id, BrokerNode::start(config, listener).await.unwrap());
            dirs.push(dir);
        }
        for b in brokers.values() {
            assert!(b.wait_until_ready(WAIT).await);
        }
        Cluster {
            brokers,
            configs,
            controller: Some(controller),
            _dirs: dirs,
        }
    }

    async fn client(&self, id: i32) -> ClientConnection {
        let address = self.brokers[&id].address().to_string();
        ClientConnection::connect(&address, "test", WAIT)
            .await
            .unwrap()
    }

    async fn stop_broker(&mut self, id: i32) {
        self.brokers.remove(&id).unwrap().shutdown().await.unwrap();
    }

    async fn restart_broker(&mut self, id: i32) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = BrokerNode::start(self.configs[&id].clone(), listener)
            .await
            .unwrap();
        assert!(node.wait_until_ready(WAIT).await);
        self.brokers.insert(id, node);
    }

    /// Metadata for every topic, as `via` answers it.
    async fn metadata(&self, via: i32) -> MetadataResponse {
        let mut c = self.client(via).await;
        c.send(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
            true,
        )
        .await
        .unwrap()
    }

    /// The partition's state as `via` reports it in Metadata.
    async fn partition_metadata(&self, via: i32, topic: &str) -> MetadataResponsePartition {
        let t = self
            .metadata(via)
            .await
            .topics
            .into_iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .unwrap();
        t.partitions.into_iter().next().unwrap()
    }

    /// The partition's ISR (sorted) as `via` reports it.
    async fn isr(&self, via: i32, topic: &str) -> Vec<i32> {
        let p = self.partition_metadata(via, topic).await;
        let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
        isr.sort();
        isr
    }

    /// The partition's leader as `via` reports it.
    async fn leader(&self, via: i32, topic: &str) -> i32 {
        self.partition_metadata(via, topic).await.leader_id.0
    }

    async fn wait_for_isr(&self, via: i32, topic: &str, expected: &[i32]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let isr = self.isr(via, topic).await;
            if isr == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ISR {isr:?}, waiting for {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every broker's log of `tp` ends at `end`, then checks each is
    /// byte-identical to `leader`'s.
    async fn assert_logs_match(&self, leader: i32, tp: &TopicPartition, end: Offset) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self
            .brokers
            .keys()
            .any(|id| self.log_end(*id, tp) != Some(end))
        {
            assert!(tokio::time::Instant::now() < deadline, "replicas caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // compared from the latest log start: retention runs on each replica on its own
        let from = self
            .brokers
            .keys()
            .map(|id| self.log_start(*id, tp))
            .max()
            .unwrap_or(Offset::ZERO);
        let leader_log = self.log_bytes(leader, tp, from);
        for id in self.brokers.keys() {
            assert!(
                self.log_bytes(*id, tp, from) == leader_log,
                "broker {id}'s log matches the leader's"
            );
        }
    }

    /// Runs `f` on broker `id`'s log of `tp` (None if it has no such replica).
    fn with_log<T>(&self, id: i32, tp: &TopicPartition, f: impl FnOnce(&Log) -> T) -> Option<T> {
        let p = self.brokers[&id].broker().replicas.partition(tp)?;
        let log = sluice_log::lock(p.log());
        Some(f(&log))
    }

    fn log_start(&self, id: i32, tp: &TopicPartition) -> Offset {
        self.with_log(id, tp, Log::log_start_offset).unwrap()
    }

    /// The log's bytes from the batch holding `from` (at or above its log start).
    fn log_bytes(&self, id: i32, tp: &TopicPartition, from: Offset) -> Vec<u8> {
        self.with_log(id, tp, |log| {
            let end = log.log_end_offset();
            let mut out = Vec::new();
            let mut at = from;
            while at < end {
                let read = log.read(at, 1 << 24, end, true).unwrap();
                out.extend(read.region.unwrap().read_to_vec().unwrap());
                at = read.next_offset;
            }
            out
        })
        .unwrap()
    }

    fn log_end(&self, id: i32, tp: &TopicPartition) -> Option<Offset> {
        self.with_log(id, tp, Log::log_end_offset)
    }

    async fn stop(mut self) {
        for (_, b) in std::mem::take(&mut self.brokers) {
            b.shutdown().await.unwrap();
        }
        self.controller.take().unwrap().shutdown().await;
    }
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.into()))
}

fn batch(i: usize) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for j in 0..10 {
        b.append(
            1_700_000_000_000,
            None,
            Some(format!("record-{i}-{j}").as_bytes()),
            &[],
        );
    }
    let mut out = BytesMut::new();
    out.put_slice(&b.build().unwrap());
    out.freeze()
}

async fn create_replicated(cluster: &Cluster, topic: &str) -> i32 {
    create_replicated_with(cluster, topic, &[]).await
}

/// One partition, RF=3, min.insync.replicas=2 and `configs`; returns its leader.
async fn create_replicated_with(
    cluster: &Cluster,
    topic: &str,
    configs: &[(&'static str, &'static str)],
) -> i32 {
    let mut c = cluster.client(1).await;
    let configs = [("min.insync.replicas", "2")]
        .iter()
        .chain(configs)
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str(k))
                .with_value(Some(StrBytes::from_static_str(v)))
        })
        .collect();
    let create = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(3)
            .with_configs(configs)])
        .with_timeout_ms(30_000);
    let r: CreateTopicsResponse = c
        .send(ApiKey::CreateTopics, 7, &create, true)
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0]);
    let partition = cluster.partition_metadata(1, topic).await;
    assert_eq!(partition.isr_nodes.len(), 3);
    partition.leader_id.0
}

/// Batch `i` for partition 0 of `topic`.
fn produce_request(topic: &str, i: usize, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(20_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch(i)))])])
}

/// Produces batches `range` with acks=all to `leader`; each must get its offset.
async fn produce_all(cluster: &Cluster, leader: i32, topic: &str, range: std::ops::Range<usize>) {
    produce(cluster, leader, topic, range, -1).await;
}

/// Produces batches `range` with `acks` to `leader`; each must get its offset.
async fn produce(
    cluster: &Cluster,
    leader: i32,
    topic: &str,
    range: std::ops::Range<usize>,
    acks: i16,
) {
    let mut p = cluster.client(leader).await;
    for i in range {
        let request = produce_request(topic, i, acks);
        let r: ProduceResponse = p.send(ApiKey::Produce, 9, &request, true).await.unwrap();
        let answer = &r.responses[0].partition_responses[0];
        assert_eq!(
            (answer.error_code, answer.base_offset),
            (0, 10 * i as i64),
            "batch {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_replicate_and_acks_all_waits_for_the_isr() {
    let cluster = Cluster::start(3).await;
    let leader = create_replicated(&cluster, "replicated").await;
    produce_all(&cluster, leader, "replicated", 0..20).await;
    // acks=all answered ⇒ every ISR member had each batch; the logs are identical
    let tp = TopicPartition::new("replicated", 0);
    cluster.assert_logs_match(leader, &tp, Offset(200)).await;
    cluster.stop().await;
}

/// The same with followers fetching through fetch sessions (KIP-227,
/// `sluice.replica.fetch.sessions.enable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_in_fetch_sessions_replicate_and_acks_all_waits_for_the_isr() {
    let cluster = Cluster::start_with(3, 60_000, |c| c.replica_fetch_sessions = true).await;
    let leader = create_replicated(&cluster, "replicated").await;
    produce_all(&cluster, leader, "replicated", 0..20).await;
    // acks=all answered ⇒ every ISR member had each batch; the logs are identical
    let tp = TopicPartition::new("replicated", 0);
    cluster.assert_logs_match(leader, &tp, Offset(200)).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_follower_leaves_the_isr_and_rejoins_once_caught_up() {
    // the controller fences silent brokers only after a minute: the ISR shrink seen here
    // is the leader's own
    let mut cluster = Cluster::start_with(3, 60_000, |c| c.replica_lag_time_max_ms = 1000).await;
    let leader = create_replicated(&cluster, "lagging").await;
    produce_all(&cluster, leader, "lagging", 0..5).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.stop_broker(follower).await;
    let rest: Vec<i32> = (1..=3).filter(|id| *id != follower).collect();
    // the next acks=all write waits: the stopped follower is still in the ISR, caught up
    // to the old end (Kafka's rule), until it has lagged replica.lag.time.max.ms behind the
    // new data; then the leader drops it (the controller would wait 60 s) and, with two
    // in-sync replicas meeting min.insync.replicas=2, the write is answered
    produce_all(&cluster, leader, "lagging", 5..15).await;
    cluster.wait_for_isr(leader, "lagging", &rest).await;
    cluster.restart_broker(follower).await;
    cluster.wait_for_isr(leader, "lagging", &[1, 2, 3]).await;
    produce_all(&cluster, leader, "lagging", 15..20).await;
    let tp = TopicPartition::new("lagging", 0);
    cluster.assert_logs_match(leader, &tp, Offset(200)).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_leader_stops_an_in_sync_follower_takes_over_with_every_acknowledged_record() {
    let mut cluster = Cluster::start_with(3, 1000, |c| c.replica_lag_time_max_ms = 1000).await;
    let old = create_replicated(&cluster, "failover").await;
    produce_all(&cluster, old, "failover", 0..10).await;
    cluster.stop_broker(old).await;
    let survivor = (1..=3).find(|id| *id != old).unwrap();
    // the controller fences the silent leader and elects an in-sync follower
    let deadline = tokio::time::Instant::now() + WAIT;
    let new = loop {
        let leader = cluster.leader(survivor, "failover").await;
        if leader >= 0 && leader != old {
            break leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "a new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // the fenced broker stays in Metadata's broker list (so librdkafka does not
    // decommission it while migrating its partitions), named offline, in no ISR
    let metadata = cluster.metadata(survivor).await;
    let listed: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    assert!(listed.contains(&old), "brokers {listed:?}");
    let p = cluster.partition_metadata(survivor, "failover").await;
    assert_eq!(
        p.offline_replicas.iter().map(|b| b.0).collect::<Vec<_>>(),
        [old]
    );
    assert!(!p.isr_nodes.iter().any(|b| b.0 == old), "{p:?}");
    // every acknowledged record is there, and writing goes on at the next offset
    produce_all(&cluster, new, "failover", 10..20).await;
    // the old leader comes back as a follower and catches up
    cluster.restart_broker(old).await;
    let tp = TopicPartition::new("failover", 0);
    cluster.assert_logs_match(new, &tp, Offset(200)).await;
    cluster.wait_for_isr(new, "failover", &[1, 2, 3]).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controlled_shutdown_moves_leadership_without_losing_acks_1_writes() {
    // sessions last a minute: only the controlled shutdown can move leadership here; the
    // periodic ISR check runs every 5 minutes: the restarted broker rejoins the ISR on
    // the fetch that catches it up
    let mut cluster = Cluster::start_with(3, 60_000, |c| c.replica_lag_time_max_ms = 600_000).await;
    let old = create_replicated(&cluster, "rolling").await;
    // acks=1: answered after the leader's own append, before the followers have it
    produce(&cluster, old, "rolling", 0..50, 1).await;
    assert!(cluster.brokers[&old].controlled_shutdown(WAIT).await);
    // the leader no longer takes writes: a producer is told to look elsewhere
    let mut p = cluster.client(old).await;
    let request = produce_request("rolling", 99, 1);
    let r: ProduceResponse = p.send(ApiKey::Produce, 9, &request, true).await.unwrap();
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        sluice_metadata::error_code::NOT_LEADER_OR_FOLLOWER
    );
    cluster.stop_broker(old).await;
    let survivor = (1..=3).find(|id| *id != old).unwrap();
    let new = cluster.leader(survivor, "rolling").await;
    assert!(new >= 0 && new != old, "leader {new} after {old} shut down");
    // every acks=1 write is on the new leader: the next one lands at offset 500
    produce_all(&cluster, new, "rolling", 50..60).await;
    cluster.restart_broker(old).await;
    let tp = TopicPartition::new("rolling", 0);
    cluster.assert_logs_match(new, &tp, Offset(600)).await;
    cluster.wait_for_isr(new, "rolling", &[1, 2, 3]).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controlled_shutdown_of_the_last_broker_standing_does_not_wait_for_a_gone_quorum() {
    let mut cluster = Cluster::start_with(3, 1000, |_| {}).await;
    let leader = create_replicated(&cluster, "last").await;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.stop_broker(id).await;
    }
    // the controller fences both: no live broker shares the leader's ISR any more
    let node = &cluster.brokers[&leader];
    let alone = node
        .broker()
        .wait_for_image(WAIT, |image| {
            image
                .partition("last", 0)
                .is_some_and(|p| p.isr == vec![leader])
        })
        .await;
    assert!(alone, "the followers are fenced");
    // the whole cluster is stopping: the quorum is already gone, leadership has nowhere
    // to go, and the broker must not wait for a controller that will not answer
    cluster.controller.take().unwrap().shutdown().await;
    assert!(cluster.brokers[&leader].controlled_shutdown(WAIT).await);
    cluster.stop_broker(leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_leaders_log_start_restarts_its_log_there_and_rejoins() {
    let mut cluster = Cluster::start_with(3, 60_000, |c| {
        c.replica_lag_time_max_ms = 1000;
        c.retention_check_interval_ms = 100;
    })
    .await;
    // small segments, and retention keeps only the newest few
    let leader = create_replicated_with(
        &cluster,
        "retained",
        &[("segment.bytes", "2000"), ("retention.bytes", "4000")],
    )
    .await;
    produce_all(&cluster, leader, "retained", 0..5).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let tp = TopicPartition::new("retained", 0);
    let follower_end = cluster.log_end(follower, &tp).unwrap();
    cluster.stop_broker(follower).await;
    // the leader drops the stopped follower from the ISR, goes on with two, and its
    // retention deletes segments past where the follower stopped
    produce_all(&cluster, leader, "retained", 5..60).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.log_start(leader, &tp) <= follower_end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention on the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // back: its fetch offset is below the leader's log start (OFFSET_OUT_OF_RANGE); it
    // starts its log over there, catches up and rejoins
    cluster.restart_broker(follower).await;
    cluster.wait_for_isr(leader, "retained", &[1, 2, 3]).await;
    assert!(cluster.log_start(follower, &tp) > follower_end);
    produce_all(&cluster, leader, "retained", 60..65).await;
    cluster.assert_logs_match(leader, &tp, Offset(650)).await;
    cluster.stop().await;
}
