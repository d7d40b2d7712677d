//! Fetch: whole batches from each partition's log, sent from the segment files with
//! sendfile (the record sets are file chunks of the response). Consumers read below the
//! high watermark, followers (replica_id ≥ 0) up to the log end.
//!
//! Every fetch goes through a fetch session (`fetch_session`, KIP-227): a cached one for
//! a fetcher that asks for it (epoch 0, then incremental fetches naming only what
//! changed), a throwaway one for a full fetch without a session (epoch -1, librdkafka's).
//! A pass reads the partitions the request named, those its session left unsettled, and
//! those that moved since (all of them for a full fetch); a partition is sent back when
//! it has records, an error, or a high watermark or log start offset the fetcher was not
//! told yet (every partition, for a full fetch).
//!
//! Long poll: with fewer than `min_bytes` available and no error, the request waits up to
//! `max_wait_ms`, woken whenever the log end or high watermark of one of its session's
//! partitions moves (see `purgatory`), then reads again, adding the partitions that
//! moved. `max_bytes` bounds the response and `partition_max_bytes` each partition,
//! except that the first batch found is always sent whole (so a batch larger than the
//! limits cannot stall a consumer); partitions that sent data go last at the next reads,
//! so a small `max_bytes` cannot starve the others.
//!
//! A follower's fetch reports its position (its log end offset) for each partition it
//! names; the partitions it leaves unnamed in a session stay where they were, and the
//! session's fetches keep them caught up (`LeaderState::on_leader_append`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use sluice_metadata::error_code as ec;
use sluice_protocol::{encode_fetch_response, FileChunk, RequestFrame};
use sluice_record::{Offset, TopicPartition};

use super::{decode, respond, str_bytes, uuid_of, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;
use crate::fetch_session::{
    self, FetchPosition, FetchSession, Opened, SentState, SessionKey, TopicRef,
};
use crate::partition::FetchIsolation;

/// The longest wait honoured, whatever the client asks.
const MAX_WAIT_CAP_MS: i32 = 60_000;

/// One partition read in a pass.
struct Read {
    slot: u32,
    data: PartitionData,
    file: Option<FileChunk>,
    /// Nothing more to tell until it moves: read without error, no data waiting for it
    /// (nothing sent, and nothing before it in the pass took part of the size limit).
    settled: bool,
}

struct ReadPass {
    reads: Vec<Read>,
    bytes: u64,
    errors: bool,
}

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: FetchRequest = decode(request)?;
    let version = request.api_version;
    let replica_id = if version >= 15 {
        body.replica_state.replica_id.0
    } else {
        body.replica_id.0
    };
    let follower = (replica_id >= 0).then_some(replica_id);
    let isolation = if follower.is_some() {
        FetchIsolation::LogEnd
    } else {
        FetchIsolation::HighWatermark
    };

    broker.sync_partitions_unless_busy();
    let now = super::now_ms();
    let named: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    let opened =
        broker
            .fetch_sessions
            .open(body.session_id, body.session_epoch, follower, named, now);
    let Opened { session, full } = match opened {
        Ok(opened) => opened,
        Err(code) => {
            broker.metrics.error("Fetch", code);
            let response = FetchResponse::default()
                .with_error_code(code)
                .with_session_id(0);
            return respond(request, &response);
        }
    };
    let mut candidates = apply_request(broker, &body, version, &session, full, follower, now);
    let min_bytes = body.min_bytes.max(0) as u64;
    let wait = Duration::from_millis(body.max_wait_ms.clamp(0, MAX_WAIT_CAP_MS) as u64);
    let deadline = tokio::time::Instant::now() + wait;
    let wake = Arc::clone(fetch_session::lock(&session).wake());
    loop {
        let pass = read_pass(broker, &body, &session, &candidates, isolation, version);
        let timed_out = tokio::time::Instant::now() >= deadline;
        if pass.bytes >= min_bytes.max(1) || pass.errors || timed_out {
            let (response, files) = finish(broker, &session, pass, full, version, follower);
            let header_version = request.api_key.response_header_version(version);
            let chunks = encode_fetch_response(
                request.correlation_id,
                header_version,
                version,
                &response,
                &files,
            )?;
            return Ok(Some(chunks));
        }
        let waiting = std::time::Instant::now();
        let _ = tokio::time::timeout_at(deadline, wake.woken()).await;
        // a long poll waits for data: Kafka counts it as remote time too
        crate::request_metrics::add_remote_wait(waiting.elapsed());
        let s = fetch_session::lock(&session);
        candidates.extend(s.take_moved());
        s.read_order(&mut candidates);
    }
}

