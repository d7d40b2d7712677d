//! The small Kafka client the CLI (`sluice topic|produce|consume`) uses: one connection per
//! broker, requests at fixed versions every Kafka 3.x broker serves, routed to partition
//! leaders from Metadata. The full client (batching, retries, groups) is a later issue's
//! `crates/client`; this one is enough for a user at a terminal.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ClientConnection;

pub const METADATA_VERSION: i16 = 12;
pub const CREATE_TOPICS_VERSION: i16 = 7;
pub const DELETE_TOPICS_VERSION: i16 = 6;
pub const LIST_OFFSETS_VERSION: i16 = 7;
pub const DESCRIBE_CONFIGS_VERSION: i16 = 4;
pub const DESCRIBE_CLUSTER_VERSION: i16 = 2;
pub const DESCRIBE_LOG_DIRS_VERSION: i16 = 4;
pub const ELECT_LEADERS_VERSION: i16 = 2;
const OFFSET_NOT_AVAILABLE: i16 = sluice_metadata::error_code::OFFSET_NOT_AVAILABLE;

/// Every connect and every answer is bounded by this (`--timeout`, default 30 s).
static REQUEST_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets the bound of every request this process makes (once, at start).
pub fn set_request_timeout(timeout: Duration) {
    let _ = REQUEST_TIMEOUT.set(timeout);
}

pub fn request_timeout() -> Duration {
    *REQUEST_TIMEOUT.get().unwrap_or(&DEFAULT_REQUEST_TIMEOUT)
}

/// One connection to one broker.
pub async fn connect(address: &str) -> Result<ClientConnection> {
    ClientConnection::connect(address, "sluice-cli", request_timeout())
        .await
        .with_context(|| format!("connecting to {address}"))
}

/// Connections to a cluster: a bootstrap broker, then each partition leader.
pub struct Cluster {
    bootstrap: ClientConnection,
    brokers: BTreeMap<i32, String>,
    connections: BTreeMap<i32, ClientConnection>,
}

impl Cluster {
    /// Connects to the first reachable of `bootstrap` (comma-separated host:port).
    pub async fn connect(bootstrap: &str) -> Result<Cluster> {
        let mut last = None;
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match connect(address).await {
                Ok(c) => {
                    return Ok(Cluster {
                        bootstrap: c,
                        brokers: BTreeMap::new(),
                        connections: BTreeMap::new(),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no bootstrap broker given")))
    }

    pub fn bootstrap(&mut self) -> &mut ClientConnection {
        &mut self.bootstrap
    }

    /// Metadata for `topics` (None: every topic), without auto-creating.
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        self.metadata_request(topics, false).await
    }

    /// Metadata for one topic, letting the broker auto-create it (as producers do).
    pub async fn metadata_allowing_creation(&mut self, topic: &str) -> Result<MetadataResponse> {
        self.metadata_request(Some(&[topic.to_string()]), true)
            .await
    }

    async fn metadata_request(
        &mut self,
        topics: Option<&[String]>,
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|t| {
                t.iter()
                    .map(|name| {
                        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(allow_auto_topic_creation);
        let response: MetadataResponse = self
            .bootstrap
            .send(ApiKey::Metadata, METADATA_VERSION, &request, true)
            .await?;
        self.brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        Ok(response)
    }

    /// ListOffsets of one partition at its `leader`: `timestamp` -1 for the end (the high
    /// watermark), -2 for the log start, else the first offset at or after it (-1 if none).
    pub async fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        timestamp: i64,
    ) -> Result<i64> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        // a new leader answers OFFSET_NOT_AVAILABLE until its high watermark reaches the
        // start of its epoch (a moment after a failover): ask again, as Kafka's tools do
        let deadline = std::time::Instant::now() + request_timeout();
        let p = loop {
            let response: ListOffsetsResponse = self
                .broker(leader)
                .await?
                .send(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request, true)
                .await?;
            let p = response
                .topics
                .into_iter()
                .next()
                .and_then(|t| t.partitions.into_iter().next())
                .context("empty ListOffsets response")?;
            if p.error_code != OFFSET_NOT_AVAILABLE || std::time::Instant::now() > deadline {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if p.error_code != 0 {
            anyhow::bail!(
                "offsets of {topic}-{partition}: {}",
                error_name(p.error_code)
            );
        }
        Ok(p.offset)
    }

    /// A connection to broker `id` (as Metadata advertised it).
    pub async fn broker(&mut self, id: i32) -> Result<&mut ClientConnection> {
        if !self.connections.contains_key(&id) {
            let address = self
                .brokers
                .get(&id)
                .with_context(|| format!("broker {id} is not in the cluster's metadata"))?
                .clone();
            let c = connect(&address).await?;
            self.connections.insert(id, c);
        }
        self.connections
            .get_mut(&id)
            .context("connection just made")
    }
}

/// Kafka's name for an error code, for one-line messages.
pub fn error_name(code: i16) -> String {
    sluice_metadata::error_code::name(code)
}
