//! RecordBatch v2: agreement with an independent implementation (the kafka-protocol
//! crate), stamping, validation of bad input, and "no panic on any bytes".

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression as KpCompression, Record as KpRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType as KpTimestampType,
};
use proptest::prelude::*;
use sluice_record::{
    stamp_base_offset, stamp_partition_leader_epoch, stamp_producer, BatchBuilder, BatchHeader,
    Compression, LeaderEpoch, Offset, RecordBatch, RecordBatches, RecordError, TimestampType,
    BATCH_HEADER_BYTES,
};

fn kp_codec(c: Compression) -> KpCompression {
    match c {
        Compression::None => KpCompression::None,
        Compression::Gzip => KpCompression::Gzip,
        Compression::Snappy => KpCompression::Snappy,
        Compression::Lz4 => KpCompression::Lz4,
        Compression::Zstd => KpCompression::Zstd,
    }
}

fn kp_records(n: i64) -> Vec<KpRecord> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_string(format!("h{i}")),
                Some(Bytes::from(format!("hv{i}"))),
            );
            KpRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 7,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: KpTimestampType::Creation,
                offset: 100 + i,
                sequence: i as i32, // offset - sequence constant keeps one batch
                timestamp: 1_700_000_000_000 + i * 10,
                key: if i % 3 == 0 {
                    None
                } else {
                    Some(Bytes::from(format!("key-{i}")))
                },
                value: Some(Bytes::from(vec![b'v'; (i as usize) * 13 % 300])),
                headers,
            }
        })
        .collect()
}

fn build(codec: Compression, n: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for i in 0..n {
        let key = format!("key-{i}");
        let value = vec![b'x'; (i as usize * 7) % 500];
        b.append(
            1_700_000_000_000 + i64::from(i),
            Some(key.as_bytes()),
            Some(&value),
            &[(b"trace", Some(b"abc")), (b"null", None)],
        );
    }
    b.build().unwrap()
}

#[test]
fn reads_batches_encoded_by_kafka_protocol_crate() {
    for codec in Compression::ALL {
        let records = kp_records(25);
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: kp_codec(codec),
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();

        let batch = RecordBatch::parse(&buf).unwrap();
        let h = batch.header();
        assert_eq!(h.base_offset, Offset(100));
        assert_eq!(h.last_offset(), Offset(124));
        assert_eq!(h.record_count, 25);
        assert_eq!(h.partition_leader_epoch, LeaderEpoch(7));
        assert_eq!(h.compression().unwrap(), codec);
        assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
        assert_eq!(h.max_timestamp, 1_700_000_000_240);
        batch.validate_dense().unwrap();

        let decoded = batch.records().unwrap();
        let decoded = decoded.to_vec().unwrap();
        assert_eq!(decoded.len(), 25);
        for (ours, theirs) in decoded.iter().zip(&records) {
            assert_eq!(ours.offset, Offset(theirs.offset));
            assert_eq!(ours.timestamp, theirs.timestamp);
            assert_eq!(ours.key, theirs.key.as_deref());
            assert_eq!(ours.value, theirs.value.as_deref());
            assert_eq!(ours.headers.len(), 1);
            let (hk, hv) = theirs.headers.first().unwrap();
            assert_eq!(ours.headers[0].key, hk.as_bytes());
            assert_eq!(ours.headers[0].value, hv.as_deref());
        }
    }
}

#[test]
fn kafka_protocol_crate_reads_our_batches() {
    for codec in Compression::ALL {
        let bytes = build(codec, 40);
        let mut buf = Bytes::from(bytes);
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 40);
        for (i, r) in set.records.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
            assert_eq!(r.key.as_deref(), Some(format!("key-{i}").as_bytes()));
            assert_eq!(r.value.as_deref().map(<[u8]>::len), Some((i * 7) % 500));
            assert_eq!(r.headers.len(), 2);
        }
    }
}

#[test]
fn stamping_keeps_the_crc_valid() {
    let mut bytes = build(Compression::Lz4, 10);
    stamp_base_offset(&mut bytes, Offset(1 << 40)).unwrap();
    stamp_partition_leader_epoch(&mut bytes, LeaderEpoch(42)).unwrap();
    let batch = RecordBatch::parse(&bytes).unwrap();
    assert_eq!(batch.base_offset(), Offset(1 << 40));
    assert_eq!(batch.last_offset(), Offset((1 << 40) + 9));
    assert_eq!(batch.header().partition_leader_epoch, LeaderEpoch(42));
    let recs = batch.records().unwrap();
    let offsets: Vec<i64> = recs.iter().map(|r| r.unwrap().offset.0).collect();
    assert_eq!(offsets, ((1 << 40)..(1 << 40) + 10).collect::<Vec<_>>());
    // the other crate agrees
    let set = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).unwrap();
    assert_eq!(set.records[0].offset, 1 << 40);
    assert_eq!(set.records[0].partition_leader_epoch, 42);
    assert!(stamp_base_offset(&mut [0u8; 5], Offset(1)).is_err());
}

#[test]
fn wrong_crc_is_rejected() {
    let mut bytes = build(Compression::None, 3);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    assert!(matches!(
        RecordBatch::parse(&bytes),
        Err(RecordError::CrcMismatch { .. })
    ));
}

#[test]
fn wrong_magic_is_rejected() {
    let mut bytes = build(Compression::None, 3);
    bytes[16] = 1;
    assert_eq!(
        RecordBatch::parse(&bytes).unwrap_err(),
        RecordError::UnsupportedMagic(1)
    );
}

