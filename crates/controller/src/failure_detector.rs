//! Broker liveness, kept by every controller: the time of each broker's last heartbeat
//! or `BrokerAlive` ping, in memory only (liveness is not in the metadata log). Only the
//! Raft leader acts on it: a broker whose session expired (`broker.session.timeout.ms`
//! without word from it) is due to be fenced.
//!
//! Every broker pings every controller, so a newly elected leader already knows who is
//! alive: a broker it has heard nothing from since it started observing, for longer than
//! the session timeout, is fenced at once (it most likely died with the old leader). A
//! broker never heard from gets a session starting when this controller started
//! observing, so a controller that has just started never fences anyone early.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureDetector {
    session_timeout: Duration,
    /// When this controller started receiving heartbeats and pings.
    observing_since: Instant,
    last_heartbeat: BTreeMap<i32, Instant>,
}

impl FailureDetector {
    pub fn new(session_timeout_ms: u64, observing_since: Instant) -> Self {
        FailureDetector {
            session_timeout: Duration::from_millis(session_timeout_ms),
            observing_since,
            last_heartbeat: BTreeMap::new(),
        }
    }

    pub fn heartbeat(&mut self, broker_id: i32, now: Instant) {
        let t = self.last_heartbeat.entry(broker_id).or_insert(now);
        *t = (*t).max(now);
    }

    /// Call when this node becomes the Raft leader: a registered broker never heard from
    /// gets a session counted from when this controller started observing.
    pub fn take_over(&mut self, registered: &[i32]) {
        for b in registered {
            self.last_heartbeat
                .entry(*b)
                .or_insert(self.observing_since);
        }
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
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(100, t0);
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
    }

    #[test]
    fn a_new_leader_fences_at_once_only_brokers_it_has_not_heard_from() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut fd = FailureDetector::new(100, t0);
        // pings while following: broker 1 keeps pinging, broker 2 stopped at 50 ms,
        // broker 3 never pinged this controller
        fd.heartbeat(2, t0 + ms(50));
        for t in (0..=400).step_by(20) {
            fd.heartbeat(1, t0 + ms(t));
        }
        fd.take_over(&[1, 2, 3]);
        assert_eq!(fd.expired(&[1, 2, 3], t0 + ms(410)), vec![2, 3]);
        // taking over right after starting: everyone gets a session from the start
        let mut fresh = FailureDetector::new(100, t0);
        fresh.take_over(&[1, 2]);
        assert!(fresh.expired(&[1, 2], t0 + ms(99)).is_empty());
        assert_eq!(fresh.expired(&[1, 2], t0 + ms(100)), vec![1, 2]);
    }
}
