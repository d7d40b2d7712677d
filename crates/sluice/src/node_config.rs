//! A node's configuration, Kafka-style: a TOML file whose keys are Kafka's names
//! (`node.id`, `process.roles`, `controller.quorum.voters`, `listeners`, `log.dirs`, ...),
//! overridden by `SLUICE_*` environment variables (Kafka's docker mapping: `.` → `_`,
//! `-` → `__`, `_` → `___`, upper case; e.g. `SLUICE_NODE_ID`), then by `--override
//! key=value` flags. Unknown keys are refused, so a typo does not silently fall back to a
//! default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sluice_broker::BrokerConfig;
use sluice_controller::ControllerConfig;
use sluice_metadata::proto::metadata as pb;

/// Every key this build understands: (key, default, meaning). A default of "" means
/// required, none, or — for the broker defaults of topic configs — Kafka's default (the
/// topic config table's). `docs/configuration.md` is generated from this table
/// (`sluice config reference`).
const KEYS: &[(&str, &str, &str)] = &[
    ("node.id", "", "this node's id (broker and controller): required"),
    ("process.roles", "broker,controller", "`broker`, `controller`, or both (combined mode)"),
    ("controller.quorum.voters", "", "`id@host:port,...` of every controller voter: required"),
    ("controller.listener.names", "CONTROLLER", "the listener name of the controller port"),
    ("listeners", "PLAINTEXT://:9092,CONTROLLER://:9093", "the Kafka listener and the controller listener to bind (port 0: any free port)"),
    ("log.dirs", "/tmp/sluice-logs", "the broker's log directory (one)"),
    ("metadata.log.dir", "", "where the controller keeps the Raft log, in `__cluster_metadata-0` under it (default: `log.dirs`)"),
    ("cluster.id", "sluice-cluster", "the cluster id clients see"),
    ("broker.session.timeout.ms", "9000", "a broker silent this long is fenced: its leaderships move"),
    ("metadata.log.max.record.bytes.between.snapshots", "20971520", "the controller snapshots its metadata once its Raft log grew this much since the last snapshot (0: by entry count only)"),
    ("broker.heartbeat.interval.ms", "2000", "how often a broker heartbeats to the controllers"),
    ("controller.quorum.election.timeout.ms", "1000", "about how long a controller waits for the quorum leader before it campaigns"),
    ("unclean.leader.election.enable", "false", "elect a replica outside the ISR when no ISR member is live (loses records)"),
    ("num.partitions", "1", "partitions of an auto-created topic or a create without a count"),
    ("default.replication.factor", "1", "replicas of an auto-created topic or a create without a factor"),
    ("offsets.retention.minutes", "10080", "how long committed offsets of an empty group are kept"),
    ("offsets.retention.check.interval.ms", "600000", "how often expired offsets are looked for"),
    ("auto.leader.rebalance.enable", "true", "give leadership back to preferred replicas by itself"),
    ("leader.imbalance.check.interval.seconds", "300", "how often the controller checks leadership balance"),
    ("leader.imbalance.per.broker.percentage", "10", "a broker's share of preferred partitions led elsewhere that triggers a rebalance"),
    // the broker role
    ("advertised.listeners", "", "per listener, the address clients of that listener are told (default: the bound one)"),
    ("inter.broker.listener.name", "", "the listener brokers use to reach each other (default: the first Kafka listener)"),
    ("listener.security.protocol.map", "", "`NAME:PLAINTEXT,...` (accepted for Kafka compatibility: every listener is PLAINTEXT)"),
    ("broker.rack", "", "the broker's rack (reported in metadata)"),
    ("auto.create.topics.enable", "true", "create a topic on first Metadata or Produce for it"),
    ("delete.topic.enable", "true", "allow DeleteTopics"),
    ("socket.request.max.bytes", "104857600", "largest request accepted"),
    ("log.retention.check.interval.ms", "300000", "how often retention runs"),
    ("replica.lag.time.max.ms", "30000", "a follower not caught up for this long leaves the ISR"),
    ("max.incremental.fetch.session.cache.slots", "1000", "fetch sessions (KIP-227) the broker keeps (0: none, every fetch a full one)"),
    ("replica.high.watermark.checkpoint.interval.ms", "5000", "how often high watermarks are written to disk"),
    ("log.scrub.bytes.per.second", "8388608", "background CRC scrub rate (0: off)"),
    ("sluice.log.scrub.interval.ms", "60000", "the shortest time between two scrub passes"),
    ("group.min.session.timeout.ms", "6000", "the shortest session a consumer group member may ask for"),
    ("group.max.session.timeout.ms", "1800000", "the longest session a consumer group member may ask for"),
    ("group.max.size", "2147483647", "members a consumer group may have"),
    ("group.initial.rebalance.delay.ms", "3000", "how long a new group waits for more members before its first rebalance"),
    ("controlled.shutdown.enable", "true", "on SIGTERM, move leadership away before stopping"),
    ("sluice.controlled.shutdown.timeout.ms", "30000", "how long SIGTERM waits for followers to catch up"),
    ("sluice.fetch.sendfile.enable", "true", "serve fetches with sendfile(2) (false: copy through a buffer)"),
    ("sluice.replica.fetch.sessions.enable", "false", "followers fetch through incremental fetch sessions (KIP-227; experimental, see docs/benchmarks.md)"),
    ("sluice.log.max.open.files", "0", "segment files kept open at once across every log, the least recently used closed and reopened on use (0: half the open files limit, at most 4096)"),
    ("sluice.log.append.mode", "write", "how the active segment is written: `write`, `hybrid` or `mmap`"),
    ("admin.listener", "", "`host:port` of the HTTP admin listener (/metrics, /healthz, /readyz); off when unset"),
    ("producer.id.expiration.ms", "86400000", "a partition forgets an idempotent producer idle this long"),
    ("producer.id.expiration.check.interval.ms", "600000", "how often idle producers are looked for"),
    // broker defaults of topic configs: unset means Kafka's default
    ("message.max.bytes", "", "default of the topic config `max.message.bytes`"),
    ("min.insync.replicas", "", "default of the topic config `min.insync.replicas`"),
    ("log.segment.bytes", "", "default of the topic config `segment.bytes`"),
    ("log.roll.ms", "", "default of the topic config `segment.ms`"),
    ("log.roll.hours", "", "`log.roll.ms` in hours (`log.roll.ms` wins)"),
    ("log.retention.ms", "", "default of the topic config `retention.ms`"),
    ("log.retention.minutes", "", "`log.retention.ms` in minutes (`log.retention.ms` wins)"),
    ("log.retention.hours", "", "`log.retention.ms` in hours (the minutes and ms keys win)"),
    ("log.retention.bytes", "", "default of the topic config `retention.bytes`"),
    ("log.index.interval.bytes", "", "default of the topic config `index.interval.bytes`"),
    ("log.index.size.max.bytes", "", "default of the topic config `segment.index.bytes`"),
    ("log.flush.interval.messages", "", "default of the topic config `flush.messages`"),
    ("log.flush.interval.ms", "", "default of the topic config `flush.ms`"),
    ("log.cleanup.policy", "", "default of the topic config `cleanup.policy`"),
    ("compression.type", "", "default of the topic config `compression.type`"),
    ("log.message.timestamp.type", "", "default of the topic config `message.timestamp.type`"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Broker,
    Controller,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    values: BTreeMap<String, String>,
}

/// `docs/configuration.md`: every node setting (key, default, environment variable,
/// meaning) and every topic config, from the code's tables.
pub fn reference_markdown() -> String {
    use sluice_broker::topic_config::TOPIC_CONFIGS;
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code's tables by `sluice config reference` (a test fails when this \
         file and the code disagree). A node reads a Kafka-style TOML file \
         (`sluice broker --config FILE`), then `SLUICE_*` environment variables, then \
         `--override key=value`; unknown keys are refused.\n\n\
         ## Node settings\n\n\
         | key | default | environment | meaning |\n|---|---|---|---|\n",
    );
    for (key, default, meaning) in KEYS {
        let topic_default = TOPIC_CONFIGS
            .iter()
            .find(|t| t.broker_name == *key)
            .map(|t| t.kafka_default);
        let default = match (*default, topic_default) {
            ("", Some(d)) => format!("`{d}`"),
            ("", None) => "–".to_string(),
            (d, _) => format!("`{d}`"),
        };
        out += &format!(
            "| `{key}` | {default} | `{}` | {meaning} |\n",
            env_name(key)
        );
    }
    out += "\n## Topic configs\n\nSet per topic (`sluice topic create -c key=value`, \
            CreateTopics, kafka-configs.sh); the broker key sets the default.\n\n\
            | topic key | broker key | default | meaning |\n|---|---|---|---|\n";
    for t in TOPIC_CONFIGS {
        out += &format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            t.name, t.broker_name, t.kafka_default, t.documentation
        );
    }
    out
}

