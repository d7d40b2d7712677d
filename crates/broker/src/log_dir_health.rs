//! Whether this broker's log directory can take writes (Kafka's offline log dir, for
//! Sluice's one directory).
//!
//! A log write that fails with an I/O error — an append, a truncation, a leader epoch
//! checkpoint; a full disk (ENOSPC) is the common case, EIO and EROFS the others — takes
//! the directory offline, logged once. From then on the broker reports it on every
//! heartbeat (sent at once) and the controller fences the broker: its leaderships move to
//! other ISR members and it leaves every ISR in one metadata entry, so acks=all goes on
//! with the others. Leader appends are refused with KAFKA_STORAGE_ERROR and follower
//! fetching pauses. While offline the broker probes the directory every second by
//! reserving [`PROBE_BYTES`] in a scratch file; once that succeeds the directory is online
//! again (logged once), the heartbeats say so, the controller unfences the broker, and it
//! rejoins ISRs as any returning follower does, by catching up.
//!
//! Invariant: only a storage failure (`LogError::Io`) takes the directory offline; bad
//! input (a corrupt batch, an epoch regression) never does.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sluice_log::LogError;
use tokio::sync::Notify;

/// What a probe reserves: the log's own preallocation step (an active segment grows 16 MiB
/// at a time), so an append that needs a new step fits once the probe does.
pub const PROBE_BYTES: u64 = 16 * 1024 * 1024;

/// The scratch file a probe writes and removes (skipped by the log manager: not a
/// partition directory).
pub const PROBE_FILE: &str = ".sluice-space-probe";

#[derive(Default)]
pub struct LogDirHealth {
    offline: AtomicBool,
    error: Mutex<Option<String>>,
    /// Notified on every transition (the heartbeat loop reports it at once).
    changed: Notify,
}

impl LogDirHealth {
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// The failure that took the directory offline, while it is.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the outcome of a log write: an I/O error takes the directory offline
    /// (logged on the transition only). Other errors change nothing.
    pub fn check<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e @ LogError::Io { .. }) = &result {
            self.take_offline(e);
        }
        result
    }

    fn take_offline(&self, error: &LogError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if !self.offline.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %error, "the log directory cannot take writes: giving up every leadership and leaving every ISR until it can (probing every second)");
            *slot = Some(error.to_string());
            drop(slot);
            self.changed.notify_waiters();
        }
    }

    /// Waits for the next transition.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// While offline: tries to reserve [`PROBE_BYTES`] in `dir` (then frees it). On success
    /// the directory is online again. Returns whether it is online.
    pub fn probe(&self, dir: &Path) -> bool {
        if !self.is_offline() {
            return true;
        }
        let path = dir.join(PROBE_FILE);
        let reserved = reserve(&path, PROBE_BYTES);
        let _ = std::fs::remove_file(&path);
        match reserved {
            Ok(()) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.offline.store(false, Ordering::Release);
                tracing::warn!(dir = %dir.display(), "the log directory takes writes again: rejoining");
                self.changed.notify_waiters();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "log directory probe failed: still offline");
                false
            }
        }
    }
}

/// Creates `path` with `bytes` allocated (not a sparse hole) and fsyncs it.
fn reserve(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let length = i64::try_from(bytes).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    nix::fcntl::posix_fallocate(&file, 0, length).map_err(std::io::Error::from)?;
    file.write_all(b"probe")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> LogError {
        LogError::Io {
            path: "/data/t-0/00000000000000000000.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        }
    }

    #[test]
    fn only_storage_failures_take_the_directory_offline() {
        let health = LogDirHealth::default();
        let bad_input: Result<(), LogError> = Err(LogError::EmptyRecordSet);
        assert!(health.check(bad_input).is_err());
        assert!(!health.is_offline());
        assert!(health.check(Err::<(), _>(io_error())).is_err());
        assert!(health.is_offline());
        assert!(health.error().is_some_and(|e| e.contains("No space left")));
    }

    #[test]
    fn a_successful_probe_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let health = LogDirHealth::default();
        assert!(health.probe(dir.path()), "online: nothing to probe");
        let _ = health.check(Err::<(), _>(io_error()));
        assert!(health.probe(dir.path()));
        assert!(!health.is_offline());
        assert_eq!(health.error(), None);
        assert!(!dir.path().join(PROBE_FILE).exists(), "the probe cleans up");
        // a directory that cannot be written stays offline
        let _ = health.check(Err::<(), _>(io_error()));
        assert!(!health.probe(&dir.path().join("missing")));
        assert!(health.is_offline());
    }
}
