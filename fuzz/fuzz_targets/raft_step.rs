#![no_main]
//! See `fjord_fuzz_harness::raft_step`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fjord_fuzz_harness::raft_step::run(data));
