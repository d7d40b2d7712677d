//! Leader epochs across failovers, with real processes (issue 12, item 1): a broker that
//! becomes leader records its epoch at the log end offset when elected, before anything is
//! appended in it, as Kafka does. Before that fix a new leader answered OffsetForLeaderEpoch
//! for any epoch it had not written with "unknown" (-1, -1), and a follower holding such an
//! epoch fell back to its checkpointed high watermark, truncating records the leader had —
//! 2,692 acknowledged ones in one fault run.

use std::time::Duration;

use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_system_tests::{
    check, kafka_request, kcat_produce, partition_metadata, Layout, ProcessCluster,
};

/// (leader, leader epoch) of `topic`-0 as broker `address` sees it.
fn leader_and_epoch(address: &str, topic: &str) -> (i32, i32) {
    let p = &partition_metadata(address, topic).expect("Metadata")[0];
    (p.leader, p.leader_epoch)
}

/// OffsetForLeaderEpoch for `topic`-0 as a follower (replica id 99) asks it: (error code,
/// leader epoch, end offset).
fn end_offset_for(address: &str, topic: &str, current_epoch: i32, epoch: i32) -> (i16, i32, i64) {
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(99))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current_epoch)
                .with_leader_epoch(epoch)])]);
    let response: OffsetForLeaderEpochResponse =
        kafka_request(address, ApiKey::OffsetForLeaderEpoch, 4, &request)
            .expect("OffsetForLeaderEpoch");
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The `to=` offsets of the "truncating the divergent suffix" lines in a node's log.
fn truncations(log: &str, partition: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("truncating the divergent suffix") && l.contains(partition))
        .filter_map(|l| {
            let to = l.split_whitespace().find_map(|f| f.strip_prefix("to="))?;
            to.parse().ok()
        })
        .collect()
}

/// Broker b leads epoch 1 and writes 10 records (acks=1) that c, paused, never gets; b is
/// killed and c, still in the ISR, takes over in epoch 2 holding nothing of epoch 1. Before
/// its first append c must answer for epoch 1 with where its own log leaves it (its epoch
/// 0 ends at 100, where epoch 2 starts), and for epoch 2 with its log end; b, restarted,
/// truncates only its 10 divergent records, not back to its checkpointed high watermark.
#[test]
fn a_new_leader_answers_for_epochs_it_never_wrote_and_followers_keep_what_it_has() {
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            // c stays registered and in the ISR while paused
            "broker.session.timeout.ms=60000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=60000",
            // the checkpointed high watermark stays at 0: the fallback the bug took
            "replica.high.watermark.checkpoint.interval.ms=3600000",
        ],
    );
    let topic = "epochs";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("zero", 100)),
        "kcat acks=all",
    );
    // epoch 0's leader goes; b leads epoch 1 with the ISR {b, c}
    let a = cluster.leader_of(topic, 0);
    cluster.kill(a);
    let rows = cluster.wait_for(topic, "a new leader", |rows| {
        rows[0].leader >= 0 && rows[0].leader != a && !rows[0].isr.contains(&a)
    });
    let b = rows[0].leader;
    let c = (1..=3).find(|id| *id != a && *id != b).unwrap();
    assert_eq!(leader_and_epoch(&cluster.bootstrap_of(b), topic), (b, 1));
    // epoch 1 writes reach b only: c paused, and its fetch parked at b answered (empty,
    // into c's socket) before they come — a paused process's socket still takes a
    // response, so a fetch parked at b when c stopped would carry them to c
    cluster.pause(c);
    std::thread::sleep(Duration::from_millis(1500)); // > replica.fetch.wait.max.ms (500)
    check(
        &kcat_produce(&cluster.bootstrap_of(b), topic, "1", &lines("one", 10)),
        "kcat acks=1 to b",
    );
    cluster.kill(b);
    cluster.resume(c);
    cluster.wait_for(topic, "c leads", |rows| rows[0].leader == c);
    let address = cluster.bootstrap_of(c);
    assert_eq!(leader_and_epoch(&address, topic), (c, 2));
    assert_eq!(
        end_offset_for(&address, topic, 2, 2),
        (0, 2, 100),
        "the leader's own epoch, before its first append: its log end"
    );
    assert_eq!(
        end_offset_for(&address, topic, 2, 1),
        (0, 0, 100),
        "an epoch it never wrote: its largest epoch below, ending where epoch 2 starts"
    );
    assert_eq!(end_offset_for(&address, topic, 2, 0), (0, 0, 100));
    // b comes back: it keeps the 100 records c holds and drops its 10 divergent ones
    cluster.restart(b);
    cluster.wait_for(topic, "b back in the ISR", |rows| rows[0].isr.contains(&b));
    let log = std::fs::read_to_string(cluster.log_path(b)).unwrap();
    let partition = format!("{topic}-0");
    assert_eq!(
        truncations(&log, &partition),
        vec![100],
        "b truncates once, to where c's log diverges"
    );
    assert_eq!(
        cluster.batches(b, topic, 0, i64::MAX),
        cluster.batches(c, topic, 0, i64::MAX),
        "b holds exactly c's batches"
    );
}
