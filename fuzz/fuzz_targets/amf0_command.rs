//! AMF0 command inspection on a peer's message; the case itself is `rtmpq_fuzz_cases::amf0_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpq_fuzz_cases::amf0_command(data));
