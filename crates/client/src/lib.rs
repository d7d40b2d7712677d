//! `sluice-client`: Sluice's own Kafka client, used by the CLI, `sluice bench`, `sluice
//! demo` and the tests (issue 17). Built so far: the partitioners (`partitioner.rs`) and
//! Kafka's murmur2 key hash (`murmur2.rs`). Not yet: the producer's accumulators,
//! compression, retries and delivery reports, and the consumer.

pub mod murmur2;
pub mod partitioner;

pub use partitioner::{
    DefaultPartitioner, Partitioner, RandomPartitioner, RoundRobinPartitioner, StickyPartitioner,
};
