//! Request handlers, one module per Kafka API. Each decodes its request at the version the
//! client sent, answers from the broker's own state, and encodes the response at the same
//! version. A body that does not decode ends the connection (as Kafka does); everything
//! else is answered, with per-partition Kafka error codes.

mod admin;
mod describe;
mod describe_log_dirs;
mod elect_leaders;
mod fetch;
mod find_coordinator;
mod groups;
pub(crate) use groups::known_in_image;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod offsets;
mod produce;
pub(crate) use produce::append as append_produce;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::response::encode_response;
use sluice_protocol::{Chunk, RequestFrame};
pub(crate) use sluice_record::now_ms;

use crate::broker::Broker;
use crate::connection::ConnectionError;

/// The APIs the handlers serve (ApiVersions is answered by the connection itself).
pub const HANDLED_APIS: &[ApiKey] = &[
    ApiKey::Metadata,
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
    ApiKey::DescribeConfigs,
    ApiKey::DescribeCluster,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::OffsetDelete,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::DescribeLogDirs,
    ApiKey::InitProducerId,
    ApiKey::ElectLeaders,
];

/// What a handler hands back: chunks to write, or nothing (acks=0 produce).
pub type Answer = Option<Vec<Chunk>>;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    match request.api_key {
        ApiKey::Metadata => metadata::handle(request, broker).await,
        ApiKey::Produce => produce::handle(request, broker).await,
        ApiKey::Fetch => fetch::handle(request, broker).await,
        ApiKey::ListOffsets => list_offsets::handle(request, broker).await,
        ApiKey::CreateTopics => admin::create_topics(request, broker).await,
        ApiKey::DeleteTopics => admin::delete_topics(request, broker).await,
        ApiKey::CreatePartitions => admin::create_partitions(request, broker).await,
        ApiKey::DescribeConfigs => describe::describe_configs(request, broker).await,
        ApiKey::DescribeCluster => describe::describe_cluster(request, broker).await,
        ApiKey::FindCoordinator => find_coordinator::handle(request, broker).await,
        ApiKey::JoinGroup => groups::join_group(request, broker).await,
        ApiKey::SyncGroup => groups::sync_group(request, broker).await,
        ApiKey::Heartbeat => groups::heartbeat(request, broker).await,
        ApiKey::LeaveGroup => groups::leave_group(request, broker).await,
        ApiKey::ListGroups => groups::list_groups(request, broker).await,
        ApiKey::DescribeGroups => groups::describe_groups(request, broker).await,
        ApiKey::DeleteGroups => groups::delete_groups(request, broker).await,
        ApiKey::OffsetCommit => offsets::offset_commit(request, broker).await,
        ApiKey::OffsetFetch => offsets::offset_fetch(request, broker).await,
        ApiKey::OffsetDelete => offsets::offset_delete(request, broker).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(request, broker).await,
        ApiKey::DescribeLogDirs => describe_log_dirs::handle(request, broker).await,
        ApiKey::InitProducerId => init_producer_id::handle(request, broker).await,
        ApiKey::ElectLeaders => elect_leaders::handle(request, broker).await,
        api_key => Err(ConnectionError::UnsupportedVersion {
            api_key,
            api_version: request.api_version,
        }),
    }
}

/// Decodes the body; anything left over or malformed is an invalid request.
pub(crate) fn decode<T: Decodable>(request: &RequestFrame) -> Result<T, ConnectionError> {
    let mut body: Bytes = request.body.clone();
    T::decode(&mut body, request.api_version).map_err(|e| ConnectionError::InvalidRequest {
        api_key: request.api_key,
        reason: e.to_string(),
    })
}

/// Encodes a whole response (header version from the API and version).
pub(crate) fn respond<T: Encodable>(
    request: &RequestFrame,
    body: &T,
) -> Result<Answer, ConnectionError> {
    let header_version = request.api_key.response_header_version(request.api_version);
    let bytes = encode_response(
        request.correlation_id,
        header_version,
        body,
        request.api_version,
    )?;
    Ok(Some(vec![Chunk::Bytes(bytes)]))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A topic id from the image (16 bytes) as the wire's UUID.
pub(crate) fn uuid_of(topic_id: &[u8]) -> uuid::Uuid {
    uuid::Uuid::from_slice(topic_id).unwrap_or(uuid::Uuid::nil())
}
