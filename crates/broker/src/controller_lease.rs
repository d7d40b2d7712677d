//! The controller lease: how long this broker may act on the leaderships its metadata
//! image gives it. The active controller fences a broker it has not heard from for
//! `broker.session.timeout.ms` and moves its leaderships; a broker cut from the
//! controllers cannot learn that, and would keep answering as leader — a zombie: acks=1
//! writes acknowledged and then truncated, a high watermark read that goes backwards.
//!
//! So every heartbeat the active controller answers (it confirms its leadership with the
//! quorum before saying "not fenced") renews the lease until the time the heartbeat was
//! *sent* plus the session timeout, less a margin: the controller received it no earlier,
//! so it cannot fence this broker for silence before the lease has run out. The renewal
//! waits until this broker's image has applied the metadata index the answer carries
//! ([`ControllerLease::offer`]): a broker back from a cut must not lead by a stale image.
//! A "fenced" answer, or one that no longer knows this registration, ends the lease at
//! once. While
//! the lease has run out, partitions answer NOT_LEADER_OR_FOLLOWER to every request that
//! needs the leader (produce, fetch, ListOffsets, OffsetForLeaderEpoch), and Metadata
//! names no leader for them, so clients look elsewhere.
//!
//! Invariant: the expiry only moves forward, except for [`ControllerLease::revoke`].
//! A lease never granted is expired: a broker leads nothing before its first answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Taken off the session timeout: the controller's clock may run a little faster than
/// this broker's, and fencing is checked on a timer.
const MARGIN_FRACTION: u32 = 10;
const MIN_MARGIN: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct ControllerLease {
    /// Instants are stored as nanoseconds after `base`; 0 means expired.
    base: Instant,
    expires_at_ns: AtomicU64,
    /// When the lease was last granted after having run out (0: never, which for a held
    /// lease means an unlimited one).
    held_since_ns: AtomicU64,
    /// A "not fenced" answer waiting for this broker's image to apply what the controller
    /// had applied when it answered: (sent at, session timeout, metadata index).
    pending: std::sync::Mutex<Option<(Instant, Duration, u64)>>,
}

impl Default for ControllerLease {
    /// Not granted: expired until the first heartbeat answer.
    fn default() -> Self {
        ControllerLease {
            base: Instant::now(),
            expires_at_ns: AtomicU64::new(0),
            held_since_ns: AtomicU64::new(0),
            pending: std::sync::Mutex::new(None),
        }
    }
}

impl ControllerLease {
    /// A lease that never runs out: for a partition no controller can take away (unit
    /// tests of one partition).
    pub fn unlimited() -> Self {
        let lease = ControllerLease::default();
        lease.expires_at_ns.store(u64::MAX, Ordering::Release);
        lease
    }

