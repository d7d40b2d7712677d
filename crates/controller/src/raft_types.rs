//! The openraft type configuration: a Raft entry carries one [`MetadataBatch`]; applying it
//! answers one [`ApplyOutcome`] per record. Node ids are Kafka's `node.id`s, node addresses
//! the controller listeners (`host:port`) from `controller.quorum.voters`.

use std::io::Cursor;

use sluice_metadata::{ApplyOutcome, MetadataBatch};

/// What applying one entry produced (empty for blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyResponse {
    pub outcomes: Vec<ApplyOutcome>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = MetadataBatch,
        R = ApplyResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
