//! Sluice's own producer (`sluice-client`) against three real nodes: idempotent, acks=all,
//! through a partition leader's kill -9 and restart. Every record gets one delivery
//! report; every acknowledged record is read back (kcat) exactly once at its reported
//! offset, in send order within its partition; keyed records land where Kafka's murmur2
//! puts them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::accumulator::AccumulatorConfig;
use sluice_client::murmur2::partition_for_key;
use sluice_client::{Producer, ProducerConfig, ProducerRecord};
use sluice_system_tests::{kcat_read_all, Layout, ProcessCluster};

const RECORDS: u64 = 30_000;
const PARTITIONS: i32 = 6;

#[test]
fn an_idempotent_producer_keeps_every_record_once_and_in_order_through_a_leader_kill() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    let topic = "produced";
    cluster.create_topic(topic, PARTITIONS);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let config = ProducerConfig {
        bootstrap_servers: cluster.bootstrap(),
        acks: -1,
        enable_idempotence: true,
        delivery_timeout_ms: 90_000,
        request_timeout_ms: 10_000,
        accumulator: AccumulatorConfig {
            linger_ms: 5,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let producing = {
        let sent = sent.clone();
        runtime.spawn(async move {
            let (producer, mut reports) = Producer::connect(config).await.expect("connect");
            let mut keys = HashMap::new();
            for i in 0..RECORDS {
                let value = format!("v-{i}");
                // every other record keyed: those go where murmur2 says
                let key = (i % 2 == 0).then(|| format!("k{}", i % 50));
                let id = producer
                    .send(ProducerRecord {
                        topic: "produced",
                        key: key.as_deref().map(str::as_bytes),
                        value: Some(value.as_bytes()),
                        ..ProducerRecord::default()
                    })
                    .await
                    .expect("send");
                keys.insert(id, (key, value));
                sent.store(i + 1, Ordering::Relaxed);
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            producer.flush().await;
            let retries = producer.retries();
            producer.close().await;
            let mut delivered = Vec::new();
            while let Ok(batch) = reports.try_recv() {
                delivered.extend(batch.records());
            }
            (keys, delivered, retries)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < RECORDS / 3 {
        assert!(Instant::now() < deadline, "the producer did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let leader = cluster.leader_of(topic, 0);
    cluster.kill(leader);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);
    let (keys, reports, retries) = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(180), producing).await })
        .expect("the producer finished within its delivery timeout")
        .expect("the producing task");

    assert_eq!(reports.len() as u64, RECORDS, "one report per record");
    assert!(
        retries > 0,
        "the kill reached batches in flight: they were retried"
    );
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for r in &reports {
        let offset = r
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("record {} failed: {e:?}", r.record_id));
        let (key, value) = &keys[&r.record_id];
        if let Some(key) = key {
            assert_eq!(r.partition, partition_for_key(key.as_bytes(), PARTITIONS));
        }
        assert!(*offset >= 0, "{r:?}");
        assert!(
            acked
                .insert((r.partition, *offset), value.clone())
                .is_none(),
            "two records acknowledged at {}/{offset}",
            r.partition
        );
    }
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(
        read.len() as u64,
        RECORDS,
        "every record once, nothing more"
    );
    let mut last_in_partition: HashMap<i32, u64> = HashMap::new();
    for (partition, offset, value) in &read {
        assert_eq!(
            acked.get(&(*partition, *offset)),
            Some(value),
            "{partition}/{offset}"
        );
        let n: u64 = value.trim_start_matches("v-").parse().unwrap();
        if let Some(before) = last_in_partition.insert(*partition, n) {
            assert!(before < n, "partition {partition}: v-{n} after v-{before}");
        }
    }
}

#[test]
fn sluice_bench_produce_prints_kafkas_summary_line_and_writes_every_record() {
    let cluster = ProcessCluster::start(Layout::Combined, &[]);
    let out = cluster.sluice(&[
        "bench",
        "produce",
        "--topic",
        "benched",
        "--num-records",
        "5000",
        "--record-size",
        "64",
        "--partitions",
        "3",
        "--throughput",
        "5000",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    // N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency,
    // P50 ms 50th, P95 ms 95th, P99 ms 99th, P999 ms 99.9th.
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 27, "{line}");
    assert_eq!(&words[..3], ["5000", "records", "sent,"], "{line}");
    assert_eq!(words[4], "records/sec", "{line}");
    assert!(
        words[5].starts_with('(') && words[6] == "MB/sec),",
        "{line}"
    );
    assert!(line.ends_with(" ms 99.9th."), "{line}");
    for (i, label) in [(17, "50th,"), (20, "95th,"), (23, "99th,"), (26, "99.9th.")] {
        assert_eq!(words[i], label, "{line}");
        assert!(words[i - 2].parse::<u64>().is_ok(), "{line}");
    }
    let read = kcat_read_all(&cluster.bootstrap(), "benched");
    assert_eq!(read.len(), 5000);
    assert!(read.iter().all(|(_, _, v)| v.len() == 64));
}

#[test]
fn a_full_buffer_blocks_send_for_max_block_ms_then_everything_accepted_is_delivered() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    let topic = "blocked";
    cluster.create_topic(topic, 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ProducerConfig {
        bootstrap_servers: cluster.bootstrap(),
        max_block_ms: 1000,
        accumulator: AccumulatorConfig {
            batch_size: 16 * 1024,
            buffer_memory: 64 * 1024,
            linger_ms: 0,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let (producer, mut reports) = runtime
        .block_on(Producer::connect(config))
        .expect("connect");
    let value = vec![b'x'; 1024];
    // a first record, so the topic's metadata is known (without it, send waits for
    // metadata: max.block.ms covers that wait too)
    runtime.block_on(async {
        producer
            .send(ProducerRecord {
                topic,
                value: Some(&value),
                ..ProducerRecord::default()
            })
            .await
            .expect("send");
        producer.flush().await;
    });
    let mut accepted = 1u64;
    // the cluster stops answering: sent batches stay in flight, the buffer fills up
    for id in 1..=3 {
        cluster.pause(id);
    }
    let refused = runtime.block_on(async {
        loop {
            match producer
                .send(ProducerRecord {
                    topic,
                    value: Some(&value),
                    ..ProducerRecord::default()
                })
                .await
            {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(
                accepted < 1000,
                "64 KiB of buffer took {accepted} records of 1 KiB"
            );
        }
    });
    assert!(
        matches!(
            refused,
            sluice_client::producer::ProducerError::Blocked(1000)
        ),
        "{refused}"
    );
    assert!(accepted > 1, "records fit before the buffer was full");
    for id in 1..=3 {
        cluster.resume(id);
    }
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), producer.flush())
            .await
            .expect("flushed once the cluster answers again")
    });
    let mut delivered = 0;
    while let Ok(batch) = reports.try_recv() {
        assert!(batch.result.is_ok(), "{batch:?}");
        delivered += batch.len() as u64;
    }
    assert_eq!(delivered, accepted, "every accepted record delivered");
    assert_eq!(
        kcat_read_all(&cluster.bootstrap(), topic).len() as u64,
        accepted
    );
}

/// `linger.ms` and `batch.size` as Kafka means them: records sent together wait for the
/// linger and leave as one batch; a batch that fills up leaves at once, whatever the
/// linger.
#[test]
fn records_wait_for_linger_and_leave_in_one_batch_unless_the_batch_fills_first() {
    let cluster = ProcessCluster::start(Layout::Combined, &[]);
    let topic = "lingered";
    cluster.create_topic(topic, 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let producer_with = |linger_ms: u64, batch_size: usize| ProducerConfig {
        bootstrap_servers: cluster.bootstrap(),
        accumulator: AccumulatorConfig {
            linger_ms,
            batch_size,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let value = vec![b'l'; 100];
    let send_all = |producer: &Producer, count: usize| {
        runtime.block_on(async {
            for _ in 0..count {
                producer
                    .send(ProducerRecord {
                        topic,
                        value: Some(&value),
                        ..ProducerRecord::default()
                    })
                    .await
                    .expect("send");
            }
        })
    };

    // 10 records at once, linger 300 ms: no report before the linger, one batch
    let (producer, mut reports) = runtime
        .block_on(Producer::connect(producer_with(300, 16_384)))
        .expect("connect");
    let started = Instant::now();
    send_all(&producer, 10);
    let first = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), reports.recv()).await })
        .expect("a report")
        .expect("a report");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "reported {:?} after the sends, before linger.ms",
        started.elapsed()
    );
    assert_eq!(first.result, Ok(0));
    assert_eq!(first.len(), 10, "the 10 records are one batch: one report");
    runtime.block_on(producer.close());
    let leader = cluster.leader_of(topic, 0);
    assert_eq!(
        cluster.batches(leader, topic, 0, 10).len(),
        1,
        "10 records sent together are one batch"
    );

    // batch.size 400 (three 100-byte records), linger 10 min: full batches go at once
    let (producer, mut reports) = runtime
        .block_on(Producer::connect(producer_with(600_000, 400)))
        .expect("connect");
    send_all(&producer, 9);
    let full = runtime.block_on(async {
        let mut got = 0;
        while got < 6 {
            match tokio::time::timeout(Duration::from_secs(60), reports.recv()).await {
                Ok(Some(r)) => {
                    assert!(r.result.is_ok(), "{r:?}");
                    got += r.len();
                }
                _ => break,
            }
        }
        got
    });
    assert!(
        full >= 6,
        "full batches were held for linger.ms: {full} reported"
    );
    runtime.block_on(producer.close());
    let batches = cluster.batches(leader, topic, 0, 19);
    assert!(
        batches.len() >= 4,
        "{} batches for 10 + 9 records",
        batches.len()
    );
}

