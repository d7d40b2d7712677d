//! The budget of open segment files (`sluice.log.max.open.files`), shared by every log of
//! a broker: a node with tens of thousands of partitions cannot keep a descriptor open
//! for each segment. Each segment's `.log` is a [`SegmentFile`]; when more are open than
//! the budget allows, the least recently used ones are closed (a clock sweep: one
//! "referenced" bit per file, set by each use, so a use costs no shared lock) and opened
//! again by path on their next use. Active segments are not pinned: a partition being
//! written uses its file at every append and so stays open, while an idle partition's
//! file is closed like any other (with 50,000 partitions most are idle). A reader holding
//! the `Arc<File>` it got — a fetch's sendfile region in flight, a flush — keeps that
//! descriptor alive after an eviction: eviction drops only the budget's reference.
//!
//! Invariants: `open` counts the segment files whose descriptor the budget holds; it
//! exceeds the budget only by files in use at the moment of a sweep (skipped, not
//! waited for).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The budget, cheap to clone (every log's config carries it). Compares equal to itself
/// only.
#[derive(Clone)]
pub struct OpenFileBudget(Arc<Budget>);

struct Budget {
    max_open: usize,
    open: AtomicUsize,
    reopens: AtomicU64,
    evictions: AtomicU64,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    files: Vec<Weak<SegmentFile>>,
    hand: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for OpenFileBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFileBudget")
            .field("max_open", &self.0.max_open)
            .field("open", &self.open_now())
            .finish()
    }
}

impl PartialEq for OpenFileBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OpenFileBudget {}

impl Default for OpenFileBudget {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl OpenFileBudget {
    /// At most `max_open` segment files open at once.
    pub fn new(max_open: usize) -> Self {
        OpenFileBudget(Arc::new(Budget {
            max_open: max_open.max(1),
            open: AtomicUsize::new(0),
            reopens: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            ring: Mutex::new(Ring::default()),
        }))
    }

    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    pub fn max_open(&self) -> usize {
        self.0.max_open
    }

    /// Segment files open now.
    pub fn open_now(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// Files opened again after an eviction, and evictions, so far.
    pub fn reopens_and_evictions(&self) -> (u64, u64) {
        (
            self.0.reopens.load(Ordering::Relaxed),
            self.0.evictions.load(Ordering::Relaxed),
        )
    }

    /// Opens (creating it if missing) the segment file at `path`, within the budget.
    pub(crate) fn open(&self, path: &Path) -> std::io::Result<Arc<SegmentFile>> {
        let file = open_read_write(path, true)?;
        let segment_file = Arc::new(SegmentFile {
            path: path.to_path_buf(),
            file: Mutex::new(Some(Arc::new(file))),
            referenced: AtomicBool::new(true),
            budget: self.clone(),
        });
        if self.0.max_open != usize::MAX {
            lock(&self.0.ring).files.push(Arc::downgrade(&segment_file));
        }
        self.opened();
        Ok(segment_file)
    }

    /// One more file is open: close others if over the budget.
    fn opened(&self) {
        let open = self.0.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.0.max_open {
            self.evict(open - self.0.max_open);
        }
    }

    /// Closes up to `excess` open files not used since the hand last passed
    /// them (two turns at most: the first may only clear "referenced" bits).
    fn evict(&self, mut excess: usize) {
        let mut ring = lock(&self.0.ring);
        let mut steps = 2 * ring.files.len();
        while excess > 0 && steps > 0 && !ring.files.is_empty() {
            steps -= 1;
            if ring.hand >= ring.files.len() {
                ring.hand = 0;
            }
            let hand = ring.hand;
            let Some(file) = ring.files[hand].upgrade() else {
                // dropped (its segment is gone): out of the ring
                ring.files.swap_remove(hand);
                continue;
            };
            ring.hand += 1;
            if file.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            // a file being opened again right now is skipped, not waited for
            let Ok(mut slot) = file.file.try_lock() else {
                continue;
            };
            if slot.take().is_some() {
                self.0.open.fetch_sub(1, Ordering::Relaxed);
                self.0.evictions.fetch_add(1, Ordering::Relaxed);
                excess -= 1;
            }
        }
    }
}

/// Opens a log file for reading and writing, never truncating it (segments and indexes).
pub(crate) fn open_read_write(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// One segment's `.log`, open while the budget allows.
pub struct SegmentFile {
    path: PathBuf,
    /// None while closed by the budget.
    file: Mutex<Option<Arc<File>>>,
    /// Used since the budget's hand last passed.
    referenced: AtomicBool,
    budget: OpenFileBudget,
}

impl SegmentFile {
    /// The open file, opened again by path if the budget closed it. The `Arc` keeps the
    /// descriptor open for as long as the caller holds it, eviction or not.
    pub fn get(&self) -> std::io::Result<Arc<File>> {
        self.referenced.store(true, Ordering::Relaxed);
        let file = {
            let mut slot = lock(&self.file);
            if let Some(file) = &*slot {
                return Ok(Arc::clone(file));
            }
            // never created here: a segment whose file is gone has nothing to reopen
            let file = Arc::new(open_read_write(&self.path, false)?);
            *slot = Some(Arc::clone(&file));
            file
        };
        self.budget.0.reopens.fetch_add(1, Ordering::Relaxed);
        self.budget.opened();
        Ok(file)
    }

    /// Whether the budget holds its descriptor now.
    pub fn is_open(&self) -> bool {
        lock(&self.file).is_some()
    }

    /// The open file if the budget holds it (never opens it).
    pub fn get_if_open(&self) -> Option<Arc<File>> {
        lock(&self.file).clone()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        let slot = self.file.get_mut().unwrap_or_else(|p| p.into_inner());
        if slot.take().is_some() {
            self.budget.0.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_least_recently_used_files_close_and_reopen_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenFileBudget::new(3);
        let files: Vec<Arc<SegmentFile>> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("{i}.log"));
                let f = budget.open(&path).unwrap();
                f.get()
                    .unwrap()
                    .write_all(format!("file {i}").as_bytes())
                    .unwrap();
                f
            })
            .collect();
        assert_eq!(budget.open_now(), 3);
        // the first two went first
        let open: Vec<bool> = files.iter().map(|f| f.is_open()).collect();
        assert_eq!(open, vec![false, false, true, true, true]);
        // a read through a closed one opens it again, and sees its bytes
        let mut buf = [0u8; 6];
        files[0].get().unwrap().read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"file 0");
        assert_eq!(budget.open_now(), 3);
        assert_eq!(budget.reopens_and_evictions().0, 1);
        // a file held by a reader stays readable after its eviction
        let held = files[0].get().unwrap();
        for f in &files[1..] {
            f.get().unwrap();
        }
        assert!(!files[0].is_open());
        held.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"file 0");
        // dropped files leave the count
        drop(files);
        assert_eq!(budget.open_now(), 0);
        // a file deleted while closed cannot be opened again (and is not recreated)
        let path = dir.path().join("gone.log");
        let gone = budget.open(&path).unwrap();
        let _others: Vec<_> = (0..3)
            .map(|i| budget.open(&dir.path().join(format!("y{i}.log"))).unwrap())
            .collect();
        assert!(!gone.is_open());
        std::fs::remove_file(&path).unwrap();
        assert!(gone.get().is_err());
        assert!(!path.exists());
    }
}
