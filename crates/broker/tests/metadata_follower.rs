//! A broker following the controller quorum over gRPC: it registers, is unfenced by its
//! heartbeats, and its own image tracks the controllers' — also after the controller it
//! watched is stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_broker::controller_lease::ControllerLease;
use sluice_broker::{MetadataFollower, MetadataFollowerConfig};
use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::controller_client::ControllerClient;

const WAIT: Duration = Duration::from_secs(20);

async fn quorum(
    n: u64,
) -> (
    Vec<tempfile::TempDir>,
    BTreeMap<u64, String>,
    BTreeMap<u64, ControllerNode>,
) {
    let mut listeners = BTreeMap::new();
    for id in 1..=n {
        listeners.insert(
            id,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
    }
    let voters: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let mut c = ControllerConfig::new(id, voters.clone(), dirs[id as usize - 1].path().into());
        c.election_timeout_ms = 300;
        c.raft_heartbeat_interval_ms = 50;
        c.broker_heartbeat_interval_ms = 100;
        c.broker_session_timeout_ms = 60_000;
        nodes.insert(id, ControllerNode::start(c, listener).await.unwrap());
    }
    (dirs, voters, nodes)
}

fn follower_config(broker_id: i32, controllers: Vec<String>) -> MetadataFollowerConfig {
    MetadataFollowerConfig {
        broker_id,
        incarnation_id: format!("b{broker_id}"),
        endpoints: vec![],
        rack: None,
        controllers,
        heartbeat_interval_ms: 100,
    }
}

async fn create_topic(address: &str, name: &str) {
    let mut client = ControllerClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let r = client
        .create_topics(api::CreateTopicsRequest {
            topics: vec![api::TopicSpec {
                name: name.into(),
                num_partitions: 3,
                replication_factor: 1,
                configs: BTreeMap::new(),
            }],
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.topics[0].error_code, 0, "{}", r.topics[0].error_message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_quorum_is_followed() {
    let (_dirs, voters, nodes) = quorum(1).await;
    let lease = std::sync::Arc::new(ControllerLease::default());
    let follower = MetadataFollower::start(
        follower_config(1, voters.values().cloned().collect()),
        Default::default(),
        Default::default(),
        std::sync::Arc::clone(&lease),
    );
    assert!(!lease.is_held(), "no lease before a controller answers");
    assert!(
        follower
            .wait_until(WAIT, |i| i.broker(1).is_some_and(|b| !b.fenced))
            .await,
        "broker never unfenced"
    );
    // the unfencing answer (or the next heartbeat's) grants the controller lease
    let deadline = std::time::Instant::now() + WAIT;
    while !lease.is_held() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        lease.is_held(),
        "an unfenced broker holds the controller lease"
    );
    assert!(follower.broker_epoch() > 0);
    create_topic(&voters[&1], "orders").await;
    assert!(
        follower
            .wait_until(WAIT, |i| i.topic("orders").is_some())
            .await
    );
    let mine = follower.with_image(|i| i.to_proto().topics);
    let theirs = nodes[&1].image().to_proto().topics;
    assert_eq!(mine, theirs);
    follower.stop();
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_moves_on_when_its_controller_stops() {
    let (_dirs, voters, mut nodes) = quorum(3).await;
    // the follower lists node 1 first: it watches node 1
    let follower = MetadataFollower::start(
        follower_config(5, voters.values().cloned().collect()),
        Default::default(),
        Default::default(),
        Default::default(),
    );
    assert!(
        follower
            .wait_until(WAIT, |i| i.broker(5).is_some_and(|b| !b.fenced))
            .await
    );
    create_topic(&voters[&2], "before").await;
    assert!(
        follower
            .wait_until(WAIT, |i| i.topic("before").is_some())
            .await
    );
    nodes.remove(&1).unwrap().shutdown().await;
    // a write through a survivor (retried while the quorum elects) reaches the follower
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut client = ControllerClient::connect(format!("http://{}", voters[&2]))
            .await
            .unwrap();
        let r = client
            .create_topics(api::CreateTopicsRequest {
                topics: vec![api::TopicSpec {
                    name: "after".into(),
                    num_partitions: 1,
                    replication_factor: 1,
                    configs: BTreeMap::new(),
                }],
                validate_only: false,
            })
            .await;
        if matches!(&r, Ok(r) if r.get_ref().topics[0].error_code == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no commit after the stop: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        follower
            .wait_until(WAIT, |i| i.topic("after").is_some())
            .await
    );
    follower.stop();
    for (_, n) in nodes {
        n.shutdown().await;
    }
}
