//! A full file system (a small tmpfs; mounting it needs root, as CI has): every append mode
//! fails with an I/O error (ENOSPC) — never SIGBUS through a mapped index or segment, which
//! would end the process — leaves the log as it was, and appends again once space returns.
//! Before index space was reserved with `posix_fallocate`, an index entry written through
//! the mapping into a sparse hole of a full tmpfs killed the broker with SIGBUS.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;
use sluice_log::{LogConfig, LogError};
use sluice_record::{Compression, LeaderEpoch, Offset};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size_kib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs: this test needs root, as CI has"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// One record of 10 bytes: small batches make many index entries per segment.
fn small() -> Vec<u8> {
    batch(1, T0, 10, Compression::None)
}

fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    while file.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
    while file.write(&[0u8; 1]).is_ok_and(|n| n > 0) {}
}

#[test]
fn a_full_disk_fails_appends_cleanly_in_every_mode_and_they_resume_with_space() {
    for mode in MODES {
        let disk = Tmpfs::mount(4096);
        let config = LogConfig {
            segment_bytes: 256 * 1024,
            index_interval_bytes: 64,
            index_size_max_bytes: 1024 * 1024,
            append_mode: mode,
            ..LogConfig::default()
        };
        let dir = disk.0.path().join("log");
        let mut log = open(&dir, &config);
        // one append first: the segment's own space is reserved ahead (mmap, hybrid), so
        // the appends after the disk fills go on into it and the index must grow too
        log.append_as_leader(&mut small(), LeaderEpoch(0), T0)
            .unwrap();
        let mut appended = 1i64;
        let filler = disk.0.path().join("filler");
        fill(&filler);
        let error = loop {
            match log.append_as_leader(
                &mut batch(4, T0, 200, Compression::None),
                LeaderEpoch(0),
                T0,
            ) {
                Ok(info) => {
                    assert_eq!(info.base_offset, Offset(appended));
                    appended += 4;
                }
                Err(e) => break e,
            }
            assert!(
                appended < 1_000_000,
                "{mode:?}: a full disk never refused an append"
            );
        };
        assert!(
            matches!(&error, LogError::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{mode:?}: {error}"
        );
        assert_eq!(
            log.log_end_offset(),
            Offset(appended),
            "{mode:?}: nothing half-written counts"
        );
        std::fs::remove_file(&filler).unwrap();
        for _ in 0..50 {
            log.append_as_leader(
                &mut batch(4, T0, 200, Compression::None),
                LeaderEpoch(0),
                T0,
            )
            .unwrap_or_else(|e| panic!("{mode:?}: append after space returned: {e}"));
        }
        let end = appended + 200;
        assert_eq!(log.log_end_offset(), Offset(end));
        let read = log
            .read(Offset::ZERO, usize::MAX, Offset(end), true)
            .unwrap_or_else(|e| panic!("{mode:?}: read back: {e}"));
        assert!(read.region.is_some());
        drop(log);
        // every batch is whole after a crash-style reopen
        let log = reopen_unclean(&dir, &config);
        assert_eq!(log.log_end_offset(), Offset(end), "{mode:?}");
    }
}
