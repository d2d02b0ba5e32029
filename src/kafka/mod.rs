//! The Kafka wire edge: codec, served versions, and the per-connection request loop.
//! Runtime-agnostic: transports plug in through [`server::FrameConnection`].

pub mod codec;
pub mod server;
pub mod versions;
