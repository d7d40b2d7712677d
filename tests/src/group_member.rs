//! A group member speaking the classic group protocol request by request, for tests that
//! check exact answers (error codes, generations) on the wire. Blocking calls over one
//! connection to the group's coordinator; each request has a timeout.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ClientConnection;

pub const MEMBER_ID_REQUIRED: i16 = 79;

/// One connection to a broker, and a runtime to drive it.
pub struct GroupClient {
    runtime: tokio::runtime::Runtime,
    connection: ClientConnection,
}

/// What a JoinGroup answered.
#[derive(Debug, Clone)]
pub struct Joined {
    pub error_code: i16,
    pub generation: i32,
    pub member_id: String,
    pub leader: String,
    pub protocol: Option<String>,
    /// The members' ids (the leader's answer only).
    pub members: Vec<String>,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

impl GroupClient {
    /// Connects to `address` (host:port).
    pub fn connect(address: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let connection = runtime
            .block_on(ClientConnection::connect(
                address,
                "sluice-test",
                Duration::from_secs(30),
            ))
            .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
        GroupClient {
            runtime,
            connection,
        }
    }

    fn send<Req, Resp>(&mut self, key: ApiKey, version: i16, request: &Req) -> Resp
    where
        Req: kafka_protocol::protocol::Encodable,
        Resp: kafka_protocol::protocol::Decodable + Default,
    {
        let connection = &mut self.connection;
        self.runtime
            .block_on(connection.send(key, version, request, true))
            .unwrap_or_else(|e| panic!("{key:?}: {e}"))
    }

    /// FindCoordinator v3: (error, node id, host:port).
    pub fn find_coordinator(&mut self, group: &str) -> (i16, i32, String) {
        let request = FindCoordinatorRequest::default()
            .with_key(s(group))
            .with_key_type(0);
        let r: FindCoordinatorResponse = self.send(ApiKey::FindCoordinator, 3, &request);
        (r.error_code, r.node_id.0, format!("{}:{}", r.host, r.port))
    }

    /// JoinGroup v7 with one protocol (its metadata a placeholder).
    pub fn join(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: &str,
        protocol: &str,
        session_timeout_ms: i32,
    ) -> Joined {
        let metadata = Bytes::from_static(b"subscription");
        self.join_with(
            group,
            member_id,
            instance_id,
            (protocol_type, protocol, metadata),
            session_timeout_ms,
        )
    }

    /// A consumer's first join (KIP-394's two steps), subscribed to `topics` (its metadata
    /// a real ConsumerProtocolSubscription v0).
    pub fn join_subscribed(&mut self, group: &str, topics: &[&str]) -> Joined {
        let mut metadata = Vec::new();
        metadata.extend_from_slice(&0i16.to_be_bytes());
        metadata.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for t in topics {
            metadata.extend_from_slice(&(t.len() as i16).to_be_bytes());
            metadata.extend_from_slice(t.as_bytes());
        }
        metadata.extend_from_slice(&(-1i32).to_be_bytes());
        let metadata = Bytes::from(metadata);
        let first = self.join_with(
            group,
            "",
            None,
            ("consumer", "range", metadata.clone()),
            10_000,
        );
        if first.error_code != MEMBER_ID_REQUIRED {
            return first;
        }
        self.join_with(
            group,
            &first.member_id,
            None,
            ("consumer", "range", metadata),
            10_000,
        )
    }

    /// JoinGroup v7 with one protocol: (protocol type, protocol name, its metadata).
    fn join_with(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        (protocol_type, protocol, metadata): (&str, &str, Bytes),
        session_timeout_ms: i32,
    ) -> Joined {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(session_timeout_ms)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_protocol_type(s(protocol_type))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(s(protocol))
                .with_metadata(metadata)]);
        let r: JoinGroupResponse = self.send(ApiKey::JoinGroup, 7, &request);
        Joined {
            error_code: r.error_code,
            generation: r.generation_id,
            member_id: r.member_id.to_string(),
            leader: r.leader.to_string(),
            protocol: r.protocol_name.map(|p| p.to_string()),
            members: r.members.iter().map(|m| m.member_id.to_string()).collect(),
        }
    }

    /// A first join the way clients do it: empty member id, then again with the id
    /// MEMBER_ID_REQUIRED handed out (KIP-394; a static member skips that step).
    pub fn join_new(&mut self, group: &str, instance_id: Option<&str>) -> Joined {
        let first = self.join(group, "", instance_id, "consumer", "range", 10_000);
        if first.error_code != MEMBER_ID_REQUIRED {
            return first;
        }
        self.join(
            group,
            &first.member_id,
            instance_id,
            "consumer",
            "range",
            10_000,
        )
    }

    /// SyncGroup v5: (error, assignment).
    pub fn sync(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: &[(String, Vec<u8>)],
    ) -> (i16, Vec<u8>) {
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(id, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(id))
                            .with_assignment(Bytes::from(a.clone()))
                    })
                    .collect(),
            );
        let r: SyncGroupResponse = self.send(ApiKey::SyncGroup, 5, &request);
        (r.error_code, r.assignment.to_vec())
    }

    /// Heartbeat v4: the error code.
    pub fn heartbeat(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s));
        let r: HeartbeatResponse = self.send(ApiKey::Heartbeat, 4, &request);
        r.error_code
    }

    /// LeaveGroup v4 of one member: (top-level error, the member's error).
    pub fn leave(&mut self, group: &str, member_id: &str, instance_id: Option<&str>) -> (i16, i16) {
        let request = LeaveGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(s(member_id))
                .with_group_instance_id(instance_id.map(s))]);
        let r: LeaveGroupResponse = self.send(ApiKey::LeaveGroup, 4, &request);
        (
            r.error_code,
            r.members.first().map_or(r.error_code, |m| m.error_code),
        )
    }

    /// OffsetCommit v8 of one partition's offset: that partition's error code.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member_id))
            .with_group_instance_id(instance_id.map(s))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)])]);
        let r: OffsetCommitResponse = self.send(ApiKey::OffsetCommit, 8, &request);
        r.topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(-1, |p| p.error_code)
    }

    /// DeleteGroups v2 of one group: its error code.
    pub fn delete_group(&mut self, group: &str) -> i16 {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]);
        let r: DeleteGroupsResponse = self.send(ApiKey::DeleteGroups, 2, &request);
        r.results.first().map_or(-1, |g| g.error_code)
    }

    /// OffsetDelete v0 of one partition: (group error, partition error).
    pub fn delete_offset(&mut self, group: &str, topic: &str, partition: i32) -> (i16, i16) {
        let request = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(partition)
                ])]);
        let r: OffsetDeleteResponse = self.send(ApiKey::OffsetDelete, 0, &request);
        (
            r.error_code,
            r.topics
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(-1, |p| p.error_code),
        )
    }
}
