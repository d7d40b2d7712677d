//! Topic-level configs (Kafka's names: `retention.ms`, `segment.bytes`, ...): which ones
//! exist, their broker-level defaults, validation of overrides, and the [`LogConfig`] a
//! topic's partitions are opened with.
//!
//! A topic's effective value is its override (stored in the metadata image with the topic)
//! or else the broker's default (from the broker config, itself defaulting to Kafka's).
//! Unknown names and values Sluice cannot honour are refused (INVALID_CONFIG), never
//! silently ignored.

use std::collections::BTreeMap;

use sluice_log::LogConfig;

/// Where a config's value comes from (Kafka's DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// A per-topic override (DYNAMIC_TOPIC_CONFIG).
    Topic = 1,
    /// Set in the broker's config file (STATIC_BROKER_CONFIG).
    StaticBroker = 4,
    /// Kafka's default (DEFAULT_CONFIG).
    Default = 5,
}

/// DescribeConfigs `config_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
}

#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    /// The topic-level name (`retention.ms`).
    pub name: &'static str,
    /// The broker-level name that sets its default (`log.retention.ms`).
    pub broker_name: &'static str,
    pub kafka_default: &'static str,
    pub config_type: ConfigType,
    pub documentation: &'static str,
}

const fn def(
    name: &'static str,
    broker_name: &'static str,
    kafka_default: &'static str,
    config_type: ConfigType,
    documentation: &'static str,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        broker_name,
        kafka_default,
        config_type,
        documentation,
    }
}

/// Every topic config Sluice knows, in Kafka's order.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "cleanup.policy",
        "log.cleanup.policy",
        "delete",
        ConfigType::String,
        "delete only: Sluice has no log compaction",
    ),
    def(
        "compression.type",
        "compression.type",
        "producer",
        ConfigType::String,
        "producer only: batches are stored as the producer compressed them",
    ),
    def(
        "flush.messages",
        "log.flush.interval.messages",
        "9223372036854775807",
        ConfigType::Long,
        "fsync after this many records",
    ),
    def(
        "flush.ms",
        "log.flush.interval.ms",
        "9223372036854775807",
        ConfigType::Long,
        "fsync when the last flush is older than this",
    ),
    def(
        "index.interval.bytes",
        "log.index.interval.bytes",
        "4096",
        ConfigType::Int,
        "bytes of batches between two offset index entries",
    ),
    def(
        "max.message.bytes",
        "message.max.bytes",
        "1048588",
        ConfigType::Int,
        "the largest record batch accepted",
    ),
    def(
        "message.timestamp.type",
        "log.message.timestamp.type",
        "CreateTime",
        ConfigType::String,
        "CreateTime only",
    ),
    def(
        "min.insync.replicas",
        "min.insync.replicas",
        "1",
        ConfigType::Int,
        "in-sync replicas an acks=all write needs",
    ),
    def(
        "retention.bytes",
        "log.retention.bytes",
        "-1",
        ConfigType::Long,
        "delete old segments while a partition is larger (-1: no limit)",
    ),
    def(
        "retention.ms",
        "log.retention.ms",
        "604800000",
        ConfigType::Long,
        "delete segments older than this (-1: keep forever)",
    ),
    def(
        "segment.bytes",
        "log.segment.bytes",
        "1073741824",
        ConfigType::Int,
        "segment file size",
    ),
    def(
        "segment.index.bytes",
        "log.index.size.max.bytes",
        "10485760",
        ConfigType::Int,
        "offset and time index file size",
    ),
    def(
        "segment.ms",
        "log.roll.ms",
        "604800000",
        ConfigType::Long,
        "roll a segment older than this",
    ),
    def(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
        "elect an out-of-sync replica when no in-sync one is alive (loses data)",
    ),
];

pub fn find(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The broker's defaults for topic configs, keyed by topic-level name, with their source.
#[derive(Debug, Clone)]
pub struct TopicDefaults {
    values: BTreeMap<&'static str, (String, ConfigSource)>,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            values: TOPIC_CONFIGS
                .iter()
                .map(|d| (d.name, (d.kafka_default.to_string(), ConfigSource::Default)))
                .collect(),
        }
    }
}

impl TopicDefaults {
    /// Sets a default from the broker's config (`log.retention.ms` = ...), validated as a
    /// topic override would be.
    pub fn set_from_broker(&mut self, broker_name: &str, value: &str) -> Result<(), String> {
        let Some(d) = TOPIC_CONFIGS.iter().find(|d| d.broker_name == broker_name) else {
            return Err(format!("{broker_name} is not a topic default"));
        };
        validate_value(d, value).map_err(|e| format!("{broker_name}: {e}"))?;
        self.values
            .insert(d.name, (value.to_string(), ConfigSource::StaticBroker));
        Ok(())
    }