/// A batch of an idempotent producer that fails for good (here a record over the topic's
/// `max.message.bytes`, refused with MESSAGE_TOO_LARGE) leaves a gap in its partition's
/// sequence. The producer bumps its epoch (KIP-360) and numbers again from 0, so the
/// records sent after it are written, not refused as out of order.
#[test]
fn an_idempotent_producer_goes_on_after_a_batch_fails_for_good() {
    let cluster = ProcessCluster::start(Layout::Combined, &[]);
    let topic = "too-large";
    cluster.create_topic_with(topic, 1, &["max.message.bytes=2000"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = ProducerConfig {
        bootstrap_servers: cluster.bootstrap(),
        enable_idempotence: true,
        request_timeout_ms: 10_000,
        delivery_timeout_ms: 60_000,
        accumulator: AccumulatorConfig {
            linger_ms: 0,
            ..AccumulatorConfig::default()
        },
        ..ProducerConfig::default()
    };
    let reports = runtime.block_on(async {
        let (producer, mut reports) = Producer::connect(config).await.expect("connect");
        let big = vec![b'x'; 5000];
        let values: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("before-{i}").into_bytes())
            .chain([big])
            .chain((0..5).map(|i| format!("after-{i}").into_bytes()))
            .collect();
        // one record at a time: the large one alone in its batch
        for value in &values {
            producer
                .send(ProducerRecord {
                    topic,
                    value: Some(value),
                    ..ProducerRecord::default()
                })
                .await
                .expect("send");
            tokio::time::timeout(Duration::from_secs(60), producer.flush())
                .await
                .expect("flushed");
        }
        producer.close().await;
        let mut delivered = Vec::new();
        while let Ok(batch) = reports.try_recv() {
            delivered.extend(batch.records());
        }
        delivered.sort_by_key(|r| r.record_id);
        delivered
    });
    assert_eq!(reports.len(), 11, "{reports:?}");
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.record_id)
        .collect();
    assert_eq!(failed, [5], "only the large record fails: {reports:?}");
    let read: Vec<String> = kcat_read_all(&cluster.bootstrap(), topic)
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before-{i}"))
        .chain((0..5).map(|i| format!("after-{i}")))
        .collect();
    assert_eq!(read, expected);
}
