//! Request metrics (prometheus-client families, read by the node's `/metrics`): requests
//! per API, produce and fetch errors per Kafka error code, bytes and records produced per
//! topic, bytes fetched by consumers per topic, and request time split the way Kafka's
//! TotalTimeMs is ([`RequestTimes`]): `request_queue` (read, waiting for its turn on the
//! connection), `local` (the handler's own work), `remote` (waiting for the followers on an
//! acks=all produce, or for data on a long-polling fetch), `response_queue` (answered,
//! waiting for the connection's earlier answers), `send` (writing the response) and
//! `total`.
//!
//! Invariant: the five parts add up to `total` for every request (each measured once).

use std::cell::Cell;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

pub type Labels = Vec<(String, String)>;

fn time_histogram() -> Histogram {
    // 0.05 ms .. ~1.6 s
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

#[derive(Clone)]
pub struct RequestMetrics {
    /// `requests_total{request}`.
    pub requests: Family<Labels, Counter>,
    /// `request_errors_total{request, error}`: per partition for Produce and Fetch.
    pub errors: Family<Labels, Counter>,
    /// `request_time_ms{request, stage}`, stage = request_queue | local | remote |
    /// response_queue | send | total.
    pub time_ms: Family<Labels, Histogram, fn() -> Histogram>,
    /// `topic_bytes_in_total{topic}`: record-set bytes appended by producers.
    pub bytes_in: Family<Labels, Counter>,
    /// `topic_records_in_total{topic}`.
    pub records_in: Family<Labels, Counter>,
    /// `topic_bytes_out_total{topic}`: record bytes sent to consumers (not followers).
    pub bytes_out: Family<Labels, Counter>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            errors: Family::default(),
            time_ms: Family::new_with_constructor(time_histogram),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
        }
    }
}

fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One answered request's time, from its frame read to its answer written, in Kafka's
/// parts (RequestQueueTimeMs, LocalTimeMs, RemoteTimeMs, ResponseQueueTimeMs,
/// ResponseSendTimeMs); they add up to [`RequestTimes::total`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTimes {
    /// Read, waiting for its turn: a produce for a free pipeline slot, any other request
    /// for every earlier answer of its connection to be written.
    pub request_queue: Duration,
    /// The handler's own work (a produce: validating and appending).
    pub local: Duration,
    /// Waiting on others: the followers (acks=all), or data (a long-polling fetch).
    pub remote: Duration,
    /// Answered, waiting for the connection's earlier answers to be written.
    pub response_queue: Duration,
    /// Writing the answer.
    pub send: Duration,
}

impl RequestTimes {
    pub fn total(&self) -> Duration {
        self.request_queue + self.local + self.remote + self.response_queue + self.send
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn record(&self, request: &str, times: &RequestTimes) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.requests
            .get_or_create(&label(&[("request", request)]))
            .inc();
        for (stage, d) in [
            ("request_queue", times.request_queue),
            ("local", times.local),
            ("remote", times.remote),
            ("response_queue", times.response_queue),
            ("send", times.send),
            ("total", times.total()),
        ] {
            self.time_ms
                .get_or_create(&label(&[("request", request), ("stage", stage)]))
                .observe(ms(d));
        }
    }

    pub fn error(&self, request: &str, code: i16) {
        self.errors
            .get_or_create(&label(&[
                ("request", request),
                ("error", &sluice_metadata::error_code::name(code)),
            ]))
            .inc();
    }

    pub fn produced(&self, topic: &str, bytes: u64, records: u64) {
        let topic = label(&[("topic", topic)]);
        self.bytes_in.get_or_create(&topic).inc_by(bytes);
        self.records_in.get_or_create(&topic).inc_by(records);
    }

    pub fn consumed(&self, topic: &str, bytes: u64) {
        self.bytes_out
            .get_or_create(&label(&[("topic", topic)]))
            .inc_by(bytes);
    }
}

tokio::task_local! {
    /// Time the current request spent waiting on others (see the module doc).
    static REMOTE_WAIT: Cell<Duration>;
}

/// Runs `f` (one request's handler) and returns its output with the remote wait it
/// reported through [`add_remote_wait`].
pub async fn with_remote_wait<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    REMOTE_WAIT
        .scope(Cell::new(Duration::ZERO), async {
            let out = f.await;
            (out, REMOTE_WAIT.with(Cell::get))
        })
        .await
}

/// Adds `waited` to the current request's remote time (no-op outside a request).
pub fn add_remote_wait(waited: Duration) {
    let _ = REMOTE_WAIT.try_with(|c| c.set(c.get() + waited));
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[tokio::test]
    async fn stages_add_up_and_the_remote_wait_is_per_request() {
        let (_, remote) = with_remote_wait(async {
            add_remote_wait(Duration::from_millis(3));
            add_remote_wait(Duration::from_millis(2));
        })
        .await;
        assert_eq!(remote, Duration::from_millis(5));
        let (_, remote) = with_remote_wait(async {}).await;
        assert_eq!(remote, Duration::ZERO);
        add_remote_wait(Duration::from_secs(1)); // outside a request: ignored

        let m = RequestMetrics::default();
        m.record(
            "Produce",
            &RequestTimes {
                request_queue: Duration::from_millis(2),
                local: Duration::from_millis(3),
                remote: Duration::from_millis(7),
                response_queue: Duration::from_millis(4),
                send: Duration::from_millis(1),
            },
        );
        m.error("Produce", 6);
        m.produced("t", 100, 3);
        let mut registry = Registry::default();
        registry.register("request_time_ms", "", m.time_ms.clone());
        registry.register("request_errors", "", m.errors.clone());
        registry.register("topic_records_in", "", m.records_in.clone());
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"request_time_ms_sum{request="Produce",stage="remote"} 7"#),
            "{out}"
        );
        assert!(
            out.contains(r#"request_time_ms_sum{request="Produce",stage="local"} 3"#),
            "{out}"
        );
        assert!(
            out.contains(r#"request_time_ms_sum{request="Produce",stage="request_queue"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"request_time_ms_sum{request="Produce",stage="response_queue"} 4"#),
            "{out}"
        );
        assert!(
            out.contains(r#"request_time_ms_sum{request="Produce",stage="total"} 17"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"request_errors_total{request="Produce",error="NOT_LEADER_OR_FOLLOWER"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"topic_records_in_total{topic="t"} 3"#),
            "{out}"
        );
    }
}
