//! The faults (nemeses) and their seeded schedule. Each fault is applied, held for a
//! while, then healed (every iptables rule flushed, every link back to full speed, every
//! ballast removed, paused nodes resumed, killed nodes restarted on their data) before a
//! quiet spell and the next one. Targets ("the leader", "a follower") are resolved when
//! the fault starts, from what the cluster reports.

use std::fmt;
use std::time::Duration;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::disk::{self, Disks};
use crate::link_proxy::{Delay, LinkProxies};
use crate::network::{Network, NODES};
use crate::nodes::{Nodes, CONTROLLER_PORT};

/// What the faults act on.
pub struct Lab<'a, 'n> {
    pub net: &'a Network,
    pub nodes: &'a mut Nodes<'n>,
    pub links: &'a LinkProxies,
    pub disks: &'a Disks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillNode,
    KillPartitionLeader,
    KillControllerLeader,
    KillMajority,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    IsolateLeaderFromControllers,
    MajorityMinority,
    Bridge,
    OneWayPartition,
    PacketLoss,
    SlowLinks,
    DiskFull,
    TornTail,
    BitFlips,
}

pub const ALL: &[Fault] = &[
    Fault::KillNode,
    Fault::KillPartitionLeader,
    Fault::KillControllerLeader,
    Fault::KillMajority,
    Fault::PauseLeader,
    Fault::PauseFollower,
    Fault::IsolateLeader,
    Fault::IsolateLeaderFromControllers,
    Fault::MajorityMinority,
    Fault::Bridge,
    Fault::OneWayPartition,
    Fault::PacketLoss,
    Fault::SlowLinks,
    Fault::DiskFull,
    Fault::TornTail,
    Fault::BitFlips,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Fault::KillNode => "kill-node",
            Fault::KillPartitionLeader => "kill-partition-leader",
            Fault::KillControllerLeader => "kill-controller-leader",
            Fault::KillMajority => "kill-majority",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::IsolateLeader => "isolate-leader",
            Fault::IsolateLeaderFromControllers => "isolate-leader-from-controllers",
            Fault::MajorityMinority => "majority-minority",
            Fault::Bridge => "bridge",
            Fault::OneWayPartition => "one-way-partition",
            Fault::PacketLoss => "packet-loss",
            Fault::SlowLinks => "slow-links",
            Fault::DiskFull => "disk-full",
            Fault::TornTail => "torn-tail",
            Fault::BitFlips => "bit-flips",
        };
        f.write_str(name)
    }
}

/// The order faults come in: every kind once, shuffled, then (for longer runs) random
/// kinds — all drawn from `rng`, so a seed replays the same schedule.
pub fn schedule(rng: &mut ChaCha8Rng, count: usize) -> Vec<Fault> {
    let mut order = ALL.to_vec();
    order.shuffle(rng);
    while order.len() < count {
        order.push(ALL[rng.random_range(0..ALL.len())]);
    }
    order
}

fn pick(rng: &mut ChaCha8Rng, from: &[u32]) -> u32 {
    from[rng.random_range(0..from.len())]
}

fn others(n: u32) -> Vec<u32> {
    NODES.iter().copied().filter(|m| *m != n).collect()
}

/// Applies `fault`; returns what was done, in words.
pub fn apply(
    fault: Fault,
    lab: &mut Lab<'_, '_>,
    topic: &str,
    rng: &mut ChaCha8Rng,
) -> Result<String> {
    let (net, nodes) = (lab.net, &mut *lab.nodes);
    let any = pick(rng, &NODES);
    let leader = nodes.partition_leader(topic, 0).unwrap_or(any);
    let what = match fault {
        Fault::KillNode => {
            nodes.kill(any)?;
            format!("kill -9 node {any}")
        }
        Fault::KillPartitionLeader => {
            nodes.kill(leader)?;
            format!("kill -9 node {leader} (leader of {topic}-0)")
        }
        Fault::KillControllerLeader => {
            let c = nodes.controller_leader().unwrap_or(any);
            nodes.kill(c)?;
            format!("kill -9 node {c} (controller leader)")
        }
        Fault::KillMajority => {
            let spared = any;
            let killed = others(spared);
            for n in &killed {
                nodes.kill(*n)?;
            }
            format!("kill -9 nodes {killed:?}")
        }
        Fault::PauseLeader => {
            nodes.pause(leader)?;
            format!("SIGSTOP node {leader} (leader of {topic}-0)")
        }
        Fault::PauseFollower => {
            let f = pick(rng, &others(leader));
            nodes.pause(f)?;
            format!("SIGSTOP node {f} (follower of {topic}-0)")
        }
        Fault::IsolateLeader => {
            net.isolate(leader, None)?;
            format!("node {leader} (leader of {topic}-0) cut from the other nodes; clients reach every node")
        }
        Fault::IsolateLeaderFromControllers => {
            net.isolate(leader, Some(CONTROLLER_PORT))?;
            format!("node {leader} (leader of {topic}-0) cut from the controller quorum only")
        }
        Fault::MajorityMinority => {
            net.isolate(any, None)?;
            format!("node {any} cut from the majority")
        }
        Fault::Bridge => {
            let rest = others(any);
            net.cut(rest[0], rest[1], None)?;
            format!(
                "nodes {} and {} cut apart; node {any} sees both",
                rest[0], rest[1]
            )
        }
        Fault::OneWayPartition => {
            let to = pick(rng, &others(leader));
            net.drop_from(to, leader, None, 1.0)?;
            format!("node {to} hears nothing from node {leader} (leader of {topic}-0); the other way works")
        }
        Fault::PacketLoss => {
            for a in NODES {
                for b in others(a) {
                    net.drop_from(a, b, None, 0.3)?;
                }
            }
            "30% of packets between nodes dropped".to_string()
        }
        Fault::SlowLinks => {
            // beyond the heartbeat interval (200 ms), within the session (2 s); the
            // controllers' election timeout is 1 s
            let delay = Delay {
                base: Duration::from_millis(rng.random_range(50..=300)),
                jitter: Duration::from_millis(rng.random_range(0..=300)),
            };
            for a in NODES {
                for b in others(a).into_iter().filter(|b| *b > a) {
                    lab.links.slow(a, b, delay);
                }
            }
            format!(
                "every link between nodes delayed {:?} + up to {:?} of jitter",
                delay.base, delay.jitter
            )
        }
        Fault::DiskFull => {
            let filled = lab.disks.fill(leader)?;
            format!(
                "node {leader}'s (leader of {topic}-0) log directory filled ({} MiB of ballast)",
                filled >> 20
            )
        }
        Fault::TornTail => {
            nodes.kill(any)?;
            let what = disk::tear_tails(&nodes.data_dir(any), topic, rng)?;
            format!("kill -9 node {any}, then tore its newest segments: {what}")
        }
        Fault::BitFlips => {
            nodes.kill(any)?;
            let what = disk::flip_bits(&nodes.data_dir(any), topic, rng)?;
            format!("kill -9 node {any}, then flipped bits: {what}")
        }
    };
    Ok(what)
}

/// Undoes every fault: rules flushed, links at full speed, ballasts removed, paused
/// nodes resumed, stopped nodes restarted.
pub fn heal(lab: &mut Lab<'_, '_>) -> Result<()> {
    lab.net.heal()?;
    lab.links.heal();
    lab.disks.heal()?;
    lab.nodes.heal()
}
