//! The classic consumer-group protocol (KIP-62's JoinGroup/SyncGroup/Heartbeat/LeaveGroup)
//! for the groups this broker coordinates: membership, generations, protocol selection,
//! session and rebalance timeouts, as Kafka 3.9's classic `GroupCoordinator` answers them.
//! The assignment itself is computed by the group's leader client; the coordinator only
//! hands it out.
//!
//! States: Empty → PreparingRebalance (a member joined or left, or a session expired)
//! → CompletingRebalance (every member rejoined, or the rebalance timeout removed those
//! that did not; the generation is bumped and the leader gets every member's metadata)
//! → Stable (the leader's SyncGroup brought the assignments) → PreparingRebalance ...
//! A new group waits `group.initial.rebalance.delay.ms` before its first rebalance so
//! members starting together join one generation.
//!
//! Invariants: the generation only grows; a member waits on at most one JoinGroup and one
//! SyncGroup; every waiting request is answered when its rebalance completes, when the
//! member is removed (UNKNOWN_MEMBER_ID) or when a new rebalance starts under it
//! (REBALANCE_IN_PROGRESS); a member that waits on a JoinGroup is not expired by its
//! session (its rebalance timeout bounds it instead), as in Kafka.
//!
//! Durability: when a group turns Stable (or Empty) its state is queued for the metadata
//! log (`take_stores`, stored by `store_groups` in broker_node.rs); a broker that becomes
//! a group's coordinator resumes it from there (`ensure_current`): Stable, the same
//! generation, leader and assignments, each member with a fresh session.
//!
//! Static members (KIP-345): a restarted static member replaces its old incarnation; in a
//! Stable group that still speaks its protocol it keeps the assignment and the generation
//! (no rebalance), and the old incarnation's requests get FENCED_INSTANCE_ID.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_metadata::error_code as ec;
use sluice_metadata::{StoredGroup, StoredGroupMember};
use tokio::sync::oneshot;

/// The broker's group settings, Kafka's names and defaults.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.max.size`.
    pub max_size: usize,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            initial_rebalance_delay_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name DescribeGroups and ListGroups show.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup, decoded.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a first join without a member id gets MEMBER_ID_REQUIRED and its id (KIP-394).
    pub require_known_member_id: bool,
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, Default)]
pub struct JoinResponse {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member's id, instance id and metadata for the chosen
    /// protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResponse {
    fn error(error_code: i16, member_id: &str) -> Self {
        JoinResponse {
            error_code,
            generation_id: -1,
            member_id: member_id.to_string(),
            ..JoinResponse::default()
        }
    }
}

/// A SyncGroup's answer.
#[derive(Debug, Clone, Default)]
pub struct SyncResponse {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    fn error(error_code: i16) -> Self {
        SyncResponse {
            error_code,
            ..SyncResponse::default()
        }
    }
}

struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
}

impl Member {
    /// Its metadata for `protocol` (empty if it does not speak it).
    fn metadata_for(&self, protocol: Option<&String>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(n, _)| n == p))
            .map(|(_, md)| md.clone())
            .unwrap_or_default()
    }
}

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined, with when and the
    /// session timeout they asked for (they expire after it).
    pending: HashMap<String, (Instant, Duration)>,
    /// PreparingRebalance: the rebalance completes by then at the latest.
    rebalance_deadline: Instant,
    /// PreparingRebalance of a new group: not before then (the initial delay).
    not_before: Instant,
    /// The epoch of this broker's ownership of the group's coordinator slot the group
    /// belongs to (None: created here, not yet tagged).
    coordinator_epoch: Option<i32>,
    /// It turned Stable or Empty: its state is to be stored in the metadata log.
    needs_store: bool,
}

