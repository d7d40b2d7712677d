//! Replication under faults, with real processes on loopback: three `sluice broker`
//! processes (ports from the OS, temp data dirs, every process killed on drop), real Kafka
//! clients (confluent-kafka, kcat) and real signals (kill -9, SIGSTOP/SIGCONT).
//!
//! - every partition leader killed once under a stream of acks=all writes: each
//!   acknowledged record is read back exactly once at its acknowledged offset, and the
//!   three replicas hold identical batches below the high watermark;
//! - one replica alive: acks=all is refused NOT_ENOUGH_REPLICAS and acks=1 writes stay
//!   invisible until the replicas return and rejoin;
//! - a deposed leader that wrote uncommitted batches truncates them and matches the new
//!   leader;
//! - a deposed leader's parked write that a follower fetched, and kept as the new leader,
//!   is answered with an error clients read as "outcome unknown", never "not written";
//! - a follower paused past replica.lag.time.max.ms leaves the ISR and rejoins.
//!
//! The first test runs the deployment users run (three combined broker+controller
//! nodes). The others stop two brokers at once, which in combined mode would also stop two
//! of three controllers; they run three broker-only nodes and one controller-only node.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_system_tests::progress::{
    assert_acknowledged_were_read, read_acks, read_progress, wait_progress,
};
use sluice_system_tests::{
    check, client_script, kcat_produce, kcat_read_all, python, run_to_end, Layout, ProcessCluster,
};

fn values(records: &[(i32, i64, String)]) -> Vec<&str> {
    records.iter().map(|(_, _, v)| v.as_str()).collect()
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn every_acknowledged_record_survives_kill_9_of_each_partition_leader() {
    const PARTITIONS: i32 = 3;
    const RECORDS: u64 = 200_000;
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=5000",
        ],
    );
    let topic = "acked";
    cluster.create_topic(topic, PARTITIONS);
    let work = tempfile::tempdir().unwrap();
    let progress = work.path().join("progress");
    let stop = work.path().join("stop");
    let acks_out = work.path().join("acks");
    let log_path = work.path().join("producer.log");
    let producer_log = std::fs::File::create(&log_path).unwrap();
    let script = client_script("acked_producer.py");
    let mut producer = sluice_system_tests::external(python())
        .arg(script)
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
        .stdout(Stdio::piped())
        .stderr(producer_log)
        .spawn()
        .expect(
            "run acked_producer.py (scripts/install-kafka-clients.sh installs confluent-kafka)",
        );
    for partition in 0..PARTITIONS {
        wait_progress(
            &progress,
            read_progress(&progress) + 5_000,
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
        // writing goes on through the new leaders
        wait_progress(
            &progress,
            read_progress(&progress) + 5_000,
            &mut producer,
            &log_path,
        );
        cluster.restart(leader);
        cluster.wait_for(topic, "the restarted broker back in every ISR", |rows| {
            rows.iter().all(|r| r.isr.len() == 3)
        });
    }
    std::fs::write(&stop, b"").unwrap();
    let out = run_to_end(producer, Duration::from_secs(300));
    check(&out, "acked_producer.py");

    // every acknowledged record, exactly once, at its acknowledged offset
    let acks = read_acks(&acks_out);
    assert!(acks.len() as u64 >= RECORDS, "{} acknowledged", acks.len());
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let mut at: HashMap<(i32, i64), &str> = HashMap::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (p, o, v) in &read {
        assert!(
            at.insert((*p, *o), v).is_none(),
            "offset {p}/{o} read twice"
        );
        *seen.entry(v.as_str()).or_default() += 1;
    }
    assert_acknowledged_were_read(&acks, &read);
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "records stored twice: {duplicated:?}"
    );

    // the replicas hold identical batches below the HW (all three are in every ISR now)
    for partition in 0..PARTITIONS {
        let high_watermark = read
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, o, _)| o + 1)
            .max()
            .unwrap_or(0);
        cluster.assert_replicas_identical(topic, partition, high_watermark);
    }
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn with_one_replica_alive_acks_all_is_refused_and_nothing_uncommitted_is_exposed() {
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let topic = "lonely";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("committed", 100)),
        "kcat acks=all",
    );
    let leader = cluster.leader_of(topic, 0);
    let followers: Vec<i32> = (1..=3).filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.kill(*f);
    }
    // the controller fences both: the ISR is the leader alone, below min.insync.replicas
    cluster.wait_for(topic, "the ISR shrinks to the leader", |rows| {
        rows[0].isr == vec![leader]
    });
    // `sluice cluster status` marks the fenced brokers, and --expect-brokers counts the
    // live ones only
    let out = cluster.sluice(&["cluster", "status", "--expect-brokers", "3"]);
    let status = String::from_utf8_lossy(&out.stdout);
    for id in 1..=3 {
        let fenced = status
            .lines()
            .any(|l| l.starts_with(&format!("broker {id} ")) && l.contains(" fenced"));
        assert_eq!(fenced, id != leader, "broker {id}: {status}");
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: 1 of 3 brokers live\n"
    );
    let refused = kcat_produce(&cluster.bootstrap(), topic, "all", &lines("refused", 1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Not enough in-sync replicas"),
        "acks=all with one replica alive: {stderr}"
    );
    // acks=1 is taken (as Kafka does) but not committed: consumers see none of it
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "1", &lines("uncommitted", 50)),
        "kcat acks=1",
    );
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(values(&read), lines("committed", 100));
    // the replicas return, catch up and rejoin; the acks=1 records become visible
    for f in &followers {
        cluster.restart(*f);
    }
    cluster.wait_for(topic, "both replicas rejoin the ISR", |rows| {
        rows[0].isr.len() == 3
    });
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let mut expected = lines("committed", 100);
    expected.extend(lines("uncommitted", 50));
    assert_eq!(values(&read), expected);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("after", 10)),
        "kcat acks=all after the rejoin",
    );
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(read.len(), 160);
    cluster.assert_replicas_identical(topic, 0, 160);
}

