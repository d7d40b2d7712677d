//! Three brokers in one process (one-voter controller quorum): followers fetch from the
//! leader with the Fetch API, the high watermark moves as they catch up, acks=all is
//! answered once every ISR member has the batch, and the three logs end identical.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_broker::{BrokerConfig, BrokerNode};
use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_metadata::proto::metadata as pb;
use sluice_protocol::ClientConnection;
use sluice_record::{BatchBuilder, Compression, Offset, TopicPartition};

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    brokers: BTreeMap<i32, BrokerNode>,
    controller: Option<ControllerNode>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(n: i32) -> Cluster {
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
        let controller = ControllerNode::start(c, listener).await.unwrap();
        let mut brokers = BTreeMap::new();
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
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            brokers.insert(id, BrokerNode::start(config, listener).await.unwrap());
            dirs.push(dir);
        }
        for b in brokers.values() {
            assert!(b.wait_until_ready(WAIT).await);
        }
        Cluster {
            brokers,
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

    fn log_bytes(&self, id: i32, tp: &TopicPartition) -> Vec<u8> {
        let p = self.brokers[&id].broker().replicas.partition(tp).unwrap();
        let log = sluice_log::lock(p.log());
        let end = log.log_end_offset();
        let mut out = Vec::new();
        let mut at = Offset::ZERO;
        while at < end {
            let read = log.read(at, 1 << 24, end, true).unwrap();
            out.extend(read.region.unwrap().read_to_vec().unwrap());
            at = read.next_offset;
        }
        out
    }

    fn log_end(&self, id: i32, tp: &TopicPartition) -> Option<Offset> {
        let p = self.brokers[&id].broker().replicas.partition(tp)?;
        let end = sluice_log::lock(p.log()).log_end_offset();
        Some(end)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_replicate_and_acks_all_waits_for_the_isr() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    let create = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(name("replicated"))
            .with_num_partitions(1)
            .with_replication_factor(3)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("min.insync.replicas"))
                .with_value(Some(StrBytes::from_static_str("2")))])])
        .with_timeout_ms(30_000);
    let r: CreateTopicsResponse = c
        .send(ApiKey::CreateTopics, 7, &create, true)
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0]);
    let m: MetadataResponse = c
        .send(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
            true,
        )
        .await
        .unwrap();
    let partition = &m.topics[0].partitions[0];
    assert_eq!(partition.isr_nodes.len(), 3);
    let leader = partition.leader_id.0;
    let mut p = cluster.client(leader).await;
    for i in 0..20 {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(20_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name("replicated"))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(i)))])]);
        let r: ProduceResponse = p.send(ApiKey::Produce, 9, &request, true).await.unwrap();
        let answer = &r.responses[0].partition_responses[0];
        assert_eq!(
            (answer.error_code, answer.base_offset),
            (0, 10 * i as i64),
            "batch {i}"
        );
    }
    // acks=all answered ⇒ every ISR member had each batch; the logs are identical
    let tp = TopicPartition::new("replicated", 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while (1..=3).any(|id| cluster.log_end(id, &tp) != Some(Offset(200))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "followers caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader_log = cluster.log_bytes(leader, &tp);
    for id in 1..=3 {
        assert!(
            cluster.log_bytes(id, &tp) == leader_log,
            "broker {id}'s log matches the leader's"
        );
    }
    cluster.stop().await;
}
