//! fjord-replication: agreement for fjord.
//!
//! One sans-IO Raft implementation serves both the controller's metadata log and every
//! partition (whose Raft log *is* its Kafka log). Drivers move messages, ticks and disk
//! writes between the Raft cores and the [`io`] traits.

pub mod io;
pub mod multiraft;
pub mod node;
pub mod raft;
pub mod storage;
pub mod testing;

pub use io::{
    BoxFuture, Clock, DiskJob, DiskJobs, Envelope, InlineDiskJobs, Instant, IoWait, Network,
    NodeId, Spawner,
};
