//! `sluice-client`: Sluice's own Kafka client, used by the CLI, `sluice bench`, `sluice
//! demo` and the tests (issue 17). Built so far: the producer (`producer.rs`) with its
//! record accumulator (`accumulator.rs`: batch.size, linger.ms, buffer.memory),
//! partitioners (`partitioner.rs`, with Kafka's murmur2 in `murmur2.rs`), metadata cache
//! (`metadata_cache.rs`) and what a Produce error means for a batch (`produce_error.rs`);
//! the consumer (`consumer.rs`: assigned partitions, one fetch in flight per leader,
//! pre-fetch queue); connections shared by both (`broker_io.rs`).
//! Not yet: pipelined requests per connection, consumer groups.

pub mod accumulator;
pub mod broker_io;
pub mod consumer;
pub mod metadata_cache;
pub mod murmur2;
pub mod partitioner;
pub mod produce_error;
pub mod producer;

pub use consumer::{Consumer, ConsumerConfig, ConsumerError, Fetched, OffsetReset, StartOffset};
pub use partitioner::{
    DefaultPartitioner, Partitioner, RandomPartitioner, RoundRobinPartitioner, StickyPartitioner,
};
pub use producer::{
    BatchReport, DeliveryError, DeliveryReport, Producer, ProducerConfig, ProducerRecord,
};
