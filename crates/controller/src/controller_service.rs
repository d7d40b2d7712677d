//! The Controller gRPC API (`proto/controller.proto`). Any controller accepts any call:
//! writes, heartbeats and offset reads are forwarded whole to the Raft leader, which
//! validates them against its image and commits records; `DescribeCluster` and
//! `WatchMetadata` are served from the local image and log.
//!
//! Validation here is a first check; the authoritative one happens when the record is
//! applied (`MetadataImage::apply`), so a request racing another still cannot, say, create a
//! topic twice or overwrite a newer partition state.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::alive_ping::Sender as AliveSender;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{
    ApplyOutcome, MetadataImage, Partition, Record, Topic, NO_LEADER, WATCH_KEEPALIVE,
};
use tonic::{Request, Response, Status};

use crate::controller_node::Core;
use crate::error::ControllerError;
use crate::placement::assign_replicas;
use crate::raft_network::channel;

pub struct ControllerService {
    core: Arc<Core>,
    /// One lazily connected channel per peer, reused by every forwarded call.
    peers: std::sync::Mutex<std::collections::BTreeMap<u64, tonic::transport::Channel>>,
}

impl ControllerService {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        ControllerService {
            core,
            peers: Default::default(),
        }
    }

    fn peer_channel(&self, id: u64, address: &str) -> Result<tonic::transport::Channel, Status> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(&id) {
            return Ok(c.clone());
        }
        let c = channel(address).map_err(|e| Status::unavailable(e.to_string()))?;
        peers.insert(id, c.clone());
        Ok(c)
    }

    /// `None` when this node leads; otherwise a client for the leader. Waits up to two
    /// election timeouts for a leader to be known.
    async fn leader_client(
        &self,
    ) -> Result<Option<ControllerClient<tonic::transport::Channel>>, Status> {
        let deadline =
            Instant::now() + Duration::from_millis(self.core.config.election_timeout_ms * 4);
        loop {
            if self.core.is_leader() {
                return Ok(None);
            }
            let leader = self.core.current_leader();
            if let Some(id) = leader.filter(|id| *id != self.core.config.node_id) {
                let Some(address) = self.core.config.voters.get(&id) else {
                    return Err(Status::unavailable(format!(
                        "leader {id} is not a known voter"
                    )));
                };
                return Ok(Some(ControllerClient::new(self.peer_channel(id, address)?)));
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable("no controller leader is known; retry"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Maps a failed proposal to a gRPC status the caller retries on.
fn status(e: ControllerError) -> Status {
    match e {
        ControllerError::NotController => Status::unavailable("leadership moved; retry"),
        ControllerError::Timeout(m) => Status::deadline_exceeded(m),
        other => Status::internal(other.to_string()),
    }
}

/// Forwards the call to the leader when this node does not lead.
macro_rules! forward {
    ($self:ident, $method:ident, $request:ident) => {
        if let Some(mut leader) = $self.leader_client().await? {
            return leader.$method($request.into_inner()).await;
        }
    };
}

fn topic_result(name: &str, code: i16, message: impl Into<String>) -> api::TopicResult {
    api::TopicResult {
        name: name.to_string(),
        error_code: i32::from(code),
        error_message: message.into(),
        ..Default::default()
    }
}

fn new_topic_id() -> Vec<u8> {
    uuid::Uuid::new_v4().as_bytes().to_vec()
}

fn fill_outcomes(results: &mut [api::TopicResult], slots: &[usize], outcomes: &[ApplyOutcome]) {
    for (slot, outcome) in slots.iter().zip(outcomes) {
        if !outcome.is_ok() {
            results[*slot].error_code = i32::from(outcome.error_code);
            results[*slot].error_message = outcome.message.clone();
        }
    }
}

/// One result per wanted (topic, partition), and the records of the elections to make (in
/// the order of the results with error code 0).
fn elections(
    image: &MetadataImage,
    wanted: &[(String, i32)],
    unclean: bool,
) -> (Vec<api::ElectionResult>, Vec<Record>) {
    use crate::partition_election::{elect_preferred, elect_unclean, ElectionRefusal};
    let mut results = Vec::new();
    let mut records = Vec::new();
    for (topic_name, partition) in wanted {
        let mut result = api::ElectionResult {
            topic: topic_name.clone(),
            partition: *partition,
            leader: -1,
            ..Default::default()
        };
        let found = image
            .topic(topic_name)
            .and_then(|t| Some((t, image.partition(topic_name, *partition)?)));
        let Some((topic, p)) = found else {
            result.error_code = i32::from(ec::UNKNOWN_TOPIC_OR_PARTITION);
            result.error_message = format!("{topic_name}-{partition} does not exist");
            results.push(result);
            continue;
        };
        let elected = if unclean {
            elect_unclean(image, topic, p)
        } else {
            elect_preferred(image, topic, p)
        };
        match elected {
            Ok(record) => {
                if let Record::PartitionChange(change) = &record {
                    result.leader = change.partition.as_ref().map_or(-1, |p| p.leader);
                }
                records.push(record);
            }
            Err(refusal) => {
                let (code, message) = match refusal {
                    ElectionRefusal::NotNeeded => (
                        ec::ELECTION_NOT_NEEDED,
                        "leader is already the one this election would choose",
                    ),
                    ElectionRefusal::PreferredNotAvailable => (
                        ec::PREFERRED_LEADER_NOT_AVAILABLE,
                        "the preferred replica is not live, in the ISR and healthy",
                    ),
                    ElectionRefusal::NoEligibleLeader => (
                        ec::ELIGIBLE_LEADERS_NOT_AVAILABLE,
                        "no live replica can lead",
                    ),
                };
                result.error_code = i32::from(code);
                result.error_message = message.to_string();
                result.leader = p.leader;
            }
        }
        results.push(result);
    }
    (results, records)
}

/// Producer ids per block (Kafka's `ProducerIdsBlock` size).
const PRODUCER_ID_BLOCK_SIZE: i32 = 1000;
const PRODUCER_ID_BLOCK_ATTEMPTS: usize = 5;

type EventStream = Pin<Box<dyn Stream<Item = Result<api::MetadataEvent, Status>> + Send>>;

#[tonic::async_trait]
impl api::controller_server::Controller for ControllerService {
    async fn register_broker(
        &self,
        request: Request<api::RegisterBrokerRequest>,
    ) -> Result<Response<api::RegisterBrokerResponse>, Status> {
        forward!(self, register_broker, request);
        let r = request.into_inner();
        if r.broker_id < 0 {
            return Ok(Response::new(api::RegisterBrokerResponse {
                error_code: i32::from(ec::INVALID_REQUEST),
                error_message: format!("broker id {} must not be negative", r.broker_id),
                broker_epoch: -1,
            }));
        }
        let record = Record::RegisterBroker(pb::RegisterBroker {
            broker_id: r.broker_id,
            incarnation_id: r.incarnation_id.clone(),
            endpoints: r.endpoints,
            rack: r.rack,
        });
        // a new incarnation (a restarted process, which may have lost unflushed data)
        // starts fenced: in the same entry it leaves every ISR and its leaderships move
        let new_incarnation = self.core.state_machine.with_image(|image| {
            image
                .broker(r.broker_id)
                .is_some_and(|b| b.incarnation_id != r.incarnation_id)
        });
        let outcomes = if new_incarnation {
            let key = (r.broker_id, r.incarnation_id.clone());
            let first = self.core.lock_registrations_in_flight().insert(key.clone());
            if !first {
                // the same process asked again before the first answer came: that one
                // fences the old incarnation; this one retries once it has committed
                return Ok(Response::new(api::RegisterBrokerResponse {
                    error_code: i32::from(ec::REQUEST_TIMED_OUT),
                    error_message: "a registration of this incarnation is being committed: retry"
                        .into(),
                    broker_epoch: -1,
                }));
            }
            let records = self.core.fencing(record, r.broker_id);
            // committed to the end even when the caller gives up waiting (the entry is
            // proposed either way): only then may a retry propose again
            let core = Arc::clone(&self.core);
            tokio::spawn(async move {
                let outcomes = core.propose(records).await;
                core.lock_registrations_in_flight().remove(&key);
                outcomes
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?
        } else {
            self.core.propose(vec![record]).await.map_err(status)?
        };
        let epoch = self
            .core
            .state_machine
            .with_image(|i| i.broker(r.broker_id).map_or(-1, |b| b.broker_epoch));
        self.core
            .lock_failure_detector()
            .heartbeat(r.broker_id, Instant::now());
        let outcome = outcomes.into_iter().next().unwrap_or_else(ApplyOutcome::ok);
        Ok(Response::new(api::RegisterBrokerResponse {
            error_code: i32::from(outcome.error_code),
            error_message: outcome.message,
            broker_epoch: epoch,
        }))
    }

    async fn broker_heartbeat(
        &self,
        request: Request<api::BrokerHeartbeatRequest>,
    ) -> Result<Response<api::BrokerHeartbeatResponse>, Status> {
        forward!(self, broker_heartbeat, request);
        let r = request.into_inner();
        // heartbeats are forwarded to the Raft leader: this node answers as the active one
        let controller_id = self.core.config.node_id as i32;
        let session_timeout_ms = self.core.config.broker_session_timeout_ms;
        let controller_address = self
            .core
            .config
            .voters
            .get(&self.core.config.node_id)
            .cloned()
            .unwrap_or_default();
        let state_machine = &self.core.state_machine;
        let reply = |code: i16, message: String, fenced: bool| {
            // read as the answer is made: every path below reads the image first
            let metadata_index = state_machine.with_image(|i| i.applied_index());
            Ok(Response::new(api::BrokerHeartbeatResponse {
                metadata_index,
                error_code: i32::from(code),
                error_message: message,
                fenced,
                controller_id,
                session_timeout_ms,
                controller_address: controller_address.clone(),
            }))
        };
        let broker = self
            .core
            .state_machine
            .with_image(|i| i.broker(r.broker_id).cloned());
        let Some(broker) = broker else {
            return reply(
                ec::BROKER_ID_NOT_REGISTERED,
                format!("broker {} is not registered", r.broker_id),
                true,
            );
        };
        if broker.broker_epoch != r.broker_epoch {
            return reply(
                ec::STALE_BROKER_EPOCH,
                format!(
                    "broker {} epoch is {}, not {}",
                    r.broker_id, broker.broker_epoch, r.broker_epoch
                ),
                true,
            );
        }
        let newest = {
            let mut fd = self.core.lock_failure_detector();
            fd.heartbeat(r.broker_id, Instant::now());
            fd.is_newest_heartbeat(r.broker_id, r.broker_epoch, r.sequence)
        };
        if !newest {
            // a late copy (several heartbeats are in flight): what it says (shutdown
            // wanted or not, the log directory, offline replicas) is older than what a
            // newer one said, so nothing is done with it
            return reply(
                ec::REQUEST_TIMED_OUT,
                "a newer heartbeat was handled".into(),
                broker.fenced,
            );
        }
        // replicas whose log the broker cannot open leave their ISRs and leaderships (and
        // come back once it can); the heartbeat carries the whole set. A fenced broker's
        // report only adds: a restarted one reports nothing until it has tried its logs
        let reported: Vec<(Vec<u8>, i32)> = r
            .offline_replicas
            .iter()
            .map(|o| (o.topic_id.clone(), o.partition))
            .collect();
        let unclean = self.core.config.unclean_leader_election_enable;
        let changes = self.core.state_machine.with_image(|image| {
            let key = (image.applied_index(), reported.clone(), !broker.fenced);
            self.core.scans.offline_replicas(r.broker_id, key, || {
                crate::partition_election::on_offline_replicas(
                    image,
                    r.broker_id,
                    &reported,
                    !broker.fenced,
                    unclean,
                )
            })
        });
        if !changes.is_empty() {
            tracing::info!(
                broker_id = r.broker_id,
                changes = changes.len(),
                offline = reported.len(),
                "offline replicas changed"
            );
            // a failure here must not fail the heartbeat: the next one proposes again
            match self.core.propose(changes).await {
                Ok(outcomes) => {
                    if let Some(o) = outcomes.iter().find(|o| !o.is_ok()) {
                        tracing::debug!(error = %o.message, "an offline-replica change was refused");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "offline-replica changes not committed"),
            }
        }
        // controlled shutdown: fence now (leaderships move to other ISR members and the
        // broker leaves every ISR, in one entry); never unfence again in this incarnation.
        // An offline log directory: the same, until a heartbeat says it is back
        if r.want_shut_down || r.log_dir_offline {
            if !broker.fenced {
                let why = if r.want_shut_down {
                    "controlled shutdown"
                } else {
                    "its log directory is offline"
                };
                tracing::info!(broker_id = r.broker_id, "{why}: fencing");
                let fence = Record::FenceBroker(pb::FenceBroker {
                    broker_id: r.broker_id,
                    broker_epoch: r.broker_epoch,
                });
                let records = self.core.fencing(fence, r.broker_id);
                let outcomes = self.core.propose(records).await.map_err(status)?;
                if let Some(o) = outcomes.first().filter(|o| !o.is_ok()) {
                    return reply(o.error_code, o.message.clone(), false);
                }
            }
            return reply(ec::NONE, String::new(), true);
        }
        // a fenced broker is unfenced once it has caught up with its own registration
        if broker.fenced && r.metadata_index >= broker.broker_epoch as u64 {
            let unfence = Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: r.broker_id,
                broker_epoch: r.broker_epoch,
            });
            let unclean = self.core.config.unclean_leader_election_enable;
            let records = self.core.with_consequences(unfence, |after| {
                crate::partition_election::on_broker_unfenced(after, unclean)
            });
            let outcomes = self.core.propose(records).await.map_err(status)?;
            if let Some(o) = outcomes.first().filter(|o| !o.is_ok()) {
                return reply(o.error_code, o.message.clone(), true);
            }
            return reply(ec::NONE, String::new(), false);
        }
        // answering "you are not fenced" is only true if this node still leads: a leader
        // cut off from the quorum cannot know the others fenced the broker meanwhile
        let timeout = Duration::from_millis(self.core.config.election_timeout_ms * 2);
        match tokio::time::timeout(timeout, self.core.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                // as of now, not as of the start of this call: a fence may have been
                // applied meanwhile, or be under way (decided, not yet committed). "Not
                // fenced" renews the broker's controller lease
                let fenced = self
                    .core
                    .state_machine
                    .with_image(|i| i.broker(r.broker_id).is_none_or(|b| b.fenced))
                    || self
                        .core
                        .lock_failure_detector()
                        .is_being_fenced(r.broker_id);
                reply(ec::NONE, String::new(), fenced)
            }
            _ => Err(Status::unavailable(
                "this controller cannot confirm its leadership; retry",
            )),
        }
    }

    /// Recorded here whether or not this node leads (never forwarded): see
    /// [`crate::failure_detector`]. Answered only when the stream ends or this node stops.
    async fn alive(
        &self,
        request: Request<tonic::Streaming<api::AlivePing>>,
    ) -> Result<Response<api::AliveResponse>, Status> {
        let mut pings = request.into_inner();
        let mut stopping = self.core.stopping.clone();
        // the sender and this stream's id, from its first ping
        let mut opened: Option<(AliveSender, u64)> = None;
        loop {
            let ping = tokio::select! {
                ping = pings.message() => ping,
                // the node is stopping: end the stream, which says nothing of the sender
                _ = stopping.wait_for(|s| *s) => return Ok(Response::new(api::AliveResponse {})),
            };
            // an error is a broken connection: the same as an end
            let Ok(Some(api::AlivePing {
                sender: Some(sender),
            })) = ping
            else {
                break;
            };
            let now = Instant::now();
            match opened {
                Some(_) => self.core.alive_ping(sender, now),
                None => opened = Some((sender, self.core.alive_stream_opened(sender, now))),
            }
        }
        if let Some((sender, stream_id)) = opened {
            crate::controller_node::alive_stream_ended(&self.core, sender, stream_id);
        }
        Ok(Response::new(api::AliveResponse {}))
    }

    async fn create_topics(
        &self,
        request: Request<api::CreateTopicsRequest>,
    ) -> Result<Response<api::CreateTopicsResponse>, Status> {
        forward!(self, create_topics, request);
        let r = request.into_inner();
        let image = self.core.image();
        let live = image.live_broker_ids();
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut slots = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, spec) in r.topics.iter().enumerate() {
            let name = spec.name.as_str();
            if let Err(m) = sluice_metadata::topic_name::validate(name) {
                results.push(topic_result(name, ec::INVALID_TOPIC_EXCEPTION, m));
                continue;
            }
            if !seen.insert(name) {
                results.push(topic_result(
                    name,
                    ec::INVALID_REQUEST,
                    "Duplicate topic in request.",
                ));
                continue;
            }
            if image.topic(name).is_some() {
                results.push(topic_result(
                    name,
                    ec::TOPIC_ALREADY_EXISTS,
                    format!("Topic '{name}' already exists."),
                ));
                continue;
            }
            let partitions = if spec.num_partitions == -1 {
                self.core.config.num_partitions
            } else {
                spec.num_partitions
            };
            let replication_factor = if spec.replication_factor == -1 {
                self.core.config.default_replication_factor
            } else {
                spec.replication_factor
            };
            let assignment = match assign_replicas(
                &live,
                partitions,
                replication_factor,
                0,
                image.topics().count() + i,
            ) {
                Ok(a) => a,
                Err(e) => {
                    results.push(topic_result(name, e.error_code(), e.to_string()));
                    continue;
                }
            };
            let topic = Topic {
                name: name.to_string(),
                topic_id: new_topic_id(),
                configs: spec.configs.clone(),
                partitions: assignment
                    .into_iter()
                    .enumerate()
                    .map(|(p, replicas)| Partition {
                        partition: p as i32,
                        leader: replicas[0],
                        isr: replicas.clone(),
                        replicas,
                        leader_epoch: 0,
                        partition_epoch: 0,
                        offline_replicas: Vec::new(),
                    })
                    .collect(),
            };
            results.push(api::TopicResult {
                name: name.to_string(),
                error_code: 0,
                error_message: String::new(),
                topic_id: topic.topic_id.clone(),
                num_partitions: partitions,
                replication_factor,
            });
            slots.push(results.len() - 1);
            records.push(Record::CreateTopic(pb::CreateTopic { topic: Some(topic) }));
        }
        if !r.validate_only && !records.is_empty() {
            let outcomes = self.core.propose(records).await.map_err(status)?;
            fill_outcomes(&mut results, &slots, &outcomes);
        }
        Ok(Response::new(api::CreateTopicsResponse { topics: results }))
    }

    async fn delete_topics(
        &self,
        request: Request<api::DeleteTopicsRequest>,
    ) -> Result<Response<api::DeleteTopicsResponse>, Status> {
        forward!(self, delete_topics, request);
        let r = request.into_inner();
        let image = self.core.image();
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut slots = Vec::new();
        for name in &r.names {
            match image.topic(name) {
                None => results.push(topic_result(
                    name,
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    "This server does not host this topic-partition.",
                )),
                Some(t) => {
                    results.push(api::TopicResult {
                        topic_id: t.topic_id.clone(),
                        ..topic_result(name, ec::NONE, "")
                    });
                    slots.push(results.len() - 1);
                    records.push(Record::DeleteTopic(pb::DeleteTopic {
                        name: name.clone(),
                        topic_id: t.topic_id.clone(),
                    }));
                }
            }
        }
        if !records.is_empty() {
            let outcomes = self.core.propose(records).await.map_err(status)?;
            fill_outcomes(&mut results, &slots, &outcomes);
        }
        Ok(Response::new(api::DeleteTopicsResponse { topics: results }))
    }

    async fn create_partitions(
        &self,
        request: Request<api::CreatePartitionsRequest>,
    ) -> Result<Response<api::CreatePartitionsResponse>, Status> {
        forward!(self, create_partitions, request);
        let r = request.into_inner();
        let image = self.core.image();
        let live = image.live_broker_ids();
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut slots = Vec::new();
        for (i, spec) in r.topics.iter().enumerate() {
            let Some(topic) = image.topic(&spec.name) else {
                results.push(topic_result(
                    &spec.name,
                    ec::UNKNOWN_TOPIC_OR_PARTITION,
                    "This server does not host this topic-partition.",
                ));
                continue;
            };
            let current = topic.partitions.len() as i32;
            if spec.count <= current {
                results.push(topic_result(
                    &spec.name,
                    ec::INVALID_PARTITIONS,
                    format!(
                        "Topic currently has {current} partitions, which is higher than the requested {}.",
                        spec.count
                    ),
                ));
                continue;
            }
            let rf = topic.partitions[0].replicas.len() as i32;
            let assignment = match assign_replicas(
                &live,
                spec.count - current,
                rf,
                current,
                image.topics().count() + i,
            ) {
                Ok(a) => a,
                Err(e) => {
                    results.push(topic_result(&spec.name, e.error_code(), e.to_string()));
                    continue;
                }
            };
            results.push(api::TopicResult {
                topic_id: topic.topic_id.clone(),
                num_partitions: spec.count,
                replication_factor: rf,
                ..topic_result(&spec.name, ec::NONE, "")
            });
            slots.push(results.len() - 1);
            records.push(Record::AddPartitions(pb::AddPartitions {
                topic: spec.name.clone(),
                topic_id: topic.topic_id.clone(),
                expected_count: current,
                partitions: assignment
                    .into_iter()
                    .enumerate()
                    .map(|(k, replicas)| Partition {
                        partition: current + k as i32,
                        leader: replicas[0],
                        isr: replicas.clone(),
                        replicas,
                        leader_epoch: 0,
                        partition_epoch: 0,
                        offline_replicas: Vec::new(),
                    })
                    .collect(),
            }));
        }
        if !r.validate_only && !records.is_empty() {
            let outcomes = self.core.propose(records).await.map_err(status)?;
            fill_outcomes(&mut results, &slots, &outcomes);
        }
        Ok(Response::new(api::CreatePartitionsResponse {
            topics: results,
        }))
    }

    async fn alter_partition(
        &self,
        request: Request<api::AlterPartitionRequest>,
    ) -> Result<Response<api::AlterPartitionResponse>, Status> {
        forward!(self, alter_partition, request);
        let r = request.into_inner();
        let image = self.core.image();
        match image.broker(r.broker_id) {
            None => {
                return Ok(Response::new(api::AlterPartitionResponse {
                    error_code: i32::from(ec::BROKER_ID_NOT_REGISTERED),
                    partitions: Vec::new(),
                }))
            }
            Some(b) if b.broker_epoch != r.broker_epoch => {
                return Ok(Response::new(api::AlterPartitionResponse {
                    error_code: i32::from(ec::STALE_BROKER_EPOCH),
                    partitions: Vec::new(),
                }))
            }
            Some(_) => {}
        }
        let live = image.live_broker_ids();
        let mut results = Vec::new();
        let mut records = Vec::new();
        let mut slots = Vec::new();
        for item in &r.partitions {
            let (code, message, state) = check_alter(&image, &live, r.broker_id, item);
            let mut result = api::AlterPartitionResult {
                topic: item.topic.clone(),
                partition: item.partition,
                error_code: i32::from(code),
                error_message: message,
                state: state.clone(),
            };
            if let (ec::NONE, Some(next)) = (code, state) {
                let topic_id = image
                    .topic(&item.topic)
                    .map(|t| t.topic_id.clone())
                    .unwrap_or_default();
                result.state = Some(next.clone());
                slots.push(results.len());
                records.push(Record::PartitionChange(pb::PartitionChange {
                    topic: item.topic.clone(),
                    topic_id,
                    expected_partition_epoch: item.partition_epoch,
                    partition: Some(next),
                }));
            }
            results.push(result);
        }
        if !records.is_empty() {
            let outcomes = self.core.propose(records).await.map_err(status)?;
            let after = self.core.image();
            for (slot, outcome) in slots.iter().zip(outcomes) {
                let res = &mut results[*slot];
                if !outcome.is_ok() {
                    res.error_code = i32::from(outcome.error_code);
                    res.error_message = outcome.message;
                    res.state = after.partition(&res.topic, res.partition).cloned();
                }
            }
        }
        Ok(Response::new(api::AlterPartitionResponse {
            error_code: 0,
            partitions: results,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<api::CommitOffsetsRequest>,
    ) -> Result<Response<api::CommitOffsetsResponse>, Status> {
        forward!(self, commit_offsets, request);
        let mut r = request.into_inner();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let stamp = |offsets: &mut Vec<pb::CommittedOffset>| {
            for o in offsets.iter_mut() {
                if o.commit_timestamp_ms <= 0 {
                    o.commit_timestamp_ms = now_ms;
                }
            }
        };
        let mut records = Vec::new();
        for mut c in std::mem::take(&mut r.commits) {
            stamp(&mut c.offsets);
            records.push(Record::CommitOffsets(c));
        }
        let fenced_count = records.len();
        if !r.offsets.is_empty() {
            stamp(&mut r.offsets);
            records.push(Record::CommitOffsets(pb::CommitOffsets {
                offsets: r.offsets,
                ..Default::default()
            }));
        }
        if records.is_empty() {
            return Ok(Response::new(api::CommitOffsetsResponse::default()));
        }
        let outcomes = self.core.propose(records).await.map_err(status)?;
        let error_codes: Vec<i32> = outcomes
            .iter()
            .take(fenced_count)
            .map(|o| i32::from(o.error_code))
            .collect();
        // the unfenced record, if any, is the last
        let unfenced = outcomes
            .get(fenced_count)
            .cloned()
            .unwrap_or_else(ApplyOutcome::ok);
        Ok(Response::new(api::CommitOffsetsResponse {
            error_code: i32::from(unfenced.error_code),
            error_message: unfenced.message,
            error_codes,
        }))
    }

    async fn store_group(
        &self,
        request: Request<api::StoreGroupRequest>,
    ) -> Result<Response<api::StoreGroupResponse>, Status> {
        forward!(self, store_group, request);
        let r = request.into_inner();
        let outcomes = self
            .core
            .propose(vec![Record::StoreGroup(pb::StoreGroup { group: r.group })])
            .await
            .map_err(status)?;
        let o = outcomes.into_iter().next().unwrap_or_else(ApplyOutcome::ok);
        Ok(Response::new(api::StoreGroupResponse {
            error_code: i32::from(o.error_code),
            error_message: o.message,
        }))
    }

    async fn delete_groups(
        &self,
        request: Request<api::DeleteGroupsRequest>,
    ) -> Result<Response<api::DeleteGroupsResponse>, Status> {
        forward!(self, delete_groups, request);
        let r = request.into_inner();
        let outcomes = self
            .core
            .propose(vec![Record::DeleteGroups(pb::DeleteGroups {
                group_ids: r.group_ids,
            })])
            .await
            .map_err(status)?;
        let o = outcomes.into_iter().next().unwrap_or_else(ApplyOutcome::ok);
        Ok(Response::new(api::DeleteGroupsResponse {
            error_code: i32::from(o.error_code),
            error_message: o.message,
        }))
    }

    async fn delete_offsets(
        &self,
        request: Request<api::DeleteOffsetsRequest>,
    ) -> Result<Response<api::DeleteOffsetsResponse>, Status> {
        forward!(self, delete_offsets, request);
        let r = request.into_inner();
        let outcomes = self
            .core
            .propose(vec![Record::DeleteOffsets(pb::DeleteOffsets {
                group: r.group,
                partitions: r.partitions,
            })])
            .await
            .map_err(status)?;
        let o = outcomes.into_iter().next().unwrap_or_else(ApplyOutcome::ok);
        Ok(Response::new(api::DeleteOffsetsResponse {
            error_code: i32::from(o.error_code),
            error_message: o.message,
        }))
    }

    async fn allocate_producer_ids(
        &self,
        request: Request<api::AllocateProducerIdsRequest>,
    ) -> Result<Response<api::AllocateProducerIdsResponse>, Status> {
        forward!(self, allocate_producer_ids, request);
        let r = request.into_inner();
        // compare-and-set on the next id: a block proposed concurrently wins, and this one
        // tries again from the id after it
        let mut last = ApplyOutcome::ok();
        for _ in 0..PRODUCER_ID_BLOCK_ATTEMPTS {
            let first_producer_id = self
                .core
                .state_machine
                .with_image(MetadataImage::next_producer_id);
            let outcomes = self
                .core
                .propose(vec![Record::AllocateProducerIds(pb::AllocateProducerIds {
                    broker_id: r.broker_id,
                    broker_epoch: r.broker_epoch,
                    first_producer_id,
                    count: PRODUCER_ID_BLOCK_SIZE,
                })])
                .await
                .map_err(status)?;
            last = outcomes.into_iter().next().unwrap_or_else(ApplyOutcome::ok);
            if last.is_ok() {
                return Ok(Response::new(api::AllocateProducerIdsResponse {
                    error_code: 0,
                    error_message: String::new(),
                    first_producer_id,
                    count: PRODUCER_ID_BLOCK_SIZE,
                }));
            }
            if last.error_code == ec::STALE_BROKER_EPOCH {
                break;
            }
        }
        Ok(Response::new(api::AllocateProducerIdsResponse {
            error_code: i32::from(last.error_code),
            error_message: last.message,
            first_producer_id: -1,
            count: 0,
        }))
    }

    async fn elect_leaders(
        &self,
        request: Request<api::ElectLeadersRequest>,
    ) -> Result<Response<api::ElectLeadersResponse>, Status> {
        forward!(self, elect_leaders, request);
        let r = request.into_inner();
        let unclean = match r.election_type {
            0 => false,
            1 => true,
            other => {
                return Ok(Response::new(api::ElectLeadersResponse {
                    error_code: i32::from(ec::INVALID_REQUEST),
                    error_message: format!("unknown election type {other}"),
                    results: Vec::new(),
                }))
            }
        };
        let (mut results, records) = self.core.state_machine.with_image(|image| {
            let wanted: Vec<(String, i32)> = if r.all_partitions {
                image
                    .topics()
                    .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.partition)))
                    .collect()
            } else {
                r.partitions
                    .iter()
                    .map(|p| (p.topic.clone(), p.partition))
                    .collect()
            };
            elections(image, &wanted, unclean)
        });
        let record_slots: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.error_code == 0)
            .map(|(i, _)| i)
            .collect();
        if !records.is_empty() {
            let outcomes = self.core.propose(records).await.map_err(status)?;
            for (slot, outcome) in record_slots.iter().zip(outcomes) {
                if !outcome.is_ok() {
                    results[*slot].error_code = i32::from(outcome.error_code);
                    results[*slot].error_message = outcome.message;
                    results[*slot].leader = -1;
                }
            }
        }
        Ok(Response::new(api::ElectLeadersResponse {
            error_code: 0,
            error_message: String::new(),
            results,
        }))
    }

    async fn fetch_offsets(
        &self,
        request: Request<api::FetchOffsetsRequest>,
    ) -> Result<Response<api::FetchOffsetsResponse>, Status> {
        forward!(self, fetch_offsets, request);
        let r = request.into_inner();
        // read-your-writes: the leader confirms it still leads and has applied everything
        self.core
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let offsets = self
            .core
            .state_machine
            .with_image(|image| image.committed_offsets(&r.group, &r.topics));
        Ok(Response::new(api::FetchOffsetsResponse { offsets }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<api::DescribeClusterRequest>,
    ) -> Result<Response<api::DescribeClusterResponse>, Status> {
        let image = self.core.image();
        Ok(Response::new(api::DescribeClusterResponse {
            cluster_id: image.cluster_id().to_string(),
            controller_id: self.core.current_leader().map_or(-1, |id| id as i32),
            metadata_index: image.applied_index(),
            brokers: image.brokers().cloned().collect(),
            topics: image.topics().cloned().collect(),
        }))
    }

    type WatchMetadataStream = EventStream;

    async fn watch_metadata(
        &self,
        request: Request<api::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        let from_index = request.into_inner().from_index;
        let mut next = from_index.saturating_add(1);
        let core = Arc::clone(&self.core);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // a watcher with nothing (a broker process just started) gets the whole image
            // first: it carries what no batch does (the cluster id), in one event
            if from_index == 0 {
                let image = core.image();
                next = image.applied_index() + 1;
                if tx.send(Ok(image_event(&image))).await.is_err() {
                    return;
                }
            }
            let mut applied = core.state_machine.subscribe_applied();
            let mut stopping = core.stopping.clone();
            let mut keep_alive = tokio::time::interval(WATCH_KEEPALIVE);
            keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let upto = *applied.borrow_and_update();
                if next <= upto {
                    let entries = core.log_store.entries_between(next, upto);
                    // only a complete run next..=upto may be streamed: after a snapshot
                    // install the log can hold a stale prefix of that range
                    let complete = entries.len() as u64 == upto - next + 1
                        && entries.first().map(|e| e.log_id.index) == Some(next)
                        && entries.last().map(|e| e.log_id.index) == Some(upto);
                    let events = if !complete {
                        // the entries were purged (a snapshot replaced them): start the
                        // watcher from the whole image, then go on after it
                        let image = core.image();
                        next = image.applied_index() + 1;
                        vec![image_event(&image)]
                    } else {
                        next = upto + 1;
                        entries
                            .into_iter()
                            .filter_map(|e| match e.payload {
                                openraft::EntryPayload::Normal(batch) => Some(api::MetadataEvent {
                                    index: e.log_id.index,
                                    event: Some(api::metadata_event::Event::Batch(batch)),
                                }),
                                _ => None,
                            })
                            .collect()
                    };
                    for event in events {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = keep_alive.tick() => {
                        let event = api::MetadataEvent {
                            index: next.saturating_sub(1),
                            event: Some(api::metadata_event::Event::KeepAlive(
                                api::WatchKeepAlive {},
                            )),
                        };
                        // never waits: a watcher too slow to drain its keep-alives has
                        // entries queued, which tell it the same
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(event)) {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    // the node is stopping: end the stream so the watcher moves on
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn image_event(image: &MetadataImage) -> api::MetadataEvent {
    api::MetadataEvent {
        index: image.applied_index(),
        event: Some(api::metadata_event::Event::Image(image.to_proto())),
    }
}

/// Checks an ISR change from `leader` against the image; on success returns the new state.
fn check_alter(
    image: &MetadataImage,
    live: &[i32],
    leader: i32,
    item: &api::AlterPartitionItem,
) -> (i16, String, Option<Partition>) {
    let Some(current) = image.partition(&item.topic, item.partition) else {
        return (
            ec::UNKNOWN_TOPIC_OR_PARTITION,
            format!("{}-{} does not exist", item.topic, item.partition),
            None,
        );
    };
    let fail = |code: i16, message: String| (code, message, Some(current.clone()));
    if current.leader != leader {
        return fail(
            ec::NOT_LEADER_OR_FOLLOWER,
            format!(
                "broker {leader} does not lead {}-{}",
                item.topic, item.partition
            ),
        );
    }
    if current.leader_epoch != item.leader_epoch {
        return fail(
            ec::FENCED_LEADER_EPOCH,
            format!(
                "leader epoch is {}, not {}",
                current.leader_epoch, item.leader_epoch
            ),
        );
    }
    if current.partition_epoch != item.partition_epoch {
        return fail(
            ec::INVALID_UPDATE_VERSION,
            format!(
                "partition epoch is {}, not {}",
                current.partition_epoch, item.partition_epoch
            ),
        );
    }
    let mut isr = item.new_isr.clone();
    isr.sort_unstable();
    isr.dedup();
    // a leader may leave the ISR (its replica is damaged) if a live member remains: that
    // member leads in a new leader epoch
    if isr.is_empty()
        || isr.iter().any(|b| !current.replicas.contains(b))
        || isr
            .iter()
            .any(|b| *b != leader && (!live.contains(b) || current.offline_replicas.contains(b)))
    {
        return fail(
            ec::INELIGIBLE_REPLICA,
            format!(
                "ISR {:?} must be non-empty and hold only live replicas",
                item.new_isr
            ),
        );
    }
    // keep the ISR in replica order, as Kafka shows it
    let isr: Vec<i32> = current
        .replicas
        .iter()
        .copied()
        .filter(|r| isr.contains(r))
        .collect();
    debug_assert!(current.leader != NO_LEADER);
    let next = match isr.first() {
        Some(new_leader) if !isr.contains(&leader) => Partition {
            leader: *new_leader,
            leader_epoch: current.leader_epoch + 1,
            isr: isr.clone(),
            partition_epoch: current.partition_epoch + 1,
            ..current.clone()
        },
        _ => Partition {
            isr,
            partition_epoch: current.partition_epoch + 1,
            ..current.clone()
        },
    };
    (ec::NONE, String::new(), Some(next))
}
