//! Replica placement for new topics and partitions: Kafka's rack-unaware assignment.
//! Replicas of consecutive partitions start on consecutive brokers (from a rotating start
//! index), and followers are shifted so that leaders' followers also spread out. The first
//! replica is the preferred leader.
//!
//! Invariant: every assignment has `replication_factor` distinct brokers, all from the
//! given list.

use crate::error::{ControllerError, Result};

/// Most partitions one request may create (KRaft caps one operation at 10,000 records).
pub const MAX_PARTITIONS_PER_REQUEST: i32 = 10_000;

/// Assigns `partitions` partitions numbered from `first_partition` over `brokers` (sorted,
/// live), starting at `start_index` (the caller rotates it so topics do not all start on
/// the same broker).
pub fn assign_replicas(
    brokers: &[i32],
    partitions: i32,
    replication_factor: i32,
    first_partition: i32,
    start_index: usize,
) -> Result<Vec<Vec<i32>>> {
    if partitions < 1 {
        return Err(ControllerError::InvalidPartitions(format!(
            "Number of partitions must be larger than 0, got {partitions}"
        )));
    }
    if partitions > MAX_PARTITIONS_PER_REQUEST {
        return Err(ControllerError::InvalidPartitions(format!(
            "Creating {partitions} partitions in one request exceeds the limit of {MAX_PARTITIONS_PER_REQUEST}"
        )));
    }
    if replication_factor < 1 {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Replication factor must be larger than 0, got {replication_factor}"
        )));
    }
    let n = brokers.len();
    if replication_factor as usize > n {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Replication factor: {replication_factor} larger than available brokers: {n}."
        )));
    }
    let rf = replication_factor as usize;
    let start = start_index % n;
    let mut shift = start;
    let mut out = Vec::with_capacity(partitions as usize);
    for i in 0..partitions as usize {
        let p = first_partition as usize + i;
        if p > 0 && p.is_multiple_of(n) {
            shift += 1;
        }
        let first = (p + start) % n;
        let mut replicas = Vec::with_capacity(rf);
        replicas.push(brokers[first]);
        for j in 0..rf - 1 {
            let offset = 1 + (shift + j) % (n - 1);
            replicas.push(brokers[(first + offset) % n]);
        }
        debug_assert_eq!(
            {
                let mut r = replicas.clone();
                r.sort_unstable();
                r.dedup();
                r.len()
            },
            rf
        );
        out.push(replicas);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        for n in 1..=6usize {
            let brokers: Vec<i32> = (1..=n as i32).collect();
            for rf in 1..=n as i32 {
                for start in 0..n {
                    let a = assign_replicas(&brokers, 12, rf, 0, start).unwrap();
                    assert_eq!(a.len(), 12);
                    let mut leaders = vec![0usize; n + 1];
                    for r in &a {
                        let mut s = r.clone();
                        s.sort_unstable();
                        s.dedup();
                        assert_eq!(s.len(), rf as usize, "{r:?}");
                        leaders[r[0] as usize] += 1;
                    }
                    // 12 partitions over n brokers: leaders differ by at most one
                    let counts = &leaders[1..];
                    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
                }
            }
        }
    }

    #[test]
    fn the_start_index_rotates_the_first_leader() {
        let brokers = [1, 2, 3];
        assert_eq!(assign_replicas(&brokers, 1, 3, 0, 0).unwrap()[0][0], 1);
        assert_eq!(assign_replicas(&brokers, 1, 3, 0, 1).unwrap()[0][0], 2);
        assert_eq!(
            assign_replicas(&brokers, 3, 2, 0, 0).unwrap(),
            vec![vec![1, 2], vec![2, 3], vec![3, 1]]
        );
    }

    #[test]
    fn bad_counts_are_refused() {
        assert!(matches!(
            assign_replicas(&[1, 2], 3, 3, 0, 0),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            assign_replicas(&[1, 2], 0, 1, 0, 0),
            Err(ControllerError::InvalidPartitions(_))
        ));
        assert!(matches!(
            assign_replicas(&[1], i32::MAX, 1, 0, 0),
            Err(ControllerError::InvalidPartitions(_))
        ));
        assert!(matches!(
            assign_replicas(&[], 1, 1, 0, 0),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
    }
}
