//! Test support: a single-threaded executor with virtual time, and in-memory brokers whose
//! behaviour a test writes as a small [`RequestHandler`] served by the real
//! `serve_connection` loop.
//!
//! Time only moves when every task is blocked: then the clock jumps to the earliest pending
//! sleep. So timeouts and backoffs cost no real time and runs are deterministic.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use fjord_replication::{BoxFuture, Clock, Instant, Spawner};
use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

mod mini;

pub(crate) use mini::{Fault, MiniCluster};

use super::cluster::{Client, ClientConfig};
use super::conn::Connector;
use crate::kafka::codec::DecodedRequest;
use crate::kafka::server::{
    memory_connection_pair, serve_connection, ConnectionLimits, FrameConnection, RequestContext,
    RequestHandler,
};

#[derive(Default)]
struct ClockState {
    now_nanos: u64,
    next_id: u64,
    sleepers: BTreeMap<u64, (u64, Option<Waker>)>,
}

/// A clock that moves only when [`TestEnv::run`] advances it.
#[derive(Clone, Default)]
pub(crate) struct VirtualClock {
    state: Arc<Mutex<ClockState>>,
}

impl VirtualClock {
    /// Jumps to the earliest sleep deadline and wakes those sleepers; false if none.
    fn advance(&self) -> bool {
        let mut s = self.state.lock().expect("clock lock");
        let Some(deadline) = s.sleepers.values().map(|(d, _)| *d).min() else {
            return false;
        };
        s.now_nanos = s.now_nanos.max(deadline);
        let now = s.now_nanos;
        for (d, waker) in s.sleepers.values_mut() {
            if *d <= now {
                if let Some(w) = waker.take() {
                    w.wake();
                }
            }
        }
        true
    }
}

struct Sleep {
    state: Arc<Mutex<ClockState>>,
    id: u64,
    deadline: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock().expect("clock lock");
        if s.now_nanos >= self.deadline {
            s.sleepers.remove(&self.id);
            return Poll::Ready(());
        }
        s.sleepers
            .insert(self.id, (self.deadline, Some(cx.waker().clone())));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.sleepers.remove(&self.id);
        }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.state.lock().expect("clock lock").now_nanos)
    }
    fn wall_clock_ms(&self) -> i64 {
        1_700_000_000_000 + (self.now().as_nanos() / 1_000_000) as i64
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut s = self.state.lock().expect("clock lock");
        let id = s.next_id;
        s.next_id += 1;
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let deadline = s.now_nanos.saturating_add(nanos);
        Box::pin(Sleep {
            state: self.state.clone(),
            id,
            deadline,
        })
    }
}

/// Hands spawned tasks to the test's pool.
pub(crate) struct TestSpawner(mpsc::UnboundedSender<BoxFuture<'static, ()>>);

impl Spawner for TestSpawner {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        let _ = self.0.unbounded_send(task);
    }
}

struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub(crate) struct TestEnv {
    pool: LocalPool,
    pub(crate) spawner: Arc<TestSpawner>,
    pub(crate) clock: VirtualClock,
}

