//! `sluice verify` — the chaos suite's workload and checker on their own — against a real
//! three-node cluster (processes on loopback, ports from the OS): it passes through a
//! partition leader's kill -9 and restart, its history holds every kind of event the
//! checker reads, and `--check` of a history that lost an acknowledged write fails and
//! names it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_system_tests::progress::wait_until;
use sluice_system_tests::{sluice_bin, Layout, NodeProcess, ProcessCluster};

fn count(history: &str, kind: &str) -> usize {
    let needle = format!("\"type\":\"{kind}\"");
    history.lines().filter(|l| l.contains(&needle)).count()
}

#[test]
fn sluice_verify_passes_through_a_leader_kill_and_fails_a_history_that_lost_a_write() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut verify = NodeProcess {
        child: Command::new(sluice_bin())
            .args(["verify", "-b", &cluster.bootstrap(), "--topic", "verified"])
            .args(["--partitions", "3", "--rate", "300", "--duration", "20s"])
            .args(["--message-timeout", "20s", "--final-read-timeout", "60s"])
            .arg("--history")
            .arg(&history)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("run sluice verify"),
    };
    wait_until("the workload's first acknowledgements", || {
        std::fs::read_to_string(&history).is_ok_and(|h| count(&h, "ok") > 100)
    });
    let leader = cluster.leader_of("verified", 0);
    cluster.kill(leader);
    std::thread::sleep(Duration::from_secs(4));
    cluster.restart(leader);

    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = verify.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sluice verify did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&stdout).unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(out.contains("\nVALID\n"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lost", "0", "ok"]),
        "{out}"
    );
    let recorded = std::fs::read_to_string(&history).unwrap();
    for kind in [
        "start",
        "invoke",
        "ok",
        "assign",
        "poll",
        "commit",
        "watermark",
        "final_end",
        "final",
    ] {
        assert!(count(&recorded, kind) > 0, "no {kind} event in the history");
    }
    assert!(
        recorded.contains("\"leader_epoch\":"),
        "the final read records leader epochs"
    );
    assert!(count(&recorded, "ok") > 3000, "{out}");

    // the same history with one more acknowledged value, never written: lost
    let doctored = dir.path().join("doctored.jsonl");
    let mut text = recorded.clone();
    text.push_str("{\"type\":\"invoke\",\"time_ms\":1,\"producer\":0,\"value\":\"ghost\"}\n");
    text.push_str(
        "{\"type\":\"ok\",\"time_ms\":2,\"producer\":0,\"value\":\"ghost\",\"partition\":0,\"offset\":3}\n",
    );
    std::fs::write(&doctored, text).unwrap();
    let checked = Command::new(sluice_bin())
        .args(["verify", "--check"])
        .arg(&doctored)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{out}");
    assert!(
        out.contains("ghost: acknowledged at 0/3, absent at the end"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["lost", "1", "FAIL"]),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&checked.stderr).contains("verification failed"));
}