fn env_name(key: &str) -> String {
    let mut out = String::from("SLUICE_");
    for c in key.chars() {
        match c {
            '.' => out.push('_'),
            '-' => out.push_str("__"),
            '_' => out.push_str("___"),
            c => out.push(c.to_ascii_uppercase()),
        }
    }
    out
}

fn toml_value_to_string(key: &str, value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => bail!("{key}: unsupported value {other}"),
    })
}

impl NodeConfig {
    /// Reads `path` (if any), then the environment, then `overrides` (`key=value`).
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[String],
    ) -> Result<Self> {
        let mut values: BTreeMap<String, String> = KEYS
            .iter()
            .filter(|(_, d, _)| !d.is_empty())
            .map(|(k, d, _)| (k.to_string(), d.to_string()))
            .collect();
        let known = |key: &str| KEYS.iter().any(|(k, _, _)| *k == key);
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                // one line: where and what, without the multi-line source excerpt
                let line = e.span().map_or(0, |s| {
                    text[..s.start.min(text.len())].lines().count().max(1)
                });
                anyhow::anyhow!(
                    "parsing config {} line {line}: {}",
                    path.display(),
                    e.message().trim()
                )
            })?;
            for (key, value) in &table {
                if !known(key) {
                    bail!("{}: unknown setting {key:?}", path.display());
                }
                values.insert(key.clone(), toml_value_to_string(key, value)?);
            }
        }
        for (key, _, _) in KEYS {
            if let Some(v) = env(&env_name(key)) {
                values.insert(key.to_string(), v);
            }
        }
        for o in overrides {
            let Some((key, value)) = o.split_once('=') else {
                bail!("--override takes key=value, got {o:?}");
            };
            if !known(key) {
                bail!("--override: unknown setting {key:?}");
            }
            values.insert(key.to_string(), value.to_string());
        }
        Ok(NodeConfig { values })
    }

    /// A value set by the file, the environment or a flag (not a built-in default).
    fn explicit(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn get(&self, key: &str) -> Result<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{key} must be set"))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.get(key)?;
        v.parse()
            .map_err(|_| anyhow::anyhow!("{key}: invalid value {v:?}"))
    }

    pub fn node_id(&self) -> Result<u64> {
        self.parse("node.id")
    }

    pub fn roles(&self) -> Result<Vec<Role>> {
        let mut roles = Vec::new();
        for r in self.get("process.roles")?.split(',').map(str::trim) {
            match r {
                "broker" => roles.push(Role::Broker),
                "controller" => roles.push(Role::Controller),
                other => bail!("process.roles: unknown role {other:?} (broker, controller)"),
            }
        }
        if roles.is_empty() {
            bail!("process.roles must name at least one role");
        }
        Ok(roles)
    }

    /// `listeners` as (name, host, port), in the order written. Names must differ (as in
    /// Kafka), and so must ports on the same host.
    pub fn listeners(&self) -> Result<Vec<(String, String, u16)>> {
        let mut out: Vec<(String, String, u16)> = Vec::new();
        for l in self
            .get("listeners")?
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (name, rest) = l
                .split_once("://")
                .with_context(|| format!("listeners: {l:?} is not NAME://host:port"))?;
            let (host, port) = rest
                .rsplit_once(':')
                .with_context(|| format!("listeners: {l:?} has no port"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("listeners: bad port in {l:?}"))?;
            if out.iter().any(|(n, _, _)| n == name) {
                bail!("listeners: the name {name} is used twice (each listener needs its own)");
            }
            if port != 0 && out.iter().any(|(_, h, p)| *p == port && h == host) {
                bail!("listeners: port {port} is used twice");
            }
            out.push((name.to_string(), host.to_string(), port));
        }
        Ok(out)
    }

    /// Each listener's security protocol, as Kafka resolves it: from
    /// `listener.security.protocol.map` when it is set (a listener it does not name is an
    /// error), else a standard name is its own protocol and the controller listener is
    /// PLAINTEXT. Sluice speaks PLAINTEXT only, so any other protocol is refused.
    fn check_security_protocols(&self) -> Result<()> {
        let controller = self.controller_listener_name()?;
        let mut map: Vec<(&str, &str)> = Vec::new();
        if let Some(explicit) = self.explicit("listener.security.protocol.map") {
            for entry in explicit.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, protocol) = entry.split_once(':').with_context(|| {
                    format!("listener.security.protocol.map: {entry:?} is not NAME:PROTOCOL")
                })?;
                map.push((name.trim(), protocol.trim()));
            }
        }
        for (name, _, _) in self.listeners()? {
            let protocol = if map.is_empty() {
                match name.as_str() {
                    "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL" => name.clone(),
                    _ if name == controller => "PLAINTEXT".to_string(),
                    _ => bail!(
                        "listener {name} has no security protocol: add {name}:PLAINTEXT to listener.security.protocol.map"
                    ),
                }
            } else {
                match map.iter().find(|(n, _)| *n == name) {
                    Some((_, p)) => p.to_string(),
                    None => bail!(
                        "listener.security.protocol.map does not name the listener {name} (add {name}:PLAINTEXT)"
                    ),
                }
            };
            if protocol != "PLAINTEXT" {
                bail!(
                    "listener {name} uses {protocol}: Sluice supports only PLAINTEXT listeners (no TLS or SASL yet)"
                );
            }
        }
        Ok(())
    }

    fn controller_listener_name(&self) -> Result<String> {
        let name = self.get("controller.listener.names")?;
        Ok(name
            .split(',')
            .next()
            .unwrap_or("CONTROLLER")
            .trim()
            .to_string())
    }

    /// Every Kafka listener (`listeners` but the controller's) as (name, bind address),
    /// the inter-broker one first: `inter.broker.listener.name`, else the first written.
    /// Each listener's security protocol must be PLAINTEXT (`listener.security.protocol.map`).
    pub fn broker_listeners(&self) -> Result<Vec<(String, String)>> {
        let controller = self.controller_listener_name()?;
        self.check_security_protocols()?;
        let mut listeners: Vec<(String, String)> = self
            .listeners()?
            .into_iter()
            .filter(|(name, _, _)| *name != controller)
            .map(|(name, host, port)| {
                let host = if host.is_empty() {
                    "0.0.0.0".to_string()
                } else {
                    host
                };
                (name, format!("{host}:{port}"))
            })
            .collect();
        if listeners.is_empty() {
            bail!("listeners has no listener for Kafka clients (e.g. PLAINTEXT://:9092)");
        }
        if let Some(inter) = self.explicit("inter.broker.listener.name") {
            let at = listeners
                .iter()
                .position(|(name, _)| name == inter)
                .with_context(|| {
                    format!("inter.broker.listener.name {inter:?} is not one of listeners")
                })?;
            let first = listeners.remove(at);
            listeners.insert(0, first);
        }
        Ok(listeners)
    }

    /// The endpoint Metadata hands to clients for the Kafka listener `name` bound at
    /// `bound`: `advertised.listeners` if it names it, else the bound address (a wildcard
    /// host becomes this machine's hostname).
    pub fn advertised_endpoint(
        &self,
        name: &str,
        bound: std::net::SocketAddr,
    ) -> Result<pb::Endpoint> {
        let mut host = bound.ip().to_string();
        let mut port = u32::from(bound.port());
        if let Some(advertised) = self.explicit("advertised.listeners") {
            for l in advertised
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                let (n, rest) = l.split_once("://").with_context(|| {
                    format!("advertised.listeners: {l:?} is not NAME://host:port")
                })?;
                if n != name {
                    continue;
                }
                let (h, p) = rest
                    .rsplit_once(':')
                    .with_context(|| format!("advertised.listeners: {l:?} has no port"))?;
                host = h.to_string();
                port = p
                    .parse()
                    .with_context(|| format!("advertised.listeners: bad port in {l:?}"))?;
            }
        }
        if host.is_empty() || host == "0.0.0.0" || host == "::" {
            host = nix_hostname();
        }
        Ok(pb::Endpoint {
            name: name.to_string(),
            host,
            port,
            security_protocol: "PLAINTEXT".to_string(),
        })
    }

    /// The broker role's settings; `controllers` are the controller listeners to follow.
    pub fn broker_config(&self, controllers: Vec<String>) -> Result<BrokerConfig> {
        let node_id: i32 = self.parse("node.id")?;
        let log_dirs: Vec<&str> = self
            .get("log.dirs")?
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect();
        let [log_dir] = log_dirs.as_slice() else {
            bail!(
                "log.dirs: exactly one directory is supported, got {}",
                log_dirs.len()
            );
        };
        let mut c = BrokerConfig::new(node_id, PathBuf::from(log_dir), controllers);
        c.rack = self.explicit("broker.rack").map(str::to_string);
        c.heartbeat_interval_ms = self.parse("broker.heartbeat.interval.ms")?;
        c.socket_request_max_bytes = self.parse("socket.request.max.bytes")?;
        c.use_sendfile = self.parse("sluice.fetch.sendfile.enable")?;
        c.auto_create_topics_enable = self.parse("auto.create.topics.enable")?;
        c.delete_topic_enable = self.parse("delete.topic.enable")?;
        c.retention_check_interval_ms = self.parse("log.retention.check.interval.ms")?;
        c.replica_lag_time_max_ms = self.parse("replica.lag.time.max.ms")?;
        c.fetch_session_cache_slots = self.parse("max.incremental.fetch.session.cache.slots")?;
        c.log_max_open_files = self.parse("sluice.log.max.open.files")?;
        c.replica_fetch_sessions = self.parse("sluice.replica.fetch.sessions.enable")?;
        c.high_watermark_checkpoint_interval_ms =
            self.parse("replica.high.watermark.checkpoint.interval.ms")?;
        c.scrub_bytes_per_second = self.parse("log.scrub.bytes.per.second")?;
        c.scrub_interval_ms = self.parse("sluice.log.scrub.interval.ms")?;
        c.group.min_session_timeout_ms = self.parse("group.min.session.timeout.ms")?;
        c.group.max_session_timeout_ms = self.parse("group.max.session.timeout.ms")?;
        c.group.max_size = self.parse("group.max.size")?;
        c.group.initial_rebalance_delay_ms = self.parse("group.initial.rebalance.delay.ms")?;
        c.controlled_shutdown_enable = self.parse("controlled.shutdown.enable")?;
        c.controlled_shutdown_timeout_ms = self.parse("sluice.controlled.shutdown.timeout.ms")?;
        let mode = self.get("sluice.log.append.mode")?;
        c.log.append_mode = sluice_log::AppendMode::from_name(mode).with_context(|| {
            format!("sluice.log.append.mode: {mode:?} is not hybrid, write or mmap")
        })?;
        c.log.producer_id_expiration_ms = self.parse("producer.id.expiration.ms")?;
        c.log.producer_id_expiration_check_interval_ms =
            self.parse("producer.id.expiration.check.interval.ms")?;
        // Kafka's precedence: ms over minutes over hours
        let scaled = |keys: &[(&str, i64)]| -> Result<Option<String>> {
            for (key, scale) in keys {
                if let Some(v) = self.explicit(key) {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{key}: invalid value {v:?}"))?;
                    return Ok(Some(
                        if n < 0 { n } else { n.saturating_mul(*scale) }.to_string(),
                    ));
                }
            }
            Ok(None)
        };
        let mut defaults: Vec<(&str, String)> = Vec::new();
        if let Some(v) = scaled(&[
            ("log.retention.ms", 1),
            ("log.retention.minutes", 60_000),
            ("log.retention.hours", 3_600_000),
        ])? {
            defaults.push(("log.retention.ms", v));
        }
        if let Some(v) = scaled(&[("log.roll.ms", 1), ("log.roll.hours", 3_600_000)])? {
            defaults.push(("log.roll.ms", v));
        }
        for key in [
            "message.max.bytes",
            "min.insync.replicas",
            "log.segment.bytes",
            "log.retention.bytes",
            "log.index.interval.bytes",
            "log.index.size.max.bytes",
            "log.flush.interval.messages",
            "log.flush.interval.ms",
            "log.cleanup.policy",
            "compression.type",
            "log.message.timestamp.type",
        ] {
            if let Some(v) = self.explicit(key) {
                defaults.push((key, v.to_string()));
            }
        }
        for (key, value) in defaults {
            c.topic_defaults
                .set_from_broker(key, &value)
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        c.log = c.topic_defaults.log_config(&Default::default(), &c.log);
        c.log.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c)
    }

    /// `admin.listener`: `host:port` of the HTTP admin listener (/metrics, /healthz,
    /// /readyz), or None when unset (the default: off).
    pub fn admin_listener(&self) -> Result<Option<String>> {
        let Some(value) = self.explicit("admin.listener").map(str::trim) else {
            return Ok(None);
        };
        let value = value.strip_prefix("http://").unwrap_or(value);
        if value
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            bail!("admin.listener: {value:?} is not host:port");
        }
        Ok(Some(value.to_string()))
    }

    /// The address the controller listener binds.
    pub fn controller_bind_address(&self) -> Result<String> {
        let name = self.controller_listener_name()?;
        self.check_security_protocols()?;
        let (_, host, port) = self
            .listeners()?
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .with_context(|| format!("listeners has no {name} listener for the controller"))?;
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host
        };
        Ok(format!("{host}:{port}"))
    }

    /// `metadata.log.dir` (default: the first of `log.dirs`) + `__cluster_metadata-0`, as
    /// Kafka lays it out.
    pub fn metadata_dir(&self) -> Result<PathBuf> {
        let base = match self.values.get("metadata.log.dir") {
            Some(d) if !d.is_empty() => d.clone(),
            _ => self
                .get("log.dirs")?
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if base.is_empty() {
            bail!("log.dirs or metadata.log.dir must be set");
        }
        Ok(PathBuf::from(base).join("__cluster_metadata-0"))
    }

    /// `controller.quorum.voters` as id → `host:port`.
    pub fn voters(&self) -> Result<BTreeMap<u64, String>> {
        Ok(ControllerConfig::parse_voters(
            self.get("controller.quorum.voters")?,
        )?)
    }

    pub fn controller_config(&self) -> Result<ControllerConfig> {
        let node_id = self.node_id()?;
        let voters = self.voters()?;
        if !voters.contains_key(&node_id) {
            bail!("node.id {node_id} is not in controller.quorum.voters");
        }
        let mut c = ControllerConfig::new(node_id, voters, self.metadata_dir()?);
        c.cluster_id = self.get("cluster.id")?.to_string();
        c.broker_session_timeout_ms = self.parse("broker.session.timeout.ms")?;
        c.metadata_snapshot_bytes =
            self.parse("metadata.log.max.record.bytes.between.snapshots")?;
        c.broker_heartbeat_interval_ms = self.parse("broker.heartbeat.interval.ms")?;
        c.election_timeout_ms = self.parse("controller.quorum.election.timeout.ms")?;
        c.raft_heartbeat_interval_ms = (c.election_timeout_ms / 5).max(10);
        c.unclean_leader_election_enable = self.parse("unclean.leader.election.enable")?;
        c.num_partitions = self.parse("num.partitions")?;
        c.default_replication_factor = self.parse("default.replication.factor")?;
        let retention_minutes: i64 = self.parse("offsets.retention.minutes")?;
        if retention_minutes < 1 {
            bail!("offsets.retention.minutes must be at least 1");
        }
        c.offsets_retention_ms = retention_minutes.saturating_mul(60_000);
        c.offsets_retention_check_interval_ms =
            self.parse("offsets.retention.check.interval.ms")?;
        if c.offsets_retention_check_interval_ms < 1 {
            bail!("offsets.retention.check.interval.ms must be at least 1");
        }
        c.auto_leader_rebalance_enable = self.parse("auto.leader.rebalance.enable")?;
        let check_s: u64 = self.parse("leader.imbalance.check.interval.seconds")?;
        if check_s < 1 {
            bail!("leader.imbalance.check.interval.seconds must be at least 1");
        }
        c.leader_imbalance_check_interval_ms = check_s.saturating_mul(1000);
        c.leader_imbalance_per_broker_percentage =
            self.parse("leader.imbalance.per.broker.percentage")?;
        if c.leader_imbalance_per_broker_percentage > 100 {
            bail!("leader.imbalance.per.broker.percentage must be between 0 and 100");
        }
        if c.num_partitions < 1 {
            bail!(
                "num.partitions must be at least 1 (got {})",
                c.num_partitions
            );
        }
        if c.default_replication_factor < 1 {
            bail!(
                "default.replication.factor must be at least 1 (got {})",
                c.default_replication_factor
            );
        }
        if c.broker_heartbeat_interval_ms >= c.broker_session_timeout_ms {
            bail!("broker.heartbeat.interval.ms must be below broker.session.timeout.ms");
        }
        Ok(c)
    }
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_in_docs_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == reference_markdown(),
            "docs/configuration.md is out of date: run `cargo run -p sluice -- config reference > docs/configuration.md`"
        );
    }

    #[test]
    fn file_then_env_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "\"node.id\" = 2\n\"controller.quorum.voters\" = \"1@a:1,2@b:2,3@c:3\"\n\"listeners\" = \"CONTROLLER://127.0.0.1:7000\"\n\"log.dirs\" = \"/data/a,/data/b\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "SLUICE_BROKER_SESSION_TIMEOUT_MS").then(|| "5000".to_string());
        let c = NodeConfig::load(Some(&path), env, &["num.partitions=3".to_string()]).unwrap();
        let cc = c.controller_config().unwrap();
        assert_eq!(cc.node_id, 2);
        assert_eq!(cc.broker_session_timeout_ms, 5000);
        assert_eq!(cc.num_partitions, 3);
        assert_eq!(
            cc.metadata_dir,
            PathBuf::from("/data/a/__cluster_metadata-0")
        );
        assert_eq!(c.controller_bind_address().unwrap(), "127.0.0.1:7000");
        assert_eq!(c.roles().unwrap(), vec![Role::Broker, Role::Controller]);
    }

    #[test]
    fn mistakes_are_named() {
        let none = |_: &str| None;
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            NodeConfig::load(None, none, &o)
                .and_then(|c| c.controller_config().map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["nope=1"]).contains("unknown setting"));
        assert!(err(&["node.id=x"]).contains("node.id"));
        assert!(err(&["node.id=1"]).contains("controller.quorum.voters"));
        assert!(err(&["node.id=4", "controller.quorum.voters=1@a:1"]).contains("not in"));
        assert_eq!(env_name("log.dirs"), "SLUICE_LOG_DIRS");
        assert_eq!(env_name("a-b_c"), "SLUICE_A__B___C");
    }

    #[test]
    fn broker_settings_use_kafkas_names() {
        let o: Vec<String> = [
            "node.id=3",
            "log.dirs=/data/x",
            "log.retention.hours=2",
            "message.max.bytes=5000",
            "replica.lag.time.max.ms=1234",
            "auto.create.topics.enable=false",
            "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://:9093",
            "advertised.listeners=PLAINTEXT://kafka-3:19092",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = NodeConfig::load(None, |_| None, &o).unwrap();
        let b = c.broker_config(vec![]).unwrap();
        assert_eq!(b.broker_id, 3);
        assert_eq!(b.log_dir, PathBuf::from("/data/x"));
        assert_eq!(b.log.retention_ms, 2 * 3_600_000);
        assert_eq!(b.log.max_message_bytes, 5000);
        assert_eq!(b.replica_lag_time_max_ms, 1234);
        assert!(!b.auto_create_topics_enable);
        let (name, bind) = c.broker_listeners().unwrap().remove(0);
        assert_eq!(
            (name.as_str(), bind.as_str()),
            ("PLAINTEXT", "0.0.0.0:9092")
        );
        let e = c
            .advertised_endpoint(&name, "0.0.0.0:9092".parse().unwrap())
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("kafka-3", 19092));
        let bad = NodeConfig::load(
            None,
            |_| None,
            &["log.dirs=/a,/b".to_string(), "node.id=1".to_string()],
        )
        .unwrap()
        .broker_config(vec![])
        .unwrap_err()
        .to_string();
        assert!(bad.contains("exactly one directory"), "{bad}");
    }

    #[test]
    fn listeners_keep_their_order_and_the_inter_broker_one_leads() {
        let load = |o: &[&str]| {
            let mut o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            o.extend(["node.id=1".to_string(), "log.dirs=/data".to_string()]);
            NodeConfig::load(None, |_| None, &o).and_then(|c| c.broker_listeners())
        };
        let names = |o: &[&str]| -> Vec<String> {
            load(o).unwrap().into_iter().map(|(name, _)| name).collect()
        };
        let two = "listeners=PLAINTEXT_HOST://:29092,BROKER://:9092,CONTROLLER://:9093";
        let map = "listener.security.protocol.map=PLAINTEXT_HOST:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT";
        // no inter.broker.listener.name: the first written (not the first by name)
        assert_eq!(names(&[two, map]), ["PLAINTEXT_HOST", "BROKER"]);
        assert_eq!(
            names(&[two, map, "inter.broker.listener.name=BROKER"]),
            ["BROKER", "PLAINTEXT_HOST"]
        );
        let err = |o: &[&str]| load(o).unwrap_err().to_string();
        let e = err(&[two, map, "inter.broker.listener.name=OTHER"]);
        assert!(e.contains("inter.broker.listener.name \"OTHER\""), "{e}");
        // every listener needs a PLAINTEXT protocol, explicitly or by its standard name
        let e = err(&[two]);
        assert!(
            e.contains("listener PLAINTEXT_HOST has no security protocol"),
            "{e}"
        );
        let e = err(&[
            two,
            "listener.security.protocol.map=PLAINTEXT_HOST:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]);
        assert!(e.contains("does not name the listener BROKER"), "{e}");
        let e = err(&[
            two,
            "listener.security.protocol.map=PLAINTEXT_HOST:SSL,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]);
        assert!(e.contains("PLAINTEXT_HOST uses SSL"), "{e}");
        let e = err(&["listeners=SASL_SSL://:9092,CONTROLLER://:9093"]);
        assert!(e.contains("SASL_SSL uses SASL_SSL"), "{e}");
        let e = err(&[two, "listener.security.protocol.map=PLAINTEXT_HOST"]);
        assert!(e.contains("is not NAME:PROTOCOL"), "{e}");
        // standard names and the controller listener need no map
        assert_eq!(
            names(&["listeners=PLAINTEXT://:9092,CONTROLLER://:9093"]),
            ["PLAINTEXT"]
        );
        // a name or a port used twice is refused, not silently merged
        let e = err(&["listeners=PLAINTEXT://:9092,PLAINTEXT://:9094,CONTROLLER://:9093"]);
        assert!(e.contains("PLAINTEXT is used twice"), "{e}");
        let e = err(&[
            "listeners=PLAINTEXT://:9092,CONTROLLER://:9092",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]);
        assert!(e.contains("port 9092 is used twice"), "{e}");
    }

    #[test]
    fn the_high_watermark_checkpoint_interval_is_kafkas_setting() {
        let load = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            NodeConfig::load(None, |_| None, &o)
                .unwrap()
                .broker_config(vec![])
                .unwrap()
                .high_watermark_checkpoint_interval_ms
        };
        assert_eq!(load(&["node.id=1"]), 5000);
        assert_eq!(
            load(&[
                "node.id=1",
                "replica.high.watermark.checkpoint.interval.ms=250"
            ]),
            250
        );
    }
}
