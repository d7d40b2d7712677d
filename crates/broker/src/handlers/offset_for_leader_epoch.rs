//! OffsetForLeaderEpoch: where a leader epoch ends in the leader's log. A replica that
//! becomes a follower asks it for its own latest epoch and truncates only what diverges
//! (KIP-101, KIP-279); consumers use it to detect truncation (KIP-320).

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;
use sluice_record::TopicPartition;

use super::{decode, respond, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: OffsetForLeaderEpochRequest = decode(request)?;
    broker.sync_partitions_unless_busy();
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in &body.topics {
        let name = topic.topic.0.to_string();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let mut answer = EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                let tp = TopicPartition::new(name.clone(), p.partition);
                match broker.replicas.partition(&tp) {
                    None => {
                        let known = broker
                            .with_image(|image| image.partition(&name, p.partition).is_some());
                        answer.error_code = if known {
                            ec::NOT_LEADER_OR_FOLLOWER
                        } else {
                            ec::UNKNOWN_TOPIC_OR_PARTITION
                        };
                    }
                    Some(partition) => {
                        match partition.end_offset_for_epoch(p.current_leader_epoch, p.leader_epoch)
                        {
                            Ok((epoch, end)) => {
                                answer.leader_epoch = epoch;
                                answer.end_offset = end;
                            }
                            Err(e) => answer.error_code = e.error_code(),
                        }
                    }
                }
                answer
            })
            .collect();
        response.topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    respond(request, &response)
}
