//! `MetadataImage`: brokers, topics and their partitions, committed group offsets — the
//! state the metadata log builds, one record at a time.
//!
//! Invariants kept by `apply` (a record that would break one is rejected with a Kafka error
//! code and changes nothing):
//! - a partition's `leader_epoch` and `partition_epoch` never decrease; every accepted
//!   `PartitionChange` raises `partition_epoch` by exactly one (compare-and-set);
//! - `isr ⊆ replicas`, the ISR is never empty, the leader is in the ISR or -1;
//! - a broker's `broker_epoch` is the metadata index of its latest registration;
//! - a `PartitionChange` makes a broker leader, or adds it to an ISR, only while it is
//!   registered and unfenced;
//! - a coordinator slot's epoch grows by exactly one at each move, and a slot moves only
//!   to a registered, unfenced broker (or to none, -1);
//! - a broker's numbered commit calls apply in the order it numbered them: a call below
//!   the latest applied of its registration (a late copy) changes nothing;
//! - `applied_index` only grows.

use std::collections::BTreeMap;

use crate::error_code as ec;
use crate::proto::metadata as pb;
use crate::{
    Broker, CommittedOffset, CoordinatorSlot, MetadataBatch, Partition, Record, Topic, NO_LEADER,
};

/// The result of applying one record: `error_code` 0 when it took effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyOutcome {
    pub error_code: i16,
    pub message: String,
}

impl ApplyOutcome {
    pub fn ok() -> Self {
        ApplyOutcome {
            error_code: ec::NONE,
            message: String::new(),
        }
    }

    fn err(error_code: i16, message: impl Into<String>) -> Self {
        ApplyOutcome {
            error_code,
            message: message.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.error_code == ec::NONE
    }
}

type OffsetKey = (String, String, i32);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataImage {
    cluster_id: String,
    applied_index: u64,
    brokers: BTreeMap<i32, Broker>,
    topics: BTreeMap<String, Topic>,
    offsets: BTreeMap<OffsetKey, CommittedOffset>,
    coordinators: BTreeMap<i32, CoordinatorSlot>,
    groups: BTreeMap<String, pb::StoredGroup>,
    /// The first producer id not yet handed out (ids below it belong to some broker's block).
    next_producer_id: i64,
}

impl MetadataImage {
    pub fn new(cluster_id: impl Into<String>) -> Self {
        MetadataImage {
            cluster_id: cluster_id.into(),
            ..MetadataImage::default()
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The metadata log index of the last entry applied (0: none).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values()
    }

    pub fn broker(&self, broker_id: i32) -> Option<&Broker> {
        self.brokers.get(&broker_id)
    }

    /// Registered, unfenced brokers, by id.
    pub fn live_broker_ids(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.broker_id)
            .collect()
    }

    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.values()
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&Partition> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Option<&CommittedOffset> {
        self.offsets
            .get(&(group.to_string(), topic.to_string(), partition))
    }

    /// Every placed coordinator slot, by slot.
    pub fn coordinators(&self) -> impl Iterator<Item = &CoordinatorSlot> {
        self.coordinators.values()
    }

    /// The slot of `group`'s coordinator, if placed (see [`crate::group_coordinator_slot`]).
    pub fn coordinator_of_group(&self, group: &str) -> Option<&CoordinatorSlot> {
        self.coordinators.get(&crate::group_coordinator_slot(group))
    }

    /// `group`'s membership as its coordinator last stored it.
    pub fn stored_group(&self, group: &str) -> Option<&pb::StoredGroup> {
        self.groups.get(group)
    }

    /// The first producer id no broker has been given yet.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Every stored group, by id.
    pub fn stored_groups(&self) -> impl Iterator<Item = &pb::StoredGroup> {
        self.groups.values()
    }

    /// The ids of every group with committed offsets or stored membership.
    pub fn group_ids(&self) -> std::collections::BTreeSet<String> {
        let mut ids: std::collections::BTreeSet<String> = self.groups.keys().cloned().collect();
        ids.extend(self.offsets.keys().map(|(g, _, _)| g.clone()));
        ids
    }

    /// Every committed offset of every group, by group, topic and partition.
    pub fn all_committed_offsets(&self) -> impl Iterator<Item = &CommittedOffset> {
        self.offsets.values()
    }

