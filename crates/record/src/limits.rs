//! Every hard limit on record data, in one place.
//!
//! These are ceilings that hold regardless of configuration; the configurable limits that
//! Kafka users know (`message.max.bytes`, `socket.request.max.bytes`) are enforced by the
//! broker and may only be lower.

/// Largest batch (header included) any code path accepts: Kafka's default
/// `socket.request.max.bytes`, since a batch can never be larger than the request carrying it.
pub const MAX_BATCH_SIZE_BYTES: usize = 100 * 1024 * 1024;

/// Kafka's default `message.max.bytes` (1 MiB + the 12-byte log overhead).
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_048_588;

/// Most records one batch may declare. An uncompressed record takes at least 7 bytes, so
/// no honest batch under [`MAX_BATCH_SIZE_BYTES`] exceeds this; compressed batches are
/// held to the same count.
pub const MAX_RECORD_COUNT: i32 = (MAX_BATCH_SIZE_BYTES / MIN_RECORD_SIZE_BYTES) as i32;

/// Smallest encoding of one record: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
pub const MIN_RECORD_SIZE_BYTES: usize = 7;

/// Most bytes one compressed batch may expand to (protects against decompression bombs).
pub const MAX_DECOMPRESSED_BYTES: usize = 256 * 1024 * 1024;

/// Most headers one record may carry.
pub const MAX_HEADERS_PER_RECORD: usize = 64 * 1024;
