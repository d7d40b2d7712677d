//! The storage tools as a user runs them: `sluice append-log` writes lines from stdin into a
//! partition directory, `sluice dump-log` prints it in kafka-dump-log's format, and bad
//! input gets a one-line error and a non-zero exit without touching stored data. A damaged
//! segment is dumped up to the first bad batch, which is named with its position and reason
//! (Kafka's tool prints such a batch as `isvalid: false`; we stop there, as recovery does).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sluice(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    // a process that refuses its arguments exits without reading stdin: a broken pipe
    // here is its answer, not a test failure
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("write stdin"),
    }
    child.wait_with_output().expect("wait for sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn append(dir: &Path, codec: &str, lines: &str) -> Output {
    sluice(
        &[
            "append-log",
            "--dir",
            dir.to_str().unwrap(),
            "orders-3",
            "--batch-records",
            "4",
            "--compression",
            codec,
        ],
        lines.as_bytes(),
    )
}

#[test]
fn appended_lines_dump_back_with_offsets_and_payloads() {
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..10).map(|i| format!("line-{i}\n")).collect();
        let out = append(dir.path(), codec, &lines);
        assert!(out.status.success(), "{codec}: {}", text(&out.stderr));
        let segment = dir.path().join("orders-3/00000000000000000000.log");
        let out = sluice(
            &["dump-log", "--print-data-log", segment.to_str().unwrap()],
            b"",
        );
        assert!(out.status.success(), "{codec}: {}", text(&out.stderr));
        let dump = text(&out.stdout);
        // 10 records in batches of 4: offsets 0-3, 4-7, 8-9
        let batches: Vec<&str> = dump
            .lines()
            .filter(|l| l.starts_with("baseOffset:"))
            .collect();
        assert_eq!(batches.len(), 3, "{codec}:\n{dump}");
        assert!(batches[2].starts_with("baseOffset: 8 lastOffset: 9 count: 2"));
        for b in &batches {
            assert!(b.contains(&format!("compresscodec: {codec}")), "{b}");
            assert!(b.contains("isvalid: true"), "{b}");
        }
        for i in 0..10 {
            let record = format!("| offset: {i} ");
            let line = dump
                .lines()
                .find(|l| l.starts_with(&record))
                .unwrap_or_else(|| panic!("{codec}: no record {i} in\n{dump}"));
            assert!(line.ends_with(&format!("payload: line-{i}")), "{line}");
        }
    }
}

#[test]
fn a_second_run_appends_after_the_first() {
    let dir = tempfile::tempdir().unwrap();
    assert!(append(dir.path(), "none", "a\nb\n").status.success());
    let out = append(dir.path(), "none", "c\n");
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("log end offset 3"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bad_input_gets_one_line_errors_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    assert!(append(dir.path(), "none", "kept\n").status.success());
    let segment = dir.path().join("orders-3/00000000000000000000.log");
    let before = std::fs::read(&segment).unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["append-log", "--dir", d, "no-partition-number"],
        vec![
            "append-log",
            "--dir",
            d,
            "orders-3",
            "--compression",
            "brotli",
        ],
        vec![
            "append-log",
            "--dir",
            d,
            "orders-3",
            "--append-mode",
            "fast",
        ],
        vec!["dump-log", "/nonexistent/00000000000000000000.log"],
    ] {
        let out = sluice(&args, b"x\n");
        assert!(!out.status.success(), "{args:?} should fail");
        let err = text(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(&segment).unwrap(), before);
}

#[test]
fn dump_log_reports_a_corrupt_batch_instead_of_crashing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(append(dir.path(), "none", "a\nb\nc\nd\ne\n")
        .status
        .success());
    let segment = dir.path().join("orders-3/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // inside the second batch's records: its CRC no longer matches
    std::fs::write(&segment, &bytes).unwrap();
    let out = sluice(&["dump-log", segment.to_str().unwrap()], b"");
    let dump = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // the valid first batch is printed, then the dump says where and why it stopped
    let batches: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("baseOffset:"))
        .collect();
    assert_eq!(batches.len(), 1, "{dump}");
    assert!(batches[0].contains("isvalid: true"));
    let size: usize = batches[0]
        .split(" size: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("size field");
    let last = dump.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "Invalid batch at position {size}: CRC32C mismatch"
        )),
        "{dump}"
    );
}
