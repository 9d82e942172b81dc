//! The RTMP chunk decoder on a peer's bytes; the case itself is `rtmpq_fuzz_cases::chunk_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpq_fuzz_cases::chunk_decoder(data));
