//! A broker (in process, with a one-voter controller quorum) driven with raw Kafka requests
//! over a real socket: produce and fetch round trips, the error codes for bad input (and
//! that nothing stored changes), the fetch long poll, the sendfile path and its switch,
//! topic configs, deletion and re-creation, fetch sessions (KIP-227).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest,
    FetchResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_broker::{BrokerConfig, BrokerNode};
use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_metadata::proto::metadata as pb;
use sluice_record::{BatchBuilder, Compression};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

struct TestBroker {
    broker: Option<BrokerNode>,
    controller: Option<ControllerNode>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    data_dir: std::path::PathBuf,
}

impl TestBroker {
    async fn start(use_sendfile: bool) -> TestBroker {
        Self::start_with(|config| config.use_sendfile = use_sendfile).await
    }

    async fn start_with(configure: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let controller_dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut c = ControllerConfig::new(
            1,
            BTreeMap::from([(1, address.clone())]),
            controller_dir.path().into(),
        );
        c.election_timeout_ms = 300;
        c.raft_heartbeat_interval_ms = 50;
        c.broker_heartbeat_interval_ms = 100;
        let controller = ControllerNode::start(c, listener).await.unwrap();
        let mut config = BrokerConfig::new(1, data.path().join("data"), vec![address]);
        config.heartbeat_interval_ms = 100;
        configure(&mut config);
        config.advertised_endpoints = vec![pb::Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 0,
            security_protocol: "PLAINTEXT".into(),
        }];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = BrokerNode::start(config, listener).await.unwrap();
        assert!(broker.wait_until_ready(WAIT).await, "broker admitted");
        TestBroker {
            data_dir: data.path().join("data"),
            broker: Some(broker),
            controller: Some(controller),
            _dirs: (controller_dir, data),
        }
    }

    fn node(&self) -> &BrokerNode {
        self.broker.as_ref().unwrap()
    }

    async fn client(&self) -> Client {
        Client {
            stream: TcpStream::connect(self.node().address()).await.unwrap(),
            next_correlation_id: 1,
        }
    }

    async fn stop(mut self) {
        self.broker.take().unwrap().shutdown().await.unwrap();
        self.controller.take().unwrap().shutdown().await;
    }
}

struct Client {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl Client {
    async fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).await.unwrap();
    }

    fn frame<Req: Encodable>(&mut self, api: ApiKey, version: i16, request: &Req) -> Vec<u8> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        frame
    }

    async fn read_response<Resp: Decodable>(&mut self, api: ApiKey, version: i16) -> Resp {
        let size = tokio::time::timeout(WAIT, self.stream.read_i32())
            .await
            .expect("a response in time")
            .unwrap();
        let mut buf = vec![0u8; size as usize];
        self.stream.read_exact(&mut buf).await.unwrap();
        let mut buf = Bytes::from(buf);
        ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
        let response = Resp::decode(&mut buf, version).unwrap();
        assert!(!buf.has_remaining(), "{api:?} v{version}: bytes left over");
        response
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Resp {
        let frame = self.frame(api, version, request);
        self.send_raw(&frame).await;
        self.read_response(api, version).await
    }

    async fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            );
        let response: CreateTopicsResponse = self
            .call(
                ApiKey::CreateTopics,
                7,
                &CreateTopicsRequest::default()
                    .with_topics(vec![topic])
                    .with_timeout_ms(30_000),
            )
            .await;
        assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0]);
    }

    async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> (i16, i64) {
        let request = produce_request(topic, partition, records, acks);
        let response: ProduceResponse = self.call(ApiKey::Produce, 9, &request).await;
        let p = &response.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> kafka_protocol::messages::fetch_response::PartitionData {
        let request = fetch_request(topic, partition, offset, max_wait_ms);
        let mut response: FetchResponse = self.call(ApiKey::Fetch, 12, &request).await;
        response.responses.remove(0).partitions.remove(0)
    }
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.into()))
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 * 1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(50 * 1024 * 1024)])])
}

