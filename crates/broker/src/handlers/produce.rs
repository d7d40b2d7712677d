//! Produce: each partition's record set is validated (magic, sizes, CRC32C — never
//! decompressed or re-encoded), stamped with offsets and the leader epoch, and appended to
//! the leader's log.
//!
//! acks=0: no response (an error closes the connection, as in Kafka, so the client
//! notices); acks=1: answered after the local append; acks=all (-1): refused with
//! NOT_ENOUGH_REPLICAS when |ISR| < `min.insync.replicas`, else parked until the high
//! watermark passes the batch (REQUEST_TIMED_OUT at the request's timeout), or until this
//! broker stops leading in the epoch it appended in (REQUEST_TIMED_OUT at once: only that
//! leadership's high watermark could commit the batch here, but a follower may already
//! hold it and keep it as the next leader).
//!
//! Why not NOT_LEADER_OR_FOLLOWER there, as Kafka answers: clients read that code as
//! "not written" (librdkafka reports such a record as `NOT_PERSISTED` once it gives up),
//! yet the batch can survive on the new leader — a failed write that consumers then read
//! (found by the chaos suite, seed 1796028506). REQUEST_TIMED_OUT is the code every
//! client reads as "outcome unknown, retry"; the retry finds this broker not leading and
//! gets NOT_LEADER_OR_FOLLOWER, which refreshes its metadata.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;
use sluice_record::{Offset, TopicPartition};

use super::{decode, now_ms, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::partition::{AcksAllOutcome, Partition};
use crate::purgatory::ParkedRequest;

/// A partition answer waiting for the high watermark (acks=all).
struct Parked {
    topic: usize,
    partition: usize,
    waiting_on: Arc<Partition>,
    last_offset: Offset,
    leader_epoch: i32,
}

impl Parked {
    fn outcome(&self) -> AcksAllOutcome {
        self.waiting_on
            .acks_all_outcome(self.last_offset, self.leader_epoch)
    }
}

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    append(request, broker)?.answer(request, broker).await
}

/// A produce request after its first stage: every partition's record set appended (or
/// refused), the answers that wait for the high watermark parked.
pub struct Appended {
    response: ProduceResponse,
    parked: Vec<Parked>,
    acks: i16,
    timeout: Duration,
}

/// The first stage of a produce (Redpanda's "dispatched"): appends each partition's record
/// set, at once and without waiting for anything, so that a connection's produce requests
/// are appended in the order they arrive (see `connection`). An acks=0 request that fails
/// is an error: the connection closes.
pub fn append(request: &RequestFrame, broker: &Broker) -> Result<Appended, ConnectionError> {
    let body: ProduceRequest = decode(request)?;
    let acks = body.acks;
    let timeout = Duration::from_millis(body.timeout_ms.max(0) as u64);
    if !matches!(acks, -1..=1) {
        if acks == 0 {
            return Err(ConnectionError::AcksZeroFailed(ec::INVALID_REQUIRED_ACKS));
        }
        return Ok(Appended {
            response: error_response(&body, ec::INVALID_REQUIRED_ACKS),
            parked: Vec::new(),
            acks,
            timeout,
        });
    }
    let mut response = ProduceResponse::default();
    let mut parked: Vec<Parked> = Vec::new();
    let mut first_error = None;
    for topic in &body.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in &topic.partition_data {
            let tp = TopicPartition::new(name.clone(), data.index);
            let mut answer = PartitionProduceResponse::default().with_index(data.index);
            match append_partition(broker, &tp, data.records.as_deref(), acks) {
                Ok((partition, result)) => {
                    if !result.duplicate {
                        let bytes = data.records.as_ref().map_or(0, |r| r.len() as u64);
                        broker.metrics.produced(&name, bytes, result.record_count);
                    }
                    answer.base_offset = result.base_offset.0;
                    answer.log_start_offset = result.log_start_offset.0;
                    let parked_answer = Parked {
                        topic: response.responses.len(),
                        partition: partitions.len(),
                        waiting_on: partition,
                        last_offset: result.last_offset,
                        leader_epoch: result.leader_epoch,
                    };
                    // committed already (a leader alone in its ISR): nothing to wait for
                    if acks == -1 && parked_answer.outcome() != AcksAllOutcome::Committed {
                        parked.push(parked_answer);
                    }
                }
                Err((code, message)) => {
                    broker.metrics.error("Produce", code);
                    first_error.get_or_insert(code);
                    answer.error_code = code;
                    answer.base_offset = -1;
                    answer.error_message = message.map(str_bytes);
                }
            }
            partitions.push(answer);
        }
        response.responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partitions),
        );
    }
    if let (0, Some(code)) = (acks, first_error) {
        return Err(ConnectionError::AcksZeroFailed(code));
    }
    Ok(Appended {
        response,
        parked,
        acks,
        timeout,
    })
}

