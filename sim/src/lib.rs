//! fjord-sim: fjord's deterministic simulator.
//!
//! The same node code that runs in production runs here, in one process, on madsim's seeded
//! executor and virtual time, while the simulator crashes nodes, cuts and clogs links,
//! corrupts and fails disks and skews clocks — and then checks the recorded history.
//!
//! # Running it
//!
//! The simulator exists only under `--cfg madsim` (its own target dir, `target/sim`);
//! `scripts/sim` builds it in release mode and passes its arguments through:
//!
//! ```text
//! scripts/sim --seed 42 [-v|-vv]          replay one world, printing its trace
//! scripts/sim --seeds 1000 [--from S] [--jobs J] [--check-determinism]
//! scripts/sim --seeds 200 --faults crash,partition --inject-bug ack-before-fsync
//! ```
//!
//! Without `--cfg madsim` this crate builds only the history model and the checks (tested by
//! the normal workspace build), and the binary explains how to run the simulator.
//!
//! # Anatomy
//!
//! * [`seed`] — every random stream derives from the seed, salted per concern.
//! * [`faults`] — fault classes and the swarm (what a seed enables, at what rates).
//! * `clock` ([`clock::SimClock`]), `network` ([`network::SimNet`]), `disk`
//!   ([`disk::SimDisk`]) — the production IO traits, simulated with faults.
//! * `world` — server nodes as madsim nodes: crash, restart, pause, power loss.
//! * `scheduler` — injects faults during the fault phase, then heals.
//! * `workload` — the API a system under test implements ([`workload::Workload`]);
//!   `kafka` (the default) runs the real broker and client, `toy` is the engine's own small
//!   workload, `raft` runs fjord's replication layer.
//! * [`history`] and [`check`] — what a run observed and the invariants over it.
//! * `runner` — one world, sweeps, determinism checks; `trace` — the trace and its hash.
//!
//! # Adding a fault class
//!
//! Add the variant in [`faults::FaultClass`] (with its name), give it a rate in
//! [`faults::Swarm::pick`], inject it in `scheduler.rs` (counting it with `World::count`),
//! and undo it in `scheduler::heal` if it outlives the fault phase. Workloads opt in through
//! `WorkloadKind::faults`.
//!
//! # Adding a check
//!
//! Write `check/<name>.rs` with `pub fn check(&History) -> Vec<String>` (one message per
//! violation), a doc comment stating the invariant precisely, and tests with hand-built
//! histories that must pass and ones that must fail; list it in [`check::ALL`].

pub mod bugs;
pub mod check;
pub mod faults;
pub mod history;
pub mod seed;

#[cfg(madsim)]
pub mod clock;
#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod inbox;
#[cfg(madsim)]
pub mod kafka;
#[cfg(madsim)]
pub mod network;
#[cfg(madsim)]
pub mod raft;
#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scheduler;
#[cfg(madsim)]
pub mod time;
#[cfg(madsim)]
pub mod toy;
#[cfg(madsim)]
pub mod trace;
#[cfg(madsim)]
pub mod workload;
#[cfg(madsim)]
pub mod world;

/// Registered workloads; the first is the default.
#[cfg(madsim)]
pub const WORKLOADS: &[&workload::WorkloadKind] = &[&kafka::KIND, &toy::KIND, &raft::KIND];
