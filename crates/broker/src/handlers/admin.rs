//! CreateTopics, DeleteTopics, CreatePartitions: checked here (topic configs, what Sluice
//! supports), decided by the controller quorum (placement, conflicts), and answered once
//! the change has reached this broker's image — so a client's next Metadata request, to
//! this broker, sees it. Manual replica assignments are not supported (INVALID_REQUEST
//! with a message); the controller places replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_protocol::RequestFrame;

use super::{decode, respond, str_bytes, uuid_of, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

const TOPIC_DELETION_DISABLED: i16 = 73;

/// The controller's answer for each forwarded topic, paired with its slot in the
/// response (the controller answers in request order); when no controller answered, a
/// REQUEST_TIMED_OUT result for every slot.
fn per_slot(
    slots: &[usize],
    answer: Result<Vec<api::TopicResult>, tonic::Status>,
) -> Vec<(usize, api::TopicResult)> {
    match answer {
        Ok(topics) => slots.iter().copied().zip(topics).collect(),
        Err(e) => slots
            .iter()
            .map(|slot| {
                let timed_out = api::TopicResult {
                    error_code: i32::from(ec::REQUEST_TIMED_OUT),
                    error_message: e.message().to_string(),
                    ..Default::default()
                };
                (*slot, timed_out)
            })
            .collect(),
    }
}

pub(crate) fn timeout_of(timeout_ms: i32) -> Duration {
    Duration::from_millis(timeout_ms.clamp(1000, 120_000) as u64)
}

pub async fn create_topics(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: CreateTopicsRequest = decode(request)?;
    let timeout = timeout_of(body.timeout_ms);
    let mut results: Vec<CreatableTopicResult> = Vec::with_capacity(body.topics.len());
    let mut specs = Vec::new();
    let mut slots = Vec::new();
    for topic in &body.topics {
        let name = topic.name.0.to_string();
        let overrides: BTreeMap<String, String> = topic
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let refused = if !topic.assignments.is_empty() {
            Some((
                ec::INVALID_REQUEST,
                "manual replica assignment is not supported; the controller places replicas"
                    .to_string(),
            ))
        } else {
            crate::topic_config::validate_overrides(&overrides)
                .err()
                .map(|m| (ec::INVALID_CONFIG, m))
        };
        let mut result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        if let Some((code, message)) = refused {
            result.error_code = code;
            result.error_message = Some(str_bytes(message));
        } else {
            specs.push(api::TopicSpec {
                name,
                num_partitions: topic.num_partitions,
                replication_factor: i32::from(topic.replication_factor),
                configs: overrides.into_iter().collect(),
            });
            slots.push(results.len());
        }
        results.push(result);
    }
    if !specs.is_empty() {
        let validate_only = body.validate_only;
        let answer = broker
            .controllers
            .call(timeout, |mut c| {
                let request = api::CreateTopicsRequest {
                    topics: specs.clone(),
                    validate_only,
                };
                async move { c.create_topics(request).await }
            })
            .await;
        for (slot, r) in per_slot(&slots, answer.map(|a| a.topics)) {
            let result = &mut results[slot];
            result.error_code = r.error_code as i16;
            if r.error_code != 0 {
                result.error_message = Some(str_bytes(r.error_message));
                continue;
            }
            result.topic_id = uuid_of(&r.topic_id);
            result.num_partitions = r.num_partitions;
            result.replication_factor = r.replication_factor as i16;
        }
        if !validate_only {
            let created: Vec<String> = results
                .iter()
                .filter(|r| r.error_code == 0)
                .map(|r| r.name.0.to_string())
                .collect();
            broker.wait_for_topics_led(&created, timeout).await;
        }
    }
    if request.api_version >= 5 {
        broker.with_image(|image| {
            for r in results.iter_mut().filter(|r| r.error_code == 0) {
                let overrides = image
                    .topic(&r.name.0)
                    .map(|t| t.configs.clone())
                    .unwrap_or_default();
                let configs = broker
                    .config
                    .topic_defaults
                    .resolve(&overrides)
                    .into_iter()
                    .map(|(d, value, source)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(d.name))
                            .with_value(Some(str_bytes(value)))
                            .with_config_source(source as i8)
                    })
                    .collect();
                r.configs = Some(configs);
            }
        });
    }
    let response = CreateTopicsResponse::default().with_topics(results);
    respond(request, &response)
}

