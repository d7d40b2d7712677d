//! Consumer groups with real clients (issue 13, first step: one coordinator, the classic
//! protocol, offsets committed in the controller quorum). Before, every group consumer
//! waited forever ("Waiting for group rebalance": FindCoordinator answered
//! COORDINATOR_NOT_AVAILABLE).
//! - `kcat -G` reads every record through a group and commits; a second run of the same
//!   group reads only what was produced since.
//! - Three confluent-kafka consumers of one group split a 6-partition topic two
//!   partitions each, and together consume every record; confluent-kafka's AdminClient
//!   lists the group and describes it (ListGroups, DescribeGroups).
//! - kafka-python's and aiokafka's group consumers read everything, then resume where they
//!   committed.
//! - A consumer killed with kill -9: its partitions move to the other two after its
//!   session timeout, and every record produced is consumed (eager assignors, and
//!   cooperative-sticky).
//! - Committed offsets survive a kill -9 and restart of every node.
//! - `sluice group list|describe|reset-offsets|delete` show what kcat's group committed,
//!   refuse a reset while the group has a member, move the offsets back so kcat reads
//!   everything again, and delete the group with its offsets.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_system_tests::{
    check, client_script, kcat_produce, python, run, stdout_lines, Layout, NodeProcess,
    ProcessCluster,
};

