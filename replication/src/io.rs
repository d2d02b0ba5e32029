//! The IO traits the replication drivers are written against.
//!
//! Production implements them with Tokio and TCP (`fjord::runtime`); the simulator implements
//! them over madsim's virtual time with fault injection. Cores (Raft, state machines) never
//! see these traits: only drivers do.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identity of a node (a broker / controller process). Kafka calls it the broker id.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A point on a node's monotonic clock, in nanoseconds since an arbitrary per-node origin.
/// Two nodes' `Instant`s are not comparable.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    pub const ZERO: Instant = Instant { nanos: 0 };

    pub const fn from_nanos(nanos: u64) -> Self {
        Instant { nanos }
    }

    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Time elapsed since `earlier`; zero if `earlier` is later (never panics).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }

    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let add = u64::try_from(d.as_nanos()).ok()?;
        self.nanos.checked_add(add).map(Instant::from_nanos)
    }
}

/// A boxed future, so that the traits stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A node's view of time.
///
/// Contract: `now` never goes backwards on one node. `wall_clock_ms` (Kafka timestamps,
/// retention) may jump in either direction and may differ between nodes: nothing that
/// decides safety may depend on it. The simulator gives each node its own offset and drift.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, as this node believes it.
    fn wall_clock_ms(&self) -> i64;
    /// Completes once at least `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Awaited by a driver after a round of disk IO (its fsyncs) and before it sends anything
/// that depends on that IO: the simulator models device latency here, so that time passes
/// (and a crash can strike) between a write and the acknowledgement it allows. Production
/// drivers have none: their syncs block until the device is done.
pub type IoWait = std::sync::Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// One piece of a round's disk IO: a Raft group's hard-state write and log fsync.
pub type DiskJob<'a> = Box<dyn FnOnce() + Send + 'a>;

/// Runs a round's disk jobs, which are independent of one another (one per Raft group with
/// something to persist), and returns once all of them are done.
///
/// [`InlineDiskJobs`] runs them one after another on the caller's thread (the simulator,
/// tests). Production (`fjord::runtime`) runs them concurrently on threads of their own: the
/// device then serves the fsyncs of several groups together (group commit across groups),
/// and the executor keeps serving the network meanwhile, so a leader's appends reach its
/// followers while its own fsync is under way.
pub trait DiskJobs: Send + Sync + 'static {
    fn run(&self, jobs: Vec<DiskJob<'_>>);
}

/// Runs disk jobs in order on the caller's thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineDiskJobs;

impl DiskJobs for InlineDiskJobs {
    fn run(&self, jobs: Vec<DiskJob<'_>>) {
        for job in jobs {
            job();
        }
    }
}

/// Starts tasks on a node's executor.
///
/// Drivers never call an executor directly: production hands them a Tokio spawner
/// (`fjord::runtime`), the simulator one that spawns onto the current simulated node, so that
/// crashing the node drops every task it started. A spawned task must not outlive its node's
/// state: it holds only `Arc`s to things of the same node.
pub trait Spawner: Send + Sync + 'static {
    /// Runs `task` concurrently with the caller. `name` is for traces and debugging.
    fn spawn(&self, name: &'static str, task: BoxFuture<'static, ()>);
}

/// A message between nodes, as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub payload: Bytes,
}

/// Unreliable, asynchronous, message-oriented transport between nodes.
///
/// Contract: `send` never blocks and never fails visibly. A sent message may be delivered
/// once, never (loss, partition, peer down, queue full), late, out of order with respect to
/// other messages, or more than once (duplicated by a retrying transport or the simulator).
/// A delivered payload is byte-identical to what was sent (the transport frames and checks
/// it); it is at most `frame_size_max_bytes` long. Everything above (Raft) must be correct
/// under all of this; it only relies on delivery *eventually* happening while a link is up.
pub trait Network: Send + Sync + 'static {
    /// The node this endpoint belongs to.
    fn local_id(&self) -> NodeId;
    /// Queues `payload` for `to`. Sending to oneself is allowed and goes through the same path.
    fn send(&self, to: NodeId, payload: Bytes);
    /// The next message addressed to this node. Completes when one arrives.
    fn recv(&self) -> BoxFuture<'_, Envelope>;
    /// Learns where node `id` can be reached (its advertised node-to-node address), e.g.
    /// from a broker registration. Transports that route by node id alone ignore it.
    fn set_peer_address(&self, _id: NodeId, _addr: &str) {}
}

/// Largest payload a [`Network`] carries, in bytes. Larger sends are dropped (and logged)
/// by the transport: drivers split their batches below it.
pub const FRAME_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;