fn batch(values: &[&[u8]], compression: Compression) -> Bytes {
    let mut b = BatchBuilder::new(compression);
    for v in values {
        b.append(1_700_000_000_000, Some(b"k"), Some(v), &[]);
    }
    Bytes::from(b.build().unwrap())
}

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const CORRUPT_MESSAGE: i16 = 2;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_REQUIRED_ACKS: i16 = 21;
const OFFSET_OUT_OF_RANGE: i16 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_round_trip_and_bad_input_gets_kafka_error_codes() {
    let broker = TestBroker::start(true).await;
    let mut c = broker.client().await;
    c.create_topic("orders", 2, &[("max.message.bytes", "2000")])
        .await;

    let first = batch(&[b"one", b"two", b"three"], Compression::Zstd);
    assert_eq!(c.produce("orders", 1, first.clone(), 1).await, (0, 0));
    let second = batch(&[b"four"], Compression::None);
    assert_eq!(c.produce("orders", 1, second.clone(), -1).await, (0, 3));

    // bad input: the right code, and nothing stored changes
    assert_eq!(
        c.produce("nope", 0, second.clone(), 1).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        c.produce("orders", 7, second.clone(), 1).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    let mut corrupt = BytesMut::from(&second[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        c.produce("orders", 1, corrupt.freeze(), 1).await.0,
        CORRUPT_MESSAGE
    );
    let big = batch(&[&[7u8; 3000]], Compression::None);
    assert_eq!(c.produce("orders", 1, big, 1).await.0, MESSAGE_TOO_LARGE);
    assert_eq!(
        c.produce("orders", 1, second.clone(), 3).await.0,
        INVALID_REQUIRED_ACKS
    );
    assert_eq!(
        c.produce("orders", 1, second.clone(), 1).await,
        (0, 4),
        "no offsets were used"
    );

    // the bytes come back as sent, with only the base offset and leader epoch stamped
    let fetched = c.fetch("orders", 1, 0, 0).await;
    assert_eq!(fetched.error_code, 0);
    assert_eq!(fetched.high_watermark, 5);
    let records = fetched.records.unwrap();
    assert_eq!(records.len(), first.len() + 2 * second.len());
    assert_eq!(
        &records[16..first.len()],
        &first[16..],
        "first batch after the epoch"
    );
    assert_eq!(&records[8..12], &first[8..12], "batch length");
    // a fetch inside a batch gets the whole batch
    let inside = c.fetch("orders", 1, 1, 0).await.records.unwrap();
    assert_eq!(&inside[..first.len()], &records[..first.len()]);
    // at the end: empty, not an error; past it: OFFSET_OUT_OF_RANGE
    let at_end = c.fetch("orders", 1, 5, 0).await;
    assert_eq!(
        (at_end.error_code, at_end.records.map(|r| r.len())),
        (0, Some(0))
    );
    assert_eq!(
        c.fetch("orders", 1, 6, 0).await.error_code,
        OFFSET_OUT_OF_RANGE
    );
    assert_eq!(
        c.fetch("gone", 0, 0, 0).await.error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // ListOffsets: earliest, latest, by timestamp
    let list = |timestamp: i64| {
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(name("orders"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(1)
                    .with_timestamp(timestamp)])])
    };
    for (timestamp, offset) in [
        (-2, 0),
        (-1, 5),
        (1_600_000_000_000, 0),
        (1_800_000_000_000, -1),
    ] {
        let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 7, &list(timestamp)).await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset),
            (0, offset),
            "timestamp {timestamp}"
        );
    }

    // DescribeConfigs: the override, and every other config with its default
    let r: DescribeConfigsResponse = c
        .call(
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("orders")),
            ]),
        )
        .await;
    let configs: BTreeMap<String, (String, i8)> = r.results[0]
        .configs
        .iter()
        .map(|c| {
            let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            (c.name.to_string(), (value, c.config_source))
        })
        .collect();
    assert_eq!(configs["max.message.bytes"], ("2000".to_string(), 1));
    assert_eq!(configs["segment.bytes"], ("1073741824".to_string(), 5));
    assert_eq!(configs["retention.ms"], ("604800000".to_string(), 5));
    assert!(configs.len() >= 14, "{configs:?}");

    // a malformed request body closes that connection only
    let mut bad = broker.client().await;
    let mut frame = bad.frame(
        ApiKey::Produce,
        9,
        &produce_request("orders", 1, second.clone(), 1),
    );
    frame.truncate(frame.len() - 10);
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    bad.send_raw(&frame).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, bad.stream.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "connection closed");
    assert_eq!(c.produce("orders", 1, second.clone(), 1).await, (0, 5));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_wakes_when_data_arrives() {
    let broker = TestBroker::start(true).await;
    let mut c = broker.client().await;
    c.create_topic("events", 1, &[]).await;
    // nothing there: the fetch waits its max_wait_ms and returns empty
    let empty = c.fetch("events", 0, 0, 100).await;
    assert_eq!(
        (empty.error_code, empty.records.map(|r| r.len())),
        (0, Some(0))
    );
    // a long wait is cut short by a produce on another connection
    let mut waiting = broker.client().await;
    let fetch = tokio::spawn(async move { waiting.fetch("events", 0, 0, 25_000).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut producer = broker.client().await;
    let sent = batch(&[b"wake up"], Compression::None);
    assert_eq!(producer.produce("events", 0, sent.clone(), 1).await, (0, 0));
    let got = tokio::time::timeout(Duration::from_secs(20), fetch)
        .await
        .expect("the fetch returns before its 25 s wait")
        .unwrap();
    assert_eq!(got.records.unwrap().len(), sent.len());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_record_sets_go_out_by_sendfile_or_by_copy_behind_the_switch() {
    for use_sendfile in [true, false] {
        let broker = TestBroker::start(use_sendfile).await;
        let mut c = broker.client().await;
        c.create_topic("bulk", 1, &[]).await;
        let value = vec![42u8; 100_000];
        let mut produced = 0u64;
        for _ in 0..40 {
            let records = batch(&[&value, &value], Compression::None);
            produced += records.len() as u64;
            assert_eq!(c.produce("bulk", 0, records, 1).await.0, 0);
        }
        let stats = broker.node().write_stats().clone();
        let before = (
            stats.sendfile_bytes.load(Ordering::Relaxed),
            stats.copied_file_bytes.load(Ordering::Relaxed),
        );
        let mut offset = 0;
        let mut fetched = 0u64;
        while offset < 80 {
            let p = c.fetch("bulk", 0, offset, 0).await;
            let records = p.records.unwrap();
            fetched += records.len() as u64;
            offset += 2 * (records.len() as i64 / (produced as i64 / 40));
        }
        assert_eq!(fetched, produced);
        let sendfile = stats.sendfile_bytes.load(Ordering::Relaxed) - before.0;
        let copied = stats.copied_file_bytes.load(Ordering::Relaxed) - before.1;
        if use_sendfile {
            assert_eq!((sendfile, copied), (produced, 0));
        } else {
            assert_eq!((sendfile, copied), (0, produced));
        }
        broker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_leaves_no_data_and_a_new_one_of_the_same_name_starts_empty() {
    let broker = TestBroker::start(true).await;
    let mut c = broker.client().await;
    c.create_topic("reborn", 1, &[]).await;
    assert_eq!(
        c.produce("reborn", 0, batch(&[b"old"], Compression::None), 1)
            .await,
        (0, 0)
    );
    let dir = broker.data_dir.join("reborn-0");
    assert!(dir.join("partition.metadata").exists());
    let r: DeleteTopicsResponse = c
        .call(
            ApiKey::DeleteTopics,
            5,
            &DeleteTopicsRequest::default()
                .with_topic_names(vec![name("reborn")])
                .with_timeout_ms(30_000),
        )
        .await;
    assert_eq!(r.responses[0].error_code, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while dir.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log directory removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m: MetadataResponse = c
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(name("reborn"))),
                ]))
                .with_allow_auto_topic_creation(false),
        )
        .await;
    assert_eq!(m.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    // the cluster id reaches brokers with the controller's image (no batch carries it)
    assert_eq!(
        m.cluster_id.as_ref().map(|id| id.as_str()),
        Some("sluice-cluster")
    );
    c.create_topic("reborn", 1, &[]).await;
    assert_eq!(c.fetch("reborn", 0, 0, 0).await.high_watermark, 0);
    assert_eq!(
        c.produce("reborn", 0, batch(&[b"new"], Compression::None), 1)
            .await,
        (0, 0)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_names_where_an_epoch_ends() {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
    let broker = TestBroker::start(true).await;
    let mut c = broker.client().await;
    c.create_topic("epochs", 1, &[]).await;
    assert_eq!(
        c.produce(
            "epochs",
            0,
            batch(&[b"a", b"b", b"c"], Compression::None),
            1
        )
        .await,
        (0, 0)
    );
    let m: MetadataResponse = c
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .await;
    let epoch = m.topics[0].partitions[0].leader_epoch;
    let ask = |current: i32, asked: i32| {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(name("epochs"))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(asked)])])
    };
    for (current, asked, expected) in [
        (epoch, epoch, (0, epoch, 3)), // the latest epoch ends at the log end
        (-1, epoch + 5, (0, -1, -1)),  // newer than any epoch in the log
        (epoch + 1, epoch, (76, -1, -1)), // UNKNOWN_LEADER_EPOCH: the asker is ahead
    ] {
        let r: OffsetForLeaderEpochResponse = c
            .call(ApiKey::OffsetForLeaderEpoch, 4, &ask(current, asked))
            .await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.leader_epoch, p.end_offset),
            expected,
            "asked {asked}"
        );
    }
    broker.stop().await;
}

