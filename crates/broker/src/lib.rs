//! The Kafka-protocol broker (issue 4, in progress): a tokio listener, one task per
//! connection, requests answered in order. Today it answers ApiVersions; the other APIs
//! arrive with the rest of the issue.

pub mod connection;
pub mod listener;
pub mod metadata_follower;

pub use listener::{BrokerListener, ListenerConfig};
pub use metadata_follower::{MetadataFollower, MetadataFollowerConfig};
