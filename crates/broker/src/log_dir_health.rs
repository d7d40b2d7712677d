//! Whether this broker's log directory can take writes (Kafka's offline log dir, for
//! Sluice's one directory).
//!
//! A log write that fails with an I/O error — an append, a truncation, a leader epoch
//! checkpoint; a full disk (ENOSPC) is the common case, EIO and EROFS the others — takes
//! the directory offline, logged once. From then on the broker reports it on every
//! heartbeat (sent at once) and the controller fences the broker: its leaderships move to
//! other ISR members and it leaves every ISR in one metadata entry, so acks=all goes on
//! with the others. Leader appends are refused with KAFKA_STORAGE_ERROR and follower
//! fetching pauses.
//!
//! A full disk (ENOSPC, EDQUOT) is expected to pass: while offline the broker probes the
//! directory by reserving [`PROBE_BYTES`] in a scratch file, after 1 s, then after twice
//! as long each time the directory went offline again (at most a minute), so a disk hovering
//! at full does not fence and unfence the broker every second; once a probe succeeds the
//! directory is online again (logged once), the heartbeats say so, the controller unfences
//! the broker, and it rejoins ISRs as any returning follower does, by catching up. Any
//! other I/O error (EIO, EROFS, a permission) keeps the directory offline until the broker
//! is restarted, as Kafka does for every offline log dir: a probe writing a fresh file
//! would succeed while the failing file keeps failing.
//!
//! Invariant: only a storage failure (`LogError::Io`) takes the directory offline; bad
//! input (a corrupt batch, an epoch regression) never does.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_log::LogError;
use tokio::sync::Notify;

/// What a probe reserves: two of the log's preallocation steps (an active segment grows
/// 16 MiB at a time), so an append that needs a new step fits with room to spare.
pub const PROBE_BYTES: u64 = 32 * 1024 * 1024;

/// The longest wait between probes.
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(60);

/// The scratch file a probe writes and removes (skipped by the log manager: not a
/// partition directory).
pub const PROBE_FILE: &str = ".sluice-space-probe";

/// errno values of a full file system: no space, quota exceeded.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

#[derive(Default)]
pub struct LogDirHealth {
    offline: AtomicBool,
    state: Mutex<OfflineState>,
    /// Notified on every transition (the heartbeat loop reports it at once; the permit is
    /// kept if it is not waiting then).
    changed: Notify,
}

#[derive(Default)]
struct OfflineState {
    /// The failure that took the directory offline, while it is.
    error: Option<String>,
    /// A full disk: probes may bring the directory back.
    recoverable: bool,
    since: Option<Instant>,
    /// How many times the directory went offline (the probe backoff doubles each time).
    episodes: u32,
}

impl LogDirHealth {
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OfflineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The failure that took the directory offline, while it is.
    pub fn error(&self) -> Option<String> {
        self.state().error.clone()
    }

    /// Records the outcome of a log write: an I/O error takes the directory offline
    /// (logged on the transition only). Other errors change nothing.
    pub fn check<T>(&self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e @ LogError::Io { .. }) = &result {
            self.take_offline(e);
        }
        result
    }

    pub(crate) fn take_offline(&self, error: &LogError) {
        let mut state = self.state();
        if self.offline.swap(true, Ordering::AcqRel) {
            return;
        }
        let recoverable = matches!(
            error,
            LogError::Io { source, .. } if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
        );
        if recoverable {
            tracing::error!(error = %error, "the log directory cannot take writes: giving up every leadership and leaving every ISR until it has space again");
        } else {
            tracing::error!(error = %error, "the log directory cannot take writes: giving up every leadership and leaving every ISR until the broker is restarted");
        }
        state.error = Some(error.to_string());
        state.recoverable = recoverable;
        state.since = Some(Instant::now());
        state.episodes = state.episodes.saturating_add(1);
        drop(state);
        self.changed.notify_one();
    }

    /// How long after going offline the next probe may run.
    fn probe_backoff(episodes: u32) -> Duration {
        let doublings = episodes.saturating_sub(1).min(6);
        (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_PROBE_BACKOFF)
    }

    /// Waits for the next transition.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// While offline with a full disk, once the backoff has passed: tries to reserve
    /// [`PROBE_BYTES`] in `dir` (then frees it). On success the directory is online again.
    /// Returns whether it is online.
    pub fn probe(&self, dir: &Path) -> bool {
        if !self.is_offline() {
            return true;
        }
        {
            let state = self.state();
            let due = state
                .since
                .is_none_or(|t| t.elapsed() >= Self::probe_backoff(state.episodes));
            if !state.recoverable || !due {
                return false;
            }
        }
        let path = dir.join(PROBE_FILE);
        let reserved = reserve(&path, PROBE_BYTES);
        let _ = std::fs::remove_file(&path);
        match reserved {
            Ok(()) => {
                let mut state = self.state();
                state.error = None;
                state.since = None;
                self.offline.store(false, Ordering::Release);
                drop(state);
                tracing::warn!(dir = %dir.display(), "the log directory takes writes again: rejoining");
                self.changed.notify_one();
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

    fn backdate(health: &LogDirHealth, by: Duration) {
        let mut state = health.state();
        state.since = state.since.and_then(|t| t.checked_sub(by));
    }

    #[test]
    fn a_successful_probe_brings_a_full_disk_back_after_the_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let health = LogDirHealth::default();
        assert!(health.probe(dir.path()), "online: nothing to probe");
        let _ = health.check(Err::<(), _>(io_error()));
        assert!(!health.probe(dir.path()), "not before a second has passed");
        backdate(&health, Duration::from_secs(1));
        assert!(health.probe(dir.path()));
        assert!(!health.is_offline());
        assert_eq!(health.error(), None);
        assert!(!dir.path().join(PROBE_FILE).exists(), "the probe cleans up");
        // a directory that cannot be written stays offline; the second time the first
        // probe waits two seconds
        let _ = health.check(Err::<(), _>(io_error()));
        backdate(&health, Duration::from_secs(1));
        assert!(!health.probe(dir.path()), "the backoff doubled");
        backdate(&health, Duration::from_secs(1));
        assert!(!health.probe(&dir.path().join("missing")));
        assert!(health.is_offline());
        assert_eq!(LogDirHealth::probe_backoff(20), MAX_PROBE_BACKOFF);
    }

    #[test]
    fn other_io_errors_stay_offline_until_restart() {
        let dir = tempfile::tempdir().unwrap();
        let health = LogDirHealth::default();
        let eio = LogError::Io {
            path: "/data/t-0/00000000000000000000.log".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        let _ = health.check(Err::<(), _>(eio));
        backdate(&health, Duration::from_secs(3600));
        assert!(!health.probe(dir.path()));
        assert!(health.is_offline());
    }
}