/// `kcat -G group topic` from the committed offsets (or the earliest) to the end.
fn kcat_group_read(bootstrap: &str, group: &str, topic: &str) -> Vec<String> {
    let mut command = sluice_system_tests::external("kcat");
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

/// A confluent-kafka group consumer (`group_consumer.py`, killed on drop) and its output
/// lines as they come.
fn group_consumer(
    bootstrap: &str,
    group: &str,
    topic: &str,
    stop: &std::path::Path,
) -> (NodeProcess, std::sync::mpsc::Receiver<String>) {
    group_consumer_with(bootstrap, group, topic, stop, "range,roundrobin")
}

/// [`group_consumer`] with `partition.assignment.strategy` = `assignor`.
fn group_consumer_with(
    bootstrap: &str,
    group: &str,
    topic: &str,
    stop: &std::path::Path,
    assignor: &str,
) -> (NodeProcess, std::sync::mpsc::Receiver<String>) {
    let mut node = NodeProcess {
        child: sluice_system_tests::external(python())
            .arg(client_script("group_consumer.py"))
            .args([bootstrap, group, topic])
            .arg("--stop-file")
            .arg(stop)
            .args(["--assignor", assignor])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run group_consumer.py (scripts/install-kafka-clients.sh)"),
    };
    let lines = stdout_lines(&mut node.child);
    (node, lines)
}

/// Tells the consumers to stop (the stop file) and waits for each to exit cleanly (leaving
/// the group and committing).
fn stop_consumers(stop: &std::path::Path, consumers: &mut [NodeProcess]) {
    std::fs::write(stop, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in consumers {
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

/// Reads what each consumer printed so far: its latest assignment, and every value.
fn drain(
    lines: &[std::sync::mpsc::Receiver<String>],
    assignment: &mut [Vec<i32>],
    consumed: &mut BTreeSet<String>,
) {
    for (i, rx) in lines.iter().enumerate() {
        while let Ok(line) = rx.try_recv() {
            if let Some(a) = line.strip_prefix("assignment ") {
                assignment[i] = a.split(',').filter_map(|p| p.parse().ok()).collect();
            } else if let Some(value) = line.splitn(4, ' ').nth(3) {
                consumed.insert(value.to_string());
            }
        }
    }
}

/// Whether the consumers' assignments and what they consumed are where a test waits for.
type Progress<'a> = &'a dyn Fn(&[Vec<i32>], &BTreeSet<String>) -> bool;

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
    let (mut consumers, lines): (Vec<NodeProcess>, Vec<_>) = (0..3)
        .map(|_| group_consumer(&cluster.bootstrap(), "splitters", topic, &stop))
        .unzip();
    let mut consumed = BTreeSet::new();
    let mut assignment: Vec<Vec<i32>> = vec![Vec::new(); 3];
    let expected: BTreeSet<String> = produced.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        drain(&lines, &mut assignment, &mut consumed);
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
    // an admin client sees the group: Stable, range, three members with two partitions each
    let mut command = sluice_system_tests::external(python());
    command
        .arg(client_script("group_admin.py"))
        .args([&cluster.bootstrap(), "splitters"]);
    let out = run(command, b"", Duration::from_secs(60));
    check(&out, "group_admin.py");
    let admin = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(admin.contains("list splitters STABLE"), "{admin}");
    assert!(
        admin.contains("describe splitters STABLE range 3 6"),
        "{admin}"
    );
    // each member's host, as Kafka shows it
    assert_eq!(admin.matches("member /127.0.0.1").count(), 3, "{admin}");
    let mut all: Vec<i32> = assignment.concat();
    all.sort();
    assert_eq!(
        all,
        (0..6).collect::<Vec<_>>(),
        "every partition once: {assignment:?}"
    );
    // they leave the group and exit
    stop_consumers(&stop, &mut consumers);
}

#[test]
fn kafka_python_reads_through_a_group_and_resumes_from_its_committed_offsets() {
    python_group_reads_and_resumes("kafka_python_group.py");
}

#[test]
fn aiokafka_reads_through_a_group_and_resumes_from_its_committed_offsets() {
    python_group_reads_and_resumes("aiokafka_group.py");
}

/// A Python group consumer (`script`: BOOTSTRAP GROUP TOPIC, prints each value) reads
/// everything, then only what was produced after its commit.
fn python_group_reads_and_resumes(script: &str) {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &["group.initial.rebalance.delay.ms=0"],
    );
    let topic = "pythonic";
    cluster.create_topic(topic, 3);
    let read = || {
        let mut command = sluice_system_tests::external(python());
        command
            .arg(client_script(script))
            .args([&cluster.bootstrap(), "pythonistas", topic]);
        let out = run(command, b"", Duration::from_secs(90));
        check(&out, script);
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

#[test]
fn a_killed_consumers_partitions_move_to_the_others_and_nothing_is_skipped() {
    killed_consumer_moves_its_partitions("range,roundrobin");
}

#[test]
fn with_cooperative_sticky_a_killed_consumers_partitions_move_and_nothing_is_skipped() {
    killed_consumer_moves_its_partitions("cooperative-sticky");
}

/// Three confluent-kafka consumers with `assignor` split 6 partitions; one is killed
/// (kill -9); after its session the other two hold all six and consume everything.
fn killed_consumer_moves_its_partitions(assignor: &str) {
    let cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &["group.initial.rebalance.delay.ms=1000"],
    );
    let topic = "survivors";
    cluster.create_topic(topic, 6);
    let before = values("a", 150);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &before),
        "kcat -P",
    );
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let (mut consumers, lines): (Vec<NodeProcess>, Vec<_>) = (0..3)
        .map(|_| group_consumer_with(&cluster.bootstrap(), "survivors", topic, &stop, assignor))
        .unzip();
    let mut consumed = BTreeSet::new();
    let mut assignment: Vec<Vec<i32>> = vec![Vec::new(); 3];
    let wait = |what: &str,
                done: Progress,
                assignment: &mut Vec<Vec<i32>>,
                consumed: &mut BTreeSet<String>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            drain(&lines, assignment, consumed);
            if done(assignment, consumed) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: assignments {assignment:?}, {} records consumed",
                consumed.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first: BTreeSet<String> = before.iter().cloned().collect();
    wait(
        "three consumers, two partitions each, everything consumed",
        &|a, c| a.iter().all(|p| p.len() == 2) && first.is_subset(c),
        &mut assignment,
        &mut consumed,
    );
    // kill -9: no LeaveGroup, no commit of what it consumed last
    let _ = consumers[0].child.kill();
    let _ = consumers[0].child.wait();
    let after = values("b", 150);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &after),
        "kcat -P",
    );
    let all: BTreeSet<String> = before.iter().chain(&after).cloned().collect();
    wait(
        "after its session, the two others hold all six partitions and consume everything",
        &|a, c| {
            let mut held: Vec<i32> = a[1..].concat();
            held.sort();
            held == (0..6).collect::<Vec<_>>() && all.is_subset(c)
        },
        &mut assignment,
        &mut consumed,
    );
    stop_consumers(&stop, &mut consumers[1..]);
}

