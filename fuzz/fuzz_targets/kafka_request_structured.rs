#![no_main]
//! See `fjord_fuzz_harness::kafka_request_structured`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fjord_fuzz_harness::kafka_request_structured::run(data));
