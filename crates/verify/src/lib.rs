//! Verification of a Kafka-compatible cluster from the outside, as Jepsen checks Kafka:
//! a workload of librdkafka producers and group consumers records every operation in a
//! history (`history.rs`, `workload.rs`), and a checker (`checker.rs`) reads the history
//! back and counts lost, duplicated, reordered and inconsistent records. Used by
//! `sluice verify` (against any bootstrap address, faults left to the operator) and by
//! the fault harness in `chaos/` (which injects the faults).

pub mod checker;
pub mod history;
pub mod workload;

pub use checker::{check, Report};
pub use history::{Event, Recorder};
pub use workload::{run, WorkloadConfig};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("history: {0}")]
    History(String),
    #[error("kafka client: {0}")]
    Client(String),
    #[error("{0}")]
    Config(String),
}

impl VerifyError {
    /// Maps an I/O error on `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
        move |source| VerifyError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<rdkafka::error::KafkaError> for VerifyError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        VerifyError::Client(e.to_string())
    }
}
