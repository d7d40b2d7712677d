//! The idempotent producer (KIP-98) through the wire, with real processes:
//!
//! - kafka-python 3's default producer (idempotence on) and confluent-kafka with
//!   `enable.idempotence=true` write and read back, their batches stored with producer ids;
//! - the rules, request by request: InitProducerId ids unique across brokers, the epoch
//!   bump (KIP-360), a retry answered with its first offset and not appended again, even by
//!   the new leader after the old one was killed; OUT_OF_ORDER_SEQUENCE_NUMBER,
//!   INVALID_PRODUCER_EPOCH, a transactional id refused;
//! - exactly once through faults: confluent-kafka writes 200k records while every
//!   partition's leader is killed once and a follower is paused past
//!   `replica.lag.time.max.ms`; every acknowledged record is there exactly once, in the
//!   order it was sent, with no duplicate at all.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use sluice_record::{BatchBuilder, BatchHeader, Compression};
use sluice_system_tests::process_cluster::WAIT;
use sluice_system_tests::progress::{
    assert_acknowledged_were_read, read_acks, read_progress, wait_progress,
};
use sluice_system_tests::{
    check, client_script, kafka_request, kcat_read_all, python, run, run_to_end, Layout,
    ProcessCluster,
};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

fn init_producer_id(address: &str, current: Option<(i64, i16)>) -> InitProducerIdResponse {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(id.into())
        .with_producer_epoch(epoch);
    kafka_request(address, ApiKey::InitProducerId, 4, &request).expect("InitProducerId")
}

/// Produces one batch of `count` records from (producer id, epoch, first sequence) with
/// acks=all; returns (error code, base offset).
fn produce(address: &str, topic: &str, producer: (i64, i16, i32), count: usize) -> (i16, i64) {
    let mut builder =
        BatchBuilder::new(Compression::None).producer(producer.0, producer.1, producer.2);
    for i in 0..count {
        builder.append(
            sluice_record::now_ms(),
            None,
            Some(format!("v{i}").as_bytes()),
            &[],
        );
    }
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(builder.build().unwrap())))])]);
    let response: ProduceResponse =
        kafka_request(address, ApiKey::Produce, 9, &request).expect("Produce");
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Like [`produce`], but retried (up to `WAIT`) while the partition has no leader here.
fn produce_to_leader(
    cluster: &ProcessCluster,
    topic: &str,
    producer: (i64, i16, i32),
    count: usize,
) -> (i16, i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster.leader_of(topic, 0);
        let answer = produce(&cluster.bootstrap_of(leader), topic, producer, count);
        // NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS, REQUEST_TIMED_OUT: not yet
        if !matches!(answer.0, 6 | 7 | 19) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_broker_applies_the_sequence_rules_through_a_failover() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let topic = "rules";
    cluster.create_topic(topic, 1);

    // ids are unique across brokers; a bump keeps the id and raises the epoch
    let mut ids = Vec::new();
    for id in 1..=3 {
        for _ in 0..2 {
            let r = init_producer_id(&cluster.bootstrap_of(id), None);
            assert_eq!((r.error_code, r.producer_epoch), (0, 0));
            ids.push(r.producer_id.0);
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "producer ids handed out twice: {ids:?}"
    );
    let pid = ids[0];
    let bumped = init_producer_id(&cluster.bootstrap_of(2), Some((pid, 0)));
    assert_eq!(
        (
            bumped.error_code,
            bumped.producer_id.0,
            bumped.producer_epoch
        ),
        (0, pid, 1)
    );
    let txn = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("t"))))
        .with_transaction_timeout_ms(60_000);
    let r: InitProducerIdResponse =
        kafka_request(&cluster.bootstrap_of(1), ApiKey::InitProducerId, 4, &txn).unwrap();
    assert_eq!(r.error_code, COORDINATOR_NOT_AVAILABLE, "no transactions");

    // epoch 0 writes; a retry is answered with its first offset and not appended again
    let (code, first) = produce_to_leader(&cluster, topic, (pid, 0, 0), 3);
    assert_eq!((code, first), (0, 0));
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 0, 3), 2), (0, 3));
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 0, 0), 3), (0, 0));
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 0, 3), 2), (0, 3));
    // a gap is out of order; nothing was appended by the retries
    assert_eq!(
        produce_to_leader(&cluster, topic, (pid, 0, 9), 1).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 0, 5), 1), (0, 5));
    // the bumped epoch starts at 0 and fences epoch 0
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 1, 0), 4), (0, 6));
    assert_eq!(
        produce_to_leader(&cluster, topic, (pid, 0, 6), 1).0,
        INVALID_PRODUCER_EPOCH
    );

    // the leader dies; the new one (which replicated the batches) deduplicates a retry
    let old_leader = cluster.leader_of(topic, 0);
    cluster.kill(old_leader);
    cluster.wait_for(topic, "a new leader", |rows| {
        rows.iter().all(|r| r.leader >= 0 && r.leader != old_leader)
    });
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 1, 0), 4), (0, 6));
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 1, 4), 1), (0, 10));
    // and it rebuilt the state on restart too: the old leader rejoins and leads again
    cluster.restart(old_leader);
    cluster.wait_for(topic, "the old leader back in the ISR", |rows| {
        rows.iter().all(|r| r.isr.len() == 3)
    });
    let new_leader = cluster.leader_of(topic, 0);
    cluster.kill(new_leader);
    cluster.wait_for(topic, "a third leader", |rows| {
        rows.iter().all(|r| r.leader >= 0 && r.leader != new_leader)
    });
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 1, 4), 1), (0, 10));
    assert_eq!(produce_to_leader(&cluster, topic, (pid, 1, 5), 1), (0, 11));
    let values: Vec<String> = kcat_read_all(&cluster.bootstrap(), topic)
        .into_iter()
        .map(|(_, o, v)| format!("{o}:{v}"))
        .collect();
    assert_eq!(values.len(), 12, "{values:?}");
}

