//! Fetch sessions (KIP-227): the partitions a fetcher fetches, kept by the broker between
//! its requests, so a request names only the partitions whose fetch position changed and
//! the response carries only the partitions with something new. A session's partitions
//! are watched for as long as it lives (see `purgatory::SessionWake`): a request reads the
//! partitions named in it, those that moved since the last one, and those left unsettled
//! by it (an error, data not sent whole), never the whole session — so an idle fetcher
//! costs the same with ten partitions as with ten thousand.
//!
//! The request's `session_id` and `session_epoch` say what it is (Kafka's FetchMetadata):
//! epoch -1 is a full fetch without a session (what librdkafka sends), closing `session_id`
//! if set; epoch 0 is a full fetch that opens a new session, closing `session_id` if set;
//! an epoch above 0 is the next incremental fetch of `session_id`: an unknown id gets
//! FETCH_SESSION_ID_NOT_FOUND, another epoch than the one expected gets
//! INVALID_FETCH_SESSION_EPOCH, and the fetcher starts over with a full fetch.
//!
//! The cache holds at most `max.incremental.fetch.session.cache.slots` sessions. When it
//! is full, a new session takes the place of the least valuable one if that one was not
//! used for `EVICTION_MS` (Kafka's `min.incremental.fetch.session.eviction.ms`), or if the
//! new one is worth more: a follower's over a consumer's, then more partitions over fewer
//! (Kafka's rule). Otherwise the fetch is answered without a session (id 0). A follower
//! broker fetches from this one through one session at a time: its new session replaces
//! its previous one. (A fetcher that abandons a full fetch in flight never learns the id
//! it opened: without this, every abandoned fetch of a follower adding partitions left a
//! session of every partition behind — a thousand of them, two million partitions
//! watched, within minutes of creating 10,000 partitions.)
//!
//! Invariants: a session's partitions are each in one slot, named by `by_key`; a slot's
//! partition is watched (on the partition object the slot last read) while it is in the
//! session; epochs of a session go 1, 2, …, i32::MAX, 1, … one per request accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sluice_metadata::error_code as ec;
use sluice_record::TopicPartition;

use crate::leader_state::SessionClock;
use crate::partition::Partition;
use crate::purgatory::SessionWake;

/// Kafka's `min.incremental.fetch.session.eviction.ms`.
pub const EVICTION_MS: i64 = 120_000;
/// Kafka's default `max.incremental.fetch.session.cache.slots`.
pub const DEFAULT_CACHE_SLOTS: usize = 1000;

/// How a request names a topic: by name (Fetch < v13) or by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(String),
    Id(uuid::Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub topic: TopicRef,
    pub partition: i32,
}

/// Where and how a partition is fetched, as last named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPosition {
    pub fetch_offset: i64,
    pub current_leader_epoch: i32,
    pub partition_max_bytes: i32,
}

/// What a response last told about a partition: it is sent again only when that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentState {
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// Nothing sent yet: the first read of a partition is always sent.
const NOTHING_SENT: SentState = SentState {
    high_watermark: i64::MIN,
    log_start_offset: i64::MIN,
};

pub struct CachedPartition {
    pub key: SessionKey,
    /// The partition's name, once its topic is known.
    pub tp: Option<TopicPartition>,
    pub position: FetchPosition,
    pub sent: SentState,
    /// The partition object whose watch list holds this slot.
    watched: Weak<Partition>,
    /// Read at the next request even if it did not move (an error, data not sent whole).
    unsettled: bool,
    /// When it last sent data (a session-wide sequence): the partitions that waited
    /// longest are read first when the response's size limit cannot fit them all.
    served: u64,
}

pub struct FetchSession {
    /// 0 for a fetch without a session.
    id: i32,
    next_epoch: i32,
    /// The follower fetching, if a follower.
    follower: Option<i32>,
    by_key: HashMap<SessionKey, u32>,
    slots: Vec<Option<CachedPartition>>,
    free: Vec<u32>,
    wake: Arc<SessionWake>,
    clock: Arc<SessionClock>,
    served: u64,
}

