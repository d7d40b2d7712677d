//! Parked requests' wakeups, keyed by partition (Kafka's purgatory watch lists): an acks=all
//! produce waiting for the high watermark, or a fetch waiting for data, parks as one
//! [`ParkedRequest`] watching the [`WatchList`] of each partition it waits on. A partition
//! whose log end offset or high watermark moves wakes the requests watching it, and no
//! others: a busy partition costs nothing to the requests parked on a quiet one.
//!
//! A fetch session (KIP-227) watches its partitions for as long as it lives, through a
//! [`SessionWake`]: a move marks the partition's slot in the session's dirty set (once,
//! however often it moves before the session looks) and wakes the session's request, if
//! one waits. The next request then reads only the partitions marked, not every one.
//!
//! Invariants: a wake is never lost — it leaves a permit when the request is not waiting
//! at that moment (it is checking its partitions), so a request that checks, finds nothing
//! and then waits sees every change made after its check began; a watch lasts as long as
//! the request or the session (the list holds it weakly, and drops it at the next wake
//! once it is gone); a dirty set holds each slot at most once.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

enum Watcher {
    Request(Weak<Notify>),
    Session { wake: Weak<SessionWake>, slot: u32 },
}

impl Watcher {
    fn is_gone(&self) -> bool {
        match self {
            Watcher::Request(w) => w.strong_count() == 0,
            Watcher::Session { wake, .. } => wake.strong_count() == 0,
        }
    }

    /// Wakes it; false if it is gone.
    fn wake(&self) -> bool {
        match self {
            Watcher::Request(w) => w.upgrade().map(|n| n.notify_one()).is_some(),
            Watcher::Session { wake, slot } => wake.upgrade().map(|s| s.mark(*slot)).is_some(),
        }
    }
}

/// The requests parked on one partition, and the fetch sessions holding it.
#[derive(Default)]
pub struct WatchList {
    watchers: Mutex<Vec<Watcher>>,
}

impl WatchList {
    /// Wakes every request watching this partition.
    pub fn wake(&self) {
        let mut watchers = self.lock();
        if watchers.is_empty() {
            return;
        }
        watchers.retain(|w| w.wake());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watched by `session` as its partition `slot` from now until the session is dropped
    /// or [`Self::unwatch_session`] (watching twice is harmless).
    pub fn watch_session(&self, session: &Arc<SessionWake>, slot: u32) {
        let mut watchers = self.lock();
        let me = Arc::downgrade(session);
        let known = watchers.iter().any(
            |w| matches!(w, Watcher::Session { wake, slot: s } if *s == slot && wake.ptr_eq(&me)),
        );
        if !known {
            watchers.retain(|w| !w.is_gone());
            watchers.push(Watcher::Session { wake: me, slot });
        }
    }

    /// No longer watched by `session` as `slot` (the partition left the session).
    pub fn unwatch_session(&self, session: &Arc<SessionWake>, slot: u32) {
        let me = Arc::downgrade(session);
        self.lock().retain(
            |w| !matches!(w, Watcher::Session { wake, slot: s } if *s == slot && wake.ptr_eq(&me)),
        );
    }

    /// Requests watching this partition now (gone ones included until the next wake).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One parked request: it watches some partitions and waits until one of them moves.
pub struct ParkedRequest {
    notify: Arc<Notify>,
}

impl Default for ParkedRequest {
    fn default() -> Self {
        Self::new()
    }
}

impl ParkedRequest {
    pub fn new() -> Self {
        ParkedRequest {
            notify: Arc::new(Notify::new()),
        }
    }

    /// Watches `list` from now until this request is dropped (watching twice is harmless).
    pub fn watch(&self, list: &WatchList) {
        let mut watchers = list.lock();
        let me = Arc::downgrade(&self.notify);
        if !watchers
            .iter()
            .any(|w| matches!(w, Watcher::Request(r) if r.ptr_eq(&me)))
        {
            // a list is pruned at its wakes; prune here too so a quiet partition's list
            // does not grow with every request that parked on it and left
            watchers.retain(|w| !w.is_gone());
            watchers.push(Watcher::Request(me));
        }
    }

    /// Resolves once a watched partition moved since the last call returned (at once if
    /// one did meanwhile).
    pub async fn woken(&self) {
        self.notify.notified().await
    }
}

/// A fetch session's wakeup: which of its partitions (by slot) moved since it last
/// looked, and a permit for the request waiting on them.
#[derive(Default)]
pub struct SessionWake {
    notify: Notify,
    dirty: Mutex<DirtySet>,
}

#[derive(Default)]
struct DirtySet {
    /// One bit per slot: set while the slot is in `slots`.
    bits: Vec<u64>,
    slots: Vec<u32>,
}

impl SessionWake {
    fn mark(&self, slot: u32) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if dirty.bits.len() <= word {
            dirty.bits.resize(word + 1, 0);
        }
        if dirty.bits[word] & bit == 0 {
            dirty.bits[word] |= bit;
            dirty.slots.push(slot);
        }
        drop(dirty);
        self.notify.notify_one();
    }

    /// The slots that moved since the last call (each once), in the order they first moved.
    pub fn take_dirty(&self) -> Vec<u32> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let slots = std::mem::take(&mut dirty.slots);
        dirty.bits.iter_mut().for_each(|w| *w = 0);
        slots
    }

