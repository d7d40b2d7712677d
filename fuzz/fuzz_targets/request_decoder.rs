//! Arbitrary bytes as a client's stream: frames (with socket.request.max.bytes), request
//! headers, and the body decoders of every API the broker serves. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_protocol::fuzzing::decode_frames(data, 1 << 20);
});
