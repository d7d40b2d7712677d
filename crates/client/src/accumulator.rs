//! The producer's record accumulator (Kafka's `RecordAccumulator`): records are appended
//! to an open batch per partition; a batch is sealed when the next record would pass
//! `batch.size` (a record larger than that gets a batch of its own), and a partition is
//! ready to send when its oldest batch is sealed or has waited `linger.ms`. Memory is
//! bounded by `buffer.memory`: an append that would pass it is refused (the producer then
//! waits for sent batches to be released, up to `max.block.ms`). Pure logic with the
//! time passed in, so the async producer drives it and tests step it.
//!
//! Invariants: records of one partition leave in append order, batch by batch;
//! `used_bytes` is the sum of the reserved sizes of the batches not yet released; a
//! batch's record ids are its records' in order.

use std::collections::VecDeque;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use sluice_record::{BatchBuilder, Compression, RecordError, TopicPartition, BATCH_HEADER_BYTES};

#[derive(Debug, Clone)]
pub struct AccumulatorConfig {
    /// `batch.size`: bytes of records (before compression) a batch may hold.
    pub batch_size: usize,
    /// `linger.ms`: how long a batch that is not full waits for more records.
    pub linger_ms: u64,
    /// `buffer.memory`: bytes all unsent and in-flight batches may take.
    pub buffer_memory: usize,
    /// `compression.type`.
    pub compression: Compression,
}

impl Default for AccumulatorConfig {
    /// Kafka's producer defaults (linger 5 ms since Kafka 4.0).
    fn default() -> Self {
        AccumulatorConfig {
            batch_size: 16 * 1024,
            linger_ms: 5,
            buffer_memory: 32 * 1024 * 1024,
            compression: Compression::None,
        }
    }
}

/// A batch on its way: the builder, when it opened, and the ids of its records.
#[derive(Debug)]
pub struct ProducerBatch {
    pub topic_partition: TopicPartition,
    /// The records, until [`ProducerBatch::bytes`] builds them.
    pub builder: BatchBuilder,
    /// The batch as first built: every attempt sends these very bytes.
    built: Option<Bytes>,
    pub created_ms: u64,
    pub record_ids: Vec<u64>,
    /// Bytes reserved from `buffer.memory` for it.
    reserved_bytes: usize,
    sealed: bool,
}

impl ProducerBatch {
    pub fn record_count(&self) -> usize {
        self.record_ids.len()
    }

    pub fn reserved_bytes(&self) -> usize {
        self.reserved_bytes
    }

    /// Whether a record of `size` bytes fits in the room reserved for this batch.
    fn has_room(&self, size: usize) -> bool {
        self.builder.records_size_bytes() + size <= self.reserved_bytes - BATCH_HEADER_BYTES
    }

    /// The batch's bytes (compressed, CRC written); offsets and sequences as set.
    pub fn build(&self) -> Result<Vec<u8>, RecordError> {
        match &self.built {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self.builder.build(),
        }
    }

    /// The batch's bytes, built from the builder's own buffer on first use (no copy of
    /// an uncompressed batch's records) and kept: a retry sends the same bytes, with the
    /// same sequence numbers.
    pub fn bytes(&mut self) -> Result<Bytes, RecordError> {
        if let Some(bytes) = &self.built {
            return Ok(bytes.clone());
        }
        let compression = self.builder.compression();
        let builder = std::mem::replace(&mut self.builder, BatchBuilder::new(compression));
        let bytes = Bytes::from(builder.into_bytes()?);
        self.built = Some(bytes.clone());
        Ok(bytes)
    }

    /// The batch's buffer, to reuse for a new batch (None: still shared).
    pub fn into_buffer(self) -> Option<Vec<u8>> {
        match self.built {
            Some(bytes) => bytes.try_into_mut().ok().map(Vec::from),
            None => Some(self.builder.into_buffer()),
        }
    }

