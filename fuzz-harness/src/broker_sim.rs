//! A single-node broker run deterministically: fake time, an in-memory network and a
//! [`MemDisk`], all polled by one [`LocalPool`]. Time moves only when every task is stalled,
//! and then jumps to the next timer, so a run depends on nothing but its input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use fjord::broker::{self, BrokerConfig, BrokerError, BrokerHandle, BrokerIo, BrokerStatus};
use fjord::controller::ClusterDefaults;
use fjord_log::testing::MemDisk;
use fjord_replication::{BoxFuture, Clock, Envelope, Instant, Network, NodeId, Spawner};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;

/// The broker's node id; peers are every other id.
pub const NODE: NodeId = NodeId(1);
/// The cluster id of the broker (node connections must name it in their hello).
pub const CLUSTER_ID: &str = "fuzz-cluster";
/// Wall clock at time zero (Kafka timestamps, retention).
const WALL_CLOCK_START_MS: i64 = 1_700_000_000_000;
/// Fake time a boot may take before the broker counts as stuck.
const BOOT_TIME_MAX_MS: u64 = 20_000;
/// Fake time after registering until the broker is surely unfenced (one heartbeat).
const UNFENCE_TIME_MS: u64 = 1_100;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct TimeState {
    now_nanos: u64,
    next_timer: u64,
    /// (deadline, timer id) -> the waker of the sleep waiting for it.
    timers: BTreeMap<(u64, u64), Option<Waker>>,
}

/// Fake time shared by the clock and the driver.
#[derive(Clone, Default)]
pub struct FakeTime(Arc<Mutex<TimeState>>);

impl FakeTime {
    pub fn now_ms(&self) -> u64 {
        lock(&self.0).now_nanos / 1_000_000
    }

    /// Jumps to the earliest pending timer and wakes every timer due then. `false` if no
    /// timer is pending.
    pub fn advance(&self) -> bool {
        let mut t = lock(&self.0);
        let Some((&(deadline, _), _)) = t.timers.iter().next() else {
            return false;
        };
        t.now_nanos = t.now_nanos.max(deadline);
        let now = t.now_nanos;
        let due: Vec<(u64, u64)> = t.timers.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
        for key in due {
            if let Some(Some(waker)) = t.timers.remove(&key) {
                waker.wake();
            }
        }
        true
    }
}

struct Sleep {
    time: FakeTime,
    key: (u64, u64),
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut t = lock(&self.time.0);
        if t.now_nanos >= self.key.0 {
            t.timers.remove(&self.key);
            return Poll::Ready(());
        }
        t.timers.insert(self.key, Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        lock(&self.time.0).timers.remove(&self.key);
    }
}

impl Clock for FakeTime {
    fn now(&self) -> Instant {
        Instant::from_nanos(lock(&self.0).now_nanos)
    }

    fn wall_clock_ms(&self) -> i64 {
        WALL_CLOCK_START_MS + self.now_ms() as i64
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut t = lock(&self.0);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let id = t.next_timer;
        t.next_timer += 1;
        let key = (t.now_nanos.saturating_add(nanos), id);
        t.timers.insert(key, None);
        Box::pin(Sleep {
            time: self.clone(),
            key,
        })
    }
}

#[derive(Default)]
struct NetState {
    inbox: VecDeque<Envelope>,
    waker: Option<Waker>,
    sent: usize,
}

/// The broker's network endpoint: frames the driver injects arrive in order; what the
/// broker sends to peers (there are none that answer) is counted and dropped.
#[derive(Clone, Default)]
pub struct FakeNetwork(Arc<Mutex<NetState>>);

impl FakeNetwork {
    pub fn inject(&self, from: NodeId, payload: Bytes) {
        let mut n = lock(&self.0);
        n.inbox.push_back(Envelope {
            from,
            to: NODE,
            payload,
        });
        if let Some(w) = n.waker.take() {
            w.wake();
        }
    }
}

struct Recv(FakeNetwork);

