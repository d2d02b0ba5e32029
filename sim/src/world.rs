//! A simulated world: server nodes with their devices and clocks, clients, the network, and
//! the node lifecycle the fault scheduler drives.
//!
//! Each fjord server node is one madsim node whose *init* task runs one incarnation of the
//! workload's node body; madsim re-runs it on restart. Lifecycle:
//!
//! * **crash** — madsim kills the node (every task it spawned is dropped: all memory state is
//!   gone), its network endpoint goes down (messages to it are dropped) and its device loses
//!   power ([`MemDisk::crash`](fjord_log::testing::MemDisk::crash): unsynced writes dropped or
//!   torn). A process crash is modelled as a machine crash, the harsher of the two.
//! * **restart** — a new incarnation: fresh endpoint, fresh [`SimDisk`] view of the same
//!   device, same clock (the machine kept running), new per-incarnation seed.
//! * **pause** — madsim stops polling the node's tasks; timers and messages pile up, and on
//!   **resume** the node carries on with stale beliefs (a GC pause, a SIGSTOP, a VM migration).
//! * **power loss** — every server crashes at once.
//! * **stop** — the node body returned, or a `sync` failed: the node is treated as crashed and
//!   restarted shortly after by the world's keeper task. It never continues.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fjord_replication::{BoxFuture, Instant, NodeId, Spawner};
use futures::channel::mpsc;
use futures::StreamExt;
use madsim::runtime::{Handle, NodeHandle};
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::bugs::Bugs;
use crate::clock::SimClock;
use crate::disk::{SimDevice, SimDisk};
use crate::faults::{FaultClass, Swarm};
use crate::network::SimNet;
use crate::seed::{stream, Salt};
use crate::time;
use crate::trace::{node_span, Labelled};
use crate::workload::{ClientEnv, NodeIo, Recorder, Workload};

/// Spawns onto one simulated node (incarnation): killing the node drops the tasks. Every task
/// carries the node's trace label.
pub struct SimSpawner {
    node: NodeHandle,
    label: Arc<str>,
}

impl Spawner for SimSpawner {
    fn spawn(&self, _name: &'static str, task: BoxFuture<'static, ()>) {
        drop(self.node.spawn(Labelled::new(task, self.label.clone())));
    }
}

/// A running client, for [`World::stop_client`].
pub struct ClientHandle {
    node: NodeHandle,
    id: NodeId,
}

/// The supervisor's view of a server node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Paused,
    Down,
}

struct Slot {
    madsim: Option<madsim::task::NodeId>,
    state: NodeState,
    /// Incarnation of the latest start (`u32::MAX` before the first).
    incarnation: u32,
}

/// Delay between a node stopping on its own (failed sync, body returned) and its restart.
const STOPPED_RESTART_DELAY: Duration = Duration::from_millis(500);

/// A world: built once per run by the runner.
pub struct World {
    pub swarm: Swarm,
    pub bugs: Bugs,
    pub servers: Vec<NodeId>,
    pub net: Arc<SimNet>,
    pub recorder: Recorder,
    workload: Arc<dyn Workload>,
    devices: BTreeMap<NodeId, SimDevice>,
    clocks: BTreeMap<NodeId, SimClock>,
    slots: Mutex<BTreeMap<NodeId, Slot>>,
    /// Fault injections so far, per class (packet-level classes are added from the network's
    /// and devices' counters by [`World::fault_counts`]).
    injected: Mutex<BTreeMap<FaultClass, u64>>,
    /// Nodes that stopped on their own: `(node, incarnation, why)`, for the keeper.
    stopped_tx: mpsc::UnboundedSender<(NodeId, u32, String)>,
    stopped_rx: Mutex<Option<mpsc::UnboundedReceiver<(NodeId, u32, String)>>>,
    /// The node that runs the router and the keeper; never faulted.
    world_node: Mutex<Option<NodeHandle>>,
    /// Ids of the clients started so far.
    clients: Mutex<Vec<NodeId>>,
    /// The world's true wall time when it started.
    wall_ms: i64,
}

