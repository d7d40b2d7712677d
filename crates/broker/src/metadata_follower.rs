//! The broker's side of the control plane, through the Controller gRPC API only:
//! - registration and heartbeats (a broker starts fenced and is unfenced by a heartbeat
//!   that shows it applied the metadata up to its own registration);
//! - an `Alive` stream to every controller, so whichever is elected next knows this
//!   broker is alive, and each learns at once when this process dies;
//! - `WatchMetadata` from the index this broker has applied, each event applied to its own
//!   [`MetadataImage`] with the same rules the controllers use.
//!
//! Any controller will do: on an error the follower moves to the next one in the list, and
//! so it does when a controller stops answering though its connection stays open (a
//! paused process): a caught-up metadata stream silent past `WATCH_STALL_TIMEOUT` (the
//! controller sends a keep-alive every `WATCH_KEEPALIVE`; one still catching up gets
//! longer, see `catch_up_timeout`), a heartbeat unanswered past 1 s.
//! Invariant: the local image's `applied_index` only grows; an event at or below it (a
//! replay after reconnecting) is skipped.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_metadata::alive_stream::hold_alive_stream;
use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::controller::controller_client::ControllerClient;
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{MetadataImage, Record, WATCH_STALL_TIMEOUT};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::controller_lease::ControllerLease;
use crate::log_dir_health::LogDirHealth;
use crate::offline_replicas::OfflineReplicas;

#[derive(Debug, Clone)]
pub struct MetadataFollowerConfig {
    pub broker_id: i32,
    /// New per process start: tells the controller this is a restart.
    pub incarnation_id: String,
    pub endpoints: Vec<pb::Endpoint>,
    pub rack: Option<String>,
    /// Controller listeners, `host:port`.
    pub controllers: Vec<String>,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
}

pub struct MetadataFollower {
    image: Arc<RwLock<MetadataImage>>,
    applied: watch::Receiver<u64>,
    /// The applied index of the last change that may concern local partitions (not group
    /// offsets or membership, which change far more often).
    partitions_changed: watch::Receiver<u64>,
    broker_epoch: Arc<AtomicI64>,
    fenced: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
    /// The active controller (Raft leader) as the last heartbeat answer named it (-1:
    /// none yet).
    active_controller: Arc<AtomicI32>,
    shutdown: Arc<ShutdownRequest>,
    tasks: Vec<JoinHandle<()>>,
}

/// Set once, when this broker asks to be shut down (controlled shutdown); wakes the
/// heartbeat loop so the request goes out at once.
#[derive(Default)]
struct ShutdownRequest {
    wanted: AtomicBool,
    wake: tokio::sync::Notify,
}

const RETRY: Duration = Duration::from_millis(100);
/// A heartbeat (or registration) not answered by then goes to the next controller: a
/// paused controller never answers, and its connection stays open.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a registration may take: a restarted broker's registration also fences its
/// old incarnation, one change per partition it held, which at tens of thousands of
/// partitions takes longer to commit than a heartbeat (each retry proposed it again).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long heartbeats stay off a controller that did not answer them, though answers
/// forwarded by another controller name it as the active one.
const REDIRECT_HOLD_OFF: Duration = Duration::from_secs(10);
/// Heartbeats sent and not yet answered, at most (once unfenced).
const MAX_HEARTBEATS_IN_FLIGHT: usize = 8;

