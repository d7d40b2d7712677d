//! What a new user runs into first, each checked with the real binary: a client command
//! against a port that never answers gives up after `--timeout`; out-of-range settings
//! are refused at startup naming the key; `dump-log` fails on a file that is not a log; a
//! storage error names the path it failed on.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use sluice_system_tests::{run, sluice_bin};

/// Runs `sluice ARGS` (bounded by 60 s) and returns (success, stdout, stderr).
fn sluice(args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(sluice_bin());
    command.args(args).env_remove("SLUICE_BROKERS");
    let out = run(command, b"", Duration::from_secs(60));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_command_against_a_port_that_never_answers_gives_up_after_its_timeout() {
    // the kernel accepts connections into the backlog; nothing ever answers
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let (ok, _, err) = sluice(&["topic", "list", "-b", &address, "--timeout", "1s"]);
    assert!(!ok);
    assert!(err.contains("no answer to Metadata within 1s"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (ok, _, err) = sluice(&["topic", "list", "-b", &address, "--timeout", "soon"]);
    assert!(!ok);
    assert!(err.contains("not a duration"), "{err}");
}

/// Starts a single node with `extra` overrides; it must refuse to start.
fn refused_at_startup(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log_dirs = format!("log.dirs={}", dir.path().join("data").display());
    let mut args = vec![
        "broker",
        "--override",
        "node.id=1",
        "--override",
        "controller.quorum.voters=1@127.0.0.1:0",
        "--override",
        "listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:0",
        "--override",
        &log_dirs,
    ];
    for e in extra {
        args.extend(["--override", e]);
    }
    let (ok, out, err) = sluice(&args);
    assert!(!ok, "started with {extra:?}: {out}");
    assert!(!out.contains("ready"), "{out}");
    err
}

#[test]
fn out_of_range_settings_are_refused_at_startup_naming_the_key() {
    for (setting, key) in [
        ("num.partitions=-4", "num.partitions"),
        ("default.replication.factor=0", "default.replication.factor"),
        (
            "leader.imbalance.per.broker.percentage=101",
            "leader.imbalance.per.broker.percentage",
        ),
        ("producer.id.expiration.ms=0", "producer.id.expiration.ms"),
    ] {
        let err = refused_at_startup(&[setting]);
        assert!(err.contains(key), "{setting}: {err}");
    }
}

#[test]
fn a_storage_error_names_the_path_it_failed_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let log_dirs = format!("log.dirs={}", file.join("data").display());
    let err = refused_at_startup(&[&log_dirs]);
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn dump_log_fails_on_a_file_that_is_not_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("00000000000000000000.log");
    std::fs::write(&file, b"hello, this is not a Kafka log segment\n").unwrap();
    let (ok, out, err) = sluice(&["dump-log", &file.display().to_string()]);
    assert!(!ok, "{out}");
    assert!(out.contains("Invalid batch at position 0"), "{out}");
    assert!(err.contains("not a log segment"), "{err}");
    // an empty segment is a valid (empty) log
    let empty = dir.path().join("00000000000000000100.log");
    std::fs::write(&empty, b"").unwrap();
    let (ok, out, _) = sluice(&["dump-log", &empty.display().to_string()]);
    assert!(ok, "{out}");
}

#[test]
fn bench_produce_refuses_bad_flags_in_one_line_before_connecting() {
    // nothing listens on port 1: the flags are checked first
    for (flag, value, says) in [
        ("--compression", "brotli", "unknown compression \"brotli\""),
        ("--acks", "2", "acks"),
        ("--max-in-flight", "0", "--max-in-flight must be 1 or more"),
    ] {
        let (ok, _, err) = sluice(&[
            "bench",
            "produce",
            "-b",
            "127.0.0.1:1",
            "--topic",
            "t",
            flag,
            value,
        ]);
        assert!(!ok);
        assert!(err.contains(says), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // more in flight than a broker remembers per producer
    let (ok, _, err) = sluice(&[
        "bench",
        "produce",
        "-b",
        "127.0.0.1:1",
        "--topic",
        "t",
        "--idempotence",
        "--max-in-flight",
        "6",
    ]);
    assert!(!ok);
    assert!(err.contains("at most 5 with --idempotence"), "{err}");
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[test]
fn a_node_raises_its_open_files_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    // started with a soft limit of 256, as a login shell's default of 1,024 or lower would be
    let script = format!(
        "ulimit -S -n 256 && exec {} broker --override node.id=1 \
         --override controller.quorum.voters=1@127.0.0.1:0 \
         --override listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:0 \
         --override log.dirs={}",
        sluice_bin().display(),
        dir.path().join("data").display()
    );
    let mut node = sluice_system_tests::NodeProcess {
        child: Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a node"),
    };
    let lines = sluice_system_tests::stdout_lines(&mut node.child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the node says ready");
        if line == "ready" {
            break;
        }
    }
    let (soft, hard) = open_files_limits(node.child.id());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert_ne!(soft, "256");
}
