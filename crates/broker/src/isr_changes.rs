//! The leader's side of ISR changes: every `replica.lag.time.max.ms / 2`, as soon as a
//! follower outside an ISR catches up, when the set of live (unfenced) brokers changes (a
//! follower that caught up while its broker was still fenced joins once it is not: in a
//! fetch session nothing else would bring it up again), and a second after a change that
//! did not go through, each led partition is asked whether its ISR
//! should shrink (followers out of sync) or grow (caught-up followers that are live and
//! unfenced), and the changes go to the controller in one AlterPartition, compare-and-set
//! on the partition epoch. The committed state comes back (and through the
//! metadata stream); a refusal as stale (newer partition or leader epoch) makes the leader
//! stop acting as leader for that partition.

use sluice_record::now_ms;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;

use crate::broker::Broker;
use crate::partition::{IsrChange, Partition};

pub async fn run(broker: Arc<Broker>) {
    let lag_ms = broker.config.replica_lag_time_max_ms.max(10);
    let every = Duration::from_millis((lag_ms / 2).max(10) as u64);
    let mut live = broker.with_image(|image| image.live_broker_ids());
    let mut all_went_through = true;
    loop {
        // shrinks wait for the periodic check; a follower that caught up joins at once
        let wait = if all_went_through {
            every
        } else {
            RETRY.min(every)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = broker.replicas.isr_change_wanted() => {}
            _ = live_brokers_change(&broker, &live) => {}
        }
        live = broker.with_image(|image| image.live_broker_ids());
        let changes: Vec<(Arc<Partition>, IsrChange)> = broker
            .replicas
            .partitions()
            .into_iter()
            .filter_map(|p| {
                let change = p.propose_isr_change(now_ms(), lag_ms, |id| live.contains(&id))?;
                Some((p, change))
            })
            .collect();
        all_went_through = changes.is_empty() || alter(&broker, changes).await;
    }
}

/// How soon ISR changes that did not go through are proposed again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the live brokers are compared (a few ids: cheap).
const LIVE_CHECK: Duration = Duration::from_millis(250);

/// Resolves once the image's live brokers differ from `live`.
async fn live_brokers_change(broker: &Broker, live: &[i32]) {
    loop {
        tokio::time::sleep(LIVE_CHECK).await;
        if broker.with_image(|image| image.live_broker_ids()) != live {
            return;
        }
    }
}

/// Sends `changes` and applies the answers; false if some did not go through.
async fn alter(broker: &Broker, changes: Vec<(Arc<Partition>, IsrChange)>) -> bool {
    let request = api::AlterPartitionRequest {
        broker_id: broker.broker_id(),
        broker_epoch: broker.metadata.broker_epoch(),
        partitions: changes
            .iter()
            .map(|(_, c)| api::AlterPartitionItem {
                topic: c.topic_partition.topic.clone(),
                partition: c.topic_partition.partition,
                leader_epoch: c.leader_epoch,
                new_isr: c.new_isr.clone(),
                partition_epoch: c.partition_epoch,
            })
            .collect(),
    };
    let answer = broker
        .controllers
        .call(Duration::from_secs(10), |mut c| {
            let request = request.clone();
            async move { c.alter_partition(request).await }
        })
        .await;
    let response = match answer {
        Ok(r) if r.error_code == 0 => r,
        Ok(r) => {
            tracing::warn!(
                error = r.error_code,
                "AlterPartition refused for this broker"
            );
            changes.iter().for_each(|(p, _)| p.isr_change_failed());
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "AlterPartition: no controller answered");
            changes.iter().for_each(|(p, _)| p.isr_change_failed());
            return false;
        }
    };
    let mut all_went_through = true;
    for (partition, change) in &changes {
        let tp = &change.topic_partition;
        let Some(result) = response
            .partitions
            .iter()
            .find(|r| r.topic == tp.topic && r.partition == tp.partition)
        else {
            partition.isr_change_failed();
            all_went_through = false;
            continue;
        };
        match result.error_code as i16 {
            ec::NONE => match &result.state {
                Some(state) => {
                    // against the ISR it was proposed against: the metadata stream may
                    // have brought the committed ISR to the partition already
                    let before = &change.isr;
                    let signals = broker.replicas.signals();
                    if state.isr.iter().any(|b| !before.contains(b)) {
                        signals.isr_expands.fetch_add(1, Ordering::Relaxed);
                    }
                    if before.iter().any(|b| !state.isr.contains(b)) {
                        signals.isr_shrinks.fetch_add(1, Ordering::Relaxed);
                    }
                    partition.apply_state(state, now_ms())
                }
                None => {
                    partition.isr_change_failed();
                    all_went_through = false;
                }
            },
            ec::INVALID_UPDATE_VERSION | ec::FENCED_LEADER_EPOCH => {
                tracing::warn!(partition = %tp, error = %result.error_message, "AlterPartition refused as stale");
                partition.resign(change.leader_epoch, change.partition_epoch);
            }
            code => {
                tracing::warn!(partition = %tp, error = code, message = %result.error_message, "AlterPartition refused");
                partition.isr_change_failed();
                all_went_through = false;
            }
        }
    }
    all_went_through
}
