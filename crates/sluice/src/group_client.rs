//! What the CLI's group commands and benchmarks need of a group's coordinator: finding it
//! (FindCoordinator, retried while the cluster places it) and one connection to it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ClientConnection;

use crate::kafka_client::{connect, error_name, Cluster};

pub const FIND_COORDINATOR_VERSION: i16 = 3;
pub const JOIN_GROUP_VERSION: i16 = 7;
pub const SYNC_GROUP_VERSION: i16 = 5;
pub const HEARTBEAT_VERSION: i16 = 4;
pub const LEAVE_GROUP_VERSION: i16 = 4;
pub const OFFSET_COMMIT_VERSION: i16 = 8;

/// Errors that mean "ask again shortly": the coordinator is moving or loading.
const COORDINATOR_RETRIABLE: [i16; 3] = [14, 15, 16];
/// How long to look for a coordinator before giving up.
const FIND_TIMEOUT: Duration = Duration::from_secs(15);

/// The address (host:port) of `group`'s coordinator, asked of the bootstrap broker.
pub async fn find_coordinator(cluster: &mut Cluster, group: &str) -> Result<(i32, String)> {
    let deadline = Instant::now() + FIND_TIMEOUT;
    loop {
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let response: FindCoordinatorResponse = cluster
            .bootstrap()
            .send(
                ApiKey::FindCoordinator,
                FIND_COORDINATOR_VERSION,
                &request,
                true,
            )
            .await?;
        if response.error_code == 0 {
            return Ok((
                response.node_id.0,
                format!("{}:{}", response.host, response.port),
            ));
        }
        if !COORDINATOR_RETRIABLE.contains(&response.error_code) || Instant::now() > deadline {
            bail!(
                "no coordinator for group {group}: {}",
                error_name(response.error_code)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection to `group`'s coordinator.
pub async fn coordinator(cluster: &mut Cluster, group: &str) -> Result<ClientConnection> {
    let (_, address) = find_coordinator(cluster, group).await?;
    connect(&address).await
}
