//! The admin listener with real processes: /metrics moves as it should through a broker's
//! kill -9 and restart (under-replicated partitions on the leaders, a fenced broker and
//! its return on the active controller, leadership back once it is in sync), and /readyz
//! and /healthz answer.

use std::time::Duration;

use sluice_system_tests::progress::wait_until;
use sluice_system_tests::{
    http_get, kcat_produce, kcat_produce_with, kcat_read_all, metric, Layout, ProcessCluster,
};

/// `name` summed over the nodes in `ids` (a node that does not answer counts as absent).
fn sum(cluster: &ProcessCluster, ids: &[i32], name: &str) -> f64 {
    ids.iter()
        .filter_map(|id| http_get(&cluster.admin_address(*id), "/metrics"))
        .filter_map(|(_, body)| metric(&body, name))
        .sum()
}

#[test]
fn metrics_follow_a_broker_kill_and_restart() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
            "leader.imbalance.check.interval.seconds=1",
        ],
    );
    let all = [1, 2, 3];
    for id in all {
        let (status, body) = http_get(&cluster.admin_address(id), "/healthz").unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
    }
    wait_until("every node ready", || {
        all.iter().all(|id| {
            http_get(&cluster.admin_address(*id), "/readyz").is_some_and(|(s, _)| s == 200)
        })
    });
    cluster.create_topic("watched", 6);
    wait_until(
        "6 partitions led, none under-replicated, one active controller",
        || {
            sum(&cluster, &all, "sluice_broker_leader_partitions") == 6.0
                && sum(&cluster, &all, "sluice_broker_under_replicated_partitions") == 0.0
                && sum(&cluster, &all, "sluice_controller_active") == 1.0
        },
    );
    // requests, records and bytes: 500 records with acks=all, read back by a consumer
    let lines: Vec<String> = (0..500).map(|i| format!("record-{i}")).collect();
    let out = kcat_produce(&cluster.bootstrap(), "watched", "all", &lines);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kcat_read_all(&cluster.bootstrap(), "watched").len(), 500);
    let records = r#"sluice_topic_records_in_total{topic="watched"}"#;
    assert_eq!(sum(&cluster, &all, records), 500.0);
    let bytes_in = sum(
        &cluster,
        &all,
        r#"sluice_topic_bytes_in_total{topic="watched"}"#,
    );
    let bytes_out = sum(
        &cluster,
        &all,
        r#"sluice_topic_bytes_out_total{topic="watched"}"#,
    );
    assert!(
        bytes_in >= 500.0 * 8.0 && bytes_out >= bytes_in,
        "{bytes_in} in, {bytes_out} out"
    );
    assert!(
        sum(
            &cluster,
            &all,
            r#"sluice_requests_total{request="Produce"}"#
        ) >= 1.0
    );
    let produce_time = r#"sluice_request_time_ms_count{request="Produce",stage="remote"}"#;
    assert!(sum(&cluster, &all, produce_time) >= 1.0);

    let active = *all
        .iter()
        .find(|id| sum(&cluster, &[**id], "sluice_controller_active") == 1.0)
        .unwrap();
    let victim = *all.iter().find(|id| **id != active).unwrap();
    let live: Vec<i32> = all.iter().copied().filter(|id| *id != victim).collect();
    assert_eq!(
        sum(&cluster, &[victim], "sluice_broker_leader_partitions"),
        2.0
    );

    cluster.kill(victim);
    wait_until(
        "the killed broker's partitions under-replicated and it fenced",
        || {
            sum(&cluster, &live, "sluice_broker_leader_partitions") == 6.0
                && sum(&cluster, &live, "sluice_broker_under_replicated_partitions") == 6.0
                && sum(&cluster, &[active], "sluice_controller_fenced_brokers") == 1.0
        },
    );
    // the container healthcheck's probe fails for the dead node, passes for a live one
    let probe = |id: i32| {
        let url = format!("http://{}/readyz", cluster.admin_address(id));
        let mut command = std::process::Command::new(sluice_system_tests::sluice_bin());
        command.args(["probe", "--url", &url, "--timeout", "2s"]);
        sluice_system_tests::run(command, b"", Duration::from_secs(30))
            .status
            .success()
    };
    assert!(!probe(victim));
    assert!(probe(active));
    // its two partitions got new leaders (the active controller counts elections)
    let elections = "sluice_controller_leader_elections_total";
    assert!(sum(&cluster, &[active], elections) >= 2.0);
    // min.insync.replicas=2 still holds with two of three
    assert_eq!(
        sum(&cluster, &live, "sluice_broker_under_min_isr_partitions"),
        0.0
    );
    assert_eq!(
        sum(&cluster, &[active], "sluice_controller_offline_partitions"),
        0.0
    );
    // the other live node is not the active controller: it reports no cluster-wide counts
    let other = *live.iter().find(|id| **id != active).unwrap();
    assert_eq!(
        sum(&cluster, &[other], "sluice_controller_fenced_brokers"),
        0.0
    );

    cluster.restart(victim);
    wait_until("fully replicated again and leadership rebalanced", || {
        sum(&cluster, &all, "sluice_broker_under_replicated_partitions") == 0.0
            && sum(&cluster, &[active], "sluice_controller_fenced_brokers") == 0.0
            && sum(&cluster, &[victim], "sluice_broker_leader_partitions") == 2.0
    });
    let (status, _) = http_get(&cluster.admin_address(victim), "/readyz").unwrap();
    assert_eq!(status, 200);
    // the leaders took it back into their ISRs (counted as each AlterPartition answer
    // comes back, which may be a moment after the metadata showed the ISR)
    wait_until("ISR expands counted on the leaders", || {
        sum(&cluster, &live, "sluice_broker_isr_expands_total") >= 1.0
    });
    let (status, _) = http_get(&cluster.admin_address(victim), "/nothing-here").unwrap();
    assert_eq!(status, 404);
}