    /// Numbers the batch for an idempotent producer: in the builder, or, once built (a
    /// retry after the producer bumped its epoch), in a renumbered copy of its bytes.
    pub fn set_producer(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Result<(), RecordError> {
        match &self.built {
            Some(bytes) => {
                // stamped in a copy: on an error the batch keeps its bytes
                let mut renumbered = bytes.to_vec();
                sluice_record::stamp_producer(
                    &mut renumbered,
                    producer_id,
                    producer_epoch,
                    base_sequence,
                )?;
                self.built = Some(Bytes::from(renumbered));
            }
            None => {
                let compression = self.builder.compression();
                let builder = std::mem::replace(&mut self.builder, BatchBuilder::new(compression));
                self.builder = builder.producer(producer_id, producer_epoch, base_sequence);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record opened a new batch (and sealed the one before, if there was one).
    pub new_batch: bool,
    /// The partition's open batch is full now: the next record opens another.
    pub batch_full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccumulatorError {
    #[error("buffer.memory ({buffer_memory} bytes) is used up: {needed} more bytes needed")]
    BufferExhausted { buffer_memory: usize, needed: usize },
    #[error("a record of {size} bytes does not fit in buffer.memory ({buffer_memory} bytes)")]
    RecordTooLarge { size: usize, buffer_memory: usize },
}

/// A partition's key, looked up without building a `TopicPartition` (no allocation per
/// record): `TopicPartition` and `(&str, i32)` hash and compare alike through it.
trait PartitionKey {
    fn key(&self) -> (&str, i32);
}

impl PartitionKey for TopicPartition {
    fn key(&self) -> (&str, i32) {
        (&self.topic, self.partition)
    }
}

impl PartitionKey for (&str, i32) {
    fn key(&self) -> (&str, i32) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn PartitionKey + 'a> for TopicPartition {
    fn borrow(&self) -> &(dyn PartitionKey + 'a) {
        self
    }
}

impl PartialEq for dyn PartitionKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn PartitionKey + '_ {}

impl std::hash::Hash for dyn PartitionKey + '_ {
    // as `TopicPartition`'s derived Hash: the topic (as str), then the partition
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (topic, partition) = self.key();
        topic.hash(state);
        partition.hash(state);
    }
}

pub struct RecordAccumulator {
    config: AccumulatorConfig,
    batches: FxHashMap<TopicPartition, VecDeque<ProducerBatch>>,
    used_bytes: usize,
    /// Buffers of finished batches kept for new ones (Kafka's `BufferPool` free list),
    /// each with room for a whole `batch.size` batch; they count against `buffer.memory`
    /// at that size: `used_bytes + pooled_bytes() <= buffer.memory`.
    free_buffers: Vec<Vec<u8>>,
}

/// A record's size inside a batch, as Kafka estimates it: its body plus a varint length
/// and the per-record overhead (attributes, deltas: at most 21 bytes).
fn record_size(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&[u8], Option<&[u8]>)],
) -> usize {
    let headers: usize = headers
        .iter()
        .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 10)
        .sum();
    key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers + 21
}

impl RecordAccumulator {
    pub fn new(config: AccumulatorConfig) -> Self {
        RecordAccumulator {
            config,
            batches: FxHashMap::default(),
            used_bytes: 0,
            free_buffers: Vec::new(),
        }
    }

    pub fn config(&self) -> &AccumulatorConfig {
        &self.config
    }

    /// Bytes reserved by batches not yet released.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Whether appending this record to `tp` would open a new batch (no open batch, or
    /// the record does not fit in it).
    pub fn opens_new_batch(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> bool {
        let size = record_size(key, value, headers);
        !self
            .batches
            .get(&(topic, partition) as &dyn PartitionKey)
            .and_then(|q| q.back())
            .filter(|b| !b.sealed)
            .is_some_and(|open| open.has_room(size))
    }

    /// Appends a record to `tp`'s open batch, or to a new one. Refused, and nothing
    /// changed, when a new batch would pass `buffer.memory`.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        tp: &TopicPartition,
        record_id: u64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        now_ms: u64,
    ) -> Result<Appended, AccumulatorError> {
        self.append_record(
            &tp.topic,
            tp.partition,
            record_id,
            timestamp,
            key,
            value,
            headers,
            || now_ms,
        )
    }

