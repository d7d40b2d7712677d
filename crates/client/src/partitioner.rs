//! Which partition a record goes to. The default is Kafka's (the Java client's
//! `DefaultPartitioner` since 2.4, KIP-480): a keyed record by the murmur2 hash of its key
//! (`murmur2.rs`), the same partition the Java client and librdkafka's `murmur2_random`
//! pick; a keyless record to a *sticky* partition that changes only when the record would
//! open a new batch there (the open one is full, or was sent): the producer then asks
//! again (Kafka's `onNewBatch`) and the record opens a batch on the new sticky partition,
//! so keyless records fill batches instead of spreading one record per partition per
//! linger. Round-robin and random ignore keys (for benchmarks and tests);
//! [`Partitioner`] is the trait for custom ones.
//!
//! Invariant: every choice is a partition in `0..partitions`; among `available` ones
//! (those with a leader) when there are any, for keyless records. A key's partition never
//! depends on availability (Kafka's rule: keyed order beats availability).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;

use crate::murmur2::partition_for_key;

/// Chooses partitions. `partitions` is the topic's partition count (> 0); `available`
/// lists the partitions that have a leader now (empty: treat all as available).
pub trait Partitioner: Send {
    fn partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32;

    /// A keyless record for `topic`'s partition `sealed` would open a new batch there
    /// (the open one is full, or was sent): a sticky partitioner moves to another
    /// partition and returns it, and the record goes there. None: the record stays.
    fn on_new_batch(
        &mut self,
        _topic: &str,
        _sealed: i32,
        _partitions: i32,
        _available: &[i32],
    ) -> Option<i32> {
        None
    }
}

fn random_of(rng: &mut StdRng, partitions: i32, available: &[i32], not: Option<i32>) -> i32 {
    let pool: Vec<i32> = if available.is_empty() {
        (0..partitions).collect()
    } else {
        available.to_vec()
    };
    let choices: Vec<i32> = match not {
        Some(previous) if pool.len() > 1 => pool.into_iter().filter(|p| *p != previous).collect(),
        _ => pool,
    };
    choices[rng.random_range(0..choices.len())]
}

/// Keyless records stick to one partition per topic until its batch is sealed, then move
/// to another (random, available, different when there is a choice).
pub struct StickyPartitioner {
    rng: StdRng,
    current: FxHashMap<String, i32>,
}

impl StickyPartitioner {
    pub fn new() -> Self {
        Self::with_rng(StdRng::from_os_rng())
    }

    /// Reproducible choices, for tests and benchmarks.
    pub fn with_seed(seed: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed))
    }

    fn with_rng(rng: StdRng) -> Self {
        StickyPartitioner {
            rng,
            current: FxHashMap::default(),
        }
    }
}

impl Default for StickyPartitioner {
    fn default() -> Self {
        Self::new()
    }
}

impl Partitioner for StickyPartitioner {
    fn partition(
        &mut self,
        topic: &str,
        _key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        if let Some(p) = self.current.get(topic).copied() {
            let still_there = p < partitions && (available.is_empty() || available.contains(&p));
            if still_there {
                return p;
            }
        }
        let p = random_of(&mut self.rng, partitions, available, None);
        self.current.insert(topic.to_string(), p);
        p
    }

    fn on_new_batch(
        &mut self,
        topic: &str,
        sealed: i32,
        partitions: i32,
        available: &[i32],
    ) -> Option<i32> {
        if self.current.get(topic) != Some(&sealed) {
            return None;
        }
        let next = random_of(&mut self.rng, partitions, available, Some(sealed));
        self.current.insert(topic.to_string(), next);
        Some(next)
    }
}

/// Kafka's default: murmur2 of the key, sticky for keyless records.
#[derive(Default)]
pub struct DefaultPartitioner {
    sticky: StickyPartitioner,
}

impl DefaultPartitioner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_seed(seed: u64) -> Self {
        DefaultPartitioner {
            sticky: StickyPartitioner::with_seed(seed),
        }
    }
}

impl Partitioner for DefaultPartitioner {
    fn partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.sticky.partition(topic, None, partitions, available),
        }
    }

    fn on_new_batch(
        &mut self,
        topic: &str,
        sealed: i32,
        partitions: i32,
        available: &[i32],
    ) -> Option<i32> {
        self.sticky
            .on_new_batch(topic, sealed, partitions, available)
    }
}

