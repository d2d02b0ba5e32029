//! The broker: one fjord node serving Kafka clients.
//!
//! A node is one actor ([`node::Node`]) that owns every piece of state — the Raft groups
//! ([`MultiRaft`]: the metadata group and the partitions hosted here), the metadata image,
//! the partition leadership table, idempotent producer state, group coordinators — and runs
//! one loop over the [`Clock`], the [`Network`] and a command channel. Kafka connections are
//! separate tasks: they decode requests, send them to the actor and write back its answers
//! ([`BrokerHandle`] implements [`RequestHandler`]). Everything the actor does is
//! deterministic given its inputs, and it touches the world only through the IO traits, so
//! the same broker runs over Tokio/TCP/files in production and inside the simulator.

pub mod metrics;
mod node;
pub mod producer_state;
pub mod rpc;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fjord_log::Disk;
use fjord_replication::raft::RaftConfig;
use fjord_replication::{BoxFuture, Clock, DiskJobs, IoWait, Network, NodeId, Spawner};
use futures::channel::{mpsc, oneshot};
use futures::FutureExt;
use kafka_protocol::messages::ResponseKind;

use crate::controller::ClusterDefaults;
use crate::kafka::codec::DecodedRequest;
use crate::kafka::server::{RequestContext, RequestHandler};

pub use node::BrokerStatus;

use metrics::{BrokerMetrics, NodeMetrics, RequestMetrics, RequestSize};

/// What a broker needs from the world.
#[derive(Clone)]
pub struct BrokerIo {
    pub clock: Arc<dyn Clock>,
    pub network: Arc<dyn Network>,
    pub disk: Arc<dyn Disk>,
    pub spawner: Arc<dyn Spawner>,
    /// Awaited after each round's disk IO (the simulator's device latency; `None` in
    /// production).
    pub io_wait: Option<IoWait>,
    /// Runs each round's fsyncs (`None`: in order on the broker's task).
    pub disk_jobs: Option<Arc<dyn DiskJobs>>,
}

/// Deliberate bugs for the simulator (all off in production).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerBugs {
    pub raft: fjord_replication::raft::RaftBugs,
    /// acks=all is answered once the leader appended the batch, before a quorum has it.
    pub ack_before_quorum: bool,
}

/// One broker's settings.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    /// Advertised Kafka listener.
    pub host: String,
    pub kafka_port: u16,
    pub rack: Option<String>,
    /// Advertised node-to-node address (informational: the network resolves peers).
    pub rpc_addr: String,
    /// The metadata (controller) quorum. Every voter creates the metadata group at its
    /// first start; other brokers join it as learners.
    pub controller_voters: BTreeSet<NodeId>,
    /// Directory on the broker's disk holding its data.
    pub data_dir: PathBuf,
    pub defaults: ClusterDefaults,
    /// Interval between Raft ticks.
    pub tick: Duration,
    /// Template of every Raft group's timing (ticks).
    pub raft: RaftConfig,
    /// Seed of this incarnation: election jitter, member ids, incarnation number.
    pub seed: u64,
    /// Cluster id written at bootstrap (a seeded random one if `None`).
    pub cluster_id: Option<String>,
    /// Whether Metadata requests may create missing topics (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// How often leaders move partitions back to their preferred replica (0: never).
    pub leader_balance_interval: Duration,
    /// How often retention and compaction run over the local partitions.
    pub log_maintenance_interval: Duration,
    /// Consumer-group coordinator settings (Kafka's `group.*`, `offsets.retention.*`).
    pub group: crate::group::GroupConfig,
    pub bugs: BrokerBugs,
}

impl BrokerConfig {
    /// Defaults for a node of a cluster whose controllers are `voters`.
    pub fn new(node_id: NodeId, voters: BTreeSet<NodeId>, seed: u64) -> Self {
        BrokerConfig {
            node_id,
            host: "127.0.0.1".into(),
            kafka_port: 9092,
            rack: None,
            rpc_addr: String::new(),
            controller_voters: voters,
            data_dir: PathBuf::new(),
            defaults: ClusterDefaults::default(),
            tick: Duration::from_millis(10),
            raft: RaftConfig::new(node_id, seed),
            seed,
            cluster_id: None,
            auto_create_topics: true,
            leader_balance_interval: Duration::from_secs(30),
            log_maintenance_interval: Duration::from_secs(5),
            group: crate::group::GroupConfig::default(),
            bugs: BrokerBugs::default(),
        }
    }
}

/// Why a broker stopped.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Driver(#[from] fjord_replication::multiraft::DriverError),
    #[error("metadata: {0}")]
    Metadata(String),
    /// A log served data failing its checksum; it is verified (and cut) at restart.
    #[error("corrupt log: {0}")]
    Corrupt(String),
}

/// Requests to the broker's actor.
pub(crate) enum Command {
    Kafka {
        ctx: Box<RequestContext>,
        request: Box<DecodedRequest>,
        reply: oneshot::Sender<Option<ResponseKind>>,
    },
    Status {
        reply: oneshot::Sender<BrokerStatus>,
    },
    Metrics {
        reply: oneshot::Sender<NodeMetrics>,
    },
    /// Hand leaderships to other replicas, sync, and stop.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle to a running broker: serves Kafka requests (as a [`RequestHandler`]) and
/// answers status queries. Cloneable; the broker stops when asked to or when every handle
/// is dropped.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// The broker's clock: request latencies are measured on it.
    clock: Arc<dyn Clock>,
    requests: Arc<Mutex<RequestMetrics>>,
}

