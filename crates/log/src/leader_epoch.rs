//! The leader-epoch cache (Kafka's `LeaderEpochFileCache`): for each leader epoch, the first
//! offset written in it, persisted in `leader-epoch-checkpoint` after every change.
//! Followers use it (through OffsetForLeaderEpoch) to find where their log diverges from
//! the leader's and truncate only the divergent suffix (KIP-101, KIP-279).
//!
//! A new epoch ([`LeaderEpochCache::assign`], on the append path: a partition's first
//! write after every election, on the leader and on each follower) replaces the file
//! without fsyncs, as Kafka does since KAFKA-15046: the fsyncs cost milliseconds under
//! the log's lock, and every broker of a new topic paid them at once. A process crash
//! keeps the file (the page cache holds it); the log's next flush makes it durable
//! ([`LeaderEpochCache::take_unsynced`]) together with the records it covers, and a
//! clean close does too. A power loss can lose an epoch entry only with the unflushed
//! records of that epoch: such records fail the epoch check (`batch_damage`) and a
//! follower truncates them (the leader's OffsetForLeaderEpoch answer for the epoch it
//! still knows ends before them). Truncations stay durable at once (they are rare, and
//! a truncated epoch must not come back).
//!
//! Invariants: epochs strictly ascend; start offsets ascend.

use std::path::{Path, PathBuf};

use sluice_record::{LeaderEpoch, Offset};

use crate::checkpoint::{read_epoch_entries, write_epoch_entries};
use crate::{LogError, Result};

pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// The epoch that wrote `offset` by a cache's `entries` (None if before the first entry).
pub fn epoch_for_offset(entries: &[EpochEntry], offset: Offset) -> Option<LeaderEpoch> {
    entries
        .iter()
        .rev()
        .find(|e| e.start_offset <= offset)
        .map(|e| e.epoch)
}

pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
    /// The file holds `entries` but was not fsynced since it last changed.
    unsynced: bool,
}