#[test]
fn wrong_length_is_rejected() {
    let bytes = build(Compression::None, 3);
    // length field larger than the bytes present
    let mut longer = bytes.clone();
    let len = i32::from_be_bytes(longer[8..12].try_into().unwrap());
    longer[8..12].copy_from_slice(&(len + 1).to_be_bytes());
    assert!(matches!(
        RecordBatch::parse(&longer),
        Err(RecordError::Truncated { .. })
    ));
    // length below the header size
    let mut tiny = bytes.clone();
    tiny[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert_eq!(
        RecordBatch::parse(&tiny).unwrap_err(),
        RecordError::LengthTooSmall(10)
    );
    // negative length
    let mut negative = bytes.clone();
    negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(
        RecordBatch::parse(&negative).unwrap_err(),
        RecordError::LengthTooSmall(-5)
    );
    // over the caller's limit
    assert!(matches!(
        RecordBatch::parse_prefix(&bytes, 64),
        Err(RecordError::TooLarge { limit: 64, .. })
    ));
    // shorter length: CRC covers fewer bytes and fails, or trailing bytes are reported
    let mut shorter = bytes.clone();
    shorter[8..12].copy_from_slice(&(len - 1).to_be_bytes());
    assert!(RecordBatch::parse(&shorter).is_err());
}

#[test]
fn wrong_offset_delta_is_rejected() {
    let bytes = build(Compression::None, 3);
    let set_delta = |delta: i32| {
        let mut b = bytes.clone();
        b[23..27].copy_from_slice(&delta.to_be_bytes());
        // fix the CRC so the offset delta check is what fails
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    };
    // fewer offsets than records
    let b = set_delta(1);
    assert!(matches!(
        RecordBatch::parse(&b),
        Err(RecordError::InvalidOffsetDelta { .. })
    ));
    let b = set_delta(-1);
    assert!(matches!(
        RecordBatch::parse(&b),
        Err(RecordError::InvalidOffsetDelta { .. })
    ));
    // a gap (as compaction leaves) parses but is not dense
    let b = set_delta(5);
    let batch = RecordBatch::parse(&b).unwrap();
    assert!(matches!(
        batch.validate_dense(),
        Err(RecordError::InvalidOffsetDelta { .. })
    ));
}

#[test]
fn record_sets_iterate_and_stop_at_damage() {
    let mut set = build(Compression::None, 2);
    set.extend(build(Compression::Gzip, 5));
    set.extend(build(Compression::Zstd, 1));
    let counts: Vec<i32> = RecordBatches::new(&set, usize::MAX)
        .map(|b| b.unwrap().header().record_count)
        .collect();
    assert_eq!(counts, vec![2, 5, 1]);
    let cut = &set[..set.len() - 3];
    let results: Vec<_> = RecordBatches::new(cut, usize::MAX).collect();
    assert_eq!(results.len(), 3);
    assert!(results[2].is_err());
}

#[test]
fn header_fields_round_trip_through_builder() {
    let bytes = BatchBuilder::new(Compression::Snappy)
        .base_offset(Offset(5))
        .partition_leader_epoch(LeaderEpoch(3))
        .append(10, None, None, &[])
        .clone()
        .build()
        .unwrap();
    let h = BatchHeader::parse(&bytes).unwrap();
    assert_eq!(h.base_offset, Offset(5));
    assert_eq!(h.partition_leader_epoch, LeaderEpoch(3));
    assert_eq!(h.record_count, 1);
    assert!(!h.is_transactional() && !h.is_control());
    assert_eq!(h.total_size(), bytes.len());
    assert!(bytes.len() > BATCH_HEADER_BYTES);
}

#[test]
fn a_renumbered_batch_carries_its_new_producer_fields_and_a_valid_crc() {
    for codec in [Compression::None, Compression::Zstd] {
        let mut bytes = BatchBuilder::new(codec)
            .producer(7, 0, 40)
            .append(10, None, Some(b"a"), &[])
            .append(11, None, Some(b"b"), &[])
            .clone()
            .into_bytes()
            .unwrap();
        stamp_producer(&mut bytes, 7, 1, 0).unwrap();
        let batch = RecordBatch::parse(&bytes).expect("CRC still valid");
        let h = batch.header();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 1, 0)
        );
        assert_eq!(h.record_count, 2);
        assert_eq!(
            stamp_producer(&mut bytes[..20], 7, 2, 0),
            Err(RecordError::Truncated {
                needed: BATCH_HEADER_BYTES,
                available: 20
            })
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = BatchHeader::parse(&bytes).map(|h| h.validate());
        for b in RecordBatches::new(&bytes, usize::MAX).flatten() {
            if let Ok(records) = b.records() {
                for r in records.iter() {
                    let _ = r;
                }
            }
        }
    }

    #[test]
    fn no_panic_on_mutated_batches(
        codec in 0u8..5,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        fix_crc in any::<bool>(),
    ) {
        let mut bytes = build(Compression::from_id(codec).unwrap(), 6);
        for (pos, val) in flips {
            let at = pos % bytes.len();
            bytes[at] = val;
        }
        if fix_crc && bytes.len() > 21 {
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        if let Ok(batch) = RecordBatch::parse(&bytes) {
            if let Ok(records) = batch.records() {
                let _ = records.to_vec();
            }
        }
    }
}
