//! Production implementations of the IO traits: the only module that uses Tokio, real time
//! and real threads.

pub mod bench;
mod clock;
mod disk_jobs;
mod kafka;
pub mod metrics;
mod network;

pub mod server;
mod spawner;

pub use clock::TokioClock;
pub use disk_jobs::ThreadDiskJobs;
pub use kafka::{
    serve_kafka, serve_kafka_when, KafkaServerHandle, TcpConnector, TcpFrameConnection,
};
pub use network::{
    check_frame_len, frame_prefix, FrameError, FrameHeader, InboundFrames, TcpNetwork,
    TcpNetworkOptions, WIRE_VERSION,
};
pub use spawner::TokioSpawner;
