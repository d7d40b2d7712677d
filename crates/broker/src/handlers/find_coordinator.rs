//! FindCoordinator, before consumer groups exist: every key gets COORDINATOR_NOT_AVAILABLE
//! with a message saying why, so group consumers fail visibly while assign-mode consumers
//! and producers work.
//!
//! Why it is served at all: librdkafka up to 2.11 enables LZ4 only against a broker that
//! advertises FindCoordinator v0 (its `RD_KAFKA_FEATURE_LZ4` dependency); without it,
//! Debian's kcat silently sends lz4 batches uncompressed.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
use sluice_protocol::RequestFrame;

use super::{decode, respond, str_bytes, Answer};
use crate::broker::Broker;
use crate::connection::ConnectionError;

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const MESSAGE: &str = "consumer groups are not supported by this Sluice build yet";

pub async fn handle(request: &RequestFrame, _broker: &Broker) -> Result<Answer, ConnectionError> {
    let body: FindCoordinatorRequest = decode(request)?;
    let mut response = FindCoordinatorResponse::default();
    if request.api_version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id((-1).into())
                    .with_port(-1)
                    .with_error_code(COORDINATOR_NOT_AVAILABLE)
                    .with_error_message(Some(str_bytes(MESSAGE)))
            })
            .collect();
    } else {
        response.error_code = COORDINATOR_NOT_AVAILABLE;
        response.node_id = (-1).into();
        response.port = -1;
        if request.api_version >= 1 {
            response.error_message = Some(str_bytes(MESSAGE));
        }
    }
    respond(request, &response)
}