    /// [`Self::append`] to `topic`'s `partition`, without building its `TopicPartition`
    /// unless the partition has no batch queue yet; `now_ms` is asked only when the
    /// record opens a batch.
    #[allow(clippy::too_many_arguments)]
    pub fn append_record(
        &mut self,
        topic: &str,
        partition: i32,
        record_id: u64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        now_ms: impl FnOnce() -> u64,
    ) -> Result<Appended, AccumulatorError> {
        if let Some(appended) =
            self.append_to_open(topic, partition, record_id, timestamp, key, value, headers)
        {
            return Ok(appended);
        }
        let size = record_size(key, value, headers);
        let batch_size = self.config.batch_size;
        let key_of = (topic, partition);
        // a new batch: batch.size, or the record alone when it is larger
        let reserve = BATCH_HEADER_BYTES + size.max(batch_size);
        if reserve > self.config.buffer_memory {
            return Err(AccumulatorError::RecordTooLarge {
                size,
                buffer_memory: self.config.buffer_memory,
            });
        }
        // a batch of the usual size reuses a pooled buffer (already counted); any other
        // needs fresh memory, for which the pool gives its buffers up if in the way
        let pooled = (reserve == self.standard_batch_bytes())
            .then(|| self.free_buffers.pop())
            .flatten();
        if pooled.is_none() {
            if self.used_bytes + self.pooled_bytes() + reserve > self.config.buffer_memory {
                self.free_buffers.clear();
            }
            if self.used_bytes + reserve > self.config.buffer_memory {
                return Err(AccumulatorError::BufferExhausted {
                    buffer_memory: self.config.buffer_memory,
                    needed: self.used_bytes + reserve - self.config.buffer_memory,
                });
            }
        }
        // a partition's queue exists only while it holds a batch (a refused append leaves
        // none behind: `is_empty` would stay false and a closing producer wait)
        if !self.batches.contains_key(&key_of as &dyn PartitionKey) {
            self.batches
                .insert(TopicPartition::new(topic, partition), VecDeque::new());
        }
        let Some(queue) = self.batches.get_mut(&key_of as &dyn PartitionKey) else {
            unreachable!("inserted just before");
        };
        if let Some(open) = queue.back_mut() {
            open.sealed = true;
        }
        // the whole batch's room at once: no reallocation while it fills
        let mut builder = match pooled {
            Some(buffer) => BatchBuilder::with_buffer(self.config.compression, buffer),
            None => BatchBuilder::new(self.config.compression),
        }
        .reserve_records(size.max(batch_size));
        builder.append(timestamp, key, value, headers);
        let full = builder.records_size_bytes() + 21 >= batch_size;
        queue.push_back(ProducerBatch {
            topic_partition: TopicPartition::new(topic, partition),
            builder,
            built: None,
            created_ms: now_ms(),
            record_ids: vec![record_id],
            reserved_bytes: reserve,
            sealed: full,
        });
        self.used_bytes += reserve;
        Ok(Appended {
            new_batch: true,
            batch_full: full,
        })
    }

