//! OffsetCommit (v2–v9) and OffsetFetch (v1–v9, several groups at once from v8). Committed
//! offsets live in the metadata image: a commit is answered once the controller quorum
//! has committed it in Raft, and a fetch reads the quorum leader's image (read-your-
//! writes), so a commit acknowledged by one coordinator is what the next one reads.
//!
//! Commits go through the broker's [`crate::offset_commit_batcher`], so many groups'
//! commits share one controller call and one Raft entry.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::Decodable;
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::CommittedOffset;
use sluice_protocol::RequestFrame;

use super::find_coordinator::coordinates;
use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::offset_commit_batcher::{CommitError, Fence};

/// `offset.metadata.max.bytes`.
const OFFSET_METADATA_MAX_BYTES: usize = 4096;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
/// How long a commit or fetch may wait for the controller quorum.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn offset_commit(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: OffsetCommitRequest = decode(request)?;
    let group = body.group_id.0.to_string();
    let mut group_error = coordinates(broker, &group);
    if group_error == ec::NONE {
        group_error = broker.groups.check_commit(
            &group,
            body.generation_id_or_member_epoch,
            &body.member_id,
            body.group_instance_id.as_deref(),
        );
    }
    let now_ms = sluice_record::now_ms();
    // (topic index, partition index) → error, for the answer in request order
    let mut errors: Vec<Vec<i16>> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let partitions = broker.with_image(|i| i.topic(&name).map(|t| t.partitions.len()));
        let mut codes = Vec::new();
        for p in &topic.partitions {
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            let code = if group_error != ec::NONE {
                group_error
            } else if partitions
                .is_none_or(|n| p.partition_index < 0 || p.partition_index as usize >= n)
            {
                ec::UNKNOWN_TOPIC_OR_PARTITION
            } else if metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_MAX_BYTES)
            {
                OFFSET_METADATA_TOO_LARGE
            } else {
                offsets.push(CommittedOffset {
                    group: group.clone(),
                    topic: name.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if request.api_version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: metadata.unwrap_or_default(),
                    commit_timestamp_ms: now_ms,
                });
                ec::NONE
            };
            codes.push(code);
        }
        errors.push(codes);
    }
    if !offsets.is_empty() {
        let fence = broker.with_image(|image| {
            image.coordinator_of_group(&group).map(|c| Fence {
                broker_id: c.broker_id,
                epoch: c.epoch,
            })
        });
        // (topic, partition, offset) of each commit, for the debug line below
        let committing: Vec<(String, i32, i64)> = if tracing::enabled!(tracing::Level::DEBUG) {
            offsets
                .iter()
                .map(|o| (o.topic.clone(), o.partition, o.offset))
                .collect()
        } else {
            Vec::new()
        };
        let committed = match fence {
            Some(fence) => broker.commits.commit(offsets, fence).await,
            None => Err(CommitError::NotCoordinator),
        };
        tracing::debug!(
            group = %group,
            member = %body.member_id,
            generation = body.generation_id_or_member_epoch,
            coordinator_epoch = fence.map_or(-1, |f| f.epoch),
            offsets = ?committing,
            outcome = ?committed,
            "offset commit"
        );
        let failure = match committed {
            Ok(()) => None,
            Err(CommitError::NotCoordinator) => Some(ec::NOT_COORDINATOR),
            Err(e @ CommitError::Refused(_)) => {
                tracing::warn!(group = %group, error = %e, "offset commit refused");
                Some(ec::COORDINATOR_NOT_AVAILABLE)
            }
            Err(e @ CommitError::NotAcknowledged(_)) => {
                tracing::warn!(group = %group, error = %e, "offset commit not committed");
                Some(ec::REQUEST_TIMED_OUT)
            }
        };
        if let Some(code) = failure {
            fail_accepted(&mut errors, code);
        }
    }
    let response = OffsetCommitResponse::default().with_topics(
        body.topics
            .iter()
            .zip(errors)
            .map(|(t, codes)| {
                OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(codes)
                            .map(|(p, code)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    respond(request, &response)
}

/// Gives every partition still marked NONE (accepted, not yet done) `code`.
fn fail_accepted(errors: &mut [Vec<i16>], code: i16) {
    for codes in errors {
        for c in codes.iter_mut().filter(|c| **c == ec::NONE) {
            *c = code;
        }
    }
}

/// One group's committed offsets for `topics` (None: every topic it committed), or the
/// group's error.
async fn fetch_group(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>, i16> {
    let coordinator = coordinates(broker, group);
    if coordinator != ec::NONE {
        return Err(coordinator);
    }
    let names: Vec<String> = topics
        .as_ref()
        .map(|t| t.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let fetched = broker
        .controllers
        .call(CONTROLLER_TIMEOUT, |mut c| {
            let request = api::FetchOffsetsRequest {
                group: group.to_string(),
                topics: names.clone(),
            };
            async move { c.fetch_offsets(request).await }
        })
        .await
        .map_err(|e| {
            tracing::warn!(group, error = %e, "offset fetch failed");
            ec::COORDINATOR_NOT_AVAILABLE
        })?;
    tracing::debug!(
        group,
        offsets = ?fetched
            .offsets
            .iter()
            .map(|o| (&o.topic, o.partition, o.offset))
            .collect::<Vec<_>>(),
        "offset fetch"
    );
    let mut by_topic: BTreeMap<String, BTreeMap<i32, CommittedOffset>> = BTreeMap::new();
    for o in fetched.offsets {
        by_topic
            .entry(o.topic.clone())
            .or_default()
            .insert(o.partition, o);
    }
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(name, partitions)| {
                let committed = by_topic.get(&name);
                let rows = partitions
                    .into_iter()
                    .map(|p| (p, committed.and_then(|c| c.get(&p)).cloned()))
                    .collect();
                (name, rows)
            })
            .collect(),
        None => by_topic
            .into_iter()
            .map(|(name, offsets)| {
                let rows = offsets.into_iter().map(|(p, o)| (p, Some(o))).collect();
                (name, rows)
            })
            .collect(),
    })
}

/// (offset, leader epoch, metadata) as OffsetFetch shows a partition: -1 when nothing was
/// committed.
fn shown(o: &Option<CommittedOffset>) -> (i64, i32, String) {
    match o {
        Some(o) => (o.offset, o.leader_epoch, o.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

pub async fn offset_fetch(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: OffsetFetchRequest = decode(request)?;
    let mut response = OffsetFetchResponse::default();
    if request.api_version >= 8 {
        for g in &body.groups {
            let group = g.group_id.0.to_string();
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let mut entry = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match fetch_group(broker, &group, topics).await {
                Ok(rows) => {
                    entry.topics = rows
                        .into_iter()
                        .map(|(name, partitions)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(str_bytes(name).into())
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(p, o)| {
                                            let (offset, epoch, metadata) = shown(&o);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(str_bytes(metadata)))
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
                Err(code) => entry.error_code = code,
            }
            response.groups.push(entry);
        }
        return respond(request, &response);
    }
    let group = body.group_id.0.to_string();
    let topics = body.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect::<Vec<_>>()
    });
    match fetch_group(broker, &group, topics.clone()).await {
        Ok(rows) => {
            response.topics = rows
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(str_bytes(name).into())
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, o)| {
                                    let (offset, epoch, metadata) = shown(&o);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(Some(str_bytes(metadata)))
                                })
                                .collect(),
                        )
                })
                .collect();
        }
        Err(code) if request.api_version >= 2 => response.error_code = code,
        Err(code) => {
            // v1 has no top-level error: each partition asked for carries it
            response.topics = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(str_bytes(name).into())
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
        }
    }
    respond(request, &response)
}

