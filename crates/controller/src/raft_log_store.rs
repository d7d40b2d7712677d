//! The Raft log on disk, for openraft's `RaftLogStorage`.
//!
//! Files in the controller's metadata directory:
//! - `raft-log-<base>` segments (base: the index of the first entry written to it, 20
//!   digits): entries back to back, each framed as `[length u32 BE][crc32c u32 BE][JSON]`
//!   (the CRC covers the JSON). Appends go to the newest segment: the entries are
//!   readable at once, and a writer thread of the store's own writes them in order and
//!   fsyncs once for all it has queued (a group commit) before openraft hears they are
//!   durable, so the leader replicates while its own fsync runs; cuts and purges first
//!   wait for the queued writes. A segment past
//!   [`SEGMENT_BYTES`] rolls to a new one at the next append. A purge deletes the segments
//!   every entry of which is purged (never the newest), so it costs an unlink, not a
//!   rewrite. Opening reads the segments in order and cuts a torn or corrupt tail (and
//!   every segment after it). A `raft-log` file from before segments is the segment of
//!   base 0.
//! - `raft-vote`, `raft-purged`: JSON, replaced atomically (temp file, fsync, rename,
//!   fsync dir) before the call returns.
//! - `raft-committed`: JSON padded to 256 bytes, overwritten in place without fsync (a
//!   write within one sector). It only spares a restart from waiting for a leader before
//!   applying; after a crash it may hold an older value (safe: committed entries stay
//!   committed) or be unreadable, which counts as absent. An fsync, or a rename, per
//!   commit advance would cost as much as the entries' own fsync.
//!
//! Invariants: entry indexes grow with (segment base, position), after `last_purged`;
//! every entry of a segment is below the next segment's base; an entry is reported
//! durable only once it and every entry before it are written and fsynced.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The name of the log file from before segments (read as the segment of base 0).
const LEGACY_LOG_FILE: &str = "raft-log";
const SEGMENT_PREFIX: &str = "raft-log-";
/// A segment rolls once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const VOTE_FILE: &str = "raft-vote";
const COMMITTED_FILE: &str = "raft-committed";
const PURGED_FILE: &str = "raft-purged";
const FRAME_HEADER_BYTES: usize = 8;
/// A frame longer than this is corruption, not an entry (metadata batches are small).
const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;

/// A cheap handle: clones share the same log (openraft asks for readers per replication
/// stream).
#[derive(Clone)]
pub struct RaftLogStore {
    inner: Arc<Mutex<LogInner>>,
    /// Appends' writes and fsyncs, done in order on a thread of their own.
    writer: Arc<Writer>,
    /// The index of the state machine's snapshot on disk, when wired (see `purge`).
    persisted_snapshot: Option<tokio::sync::watch::Receiver<u64>>,
    /// Bytes of entries written since this store opened, plus what its segments held then
    /// (see [`RaftLogStore::written_bytes`]).
    written_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// How long `purge` waits for the snapshot covering it to reach disk.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct StoredEntry {
    entry: Entry,
    /// The base of the segment holding it.
    segment: u64,
    position: u64,
}

struct Segment {
    file: Arc<File>,
    /// Bytes submitted to it (written, or queued on the writer thread).
    len: u64,
}

/// The writer thread's queue. Dropping the last handle closes the queue and waits for the
/// thread to finish what was queued, so a store reopened in the same process never
/// overlaps a late write of the previous one.
struct Writer {
    ops: Option<std::sync::mpsc::Sender<DiskOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Queues `op`; false if the thread is gone.
    fn send(&self, op: DiskOp) -> bool {
        self.ops.as_ref().is_some_and(|ops| ops.send(op).is_ok())
    }
}

