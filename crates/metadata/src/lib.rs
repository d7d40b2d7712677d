//! The contract between the control plane and the data plane: the typed metadata records
//! and the controller gRPC API (generated from `proto/`), and the [`MetadataImage`] those
//! records build. Controllers apply committed records to their image (the Raft state
//! machine); brokers apply the same records, streamed by `WatchMetadata`, to their own copy.
//!
//! Invariant: [`MetadataImage::apply`] is deterministic — the same batches in the same
//! order give the same image on every node — and never panics on any record.

pub mod alive_stream;
pub mod error_code;
mod image;
pub mod topic_name;

pub use image::{ApplyOutcome, MetadataImage};

/// How often a controller's `WatchMetadata` stream sends a keep-alive (the index it has
/// applied), so a watcher can tell a live, idle controller from a paused one.
pub const WATCH_KEEPALIVE: std::time::Duration = std::time::Duration::from_millis(100);

/// A watcher that hears nothing on its `WatchMetadata` stream for this long, not even a
/// keep-alive, moves to another controller: a paused (SIGSTOP) or hung controller keeps
/// its connections open, and its stream would otherwise stall until the transport's
/// keep-alive gives up (3 s). Five keep-alives: a live controller is never that late but
/// under a stall of its own, and moving costs one reconnect.
pub const WATCH_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Generated protobuf types and gRPC stubs. Module paths mirror the proto packages
/// (`sluice.metadata.v1` → `metadata::v1`): generated code refers across packages by
/// relative path.
pub mod proto {
    /// `proto/metadata.proto`: records, image.
    pub mod metadata {
        pub use v1::*;
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("sluice.metadata.v1");
        }
    }
    /// `proto/controller.proto`: the controller API.
    pub mod controller {
        pub use v1::*;
        pub mod v1 {
            #![allow(clippy::all)]
            tonic::include_proto!("sluice.controller.v1");
        }
    }
}

pub use proto::metadata::{
    metadata_record::Record, Broker, CommittedOffset, CoordinatorSlot, Endpoint, MetadataBatch,
    MetadataRecord, Partition, StoredGroup, StoredGroupMember, Topic,
};

/// How many coordinator slots groups are spread over: Kafka's default
/// `offsets.topic.num.partitions`, so a group lands in the slot whose number is the
/// `__consumer_offsets` partition Kafka would give it.
pub const COORDINATOR_SLOTS: i32 = 50;

/// The coordinator slot of `group`: Kafka's `Utils.abs(groupId.hashCode()) % 50`, with
/// Java's `String.hashCode` over UTF-16 code units.
pub fn group_coordinator_slot(group: &str) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: Integer.MIN_VALUE maps to 0
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % COORDINATOR_SLOTS
}

/// Broker id meaning "no broker" (an offline partition's leader).
pub const NO_LEADER: i32 = -1;

/// A topic id as Kafka prints it (`Uuid.toString()`): URL-safe base64 without padding.
pub fn format_topic_id(topic_id: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(topic_id.len().div_ceil(3) * 4);
    for chunk in topic_id.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_land_in_the_slot_kafka_gives_them() {
        // Java: "my-group".hashCode() == -1906497762 -> 1906497762 % 50 == 12
        assert_eq!(super::group_coordinator_slot("my-group"), 12);
        // "".hashCode() == 0
        assert_eq!(super::group_coordinator_slot(""), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Utils.abs gives 0
        assert_eq!(super::group_coordinator_slot("polygenelubricants"), 0);
        // non-ASCII hashes UTF-16 units: "é".hashCode() == 233
        assert_eq!(super::group_coordinator_slot("é"), 233 % 50);
    }

    #[test]
    fn topic_ids_print_like_kafka() {
        // Kafka: new Uuid(0L, 1L).toString() == "AAAAAAAAAAAAAAAAAAAAAQ"
        let mut id = [0u8; 16];
        id[15] = 1;
        assert_eq!(super::format_topic_id(&id), "AAAAAAAAAAAAAAAAAAAAAQ");
        assert_eq!(super::format_topic_id(&[0xfb, 0xff]), "-_8");
    }
}
