//! `sluice cluster status`: what a client sees of the cluster through Metadata,
//! DescribeCluster and each broker's DescribeLogDirs — the brokers (fenced ones marked,
//! with their log directory's free space, or "log-dir offline" when it cannot take
//! writes), the active controller, and how many partitions lack a leader or have a short
//! ISR, and how many replicas on live brokers cannot open their log (offline replicas).
//! Fails (one line) while a partition has no leader, a replica or a log directory is
//! offline or fewer brokers than expected are live (registered and unfenced), so scripts
//! can wait for a healthy cluster with it.

use std::io::Write;

use anyhow::{bail, Result};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterRequest, DescribeClusterResponse, DescribeLogDirsRequest,
    DescribeLogDirsResponse,
};

use crate::kafka_client::{
    error_name, Cluster, DESCRIBE_CLUSTER_VERSION, DESCRIBE_LOG_DIRS_VERSION,
};

/// What one broker says of its log directory, for its status line.
async fn log_dir_state(cluster: &mut Cluster, id: i32) -> (String, bool) {
    let asked = async {
        let c = cluster.broker(id).await?;
        let r: DescribeLogDirsResponse = c
            .send(
                ApiKey::DescribeLogDirs,
                DESCRIBE_LOG_DIRS_VERSION,
                &DescribeLogDirsRequest::default().with_topics(Some(Vec::new())),
                true,
            )
            .await?;
        anyhow::Ok(r)
    };
    match asked.await {
        Err(_) => (" log-dir unknown (unreachable)".into(), false),
        Ok(r) => match r.results.first() {
            Some(d) if d.error_code != 0 => (
                format!(
                    " log-dir offline {} ({})",
                    d.log_dir.as_str(),
                    error_name(d.error_code)
                ),
                true,
            ),
            Some(d) if d.usable_bytes >= 0 => (
                format!(
                    " free {:.1} GiB",
                    d.usable_bytes as f64 / (1u64 << 30) as f64
                ),
                false,
            ),
            _ => (String::new(), false),
        },
    }
}

pub async fn status(bootstrap: &str, expect_brokers: Option<usize>) -> Result<()> {
    let mut cluster = Cluster::connect(bootstrap).await?;
    let metadata = cluster.metadata(None).await?;
    let request = DescribeClusterRequest::default()
        .with_include_fenced_brokers(true)
        .with_endpoint_type(1);
    let described: DescribeClusterResponse = cluster
        .bootstrap()
        .send(
            ApiKey::DescribeCluster,
            DESCRIBE_CLUSTER_VERSION,
            &request,
            true,
        )
        .await?;
    if described.error_code != 0 {
        bail!("DescribeCluster: {}", error_name(described.error_code));
    }
    // the active controller: the Raft leader, as DescribeCluster reports it
    let mut out = format!(
        "cluster {} controller {}\n",
        metadata.cluster_id.as_deref().unwrap_or("-"),
        described.controller_id.0
    );
    let mut brokers: Vec<_> = described.brokers.iter().collect();
    brokers.sort_by_key(|b| b.broker_id.0);
    let mut offline_log_dirs = Vec::new();
    for b in &brokers {
        let fenced = if b.is_fenced { " fenced" } else { "" };
        let (log_dir, offline) = log_dir_state(&mut cluster, b.broker_id.0).await;
        if offline {
            offline_log_dirs.push(b.broker_id.0.to_string());
        }
        out += &format!(
            "broker {} {}:{}{fenced}{log_dir}\n",
            b.broker_id.0, b.host, b.port
        );
    }
    let live = brokers.iter().filter(|b| !b.is_fenced).count();
    let mut partitions = 0;
    let mut offline = Vec::new();
    let mut under_replicated = 0;
    // replicas on live brokers that cannot open their log (a fenced broker's are counted
    // by the broker lines)
    let live_ids: Vec<i32> = brokers
        .iter()
        .filter(|b| !b.is_fenced)
        .map(|b| b.broker_id.0)
        .collect();
    let mut offline_replicas = Vec::new();
    for t in &metadata.topics {
        let name = t.name.as_ref().map_or("-", |n| n.0.as_str());
        for p in &t.partitions {
            partitions += 1;
            if p.leader_id.0 < 0 {
                offline.push(format!("{name}-{}", p.partition_index));
            }
            for r in p
                .offline_replicas
                .iter()
                .filter(|r| live_ids.contains(&r.0))
            {
                offline_replicas.push(format!("{name}-{} on broker {}", p.partition_index, r.0));
            }
            if p.isr_nodes.len() < p.replica_nodes.len() {
                under_replicated += 1;
            }
        }
    }
    out += &format!(
        "topics {} partitions {partitions} offline {} under-replicated {under_replicated} offline-replicas {}\n",
        metadata.topics.len(),
        offline.len(),
        offline_replicas.len()
    );
    // printed before any verdict: the state is what a waiting script wants to show (a
    // reader that went away is an error the caller treats as a quiet exit)
    std::io::stdout().lock().write_all(out.as_bytes())?;
    if let Some(expected) = expect_brokers.filter(|n| live < *n) {
        bail!("{live} of {expected} brokers live");
    }
    if !offline.is_empty() {
        offline.sort();
        bail!("partitions without a leader: {}", offline.join(", "));
    }
    if !offline_replicas.is_empty() {
        offline_replicas.sort();
        bail!(
            "replicas whose log cannot be opened: {}",
            offline_replicas.join(", ")
        );
    }
    if !offline_log_dirs.is_empty() {
        bail!(
            "log directory offline on broker {}",
            offline_log_dirs.join(", ")
        );
    }
    Ok(())
}
