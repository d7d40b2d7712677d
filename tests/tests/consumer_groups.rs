//! Consumer groups with real clients (issue 13, first step: one coordinator, the classic
//! protocol, offsets committed in the controller quorum). Before, every group consumer
//! waited forever ("Waiting for group rebalance": FindCoordinator answered
//! COORDINATOR_NOT_AVAILABLE).
//! - `kcat -G` reads every record through a group and commits; a second run of the same
//!   group reads only what was produced since.
//! - Three confluent-kafka consumers of one group split a 6-partition topic two
//!   partitions each, and together consume every record.
//! - kafka-python's group consumer reads everything, then resumes where it committed.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_system_tests::{
    check, client_script, kcat_produce, python, run, stdout_lines, Layout, NodeProcess,
    ProcessCluster,
};

/// `kcat -G group topic` from the committed offsets (or the earliest) to the end.
fn kcat_group_read(bootstrap: &str, group: &str, topic: &str) -> Vec<String> {
    let mut command = Command::new("kcat");
    command.args([
        "-b",
        bootstrap,
        "-G",
        group,
        topic,
        "-X",
        "auto.offset.reset=earliest",
        "-e",
        "-q",
        "-f",
        "%s\\n",
    ]);
    let out = run(command, b"", Duration::from_secs(60));
    check(&out, "kcat -G");
    let mut values: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    values.sort();
    values
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn kcat_reads_through_a_group_and_resumes_from_its_committed_offsets() {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &["group.initial.rebalance.delay.ms=0"],
    );
    let topic = "grouped";
    cluster.create_topic(topic, 3);
    let first = values("a", 60);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &first),
        "kcat -P",
    );
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), "readers", topic),
        sorted(first)
    );
    let second = values("b", 20);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &second),
        "kcat -P",
    );
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), "readers", topic),
        sorted(second),
        "only what came after the committed offsets"
    );
}

#[test]
fn three_confluent_kafka_consumers_split_six_partitions_and_consume_everything() {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &["group.initial.rebalance.delay.ms=1000"],
    );
    let topic = "split";
    cluster.create_topic(topic, 6);
    let produced = values("v", 300);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &produced),
        "kcat -P",
    );
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    // killed on drop, whatever happens to the test
    let mut consumers: Vec<NodeProcess> = (0..3)
        .map(|_| NodeProcess {
            child: Command::new(python())
                .arg(client_script("group_consumer.py"))
                .args([&cluster.bootstrap(), "splitters", topic])
                .arg("--stop-file")
                .arg(&stop)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run group_consumer.py (scripts/install-kafka-clients.sh)"),
        })
        .collect();
    let lines: Vec<_> = consumers
        .iter_mut()
        .map(|c| stdout_lines(&mut c.child))
        .collect();
    let mut consumed = BTreeSet::new();
    let mut assignment: Vec<Vec<i32>> = vec![Vec::new(); 3];
    let expected: BTreeSet<String> = produced.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, rx) in lines.iter().enumerate() {
            while let Ok(line) = rx.try_recv() {
                if let Some(a) = line.strip_prefix("assignment ") {
                    assignment[i] = a.split(',').filter_map(|p| p.parse().ok()).collect();
                } else if let Some(value) = line.splitn(4, ' ').nth(3) {
                    consumed.insert(value.to_string());
                }
            }
        }
        let split = assignment.iter().all(|a| a.len() == 2);
        if split && consumed == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "assignments {assignment:?}, {} of {} records consumed",
            consumed.len(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut all: Vec<i32> = assignment.concat();
    all.sort();
    assert_eq!(
        all,
        (0..6).collect::<Vec<_>>(),
        "every partition once: {assignment:?}"
    );
    // they leave the group and exit
    std::fs::write(&stop, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &mut consumers {
        loop {
            if let Some(status) = c.child.try_wait().unwrap() {
                assert!(status.success(), "group_consumer.py: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "a consumer did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn kafka_python_reads_through_a_group_and_resumes_from_its_committed_offsets() {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &["group.initial.rebalance.delay.ms=0"],
    );
    let topic = "pythonic";
    cluster.create_topic(topic, 3);
    let read = || {
        let mut command = Command::new(python());
        command.arg(client_script("kafka_python_group.py")).args([
            &cluster.bootstrap(),
            "pythonistas",
            topic,
        ]);
        let out = run(command, b"", Duration::from_secs(90));
        check(&out, "kafka_python_group.py");
        sorted(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
        )
    };
    let first = values("a", 30);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &first),
        "kcat -P",
    );
    assert_eq!(read(), sorted(first));
    let second = values("b", 10);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &second),
        "kcat -P",
    );
    assert_eq!(
        read(),
        sorted(second),
        "only what came after the committed offsets"
    );
}
