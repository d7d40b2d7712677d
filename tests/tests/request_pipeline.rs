//! Produce requests pipelined on one connection, with real processes: each is appended as
//! soon as it arrives, while the one before it still waits for its followers (acks=all),
//! and the answers come back in order. The request-time metric splits each request's time
//! into Kafka's stages, and the stages add up to the total.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::PipelinedConnection;
use sluice_record::{BatchBuilder, Compression};
use sluice_system_tests::progress::wait_until;
use sluice_system_tests::{http_get, metric, partition_metadata, Layout, ProcessCluster};

const TOPIC: &str = "pipelined";
const RECORDS_PER_BATCH: usize = 10;

fn produce_request(batch: usize) -> ProduceRequest {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..RECORDS_PER_BATCH {
        let value = format!("batch-{batch}-record-{i}");
        builder.append(sluice_record::now_ms(), None, Some(value.as_bytes()), &[]);
    }
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(60_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(builder.build().unwrap())))])])
}

fn scrape(cluster: &ProcessCluster, id: i32, name: &str) -> f64 {
    http_get(&cluster.admin_address(id), "/metrics")
        .and_then(|(_, body)| metric(&body, name))
        .unwrap_or(0.0)
}

#[test]
fn pipelined_produces_are_appended_while_earlier_ones_wait_and_answered_in_order() {
    // a paused follower stays in the ISR (and its broker unfenced) for the whole test, so
    // every acks=all answer waits for it
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "replica.lag.time.max.ms=120000",
            "broker.session.timeout.ms=120000",
        ],
    );
    cluster.create_topic(TOPIC, 1);
    wait_until("a leader with all three replicas in sync", || {
        partition_metadata(&cluster.bootstrap_of(1), TOPIC)
            .is_ok_and(|p| p.len() == 1 && p[0].leader > 0 && p[0].isr.len() == 3)
    });
    let leader = cluster.leader_of(TOPIC, 0);
    // not the active controller: the leader's controller lease must hold meanwhile
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && scrape(&cluster, *id, "sluice_controller_active") == 0.0)
        .expect("a follower that is not the active controller");
    cluster.pause(follower);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let address = cluster.bootstrap_of(leader);
    // (the connection lives until the answers are in)
    let (_connection, answers) = runtime.block_on(async {
        let mut connection =
            PipelinedConnection::connect(&address, "pipeline-test", Duration::from_secs(90));
        let answers: Vec<_> = (0..3)
            .map(|batch| {
                let answer = connection.send::<_, ProduceResponse>(
                    ApiKey::Produce,
                    9,
                    &produce_request(batch),
                    true,
                );
                runtime.spawn(answer)
            })
            .collect();
        (connection, answers)
    });
    // all three appended on the leader, none answered: the first waits for the follower,
    // the two behind it did not wait in the socket
    let records_in = format!(r#"sluice_topic_records_in_total{{topic="{TOPIC}"}}"#);
    wait_until("the three pipelined batches appended", || {
        scrape(&cluster, leader, &records_in) == (3 * RECORDS_PER_BATCH) as f64
    });
    assert!(
        answers.iter().all(|a| !a.is_finished()),
        "no acks=all answer before the paused follower has the records"
    );

    cluster.resume(follower);
    let offsets: Vec<(i16, i64)> = runtime.block_on(async {
        let mut offsets = Vec::new();
        for answer in answers {
            let response = answer.await.unwrap().expect("a produce answer");
            let p = &response.responses[0].partition_responses[0];
            offsets.push((p.error_code, p.base_offset));
        }
        offsets
    });
    assert_eq!(offsets, vec![(0, 0), (0, 10), (0, 20)]);

    // the stages of every request add up to its total (sums over all requests, in ms)
    let (_, body) = http_get(&cluster.admin_address(leader), "/metrics").unwrap();
    let stage = |request: &str, stage: &str| {
        metric(
            &body,
            &format!(r#"sluice_request_time_ms_sum{{request="{request}",stage="{stage}"}}"#),
        )
        .unwrap_or_else(|| panic!("{request} {stage} in /metrics"))
    };
    for request in ["Produce", "Metadata"] {
        let parts: f64 = ["request_queue", "local", "remote", "response_queue", "send"]
            .iter()
            .map(|s| stage(request, s))
            .sum();
        let total = stage(request, "total");
        assert!(
            (parts - total).abs() < 0.01,
            "{request}: stages {parts} ms, total {total} ms"
        );
    }
    // the first produce waited for the follower as remote time; those behind it waited for
    // the follower too (remote) and then for the first answer (response queue)
    assert!(stage("Produce", "remote") > 0.0);
    let produced = metric(
        &body,
        r#"sluice_request_time_ms_count{request="Produce",stage="response_queue"}"#,
    );
    assert_eq!(produced, Some(3.0));
}