#[test]
fn committed_offsets_survive_a_restart_of_every_node() {
    let mut cluster =
        ProcessCluster::start(Layout::Combined, &["group.initial.rebalance.delay.ms=0"]);
    let topic = "durable";
    cluster.create_topic(topic, 3);
    let first = values("a", 40);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &first),
        "kcat -P",
    );
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), "keepers", topic),
        sorted(first)
    );
    for id in 1..=3 {
        cluster.kill(id);
    }
    cluster.restart_all(&[1, 2, 3]);
    // acks=all with min.insync.replicas=2 needs the replicas back in sync first
    cluster.wait_for(topic, "every ISR full again", |rows| {
        rows.len() == 3 && rows.iter().all(|r| r.leader >= 0 && r.isr.len() == 3)
    });
    let second = values("b", 10);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &second),
        "kcat -P",
    );
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), "keepers", topic),
        sorted(second),
        "the group resumes where it committed before the restart"
    );
}

/// The rows of `sluice group describe` (GROUP TOPIC PARTITION CURRENT-OFFSET
/// LOG-END-OFFSET LAG ...): (partition, current, end, lag) as printed.
fn described_rows(out: &str, group: &str) -> Vec<(String, String, String, String)> {
    out.lines()
        .filter(|l| l.starts_with(&format!("{group} ")))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (
                cells[2].to_string(),
                cells[3].to_string(),
                cells[4].to_string(),
                cells[5].to_string(),
            )
        })
        .collect()
}

#[test]
fn the_group_cli_describes_resets_and_deletes_a_group() {
    let cluster = ProcessCluster::start(Layout::Combined, &["group.initial.rebalance.delay.ms=0"]);
    let (topic, group) = ("operated", "operated-readers");
    cluster.create_topic(topic, 2);
    let records = values("r", 30);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &records),
        "kcat -P",
    );
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), group, topic),
        sorted(records.clone())
    );

    let out = cluster.sluice(&["group", "describe", group]);
    check(&out, "sluice group describe");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("state Empty"), "{shown}");
    // kcat produced everything to partition 0; the group read it all: lag 0
    assert_eq!(
        described_rows(&shown, group),
        vec![("0".into(), "30".into(), "30".into(), "0".into())],
        "{shown}"
    );
    let out = cluster.sluice(&["group", "list"]);
    check(&out, "sluice group list");
    assert!(String::from_utf8_lossy(&out.stdout).contains(group));

    // refused while the group has a member
    let (_, address) = {
        let asked = cluster.bootstrap_of(1);
        let mut c = sluice_system_tests::group_member::GroupClient::connect(&asked);
        let (code, node, address) = c.find_coordinator(group);
        assert_eq!(code, 0);
        (node, address)
    };
    let mut member = sluice_system_tests::group_member::GroupClient::connect(&address);
    let joined = member.join_new(group, None);
    assert_eq!(joined.error_code, 0);
    let out = cluster.sluice(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to-earliest",
        "--execute",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inactive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(member.leave(group, &joined.member_id, None), (0, 0));

    // a dry run changes nothing; --execute moves the offsets back: everything is read again
    let out = cluster.sluice(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--shift-by",
        "-10",
    ]);
    check(&out, "sluice group reset-offsets (dry run)");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{group}  {topic}  0          20"))
    );
    let out = cluster.sluice(&[
        "group",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--to-earliest",
        "--execute",
    ]);
    check(&out, "sluice group reset-offsets --execute");
    assert_eq!(
        kcat_group_read(&cluster.bootstrap(), group, topic),
        sorted(records.clone()),
        "read again from the start"
    );

    let out = cluster.sluice(&["group", "delete", group]);
    check(&out, "sluice group delete");
    let out = cluster.sluice(&["group", "describe", group]);
    check(&out, "sluice group describe after delete");
    assert!(
        described_rows(&String::from_utf8_lossy(&out.stdout), group).is_empty(),
        "no offsets left"
    );
    let out = cluster.sluice(&["group", "delete", group]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_ID_NOT_FOUND"));
}