impl World {
    /// Builds the world of `swarm` (inside the runtime: clocks read simulated time).
    pub fn new(
        swarm: Swarm,
        bugs: Bugs,
        recorder: Recorder,
        workload: Arc<dyn Workload>,
    ) -> Arc<Self> {
        let seed = swarm.seed;
        let servers: Vec<NodeId> = (1..=swarm.cluster_size as u32).map(NodeId).collect();
        let mut disk_rng = stream(seed, Salt::Disk);
        let mut clock_rng = stream(seed, Salt::Clock);
        let wall_ms = world_wall_ms(&mut clock_rng);
        let devices = servers
            .iter()
            .map(|n| {
                let device = SimDevice::new(
                    disk_rng.next_u64(),
                    stream(disk_rng.next_u64(), Salt::Disk),
                    swarm.disk.clone(),
                );
                (*n, device)
            })
            .collect();
        let clocks = servers
            .iter()
            .map(|n| (*n, new_clock(&mut clock_rng, wall_ms)))
            .collect();
        let slots = servers
            .iter()
            .map(|n| {
                (
                    *n,
                    Slot {
                        madsim: None,
                        state: NodeState::Down,
                        incarnation: u32::MAX,
                    },
                )
            })
            .collect();
        let (stopped_tx, stopped_rx) = mpsc::unbounded();
        Arc::new(World {
            net: SimNet::new(stream(seed, Salt::Network), swarm.net.clone()),
            swarm,
            bugs,
            servers,
            recorder,
            workload,
            devices,
            clocks,
            slots: Mutex::new(slots),
            injected: Mutex::new(BTreeMap::new()),
            stopped_tx,
            stopped_rx: Mutex::new(Some(stopped_rx)),
            world_node: Mutex::new(None),
            clients: Mutex::new(Vec::new()),
            wall_ms,
        })
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<NodeId, Slot>> {
        self.slots.lock().expect("slots poisoned")
    }

    /// Starts the router, the keeper and every server node.
    pub fn start(self: &Arc<Self>) {
        let handle = Handle::current();
        let world_node = handle.create_node().name("world").build();
        world_node.spawn(self.net.router());
        let rx = self
            .stopped_rx
            .lock()
            .expect("keeper channel poisoned")
            .take()
            .expect("world started twice");
        world_node.spawn(self.clone().keeper(rx));
        *self.world_node.lock().expect("world node poisoned") = Some(world_node);
        for n in self.servers.clone() {
            let world = self.clone();
            self.slots().get_mut(&n).expect("server slot").state = NodeState::Up;
            let node = handle
                .create_node()
                .name(n.to_string())
                .init(move || world.clone().incarnation(n))
                .build();
            self.slots().get_mut(&n).expect("server slot").madsim = Some(node.id());
        }
    }

    /// One incarnation of server `n`: runs on `n`'s madsim node.
    async fn incarnation(self: Arc<Self>, n: NodeId) {
        let handle = Handle::current();
        let node = handle
            .get_node(madsim::plugin::node())
            .expect("an incarnation runs on its node");
        let incarnation = {
            let mut slots = self.slots();
            let slot = slots.get_mut(&n).expect("server slot");
            slot.incarnation = slot.incarnation.wrapping_add(1);
            slot.incarnation
        };
        let label: Arc<str> = format!("{n}.{incarnation}").into();
        let span = node_span(&label);
        let network = self.net.bring_up(n, incarnation);
        let world = Arc::downgrade(&self);
        let disk = SimDisk::new(
            n,
            incarnation,
            self.devices[&n].clone(),
            Arc::new(move |node, inc, why| {
                if let Some(world) = world.upgrade() {
                    world.stopped(node, inc, why);
                }
            }),
        );
        let io = NodeIo {
            id: n,
            incarnation,
            seed: stream(
                self.swarm.seed,
                Salt::Node {
                    node: n,
                    incarnation,
                },
            )
            .next_u64(),
            clock: Arc::new(self.clocks[&n].clone()),
            network,
            disk: Arc::new(disk.clone()),
            spawner: Arc::new(SimSpawner {
                node,
                label: label.clone(),
            }),
            bugs: self.bugs.clone(),
            sim_disk: disk,
        };
        tracing::debug!(parent: &span, "node starts");
        Labelled::new(self.workload.node(io), label).await;
        tracing::info!(parent: &span, "node body returned: the process exits");
        self.stopped(n, incarnation, "body returned".to_string());
    }

    /// Incarnation `incarnation` of `n` stopped on its own: cut it off at once, and let the
    /// keeper crash and restart it.
    fn stopped(&self, n: NodeId, incarnation: u32, why: String) {
        if self.net.is_up(n, incarnation) {
            self.net.take_down(n);
        }
        let _ = self.stopped_tx.unbounded_send((n, incarnation, why));
    }

    /// Crashes and restarts nodes that stopped on their own.
    async fn keeper(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(NodeId, u32, String)>) {
        while let Some((n, incarnation, why)) = rx.next().await {
            let current = self.slots().get(&n).map(|s| (s.incarnation, s.state));
            if current != Some((incarnation, NodeState::Up))
                && current != Some((incarnation, NodeState::Paused))
            {
                continue; // Already crashed (and maybe restarted) by the scheduler.
            }
            tracing::info!(node = %n, incarnation, %why, "node stopped: crash and restart");
            self.crash(n);
            let world = self.clone();
            self.world_node().spawn(async move {
                time::sleep(STOPPED_RESTART_DELAY).await;
                if world.state(n) == NodeState::Down {
                    world.restart(n);
                }
            });
        }
    }

    fn world_node(&self) -> NodeHandle {
        self.world_node
            .lock()
            .expect("world node poisoned")
            .clone()
            .expect("world started")
    }

    pub fn state(&self, n: NodeId) -> NodeState {
        self.slots().get(&n).expect("server slot").state
    }

    fn madsim_id(&self, n: NodeId) -> madsim::task::NodeId {
        self.slots()
            .get(&n)
            .and_then(|s| s.madsim)
            .expect("server node built")
    }

    /// Crashes `n` (no-op if it is down): see the module docs.
    pub fn crash(&self, n: NodeId) {
        if self.state(n) == NodeState::Down {
            return;
        }
        Handle::current().kill(self.madsim_id(n));
        self.net.take_down(n);
        self.devices[&n].crash();
        self.slots().get_mut(&n).expect("server slot").state = NodeState::Down;
        tracing::info!(node = %n, "crash");
    }

    /// Starts a new incarnation of `n`, crashing the current one first if it is not down.
    pub fn restart(&self, n: NodeId) {
        self.crash(n);
        self.slots().get_mut(&n).expect("server slot").state = NodeState::Up;
        tracing::info!(node = %n, "restart");
        Handle::current().restart(self.madsim_id(n));
    }

    /// Freezes `n` (no-op unless it is up).
    pub fn pause(&self, n: NodeId) {
        if self.state(n) != NodeState::Up {
            return;
        }
        Handle::current().pause(self.madsim_id(n));
        self.slots().get_mut(&n).expect("server slot").state = NodeState::Paused;
        tracing::info!(node = %n, "pause");
    }

    /// Resumes a paused `n` (no-op unless it is paused).
    pub fn resume(&self, n: NodeId) {
        if self.state(n) != NodeState::Paused {
            return;
        }
        Handle::current().resume(self.madsim_id(n));
        self.slots().get_mut(&n).expect("server slot").state = NodeState::Up;
        tracing::info!(node = %n, "resume");
    }

    /// The device of server `n`.
    pub fn device(&self, n: NodeId) -> &SimDevice {
        &self.devices[&n]
    }

    /// The clock of server `n`.
    pub fn clock(&self, n: NodeId) -> &SimClock {
        &self.clocks[&n]
    }

    /// Counts one injection of `class`.
    pub fn count(&self, class: FaultClass) {
        *self
            .injected
            .lock()
            .expect("fault counts poisoned")
            .entry(class)
            .or_default() += 1;
    }

    /// Faults injected so far, per class, including per-message and per-sync faults.
    pub fn fault_counts(&self) -> BTreeMap<FaultClass, u64> {
        let mut counts = self.injected.lock().expect("fault counts poisoned").clone();
        let net = self.net.stats();
        let sync_failures: u64 = self
            .devices
            .values()
            .map(|d| d.mem.stats().failed_syncs)
            .sum();
        for (class, n) in [
            (FaultClass::Loss, net.dropped_loss),
            (FaultClass::Duplicate, net.duplicated),
            (FaultClass::Reorder, net.delayed_reorder),
            (FaultClass::SyncFail, sync_failures),
        ] {
            if n > 0 {
                counts.insert(class, n);
            }
        }
        counts
    }

    /// Starts client `index` on its own node, running `body(env)`; returns a handle to stop
    /// it and the task's join handle.
    pub fn start_client<T: Send + 'static>(
        &self,
        index: usize,
        body: impl FnOnce(ClientEnv) -> BoxFuture<'static, T>,
    ) -> (ClientHandle, madsim::task::JoinHandle<T>) {
        let id = NodeId(1000 + index as u32);
        self.clients.lock().expect("clients poisoned").push(id);
        let node = Handle::current().create_node().name(id.to_string()).build();
        let label: Arc<str> = format!("c{index}").into();
        let mut clock_rng = stream(
            self.swarm.seed,
            Salt::Node {
                node: id,
                incarnation: 0,
            },
        );
        let env = ClientEnv {
            id,
            index,
            servers: self.servers.clone(),
            clock: Arc::new(new_clock(
                &mut clock_rng,
                self.wall_ms + time::now().as_millis() as i64,
            )),
            network: self.net.bring_up(id, 0),
            spawner: Arc::new(SimSpawner {
                node: node.clone(),
                label: label.clone(),
            }),
            seed: clock_rng.next_u64(),
            recorder: self.recorder.clone(),
        };
        let task = node.spawn(Labelled::new(body(env), label));
        (ClientHandle { node, id }, task)
    }

