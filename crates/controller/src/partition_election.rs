//! Partition leadership when brokers come and go: the `PartitionChange` records the
//! controller commits after fencing or unfencing a broker. Pure functions of the image.
//!
//! Rules (Kafka's): a fenced broker leaves every ISR, except that an ISR never drops below
//! one member; a partition it led gets the first live ISR member (in replica order) as
//! leader, with `leader_epoch + 1`; with no live ISR member the partition goes offline
//! (leader -1) unless `unclean.leader.election.enable`, which takes the first live replica
//! and makes it the whole ISR. An unfenced broker leads the offline partitions whose ISR
//! holds it. A replica whose broker cannot open its log (an offline replica, reported on
//! every heartbeat) is never elected and leaves the ISR as a fenced broker does; once it
//! opens, a partition left without a leader gets one. Every change raises
//! `partition_epoch` by one and names the epoch it expects.
//!
//! Preferred leader election (Kafka's): a partition's preferred leader is the first of its
//! replicas; it takes leadership back when it is live, in the ISR and healthy — on request
//! (ElectLeaders) or when a broker's share of preferred partitions led elsewhere passes
//! `leader.imbalance.per.broker.percentage` (`auto.leader.rebalance.enable`).

use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{MetadataImage, Partition, Record, Topic, NO_LEADER};

pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

fn unclean_allowed(topic: &Topic, cluster_default: bool) -> bool {
    topic
        .configs
        .get(UNCLEAN_LEADER_ELECTION_ENABLE)
        .map_or(cluster_default, |v| v == "true")
}

fn change(topic: &Topic, current: &Partition, mut next: Partition) -> Record {
    if next.leader != current.leader {
        next.leader_epoch = current.leader_epoch + 1;
    }
    next.partition_epoch = current.partition_epoch + 1;
    Record::PartitionChange(pb::PartitionChange {
        topic: topic.name.clone(),
        topic_id: topic.topic_id.clone(),
        expected_partition_epoch: current.partition_epoch,
        partition: Some(next),
    })
}

/// The records that take `broker_id` out of every ISR and move its leaderships away.
/// `live` is the set of brokers that may lead (unfenced, not `broker_id`).
pub fn on_broker_fenced(
    image: &MetadataImage,
    broker_id: i32,
    unclean_default: bool,
) -> Vec<Record> {
    let live: Vec<i32> = image
        .live_broker_ids()
        .into_iter()
        .filter(|b| *b != broker_id)
        .collect();
    let mut records = Vec::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            if p.leader != broker_id && !p.isr.contains(&broker_id) {
                continue;
            }
            let mut next = p.clone();
            if next.isr.len() > 1 {
                next.isr.retain(|b| *b != broker_id);
            }
            if next.leader == broker_id || next.leader == NO_LEADER {
                elect_leader(&mut next, &live, unclean_allowed(topic, unclean_default));
            }
            if next != *p {
                records.push(change(topic, p, next));
            }
        }
    }
    records
}

/// The records that give offline partitions a leader now that `broker_id` is back (or
/// whose leader is no longer live, after an earlier change was refused).
pub fn on_broker_unfenced(image: &MetadataImage, unclean_default: bool) -> Vec<Record> {
    let live = image.live_broker_ids();
    let mut records = Vec::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            if p.leader != NO_LEADER && live.contains(&p.leader) {
                continue;
            }
            let mut next = p.clone();
            elect_leader(&mut next, &live, unclean_allowed(topic, unclean_default));
            if next != *p {
                records.push(change(topic, p, next));
            }
        }
    }
    records
}

