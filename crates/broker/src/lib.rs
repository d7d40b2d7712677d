//! The Kafka-protocol broker: a tokio listener with one task per connection (requests
//! answered in order), request handlers per API, and the partitions this broker holds
//! (their logs, roles and high watermarks), following the controllers' metadata.
//!
//! Layout: [`broker_node`] wires a running broker; [`listener`] and [`connection`] own the
//! sockets; [`handlers`] one module per Kafka API; [`replica_manager`] and [`partition`]
//! the data; [`metadata_follower`] and [`controller_client`] the control plane's side.

pub mod broker;
pub mod broker_config;
pub mod broker_node;
pub mod connection;
pub mod controller_client;
pub mod controller_lease;
pub mod fetch_session;
pub mod group_coordinator;
pub mod handlers;
pub mod isr_changes;
pub mod leader_state;
pub mod listener;
pub mod log_dir_health;
mod log_scrubber;
pub mod metadata_follower;
pub mod offline_replicas;
pub mod offset_commit_batcher;
pub mod partition;
pub mod producer_id_manager;
pub mod purgatory;
pub mod replica_fetcher;
pub mod replica_manager;
pub mod request_metrics;
pub mod topic_config;

pub use broker::Broker;
pub use broker_config::BrokerConfig;
pub use broker_node::{BrokerError, BrokerNode};
pub use listener::{BrokerListener, ListenerConfig};
pub use metadata_follower::{MetadataFollower, MetadataFollowerConfig};
