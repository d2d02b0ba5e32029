//! The code behind fjord's fuzz targets (fuzz/fuzz_targets/), shared with the
//! stable-toolchain replay test (`tests/replay.rs`), so that every corpus and regression
//! input runs through exactly what the fuzzer ran.
//!
//! Each target module has `run(data: &[u8])`, which panics when an invariant breaks and
//! returns normally otherwise, and `seeds()`, inputs that reach deep into the code (the
//! committed corpora start from them; see fuzz/README.md).

pub mod broker_sim;
pub mod input;
pub mod kafka_request;
pub mod kafka_structured;
pub mod log_recovery;
pub mod raft_step;
pub mod rpc_frame;

/// The structured Kafka target under its fuzz target's name.
pub mod kafka_request_structured {
    pub use crate::kafka_structured::{run, seeds};
}

/// A fuzz target: its name (a directory under fuzz/corpus and fuzz/regressions), its
/// function and its seed inputs.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "kafka_request",
        run: kafka_request::run,
        seeds: kafka_request::seeds,
    },
    Target {
        name: "kafka_request_structured",
        run: kafka_structured::run,
        seeds: kafka_structured::seeds,
    },
    Target {
        name: "rpc_frame",
        run: rpc_frame::run,
        seeds: rpc_frame::seeds,
    },
    Target {
        name: "log_recovery",
        run: log_recovery::run,
        seeds: log_recovery::seeds,
    },
    Target {
        name: "raft_step",
        run: raft_step::run,
        seeds: raft_step::seeds,
    },
];
