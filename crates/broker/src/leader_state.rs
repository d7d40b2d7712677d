//! A partition leader's view of its replicas (pure logic, no I/O, no clock of its own):
//! each follower's log end offset (LEO) as its fetches report it and when it was last
//! caught up, the high watermark (HW), and which replicas should leave or join the ISR.
//! Kafka's rules (`Partition`, `Replica.updateFetchState`), with KIP-966's strict min ISR.
//!
//! Invariants (asserted): HW ≤ leader LEO; HW never decreases; HW = min LEO over the ISR
//! once every ISR member has reported, and it does not move while |ISR| <
//! `min.insync.replicas`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Weak;

use sluice_record::Offset;

/// When a follower's fetch session (KIP-227) last fetched, in ms. A session's fetch names
/// only the partitions whose position changed: the others were fetched again, unnamed, at
/// the position last named.
pub type SessionClock = AtomicI64;

#[derive(Debug, Clone)]
struct FollowerState {
    /// None until the follower's first fetch under this leader.
    log_end_offset: Option<Offset>,
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's LEO at this follower's previous fetch.
    leader_end_at_last_fetch: Offset,
    /// The fetch session this partition is in, if its last fetch came through one.
    session: Option<Weak<SessionClock>>,
}

#[derive(Debug, Clone)]
pub struct LeaderState {
    leader_id: i32,
    isr: Vec<i32>,
    /// Followers whose addition to the ISR was asked of the controller and not yet
    /// committed: they already count for the HW (Kafka's "maximal ISR", KIP-497), so the
    /// HW cannot pass data a member-to-be lacks.
    joining: Vec<i32>,
    min_insync_replicas: usize,
    high_watermark: Offset,
    /// Where this leader's epoch began: a follower joining the ISR must have reached it.
    epoch_start_offset: Offset,
    followers: BTreeMap<i32, FollowerState>,
}

