//! The node's HTTP admin listener (`admin.listener`, off the Kafka port): `/metrics` in
//! Prometheus text format (prometheus-client), `/healthz` (the process answers) and
//! `/readyz` (the broker is registered, unfenced and caught up with the metadata; a
//! controller-only node once it knows a quorum leader).
//!
//! Metrics are read from the node's state at each scrape, with the meanings operators know
//! from Kafka's dashboards: a broker counts what it leads (as Kafka's ReplicaManager does),
//! the active controller counts cluster-wide state (offline partitions, fenced brokers; 0
//! on the other controllers, as Kafka's KafkaController metrics).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_broker::Broker;
use sluice_controller::ControllerStatusReader;

/// What the endpoint reads: the node's broker and controller, whichever it runs.
#[derive(Clone, Default)]
pub struct AdminSources {
    pub broker: Option<Arc<Broker>>,
    pub controller: Option<ControllerStatusReader>,
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, sources: AdminSources) {
    let sources = Arc::new(sources);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = Arc::clone(&sources);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let sources = Arc::clone(&sources);
                async move { Ok::<_, Infallible>(route(&sources, request.uri().path())) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn route(sources: &AdminSources, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(sources),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_string()),
        "/readyz" => match not_ready(sources) {
            None => text(StatusCode::OK, PLAIN, "ready\n".to_string()),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    }
}

/// Why the node is not ready, if it is not.
fn not_ready(sources: &AdminSources) -> Option<&'static str> {
    if let Some(broker) = &sources.broker {
        if broker.metadata.broker_epoch() < 0 {
            return Some("not registered with the controllers");
        }
        if broker.metadata.is_fenced() {
            return Some("fenced");
        }
        if !broker.metadata.caught_up() {
            return Some("metadata not caught up");
        }
        if broker.replicas.log_dir_health().is_offline() {
            return Some("log directory offline");
        }
    } else if let Some(controller) = &sources.controller {
        if controller.status().term == 0 {
            return Some("no controller quorum yet");
        }
    }
    None
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64, AtomicI64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn metrics(sources: &AdminSources) -> String {
    let mut registry = Registry::with_prefix("sluice");
    if let Some(broker) = &sources.broker {
        broker_metrics(&mut registry, broker);
    }
    if let Some(controller) = &sources.controller {
        let s = controller.status();
        let active = |v: usize| if s.active { v as i64 } else { 0 };
        gauge(
            &mut registry,
            "controller_active",
            "1 on the node leading the controller quorum (Kafka's ActiveControllerCount)",
            i64::from(s.active),
        );
        gauge(
            &mut registry,
            "controller_raft_term",
            "Raft term",
            s.term as i64,
        );
        gauge(
            &mut registry,
            "controller_raft_last_log_index",
            "index of the last entry in this node's Raft log",
            s.last_log_index as i64,
        );
        gauge(
            &mut registry,
            "controller_raft_applied_index",
            "index of the last committed entry this node applied",
            s.applied_index as i64,
        );
        gauge(
            &mut registry,
            "controller_offline_partitions",
            "partitions without a leader (active controller only, as Kafka's OfflinePartitionsCount)",
            active(s.offline_partitions),
        );
        gauge(
            &mut registry,
            "controller_fenced_brokers",
            "registered brokers that are fenced (active controller only)",
            active(s.fenced_brokers),
        );
        counter(
            &mut registry,
            "controller_leader_elections",
            "partitions given a new leader since this node started (active controller only)",
            if s.active { s.leader_elections } else { 0 },
        );
        gauge(
            &mut registry,
            "controller_registered_brokers",
            "registered brokers (active controller only)",
            active(s.brokers),
        );
    }
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

fn broker_metrics(registry: &mut Registry, broker: &Broker) {
    let mut partitions = 0i64;
    let mut leaders = 0i64;
    let mut under_replicated = 0i64;
    let mut under_min_isr = 0i64;
    let replicas = broker.replicas.partitions();
    let mut high_watermarks = HashMap::new();
    for p in &replicas {
        partitions += 1;
        if !p.is_leader() {
            continue;
        }
        leaders += 1;
        let tp = p.topic_partition();
        high_watermarks.insert((tp.topic.as_str(), tp.partition), p.high_watermark().0);
        let state = p.state();
        if state.isr.len() < state.replicas.len() {
            under_replicated += 1;
        }
        if state.isr.len() < p.min_insync_replicas() {
            under_min_isr += 1;
        }
    }
    gauge(
        registry,
        "broker_partitions",
        "partition replicas on this broker (Kafka's PartitionCount)",
        partitions,
    );
    gauge(
        registry,
        "broker_leader_partitions",
        "partitions this broker leads (Kafka's LeaderCount)",
        leaders,
    );
    gauge(
        registry,
        "broker_under_replicated_partitions",
        "partitions led here whose ISR is smaller than their replica set (Kafka's UnderReplicatedPartitions)",
        under_replicated,
    );
    gauge(
        registry,
        "broker_under_min_isr_partitions",
        "partitions led here whose ISR is below min.insync.replicas (Kafka's UnderMinIsrPartitionCount)",
        under_min_isr,
    );
    gauge(
        registry,
        "broker_offline_replicas",
        "replicas on this broker whose log cannot be opened",
        broker.replicas.offline_replicas().snapshot().len() as i64,
    );
    gauge(
        registry,
        "broker_fenced",
        "1 while the controllers have this broker fenced",
        i64::from(broker.metadata.is_fenced()),
    );
    let (sessions, session_partitions) = broker.fetch_sessions.size();
    gauge(
        registry,
        "broker_fetch_sessions",
        "incremental fetch sessions cached (Kafka's NumIncrementalFetchSessions)",
        sessions as i64,
    );
    gauge(
        registry,
        "broker_fetch_session_partitions",
        "partitions in the cached fetch sessions (Kafka's NumIncrementalFetchPartitionsCached)",
        session_partitions as i64,
    );
    let open_files = &broker.config.log.open_files;
    gauge(
        registry,
        "broker_log_open_segment_files",
        "segment files open now (sluice.log.max.open.files bounds them)",
        open_files.open_now() as i64,
    );
    let (reopens, _) = open_files.reopens_and_evictions();
    counter(
        registry,
        "broker_log_segment_file_reopens",
        "segment files opened again after the open-file budget closed them",
        reopens,
    );
    let log_dir = &broker.config.log_dir;
    gauge(
        registry,
        "broker_log_dir_offline",
        "1 while the log directory cannot take writes",
        i64::from(broker.replicas.log_dir_health().is_offline()),
    );
    if let Ok((total, usable)) = sluice_log::disk_space(log_dir) {
        gauge(
            registry,
            "broker_log_dir_total_bytes",
            "size of the log directory's file system",
            total as i64,
        );
        gauge(
            registry,
            "broker_log_dir_free_bytes",
            "bytes the log directory's file system has free for the broker",
            usable as i64,
        );
    }
    consumer_group_lag(registry, broker, &high_watermarks);
    let m = &broker.metrics;
    registry.register("requests", "requests answered, per API", m.requests.clone());
    registry.register(
        "request_errors",
        "Produce and Fetch partition answers with an error, per Kafka error code",
        m.errors.clone(),
    );
    registry.register(
        "request_time_ms",
        "request time in ms, split as Kafka's TotalTimeMs: local, remote (waiting for followers or data), send, total",
        m.time_ms.clone(),
    );
    registry.register(
        "topic_bytes_in",
        "record-set bytes producers appended (Kafka's BytesInPerSec)",
        m.bytes_in.clone(),
    );
    registry.register(
        "topic_records_in",
        "records producers appended (MessagesInPerSec)",
        m.records_in.clone(),
    );
    registry.register(
        "topic_bytes_out",
        "record bytes sent to consumers, not followers (BytesOutPerSec)",
        m.bytes_out.clone(),
    );
    let signals = broker.replicas.signals();
    counter(
        registry,
        "broker_isr_shrinks",
        "ISR members dropped by this broker as leader (Kafka's IsrShrinksPerSec)",
        signals.isr_shrinks.load(Ordering::Relaxed),
    );
    counter(
        registry,
        "broker_isr_expands",
        "ISR members added by this broker as leader (IsrExpandsPerSec)",
        signals.isr_expands.load(Ordering::Relaxed),
    );
    let producers = &signals.producer_counters;
    counter(
        registry,
        "broker_producer_duplicates_suppressed",
        "idempotent producers' retries answered without appending them again",
        producers.duplicates_suppressed.load(Ordering::Relaxed),
    );
    counter(
        registry,
        "broker_producer_out_of_order_rejections",
        "batches refused with OUT_OF_ORDER_SEQUENCE_NUMBER",
        producers.out_of_order_rejections.load(Ordering::Relaxed),
    );
    counter(
        registry,
        "broker_producer_invalid_epoch_rejections",
        "batches refused with INVALID_PRODUCER_EPOCH",
        producers.invalid_epoch_rejections.load(Ordering::Relaxed),
    );
}

/// `consumer_group_lag{group,topic,partition}`: the partition's high watermark less the
/// group's committed offset, for the partitions this broker leads. Committed offsets are
/// in every broker's metadata image and each partition has one leader, so every
/// (group, partition) is exported once across the cluster, against the exact high
/// watermark (as kafka-exporter's `kafka_consumergroup_lag`); sum by group for its lag.
fn consumer_group_lag(
    registry: &mut Registry,
    broker: &Broker,
    high_watermarks: &HashMap<(&str, i32), i64>,
) {
    let lag = Family::<Vec<(String, String)>, Gauge<i64, AtomicI64>>::default();
    broker.metadata.with_image(|image| {
        for o in image.all_committed_offsets() {
            let Some(hw) = high_watermarks.get(&(o.topic.as_str(), o.partition)) else {
                continue;
            };
            let labels = vec![
                ("group".to_string(), o.group.clone()),
                ("topic".to_string(), o.topic.clone()),
                ("partition".to_string(), o.partition.to_string()),
            ];
            lag.get_or_create(&labels).set((hw - o.offset).max(0));
        }
    });
    registry.register(
        "consumer_group_lag",
        "records between a group's committed offset and the high watermark, on the partition's leader",
        lag,
    );
}
