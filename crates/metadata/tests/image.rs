//! MetadataImage::apply: each record's effect, the rejections that leave the image as it
//! was, and determinism (same batches, same image).

use sluice_metadata::error_code as ec;
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{MetadataBatch, MetadataImage, MetadataRecord, Partition, Record, Topic};

fn batch(records: Vec<Record>) -> MetadataBatch {
    MetadataBatch {
        records: records
            .into_iter()
            .map(|r| MetadataRecord { record: Some(r) })
            .collect(),
    }
}

fn register(id: i32, incarnation: &str) -> Record {
    Record::RegisterBroker(pb::RegisterBroker {
        broker_id: id,
        incarnation_id: incarnation.into(),
        endpoints: vec![pb::Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9000 + id as u32,
            security_protocol: "PLAINTEXT".into(),
        }],
        rack: None,
    })
}

fn partition(p: i32, replicas: &[i32], leader: i32, leader_epoch: i32, epoch: i32) -> Partition {
    Partition {
        partition: p,
        replicas: replicas.to_vec(),
        isr: replicas.to_vec(),
        leader,
        leader_epoch,
        partition_epoch: epoch,
        offline_replicas: Vec::new(),
    }
}

fn topic(name: &str, partitions: usize) -> Topic {
    Topic {
        name: name.into(),
        topic_id: vec![7; 16],
        configs: [("retention.ms".to_string(), "1000".to_string())].into(),
        partitions: (0..partitions as i32)
            .map(|p| partition(p, &[1, 2, 3], 1, 0, 0))
            .collect(),
    }
}

fn change(t: &str, expected: i32, state: Partition) -> Record {
    Record::PartitionChange(pb::PartitionChange {
        topic: t.into(),
        topic_id: vec![7; 16],
        expected_partition_epoch: expected,
        partition: Some(state),
    })
}

/// Brokers 1-3 registered (index 1) and unfenced (indexes 2-4).
fn live_brokers() -> MetadataImage {
    let mut image = MetadataImage::new("c");
    image.apply(
        1,
        &batch(vec![register(1, "a"), register(2, "b"), register(3, "c")]),
    );
    for id in 1..=3 {
        let out = image.apply(
            1 + id as u64,
            &batch(vec![Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: id,
                broker_epoch: 1,
            })]),
        );
        assert!(out[0].is_ok());
    }
    image
}

fn codes(outcomes: &[sluice_metadata::ApplyOutcome]) -> Vec<i16> {
    outcomes.iter().map(|o| o.error_code).collect()
}

#[test]
fn brokers_register_fenced_with_their_index_as_epoch() {
    let mut image = MetadataImage::new("c");
    image.apply(5, &batch(vec![register(1, "a")]));
    let b = image.broker(1).unwrap();
    assert_eq!((b.broker_epoch, b.fenced), (5, true));
    // unfence with the right epoch, fence with a stale one is refused
    let out = image.apply(
        6,
        &batch(vec![
            Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: 1,
                broker_epoch: 5,
            }),
            Record::FenceBroker(pb::FenceBroker {
                broker_id: 1,
                broker_epoch: 4,
            }),
            Record::FenceBroker(pb::FenceBroker {
                broker_id: 9,
                broker_epoch: 5,
            }),
        ]),
    );
    assert_eq!(
        codes(&out),
        vec![
            ec::NONE,
            ec::STALE_BROKER_EPOCH,
            ec::BROKER_ID_NOT_REGISTERED
        ]
    );
    assert!(!image.broker(1).unwrap().fenced);
    assert_eq!(image.live_broker_ids(), vec![1]);
    // the same incarnation again (a retry) keeps epoch and state; a new one starts over
    image.apply(7, &batch(vec![register(1, "a")]));
    assert_eq!(image.broker(1).unwrap().broker_epoch, 5);
    assert!(!image.broker(1).unwrap().fenced);
    image.apply(8, &batch(vec![register(1, "b")]));
    let b = image.broker(1).unwrap();
    assert_eq!((b.broker_epoch, b.fenced), (8, true));
    assert!(image.live_broker_ids().is_empty());
}

