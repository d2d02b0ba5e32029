//! fjord: a Kafka-compatible replicated log.
//!
//! The broker, controller and client logic are written against the [`fjord_log::Disk`],
//! [`fjord_replication::Clock`] and [`fjord_replication::Network`] traits so that the same code
//! runs in production ([`runtime`]: Tokio, TCP, files) and inside the deterministic simulator.

pub mod broker;
pub mod cli;
pub mod client;
pub mod controller;
pub mod group;
pub mod kafka;
pub mod runtime;
