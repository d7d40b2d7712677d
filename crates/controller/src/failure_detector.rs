//! Broker liveness on the Raft leader: the time of each broker's last heartbeat, in memory
//! only (liveness is not in the metadata log). A broker whose session expired
//! (`broker.session.timeout.ms` without a heartbeat) is due to be fenced.
//!
//! A new Raft leader knows no heartbeat times: it starts every registered broker's session
//! at the moment it took over, so a leader change alone never fences anyone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureDetector {
    session_timeout: Duration,
    last_heartbeat: BTreeMap<i32, Instant>,
}

impl FailureDetector {
    pub fn new(session_timeout_ms: u64) -> Self {
        FailureDetector {
            session_timeout: Duration::from_millis(session_timeout_ms),
            last_heartbeat: BTreeMap::new(),
        }
    }

    pub fn heartbeat(&mut self, broker_id: i32, now: Instant) {
        let t = self.last_heartbeat.entry(broker_id).or_insert(now);
        *t = (*t).max(now);
    }

    /// Forgets every time: call when this node becomes the Raft leader, then `heartbeat`
    /// each registered broker with the takeover time.
    pub fn reset(&mut self) {
        self.last_heartbeat.clear();
    }

    pub fn is_alive(&self, broker_id: i32, now: Instant) -> bool {
        self.last_heartbeat
            .get(&broker_id)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.session_timeout)
    }

    /// Brokers among `unfenced` whose session has expired (or who never heartbeated here).
    pub fn expired(&self, unfenced: &[i32], now: Instant) -> Vec<i32> {
        unfenced
            .iter()
            .copied()
            .filter(|b| !self.is_alive(*b, now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_after_the_timeout() {
        let mut fd = FailureDetector::new(100);
        let t0 = Instant::now();
        fd.heartbeat(1, t0);
        fd.heartbeat(2, t0);
        assert!(fd
            .expired(&[1, 2], t0 + Duration::from_millis(99))
            .is_empty());
        fd.heartbeat(2, t0 + Duration::from_millis(90));
        assert_eq!(
            fd.expired(&[1, 2], t0 + Duration::from_millis(100)),
            vec![1]
        );
        // an out-of-order (older) heartbeat does not shorten the session
        fd.heartbeat(2, t0);
        assert!(fd.is_alive(2, t0 + Duration::from_millis(150)));
        // a broker never seen is not alive
        assert_eq!(fd.expired(&[3], t0), vec![3]);
        fd.reset();
        assert!(!fd.is_alive(2, t0));
    }
}