#[test]
fn topics_are_created_once_and_deleted_with_their_offsets() {
    let mut image = MetadataImage::new("c");
    let out = image.apply(
        1,
        &batch(vec![Record::CreateTopic(pb::CreateTopic {
            topic: Some(topic("t", 3)),
        })]),
    );
    assert_eq!(codes(&out), vec![ec::NONE]);
    let again = image.apply(
        2,
        &batch(vec![Record::CreateTopic(pb::CreateTopic {
            topic: Some(topic("t", 1)),
        })]),
    );
    assert_eq!(codes(&again), vec![ec::TOPIC_ALREADY_EXISTS]);
    assert_eq!(image.topic("t").unwrap().partitions.len(), 3);
    image.apply(
        3,
        &batch(vec![Record::CommitOffsets(pb::CommitOffsets {
            offsets: vec![
                pb::CommittedOffset {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0,
                    offset: 42,
                    ..Default::default()
                },
                pb::CommittedOffset {
                    group: "g".into(),
                    topic: "u".into(),
                    partition: 0,
                    offset: 7,
                    ..Default::default()
                },
                pb::CommittedOffset {
                    group: "h".into(),
                    topic: "t".into(),
                    partition: 1,
                    offset: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })]),
    );
    assert_eq!(image.committed_offset("g", "t", 0).unwrap().offset, 42);
    assert_eq!(image.committed_offsets("g", &[]).len(), 2);
    assert_eq!(
        image.committed_offsets("g", &["u".to_string()])[0].offset,
        7
    );
    // a delete with the wrong id is refused; with the right one it removes the offsets too
    let wrong = image.apply(
        4,
        &batch(vec![Record::DeleteTopic(pb::DeleteTopic {
            name: "t".into(),
            topic_id: vec![1; 16],
        })]),
    );
    assert_eq!(codes(&wrong), vec![ec::UNKNOWN_TOPIC_OR_PARTITION]);
    let out = image.apply(
        5,
        &batch(vec![Record::DeleteTopic(pb::DeleteTopic {
            name: "t".into(),
            topic_id: vec![7; 16],
        })]),
    );
    assert_eq!(codes(&out), vec![ec::NONE]);
    assert!(image.topic("t").is_none());
    assert!(image.committed_offset("g", "t", 0).is_none());
    assert!(image.committed_offset("h", "t", 1).is_none());
    assert_eq!(image.committed_offset("g", "u", 0).unwrap().offset, 7);
}

#[test]
fn invalid_topics_are_refused_whole() {
    let mut image = MetadataImage::new("c");
    let mut bad_isr = topic("a", 2);
    bad_isr.partitions[1].isr = vec![4];
    let mut bad_leader = topic("b", 1);
    bad_leader.partitions[0].isr = vec![2];
    let mut bad_order = topic("c", 2);
    bad_order.partitions.swap(0, 1);
    let mut bad_id = topic("d", 1);
    bad_id.topic_id = vec![1, 2];
    let mut dup = topic("e", 1);
    dup.partitions[0].replicas = vec![1, 1];
    dup.partitions[0].isr = vec![1];
    let out = image.apply(
        1,
        &batch(
            [bad_isr, bad_leader, bad_order, bad_id, dup, topic("f", 0)]
                .into_iter()
                .map(|t| Record::CreateTopic(pb::CreateTopic { topic: Some(t) }))
                .collect(),
        ),
    );
    assert!(out.iter().all(|o| !o.is_ok()), "{out:?}");
    assert_eq!(image.topics().count(), 0);
}

#[test]
fn partition_changes_compare_and_set_the_partition_epoch() {
    let mut image = live_brokers();
    image.apply(
        11,
        &batch(vec![Record::CreateTopic(pb::CreateTopic {
            topic: Some(topic("t", 2)),
        })]),
    );
    // shrink the ISR: epoch 0 -> 1
    let mut shrunk = partition(0, &[1, 2, 3], 1, 0, 1);
    shrunk.isr = vec![1, 2];
    assert_eq!(
        codes(&image.apply(12, &batch(vec![change("t", 0, shrunk.clone())]))),
        vec![ec::NONE]
    );
    assert_eq!(image.partition("t", 0).unwrap(), &shrunk);
    // a second change based on epoch 0 is stale
    let stale = partition(0, &[1, 2, 3], 1, 0, 1);
    assert_eq!(
        codes(&image.apply(13, &batch(vec![change("t", 0, stale)]))),
        vec![ec::INVALID_UPDATE_VERSION]
    );
    assert_eq!(image.partition("t", 0).unwrap(), &shrunk);
    // a leader change must bump the leader epoch; epochs never go down
    let same_epoch_new_leader = Partition {
        leader: 2,
        partition_epoch: 2,
        ..shrunk.clone()
    };
    let partition_epoch_skips = Partition {
        partition_epoch: 3,
        ..shrunk.clone()
    };
    let leader_epoch_down = Partition {
        leader_epoch: 0,
        partition_epoch: 2,
        ..partition(0, &[1, 2, 3], 1, 0, 0)
    };
    let out = image.apply(
        14,
        &batch(vec![
            change("t", 1, same_epoch_new_leader),
            change("t", 1, partition_epoch_skips),
            change(
                "t",
                1,
                Partition {
                    leader_epoch: -1,
                    ..leader_epoch_down
                },
            ),
        ]),
    );
    assert!(out.iter().all(|o| !o.is_ok()), "{out:?}");
    assert_eq!(image.partition("t", 0).unwrap(), &shrunk);
    // a proper leader change, then offline (leader -1, last ISR member kept)
    let moved = Partition {
        leader: 2,
        leader_epoch: 1,
        partition_epoch: 2,
        ..shrunk.clone()
    };
    let offline = Partition {
        leader: -1,
        leader_epoch: 2,
        partition_epoch: 3,
        isr: vec![2],
        ..shrunk.clone()
    };
    let out = image.apply(
        15,
        &batch(vec![change("t", 1, moved), change("t", 2, offline.clone())]),
    );
    assert_eq!(codes(&out), vec![ec::NONE, ec::NONE]);
    assert_eq!(image.partition("t", 0).unwrap(), &offline);
    // unknown topic, wrong topic id, partition beyond the end
    let mut wrong_id = change("t", 0, partition(1, &[1], 1, 1, 1));
    if let Record::PartitionChange(c) = &mut wrong_id {
        c.topic_id = vec![0; 16];
    }
    let out = image.apply(
        16,
        &batch(vec![
            change("nope", 0, partition(0, &[1], 1, 0, 1)),
            wrong_id,
            change("t", -1, partition(5, &[1], 1, 0, 0)),
        ]),
    );
    assert_eq!(codes(&out), vec![ec::UNKNOWN_TOPIC_OR_PARTITION; 3]);
    // adding partitions: all or none, against the count the request saw
    let add = |expected_count: i32, first: i32, n: i32| {
        Record::AddPartitions(pb::AddPartitions {
            topic: "t".into(),
            topic_id: vec![7; 16],
            expected_count,
            partitions: (first..first + n)
                .map(|p| partition(p, &[3, 1], 3, 0, 0))
                .collect(),
        })
    };
    let out = image.apply(17, &batch(vec![add(2, 2, 2), add(2, 2, 3), add(4, 5, 1)]));
    assert_eq!(
        codes(&out),
        vec![ec::NONE, ec::INVALID_PARTITIONS, ec::INVALID_REQUEST]
    );
    assert_eq!(image.topic("t").unwrap().partitions.len(), 4);
}

#[test]
fn the_same_log_gives_the_same_image_and_it_round_trips() {
    let log: Vec<MetadataBatch> = vec![
        batch(vec![register(1, "a"), register(2, "b"), register(3, "c")]),
        batch(vec![Record::UnfenceBroker(pb::UnfenceBroker {
            broker_id: 2,
            broker_epoch: 1,
        })]),
        batch(vec![Record::CreateTopic(pb::CreateTopic {
            topic: Some(topic("t", 4)),
        })]),
        batch(vec![change("t", 0, partition(3, &[1, 2, 3], 2, 1, 1))]),
        batch(vec![register(4, "d")]),
    ];
    let mut a = MetadataImage::new("c");
    let mut b = MetadataImage::new("c");
    for (i, entry) in log.iter().enumerate() {
        let oa = a.apply(i as u64 + 1, entry);
        let ob = b.apply(i as u64 + 1, entry);
        assert_eq!(oa, ob);
    }
    assert_eq!(a, b);
    assert_eq!(a.applied_index(), 5);
    let restored = MetadataImage::from_proto(a.to_proto());
    assert_eq!(restored, a);
    // an empty record is refused, not a panic
    let out = a.apply(
        6,
        &MetadataBatch {
            records: vec![MetadataRecord { record: None }],
        },
    );
    assert_eq!(codes(&out), vec![ec::INVALID_REQUEST]);
    a.advance_to(9);
    assert_eq!(a.applied_index(), 9);
}

#[test]
#[should_panic(expected = "went backwards")]
fn applying_an_old_index_is_a_bug() {
    let mut image = MetadataImage::new("c");
    image.apply(3, &batch(vec![register(1, "a")]));
    image.apply(3, &batch(vec![register(2, "b")]));
}

#[test]
fn only_live_brokers_become_leaders_or_join_an_isr() {
    let mut image = live_brokers();
    let mut t = topic("t", 1);
    t.partitions[0] = partition(0, &[1, 2, 3], 1, 0, 0);
    t.partitions[0].isr = vec![1];
    image.apply(
        10,
        &batch(vec![Record::CreateTopic(pb::CreateTopic {
            topic: Some(t),
        })]),
    );
    image.apply(
        11,
        &batch(vec![Record::FenceBroker(pb::FenceBroker {
            broker_id: 2,
            broker_epoch: 1,
        })]),
    );
    // broker 2 is fenced: it may neither join the ISR nor lead
    let join = Partition {
        isr: vec![1, 2],
        ..partition(0, &[1, 2, 3], 1, 0, 1)
    };
    let lead = Partition {
        isr: vec![1, 2],
        leader: 2,
        ..partition(0, &[1, 2, 3], 2, 1, 1)
    };
    let out = image.apply(12, &batch(vec![change("t", 0, join), change("t", 0, lead)]));
    assert_eq!(codes(&out), vec![ec::INELIGIBLE_REPLICA; 2]);
    // broker 3 is live: it joins; a fenced member that is already in the ISR may stay
    let join3 = Partition {
        isr: vec![1, 3],
        ..partition(0, &[1, 2, 3], 1, 0, 1)
    };
    assert_eq!(
        codes(&image.apply(13, &batch(vec![change("t", 0, join3)]))),
        vec![ec::NONE]
    );
    image.apply(
        14,
        &batch(vec![Record::FenceBroker(pb::FenceBroker {
            broker_id: 3,
            broker_epoch: 1,
        })]),
    );
    let keep = Partition {
        isr: vec![1, 3],
        ..partition(0, &[1, 2, 3], 1, 0, 2)
    };
    assert_eq!(
        codes(&image.apply(15, &batch(vec![change("t", 1, keep)]))),
        vec![ec::NONE]
    );
}

/// A commit of `group` at `offset`, fenced by `broker` at `epoch`.
fn fenced_commit(group: &str, offset: i64, broker: i32, epoch: i32) -> Record {
    Record::CommitOffsets(pb::CommitOffsets {
        offsets: vec![pb::CommittedOffset {
            group: group.into(),
            topic: "t".into(),
            partition: 0,
            offset,
            ..Default::default()
        }],
        fenced: true,
        coordinator_broker_id: broker,
        coordinator_epoch: epoch,
        ..Default::default()
    })
}

/// `fenced_commit` as call `sequence` of broker registration `broker_epoch`.
fn numbered_commit(offset: i64, broker: i32, broker_epoch: i64, sequence: i64) -> Record {
    let Record::CommitOffsets(mut r) = fenced_commit("g", offset, broker, 0) else {
        unreachable!()
    };
    r.committer_broker_epoch = broker_epoch;
    r.call_sequence = sequence;
    Record::CommitOffsets(r)
}

/// The chaos suite's long run saw a group restart below an acknowledged commit: a
/// coordinator's call that timed out (its controllers unreachable) could still reach the
/// quorum later and apply older offsets over newer ones. A broker numbers its calls; a
/// copy of a call older than one already applied changes nothing.
#[test]
fn a_late_copy_of_an_older_commit_call_never_overwrites_a_later_one() {
    let mut image = live_brokers();
    let slot = sluice_metadata::group_coordinator_slot("g");
    image.apply(
        5,
        &batch(vec![Record::MoveCoordinators(pb::MoveCoordinators {
            slots: vec![pb::CoordinatorSlot {
                slot,
                broker_id: 1,
                epoch: 0,
            }],
        })]),
    );
    let committed = |image: &MetadataImage| image.committed_offset("g", "t", 0).map(|o| o.offset);
    // call 7 applies; a retried copy of it (the same number) applies again, harmlessly
    let out = image.apply(6, &batch(vec![numbered_commit(100, 1, 1, 7)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    let out = image.apply(7, &batch(vec![numbered_commit(100, 1, 1, 7)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    // call 8 (two commits in one entry), then call 7's late copy: refused
    let out = image.apply(
        8,
        &batch(vec![
            numbered_commit(150, 1, 1, 8),
            numbered_commit(200, 1, 1, 8),
        ]),
    );
    assert_eq!(codes(&out), vec![ec::NONE, ec::NONE]);
    let out = image.apply(9, &batch(vec![numbered_commit(100, 1, 1, 7)]));
    assert_eq!(codes(&out), vec![ec::REQUEST_TIMED_OUT]);
    assert_eq!(committed(&image), Some(200));
    // a call made under another registration of the broker is refused too
    let out = image.apply(10, &batch(vec![numbered_commit(50, 1, 0, 9)]));
    assert_eq!(codes(&out), vec![ec::REQUEST_TIMED_OUT]);
    // the broker restarts: its new registration numbers from 1 again
    image.apply(11, &batch(vec![register(1, "a2")]));
    image.apply(
        12,
        &batch(vec![Record::UnfenceBroker(pb::UnfenceBroker {
            broker_id: 1,
            broker_epoch: 11,
        })]),
    );
    let out = image.apply(13, &batch(vec![numbered_commit(300, 1, 11, 1)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    let out = image.apply(14, &batch(vec![numbered_commit(250, 1, 1, 8)]));
    assert_eq!(codes(&out), vec![ec::REQUEST_TIMED_OUT]);
    assert_eq!(committed(&image), Some(300));
    // the numbers survive a snapshot
    let restored = MetadataImage::from_proto(image.to_proto());
    assert_eq!(restored.broker(1).map(|b| b.last_commit_call), Some(1));
}

#[test]
fn a_deposed_coordinators_commits_and_stores_are_refused() {
    let mut image = live_brokers();
    let slot = sluice_metadata::group_coordinator_slot("g");
    let place = |broker_id, epoch| {
        Record::MoveCoordinators(pb::MoveCoordinators {
            slots: vec![pb::CoordinatorSlot {
                slot,
                broker_id,
                epoch,
            }],
        })
    };
    let out = image.apply(5, &batch(vec![place(1, 0)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    let out = image.apply(6, &batch(vec![fenced_commit("g", 10, 1, 0)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    // the slot moves to broker 2: broker 1's late commit is refused, broker 2's applies,
    // both in one entry
    image.apply(7, &batch(vec![place(2, 1)]));
    let out = image.apply(
        8,
        &batch(vec![
            fenced_commit("g", 5, 1, 0),
            fenced_commit("g", 12, 2, 1),
        ]),
    );
    assert_eq!(codes(&out), vec![ec::NOT_COORDINATOR, ec::NONE]);
    assert_eq!(
        image.committed_offset("g", "t", 0).map(|o| o.offset),
        Some(12)
    );
    // a store of the group's membership by the deposed coordinator is refused too
    let store = |broker, epoch| {
        Record::StoreGroup(pb::StoreGroup {
            group: Some(pb::StoredGroup {
                group_id: "g".into(),
                generation: 3,
                coordinator_broker_id: broker,
                coordinator_epoch: epoch,
                ..Default::default()
            }),
        })
    };
    let out = image.apply(9, &batch(vec![store(1, 0), store(2, 1)]));
    assert_eq!(codes(&out), vec![ec::NOT_COORDINATOR, ec::NONE]);
    assert_eq!(image.stored_group("g").map(|g| g.generation), Some(3));
}

#[test]
fn producer_id_blocks_are_handed_out_once_each() {
    let mut image = live_brokers();
    let allocate = |broker_id, broker_epoch, first_producer_id| {
        Record::AllocateProducerIds(pb::AllocateProducerIds {
            broker_id,
            broker_epoch,
            first_producer_id,
            count: 1000,
        })
    };
    assert_eq!(image.next_producer_id(), 0);
    // two brokers ask at once, both having seen next id 0: the second is refused
    let out = image.apply(5, &batch(vec![allocate(1, 1, 0), allocate(2, 1, 0)]));
    assert_eq!(codes(&out), vec![ec::NONE, ec::UNKNOWN_SERVER_ERROR]);
    assert_eq!(image.next_producer_id(), 1000);
    let out = image.apply(6, &batch(vec![allocate(2, 1, 1000)]));
    assert_eq!(codes(&out), vec![ec::NONE]);
    // a broker not registered with that epoch gets nothing
    let out = image.apply(7, &batch(vec![allocate(3, 99, 2000), allocate(9, 1, 2000)]));
    assert_eq!(
        codes(&out),
        vec![ec::STALE_BROKER_EPOCH, ec::STALE_BROKER_EPOCH]
    );
    assert_eq!(image.next_producer_id(), 2000);
    // the next id survives a snapshot (a restarted controller never reuses an id)
    let restored = MetadataImage::from_proto(image.to_proto());
    assert_eq!(restored.next_producer_id(), 2000);
    assert_eq!(restored, image);
}
