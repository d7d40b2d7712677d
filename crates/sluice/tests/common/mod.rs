//! Helpers the process-level tests share: a child process killed on drop, running a
//! client to completion with a bound, ports from the OS, and where the test clients live.
//! Each test binary uses a subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `sluice broker` process, killed (SIGKILL) on drop.
pub struct NodeProcess {
    pub child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `child` prints on its (piped) stdout, as they come.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Ports the OS hands out now, released for the processes to bind: a voter list (or a
/// bootstrap list a restarted node must keep) has to be known before the processes start,
/// which makes this small race unavoidable.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv python with the Kafka clients (scripts/install-kafka-clients.sh), or
/// `SLUICE_TEST_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".kafka-clients/venv/bin/python"))
}

/// Runs a client to completion with `input` on stdin, bounded by `timeout`.
pub fn run(mut command: Command, input: &[u8], timeout: Duration) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {command:?} (scripts/install-kafka-clients.sh installs it): {e}")
    });
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // a client that exits early closes its stdin: not our failure
        let _ = stdin.write_all(&input);
    });
    let output = run_to_end(child, timeout);
    let _ = writer.join();
    output
}

/// Waits for `child` to finish (killing it and failing past `timeout`), with its output.
pub fn run_to_end(child: Child, timeout: Duration) -> Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} did not finish within {timeout:?}");
        }
    }
}

/// Fails the test, with the process's output, unless it succeeded.
pub fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
