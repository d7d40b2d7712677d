//! InitProducerId (v0–v5) for idempotent producers (`transactional_id` null): a new
//! producer id from this broker's block with epoch 0, or — KIP-360, a client that asks
//! with its current `producer_id`/`producer_epoch` (v3+) — the same id with the epoch
//! bumped, so its partitions fence the old epoch and it restarts its sequences at 0. An id
//! whose epoch is used up gets a new id instead (as Kafka does).
//!
//! Sluice has no transactions: a `transactional_id` is answered with
//! COORDINATOR_NOT_AVAILABLE, as FindCoordinator answers for transaction keys (an empty
//! one with INVALID_REQUEST, as Kafka does).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;

use super::{decode, respond, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: InitProducerIdRequest = decode(request)?;
    let answer = match init(&body, broker).await {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
            .with_producer_id(producer_id.into())
            .with_producer_epoch(producer_epoch),
        Err(code) => InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1),
    };
    respond(request, &answer)
}

async fn init(body: &InitProducerIdRequest, broker: &Broker) -> Result<(i64, i16), i16> {
    match &body.transactional_id {
        // Kafka's answer to an empty transactional id
        Some(id) if id.is_empty() => return Err(ec::INVALID_REQUEST),
        Some(_) => return Err(ec::COORDINATOR_NOT_AVAILABLE),
        None => {}
    }
    let producer_id = body.producer_id.0;
    let epoch = body.producer_epoch;
    match (producer_id >= 0, epoch >= 0) {
        (false, false) => {}
        (true, true) => {
            let known = broker.with_image(|image| producer_id < image.next_producer_id());
            if !known {
                return Err(ec::INVALID_PRODUCER_ID_MAPPING);
            }
            // an epoch of i16::MAX - 1 or more cannot be bumped: a fresh id follows
            if epoch < i16::MAX - 1 {
                return Ok((producer_id, epoch + 1));
            }
        }
        _ => return Err(ec::INVALID_REQUEST),
    }
    let id = broker
        .producer_ids
        .next_id(
            &broker.controllers,
            broker.broker_id(),
            broker.metadata.broker_epoch(),
        )
        .await?;
    Ok((id, 0))
}
