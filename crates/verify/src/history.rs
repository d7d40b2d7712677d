//! The recorded history of a verification run: one JSON object per line, in the order
//! the workload saw things happen. Producers record each send as `invoke` and then one
//! outcome (`ok` with its partition and offset, `fail` when the client knows the record
//! was not written, `info` when it cannot know); group consumers record what each poll
//! returned, their assignments and their successful commits; an observer records each
//! partition's high watermark as clients see it, a few times a second; the final read
//! records every record of every partition (with its leader epoch) after the faults are
//! healed; the fault harness adds `nemesis` lines. The checker (`checker.rs`) reads nothing else, so a history file can
//! be checked again, or by another tool, after the run.
//!
//! Values are unique per run (`<producer>-<sequence>`), so a value names one send.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::VerifyError;

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run's settings (the first line).
    Start {
        topic: String,
        partitions: i32,
        acks: String,
        idempotent: bool,
        producers: u32,
        consumers: u32,
        /// Wall-clock time (ms since the UNIX epoch) of the history's `time_ms` 0, so
        /// events recorded by another process (the fault harness) can be placed on it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_clock_ms: Option<u64>,
    },
    /// A producer handed `value` to its client.
    Invoke {
        time_ms: u64,
        producer: u32,
        value: String,
    },
    /// The client reported `value` acknowledged at (`partition`, `offset`).
    Ok {
        time_ms: u64,
        producer: u32,
        value: String,
        partition: i32,
        offset: i64,
    },
    /// The client reported the send failed and the record not written.
    Fail {
        time_ms: u64,
        producer: u32,
        value: String,
        error: String,
    },
    /// The send's outcome is unknown (a timeout, a lost connection): it may be written.
    Info {
        time_ms: u64,
        producer: u32,
        value: String,
        error: String,
    },
    /// A group consumer's assignment changed: its polls start afresh per partition.
    Assign {
        time_ms: u64,
        consumer: u32,
        partitions: Vec<i32>,
    },
    /// A group consumer's poll returned a record.
    Poll {
        time_ms: u64,
        consumer: u32,
        partition: i32,
        offset: i64,
        value: String,
    },
    /// A partition's high watermark as the observer read it (ListOffsets, latest).
    Watermark {
        time_ms: u64,
        partition: i32,
        high: i64,
    },
    /// A group consumer's offset commit succeeded.
    Commit {
        time_ms: u64,
        consumer: u32,
        partition: i32,
        offset: i64,
    },
    /// A group consumer's offset commit failed (the client's error): it may still have
    /// been applied (a timeout), or not (a refusal). Recorded for diagnosis.
    CommitFailed {
        time_ms: u64,
        consumer: u32,
        partition: i32,
        offset: i64,
        error: String,
    },
    /// A partition's log end as the final read found it (written before its records).
    FinalEnd { partition: i32, end_offset: i64 },
    /// A record of the final read (every partition read from its start to its end), with
    /// the leader epoch its batch was written in (when the client said).
    Final {
        partition: i32,
        offset: i64,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader_epoch: Option<i32>,
    },
    /// A fault, from its start to its heal (written by the fault harness).
    Nemesis {
        time_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        healed_ms: Option<u64>,
        what: String,
    },
}

/// Milliseconds since the UNIX epoch, now.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends events to a history file from any thread; each line is written whole.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
}

struct RecorderInner {
    out: BufWriter<std::fs::File>,
    started: Instant,
    started_wall_ms: u64,
    failed: Option<String>,
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Recorder, VerifyError> {
        let file = std::fs::File::create(path).map_err(VerifyError::io(path))?;
        Ok(Recorder {
            inner: Arc::new(Mutex::new(RecorderInner {
                out: BufWriter::new(file),
                started: Instant::now(),
                started_wall_ms: wall_clock_ms(),
                failed: None,
            })),
        })
    }

    /// Wall-clock time of the history clock's 0.
    pub fn started_wall_ms(&self) -> u64 {
        self.lock().started_wall_ms
    }

    /// Milliseconds since the recorder was created (the history's clock).
    pub fn now_ms(&self) -> u64 {
        self.lock().started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event`; a write error is kept and returned by [`Self::finish`].
    pub fn record(&self, event: &Event) {
        let mut inner = self.lock();
        if inner.failed.is_some() {
            return;
        }
        let result = serde_json::to_writer(&mut inner.out, event)
            .map_err(std::io::Error::from)
            .and_then(|()| inner.out.write_all(b"\n"));
        if let Err(e) = result {
            inner.failed = Some(e.to_string());
        }
    }

    /// Flushes the file; the first error any write met.
    pub fn finish(&self) -> Result<(), VerifyError> {
        let mut inner = self.lock();
        if let Some(e) = inner.failed.take() {
            return Err(VerifyError::History(e));
        }
        inner
            .out
            .flush()
            .map_err(|e| VerifyError::History(e.to_string()))
    }
}

/// Reads a history file. A torn last line (the run was killed while writing it) is
/// skipped; any other line that does not parse is an error naming its line number.
pub fn read(path: &Path) -> Result<Vec<Event>, VerifyError> {
    let file = std::fs::File::open(path).map_err(VerifyError::io(path))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(VerifyError::io(path))?;
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(e) => events.push(e),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(VerifyError::History(format!(
                    "{}: line {}: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(events)
}

/// Appends `events` to an existing history file (the fault harness adds its faults once
/// the workload has finished writing).
pub fn append(path: &Path, events: &[Event]) -> Result<(), VerifyError> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(VerifyError::io(path))?;
    let mut out = BufWriter::new(file);
    for e in events {
        serde_json::to_writer(&mut out, e).map_err(|e| VerifyError::History(e.to_string()))?;
        out.write_all(b"\n").map_err(VerifyError::io(path))?;
    }
    out.flush().map_err(VerifyError::io(path))
}
