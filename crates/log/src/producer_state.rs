//! One partition's idempotent-producer state (Kafka's `ProducerStateManager`, KIP-98): for
//! each producer id, its epoch and the metadata of its last [`MAX_CACHED_BATCHES`] batches.
//!
//! The leader checks each producer batch against it before the append ([`check`]): a retry
//! of a cached batch is a duplicate (answered with the offsets it was first written at, not
//! appended again), an older epoch is refused, and a sequence gap is refused. Every replica
//! then records what it appended ([`update`]), leader and follower alike, so the state is a
//! function of the log: replaying the same batches gives the same state, and a follower that
//! takes over deduplicates a retry sent to the old leader.
//!
//! Invariants: an entry holds at most [`MAX_CACHED_BATCHES`] batches, all of its epoch, in
//! offset order; an entry exists only once a batch of its producer was appended.
//!
//! As in Kafka 3.x (KIP-360), a producer the partition does not know (never seen, expired,
//! or lost with a truncation) may start at any sequence: UNKNOWN_PRODUCER_ID is no longer
//! returned on produce.
//!
//! [`check`]: ProducerStateManager::check
//! [`update`]: ProducerStateManager::update

use std::collections::{HashMap, VecDeque};

use sluice_record::{BatchHeader, Offset};

/// How many batches per producer a partition remembers: a client has at most this many
/// requests in flight per partition with idempotence on (Kafka's limit).
pub const MAX_CACHED_BATCHES: usize = 5;

/// The producer fields of one batch with a producer id (`producer_id >= 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    /// `last_offset_delta`: the batch's last offset minus its first.
    pub offset_delta: i32,
    pub max_timestamp: i64,
    pub is_transactional: bool,
    pub is_control: bool,
}

impl ProducerBatch {
    /// None for a batch without a producer id (a producer without idempotence).
    pub fn of(h: &BatchHeader) -> Option<ProducerBatch> {
        (h.producer_id >= 0).then(|| ProducerBatch {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: increment_sequence(h.base_sequence, h.last_offset_delta),
            offset_delta: h.last_offset_delta,
            max_timestamp: h.max_timestamp,
            is_transactional: h.is_transactional(),
            is_control: h.is_control(),
        })
    }
}

/// Kafka's sequence arithmetic: sequences wrap from `i32::MAX` to 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    next_seq == last_seq.wrapping_add(1) || (last_seq == i32::MAX && next_seq == 0)
}

/// One appended batch, as remembered for deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub last_offset: Offset,
    pub offset_delta: i32,
    pub timestamp_ms: i64,
}

impl BatchMetadata {
    pub fn first_offset(&self) -> Offset {
        Offset(self.last_offset.0 - i64::from(self.offset_delta))
    }
}

/// What a partition knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// The last batches appended in `epoch`, oldest first.
    pub batches: VecDeque<BatchMetadata>,
    /// The newest batch's max timestamp (what expiry counts from, as in Kafka).
    pub last_timestamp_ms: i64,
}

impl ProducerEntry {
    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }
}

