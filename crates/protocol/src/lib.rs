//! Kafka's wire protocol for the broker, on top of the `kafka-protocol` crate:
//! - [`frame`]: size-prefixed frames, with `socket.request.max.bytes` enforced before any
//!   allocation;
//! - [`request`]: the request header (v0–v2) and the body bytes behind it;
//! - [`response`]: responses as a sequence of [`Chunk`]s — encoded bytes and file regions
//!   — written by a [`ChunkWriter`] with `sendfile(2)` for the regions (or a plain copy,
//!   behind one switch, for transports that need the bytes in user space).
//!
//! - [`client_connection`] and [`pipelined_connection`]: the client side, one request at a
//!   time or several in flight.
//!
//! Invariant: nothing here panics on any input bytes; malformed input is a typed error.

pub mod api_versions;
pub mod client_connection;
pub mod fetch_response;
pub mod frame;
pub mod fuzzing;
pub mod pipelined_connection;
pub mod request;
pub mod response;

pub use api_versions::{ApiRange, SupportedApis, KAFKA_3_9_RANGES};
pub use client_connection::{ClientConnection, ClientError};
pub use fetch_response::encode_fetch_response;
pub use frame::{read_frame, FrameError};
pub use pipelined_connection::{PipelinedConnection, SendError};
pub use request::{parse_request, RequestError, RequestFrame};
pub use response::{Chunk, ChunkWriter, FileChunk, ResponseStream, WriteStats};