impl Group {
    fn new(now: Instant) -> Self {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: now,
            not_before: now,
            coordinator_epoch: None,
            needs_store: false,
        }
    }

    /// A group as its previous coordinator stored it, resumed at `now`: Stable with the
    /// same generation, leader and assignments, each member with a fresh session.
    fn from_stored(stored: &StoredGroup, coordinator_epoch: i32, now: Instant) -> Self {
        let protocol = (!stored.protocol.is_empty()).then(|| stored.protocol.clone());
        let members = stored
            .members
            .iter()
            .map(|m| {
                let member = Member {
                    group_instance_id: (!m.group_instance_id.is_empty())
                        .then(|| m.group_instance_id.clone()),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocol_type: stored.protocol_type.clone(),
                    protocols: vec![(stored.protocol.clone(), Bytes::from(m.subscription.clone()))],
                    assignment: Bytes::from(m.assignment.clone()),
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                };
                (m.member_id.clone(), member)
            })
            .collect::<BTreeMap<_, _>>();
        let state = if members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        Group {
            state,
            generation: stored.generation,
            protocol_type: (!stored.protocol_type.is_empty()).then(|| stored.protocol_type.clone()),
            protocol,
            leader: (!stored.leader.is_empty()).then(|| stored.leader.clone()),
            members,
            pending: HashMap::new(),
            rebalance_deadline: now,
            not_before: now,
            coordinator_epoch: Some(coordinator_epoch),
            needs_store: false,
        }
    }

    /// What the metadata log keeps of it (the coordinator fields are the storer's).
    fn stored(&self, group_id: &str) -> StoredGroup {
        StoredGroup {
            group_id: group_id.to_string(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: self.protocol.clone().unwrap_or_default(),
            generation: self.generation,
            leader: self.leader.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|(id, m)| StoredGroupMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone().unwrap_or_default(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    subscription: m.metadata_for(self.protocol.as_ref()).to_vec(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
            coordinator_broker_id: -1,
            coordinator_epoch: self.coordinator_epoch.unwrap_or(-1),
            // stamped by the storer
            state_timestamp_ms: 0,
        }
    }
}

/// What one member looks like to DescribeGroups and the CLI.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// What a group looks like to DescribeGroups and the CLI.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

/// A change for the metadata log.
pub enum GroupChange {
    /// Store the state; `done` is signalled (or dropped) once the attempt ended.
    Store(StoredGroup, oneshot::Sender<()>),
    Delete {
        group_id: String,
        done: oneshot::Sender<i16>,
    },
}

#[derive(Default)]
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
    /// Group states waiting to be stored and groups waiting to be deleted, in order.
    to_store: Mutex<Vec<GroupChange>>,
    store_wake: tokio::sync::Notify,
    /// A task stores the queued changes (see `enable_storing`).
    storing: std::sync::atomic::AtomicBool,
    /// Groups this broker forgot once they emptied, with the slot epoch it coordinated
    /// them at: the metadata image may still hold their earlier state (the Empty store
    /// can be in flight), which must not bring their members back under that ownership.
    forgotten: Mutex<HashMap<String, i32>>,
}

fn new_member_id(client_id: &str, n: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{client_id}-{:08x}-{n:x}", (nanos & 0xffff_ffff) as u32)
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> Self {
        GroupCoordinator {
            config,
            ..GroupCoordinator::default()
        }
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `group`'s state for the metadata log if it turned Stable or Empty.
    fn queue_store(&self, group_id: &str, group: &mut Group) -> Option<oneshot::Receiver<()>> {
        if !std::mem::take(&mut group.needs_store) {
            return None;
        }
        let stored = group.stored(group_id);
        let (done, stored_signal) = oneshot::channel();
        self.queue_change(GroupChange::Store(stored, done));
        Some(stored_signal)
    }

    /// Says a task stores the queued changes (`store_groups` in broker_node.rs): from now
    /// on the answers to a completed SyncGroup wait for the group's state to be stored,
    /// as Kafka's do, so a coordinator that dies after answering left the state behind.
    pub fn enable_storing(&self) {
        self.storing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn queue_change(&self, change: GroupChange) {
        self.to_store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
        self.store_wake.notify_one();
    }

    /// The changes to make in the metadata log, oldest first (see `store_groups` in
    /// broker_node.rs).
    pub fn take_changes(&self) -> Vec<GroupChange> {
        std::mem::take(&mut *self.to_store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The group states waiting to be stored (tests).
    #[cfg(test)]
    fn take_stores(&self) -> Vec<StoredGroup> {
        self.take_changes()
            .into_iter()
            .filter_map(|c| match c {
                GroupChange::Store(s, _) => Some(s),
                GroupChange::Delete { .. } => None,
            })
            .collect()
    }

    /// Forgets `group_id` here and queues its deletion from the metadata log behind the
    /// stores already queued (an emptied state stored after the deletion would bring the
    /// group back); the answer is the deletion's error code.
    pub fn delete(&self, group_id: &str) -> oneshot::Receiver<i16> {
        self.groups().remove(group_id);
        let (done, answer) = oneshot::channel();
        self.queue_change(GroupChange::Delete {
            group_id: group_id.to_string(),
            done,
        });
        answer
    }

    /// Returns once a group state is waiting to be stored.
    pub async fn stores_waiting(&self) {
        self.store_wake.notified().await
    }

    /// Makes the in-memory group match this broker's current ownership of its slot (at
    /// `slot_epoch`): a group from an earlier ownership is dropped, and a group not known
    /// here is resumed from what its previous coordinator stored.
    pub fn ensure_current(&self, group_id: &str, slot_epoch: i32, stored: Option<&StoredGroup>) {
        let mut groups = self.groups();
        match groups.get_mut(group_id) {
            Some(g) if g.coordinator_epoch == Some(slot_epoch) => return,
            Some(g) if g.coordinator_epoch.is_none() => {
                g.coordinator_epoch = Some(slot_epoch);
                return;
            }
            Some(_) => {
                groups.remove(group_id);
            }
            None => {}
        }
        // emptied and forgotten here under this same ownership: what the image holds is
        // older than that (the Empty state's store may still be on its way)
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        match forgotten.get(group_id) {
            Some(epoch) if *epoch == slot_epoch => return,
            Some(_) => {
                forgotten.remove(group_id);
            }
            None => {}
        }
        drop(forgotten);
        if let Some(stored) = stored.filter(|s| !s.members.is_empty()) {
            tracing::info!(
                group = group_id,
                generation = stored.generation,
                members = stored.members.len(),
                "resuming a group as its previous coordinator stored it"
            );
            groups.insert(
                group_id.to_string(),
                Group::from_stored(stored, slot_epoch, Instant::now()),
            );
        }
    }

    /// JoinGroup: answered at once (an error, MEMBER_ID_REQUIRED) or when the rebalance
    /// it takes part in completes.
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let waiter = match self.join_now(req.clone(), Instant::now()) {
            Ok(response) => return response,
            Err(waiter) => waiter,
        };
        waiter
            .await
            .unwrap_or_else(|_| JoinResponse::error(ec::UNKNOWN_MEMBER_ID, &req.member_id))
    }

    fn join_now(
        &self,
        req: JoinRequest,
        now: Instant,
    ) -> Result<JoinResponse, oneshot::Receiver<JoinResponse>> {
        let config = &self.config;
        if req.session_timeout_ms < config.min_session_timeout_ms
            || req.session_timeout_ms > config.max_session_timeout_ms
        {
            return Ok(JoinResponse::error(
                ec::INVALID_SESSION_TIMEOUT,
                &req.member_id,
            ));
        }
        let mut groups = self.groups();
        if !req.member_id.is_empty() && !groups.contains_key(&req.group_id) {
            return Ok(JoinResponse::error(ec::UNKNOWN_MEMBER_ID, &req.member_id));
        }
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(now));
        if req.protocol_type.is_empty()
            || req.protocols.is_empty()
            || !compatible(group, &req.protocol_type, &req.protocols, &req.member_id)
        {
            return Ok(JoinResponse::error(
                ec::INCONSISTENT_GROUP_PROTOCOL,
                &req.member_id,
            ));
        }
        let member_id = if req.member_id.is_empty() {
            let n = self
                .next_member
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = new_member_id(&req.client_id, n);
            let replacing = req.group_instance_id.as_ref().is_some_and(|i| {
                group
                    .members
                    .values()
                    .any(|m| m.group_instance_id.as_ref() == Some(i))
            });
            if !replacing && group.members.len() + group.pending.len() >= config.max_size {
                return Ok(JoinResponse::error(ec::GROUP_MAX_SIZE_REACHED, ""));
            }
            if req.require_known_member_id && req.group_instance_id.is_none() {
                let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
                group.pending.insert(id.clone(), (now, session));
                return Ok(JoinResponse::error(ec::MEMBER_ID_REQUIRED, &id));
            }
            // a static member (KIP-345) that restarted replaces its old incarnation: in a
            // Stable group it takes over the assignment without a rebalance
            if let Some(instance) = &req.group_instance_id {
                if let Some(answer) = replace_static_member(group, instance, &id, &req, now) {
                    self.queue_store(&req.group_id, group);
                    return Ok(answer);
                }
            }
            id
        } else if group.pending.remove(&req.member_id).is_some()
            || group.members.contains_key(&req.member_id)
        {
            req.member_id.clone()
        } else {
            return Ok(JoinResponse::error(ec::UNKNOWN_MEMBER_ID, &req.member_id));
        };
        if !group.members.contains_key(&member_id) && group.members.len() >= config.max_size {
            return Ok(JoinResponse::error(ec::GROUP_MAX_SIZE_REACHED, &member_id));
        }
        let (tx, rx) = oneshot::channel();
        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                group_instance_id: None,
                client_id: String::new(),
                client_host: String::new(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocol_type: String::new(),
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            });
        member.group_instance_id = req.group_instance_id;
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        member.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
        member.protocol_type = req.protocol_type;
        member.protocols = req.protocols;
        member.last_heartbeat = now;
        // a second JoinGroup from the same member replaces the first (which is answered
        // as superseded: the client only waits on its latest)
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinResponse::error(ec::REBALANCE_IN_PROGRESS, &member_id));
        }
        if group.state != GroupState::PreparingRebalance {
            prepare_rebalance(group, config, now);
        }
        try_complete_join(group, now);
        self.queue_store(&req.group_id, group);
        Err(rx)
    }

    /// SyncGroup: the leader brings the assignments; every member gets its own once they
    /// are there.
    pub async fn sync(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        instance: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResponse {
        let waiter = {
            let mut groups = self.groups();
            let Some(group) = groups.get_mut(group_id) else {
                return SyncResponse::error(ec::UNKNOWN_MEMBER_ID);
            };
            if fenced(group, member_id, instance) {
                return SyncResponse::error(ec::FENCED_INSTANCE_ID);
            }
            if !group.members.contains_key(member_id) {
                return SyncResponse::error(ec::UNKNOWN_MEMBER_ID);
            }
            if generation_id != group.generation {
                return SyncResponse::error(ec::ILLEGAL_GENERATION);
            }
            match group.state {
                GroupState::Empty => return SyncResponse::error(ec::UNKNOWN_MEMBER_ID),
                GroupState::PreparingRebalance => {
                    return SyncResponse::error(ec::REBALANCE_IN_PROGRESS)
                }
                GroupState::Stable => return sync_answer(group, member_id),
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            let now = Instant::now();
            if let Some(member) = group.members.get_mut(member_id) {
                member.last_heartbeat = now;
                if let Some(old) = member.sync_waiter.replace(tx) {
                    let _ = old.send(SyncResponse::error(ec::REBALANCE_IN_PROGRESS));
                }
            }
            if group.leader.as_deref() == Some(member_id) {
                let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, member) in group.members.iter_mut() {
                    member.assignment = assignments.remove(id).unwrap_or_default();
                }
                group.state = GroupState::Stable;
                group.needs_store = true;
                let ids: Vec<String> = group.members.keys().cloned().collect();
                let mut answers = Vec::new();
                for id in ids {
                    let answer = sync_answer(group, &id);
                    if let Some(waiter) = group
                        .members
                        .get_mut(&id)
                        .and_then(|m| m.sync_waiter.take())
                    {
                        answers.push((waiter, answer));
                    }
                }
                tracing::info!(group = group_id, generation = group.generation, members = group.members.len(), protocol = ?group.protocol, "group stable");
                let stored = self.queue_store(group_id, group);
                let wait_for_store = self.storing.load(std::sync::atomic::Ordering::Acquire);
                let answer_all = move || {
                    for (waiter, answer) in answers {
                        let _ = waiter.send(answer);
                    }
                };
                match stored.filter(|_| wait_for_store) {
                    // the members hear of their assignment once it is stored (or the
                    // attempt ended)
                    Some(stored) => {
                        tokio::spawn(async move {
                            let _ = stored.await;
                            answer_all();
                        });
                    }
                    None => answer_all(),
                }
            }
            rx
        };
        waiter
            .await
            .unwrap_or_else(|_| SyncResponse::error(ec::UNKNOWN_MEMBER_ID))
    }

    /// Heartbeat: keeps the member's session; says when a rebalance needs it to rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return ec::UNKNOWN_MEMBER_ID;
        };
        if fenced(group, member_id, instance) {
            return ec::FENCED_INSTANCE_ID;
        }
        let state = group.state;
        let generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return ec::UNKNOWN_MEMBER_ID;
        };
        if state == GroupState::Empty {
            return ec::UNKNOWN_MEMBER_ID;
        }
        if generation_id != generation {
            return ec::ILLEGAL_GENERATION;
        }
        member.last_heartbeat = Instant::now();
        if state == GroupState::PreparingRebalance {
            ec::REBALANCE_IN_PROGRESS
        } else {
            ec::NONE
        }
    }

    /// LeaveGroup: each member (id, or instance id alone for a static member) leaves
    /// (UNKNOWN_MEMBER_ID for one that is not there); the others rebalance. Returns one
    /// error code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return vec![ec::UNKNOWN_MEMBER_ID; members.len()];
        };
        let now = Instant::now();
        members
            .iter()
            .map(|(member_id, instance)| {
                // a static member may leave by its instance id alone
                let id = match instance {
                    Some(instance) if member_id.is_empty() => group
                        .members
                        .iter()
                        .find(|(_, m)| m.group_instance_id.as_ref() == Some(instance))
                        .map(|(id, _)| id.clone())
                        .unwrap_or_default(),
                    _ => member_id.clone(),
                };
                if fenced(group, &id, instance.as_deref()) {
                    return ec::FENCED_INSTANCE_ID;
                }
                if group.members.contains_key(&id) {
                    tracing::info!(group = group_id, member = %id, "member left the group");
                    remove_member(group, &id, &self.config, now);
                    self.queue_store(group_id, group);
                    ec::NONE
                } else {
                    ec::UNKNOWN_MEMBER_ID
                }
            })
            .collect()
    }

    /// Whether an OffsetCommit from `member_id` in `generation_id` may commit (NONE), or
    /// the error it gets. Generation -1 with no member id is a commit outside the group
    /// protocol (a consumer with assigned partitions): allowed while the group has no
    /// members.
    pub fn check_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> i16 {
        let mut groups = self.groups();
        let group = groups.get_mut(group_id);
        if group
            .as_ref()
            .is_some_and(|g| fenced(g, member_id, instance))
        {
            return ec::FENCED_INSTANCE_ID;
        }
        if generation_id < 0 && member_id.is_empty() {
            return match group {
                Some(g) if !g.members.is_empty() => ec::UNKNOWN_MEMBER_ID,
                _ => ec::NONE,
            };
        }
        let Some(group) = group else {
            return ec::ILLEGAL_GENERATION;
        };
        let state = group.state;
        let generation = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return ec::UNKNOWN_MEMBER_ID;
        };
        if generation_id != generation {
            return ec::ILLEGAL_GENERATION;
        }
        member.last_heartbeat = Instant::now();
        // Kafka accepts commits while Stable and while preparing a rebalance (clients
        // commit what they consumed before they rejoin), not while the new assignment is
        // being handed out
        match state {
            GroupState::CompletingRebalance => ec::REBALANCE_IN_PROGRESS,
            _ => ec::NONE,
        }
    }

    /// Periodic work: expires members whose session ran out (and pending member ids
    /// never used), completes rebalances whose members all rejoined or whose time is up.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.groups();
        for (group_id, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    // a member waiting on its JoinGroup or SyncGroup cannot heartbeat: the
                    // rebalance's own timeout bounds it
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %group_id, member = %id, "member's session expired: removing it");
                remove_member(group, &id, &self.config, now);
            }
            group
                .pending
                .retain(|_, (since, session)| now.duration_since(*since) <= *session);
            // the leader never synced: the members that did not get an assignment by the
            // rebalance timeout are dropped (their waits end) and the rest rebalance
            if group.state == GroupState::CompletingRebalance && now >= group.rebalance_deadline {
                let stalled: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.sync_waiter.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                let leader_stalled = group.leader.as_ref().is_some_and(|l| stalled.contains(l));
                if leader_stalled {
                    for id in stalled {
                        tracing::info!(group = %group_id, member = %id, "member did not sync in the rebalance timeout: removing it");
                        remove_member(group, &id, &self.config, now);
                    }
                }
            }
            try_complete_join(group, now);
            self.queue_store(group_id, group);
        }
        // groups with no members and no pending joins are forgotten (their committed
        // offsets live in the metadata image)
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|id, g| {
            let keep = g.state != GroupState::Empty || !g.pending.is_empty();
            if let (false, Some(epoch)) = (keep, g.coordinator_epoch) {
                forgotten.insert(id.clone(), epoch);
            }
            keep
        });
    }

    /// A group as DescribeGroups shows it (None: not coordinated here).
    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        let groups = self.groups();
        let group = groups.get(group_id)?;
        Some(GroupSummary {
            state: group.state,
            generation: group.generation,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: group.protocol.clone().unwrap_or_default(),
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberSummary {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(group.protocol.as_ref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group coordinated here, with its state and protocol type.
    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        let groups = self.groups();
        let mut list: Vec<_> = groups
            .iter()
            .map(|(id, g)| {
                (
                    id.clone(),
                    g.state,
                    g.protocol_type.clone().unwrap_or_default(),
                )
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Whether `group_id` has members here.
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// A group with members: its protocol type and each member's metadata for the group's
    /// protocol (None: no members here).
    pub fn member_subscriptions(&self, group_id: &str) -> Option<(String, Vec<Bytes>)> {
        let groups = self.groups();
        let group = groups.get(group_id).filter(|g| !g.members.is_empty())?;
        let metadata = group
            .members
            .values()
            .map(|m| {
                group
                    .protocol
                    .as_ref()
                    .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                    .or_else(|| m.protocols.first())
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default()
            })
            .collect();
        let kind = group
            .protocol_type
            .clone()
            .or_else(|| {
                group
                    .members
                    .values()
                    .next()
                    .map(|m| m.protocol_type.clone())
            })
            .unwrap_or_default();
        Some((kind, metadata))
    }

    /// Whether `group_id` is known here at all (members or pending joins).
    pub fn knows(&self, group_id: &str) -> bool {
        self.groups().contains_key(group_id)
    }

    /// Forgets every group whose coordinator slot `still_here` says moved away: their
    /// members' waits end with UNKNOWN_MEMBER_ID, and their next request here gets
    /// NOT_COORDINATOR, so they find the new coordinator and join again.
    pub fn retain(&self, still_here: impl Fn(&str) -> bool) {
        self.groups().retain(|id, _| still_here(id));
    }
}

/// Whether a member with `protocol_type` and `protocols` fits the group: the same
/// protocol type, and at least one protocol every member (it included) supports.
fn compatible(
    group: &Group,
    protocol_type: &str,
    protocols: &[(String, Bytes)],
    member_id: &str,
) -> bool {
    let others: Vec<&Member> = group
        .members
        .iter()
        .filter(|(id, _)| id.as_str() != member_id)
        .map(|(_, m)| m)
        .collect();
    if others.is_empty() {
        return true;
    }
    if others.iter().any(|m| m.protocol_type != protocol_type) {
        return false;
    }
    protocols.iter().any(|(name, _)| {
        others
            .iter()
            .all(|m| m.protocols.iter().any(|(n, _)| n == name))
    })
}

fn prepare_rebalance(group: &mut Group, config: &GroupConfig, now: Instant) {
    if group.state == GroupState::CompletingRebalance {
        for member in group.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(SyncResponse::error(ec::REBALANCE_IN_PROGRESS));
            }
        }
    }
    let rebalance_timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    group.not_before = if group.state == GroupState::Empty {
        now + Duration::from_millis(config.initial_rebalance_delay_ms).min(rebalance_timeout)
    } else {
        now
    };
    group.rebalance_deadline = now + rebalance_timeout;
    group.state = GroupState::PreparingRebalance;
}

/// Completes the join phase when every member has rejoined (after the initial delay), or
/// when the rebalance timeout is up (dropping those that did not rejoin).
fn try_complete_join(group: &mut Group, now: Instant) {
    if group.state != GroupState::PreparingRebalance || now < group.not_before {
        return;
    }
    let all_joined =
        group.pending.is_empty() && group.members.values().all(|m| m.join_waiter.is_some());
    if !all_joined && now < group.rebalance_deadline {
        return;
    }
    group.members.retain(|_, m| m.join_waiter.is_some());
    group.generation += 1;
    if group.members.is_empty() {
        group.state = GroupState::Empty;
        group.protocol = None;
        group.protocol_type = None;
        group.leader = None;
        group.needs_store = true;
        return;
    }
    let protocol = select_protocol(group);
    group.protocol_type = group
        .members
        .values()
        .next()
        .map(|m| m.protocol_type.clone());
    group.protocol = protocol.clone();
    if group
        .leader
        .as_ref()
        .is_none_or(|l| !group.members.contains_key(l))
    {
        group.leader = group.members.keys().next().cloned();
    }
    group.state = GroupState::CompletingRebalance;
    let leader = group.leader.clone().unwrap_or_default();
    let metadata: Vec<(String, Option<String>, Bytes)> = group
        .members
        .iter()
        .map(|(id, m)| {
            let md = m.metadata_for(protocol.as_ref());
            (id.clone(), m.group_instance_id.clone(), md)
        })
        .collect();
    for (id, member) in group.members.iter_mut() {
        member.last_heartbeat = now;
        let Some(waiter) = member.join_waiter.take() else {
            continue;
        };
        let _ = waiter.send(JoinResponse {
            error_code: ec::NONE,
            generation_id: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: protocol.clone(),
            leader: leader.clone(),
            member_id: id.clone(),
            members: if *id == leader {
                metadata.clone()
            } else {
                Vec::new()
            },
        });
    }
}

/// The protocol every member supports that most members prefer (first in their list);
/// ties go to the leader-to-be's preference order.
fn select_protocol(group: &Group) -> Option<String> {
    let first = group.members.values().next()?;
    let candidates: Vec<&String> = first
        .protocols
        .iter()
        .map(|(n, _)| n)
        .filter(|n| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
        })
        .collect();
    let votes = |name: &String| {
        group
            .members
            .values()
            .filter(|m| {
                m.protocols
                    .iter()
                    .map(|(n, _)| n)
                    .find(|n| candidates.contains(n))
                    == Some(name)
            })
            .count()
    };
    let mut best: Option<(&String, usize)> = None;
    for c in &candidates {
        let v = votes(c);
        if best.is_none_or(|(_, bv)| v > bv) {
            best = Some((c, v));
        }
    }
    best.map(|(n, _)| n.clone())
}

fn sync_answer(group: &Group, member_id: &str) -> SyncResponse {
    SyncResponse {
        error_code: ec::NONE,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        assignment: group
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default(),
    }
}

/// Whether a request from `member_id` naming `instance` comes from a static member's old
/// incarnation (another member id now holds that instance): FENCED_INSTANCE_ID.
fn fenced(group: &Group, member_id: &str, instance: Option<&str>) -> bool {
    let Some(instance) = instance else {
        return false;
    };
    group
        .members
        .iter()
        .any(|(id, m)| m.group_instance_id.as_deref() == Some(instance) && id != member_id)
}

/// A static member's new incarnation (`new_id`) takes the place of the old one holding
/// `instance`: the old one's pending waits end with FENCED_INSTANCE_ID. In a Stable group
/// whose protocols the newcomer still supports it keeps the assignment and the generation
/// (the answer is returned: no rebalance); otherwise the group rebalances (None: the join
/// goes on as a new member's would).
fn replace_static_member(
    group: &mut Group,
    instance: &str,
    new_id: &str,
    req: &JoinRequest,
    now: Instant,
) -> Option<JoinResponse> {
    let old_id = group
        .members
        .iter()
        .find(|(_, m)| m.group_instance_id.as_deref() == Some(instance))
        .map(|(id, _)| id.clone())?;
    let mut member = group.members.remove(&old_id)?;
    if let Some(w) = member.join_waiter.take() {
        let _ = w.send(JoinResponse::error(ec::FENCED_INSTANCE_ID, &old_id));
    }
    if let Some(w) = member.sync_waiter.take() {
        let _ = w.send(SyncResponse::error(ec::FENCED_INSTANCE_ID));
    }
    if group.leader.as_deref() == Some(old_id.as_str()) {
        group.leader = Some(new_id.to_string());
    }
    let keeps_protocol = group.state == GroupState::Stable
        && req.protocol_type == member.protocol_type
        && group
            .protocol
            .as_ref()
            .is_some_and(|p| req.protocols.iter().any(|(n, _)| n == p));
    tracing::info!(group = %req.group_id, instance, old = %old_id, new = %new_id, rebalance = !keeps_protocol, "static member rejoined");
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
    member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
    member.protocols = req.protocols.clone();
    member.last_heartbeat = now;
    group.members.insert(new_id.to_string(), member);
    if !keeps_protocol {
        return None;
    }
    group.needs_store = true;
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == new_id {
        group
            .members
            .iter()
            .map(|(id, m)| {
                let md = m.metadata_for(group.protocol.as_ref());
                (id.clone(), m.group_instance_id.clone(), md)
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(JoinResponse {
        error_code: ec::NONE,
        generation_id: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        leader,
        member_id: new_id.to_string(),
        members,
    })
}

fn remove_member(group: &mut Group, member_id: &str, config: &GroupConfig, now: Instant) {
    // its waits end (dropped senders: UNKNOWN_MEMBER_ID)
    group.members.remove(member_id);
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            if group.members.is_empty() {
                group.state = GroupState::Empty;
                group.generation += 1;
                group.leader = None;
                group.protocol = None;
                group.protocol_type = None;
                group.needs_store = true;
            } else {
                prepare_rebalance(group, config, now);
            }
        }
        GroupState::PreparingRebalance => try_complete_join(group, now),
        GroupState::Empty => {}
    }
}

/// Ids of the members in `group_id` (tests).
#[cfg(test)]
fn member_ids(c: &GroupCoordinator, group_id: &str) -> std::collections::BTreeSet<String> {
    c.groups()
        .get(group_id)
        .map(|g| g.members.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator() -> GroupCoordinator {
        GroupCoordinator::new(GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        })
    }

    fn join(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 1000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(p.to_string())))
                .collect(),
            require_known_member_id: true,
        }
    }

    #[tokio::test]
    async fn two_members_join_one_generation_and_get_the_leaders_assignment() {
        let c = std::sync::Arc::new(coordinator());
        // KIP-394: a first join gets its member id
        let first = c.join(join("", &["range"])).await;
        assert_eq!(first.error_code, ec::MEMBER_ID_REQUIRED);
        let a = first.member_id.clone();
        assert!(!a.is_empty());
        let ca = std::sync::Arc::clone(&c);
        let ja = tokio::spawn(async move { ca.join(join(&a, &["range", "roundrobin"])).await });
        let ja = ja.await.unwrap();
        assert_eq!((ja.error_code, ja.generation_id), (ec::NONE, 1));
        assert_eq!(ja.leader, ja.member_id);
        assert_eq!(ja.members.len(), 1);
        let a = ja.member_id.clone();
        // a second member: the first must rejoin (its heartbeat says so)
        let b = c.join(join("", &["roundrobin", "range"])).await.member_id;
        let cb = std::sync::Arc::clone(&c);
        let b2 = b.clone();
        let jb = tokio::spawn(async move { cb.join(join(&b2, &["roundrobin", "range"])).await });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.heartbeat("g", 1, &a, None), ec::REBALANCE_IN_PROGRESS);
        let ja = c.join(join(&a, &["range", "roundrobin"])).await;
        let jb = jb.await.unwrap();
        assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
        // one vote each: the tie goes to the leader's preference
        assert_eq!(ja.protocol_name.as_deref(), Some("range"));
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty());
        // the follower's sync waits for the leader's
        let cb = std::sync::Arc::clone(&c);
        let b3 = b.clone();
        let sb = tokio::spawn(async move { cb.sync("g", 2, &b3, None, Vec::new()).await });
        let sa = c
            .sync(
                "g",
                2,
                &a,
                None,
                vec![
                    (a.clone(), Bytes::from_static(b"A")),
                    (b.clone(), Bytes::from_static(b"B")),
                ],
            )
            .await;
        assert_eq!(sa.assignment, Bytes::from_static(b"A"));
        assert_eq!(sb.await.unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(c.heartbeat("g", 2, &b, None), ec::NONE);
        assert_eq!(c.heartbeat("g", 1, &b, None), ec::ILLEGAL_GENERATION);
        assert_eq!(c.heartbeat("g", 2, "nobody", None), ec::UNKNOWN_MEMBER_ID);
        assert_eq!(c.check_commit("g", 2, &b, None), ec::NONE);
        assert_eq!(c.check_commit("g", 1, &b, None), ec::ILLEGAL_GENERATION);
        assert_eq!(c.check_commit("g", -1, "", None), ec::UNKNOWN_MEMBER_ID);
        // b leaves: a rebalances alone
        assert_eq!(c.leave("g", &[(b.clone(), None)]), vec![ec::NONE]);
        // commits of what a was given are still taken while it prepares to rejoin
        assert_eq!(c.check_commit("g", 2, &a, None), ec::NONE);
        assert_eq!(c.heartbeat("g", 2, &a, None), ec::REBALANCE_IN_PROGRESS);
        let ja = c.join(join(&a, &["range"])).await;
        assert_eq!((ja.generation_id, ja.members.len()), (3, 1));
    }

    #[tokio::test]
    async fn bad_joins_get_kafkas_error_codes() {
        let c = coordinator();
        let mut bad = join("", &["range"]);
        bad.session_timeout_ms = 1000;
        assert_eq!(c.join(bad).await.error_code, ec::INVALID_SESSION_TIMEOUT);
        assert_eq!(
            c.join(join("ghost", &["range"])).await.error_code,
            ec::UNKNOWN_MEMBER_ID
        );
        let id = c.join(join("", &["range"])).await.member_id;
        let a = c.join(join(&id, &["range"])).await;
        assert_eq!(a.error_code, ec::NONE);
        let other = c.join(join("", &["roundrobin"])).await;
        assert_eq!(other.error_code, ec::INCONSISTENT_GROUP_PROTOCOL);
        let mut other_type = join("", &["range"]);
        other_type.protocol_type = "connect".into();
        assert_eq!(
            c.join(other_type).await.error_code,
            ec::INCONSISTENT_GROUP_PROTOCOL
        );
    }

    #[tokio::test]
    async fn a_member_whose_session_expires_is_removed_and_the_group_rebalances() {
        let c = coordinator();
        let id = c.join(join("", &["range"])).await.member_id;
        let j = c.join(join(&id, &["range"])).await;
        assert_eq!(j.error_code, ec::NONE);
        let s = c
            .sync(
                "g",
                1,
                &id,
                None,
                vec![(id.clone(), Bytes::from_static(b"x"))],
            )
            .await;
        assert_eq!(s.error_code, ec::NONE);
        assert_eq!(member_ids(&c, "g").len(), 1);
        c.tick(Instant::now() + Duration::from_secs(11));
        assert!(member_ids(&c, "g").is_empty());
        assert_eq!(c.heartbeat("g", 1, &id, None), ec::UNKNOWN_MEMBER_ID);
        assert_eq!(c.check_commit("g", -1, "", None), ec::NONE);
    }

    #[tokio::test]
    async fn a_restarted_static_member_replaces_its_old_incarnation() {
        let c = coordinator();
        let mut first = join("", &["range"]);
        first.group_instance_id = Some("host-1".into());
        // static members skip MEMBER_ID_REQUIRED
        let j = c.join(first.clone()).await;
        assert_eq!((j.error_code, j.generation_id), (ec::NONE, 1));
        let old = j.member_id;
        // it restarts: a new member id, the old one is gone at once (no session wait)
        let j = c.join(first).await;
        assert_eq!((j.error_code, j.generation_id), (ec::NONE, 2));
        assert_ne!(j.member_id, old);
        assert_eq!(member_ids(&c, "g").len(), 1);
        assert_eq!(c.heartbeat("g", 2, &old, None), ec::UNKNOWN_MEMBER_ID);
        // it leaves by its instance id alone
        assert_eq!(
            c.leave("g", &[(String::new(), Some("host-1".into()))]),
            vec![ec::NONE]
        );
        assert!(member_ids(&c, "g").is_empty());
    }

    #[tokio::test]
    async fn a_static_member_restarting_in_a_stable_group_keeps_its_assignment_without_a_rebalance()
    {
        let c = coordinator();
        let mut req = join("", &["range"]);
        req.group_instance_id = Some("host-1".into());
        let j = c.join(req.clone()).await;
        let old = j.member_id.clone();
        let s = c
            .sync(
                "g",
                j.generation_id,
                &old,
                Some("host-1"),
                vec![(old.clone(), Bytes::from_static(b"P0"))],
            )
            .await;
        assert_eq!(s.error_code, ec::NONE);
        // the restart: a new member id, the same generation, no rebalance
        let again = c.join(req).await;
        assert_eq!(again.error_code, ec::NONE);
        assert_eq!(again.generation_id, j.generation_id);
        assert_ne!(again.member_id, old);
        assert_eq!(
            again.leader, again.member_id,
            "it led before: it leads still"
        );
        let s = c
            .sync(
                "g",
                j.generation_id,
                &again.member_id,
                Some("host-1"),
                Vec::new(),
            )
            .await;
        assert_eq!(
            (s.error_code, s.assignment),
            (ec::NONE, Bytes::from_static(b"P0"))
        );
        assert_eq!(
            c.heartbeat("g", j.generation_id, &again.member_id, Some("host-1")),
            ec::NONE
        );
        // the old incarnation is fenced wherever it shows up
        assert_eq!(
            c.heartbeat("g", j.generation_id, &old, Some("host-1")),
            ec::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.check_commit("g", j.generation_id, &old, Some("host-1")),
            ec::FENCED_INSTANCE_ID
        );
        assert_eq!(
            c.leave("g", &[(old.clone(), Some("host-1".into()))]),
            vec![ec::FENCED_INSTANCE_ID]
        );
        // both Stable states were queued for the metadata log, the second with the new id
        let stores = c.take_stores();
        assert_eq!(stores.len(), 2);
        assert_eq!(stores[1].members[0].member_id, again.member_id);
        assert_eq!(stores[1].generation, j.generation_id);
    }

    #[tokio::test]
    async fn a_new_coordinator_resumes_a_stored_stable_group() {
        let old = coordinator();
        let a = old.join(join("", &["range"])).await;
        let a = old.join(join(&a.member_id, &["range"])).await;
        let s = old
            .sync(
                "g",
                a.generation_id,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"P0,P1"))],
            )
            .await;
        assert_eq!(s.error_code, ec::NONE);
        let stored = old.take_stores().pop().expect("the Stable state is queued");
        // a new coordinator (slot epoch 3) resumes it from the stored state
        let new = coordinator();
        new.ensure_current("g", 3, Some(&stored));
        assert_eq!(
            new.heartbeat("g", a.generation_id, &a.member_id, None),
            ec::NONE
        );
        let again = new
            .sync("g", a.generation_id, &a.member_id, None, Vec::new())
            .await;
        assert_eq!(again.assignment, Bytes::from_static(b"P0,P1"));
        assert_eq!(
            new.check_commit("g", a.generation_id, &a.member_id, None),
            ec::NONE
        );
        // the same ownership does not reload; a later one (epoch 4) starts from the store
        new.ensure_current("g", 3, None);
        assert_eq!(member_ids(&new, "g").len(), 1);
        new.ensure_current("g", 4, None);
        assert!(member_ids(&new, "g").is_empty());
    }

    /// Seen in CI: DeleteGroups right after the last member left got NON_EMPTY_GROUP. The
    /// emptied group was forgotten by `tick`, and the next request resumed it from the
    /// metadata image, which still held its Stable state (the Empty store in flight).
    #[tokio::test]
    async fn a_group_emptied_here_is_not_resumed_from_an_older_stored_state() {
        let c = coordinator();
        let a = c.join(join("", &["range"])).await;
        let a = c.join(join(&a.member_id, &["range"])).await;
        // every request passes through ensure_current, which records the ownership
        c.ensure_current("g", 3, None);
        let s = c
            .sync(
                "g",
                a.generation_id,
                &a.member_id,
                None,
                vec![(a.member_id.clone(), Bytes::from_static(b"P0"))],
            )
            .await;
        assert_eq!(s.error_code, ec::NONE);
        let stable = c.take_stores().pop().expect("the Stable state is queued");
        assert_eq!(c.leave("g", &[(a.member_id.clone(), None)]), vec![ec::NONE]);
        c.tick(Instant::now());
        assert!(!c.knows("g"), "an empty group is forgotten");
        // the image still holds the Stable state: the same ownership does not resume it
        c.ensure_current("g", 3, Some(&stable));
        assert!(!c.has_members("g"));
        // a later ownership (the slot moved away and back) starts from the store again
        c.ensure_current("g", 4, Some(&stable));
        assert!(c.has_members("g"));
    }

    #[tokio::test]
    async fn a_member_waiting_for_its_assignment_is_not_expired_by_its_session() {
        let c = std::sync::Arc::new(coordinator());
        let a = c.join(join("", &["range"])).await.member_id;
        let b = c.join(join("", &["range"])).await.member_id;
        let (ca, cb) = (std::sync::Arc::clone(&c), std::sync::Arc::clone(&c));
        let (a2, b2) = (a.clone(), b.clone());
        let ja = tokio::spawn(async move { ca.join(join(&a2, &["range"])).await });
        let jb = tokio::spawn(async move { cb.join(join(&b2, &["range"])).await });
        let (ja, jb) = (ja.await.unwrap(), jb.await.unwrap());
        let follower = if ja.leader == a { b.clone() } else { a.clone() };
        let generation = ja.generation_id.max(jb.generation_id);
        let cf = std::sync::Arc::clone(&c);
        let f = follower.clone();
        let waiting =
            tokio::spawn(async move { cf.sync("g", generation, &f, None, Vec::new()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // past its session, still waiting on the leader's SyncGroup: kept
        c.tick(Instant::now() + Duration::from_secs(11));
        assert!(member_ids(&c, "g").contains(&follower));
        waiting.abort();
    }
}