fn writer_stopped() -> StorageError {
    io_err(&std::io::Error::other("the raft log writer stopped"))
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Work for the writer thread.
enum DiskOp {
    /// Write `bytes` at `start` of `file`; fsync; then tell openraft through `callback`.
    Write {
        file: Arc<File>,
        start: u64,
        bytes: Vec<u8>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Answered once every write queued before it is on disk.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The writer thread: takes whatever is queued, writes it in order, and fsyncs each file
/// written once for all of it (a group commit) before the callbacks run. After a failed
/// write or fsync every later write fails too (no hole: a durable entry has every entry
/// before it durable); openraft stops on the first failure. Ends when every handle to
/// the store is gone.
fn write_in_order(ops: std::sync::mpsc::Receiver<DiskOp>) {
    let mut failed: Option<std::io::ErrorKind> = None;
    while let Ok(op) = ops.recv() {
        let mut batch = vec![op];
        while let Ok(more) = ops.try_recv() {
            batch.push(more);
        }
        let mut written: Vec<(Arc<File>, LogFlushed<TypeConfig>)> = Vec::new();
        for op in batch {
            match op {
                DiskOp::Write {
                    file,
                    start,
                    bytes,
                    callback,
                } => {
                    if let Some(kind) = failed {
                        callback.log_io_completed(Err(earlier_failure(kind)));
                        continue;
                    }
                    match file.write_all_at(&bytes, start) {
                        Ok(()) => written.push((file, callback)),
                        Err(e) => {
                            // nothing of it may count: cut whatever part of the write landed
                            let _ = file.set_len(start);
                            // what was written before it still completes
                            flush(std::mem::take(&mut written), &mut failed);
                            failed = Some(e.kind());
                            callback.log_io_completed(Err(e));
                        }
                    }
                }
                DiskOp::Barrier(done) => {
                    flush(std::mem::take(&mut written), &mut failed);
                    let _ = done.send(());
                }
            }
        }
        flush(written, &mut failed);
    }
}

fn earlier_failure(kind: std::io::ErrorKind) -> std::io::Error {
    std::io::Error::new(kind, "an earlier raft log write failed")
}

/// fsyncs the files of `written` (each once, in order), then completes the writes in
/// order; from the first failure on, with an error.
fn flush(
    written: Vec<(Arc<File>, LogFlushed<TypeConfig>)>,
    failed: &mut Option<std::io::ErrorKind>,
) {
    let mut synced: Vec<*const File> = Vec::new();
    for (file, callback) in written {
        let key = Arc::as_ptr(&file);
        if failed.is_none() && !synced.contains(&key) {
            match file.sync_data() {
                Ok(()) => synced.push(key),
                Err(e) => *failed = Some(e.kind()),
            }
        }
        match failed {
            Some(kind) => callback.log_io_completed(Err(earlier_failure(*kind))),
            None => callback.log_io_completed(Ok(())),
        }
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{base:020}"))
}

/// The bases of the segments in `dir`, in order.
fn segment_bases(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_prefix(SEGMENT_PREFIX)
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn open_segment(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    sluice_log::sync_dir(dir).map_err(|e| std::io::Error::other(e.to_string()))
}

struct LogInner {
    dir: PathBuf,
    /// By base; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    segment_bytes: u64,
    entries: BTreeMap<u64, StoredEntry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// `raft-committed`, opened at the first save.
    committed_file: Option<File>,
}

fn io_err(e: &std::io::Error) -> StorageError {
    StorageIOError::write_logs(e).into()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    sluice_log::write_atomically(path, &bytes).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Bytes `raft-committed` always holds (JSON, then spaces).
const COMMITTED_RECORD_BYTES: usize = 256;

/// Overwrites `file` in place with `value` as JSON padded to [`COMMITTED_RECORD_BYTES`],
/// without fsync: a crash may leave the old value or an unreadable one.
fn overwrite_json<T: serde::Serialize>(file: &File, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if bytes.len() > COMMITTED_RECORD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "committed log id too long",
        ));
    }
    bytes.resize(COMMITTED_RECORD_BYTES, b' ');
    file.write_all_at(&bytes, 0)
}

fn frame(entry: &Entry, out: &mut Vec<u8>) -> std::io::Result<()> {
    let json = serde_json::to_vec(entry)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if json.len() > MAX_ENTRY_BYTES {
        // open() would take such a frame for corruption: never write one
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "raft entry of {} bytes exceeds {MAX_ENTRY_BYTES}",
                json.len()
            ),
        ));
    }
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&sluice_record::crc32c(&json).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

/// Parses frames from `bytes`; returns the entries with their positions and the length of
/// the valid prefix (a torn or corrupt frame ends it).
fn parse_frames(bytes: &[u8]) -> (Vec<StoredEntry>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= FRAME_HEADER_BYTES {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + FRAME_HEADER_BYTES;
        if len > MAX_ENTRY_BYTES || bytes.len() - start < len {
            break;
        }
        let json = &bytes[start..start + len];
        if sluice_record::crc32c(json) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(json) else {
            break;
        };
        out.push(StoredEntry {
            entry,
            segment: 0,
            position: at as u64,
        });
        at = start + len;
    }
    (out, at as u64)
}

impl RaftLogStore {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`RaftLogStore::open`] with segments rolling at `segment_bytes`.
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let legacy = dir.join(LEGACY_LOG_FILE);
        if legacy.exists() {
            std::fs::rename(&legacy, segment_path(dir, 0))?;
            sync_dir(dir)?;
        }
        let mut bases = segment_bases(dir)?;
        if bases.is_empty() {
            open_segment(&segment_path(dir, 0))?;
            // the file's name must survive a crash as surely as its first entries
            sync_dir(dir)?;
            bases.push(0);
        }
        let last_purged: Option<LogId> = read_json(&dir.join(PURGED_FILE))?;
        let purged_index = last_purged.map(|l| l.index);
        let mut entries: BTreeMap<u64, StoredEntry> = BTreeMap::new();
        let mut segments = BTreeMap::new();
        // (segment base, valid length, file length) of a torn tail, and the segments after it
        let mut torn: Option<(u64, u64, u64)> = None;
        let mut after_torn = Vec::new();
        for base in bases {
            let path = segment_path(dir, base);
            if torn.is_some() {
                after_torn.push(base);
                continue;
            }
            let file = open_segment(&path)?;
            let bytes = std::fs::read(&path)?;
            let (stored, valid_len) = parse_frames(&bytes);
            for mut s in stored {
                let index = s.entry.log_id.index;
                if index < base {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("raft log entry {index} lies in segment {base}"),
                    ));
                }
                if purged_index.is_some_and(|p| index <= p) {
                    continue;
                }
                if entries
                    .last_key_value()
                    .is_some_and(|(last, _)| index <= *last)
                {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("raft log entry {index} is out of order"),
                    ));
                }
                s.segment = base;
                entries.insert(index, s);
            }
            if valid_len < bytes.len() as u64 {
                torn = Some((base, valid_len, bytes.len() as u64));
            }
            segments.insert(
                base,
                Segment {
                    file: Arc::new(file),
                    len: valid_len,
                },
            );
        }
        let committed: Option<LogId> = match read_json(&dir.join(COMMITTED_FILE)) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(error = %e, "raft-committed unreadable (a crash while replacing it): starting without it");
                None
            }
            Err(e) => return Err(e),
        };
        let last_index = entries
            .keys()
            .next_back()
            .copied()
            .or(purged_index)
            .unwrap_or(0);
        if let Some(c) = committed.filter(|c| c.index > last_index) {
            // damage below what this node acknowledged: Raft's safety assumes those
            // entries are here, so refuse to start rather than silently forget them
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "raft log in {} ends at {last_index} but {} was committed: the log is damaged",
                    dir.display(),
                    c.index
                ),
            ));
        }
        // only now, with nothing committed lost, is the bad tail an unacknowledged append
        if let Some((base, valid_len, file_len)) = torn {
            tracing::warn!(
                path = %segment_path(dir, base).display(),
                valid_len,
                file_len,
                dropped_segments = after_torn.len(),
                "cutting a torn or corrupt tail off the raft log"
            );
            if let Some(segment) = segments.get(&base) {
                segment.file.set_len(valid_len)?;
                segment.file.sync_all()?;
            }
            for later in &after_torn {
                std::fs::remove_file(segment_path(dir, *later))?;
            }
            sync_dir(dir)?;
        }
        let mut inner = LogInner {
            dir: dir.to_path_buf(),
            segments,
            segment_bytes,
            entries,
            last_purged,
            vote: read_json(&dir.join(VOTE_FILE))?,
            committed,
            committed_file: None,
        };
        inner.drop_purged_segments()?;
        let held_bytes: u64 = inner.segments.values().map(|s| s.len).sum();
        let (sender, ops) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_in_order(ops))?;
        Ok(RaftLogStore {
            inner: Arc::new(Mutex::new(inner)),
            writer: Arc::new(Writer {
                ops: Some(sender),
                thread: Some(thread),
            }),
            persisted_snapshot: None,
            written_bytes: Arc::new(std::sync::atomic::AtomicU64::new(held_bytes)),
        })
    }

    /// A counter of the log's bytes that only grows: the segments' bytes when the store
    /// opened, plus every entry written since. What it grew by since a snapshot is about
    /// what a restart would replay (the controller snapshots by it, see
    /// `ControllerConfig::metadata_snapshot_bytes`).
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Purges wait until the snapshot covering them is on disk: openraft purges the log
    /// after installing a leader's snapshot without waiting for the state machine to
    /// persist it, and a crash in between would leave neither the entries nor the snapshot.
    pub fn with_snapshot_index(mut self, persisted: tokio::sync::watch::Receiver<u64>) -> Self {
        self.persisted_snapshot = Some(persisted);
        self
    }

    /// Returns once every write queued so far is on disk (before a cut or a purge touches
    /// the files they go to).
    async fn drain_writes(&self) -> Result<(), StorageError> {
        let (done, drained) = tokio::sync::oneshot::channel();
        if !self.writer.send(DiskOp::Barrier(done)) {
            return Err(writer_stopped());
        }
        drained.await.map_err(|_| writer_stopped())
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // a panic while holding the lock leaves the log as the last completed step left it
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Committed entries in `[from, to]` that are still in the log (for metadata watchers).
    pub fn entries_between(&self, from: u64, to: u64) -> Vec<Entry> {
        if from > to {
            return Vec::new();
        }
        self.lock()
            .entries
            .range(from..=to)
            .map(|(_, s)| s.entry.clone())
            .collect()
    }
}

