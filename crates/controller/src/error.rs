//! Controller errors. Each maps to the Kafka error code a broker hands to clients.

use sluice_metadata::error_code as ec;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no controller leader is known")]
    NotController,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl ControllerError {
    pub fn error_code(&self) -> i16 {
        match self {
            ControllerError::InvalidPartitions(_) => ec::INVALID_PARTITIONS,
            ControllerError::InvalidReplicationFactor(_) => ec::INVALID_REPLICATION_FACTOR,
            ControllerError::InvalidTopic(_) => ec::INVALID_TOPIC_EXCEPTION,
            ControllerError::InvalidConfig(_) => ec::INVALID_CONFIG,
            ControllerError::InvalidRequest(_) => ec::INVALID_REQUEST,
            ControllerError::NotController | ControllerError::Raft(_) => ec::NOT_CONTROLLER,
            ControllerError::Timeout(_) => ec::REQUEST_TIMED_OUT,
            ControllerError::Storage(_) => ec::NOT_CONTROLLER,
        }
    }
}

pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
