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

/// What the next Produce request meets (then the fault is used up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Append, then never answer (the client times out not knowing).
    AppendThenHang,
    /// Answer every partition with this error code, append nothing.
    Error(i16),
}

type Tp = (String, i32);
/// An idempotent producer on one partition: epoch, last sequence, base offset by base
/// sequence.
type ProducerEntry = (i16, i32, BTreeMap<i32, i64>);

#[derive(Default)]
pub(crate) struct MiniState {
    pub(crate) partitions: BTreeMap<String, i32>,
    /// Stored batches per partition, with their base offsets.
    pub(crate) logs: BTreeMap<Tp, Vec<(i64, bytes::Bytes)>>,
    /// Per (producer id, partition): epoch, last sequence, and base offset by base sequence.
    producers: BTreeMap<(i64, Tp), ProducerEntry>,
    next_producer_id: i64,
    pub(crate) leader: i32,
    pub(crate) faults: std::collections::VecDeque<Fault>,
    pub(crate) produce_requests: usize,
    pub(crate) metadata_requests: usize,
    /// Metadata requests answered UNKNOWN_TOPIC_OR_PARTITION before topics appear.
    pub(crate) hide_topics_for: usize,
}

/// A tiny broker cluster for client tests: partitions of topics with an in-memory log,
/// Kafka's idempotent sequence checks, one leader for everything, and scripted faults.
/// `brokers` are (node id, address); a broker that is not the leader answers Produce with
/// NOT_LEADER_OR_FOLLOWER.
pub(crate) struct MiniCluster {
    pub(crate) brokers: Vec<(i32, String)>,
    pub(crate) state: Mutex<MiniState>,
}

impl MiniCluster {
    pub(crate) fn start(
        net: &StubNetwork,
        brokers: &[(i32, &str)],
        topics: &[(&str, i32)],
    ) -> Arc<MiniCluster> {
        let cluster = Arc::new(MiniCluster {
            brokers: brokers.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            state: Mutex::new(MiniState {
                partitions: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
                leader: brokers[0].0,
                next_producer_id: 1000,
                ..MiniState::default()
            }),
        });
        for (node, addr) in brokers {
            let c = cluster.clone();
            let node = *node;
            net.serve(
                addr,
                Arc::new(FnHandler(
                    move |_ctx: RequestContext, req: DecodedRequest| c.handle(node, req),
                )),
            );
        }
        cluster
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, MiniState> {
        self.state.lock().expect("mini cluster")
    }

    /// Values stored in `topic`-`partition`, in offset order.
    pub(crate) fn values(&self, topic: &str, partition: i32) -> Vec<(i64, Option<bytes::Bytes>)> {
        let state = self.state();
        let mut out = Vec::new();
        for (_, batch) in state
            .logs
            .get(&(topic.to_string(), partition))
            .into_iter()
            .flatten()
        {
            for r in fjord_log::decode_records(batch).expect("stored batch decodes") {
                out.push((r.offset as i64, r.value));
            }
        }
        out
    }

    fn handle(
        self: &Arc<Self>,
        node: i32,
        req: DecodedRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        use kafka_protocol::messages::RequestKind;
        match req.body {
            RequestKind::Metadata(_) => {
                let mut s = self.state();
                s.metadata_requests += 1;
                let hide = s.hide_topics_for > 0;
                s.hide_topics_for = s.hide_topics_for.saturating_sub(1);
                let brokers: Vec<(i32, &str)> =
                    self.brokers.iter().map(|(i, a)| (*i, a.as_str())).collect();
                let leaders: Vec<(String, Vec<i32>)> = s
                    .partitions
                    .iter()
                    .map(|(t, n)| (t.clone(), vec![s.leader; *n as usize]))
                    .collect();
                let topics: Vec<(&str, &[i32])> = leaders
                    .iter()
                    .map(|(t, l)| (t.as_str(), l.as_slice()))
                    .collect();
                let mut response = metadata_response(&brokers, if hide { &[] } else { &topics });
                if hide {
                    for (t, _) in &leaders {
                        response.topics.push(
                            MetadataResponseTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                                .with_error_code(3),
                        );
                    }
                }
                ready(ResponseKind::Metadata(response))
            }
            RequestKind::InitProducerId(_) => {
                let mut s = self.state();
                let id = s.next_producer_id;
                s.next_producer_id += 1;
                ready(ResponseKind::InitProducerId(
                    kafka_protocol::messages::InitProducerIdResponse::default()
                        .with_producer_id(kafka_protocol::messages::ProducerId(id))
                        .with_producer_epoch(0),
                ))
            }
            RequestKind::Produce(p) => self.produce(node, p),
            other => panic!("mini cluster: unexpected request {other:?}"),
        }
    }

    fn produce(
        &self,
        node: i32,
        request: kafka_protocol::messages::ProduceRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let mut s = self.state();
        s.produce_requests += 1;
        let fault = s.faults.pop_front();
        let not_leader = node != s.leader;
        let mut topics = Vec::new();
        for t in &request.topic_data {
            let mut partitions = Vec::new();
            for p in &t.partition_data {
                let tp: Tp = (t.name.0.to_string(), p.index);
                let (code, base) = match fault {
                    _ if not_leader => (6, -1),
                    Some(Fault::Error(code)) => (code, -1),
                    _ => s.append(&tp, p.records.clone().expect("records")),
                };
                partitions.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(code)
                        .with_base_offset(base)
                        .with_log_append_time_ms(-1),
                );
            }
            topics.push(
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(partitions),
            );
        }
        if request.acks == 0 {
            return Box::pin(futures::future::ready(None));
        }
        let response = ResponseKind::Produce(
            kafka_protocol::messages::ProduceResponse::default().with_responses(topics),
        );
        match fault {
            Some(Fault::AppendThenHang) if !not_leader => Box::pin(futures::future::pending()),
            _ => ready(response),
        }
    }
}