impl MetadataFollower {
    /// Starts following; returns at once (use [`MetadataFollower::wait_until`]). The
    /// heartbeats report `log_dir`'s state (an offline directory gets this broker fenced)
    /// and `offline_replicas` (the replicas whose log cannot be opened leave their ISRs).
    pub fn start(
        config: MetadataFollowerConfig,
        log_dir: Arc<LogDirHealth>,
        offline_replicas: Arc<OfflineReplicas>,
        controller_lease: Arc<ControllerLease>,
    ) -> Self {
        let image = Arc::new(RwLock::new(MetadataImage::default()));
        let (applied_tx, applied) = watch::channel(0u64);
        let (partitions_tx, partitions_changed) = watch::channel(0u64);
        let broker_epoch = Arc::new(AtomicI64::new(-1));
        let fenced = Arc::new(AtomicBool::new(true));
        let caught_up = Arc::new(AtomicBool::new(false));
        let active_controller = Arc::new(AtomicI32::new(-1));
        let shutdown = Arc::new(ShutdownRequest::default());
        let (addresses, clients): (Vec<String>, Vec<ControllerClient<Channel>>) = config
            .controllers
            .iter()
            .filter_map(|a| Some((a.clone(), crate::controller_client::connect(a)?)))
            .unzip();
        let tasks = vec![
            tokio::spawn(watch_loop(
                clients.clone(),
                Arc::clone(&image),
                applied_tx,
                partitions_tx,
            )),
            tokio::spawn(alive_loop(
                config.broker_id,
                config.heartbeat_interval_ms,
                clients.clone(),
            )),
            tokio::spawn(heartbeat_loop(
                config,
                addresses,
                clients,
                applied.clone(),
                HeartbeatState {
                    broker_epoch: Arc::clone(&broker_epoch),
                    fenced: Arc::clone(&fenced),
                    caught_up: Arc::clone(&caught_up),
                    active_controller: Arc::clone(&active_controller),
                    shutdown: Arc::clone(&shutdown),
                    log_dir,
                    offline_replicas,
                    controller_lease,
                },
            )),
        ];
        MetadataFollower {
            image,
            applied,
            partitions_changed,
            broker_epoch,
            fenced,
            caught_up,
            active_controller,
            shutdown,
            tasks,
        }
    }

    /// The active controller's node id (the Raft leader that answered the last
    /// heartbeat), or -1 before the first answer.
    pub fn active_controller(&self) -> i32 {
        self.active_controller.load(Ordering::Acquire)
    }

    /// Asks the controllers to fence this broker for good (controlled shutdown): its
    /// leaderships move to other ISR members and it leaves every ISR. Watch the image
    /// for the result.
    pub fn request_controlled_shutdown(&self) {
        self.shutdown.wanted.store(true, Ordering::Release);
        self.shutdown.wake.notify_one();
    }

