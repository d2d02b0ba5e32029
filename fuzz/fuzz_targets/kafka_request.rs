#![no_main]
//! See `fjord_fuzz_harness::kafka_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fjord_fuzz_harness::kafka_request::run(data));
