//! `sluice bench commits` and `sluice bench rebalance`: the consumer-group figures of
//! docs/benchmarks.md, measured through the Kafka protocol as clients see them.
//!
//! - commits: first one member committing alone, one commit after another (the rate one
//!   Raft round trip per commit allows: the baseline), then `members` members committing
//!   at once, each in a group of its own (simple consumers: generation -1), each commit
//!   carrying an offset for every partition of the topic. Reports partition-offsets per
//!   second and commit latency percentiles for both phases, and their ratio. Each member
//!   has one commit in flight at a time, as a consumer does; with `rate` the members
//!   together offer that many commits per second (each on its own schedule, a late one
//!   sent at once), without it each commits again as soon as answered (the most the
//!   cluster takes: latency then grows with the queue, by Little's law).
//! - rebalance: `members` members join one group (a minimal member: empty subscription
//!   metadata, the leader hands out empty assignments) and heartbeat every
//!   `heartbeat_interval_ms`; then one more member joins, and the time until every member
//!   has synced the new generation is measured; the newcomer leaves again and the group
//!   settles before the next round.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest, OffsetCommitResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ClientConnection;
use tokio::sync::{mpsc, watch};

use crate::group_client::{
    coordinator, HEARTBEAT_VERSION, JOIN_GROUP_VERSION, LEAVE_GROUP_VERSION, OFFSET_COMMIT_VERSION,
    SYNC_GROUP_VERSION,
};
use crate::kafka_client::{error_name, Cluster};

const MEMBER_ID_REQUIRED: i16 = 79;
const REBALANCE_IN_PROGRESS: i16 = 27;

/// Latency percentiles of one phase, in milliseconds.
struct Latencies {
    sorted_us: Vec<u64>,
}

impl Latencies {
    fn new(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        Latencies { sorted_us: us }
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.sorted_us.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.sorted_us.len()) - 1;
        self.sorted_us[i] as f64 / 1000.0
    }
}

struct PhaseResult {
    offered: Option<f64>,
    members: usize,
    commits: usize,
    offsets_per_s: f64,
    latencies: Latencies,
}

impl PhaseResult {
    fn line(&self) -> String {
        let offered = match self.offered {
            Some(r) => format!(" (offered {r:.0} commits/s)"),
            None => String::new(),
        };
        format!(
            "{} member(s){offered}: {} commits, {:.0} partition-offsets/s, p50 {:.2} ms, \
             p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.members,
            self.commits,
            self.offsets_per_s,
            self.latencies.percentile_ms(50.0),
            self.latencies.percentile_ms(99.0),
            self.latencies.percentile_ms(99.9),
            self.latencies.percentile_ms(100.0),
        )
    }
}

