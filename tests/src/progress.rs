//! Following a long-running client script from a test: the acknowledged-record count it
//! rewrites in a progress file, and the "partition offset value" lines it writes at the end.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::process_cluster::WAIT;

/// The count in a progress file (0 before the first write).
pub fn read_progress(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the script reports at least `target` acknowledged records; panics (with the
/// tail of its `log`) if it exits first, or if it stalls for twice `WAIT`.
pub fn wait_progress(path: &Path, target: u64, script: &mut Child, log: &Path) {
    let deadline = Instant::now() + WAIT * 2;
    while read_progress(path) < target {
        if let Ok(Some(status)) = script.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail = &log[log.floor_char_boundary(log.len().saturating_sub(2000))..];
            panic!("the client exited early: {status}\n{tail}");
        }
        assert!(
            Instant::now() < deadline,
            "the client stalled at {} acknowledged records (waiting for {target})",
            read_progress(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every acknowledged record was read, at its acknowledged offset (or, with an offset
/// unknown (-1), somewhere in its partition). `read`: (partition, offset, value).
pub fn assert_acknowledged_were_read(acks: &[(i32, i64, String)], read: &[(i32, i64, String)]) {
    let at: std::collections::HashMap<(i32, i64), &str> = read
        .iter()
        .map(|(p, o, v)| ((*p, *o), v.as_str()))
        .collect();
    let in_partition: std::collections::HashSet<(i32, &str)> =
        read.iter().map(|(p, _, v)| (*p, v.as_str())).collect();
    for (p, o, v) in acks {
        if *o < 0 {
            assert!(
                in_partition.contains(&(*p, v.as_str())),
                "acknowledged record {v} (offset unknown) in partition {p}"
            );
        } else {
            assert_eq!(
                at.get(&(*p, *o)).copied(),
                Some(v.as_str()),
                "acknowledged record {v} at {p}/{o}"
            );
        }
    }
}

/// Polls `ok` every 100 ms until it holds; panics naming `what` after [`WAIT`].
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (partition, offset, value) per "partition offset value" line. An offset the client
/// never learned is written `None` by confluent-kafka and read as -1: librdkafka's
/// idempotent producer acknowledges a batch whose answer was lost once a later batch of
/// the partition succeeds, without its offset.
pub fn read_acks(path: &Path) -> Vec<(i32, i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or_else(|| panic!("line {l:?}"));
            (
                field(0).parse().expect("a partition"),
                match field(1) {
                    "None" => -1,
                    offset => offset.parse().expect("an offset"),
                },
                field(2).to_string(),
            )
        })
        .collect()
}