impl LeaderEpochCache {
    /// Loads the checkpoint in `dir` (missing = empty). Entries that break the ordering
    /// invariants make the file corrupt.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let entries: Vec<EpochEntry> = read_epoch_entries(&path)?
            .into_iter()
            .map(|(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            })
            .collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset);
        if !ordered {
            return Err(LogError::CorruptCheckpoint {
                path,
                reason: "epochs or offsets do not ascend".into(),
            });
        }
        Ok(LeaderEpochCache {
            path,
            entries,
            unsynced: false,
        })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.latest().map(|e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset` if it is newer than the latest epoch.
    /// An older epoch is an error (epochs never decrease); the same epoch is a no-op.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> Result<()> {
        if epoch.0 < 0 {
            return Ok(());
        }
        if let Some(latest) = self.latest() {
            if epoch == latest.epoch {
                return Ok(());
            }
            if epoch < latest.epoch {
                return Err(LogError::EpochRegression {
                    epoch,
                    latest: latest.epoch,
                });
            }
        }
        // A newer epoch starting below an older epoch's start means that suffix was
        // truncated without telling us; drop the entries it overrides.
        self.entries.retain(|e| e.start_offset < start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.write(false)
    }

    /// The checkpoint's path if it changed since it was last made durable, and from now on
    /// counted as durable: the caller fsyncs it (`checkpoint::sync_file_and_dir`), outside the
    /// log's lock, and calls [`Self::mark_unsynced`] if that fails.
    pub fn take_unsynced(&mut self) -> Option<PathBuf> {
        std::mem::take(&mut self.unsynced).then(|| self.path.clone())
    }

    pub fn mark_unsynced(&mut self) {
        self.unsynced = true;
    }

    /// Whether the checkpoint changed since it was last made durable.
    pub fn is_unsynced(&self) -> bool {
        self.unsynced
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `requested` and the end offset of
    /// `requested` (the start offset of the next higher epoch, or the log end offset for
    /// the latest epoch). `(NONE, NONE)` when the epoch is unknown or newer than all.
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end_offset: Offset,
    ) -> (LeaderEpoch, Offset) {
        let undefined = (LeaderEpoch::NONE, Offset::NONE);
        if requested.0 < 0 {
            return undefined;
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end_offset);
        }
        let Some(higher) = self.entries.iter().find(|e| e.epoch > requested) else {
            return undefined;
        };
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        }
    }

    /// The epoch that wrote `offset` (None if before the first entry).
    pub fn epoch_for_offset(&self, offset: Offset) -> Option<LeaderEpoch> {
        epoch_for_offset(&self.entries, offset)
    }

    /// After the log was truncated to `end_offset`: drop epochs that start at or after it.
    pub fn truncate_from_end(&mut self, end_offset: Offset) -> Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.flush()?;
        }
        Ok(())
    }

    /// After the log start moved to `start_offset`: drop epochs that end before it and let
    /// the one that covers it start there.
    pub fn truncate_from_start(&mut self, start_offset: Offset) -> Result<()> {
        let covering = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        let Some(i) = covering else {
            return Ok(());
        };
        if i == 0 && self.entries[0].start_offset == start_offset {
            return Ok(());
        }
        self.entries.drain(..i);
        self.entries[0].start_offset = start_offset;
        self.flush()
    }

    pub fn clear(&mut self) -> Result<()> {
        self.entries.clear();
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.write(true)
    }

    fn write(&mut self, sync: bool) -> Result<()> {
        let pairs: Vec<(LeaderEpoch, Offset)> = self
            .entries
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect();
        write_epoch_entries(&self.path, &pairs, sync)?;
        self.unsynced = !sync;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(entries: &[(i32, i64)]) -> (tempfile::TempDir, LeaderEpochCache) {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::open(dir.path()).unwrap();
        for &(e, o) in entries {
            cache.assign(LeaderEpoch(e), Offset(o)).unwrap();
        }
        (dir, cache)
    }

    #[test]
    fn assign_persists_and_reloads() {
        let (dir, cache) = cache_with(&[(0, 0), (0, 5), (2, 10), (5, 30)]);
        assert_eq!(cache.entries().len(), 3);
        let reloaded = LeaderEpochCache::open(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), cache.entries());
        assert_eq!(reloaded.latest_epoch(), Some(LeaderEpoch(5)));
    }

    #[test]
    fn a_new_epoch_is_written_at_once_and_made_durable_later() {
        let (dir, mut cache) = cache_with(&[(1, 0)]);
        // in the file already (a process crash keeps it), not fsynced yet
        let reloaded = LeaderEpochCache::open(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), cache.entries());
        assert!(!reloaded.is_unsynced());
        let path = cache.take_unsynced().expect("unsynced after assign");
        assert_eq!(path, dir.path().join(LEADER_EPOCH_CHECKPOINT));
        crate::checkpoint::sync_file_and_dir(&path).unwrap();
        assert!(cache.take_unsynced().is_none(), "taken once");
        // a failed sync leaves it to the next flush
        cache.assign(LeaderEpoch(2), Offset(5)).unwrap();
        assert!(cache.take_unsynced().is_some());
        cache.mark_unsynced();
        // a truncation writes durably, covering the earlier change too
        cache.truncate_from_end(Offset(3)).unwrap();
        assert!(!cache.is_unsynced());
        assert_eq!(
            LeaderEpochCache::open(dir.path()).unwrap().entries(),
            cache.entries()
        );
        // a deleted partition has nothing left to sync
        std::fs::remove_file(&path).unwrap();
        crate::checkpoint::sync_file_and_dir(&path).unwrap();
    }

    #[test]
    fn epochs_never_decrease() {
        let (_dir, mut cache) = cache_with(&[(3, 0)]);
        assert!(matches!(
            cache.assign(LeaderEpoch(2), Offset(9)),
            Err(LogError::EpochRegression { .. })
        ));
        assert_eq!(cache.entries().len(), 1);
        // an epoch of -1 (no epoch) is ignored
        cache.assign(LeaderEpoch::NONE, Offset(10)).unwrap();
        assert_eq!(cache.entries().len(), 1);
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let (_dir, cache) = cache_with(&[(1, 0), (3, 10), (6, 25)]);
        let leo = Offset(40);
        let e = |epoch| cache.end_offset_for(LeaderEpoch(epoch), leo);
        assert_eq!(e(6), (LeaderEpoch(6), Offset(40)));
        assert_eq!(e(3), (LeaderEpoch(3), Offset(25)));
        assert_eq!(e(4), (LeaderEpoch(3), Offset(25)));
        assert_eq!(e(5), (LeaderEpoch(3), Offset(25)));
        assert_eq!(e(1), (LeaderEpoch(1), Offset(10)));
        assert_eq!(e(0), (LeaderEpoch(0), Offset(0)));
        assert_eq!(e(7), (LeaderEpoch::NONE, Offset::NONE));
        assert_eq!(e(-1), (LeaderEpoch::NONE, Offset::NONE));
        assert_eq!(cache.epoch_for_offset(Offset(24)), Some(LeaderEpoch(3)));
        assert_eq!(cache.epoch_for_offset(Offset(25)), Some(LeaderEpoch(6)));
    }

    #[test]
    fn truncation_from_both_ends() {
        let (dir, mut cache) = cache_with(&[(1, 0), (3, 10), (6, 25)]);
        cache.truncate_from_end(Offset(25)).unwrap();
        assert_eq!(cache.latest_epoch(), Some(LeaderEpoch(3)));
        cache.truncate_from_end(Offset(11)).unwrap();
        assert_eq!(cache.latest_epoch(), Some(LeaderEpoch(3)));
        cache.truncate_from_start(Offset(12)).unwrap();
        assert_eq!(
            cache.entries(),
            &[EpochEntry {
                epoch: LeaderEpoch(3),
                start_offset: Offset(12)
            }]
        );
        let reloaded = LeaderEpochCache::open(dir.path()).unwrap();
        assert_eq!(reloaded.entries(), cache.entries());
    }

    #[test]
    fn newer_epoch_below_old_start_overrides() {
        let (_dir, mut cache) = cache_with(&[(1, 0), (2, 10)]);
        cache.assign(LeaderEpoch(4), Offset(5)).unwrap();
        assert_eq!(
            cache.entries(),
            &[
                EpochEntry {
                    epoch: LeaderEpoch(1),
                    start_offset: Offset(0)
                },
                EpochEntry {
                    epoch: LeaderEpoch(4),
                    start_offset: Offset(5)
                }
            ]
        );
    }
}
