//! Liveness, kept by every controller for brokers and for its fellow voters: the time of
//! each sender's last heartbeat or `Alive` ping, and whether its `Alive` stream has ended
//! since, in memory only (liveness is not in the metadata log). Only the Raft leader acts
//! on the brokers' view: a broker whose session expired (`broker.session.timeout.ms`
//! without word from it) or whose stream ended with nothing heard since is due to be
//! fenced.
//!
//! Every broker pings every controller, so a newly elected leader already knows who died
//! (its stream ended): fenced at once. Every other registered broker gets a session from
//! the takeover at the earliest: it may have reached only the old leader, whose answers
//! renewed its controller lease (`sluice_broker::controller_lease`).
//!
//! A stream's end counts only if it was the sender's latest stream, and word from the
//! sender after it (a new stream, a heartbeat) makes the sender alive again: a process
//! that is still running says so within one heartbeat interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureDetector<K> {
    session_timeout: Duration,
    last_heartbeat: BTreeMap<K, Instant>,
    /// Each sender's latest `Alive` stream.
    streams: BTreeMap<K, AliveStream>,
    next_stream_id: u64,
    /// Senders [`FailureDetector::expired`] gave out whose fence is not yet settled
    /// (proposed, not yet applied): a heartbeat answered meanwhile must say "fenced".
    fencing: std::collections::BTreeSet<K>,
    /// Each sender's newest heartbeat seen: (registration epoch, sequence).
    newest_heartbeat: BTreeMap<K, (i64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct AliveStream {
    id: u64,
    ended_at: Option<Instant>,
}

impl<K: Ord + Copy> FailureDetector<K> {
    pub fn new(session_timeout_ms: u64) -> Self {
        FailureDetector {
            session_timeout: Duration::from_millis(session_timeout_ms),
            last_heartbeat: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream_id: 0,
            fencing: std::collections::BTreeSet::new(),
            newest_heartbeat: BTreeMap::new(),
        }
    }

    pub fn heartbeat(&mut self, sender: K, now: Instant) {
        let t = self.last_heartbeat.entry(sender).or_insert(now);
        *t = (*t).max(now);
    }

    /// The first ping of a new `Alive` stream from `sender`: it becomes the sender's latest
    /// stream. Returns the id to pass to [`FailureDetector::stream_ended`].
    pub fn stream_opened(&mut self, sender: K, now: Instant) -> u64 {
        self.next_stream_id += 1;
        let id = self.next_stream_id;
        self.streams
            .insert(sender, AliveStream { id, ended_at: None });
        self.heartbeat(sender, now);
        id
    }

    /// `sender`'s stream `stream_id` ended. Returns true when that leaves the sender gone
    /// (it was its latest stream and nothing was heard from it since).
    pub fn stream_ended(&mut self, sender: K, stream_id: u64, now: Instant) -> bool {
        match self.streams.get_mut(&sender) {
            Some(s) if s.id == stream_id => s.ended_at = Some(now),
            _ => return false,
        }
        self.is_gone(sender)
    }

    /// True when the sender's latest stream ended and nothing was heard from it since.
    pub fn is_gone(&self, sender: K) -> bool {
        let Some(ended_at) = self.streams.get(&sender).and_then(|s| s.ended_at) else {
            return false;
        };
        self.last_heartbeat
            .get(&sender)
            .is_none_or(|heard| ended_at >= *heard)
    }

    /// Call when this node becomes the Raft leader (at `now`): every registered sender
    /// not known to be gone gets a session counted from now at the earliest. The old
    /// leader may have answered its heartbeats (renewing its controller lease) while this
    /// node heard nothing from it (a partial partition): fencing it before its lease runs
    /// out would let two brokers lead one partition. A sender whose stream to this node
    /// ended with nothing heard since (its process died) stays due at once.
    pub fn take_over(&mut self, registered: &[K], now: Instant) {
        for b in registered {
            if !self.is_gone(*b) {
                self.heartbeat(*b, now);
            }
        }
    }

    pub fn is_alive(&self, sender: K, now: Instant) -> bool {
        !self.is_gone(sender)
            && self
                .last_heartbeat
                .get(&sender)
                .is_some_and(|t| now.saturating_duration_since(*t) < self.session_timeout)
    }

    /// Senders among `unfenced` whose session has expired, who never heartbeated here, or
    /// whose stream ended with nothing heard since. Each is marked as being fenced until
    /// [`FailureDetector::fencing_settled`].
    pub fn expired(&mut self, unfenced: &[K], now: Instant) -> Vec<K> {
        let expired: Vec<K> = unfenced
            .iter()
            .copied()
            .filter(|b| !self.is_alive(*b, now))
            .collect();
        self.fencing.extend(expired.iter().copied());
        expired
    }

    /// Notes heartbeat `sequence` of `sender`'s registration `epoch`; false when a newer
    /// one was seen already (a late copy: its contents are older than what was acted on).
    pub fn is_newest_heartbeat(&mut self, sender: K, epoch: i64, sequence: u64) -> bool {
        let newest = self
            .newest_heartbeat
            .entry(sender)
            .or_insert((epoch, sequence));
        if (epoch, sequence) < *newest {
            return false;
        }
        *newest = (epoch, sequence);
        true
    }

    /// The fence of `sender` was applied, or failed (the next round decides again).
    pub fn fencing_settled(&mut self, sender: K) {
        self.fencing.remove(&sender);
    }

    /// Whether a fence of `sender` is under way.
    pub fn is_being_fenced(&self, sender: K) -> bool {
        self.fencing.contains(&sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_after_the_timeout() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(100);
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
    fn a_new_leader_gives_every_broker_not_known_gone_a_session_from_its_takeover() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut fd = FailureDetector::new(100);
        // pings while following: broker 1 keeps pinging, broker 2 stopped at 50 ms,
        // broker 3 never pinged this controller (it may still reach the old leader, whose
        // answers renewed its controller lease), broker 4's process died (its stream ended)
        fd.heartbeat(2, t0 + ms(50));
        for t in (0..=400).step_by(20) {
            fd.heartbeat(1, t0 + ms(t));
        }
        let stream = fd.stream_opened(4, t0 + ms(10));
        assert!(fd.stream_ended(4, stream, t0 + ms(60)));
        fd.take_over(&[1, 2, 3, 4], t0 + ms(400));
        assert_eq!(fd.expired(&[1, 2, 3, 4], t0 + ms(410)), vec![4]);
        assert_eq!(fd.expired(&[1, 2, 3], t0 + ms(499)), Vec::<i32>::new());
        assert_eq!(fd.expired(&[1, 2, 3], t0 + ms(500)), vec![1, 2, 3]);
        // taking over right after starting: everyone gets a session from the start
        let mut fresh = FailureDetector::new(100);
        fresh.take_over(&[1, 2], t0);
        assert!(fresh.expired(&[1, 2], t0 + ms(99)).is_empty());
        assert_eq!(fresh.expired(&[1, 2], t0 + ms(100)), vec![1, 2]);
    }

    #[test]
    fn a_late_copy_of_an_older_heartbeat_is_known_as_such() {
        let mut fd = FailureDetector::new(100);
        assert!(fd.is_newest_heartbeat(1, 5, 10));
        assert!(fd.is_newest_heartbeat(1, 5, 12));
        assert!(!fd.is_newest_heartbeat(1, 5, 11));
        assert!(
            fd.is_newest_heartbeat(1, 5, 12),
            "a retried copy of the newest"
        );
        // a new registration starts its own numbering
        assert!(fd.is_newest_heartbeat(1, 6, 0));
        assert!(!fd.is_newest_heartbeat(1, 5, 13));
        assert!(fd.is_newest_heartbeat(2, 1, 0));
    }

    #[test]
    fn a_fence_under_way_is_known_until_settled() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(100);
        fd.heartbeat(1, t0);
        assert!(!fd.is_being_fenced(1));
        assert_eq!(fd.expired(&[1], t0 + Duration::from_millis(100)), vec![1]);
        // a heartbeat arriving now does not stop the fence already proposed
        fd.heartbeat(1, t0 + Duration::from_millis(101));
        assert!(fd.is_being_fenced(1));
        fd.fencing_settled(1);
        assert!(!fd.is_being_fenced(1));
    }

    #[test]
    fn an_ended_stream_expires_its_sender_at_once_until_it_is_heard_from_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut fd = FailureDetector::new(10_000);
        let s1 = fd.stream_opened(1, t0);
        let s2 = fd.stream_opened(2, t0);
        fd.heartbeat(1, t0 + ms(5));
        assert!(fd.stream_ended(1, s1, t0 + ms(10)));
        assert!(fd.is_gone(1));
        assert_eq!(fd.expired(&[1, 2], t0 + ms(11)), vec![1]);
        // a heartbeat after the end: the process is still running
        fd.heartbeat(1, t0 + ms(20));
        assert!(!fd.is_gone(1));
        assert!(fd.expired(&[1, 2], t0 + ms(21)).is_empty());
        // a stream replaced by a newer one: its end says nothing
        let s2_new = fd.stream_opened(2, t0 + ms(30));
        assert!(!fd.stream_ended(2, s2, t0 + ms(40)));
        assert!(fd.is_alive(2, t0 + ms(41)));
        assert!(fd.stream_ended(2, s2_new, t0 + ms(50)));
        assert!(!fd.is_alive(2, t0 + ms(51)));
        // a new stream after the end: alive again
        fd.stream_opened(2, t0 + ms(60));
        assert!(fd.is_alive(2, t0 + ms(61)));
        // a sender that never opened a stream is not gone
        assert!(!fd.is_gone(3));
    }
}
