//! The contract between the control plane and the data plane: the typed metadata records
//! and the controller gRPC API (generated from `proto/`), and the [`MetadataImage`] those
//! records build. Controllers apply committed records to their image (the Raft state
//! machine); brokers apply the same records, streamed by `WatchMetadata`, to their own copy.
//!
//! Invariant: [`MetadataImage::apply`] is deterministic — the same batches in the same
//! order give the same image on every node — and never panics on any record.

pub mod error_code;
mod image;

pub use image::{ApplyOutcome, MetadataImage};

/// Generated protobuf types and gRPC stubs. Module paths mirror the proto packages
/// (`sluice.metadata.v1` → `metadata::v1`): generated code refers across packages by
/// relative path.
pub mod proto {
    /// `proto/metadata.proto`: records, image.
    pub mod metadata {
        pub use v1::*;
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("sluice.metadata.v1");
        }
    }
    /// `proto/controller.proto`: the controller API.
    pub mod controller {
        pub use v1::*;
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("sluice.controller.v1");
        }
    }
}

pub use proto::metadata::{
    metadata_record::Record, Broker, CommittedOffset, Endpoint, MetadataBatch, MetadataRecord,
    Partition, Topic,
};

/// Broker id meaning "no broker" (an offline partition's leader).
pub const NO_LEADER: i32 = -1;
