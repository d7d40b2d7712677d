//! File descriptors a log keeps open (issue 19): one per segment's `.log`, none for its
//! indexes, which are read and written through their maps. Alone in its test binary:
//! it counts this process's descriptors, which other tests running beside it would move.

mod common;

use common::*;
use sluice_log::{segment_file, INDEX_SUFFIX};
use sluice_record::{Compression, LeaderEpoch, Offset};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_log_keeps_one_descriptor_per_segment_and_its_indexes_keep_none() {
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