pub fn lock(session: &Mutex<FetchSession>) -> MutexGuard<'_, FetchSession> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

impl FetchSession {
    fn new(id: i32, follower: Option<i32>) -> Self {
        FetchSession {
            id,
            next_epoch: 1,
            follower,
            by_key: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            wake: Arc::new(SessionWake::default()),
            clock: Arc::new(SessionClock::new(0)),
            served: 0,
        }
    }

    /// The id to answer with (0: no session).
    pub fn id(&self) -> i32 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn wake(&self) -> &Arc<SessionWake> {
        &self.wake
    }

    /// What a follower's partition links to (None outside a cached session: nothing
    /// fetches it again unnamed).
    pub fn clock(&self) -> Option<Weak<SessionClock>> {
        (self.id != 0).then(|| Arc::downgrade(&self.clock))
    }

    /// A request of this session arrived at `now_ms`.
    pub fn touch(&self, now_ms: i64) {
        self.clock
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds `key` or moves it to `position`: its slot, and whether it is new.
    pub fn upsert(&mut self, key: SessionKey, position: FetchPosition) -> (u32, bool) {
        if let Some(&slot) = self.by_key.get(&key) {
            if let Some(p) = self.slot_mut(slot) {
                p.position = position;
                p.unsettled = true;
            }
            return (slot, false);
        }
        let cached = CachedPartition {
            key: key.clone(),
            tp: None,
            position,
            sent: NOTHING_SENT,
            watched: Weak::new(),
            unsettled: true,
            served: 0,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(cached);
                slot
            }
            None => {
                self.slots.push(Some(cached));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        (slot, true)
    }

    /// Removes `key` (the fetcher forgot it): it is watched no more, and a follower's
    /// session no longer keeps it in sync.
    pub fn forget(&mut self, key: &SessionKey) {
        let Some(slot) = self.by_key.remove(key) else {
            return;
        };
        if let Some(gone) = self.slots[slot as usize].take() {
            if let Some(partition) = gone.watched.upgrade() {
                partition.unwatch_session(&self.wake, slot);
                if let Some(follower) = self.follower {
                    partition.end_follower_session(follower);
                }
            }
        }
        self.free.push(slot);
    }

    pub fn slot(&self, slot: u32) -> Option<&CachedPartition> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut CachedPartition> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Every slot in use.
    pub fn all_slots(&self) -> Vec<u32> {
        self.by_key.values().copied().collect()
    }

    /// The slots a request must read besides those it names: those left unsettled and
    /// those that moved since the last look.
    pub fn unsettled_and_moved(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.unsettled))
            .map(|(slot, _)| slot as u32)
            .collect();
        slots.extend(self.take_moved());
        slots
    }

    /// The slots that moved since the last call (of those still in the session).
    pub fn take_moved(&self) -> Vec<u32> {
        let mut moved = self.wake.take_dirty();
        moved.retain(|slot| self.slot(*slot).is_some());
        moved
    }

    /// Orders `slots` for reading (each once): those that sent data longest ago first,
    /// then by slot (the order a full fetch named them in).
    pub fn read_order(&self, slots: &mut Vec<u32>) {
        slots.sort_unstable();
        slots.dedup();
        slots.retain(|slot| self.slot(*slot).is_some());
        slots.sort_by_key(|slot| (self.slot(*slot).map_or(0, |p| p.served), *slot));
    }

    /// `partition` is what `slot` reads now: watched from now on (the one it read before,
    /// if another, was replaced and is dropped with its watch list).
    pub fn watch(&mut self, slot: u32, partition: &Arc<Partition>) {
        let wake = Arc::clone(&self.wake);
        let Some(p) = self.slot_mut(slot) else {
            return;
        };
        if !std::ptr::eq(p.watched.as_ptr(), Arc::as_ptr(partition)) {
            partition.watch_session(&wake, slot);
            p.watched = Arc::downgrade(partition);
        }
    }

