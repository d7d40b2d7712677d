//! DescribeConfigs (every topic config with its value and where it comes from: the topic's
//! override, the broker's config, or Kafka's default) and DescribeCluster (brokers with
//! their advertised listeners, the cluster id).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse,
};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;

use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::topic_config::{ConfigSource, ConfigType};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OPERATIONS_OMITTED: i32 = i32::MIN;

struct Entry {
    name: String,
    value: String,
    source: ConfigSource,
    config_type: ConfigType,
    documentation: &'static str,
}

pub async fn describe_configs(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: DescribeConfigsRequest = decode(request)?;
    let mut results = Vec::with_capacity(body.resources.len());
    for resource in &body.resources {
        let name = resource.resource_name.to_string();
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entries = match resource.resource_type {
            RESOURCE_TOPIC => {
                let overrides =
                    broker.with_image(|image| image.topic(&name).map(|t| t.configs.clone()));
                match overrides {
                    Some(overrides) => Ok(topic_entries(broker, &overrides)),
                    None => Err((
                        ec::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("Topic '{name}' does not exist."),
                    )),
                }
            }
            RESOURCE_BROKER if name.is_empty() || name == broker.broker_id().to_string() => {
                Ok(broker_entries(broker))
            }
            RESOURCE_BROKER => Err((
                ec::INVALID_REQUEST,
                format!(
                    "this is broker {}; ask broker {name} for its configs",
                    broker.broker_id()
                ),
            )),
            other => Err((
                ec::INVALID_REQUEST,
                format!("resource type {other} is not supported (topic 2, broker 4)"),
            )),
        };
        match entries {
            Ok(entries) => {
                // null (and, leniently, an empty list) means every config
                let wanted = resource
                    .configuration_keys
                    .as_ref()
                    .filter(|keys| !keys.is_empty());
                result.configs = entries
                    .into_iter()
                    .filter(|e| wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name)))
                    .map(|e| {
                        let mut c = DescribeConfigsResourceResult::default()
                            .with_name(str_bytes(e.name))
                            .with_value(Some(str_bytes(e.value)))
                            .with_read_only(resource.resource_type == RESOURCE_BROKER)
                            .with_config_source(e.source as i8)
                            .with_is_sensitive(false);
                        if request.api_version >= 3 {
                            c.config_type = e.config_type as i8;
                            if body.include_documentation {
                                c.documentation = Some(str_bytes(e.documentation));
                            }
                        }
                        c
                    })
                    .collect();
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(str_bytes(message));
            }
        }
        results.push(result);
    }
    respond(
        request,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

fn topic_entries(
    broker: &Broker,
    overrides: &std::collections::BTreeMap<String, String>,
) -> Vec<Entry> {
    broker
        .config
        .topic_defaults
        .resolve(overrides)
        .into_iter()
        .map(|(d, value, source)| Entry {
            name: d.name.to_string(),
            value,
            source,
            config_type: d.config_type,
            documentation: d.documentation,
        })
        .collect()
}

fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let c = &broker.config;
    let fixed = |name: &str, value: String, config_type, documentation| Entry {
        name: name.to_string(),
        value,
        source: ConfigSource::StaticBroker,
        config_type,
        documentation,
    };
    let mut entries = vec![
        fixed(
            "node.id",
            c.broker_id.to_string(),
            ConfigType::Int,
            "this node's id",
        ),
        fixed(
            "auto.create.topics.enable",
            c.auto_create_topics_enable.to_string(),
            ConfigType::Boolean,
            "create a topic a Metadata request names",
        ),
        fixed(
            "delete.topic.enable",
            c.delete_topic_enable.to_string(),
            ConfigType::Boolean,
            "allow DeleteTopics",
        ),
        fixed(
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            ConfigType::Int,
            "the largest request accepted",
        ),
        fixed(
            "log.dirs",
            c.log_dir.display().to_string(),
            ConfigType::String,
            "the data directory",
        ),
    ];
    let defaults = c.topic_defaults.resolve(&Default::default());
    entries.extend(defaults.into_iter().map(|(d, value, source)| Entry {
        name: d.broker_name.to_string(),
        value,
        source,
        config_type: d.config_type,
        documentation: d.documentation,
    }));
    entries
}

pub async fn describe_cluster(
    request: &RequestFrame,
    broker: &Broker,
) -> Result<Answer, ConnectionError> {
    let body: DescribeClusterRequest = decode(request)?;
    if request.api_version >= 1 && body.endpoint_type != 1 {
        let response = DescribeClusterResponse::default()
            .with_error_code(ec::UNSUPPORTED_VERSION)
            .with_error_message(Some(str_bytes(
                "only broker endpoints (endpoint_type 1) are served",
            )))
            .with_endpoint_type(body.endpoint_type);
        return respond(request, &response);
    }
    let response = broker.with_image(|image| {
        let brokers = image
            .brokers()
            .filter(|b| !b.fenced || body.include_fenced_brokers)
            .filter_map(|b| {
                let e = broker.config.endpoint_on(b, request.listener.as_deref())?;
                Some(
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.broker_id))
                        .with_host(str_bytes(e.host.clone()))
                        .with_port(e.port as i32)
                        .with_rack(b.rack.clone().map(str_bytes))
                        .with_is_fenced(b.fenced),
                )
            })
            .collect();
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(image.cluster_id().to_string()))
            // the active controller (Raft leader), as the heartbeats report it; Metadata
            // keeps naming a broker, which admin clients send controller requests to
            .with_controller_id(BrokerId(broker.metadata.active_controller()))
            .with_brokers(brokers)
            .with_endpoint_type(1)
            .with_cluster_authorized_operations(OPERATIONS_OMITTED)
    });
    respond(request, &response)
}
