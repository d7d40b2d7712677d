//! Parked requests' wakeups, keyed by partition (Kafka's purgatory watch lists): an acks=all
//! produce waiting for the high watermark, or a fetch waiting for data, parks as one
//! [`ParkedRequest`] watching the [`WatchList`] of each partition it waits on. A partition
//! whose log end offset or high watermark moves wakes the requests watching it, and no
//! others: a busy partition costs nothing to the requests parked on a quiet one.
//!
//! Invariants: a wake is never lost — it leaves a permit when the request is not waiting
//! at that moment (it is checking its partitions), so a request that checks, finds nothing
//! and then waits sees every change made after its check began; a watch lasts as long as
//! the request (the list holds it weakly, and drops it at the next wake once the request
//! is gone).

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// The requests parked on one partition.
#[derive(Default)]
pub struct WatchList {
    watchers: Mutex<Vec<Weak<Notify>>>,
}

impl WatchList {
    /// Wakes every request watching this partition.
    pub fn wake(&self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if watchers.is_empty() {
            return;
        }
        watchers.retain(|w| match w.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }

    /// Requests watching this partition now (gone ones included until the next wake).
    pub fn len(&self) -> usize {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
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
        let mut watchers = list.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let me = Arc::downgrade(&self.notify);
        if !watchers.iter().any(|w| w.ptr_eq(&me)) {
            // a list is pruned at its wakes; prune here too so a quiet partition's list
            // does not grow with every request that parked on it and left
            watchers.retain(|w| w.strong_count() > 0);
            watchers.push(me);
        }
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
}
