//! Kafka's key hash: murmur2 (32-bit, seed `0x9747b28c`) exactly as the Java client's
//! `Utils.murmur2` and librdkafka's `rd_murmur2` compute it, so a key lands on the same
//! partition as with those clients: `(murmur2(key) & 0x7fffffff) % partitions`.
//!
//! Invariant: byte for byte the Java result, including the tail handling of keys whose
//! length is not a multiple of four (little-endian words, tail bytes mixed in reverse).

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// The 32-bit murmur2 hash of `data` (Java returns it as a signed int: same bits).
pub fn murmur2(data: &[u8]) -> u32 {
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's clients pick for `key` among `partitions` (> 0).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// librdkafka's `unittest_murmur2` vectors ("java_murmur2_results"), including the
    /// unaligned tails.
    #[test]
    fn matches_the_java_clients_vectors() {
        let cases: &[(&[u8], u32)] = &[
            (b"kafka", 0xd067_cf64),
            (b"giberish123456789", 0x8f55_2b0c),
            (b"1234", 0x9fc9_7b14),
            (b"234", 0xe7c0_09ca),
            (b"34", 0x8739_30da),
            (b"4", 0x5a4b_5ca1),
            (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
            (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
            (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
            (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                *expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// Kafka's own `UtilsTest.testMurmur2` vectors (Java's signed results).
    #[test]
    fn matches_kafkas_utils_test() {
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, expected, "{key:?}");
        }
    }

    /// The same partition as librdkafka's own murmur2 partitioner (the C code, through
    /// rdkafka-sys), for random keys of every length up to 64 bytes.
    #[test]
    fn picks_the_partition_librdkafka_picks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for _ in 0..20_000 {
            let len = rng.random_range(0..=64);
            let key: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let partitions = rng.random_range(1..=1000);
            // SAFETY: librdkafka's murmur2 partitioner reads only `key[..len]`; it does
            // not touch the topic handle or the opaques for a keyed record
            let theirs = unsafe {
                rdkafka_sys::bindings::rd_kafka_msg_partitioner_murmur2(
                    std::ptr::null(),
                    key.as_ptr().cast(),
                    key.len(),
                    partitions,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(partition_for_key(&key, partitions), theirs, "{key:?}");
        }
    }
}