    /// Runs `f` on the local image.
    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        f(&self.image.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::Acquire)
    }

    /// The broker epoch as it changes (-1 while unregistered).
    pub fn broker_epoch_handle(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.broker_epoch)
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Whether the local image has been current at least once: the controller unfenced
    /// this broker, which it does only once the broker applied its own registration.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Returns once [`Self::caught_up`] holds.
    pub async fn wait_caught_up(&self) {
        // set by a heartbeat's answer, not by an apply: look again every 20 ms
        while !self.caught_up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Changes whenever the local image applies something that may concern partitions
    /// (see `may_concern_partitions`).
    pub fn subscribe_partition_changes(&self) -> watch::Receiver<u64> {
        self.partitions_changed.clone()
    }

    /// Changes whenever the local image applies something.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Waits until `f` holds for the local image, or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn(&MetadataImage) -> bool) -> bool {
        let mut applied = self.applied.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.with_image(&f) {
                return true;
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return self.with_image(&f);
            }
        }
    }

    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn watch_loop(
    clients: Vec<ControllerClient<Channel>>,
    image: Arc<RwLock<MetadataImage>>,
    applied_tx: watch::Sender<u64>,
    partitions_tx: watch::Sender<u64>,
) {
    if clients.is_empty() {
        tracing::error!("no controller to follow");
        return;
    }
    let mut next = 0usize;
    // streams in a row that stalled before catching up (see `catch_up_timeout`)
    let mut catch_up_stalls = 0u32;
    // controllers tried in a row without getting an event: pause once all were tried, so
    // the broker moves to the next controller at once when its stream breaks
    let mut fruitless = 0usize;
    loop {
        if fruitless >= clients.len() {
            tokio::time::sleep(RETRY).await;
            fruitless = 0;
        }
        let mut client = clients[next % clients.len()].clone();
        next += 1;
        let from_index = image
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .applied_index();
        let opened = tokio::time::timeout(
            HEARTBEAT_TIMEOUT,
            client.watch_metadata(api::WatchMetadataRequest { from_index }),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("watch not answered")));
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "watch metadata: trying the next controller");
                fruitless += 1;
                continue;
            }
        };
        fruitless += 1;
        // a keep-alive came on this stream: the controller had sent everything before it
        let mut caught_up = false;
        // until the stream ends, fails or stalls: then the next controller
        loop {
            let stall_timeout = if caught_up {
                WATCH_STALL_TIMEOUT
            } else {
                catch_up_timeout(catch_up_stalls)
            };
            let event = match tokio::time::timeout(stall_timeout, stream.message()).await {
                Ok(Ok(Some(event))) => event,
                Ok(_) => break,
                Err(_) => {
                    if !caught_up {
                        catch_up_stalls = catch_up_stalls.saturating_add(1);
                    }
                    tracing::warn!(
                        controller = (next - 1) % clients.len(),
                        stalled_ms = stall_timeout.as_millis() as u64,
                        caught_up,
                        "metadata stream stalled (controller paused or hung): moving to the next controller"
                    );
                    break;
                }
            };
            fruitless = 0;
            if matches!(event.event, Some(api::metadata_event::Event::KeepAlive(_))) {
                caught_up = true;
                catch_up_stalls = 0;
            }
            let partitions = may_concern_partitions(&event);
            let applied = {
                let mut image = image.write().unwrap_or_else(|p| p.into_inner());
                apply_event(&mut image, event);
                image.applied_index()
            };
            if partitions {
                partitions_tx.send_replace(applied);
            }
            applied_tx.send_replace(applied);
        }
    }
}

/// How long a metadata stream that has not caught up yet may stay silent: its events
/// can be large (the whole image, or the fencing of a broker: one change per partition
/// it held) and a broker just started is busy opening its logs, so it gets longer than a
/// caught-up one, and longer again after each such stall in a row (reconnecting resends
/// the same catch-up: at 12,000 partitions a fixed 500 ms kept a restarted cluster
/// reconnecting for minutes). A keep-alive shows the stream caught up; from then on a
/// silence of `WATCH_STALL_TIMEOUT` means a paused or hung controller.
fn catch_up_timeout(stalls_in_a_row: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(2);
    FIRST * 2u32.pow(stalls_in_a_row.min(3))
}

/// Whether `event` may change what this broker's partitions should be: anything but
/// group records (offsets, membership, coordinator slots).
fn may_concern_partitions(event: &api::MetadataEvent) -> bool {
    match &event.event {
        Some(api::metadata_event::Event::Batch(batch)) => batch.records.iter().any(|r| {
            !matches!(
                r.record,
                Some(
                    Record::CommitOffsets(_)
                        | Record::StoreGroup(_)
                        | Record::DeleteGroups(_)
                        | Record::DeleteOffsets(_)
                        | Record::MoveCoordinators(_)
                        | Record::AllocateProducerIds(_)
                )
            )
        }),
        Some(api::metadata_event::Event::Image(_)) => true,
        Some(api::metadata_event::Event::KeepAlive(_)) | None => false,
    }
}

/// Applies one event; replays at or below the applied index are skipped (an image at the
/// applied index is taken: at index 0 it is the only carrier of the cluster id).
fn apply_event(image: &mut MetadataImage, event: api::MetadataEvent) {
    let applied = image.applied_index();
    match event.event {
        Some(api::metadata_event::Event::Image(i)) if event.index >= applied => {
            *image = MetadataImage::from_proto(i)
        }
        Some(api::metadata_event::Event::Image(_)) => {}
        Some(api::metadata_event::Event::Batch(_)) if event.index <= applied => {}
        Some(api::metadata_event::Event::Batch(batch)) => {
            image.apply(event.index, &batch);
        }
        Some(api::metadata_event::Event::KeepAlive(_)) | None => {}
    }
}

