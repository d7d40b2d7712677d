//! What the client knows of the cluster, from the last Metadata response: brokers'
//! addresses, and per topic each partition's leader and leader epoch. A response never
//! takes a partition back to an older leader epoch than one already known (KIP-320:
//! another broker's metadata may lag), so a refresh cannot send records to a deposed
//! leader the client already moved away from.
//!
//! Invariant: a partition's known leader epoch never decreases.

use std::collections::HashMap;

use kafka_protocol::messages::MetadataResponse;
use rustc_hash::FxHashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// -1: no leader now.
    pub leader: i32,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    Known(Vec<PartitionInfo>),
    /// The cluster answered with an error for it (UNKNOWN_TOPIC_OR_PARTITION, ...).
    Error(i16),
}

#[derive(Debug, Default, Clone)]
pub struct MetadataCache {
    brokers: HashMap<i32, String>,
    topics: FxHashMap<String, TopicEntry>,
}

#[derive(Debug, Clone)]
struct TopicEntry {
    state: TopicState,
    /// Its partitions with a leader (kept with the state: the producer asks for every
    /// record, in the same lookup).
    available: Vec<i32>,
}

impl MetadataCache {
    /// Takes in a Metadata response (for some or all topics).
    pub fn update(&mut self, response: &MetadataResponse) {
        if !response.brokers.is_empty() {
            self.brokers = response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
        }
        for t in &response.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            if t.error_code != 0 {
                self.topics.insert(
                    name,
                    TopicEntry {
                        state: TopicState::Error(t.error_code),
                        available: Vec::new(),
                    },
                );
                continue;
            }
            let count = t
                .partitions
                .iter()
                .map(|p| p.partition_index + 1)
                .max()
                .unwrap_or(0)
                .max(0) as usize;
            let mut partitions = vec![
                PartitionInfo {
                    leader: -1,
                    leader_epoch: -1,
                };
                count
            ];
            for p in &t.partitions {
                let Some(slot) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| partitions.get_mut(i))
                else {
                    continue;
                };
                slot.leader = p.leader_id.0;
                slot.leader_epoch = p.leader_epoch;
            }
            if let Some(TopicState::Known(old)) = self.topics.get(&name).map(|e| &e.state) {
                for (new, old) in partitions.iter_mut().zip(old) {
                    if new.leader_epoch < old.leader_epoch {
                        *new = *old; // stale answer: keep what a newer epoch said
                    }
                }
            }
            let available = with_leader(&partitions);
            self.topics.insert(
                name,
                TopicEntry {
                    state: TopicState::Known(partitions),
                    available,
                },
            );
        }
    }

    pub fn broker_address(&self, id: i32) -> Option<&str> {
        self.brokers.get(&id).map(String::as_str)
    }

    pub fn brokers(&self) -> impl Iterator<Item = (i32, &str)> {
        self.brokers.iter().map(|(id, a)| (*id, a.as_str()))
    }

    pub fn topic(&self, topic: &str) -> Option<&TopicState> {
        self.topics.get(topic).map(|e| &e.state)
    }

    /// What a producer needs for each record, in one lookup: the topic's state and its
    /// partitions that have a leader now.
    pub fn topic_with_available(&self, topic: &str) -> Option<(&TopicState, &[i32])> {
        self.topics
            .get(topic)
            .map(|e| (&e.state, e.available.as_slice()))
    }

    /// The partition count of a known topic.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        match self.topic(topic)? {
            TopicState::Known(p) => Some(p.len() as i32),
            TopicState::Error(_) => None,
        }
    }

    /// The partitions of `topic` that have a leader now.
    pub fn available(&self, topic: &str) -> &[i32] {
        self.topics
            .get(topic)
            .map_or(&[], |e| e.available.as_slice())
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<PartitionInfo> {
        match self.topic(topic)? {
            TopicState::Known(p) => p.get(usize::try_from(partition).ok()?).copied(),
            TopicState::Error(_) => None,
        }
    }

    /// Forgets `topic`'s leaders (after NOT_LEADER_OR_FOLLOWER, say) but keeps their
    /// epochs, so the next response cannot bring back an older leader.
    pub fn invalidate_leader(&mut self, topic: &str, partition: i32) {
        if let Some(TopicEntry {
            state: TopicState::Known(p),
            available,
        }) = self.topics.get_mut(topic)
        {
            if let Some(i) = usize::try_from(partition).ok().and_then(|i| p.get_mut(i)) {
                i.leader = -1;
            }
            *available = with_leader(p);
        }
    }
}

fn with_leader(partitions: &[PartitionInfo]) -> Vec<i32> {
    partitions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.leader >= 0)
        .map(|(n, _)| n as i32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn response(leaders: &[(i32, i32)]) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(
                (1..=3)
                    .map(|id| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_string(format!("h{id}")))
                            .with_port(9092)
                    })
                    .collect(),
            )
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(
                    leaders
                        .iter()
                        .enumerate()
                        .map(|(i, (leader, epoch))| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i as i32)
                                .with_leader_id(BrokerId(*leader))
                                .with_leader_epoch(*epoch)
                        })
                        .collect(),
                )])
    }

    #[test]
    fn leaders_and_availability_come_from_the_response() {
        let mut m = MetadataCache::default();
        m.update(&response(&[(1, 3), (-1, 4), (3, 1)]));
        assert_eq!(m.partitions("t"), Some(3));
        assert_eq!(m.available("t"), [0, 2]);
        assert_eq!(m.broker_address(3), Some("h3:9092"));
        assert_eq!(m.partition("t", 0).unwrap().leader, 1);
        m.invalidate_leader("t", 0);
        assert_eq!(m.available("t"), [2]);
    }

    #[test]
    fn a_stale_response_never_brings_back_an_older_leader() {
        let mut m = MetadataCache::default();
        m.update(&response(&[(2, 5)]));
        // a lagging broker still says broker 1 leads in epoch 4
        m.update(&response(&[(1, 4)]));
        assert_eq!(
            m.partition("t", 0),
            Some(PartitionInfo {
                leader: 2,
                leader_epoch: 5
            })
        );
        m.update(&response(&[(3, 6)]));
        assert_eq!(m.partition("t", 0).unwrap().leader, 3);
    }
}