impl MiniState {
    /// Appends a batch with Kafka's idempotence checks: (error code, base offset).
    fn append(&mut self, tp: &Tp, batch: bytes::Bytes) -> (i16, i64) {
        if self.partitions.get(&tp.0).is_none_or(|n| tp.1 >= *n) {
            return (3, -1);
        }
        let header = fjord_log::BatchHeader::validate_produced(&batch).expect("valid batch");
        let count = header.records_count;
        let log = self.logs.entry(tp.clone()).or_default();
        let next = log.last().map_or(0, |(base, b)| {
            let h = fjord_log::BatchHeader::parse(b).expect("stored");
            base + i64::from(h.last_offset_delta) + 1
        });
        if header.producer_id >= 0 {
            let key = (header.producer_id, tp.clone());
            let seq = header.base_sequence;
            match self.producers.get(&key) {
                Some((epoch, _, _)) if header.producer_epoch < *epoch => return (47, -1),
                Some((epoch, last, bases)) if header.producer_epoch == *epoch => {
                    if let Some(base) = bases.get(&seq) {
                        return (0, *base);
                    }
                    if seq != last + 1 {
                        return (45, -1);
                    }
                }
                Some(_) if seq != 0 => return (45, -1),
                _ => {}
            }
            let entry =
                self.producers
                    .entry(key)
                    .or_insert((header.producer_epoch, -1, BTreeMap::new()));
            if entry.0 != header.producer_epoch {
                *entry = (header.producer_epoch, -1, BTreeMap::new());
            }
            entry.1 = seq + count - 1;
            entry.2.insert(seq, next);
        }
        let mut stored = batch.to_vec();
        fjord_log::batch::set_base_offset(&mut stored, next as u64).expect("offset fits");
        log.push((next, bytes::Bytes::from(stored)));
        (0, next)
    }
}

fn ready(response: ResponseKind) -> BoxFuture<'static, Option<ResponseKind>> {
    Box::pin(futures::future::ready(Some(response)))
}