/// `sluice bench commits`.
pub async fn commits(
    brokers: &str,
    topic: &str,
    members: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<String> {
    let mut cluster = Cluster::connect(brokers).await?;
    let metadata = cluster.metadata(Some(&[topic.to_string()])).await?;
    let partitions = metadata
        .topics
        .first()
        .filter(|t| t.error_code == 0)
        .map(|t| t.partitions.len() as i32)
        .with_context(|| format!("topic {topic} does not exist"))?;
    let run = std::process::id();
    let alone = commit_phase(&mut cluster, topic, partitions, 1, duration, run, None).await?;
    let together = commit_phase(
        &mut cluster,
        topic,
        partitions,
        members,
        duration,
        run,
        rate,
    )
    .await?;
    Ok(format!(
        "{}\n{}\nratio: {:.1}x the partition-offsets/s of one member committing alone",
        alone.line(),
        together.line(),
        together.offsets_per_s / alone.offsets_per_s.max(1.0)
    ))
}

async fn commit_phase(
    cluster: &mut Cluster,
    topic: &str,
    partitions: i32,
    members: usize,
    duration: Duration,
    run: u32,
    rate: Option<f64>,
) -> Result<PhaseResult> {
    // each member's interval between commits, for the offered rate
    let interval = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(members as f64 / r));
    let mut connections = Vec::with_capacity(members);
    for i in 0..members {
        let group = format!("sluice-bench-commits-{run}-{members}-{i}");
        let c = coordinator(cluster, &group).await?;
        connections.push((group, c));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(members);
    for (i, (group, mut connection)) in connections.into_iter().enumerate() {
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut offset = 0i64;
            // members start spread over one interval
            let mut next_at =
                interval.map(|every| start + every.mul_f64(i as f64 / members as f64));
            while Instant::now() < deadline {
                if let (Some(at), Some(every)) = (next_at, interval) {
                    tokio::time::sleep_until(at.into()).await;
                    next_at = Some(at + every);
                }
                offset += 1;
                let request = OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partitions(
                            (0..partitions)
                                .map(|p| {
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(-1)
                                })
                                .collect(),
                        )]);
                let sent = Instant::now();
                let response: OffsetCommitResponse = connection
                    .send(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, &request, true)
                    .await?;
                latencies_us.push(sent.elapsed().as_micros() as u64);
                let failed = response
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .find(|p| p.error_code != 0);
                if let Some(p) = failed {
                    bail!("commit for {group} failed: {}", error_name(p.error_code));
                }
            }
            Ok(latencies_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("commit task")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let commits = all.len();
    Ok(PhaseResult {
        offered: rate,
        members,
        commits,
        offsets_per_s: (commits as f64 * partitions as f64) / elapsed,
        latencies: Latencies::new(all),
    })
}

/// What a bench member reports: it synced `generation` at `at`.
struct Synced {
    member: usize,
    generation: i32,
    at: Instant,
}

/// One minimal group member: joins, syncs (handing out empty assignments if it leads),
/// heartbeats, rejoins on REBALANCE_IN_PROGRESS; leaves when `stop` turns true.
async fn member(
    mut connection: ClientConnection,
    group: String,
    index: usize,
    heartbeat_interval: Duration,
    synced: mpsc::UnboundedSender<Synced>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let group_id = GroupId(StrBytes::from_string(group.clone()));
    let mut member_id = StrBytes::default();
    loop {
        // join (twice on a first join: KIP-394 hands out the member id first)
        let join = loop {
            let request = JoinGroupRequest::default()
                .with_group_id(group_id.clone())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(30_000)
                .with_member_id(member_id.clone())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::new())]);
            let r: JoinGroupResponse = connection
                .send(ApiKey::JoinGroup, JOIN_GROUP_VERSION, &request, true)
                .await?;
            member_id = r.member_id.clone();
            match r.error_code {
                0 => break r,
                MEMBER_ID_REQUIRED | REBALANCE_IN_PROGRESS => continue,
                code => bail!("member {index} join failed: {}", error_name(code)),
            }
        };
        let assignments = if join.leader == join.member_id {
            join.members
                .iter()
                .map(|m| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(m.member_id.clone())
                        .with_assignment(Bytes::new())
                })
                .collect()
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(group_id.clone())
            .with_generation_id(join.generation_id)
            .with_member_id(member_id.clone())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(join.protocol_name.clone())
            .with_assignments(assignments);
        let sync: SyncGroupResponse = connection
            .send(ApiKey::SyncGroup, SYNC_GROUP_VERSION, &request, true)
            .await?;
        match sync.error_code {
            0 => {
                let _ = synced.send(Synced {
                    member: index,
                    generation: join.generation_id,
                    at: Instant::now(),
                });
            }
            REBALANCE_IN_PROGRESS => continue,
            code => bail!("member {index} sync failed: {}", error_name(code)),
        }
        // heartbeat until a rebalance starts or we are told to leave
        loop {
            tokio::select! {
                _ = tokio::time::sleep(heartbeat_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                let request = LeaveGroupRequest::default()
                    .with_group_id(group_id.clone())
                    .with_members(vec![
                        MemberIdentity::default().with_member_id(member_id.clone())
                    ]);
                let _: LeaveGroupResponse = connection
                    .send(ApiKey::LeaveGroup, LEAVE_GROUP_VERSION, &request, true)
                    .await?;
                return Ok(());
            }
            let request = HeartbeatRequest::default()
                .with_group_id(group_id.clone())
                .with_generation_id(join.generation_id)
                .with_member_id(member_id.clone());
            let r: HeartbeatResponse = connection
                .send(ApiKey::Heartbeat, HEARTBEAT_VERSION, &request, true)
                .await?;
            match r.error_code {
                0 => {}
                REBALANCE_IN_PROGRESS => break,
                code => bail!("member {index} heartbeat failed: {}", error_name(code)),
            }
        }
    }
}

