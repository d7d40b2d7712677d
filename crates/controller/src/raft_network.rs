//! Raft RPCs over gRPC: the client side (`RaftNetworkFactory` for openraft) and the server
//! side (the `Raft` service from `proto/raft.proto`). Payloads are openraft's serde types
//! as JSON in a `bytes` field; the server answers `Result<response, RaftError>` as JSON so
//! a remote Raft error reaches the caller's openraft as a `RemoteError`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::raft_types::{Node, NodeId, Raft, TypeConfig};

/// Largest gRPC message between controllers (Raft RPCs, forwarded calls, metadata
/// images): far above any entry `propose` accepts, so size never stalls replication.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Generated from `proto/raft.proto`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("sluice.raft.v1");
}

use pb::raft_client::RaftClient;
use pb::RaftMessage;

/// Creates one lazily connected gRPC client per peer.
#[derive(Clone, Default)]
pub struct GrpcNetworkFactory {
    reachability: Reachability,
}

/// Whether each peer answered its last Raft RPC, shared by every client of this node: the
/// log says once when a voter becomes unreachable and once when it is back (openraft's
/// own per-RPC errors are off by default, see the binary's log filter).
#[derive(Clone, Default)]
struct Reachability(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, bool>>>);

impl Reachability {
    fn record(&self, target: NodeId, address: &str, error: Option<&TransportError>) {
        let mut peers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let was = peers.insert(target, error.is_none());
        match (was, error) {
            (Some(true) | None, Some(e)) => {
                tracing::warn!(voter = target, address, error = %e, "controller voter unreachable");
            }
            (Some(false), None) => {
                tracing::info!(voter = target, address, "controller voter reachable again");
            }
            _ => {}
        }
    }
}

pub struct GrpcNetwork {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    address: String,
    reachability: Reachability,
}

/// A lazily connecting channel to `host:port`.
pub fn channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        GrpcNetwork {
            target,
            client: channel(&node.addr).ok().map(|c| {
                RaftClient::new(c)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }),
            address: node.addr.clone(),
            reachability: self.reachability.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl GrpcNetwork {
    async fn call<Req, Resp, E>(
        &mut self,
        method: RaftMethod,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = TransportError(format!("bad peer address {:?}", self.address));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = tonic::Request::new(RaftMessage { payload });
        req.set_timeout(option.hard_ttl());
        let reply = match method {
            RaftMethod::AppendEntries => client.append_entries(req).await,
            RaftMethod::Vote => client.vote(req).await,
            RaftMethod::InstallSnapshot => client.install_snapshot(req).await,
        };
        let reply = match reply {
            Ok(r) => {
                self.reachability.record(self.target, &self.address, None);
                r.into_inner()
            }
            Err(status) => {
                let e = TransportError(format!("{}: {}", status.code(), status.message()));
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                ) {
                    self.reachability
                        .record(self.target, &self.address, Some(&e));
                }
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum RaftMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RaftMethod::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RaftMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RaftMethod::Vote, &rpc, &option).await
    }
}

/// The server side: hands each decoded request to the local Raft node.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    req: tonic::Request<RaftMessage>,
) -> Result<T, tonic::Status> {
    serde_json::from_slice(&req.into_inner().payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    serde_json::to_vec(value)
        .map(|payload| tonic::Response::new(RaftMessage { payload }))
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
