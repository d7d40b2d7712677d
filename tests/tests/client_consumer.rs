//! Sluice's own consumer (`sluice-client`) and the producer's sticky partitioner against
//! three real nodes: keyless records fill a batch on one partition, then move on (Kafka's
//! KIP-480; before, every keyless record stayed on the first partition chosen), and the
//! consumer reads every acknowledged record exactly once, each partition in offset
//! order, also after a partition leader is killed. `sluice bench consume` and `sluice
//! bench e2e` print Kafka's lines.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_client::accumulator::AccumulatorConfig;
use sluice_client::{
    Consumer, ConsumerConfig, DefaultPartitioner, Producer, ProducerConfig, ProducerRecord,
    StartOffset,
};
use sluice_system_tests::{Layout, ProcessCluster};

const RECORDS: usize = 20_000;
const PARTITIONS: i32 = 6;

/// Sends RECORDS keyless 100-byte records; returns each record's (partition, offset) in
/// send order.
async fn produce_keyless(bootstrap: String, topic: &str) -> Vec<(i32, i64)> {
    let config = ProducerConfig {
        bootstrap_servers: bootstrap,
        acks: -1,
        accumulator: AccumulatorConfig {
            linger_ms: 5,
            batch_size: 16_384,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let (producer, mut reports) =
        Producer::with_partitioner(config, Box::new(DefaultPartitioner::with_seed(7)))
            .await
            .expect("connect");
    let value = vec![b'v'; 100];
    for _ in 0..RECORDS {
        producer
            .send(ProducerRecord {
                topic,
                value: Some(&value),
                ..ProducerRecord::default()
            })
            .await
            .expect("send");
    }
    producer.close().await;
    let mut placed = vec![(-1, -1); RECORDS];
    while let Ok(batch) = reports.try_recv() {
        for report in batch.records() {
            let offset = report.result.expect("every record acknowledged");
            placed[report.record_id as usize] = (report.partition, offset);
        }
    }
    assert!(placed.iter().all(|(p, _)| *p >= 0), "one report per record");
    placed
}

/// Reads `topic` from its earliest offsets to the end it had: (partition, offset, value
/// length) in the order the consumer handed them out.
async fn consume_all(bootstrap: String, topic: &str) -> Vec<(i32, i64, usize)> {
    let config = ConsumerConfig {
        bootstrap_servers: bootstrap,
        request_timeout_ms: 10_000,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::assign(config, topic, None, StartOffset::Earliest)
        .await
        .expect("assign");
    let ends = consumer.end_offsets().clone();
    let mut next: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut read = Vec::new();
    while next.iter().any(|(p, o)| *o < ends[p]) {
        let fetched = match consumer.poll(Duration::from_secs(30)).await {
            Some(Ok(f)) => f,
            // a partition error is reported and retried: keep polling
            Some(Err(e)) => {
                eprintln!("consumer: {e}");
                continue;
            }
            None => panic!("nothing fetched for 30 s; read {} so far", read.len()),
        };
        fetched
            .for_each_record(|r| {
                read.push((
                    fetched.partition,
                    r.offset.0,
                    r.value.map_or(0, <[u8]>::len),
                ))
            })
            .expect("records decode");
        next.insert(fetched.partition, fetched.next_offset);
    }
    read
}

#[test]
fn keyless_records_fill_batches_one_partition_at_a_time_and_the_consumer_reads_each_once() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    let topic = "spread";
    cluster.create_topic(topic, PARTITIONS);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let placed = runtime.block_on(produce_keyless(cluster.bootstrap(), topic));

    // sticky: long runs on one partition (a batch's worth), and every partition used
    let runs = 1 + placed.windows(2).filter(|w| w[0].0 != w[1].0).count();
    let per_partition = placed.iter().fold(BTreeMap::new(), |mut m, (p, _)| {
        *m.entry(*p).or_insert(0usize) += 1;
        m
    });
    assert_eq!(
        per_partition.len(),
        PARTITIONS as usize,
        "{per_partition:?}"
    );
    assert!(
        RECORDS / runs >= 50,
        "{runs} runs for {RECORDS} records: keyless records did not stick to a partition per batch"
    );
    // a partition's offsets follow send order
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in &placed {
        assert!(
            last.get(p).is_none_or(|l| l < o),
            "partition {p} offset {o}"
        );
        last.insert(*p, *o);
    }

    // the leader of partition 0 goes: the consumer follows the new leaders
    let leader = cluster.leader_of(topic, 0);
    cluster.kill(leader);
    let read = runtime.block_on(consume_all(cluster.bootstrap(), topic));
    assert_eq!(read.len(), RECORDS, "every record once");
    assert!(read.iter().all(|(_, _, len)| *len == 100));
    let mut expected: Vec<(i32, i64)> = placed.clone();
    expected.sort();
    let mut got: Vec<(i32, i64)> = read.iter().map(|(p, o, _)| (*p, *o)).collect();
    // each partition handed out in offset order
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = got.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] + 1 == w[1]),
            "partition {p}"
        );
    }
    got.sort();
    assert_eq!(got, expected, "read exactly what was acknowledged");
}

#[test]
fn sluice_bench_consume_and_e2e_print_kafkas_lines() {
    let cluster = ProcessCluster::start(Layout::Combined, &[]);
    let run = |args: &[&str]| {
        let out = cluster.sluice(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    run(&[
        "bench",
        "produce",
        "--topic",
        "read-back",
        "--num-records",
        "3000",
        "--record-size",
        "50",
        "--partitions",
        "3",
    ]);
    let out = run(&["bench", "consume", "--topic", "read-back"]);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
    );
    let figures: Vec<&str> = lines.next().unwrap_or_default().split(", ").collect();
    assert_eq!(figures.len(), 10, "{out}");
    assert_eq!(figures[4], "3000", "records consumed: {out}");
    let mb: f64 = figures[2].parse().unwrap();
    assert!((mb - 3000.0 * 50.0 / 1048576.0).abs() < 1e-3, "{out}");

    let out = run(&[
        "bench",
        "e2e",
        "--topic",
        "round-trip",
        "--num-records",
        "2000",
        "--throughput",
        "2000",
        "--partitions",
        "3",
    ]);
    let line = out.lines().last().unwrap_or_default();
    assert!(line.starts_with("2000 records sent, "), "{line}");
    assert!(line.ends_with(" ms 99.9th."), "{line}");
}
