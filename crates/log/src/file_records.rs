//! A segment's `.log` file: batches back to back, exactly as they came off the wire.
//!
//! Appends go through the page cache, with `pwrite(2)` ([`AppendMode::Write`]), by copying
//! into a shared memory map of the preallocated file ([`AppendMode::Mmap`]), or by size,
//! one or the other ([`AppendMode::Hybrid`]).
//! Reads never copy: they hand out [`FileRegion`]s for `sendfile(2)`. The descriptor is
//! the open-file budget's (`open_files`): it may be closed while unused and is opened
//! again by path on the next use.
//!
//! Invariant: bytes `[0, size)` are whole, validated batches; in mmap mode the file may be
//! longer than `size` (preallocated zeros) until it is sealed; `allocated_bytes` is at
//! least the file's length while the file is writable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};
use sluice_record::{BatchHeader, BATCH_HEADER_BYTES};

use crate::config::{AppendMode, HYBRID_MMAP_MAX_APPEND_BYTES};
use crate::open_files::{OpenFileBudget, SegmentFile};
use crate::{LogError, Result};

/// A byte range of a segment file: what a fetch sends with `sendfile(2)`. It holds the file
/// open, so a segment deleted by retention after the read still serves its bytes.
#[derive(Debug, Clone)]
pub struct FileRegion {
    file: Arc<File>,
    pub position: u64,
    pub length: u64,
}

impl FileRegion {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, shared: what a response chunk holds while it waits to be sent.
    pub fn shared_file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// The region without its first `bytes` bytes.
    pub fn skip(&self, bytes: u64) -> FileRegion {
        let bytes = bytes.min(self.length);
        FileRegion {
            file: Arc::clone(&self.file),
            position: self.position + bytes,
            length: self.length - bytes,
        }
    }

    /// Copies the region into memory (tests, tools, and the non-sendfile fallback).
    pub fn read_to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.length as usize];
        self.file.read_exact_at(&mut buf, self.position)?;
        Ok(buf)
    }
}

pub(crate) struct FileRecords {
    path: PathBuf,
    file: Arc<SegmentFile>,
    size: u64,
    mode: AppendMode,
    /// Mmap mode while writable: the map of the preallocated file.
    map: Option<MmapMut>,
    /// Mmap mode: length of the map (the segment size).
    preallocate_bytes: u64,
    /// Mmap mode: the file's length on disk (logical size + allocated-ahead space).
    allocated_bytes: u64,
    /// Mmap mode: the map is faulted in (pages zeroed in the page cache) up to here.
    populated_bytes: u64,
    writable: bool,
}

/// Headers read from a file by a short forward scan, buffered to avoid a syscall per batch.
pub(crate) struct HeaderScan<'a> {
    records: &'a FileRecords,
    pub position: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

const SCAN_BUFFER_BYTES: usize = 16 * 1024;
/// Mmap mode: how far ahead of the writes the file is allocated.
const MMAP_ALLOCATE_CHUNK_BYTES: u64 = 16 * 1024 * 1024;
/// Mmap mode: how far ahead of the writes the map is faulted in, in one call. Faulting in
/// a page zeroes it and runs ext4's `page_mkwrite` (~0.6 ms per MiB here): a whole
/// allocation chunk at once stalled the append (and every request parked behind it) for
/// 20–40 ms; 256 KiB costs ~0.15 ms.
const MMAP_POPULATE_AHEAD_BYTES: u64 = 256 * 1024;
const PAGE_BYTES: u64 = 4096;

impl HeaderScan<'_> {
    /// The header of the batch at the current position, or None at the end.
    pub fn peek(&mut self) -> Result<Option<BatchHeader>> {
        if self.position >= self.end {
            return Ok(None);
        }
        let have = self.buf_start <= self.position
            && self.position + BATCH_HEADER_BYTES as u64 <= self.buf_start + self.buf.len() as u64;
        if !have {
            let len = (self.end - self.position).min(SCAN_BUFFER_BYTES as u64) as usize;
            if len < BATCH_HEADER_BYTES {
                return Err(self.corrupt("a batch header runs past the end"));
            }
            self.buf.resize(len, 0);
            self.records
                .file()?
                .read_exact_at(&mut self.buf, self.position)
                .map_err(LogError::io(&self.records.path))?;
            self.buf_start = self.position;
        }
        let at = (self.position - self.buf_start) as usize;
        let header =
            BatchHeader::parse(&self.buf[at..]).map_err(|e| self.corrupt(&e.to_string()))?;
        if self.position + header.total_size() as u64 > self.end {
            return Err(self.corrupt("a batch runs past the end"));
        }
        Ok(Some(header))
    }

    /// Moves past the batch `peek` returned.
    pub fn advance(&mut self, header: &BatchHeader) {
        self.position += header.total_size() as u64;
    }

    fn corrupt(&self, reason: &str) -> LogError {
        LogError::CorruptLog {
            path: self.records.path.clone(),
            reason: format!("at position {}: {reason}", self.position),
        }
    }
}

