//! `sluice group list|describe|delete|reset-offsets`, in the shape of Kafka's
//! kafka-consumer-groups.sh: what a group has committed and how far behind it is, and the
//! operator's tools to drop it or move its offsets (only while it has no members, as Kafka
//! refuses too).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use sluice_protocol::ClientConnection;

use crate::group_client::{coordinator, OFFSET_COMMIT_VERSION};
use crate::kafka_client::{error_name, Cluster};

const LIST_GROUPS_VERSION: i16 = 4;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const OFFSET_FETCH_VERSION: i16 = 7;
const DELETE_GROUPS_VERSION: i16 = 2;

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// Lays out rows under a header in columns (two spaces apart).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `sluice group list`: every group any broker coordinates, with its state.
pub async fn list(bootstrap: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(Some(&[])).await?;
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    for broker in &metadata.brokers {
        let response: ListGroupsResponse = cluster
            .broker(broker.node_id.0)
            .await?
            .send(
                ApiKey::ListGroups,
                LIST_GROUPS_VERSION,
                &ListGroupsRequest::default(),
                true,
            )
            .await?;
        if response.error_code != 0 {
            bail!(
                "listing groups on broker {}: {}",
                broker.node_id.0,
                error_name(response.error_code)
            );
        }
        for g in response.groups {
            groups.insert(
                g.group_id.0.to_string(),
                (g.group_state.to_string(), g.protocol_type.to_string()),
            );
        }
    }
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|(id, (state, kind))| vec![id, state, kind])
        .collect();
    Ok(table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows))
}

/// A group as DescribeGroups shows it, with each member's assigned partitions.
struct Described {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<DescribedMember>,
}

struct DescribedMember {
    member_id: String,
    host: String,
    client_id: String,
    assigned: Vec<(String, i32)>,
}

async fn describe_group(coordinator: &mut ClientConnection, group: &str) -> Result<Described> {
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let response: DescribeGroupsResponse = coordinator
        .send(
            ApiKey::DescribeGroups,
            DESCRIBE_GROUPS_VERSION,
            &request,
            true,
        )
        .await?;
    let g = response
        .groups
        .into_iter()
        .next()
        .context("empty DescribeGroups response")?;
    if g.error_code != 0 {
        bail!("describing group {group}: {}", error_name(g.error_code));
    }
    let members = g
        .members
        .iter()
        .map(|m| {
            let assigned = if g.protocol_type.as_str() == "consumer" {
                consumer_assignment(&m.member_assignment)
            } else {
                Vec::new()
            };
            DescribedMember {
                member_id: m.member_id.to_string(),
                host: m.client_host.to_string(),
                client_id: m.client_id.to_string(),
                assigned,
            }
        })
        .collect();
    Ok(Described {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// The partitions in a consumer's assignment (ConsumerProtocolAssignment, its version
/// first); nothing for bytes that are not one.
fn consumer_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]).clamp(0, 3);
    let mut buf = bytes::Bytes::copy_from_slice(&bytes[2..]);
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut buf, version) else {
        return Vec::new();
    };
    assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.to_string(), *p))
        })
        .collect()
}

/// Every offset `group` committed: (topic, partition) → offset.
async fn committed(
    coordinator: &mut ClientConnection,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(None);
    let response: OffsetFetchResponse = coordinator
        .send(ApiKey::OffsetFetch, OFFSET_FETCH_VERSION, &request, true)
        .await?;
    if response.error_code != 0 {
        bail!(
            "fetching the offsets of group {group}: {}",
            error_name(response.error_code)
        );
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert(
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// Partition → leader id of `topic` (an error for a topic that does not exist).
async fn leaders(cluster: &mut Cluster, topic: &str) -> Result<BTreeMap<i32, i32>> {
    let metadata = cluster.metadata(Some(&[topic.to_string()])).await?;
    let t = metadata.topics.first().context("empty Metadata response")?;
    if t.error_code != 0 {
        bail!("topic {topic}: {}", error_name(t.error_code));
    }
    Ok(t.partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect())
}

/// `sluice group describe G`.
pub async fn describe(bootstrap: &str, group: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let mut coordinator = coordinator(&mut cluster, group).await?;
    let described = describe_group(&mut coordinator, group).await?;
    let offsets = committed(&mut coordinator, group).await?;
    let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &described.members {
        for tp in &m.assigned {
            owner.insert(
                tp.clone(),
                (m.member_id.clone(), m.host.clone(), m.client_id.clone()),
            );
        }
    }
    let partitions: BTreeSet<(String, i32)> = offsets.keys().chain(owner.keys()).cloned().collect();
    let mut topic_leaders: BTreeMap<String, BTreeMap<i32, i32>> = BTreeMap::new();
    let mut rows = Vec::new();
    for (topic, partition) in partitions {
        if !topic_leaders.contains_key(&topic) {
            let l = leaders(&mut cluster, &topic).await.unwrap_or_default();
            topic_leaders.insert(topic.clone(), l);
        }
        let leader = topic_leaders
            .get(&topic)
            .and_then(|l| l.get(&partition))
            .copied();
        let end = match leader {
            Some(l) if l >= 0 => cluster.list_offset(&topic, partition, l, -1).await.ok(),
            _ => None,
        };
        let current = offsets.get(&(topic.clone(), partition)).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => "-".to_string(),
        };
        let (member, host, client) = owner
            .get(&(topic.clone(), partition))
            .cloned()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let shown = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        rows.push(vec![
            group.to_string(),
            topic,
            partition.to_string(),
            shown(current),
            shown(end),
            lag,
            member,
            if host.is_empty() { "-".into() } else { host },
            client,
        ]);
    }
    let mut out = format!(
        "Group {group}: state {}, protocol {}, {} member(s)\n",
        described.state,
        if described.protocol.is_empty() {
            "-".to_string()
        } else {
            format!("{} ({})", described.protocol, described.protocol_type)
        },
        described.members.len()
    );
    if described.members.is_empty() {
        out.push_str(&format!(
            "Consumer group '{group}' has no active members.\n"
        ));
    }
    out.push('\n');
    out.push_str(&table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &rows,
    ));
    Ok(out)
}

/// `sluice group delete G`.
pub async fn delete(bootstrap: &str, group: &str) -> Result<String> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let mut coordinator = coordinator(&mut cluster, group).await?;
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
    let response: DeleteGroupsResponse = coordinator
        .send(ApiKey::DeleteGroups, DELETE_GROUPS_VERSION, &request, true)
        .await?;
    let code = response.results.first().map_or(-1, |r| r.error_code);
    if code != 0 {
        bail!("deleting group {group}: {}", error_name(code));
    }
    Ok(format!(
        "Deletion of requested consumer groups ('{group}') was successful.\n"
    ))
}