    /// Appends a record to `topic`'s `partition`'s open batch if it has room (one lookup);
    /// None, and nothing changed, when the record would open a new batch. (A keyless
    /// record tries its sticky partition this way first: Kafka's `abortOnNewBatch`.)
    #[allow(clippy::too_many_arguments)]
    pub fn append_to_open(
        &mut self,
        topic: &str,
        partition: i32,
        record_id: u64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Option<Appended> {
        let size = record_size(key, value, headers);
        let batch_size = self.config.batch_size;
        let open = self
            .batches
            .get_mut(&(topic, partition) as &dyn PartitionKey)
            .and_then(|q| q.back_mut())
            .filter(|b| !b.sealed)?;
        if !open.has_room(size) {
            return None;
        }
        open.builder.append(timestamp, key, value, headers);
        open.record_ids.push(record_id);
        let full = open.builder.records_size_bytes() + 21 >= batch_size;
        open.sealed = full;
        Some(Appended {
            new_batch: false,
            batch_full: full,
        })
    }

    /// The partitions with a batch to send now (sealed, or open past `linger.ms`), and
    /// when the next open batch's linger runs out (ms from `now_ms`; None: none waits).
    pub fn ready(&self, now_ms: u64) -> (Vec<TopicPartition>, Option<u64>) {
        let mut ready = Vec::new();
        let mut next: Option<u64> = None;
        for (tp, queue) in &self.batches {
            let Some(first) = queue.front() else {
                continue;
            };
            let due = first.created_ms + self.config.linger_ms;
            if first.sealed || queue.len() > 1 || due <= now_ms {
                ready.push(tp.clone());
            } else {
                let wait = due - now_ms;
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        ready.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        (ready, next)
    }

    /// Takes `tp`'s oldest batch if it is ready (sealed, followed by another, or past its
    /// linger); its memory stays reserved until [`Self::release`].
    pub fn drain(&mut self, tp: &TopicPartition, now_ms: u64) -> Option<ProducerBatch> {
        let queue = self.batches.get_mut(tp)?;
        let first = queue.front()?;
        let lingered = first.created_ms + self.config.linger_ms <= now_ms;
        if !(first.sealed || queue.len() > 1 || lingered) {
            return None;
        }
        let mut batch = queue.pop_front()?;
        batch.sealed = true;
        if queue.is_empty() {
            self.batches.remove(tp);
        }
        Some(batch)
    }

    /// Puts a batch back into its partition's queue (a retry) where its records belong:
    /// before every batch with later records, so it leaves again before anything
    /// appended after it, whatever order several retries come back in.
    pub fn reenqueue(&mut self, batch: ProducerBatch) {
        let first = batch.record_ids.first().copied().unwrap_or_default();
        let queue = self
            .batches
            .entry(batch.topic_partition.clone())
            .or_default();
        let at = queue.partition_point(|b| b.record_ids.first().is_some_and(|id| *id < first));
        queue.insert(at, batch);
    }

    /// Takes every batch created before `created_before_ms` (oldest first per partition),
    /// except those of `skip`'s partitions; the others stay as they are (an open batch is
    /// not sealed by looking at it).
    pub fn drain_created_before(
        &mut self,
        created_before_ms: u64,
        skip: impl Fn(&TopicPartition) -> bool,
    ) -> Vec<ProducerBatch> {
        let mut expired = Vec::new();
        for (tp, queue) in self.batches.iter_mut() {
            if skip(tp) {
                continue;
            }
            while queue
                .front()
                .is_some_and(|b| b.created_ms < created_before_ms)
            {
                expired.extend(queue.pop_front());
            }
        }
        self.batches.retain(|_, q| !q.is_empty());
        expired
    }

    /// A batch is done (acknowledged or failed for good): its memory is free again.
    /// A finished batch's buffer, kept for a new batch if it has room for a whole one
    /// (and is not much larger) and the pool stays within `buffer.memory`.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        let standard = self.standard_batch_bytes();
        if (standard..=2 * standard).contains(&buffer.capacity())
            && self.used_bytes + self.pooled_bytes() + standard <= self.config.buffer_memory
        {
            self.free_buffers.push(buffer);
        }
    }

    /// A `batch.size` batch's bytes, header included.
    fn standard_batch_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.config.batch_size
    }

    fn pooled_bytes(&self) -> usize {
        self.free_buffers.len() * self.standard_batch_bytes()
    }

    pub fn release(&mut self, batch: &ProducerBatch) {
        debug_assert!(self.used_bytes >= batch.reserved_bytes);
        self.used_bytes = self.used_bytes.saturating_sub(batch.reserved_bytes);
    }

    /// Whether any record waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_record::RecordBatch;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn acc(batch_size: usize, linger_ms: u64, buffer_memory: usize) -> RecordAccumulator {
        RecordAccumulator::new(AccumulatorConfig {
            batch_size,
            linger_ms,
            buffer_memory,
            compression: Compression::None,
        })
    }

    fn values(batch: &ProducerBatch) -> Vec<Vec<u8>> {
        let bytes = batch.build().unwrap();
        let parsed = RecordBatch::parse(&bytes).unwrap();
        let records = parsed.records().unwrap();
        let values = records
            .iter()
            .map(|r| r.unwrap().value.unwrap().to_vec())
            .collect();
        values
    }

