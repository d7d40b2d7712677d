//! The Raft state machine: committed entries applied to the [`MetadataImage`].
//!
//! Snapshots are the whole image (JSON) with openraft's metadata, kept in memory and in the
//! `metadata-snapshot` file (replaced atomically), so a restarted controller starts from its
//! latest snapshot and replays only the log after it.
//!
//! Invariants: `last_applied` only grows; the image's `applied_index` equals
//! `last_applied`'s index; every entry yields exactly one response.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::MetadataImage;
use tokio::sync::watch;

use crate::raft_types::{
    ApplyResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_FILE: &str = "metadata-snapshot";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    image: pb::MetadataImage,
}

struct SmState {
    image: MetadataImage,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    snapshots_built: u64,
}

/// A cheap handle: openraft owns one, the controller services keep clones to read the image.
#[derive(Clone)]
pub struct MetadataStateMachine {
    state: Arc<RwLock<SmState>>,
    /// Serialises writing `metadata-snapshot`: openraft builds snapshots in a task of its
    /// own, concurrently with installing one from the leader.
    persist: Arc<std::sync::Mutex<()>>,
    dir: PathBuf,
    applied_tx: Arc<watch::Sender<u64>>,
    /// Index of the snapshot in `metadata-snapshot` (0: none).
    persisted_tx: Arc<watch::Sender<u64>>,
    /// Partition leader changes applied since this process started (a new leader, not a
    /// partition going offline): Kafka's leader election rate.
    leader_elections: Arc<std::sync::atomic::AtomicU64>,
}

type PartitionKey = (String, i32);

/// The partitions `batch` changes (PartitionChange records), with their leader in `image`.
fn leaders_before(
    image: &MetadataImage,
    batch: &sluice_metadata::MetadataBatch,
) -> Vec<(PartitionKey, i32)> {
    batch
        .records
        .iter()
        .filter_map(|r| match &r.record {
            Some(sluice_metadata::Record::PartitionChange(c)) => {
                let p = c.partition.as_ref()?;
                let leader = image.partition(&c.topic, p.partition)?.leader;
                Some(((c.topic.clone(), p.partition), leader))
            }
            _ => None,
        })
        .collect()
}

/// How many records of `batch` that took effect (`outcomes`) gave a partition a new, live
/// leader; `before` holds the changed partitions' leaders before the batch.
fn leader_elections(
    before: Vec<(PartitionKey, i32)>,
    batch: &sluice_metadata::MetadataBatch,
    outcomes: &[sluice_metadata::ApplyOutcome],
) -> u64 {
    let mut leaders: std::collections::BTreeMap<PartitionKey, i32> = before.into_iter().collect();
    let mut elections = 0;
    for (record, outcome) in batch.records.iter().zip(outcomes) {
        let Some(sluice_metadata::Record::PartitionChange(change)) = &record.record else {
            continue;
        };
        let Some(next) = change.partition.as_ref().filter(|_| outcome.is_ok()) else {
            continue;
        };
        let previous = leaders.insert((change.topic.clone(), next.partition), next.leader);
        if next.leader >= 0 && previous != Some(next.leader) {
            elections += 1;
        }
    }
    elections
}

fn snapshot_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(None, e).into()
}

