//! What an operator sees, with real processes: `sluice cluster status` (DescribeCluster's
//! controller id) names the active controller — the Raft leader — and follows it when it
//! dies; a controller voter that is down costs the leader's log one line, and one more when
//! it is back.

use std::time::Duration;

use sluice_system_tests::progress::wait_until;
use sluice_system_tests::{Layout, ProcessCluster};

/// The Raft leader with the highest term, as the controllers' logs say.
fn raft_leader(cluster: &ProcessCluster) -> Option<(u64, i32)> {
    (1..=3)
        .filter_map(|id| {
            let log = std::fs::read_to_string(cluster.log_path(id)).ok()?;
            log.lines()
                .filter(|l| l.contains("failure detector started"))
                .filter_map(|l| {
                    let field = |name: &str| {
                        l.split_whitespace()
                            .find_map(|w| w.strip_prefix(name))
                            .and_then(|v| v.parse::<u64>().ok())
                    };
                    Some((field("term=")?, field("node=")? as i32))
                })
                .max()
        })
        .max()
}

/// The controller `sluice cluster status` names (first line: `cluster ID controller N`).
fn status_controller(cluster: &ProcessCluster) -> Option<i32> {
    let out = cluster.sluice(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()?
        .split_whitespace()
        .skip_while(|w| *w != "controller")
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn status_names_the_raft_leader_and_follows_it() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let mut leader = -1;
    wait_until("status to name the Raft leader", || {
        leader = raft_leader(&cluster).map_or(-1, |(_, n)| n);
        leader > 0 && status_controller(&cluster) == Some(leader)
    });
    // asked through each broker, the answer is the same node
    for id in 1..=3 {
        let out = std::process::Command::new(sluice_system_tests::sluice_bin())
            .args(["cluster", "status", "-b", &cluster.bootstrap_of(id)])
            .output()
            .unwrap();
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert!(
            first.ends_with(&format!("controller {leader}")),
            "via broker {id}: {first}"
        );
    }
    cluster.kill(leader);
    wait_until("a new Raft leader named by status", || {
        let new = raft_leader(&cluster).map_or(-1, |(_, n)| n);
        new > 0 && new != leader && status_controller(&cluster) == Some(new)
    });
}

#[test]
fn a_voter_that_is_down_costs_the_leaders_log_one_line() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    let mut leader = -1;
    wait_until("a Raft leader", || {
        leader = raft_leader(&cluster).map_or(-1, |(_, n)| n);
        leader > 0
    });
    let down = (1..=3).find(|id| *id != leader).unwrap();
    let before = std::fs::read_to_string(cluster.log_path(leader))
        .unwrap()
        .len();
    cluster.kill(down);
    // brokers heartbeat and the leader replicates all the while
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(down);
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
    let during = &log[before..];
    let lines = |needle: &str| during.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines(&format!("controller voter unreachable voter={down}")),
        1,
        "{during}"
    );
    assert_eq!(
        lines(&format!("controller voter reachable again voter={down}")),
        1,
        "{during}"
    );
    assert_eq!(
        lines("openraft"),
        0,
        "openraft's per-RPC errors are off: {during}"
    );
    assert!(during.lines().count() < 30, "{during}");
}