    #[test]
    fn a_batch_waits_for_linger_unless_it_is_full() {
        let mut a = acc(1000, 5, 1 << 20);
        a.append(&tp(0), 1, 0, None, Some(&[1; 100]), &[], 10)
            .unwrap();
        assert_eq!(a.ready(10), (vec![], Some(5)));
        assert!(a.drain(&tp(0), 14).is_none(), "not before linger.ms");
        assert_eq!(a.ready(15).0, vec![tp(0)]);
        let b = a.drain(&tp(0), 15).unwrap();
        assert_eq!(b.record_ids, vec![1]);
        assert!(a.is_empty());
        // a full batch is ready at once, and the next record opens another
        let mut a = acc(400, 1000, 1 << 20);
        let mut appended = Vec::new();
        for id in 0..8 {
            appended.push(
                a.append(&tp(1), id, 0, None, Some(&[2; 100]), &[], 0)
                    .unwrap(),
            );
        }
        assert!(appended[0].new_batch && !appended[0].batch_full);
        // a record that did not fit sealed the batch before it and opened a new one
        assert!(appended[1..].iter().any(|x| x.new_batch));
        assert_eq!(a.ready(0).0, vec![tp(1)]);
        let first = a.drain(&tp(1), 0).unwrap();
        assert!(first.builder.records_size_bytes() <= 400);
        let second = a.drain(&tp(1), 0);
        // the second batch is open and its linger has not run out
        assert!(second.is_none() || second.unwrap().record_ids.first() > first.record_ids.last());
    }

    #[test]
    fn a_record_opens_a_new_batch_only_where_the_open_one_has_no_room() {
        let mut a = acc(400, 1000, 1 << 20);
        let value = [3u8; 100];
        // no batch yet: the first record opens one
        assert!(a.opens_new_batch("t", 0, None, Some(&value), &[]));
        let mut opened = 0;
        for id in 0..12 {
            // the borrowed lookup agrees with what append does
            let opens = a.opens_new_batch("t", 0, None, Some(&value), &[]);
            let appended = a.append(&tp(0), id, 0, None, Some(&value), &[], 0).unwrap();
            assert_eq!(opens, appended.new_batch, "record {id}");
            opened += usize::from(opens);
        }
        assert!(
            opened >= 3,
            "400-byte batches of 121-byte records: {opened}"
        );
        // another partition of the same topic has its own batches
        assert!(a.opens_new_batch("t", 1, None, Some(&value), &[]));
        assert!(a.opens_new_batch("u", 0, None, Some(&value), &[]));
    }

    #[test]
    fn records_leave_in_append_order_across_batches_and_retries() {
        let mut a = acc(300, 0, 1 << 20);
        for id in 0..20u64 {
            let v = id.to_be_bytes();
            a.append(&tp(0), id, 0, None, Some(&v), &[], 0).unwrap();
        }
        let first = a.drain(&tp(0), 0).unwrap();
        let second = a.drain(&tp(0), 0).unwrap();
        assert!(first.record_count() > 0 && second.record_count() > 0);
        // retries go back before what was appended after them, in record order, whatever
        // order their answers came in
        a.reenqueue(first);
        a.reenqueue(second);
        let mut ids = Vec::new();
        let mut read = Vec::new();
        while let Some(b) = a.drain(&tp(0), 0) {
            ids.extend(b.record_ids.iter().copied());
            read.extend(values(&b));
            a.release(&b);
        }
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
        assert_eq!(
            read,
            (0..20u64)
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>()
        );
        assert_eq!(a.used_bytes(), 0);
    }

