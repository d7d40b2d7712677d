//! Checkpoint files, written atomically: write `NAME.tmp`, fsync it, rename over `NAME`,
//! fsync the directory. A reader sees the old file or the new one, never a mix. (The
//! leader-epoch checkpoint may be written without the fsyncs on the append path, and
//! made durable later: see `leader_epoch`.)
//!
//! Two formats, both Kafka's: offset checkpoints (`recovery-point-offset-checkpoint`,
//! `replication-offset-checkpoint`) hold "0\n<count>\n<topic> <partition> <offset>\n...";
//! the leader-epoch checkpoint holds "0\n<count>\n<epoch> <start offset>\n...".

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_record::{LeaderEpoch, Offset, TopicPartition};

use crate::{LogError, Result};

const VERSION: &str = "0";

/// Replaces `path` with `contents` atomically and durably.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    replace_file(path, contents, true)
}

/// Replaces `path` with `contents` atomically; durably only when `sync` (otherwise a
/// process crash keeps it, the page cache holding it, but a power loss may not:
/// [`sync_file_and_dir`] makes it durable later).
pub(crate) fn replace_file(path: &Path, contents: &[u8], sync: bool) -> Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp).map_err(LogError::io(&tmp))?;
    file.write_all(contents).map_err(LogError::io(&tmp))?;
    if sync {
        file.sync_all().map_err(LogError::io(&tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(LogError::io(path))?;
    if let (true, Some(dir)) = (sync, path.parent()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a file written by [`replace_file`] without `sync` durable: its data, then the
/// rename in its directory. A file that is gone (its partition was deleted) needs nothing.
pub(crate) fn sync_file_and_dir(path: &Path) -> Result<()> {
    sync_if_present(path)?;
    match path.parent() {
        Some(dir) => sync_if_present(dir),
        None => Ok(()),
    }
}

/// fsyncs the file or directory at `path` through a descriptor opened for it (on Linux
/// that writes back every dirty page of the file, those dirtied through a memory map
/// included); one that is gone (deleted by retention, truncation or topic deletion
/// meanwhile) needs nothing.
pub(crate) fn sync_if_present(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(file) => file.sync_all().map_err(LogError::io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(path)(e)),
    }
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsyncs a directory so that renames and new files in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io(dir))
}

fn read_lines(path: &Path) -> Result<Option<Vec<String>>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.lines().map(str::to_owned).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io(path)(e)),
    }
}

fn parse_body(path: &Path, lines: &[String]) -> Result<Vec<Vec<String>>> {
    let corrupt = |reason: String| LogError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let version = lines.first().ok_or_else(|| corrupt("empty file".into()))?;
    if version.trim() != VERSION {
        return Err(corrupt(format!("unknown version {version:?}")));
    }
    let count: usize = lines
        .get(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| corrupt("missing entry count".into()))?;
    let entries: Vec<Vec<String>> = lines[2..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    if entries.len() != count {
        return Err(corrupt(format!(
            "expected {count} entries, found {}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// A partition → offset checkpoint file (recovery points, high watermarks).
pub struct OffsetCheckpointFile {
    path: PathBuf,
}

impl OffsetCheckpointFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        OffsetCheckpointFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, offsets: &BTreeMap<TopicPartition, Offset>) -> Result<()> {
        let mut out = format!("{VERSION}\n{}\n", offsets.len());
        for (tp, offset) in offsets {
            out.push_str(&format!("{} {} {}\n", tp.topic, tp.partition, offset.0));
        }
        write_atomically(&self.path, out.as_bytes())
    }

    /// Reads the file; a missing file is an empty checkpoint.
    pub fn read(&self) -> Result<BTreeMap<TopicPartition, Offset>> {
        let Some(lines) = read_lines(&self.path)? else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for fields in parse_body(&self.path, &lines)? {
            let parsed = match fields.as_slice() {
                [topic, partition, offset] => partition
                    .parse::<i32>()
                    .ok()
                    .zip(offset.parse::<i64>().ok())
                    .map(|(p, o)| (TopicPartition::new(topic.clone(), p), Offset(o))),
                _ => None,
            };
            let (tp, offset) = parsed.ok_or_else(|| LogError::CorruptCheckpoint {
                path: self.path.clone(),
                reason: format!("bad entry {fields:?}"),
            })?;
            out.insert(tp, offset);
        }
        Ok(out)
    }
}

/// Writes the leader-epoch checkpoint: (epoch, start offset) pairs in order; durably
/// only when `sync`.
pub(crate) fn write_epoch_entries(
    path: &Path,
    entries: &[(LeaderEpoch, Offset)],
    sync: bool,
) -> Result<()> {
    let mut out = format!("{VERSION}\n{}\n", entries.len());
    for (epoch, offset) in entries {
        out.push_str(&format!("{} {}\n", epoch.0, offset.0));
    }
    replace_file(path, out.as_bytes(), sync)
}

pub(crate) fn read_epoch_entries(path: &Path) -> Result<Vec<(LeaderEpoch, Offset)>> {
    let Some(lines) = read_lines(path)? else {
        return Ok(Vec::new());
    };
    parse_body(path, &lines)?
        .into_iter()
        .map(|fields| match fields.as_slice() {
            [epoch, offset] => epoch
                .parse::<i32>()
                .ok()
                .zip(offset.parse::<i64>().ok())
                .map(|(e, o)| (LeaderEpoch(e), Offset(o)))
                .ok_or_else(|| format!("bad entry {fields:?}")),
            _ => Err(format!("bad entry {fields:?}")),
        })
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|reason| LogError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_checkpoint_round_trips_and_is_kafkas_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetCheckpointFile::new(dir.path().join("replication-offset-checkpoint"));
        assert!(file.read().unwrap().is_empty());
        let mut offsets = BTreeMap::new();
        offsets.insert(TopicPartition::new("a-b", 0), Offset(42));
        offsets.insert(TopicPartition::new("c", 7), Offset(0));
        file.write(&offsets).unwrap();
        assert_eq!(file.read().unwrap(), offsets);
        let text = fs::read_to_string(file.path()).unwrap();
        assert_eq!(text, "0\n2\na-b 0 42\nc 7 0\n");
        assert!(!tmp_path(file.path()).exists());
    }

    #[test]
    fn corrupt_checkpoints_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        for bad in ["", "1\n0\n", "0\n2\nt 0 1\n", "0\n1\nt x 1\n", "0\nz\n"] {
            fs::write(&path, bad).unwrap();
            let err = OffsetCheckpointFile::new(&path).read().unwrap_err();
            assert!(matches!(err, LogError::CorruptCheckpoint { .. }), "{bad:?}");
        }
    }

    #[test]
    fn epoch_checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        let entries = vec![(LeaderEpoch(0), Offset(0)), (LeaderEpoch(3), Offset(120))];
        write_epoch_entries(&path, &entries, true).unwrap();
        assert_eq!(read_epoch_entries(&path).unwrap(), entries);
        assert_eq!(fs::read_to_string(&path).unwrap(), "0\n2\n0 0\n3 120\n");
    }
}
