#![no_main]
//! See `fjord_fuzz_harness::rpc_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fjord_fuzz_harness::rpc_frame::run(data));