impl FileRecords {
    pub fn open(
        path: &Path,
        mode: AppendMode,
        preallocate_bytes: u64,
        writable: bool,
        budget: &OpenFileBudget,
    ) -> Result<Self> {
        let file = budget.open(path).map_err(LogError::io(path))?;
        let size = file
            .get()
            .and_then(|f| f.metadata())
            .map_err(LogError::io(path))?
            .len();
        Ok(FileRecords {
            path: path.to_path_buf(),
            file,
            size,
            mode,
            map: None,
            preallocate_bytes,
            allocated_bytes: size,
            populated_bytes: 0,
            writable,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (opened again if the budget closed it), for reads and for an fsync
    /// outside the owner's lock.
    pub fn file(&self) -> Result<Arc<File>> {
        self.file.get().map_err(LogError::io(&self.path))
    }

    /// Whether the open-file budget holds its descriptor now.
    pub fn is_open(&self) -> bool {
        self.file.is_open()
    }

    /// The open file if the budget holds its descriptor now (never opens it).
    pub fn file_if_open(&self) -> Option<Arc<File>> {
        self.file.get_if_open()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `bytes` (whole, validated batches) in one write; returns their position.
    pub fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        assert!(
            self.writable,
            "append to a sealed segment {}",
            self.path.display()
        );
        let position = self.size;
        let end = position + bytes.len() as u64;
        let through_map = match self.mode {
            AppendMode::Write => false,
            AppendMode::Mmap => true,
            AppendMode::Hybrid => bytes.len() <= HYBRID_MMAP_MAX_APPEND_BYTES,
        };
        match through_map {
            false => {
                self.file()?
                    .write_all_at(bytes, position)
                    .map_err(LogError::io(&self.path))?;
                self.allocated_bytes = self.allocated_bytes.max(end);
            }
            true => {
                self.ensure_mapped(end)?;
                let map = self.map.as_mut().expect("mapped above");
                map[position as usize..end as usize].copy_from_slice(bytes);
            }
        }
        self.size = end;
        Ok(position)
    }

    /// Mmap mode: makes `[0, end)` writable through the map. The map spans the whole
    /// segment (virtual memory only); the file itself is extended with `posix_fallocate`
    /// in chunks just ahead of the writes, so a full disk is an `ENOSPC` error here rather
    /// than a `SIGBUS` on a page fault, and at most one chunk of disk is reserved ahead.
    fn ensure_mapped(&mut self, end: u64) -> Result<()> {
        if self.map.as_ref().is_none_or(|m| (m.len() as u64) < end) {
            self.map = None;
            let map_len = end.max(self.preallocate_bytes).max(self.allocated_bytes);
            // SAFETY: the file belongs to this segment. Only `[0, allocated_bytes)` of the
            // map is ever touched, and the file is never shrunk below that while mapped
            // (`truncate_to` and `seal` drop the map first). Readers use pread/sendfile.
            let file = self.file()?;
            let map = unsafe { MmapOptions::new().len(map_len as usize).map_mut(&*file) }
                .map_err(LogError::io(&self.path))?;
            self.map = Some(map);
        }
        if end > self.allocated_bytes {
            let map_len = self.map.as_ref().map_or(end, |m| m.len() as u64);
            let target = (self.allocated_bytes + MMAP_ALLOCATE_CHUNK_BYTES)
                .max(end)
                .min(map_len);
            let len = (target - self.allocated_bytes) as i64;
            nix::fcntl::posix_fallocate(&*self.file()?, self.allocated_bytes as i64, len)
                .map_err(|errno| LogError::io(&self.path)(std::io::Error::from(errno)))?;
            self.allocated_bytes = target;
        }
        if end > self.populated_bytes {
            // Fault the next pages in with one call instead of one trap per 4 KiB page.
            // Best effort: kernels before 5.14 lack MADV_POPULATE_WRITE, and then the pages
            // fault in on first write as usual.
            let from = self.populated_bytes.max(self.size) / PAGE_BYTES * PAGE_BYTES;
            let target = end
                .max(self.populated_bytes + MMAP_POPULATE_AHEAD_BYTES)
                .min(self.allocated_bytes);
            if let Some(map) = &self.map {
                let _ = map.advise_range(
                    memmap2::Advice::PopulateWrite,
                    from as usize,
                    (target - from) as usize,
                );
            }
            self.populated_bytes = target;
        }
        Ok(())
    }

    /// A scan over batch headers in `[position, min(end, size))`.
    pub fn scan(&self, position: u64, end: u64) -> HeaderScan<'_> {
        HeaderScan {
            records: self,
            position,
            end: end.min(self.size),
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    pub fn region(&self, position: u64, length: u64) -> Result<FileRegion> {
        debug_assert!(position + length <= self.size);
        Ok(FileRegion {
            file: self.file()?,
            position,
            length,
        })
    }

    /// Maps the whole file read-only for a recovery scan (None when empty).
    pub fn map_for_recovery(&self) -> Result<Option<memmap2::Mmap>> {
        if self.file_len()? == 0 {
            return Ok(None);
        }
        // SAFETY: recovery runs before the log serves anything; nothing resizes the file
        // while this map lives.
        let map =
            unsafe { memmap2::Mmap::map(&*self.file()?) }.map_err(LogError::io(&self.path))?;
        Ok(Some(map))
    }

    /// The on-disk length, which in mmap mode may exceed the logical size.
    pub fn file_len(&self) -> Result<u64> {
        Ok(self
            .file()?
            .metadata()
            .map_err(LogError::io(&self.path))?
            .len())
    }

    /// Cuts the logical size (and the file) to `size`.
    pub fn truncate_to(&mut self, size: u64) -> Result<()> {
        assert!(size <= self.file_len()?, "truncate beyond the file end");
        self.map = None;
        self.file()?
            .set_len(size)
            .map_err(LogError::io(&self.path))?;
        self.size = size;
        self.allocated_bytes = size;
        self.populated_bytes = 0;
        Ok(())
    }

    /// Sets the logical size after recovery found the valid end (file already cut).
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
        self.allocated_bytes = self.allocated_bytes.max(size);
    }

    pub fn flush(&self) -> Result<()> {
        if let Some(map) = &self.map {
            map.flush_range(0, self.size as usize)
                .map_err(LogError::io(&self.path))?;
        }
        self.file()?.sync_data().map_err(LogError::io(&self.path))
    }

    /// No more appends: drops the map and trims preallocated space.
    pub fn seal(&mut self) -> Result<()> {
        if self.map.take().is_some() || self.file_len()? != self.size {
            self.file()?
                .set_len(self.size)
                .map_err(LogError::io(&self.path))?;
        }
        self.writable = false;
        Ok(())
    }

    pub fn make_writable(&mut self) {
        self.writable = true;
    }

    pub fn delete(self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(LogError::io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends through the map that cross populate windows and allocation chunks, a
    /// truncation (which drops the map) and appends after it all read back as written.
    #[test]
    fn mmap_appends_across_populate_windows_and_chunks_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        let segment_bytes = 3 * MMAP_ALLOCATE_CHUNK_BYTES;
        let mut records = FileRecords::open(
            &path,
            AppendMode::Mmap,
            segment_bytes,
            true,
            &OpenFileBudget::unlimited(),
        )
        .unwrap();
        let mut model = Vec::new();
        let append = |records: &mut FileRecords, model: &mut Vec<u8>, len: usize| {
            let bytes: Vec<u8> = (0..len).map(|i| (model.len() + i) as u8 ^ 0x5a).collect();
            let position = records.append(&bytes).unwrap();
            assert_eq!(position, model.len() as u64);
            model.extend_from_slice(&bytes);
        };
        // odd sizes, so windows and chunks are crossed mid-append
        let mut len = 1;
        while (model.len() as u64) < MMAP_ALLOCATE_CHUNK_BYTES + MMAP_POPULATE_AHEAD_BYTES * 3 {
            append(&mut records, &mut model, len);
            len = (len * 7 + 4093) % 300_001;
        }
        assert!(records.populated_bytes <= records.allocated_bytes);
        assert!(records.populated_bytes >= records.size());
        let cut = model.len() as u64 - MMAP_POPULATE_AHEAD_BYTES - 17;
        records.truncate_to(cut).unwrap();
        model.truncate(cut as usize);
        for _ in 0..40 {
            append(&mut records, &mut model, 12_345);
        }
        let read = records
            .region(0, records.size())
            .unwrap()
            .read_to_vec()
            .unwrap();
        assert!(read == model, "read back differs from what was appended");
    }
}