/// Brings the session up to the request (a full fetch fills it, an incremental one moves,
/// adds and forgets partitions), reports a follower's named positions, and returns the
/// slots to read, in order.
fn apply_request(
    broker: &Broker,
    body: &FetchRequest,
    version: i16,
    session: &Mutex<FetchSession>,
    full: bool,
    follower: Option<i32>,
    now: i64,
) -> Vec<u32> {
    let mut s = fetch_session::lock(session);
    s.touch(now);
    let topic_ref = |name: &TopicName, id: &uuid::Uuid| {
        if version >= 13 {
            TopicRef::Id(*id)
        } else {
            TopicRef::Name(name.0.to_string())
        }
    };
    if !full {
        for topic in &body.forgotten_topics_data {
            let topic_ref = topic_ref(&topic.topic, &topic.topic_id);
            for partition in &topic.partitions {
                s.forget(&SessionKey {
                    topic: topic_ref.clone(),
                    partition: *partition,
                });
            }
        }
    }
    // topic ids' names, looked up once per request and only if a new one is named
    let mut names_by_id: Option<HashMap<uuid::Uuid, String>> = None;
    let mut named = Vec::with_capacity(body.topics.len());
    let clock = s.clock();
    for topic in &body.topics {
        let topic_ref = topic_ref(&topic.topic, &topic.topic_id);
        for fp in &topic.partitions {
            let key = SessionKey {
                topic: topic_ref.clone(),
                partition: fp.partition,
            };
            let position = FetchPosition {
                fetch_offset: fp.fetch_offset,
                current_leader_epoch: fp.current_leader_epoch,
                partition_max_bytes: fp.partition_max_bytes,
            };
            let (slot, _) = s.upsert(key, position);
            named.push(slot);
            let Some(cached) = s.slot_mut(slot) else {
                continue;
            };
            if cached.tp.is_none() {
                let name = match &topic_ref {
                    TopicRef::Name(name) => Some(name.clone()),
                    TopicRef::Id(id) => names_by_id
                        .get_or_insert_with(|| {
                            broker.with_image(|image| {
                                image
                                    .topics()
                                    .map(|t| (uuid_of(&t.topic_id), t.name.clone()))
                                    .collect()
                            })
                        })
                        .get(id)
                        .cloned(),
                };
                cached.tp = name.map(|name| TopicPartition::new(name, fp.partition));
            }
            // a follower's fetch offset is its log end offset: the leader's HW input
            if let (Some(follower), Some(tp)) = (follower, &cached.tp) {
                if let Some(partition) = broker.replicas.partition(tp) {
                    partition.on_follower_session_fetch(
                        follower,
                        Offset(fp.fetch_offset),
                        now,
                        clock.clone(),
                    );
                }
            }
        }
    }
    // a broker that may not serve as it did (its controller lease lapsed, its log
    // directory failed) changed every partition's answer without moving any
    let normal = broker.replicas.controller_lease().is_held()
        && !broker.replicas.log_dir_health().is_offline();
    let mut slots = if full || !normal {
        s.all_slots()
    } else {
        named.extend(s.unsettled_and_moved());
        named
    };
    s.read_order(&mut slots);
    slots
}

