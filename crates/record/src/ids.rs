//! Id newtypes shared by every crate: offsets, leader epochs, broker ids and partitions.
//!
//! They are thin wrappers so that an offset is never passed where an epoch is expected.
//! Kafka's sentinel `-1` ("none") is kept as a value, not an `Option`, because it is what
//! the wire and the checkpoint files carry.

use std::fmt;

/// A position in a partition's log (Kafka: int64 offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);
    pub const NONE: Offset = Offset(-1);

    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The epoch of a partition's leadership (Kafka: int32 partition leader epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// "No epoch": batches written before leader epochs existed, or an unknown epoch.
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}

impl fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A broker's `node.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerId(pub i32);

impl BrokerId {
    pub const NONE: BrokerId = BrokerId(-1);
}

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A topic name and a partition index. Displays (and names its directory) as `topic-N`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Parses a partition directory name `topic-N`. Topic names may contain `-`, so the
    /// partition is the part after the last one.
    pub fn parse_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        if topic.is_empty() || partition.is_empty() || partition.starts_with('+') {
            return None;
        }
        let partition: i32 = partition.parse().ok()?;
        if partition < 0 {
            return None;
        }
        Some(TopicPartition::new(topic, partition))
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_partition_dir_name_round_trips() {
        let tp = TopicPartition::new("orders-eu", 12);
        assert_eq!(tp.to_string(), "orders-eu-12");
        assert_eq!(TopicPartition::parse_dir_name("orders-eu-12"), Some(tp));
        assert_eq!(TopicPartition::parse_dir_name("orders"), None);
        assert_eq!(TopicPartition::parse_dir_name("-1"), None);
        assert_eq!(
            TopicPartition::parse_dir_name("t--1"),
            Some(TopicPartition::new("t-", 1))
        );
        assert_eq!(TopicPartition::parse_dir_name("t-+1"), None);
        assert_eq!(TopicPartition::parse_dir_name("t-x"), None);
    }

    #[test]
    fn sentinels_are_kafkas() {
        assert_eq!(Offset::NONE.0, -1);
        assert_eq!(LeaderEpoch::NONE.0, -1);
        assert_eq!(BrokerId::NONE.0, -1);
        assert_eq!(Offset(41).next(), Offset(42));
    }
}
