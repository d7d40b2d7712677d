//! The fuzz target's entry point (`fuzz/`, needs nightly) run on stable with proptest:
//! random streams, and random bodies behind valid headers of every served API, must never
//! panic the frame splitter, the header parser or any body decoder.

use proptest::prelude::*;
use sluice_protocol::fuzzing::decode_frames;
use sluice_protocol::KAFKA_3_9_RANGES;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_frames(&data, 1 << 16);
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic(
        api in 0..KAFKA_3_9_RANGES.len(),
        version_pick in any::<u16>(),
        client_id in proptest::collection::vec(any::<u8>(), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let range = KAFKA_3_9_RANGES[api];
        let span = (range.max_version - range.min_version + 1) as u16;
        let version = range.min_version + (version_pick % span) as i16;
        let mut request = Vec::new();
        request.extend_from_slice(&(range.api_key as i16).to_be_bytes());
        request.extend_from_slice(&version.to_be_bytes());
        request.extend_from_slice(&7i32.to_be_bytes());
        request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
        request.extend_from_slice(&client_id);
        request.extend_from_slice(&body);
        let mut data = (request.len() as i32).to_be_bytes().to_vec();
        data.extend_from_slice(&request);
        decode_frames(&data, 1 << 16);
    }
}