/// Where `reset-offsets` moves each partition's committed offset.
#[derive(Debug, Clone, Copy)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    /// Milliseconds since the epoch: the first offset at or after it.
    Timestamp(i64),
    ShiftBy(i64),
}

/// Parses `--to-datetime`: `YYYY-MM-DDTHH:mm:SS[.sss]`, UTC unless it ends in an offset
/// (`Z`, `+02:00`), as kafka-consumer-groups.sh takes it.
pub fn parse_datetime(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .with_context(|| format!("--to-datetime takes YYYY-MM-DDTHH:mm:SS.sss, got {s:?}"))?;
    Ok(naive.and_utc().timestamp_millis())
}

/// `sluice group reset-offsets G --topic T[:P,P...] --to-...`: the new offsets, committed
/// only with `execute`. Refused while the group has members.
pub async fn reset_offsets(
    bootstrap: &str,
    group: &str,
    topic_spec: &str,
    to: ResetTo,
    execute: bool,
) -> Result<String> {
    let (topic, only) = match topic_spec.split_once(':') {
        Some((t, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .with_context(|| format!("bad partition {p:?} in --topic {topic_spec}"))
                })
                .collect::<Result<BTreeSet<i32>>>()?;
            (t.to_string(), Some(partitions))
        }
        None => (topic_spec.to_string(), None),
    };
    let mut cluster = Cluster::connect(bootstrap).await?;
    let mut coordinator = coordinator(&mut cluster, group).await?;
    let described = describe_group(&mut coordinator, group).await?;
    if !matches!(described.state.as_str(), "Empty" | "Dead") {
        bail!(
            "Assignments can only be reset if the group '{group}' is inactive, but the current state is {}.",
            described.state
        );
    }
    let current = committed(&mut coordinator, group).await?;
    let leaders = leaders(&mut cluster, &topic).await?;
    if let Some(only) = &only {
        if let Some(p) = only.iter().find(|p| !leaders.contains_key(p)) {
            bail!("topic {topic} has no partition {p}");
        }
    }
    let mut new_offsets = Vec::new();
    for (&partition, &leader) in &leaders {
        if only.as_ref().is_some_and(|o| !o.contains(&partition)) {
            continue;
        }
        if leader < 0 {
            bail!("{topic}-{partition} has no leader");
        }
        let earliest = cluster.list_offset(&topic, partition, leader, -2).await?;
        let latest = cluster.list_offset(&topic, partition, leader, -1).await?;
        let clamp = |o: i64| o.clamp(earliest, latest);
        let offset = match to {
            ResetTo::Earliest => earliest,
            ResetTo::Latest => latest,
            ResetTo::Offset(n) => clamp(n),
            ResetTo::Timestamp(ms) => {
                match cluster.list_offset(&topic, partition, leader, ms).await? {
                    -1 => latest,
                    o => o,
                }
            }
            // a partition with nothing committed shifts from the log start
            ResetTo::ShiftBy(n) => clamp(
                current
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(earliest)
                    .saturating_add(n),
            ),
        };
        new_offsets.push((partition, offset));
    }
    if execute {
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(
                    new_offsets
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                                .with_committed_leader_epoch(-1)
                        })
                        .collect(),
                )]);
        let response: OffsetCommitResponse = coordinator
            .send(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, &request, true)
            .await?;
        for t in &response.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "committing the new offset of {topic}-{}: {}",
                        p.partition_index,
                        error_name(p.error_code)
                    );
                }
            }
        }
    } else {
        eprintln!(
            "WARN: No action will be performed as the --execute option is missing. \
             Add --execute to reset the offsets."
        );
    }
    let rows: Vec<Vec<String>> = new_offsets
        .iter()
        .map(|(p, o)| {
            vec![
                group.to_string(),
                topic.clone(),
                p.to_string(),
                o.to_string(),
            ]
        })
        .collect();
    Ok(table(&["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"], &rows))
}
