//! The background scrub (`log.scrub.bytes.per.second`): reads every sealed segment of
//! every local replica, and the part of each active segment loaded from disk unchecked,
//! checking each batch (length, magic, CRC32C), over and over, at no more than the
//! configured rate (0 turns it off), a pass starting at most every
//! `sluice.log.scrub.interval.ms`. It finds damage no read asks for (a clean restart
//! loads segments without a CRC scan, and bytes rot after they were written): a damaged
//! batch is reported to its partition (`Partition::report_damage`), which leaves the ISR
//! and fetches the damage again from an intact replica.
//!
//! Invariants: reads happen outside every lock, one chunk at a time on the blocking pool;
//! damage is reported only if the log was not truncated (nor lost segments to retention)
//! since its region was taken (a truncated file may hold other batches at the same
//! positions); a segment file cut short under the scrub is skipped, not a storage failure.

use std::sync::Arc;
use std::time::Duration;

use sluice_log::{check_chunk, LogError};

use crate::broker::Broker;
use crate::partition::Partition;

/// The largest piece read at once.
const MAX_CHUNK_BYTES: u64 = 1024 * 1024;
/// Passes start at most this often, whatever the setting (an idle loop is not a scrub).
const MIN_PASS_INTERVAL_MS: u64 = 100;
/// How often an offline log directory is looked at again.
const OFFLINE_WAIT: Duration = Duration::from_secs(1);

pub(crate) async fn run(broker: Arc<Broker>) {
    let rate = broker.config.scrub_bytes_per_second;
    if rate == 0 {
        return;
    }
    // about four reads a second at low rates, 1 MiB ones at high rates
    let chunk_bytes = (rate / 4).clamp(64 * 1024, MAX_CHUNK_BYTES) as usize;
    let interval = Duration::from_millis(broker.config.scrub_interval_ms.max(MIN_PASS_INTERVAL_MS));
    loop {
        let started = tokio::time::Instant::now();
        let mut pass_bytes = 0u64;
        for partition in broker.replicas.partitions() {
            pass_bytes += scrub_partition(&broker, &partition, rate, chunk_bytes).await;
        }
        tracing::debug!(bytes = pass_bytes, "scrub pass done");
        tokio::time::sleep_until(started + interval).await;
    }
}

/// One pass over one replica's log; returns the bytes read.
async fn scrub_partition(
    broker: &Broker,
    partition: &Arc<Partition>,
    rate: u64,
    chunk_bytes: usize,
) -> u64 {
    let health = broker.replicas.log_dir_health();
    let mut read = 0u64;
    for target in partition.scrub_regions() {
        // one snapshot of the leader epochs for every chunk of the region
        let epochs: Arc<[sluice_log::EpochEntry]> = target.leader_epochs.clone().into();
        let mut region = target.region.clone();
        let mut bound = target.first_offset_at_most;
        while region.length > 0 {
            while health.is_offline() {
                tokio::time::sleep(OFFLINE_WAIT).await;
            }
            let piece = region.clone();
            let epochs = Arc::clone(&epochs);
            let checked = tokio::task::spawn_blocking(move || {
                check_chunk(&piece, bound, &epochs, chunk_bytes)
            })
            .await;
            let check = match checked {
                Ok(Ok(check)) => check,
                Ok(Err(_)) if partition.truncated_since(target.truncations) => break,
                Ok(Err(e)) => {
                    let dir = sluice_log::lock(partition.log()).dir().to_path_buf();
                    health.take_offline(&LogError::io(dir)(e));
                    break;
                }
                Err(_) => return read,
            };
            let bytes = check.valid_bytes.max(1).min(region.length);
            read += bytes;
            partition.mark_checked(target.segment_base, region.position, check.valid_bytes);
            tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
            if let Some(damage) = check.damage {
                // (not reported if the log was truncated since: see report_damage)
                partition.report_damage(damage, "the scrub", target.truncations);
                break;
            }
            if check.valid_bytes == 0 {
                break;
            }
            region = region.skip(check.valid_bytes);
            bound = check.next_offset;
        }
    }
    read
}