impl Appended {
    /// The second stage: waits for the high watermark to pass every parked answer (acks=all,
    /// up to the request's timeout), then encodes the response (none for acks=0).
    pub async fn answer(
        self,
        request: &RequestFrame,
        broker: &Broker,
    ) -> Result<Answer, ConnectionError> {
        let Appended {
            mut response,
            parked,
            acks,
            timeout,
        } = self;
        if acks == 0 {
            return Ok(None);
        }
        if parked.is_empty() {
            return respond(request, &response);
        }
        let waiting = std::time::Instant::now();
        wait_for_high_watermark(&parked, timeout).await;
        crate::request_metrics::add_remote_wait(waiting.elapsed());
        for p in &parked {
            // either way the batch is in this log and may be committed later (or
            // elsewhere): an unknown outcome, never a refusal
            let message = match p.outcome() {
                AcksAllOutcome::Committed => continue,
                AcksAllOutcome::Waiting => "not replicated to the ISR within timeout_ms",
                AcksAllOutcome::LeadershipLost => {
                    "leadership moved before the batch was committed; the new leader may hold it"
                }
            };
            let code = ec::REQUEST_TIMED_OUT;
            broker.metrics.error("Produce", code);
            let answer = &mut response.responses[p.topic].partition_responses[p.partition];
            answer.error_code = code;
            answer.base_offset = -1;
            answer.error_message = Some(str_bytes(message));
        }
        respond(request, &response)
    }
}

type ProduceError = (i16, Option<String>);

fn append_partition(
    broker: &Broker,
    tp: &TopicPartition,
    records: Option<&[u8]>,
    acks: i16,
) -> Result<(Arc<Partition>, crate::partition::AppendResult), ProduceError> {
    let Some(partition) = broker.replicas.partition(tp) else {
        let known = broker.with_image(|image| image.partition(&tp.topic, tp.partition).is_some());
        let code = if known {
            ec::NOT_LEADER_OR_FOLLOWER
        } else {
            ec::UNKNOWN_TOPIC_OR_PARTITION
        };
        return Err((code, None));
    };
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Err((ec::CORRUPT_MESSAGE, Some("empty record set".to_string())));
    };
    // the log stamps offsets and the epoch in place: the one copy of the bytes
    let mut records = records.to_vec();
    match partition.append_as_leader(&mut records, acks, now_ms()) {
        Ok(result) => Ok((partition, result)),
        Err(e) => {
            tracing::debug!(partition = %tp, error = %e, "produce refused");
            Err((e.error_code(), Some(e.to_string())))
        }
    }
}

/// Waits until every parked answer is settled, woken only by the partitions it waits on.
async fn wait_for_high_watermark(parked: &[Parked], timeout: Duration) {
    let request = ParkedRequest::new();
    for p in parked {
        p.waiting_on.watch(&request);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if parked
            .iter()
            .all(|p| p.outcome() != AcksAllOutcome::Waiting)
        {
            return;
        }
        if tokio::time::timeout_at(deadline, request.woken())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn error_response(body: &ProduceRequest, code: i16) -> ProduceResponse {
    let responses = body
        .topic_data
        .iter()
        .map(|t| {
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}
