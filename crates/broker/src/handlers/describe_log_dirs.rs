//! DescribeLogDirs: this broker's one log directory — its path, whether it takes writes
//! (KAFKA_STORAGE_ERROR while offline, see `log_dir_health.rs`), its file system's total
//! and usable bytes (v4), and the size of each partition replica in it (all of them, or
//! those the request names). What `kafka-log-dirs.sh --describe`, web UIs and `sluice
//! cluster status` read.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;
use std::collections::BTreeMap;

use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: DescribeLogDirsRequest = decode(request)?;
    let wanted = |topic: &str, partition: i32| match &body.topics {
        None => true,
        Some(topics) => topics
            .iter()
            .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&partition)),
    };
    let health = broker.replicas.log_dir_health();
    let dir = &broker.config.log_dir;
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(dir.display().to_string()))
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    if health.is_offline() {
        result.error_code = ec::KAFKA_STORAGE_ERROR;
    } else {
        if let Ok((total, usable)) = sluice_log::disk_space(dir) {
            result.total_bytes = i64::try_from(total).unwrap_or(i64::MAX);
            result.usable_bytes = i64::try_from(usable).unwrap_or(i64::MAX);
        }
        let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
        for partition in broker.replicas.partitions() {
            let tp = partition.topic_partition();
            if !wanted(&tp.topic, tp.partition) {
                continue;
            }
            let size_bytes = sluice_log::lock(partition.log()).size_bytes();
            topics.entry(tp.topic.clone()).or_default().push(
                DescribeLogDirsPartition::default()
                    .with_partition_index(tp.partition)
                    .with_partition_size(i64::try_from(size_bytes).unwrap_or(i64::MAX)),
            );
        }
        result.topics = topics
            .into_iter()
            .map(|(name, mut partitions)| {
                partitions.sort_by_key(|p| p.partition_index);
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(partitions)
            })
            .collect();
    }
    respond(
        request,
        &DescribeLogDirsResponse::default().with_results(vec![result]),
    )
}
