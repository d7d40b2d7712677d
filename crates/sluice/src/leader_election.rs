//! `sluice topic elect-leaders`: Kafka's `kafka-leader-election.sh` — a preferred (or
//! unclean) leader election through the ElectLeaders API, for one partition, a topic's
//! partitions, or every partition, printing what Kafka's tool prints. Fails (exit 1) when
//! an election the user asked for could not be made.

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka_client::{self, error_name, Cluster};

const ELECTION_NOT_NEEDED: i16 = 84;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ElectionType {
    Preferred,
    Unclean,
}

impl ElectionType {
    fn code(self) -> i8 {
        match self {
            ElectionType::Preferred => 0,
            ElectionType::Unclean => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ElectionType::Preferred => "PREFERRED",
            ElectionType::Unclean => "UNCLEAN",
        }
    }
}

pub async fn elect(
    bootstrap: &str,
    topic: Option<&str>,
    partition: Option<i32>,
    election_type: ElectionType,
) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let topic_partitions = match topic {
        None => None,
        Some(name) => {
            let partitions = match partition {
                Some(p) => vec![p],
                None => {
                    let metadata = cluster.metadata(Some(&[name.to_string()])).await?;
                    let t = metadata.topics.first().context("empty Metadata response")?;
                    if t.error_code != 0 {
                        bail!("topic {name}: {}", error_name(t.error_code));
                    }
                    let mut ps: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
                    ps.sort_unstable();
                    ps
                }
            };
            Some(vec![TopicPartitions::default()
                .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                .with_partitions(partitions)])
        }
    };
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type.code())
        .with_topic_partitions(topic_partitions)
        .with_timeout_ms(30_000);
    let response: ElectLeadersResponse = cluster
        .bootstrap()
        .send(
            ApiKey::ElectLeaders,
            kafka_client::ELECT_LEADERS_VERSION,
            &request,
            true,
        )
        .await?;
    if response.error_code != 0 {
        bail!("leader election: {}", error_name(response.error_code));
    }
    let mut elected = Vec::new();
    let mut not_needed = Vec::new();
    let mut failed = Vec::new();
    for t in &response.replica_election_results {
        for p in &t.partition_result {
            let name = format!("{}-{}", t.topic.0, p.partition_id);
            match p.error_code {
                0 => elected.push(name),
                ELECTION_NOT_NEEDED => not_needed.push(name),
                code => {
                    let message = p.error_message.as_deref().unwrap_or("");
                    failed.push(format!("{name}: {} {message}", error_name(code)));
                }
            }
        }
    }
    let kind = election_type.name();
    let mut out = Vec::new();
    if !elected.is_empty() {
        out.push(format!(
            "Successfully completed leader election ({kind}) for partitions {}",
            elected.join(", ")
        ));
    }
    // asked for everything: partitions already led as wished are not worth a line each
    if !not_needed.is_empty() && topic.is_some() {
        out.push(format!(
            "Valid replica already elected for partitions {}",
            not_needed.join(", ")
        ));
    }
    if elected.is_empty() && not_needed.is_empty() && failed.is_empty() {
        out.push("No partitions to elect a leader for".to_string());
    } else if elected.is_empty() && failed.is_empty() && topic.is_none() {
        out.push("Valid replica already elected for every partition".to_string());
    }
    if !failed.is_empty() {
        for f in &failed {
            out.push(format!(
                "Error completing leader election ({kind}) for partition: {f}"
            ));
        }
        bail!("{}", out.join("\n"));
    }
    Ok(out.join("\n"))
}