/// The topics a consumer's subscription metadata names (ConsumerProtocolSubscription, its
/// version first); none for bytes that are not one.
fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    if metadata.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]).clamp(0, 3);
    let mut buf = bytes::Bytes::copy_from_slice(&metadata[2..]);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// OffsetDelete (v0): deletes a group's committed offsets of some partitions. A group
/// with members keeps the offsets of the topics its consumers subscribe to
/// (GROUP_SUBSCRIBED_TO_TOPIC); a group of another protocol type with members is
/// NON_EMPTY_GROUP; a group with no trace GROUP_ID_NOT_FOUND.
pub async fn offset_delete(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: OffsetDeleteRequest = decode(request)?;
    let group = body.group_id.0.to_string();
    let mut group_error = coordinates(broker, &group);
    let mut subscribed: Vec<String> = Vec::new();
    if group_error == ec::NONE {
        match broker.groups.member_subscriptions(&group) {
            Some((kind, _)) if kind != "consumer" => group_error = ec::NON_EMPTY_GROUP,
            Some((_, metadata)) => {
                subscribed = metadata.iter().flat_map(|m| subscribed_topics(m)).collect();
            }
            None => {
                if !super::groups::known_in_metadata(broker, &group) {
                    group_error = ec::GROUP_ID_NOT_FOUND;
                }
            }
        }
    }
    if group_error != ec::NONE {
        return respond(
            request,
            &OffsetDeleteResponse::default().with_error_code(group_error),
        );
    }
    let mut deleted = Vec::new();
    let mut errors: Vec<Vec<i16>> = Vec::new();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let partitions = broker.with_image(|i| i.topic(&name).map(|t| t.partitions.len()));
        let codes = topic
            .partitions
            .iter()
            .map(|p| {
                if partitions
                    .is_none_or(|n| p.partition_index < 0 || p.partition_index as usize >= n)
                {
                    ec::UNKNOWN_TOPIC_OR_PARTITION
                } else if subscribed.contains(&name) {
                    ec::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    deleted.push(sluice_metadata::proto::metadata::OffsetPartition {
                        topic: name.clone(),
                        partition: p.partition_index,
                    });
                    ec::NONE
                }
            })
            .collect();
        errors.push(codes);
    }
    if !deleted.is_empty() {
        let answer = broker
            .controllers
            .call(CONTROLLER_TIMEOUT, |mut c| {
                let request = api::DeleteOffsetsRequest {
                    group: group.clone(),
                    partitions: deleted.clone(),
                };
                async move { c.delete_offsets(request).await }
            })
            .await;
        let failure = match answer {
            Ok(r) if r.error_code == 0 => None,
            Ok(r) => {
                tracing::warn!(group = %group, error = %r.error_message, "offset delete refused");
                Some(ec::COORDINATOR_NOT_AVAILABLE)
            }
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "offset delete not committed");
                Some(ec::REQUEST_TIMED_OUT)
            }
        };
        if let Some(code) = failure {
            fail_accepted(&mut errors, code);
        }
    }
    let response = OffsetDeleteResponse::default().with_topics(
        body.topics
            .iter()
            .zip(errors)
            .map(|(t, codes)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(codes)
                            .map(|(p, code)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    respond(request, &response)
}