impl BrokerHandle {
    /// A snapshot of the broker's state, for tests, metrics and the simulator.
    pub async fn status(&self) -> Option<BrokerStatus> {
        let (reply, rx) = oneshot::channel();
        self.tx.unbounded_send(Command::Status { reply }).ok()?;
        rx.await.ok()
    }

    /// Request counters and a snapshot of the broker's state, for Prometheus.
    pub async fn metrics(&self) -> Option<BrokerMetrics> {
        let (reply, rx) = oneshot::channel();
        self.tx.unbounded_send(Command::Metrics { reply }).ok()?;
        let node = rx.await.ok()?;
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(BrokerMetrics { node, requests })
    }

    /// Graceful shutdown: leaderships are transferred away first.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.unbounded_send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

impl RequestHandler for BrokerHandle {
    fn handle(
        &self,
        ctx: RequestContext,
        request: DecodedRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        let start = self.clock.now();
        let api_key = request.header.request_api_key;
        let size = RequestSize::of(&request.body);
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.unbounded_send(Command::Kafka {
            ctx: Box::new(ctx),
            request: Box::new(request),
            reply,
        });
        let (clock, requests) = (Arc::clone(&self.clock), Arc::clone(&self.requests));
        async move {
            if sent.is_err() {
                return None;
            }
            let response = rx.await.ok().flatten();
            let latency = metrics::since(clock.as_ref(), start);
            requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(api_key, size, response.as_ref(), latency);
            response
        }
        .boxed()
    }
}

/// Opens the broker's storage and returns its handle and the future that runs it (the
/// caller spawns or awaits it). The future ends with `Ok` after a shutdown, or with the
/// error that stopped the node (a disk failure: restart it to recover).
pub fn start(
    io: BrokerIo,
    config: BrokerConfig,
) -> Result<(BrokerHandle, BoxFuture<'static, Result<(), BrokerError>>), BrokerError> {
    let (tx, rx) = mpsc::unbounded();
    let clock = Arc::clone(&io.clock);
    let node = node::Node::open(io, config)?;
    let handle = BrokerHandle {
        tx,
        clock,
        requests: Arc::default(),
    };
    Ok((handle, node.run(rx).boxed()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use fjord_log::testing::MemDisk;
    use fjord_replication::testing::{FrozenClock, ManualNetwork};
    use fjord_replication::Envelope;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;

    use super::*;

    /// The broker spawns nothing; tasks would be dropped.
    struct NoSpawner;

    impl Spawner for NoSpawner {
        fn spawn(&self, _: &'static str, _: BoxFuture<'static, ()>) {}
    }

    /// A broker on doubles: its handle, its loop, and the sender of its network inbox.
    fn broker() -> (
        BrokerHandle,
        BoxFuture<'static, Result<(), BrokerError>>,
        mpsc::UnboundedSender<Envelope>,
    ) {
        let (net_tx, inbox) = mpsc::unbounded();
        let io = BrokerIo {
            clock: Arc::new(FrozenClock),
            network: Arc::new(ManualNetwork::new(NodeId(1), inbox)),
            disk: Arc::new(MemDisk::new(1)),
            spawner: Arc::new(NoSpawner),
            io_wait: None,
            disk_jobs: None,
        };
        let config = BrokerConfig::new(NodeId(1), BTreeSet::from([NodeId(1)]), 1);
        let (handle, run) = start(io, config).expect("start");
        (handle, run, net_tx)
    }

    /// Polls the broker's loop until nothing can make progress; whether it ended with `Ok`.
    fn runs_to_completion(run: BoxFuture<'static, Result<(), BrokerError>>) -> bool {
        let ended = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&ended);
        let mut pool = LocalPool::new();
        pool.spawner()
            .spawn_local(async move {
                let ok = run.await.is_ok();
                *slot.lock().expect("slot") = Some(ok);
            })
            .expect("spawn");
        pool.run_until_stalled();
        let ended = ended.lock().expect("slot").take();
        ended == Some(true)
    }

    /// The round that takes a frame from the network drains the command channel with
    /// `try_recv`: that is where it finds the channel closed, and the only place it can.
    #[test]
    fn stops_when_the_last_handle_is_dropped_while_a_frame_is_ready() {
        let (handle, run, net_tx) = broker();
        net_tx
            .unbounded_send(Envelope {
                from: NodeId(2),
                to: NodeId(1),
                payload: Bytes::from_static(b"not a node message"),
            })
            .expect("queued");
        drop(handle);
        assert!(runs_to_completion(run), "the broker outlived its handles");
    }

    /// A command and then the end of the channel: the command is answered, then the
    /// broker stops.
    #[test]
    fn answers_the_last_command_then_stops() {
        let (handle, run, _net_tx) = broker();
        let (reply, mut answer) = oneshot::channel();
        handle
            .tx
            .unbounded_send(Command::Status { reply })
            .expect("queued");
        drop(handle);
        assert!(runs_to_completion(run), "the broker outlived its handles");
        assert!(matches!(answer.try_recv(), Ok(Some(_))), "not answered");
    }
}
