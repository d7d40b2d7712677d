//! ElectLeaders (v0–v2): preferred-replica elections (type 0; v0 has no type) and unclean
//! elections of leaderless partitions (type 1), for the partitions named or for all
//! (`topic_partitions` null). The controller decides and commits; the answer waits (up to
//! the request's timeout) until this broker's image shows each new leader, so a client that
//! asks Metadata next sees it.

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::metadata as pb;
use sluice_protocol::RequestFrame;

use super::admin::timeout_of;
use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: ElectLeadersRequest = decode(request)?;
    let timeout = timeout_of(body.timeout_ms);
    let election_type = if request.api_version == 0 {
        0
    } else {
        i32::from(body.election_type)
    };
    let partitions: Vec<pb::OffsetPartition> = body
        .topic_partitions
        .iter()
        .flatten()
        .flat_map(|t| {
            t.partitions.iter().map(|p| pb::OffsetPartition {
                topic: t.topic.0.to_string(),
                partition: *p,
            })
        })
        .collect();
    let all_partitions = body.topic_partitions.is_none();
    let answer = broker
        .controllers
        .call(timeout, |mut c| {
            let request = api::ElectLeadersRequest {
                election_type,
                all_partitions,
                partitions: partitions.clone(),
            };
            async move { c.elect_leaders(request).await }
        })
        .await;
    let mut response = ElectLeadersResponse::default();
    let results = match answer {
        Ok(r) if r.error_code == 0 => r.results,
        Ok(r) => {
            response.error_code = r.error_code as i16;
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "leader election: controllers unreachable");
            response.error_code = ec::REQUEST_TIMED_OUT;
            Vec::new()
        }
    };
    let elected: Vec<(String, i32, i32)> = results
        .iter()
        .filter(|r| r.error_code == 0)
        .map(|r| (r.topic.clone(), r.partition, r.leader))
        .collect();
    if !elected.is_empty() {
        broker
            .wait_for_image(timeout, |image| {
                elected.iter().all(|(t, p, leader)| {
                    image.partition(t, *p).is_some_and(|p| p.leader == *leader)
                })
            })
            .await;
    }
    // one entry per topic, in the order the results came
    let mut by_topic: Vec<ReplicaElectionResult> = Vec::new();
    for r in results {
        let partition = PartitionResult::default()
            .with_partition_id(r.partition)
            .with_error_code(r.error_code as i16)
            .with_error_message((r.error_code != 0).then(|| str_bytes(r.error_message)));
        match by_topic.iter_mut().find(|t| t.topic.0.as_str() == r.topic) {
            Some(t) => t.partition_result.push(partition),
            None => by_topic.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(r.topic)))
                    .with_partition_result(vec![partition]),
            ),
        }
    }
    response.replica_election_results = by_topic;
    respond(request, &response)
}
