//! Fetch: whole batches from each partition's log, sent from the segment files with
//! sendfile (the record sets are file chunks of the response). Consumers read below the
//! high watermark, followers (replica_id ≥ 0) up to the log end.
//!
//! Long poll: with fewer than `min_bytes` available and no error, the request waits up to
//! `max_wait_ms`, woken whenever the log end or high watermark of one of its own
//! partitions moves (see `purgatory`), then reads again. `max_bytes` bounds the response and `partition_max_bytes` each partition,
//! except that the first batch found is always sent whole (so a batch larger than the
//! limits cannot stall a consumer). Fetch sessions (KIP-227) are not kept: every request
//! is a full fetch and the response's session id is 0, which clients treat as "no session".

use std::time::Duration;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use sluice_metadata::error_code as ec;
use sluice_protocol::{encode_fetch_response, FileChunk, RequestFrame};
use sluice_record::{Offset, TopicPartition};

use super::{decode, respond, str_bytes, uuid_of, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::partition::FetchIsolation;
use crate::purgatory::ParkedRequest;

/// The longest wait honoured, whatever the client asks.
const MAX_WAIT_CAP_MS: i32 = 60_000;

struct ReadPass {
    response: FetchResponse,
    files: Vec<Vec<Option<FileChunk>>>,
    bytes: u64,
    errors: bool,
}

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: FetchRequest = decode(request)?;
    let version = request.api_version;
    if body.session_id != 0 && body.session_epoch > 0 {
        let response = FetchResponse::default()
            .with_error_code(ec::FETCH_SESSION_ID_NOT_FOUND)
            .with_session_id(0);
        return respond(request, &response);
    }
    let replica_id = if version >= 15 {
        body.replica_state.replica_id.0
    } else {
        body.replica_id.0
    };
    let isolation = if replica_id >= 0 {
        FetchIsolation::LogEnd
    } else {
        FetchIsolation::HighWatermark
    };

    broker.sync_partitions_unless_busy();
    // names of topics asked by id (v13+)
    let names: Vec<Option<String>> = broker.with_image(|image| {
        body.topics
            .iter()
            .map(|t| {
                if version >= 13 {
                    image
                        .topics()
                        .find(|x| uuid_of(&x.topic_id) == t.topic_id)
                        .map(|x| x.name.clone())
                } else {
                    Some(t.topic.0.to_string())
                }
            })
            .collect()
    });
    if replica_id >= 0 {
        // a follower's fetch offset is its log end offset: the leader's HW input
        report_follower_positions(broker, &body, &names, replica_id);
    }
    let min_bytes = body.min_bytes.max(0) as u64;
    let wait = Duration::from_millis(body.max_wait_ms.clamp(0, MAX_WAIT_CAP_MS) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    // woken by the partitions read, each watched before it is read (no move is missed)
    let parked = ParkedRequest::new();
    loop {
        let pass = read_all(broker, &body, &names, isolation, version, &parked);
        let timed_out = tokio::time::Instant::now() >= deadline;
        if pass.bytes >= min_bytes.max(1) || pass.errors || timed_out {
            record_metrics(broker, &pass, &names, replica_id >= 0);
            let header_version = request.api_key.response_header_version(version);
            let chunks = encode_fetch_response(
                request.correlation_id,
                header_version,
                version,
                &pass.response,
                &pass.files,
            )?;
            return Ok(Some(chunks));
        }
        let waiting = std::time::Instant::now();
        let _ = tokio::time::timeout_at(deadline, parked.woken()).await;
        // a long poll waits for data: Kafka counts it as remote time too
        crate::request_metrics::add_remote_wait(waiting.elapsed());
    }
}

/// Bytes sent to consumers per topic, and every partition's error code.
fn record_metrics(broker: &Broker, pass: &ReadPass, names: &[Option<String>], follower: bool) {
    for ((topic, files), name) in pass.response.responses.iter().zip(&pass.files).zip(names) {
        for p in &topic.partitions {
            if p.error_code != ec::NONE {
                broker.metrics.error("Fetch", p.error_code);
            }
        }
        if follower {
            continue;
        }
        let bytes: u64 = files.iter().flatten().map(|f| f.length).sum();
        if let (Some(name), true) = (name, bytes > 0) {
            broker.metrics.consumed(name, bytes);
        }
    }
}

fn report_follower_positions(
    broker: &Broker,
    body: &FetchRequest,
    names: &[Option<String>],
    replica_id: i32,
) {
    let now = super::now_ms();
    for (topic, name) in body.topics.iter().zip(names) {
        let Some(name) = name else { continue };
        for fp in &topic.partitions {
            let tp = TopicPartition::new(name.clone(), fp.partition);
            if let Some(partition) = broker.replicas.partition(&tp) {
                partition.on_follower_fetch(replica_id, Offset(fp.fetch_offset), now);
            }
        }
    }
}

fn read_all(
    broker: &Broker,
    body: &FetchRequest,
    names: &[Option<String>],
    isolation: FetchIsolation,
    version: i16,
    parked: &ParkedRequest,
) -> ReadPass {
    let mut pass = ReadPass {
        response: FetchResponse::default().with_session_id(0),
        files: Vec::with_capacity(body.topics.len()),
        bytes: 0,
        errors: false,
    };
    let mut remaining = body.max_bytes.max(0) as u64;
    let read_committed = body.isolation_level == 1;
    for (topic, name) in body.topics.iter().zip(names) {
        let mut topic_response = FetchableTopicResponse::default();
        if version >= 13 {
            topic_response.topic_id = topic.topic_id;
        } else {
            topic_response.topic = TopicName(str_bytes(name.clone().unwrap_or_default()));
        }
        let mut files = Vec::with_capacity(topic.partitions.len());
        for fp in &topic.partitions {
            let mut answer = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica((-1).into());
            if read_committed {
                answer.aborted_transactions = Some(Vec::new());
            }
            // an empty record set, never null (what Kafka sends; librdkafka 2.0.2 refuses null)
            answer.records = Some(bytes::Bytes::new());
            let mut file = None;
            let code = match name {
                None => ec::UNKNOWN_TOPIC_ID,
                Some(name) => {
                    let tp = TopicPartition::new(name.clone(), fp.partition);
                    match broker.replicas.partition(&tp) {
                        None => {
                            let known = broker
                                .with_image(|image| image.partition(name, fp.partition).is_some());
                            if known {
                                ec::NOT_LEADER_OR_FOLLOWER
                            } else {
                                ec::UNKNOWN_TOPIC_OR_PARTITION
                            }
                        }
                        Some(partition) => {
                            partition.watch(parked);
                            let limit = (fp.partition_max_bytes.max(0) as u64).min(remaining);
                            let read = partition.read(
                                Offset(fp.fetch_offset),
                                limit as usize,
                                isolation,
                                pass.bytes == 0,
                                fp.current_leader_epoch,
                            );
                            match read {
                                Ok((info, high_watermark)) => {
                                    answer.high_watermark = high_watermark.0;
                                    answer.last_stable_offset = high_watermark.0;
                                    answer.log_start_offset = info.log_start_offset.0;
                                    if let Some(region) = info.region {
                                        pass.bytes += region.length;
                                        remaining = remaining.saturating_sub(region.length);
                                        file = Some(FileChunk {
                                            file: region.shared_file(),
                                            position: region.position,
                                            length: region.length,
                                        });
                                    }
                                    ec::NONE
                                }
                                Err(e) => {
                                    if let Ok((start, hw, _)) = partition.offsets(-1) {
                                        answer.high_watermark = hw.0;
                                        answer.last_stable_offset = hw.0;
                                        answer.log_start_offset = start.0;
                                    }
                                    e.error_code()
                                }
                            }
                        }
                    }
                }
            };
            if code != ec::NONE {
                pass.errors = true;
            }
            if version < 5 {
                answer.log_start_offset = -1;
            }
            answer.error_code = code;
            topic_response.partitions.push(answer);
            files.push(file);
        }
        pass.response.responses.push(topic_response);
        pass.files.push(files);
    }
    pass
}
