//! `sluice demo` end to end, as a newcomer runs it: three nodes start as its children,
//! a partition leader is killed and replaced, the node comes back into the ISR, every
//! acknowledged record is read back exactly once, and nothing is left behind — no
//! process, no directory — also when it is interrupted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_system_tests::{run, sluice_bin, NodeProcess};

/// The demo's directory, from its first line.
fn demo_dir(out: &str) -> String {
    out.lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_string()
}

/// Whether any process still runs with `dir` in its command line.
fn processes_using(dir: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", dir])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_demo_shows_a_failover_and_every_acknowledged_record_once_then_leaves_nothing() {
    let mut command = Command::new(sluice_bin());
    command.args(["demo", "--rate", "300", "--phase", "3s"]);
    let out = run(command, b"", Duration::from_secs(150));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the leader of demo-0"), "{stdout}");
    assert!(stdout.contains("took over demo-0"), "{stdout}");
    assert!(stdout.contains("is back in the ISR of demo-0"), "{stdout}");
    assert!(
        stdout.contains("every acknowledged record present exactly once? yes (0 missing, 0 duplicated, 0 at another offset"),
        "{stdout}"
    );
    let dir = demo_dir(&stdout);
    assert!(dir.contains("sluice-demo-"), "{stdout}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert!(!processes_using(&dir), "nodes of {dir} still running");
}

#[test]
fn an_interrupted_demo_stops_its_nodes_and_removes_its_directory() {
    let mut demo = NodeProcess {
        child: Command::new(sluice_bin())
            .args(["demo", "--rate", "100", "--phase", "30s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sluice demo"),
    };
    let lines = sluice_system_tests::stdout_lines(&mut demo.child);
    let mut stderr = demo.child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let first = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo's first line");
    let dir = demo_dir(&first);
    let deadline = Instant::now() + Duration::from_secs(90);
    // producing: the cluster is up
    loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = demo.child.kill();
            panic!(
                "the demo did not start producing; it said: {}",
                errors.join().unwrap_or_default()
            );
        };
        if line.contains("acknowledged") {
            break;
        }
    }
    assert!(processes_using(&dir), "the nodes run while the demo does");
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    while demo.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert!(!processes_using(&dir), "nodes of {dir} still running");
}