    /// Every topic config's effective value for a topic with `overrides`.
    pub fn resolve(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Vec<(&'static TopicConfigDef, String, ConfigSource)> {
        TOPIC_CONFIGS
            .iter()
            .map(|d| match overrides.get(d.name) {
                Some(v) => (d, v.clone(), ConfigSource::Topic),
                None => {
                    let (v, source) =
                        self.values.get(d.name).cloned().unwrap_or_else(|| {
                            (d.kafka_default.to_string(), ConfigSource::Default)
                        });
                    (d, v, source)
                }
            })
            .collect()
    }

    fn value(&self, overrides: &BTreeMap<String, String>, name: &str) -> String {
        overrides
            .get(name)
            .cloned()
            .or_else(|| self.values.get(name).map(|(v, _)| v.clone()))
            .unwrap_or_default()
    }

    /// The log config of a topic with `overrides` (validated before they were stored; a
    /// value that still does not parse falls back to the broker default).
    pub fn log_config(&self, overrides: &BTreeMap<String, String>, base: &LogConfig) -> LogConfig {
        let long = |name: &str| self.value(overrides, name).parse::<i64>().ok();
        let never = |v: Option<i64>| v.filter(|v| *v != i64::MAX);
        let mut c = base.clone();
        if let Some(v) = long("segment.bytes") {
            c.segment_bytes = v as u64;
        }
        if let Some(v) = long("segment.ms") {
            c.roll_ms = v;
        }
        if let Some(v) = long("retention.ms") {
            c.retention_ms = v;
        }
        if let Some(v) = long("retention.bytes") {
            c.retention_bytes = v;
        }
        if let Some(v) = long("index.interval.bytes") {
            c.index_interval_bytes = v as usize;
        }
        if let Some(v) = long("segment.index.bytes") {
            c.index_size_max_bytes = v as usize;
        }
        if let Some(v) = long("max.message.bytes") {
            c.max_message_bytes = v as usize;
        }
        c.flush_interval_messages = never(long("flush.messages")).map(|v| v as u64);
        c.flush_interval_ms = never(long("flush.ms"));
        c
    }

    /// `min.insync.replicas` of a topic with `overrides`.
    pub fn min_insync_replicas(&self, overrides: &BTreeMap<String, String>) -> usize {
        self.value(overrides, "min.insync.replicas")
            .parse()
            .unwrap_or(1)
    }
}

/// Checks topic overrides (CreateTopics): names Sluice knows, values it can honour.
pub fn validate_overrides(overrides: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in overrides {
        let Some(d) = find(name) else {
            return Err(format!("Unknown topic config name: {name}"));
        };
        validate_value(d, value)
            .map_err(|e| format!("Invalid value {value} for configuration {name}: {e}"))?;
    }
    Ok(())
}

fn validate_value(d: &TopicConfigDef, value: &str) -> Result<(), String> {
    let range = |min: i64, max: i64| -> Result<(), String> {
        match value.parse::<i64>() {
            Ok(v) if v >= min && v <= max => Ok(()),
            Ok(_) => Err(format!("Value must be in [{min}, {max}]")),
            Err(_) => Err("not a number".to_string()),
        }
    };
    match d.name {
        "cleanup.policy" if value != "delete" => {
            Err("only delete is supported (no log compaction)".to_string())
        }
        "compression.type" if value != "producer" => {
            Err("only producer is supported (batches are never recompressed)".to_string())
        }
        "message.timestamp.type" if value != "CreateTime" => {
            Err("only CreateTime is supported".to_string())
        }
        "unclean.leader.election.enable" if value != "true" && value != "false" => {
            Err("must be true or false".to_string())
        }
        "segment.bytes" => range(14, i32::MAX as i64),
        "segment.index.bytes" => range(24, i32::MAX as i64),
        "segment.ms" | "flush.messages" | "max.message.bytes" | "min.insync.replicas" => {
            range(1, i64::MAX)
        }
        "flush.ms" | "index.interval.bytes" => range(0, i64::MAX),
        "retention.ms" | "retention.bytes" => range(-1, i64::MAX),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_beat_broker_defaults_beat_kafkas() {
        let mut d = TopicDefaults::default();
        d.set_from_broker("log.segment.bytes", "1000").unwrap();
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        let resolved = d.resolve(&overrides);
        let get = |n: &str| {
            resolved
                .iter()
                .find(|(d, _, _)| d.name == n)
                .map(|(_, v, s)| (v.clone(), *s))
                .unwrap()
        };
        assert_eq!(get("retention.ms"), ("5".into(), ConfigSource::Topic));
        assert_eq!(
            get("segment.bytes"),
            ("1000".into(), ConfigSource::StaticBroker)
        );
        assert_eq!(
            get("segment.ms"),
            ("604800000".into(), ConfigSource::Default)
        );
        let log = d.log_config(&overrides, &LogConfig::default());
        assert_eq!((log.segment_bytes, log.retention_ms), (1000, 5));
        assert_eq!(log.flush_interval_messages, None);
    }

    #[test]
    fn bad_overrides_are_named() {
        let one = |k: &str, v: &str| {
            validate_overrides(&BTreeMap::from([(k.to_string(), v.to_string())]))
        };
        assert!(one("retention.ms", "-1").is_ok());
        assert!(one("retention.ms", "-2")
            .unwrap_err()
            .contains("retention.ms"));
        assert!(one("nope", "1")
            .unwrap_err()
            .contains("Unknown topic config"));
        assert!(one("cleanup.policy", "compact").is_err());
        assert!(one("segment.bytes", "x").is_err());
        assert!(TopicDefaults::default()
            .set_from_broker("log.segment.bytes", "1")
            .is_err());
    }
}