/// A session fetch of `parts` (topic, partition, offset) — full with epoch 0 — forgetting
/// `forget`, by topic name (v12) or id (v13, `ids` gives them).
fn session_fetch(
    session: (i32, i32),
    parts: &[(&str, i32, i64)],
    forget: &[(&str, i32)],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (topic, partition, offset) in parts {
        let p = FetchPartition::default()
            .with_partition(*partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(1024 * 1024);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(name(topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    let forgotten = forget
        .iter()
        .map(|(topic, partition)| {
            kafka_protocol::messages::fetch_request::ForgottenTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![*partition])
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 * 1024 * 1024)
        .with_session_id(session.0)
        .with_session_epoch(session.1)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
}

/// (topic, partition, record bytes) of each partition in a response, in order.
fn partitions_of(response: &FetchResponse) -> Vec<(String, i32, usize)> {
    response
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                assert_eq!(p.error_code, 0, "{p:?}");
                (
                    t.topic.0.to_string(),
                    p.partition_index,
                    p.records.as_ref().map_or(0, |r| r.len()),
                )
            })
        })
        .collect()
}

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_session_sends_only_what_changed() {
    let broker = TestBroker::start(true).await;
    let mut c = broker.client().await;
    c.create_topic("s", 3, &[]).await;
    c.create_topic("late", 1, &[]).await;
    let first = batch(&[b"one"], Compression::None);
    assert_eq!(c.produce("s", 0, first.clone(), 1).await, (0, 0));
    let all = [("s", 0, 0), ("s", 1, 0), ("s", 2, 0)];
    // a full fetch opens the session and answers for every partition
    let full: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((0, 0), &all, &[], 0))
        .await;
    let id = full.session_id;
    assert!(id > 0, "a session was opened");
    assert_eq!(
        partitions_of(&full),
        vec![
            ("s".into(), 0, first.len()),
            ("s".into(), 1, 0),
            ("s".into(), 2, 0)
        ]
    );
    // partition 0 moves past its batch; nothing else changed: an empty answer, after the
    // long poll
    let next: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((id, 1), &[("s", 0, 1)], &[], 200),
        )
        .await;
    assert_eq!((next.error_code, next.session_id), (0, id));
    assert!(partitions_of(&next).is_empty(), "{next:?}");
    // a write to partition 2 ends a long poll that names nothing, and only it comes back
    let mut fetcher = broker.client().await;
    let waiting = tokio::spawn(async move {
        let r: FetchResponse = fetcher
            .call(ApiKey::Fetch, 12, &session_fetch((id, 2), &[], &[], 20_000))
            .await;
        r
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = batch(&[b"two", b"three"], Compression::None);
    assert_eq!(c.produce("s", 2, second.clone(), 1).await, (0, 0));
    let woken = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("woken by the write, not by the 20 s wait")
        .unwrap();
    assert_eq!(partitions_of(&woken), vec![("s".into(), 2, second.len())]);
    // forget partition 1, add another topic's partition: the new one is answered for
    let next: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((id, 3), &[("s", 2, 2), ("late", 0, 0)], &[("s", 1)], 0),
        )
        .await;
    assert_eq!(partitions_of(&next), vec![("late".into(), 0, 0)]);
    // a write to the forgotten partition is not sent; one to a partition still in the
    // session is
    assert_eq!(c.produce("s", 1, first.clone(), 1).await, (0, 0));
    assert_eq!(c.produce("late", 0, first.clone(), 1).await, (0, 0));
    let next: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((id, 4), &[], &[], 0))
        .await;
    assert_eq!(partitions_of(&next), vec![("late".into(), 0, first.len())]);
    // the same epoch again, an unknown id: errors, and the session can start over
    let stale: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((id, 4), &[], &[], 0))
        .await;
    assert_eq!(stale.error_code, INVALID_FETCH_SESSION_EPOCH);
    assert!(stale.responses.is_empty());
    let unknown: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((id + 1, 1), &[], &[], 0))
        .await;
    assert_eq!(unknown.error_code, FETCH_SESSION_ID_NOT_FOUND);
    let again: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((id, 0), &all, &[], 0))
        .await;
    assert!(again.session_id > 0 && again.session_id != id);
    assert_eq!(partitions_of(&again).len(), 3);
    // the old id is gone
    let closed: FetchResponse = c
        .call(ApiKey::Fetch, 12, &session_fetch((id, 5), &[], &[], 0))
        .await;
    assert_eq!(closed.error_code, FETCH_SESSION_ID_NOT_FOUND);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_cache_evicts_the_smaller_session() {
    let broker = TestBroker::start_with(|config| config.fetch_session_cache_slots = 1).await;
    let mut c = broker.client().await;
    c.create_topic("e", 2, &[]).await;
    let small: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((0, 0), &[("e", 0, 0)], &[], 0),
        )
        .await;
    assert!(small.session_id > 0);
    // no bigger: no room, a full answer without a session
    let same: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((0, 0), &[("e", 1, 0)], &[], 0),
        )
        .await;
    assert_eq!((same.session_id, partitions_of(&same).len()), (0, 1));
    // bigger: takes the small one's place
    let big: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((0, 0), &[("e", 0, 0), ("e", 1, 0)], &[], 0),
        )
        .await;
    assert!(big.session_id > 0 && big.session_id != small.session_id);
    let evicted: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((small.session_id, 1), &[], &[], 0),
        )
        .await;
    assert_eq!(evicted.error_code, FETCH_SESSION_ID_NOT_FOUND);
    let kept: FetchResponse = c
        .call(
            ApiKey::Fetch,
            12,
            &session_fetch((big.session_id, 1), &[], &[], 0),
        )
        .await;
    assert_eq!((kept.error_code, kept.session_id), (0, big.session_id));
    broker.stop().await;
}