/// The records that bring the image in line with the offline replicas `broker_id`
/// reports (`reported`: topic id and partition of each): a newly offline replica leaves
/// the ISR (unless it is the last member) and gives up its leadership to the first live,
/// healthy ISR member (or none); with `may_clear`, a replica no longer reported is healthy
/// again, and a partition without a leader gets one.
pub fn on_offline_replicas(
    image: &MetadataImage,
    broker_id: i32,
    reported: &[(Vec<u8>, i32)],
    may_clear: bool,
    unclean_default: bool,
) -> Vec<Record> {
    let live = image.live_broker_ids();
    let mut records = Vec::new();
    for topic in image.topics() {
        for p in &topic.partitions {
            if !p.replicas.contains(&broker_id) {
                continue;
            }
            let offline = reported
                .iter()
                .any(|(id, partition)| *id == topic.topic_id && *partition == p.partition);
            if offline == p.offline_replicas.contains(&broker_id) || !(offline || may_clear) {
                continue;
            }
            let mut next = p.clone();
            let unclean = unclean_allowed(topic, unclean_default);
            if offline {
                next.offline_replicas.push(broker_id);
                if next.isr.len() > 1 {
                    next.isr.retain(|b| *b != broker_id);
                }
                if next.leader == broker_id {
                    elect_leader(&mut next, &live, unclean);
                }
            } else {
                next.offline_replicas.retain(|b| *b != broker_id);
                if next.leader == NO_LEADER {
                    elect_leader(&mut next, &live, unclean);
                }
            }
            records.push(change(topic, p, next));
        }
    }
    records
}

/// Why a partition's leadership was not moved by an election request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionRefusal {
    /// It is led as asked already (ELECTION_NOT_NEEDED).
    NotNeeded,
    /// Its preferred replica cannot lead now: not live, not in the ISR, or its log is
    /// offline (PREFERRED_LEADER_NOT_AVAILABLE).
    PreferredNotAvailable,
    /// No replica may lead (ELIGIBLE_LEADERS_NOT_AVAILABLE).
    NoEligibleLeader,
}

/// The preferred replica (the first in `replicas`) when it may lead `p` now: live, in the
/// ISR, its log not offline.
fn eligible_preferred(p: &Partition, live: &[i32]) -> Option<i32> {
    let preferred = *p.replicas.first()?;
    (live.contains(&preferred)
        && p.isr.contains(&preferred)
        && !p.offline_replicas.contains(&preferred))
    .then_some(preferred)
}

/// Kafka's preferred leader election of one partition: the change that makes its
/// preferred replica the leader, or why not.
pub fn elect_preferred(
    image: &MetadataImage,
    topic: &Topic,
    p: &Partition,
) -> Result<Record, ElectionRefusal> {
    let live = image.live_broker_ids();
    if p.replicas.first() == Some(&p.leader) {
        return Err(ElectionRefusal::NotNeeded);
    }
    let preferred = eligible_preferred(p, &live).ok_or(ElectionRefusal::PreferredNotAvailable)?;
    let mut next = p.clone();
    next.leader = preferred;
    Ok(change(topic, p, next))
}

/// Kafka's unclean election of one partition on request: only for a partition with no
/// leader, which gets the first live ISR member or, failing that, the first live replica.
pub fn elect_unclean(
    image: &MetadataImage,
    topic: &Topic,
    p: &Partition,
) -> Result<Record, ElectionRefusal> {
    if p.leader != NO_LEADER {
        return Err(ElectionRefusal::NotNeeded);
    }
    let mut next = p.clone();
    elect_leader(&mut next, &image.live_broker_ids(), true);
    if next.leader == NO_LEADER {
        return Err(ElectionRefusal::NoEligibleLeader);
    }
    Ok(change(topic, p, next))
}

/// `auto.leader.rebalance.enable`: for each broker whose share of partitions it prefers
/// but does not lead is above `imbalance_percentage` (Kafka's
/// `leader.imbalance.per.broker.percentage`), the changes that give it back those whose
/// ISR holds it.
pub fn rebalance_leaders(image: &MetadataImage, imbalance_percentage: u32) -> Vec<Record> {
    let live = image.live_broker_ids();
    // preferred broker -> (partitions it prefers, (topic, partition) it does not lead)
    type Preferred<'a> = (usize, Vec<(&'a Topic, &'a Partition)>);
    let mut by_preferred: std::collections::BTreeMap<i32, Preferred<'_>> = Default::default();
    for topic in image.topics() {
        for p in &topic.partitions {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let entry = by_preferred.entry(preferred).or_default();
            entry.0 += 1;
            if p.leader != preferred {
                entry.1.push((topic, p));
            }
        }
    }
    let mut records = Vec::new();
    for (_, (total, not_led)) in by_preferred {
        // Kafka's check: imbalance ratio > percentage / 100
        if not_led.len() * 100 <= total * imbalance_percentage as usize {
            continue;
        }
        for (topic, p) in not_led {
            if let Some(preferred) = eligible_preferred(p, &live) {
                let mut next = p.clone();
                next.leader = preferred;
                records.push(change(topic, p, next));
            }
        }
    }
    records
}

