//! Metadata: brokers (their advertised listeners), the cluster id, and topics with their
//! partitions' leaders, epochs, replicas and ISRs, all from this broker's image. A request
//! naming a topic that does not exist creates it when `auto.create.topics.enable` and the
//! client allow it, and waits (bounded) for it to reach the image.

use std::time::Duration;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::MetadataImage;
use sluice_protocol::RequestFrame;

use super::{decode, respond, str_bytes, uuid_of, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

/// How long a Metadata request waits for an auto-created topic to reach the image.
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(3);

/// Kafka's "authorized operations not requested" value.
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: MetadataRequest = decode(request)?;
    broker.sync_partitions_unless_busy();
    // v0: an empty list means every topic; v1+: null means every topic
    let requested: Option<Vec<(Option<String>, uuid::Uuid)>> = match &body.topics {
        None => None,
        Some(t) if t.is_empty() && request.api_version == 0 => None,
        Some(t) => Some(
            t.iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let allow_auto_create = broker.config.auto_create_topics_enable
        && (request.api_version < 4 || body.allow_auto_topic_creation);
    if let (Some(topics), true) = (&requested, allow_auto_create) {
        auto_create(broker, topics).await;
    }
    let response = broker.with_image(|image| {
        build(
            broker,
            request.listener.as_deref(),
            image,
            request.api_version,
            requested.as_deref(),
        )
    });
    respond(request, &response)
}

async fn auto_create(broker: &Broker, topics: &[(Option<String>, uuid::Uuid)]) {
    let missing: Vec<String> = broker.with_image(|image| {
        topics
            .iter()
            .filter_map(|(name, _)| name.clone())
            .filter(|name| {
                image.topic(name).is_none() && sluice_metadata::topic_name::validate(name).is_ok()
            })
            .collect()
    });
    if missing.is_empty() {
        return;
    }
    let specs: Vec<api::TopicSpec> = missing
        .iter()
        .map(|name| api::TopicSpec {
            name: name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            configs: Default::default(),
        })
        .collect();
    let created = broker
        .controllers
        .call(AUTO_CREATE_WAIT, |mut c| {
            let request = api::CreateTopicsRequest {
                topics: specs.clone(),
                validate_only: false,
            };
            async move { c.create_topics(request).await }
        })
        .await;
    match created {
        Ok(r) => {
            for t in r.topics.iter().filter(|t| t.error_code != 0) {
                tracing::debug!(topic = %t.name, error = %t.error_message, "auto-create refused");
            }
        }
        Err(e) => tracing::warn!(error = %e, "auto-create: controller unavailable"),
    }
    broker.wait_for_topics_led(&missing, AUTO_CREATE_WAIT).await;
}

fn build(
    broker: &Broker,
    listener: Option<&str>,
    image: &MetadataImage,
    version: i16,
    requested: Option<&[(Option<String>, uuid::Uuid)]>,
) -> MetadataResponse {
    // every registered broker, fenced ones too (Kafka lists only unfenced brokers): a
    // librdkafka (>= 2.10) client decommissions a broker that drops out of this list, and
    // when that happens in the same response that moves the broker's leaderships away,
    // the decommission races the partitions' migration to the new leader and parks them
    // on no broker until the client's next 1 s scan (seen in its debug log: "Reverting
    // from preferred replica ... to leader -1"). Leaders and ISRs never name a fenced
    // broker; offline_replicas names it; DescribeCluster tells fenced from live.
    let brokers = image
        .brokers()
        .filter_map(|b| {
            let endpoint = broker.config.endpoint_on(b, listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.broker_id))
                    .with_host(str_bytes(endpoint.host.clone()))
                    .with_port(endpoint.port as i32)
                    .with_rack(b.rack.clone().map(str_bytes)),
            )
        })
        .collect();
    // without the controller lease this broker may have been replaced as leader: it names
    // no leader where its image names itself, so clients ask elsewhere
    let unleased = (!broker.replicas.controller_lease().is_held()).then(|| broker.broker_id());
    let topics: Vec<MetadataResponseTopic> = match requested {
        None => image
            .topics()
            .map(|t| topic_entry(image, t, unleased))
            .collect(),
        Some(requested) => requested
            .iter()
            .map(|(name, id)| {
                let found = match name {
                    Some(name) => image.topic(name),
                    None => image.topics().find(|t| uuid_of(&t.topic_id) == *id),
                };
                match found {
                    Some(t) => topic_entry(image, t, unleased),
                    None => {
                        let code = match name {
                            Some(n) if sluice_metadata::topic_name::validate(n).is_err() => {
                                ec::INVALID_TOPIC_EXCEPTION
                            }
                            Some(_) => ec::UNKNOWN_TOPIC_OR_PARTITION,
                            None => ec::UNKNOWN_TOPIC_ID,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code)
                            .with_name(name.clone().map(|n| TopicName(str_bytes(n))))
                            .with_topic_id(*id)
                            .with_topic_authorized_operations(OPERATIONS_OMITTED)
                    }
                }
            })
            .collect(),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(image.cluster_id().to_string())))
        // clients cannot reach KRaft controllers; like Kafka, name a live broker (this one)
        .with_controller_id(BrokerId(broker.broker_id()))
        .with_topics(topics);
    if (8..=10).contains(&version) {
        response.cluster_authorized_operations = OPERATIONS_OMITTED;
    }
    response
}

/// One topic's entry; partitions led by `unleased` (this broker, without its controller
/// lease) show no leader.
fn topic_entry(
    image: &MetadataImage,
    topic: &sluice_metadata::Topic,
    unleased: Option<i32>,
) -> MetadataResponseTopic {
    let live = |id: &i32| image.broker(*id).is_some_and(|b| !b.fenced);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let ids = |v: &[i32]| v.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
            // fenced brokers' replicas, and replicas whose broker cannot open the log
            let offline: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|id| !live(id) || p.offline_replicas.contains(id))
                .collect();
            let leader = if unleased == Some(p.leader) {
                -1
            } else {
                p.leader
            };
            MetadataResponsePartition::default()
                .with_error_code(if leader < 0 {
                    ec::LEADER_NOT_AVAILABLE
                } else {
                    ec::NONE
                })
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(ec::NONE)
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_topic_id(uuid_of(&topic.topic_id))
        .with_is_internal(false)
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}
