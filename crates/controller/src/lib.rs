//! The controller quorum: a three-voter Raft group (openraft 0.9) whose state machine is
//! the cluster's [`sluice_metadata::MetadataImage`], the gRPC services brokers and tools
//! call, the failure detector that fences brokers whose session expired, and replica
//! placement. openraft's types stay inside this crate.

pub mod controller_node;
pub mod controller_service;
pub mod coordinator_placement;
pub mod error;
pub mod failure_detector;
pub mod offset_expiry;
pub mod partition_election;
pub mod placement;
pub mod raft_log_store;
pub mod raft_network;
pub mod raft_types;
pub mod state_machine;

pub use controller_node::{
    ControllerConfig, ControllerNode, ControllerStatus, ControllerStatusReader,
};
pub use error::{ControllerError, Result};
