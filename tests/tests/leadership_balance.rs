//! Leadership goes back to preferred replicas (Kafka's preferred leader election), with
//! real processes: a broker killed and restarted gets its partitions back by itself
//! (`auto.leader.rebalance.enable`), or on request with `sluice topic elect-leaders`
//! (ElectLeaders) when the automatic rebalance is off.

use sluice_system_tests::{check, Layout, PartitionRow, ProcessCluster};

fn preferred_lead(rows: &[PartitionRow]) -> bool {
    rows.iter()
        .all(|r| r.replicas.first() == Some(&r.leader) && r.isr.len() == 3)
}

/// Kills the preferred leader of partition 0 and brings it back: its partitions move
/// away, and it rejoins every ISR. Returns the broker.
fn kill_and_restart_a_preferred_leader(cluster: &mut ProcessCluster, topic: &str) -> i32 {
    let rows = cluster.describe(topic).expect("describe");
    assert!(preferred_lead(&rows), "{rows:?}");
    let victim = rows[0].replicas[0];
    cluster.kill(victim);
    cluster.wait_for(topic, "leaders moved off the killed broker", |rows| {
        rows.iter().all(|r| r.leader >= 0 && r.leader != victim)
    });
    cluster.restart(victim);
    cluster.wait_for(topic, "the restarted broker back in every ISR", |rows| {
        rows.iter().all(|r| r.isr.len() == 3)
    });
    victim
}

#[test]
fn a_restarted_broker_gets_its_preferred_leaderships_back_by_itself() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            "leader.imbalance.check.interval.seconds=1",
        ],
    );
    let topic = "balanced";
    cluster.create_topic(topic, 6);
    let victim = kill_and_restart_a_preferred_leader(&mut cluster, topic);
    let rows = cluster.wait_for(
        topic,
        "every partition led by its preferred replica",
        preferred_lead,
    );
    assert!(rows.iter().any(|r| r.leader == victim), "{rows:?}");
}

#[test]
fn elect_leaders_moves_leadership_back_on_request() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            "auto.leader.rebalance.enable=false",
        ],
    );
    let topic = "unbalanced";
    cluster.create_topic(topic, 6);
    let victim = kill_and_restart_a_preferred_leader(&mut cluster, topic);
    // nothing moves back by itself
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rows = cluster.describe(topic).expect("describe");
    assert!(rows.iter().all(|r| r.leader != victim), "{rows:?}");
    let moved: Vec<String> = rows
        .iter()
        .filter(|r| r.replicas[0] == victim)
        .map(|r| format!("{topic}-{}", r.partition))
        .collect();
    assert!(!moved.is_empty());

    // one partition first, then the rest of the topic
    let first = rows
        .iter()
        .find(|r| r.replicas[0] == victim)
        .unwrap()
        .partition;
    let out = cluster.sluice(&[
        "topic",
        "elect-leaders",
        "--topic",
        topic,
        "--partition",
        &first.to_string(),
    ]);
    check(&out, "sluice topic elect-leaders --partition");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "Successfully completed leader election (PREFERRED) for partitions {topic}-{first}"
        )
    );
    let out = cluster.sluice(&["topic", "elect-leaders", "--topic", topic]);
    check(&out, "sluice topic elect-leaders --topic");
    let text = String::from_utf8_lossy(&out.stdout);
    let rest: Vec<&String> = moved
        .iter()
        .filter(|m| **m != format!("{topic}-{first}"))
        .collect();
    if !rest.is_empty() {
        assert!(
            text.contains("Successfully completed leader election (PREFERRED) for partitions"),
            "{text}"
        );
    }
    assert!(
        text.contains("Valid replica already elected for partitions"),
        "{text}"
    );
    // the answer came once the new leaders were in the answering broker's metadata
    let rows = cluster.describe(topic).expect("describe");
    assert!(preferred_lead(&rows), "{rows:?}");

    // every partition, already balanced: nothing to do, said once
    let out = cluster.sluice(&["topic", "elect-leaders"]);
    check(&out, "sluice topic elect-leaders");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Valid replica already elected for every partition"
    );
    // a partition that does not exist: a one-line error, exit 1
    let out = cluster.sluice(&[
        "topic",
        "elect-leaders",
        "--topic",
        topic,
        "--partition",
        "99",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");
}
