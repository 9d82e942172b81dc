//! The RTMP handshake on a peer's bytes, as server and as client; the case itself is `rtmpq_fuzz_cases::rtmp_handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpq_fuzz_cases::rtmp_handshake(data));