    /// Ids of the clients started so far.
    pub fn client_ids(&self) -> Vec<NodeId> {
        self.clients.lock().expect("clients poisoned").clone()
    }

    /// Stops a client: its tasks are dropped mid-flight and its endpoint goes down.
    pub fn stop_client(&self, client: &ClientHandle) {
        Handle::current().kill(client.node.id());
        self.net.take_down(client.id);
    }
}

/// Largest skew of a node's wall clock from the world's true wall time at start (NTP-level;
/// the clock-drift fault class makes wall clocks jump much further).
const WALL_CLOCK_SKEW_MAX_MS: i64 = 500;

/// A clock with a random monotonic origin (up to ~11 days of uptime) and a wall clock within
/// [`WALL_CLOCK_SKEW_MAX_MS`] of the world's wall time.
fn new_clock(rng: &mut ChaCha8Rng, world_wall_ms: i64) -> SimClock {
    let origin = Instant::from_nanos(rng.gen_range(0..1_000_000_000_000_000));
    let skew = rng.gen_range(-WALL_CLOCK_SKEW_MAX_MS..=WALL_CLOCK_SKEW_MAX_MS);
    SimClock::new(origin, world_wall_ms + skew)
}

/// The world's true wall time at start: a random moment of 2024–2026.
fn world_wall_ms(rng: &mut ChaCha8Rng) -> i64 {
    1_704_067_200_000 + rng.gen_range(0..3 * 365 * 86_400_000)
}
