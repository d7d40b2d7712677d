//! A partition whose log its leader cannot open (issue 20), with real processes: files
//! where the partition directories go on one broker, then a topic created over them.
//! Before the fix that broker kept "leading" the broken partitions with a full ISR (produce
//! got NOT_LEADER_OR_FOLLOWER, `sluice cluster status` said all was well), and its
//! followers, refused on the broken partitions, slept 200 ms per fetch round for every
//! partition they fetched from it: acks=all on a healthy partition it led fell from
//! ~2.5M to ~22k records/s. Now the broker reports the replicas offline, the controller
//! moves their leadership and ISR membership to healthy brokers, status names them, the
//! healthy partition keeps its speed, and the replicas come back once the logs open.
//!
//! Checked against builds without each half of the fix: with the replicas never reported
//! (the broken broker keeps "leading" three of them) the healthy partition still ran at
//! 0.88× its rate alone, thanks to the per-partition backoff, and the leadership check
//! failed; with the follower sleeping as a whole after any refused partition as well, it
//! ran at 0.06× and the rate check failed. The build before both took the broker's whole
//! log directory offline over one stray file (fenced, every leadership moved away).

use sluice_system_tests::{check, client_script, kcat_produce, kcat_read_all, python, run};
use sluice_system_tests::{Layout, ProcessCluster};

/// acks=all records per second to `topic`-0 (librdkafka, batched as the load tool does).
fn acks_all_rate(cluster: &ProcessCluster, topic: &str, count: usize) -> f64 {
    let mut command = sluice_system_tests::external(python());
    command
        .arg(client_script("timed_producer.py"))
        .arg(cluster.bootstrap())
        .args([topic, "0", "--count", &count.to_string()]);
    let out = run(command, b"", std::time::Duration::from_secs(180));
    check(&out, "timed_producer.py");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse().expect("numbers"))
        .collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert_eq!(fields[2], 0.0, "every record acknowledged: {line}");
    fields[0] / fields[1]
}

fn status(cluster: &ProcessCluster) -> (bool, String, String) {
    let out = cluster.sluice(&["cluster", "status", "-b", &cluster.bootstrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_partition_its_leader_cannot_open_moves_away_and_throttles_nothing() {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let healthy = "healthy";
    cluster.create_topic(healthy, 1);
    let leader = cluster.leader_of(healthy, 0);
    cluster.wait_for(healthy, "a full ISR", |rows| rows[0].isr.len() == 3);
    let records = 300_000;
    let before = acks_all_rate(&cluster, healthy, records);

    // files where the broken topic's partition directories go, on the healthy leader
    let broken = "broken";
    let partitions = 10;
    for p in 0..partitions {
        std::fs::write(cluster.data_dir(leader).join(format!("{broken}-{p}")), b"").unwrap();
    }
    // (not `create_topic`, which waits for full ISRs)
    let count = partitions.to_string();
    check(
        &cluster.sluice(&["topic", "create", broken, "-p", &count, "-r", "3"]),
        "sluice topic create",
    );
    // the healthy partition on the same leader keeps its speed
    let after = acks_all_rate(&cluster, healthy, records);
    eprintln!("acks=all to {healthy}: {before:.0} records/s alone, {after:.0} beside {partitions} broken partitions");
    assert!(
        after / before >= 0.3,
        "beside broken partitions the healthy one ran at {:.2}× its rate alone ({after:.0} against {before:.0} records/s)",
        after / before
    );

    let rows = cluster.wait_for(
        broken,
        "no partition led by or in sync on the broken broker",
        |rows| {
            rows.len() == partitions as usize
                && rows
                    .iter()
                    .all(|r| r.leader >= 0 && r.leader != leader && !r.isr.contains(&leader))
        },
    );
    assert!(rows.iter().all(|r| r.replicas.contains(&leader)));
    let (ok, out, err) = status(&cluster);
    assert!(!ok, "status fails while replicas are offline: {out}");
    assert!(
        out.contains("offline 0 ") && out.contains("offline-replicas 10"),
        "{out}"
    );
    assert!(
        err.contains("replicas whose log cannot be opened")
            && err.contains(&format!("{broken}-0 on broker {leader}")),
        "{err}"
    );
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
    let reports = log
        .lines()
        .filter(|l| {
            l.contains("cannot open the partition log")
                && l.contains(&format!("partition={broken}-0 "))
        })
        .count();
    assert_eq!(reports, 1, "logged once per replica, not per retry");

    // the broken partitions work on the other brokers
    let lines: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    check(
        &kcat_produce(&cluster.bootstrap(), broken, "all", &lines),
        "kcat acks=all",
    );

    // once the files are gone the logs open, the replicas catch up and rejoin
    for p in 0..partitions {
        std::fs::remove_file(cluster.data_dir(leader).join(format!("{broken}-{p}"))).unwrap();
    }
    cluster.wait_for(broken, "the repaired replicas back in every ISR", |rows| {
        rows.iter().all(|r| r.isr.contains(&leader))
    });
    let (ok, out, err) = status(&cluster);
    assert!(ok, "status healthy again: {out} {err}");
    assert!(out.contains("offline-replicas 0"), "{out}");
    let read = kcat_read_all(&cluster.bootstrap(), broken);
    assert_eq!(read.len(), lines.len());
}