    /// The active controller answered "not fenced" to a heartbeat sent at `sent_at`.
    pub fn renew(&self, sent_at: Instant, session_timeout: Duration) {
        let margin = (session_timeout / MARGIN_FRACTION).max(MIN_MARGIN);
        let until = sent_at + session_timeout.saturating_sub(margin);
        let ns = self.nanos_at(until);
        let now = Instant::now();
        if !self.is_held_at(now) && ns > self.nanos_at(now) {
            self.held_since_ns
                .store(self.nanos_at(now), Ordering::Release);
        }
        self.expires_at_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// How long the lease has been held without a break (None: not held now). A leader
    /// whose lease ran out refused its followers' fetches meanwhile: their lag says
    /// nothing about them until they have had `replica.lag.time.max.ms` to fetch again.
    pub fn held_for(&self, now: Instant) -> Option<Duration> {
        if !self.is_held_at(now) {
            return None;
        }
        let since = self.held_since_ns.load(Ordering::Acquire);
        if since == 0 {
            // held without ever being granted: an unlimited lease
            return Some(Duration::MAX);
        }
        let now_ns = self.nanos_at(now);
        Some(Duration::from_nanos(now_ns.saturating_sub(since)))
    }

    /// The active controller answered "not fenced" to a heartbeat sent at `sent_at`, with
    /// its metadata applied up to `metadata_index`; this broker's image has applied
    /// `applied_index`. The lease is renewed once the image has applied as much as the
    /// controller's had ([`Self::applied`] does it later): a broker back from a cut must
    /// not lead by the stale image that still names it leader.
    pub fn offer(
        &self,
        sent_at: Instant,
        session_timeout: Duration,
        metadata_index: u64,
        applied_index: u64,
    ) {
        *self.lock_pending() = Some((sent_at, session_timeout, metadata_index));
        self.applied(applied_index);
    }

    /// This broker's image has applied the metadata up to `applied_index`.
    pub fn applied(&self, applied_index: u64) {
        let mut pending = self.lock_pending();
        if let Some((sent_at, session_timeout, index)) = *pending {
            if applied_index >= index {
                *pending = None;
                drop(pending);
                self.renew(sent_at, session_timeout);
            }
        }
    }

    /// Whether an offer waits for the image.
    pub fn is_pending(&self) -> bool {
        self.lock_pending().is_some()
    }

    /// The metadata index an offer waits for this broker's image to apply, if one does.
    pub fn pending_index(&self) -> Option<u64> {
        self.lock_pending().map(|(_, _, index)| index)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Duration, u64)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller fenced this broker, or no longer knows its registration.
    pub fn revoke(&self) {
        *self.lock_pending() = None;
        self.expires_at_ns.store(0, Ordering::Release);
    }

    /// Whether this broker may still act as a leader now.
    pub fn is_held(&self) -> bool {
        self.is_held_at(Instant::now())
    }

    pub fn is_held_at(&self, now: Instant) -> bool {
        let expires = self.expires_at_ns.load(Ordering::Acquire);
        expires != 0 && self.nanos_at(now) < expires
    }

    /// Nanoseconds after `base` (at least 1, so 0 stays "expired").
    fn nanos_at(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.base).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX - 1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_millis(2000);

    #[test]
    fn a_lease_never_granted_is_expired() {
        let lease = ControllerLease::default();
        assert!(!lease.is_held());
        assert!(ControllerLease::unlimited().is_held());
    }

    #[test]
    fn a_renewal_runs_from_the_send_time_less_a_margin() {
        let lease = ControllerLease::default();
        let sent = Instant::now();
        lease.renew(sent, SESSION);
        assert!(lease.is_held_at(sent));
        assert!(lease.is_held_at(sent + Duration::from_millis(1799)));
        // the controller may fence at sent + 2000 ms at the earliest: the lease ends first
        assert!(!lease.is_held_at(sent + Duration::from_millis(1800)));
        assert!(!lease.is_held_at(sent + SESSION));
    }

    #[test]
    fn an_older_answer_never_shortens_the_lease_but_a_revocation_ends_it() {
        let lease = ControllerLease::default();
        let t0 = Instant::now();
        lease.renew(t0 + Duration::from_millis(500), SESSION);
        lease.renew(t0, SESSION);
        assert!(lease.is_held_at(t0 + Duration::from_millis(2200)));
        lease.revoke();
        assert!(!lease.is_held_at(t0));
        lease.renew(t0, SESSION);
        assert!(lease.is_held_at(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn an_answer_renews_only_once_the_image_applied_what_the_controller_had() {
        let lease = ControllerLease::default();
        let sent = Instant::now();
        // back from a cut: the controller answered at index 90, this image is at 40 (it
        // may still name this broker leader of a partition moved meanwhile)
        lease.offer(sent, SESSION, 90, 40);
        assert!(!lease.is_held_at(sent));
        assert!(lease.is_pending());
        lease.applied(89);
        assert!(!lease.is_held_at(sent));
        lease.applied(90);
        assert!(
            lease.is_held_at(sent),
            "renewed from the answered heartbeat's send time"
        );
        assert!(!lease.is_pending());
        // caught up already: at once
        let other = ControllerLease::default();
        other.offer(sent, SESSION, 90, 95);
        assert!(other.is_held_at(sent));
        // a revocation drops a waiting offer
        let third = ControllerLease::default();
        third.offer(sent, SESSION, 90, 40);
        third.revoke();
        third.applied(100);
        assert!(!third.is_held_at(sent));
    }

    #[test]
    fn held_for_counts_from_the_last_grant_after_a_break() {
        let lease = ControllerLease::default();
        assert_eq!(lease.held_for(Instant::now()), None);
        lease.renew(Instant::now(), SESSION);
        let granted = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        lease.renew(Instant::now(), SESSION);
        let held = lease.held_for(Instant::now()).unwrap();
        assert!(
            held >= Duration::from_millis(20),
            "{held:?}: a renewal is no new grant"
        );
        lease.revoke();
        assert_eq!(lease.held_for(Instant::now()), None);
        lease.renew(Instant::now(), SESSION);
        assert!(lease.held_for(Instant::now()).unwrap() < granted.elapsed());
    }
}