    /// Every offset `group` committed, for `topics` (all topics when empty).
    pub fn committed_offsets(&self, group: &str, topics: &[String]) -> Vec<CommittedOffset> {
        self.offsets
            .range((group.to_string(), String::new(), i32::MIN)..)
            .take_while(|((g, _, _), _)| g == group)
            .filter(|((_, t, _), _)| topics.is_empty() || topics.contains(t))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Applies one committed entry; returns one outcome per record. Records are applied in
    /// order, each against the image its predecessors left; a rejected record changes
    /// nothing and does not stop the others.
    pub fn apply(&mut self, index: u64, batch: &MetadataBatch) -> Vec<ApplyOutcome> {
        assert!(
            index > self.applied_index,
            "metadata index went backwards: {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
        batch
            .records
            .iter()
            .map(|r| match &r.record {
                None => ApplyOutcome::err(ec::INVALID_REQUEST, "empty record"),
                Some(record) => self.apply_record(index, record),
            })
            .collect()
    }

    /// Moves `applied_index` over an entry that holds no records (a Raft leader's blank or
    /// membership entry).
    pub fn advance_to(&mut self, index: u64) {
        assert!(index >= self.applied_index, "metadata index went backwards");
        self.applied_index = index;
    }

    fn apply_record(&mut self, index: u64, record: &Record) -> ApplyOutcome {
        match record {
            Record::RegisterBroker(r) => {
                let broker = self.brokers.entry(r.broker_id).or_default();
                if broker.broker_id == r.broker_id
                    && broker.incarnation_id == r.incarnation_id
                    && broker.broker_epoch > 0
                {
                    // the same process registering again (a retried call): keep its epoch
                    broker.endpoints = r.endpoints.clone();
                    broker.rack = r.rack.clone();
                    return ApplyOutcome::ok();
                }
                *broker = Broker {
                    broker_id: r.broker_id,
                    incarnation_id: r.incarnation_id.clone(),
                    endpoints: r.endpoints.clone(),
                    rack: r.rack.clone(),
                    broker_epoch: index as i64,
                    fenced: true,
                    last_commit_call: 0,
                };
                ApplyOutcome::ok()
            }
            Record::FenceBroker(r) => self.set_fenced(r.broker_id, r.broker_epoch, true),
            Record::UnfenceBroker(r) => self.set_fenced(r.broker_id, r.broker_epoch, false),
            Record::CreateTopic(r) => {
                let Some(topic) = &r.topic else {
                    return ApplyOutcome::err(ec::INVALID_REQUEST, "CreateTopic without a topic");
                };
                if self.topics.contains_key(&topic.name) {
                    return ApplyOutcome::err(
                        ec::TOPIC_ALREADY_EXISTS,
                        format!("Topic '{}' already exists.", topic.name),
                    );
                }
                if topic.topic_id.len() != 16 {
                    return ApplyOutcome::err(ec::INVALID_REQUEST, "topic id must be 16 bytes");
                }
                if topic.partitions.is_empty() {
                    return ApplyOutcome::err(ec::INVALID_PARTITIONS, "a topic needs a partition");
                }
                for (i, p) in topic.partitions.iter().enumerate() {
                    if p.partition as usize != i {
                        return ApplyOutcome::err(ec::INVALID_REQUEST, "partitions out of order");
                    }
                    if let Err(e) = check_partition_state(p) {
                        return e;
                    }
                }
                self.topics.insert(topic.name.clone(), topic.clone());
                ApplyOutcome::ok()
            }
            Record::DeleteTopic(r) => match self.topics.get(&r.name) {
                Some(t) if t.topic_id == r.topic_id => {
                    self.topics.remove(&r.name);
                    self.offsets.retain(|(_, topic, _), _| *topic != r.name);
                    ApplyOutcome::ok()
                }
                _ => unknown_topic(&r.name),
            },
            Record::PartitionChange(r) => self.apply_partition_change(r),
            Record::AddPartitions(r) => self.apply_add_partitions(r),
            Record::CommitOffsets(r) => {
                if r.fenced {
                    let stale = r.offsets.iter().find(|o| {
                        self.coordinator_of_group(&o.group).is_none_or(|c| {
                            c.broker_id != r.coordinator_broker_id || c.epoch != r.coordinator_epoch
                        })
                    });
                    if let Some(o) = stale {
                        return ApplyOutcome::err(
                            ec::NOT_COORDINATOR,
                            format!(
                                "broker {} at epoch {} no longer coordinates group {}",
                                r.coordinator_broker_id, r.coordinator_epoch, o.group
                            ),
                        );
                    }
                    if r.call_sequence > 0 {
                        let in_order =
                            self.brokers.get(&r.coordinator_broker_id).is_some_and(|b| {
                                b.broker_epoch == r.committer_broker_epoch
                                    && r.call_sequence >= b.last_commit_call
                            });
                        if !in_order {
                            return ApplyOutcome::err(
                                ec::REQUEST_TIMED_OUT,
                                format!(
                                    "a stale copy of commit call {} of broker {} (epoch {}): a later call of it was applied",
                                    r.call_sequence, r.coordinator_broker_id, r.committer_broker_epoch
                                ),
                            );
                        }
                    }
                }
                for o in &r.offsets {
                    self.offsets
                        .insert((o.group.clone(), o.topic.clone(), o.partition), o.clone());
                }
                if let (true, Some(b)) = (
                    r.fenced && r.call_sequence > 0,
                    self.brokers.get_mut(&r.coordinator_broker_id),
                ) {
                    b.last_commit_call = r.call_sequence;
                }
                ApplyOutcome::ok()
            }
            Record::MoveCoordinators(r) => self.apply_move_coordinators(r),
            Record::StoreGroup(r) => self.apply_store_group(r),
            Record::DeleteOffsets(r) => {
                for p in &r.partitions {
                    self.offsets
                        .remove(&(r.group.clone(), p.topic.clone(), p.partition));
                }
                ApplyOutcome::ok()
            }
            Record::AllocateProducerIds(r) => self.apply_allocate_producer_ids(r),
            Record::DeleteGroups(r) => {
                for id in &r.group_ids {
                    self.groups.remove(id);
                    let keys: Vec<OffsetKey> = self
                        .offsets
                        .range((id.clone(), String::new(), i32::MIN)..)
                        .take_while(|((g, _, _), _)| g == id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        self.offsets.remove(&k);
                    }
                }
                ApplyOutcome::ok()
            }
        }
    }

    /// A block of producer ids for a registered broker, compare-and-set on the next id.
    fn apply_allocate_producer_ids(&mut self, r: &pb::AllocateProducerIds) -> ApplyOutcome {
        let registered = self
            .brokers
            .get(&r.broker_id)
            .is_some_and(|b| b.broker_epoch == r.broker_epoch);
        if !registered {
            return ApplyOutcome::err(
                ec::STALE_BROKER_EPOCH,
                format!(
                    "broker {} is not registered with epoch {}",
                    r.broker_id, r.broker_epoch
                ),
            );
        }
        if r.first_producer_id != self.next_producer_id || r.count < 1 {
            return ApplyOutcome::err(
                ec::UNKNOWN_SERVER_ERROR,
                format!(
                    "producer id block from {} refused: the next id is {}",
                    r.first_producer_id, self.next_producer_id
                ),
            );
        }
        let Some(next) = r.first_producer_id.checked_add(i64::from(r.count)) else {
            return ApplyOutcome::err(ec::UNKNOWN_SERVER_ERROR, "producer ids exhausted");
        };
        self.next_producer_id = next;
        ApplyOutcome::ok()
    }

    /// A coordinator's store of its group: refused unless that broker owns the group's
    /// slot at that epoch now (a deposed coordinator must not overwrite its successor).
    fn apply_store_group(&mut self, r: &pb::StoreGroup) -> ApplyOutcome {
        let Some(group) = &r.group else {
            return ApplyOutcome::err(ec::INVALID_REQUEST, "no group to store");
        };
        let owner = self.coordinator_of_group(&group.group_id);
        let current = owner.is_some_and(|o| {
            o.broker_id == group.coordinator_broker_id && o.epoch == group.coordinator_epoch
        });
        if !current {
            return ApplyOutcome::err(
                ec::NOT_COORDINATOR,
                format!(
                    "broker {} at epoch {} no longer coordinates group {}",
                    group.coordinator_broker_id, group.coordinator_epoch, group.group_id
                ),
            );
        }
        // generations only grow under one coordinator
        if let Some(old) = self.groups.get(&group.group_id) {
            if old.coordinator_epoch == group.coordinator_epoch && group.generation < old.generation
            {
                return ApplyOutcome::err(
                    ec::INVALID_REQUEST,
                    format!(
                        "group {} generation {} is older than the stored {}",
                        group.group_id, group.generation, old.generation
                    ),
                );
            }
        }
        self.groups.insert(group.group_id.clone(), group.clone());
        ApplyOutcome::ok()
    }

    fn apply_move_coordinators(&mut self, r: &pb::MoveCoordinators) -> ApplyOutcome {
        for s in &r.slots {
            if !(0..crate::COORDINATOR_SLOTS).contains(&s.slot) {
                return ApplyOutcome::err(
                    ec::INVALID_REQUEST,
                    format!("coordinator slot {} out of range", s.slot),
                );
            }
            let expected = self.coordinators.get(&s.slot).map_or(0, |c| c.epoch + 1);
            if s.epoch != expected {
                return ApplyOutcome::err(
                    ec::INVALID_UPDATE_VERSION,
                    format!(
                        "coordinator slot {}: epoch {} is not the next one ({expected})",
                        s.slot, s.epoch
                    ),
                );
            }
            if s.broker_id != NO_LEADER {
                if let Some(b) = self.first_ineligible([s.broker_id]) {
                    return ApplyOutcome::err(
                        ec::INELIGIBLE_REPLICA,
                        format!("broker {b} is fenced or not registered: it cannot coordinate"),
                    );
                }
            }
        }
        for s in &r.slots {
            self.coordinators.insert(s.slot, *s);
        }
        ApplyOutcome::ok()
    }

    fn set_fenced(&mut self, broker_id: i32, broker_epoch: i64, fenced: bool) -> ApplyOutcome {
        match self.brokers.get_mut(&broker_id) {
            None => ApplyOutcome::err(
                ec::BROKER_ID_NOT_REGISTERED,
                format!("broker {broker_id} is not registered"),
            ),
            Some(b) if b.broker_epoch != broker_epoch => ApplyOutcome::err(
                ec::STALE_BROKER_EPOCH,
                format!(
                    "broker {broker_id} epoch is {}, not {broker_epoch}",
                    b.broker_epoch
                ),
            ),
            Some(b) => {
                b.fenced = fenced;
                ApplyOutcome::ok()
            }
        }
    }

    fn apply_partition_change(&mut self, r: &pb::PartitionChange) -> ApplyOutcome {
        let Some(new) = &r.partition else {
            return ApplyOutcome::err(ec::INVALID_REQUEST, "PartitionChange without a state");
        };
        if let Err(e) = check_partition_state(new) {
            return e;
        }
        // a broker may only become leader or join an ISR while registered and unfenced,
        // judged here, in log order (a fence committed after the request was checked wins)
        let current = self.topics.get(&r.topic).and_then(|t| {
            usize::try_from(new.partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        });
        let new_leader = new.leader != NO_LEADER && current.is_none_or(|c| c.leader != new.leader);
        let joiners: Vec<i32> = new
            .isr
            .iter()
            .copied()
            .filter(|b| current.is_none_or(|c| !c.isr.contains(b)))
            .chain(new_leader.then_some(new.leader))
            .collect();
        if let Some(b) = self.first_ineligible(joiners) {
            return ApplyOutcome::err(
                ec::INELIGIBLE_REPLICA,
                format!(
                    "{}-{}: broker {b} is fenced or not registered: it cannot lead or join the ISR",
                    r.topic, new.partition
                ),
            );
        }
        let Some(topic) = self.topics.get_mut(&r.topic) else {
            return unknown_topic(&r.topic);
        };
        if topic.topic_id != r.topic_id {
            return unknown_topic(&r.topic);
        }
        let Ok(index) = usize::try_from(new.partition) else {
            return ApplyOutcome::err(ec::UNKNOWN_TOPIC_OR_PARTITION, "negative partition");
        };
        match topic.partitions.get_mut(index) {
            Some(current) => {
                if current.partition_epoch != r.expected_partition_epoch {
                    return ApplyOutcome::err(
                        ec::INVALID_UPDATE_VERSION,
                        format!(
                            "{}-{}: partition epoch is {}, the change expected {}",
                            r.topic,
                            new.partition,
                            current.partition_epoch,
                            r.expected_partition_epoch
                        ),
                    );
                }
                if new.partition_epoch != current.partition_epoch + 1
                    || new.leader_epoch < current.leader_epoch
                    || (new.leader != current.leader && new.leader_epoch == current.leader_epoch)
                {
                    return ApplyOutcome::err(
                        ec::INVALID_REQUEST,
                        format!(
                            "{}-{}: epochs must advance (partition epoch +1, leader epoch +1 on a leader change)",
                            r.topic, new.partition
                        ),
                    );
                }
                *current = new.clone();
                ApplyOutcome::ok()
            }
            None => ApplyOutcome::err(
                ec::UNKNOWN_TOPIC_OR_PARTITION,
                format!("{}-{} does not exist", r.topic, new.partition),
            ),
        }
    }

    /// The first of `brokers` that is fenced or not registered: it may not lead or join an
    /// ISR.
    fn first_ineligible(&self, brokers: impl IntoIterator<Item = i32>) -> Option<i32> {
        brokers
            .into_iter()
            .find(|b| self.brokers.get(b).is_none_or(|x| x.fenced))
    }

    fn apply_add_partitions(&mut self, r: &pb::AddPartitions) -> ApplyOutcome {
        let Some(topic) = self.topics.get(&r.topic) else {
            return unknown_topic(&r.topic);
        };
        if topic.topic_id != r.topic_id {
            return unknown_topic(&r.topic);
        }
        let count = topic.partitions.len();
        if count != r.expected_count as usize {
            return ApplyOutcome::err(
                ec::INVALID_PARTITIONS,
                format!(
                    "Topic '{}' now has {count} partitions, not {}: retry",
                    r.topic, r.expected_count
                ),
            );
        }
        if r.partitions.is_empty() {
            return ApplyOutcome::err(ec::INVALID_PARTITIONS, "no partitions to add");
        }
        for (i, p) in r.partitions.iter().enumerate() {
            if p.partition as usize != count + i {
                return ApplyOutcome::err(ec::INVALID_REQUEST, "added partitions out of order");
            }
            if let Err(e) = check_partition_state(p) {
                return e;
            }
            let members = std::iter::once(p.leader)
                .filter(|l| *l != NO_LEADER)
                .chain(p.isr.iter().copied());
            if let Some(b) = self.first_ineligible(members) {
                return ApplyOutcome::err(
                    ec::INELIGIBLE_REPLICA,
                    format!("broker {b} is fenced or not registered"),
                );
            }
        }
        if let Some(topic) = self.topics.get_mut(&r.topic) {
            topic.partitions.extend(r.partitions.iter().cloned());
        }
        ApplyOutcome::ok()
    }

    /// The whole image, for snapshots and for watchers that start behind the log's start.
    pub fn to_proto(&self) -> pb::MetadataImage {
        pb::MetadataImage {
            cluster_id: self.cluster_id.clone(),
            applied_index: self.applied_index,
            brokers: self.brokers.values().cloned().collect(),
            topics: self.topics.values().cloned().collect(),
            offsets: self.offsets.values().cloned().collect(),
            coordinators: self.coordinators.values().cloned().collect(),
            groups: self.groups.values().cloned().collect(),
            next_producer_id: self.next_producer_id,
        }
    }

    pub fn from_proto(image: pb::MetadataImage) -> Self {
        MetadataImage {
            cluster_id: image.cluster_id,
            applied_index: image.applied_index,
            brokers: image
                .brokers
                .into_iter()
                .map(|b| (b.broker_id, b))
                .collect(),
            topics: image
                .topics
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
            offsets: image
                .offsets
                .into_iter()
                .map(|o| ((o.group.clone(), o.topic.clone(), o.partition), o))
                .collect(),
            coordinators: image
                .coordinators
                .into_iter()
                .map(|c| (c.slot, c))
                .collect(),
            groups: image
                .groups
                .into_iter()
                .map(|g| (g.group_id.clone(), g))
                .collect(),
            next_producer_id: image.next_producer_id,
        }
    }
}

fn unknown_topic(name: &str) -> ApplyOutcome {
    ApplyOutcome::err(
        ec::UNKNOWN_TOPIC_OR_PARTITION,
        format!("topic '{name}' does not exist"),
    )
}

/// Structural checks every stored partition state passes.
fn check_partition_state(p: &Partition) -> Result<(), ApplyOutcome> {
    let bad = |why: &str| {
        Err(ApplyOutcome::err(
            ec::INVALID_REQUEST,
            format!("partition {}: {why}", p.partition),
        ))
    };
    if p.replicas.is_empty() {
        return bad("no replicas");
    }
    let mut sorted = p.replicas.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != p.replicas.len() {
        return bad("duplicate replicas");
    }
    if p.isr.is_empty() {
        return bad("empty ISR");
    }
    if p.isr.iter().any(|b| !p.replicas.contains(b)) {
        return bad("ISR member that is not a replica");
    }
    if p.leader != NO_LEADER && !p.isr.contains(&p.leader) {
        return bad("leader outside the ISR");
    }
    if p.leader_epoch < 0 || p.partition_epoch < 0 {
        return bad("negative epoch");
    }
    Ok(())
}
