//! The data directory (Kafka's `LogManager`): one [`Log`] per partition directory, the
//! clean-shutdown marker, and the directory-wide checkpoint files.
//!
//! Startup: if the marker is present the previous shutdown was clean and logs load without
//! scanning; otherwise each log recovers from its entry in
//! `recovery-point-offset-checkpoint`. The marker is removed once loading is done and
//! written again, last, by [`LogManager::shutdown`].
//!
//! Each log sits behind its own mutex so partitions proceed independently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_record::{Offset, TopicPartition};

use crate::checkpoint::{sync_dir, OffsetCheckpointFile};
use crate::config::LogConfig;
use crate::log::Log;
use crate::{LogError, Result};

pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
pub const REPLICATION_OFFSET_CHECKPOINT: &str = "replication-offset-checkpoint";
pub const CLEAN_SHUTDOWN_MARKER: &str = ".sluice_cleanshutdown";
const DELETE_SUFFIX: &str = "-delete";
/// The controller's metadata log directory (Kafka's name), which may sit in a data
/// directory: it is not a partition and the log manager never touches it.
pub const CLUSTER_METADATA_DIR: &str = "__cluster_metadata-0";

pub type SharedLog = Arc<Mutex<Log>>;

/// Locks a log. A panic while holding the lock means a broken invariant; the state is
/// still the last consistent one the log reached on disk, so the lock is taken anyway.
pub fn lock(log: &SharedLog) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct LogManager {
    data_dir: PathBuf,
    default_config: LogConfig,
    logs: BTreeMap<TopicPartition, SharedLog>,
    recovery_points: OffsetCheckpointFile,
    high_watermarks: OffsetCheckpointFile,
    loaded_clean: bool,
    /// Logs on disk that failed to open at startup, with their recovery points: opened
    /// later as they would have been then (a recovery scan after an unclean shutdown).
    unopened: BTreeMap<TopicPartition, Offset>,
}

