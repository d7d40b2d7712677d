//! The controller lease, with real processes: three broker-only nodes and one
//! controller-only node on loopback, kcat as the client, SIGSTOP/SIGCONT on the
//! controller. A broker no controller answers for `broker.session.timeout.ms` may have
//! been fenced and replaced as leader, so it stops acting as one: Metadata names no
//! leader for its partitions, and a write sent to it straight away is refused rather
//! than acknowledged (a zombie leader's acks=1 write is later truncated). Once the
//! controller answers again the cluster serves as before, and nothing is lost.

use std::time::Duration;

use sluice_system_tests::process_cluster::{
    kcat_produce, kcat_read_all, Layout, ProcessCluster, CONTROLLER_ID,
};
use sluice_system_tests::{check, external, run};

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn a_leader_no_controller_answers_stops_leading_until_one_does() {
    let mut cluster = ProcessCluster::start(
        Layout::DedicatedController,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let topic = "zombie";
    cluster.create_topic(topic, 1);
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("before", 20)),
        "kcat acks=all before the pause",
    );
    let leader = cluster.leader_of(topic, 0);
    cluster.pause(CONTROLLER_ID);
    // within the session timeout every broker's lease runs out: no one names a leader
    cluster.wait_for(topic, "Metadata names no leader", |rows| rows[0].leader < 0);
    // a write sent to the former leader itself is refused, never acknowledged
    let mut kcat = external("kcat");
    kcat.args([
        "-b",
        &cluster.bootstrap_of(leader),
        "-P",
        "-t",
        topic,
        "-p",
        "0",
    ]);
    kcat.args(["-X", "acks=1", "-X", "message.timeout.ms=3000"]);
    kcat.args(["-X", "topic.metadata.refresh.interval.ms=500"]);
    let refused = run(kcat, b"during-0\n", Duration::from_secs(60));
    assert!(
        !refused.status.success(),
        "a broker without its controller lease acknowledged a write: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    cluster.resume(CONTROLLER_ID);
    cluster.wait_for(topic, "a leader with the whole ISR again", |rows| {
        rows[0].leader > 0 && rows[0].isr.len() == 3
    });
    check(
        &kcat_produce(&cluster.bootstrap(), topic, "all", &lines("after", 20)),
        "kcat acks=all after the resume",
    );
    let read: Vec<String> = kcat_read_all(&cluster.bootstrap(), topic)
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    let expected: Vec<String> = lines("before", 20)
        .into_iter()
        .chain(lines("after", 20))
        .collect();
    assert_eq!(read, expected);
}
