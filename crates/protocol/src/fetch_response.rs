//! A Fetch response as chunks: the crate encodes every field, and each partition's record
//! set is spliced in as a file region, so record bytes go from the segment file to the
//! socket without passing through user space.
//!
//! How: every level (response, topic, partition) is encoded by `kafka-protocol` with its
//! array or records field empty/null, and the encoding is cut at that field. The parts are
//! stitched back with the real array length or records length and the file chunk in
//! between. The result is byte-for-byte what the crate would encode with the records in
//! memory (tested for every version against the crate's own encoding).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::response::{Chunk, FileChunk};

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn encode<T: Encodable>(value: &T, version: i16) -> std::io::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(value.compute_size(version).map_err(invalid)?);
    value.encode(&mut out, version).map_err(invalid)?;
    Ok(out)
}

fn flexible(version: i16) -> bool {
    version >= 12
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// An array's length: compact (length + 1, varint) in flexible versions, else int32.
fn put_array_len(out: &mut BytesMut, version: i16, len: usize) {
    if flexible(version) {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_i32(len as i32);
    }
}

/// Bytes an empty array's length takes.
fn empty_array_len_bytes(version: i16) -> usize {
    if flexible(version) {
        1
    } else {
        4
    }
}

/// Bytes a null records field takes (compact: varint 0; else int32 -1).
fn null_records_bytes(version: i16) -> usize {
    empty_array_len_bytes(version)
}

/// Where a response's fixed fields end and the topics array begins.
fn response_prefix_bytes(version: i16) -> usize {
    // throttle_time_ms, then (v7+) error_code and session_id
    if version >= 7 {
        10
    } else {
        4
    }
}

/// Encodes `[size][header][FetchResponse]` where `records[t][p]`, if Some, is the record
/// set of `response.responses[t].partitions[p]` (whose own `records` field is then
/// ignored); None keeps the partition's `records` field as it is.
pub fn encode_fetch_response(
    correlation_id: i32,
    header_version: i16,
    version: i16,
    response: &FetchResponse,
    records: &[Vec<Option<FileChunk>>],
) -> std::io::Result<Vec<Chunk>> {
    if records.len() != response.responses.len()
        || records
            .iter()
            .zip(&response.responses)
            .any(|(r, t)| r.len() != t.partitions.len())
    {
        return Err(invalid("records do not match the response's partitions"));
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut current, header_version)
        .map_err(invalid)?;

    let mut top = response.clone();
    top.responses = Vec::new();
    let top_bytes = encode(&top, version)?;
    let top_prefix = response_prefix_bytes(version);
    current.extend_from_slice(&top_bytes[..top_prefix]);
    put_array_len(&mut current, version, response.responses.len());
    for (topic, topic_records) in response.responses.iter().zip(records) {
        encode_topic(&mut current, &mut chunks, version, topic, topic_records)?;
    }
    current.extend_from_slice(&top_bytes[top_prefix + empty_array_len_bytes(version)..]);
    chunks.push(Chunk::Bytes(current.freeze()));

    let size: u64 = chunks.iter().map(Chunk::len).sum();
    let size = i32::try_from(size).map_err(|_| invalid("fetch response over 2 GiB"))?;
    chunks.insert(0, Chunk::Bytes(Bytes::copy_from_slice(&size.to_be_bytes())));
    Ok(chunks)
}

fn encode_topic(
    current: &mut BytesMut,
    chunks: &mut Vec<Chunk>,
    version: i16,
    topic: &FetchableTopicResponse,
    records: &[Option<FileChunk>],
) -> std::io::Result<()> {
    let mut empty = topic.clone();
    empty.partitions = Vec::new();
    let bytes = encode(&empty, version)?;
    // after the partitions array come the tagged fields: in flexible versions one count
    // byte (topics carry no tagged fields of their own)
    if !topic.unknown_tagged_fields.is_empty() {
        return Err(invalid("fetch topics with tagged fields are not supported"));
    }
    let tagged = usize::from(flexible(version));
    let prefix = bytes.len() - tagged - empty_array_len_bytes(version);
    current.extend_from_slice(&bytes[..prefix]);
    put_array_len(current, version, topic.partitions.len());
    for (partition, chunk) in topic.partitions.iter().zip(records) {
        encode_partition(current, chunks, version, partition, chunk.as_ref())?;
    }
    current.extend_from_slice(&bytes[prefix + empty_array_len_bytes(version)..]);
    Ok(())
}

fn encode_partition(
    current: &mut BytesMut,
    chunks: &mut Vec<Chunk>,
    version: i16,
    partition: &PartitionData,
    records: Option<&FileChunk>,
) -> std::io::Result<()> {
    let Some(file) = records else {
        // records in memory, if any (Kafka sends an empty record set, not null, when there
        // is nothing to send: librdkafka 2.0.2 refuses a null one)
        current.extend_from_slice(&encode(partition, version)?);
        return Ok(());
    };
    let mut full = partition.clone();
    full.records = None;
    let bytes = encode(&full, version)?;
    // the fields before `records` end where the same partition without tagged fields ends,
    // minus its null records field and (flexible) its empty tagged-field count
    let mut untagged = full.clone();
    untagged.diverging_epoch = Default::default();
    untagged.current_leader = Default::default();
    untagged.snapshot_id = Default::default();
    untagged.unknown_tagged_fields = Default::default();
    let untagged_len = untagged.compute_size(version).map_err(invalid)?;
    let prefix = untagged_len - null_records_bytes(version) - usize::from(flexible(version));
    current.extend_from_slice(&bytes[..prefix]);
    let length = u32::try_from(file.length).map_err(|_| invalid("record set over 4 GiB"))?;
    if flexible(version) {
        put_unsigned_varint(current, length + 1);
    } else {
        current.put_i32(i32::try_from(length).map_err(|_| invalid("record set over 2 GiB"))?);
    }
    if file.length > 0 {
        chunks.push(Chunk::Bytes(std::mem::take(current).freeze()));
        chunks.push(Chunk::File(file.clone()));
    }
    current.extend_from_slice(&bytes[prefix + null_records_bytes(version)..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, LeaderIdAndEpoch, NodeEndpoint,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn flatten(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Bytes(b) => out.extend_from_slice(b),
                Chunk::File(f) => {
                    let mut buf = vec![0u8; f.length as usize];
                    f.file.read_exact_at(&mut buf, f.position).unwrap();
                    out.extend_from_slice(&buf);
                }
            }
        }
        out
    }

    #[test]
    fn spliced_encoding_equals_the_crates_for_every_version() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let file = Arc::new(file);
        let chunk = |position: u64, length: u64| FileChunk {
            file: Arc::clone(&file),
            position,
            length,
        };
        for version in 4..=17i16 {
            let mut response = FetchResponse::default().with_throttle_time_ms(3);
            if version >= 7 {
                response.error_code = 0;
                response.session_id = 9;
            }
            if version >= 16 {
                response.node_endpoints = vec![NodeEndpoint::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("h"))
                    .with_port(9)];
            }
            let mut layout = Vec::new();
            for t in 0..3 {
                let mut topic = FetchableTopicResponse::default();
                if version <= 12 {
                    topic.topic = TopicName(StrBytes::from_string(format!("topic-{t}")));
                } else {
                    topic.topic_id = uuid::Uuid::from_u128(t + 1);
                }
                let mut files = Vec::new();
                for p in 0..(t as i32 + 1) {
                    let mut part = PartitionData::default()
                        .with_partition_index(p)
                        .with_high_watermark(100 + p as i64)
                        .with_last_stable_offset(100)
                        .with_log_start_offset(if version >= 5 { 2 } else { -1 });
                    if p == 1 {
                        part.aborted_transactions = Some(vec![AbortedTransaction::default()]);
                    }
                    if version >= 12 && p == 2 {
                        part.current_leader =
                            LeaderIdAndEpoch::default().with_leader_id(BrokerId(3));
                        part.diverging_epoch = EpochEndOffset::default().with_epoch(4);
                    }
                    let f = match (t + p as u128) % 3 {
                        0 => Some(chunk(10 * p as u64, 1000)),
                        1 => None,
                        _ => Some(chunk(0, 0)),
                    };
                    if f.is_none() && p == 1 {
                        part.records = None;
                    }
                    topic.partitions.push(part);
                    files.push(f);
                }
                response.responses.push(topic);
                layout.push(files);
            }
            // what the crate encodes with the records in memory
            let mut in_memory = response.clone();
            for (t, files) in in_memory.responses.iter_mut().zip(&layout) {
                for (p, f) in t.partitions.iter_mut().zip(files) {
                    if let Some(f) = f {
                        p.records = Some(Bytes::copy_from_slice(
                            &content[f.position as usize..(f.position + f.length) as usize],
                        ));
                    }
                }
            }
            let header_version = if version >= 12 { 1 } else { 0 };
            let expected =
                crate::response::encode_response(5, header_version, &in_memory, version).unwrap();
            let chunks =
                encode_fetch_response(5, header_version, version, &response, &layout).unwrap();
            assert!(flatten(&chunks) == expected.to_vec(), "version {version}");
            assert!(
                chunks
                    .iter()
                    .filter(|c| matches!(c, Chunk::File(_)))
                    .count()
                    >= 2,
                "records travel as file chunks"
            );
        }
    }

    #[test]
    fn mismatched_records_are_refused() {
        let response =
            FetchResponse::default()
                .with_responses(vec![FetchableTopicResponse::default()
                    .with_partitions(vec![PartitionData::default()])]);
        assert!(encode_fetch_response(1, 0, 11, &response, &[vec![]]).is_err());
    }
}