impl TestEnv {
    pub(crate) fn new() -> TestEnv {
        let pool = LocalPool::new();
        let (tx, mut rx) = mpsc::unbounded::<BoxFuture<'static, ()>>();
        let local = pool.spawner();
        pool.spawner()
            .spawn_local(async move {
                while let Some(task) = rx.next().await {
                    local.spawn_local(task).expect("pool alive");
                }
            })
            .expect("pool alive");
        TestEnv {
            pool,
            spawner: Arc::new(TestSpawner(tx)),
            clock: VirtualClock::default(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Runs `fut` (and every spawned task) to completion, advancing virtual time whenever
    /// everything is blocked. Panics if nothing can ever move, or after `limit` of virtual
    /// time.
    pub(crate) fn run_for<F: Future>(&mut self, limit: Duration, fut: F) -> F::Output {
        let start = self.clock.now();
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            self.pool.run_until_stalled();
            if flag.0.swap(false, Ordering::SeqCst) {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
                continue;
            }
            assert!(
                self.clock.now().saturating_duration_since(start) <= limit,
                "test ran past its virtual time limit of {limit:?}"
            );
            assert!(
                self.clock.advance(),
                "deadlock: nothing runnable, no timers"
            );
        }
    }

    pub(crate) fn run<F: Future>(&mut self, fut: F) -> F::Output {
        self.run_for(Duration::from_secs(3600), fut)
    }

    /// Lets spawned tasks run (without advancing time).
    pub(crate) fn settle(&mut self) {
        self.pool.run_until_stalled();
    }

    pub(crate) fn client(&self, net: &Arc<StubNetwork>, config: ClientConfig) -> Client {
        Client::new(
            net.clone(),
            Arc::new(self.clock.clone()),
            self.spawner.clone(),
            config,
        )
    }
}

/// In-memory brokers: each address is served by a handler through `serve_connection`.
pub(crate) struct StubNetwork {
    spawner: Arc<TestSpawner>,
    handlers: Mutex<BTreeMap<String, Arc<dyn RequestHandler>>>,
    pub(crate) connects: AtomicUsize,
}

impl StubNetwork {
    pub(crate) fn new(env: &TestEnv) -> Arc<StubNetwork> {
        Arc::new(StubNetwork {
            spawner: env.spawner.clone(),
            handlers: Mutex::new(BTreeMap::new()),
            connects: AtomicUsize::new(0),
        })
    }

    pub(crate) fn serve(&self, addr: &str, handler: Arc<dyn RequestHandler>) {
        self.handlers
            .lock()
            .expect("handlers")
            .insert(addr.to_string(), handler);
    }

    /// Connections to `addr` are refused from now on.
    pub(crate) fn stop(&self, addr: &str) {
        self.handlers.lock().expect("handlers").remove(addr);
    }
}

impl Connector for StubNetwork {
    fn connect(&self, addr: &str) -> BoxFuture<'_, io::Result<Box<dyn FrameConnection>>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let handler = self.handlers.lock().expect("handlers").get(addr).cloned();
        let Some(handler) = handler else {
            return Box::pin(futures::future::ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "refused",
            ))));
        };
        let (client, server) = memory_connection_pair(64, "client", addr);
        let id = self.connects.load(Ordering::SeqCst) as u64;
        self.spawner.spawn(
            "stub-broker",
            Box::pin(async move {
                serve_connection(Box::new(server), handler, ConnectionLimits::default(), id).await;
            }),
        );
        Box::pin(futures::future::ready(Ok(
            Box::new(client) as Box<dyn FrameConnection>
        )))
    }
}

/// A handler written as a closure over the decoded request.
pub(crate) struct FnHandler<F>(pub(crate) F);

impl<F> RequestHandler for FnHandler<F>
where
    F: Fn(RequestContext, DecodedRequest) -> BoxFuture<'static, Option<ResponseKind>>
        + Send
        + Sync
        + 'static,
{
    fn handle(
        &self,
        ctx: RequestContext,
        request: DecodedRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        (self.0)(ctx, request)
    }
}

/// A Metadata response: `brokers` as (id, address "host:port"), `topics` as (name,
/// leaders by partition).
pub(crate) fn metadata_response(
    brokers: &[(i32, &str)],
    topics: &[(&str, &[i32])],
) -> MetadataResponse {
    MetadataResponse::default()
        .with_cluster_id(Some(StrBytes::from_static_str("test-cluster")))
        .with_controller_id(BrokerId(brokers.first().map_or(-1, |b| b.0)))
        .with_brokers(
            brokers
                .iter()
                .map(|(id, addr)| {
                    let (host, port) = addr.rsplit_once(':').expect("host:port");
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(*id))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(port.parse().expect("port"))
                })
                .collect(),
        )
        .with_topics(
            topics
                .iter()
                .map(|(name, leaders)| {
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                        .with_partitions(
                            leaders
                                .iter()
                                .enumerate()
                                .map(|(i, leader)| {
                                    MetadataResponsePartition::default()
                                        .with_partition_index(i as i32)
                                        .with_leader_id(BrokerId(*leader))
                                        .with_leader_epoch(1)
                                        .with_replica_nodes(vec![BrokerId(*leader)])
                                        .with_isr_nodes(vec![BrokerId(*leader)])
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}
