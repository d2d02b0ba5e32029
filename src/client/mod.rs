//! The Rust Kafka client: connections now; producer and consumer build on them.

pub mod conn;