#[test]
fn a_deposed_leader_truncates_its_uncommitted_batches_and_matches_the_new_leader() {
    let topic = "deposed";
    let (mut cluster, old) = one_partition_with_100_committed(topic, 4000, 30000);
    let followers: Vec<i32> = (1..=3).filter(|id| *id != old).collect();
    // the followers stop fetching; once their parked fetches have been answered (the
    // replica fetch wait is 500 ms) nothing the leader appends reaches them
    for f in &followers {
        cluster.pause(*f);
    }
    std::thread::sleep(Duration::from_millis(1500));
    check(
        &kcat_produce(&cluster.bootstrap_of(old), topic, "1", &lines("stale", 20)),
        "kcat acks=1 to the leader alone",
    );
    // an acks=all producer through the leader alone: its records are appended and parked,
    // waiting for followers that do not fetch
    let parked = parked_producer(&cluster, old, topic);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .batches(old, topic, 0, i64::MAX)
        .iter()
        .any(|b| contains(b, b"parked-"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the parked producer's records never reached the leader's log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = cluster.batches(old, topic, 0, i64::MAX);
    assert!(
        written.len() > 1 && written.iter().any(|b| contains(b, b"stale-")),
        "the leader appended the uncommitted batches"
    );
    // the leader goes silent; the followers come back within their session and one of
    // them is elected once the controller fences the old leader
    cluster.pause(old);
    for f in &followers {
        cluster.resume(*f);
    }
    let rows = cluster.wait_for(topic, "a follower takes over", |rows| {
        rows[0].leader >= 0 && rows[0].leader != old
    });
    let new = rows[0].leader;
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("fresh", 30)),
        "kcat acks=all to the new leader",
    );
    // the old leader wakes up, learns the new epoch, truncates the divergent suffix,
    // fetches the new one and rejoins
    cluster.resume(old);
    cluster.wait_for(topic, "the deposed leader rejoins the ISR", |rows| {
        rows[0].isr.len() == 3
    });
    // the deposed leader answers its parked acks=all requests when it learns of the new
    // epoch, not after the request timeout (120 s here, beyond this bound); librdkafka may
    // then send them again to the new leader
    let reports = run_to_end(parked, Duration::from_secs(90));
    let reports = String::from_utf8_lossy(&reports.stdout).to_string();
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let by_offset: BTreeMap<i64, &str> = read.iter().map(|(_, o, v)| (*o, v.as_str())).collect();
    let mut acked = 0;
    for report in reports.lines() {
        let fields: Vec<&str> = report.split_whitespace().collect();
        match fields.as_slice() {
            // an acknowledgement names the offset its record is at: never one of the
            // deposed leader's truncated offsets, now holding the new leader's records
            ["ok", _, offset, value] => {
                let offset: i64 = offset.parse().unwrap();
                assert_eq!(
                    by_offset.get(&offset).copied(),
                    Some(*value),
                    "acknowledged at {offset} but not there: {reports}"
                );
                acked += 1;
            }
            ["err", _, value] => assert!(
                !read.iter().any(|(_, _, v)| v == value),
                "{value} failed but is in the log: {reports}"
            ),
            _ => panic!("unexpected report {report:?}: {reports}"),
        }
    }
    assert_eq!(
        reports.lines().count(),
        10,
        "one report per record: {reports}"
    );
    let mut expected = lines("committed", 100);
    expected.extend(lines("fresh", 30));
    let unparked: Vec<&str> = values(&read)
        .into_iter()
        .filter(|v| !v.starts_with("parked-"))
        .collect();
    assert_eq!(unparked, expected);
    assert_eq!(
        read.len(),
        130 + acked,
        "every parked record in the log was acknowledged"
    );
    cluster.assert_replicas_identical(topic, 0, read.len() as i64);
    assert!(
        !cluster
            .batches(old, topic, 0, i64::MAX)
            .iter()
            .any(|b| contains(b, b"stale-")),
        "broker {old} (deposed; new leader {new}) still holds uncommitted batches"
    );
}