/// Reads every slot in `candidates` (in their order), within the request's size limits.
fn read_pass(
    broker: &Broker,
    body: &FetchRequest,
    session: &Mutex<FetchSession>,
    candidates: &[u32],
    isolation: FetchIsolation,
    version: i16,
) -> ReadPass {
    let mut s = fetch_session::lock(session);
    let mut pass = ReadPass {
        reads: Vec::with_capacity(candidates.len()),
        bytes: 0,
        errors: false,
    };
    let mut remaining = body.max_bytes.max(0) as u64;
    let read_committed = body.isolation_level == 1;
    for &slot in candidates {
        let (position, found) = {
            let Some(cached) = s.slot(slot) else {
                continue;
            };
            let found = match (&cached.tp, &cached.key.topic) {
                (None, TopicRef::Id(_)) => Err(ec::UNKNOWN_TOPIC_ID),
                (None, TopicRef::Name(_)) => Err(ec::UNKNOWN_TOPIC_OR_PARTITION),
                (Some(tp), _) => broker.replicas.partition(tp).ok_or_else(|| {
                    let known = broker
                        .with_image(|image| image.partition(&tp.topic, tp.partition).is_some());
                    if known {
                        ec::NOT_LEADER_OR_FOLLOWER
                    } else {
                        ec::UNKNOWN_TOPIC_OR_PARTITION
                    }
                }),
            };
            (cached.position, found)
        };
        let mut answer = PartitionData::default()
            .with_partition_index(s.slot(slot).map_or(0, |c| c.key.partition))
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica((-1).into());
        if read_committed {
            answer.aborted_transactions = Some(Vec::new());
        }
        // an empty record set, never null (what Kafka sends; librdkafka 2.0.2 refuses null)
        answer.records = Some(bytes::Bytes::new());
        let limited = pass.bytes > 0;
        let mut file = None;
        let code = match found {
            Err(code) => code,
            Ok(partition) => {
                s.watch(slot, &partition);
                let limit = (position.partition_max_bytes.max(0) as u64).min(remaining);
                let read = partition.read(
                    Offset(position.fetch_offset),
                    limit as usize,
                    isolation,
                    pass.bytes == 0,
                    position.current_leader_epoch,
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
        };
        if code != ec::NONE {
            pass.errors = true;
        }
        if version < 5 {
            answer.log_start_offset = -1;
        }
        answer.error_code = code;
        pass.reads.push(Read {
            slot,
            settled: code == ec::NONE && file.is_none() && !limited,
            data: answer,
            file,
        });
    }
    pass
}

/// The response of the last pass: in a full fetch every partition read, else those with
/// something new; the session records what it told. Bytes sent to consumers are counted
/// per topic, and every partition's error code.
fn finish(
    broker: &Broker,
    session: &Mutex<FetchSession>,
    pass: ReadPass,
    full: bool,
    version: i16,
    follower: Option<i32>,
) -> (FetchResponse, Vec<Vec<Option<FileChunk>>>) {
    let mut s = fetch_session::lock(session);
    let mut topics: Vec<(FetchableTopicResponse, Vec<Option<FileChunk>>)> = Vec::new();
    let mut topic_index: HashMap<TopicRef, usize> = HashMap::new();
    for read in pass.reads {
        let Some(cached) = s.slot(read.slot) else {
            continue;
        };
        let code = read.data.error_code;
        if code != ec::NONE {
            broker.metrics.error("Fetch", code);
        }
        let now = SentState {
            high_watermark: read.data.high_watermark,
            log_start_offset: read.data.log_start_offset,
        };
        let sent_data = read.file.is_some();
        let include = full || sent_data || code != ec::NONE || now != cached.sent;
        if include {
            if let (None, Some(file), Some(tp)) = (follower, &read.file, &cached.tp) {
                broker.metrics.consumed(&tp.topic, file.length);
            }
            let index = *topic_index
                .entry(cached.key.topic.clone())
                .or_insert_with(|| {
                    let mut topic = FetchableTopicResponse::default();
                    match &cached.key.topic {
                        TopicRef::Id(id) if version >= 13 => topic.topic_id = *id,
                        TopicRef::Id(_) => {}
                        TopicRef::Name(name) => topic.topic = TopicName(str_bytes(name.clone())),
                    }
                    topics.push((topic, Vec::new()));
                    topics.len() - 1
                });
            let (topic, files) = &mut topics[index];
            topic.partitions.push(read.data);
            files.push(read.file);
        }
        s.sent(read.slot, include.then_some(now), read.settled, sent_data);
    }
    if s.id() != 0 {
        broker.fetch_sessions.resized(s.id(), s.len());
    }
    let (responses, files): (Vec<_>, Vec<_>) = topics.into_iter().unzip();
    let response = FetchResponse::default()
        .with_session_id(s.id())
        .with_responses(responses);
    (response, files)
}
