#![no_main]
//! See `fjord_fuzz_harness::log_recovery`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fjord_fuzz_harness::log_recovery::run(data));