/// Sets the leader to the first live ISR member in replica order; else, if allowed, to
/// the first live replica, which then becomes the whole ISR; else -1.
fn elect_leader(p: &mut Partition, live: &[i32], unclean: bool) {
    p.leader = elect(p, live, unclean);
    if p.leader != NO_LEADER && !p.isr.contains(&p.leader) {
        p.isr = vec![p.leader];
    }
}

fn elect(p: &Partition, live: &[i32], unclean: bool) -> i32 {
    let healthy = |r: &&i32| live.contains(r) && !p.offline_replicas.contains(r);
    let clean = p
        .replicas
        .iter()
        .filter(healthy)
        .find(|r| p.isr.contains(r));
    match clean {
        Some(r) => *r,
        None if unclean => p
            .replicas
            .iter()
            .find(healthy)
            .copied()
            .unwrap_or(NO_LEADER),
        None => NO_LEADER,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_metadata::{MetadataBatch, MetadataRecord};

    /// Applies `records` as the next entry; every one must take effect.
    pub(crate) fn apply(image: &mut MetadataImage, records: Vec<Record>) {
        let index = image.applied_index() + 1;
        let out = image.apply(
            index,
            &MetadataBatch {
                records: records
                    .into_iter()
                    .map(|r| MetadataRecord { record: Some(r) })
                    .collect(),
            },
        );
        assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
    }

    fn cluster(unclean: bool) -> MetadataImage {
        let mut image = MetadataImage::new("c");
        for id in 1..=3 {
            apply(
                &mut image,
                vec![Record::RegisterBroker(pb::RegisterBroker {
                    broker_id: id,
                    incarnation_id: format!("i{id}"),
                    ..Default::default()
                })],
            );
            let epoch = image.broker(id).unwrap().broker_epoch;
            apply(
                &mut image,
                vec![Record::UnfenceBroker(pb::UnfenceBroker {
                    broker_id: id,
                    broker_epoch: epoch,
                })],
            );
        }
        let partitions = [[1, 2, 3], [2, 3, 1], [3, 1, 2]]
            .iter()
            .enumerate()
            .map(|(i, r)| Partition {
                partition: i as i32,
                replicas: r.to_vec(),
                isr: r.to_vec(),
                leader: r[0],
                leader_epoch: 0,
                partition_epoch: 0,
                offline_replicas: Vec::new(),
            })
            .collect();
        let mut configs = std::collections::BTreeMap::new();
        if unclean {
            configs.insert(
                UNCLEAN_LEADER_ELECTION_ENABLE.to_string(),
                "true".to_string(),
            );
        }
        apply(
            &mut image,
            vec![Record::CreateTopic(pb::CreateTopic {
                topic: Some(Topic {
                    name: "t".into(),
                    topic_id: vec![1; 16],
                    configs,
                    partitions,
                }),
            })],
        );
        image
    }

    fn fence(image: &mut MetadataImage, id: i32) {
        let epoch = image.broker(id).unwrap().broker_epoch;
        let mut records = vec![Record::FenceBroker(pb::FenceBroker {
            broker_id: id,
            broker_epoch: epoch,
        })];
        records.extend(on_broker_fenced(image, id, false));
        apply(image, records);
    }

    /// Puts broker `id` back in the ISR of every partition (it caught up).
    fn rejoin_isr(image: &mut MetadataImage, id: i32) {
        let topic = image.topic("t").unwrap().clone();
        let records: Vec<Record> = topic
            .partitions
            .iter()
            .filter(|p| !p.isr.contains(&id))
            .map(|p| {
                let mut next = p.clone();
                next.isr.push(id);
                change(&topic, p, next)
            })
            .collect();
        apply(image, records);
    }

    #[test]
    fn leadership_goes_back_to_the_preferred_replica_once_it_is_in_the_isr() {
        let mut image = cluster(false);
        fence(&mut image, 1);
        unfence(&mut image, 1);
        // broker 1 is live again but out of the ISR: nothing to give back yet
        assert_eq!(image.partition("t", 0).unwrap().leader, 2);
        assert!(rebalance_leaders(&image, 10).is_empty());
        let topic = image.topic("t").unwrap().clone();
        assert_eq!(
            elect_preferred(&image, &topic, &topic.partitions[0]).err(),
            Some(ElectionRefusal::PreferredNotAvailable)
        );
        rejoin_isr(&mut image, 1);
        // broker 1 prefers 1 partition and leads none of it: 100% > 10%
        let records = rebalance_leaders(&image, 10);
        assert_eq!(records.len(), 1);
        apply(&mut image, records);
        let p0 = image.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.leader_epoch), (1, 2));
        assert!(rebalance_leaders(&image, 10).is_empty(), "balanced");
        let topic = image.topic("t").unwrap().clone();
        assert_eq!(
            elect_preferred(&image, &topic, &topic.partitions[0]).err(),
            Some(ElectionRefusal::NotNeeded)
        );
        // under the threshold nothing moves: 1 of 1 partitions is 100%, never under 100
        assert!(rebalance_leaders(&image, 100).is_empty());
    }

    #[test]
    fn an_unclean_election_on_request_only_touches_leaderless_partitions() {
        let mut image = cluster(false);
        let topic = image.topic("t").unwrap().clone();
        assert_eq!(
            elect_unclean(&image, &topic, &topic.partitions[0]).err(),
            Some(ElectionRefusal::NotNeeded)
        );
        // partition 0's ISR shrinks to broker 1, which is then fenced: offline
        let p0 = topic.partitions[0].clone();
        let mut next = p0.clone();
        next.isr = vec![1];
        apply(&mut image, vec![change(&topic, &p0, next)]);
        fence(&mut image, 1);
        let topic = image.topic("t").unwrap().clone();
        assert_eq!(topic.partitions[0].leader, NO_LEADER);
        let record = elect_unclean(&image, &topic, &topic.partitions[0]).unwrap();
        apply(&mut image, vec![record]);
        let p0 = image.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn fencing_moves_leadership_to_the_next_isr_member() {
        let mut image = cluster(false);
        fence(&mut image, 1);
        let p0 = image.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.leader_epoch, p0.partition_epoch), (2, 1, 1));
        assert_eq!(p0.isr, vec![2, 3]);
        // partitions 1 and 2 keep their leader, lose broker 1 from the ISR
        let p1 = image.partition("t", 1).unwrap();
        assert_eq!((p1.leader, p1.leader_epoch, p1.partition_epoch), (2, 0, 1));
        assert_eq!(p1.isr, vec![2, 3]);
        fence(&mut image, 2);
        fence(&mut image, 3);
        // nobody left: offline, the last ISR member stays
        for p in &image.topic("t").unwrap().partitions {
            assert_eq!(p.leader, NO_LEADER, "{p:?}");
            assert_eq!(p.isr.len(), 1);
        }
        let last_isr = image.partition("t", 0).unwrap().isr[0];
        assert_eq!(last_isr, 3);
        // broker 1 returns, but is not in the ISR: still offline (clean election)
        unfence(&mut image, 1);
        assert_eq!(image.partition("t", 0).unwrap().leader, NO_LEADER);
        // broker 3 (the last ISR member) returns: it leads
        unfence(&mut image, 3);
        for p in &image.topic("t").unwrap().partitions {
            assert_eq!(p.leader, 3, "{p:?}");
        }
    }

    fn report_offline(image: &mut MetadataImage, id: i32, partitions: &[i32]) {
        let reported: Vec<(Vec<u8>, i32)> = partitions.iter().map(|p| (vec![1; 16], *p)).collect();
        let records = on_offline_replicas(image, id, &reported, true, false);
        if !records.is_empty() {
            apply(image, records);
        }
    }

    #[test]
    fn an_offline_replica_leaves_the_isr_and_its_leadership_until_it_opens() {
        let mut image = cluster(false);
        // broker 1 cannot open partition 0 (it leads it) and partition 1 (it follows)
        report_offline(&mut image, 1, &[0, 1]);
        let p0 = image.partition("t", 0).unwrap().clone();
        assert_eq!(
            (p0.leader, p0.leader_epoch, p0.isr.clone()),
            (2, 1, vec![2, 3])
        );
        assert_eq!(p0.offline_replicas, vec![1]);
        let p1 = image.partition("t", 1).unwrap().clone();
        assert_eq!(
            (p1.leader, p1.leader_epoch, p1.isr.clone()),
            (2, 0, vec![2, 3])
        );
        assert!(image.partition("t", 2).unwrap().offline_replicas.is_empty());
        // the same report again changes nothing
        let both = [(vec![1; 16], 0), (vec![1; 16], 1)];
        assert!(on_offline_replicas(&image, 1, &both, true, false).is_empty());
        // a fenced broker's report (a restart, before it tried its logs) clears nothing
        assert!(on_offline_replicas(&image, 1, &[], false, false).is_empty());
        // an election never picks an offline replica, even one still in the ISR
        fence(&mut image, 2);
        assert_eq!(image.partition("t", 0).unwrap().leader, 3);
        fence(&mut image, 3);
        // partition 0: broker 3 was the last ISR member: offline, broker 1 is not elected
        assert_eq!(image.partition("t", 0).unwrap().leader, NO_LEADER);
        // partition 2: broker 1 is healthy there and in the ISR
        assert_eq!(image.partition("t", 2).unwrap().leader, 1);
        // partition 0's log opens on broker 1, but it is not in the ISR: still no leader
        report_offline(&mut image, 1, &[1]);
        let p0 = image.partition("t", 0).unwrap();
        assert!(p0.offline_replicas.is_empty());
        assert_eq!(p0.leader, NO_LEADER);
        assert_eq!(image.partition("t", 1).unwrap().offline_replicas, vec![1]);
    }

    #[test]
    fn a_sole_isr_member_back_online_leads_again() {
        let mut image = cluster(false);
        fence(&mut image, 2);
        fence(&mut image, 3);
        // broker 1 is the whole ISR of every partition and cannot open partition 0
        report_offline(&mut image, 1, &[0]);
        let p0 = image.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.isr.clone()), (NO_LEADER, vec![1]));
        report_offline(&mut image, 1, &[]);
        let p0 = image.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.isr.clone()), (1, vec![1]));
        assert!(p0.offline_replicas.is_empty());
    }

    fn unfence(image: &mut MetadataImage, id: i32) {
        let epoch = image.broker(id).unwrap().broker_epoch;
        apply(
            image,
            vec![Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: id,
                broker_epoch: epoch,
            })],
        );
        let records = on_broker_unfenced(image, false);
        if !records.is_empty() {
            apply(image, records);
        }
    }

    #[test]
    fn unclean_election_takes_a_live_replica_outside_the_isr() {
        let mut image = cluster(true);
        fence(&mut image, 1);
        fence(&mut image, 2);
        // broker 3 is alive and in every ISR: it leads everything
        for p in &image.topic("t").unwrap().partitions {
            assert_eq!((p.leader, p.isr.clone()), (3, vec![3]));
        }
        unfence(&mut image, 1);
        fence(&mut image, 3);
        // ISR is [3] and 3 is gone: unclean election picks broker 1, ISR [1]
        for p in &image.topic("t").unwrap().partitions {
            assert_eq!((p.leader, p.isr.clone()), (1, vec![1]), "{p:?}");
        }
    }

    #[test]
    fn leader_epochs_only_grow() {
        let mut image = cluster(false);
        let mut last: Vec<(i32, i32)> = vec![(0, 0); 3];
        for id in [1, 2, 1, 3, 2, 1] {
            if image.broker(id).unwrap().fenced {
                unfence(&mut image, id);
            } else {
                fence(&mut image, id);
            }
            for (i, p) in image.topic("t").unwrap().partitions.iter().enumerate() {
                assert!(p.leader_epoch >= last[i].0 && p.partition_epoch >= last[i].1);
                last[i] = (p.leader_epoch, p.partition_epoch);
            }
        }
    }
}