impl LogInner {
    /// Removes entries at `index` and after, from memory and from the segments.
    fn truncate_from(&mut self, index: u64) -> std::io::Result<()> {
        let removed = self.entries.split_off(&index);
        let Some(first) = removed.values().next() else {
            return Ok(());
        };
        let (cut_segment, cut) = (first.segment, first.position);
        let later: Vec<u64> = self
            .segments
            .range(cut_segment + 1..)
            .map(|(b, _)| *b)
            .collect();
        for base in &later {
            self.segments.remove(base);
            std::fs::remove_file(segment_path(&self.dir, *base))?;
        }
        if let Some(segment) = self.segments.get_mut(&cut_segment) {
            segment.file.set_len(cut)?;
            segment.file.sync_data()?;
            segment.len = cut;
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|s| s.entry.log_id)
            .or(self.last_purged)
    }

    /// Deletes the segments every entry of which is purged (never the newest one).
    fn drop_purged_segments(&mut self) -> std::io::Result<()> {
        let Some(purged) = self.last_purged.map(|l| l.index) else {
            return Ok(());
        };
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        // a segment's entries all lie below the next one's base
        let gone: Vec<u64> = bases
            .windows(2)
            .filter(|pair| pair[1] <= purged.saturating_add(1))
            .map(|pair| pair[0])
            .collect();
        for base in &gone {
            self.segments.remove(base);
            std::fs::remove_file(segment_path(&self.dir, *base))?;
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The segment the next append goes to: the newest, or a new one starting at
    /// `first_index` once the newest holds `segment_bytes`.
    fn active_segment(&mut self, first_index: u64) -> std::io::Result<u64> {
        let (newest, len) = match self.segments.last_key_value() {
            Some((b, s)) => (Some(*b), s.len),
            None => (None, 0),
        };
        if let Some(b) = newest.filter(|b| len < self.segment_bytes || first_index <= *b) {
            return Ok(b);
        }
        let path = segment_path(&self.dir, first_index);
        let file = open_segment(&path)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first_index,
            Segment {
                file: Arc::new(file),
                len: 0,
            },
        );
        Ok(first_index)
    }
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, s)| s.entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        write_json(&inner.dir.join(VOTE_FILE), vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.lock();
        if inner.committed_file.is_none() {
            let path = inner.dir.join(COMMITTED_FILE);
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_err(&e))?;
            inner.committed_file = Some(file);
        }
        if let Some(file) = &inner.committed_file {
            overwrite_json(file, &committed).map_err(|e| io_err(&e))?;
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first_index) = entries.first().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // after a leader's snapshot, openraft appends the entries that follow it before the
        // state machine has written that snapshot: written at once they would leave a log
        // that starts past its end and no snapshot on disk to cover the gap
        let last = self.lock().last_log_id().map_or(0, |l| l.index);
        if first_index > last + 1 {
            if let Some(persisted) = self.persisted_snapshot.as_mut() {
                let covered = tokio::time::timeout(
                    PURGE_WAIT,
                    persisted.wait_for(|index| *index + 1 >= first_index),
                )
                .await;
                if !matches!(covered, Ok(Ok(_))) {
                    return Err(io_err(&std::io::Error::other(format!(
                        "entries from {first_index} follow a snapshot that is not on disk"
                    ))));
                }
            }
        }
        // an entry at an index already present replaces it and everything after it (Raft's
        // rule; openraft truncates first, but the storage contract allows either): the
        // writes queued for them must land before the cut
        let replaces = self.lock().entries.range(first_index..).next().is_some();
        if replaces {
            self.drain_writes().await?;
        }
        let mut inner = self.lock();
        if replaces {
            inner.truncate_from(first_index).map_err(|e| io_err(&e))?;
        }
        let base = inner.active_segment(first_index).map_err(|e| io_err(&e))?;
        let Some(segment) = inner.segments.get_mut(&base) else {
            return Err(io_err(&std::io::Error::other("active segment vanished")));
        };
        let start = segment.len;
        let mut bytes = Vec::new();
        let mut new = Vec::new();
        for entry in entries {
            let position = start + bytes.len() as u64;
            frame(&entry, &mut bytes).map_err(|e| io_err(&e))?;
            new.push(StoredEntry {
                entry,
                segment: base,
                position,
            });
        }
        segment.len += bytes.len() as u64;
        self.written_bytes
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let file = Arc::clone(&segment.file);
        // readable at once (openraft replicates them while they reach the disk); the
        // callback says when they are durable
        for s in new {
            inner.entries.insert(s.entry.log_id.index, s);
        }
        drop(inner);
        let queued = self.writer.send(DiskOp::Write {
            file,
            start,
            bytes,
            callback,
        });
        if queued {
            Ok(())
        } else {
            Err(writer_stopped())
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.drain_writes().await?;
        self.lock()
            .truncate_from(log_id.index)
            .map_err(|e| io_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(persisted) = self.persisted_snapshot.as_mut() {
            let covered = tokio::time::timeout(
                PURGE_WAIT,
                persisted.wait_for(|index| *index >= log_id.index),
            )
            .await;
            if !matches!(covered, Ok(Ok(_))) {
                // keeping entries a snapshot covers is harmless (the next purge takes
                // them); dropping entries no snapshot on disk covers loses them
                tracing::warn!(
                    upto = log_id.index,
                    "raft log not purged: no snapshot covering it reached disk"
                );
                return Ok(());
            }
        }
        self.drain_writes().await?;
        let mut inner = self.lock();
        assert!(
            inner.last_purged.is_none_or(|p| p.index <= log_id.index),
            "purge went backwards"
        );
        write_json(&inner.dir.join(PURGED_FILE), &log_id).map_err(|e| io_err(&e))?;
        inner.last_purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.drop_purged_segments().map_err(|e| io_err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stop_at_a_torn_or_corrupt_tail() {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for i in 1..=3u64 {
            let entry = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: openraft::EntryPayload::Blank,
            };
            frame(&entry, &mut bytes).unwrap();
            ends.push(bytes.len() as u64);
        }
        let (all, len) = parse_frames(&bytes);
        assert_eq!((all.len(), len), (3, ends[2]));
        for cut in ends[1]..ends[2] {
            let (some, len) = parse_frames(&bytes[..cut as usize]);
            assert_eq!((some.len(), len), (2, ends[1]));
        }
        let mut flipped = bytes.clone();
        flipped[ends[0] as usize + 10] ^= 1;
        let (some, len) = parse_frames(&flipped);
        assert_eq!((some.len(), len), (1, ends[0]));
    }
}

#[cfg(test)]
mod reopen_tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(store: &RaftLogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn state_survives_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RaftLogStore::open(dir.path()).unwrap();
        store
            .blocking_append((1..=10).map(|i| entry(1, i)))
            .await
            .unwrap();
        store.save_vote(&Vote::new(3, 2)).await.unwrap();
        store
            .save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 6)))
            .await
            .unwrap();
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 9))
            .await
            .unwrap();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        store.blocking_append([entry(2, 9)]).await.unwrap();
        drop(store);

        let mut store = RaftLogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), (4..=9).collect::<Vec<_>>());
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(
            store.read_committed().await.unwrap().map(|l| l.index),
            Some(6)
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(
            state.last_log_id,
            Some(LogId::new(CommittedLeaderId::new(2, 1), 9))
        );
        drop(store);

        // a crash in the middle of the last append: the partial frame goes, the rest stays
        let path = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);
        let mut store = RaftLogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), (4..=8).collect::<Vec<_>>());
        store.blocking_append([entry(2, 9)]).await.unwrap();
        drop(store);
        let store = RaftLogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), (4..=9).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn purging_deletes_whole_segments_and_a_torn_segment_drops_the_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        // a blank entry frames to about 60 bytes: segments of ~10 entries
        let mut store = RaftLogStore::open_with_segment_bytes(dir.path(), 600).unwrap();
        for i in 1..=100 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        let before = segment_bases(dir.path()).unwrap();
        assert!(before.len() >= 8, "{before:?}");
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 90))
            .await
            .unwrap();
        let after = segment_bases(dir.path()).unwrap();
        // only the segments holding 91.. (and the newest) stay
        assert!(after.len() <= 2, "{after:?}");
        assert!(after[0] <= 91, "{after:?}");
        store.blocking_append([entry(1, 101)]).await.unwrap();
        drop(store);
        let store = RaftLogStore::open_with_segment_bytes(dir.path(), 600).unwrap();
        assert_eq!(indexes(&store), (91..=101).collect::<Vec<_>>());
        drop(store);

        // a log from before segments opens as the segment of base 0
        let legacy = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for i in 1..=5 {
            frame(&entry(1, i), &mut bytes).unwrap();
        }
        std::fs::write(legacy.path().join(LEGACY_LOG_FILE), &bytes).unwrap();
        let mut store = RaftLogStore::open_with_segment_bytes(legacy.path(), 120).unwrap();
        assert_eq!(indexes(&store), (1..=5).collect::<Vec<_>>());
        for i in 6..=20 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        drop(store);
        // damage in a middle segment: it is cut there and every later segment goes
        let bases = segment_bases(legacy.path()).unwrap();
        assert!(bases.len() >= 3, "{bases:?}");
        let middle = segment_path(legacy.path(), bases[1]);
        let mut bytes = std::fs::read(&middle).unwrap();
        bytes[FRAME_HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(&middle, &bytes).unwrap();
        let store = RaftLogStore::open_with_segment_bytes(legacy.path(), 120).unwrap();
        assert_eq!(
            indexes(&store),
            (1..bases[1]).collect::<Vec<_>>(),
            "entries before the damaged one stay"
        );
        assert_eq!(segment_bases(legacy.path()).unwrap(), bases[..2].to_vec());
    }
}