/// What the leader does with a producer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerCheck {
    /// New: append it.
    Append,
    /// A retry of a batch already in the log: answer with where it was written.
    Duplicate {
        base_offset: Offset,
        last_offset: Offset,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerStateError {
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "producer {producer_id} epoch {epoch}: sequence {first_seq} does not follow {last_seq}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        /// The last sequence appended (-1 for a new epoch, which must start at 0).
        last_seq: i32,
    },
    #[error("transactional batches are not supported (Sluice has no transactions)")]
    TransactionalBatch,
    #[error("a producer may not write control batches")]
    ControlBatch,
    #[error("an idempotent producer's batch must be the only batch of its record set")]
    NotAlone,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateManager {
    pub fn new() -> Self {
        ProducerStateManager::default()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (i64, ProducerEntry)>) -> Self {
        ProducerStateManager {
            producers: entries.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every entry, by producer id (snapshots write them in this order).
    pub fn entries_sorted(&self) -> Vec<(i64, &ProducerEntry)> {
        let mut entries: Vec<(i64, &ProducerEntry)> =
            self.producers.iter().map(|(id, e)| (*id, e)).collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// The leader's check of a batch a client sent, before it is appended.
    pub fn check(&self, batch: &ProducerBatch) -> Result<ProducerCheck, ProducerStateError> {
        if batch.is_control {
            return Err(ProducerStateError::ControlBatch);
        }
        if batch.is_transactional {
            return Err(ProducerStateError::TransactionalBatch);
        }
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            // unknown here: any sequence starts it (KIP-360)
            return Ok(ProducerCheck::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(ProducerStateError::InvalidProducerEpoch {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            if batch.first_seq != 0 {
                return Err(ProducerStateError::OutOfOrderSequence {
                    producer_id: batch.producer_id,
                    epoch: batch.epoch,
                    first_seq: batch.first_seq,
                    last_seq: -1,
                });
            }
            return Ok(ProducerCheck::Append);
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
        {
            return Ok(ProducerCheck::Duplicate {
                base_offset: dup.first_offset(),
                last_offset: dup.last_offset,
            });
        }
        match entry.last_seq() {
            Some(last_seq) if !in_sequence(last_seq, batch.first_seq) => {
                Err(ProducerStateError::OutOfOrderSequence {
                    producer_id: batch.producer_id,
                    epoch: batch.epoch,
                    first_seq: batch.first_seq,
                    last_seq,
                })
            }
            _ => Ok(ProducerCheck::Append),
        }
    }

    /// Records a batch appended to the log (by the leader, a follower, or a replay), ending
    /// at `last_offset`. Control batches carry no producer data here.
    pub fn update(&mut self, batch: &ProducerBatch, last_offset: Offset) {
        if batch.is_control {
            return;
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(MAX_CACHED_BATCHES),
                last_timestamp_ms: batch.max_timestamp,
            });
        if entry.epoch != batch.epoch {
            // a new epoch starts the window afresh (Kafka does the same for a replicated
            // batch of an older epoch: the log is the authority)
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        if let Some(last) = entry.batches.back() {
            debug_assert!(
                last.last_offset < last_offset,
                "producer batches in offset order"
            );
        }
        if entry.batches.len() == MAX_CACHED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            last_offset,
            offset_delta: batch.offset_delta,
            timestamp_ms: batch.max_timestamp,
        });
        entry.last_timestamp_ms = batch.max_timestamp;
    }

    /// Forgets producers idle for `expiration_ms` or longer (`producer.id.expiration.ms`, by
    /// their newest batch's timestamp, as Kafka does). Returns how many were removed.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp_ms) < expiration_ms);
        before - self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32, ts: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: increment_sequence(first_seq, count - 1),
            offset_delta: count - 1,
            max_timestamp: ts,
            is_transactional: false,
            is_control: false,
        }
    }

    /// Checks and (if new) appends at `*next`, as the leader does; returns the check.
    fn produce(
        state: &mut ProducerStateManager,
        b: ProducerBatch,
        next: &mut i64,
    ) -> Result<ProducerCheck, ProducerStateError> {
        let check = state.check(&b)?;
        if check == ProducerCheck::Append {
            let last = Offset(*next + i64::from(b.offset_delta));
            state.update(&b, last);
            *next = last.0 + 1;
        }
        Ok(check)
    }

    #[test]
    fn retries_of_the_last_five_batches_are_duplicates_with_their_first_offsets() {
        let mut s = ProducerStateManager::new();
        let mut next = 0;
        for i in 0..6 {
            assert_eq!(
                produce(&mut s, batch(7, 0, i * 3, 3, 100), &mut next),
                Ok(ProducerCheck::Append)
            );
        }
        assert_eq!(next, 18);
        // batches 1..=5 are remembered (offsets 3..=17); batch 0 fell out of the window
        for i in 1..6 {
            assert_eq!(
                produce(&mut s, batch(7, 0, i * 3, 3, 100), &mut next),
                Ok(ProducerCheck::Duplicate {
                    base_offset: Offset(i64::from(i) * 3),
                    last_offset: Offset(i64::from(i) * 3 + 2)
                })
            );
        }
        assert_eq!(next, 18, "duplicates are not appended");
        // the oldest batch, past the window: out of order (Kafka's answer too)
        assert!(matches!(
            produce(&mut s, batch(7, 0, 0, 3, 100), &mut next),
            Err(ProducerStateError::OutOfOrderSequence {
                first_seq: 0,
                last_seq: 17,
                ..
            })
        ));
        assert_eq!(s.entry(7).unwrap().batches.len(), MAX_CACHED_BATCHES);
    }

    #[test]
    fn a_gap_is_out_of_order_and_an_older_epoch_is_refused() {
        let mut s = ProducerStateManager::new();
        let mut next = 0;
        produce(&mut s, batch(1, 2, 0, 5, 1), &mut next).unwrap();
        assert!(matches!(
            produce(&mut s, batch(1, 2, 6, 1, 1), &mut next),
            Err(ProducerStateError::OutOfOrderSequence {
                first_seq: 6,
                last_seq: 4,
                ..
            })
        ));
        // a batch overlapping the last one without matching it is not a duplicate either
        assert!(matches!(
            produce(&mut s, batch(1, 2, 3, 4, 1), &mut next),
            Err(ProducerStateError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            produce(&mut s, batch(1, 1, 5, 1, 1), &mut next),
            Err(ProducerStateError::InvalidProducerEpoch {
                producer_id: 1,
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(
            produce(&mut s, batch(1, 2, 5, 1, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        assert_eq!(next, 6);
    }

    #[test]
    fn a_bumped_epoch_starts_at_sequence_zero_and_forgets_the_old_window() {
        let mut s = ProducerStateManager::new();
        let mut next = 0;
        produce(&mut s, batch(1, 0, 0, 2, 1), &mut next).unwrap();
        produce(&mut s, batch(1, 0, 2, 2, 1), &mut next).unwrap();
        assert!(matches!(
            produce(&mut s, batch(1, 1, 4, 1, 1), &mut next),
            Err(ProducerStateError::OutOfOrderSequence { last_seq: -1, .. })
        ));
        assert_eq!(
            produce(&mut s, batch(1, 1, 0, 2, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        let entry = s.entry(1).unwrap();
        assert_eq!((entry.epoch, entry.batches.len()), (1, 1));
        // the old epoch is fenced now, even its own retries
        assert!(matches!(
            produce(&mut s, batch(1, 0, 2, 2, 1), &mut next),
            Err(ProducerStateError::InvalidProducerEpoch { current: 1, .. })
        ));
        // the new epoch's batch is a duplicate of itself
        assert!(matches!(
            produce(&mut s, batch(1, 1, 0, 2, 1), &mut next),
            Ok(ProducerCheck::Duplicate {
                base_offset: Offset(4),
                last_offset: Offset(5)
            })
        ));
    }

    #[test]
    fn an_unknown_producer_may_start_at_any_sequence_and_sequences_wrap() {
        let mut s = ProducerStateManager::new();
        let mut next = 0;
        // unknown here (expired, or its batches were deleted): accepted as Kafka 3.x does
        assert_eq!(
            produce(&mut s, batch(9, 0, i32::MAX - 1, 2, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        assert_eq!(s.entry(9).unwrap().last_seq(), Some(i32::MAX));
        assert_eq!(
            produce(&mut s, batch(9, 0, 0, 3, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(
            produce(&mut s, batch(9, 0, 3, 1, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        // producers are independent of each other
        assert_eq!(
            produce(&mut s, batch(10, 0, 0, 1, 1), &mut next),
            Ok(ProducerCheck::Append)
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn transactional_and_control_batches_from_clients_are_refused() {
        let s = ProducerStateManager::new();
        let mut b = batch(1, 0, 0, 1, 1);
        b.is_transactional = true;
        assert_eq!(s.check(&b), Err(ProducerStateError::TransactionalBatch));
        b.is_control = true;
        assert_eq!(s.check(&b), Err(ProducerStateError::ControlBatch));
    }

    #[test]
    fn producers_idle_past_the_expiration_are_forgotten() {
        let mut s = ProducerStateManager::new();
        let mut next = 0;
        produce(&mut s, batch(1, 0, 0, 1, 1_000), &mut next).unwrap();
        produce(&mut s, batch(2, 0, 0, 1, 5_000), &mut next).unwrap();
        assert_eq!(s.remove_expired(5_999, 5_000), 0);
        assert_eq!(s.remove_expired(6_000, 5_000), 1);
        assert!(s.entry(1).is_none() && s.entry(2).is_some());
        // the forgotten producer continues at any sequence (it is unknown now)
        assert_eq!(
            produce(&mut s, batch(1, 0, 1, 1, 7_000), &mut next),
            Ok(ProducerCheck::Append)
        );
    }
}