impl LogManager {
    /// Opens `data_dir`, loading (and if needed recovering) every partition log in it.
    pub fn open(data_dir: &Path, default_config: LogConfig, now_ms: i64) -> Result<LogManager> {
        default_config.validate()?;
        std::fs::create_dir_all(data_dir).map_err(LogError::io(data_dir))?;
        let marker = data_dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean = marker.exists();
        let recovery_points = OffsetCheckpointFile::new(data_dir.join(RECOVERY_POINT_CHECKPOINT));
        let points = recovery_points.read()?;
        let mut logs = BTreeMap::new();
        let mut unopened = BTreeMap::new();
        for entry in std::fs::read_dir(data_dir).map_err(LogError::io(data_dir))? {
            let entry = entry.map_err(LogError::io(data_dir))?;
            if !entry
                .file_type()
                .map_err(LogError::io(entry.path()))?
                .is_dir()
            {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == CLUSTER_METADATA_DIR {
                continue;
            }
            if name.ends_with(DELETE_SUFFIX) {
                std::fs::remove_dir_all(entry.path()).map_err(LogError::io(entry.path()))?;
                continue;
            }
            let Some(tp) = TopicPartition::parse_dir_name(&name) else {
                tracing::warn!(dir = %entry.path().display(), "ignoring a directory that is not a partition");
                continue;
            };
            let recovery_point = points.get(&tp).copied().unwrap_or(Offset::ZERO);
            let log = match Log::open(
                &entry.path(),
                tp.clone(),
                default_config.clone(),
                recovery_point,
                clean,
                now_ms,
            ) {
                Ok(log) => log,
                Err(e) => {
                    // one log's trouble is not the broker's: it stays on disk as it is, and
                    // opening it is tried again (and reported) when the partition is synced
                    tracing::error!(partition = %tp, dir = %entry.path().display(), error = %e, "cannot open partition log: leaving it on disk as it is");
                    unopened.insert(tp, recovery_point);
                    continue;
                }
            };
            let report = log.load_report();
            if report.recovered_segments > 0 {
                tracing::info!(partition = %tp, ?report, "recovered log");
            }
            logs.insert(tp, Arc::new(Mutex::new(log)));
        }
        if clean {
            std::fs::remove_file(&marker).map_err(LogError::io(&marker))?;
            sync_dir(data_dir)?;
        }
        Ok(LogManager {
            data_dir: data_dir.to_path_buf(),
            default_config,
            high_watermarks: OffsetCheckpointFile::new(
                data_dir.join(REPLICATION_OFFSET_CHECKPOINT),
            ),
            recovery_points,
            logs,
            loaded_clean: clean,
            unopened,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the previous shutdown was clean (no recovery scan was needed).
    pub fn loaded_clean(&self) -> bool {
        self.loaded_clean
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<SharedLog> {
        self.logs.get(tp).cloned()
    }

    pub fn topic_partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.logs.keys()
    }

    /// The log of `tp`, created with `config` (or the default) if it does not exist.
    pub fn get_or_create(
        &mut self,
        tp: &TopicPartition,
        config: Option<LogConfig>,
        now_ms: i64,
    ) -> Result<SharedLog> {
        if let Some(log) = self.logs.get(tp) {
            return Ok(Arc::clone(log));
        }
        let dir = self.data_dir.join(tp.to_string());
        let config = config.unwrap_or_else(|| self.default_config.clone());
        // a new log; or one that failed to open at startup, opened as it would have been
        let (recovery_point, clean) = match self.unopened.get(tp) {
            Some(point) => (*point, self.loaded_clean),
            None => (Offset::ZERO, true),
        };
        let log = Log::open(&dir, tp.clone(), config, recovery_point, clean, now_ms)?;
        self.unopened.remove(tp);
        sync_dir(&self.data_dir)?;
        let log = Arc::new(Mutex::new(log));
        self.logs.insert(tp.clone(), Arc::clone(&log));
        Ok(log)
    }

    /// Deletes a partition's log: the directory is renamed (atomically) to a `-delete`
    /// name, then removed; a crash in between leaves a directory the next open removes.
    pub fn delete(&mut self, tp: &TopicPartition, now_ms: i64) -> Result<bool> {
        let Some(log) = self.logs.remove(tp) else {
            return Ok(false);
        };
        let mut log = lock(&log);
        log.close()?;
        let from = log.dir().to_path_buf();
        let to = self.data_dir.join(format!("{tp}.{now_ms}{DELETE_SUFFIX}"));
        std::fs::rename(&from, &to).map_err(LogError::io(&from))?;
        sync_dir(&self.data_dir)?;
        std::fs::remove_dir_all(&to).map_err(LogError::io(&to))?;
        Ok(true)
    }

    /// Periodic work for every log ([`LogManager::tick_log`]), then the recovery-point
    /// checkpoint.
    pub fn tick(
        &self,
        now_ms: i64,
        run_retention: bool,
        deletable_below: impl Fn(&TopicPartition) -> Option<Offset>,
    ) -> Result<()> {
        for (tp, log) in &self.logs {
            let bound = run_retention.then(|| deletable_below(tp));
            Self::tick_log(log, now_ms, bound)?;
        }
        self.checkpoint_recovery_points()
    }

    /// Every log, to work on without holding the manager (its logs stay valid: a deleted
    /// one is closed, and flushes nothing more).
    pub fn shared_logs(&self) -> Vec<(TopicPartition, SharedLog)> {
        self.logs
            .iter()
            .map(|(tp, log)| (tp.clone(), Arc::clone(log)))
            .collect()
    }

    /// One log's periodic work: the flush policy and sealed-segment flushes, with the
    /// fsyncs outside the log's lock (appends and reads go on meanwhile); producer-id
    /// expiry; and, when `retention` is Some, retention bounded by its offset (e.g. the
    /// high watermark; None = the log end offset). Returns whether retention moved the
    /// log start offset.
    pub fn tick_log(
        log: &SharedLog,
        now_ms: i64,
        retention: Option<Option<Offset>>,
    ) -> Result<bool> {
        // a closed log (deleted since the caller listed it) is left alone
        let task = {
            let mut log = lock(log);
            if log.is_closed() {
                return Ok(false);
            }
            log.tick_flush_task(now_ms)
        };
        if let Some(task) = task {
            let result = task.run();
            lock(log).finish_flush(task, result.is_ok());
            result?;
        }
        let mut log = lock(log);
        if log.is_closed() {
            return Ok(false);
        }
        log.expire_producers(now_ms);
        if let Some(bound) = retention {
            let bound = bound.unwrap_or(log.log_end_offset());
            return Ok(log.delete_retained_segments(now_ms, bound)? > 0);
        }
        Ok(false)
    }

    pub fn checkpoint_recovery_points(&self) -> Result<()> {
        let points: BTreeMap<TopicPartition, Offset> = self
            .logs
            .iter()
            .map(|(tp, log)| (tp.clone(), lock(log).recovery_point()))
            .collect();
        self.recovery_points.write(&points)
    }

    /// Persists high watermarks (`replication-offset-checkpoint`); the broker owns them.
    pub fn write_high_watermarks(
        &self,
        high_watermarks: &BTreeMap<TopicPartition, Offset>,
    ) -> Result<()> {
        self.high_watermarks.write(high_watermarks)
    }

    pub fn read_high_watermarks(&self) -> Result<BTreeMap<TopicPartition, Offset>> {
        self.high_watermarks.read()
    }

    /// Clean shutdown: flush and close every log, write the recovery points, then the
    /// marker. After this the next open needs no recovery scan.
    pub fn shutdown(self) -> Result<()> {
        for log in self.logs.values() {
            lock(log).close()?;
        }
        self.checkpoint_recovery_points()?;
        let marker = self.data_dir.join(CLEAN_SHUTDOWN_MARKER);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(LogError::io(&marker))?;
        sync_dir(&self.data_dir)
    }
}

/// (total, usable) bytes of the file system holding `path` (statvfs; usable = what an
/// unprivileged writer may still take).
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| LogError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    let block = stat.fragment_size();
    Ok((
        stat.blocks().saturating_mul(block),
        stat.blocks_available().saturating_mul(block),
    ))
}
