//! The replicas this broker holds but cannot open the log of (a stray file where the
//! partition directory goes, too many open files, a damaged directory), as Kafka's
//! offline replicas. Each is logged once when it fails and once when it opens; the
//! heartbeat reports the whole set (sent at once when it changes), and the controller
//! takes such a replica out of the ISR and moves its leadership to a healthy member, so
//! a partition no broker can serve never looks led. Opening is retried, first after 1 s,
//! then twice as long each time (at most 30 s), so thousands of failing logs do not
//! churn file descriptors and the log every sync.
//!
//! Invariant: a replica is in the set from its first failed open until one succeeds (or
//! it is no longer assigned here).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_record::TopicPartition;
use tokio::sync::Notify;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One replica whose log cannot be opened.
#[derive(Debug, Clone)]
pub struct OfflineReplica {
    pub topic_id: Vec<u8>,
    next_attempt: Instant,
    attempts: u32,
}

#[derive(Default)]
pub struct OfflineReplicas {
    replicas: Mutex<BTreeMap<TopicPartition, OfflineReplica>>,
    /// Notified when the set changes (the heartbeat reports it at once).
    changed: Notify,
}

impl OfflineReplicas {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, OfflineReplica>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether opening `tp`'s log may be tried now (never failed, or its wait is over).
    pub fn may_try(&self, tp: &TopicPartition, now: Instant) -> bool {
        self.lock().get(tp).is_none_or(|r| r.next_attempt <= now)
    }

    /// Opening `tp`'s log failed with `error`.
    pub fn failed(&self, tp: &TopicPartition, topic_id: &[u8], error: &dyn std::fmt::Display) {
        let mut replicas = self.lock();
        let now = Instant::now();
        match replicas.get_mut(tp) {
            Some(r) => {
                r.attempts = r.attempts.saturating_add(1);
                let wait = FIRST_RETRY * 2u32.pow(r.attempts.min(5));
                r.next_attempt = now + wait.min(MAX_RETRY);
                // the topic may have been deleted and made again under the same name
                r.topic_id = topic_id.to_vec();
                tracing::debug!(partition = %tp, error = %error, "still cannot open the partition log");
            }
            None => {
                tracing::error!(partition = %tp, error = %error, "cannot open the partition log: reporting the replica offline (it leaves the ISR and does not lead), retrying");
                replicas.insert(
                    tp.clone(),
                    OfflineReplica {
                        topic_id: topic_id.to_vec(),
                        next_attempt: now + FIRST_RETRY,
                        attempts: 0,
                    },
                );
                drop(replicas);
                self.changed.notify_one();
            }
        }
    }

    /// `tp`'s log is open (or the replica is no longer assigned here).
    pub fn cleared(&self, tp: &TopicPartition, opened: bool) {
        if self.lock().remove(tp).is_some() {
            if opened {
                tracing::warn!(partition = %tp, "the partition log opened: the replica is back");
            }
            self.changed.notify_one();
        }
    }

    /// Forgets every replica not in `assigned`.
    pub fn retain(&self, assigned: impl Fn(&TopicPartition) -> bool) {
        let mut replicas = self.lock();
        let before = replicas.len();
        replicas.retain(|tp, _| assigned(tp));
        if replicas.len() != before {
            drop(replicas);
            self.changed.notify_one();
        }
    }

    /// The whole set, for the heartbeat.
    pub fn snapshot(&self) -> Vec<(TopicPartition, OfflineReplica)> {
        self.lock()
            .iter()
            .map(|(tp, r)| (tp.clone(), r.clone()))
            .collect()
    }

    /// Waits for the next change of the set.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}