impl Future for Recv {
    type Output = Envelope;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Envelope> {
        let mut n = lock(&(self.0).0);
        match n.inbox.pop_front() {
            Some(env) => Poll::Ready(env),
            None => {
                n.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Network for FakeNetwork {
    fn local_id(&self) -> NodeId {
        NODE
    }

    fn send(&self, _to: NodeId, _payload: Bytes) {
        lock(&self.0).sent += 1;
    }

    fn recv(&self) -> BoxFuture<'_, Envelope> {
        Box::pin(Recv(self.clone()))
    }
}

/// Collects spawned tasks; the driver moves them onto its pool.
#[derive(Clone, Default)]
struct QueueSpawner(Arc<Mutex<Vec<BoxFuture<'static, ()>>>>);

impl Spawner for QueueSpawner {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        lock(&self.0).push(task);
    }
}

/// How the broker's future ended, once it has.
type Outcome = Arc<Mutex<Option<Result<(), BrokerError>>>>;

/// A booted single-node broker and the means to drive it.
pub struct SimBroker {
    pub pool: LocalPool,
    pub time: FakeTime,
    pub network: FakeNetwork,
    spawner: QueueSpawner,
    pub handle: BrokerHandle,
    outcome: Outcome,
}

impl SimBroker {
    /// Boots a broker on a fresh [`MemDisk`] and runs it until it is registered and
    /// unfenced. Small Raft timeouts keep boots short.
    pub fn boot() -> SimBroker {
        let time = FakeTime::default();
        let network = FakeNetwork::default();
        let spawner = QueueSpawner::default();
        let io = BrokerIo {
            clock: Arc::new(time.clone()),
            network: Arc::new(network.clone()),
            disk: Arc::new(MemDisk::new(7)),
            spawner: Arc::new(spawner.clone()),
            io_wait: None,
            disk_jobs: None,
        };
        let mut config = BrokerConfig::new(NODE, BTreeSet::from([NODE]), 7);
        config.data_dir = "broker".into();
        config.rpc_addr = "127.0.0.1:19093".into();
        config.cluster_id = Some(CLUSTER_ID.into());
        config.raft.election_timeout_min_ticks = 2;
        config.raft.election_timeout_max_ticks = 3;
        config.raft.heartbeat_interval_ticks = 1;
        config.defaults = ClusterDefaults {
            offsets_topic_num_partitions: 2,
            offsets_topic_replication_factor: 1,
            ..ClusterDefaults::default()
        };
        let (handle, run) = broker::start(io, config).expect("a broker boots on an empty MemDisk");
        let pool = LocalPool::new();
        let outcome: Outcome = Arc::default();
        let slot = Arc::clone(&outcome);
        pool.spawner()
            .spawn_local(async move {
                let result = run.await;
                *lock(&slot) = Some(result);
            })
            .expect("pool accepts tasks");
        let mut sim = SimBroker {
            pool,
            time,
            network,
            spawner,
            handle,
            outcome,
        };
        let start = sim.time.now_ms();
        loop {
            let status = sim.status().expect("a booting broker answers");
            if status.registered && status.metadata_leader == Some(NODE) {
                break;
            }
            assert!(
                sim.time.now_ms() - start < BOOT_TIME_MAX_MS,
                "broker did not boot: {status:?}"
            );
            sim.run_until_stalled();
            sim.time.advance();
        }
        // The first heartbeat after registering unfences the broker.
        sim.run_until(UNFENCE_TIME_MS, |_| false);
        sim
    }

    /// Polls every task until none can make progress without time passing.
    pub fn run_until_stalled(&mut self) {
        loop {
            self.pool.run_until_stalled();
            let spawned: Vec<_> = std::mem::take(&mut *lock(&self.spawner.0));
            if spawned.is_empty() {
                return;
            }
            for task in spawned {
                self.pool
                    .spawner()
                    .spawn_local(task)
                    .expect("pool accepts tasks");
            }
        }
    }

    /// Runs until `done` holds (checked whenever tasks stall) or `budget_ms` of fake time
    /// passed. Returns whether `done` held.
    pub fn run_until(&mut self, budget_ms: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = self.time.now_ms().saturating_add(budget_ms);
        loop {
            self.run_until_stalled();
            if done(self) {
                return true;
            }
            if self.time.now_ms() >= deadline || self.stopped() || !self.time.advance() {
                return done(self);
            }
        }
    }

    /// Whether the broker's future has ended (with `Ok` after a shutdown, or an error).
    pub fn stopped(&self) -> bool {
        lock(&self.outcome).is_some()
    }

    /// Takes the broker's result once it stopped.
    pub fn outcome(&self) -> Option<Result<(), BrokerError>> {
        lock(&self.outcome).take()
    }

    /// The broker's status, or `None` once it stopped.
    pub fn status(&mut self) -> Option<BrokerStatus> {
        let handle = self.handle.clone();
        let slot: Arc<Mutex<Option<Option<BrokerStatus>>>> = Arc::default();
        let out = Arc::clone(&slot);
        self.pool
            .spawner()
            .spawn_local(async move {
                let status = handle.status().await;
                *lock(&out) = Some(status);
            })
            .expect("pool accepts tasks");
        self.run_until_stalled();
        let answered = lock(&slot).take();
        answered.flatten()
    }

    /// The broker's own invariants, checked on its status: no group commits beyond its log
    /// end or below its log start, nothing durable beyond the end.
    pub fn check_invariants(&mut self) {
        let Some(status) = self.status() else {
            return;
        };
        for (group, s) in &status.groups {
            assert!(
                s.log_start <= s.commit_end && s.commit_end <= s.log_end,
                "{group}: commit end {} outside the log [{}, {}]",
                s.commit_end,
                s.log_start,
                s.log_end
            );
            assert!(
                s.durable_end <= s.log_end,
                "{group}: durable end beyond the log end"
            );
        }
    }
}
