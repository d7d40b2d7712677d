//! FindCoordinator (v0–v6; batched keys from v4): a group's coordinator is the broker that
//! owns its coordinator slot in the metadata image (see `coordinator_placement.rs` in the
//! controller), so every broker answers the same for the same image. Transaction
//! coordinators do not exist yet: COORDINATOR_NOT_AVAILABLE, with a message.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_metadata::error_code as ec;
use sluice_protocol::RequestFrame;

use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

/// Key type 1: a transactional id.
const TRANSACTION_KEY: i8 = 1;

/// Whether this broker coordinates `group` now: NONE, NOT_COORDINATOR (another broker
/// does), COORDINATOR_NOT_AVAILABLE (no live broker owns its slot yet), or
/// COORDINATOR_LOAD_IN_PROGRESS (this broker's image has not been current yet, so what the
/// previous coordinator stored may be missing). On NONE the in-memory group matches this
/// ownership: resumed from the stored state if it was not known here.
pub(crate) fn coordinates(broker: &Broker, group: &str) -> i16 {
    let me = broker.broker_id();
    let loaded_from = broker.with_image(|image| {
        let slot = image.coordinator_of_group(group)?;
        Some((
            slot.broker_id,
            slot.epoch,
            image.stored_group(group).cloned(),
        ))
    });
    match loaded_from {
        Some((id, epoch, stored)) if id == me => {
            if !broker.metadata.caught_up() {
                return ec::COORDINATOR_LOAD_IN_PROGRESS;
            }
            broker.groups.ensure_current(group, epoch, stored.as_ref());
            ec::NONE
        }
        Some((id, _, _)) if id >= 0 => ec::NOT_COORDINATOR,
        _ => ec::COORDINATOR_NOT_AVAILABLE,
    }
}

/// (error, message, node id, host, port) for one key.
fn find(
    broker: &Broker,
    listener: Option<&str>,
    key: &str,
    key_type: i8,
) -> (i16, Option<String>, i32, String, i32) {
    if key_type == TRANSACTION_KEY {
        let message = "transactions are not supported by this Sluice build".to_string();
        return (
            ec::COORDINATOR_NOT_AVAILABLE,
            Some(message),
            -1,
            String::new(),
            -1,
        );
    }
    let found = broker.with_image(|image| {
        let slot = image.coordinator_of_group(key)?;
        let b = image.broker(slot.broker_id).filter(|b| !b.fenced)?;
        let endpoint = broker.config.endpoint_on(b, listener)?;
        Some((b.broker_id, endpoint.host.clone(), endpoint.port as i32))
    });
    match found {
        Some((id, host, port)) => (ec::NONE, None, id, host, port),
        None => (
            ec::COORDINATOR_NOT_AVAILABLE,
            Some("no live broker coordinates this group yet".to_string()),
            -1,
            String::new(),
            -1,
        ),
    }
}

pub async fn handle(request: &RequestFrame, broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: FindCoordinatorRequest = decode(request)?;
    let mut response = FindCoordinatorResponse::default();
    if request.api_version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                let (error_code, message, node, host, port) =
                    find(broker, request.listener.as_deref(), key, body.key_type);
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node.into())
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_error_code(error_code)
                    .with_error_message(message.map(str_bytes))
            })
            .collect();
    } else {
        let key: &StrBytes = &body.key;
        let (error_code, message, node, host, port) =
            find(broker, request.listener.as_deref(), key, body.key_type);
        response.error_code = error_code;
        response.node_id = node.into();
        response.host = str_bytes(host);
        response.port = port;
        if request.api_version >= 1 {
            response.error_message = message.map(str_bytes);
        }
    }
    respond(request, &response)
}