    /// The response is going out: what it says of `slot` is recorded, and whether the
    /// slot is settled.
    pub fn sent(&mut self, slot: u32, sent: Option<SentState>, settled: bool, sent_data: bool) {
        let served = if sent_data {
            self.served += 1;
            Some(self.served)
        } else {
            None
        };
        if let Some(p) = self.slot_mut(slot) {
            if let Some(sent) = sent {
                p.sent = sent;
            }
            p.unsettled = !settled;
            if let Some(served) = served {
                p.served = served;
            }
        }
    }
}

impl Drop for FetchSession {
    fn drop(&mut self) {
        // a follower's partitions stop counting on this session at once (their links
        // are weak; this only spares the watch lists their dead entries)
        for (slot, p) in self.slots.iter().enumerate() {
            if let Some(partition) = p.as_ref().and_then(|p| p.watched.upgrade()) {
                partition.unwatch_session(&self.wake, slot as u32);
            }
        }
    }
}

/// What a request's session fields opened.
pub struct Opened {
    pub session: Arc<Mutex<FetchSession>>,
    /// A full fetch: every partition of the request is sent back.
    pub full: bool,
}

struct CacheEntry {
    session: Arc<Mutex<FetchSession>>,
    follower: bool,
    partitions: usize,
    last_used_ms: i64,
}

impl CacheEntry {
    /// Kafka's eviction order: consumers before followers, then smaller before larger.
    fn worth(&self) -> (bool, usize) {
        (self.follower, self.partitions)
    }
}

struct CacheInner {
    sessions: HashMap<i32, CacheEntry>,
    /// Each follower's session.
    by_follower: HashMap<i32, i32>,
    next_id: i32,
}

impl CacheInner {
    fn remove(&mut self, id: i32) {
        if let Some(entry) = self.sessions.remove(&id) {
            if entry.follower {
                self.by_follower.retain(|_, session| *session != id);
            }
        }
    }
}

/// The broker's fetch sessions.
pub struct FetchSessionCache {
    max_sessions: usize,
    inner: Mutex<CacheInner>,
}

