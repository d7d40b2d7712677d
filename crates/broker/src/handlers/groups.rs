//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup: checks that this broker coordinates the
//! group (NOT_COORDINATOR otherwise), then hands the request to the
//! [`GroupCoordinator`](crate::group_coordinator::GroupCoordinator). ListGroups and
//! DescribeGroups show the groups this broker coordinates (as Kafka's brokers do: an admin
//! client asks every broker).

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;

use super::find_coordinator::coordinates;
use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::group_coordinator::{GroupState, JoinRequest};

pub async fn join_group(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: JoinGroupRequest = decode(request)?;
    let group_id = body.group_id.0.to_string();
    let coordinator = coordinates(broker, &group_id);
    let answer = if coordinator != ec::NONE {
        crate::group_coordinator::JoinResponse {
            error_code: coordinator,
            generation_id: -1,
            member_id: body.member_id.to_string(),
            ..Default::default()
        }
    } else {
        // v0 has no rebalance timeout: the session timeout serves for both
        let rebalance_timeout_ms = if request.api_version >= 1 {
            body.rebalance_timeout_ms
        } else {
            body.session_timeout_ms
        };
        broker
            .groups
            .join(JoinRequest {
                group_id,
                member_id: body.member_id.to_string(),
                group_instance_id: body.group_instance_id.as_ref().map(|s| s.to_string()),
                client_id: request.client_id.clone().unwrap_or_default(),
                // Kafka shows "/" and the address
                client_host: request
                    .peer
                    .map(|a| format!("/{}", a.ip()))
                    .unwrap_or_default(),
                session_timeout_ms: body.session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type: body.protocol_type.to_string(),
                protocols: body
                    .protocols
                    .iter()
                    .map(|p| (p.name.to_string(), p.metadata.clone()))
                    .collect(),
                require_known_member_id: request.api_version >= 4,
            })
            .await
    };
    // the protocol name is nullable only from v7: before, an error carries ""
    let protocol_name = match answer.protocol_name {
        None if request.api_version < 7 => Some(String::new()),
        name => name,
    };
    let response = JoinGroupResponse::default()
        .with_error_code(answer.error_code)
        .with_generation_id(answer.generation_id)
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(protocol_name.map(str_bytes))
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(
            answer
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect(),
        );
    respond(request, &response)
}

pub async fn sync_group(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: SyncGroupRequest = decode(request)?;
    let group_id = body.group_id.0.to_string();
    let coordinator = coordinates(broker, &group_id);
    let answer = if coordinator != ec::NONE {
        crate::group_coordinator::SyncResponse {
            error_code: coordinator,
            ..Default::default()
        }
    } else {
        broker
            .groups
            .sync(
                &group_id,
                body.generation_id,
                &body.member_id,
                body.group_instance_id.as_deref(),
                body.assignments
                    .iter()
                    .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                    .collect(),
            )
            .await
    };
    let response = SyncGroupResponse::default()
        .with_error_code(answer.error_code)
        .with_protocol_type(answer.protocol_type.map(str_bytes))
        .with_protocol_name(answer.protocol_name.map(str_bytes))
        .with_assignment(answer.assignment);
    respond(request, &response)
}

pub async fn heartbeat(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: HeartbeatRequest = decode(request)?;
    let group_id = body.group_id.0.to_string();
    let error_code = match coordinates(broker, &group_id) {
        ec::NONE => broker.groups.heartbeat(
            &group_id,
            body.generation_id,
            &body.member_id,
            body.group_instance_id.as_deref(),
        ),
        other => other,
    };
    respond(
        request,
        &HeartbeatResponse::default().with_error_code(error_code),
    )
}

pub async fn leave_group(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: LeaveGroupRequest = decode(request)?;
    let group_id = body.group_id.0.to_string();
    // v3+: a batch of members; before, one member id
    let members: Vec<(String, Option<String>)> = if request.api_version >= 3 {
        body.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    let mut response = LeaveGroupResponse::default();
    match coordinates(broker, &group_id) {
        ec::NONE => {
            let codes = broker.groups.leave(&group_id, &members);
            if request.api_version >= 3 {
                response.members = members
                    .into_iter()
                    .zip(codes)
                    .map(|((id, instance), code)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(id))
                            .with_group_instance_id(instance.map(str_bytes))
                            .with_error_code(code)
                    })
                    .collect();
            } else {
                response.error_code = codes.first().copied().unwrap_or(ec::NONE);
            }
        }
        other => response.error_code = other,
    }
    respond(request, &response)
}