    /// Resolves once a watched partition moved since the last call returned (at once if
    /// one did meanwhile).
    pub async fn woken(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken_within(request: &ParkedRequest, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), request.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_request_is_woken_by_the_partitions_it_watches_and_no_others() {
        let (busy, quiet) = (WatchList::default(), WatchList::default());
        let on_busy = ParkedRequest::new();
        let on_quiet = ParkedRequest::new();
        on_busy.watch(&busy);
        on_quiet.watch(&quiet);
        busy.wake();
        assert!(woken_within(&on_busy, 1000).await);
        assert!(!woken_within(&on_quiet, 50).await);
        quiet.wake();
        assert!(woken_within(&on_quiet, 1000).await);
    }

    #[tokio::test]
    async fn a_wake_between_a_check_and_the_wait_is_not_lost() {
        let list = WatchList::default();
        let request = ParkedRequest::new();
        request.watch(&list);
        // the request is checking its partitions, not waiting, when the partition moves
        list.wake();
        assert!(woken_within(&request, 1000).await);
        // one permit, used up: nothing more until the next move
        assert!(!woken_within(&request, 50).await);
    }

    #[tokio::test]
    async fn a_request_watches_a_partition_once_and_is_dropped_from_it_when_gone() {
        let list = WatchList::default();
        let request = ParkedRequest::new();
        request.watch(&list);
        request.watch(&list);
        assert_eq!(list.len(), 1);
        drop(request);
        assert_eq!(list.len(), 1);
        list.wake();
        assert!(list.is_empty());
        // a quiet partition sheds gone requests as new ones park on it
        let gone = ParkedRequest::new();
        gone.watch(&list);
        drop(gone);
        let parked = ParkedRequest::new();
        parked.watch(&list);
        assert_eq!(list.len(), 1);
    }

    #[tokio::test]
    async fn a_session_learns_which_partitions_moved_each_once() {
        let (a, b, c) = (
            WatchList::default(),
            WatchList::default(),
            WatchList::default(),
        );
        let session = Arc::new(SessionWake::default());
        a.watch_session(&session, 0);
        b.watch_session(&session, 1);
        b.watch_session(&session, 1);
        c.watch_session(&session, 200);
        assert_eq!(b.len(), 1);
        for _ in 0..1000 {
            b.wake();
        }
        c.wake();
        assert_eq!(session.take_dirty(), vec![1, 200]);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), session.woken())
                .await
                .is_ok()
        );
        assert!(session.take_dirty().is_empty());
        // a partition that left the session no longer marks it
        a.unwatch_session(&session, 0);
        a.wake();
        assert!(session.take_dirty().is_empty());
        // a gone session is dropped from the lists at their next wake
        drop(session);
        b.wake();
        assert!(b.is_empty());
    }
}
