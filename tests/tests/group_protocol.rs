//! The classic group protocol on the wire, request by request, against a 3-node cluster
//! of real processes (issue 13):
//! - a Stable group whose coordinator's broker is killed (kill -9) resumes at the new
//!   coordinator with the same generation: members' heartbeats, SyncGroup and commits at
//!   that generation succeed, so no rebalance happens because the coordinator moved;
//! - bad input gets Kafka's error codes, one check per code.

use std::time::{Duration, Instant};

use sluice_system_tests::group_member::{GroupClient, Joined, MEMBER_ID_REQUIRED};
use sluice_system_tests::{Layout, ProcessCluster};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const COORDINATOR_RETRIABLE: [i16; 3] = [14, 15, 16];
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const GROUP_MAX_SIZE_REACHED: i16 = 81;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
const FENCED_INSTANCE_ID: i16 = 82;

/// The group's coordinator (node id, address) as a live broker reports it, once it is
/// one of `live` (waits up to 60 s).
fn coordinator(cluster: &ProcessCluster, group: &str, live: &[i32]) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let asked = cluster.bootstrap_of(live[0]);
        let (code, node, address) = GroupClient::connect(&asked).find_coordinator(group);
        if code == NONE && live.contains(&node) {
            return (node, address);
        }
        assert!(
            Instant::now() < deadline,
            "no live coordinator for {group}: {code} {node}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two members join `group` together and sync at `address`; the leader assigns each its
/// own id. Returns each member's (client, join answer, assignment), or None when the
/// coordinator moved meanwhile (placement still settling after the cluster started).
fn stable_pair(address: &str, group: &str) -> Option<Vec<(GroupClient, Joined, Vec<u8>)>> {
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let address = address.to_string();
            let group = group.to_string();
            std::thread::spawn(move || {
                let mut client = GroupClient::connect(&address);
                let joined = client.join_new(&group, None);
                if joined.error_code != NONE {
                    return Err(joined.error_code);
                }
                let assignments: Vec<(String, Vec<u8>)> = joined
                    .members
                    .iter()
                    .map(|m| (m.clone(), m.as_bytes().to_vec()))
                    .collect();
                let (code, assignment) = client.sync(
                    &group,
                    joined.generation,
                    &joined.member_id,
                    None,
                    &assignments,
                );
                if code != NONE {
                    return Err(code);
                }
                Ok((client, joined, assignment))
            })
        })
        .collect();
    let members: Vec<Result<_, i16>> = threads
        .into_iter()
        .map(|t| t.join().expect("member thread"))
        .collect();
    let mut out = Vec::new();
    for m in members {
        match m {
            Ok(m) => out.push(m),
            Err(code) if code == UNKNOWN_MEMBER_ID || COORDINATOR_RETRIABLE.contains(&code) => {
                return None
            }
            Err(code) => panic!("joining {group}: error {code}"),
        }
    }
    Some(out)
}

#[test]
fn a_stable_group_keeps_its_generation_when_its_coordinators_broker_is_killed() {
    let mut cluster = ProcessCluster::start(Layout::Combined, &[]);
    cluster.create_topic("moves", 1);
    // a fresh group per attempt, should the coordinator move while it forms
    let (group, old, mut members) = (0..5)
        .find_map(|attempt| {
            let group = format!("survives-a-move-{attempt}");
            let (old, address) = coordinator(&cluster, &group, &[1, 2, 3]);
            stable_pair(&address, &group).map(|m| (group, old, m))
        })
        .expect("a stable group within 5 attempts");
    let group = group.as_str();
    assert_eq!(members[0].1.generation, members[1].1.generation);
    let generation = members[0].1.generation;
    for (_, joined, assignment) in &members {
        assert_eq!(
            assignment,
            joined.member_id.as_bytes(),
            "each gets its own assignment"
        );
    }
    let (client, joined, _) = &mut members[0];
    let code = client.commit(group, generation, &joined.member_id, None, "moves", 0, 5);
    assert_eq!(code, NONE);

    cluster.kill(old);
    let live: Vec<i32> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let (new, address) = coordinator(&cluster, group, &live);
    assert_ne!(new, old);

    // each member, still at the old generation, carries on at the new coordinator
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, joined, assignment) in &members {
        let mut client = GroupClient::connect(&address);
        let code = loop {
            let code = client.heartbeat(group, generation, &joined.member_id, None);
            if !COORDINATOR_RETRIABLE.contains(&code) || Instant::now() > deadline {
                break code;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            code, NONE,
            "heartbeat at generation {generation} after the move"
        );
        let (code, again) = client.sync(group, generation, &joined.member_id, None, &[]);
        assert_eq!(code, NONE);
        assert_eq!(&again, assignment, "the assignment survived the move");
        let code = client.commit(group, generation, &joined.member_id, None, "moves", 0, 7);
        assert_eq!(code, NONE, "a commit at the same generation is accepted");
    }
}