/// Checks that the topic holds each acknowledged value exactly once at its acknowledged
/// offset, no value twice, and each partition's values ascending in offset order (the
/// order the one producer sent them). Returns the records read.
fn assert_exactly_once_in_order(read: &[(i32, i64, String)], acks: &[(i32, i64, String)]) {
    let mut at: HashMap<(i32, i64), &str> = HashMap::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let mut last_by_partition: BTreeMap<i32, (i64, u64)> = BTreeMap::new();
    let mut sorted: Vec<&(i32, i64, String)> = read.iter().collect();
    sorted.sort_by_key(|(p, o, _)| (*p, *o));
    for (p, o, v) in sorted {
        assert!(
            at.insert((*p, *o), v).is_none(),
            "offset {p}/{o} read twice"
        );
        *seen.entry(v.as_str()).or_default() += 1;
        let value: u64 = v.parse().unwrap_or_else(|_| panic!("value {v:?}"));
        if let Some((prev_offset, prev)) = last_by_partition.insert(*p, (*o, value)) {
            assert!(
                value > prev,
                "partition {p}: {value} at offset {o} after {prev} at {prev_offset}: out of send order"
            );
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "records stored twice: {duplicated:?}"
    );
    assert_acknowledged_were_read(acks, read);
}

#[test]
fn default_idempotent_clients_write_and_read_back() {
    let cluster = ProcessCluster::start(Layout::Combined, &[]);
    for (client, topic) in [
        ("kafka-python", "idem-kafka-python"),
        ("confluent", "idem-confluent"),
    ] {
        cluster.create_topic(topic, 3);
        let mut command = sluice_system_tests::external(python());
        command
            .arg(client_script("idempotent_round_trip.py"))
            .args([client, &cluster.bootstrap(), topic, "3", "3000"]);
        let out = run(command, b"", Duration::from_secs(120));
        check(&out, &format!("idempotent_round_trip.py {client}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let acks: Vec<(i32, i64, String)> = stdout
            .lines()
            .skip_while(|l| *l != "acks")
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].to_string(),
                )
            })
            .collect();
        assert_eq!(acks.len(), 3000, "{client}");
        let read = kcat_read_all(&cluster.bootstrap(), topic);
        assert_eq!(read.len(), 3000, "{client}");
        assert_exactly_once_in_order(&read, &acks);
        // stored as idempotent batches: a producer id and sequences that follow on
        for partition in 0..3 {
            let leader = cluster.leader_of(topic, partition);
            let batches = cluster.batches(leader, topic, partition, i64::MAX);
            assert!(!batches.is_empty());
            let mut next_seq = 0;
            for batch in &batches {
                let h = BatchHeader::parse(batch).unwrap();
                assert!(h.producer_id >= 0, "{client}: batch without a producer id");
                assert_eq!(h.base_sequence, next_seq, "{client}: sequences follow on");
                next_seq = h.base_sequence + h.last_offset_delta + 1;
            }
        }
    }
}