#[test]
fn a_stable_group_of_real_consumers_does_not_rebalance_when_its_coordinator_is_killed() {
    let mut cluster =
        ProcessCluster::start(Layout::Combined, &["group.initial.rebalance.delay.ms=1000"]);
    let (topic, group) = ("steady", "steady-readers");
    cluster.create_topic(topic, 6);
    let before = values("a", 120);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &before),
        "kcat -P",
    );
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let (mut consumers, lines): (Vec<NodeProcess>, Vec<_>) = (0..3)
        .map(|_| group_consumer(&cluster.bootstrap(), group, topic, &stop))
        .unzip();
    let mut consumed = BTreeSet::new();
    let mut assignment: Vec<Vec<i32>> = vec![Vec::new(); 3];
    let first: BTreeSet<String> = before.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(assignment.iter().all(|p| p.len() == 2) && first.is_subset(&consumed)) {
        drain(&lines, &mut assignment, &mut consumed);
        assert!(
            Instant::now() < deadline,
            "group never settled: {assignment:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = assignment.clone();

    let (code, coordinator, _) =
        sluice_system_tests::group_member::GroupClient::connect(&cluster.bootstrap_of(1))
            .find_coordinator(group);
    assert_eq!(code, 0);
    cluster.kill(coordinator);
    let live: Vec<i32> = (1..=3).filter(|id| *id != coordinator).collect();
    let bootstrap = live
        .iter()
        .map(|id| cluster.bootstrap_of(*id))
        .collect::<Vec<_>>()
        .join(",");
    let after = values("b", 120);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // acks=all needs the partitions' new leaders first
        let out = kcat_produce(&bootstrap, topic, "all", &after);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "producing after the kill failed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let all: BTreeSet<String> = before.iter().chain(&after).cloned().collect();
    // every assignment change is printed: none may come (no rebalance), and everything
    // produced after the kill is consumed by the same three owners
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (i, rx) in lines.iter().enumerate() {
            while let Ok(line) = rx.try_recv() {
                assert!(
                    !line.starts_with("assignment "),
                    "consumer {i} was reassigned after the coordinator moved: {line}"
                );
                if let Some(value) = line.splitn(4, ' ').nth(3) {
                    consumed.insert(value.to_string());
                }
            }
        }
        if all.is_subset(&consumed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} records consumed after the coordinator moved",
            consumed.len(),
            all.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the slot moves once the controller fences the dead broker; then the members
    // heartbeat at the new coordinator for a while (500 ms apart): still no rebalance
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, now_at, _) =
            sluice_system_tests::group_member::GroupClient::connect(&cluster.bootstrap_of(live[0]))
                .find_coordinator(group);
        if code == 0 && now_at != coordinator {
            break;
        }
        assert!(Instant::now() < deadline, "the coordinator never moved");
        std::thread::sleep(Duration::from_millis(200));
    }
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        for (i, rx) in lines.iter().enumerate() {
            while let Ok(line) = rx.try_recv() {
                assert!(
                    !line.starts_with("assignment "),
                    "consumer {i} was reassigned after the coordinator moved: {line}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(assignment, settled);
    // they close, committing at the new coordinator with the generation they had: accepted,
    // so the group has committed everything
    stop_consumers(&stop, &mut consumers);
    let out = cluster.sluice(&["group", "describe", group]);
    check(&out, "sluice group describe");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let rows = described_rows(&shown, group);
    let committed: i64 = rows.iter().map(|r| r.1.parse::<i64>().unwrap_or(-1)).sum();
    assert_eq!(committed, 240, "{shown}");
    assert!(rows.iter().all(|r| r.3 == "0"), "{shown}");
}
