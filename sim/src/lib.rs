//! fjord-sim: fjord's deterministic simulator.
//!
//! (Full guide below once the engine modules land.)

pub mod bugs;
pub mod check;
pub mod faults;
pub mod history;
pub mod seed;
