//! `sluice topic create|list|describe|delete`, printing what Kafka's `kafka-topics.sh`
//! prints (describe: a topic line, then one line per partition).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka_client::{self, error_name, Cluster};

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub async fn create(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
) -> Result<String> {
    let mut configs_parsed = Vec::new();
    for c in configs {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("--config takes key=value, got {c:?}"))?;
        configs_parsed.push(
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string()))),
        );
    }
    let mut cluster = Cluster::connect(bootstrap).await?;
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(configs_parsed)])
        .with_timeout_ms(30_000);
    let response: CreateTopicsResponse = cluster
        .bootstrap()
        .send(
            ApiKey::CreateTopics,
            kafka_client::CREATE_TOPICS_VERSION,
            &request,
            true,
        )
        .await?;
    let result = response
        .topics
        .first()
        .context("empty CreateTopics response")?;
    if result.error_code != 0 {
        return Err(CreateTopicError {
            topic: name.to_string(),
            code: result.error_code,
            message: result.error_message.as_deref().unwrap_or("").to_string(),
        }
        .into());
    }
    Ok(format!("Created topic {name}."))
}

/// The error a CreateTopics answer named for the topic, kept typed so that a caller can
/// tell "already exists" or a retriable error from the rest.
#[derive(Debug)]
pub struct CreateTopicError {
    pub topic: String,
    pub code: i16,
    pub message: String,
}

impl std::fmt::Display for CreateTopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "creating topic {}: {} {}",
            self.topic,
            error_name(self.code),
            self.message
        )
    }
}

impl std::error::Error for CreateTopicError {}

pub async fn delete(bootstrap: &str, name: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let request = DeleteTopicsRequest::default()
        .with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(name)))
        ])
        .with_timeout_ms(30_000);
    let response: DeleteTopicsResponse = cluster
        .bootstrap()
        .send(
            ApiKey::DeleteTopics,
            kafka_client::DELETE_TOPICS_VERSION,
            &request,
            true,
        )
        .await?;
    let result = response
        .responses
        .first()
        .context("empty DeleteTopics response")?;
    if result.error_code != 0 {
        let message = result.error_message.as_deref().unwrap_or("");
        bail!(
            "deleting topic {name}: {} {message}",
            error_name(result.error_code)
        );
    }
    Ok(format!("Deleted topic {name}."))
}

pub async fn list(bootstrap: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(None).await?;
    let mut names: Vec<String> = metadata
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    names.sort();
    Ok(names.iter().map(|n| format!("{n}\n")).collect())
}

pub async fn describe(bootstrap: &str, name: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(Some(&[name.to_string()])).await?;
    let topic = metadata.topics.first().context("empty Metadata response")?;
    if topic.error_code != 0 {
        bail!("describing topic {name}: {}", error_name(topic.error_code));
    }
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configuration_keys(None)]);
    let configs: DescribeConfigsResponse = cluster
        .bootstrap()
        .send(
            ApiKey::DescribeConfigs,
            kafka_client::DESCRIBE_CONFIGS_VERSION,
            &request,
            true,
        )
        .await?;
    // like kafka-topics.sh: only the configs set on the topic
    let overrides: BTreeMap<String, String> = configs
        .results
        .first()
        .map(|r| {
            r.configs
                .iter()
                .filter(|c| c.config_source == 1)
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.value.as_deref().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition_index);
    let replication_factor = partitions.first().map_or(0, |p| p.replica_nodes.len());
    let ids = |v: &[kafka_protocol::messages::BrokerId]| {
        v.iter()
            .map(|b| b.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = format!(
        "Topic: {name}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {replication_factor}\tConfigs: {}\n",
        sluice_metadata::format_topic_id(topic.topic_id.as_bytes()),
        partitions.len(),
        overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    for p in &partitions {
        let leader = if p.leader_id.0 < 0 {
            "none".to_string()
        } else {
            p.leader_id.0.to_string()
        };
        out.push_str(&format!(
            "\tTopic: {name}\tPartition: {}\tLeader: {leader}\tReplicas: {}\tIsr: {}\n",
            p.partition_index,
            ids(&p.replica_nodes),
            ids(&p.isr_nodes)
        ));
    }
    Ok(out)
}
