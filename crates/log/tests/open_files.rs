//! File descriptors a log keeps open (issue 19): one per segment's `.log`, none for its
//! indexes, which are read and written through their maps; and the budget of open segment
//! files. In a test binary of their own, one test at a time (`SERIAL`): they count this
//! process's descriptors, which other tests running beside them would move.

mod common;

use common::*;
use sluice_log::{segment_file, INDEX_SUFFIX};
use sluice_record::{Compression, LeaderEpoch, Offset};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_log_keeps_one_descriptor_per_segment_and_its_indexes_keep_none() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = small_config(mode);
        let mut log = open(dir.path(), &config);
        for i in 0..200 {
            log.append_as_leader(
                &mut batch(3, T0 + i, 100, Compression::None),
                LeaderEpoch(0),
                T0,
            )
            .unwrap();
        }
        let segments = log.segments().count();
        assert!(segments > 5, "{segments} segments");
        let end = log.log_end_offset();
        log.close().unwrap();
        drop(log);

        let before = open_descriptors();
        let mut log = open(dir.path(), &config);
        assert_eq!(
            open_descriptors() - before,
            segments,
            "{mode:?}: one descriptor per segment"
        );
        // appending (index entries, disk reserved for them), flushing, rolling and
        // reading leave no descriptor behind
        let mut rolled = log.segments().count();
        for i in 0..200 {
            log.append_as_leader(
                &mut batch(3, T0 + i, 100, Compression::None),
                LeaderEpoch(1),
                T0,
            )
            .unwrap();
        }
        rolled = log.segments().count() - rolled;
        log.flush().unwrap();
        let log_end = log.log_end_offset();
        assert!(log.read(Offset(0), 1 << 20, log_end, true).is_ok());
        assert!(log.read(end, 1 << 20, log_end, true).is_ok());
        assert_eq!(
            open_descriptors() - before,
            segments + rolled,
            "{mode:?}: still one per segment after appends, rolls and a flush"
        );
        // the indexes work without one: a lookup in every segment finds its records
        for s in log.segments() {
            assert!(segment_file(dir.path(), s.base_offset(), INDEX_SUFFIX).exists());
        }
        let offsets: Vec<i64> = log
            .segments()
            .map(|s| s.base_offset().0)
            .collect::<Vec<_>>();
        for base in offsets {
            let read = log
                .read(Offset(base), 100, log.log_end_offset(), true)
                .unwrap();
            assert!(read.region.is_some(), "{mode:?}: reads segment {base}");
        }
        log.close().unwrap();
        drop(log);
        assert_eq!(
            open_descriptors(),
            before,
            "{mode:?}: closing releases them"
        );
    }
}

/// Issue 19's file-descriptor budget: with room for 4 segment files, a log of dozens of
/// segments keeps at most about 4 open; reads and appends through closed ones open them
/// again and see the same bytes; a region handed out for sendfile stays readable after
/// its segment's descriptor was closed by the budget.
#[test]
fn a_budget_of_open_segment_files_closes_idle_ones_and_no_reader_notices() {
    use sluice_log::{LogConfig, OpenFileBudget, LOG_SUFFIX};
    use std::os::fd::AsFd;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenFileBudget::new(4);
        let config = LogConfig {
            open_files: budget.clone(),
            ..small_config(mode)
        };
        let before = open_descriptors();
        let mut log = open(dir.path(), &config);
        for i in 0..600 {
            log.append_as_leader(
                &mut batch(3, T0 + i, 100, Compression::None),
                LeaderEpoch(0),
                T0,
            )
            .unwrap();
        }
        let segments: Vec<Offset> = log.segments().map(|s| s.base_offset()).collect();
        assert!(segments.len() > 20, "{} segments", segments.len());
        assert!(
            budget.open_now() <= 4,
            "{mode:?}: {} open",
            budget.open_now()
        );
        assert!(
            open_descriptors() - before <= 5,
            "{mode:?}: {} descriptors for {} segments",
            open_descriptors() - before,
            segments.len()
        );
        // a region of the first segment, taken before its descriptor is closed
        let first = log
            .read(Offset(0), 1 << 20, log.log_end_offset(), true)
            .unwrap()
            .region
            .unwrap();
        // every segment reads back what is on disk, through closed and open descriptors
        let on_disk =
            |base: Offset| std::fs::read(segment_file(dir.path(), base, LOG_SUFFIX)).unwrap();
        // (in mmap mode the active file runs on in preallocated zeros past its records)
        for s in log.segments() {
            let bytes = s.whole_region().unwrap().read_to_vec().unwrap();
            let disk = on_disk(s.base_offset());
            assert!(
                disk.len() >= bytes.len() && disk[..bytes.len()] == bytes[..],
                "{mode:?}: segment {:?} reads what is on disk",
                s.base_offset()
            );
        }
        let (reopens, evictions) = budget.reopens_and_evictions();
        assert!(
            reopens > 0 && evictions > 0,
            "{mode:?}: {reopens} reopens, {evictions} evictions"
        );
        assert!(
            !log.segments().next().unwrap().log_file_is_open(),
            "{mode:?}: the first segment's descriptor was closed by the budget"
        );
        // the region still sends its bytes (its own reference keeps the file open)
        let out_path = dir.path().join("sent");
        let out = std::fs::File::create(&out_path).unwrap();
        let mut offset = first.position as i64;
        let mut left = first.length as usize;
        while left > 0 {
            let sent = nix::sys::sendfile::sendfile(
                out.as_fd(),
                first.file().as_fd(),
                Some(&mut offset),
                left,
            )
            .unwrap();
            assert!(sent > 0);
            left -= sent;
        }
        drop(out);
        let expected =
            &on_disk(Offset(0))[first.position as usize..(first.position + first.length) as usize];
        assert_eq!(
            std::fs::read(&out_path).unwrap(),
            expected,
            "{mode:?}: sendfile across an eviction"
        );
        // appends to an active segment whose descriptor was closed open it again
        let end = log.log_end_offset();
        for i in 0..50 {
            log.append_as_leader(
                &mut batch(3, T0 + 1000 + i, 100, Compression::None),
                LeaderEpoch(0),
                T0,
            )
            .unwrap();
        }
        let read = log.read(end, 1 << 20, log.log_end_offset(), true).unwrap();
        assert!(read.region.is_some(), "{mode:?}: reads the new records");
        drop(read);
        log.flush().unwrap();
        assert!(budget.open_now() <= 4);
        log.close().unwrap();
        drop(log);
        drop(first);
        assert_eq!(budget.open_now(), 0);
        assert_eq!(
            open_descriptors(),
            before,
            "{mode:?}: closing releases them"
        );
    }
}