/// Holds an `Alive` stream to every controller, a ping each heartbeat interval, so each
/// controller knows this broker is alive whichever of them is elected next, and learns at
/// once when this process dies (its streams end). Aborting this task ends the streams.
async fn alive_loop(
    broker_id: i32,
    heartbeat_interval_ms: u64,
    clients: Vec<ControllerClient<Channel>>,
) {
    let interval = Duration::from_millis(heartbeat_interval_ms.max(10));
    let mut streams = tokio::task::JoinSet::new();
    for client in clients {
        streams.spawn(hold_alive_stream(
            client,
            api::alive_ping::Sender::BrokerId(broker_id),
            interval,
            RETRY,
        ));
    }
    while streams.join_next().await.is_some() {}
}

/// What the heartbeat loop reads (shutdown wanted, log directory state) and sets (epoch,
/// fenced, caught up), shared with the [`MetadataFollower`].
struct HeartbeatState {
    broker_epoch: Arc<AtomicI64>,
    fenced: Arc<AtomicBool>,
    caught_up: Arc<AtomicBool>,
    active_controller: Arc<AtomicI32>,
    shutdown: Arc<ShutdownRequest>,
    log_dir: Arc<LogDirHealth>,
    offline_replicas: Arc<OfflineReplicas>,
    /// Offered every "not fenced" answer, ended by a "fenced" one.
    controller_lease: Arc<ControllerLease>,
}

