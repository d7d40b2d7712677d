//! `sluice-client`: Sluice's own Kafka client, used by the CLI, `sluice bench`, `sluice
//! demo` and the tests (issue 17). Built so far: the producer (`producer.rs`) with its
//! record accumulator (`accumulator.rs`: batch.size, linger.ms, buffer.memory),
//! partitioners (`partitioner.rs`, with Kafka's murmur2 in `murmur2.rs`), metadata cache
//! (`metadata_cache.rs`) and what a Produce error means for a batch (`produce_error.rs`).
//! Not yet: pipelined requests per connection, and the consumer.

pub mod accumulator;
pub mod metadata_cache;
pub mod murmur2;
pub mod partitioner;
pub mod produce_error;
pub mod producer;

pub use partitioner::{
    DefaultPartitioner, Partitioner, RandomPartitioner, RoundRobinPartitioner, StickyPartitioner,
};
pub use producer::{DeliveryError, DeliveryReport, Producer, ProducerConfig, ProducerRecord};