/// Waits until each of `members` (indexes) has synced a generation above `after`;
/// returns that generation and the time the last one synced.
async fn settled(
    reports: &mut mpsc::UnboundedReceiver<Synced>,
    members: &[usize],
    after: i32,
    timeout: Duration,
) -> Result<(i32, Instant)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let top = seen.values().map(|(g, _)| *g).max().unwrap_or(after);
        let all_on_top = members
            .iter()
            .all(|m| seen.get(m).is_some_and(|(g, _)| *g == top && *g > after));
        if all_on_top {
            let last = seen
                .values()
                .map(|(_, at)| *at)
                .max()
                .unwrap_or_else(Instant::now);
            return Ok((top, last));
        }
        let report = tokio::time::timeout_at(deadline, reports.recv())
            .await
            .context("the group did not settle in time")?
            .context("every member stopped")?;
        seen.insert(report.member, (report.generation, report.at));
    }
}

/// `sluice bench rebalance`.
pub async fn rebalance(
    brokers: &str,
    members: usize,
    rounds: usize,
    heartbeat_interval: Duration,
) -> Result<String> {
    let mut cluster = Cluster::connect(brokers).await?;
    let group = format!("sluice-bench-rebalance-{}", std::process::id());
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let start_member = |cluster_connection: ClientConnection, index: usize| {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(member(
            cluster_connection,
            group.clone(),
            index,
            heartbeat_interval,
            report.clone(),
            stopped,
        ));
        (stop, task)
    };
    for i in 0..members {
        let (stop, task) = start_member(coordinator(&mut cluster, &group).await?, i);
        stops.push(stop);
        tasks.push(task);
    }
    let everyone: Vec<usize> = (0..members).collect();
    let (mut generation, _) = settled(&mut reports, &everyone, 0, Duration::from_secs(60)).await?;
    let mut times_ms = Vec::new();
    for round in 0..rounds {
        let newcomer = members + round;
        let connection = coordinator(&mut cluster, &group).await?;
        let joined = Instant::now();
        let (stop, task) = start_member(connection, newcomer);
        let mut with_newcomer = everyone.clone();
        with_newcomer.push(newcomer);
        let (g, last) = settled(
            &mut reports,
            &with_newcomer,
            generation,
            Duration::from_secs(60),
        )
        .await?;
        times_ms.push(last.duration_since(joined).as_secs_f64() * 1000.0);
        // the newcomer leaves; the group settles again without it
        let _ = stop.send(true);
        task.await.context("member task")??;
        let (g, _) = settled(&mut reports, &everyone, g, Duration::from_secs(60)).await?;
        generation = g;
    }
    for stop in &stops {
        let _ = stop.send(true);
    }
    for t in tasks {
        t.await.context("member task")??;
    }
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms.get(times_ms.len() / 2).copied().unwrap_or(0.0);
    Ok(format!(
        "{members} members, one joins ({rounds} rounds, heartbeat every {} ms): rebalance \
         median {median:.0} ms, min {:.0} ms, max {:.0} ms",
        heartbeat_interval.as_millis(),
        times_ms.first().copied().unwrap_or(0.0),
        times_ms.last().copied().unwrap_or(0.0),
    ))
}
