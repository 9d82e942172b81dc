//! Gateway and edge config loading; the case itself is `rtmpq_fuzz_cases::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpq_fuzz_cases::config(data));