/// Each record to the next partition (per topic), keys ignored; over the available
/// partitions when there are any.
#[derive(Default)]
pub struct RoundRobinPartitioner {
    next: HashMap<String, usize>,
}

impl Partitioner for RoundRobinPartitioner {
    fn partition(
        &mut self,
        topic: &str,
        _key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        let counter = self.next.entry(topic.to_string()).or_default();
        let i = *counter;
        *counter = counter.wrapping_add(1);
        if available.is_empty() {
            (i % partitions.max(1) as usize) as i32
        } else {
            available[i % available.len()]
        }
    }
}

/// A uniformly random partition for every record, keys ignored.
pub struct RandomPartitioner {
    rng: StdRng,
}

impl RandomPartitioner {
    pub fn new() -> Self {
        RandomPartitioner {
            rng: StdRng::from_os_rng(),
        }
    }

    pub fn with_seed(seed: u64) -> Self {
        RandomPartitioner {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Default for RandomPartitioner {
    fn default() -> Self {
        Self::new()
    }
}

impl Partitioner for RandomPartitioner {
    fn partition(
        &mut self,
        _topic: &str,
        _key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        random_of(&mut self.rng, partitions, available, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_records_follow_murmur2_whatever_is_available() {
        let mut p = DefaultPartitioner::with_seed(1);
        // "kafka" hashes to 0xd067cf64: & 0x7fffffff = 0x5067cf64 = 1348980580
        assert_eq!(p.partition("t", Some(b"kafka"), 6, &[]), 1_348_980_580 % 6);
        assert_eq!(p.partition("t", Some(b"kafka"), 6, &[0]), 1_348_980_580 % 6);
    }

    #[test]
    fn keyless_records_stick_until_the_batch_is_sealed() {
        let mut p = DefaultPartitioner::with_seed(7);
        let first = p.partition("t", None, 6, &[]);
        for _ in 0..100 {
            assert_eq!(p.partition("t", None, 6, &[]), first);
        }
        // another topic sticks on its own
        let other = p.partition("u", None, 6, &[]);
        p.on_new_batch("u", other, 6, &[]);
        assert_eq!(p.partition("t", None, 6, &[]), first);
        // a sealed batch of another partition changes nothing
        p.on_new_batch("t", (first + 1) % 6, 6, &[]);
        assert_eq!(p.partition("t", None, 6, &[]), first);
        p.on_new_batch("t", first, 6, &[]);
        let second = p.partition("t", None, 6, &[]);
        assert_ne!(
            second, first,
            "moves to another partition when there is one"
        );
        // over many batches every partition is used
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let now = p.partition("t", None, 6, &[]);
            used.insert(now);
            p.on_new_batch("t", now, 6, &[]);
        }
        assert_eq!(used.len(), 6);
    }

    #[test]
    fn keyless_records_go_only_to_available_partitions() {
        let mut p = DefaultPartitioner::with_seed(3);
        for _ in 0..100 {
            let now = p.partition("t", None, 6, &[2, 4]);
            assert!([2, 4].contains(&now));
            p.on_new_batch("t", now, 6, &[2, 4]);
        }
        // the sticky partition lost its leader: the next record goes elsewhere
        let now = p.partition("t", None, 6, &[2]);
        assert_eq!(now, 2);
        assert_eq!(p.partition("t", None, 6, &[5]), 5);
        // one partition: it stays
        let mut q = StickyPartitioner::with_seed(9);
        q.on_new_batch("t", 0, 1, &[]);
        assert_eq!(q.partition("t", None, 1, &[]), 0);
        q.on_new_batch("t", 0, 1, &[]);
        assert_eq!(q.partition("t", None, 1, &[]), 0);
    }

    #[test]
    fn round_robin_cycles_over_available_partitions() {
        let mut p = RoundRobinPartitioner::default();
        let all: Vec<i32> = (0..7)
            .map(|_| p.partition("t", Some(b"k"), 3, &[]))
            .collect();
        assert_eq!(all, [0, 1, 2, 0, 1, 2, 0]);
        let some: Vec<i32> = (0..4).map(|_| p.partition("u", None, 6, &[1, 5])).collect();
        assert_eq!(some, [1, 5, 1, 5]);
    }

    #[test]
    fn random_stays_in_range_and_reaches_every_partition() {
        let mut p = RandomPartitioner::with_seed(5);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let now = p.partition("t", Some(b"same key"), 4, &[]);
            counts[now as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
    }
}