impl FetchSessionCache {
    /// `max_sessions`: `max.incremental.fetch.session.cache.slots` (0: no sessions).
    pub fn new(max_sessions: usize) -> Self {
        // ids start somewhere new at each start: a fetcher's session from before a
        // restart is then most likely unknown, not someone else's
        let seed = (sluice_record::now_ms() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
        FetchSessionCache {
            max_sessions,
            inner: Mutex::new(CacheInner {
                sessions: HashMap::new(),
                by_follower: HashMap::new(),
                next_id: (seed as i32).max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the session a request's `session_id` and `session_epoch` ask for (see the
    /// module comment). `partitions`: how many the request names (a new session's worth).
    /// An error is the top-level error code to answer with.
    pub fn open(
        &self,
        session_id: i32,
        session_epoch: i32,
        follower: Option<i32>,
        partitions: usize,
        now_ms: i64,
    ) -> Result<Opened, i16> {
        match session_epoch {
            -1 | 0 => {
                if session_id != 0 {
                    self.lock().remove(session_id);
                }
                let cached = if session_epoch == 0 {
                    self.create(follower, partitions, now_ms)
                } else {
                    None
                };
                let session =
                    cached.unwrap_or_else(|| Arc::new(Mutex::new(FetchSession::new(0, follower))));
                Ok(Opened {
                    session,
                    full: true,
                })
            }
            epoch if epoch > 0 => {
                let session = {
                    let mut inner = self.lock();
                    let Some(entry) = inner.sessions.get_mut(&session_id) else {
                        return Err(ec::FETCH_SESSION_ID_NOT_FOUND);
                    };
                    entry.last_used_ms = now_ms;
                    Arc::clone(&entry.session)
                };
                {
                    let mut s = lock(&session);
                    if s.next_epoch != epoch {
                        return Err(ec::INVALID_FETCH_SESSION_EPOCH);
                    }
                    s.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                }
                Ok(Opened {
                    session,
                    full: false,
                })
            }
            _ => Err(ec::INVALID_FETCH_SESSION_EPOCH),
        }
    }

    /// A slot for a new session, evicting one if the cache is full and one may go.
    fn create(
        &self,
        follower: Option<i32>,
        partitions: usize,
        now_ms: i64,
    ) -> Option<Arc<Mutex<FetchSession>>> {
        if self.max_sessions == 0 {
            return None;
        }
        let mut inner = self.lock();
        if let Some(previous) = follower.and_then(|f| inner.by_follower.remove(&f)) {
            inner.remove(previous);
        }
        if inner.sessions.len() >= self.max_sessions {
            let new_worth = (follower.is_some(), partitions);
            let victim = inner
                .sessions
                .iter()
                .filter(|(_, e)| now_ms - e.last_used_ms >= EVICTION_MS || e.worth() < new_worth)
                .min_by_key(|(_, e)| {
                    (
                        now_ms - e.last_used_ms < EVICTION_MS,
                        e.worth(),
                        e.last_used_ms,
                    )
                })
                .map(|(id, _)| *id)?;
            inner.remove(victim);
        }
        let mut id = inner.next_id;
        while id == 0 || inner.sessions.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        inner.next_id = id.checked_add(1).unwrap_or(1);
        if let Some(f) = follower {
            inner.by_follower.insert(f, id);
        }
        let session = Arc::new(Mutex::new(FetchSession::new(id, follower)));
        inner.sessions.insert(
            id,
            CacheEntry {
                session: Arc::clone(&session),
                follower: follower.is_some(),
                partitions,
                last_used_ms: now_ms,
            },
        );
        Some(session)
    }

    /// A request of session `id` ended with `partitions` in it.
    pub fn resized(&self, id: i32, partitions: usize) {
        if let Some(entry) = self.lock().sessions.get_mut(&id) {
            entry.partitions = partitions;
        }
    }

    /// Sessions cached, and the partitions they hold.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        let partitions = inner.sessions.values().map(|e| e.partitions).sum();
        (inner.sessions.len(), partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, partition: i32) -> SessionKey {
        SessionKey {
            topic: TopicRef::Name(topic.into()),
            partition,
        }
    }

    fn at(offset: i64) -> FetchPosition {
        FetchPosition {
            fetch_offset: offset,
            current_leader_epoch: -1,
            partition_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn epochs_decide_full_incremental_or_error() {
        let cache = FetchSessionCache::new(10);
        // -1 without an id: a full fetch, no session
        let o = cache.open(0, -1, None, 3, 0).unwrap();
        assert!(o.full);
        assert_eq!(lock(&o.session).id(), 0);
        // 0: a new session
        let o = cache.open(0, 0, None, 3, 0).unwrap();
        let id = lock(&o.session).id();
        assert!(o.full && id != 0);
        assert_eq!(cache.size().0, 1);
        // then epochs 1, 2, ... in order
        assert!(!cache.open(id, 1, None, 0, 1).unwrap().full);
        assert_eq!(
            cache.open(id, 1, None, 0, 2).err(),
            Some(ec::INVALID_FETCH_SESSION_EPOCH)
        );
        assert!(cache.open(id, 2, None, 0, 3).is_ok());
        assert_eq!(
            cache.open(id + 1, 1, None, 0, 3).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            cache.open(id, -2, None, 0, 3).err(),
            Some(ec::INVALID_FETCH_SESSION_EPOCH)
        );
        // -1 with the id closes it
        assert!(cache.open(id, -1, None, 0, 4).unwrap().full);
        assert_eq!(cache.size().0, 0);
        assert_eq!(
            cache.open(id, 3, None, 0, 5).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        // 0 with an id closes it and opens another
        let first = lock(&cache.open(0, 0, None, 1, 6).unwrap().session).id();
        let second = lock(&cache.open(first, 0, None, 1, 6).unwrap().session).id();
        assert_ne!(first, second);
        assert_eq!(cache.size().0, 1);
    }

    #[test]
    fn a_full_cache_evicts_stale_then_less_valuable_sessions_only() {
        let cache = FetchSessionCache::new(2);
        let open = |follower: Option<i32>, partitions, now| {
            lock(&cache.open(0, 0, follower, partitions, now).unwrap().session).id()
        };
        let consumer_small = open(None, 5, 0);
        let consumer_big = open(None, 50, 1_000);
        // a consumer no bigger than the smallest: no room, no session
        assert_eq!(open(None, 5, 2_000), 0);
        // a follower is worth more than a consumer: the smaller consumer goes
        let follower = open(Some(2), 1, 3_000);
        assert_ne!(follower, 0);
        assert_eq!(
            cache.open(consumer_small, 1, None, 0, 3_000).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert!(cache.open(consumer_big, 1, None, 0, 4_000).is_ok());
        // nothing is worth less than the follower (1 partition) and the big consumer
        // for a small consumer, until the follower goes unused for EVICTION_MS
        assert_eq!(open(None, 1, 5_000), 0);
        let late = open(None, 1, 3_000 + EVICTION_MS);
        assert_ne!(late, 0);
        assert_eq!(
            cache
                .open(follower, 1, Some(2), 0, 3_000 + EVICTION_MS)
                .err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        // a follower's new session replaces its previous one
        let cache_3 = FetchSessionCache::new(10);
        let first = lock(&cache_3.open(0, 0, Some(3), 1, 0).unwrap().session).id();
        let second = lock(&cache_3.open(0, 0, Some(3), 1, 0).unwrap().session).id();
        let other = lock(&cache_3.open(0, 0, Some(4), 1, 0).unwrap().session).id();
        assert_ne!(first, second);
        assert_eq!(cache_3.size().0, 2);
        assert_eq!(
            cache_3.open(first, 1, Some(3), 0, 1).err(),
            Some(ec::FETCH_SESSION_ID_NOT_FOUND)
        );
        assert!(cache_3.open(second, 1, Some(3), 0, 1).is_ok());
        assert!(cache_3.open(other, 1, Some(4), 0, 1).is_ok());
        // no sessions at all with 0 slots
        let none = FetchSessionCache::new(0);
        assert_eq!(lock(&none.open(0, 0, None, 1, 0).unwrap().session).id(), 0);
    }

    #[test]
    fn a_session_reads_what_was_named_unsettled_or_moved() {
        let mut s = FetchSession::new(7, None);
        let (a, new_a) = s.upsert(key("t", 0), at(0));
        let (b, _) = s.upsert(key("t", 1), at(0));
        let (c, _) = s.upsert(key("u", 0), at(0));
        assert!(new_a);
        assert_eq!(s.len(), 3);
        // all new: unsettled
        let mut slots = s.unsettled_and_moved();
        s.read_order(&mut slots);
        assert_eq!(slots, vec![a, b, c]);
        // a and c settle; b sent data (its fetcher names it next with a new offset)
        s.sent(
            a,
            Some(SentState {
                high_watermark: 5,
                log_start_offset: 0,
            }),
            true,
            false,
        );
        s.sent(
            b,
            Some(SentState {
                high_watermark: 5,
                log_start_offset: 0,
            }),
            false,
            true,
        );
        s.sent(c, None, true, false);
        assert_eq!(s.unsettled_and_moved(), vec![b]);
        let (b_again, new_b) = s.upsert(key("t", 1), at(9));
        assert_eq!((b_again, new_b), (b, false));
        assert_eq!(s.slot(b).map(|p| p.position.fetch_offset), Some(9));
        s.sent(b, None, true, false);
        assert!(s.unsettled_and_moved().is_empty());
        // the one that sent data last is read last
        s.sent(a, None, false, true);
        s.sent(c, None, false, true);
        s.sent(b, None, false, true);
        let mut slots = vec![b, c, a, a];
        s.read_order(&mut slots);
        assert_eq!(slots, vec![a, c, b]);
        // a forgotten slot is reused
        s.forget(&key("t", 0));
        assert_eq!(s.len(), 2);
        assert!(s.slot(a).is_none());
        let (d, _) = s.upsert(key("v", 3), at(0));
        assert_eq!(d, a);
        assert_eq!(s.slot(d).map(|p| p.key.clone()), Some(key("v", 3)));
    }
}