pub async fn delete_topics(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: DeleteTopicsRequest = decode(request)?;
    let timeout = timeout_of(body.timeout_ms);
    // v6 names topics by name or id; earlier versions by name
    let asked: Vec<(Option<String>, uuid::Uuid)> = if request.api_version >= 6 {
        body.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        body.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut results: Vec<DeletableTopicResult> = Vec::with_capacity(asked.len());
    let mut names = Vec::new();
    let mut slots = Vec::new();
    for (name, id) in &asked {
        let resolved = match name {
            Some(n) => Some(n.clone()),
            None => broker.with_image(|image| {
                image
                    .topics()
                    .find(|t| uuid_of(&t.topic_id) == *id)
                    .map(|t| t.name.clone())
            }),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(resolved.clone().map(|n| TopicName(str_bytes(n))))
            .with_topic_id(*id);
        match resolved {
            None => result.error_code = ec::UNKNOWN_TOPIC_ID,
            Some(_) if !broker.config.delete_topic_enable => {
                result.error_code = TOPIC_DELETION_DISABLED;
            }
            Some(n) => {
                names.push(n);
                slots.push(results.len());
            }
        }
        results.push(result);
    }
    if !names.is_empty() {
        let answer = broker
            .controllers
            .call(timeout, |mut c| {
                let request = api::DeleteTopicsRequest {
                    names: names.clone(),
                };
                async move { c.delete_topics(request).await }
            })
            .await;
        for (slot, r) in per_slot(&slots, answer.map(|a| a.topics)) {
            let result = &mut results[slot];
            result.error_code = r.error_code as i16;
            if r.error_code != 0 {
                result.error_message = Some(str_bytes(r.error_message));
            } else {
                result.topic_id = uuid_of(&r.topic_id);
            }
        }
        let deleted: Vec<String> = slots
            .iter()
            .filter(|s| results[**s].error_code == 0)
            .filter_map(|s| results[*s].name.as_ref().map(|n| n.0.to_string()))
            .collect();
        broker
            .wait_for_image(timeout, |image| {
                deleted.iter().all(|n| image.topic(n).is_none())
            })
            .await;
    }
    let response = DeleteTopicsResponse::default().with_responses(results);
    respond(request, &response)
}

pub async fn create_partitions(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: CreatePartitionsRequest = decode(request)?;
    let timeout = timeout_of(body.timeout_ms);
    let mut results = Vec::with_capacity(body.topics.len());
    let mut counts = Vec::new();
    let mut slots = Vec::new();
    for topic in &body.topics {
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if topic.assignments.is_some() {
            result.error_code = ec::INVALID_REQUEST;
            result.error_message = Some(str_bytes(
                "manual replica assignment is not supported; the controller places replicas",
            ));
        } else {
            counts.push(api::PartitionCount {
                name: topic.name.0.to_string(),
                count: topic.count,
            });
            slots.push(results.len());
        }
        results.push(result);
    }
    if !counts.is_empty() {
        let validate_only = body.validate_only;
        let answer = broker
            .controllers
            .call(timeout, |mut c| {
                let request = api::CreatePartitionsRequest {
                    topics: counts.clone(),
                    validate_only,
                };
                async move { c.create_partitions(request).await }
            })
            .await;
        for (slot, r) in per_slot(&slots, answer.map(|a| a.topics)) {
            results[slot].error_code = r.error_code as i16;
            if r.error_code != 0 {
                results[slot].error_message = Some(str_bytes(r.error_message));
            }
        }
        if !validate_only {
            let grown: Vec<(String, usize)> = counts
                .iter()
                .zip(&slots)
                .filter(|(_, s)| results[**s].error_code == 0)
                .map(|(c, _)| (c.name.clone(), c.count.max(0) as usize))
                .collect();
            broker
                .wait_for_image(timeout, |image| {
                    grown.iter().all(|(n, count)| {
                        image.topic(n).is_some_and(|t| t.partitions.len() >= *count)
                    })
                })
                .await;
        }
    }
    let response = CreatePartitionsResponse::default().with_results(results);
    respond(request, &response)
}
