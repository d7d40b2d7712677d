//! Producer ids for InitProducerId: this broker hands out ids from a block the controller
//! quorum gave it (Kafka's `ProducerIdManager` and AllocateProducerIds). Each block is a
//! Raft-committed range no other broker gets, and the image's next id only grows, so an id
//! is never handed out twice — across brokers and restarts (a restarted broker asks for a
//! new block; what was left of its old one is never used).

use std::time::Duration;

use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use tokio::sync::Mutex;

use crate::controller_client::ControllerClients;

const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Block {
    next: i64,
    end: i64,
}

#[derive(Default)]
pub struct ProducerIdManager {
    block: Mutex<Block>,
}

impl ProducerIdManager {
    /// The next unused producer id; a new block is fetched when the current one is used
    /// up. Err is the Kafka error code for the client: COORDINATOR_LOAD_IN_PROGRESS (a
    /// retriable error) while no block can be had.
    pub async fn next_id(
        &self,
        controllers: &ControllerClients,
        broker_id: i32,
        broker_epoch: i64,
    ) -> Result<i64, i16> {
        let mut block = self.block.lock().await;
        if block.next >= block.end {
            if broker_epoch < 0 {
                return Err(ec::COORDINATOR_LOAD_IN_PROGRESS);
            }
            let answer = controllers
                .call(ALLOCATE_TIMEOUT, |mut c| {
                    let request = api::AllocateProducerIdsRequest {
                        broker_id,
                        broker_epoch,
                    };
                    async move { c.allocate_producer_ids(request).await }
                })
                .await;
            match answer {
                Ok(r) if r.error_code == 0 && r.count > 0 && r.first_producer_id >= 0 => {
                    tracing::debug!(
                        first = r.first_producer_id,
                        count = r.count,
                        "new producer id block"
                    );
                    *block = Block {
                        next: r.first_producer_id,
                        end: r.first_producer_id + i64::from(r.count),
                    };
                }
                Ok(r) => {
                    tracing::warn!(
                        error_code = r.error_code,
                        message = r.error_message,
                        "no producer id block"
                    );
                    return Err(ec::COORDINATOR_LOAD_IN_PROGRESS);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no producer id block: controllers unreachable");
                    return Err(ec::COORDINATOR_LOAD_IN_PROGRESS);
                }
            }
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}