async fn heartbeat_loop(
    config: MetadataFollowerConfig,
    addresses: Vec<String>,
    clients: Vec<ControllerClient<Channel>>,
    applied: watch::Receiver<u64>,
    state: HeartbeatState,
) {
    let HeartbeatState {
        broker_epoch,
        fenced,
        caught_up,
        active_controller,
        shutdown,
        log_dir,
        offline_replicas,
        controller_lease,
    } = state;
    if clients.is_empty() {
        return;
    }
    let interval = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    let mut target = HeartbeatTarget::new(clients.len());
    let mut lease_held = false;
    let mut in_flight: tokio::task::JoinSet<HeartbeatAnswer> = tokio::task::JoinSet::new();
    // when the newest heartbeat whose answer was handled was sent
    let mut newest_answer: Option<std::time::Instant> = None;
    // heartbeats in flight may still answer (a slow network) until the lease they could
    // renew would be over anyway
    let mut answer_timeout = HEARTBEAT_TIMEOUT;
    // heartbeats in flight per controller (by index)
    let mut unanswered = vec![0usize; clients.len()];
    let mut sequence = 0u64;
    let mut applied_changes = applied.clone();
    loop {
        let round_started = tokio::time::Instant::now();
        if broker_epoch.load(Ordering::Acquire) < 0 {
            let mut client = clients[target.index].clone();
            let registered = tokio::time::timeout(
                REGISTRATION_TIMEOUT,
                client.register_broker(api::RegisterBrokerRequest {
                    broker_id: config.broker_id,
                    incarnation_id: config.incarnation_id.clone(),
                    endpoints: config.endpoints.clone(),
                    rack: config.rack.clone(),
                }),
            )
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "registration not answered",
                ))
            });
            match registered {
                Ok(r) if r.get_ref().error_code == 0 => {
                    broker_epoch.store(r.get_ref().broker_epoch, Ordering::Release);
                    tracing::info!(
                        broker_id = config.broker_id,
                        epoch = r.get_ref().broker_epoch,
                        "registered"
                    );
                }
                Ok(r) if r.get_ref().error_code == i32::from(ec::REQUEST_TIMED_OUT) => {
                    // an earlier attempt of this process is still being committed
                    tracing::debug!(error = %r.get_ref().error_message, "registration: retrying");
                    tokio::time::sleep(interval).await;
                    continue;
                }
                Ok(r) => {
                    tracing::warn!(error = %r.get_ref().error_message, "registration refused");
                    tokio::time::sleep(interval).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "register: trying the next controller");
                    target.next();
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        // while fenced, one heartbeat at a time (each may propose the unfencing); once
        // unfenced, a new one each interval even while earlier ones are unanswered, so
        // the controller lease is renewed as long as a round trip stays under it
        let epoch = broker_epoch.load(Ordering::Acquire);
        let limit = if fenced.load(Ordering::Acquire) {
            1
        } else {
            MAX_HEARTBEATS_IN_FLIGHT
        };
        if unanswered[target.index] > 0 && target.is_silent() {
            tracing::debug!("heartbeats unanswered: trying the next controller");
            target.give_up();
        }
        if unanswered[target.index] < limit {
            sequence += 1;
            let request = api::BrokerHeartbeatRequest {
                sequence,
                broker_id: config.broker_id,
                broker_epoch: epoch,
                metadata_index: *applied.borrow(),
                want_shut_down: shutdown.wanted.load(Ordering::Acquire),
                log_dir_offline: log_dir.is_offline(),
                offline_replicas: offline_replicas
                    .snapshot()
                    .into_iter()
                    .map(|(tp, r)| api::OfflineReplica {
                        topic: tp.topic,
                        topic_id: r.topic_id,
                        partition: tp.partition,
                    })
                    .collect(),
            };
            let to = target.index;
            unanswered[to] += 1;
            // while fenced (one at a time) a lost answer must not hold up the next one
            let answer_timeout = if limit == 1 {
                HEARTBEAT_TIMEOUT
            } else {
                answer_timeout
            };
            let mut client = clients[to].clone();
            in_flight.spawn(async move {
                let sent_at = std::time::Instant::now();
                let answer = tokio::time::timeout(answer_timeout, client.broker_heartbeat(request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded("heartbeat not answered"))
                    })
                    .map(tonic::Response::into_inner);
                HeartbeatAnswer {
                    target: to,
                    epoch,
                    sent_at,
                    answer,
                }
            });
        }
        // answers as they come, until the next heartbeat is due (one per interval, counted
        // from the last send: a slow answer does not push the next one out)
        let due = round_started + interval;
        loop {
            // a "not fenced" answer holds once this broker's image has applied what the
            // controller's had (see ControllerLease::offer)
            controller_lease.applied(*applied.borrow());
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = shutdown.wake.notified() => break,
                // the log directory went offline or came back: tell the controller now
                _ = log_dir.changed() => break,
                // a replica's log failed to open or opened again: the same
                _ = offline_replicas.changed() => break,
                // the image moved on: a pending lease renewal may apply now
                Ok(()) = applied_changes.changed(), if controller_lease.is_pending() => {}
                Some(done) = in_flight.join_next() => {
                    let Ok(done) = done else { continue };
                    let slot = &mut unanswered[done.target];
                    *slot = slot.saturating_sub(1);
                    // an answer to an earlier registration, or older than one handled
                    if done.epoch != broker_epoch.load(Ordering::Acquire)
                        || newest_answer.is_some_and(|t| done.sent_at < t)
                    {
                        continue;
                    }
                    let r = match done.answer {
                        Ok(r) => r,
                        Err(e) => {
                            if done.target == target.index {
                                tracing::debug!(error = %e, "heartbeat: trying the next controller");
                                target.give_up();
                            }
                            continue;
                        }
                    };
                    newest_answer = Some(done.sent_at);
                    target.heard();
                    // an answer later than this could not renew the lease any more
                    answer_timeout = Duration::from_millis(r.session_timeout_ms)
                        .max(HEARTBEAT_TIMEOUT);
                    active_controller.store(r.controller_id, Ordering::Release);
                    // the next heartbeats go straight to the active controller: one
                    // forwarding hop less
                    if let Some(i) = addresses.iter().position(|a| *a == r.controller_address) {
                        target.follow(i);
                    }
                    let code = r.error_code as i16;
                    if code == ec::STALE_BROKER_EPOCH || code == ec::BROKER_ID_NOT_REGISTERED {
                        controller_lease.revoke();
                        broker_epoch.store(-1, Ordering::Release);
                        // a new registration starts fenced: one heartbeat at a time
                        fenced.store(true, Ordering::Release);
                        in_flight.abort_all();
                        unanswered.iter_mut().for_each(|n| *n = 0);
                        break;
                    }
                    if r.fenced {
                        controller_lease.revoke();
                    } else if code == ec::NONE {
                        controller_lease.offer(
                            done.sent_at,
                            Duration::from_millis(r.session_timeout_ms),
                            r.metadata_index,
                            *applied.borrow(),
                        );
                    }
                    fenced.store(r.fenced, Ordering::Release);
                    if !r.fenced {
                        caught_up.store(true, Ordering::Release);
                    }
                }
            }
        }
        let held = controller_lease.is_held();
        if held != lease_held {
            if held {
                tracing::info!(
                    broker_id = config.broker_id,
                    "controller lease held: acting on the leaderships the metadata gives"
                );
            } else {
                // why: no answer for a while, or an answer waiting for this image
                let last_answer_sent_ms_ago = newest_answer.map(|t| t.elapsed().as_millis() as u64);
                tracing::warn!(
                    broker_id = config.broker_id,
                    last_answer_sent_ms_ago,
                    waits_for_metadata_index = controller_lease.pending_index(),
                    applied_index = *applied.borrow(),
                    "controller lease lost (fenced, or no controller answered in time): acting as leader of nothing until a controller answers"
                );
            }
            lease_held = held;
        }
    }
}