impl LeaderState {
    /// State of a newly elected leader: every follower counts as caught up now (so none
    /// is dropped from the ISR before it had a chance to fetch), none has reported a LEO.
    pub fn new(
        leader_id: i32,
        replicas: &[i32],
        isr: &[i32],
        min_insync_replicas: usize,
        high_watermark: Offset,
        leader_end_offset: Offset,
        now_ms: i64,
    ) -> Self {
        assert!(high_watermark <= leader_end_offset, "HW ≤ LEO");
        let followers = replicas
            .iter()
            .filter(|id| **id != leader_id)
            .map(|id| {
                (
                    *id,
                    FollowerState {
                        log_end_offset: None,
                        last_caught_up_ms: now_ms,
                        last_fetch_ms: now_ms,
                        leader_end_at_last_fetch: leader_end_offset,
                        session: None,
                    },
                )
            })
            .collect();
        let mut state = LeaderState {
            leader_id,
            isr: isr.to_vec(),
            joining: Vec::new(),
            min_insync_replicas: min_insync_replicas.max(1),
            high_watermark,
            epoch_start_offset: leader_end_offset,
            followers,
        };
        // a leader alone in its ISR (and enough for min.insync.replicas) commits its whole
        // log at once: otherwise a restarted single node would hide the records past its
        // checkpointed HW until the next append
        state.maybe_advance_high_watermark(leader_end_offset);
        state
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn set_min_insync_replicas(&mut self, min: usize) {
        self.min_insync_replicas = min.max(1);
    }

    /// A new ISR from the controller (same leader epoch). Members keep their state.
    pub fn set_isr(&mut self, isr: &[i32]) {
        self.isr = isr.to_vec();
        self.joining.retain(|id| !isr.contains(id));
    }

    /// Followers asked to join the ISR (counted for the HW until committed or dropped).
    pub fn set_joining(&mut self, joining: &[i32]) {
        self.joining = joining.to_vec();
    }

    /// Whether an acks=all append may proceed (|ISR| ≥ min.insync.replicas).
    pub fn epoch_start_offset(&self) -> Offset {
        self.epoch_start_offset
    }

    pub fn has_min_isr(&self) -> bool {
        self.isr.len() >= self.min_insync_replicas
    }

    pub fn follower_log_end_offset(&self, id: i32) -> Option<Offset> {
        self.followers.get(&id).and_then(|f| f.log_end_offset)
    }

    /// A follower fetched from `fetch_offset` at `now_ms` while the leader's LEO was
    /// `leader_end_offset`: its LEO is `fetch_offset`. It is caught up if it fetched from
    /// the leader's end, or from at least where the leader's end was at its previous fetch
    /// (then it was caught up as of that fetch). `session`: the fetch session it came
    /// through, whose later fetches fetch this partition again at the same position.
    /// Returns whether the HW moved.
    pub fn on_follower_fetch(
        &mut self,
        follower_id: i32,
        fetch_offset: Offset,
        leader_end_offset: Offset,
        now_ms: i64,
        session: Option<Weak<SessionClock>>,
    ) -> bool {
        let Some(f) = self.followers.get_mut(&follower_id) else {
            return false; // not a replica of this partition
        };
        if fetch_offset >= leader_end_offset {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= f.leader_end_at_last_fetch {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end_offset = Some(fetch_offset.min(leader_end_offset));
        f.leader_end_at_last_fetch = leader_end_offset;
        f.last_fetch_ms = now_ms;
        f.session = session;
        self.maybe_advance_high_watermark(leader_end_offset)
    }

    /// The follower's fetch session no longer holds this partition.
    pub fn end_follower_session(&mut self, follower_id: i32) {
        if let Some(f) = self.followers.get_mut(&follower_id) {
            f.session = None;
        }
    }

    /// The leader's log end moves on from `previous_end` at `now_ms`. A follower that was
    /// at `previous_end` and whose fetch session fetched since (this partition unnamed, at
    /// that same position) was caught up as of that fetch: Kafka's rule for a fetch at
    /// the leader's end, applied when it matters instead of at every session fetch (which
    /// would cost every partition of the session at each one).
    pub fn on_leader_append(&mut self, previous_end: Offset, now_ms: i64) {
        for f in self.followers.values_mut() {
            if f.log_end_offset != Some(previous_end) {
                continue;
            }
            let fetched_ms = f
                .session
                .as_ref()
                .and_then(Weak::upgrade)
                .map(|clock| clock.load(Ordering::Relaxed));
            if let Some(at) = fetched_ms {
                f.last_caught_up_ms = f.last_caught_up_ms.max(at.min(now_ms));
            }
        }
    }

    /// HW = min LEO over the ISR (the leader's own is `leader_end_offset`); unchanged while
    /// |ISR| < min.insync.replicas or while an ISR member has not reported. Returns
    /// whether it moved.
    pub fn maybe_advance_high_watermark(&mut self, leader_end_offset: Offset) -> bool {
        assert!(self.high_watermark <= leader_end_offset, "HW ≤ LEO");
        if !self.has_min_isr() {
            return false;
        }
        let mut candidate = leader_end_offset;
        for id in self.isr.iter().chain(&self.joining) {
            if *id == self.leader_id {
                continue;
            }
            match self.followers.get(id).and_then(|f| f.log_end_offset) {
                Some(leo) => candidate = candidate.min(leo),
                None => return false,
            }
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            return true;
        }
        false
    }

    /// ISR followers out of sync: not at the leader's end and not caught up for longer
    /// than `max_lag_ms` (`replica.lag.time.max.ms`).
    pub fn out_of_sync(&self, leader_end_offset: Offset, now_ms: i64, max_lag_ms: i64) -> Vec<i32> {
        self.isr
            .iter()
            .filter(|id| **id != self.leader_id)
            .filter(|id| {
                self.followers.get(id).is_some_and(|f| {
                    f.log_end_offset != Some(leader_end_offset)
                        && now_ms - f.last_caught_up_ms > max_lag_ms
                })
            })
            .copied()
            .collect()
    }

    /// Whether `follower_id`, outside the ISR, may join it: it reached the HW and the
    /// start of this leader's epoch (so it holds everything this leader may have committed).
    pub fn can_join(&self, follower_id: i32) -> bool {
        !self.isr.contains(&follower_id)
            && !self.joining.contains(&follower_id)
            && self.followers.get(&follower_id).is_some_and(|f| {
                f.log_end_offset
                    .is_some_and(|leo| leo >= self.high_watermark && leo >= self.epoch_start_offset)
            })
    }

    /// Every follower that may join the ISR now (see [`Self::can_join`]).
    pub fn ready_to_join(&self) -> Vec<i32> {
        self.followers
            .keys()
            .copied()
            .filter(|id| self.can_join(*id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(n: i64) -> Offset {
        Offset(n)
    }

    #[test]
    fn the_high_watermark_is_the_least_isr_log_end_and_never_goes_back() {
        let mut s = LeaderState::new(1, &[1, 2, 3], &[1, 2, 3], 1, o(0), o(10), 0);
        // nobody reported yet: no move, even though the leader has 10
        assert!(!s.maybe_advance_high_watermark(o(10)));
        assert!(!s.on_follower_fetch(2, o(7), o(10), 1, None));
        assert_eq!(s.high_watermark(), o(0), "follower 3 has not reported");
        assert!(s.on_follower_fetch(3, o(4), o(10), 1, None));
        assert_eq!(s.high_watermark(), o(4));
        assert!(s.on_follower_fetch(3, o(10), o(10), 2, None));
        assert_eq!(s.high_watermark(), o(7));
        // a follower that reports less (it truncated) does not pull the HW back
        assert!(!s.on_follower_fetch(2, o(5), o(10), 3, None));
        assert_eq!(s.high_watermark(), o(7));
        // a fetch offset past the leader's end is capped at it
        s.on_follower_fetch(2, o(99), o(10), 4, None);
        assert_eq!(s.follower_log_end_offset(2), Some(o(10)));
        assert_eq!(s.high_watermark(), o(10));
    }

    #[test]
    fn below_min_isr_the_high_watermark_stays() {
        let mut s = LeaderState::new(1, &[1, 2, 3], &[1], 2, o(3), o(10), 0);
        assert!(!s.has_min_isr());
        assert!(!s.maybe_advance_high_watermark(o(10)));
        assert_eq!(s.high_watermark(), o(3));
        s.set_isr(&[1, 2]);
        assert!(s.has_min_isr());
        assert!(s.on_follower_fetch(2, o(10), o(10), 1, None));
        assert_eq!(s.high_watermark(), o(10));
        // alone again: a single-replica ISR with min 1 moves with the leader, from the
        // moment it leads (a restarted single node shows its whole log)
        let mut alone = LeaderState::new(1, &[1], &[1], 1, o(0), o(5), 0);
        assert_eq!(alone.high_watermark(), o(5));
        assert!(alone.maybe_advance_high_watermark(o(6)));
        assert_eq!(alone.high_watermark(), o(6));
    }

    #[test]
    fn a_follower_lagging_longer_than_the_limit_is_out_of_sync() {
        let mut s = LeaderState::new(1, &[1, 2, 3], &[1, 2, 3], 1, o(0), o(0), 0);
        // both fetch at the leader's end at t=100
        s.on_follower_fetch(2, o(0), o(0), 100, None);
        s.on_follower_fetch(3, o(0), o(0), 100, None);
        // follower 2 keeps up with a leader that grows to 50
        s.on_follower_fetch(2, o(20), o(20), 150, None);
        s.on_follower_fetch(2, o(40), o(50), 200, None);
        // fetching from 40 < 50 at t=200, but the leader was at 20 at its previous fetch:
        // caught up as of t=150. Follower 3 stopped fetching at t=100.
        assert!(
            s.out_of_sync(o(50), 100 + 1000, 1000).is_empty(),
            "within the limit"
        );
        assert_eq!(s.out_of_sync(o(50), 100 + 1001, 1000), vec![3]);
        assert_eq!(s.out_of_sync(o(50), 150 + 1001, 1000), vec![2, 3]);
        // a follower at the leader's end is never out of sync, however long ago
        s.on_follower_fetch(3, o(50), o(50), 300, None);
        assert_eq!(s.out_of_sync(o(50), 100_000, 1000), vec![2]);
    }

    #[test]
    fn a_joining_follower_holds_the_high_watermark_back_until_it_has_the_data() {
        let mut s = LeaderState::new(1, &[1, 2], &[1], 1, o(0), o(10), 0);
        s.on_follower_fetch(2, o(10), o(10), 1, None);
        assert_eq!(s.ready_to_join(), vec![2]);
        s.set_joining(&[2]);
        assert!(s.ready_to_join().is_empty(), "asked once");
        // the leader appends; the joining follower has not fetched it yet
        assert!(!s.maybe_advance_high_watermark(o(15)));
        assert_eq!(s.high_watermark(), o(10));
        s.on_follower_fetch(2, o(15), o(15), 2, None);
        assert_eq!(s.high_watermark(), o(15));
        s.set_isr(&[1, 2]);
        assert!(s.joining.is_empty());
    }

    #[test]
    fn a_follower_joins_once_it_reaches_the_high_watermark_and_the_epoch_start() {
        // leader elected at LEO 10 with HW 6; follower 3 is out of the ISR
        let mut s = LeaderState::new(1, &[1, 2, 3], &[1, 2], 1, o(6), o(10), 0);
        s.on_follower_fetch(3, o(8), o(10), 1, None);
        assert!(s.ready_to_join().is_empty(), "below the epoch start (10)");
        s.on_follower_fetch(3, o(10), o(12), 2, None);
        assert_eq!(s.ready_to_join(), vec![3]);
        s.set_isr(&[1, 2, 3]);
        assert!(s.ready_to_join().is_empty());
        // a non-replica's fetch changes nothing
        assert!(!s.on_follower_fetch(9, o(12), o(12), 3, None));
    }

    #[test]
    fn a_follower_idle_in_its_fetch_session_stays_caught_up_until_the_leader_moves() {
        use std::sync::Arc;
        let mut s = LeaderState::new(1, &[1, 2, 3], &[1, 2, 3], 1, o(0), o(10), 0);
        let session_2 = Arc::new(SessionClock::new(0));
        let session_3 = Arc::new(SessionClock::new(0));
        // both name the partition once, at the leader's end, at t=100
        s.on_follower_fetch(2, o(10), o(10), 100, Some(Arc::downgrade(&session_2)));
        s.on_follower_fetch(3, o(10), o(10), 100, Some(Arc::downgrade(&session_3)));
        // then fetch through their sessions without naming it: 2 until t=60_000, while 3
        // stopped at t=100 (its session is gone)
        session_2.store(60_000, Ordering::Relaxed);
        drop(session_3);
        // the leader appends at t=60_010: 2 was caught up as of its last session fetch,
        // 3 as of t=100
        s.on_leader_append(o(10), 60_010);
        assert_eq!(s.out_of_sync(o(11), 60_020, 30_000), vec![3]);
        // a session fetch after the append proves nothing: 2 is still at 10
        session_2.store(95_000, Ordering::Relaxed);
        s.on_leader_append(o(11), 95_010);
        assert_eq!(s.out_of_sync(o(12), 95_020, 30_000), vec![2, 3]);
        // a partition that left the session is not kept in sync by it
        s.on_follower_fetch(2, o(12), o(12), 95_030, Some(Arc::downgrade(&session_2)));
        s.end_follower_session(2);
        session_2.store(200_000, Ordering::Relaxed);
        s.on_leader_append(o(12), 200_010);
        assert_eq!(s.out_of_sync(o(13), 200_020, 30_000), vec![2, 3]);
    }
}