    #[test]
    fn buffer_memory_refuses_a_new_batch_until_one_is_released() {
        let batch = BATCH_HEADER_BYTES + 1000;
        let mut a = acc(1000, 0, 2 * batch);
        a.append(&tp(0), 1, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap();
        a.append(&tp(1), 2, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap();
        // both batches have room: appends to them need no memory
        a.append(&tp(0), 3, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap();
        let err = a
            .append(&tp(2), 4, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap_err();
        assert!(
            matches!(err, AccumulatorError::BufferExhausted { .. }),
            "{err}"
        );
        assert!(
            a.drain(&tp(2), 0).is_none(),
            "the refused record was not kept"
        );
        let sent = a.drain(&tp(0), 0).unwrap();
        assert_eq!(a.used_bytes(), 2 * batch, "in flight, still reserved");
        a.release(&sent);
        a.append(&tp(2), 4, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap();
        // a record larger than buffer.memory can never fit
        let huge = vec![0u8; 3 * batch];
        let err = a
            .append(&tp(3), 5, 0, None, Some(&huge), &[], 0)
            .unwrap_err();
        assert!(
            matches!(err, AccumulatorError::RecordTooLarge { .. }),
            "{err}"
        );
        // refusals leave nothing queued: once everything is sent, the accumulator is
        // empty (a closing producer waits for that)
        let err = a
            .append(&tp(4), 6, 0, None, Some(&[0; 10]), &[], 0)
            .unwrap_err();
        assert!(matches!(err, AccumulatorError::BufferExhausted { .. }));
        for p in [1, 2] {
            let b = a.drain(&tp(p), 0).unwrap();
            a.release(&b);
        }
        assert!(a.is_empty(), "refused appends left queues behind");
    }

    #[test]
    fn a_finished_batchs_buffer_carries_a_later_batch_within_buffer_memory() {
        let standard = BATCH_HEADER_BYTES + 1000;
        let mut a = acc(1000, 0, 2 * standard);
        a.append(&tp(0), 1, 0, None, Some(&[1; 10]), &[], 0)
            .unwrap();
        let mut first = a.drain(&tp(0), 0).unwrap();
        let sent = first.bytes().unwrap();
        let buffer_at = sent.as_ptr();
        drop(sent); // the request let go of it
        a.release(&first);
        a.recycle(first.into_buffer().expect("no other owner"));
        assert_eq!(a.used_bytes(), 0);
        a.append(&tp(1), 2, 0, None, Some(&[2; 10]), &[], 0)
            .unwrap();
        let mut second = a.drain(&tp(1), 0).unwrap();
        assert_eq!(second.bytes().unwrap().as_ptr(), buffer_at, "buffer reused");
        assert_eq!(values(&second), [vec![2; 10]], "holding the new batch only");
        // a pooled buffer counts against buffer.memory: with one pooled and one in use,
        // a record larger than batch.size (fresh memory) makes the pool let go first
        a.recycle(vec![0; 1]);
        assert_eq!(a.pooled_bytes(), 0, "too small to carry a batch: not kept");
        let mut third_buffer = Vec::with_capacity(standard);
        third_buffer.push(0);
        a.recycle(third_buffer);
        assert_eq!(a.pooled_bytes(), standard);
        let big = vec![3u8; 1500];
        let err = a
            .append(&tp(2), 3, 0, None, Some(&big), &[], 0)
            .unwrap_err();
        assert!(matches!(err, AccumulatorError::BufferExhausted { .. }));
        a.release(&second);
        a.append(&tp(2), 3, 0, None, Some(&big), &[], 0)
            .expect("the pool gave its memory up");
        assert_eq!(a.pooled_bytes(), 0);
    }

    #[test]
    fn expiry_takes_old_batches_and_leaves_the_others_open() {
        let mut a = acc(1000, 50, 1 << 20);
        a.append(&tp(0), 1, 0, None, Some(&[1; 10]), &[], 0)
            .unwrap();
        a.append(&tp(1), 2, 0, None, Some(&[1; 10]), &[], 0)
            .unwrap();
        a.append(&tp(2), 3, 0, None, Some(&[1; 10]), &[], 30)
            .unwrap();
        let expired = a.drain_created_before(10, |t| *t == tp(1));
        let ids: Vec<u64> = expired.iter().flat_map(|b| b.record_ids.clone()).collect();
        assert_eq!(ids, vec![1], "old, not skipped");
        // the young batch is still open: it takes more records and waits for its linger
        let more = a
            .append(&tp(2), 4, 0, None, Some(&[1; 10]), &[], 31)
            .unwrap();
        assert!(!more.new_batch);
        assert!(a.drain(&tp(2), 40).is_none());
    }

    #[test]
    fn a_record_larger_than_batch_size_gets_a_batch_of_its_own() {
        let mut a = acc(100, 1000, 1 << 20);
        a.append(&tp(0), 1, 0, None, Some(&[1; 10]), &[], 0)
            .unwrap();
        let big = a
            .append(&tp(0), 2, 0, None, Some(&[2; 500]), &[], 0)
            .unwrap();
        assert!(big.new_batch && big.batch_full);
        a.append(&tp(0), 3, 0, None, Some(&[3; 10]), &[], 0)
            .unwrap();
        let b1 = a.drain(&tp(0), 0).unwrap();
        let b2 = a.drain(&tp(0), 0).unwrap();
        assert_eq!(
            (b1.record_ids.clone(), b2.record_ids.clone()),
            (vec![1], vec![2])
        );
        assert_eq!(values(&b2), vec![vec![2u8; 500]]);
        assert!(
            a.drain(&tp(0), 0).is_none(),
            "the third waits for its linger"
        );
        assert!(a.drain(&tp(0), 1000).is_some());
    }
}