#[test]
fn bad_group_requests_get_kafkas_error_codes() {
    let cluster = ProcessCluster::start(
        Layout::Combined,
        &["group.max.size=2", "group.initial.rebalance.delay.ms=0"],
    );
    cluster.create_topic("errors", 1);
    let group = "error-codes";
    let (_, address) = coordinator(&cluster, group, &[1, 2, 3]);
    let mut a = GroupClient::connect(&address);

    // KIP-394: a first join without a member id is handed one
    let first = a.join(group, "", None, "consumer", "range", 10_000);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert!(!first.member_id.is_empty());
    // a session timeout outside group.min/max.session.timeout.ms
    let bad = a.join(group, "", None, "consumer", "range", 1);
    assert_eq!(bad.error_code, INVALID_SESSION_TIMEOUT);

    let ja = a.join(group, &first.member_id, None, "consumer", "range", 10_000);
    assert_eq!(ja.error_code, NONE, "{ja:?}");
    let member = ja.member_id.clone();
    let (code, _) = a.sync(
        group,
        ja.generation,
        &member,
        None,
        &[(member.clone(), vec![1])],
    );
    assert_eq!(code, NONE);

    assert_eq!(
        a.heartbeat(group, ja.generation, "nobody", None),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        a.heartbeat(group, ja.generation + 1, &member, None),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        a.commit(group, ja.generation + 1, &member, None, "errors", 0, 1),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        a.commit(group, ja.generation, &member, None, "no-such-topic", 0, 1),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    // a member of another protocol type cannot join
    let mut other = GroupClient::connect(&address);
    let connect = other.join(group, "", None, "connect", "range", 10_000);
    assert_eq!(connect.error_code, INCONSISTENT_GROUP_PROTOCOL);

    // a second member joins: the first hears of the rebalance from its heartbeat
    let joining = {
        let address = address.clone();
        std::thread::spawn(move || GroupClient::connect(&address).join_new(group, None))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let code = a.heartbeat(group, ja.generation, &member, None);
        if code == REBALANCE_IN_PROGRESS {
            break;
        }
        assert_eq!(code, NONE);
        assert!(Instant::now() < deadline, "no rebalance started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rejoined = a.join(group, &member, None, "consumer", "range", 10_000);
    assert_eq!(rejoined.error_code, NONE);
    let jb = joining.join().expect("joining member");
    assert_eq!(jb.error_code, NONE);
    assert_eq!(jb.generation, rejoined.generation);
    // group.max.size=2: a third is refused
    let mut third = GroupClient::connect(&address);
    let full = third.join(group, "", None, "consumer", "range", 10_000);
    assert_eq!(full.error_code, GROUP_MAX_SIZE_REACHED);

    // DeleteGroups: refused while the group has members, unknown groups are not found;
    // once everyone left, the group and its offsets go
    assert_eq!(a.delete_group(group), NON_EMPTY_GROUP);
    let (_, elsewhere) = coordinator(&cluster, "never-existed", &[1, 2, 3]);
    assert_eq!(
        GroupClient::connect(&elsewhere).delete_group("never-existed"),
        GROUP_ID_NOT_FOUND
    );
    let assignments = [(member.clone(), vec![1]), (jb.member_id.clone(), vec![2])];
    let mut leader = GroupClient::connect(&address);
    let (code, _) = leader.sync(
        group,
        rejoined.generation,
        &rejoined.leader,
        None,
        &assignments,
    );
    assert_eq!(code, NONE);
    let code = a.commit(group, rejoined.generation, &member, None, "errors", 0, 3);
    assert_eq!(code, NONE);
    assert_eq!(a.leave(group, &member, None), (NONE, NONE));
    let mut b = GroupClient::connect(&address);
    assert_eq!(b.leave(group, &jb.member_id, None), (NONE, NONE));
    assert_eq!(a.delete_group(group), NONE);
    assert_eq!(
        a.delete_group(group),
        GROUP_ID_NOT_FOUND,
        "deleted with its offsets"
    );

    // a static member restarts: the new incarnation takes over, the old one is fenced
    let static_group = "static-members";
    let (_, address) = coordinator(&cluster, static_group, &[1, 2, 3]);
    let mut before = GroupClient::connect(&address);
    let j1 = before.join_new(static_group, Some("instance-1"));
    assert_eq!(j1.error_code, NONE);
    let assignment = vec![(j1.member_id.clone(), b"p0".to_vec())];
    let (code, _) = before.sync(
        static_group,
        j1.generation,
        &j1.member_id,
        Some("instance-1"),
        &assignment,
    );
    assert_eq!(code, NONE);
    let mut after = GroupClient::connect(&address);
    let j2 = after.join_new(static_group, Some("instance-1"));
    assert_eq!(j2.error_code, NONE);
    assert_ne!(j2.member_id, j1.member_id);
    assert_eq!(
        j2.generation, j1.generation,
        "no rebalance for a static restart"
    );
    let (code, got) = after.sync(
        static_group,
        j2.generation,
        &j2.member_id,
        Some("instance-1"),
        &[],
    );
    assert_eq!((code, got), (NONE, b"p0".to_vec()));
    assert_eq!(
        before.heartbeat(
            static_group,
            j1.generation,
            &j1.member_id,
            Some("instance-1")
        ),
        FENCED_INSTANCE_ID
    );

    // OffsetDelete: a member subscribed to the topic keeps its offsets; once the group is
    // empty they can go, and then the group has no trace left
    let offsets_group = "offsets-deleted";
    let (_, address) = coordinator(&cluster, offsets_group, &[1, 2, 3]);
    let mut consumer = GroupClient::connect(&address);
    let joined = consumer.join_subscribed(offsets_group, &["errors"]);
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    let assignment = vec![(joined.member_id.clone(), Vec::new())];
    let (code, _) = consumer.sync(
        offsets_group,
        joined.generation,
        &joined.member_id,
        None,
        &assignment,
    );
    assert_eq!(code, NONE);
    let code = consumer.commit(
        offsets_group,
        joined.generation,
        &joined.member_id,
        None,
        "errors",
        0,
        4,
    );
    assert_eq!(code, NONE);
    assert_eq!(
        consumer.delete_offset(offsets_group, "errors", 0),
        (NONE, GROUP_SUBSCRIBED_TO_TOPIC)
    );
    assert_eq!(
        consumer.delete_offset(offsets_group, "no-such-topic", 0),
        (NONE, UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(
        consumer.leave(offsets_group, &joined.member_id, None),
        (NONE, NONE)
    );
    assert_eq!(
        consumer.delete_offset(offsets_group, "errors", 0),
        (NONE, NONE)
    );
    assert_eq!(
        consumer.delete_group(offsets_group),
        NONE,
        "the emptied group's stored state is still there to delete"
    );
    assert_eq!(
        consumer.delete_offset(offsets_group, "errors", 0).0,
        GROUP_ID_NOT_FOUND
    );
}
