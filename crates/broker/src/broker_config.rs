//! The broker role's settings, named after Kafka's (`message.max.bytes`,
//! `auto.create.topics.enable`, ...). Parsing files and flags is the binary's job; this is
//! the typed result.

use std::path::PathBuf;

use sluice_log::LogConfig;
use sluice_metadata::proto::metadata as pb;

use crate::group_coordinator::GroupConfig;
use crate::topic_config::TopicDefaults;

/// `log.scrub.bytes.per.second` by default: a pass over 100 GiB takes about 3.5 hours.
pub const DEFAULT_SCRUB_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`.
    pub broker_id: i32,
    /// `log.dirs` (one directory).
    pub log_dir: PathBuf,
    /// `advertised.listeners`: what Metadata tells clients to connect to.
    pub advertised_endpoints: Vec<pb::Endpoint>,
    pub rack: Option<String>,
    /// Controller listeners (`host:port`), any of which forwards to the quorum's leader.
    pub controllers: Vec<String>,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// Send fetched record sets with sendfile(2) (`sluice.fetch.sendfile.enable`).
    pub use_sendfile: bool,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `delete.topic.enable`.
    pub delete_topic_enable: bool,
    /// Log settings of partitions (topic overrides are applied on top).
    pub log: LogConfig,
    /// Broker-level defaults of topic configs.
    pub topic_defaults: TopicDefaults,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `controlled.shutdown.enable`: on SIGTERM move leaderships away before stopping.
    pub controlled_shutdown_enable: bool,
    /// `sluice.controlled.shutdown.timeout.ms`: how long controlled shutdown may take
    /// before the broker stops anyway.
    pub controlled_shutdown_timeout_ms: u64,
    /// How often the high watermarks are checkpointed (Kafka:
    /// `replica.high.watermark.checkpoint.interval.ms`).
    pub high_watermark_checkpoint_interval_ms: u64,
    /// `log.scrub.bytes.per.second`: how fast the background scrub reads the logs to check
    /// every batch (0: no scrub). Sluice's own; Kafka has no scrub.
    pub scrub_bytes_per_second: u64,
    /// `sluice.log.scrub.interval.ms`: the least time from the start of one scrub pass to
    /// the start of the next (a small log is not read over and over).
    pub scrub_interval_ms: u64,
    /// `group.min.session.timeout.ms`, `group.max.session.timeout.ms`, `group.max.size`,
    /// `group.initial.rebalance.delay.ms`.
    pub group: GroupConfig,
    /// `max.incremental.fetch.session.cache.slots`: how many fetch sessions (KIP-227)
    /// the broker keeps (0: none; every fetch is then a full one).
    pub fetch_session_cache_slots: usize,
    /// `sluice.log.max.open.files` as set (0: automatic, resolved by the binary from the
    /// open files limit into `log.open_files`).
    pub log_max_open_files: usize,
    /// `sluice.replica.fetch.sessions.enable`: followers fetch through fetch sessions
    /// (KIP-227). Off by default until the instability seen with them at 10,000
    /// partitions is understood (docs/benchmarks.md).
    pub replica_fetch_sessions: bool,
}

impl BrokerConfig {
    /// The endpoint of `broker` that followers fetch from and other brokers use: the one
    /// named by this broker's first advertised listener (`inter.broker.listener.name`,
    /// which the binary puts first), else its first.
    pub fn endpoint_of<'a>(&self, broker: &'a pb::Broker) -> Option<&'a pb::Endpoint> {
        let listener = self.advertised_endpoints.first().map(|e| e.name.as_str());
        self.endpoint_on(broker, listener)
    }

    /// The endpoint of `broker` on listener `name` — what a client that reached this broker
    /// on that listener is told — else the inter-broker one ([`Self::endpoint_of`]).
    pub fn endpoint_on<'a>(
        &self,
        broker: &'a pb::Broker,
        name: Option<&str>,
    ) -> Option<&'a pb::Endpoint> {
        let inter_broker = self.advertised_endpoints.first().map(|e| e.name.as_str());
        let find = |n: Option<&str>| broker.endpoints.iter().find(|e| Some(e.name.as_str()) == n);
        find(name)
            .or_else(|| find(inter_broker))
            .or(broker.endpoints.first())
    }

    /// A broker with Kafka's defaults, for `log_dir`, reaching `controllers`.
    pub fn new(broker_id: i32, log_dir: PathBuf, controllers: Vec<String>) -> Self {
        BrokerConfig {
            broker_id,
            log_dir,
            advertised_endpoints: Vec::new(),
            rack: None,
            controllers,
            heartbeat_interval_ms: 2000,
            socket_request_max_bytes: 104_857_600,
            use_sendfile: true,
            auto_create_topics_enable: true,
            delete_topic_enable: true,
            log: LogConfig::default(),
            topic_defaults: TopicDefaults::default(),
            retention_check_interval_ms: 300_000,
            replica_lag_time_max_ms: 30_000,
            controlled_shutdown_enable: true,
            controlled_shutdown_timeout_ms: 30_000,
            high_watermark_checkpoint_interval_ms: 5000,
            scrub_bytes_per_second: DEFAULT_SCRUB_BYTES_PER_SECOND,
            scrub_interval_ms: 60_000,
            group: GroupConfig::default(),
            fetch_session_cache_slots: crate::fetch_session::DEFAULT_CACHE_SLOTS,
            log_max_open_files: 0,
            replica_fetch_sessions: false,
        }
    }
}