/// Error names librdkafka (and so confluent-kafka) reads as "maybe written": its
/// delivery report then says POSSIBLY_PERSISTED. Any other error reads as "not written".
const OUTCOME_UNKNOWN: &[&str] = &[
    "REQUEST_TIMED_OUT",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    "_TIMED_OUT",
    "_MSG_TIMED_OUT",
    "_TRANSPORT",
];

#[test]
fn a_deposed_leaders_parked_write_that_the_new_leader_kept_is_never_reported_not_written() {
    // found by the chaos suite (seed 1796028506): a parked acks=all batch that a follower
    // had fetched survived the failover, yet the deposed leader answered it
    // NOT_LEADER_OR_FOLLOWER, which clients read as "not written": librdkafka resent it
    // (a refresh retry, uncounted even with retries=0) to the new leader, alone in its
    // ISR, whose NOT_ENOUGH_REPLICAS became the final, "not persisted" answer
    let topic = "kept";
    let (mut cluster, old) = one_partition_with_100_committed(topic, 10000, 60000);
    let followers: Vec<i32> = (1..=3).filter(|id| *id != old).collect();
    let (keeper, silent) = (followers[0], followers[1]);
    // `silent` stops fetching but stays in the ISR until its session ends: the high
    // watermark cannot pass what `keeper` fetches
    cluster.pause(silent);
    let parked = parked_producer(&cluster, old, topic);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !cluster
        .batches(keeper, topic, 0, i64::MAX)
        .iter()
        .any(|b| contains(b, b"parked-9"))
    {
        assert!(
            Instant::now() < deadline,
            "broker {keeper} never fetched the parked records (within the silent follower's session)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // the leader goes silent too: both sessions end, and `keeper`, the one live ISR
    // member, is elected with the parked records in its log
    cluster.pause(old);
    cluster.wait_for(topic, "the keeper takes over", |rows| {
        rows[0].leader == keeper
    });
    cluster.resume(old);
    cluster.resume(silent);
    cluster.wait_for(
        topic,
        "the deposed leader and the silent follower rejoin",
        |rows| rows[0].isr.len() == 3,
    );
    let reports = run_to_end(parked, Duration::from_secs(90));
    let reports = String::from_utf8_lossy(&reports.stdout).to_string();
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    let kept: Vec<&str> = values(&read)
        .into_iter()
        .filter(|v| v.starts_with("parked-"))
        .collect();
    assert_eq!(
        kept,
        lines("parked", 10),
        "the new leader kept the parked batches"
    );
    assert_eq!(
        reports.lines().count(),
        10,
        "one report per record: {reports}"
    );
    for report in reports.lines() {
        let fields: Vec<&str> = report.split_whitespace().collect();
        match fields.as_slice() {
            ["ok", _, offset, value] => {
                let offset: i64 = offset.parse().unwrap();
                assert!(
                    read.iter().any(|(_, o, v)| *o == offset && v == value),
                    "acknowledged at {offset} but not there: {reports}"
                );
            }
            // in the log: the answer must not have said "not written"
            ["err", name, _] => assert!(
                OUTCOME_UNKNOWN.contains(name),
                "a kept record was answered {name}, which clients read as not written: {reports}"
            ),
            _ => panic!("unexpected report {report:?}: {reports}"),
        }
    }
    cluster.assert_replicas_identical(topic, 0, read.len() as i64);
}

#[test]
fn a_follower_paused_past_the_lag_time_leaves_the_isr_and_rejoins() {
    // sessions last a minute: the ISR shrink seen here is the leader's own
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=60000",
            "broker.heartbeat.interval.ms=200",
            "replica.lag.time.max.ms=2000",
        ],
    );
    let topic = "paused";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("before", 10)),
        "kcat acks=all",
    );
    let leader = cluster.leader_of(topic, 0);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.pause(follower);
    // new data the paused follower cannot fetch: it falls behind
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "1", &lines("during", 10)),
        "kcat acks=1",
    );
    cluster.wait_for(topic, "the paused follower leaves the ISR", |rows| {
        rows[0].isr.len() == 2 && !rows[0].isr.contains(&follower)
    });
    // two in-sync replicas meet min.insync.replicas=2
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("shrunk", 10)),
        "kcat acks=all with the ISR shrunk",
    );
    cluster.resume(follower);
    cluster.wait_for(topic, "the resumed follower rejoins", |rows| {
        rows[0].isr.len() == 3
    });
    let read = kcat_read_all(&cluster.bootstrap(), topic);
    assert_eq!(read.len(), 30);
    cluster.assert_replicas_identical(topic, 0, 30);
}

/// Three broker-only nodes and a controller (heartbeats every 200 ms, the given session
/// and lag time), a one-partition topic holding 100 committed records; and its leader.
fn one_partition_with_100_committed(
    topic: &str,
    session_timeout_ms: u64,
    lag_time_max_ms: u64,
) -> (ProcessCluster, i32) {
    let session = format!("broker.session.timeout.ms={session_timeout_ms}");
    let lag = format!("replica.lag.time.max.ms={lag_time_max_ms}");
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[&session, "broker.heartbeat.interval.ms=200", &lag],
    );
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("committed", 100)),
        "kcat acks=all",
    );
    let leader = cluster.leader_of(topic, 0);
    (cluster, leader)
}

/// parked_producer.py: ten acks=all records (parked-0..9) to partition 0 through broker
/// `id` alone, one delivery report line each.
fn parked_producer(cluster: &ProcessCluster, id: i32, topic: &str) -> std::process::Child {
    sluice_system_tests::external(python())
        .arg(client_script("parked_producer.py"))
        .arg(cluster.bootstrap_of(id))
        .args([topic, "0", "parked", "--count", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "run parked_producer.py (scripts/install-kafka-clients.sh installs confluent-kafka)",
        )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