impl MetadataStateMachine {
    /// Loads the latest snapshot from `dir`, if any.
    pub fn open(dir: &Path, cluster_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut state = SmState {
            image: MetadataImage::new(cluster_id),
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                state.image = MetadataImage::from_proto(stored.image);
                state.last_applied = stored.meta.last_log_id;
                state.last_membership = stored.meta.last_membership.clone();
                state.snapshot = Some((stored.meta, bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let applied = state.image.applied_index();
        let persisted = state
            .snapshot
            .as_ref()
            .and_then(|(m, _)| m.last_log_id)
            .map_or(0, |l| l.index);
        Ok(MetadataStateMachine {
            persisted_tx: Arc::new(watch::channel(persisted).0),
            state: Arc::new(RwLock::new(state)),
            persist: Arc::new(std::sync::Mutex::new(())),
            dir: dir.to_path_buf(),
            applied_tx: Arc::new(watch::channel(applied).0),
            leader_elections: Default::default(),
        })
    }

    /// Partition leader changes to a live leader applied since this process started.
    pub fn leader_elections(&self) -> u64 {
        self.leader_elections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read(&self) -> RwLockReadGuard<'_, SmState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the current image.
    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        f(&self.read().image)
    }

    pub fn image(&self) -> MetadataImage {
        self.read().image.clone()
    }

    /// The index of the last applied entry; changes wake watchers.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// The index covered by the snapshot on disk; the log store waits on it before
    /// purging (see `RaftLogStore::purge`).
    pub fn subscribe_persisted_snapshot(&self) -> watch::Receiver<u64> {
        self.persisted_tx.subscribe()
    }

    fn save(&self, stored: &StoredSnapshot) -> std::io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(stored)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        sluice_log::write_atomically(&self.dir.join(SNAPSHOT_FILE), &bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let index = stored.meta.last_log_id.map_or(0, |l| l.index);
        self.persisted_tx.send_modify(|p| *p = (*p).max(index));
        Ok(bytes)
    }

    fn snapshot_of(meta: SnapshotMeta, bytes: Vec<u8>) -> Snapshot {
        Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetadataStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let (stored, n) = {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            s.snapshots_built += 1;
            let id = match s.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, s.snapshots_built),
                None => format!("0-0-{}", s.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.last_membership.clone(),
                snapshot_id: id,
            };
            (
                StoredSnapshot {
                    meta,
                    image: s.image.to_proto(),
                },
                s.snapshots_built,
            )
        };
        let _persisting = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        // a newer snapshot (installed from the leader meanwhile) must not be replaced by
        // this older one, on disk or in memory
        if let Some((meta, bytes)) = self.read().snapshot.clone() {
            if meta.last_log_id > stored.meta.last_log_id {
                return Ok(Self::snapshot_of(meta, bytes));
            }
        }
        let bytes = self.save(&stored).map_err(|e| snapshot_err(&e))?;
        // (what a snapshot costs at scale: issue 19 measures it from this line)
        tracing::info!(snapshot = n, last = ?stored.meta.last_log_id, bytes = bytes.len(), elapsed_ms = started.elapsed().as_millis() as u64, "built metadata snapshot");
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.snapshot = Some((stored.meta.clone(), bytes.clone()));
        Ok(Self::snapshot_of(stored.meta, bytes))
    }
}

impl RaftStateMachine<TypeConfig> for MetadataStateMachine {
    type SnapshotBuilder = MetadataStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let s = self.read();
        Ok((s.last_applied, s.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let applied = {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                let index = entry.log_id.index;
                assert!(
                    s.last_applied.is_none_or(|l| l.index < index),
                    "applied index must grow"
                );
                let response = match entry.payload {
                    EntryPayload::Normal(batch) => {
                        let before = leaders_before(&s.image, &batch);
                        let outcomes = s.image.apply(index, &batch);
                        if !before.is_empty() {
                            self.leader_elections.fetch_add(
                                leader_elections(before, &batch, &outcomes),
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        ApplyResponse { outcomes }
                    }
                    EntryPayload::Blank => {
                        s.image.advance_to(index);
                        ApplyResponse::default()
                    }
                    EntryPayload::Membership(m) => {
                        s.image.advance_to(index);
                        s.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        ApplyResponse::default()
                    }
                };
                s.last_applied = Some(entry.log_id);
                responses.push(response);
            }
            s.image.applied_index()
        };
        self.applied_tx.send_replace(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| snapshot_err(&e))?;
        // the meta openraft hands us is authoritative; keep the image that came with it
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: stored.image,
        };
        let _persisting = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self.save(&stored).map_err(|e| snapshot_err(&e))?;
        let applied = {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            let mut image = MetadataImage::from_proto(stored.image);
            if let Some(l) = meta.last_log_id {
                image.advance_to(l.index);
            }
            s.image = image;
            s.last_applied = meta.last_log_id;
            s.last_membership = meta.last_membership.clone();
            s.snapshot = Some((meta.clone(), bytes));
            s.image.applied_index()
        };
        self.applied_tx.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .read()
            .snapshot
            .clone()
            .map(|(meta, bytes)| Self::snapshot_of(meta, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[tokio::test]
    async fn an_older_build_never_replaces_an_installed_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = MetadataStateMachine::open(dir.path(), "c").unwrap();
        sm.apply((1..=3).map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Blank,
        }))
        .await
        .unwrap();
        // a build of index 3 starts, but a leader's snapshot at 50 is installed first
        let mut leader_image = MetadataImage::new("c");
        leader_image.advance_to(50);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(50)),
            last_membership: StoredMembership::default(),
            snapshot_id: "leader".into(),
        };
        let bytes = serde_json::to_vec(&StoredSnapshot {
            meta: meta.clone(),
            image: leader_image.to_proto(),
        })
        .unwrap();
        let mut stale = sm.state.read().unwrap().image.clone();
        sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
            .await
            .unwrap();
        // simulate the late build finishing with the old state
        {
            let mut s = sm.state.write().unwrap();
            std::mem::swap(&mut s.image, &mut stale);
            s.last_applied = Some(log_id(3));
        }
        let built = sm.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(50)));
        assert_eq!(
            sm.get_current_snapshot()
                .await
                .unwrap()
                .unwrap()
                .meta
                .snapshot_id,
            "leader"
        );
        let reopened = MetadataStateMachine::open(dir.path(), "c").unwrap();
        assert_eq!(
            reopened.image().applied_index(),
            50,
            "the file kept the newer one"
        );
        assert_eq!(*sm.subscribe_persisted_snapshot().borrow(), 50);
    }
}
