//! Shared by the storage benchmarks: batch construction.

use sluice_record::{BatchBuilder, Compression};

/// A batch of 100-byte records, about `size_bytes` long (a single record for tiny sizes).
pub fn batch_of_about(size_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None);
    let value = [b'v'; 100];
    let mut ts = 1_700_000_000_000i64;
    while builder.records_size_bytes() + 61 + 110 <= size_bytes || builder.record_count() == 0 {
        builder.append(ts, Some(b"key"), Some(&value), &[]);
        ts += 1;
    }
    builder.build().expect("uncompressed batches always build")
}
