//! A full disk (issue 12, item 4), with real processes: node 2's log directory is a 64 MiB
//! tmpfs (mounting it needs root, as the chaos tests do), filled to the last byte while
//! producers write with acks=all. The broker whose log directory cannot take writes gives
//! up its leaderships and leaves every ISR at once, so acks=all goes on with the other two;
//! it says so once in its log and `sluice cluster status` shows it; once space returns it
//! rejoins every ISR by itself, and nothing acknowledged is lost.
//!
//! Before the fix every produce to the partition it led got KAFKA_STORAGE_ERROR for as long
//! as the disk stayed full, and the partitions it followed stalled acks=all until
//! `replica.lag.time.max.ms` dropped it: here the producer's 20 s message timeout expires.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_system_tests::{check, kcat_produce_with, kcat_read_all, Layout, ProcessCluster};

/// A tmpfs mounted at a fresh temp dir, unmounted on drop (after the cluster using it has
/// been dropped: declare it first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs failed ({status}): this test needs root, as CI has"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros into `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // small writes take what whole chunks left
    loop {
        match file.write(&[0u8; 512]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    written
}

/// kcat producing `lines` (keyed, spread over the partitions) with acks=all and its
/// default retries.
fn produce(bootstrap: &str, topic: &str, lines: &[String]) -> std::process::Output {
    kcat_produce_with(bootstrap, topic, &["-K", ":", "-X", "acks=all"], lines)
}

fn offline_lines(cluster: &ProcessCluster, id: i32) -> usize {
    std::fs::read_to_string(cluster.log_path(id))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("the log directory cannot take writes"))
        .count()
}

#[test]
fn a_broker_whose_disk_fills_gives_up_its_partitions_and_rejoins_when_space_returns() {
    let disk = Tmpfs::mount(64);
    let full = 2;
    let data: PathBuf = disk.path().join("data");
    let mut cluster = ProcessCluster::start_with_data_dirs(
        Layout::Combined,
        &[
            "broker.session.timeout.ms=2000",
            "broker.heartbeat.interval.ms=100",
            // the old behaviour dropped the broker only after this: longer than the
            // producer's message timeout
            "replica.lag.time.max.ms=30000",
        ],
        &[(full, data.clone())],
    );
    let topic = "full";
    // 1 MiB segments: each roll asks the disk for space
    cluster.create_topic_with(topic, 3, &["segment.bytes=1048576"]);
    let rows = cluster.describe(topic).unwrap();
    assert!(rows.iter().any(|r| r.leader == full), "{rows:?}");

    // a first round fits, then the disk is filled to the last byte
    let value = "v".repeat(1000);
    let first: Vec<String> = (0..300).map(|i| format!("k{i}:a{i}-{value}")).collect();
    check(
        &produce(&cluster.bootstrap(), topic, &first),
        "kcat before the disk fills",
    );
    let filler = disk.path().join("filler");
    let filled = fill(&filler);
    eprintln!("filled {filled} bytes");

    // 6 MB more, 2 MB per partition: node 2 runs out of space as leader and as follower
    let second: Vec<String> = (0..6000).map(|i| format!("k{i}:b{i}-{value}")).collect();
    let out = produce(&cluster.bootstrap(), topic, &second);
    check(&out, "kcat acks=all while node 2's disk is full");
    let rows = cluster.wait_for(topic, "node 2 leads nothing and is in no ISR", |rows| {
        rows.iter()
            .all(|r| r.leader >= 0 && r.leader != full && !r.isr.contains(&full))
    });
    eprintln!("while full: {rows:?}");
    assert_eq!(
        cluster.exit_status(full),
        None,
        "node 2 keeps running with its disk full (it died of SIGBUS once)"
    );
    if std::env::var_os("SHOW_NODE_LOG").is_some() {
        eprintln!(
            "{}",
            std::fs::read_to_string(cluster.log_path(full)).unwrap_or_default()
        );
    }
    assert_eq!(
        offline_lines(&cluster, full),
        1,
        "the failure is logged once, not per write"
    );
    let status = cluster.sluice(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    eprintln!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("broker {full} ")))
        .expect("a status line for node 2");
    assert!(
        line.contains("fenced") && line.contains("log-dir offline"),
        "cluster status shows the offline log directory: {line}"
    );
    assert!(!status.status.success(), "cluster status fails while it is");

    // space returns: node 2 rejoins every ISR by itself
    std::fs::remove_file(&filler).unwrap();
    cluster.wait_for(topic, "node 2 back in every ISR", |rows| {
        rows.iter().all(|r| r.isr.contains(&full))
    });
    let status = cluster.sluice(&["cluster", "status"]);
    check(&status, "cluster status once space returned");

    // every acknowledged record is there exactly once, and the replicas agree
    let records = kcat_read_all(&cluster.bootstrap(), topic);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, v) in &records {
        *seen
            .entry(v.split('-').next().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    for l in first.iter().chain(&second) {
        let key = l.split_once(':').unwrap().1.split('-').next().unwrap();
        assert!(
            seen.contains_key(key),
            "acknowledged record {key} is missing"
        );
    }
    let mut high_watermarks: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _) in &records {
        let hw = high_watermarks.entry(*p).or_default();
        *hw = (*hw).max(o + 1);
    }
    for (p, hw) in high_watermarks {
        cluster.assert_replicas_identical(topic, p, hw);
    }
    drop(cluster);
    drop(disk);
}
