//! A node's configuration, Kafka-style: a TOML file whose keys are Kafka's names
//! (`node.id`, `process.roles`, `controller.quorum.voters`, `listeners`, `log.dirs`, ...),
//! overridden by `SLUICE_*` environment variables (Kafka's docker mapping: `.` → `_`,
//! `-` → `__`, `_` → `___`, upper case; e.g. `SLUICE_NODE_ID`), then by `--override
//! key=value` flags. Unknown keys are refused, so a typo does not silently fall back to a
//! default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sluice_controller::ControllerConfig;

/// Every key this build understands, with its default ("" = required or none).
const KEYS: &[(&str, &str)] = &[
    ("node.id", ""),
    ("process.roles", "broker,controller"),
    ("controller.quorum.voters", ""),
    ("controller.listener.names", "CONTROLLER"),
    ("listeners", "PLAINTEXT://:9092,CONTROLLER://:9093"),
    ("log.dirs", "/tmp/sluice-logs"),
    ("metadata.log.dir", ""),
    ("cluster.id", "sluice-cluster"),
    ("broker.session.timeout.ms", "9000"),
    ("broker.heartbeat.interval.ms", "2000"),
    ("controller.quorum.election.timeout.ms", "1000"),
    ("unclean.leader.election.enable", "false"),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
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
            .filter(|(_, d)| !d.is_empty())
            .map(|(k, d)| (k.to_string(), d.to_string()))
            .collect();
        let known = |key: &str| KEYS.iter().any(|(k, _)| *k == key);
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
        for (key, _) in KEYS {
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

    /// `listeners` as name → (host, port).
    pub fn listeners(&self) -> Result<BTreeMap<String, (String, u16)>> {
        let mut out = BTreeMap::new();
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
            out.insert(name.to_string(), (host.to_string(), port));
        }
        Ok(out)
    }

    /// The address the controller listener binds.
    pub fn controller_bind_address(&self) -> Result<String> {
        let name = self.get("controller.listener.names")?;
        let name = name.split(',').next().unwrap_or("CONTROLLER").trim();
        let (host, port) = self
            .listeners()?
            .remove(name)
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

    pub fn controller_config(&self) -> Result<ControllerConfig> {
        let node_id = self.node_id()?;
        let voters = ControllerConfig::parse_voters(self.get("controller.quorum.voters")?)?;
        if !voters.contains_key(&node_id) {
            bail!("node.id {node_id} is not in controller.quorum.voters");
        }
        let mut c = ControllerConfig::new(node_id, voters, self.metadata_dir()?);
        c.cluster_id = self.get("cluster.id")?.to_string();
        c.broker_session_timeout_ms = self.parse("broker.session.timeout.ms")?;
        c.broker_heartbeat_interval_ms = self.parse("broker.heartbeat.interval.ms")?;
        c.election_timeout_ms = self.parse("controller.quorum.election.timeout.ms")?;
        c.raft_heartbeat_interval_ms = (c.election_timeout_ms / 5).max(10);
        c.unclean_leader_election_enable = self.parse("unclean.leader.election.enable")?;
        c.num_partitions = self.parse("num.partitions")?;
        c.default_replication_factor = self.parse("default.replication.factor")?;
        if c.broker_heartbeat_interval_ms >= c.broker_session_timeout_ms {
            bail!("broker.heartbeat.interval.ms must be below broker.session.timeout.ms");
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
