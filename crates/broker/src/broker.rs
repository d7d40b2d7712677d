//! A running broker's shared state, as the request handlers see it: its config, its
//! metadata image (followed from the controllers), its partitions, the consumer groups it
//! coordinates, and a client to the controllers for the admin APIs.
//!
//! Invariant: handlers read topics, partitions and brokers from the local image only; the
//! broker never reaches into a controller's state.

use std::time::Duration;

use sluice_metadata::MetadataImage;

use crate::broker_config::BrokerConfig;
use crate::controller_client::ControllerClients;
use crate::fetch_session::FetchSessionCache;
use crate::group_coordinator::GroupCoordinator;
use crate::metadata_follower::MetadataFollower;
use crate::offset_commit_batcher::OffsetCommitBatcher;
use crate::producer_id_manager::ProducerIdManager;
use crate::replica_manager::ReplicaManager;
use crate::request_metrics::RequestMetrics;

pub struct Broker {
    pub config: BrokerConfig,
    pub metadata: MetadataFollower,
    pub replicas: ReplicaManager,
    pub controllers: ControllerClients,
    /// The groups whose coordinator slot this broker owns.
    pub groups: GroupCoordinator,
    /// Offset commits on their way to the controller quorum, gathered into few calls.
    pub commits: OffsetCommitBatcher,
    /// Producer ids for InitProducerId, from blocks the controllers hand out.
    pub producer_ids: ProducerIdManager,
    /// Requests, errors, bytes and time, for the node's `/metrics`.
    pub metrics: RequestMetrics,
    /// Fetch sessions (KIP-227).
    pub fetch_sessions: FetchSessionCache,
}

impl Broker {
    pub fn broker_id(&self) -> i32 {
        self.config.broker_id
    }

    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        self.metadata.with_image(f)
    }

    /// Brings the local partitions up to the local image (cheap when nothing changed).
    /// It may open or create thousands of logs, or wait for the sync the metadata task
    /// runs: on a multi-thread runtime the other tasks of this thread move to another one
    /// meanwhile (`block_in_place`) — a heartbeat stuck behind a request's sync of 500 new
    /// partitions got its broker fenced.
    ///
    /// The sync works on a copy of the image, taken only when there is something to sync:
    /// holding the image's lock through a sync of thousands of new logs (seconds on a
    /// slow file system) blocked the metadata stream's writer, and with it a runtime
    /// thread, until the brokers lost their controller lease.
    pub fn sync_partitions(&self) {
        let Some((image, caught_up)) = self.image_to_sync(true) else {
            return;
        };
        let sync = || self.replicas.sync(&image, caught_up);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(sync),
            _ => sync(),
        }
    }

    /// [`Self::sync_partitions`] for the request path: skipped while another sync runs
    /// (see [`ReplicaManager::sync_unless_busy`]).
    pub fn sync_partitions_unless_busy(&self) {
        // (no copy while another sync runs: this one would skip it)
        if let Some((image, caught_up)) = self.image_to_sync(false) {
            self.replicas.sync_unless_busy(&image, caught_up);
        }
    }

    /// A copy of the local image (and whether it is current) when the partitions may
    /// need a sync to it; None (no copy) when they are up to date with it, or when a sync
    /// runs and not `when_busy`.
    fn image_to_sync(&self, when_busy: bool) -> Option<(MetadataImage, bool)> {
        let caught_up = self.metadata.caught_up();
        self.with_image(|image| {
            self.replicas
                .may_need_sync(image.applied_index(), caught_up, when_busy)
                .then(|| (image.clone(), caught_up))
        })
    }

    /// Waits (up to `timeout`) until `f` holds for the local image, then syncs partitions.
    pub async fn wait_for_image(
        &self,
        timeout: Duration,
        f: impl Fn(&MetadataImage) -> bool,
    ) -> bool {
        let ok = self.metadata.wait_until(timeout, f).await;
        self.sync_partitions();
        ok
    }

    /// Waits (up to `timeout`) until every topic in `names` exists with a leader for each
    /// of its partitions, then syncs partitions.
    pub async fn wait_for_topics_led(&self, names: &[String], timeout: Duration) -> bool {
        self.wait_for_image(timeout, |image| {
            names.iter().all(|name| {
                image
                    .topic(name)
                    .is_some_and(|t| t.partitions.iter().all(|p| p.leader >= 0))
            })
        })
        .await
    }
}
