//! A memory-mapped file of fixed-size entries: the storage under the offset and time
//! indexes. While its segment is active the file is preallocated to
//! `log.index.size.max.bytes`; when the segment rolls or closes it is trimmed to the entries
//! it holds, so on disk a sealed index is exactly `entries * N` bytes.
//!
//! The preallocation only sizes the file (a sparse hole): disk blocks are reserved with
//! `posix_fallocate`, [`ALLOCATION_STEP_BYTES`] at a time, before an entry is written into
//! the map ([`IndexFile::reserve`]). Writing into a hole of a full file system through a
//! mapping is SIGBUS, which kills the process (seen on a full tmpfs); a reservation that
//! fails is an `ENOSPC` error the caller sees before anything is written.
//!
//! No file descriptor is kept: the map holds the file, and the rare calls that need a
//! descriptor (resizing, reserving disk, an fsync) open the file by its path for the call
//! (issue 19: three descriptors per segment stopped a broker at ulimit/3 partitions).
//!
//! Invariants: `allocated_bytes <= mapped length`, and only bytes below `allocated_bytes`
//! are written (it starts at 0 on open: a file left at its preallocated, sparse length by
//! a crash is reserved again before recovery writes into it); entries past `entries` are
//! garbage.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::{LogError, Result};

/// Disk reserved for an index at a time.
pub(crate) const ALLOCATION_STEP_BYTES: usize = 64 * 1024;

pub(crate) struct IndexFile<const N: usize> {
    path: PathBuf,
    mmap: Option<MmapMut>,
    entries: usize,
    /// Bytes from the start known to be backed by disk blocks.
    allocated_bytes: usize,
}

impl<const N: usize> IndexFile<N> {
    /// Opens (or creates) the file. The entry count is the file length / N, so it must
    /// have been trimmed when closed; a file that was not (after a crash) is rebuilt by
    /// recovery. `writable_max_bytes` preallocates room for appends.
    pub fn open(path: &Path, writable_max_bytes: Option<usize>) -> Result<Self> {
        let file = open_file(path, true)?;
        let len = file.metadata().map_err(LogError::io(path))?.len() as usize;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            mmap: None,
            entries: len / N,
            allocated_bytes: 0,
        };
        index.remap_with(
            &file,
            writable_max_bytes.map_or(len, |max| (max / N * N).max(index.entries * N)),
        )?;
        Ok(index)
    }

    fn remap(&mut self, len: usize) -> Result<()> {
        let file = open_file(&self.path, false)?;
        self.remap_with(&file, len)
    }

    fn remap_with(&mut self, file: &File, len: usize) -> Result<()> {
        self.mmap = None;
        file.set_len(len as u64).map_err(LogError::io(&self.path))?;
        self.allocated_bytes = self.allocated_bytes.min(len);
        if len > 0 {
            // SAFETY: the file is owned by this index and not resized while mapped; the
            // only resizes go through this function after dropping the old mapping.
            let map = unsafe { MmapMut::map_mut(file) }.map_err(LogError::io(&self.path))?;
            // Index pages are touched one at a time (appends) or by binary search: readahead
            // would fault in megabytes of a mostly empty, preallocated file per append.
            map.advise(memmap2::Advice::Random)
                .map_err(LogError::io(&self.path))?;
            self.mmap = Some(map);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn capacity(&self) -> usize {
        self.mmap.as_ref().map_or(0, |m| m.len() / N)
    }

    pub fn is_full(&self) -> bool {
        self.entries >= self.capacity()
    }

    pub fn entry(&self, i: usize) -> [u8; N] {
        assert!(i < self.entries, "index entry {i} out of {}", self.entries);
        let map = self.mmap.as_ref().expect("an index with entries is mapped");
        let mut out = [0u8; N];
        out.copy_from_slice(&map[i * N..(i + 1) * N]);
        out
    }

    /// Makes sure the next `entries` entries (as many as fit) are backed by disk blocks,
    /// so [`IndexFile::push`] cannot fault. ENOSPC here is an error, never a SIGBUS later.
    pub fn reserve(&mut self, entries: usize) -> Result<()> {
        let mapped = self.mmap.as_ref().map_or(0, |m| m.len());
        let needed = ((self.entries + entries) * N).min(mapped);
        if needed <= self.allocated_bytes {
            return Ok(());
        }
        let end = needed
            .div_ceil(ALLOCATION_STEP_BYTES)
            .saturating_mul(ALLOCATION_STEP_BYTES)
            .min(mapped);
        let (offset, len) = (
            self.allocated_bytes as i64,
            (end - self.allocated_bytes) as i64,
        );
        let file = open_file(&self.path, false)?;
        nix::fcntl::posix_fallocate(&file, offset, len)
            .map_err(|e| LogError::io(&self.path)(std::io::Error::from(e)))?;
        self.allocated_bytes = end;
        Ok(())
    }

    /// Appends an entry; the caller checks [`IndexFile::is_full`] and
    /// [`IndexFile::reserve`]s room first.
    pub fn push(&mut self, entry: [u8; N]) {
        assert!(
            !self.is_full(),
            "append to a full index {}",
            self.path.display()
        );
        let at = self.entries * N;
        assert!(
            at + N <= self.allocated_bytes,
            "index entry written into unreserved disk space {} (entry {}, {} bytes reserved)",
            self.path.display(),
            self.entries,
            self.allocated_bytes
        );
        let map = self.mmap.as_mut().expect("a non-full index is mapped");
        map[at..at + N].copy_from_slice(&entry);
        self.entries += 1;
    }

    pub fn truncate_entries(&mut self, entries: usize) {
        self.entries = self.entries.min(entries);
    }

    /// The largest `i` with `key(entry(i)) <= target`, if any. Keys must be ascending.
    pub fn search(&self, target: i64, key: impl Fn([u8; N]) -> i64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(self.entry(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Shrinks the file to the entries it holds (segment rolled or closed).
    pub fn trim(&mut self) -> Result<()> {
        self.remap(self.entries * N)
    }

    /// Grows the file back to `max_bytes` so that appends can resume.
    pub fn make_writable(&mut self, max_bytes: usize) -> Result<()> {
        self.remap((max_bytes / N * N).max(self.entries * N))
    }

    /// The file's path, for an fsync outside the owner's lock
    /// (`checkpoint::sync_if_present`: an fsync through another descriptor writes back
    /// the pages dirtied through the map too).
    pub fn durable_path(&self) -> PathBuf {
        self.path.clone()
    }

    pub fn flush(&self) -> Result<()> {
        if let Some(map) = &self.mmap {
            map.flush().map_err(LogError::io(&self.path))?;
        }
        Ok(())
    }

    pub fn delete(mut self) -> Result<()> {
        self.mmap = None;
        std::fs::remove_file(&self.path).map_err(LogError::io(&self.path))
    }
}

fn open_file(path: &Path, create: bool) -> Result<File> {
    crate::open_files::open_read_write(path, create).map_err(LogError::io(path))
}
