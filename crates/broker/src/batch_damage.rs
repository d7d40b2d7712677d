//! Finding damaged batches in a record set: the whole, valid batches before the first one
//! that fails its checks (length, magic, CRC32C), and where that one starts. A follower
//! checks what it fetches (its log refuses the rest anyway); a leader checks what it
//! serves its followers, which is how damage on its own disk is found (a clean restart
//! loads segments without a CRC scan, as Kafka does).

use sluice_record::{BatchHeader, RecordBatches, RecordError};

/// A batch that failed its checks.
#[derive(Debug)]
pub struct Damage {
    /// Its base offset as its header says (-1 if the header itself is cut short).
    pub offset: i64,
    pub error: RecordError,
}

/// Splits a record set at its first batch that fails its checks: the whole batches
/// before it, and the damage.
pub fn split_at_damage(records: &[u8]) -> (&[u8], Option<Damage>) {
    let mut valid = 0usize;
    for batch in RecordBatches::new(records, usize::MAX) {
        match batch {
            Ok(b) => valid += b.size_bytes(),
            Err(error) => {
                let offset = BatchHeader::parse(&records[valid..]).map_or(-1, |h| h.base_offset.0);
                return (&records[..valid], Some(Damage { offset, error }));
            }
        }
    }
    (records, None)
}
