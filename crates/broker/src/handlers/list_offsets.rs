//! ListOffsets: the earliest offset (-2, and -4 "earliest local": every segment is local),
//! the latest (-1: the high watermark, what a consumer can read), or the first offset whose
//! record timestamp is at least a given time. Only the partition leader answers, and a new
//! leader only once its high watermark reached the start of its epoch
//! (OFFSET_NOT_AVAILABLE before, as Kafka: the HW clients see never goes back).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;
use sluice_record::TopicPartition;

use super::{decode, respond, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::partition::PartitionError;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: ListOffsetsRequest = decode(request)?;
    broker.sync_partitions_unless_busy();
    let mut response = ListOffsetsResponse::default();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let tp = TopicPartition::new(name.clone(), p.partition_index);
                let mut answer = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1);
                match lookup(broker, &tp, p.timestamp, p.current_leader_epoch) {
                    Ok(Some((timestamp, offset, epoch))) => {
                        answer.timestamp = timestamp;
                        answer.offset = offset;
                        // the field exists from v4 on
                        if request.api_version >= 4 {
                            answer.leader_epoch = epoch;
                        }
                    }
                    Ok(None) => {}
                    Err(code) => answer.error_code = code,
                }
                answer
            })
            .collect();
        response.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    respond(request, &response)
}

/// (timestamp, offset, leader epoch), None when no record qualifies.
fn lookup(
    broker: &Broker,
    tp: &TopicPartition,
    timestamp: i64,
    current_leader_epoch: i32,
) -> Result<Option<(i64, i64, i32)>, i16> {
    let Some(partition) = broker.replicas.partition(tp) else {
        let known = broker.with_image(|image| image.partition(&tp.topic, tp.partition).is_some());
        return Err(if known {
            ec::NOT_LEADER_OR_FOLLOWER
        } else {
            ec::UNKNOWN_TOPIC_OR_PARTITION
        });
    };
    let code = |e: PartitionError| e.error_code();
    let (start, high_watermark, _) = partition
        .offsets_for_client(current_leader_epoch)
        .map_err(code)?;
    let epoch = partition.leader_epoch();
    match timestamp {
        LATEST => Ok(Some((-1, high_watermark.0, epoch))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((-1, start.0, epoch))),
        // no tiered storage: nothing is tiered
        LATEST_TIERED => Ok(None),
        MAX_TIMESTAMP => Err(ec::UNSUPPORTED_VERSION),
        t if t < 0 => Err(ec::INVALID_REQUEST),
        t => Ok(partition
            .offset_for_timestamp(t, current_leader_epoch)
            .map_err(code)?
            .map(|(ts, offset)| (ts, offset.0, epoch))),
    }
}
