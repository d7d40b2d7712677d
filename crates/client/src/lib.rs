//! `sluice-client`: Sluice's own Kafka client, used by the CLI, `sluice bench`, `sluice
//! demo` and the tests (issue 17). Built so far: the partitioners (`partitioner.rs`),
//! Kafka's murmur2 key hash (`murmur2.rs`) and the producer's record accumulator
//! (`accumulator.rs`: batch.size, linger.ms, buffer.memory), and what a Produce error
//! means for a batch (`produce_error.rs`: retry, refresh, written or not). Not yet: the producer's
//! sender (requests, acks, retries, idempotence, delivery reports) and the consumer.

pub mod accumulator;
pub mod murmur2;
pub mod partitioner;
pub mod produce_error;

pub use partitioner::{
    DefaultPartitioner, Partitioner, RandomPartitioner, RoundRobinPartitioner, StickyPartitioner,
};