/// Kafka's "authorized operations not asked for".
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Whether the metadata log holds anything of `group_id` (a stored state, offsets).
pub(crate) fn known_in_metadata(broker: &Broker, group_id: &str) -> bool {
    broker.with_image(|image| known_in_image(image, group_id))
}

/// Whether `image` holds a trace of the group: its stored state or committed offsets.
pub(crate) fn known_in_image(image: &sluice_metadata::MetadataImage, group_id: &str) -> bool {
    image.stored_group(group_id).is_some() || !image.committed_offsets(group_id, &[]).is_empty()
}

pub async fn list_groups(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: ListGroupsRequest = decode(request)?;
    // v4+: only groups in these states (any case); v5+: of these types (only "classic")
    let states: Vec<String> = body
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = body.types_filter.iter().map(|t| t.to_lowercase()).collect();
    let mut listed = broker.groups.list();
    // groups with no members are kept in the metadata log only (their offsets, their last
    // stored state): Empty, as Kafka lists them
    let me = broker.broker_id();
    let resting: Vec<(String, GroupState, String)> = broker.with_image(|image| {
        image
            .group_ids()
            .into_iter()
            .filter(|id| {
                image
                    .coordinator_of_group(id)
                    .is_some_and(|c| c.broker_id == me)
            })
            .filter(|id| !listed.iter().any(|(l, _, _)| l == id))
            .map(|id| {
                let kind = image
                    .stored_group(&id)
                    .map(|g| g.protocol_type.clone())
                    .unwrap_or_default();
                (id, GroupState::Empty, kind)
            })
            .collect()
    });
    listed.extend(resting);
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let groups = listed
        .into_iter()
        .filter(|(_, state, _)| states.is_empty() || states.contains(&state.name().to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, state, protocol_type)| {
            ListedGroup::default()
                .with_group_id(str_bytes(id).into())
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(str_bytes(state.name()))
                .with_group_type(str_bytes("classic"))
        })
        .collect();
    respond(request, &ListGroupsResponse::default().with_groups(groups))
}

pub async fn describe_groups(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: DescribeGroupsRequest = decode(request)?;
    let groups = body
        .groups
        .iter()
        .map(|group_id| {
            let id = group_id.0.to_string();
            let mut described = DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
            let coordinator = coordinates(broker, &id);
            if coordinator != ec::NONE {
                return described.with_error_code(coordinator);
            }
            match broker.groups.describe(&id) {
                // known only from the metadata log (offsets, a stored state): Empty;
                // otherwise a group this broker would coordinate but does not know: Dead
                None => {
                    let known = known_in_metadata(broker, &id);
                    described.with_group_state(str_bytes(if known { "Empty" } else { "Dead" }))
                }
                Some(g) => {
                    described.group_state = str_bytes(g.state.name());
                    described.protocol_type = str_bytes(g.protocol_type);
                    described.protocol_data = str_bytes(g.protocol);
                    described.members = g
                        .members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(m.member_id))
                                .with_group_instance_id(m.group_instance_id.map(str_bytes))
                                .with_client_id(str_bytes(m.client_id))
                                .with_client_host(str_bytes(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect();
                    described
                }
            }
        })
        .collect();
    respond(
        request,
        &DescribeGroupsResponse::default().with_groups(groups),
    )
}

/// DeleteGroups (v0–v2): a group with members is NON_EMPTY_GROUP; one this coordinator
/// knows nothing of (no members, no stored state, no offsets) GROUP_ID_NOT_FOUND; else
/// its stored state and committed offsets are deleted through the controller.
pub async fn delete_groups(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: DeleteGroupsRequest = decode(request)?;
    let mut results = Vec::new();
    for name in &body.groups_names {
        let group_id = name.0.to_string();
        let mut code = coordinates(broker, &group_id);
        if code == ec::NONE {
            let known = known_in_metadata(broker, &group_id);
            code = if broker.groups.has_members(&group_id) {
                ec::NON_EMPTY_GROUP
            } else if !known && !broker.groups.knows(&group_id) {
                ec::GROUP_ID_NOT_FOUND
            } else {
                delete_in_quorum(broker, &group_id).await
            };
        }
        results.push(
            DeletableGroupResult::default()
                .with_group_id(name.clone())
                .with_error_code(code),
        );
    }
    respond(
        request,
        &DeleteGroupsResponse::default().with_results(results),
    )
}

async fn delete_in_quorum(broker: &Broker, group_id: &str) -> i16 {
    broker
        .groups
        .delete(group_id)
        .await
        .unwrap_or(ec::COORDINATOR_NOT_AVAILABLE)
}