#[cfg(test)]
mod safety_tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn damage_below_the_committed_index_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RaftLogStore::open(dir.path()).unwrap();
        store.blocking_append((1..=5).map(entry)).await.unwrap();
        store.save_committed(Some(log_id(4))).await.unwrap();
        drop(store);
        // flip a byte inside entry 3: entries 3.. would be cut, below committed 4
        let path = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let (frames, _) = parse_frames(&bytes);
        let at = frames[2].position as usize + FRAME_HEADER_BYTES + 2;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = RaftLogStore::open(dir.path()).err().expect("must refuse");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("committed"), "{err}");
        // the file was not cut by the refused open
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn entries_past_the_log_end_wait_for_the_snapshot_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let (persisted, rx) = tokio::sync::watch::channel(0u64);
        let mut store = RaftLogStore::open(dir.path())
            .unwrap()
            .with_snapshot_index(rx);
        store.blocking_append((1..=3).map(entry)).await.unwrap();
        // the leader's snapshot covers up to 9; entries from 10 follow it
        let mut appending = store.clone();
        let append =
            tokio::spawn(async move { appending.blocking_append((10..=12).map(entry)).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !append.is_finished(),
            "appended past a gap no snapshot on disk covers"
        );
        assert_eq!(
            store.lock().entries.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        persisted.send_replace(9);
        append.await.unwrap().unwrap();
        assert!(store.lock().entries.contains_key(&12));
        // the next entry in order never waits
        store.blocking_append([entry(13)]).await.unwrap();
    }

    #[tokio::test]
    async fn purge_waits_for_the_snapshot_covering_it() {
        let dir = tempfile::tempdir().unwrap();
        let (persisted, rx) = tokio::sync::watch::channel(0u64);
        let mut store = RaftLogStore::open(dir.path())
            .unwrap()
            .with_snapshot_index(rx);
        store.blocking_append((1..=10).map(entry)).await.unwrap();
        let mut purging = store.clone();
        let purge = tokio::spawn(async move { purging.purge(log_id(8)).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !purge.is_finished(),
            "purged before the snapshot was on disk"
        );
        assert!(store.lock().entries.contains_key(&1));
        persisted.send_replace(8);
        purge.await.unwrap().unwrap();
        assert_eq!(store.lock().entries.keys().next(), Some(&9));
    }
}