#[test]
fn exactly_once_through_leader_kills_and_a_paused_follower() {
    const PARTITIONS: i32 = 6;
    const RECORDS: u64 = 200_000;
    const LAG_MS: u64 = 3_000;
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            &format!("replica.lag.time.max.ms={LAG_MS}"),
        ],
    );
    let topic = "exactly-once";
    cluster.create_topic(topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let stop = work.path().join("stop");
    let acks_out = work.path().join("acks");
    let failed_out = work.path().join("failed");
    let log_path = work.path().join("producer.log");
    let producer_log = std::fs::File::create(&log_path).unwrap();
    let mut producer = sluice_system_tests::external(python())
        .arg(client_script("idempotent_producer.py"))
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
        .arg("--failed-out")
        .arg(&failed_out)
        .stdout(Stdio::piped())
        .stderr(producer_log)
        .spawn()
        .expect("run idempotent_producer.py (scripts/install-kafka-clients.sh installs confluent-kafka)");
    for partition in 0..PARTITIONS {
        wait_progress(
            &progress,
            read_progress(&progress) + 3_000,
            &mut producer,
            &log_path,
        );
        let leader = cluster.leader_of(topic, partition);
        cluster.kill(leader);
        cluster.wait_for(
            topic,
            "a new leader for the killed one's partitions",
            |rows| rows.iter().all(|r| r.leader >= 0 && r.leader != leader),
        );
        wait_progress(
            &progress,
            read_progress(&progress) + 3_000,
            &mut producer,
            &log_path,
        );
        cluster.restart(leader);
        cluster.wait_for(topic, "the restarted broker back in every ISR", |rows| {
            rows.iter().all(|r| r.isr.len() == 3)
        });
    }
    // a follower of partition 0 paused past replica.lag.time.max.ms leaves the ISR
    let leader = cluster.leader_of(topic, 0);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.pause(follower);
    cluster.wait_for(topic, "the paused follower out of an ISR", |rows| {
        rows.iter().any(|r| !r.isr.contains(&follower))
    });
    wait_progress(
        &progress,
        read_progress(&progress) + 3_000,
        &mut producer,
        &log_path,
    );
    cluster.resume(follower);
    cluster.wait_for(topic, "the resumed follower back in every ISR", |rows| {
        rows.iter().all(|r| r.isr.len() == 3)
    });
    std::fs::write(&stop, b"").unwrap();
    let out = run_to_end(producer, Duration::from_secs(300));
    check(&out, "idempotent_producer.py");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    let acks = read_acks(&acks_out);
    let failed = std::fs::read_to_string(&failed_out).unwrap();
    assert!(
        failed.is_empty(),
        "failed deliveries: {}",
        &failed[..failed.len().min(500)]
    );
    assert!(acks.len() as u64 >= RECORDS, "{} acknowledged", acks.len());
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(read.len(), acks.len(), "every record read once, none more");
    assert_exactly_once_in_order(&read, &acks);
    for partition in 0..PARTITIONS {
        let high_watermark = read
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, o, _)| o + 1)
            .max()
            .unwrap_or(0);
        cluster.assert_replicas_identical(topic, partition, high_watermark);
    }
}