/// The samples of the labelled metric `family` whose labels start with `labels`, over the
/// nodes in `ids`: their sum and how many there are.
fn samples(cluster: &ProcessCluster, ids: &[i32], family: &str, labels: &str) -> (f64, usize) {
    let prefix = format!("{family}{{{labels}");
    let mut total = (0.0, 0);
    for id in ids {
        let Some((_, body)) = http_get(&cluster.admin_address(*id), "/metrics") else {
            continue;
        };
        for line in body.lines().filter(|l| l.starts_with(&prefix)) {
            if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                total.0 += v;
                total.1 += 1;
            }
        }
    }
    total
}

#[test]
fn consumer_group_lag_follows_commits_and_leaders() {
    let mut cluster = ProcessCluster::start(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=200",
        ],
    );
    let all = [1, 2, 3];
    cluster.create_topic("lagged", 3);
    // n records to each of the three partitions
    let produce = |prefix: &str, n: usize| {
        for p in ["0", "1", "2"] {
            let lines: Vec<String> = (0..n).map(|i| format!("{prefix}-{p}-{i}")).collect();
            let settings = ["-p", p, "-X", "acks=all"];
            let out = kcat_produce_with(&cluster.bootstrap(), "lagged", &settings, &lines);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let reset = |cluster: &ProcessCluster, how: &[&str]| {
        let mut args = vec!["group", "reset-offsets", "--topic", "lagged", "--execute"];
        args.extend(how);
        args.push("lagging");
        sluice_system_tests::check(&cluster.sluice(&args), "sluice group reset-offsets");
    };
    let lag = |cluster: &ProcessCluster, ids: &[i32]| {
        samples(
            cluster,
            ids,
            "sluice_consumer_group_lag",
            r#"group="lagging""#,
        )
    };
    produce("first", 100);
    // no commits yet: no lag samples for the group
    assert_eq!(lag(&cluster, &all), (0.0, 0));

    reset(&cluster, &["--to-earliest"]);
    wait_until("lag 300 over 3 partitions", || {
        lag(&cluster, &all) == (300.0, 3)
    });
    reset(&cluster, &["--to-latest"]);
    wait_until("lag 0", || lag(&cluster, &all) == (0.0, 3));
    produce("second", 30);
    wait_until("lag 90", || lag(&cluster, &all) == (90.0, 3));
    reset(&cluster, &["--shift-by", "-10"]);
    wait_until("lag 120", || lag(&cluster, &all) == (120.0, 3));

    // each partition is reported by its leader only: after a kill the new leaders take
    // over the samples, the totals do not change
    let rows = cluster.describe("lagged").unwrap();
    let victim = rows[0].leader;
    cluster.kill(victim);
    let live: Vec<i32> = all.iter().copied().filter(|id| *id != victim).collect();
    wait_until(
        "the killed leader's partitions reported by the new leaders",
        || lag(&cluster, &live) == (120.0, 3),
    );
}