/// Which controller the heartbeats go to, and when to give up on it.
struct HeartbeatTarget {
    /// An index into the controller list.
    index: usize,
    len: usize,
    /// Since when the heartbeats go to `index`, or its last answer, whichever is later:
    /// silence for [`HEARTBEAT_TIMEOUT`] after it moves them to the next controller.
    heard_since: tokio::time::Instant,
    /// The controller last given up on for want of an answer, and when: an answer naming
    /// it as the active controller (forwarded by another) does not send the heartbeats
    /// straight back there for [`REDIRECT_HOLD_OFF`].
    left: Option<(usize, tokio::time::Instant)>,
}

impl HeartbeatTarget {
    fn new(len: usize) -> Self {
        HeartbeatTarget {
            index: 0,
            len,
            heard_since: tokio::time::Instant::now(),
            left: None,
        }
    }

    fn next(&mut self) {
        self.index = (self.index + 1) % self.len;
    }

    /// No answer from the current controller: move on, and remember it.
    fn give_up(&mut self) {
        let now = tokio::time::Instant::now();
        self.left = Some((self.index, now));
        self.next();
        self.heard_since = now;
    }

    fn heard(&mut self) {
        self.heard_since = tokio::time::Instant::now();
    }

    fn is_silent(&self) -> bool {
        self.heard_since.elapsed() > HEARTBEAT_TIMEOUT
    }

    /// Sends the heartbeats to controller `i` (the active one), unless it was given up on
    /// lately.
    fn follow(&mut self, i: usize) {
        let recently_left = self
            .left
            .is_some_and(|(l, at)| l == i && at.elapsed() < REDIRECT_HOLD_OFF);
        if !recently_left {
            self.index = i;
        }
    }
}

/// A heartbeat's outcome, with what it was sent under.
struct HeartbeatAnswer {
    /// The index of the controller it went to.
    target: usize,
    /// The broker epoch (registration) it carried.
    epoch: i64,
    sent_at: std::time::Instant,
    answer: Result<api::BrokerHeartbeatResponse, tonic::Status>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_catching_up_gets_2_s_doubling_to_16_s_a_caught_up_one_500_ms() {
        let waits: Vec<u64> = (0..6).map(|n| catch_up_timeout(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 16, 16]);
        assert!(WATCH_STALL_TIMEOUT < catch_up_timeout(0));
    }
}
