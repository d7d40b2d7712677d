//! Replicas must not diverge below the high watermark: after the run (nodes stopped
//! cleanly), every partition's batches below the lowest high watermark any replica
//! checkpointed are compared across the nodes — same offsets, same CRC, same partition
//! leader epoch (outside the CRC). Batches are read with `sluice dump-log`, high
//! watermarks from each node's `replication-offset-checkpoint`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::network::NODES;

/// (base offset, last offset, "crc epoch") of each batch, in log order.
type Batches = Vec<(i64, i64, String)>;

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(name)? + name.len();
    line[at..].split_whitespace().next()
}

fn batches(bin: &Path, partition_dir: &Path) -> Result<Batches> {
    let out = Command::new(bin)
        .arg("dump-log")
        .arg(partition_dir)
        .output()
        .context("running sluice dump-log")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("baseOffset: ")) {
        let base = field(line, "baseOffset: ").and_then(|v| v.parse().ok());
        let last = field(line, "lastOffset: ").and_then(|v| v.parse().ok());
        let crc = field(line, "crc: ");
        let epoch = field(line, "partitionLeaderEpoch: ");
        if let (Some(base), Some(last), Some(crc), Some(epoch)) = (base, last, crc, epoch) {
            result.push((base, last, format!("crc {crc} epoch {epoch}")));
        }
    }
    Ok(result)
}

/// `topic-partition` → high watermark, from a node's checkpoint.
fn high_watermarks(data_dir: &Path) -> BTreeMap<String, i64> {
    let text =
        std::fs::read_to_string(data_dir.join("replication-offset-checkpoint")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (topic, partition, hw) = (parts.next()?, parts.next()?, parts.next()?);
            Some((format!("{topic}-{partition}"), hw.parse().ok()?))
        })
        .collect()
}

/// One line per divergence found (empty: the replicas agree), and how many batches were
/// compared.
pub fn check(
    bin: &Path,
    data_dirs: &[std::path::PathBuf],
    topic: &str,
) -> Result<(Vec<String>, usize)> {
    let mut problems = Vec::new();
    let mut compared = 0;
    let hws: Vec<BTreeMap<String, i64>> = data_dirs.iter().map(|d| high_watermarks(d)).collect();
    let mut partitions: Vec<String> = hws
        .iter()
        .flat_map(|m| m.keys().cloned())
        .filter(|p| p.rsplit_once('-').is_some_and(|(t, _)| t == topic))
        .collect();
    partitions.sort();
    partitions.dedup();
    for p in partitions {
        let Some(floor) = hws.iter().map(|m| m.get(&p).copied().unwrap_or(0)).min() else {
            continue;
        };
        let mut per_node = Vec::new();
        for (i, dir) in data_dirs.iter().enumerate() {
            let below: Batches = batches(bin, &dir.join(&p))?
                .into_iter()
                .filter(|(_, last, _)| *last < floor)
                .collect();
            if below.windows(2).any(|w| w[1].0 <= w[0].1) {
                problems.push(format!("{p} on node {}: offsets go backwards", NODES[i]));
            }
            per_node.push(below);
        }
        compared += per_node.first().map_or(0, Vec::len);
        for (i, other) in per_node.iter().enumerate().skip(1) {
            if *other != per_node[0] {
                let at = per_node[0]
                    .iter()
                    .zip(other)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{a:?} against {b:?}"))
                    .unwrap_or_else(|| {
                        format!("{} batches against {}", per_node[0].len(), other.len())
                    });
                problems.push(format!(
                    "{p}: node {} and node {} differ below the high watermark {floor}: {at}",
                    NODES[0], NODES[i]
                ));
            }
        }
    }
    Ok((problems, compared))
}
