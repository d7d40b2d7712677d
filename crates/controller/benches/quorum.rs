//! Controller quorum benchmarks, three nodes in one process on loopback gRPC:
//! - `commit/*`: metadata commits (CommitOffsets through the leader's API: Raft append,
//!   fsync on a majority, apply), one at a time and 32 in flight; the baseline is one
//!   4 KiB append + `fdatasync` to a file in the same directory tree, the floor of any
//!   durable commit on this disk.
//! - `failover/*`: the Raft leader is stopped; time until a write commits on the new leader,
//!   for two election timeouts.
//!
//! Run: `cargo bench -p sluice-controller --bench quorum`

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_controller::{ControllerConfig, ControllerNode};
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::metadata as pb;
use tonic::transport::Channel;

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    addresses: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, ControllerNode>,
}

async fn start(election_timeout_ms: u64) -> Cluster {
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(
            id,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
    }
    let addresses: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let mut c =
            ControllerConfig::new(id, addresses.clone(), dirs[id as usize - 1].path().into());
        c.election_timeout_ms = election_timeout_ms;
        c.raft_heartbeat_interval_ms = (election_timeout_ms / 5).max(10);
        nodes.insert(id, ControllerNode::start(c, listener).await.unwrap());
    }
    Cluster {
        _dirs: dirs,
        addresses,
        nodes,
    }
}

impl Cluster {
    async fn leader(&self) -> u64 {
        loop {
            if let Some(n) = self.nodes.values().find(|n| n.is_leader()) {
                return n.node_id();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn client(&self, id: u64) -> ControllerClient<Channel> {
        ControllerClient::connect(format!("http://{}", self.addresses[&id]))
            .await
            .unwrap()
    }

    async fn stop_all(self) {
        for (_, n) in self.nodes {
            n.shutdown().await;
        }
    }
}

fn commit_request(i: u64) -> api::CommitOffsetsRequest {
    api::CommitOffsetsRequest {
        offsets: vec![pb::CommittedOffset {
            group: "bench".into(),
            topic: "t".into(),
            partition: (i % 16) as i32,
            offset: i as i64,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: 1,
        }],
        commits: Vec::new(),
    }
}

fn bench_commits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime.block_on(start(1000));
    let leader = runtime.block_on(cluster.leader());
    let client = runtime.block_on(cluster.client(leader));

    let mut group = c.benchmark_group("commit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));

    let dir = tempfile::tempdir().unwrap();
    group.bench_function("baseline_append_4KiB_fdatasync", |b| {
        let mut file = std::fs::File::create(dir.path().join("baseline")).unwrap();
        let block = vec![7u8; 4096];
        b.iter(|| {
            file.write_all(&block).unwrap();
            file.sync_data().unwrap();
        })
    });
    group.bench_function("sequential", |b| {
        let mut i = 0u64;
        b.to_async(&runtime).iter(|| {
            i += 1;
            let mut client = client.clone();
            async move {
                client.commit_offsets(commit_request(i)).await.unwrap();
            }
        })
    });
    const IN_FLIGHT: u64 = 32;
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.bench_function(BenchmarkId::new("concurrent", IN_FLIGHT), |b| {
        b.to_async(&runtime).iter(|| {
            let client = client.clone();
            async move {
                let calls = (0..IN_FLIGHT).map(|i| {
                    let mut client = client.clone();
                    async move { client.commit_offsets(commit_request(i)).await.unwrap() }
                });
                futures::future::join_all(calls).await;
            }
        })
    });
    group.finish();
    runtime.block_on(cluster.stop_all());
}

fn bench_failover(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("failover");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    for election_timeout_ms in [300u64, 1000] {
        group.bench_function(
            BenchmarkId::new(
                "leader_stop_to_next_commit_election_ms",
                election_timeout_ms,
            ),
            |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let mut cluster = start(election_timeout_ms).await;
                            let leader = cluster.leader().await;
                            let others: Vec<u64> = cluster
                                .nodes
                                .keys()
                                .copied()
                                .filter(|id| *id != leader)
                                .collect();
                            let mut clients = Vec::new();
                            for id in &others {
                                clients.push(cluster.client(*id).await);
                            }
                            clients[0].commit_offsets(commit_request(0)).await.unwrap();
                            let stopped = cluster.nodes.remove(&leader).unwrap();
                            let start = Instant::now();
                            stopped.shutdown().await;
                            // retry through a survivor until a write commits
                            let mut i = 1;
                            loop {
                                let mut client = clients[i % clients.len()].clone();
                                let call = client.commit_offsets(commit_request(i as u64));
                                if let Ok(Ok(_)) =
                                    tokio::time::timeout(Duration::from_secs(5), call).await
                                {
                                    break;
                                }
                                i += 1;
                            }
                            total += start.elapsed();
                            cluster.stop_all().await;
                        }
                        total
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_commits, bench_failover);
criterion_main!(benches);
