//! The fault scheduler: injects the swarm's fault classes during the fault phase, then heals.
//!
//! Each enabled discrete class fires as a Poisson process with the swarm's mean gap; a fault
//! with a duration (a crash's downtime, a pause, a partition, a clogging sequence) schedules
//! its own undo on the scheduler's timeline. Everything is drawn from the seed's fault stream,
//! and every injection is counted ([`World::count`]) and traced.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use fjord_replication::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faults::{FaultClass, NetParams, WALL_CLOCK_JUMP_MAX};
use crate::seed::{stream, Salt};
use crate::time;
use crate::world::{NodeState, World};

/// An undo (or a later step) of an injected fault.
#[derive(Debug)]
enum Action {
    Restart(NodeId),
    RestartAll,
    Resume(NodeId),
    Uncut(Vec<(NodeId, NodeId)>),
    Clog(NodeId, NodeId),
    Unclog(NodeId, NodeId),
    /// Leader churn's reaction to a new leader.
    StrikeLeader(NodeId),
    Flap(NodeId),
}

#[derive(Debug)]
struct Timed {
    at: Duration,
    seq: u64,
    action: Action,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Scheduler<'w> {
    world: &'w World,
    rng: ChaCha8Rng,
    timeline: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    /// The one server whose disk may be corrupted: a majority stays intact.
    corruptible: NodeId,
    /// Leadership observations seen so far (leader churn reacts to new ones).
    leaders_seen: usize,
}

fn names(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(NodeId::to_string).collect();
    names.join(",")
}

fn exp(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    let u: f64 = rng.gen();
    Duration::from_secs_f64(-mean.as_secs_f64() * (1.0 - u).ln())
}

fn between(rng: &mut ChaCha8Rng, lo: Duration, hi: Duration) -> Duration {
    Duration::from_nanos(rng.gen_range(lo.as_nanos() as u64..=hi.as_nanos() as u64))
}

impl Scheduler<'_> {
    fn later(&mut self, delay: Duration, action: Action) {
        self.seq += 1;
        self.timeline.push(Reverse(Timed {
            at: time::now() + delay,
            seq: self.seq,
            action,
        }));
    }

    fn pick(&mut self, state: impl Fn(NodeState) -> bool) -> Option<NodeId> {
        let candidates: Vec<NodeId> = self
            .world
            .servers
            .iter()
            .copied()
            .filter(|n| state(self.world.state(*n)))
            .collect();
        candidates.choose(&mut self.rng).copied()
    }

    /// Downtime, pause length or partition length: mostly short, sometimes long.
    fn span(&mut self) -> Duration {
        if self.rng.gen_bool(0.8) {
            between(
                &mut self.rng,
                Duration::from_millis(20),
                Duration::from_secs(2),
            )
        } else {
            between(
                &mut self.rng,
                Duration::from_secs(2),
                Duration::from_secs(10),
            )
        }
    }

    /// Cuts every link from `a` to `b` (and back if `both`); schedules the undo.
    fn cut(&mut self, a: &[NodeId], b: &[NodeId], both: bool) {
        let mut links = Vec::new();
        for &x in a {
            for &y in b {
                links.push((x, y));
                if both {
                    links.push((y, x));
                }
            }
        }
        for &(from, to) in &links {
            self.world.net.cut(from, to);
        }
        let span = self.span();
        self.later(span, Action::Uncut(links));
    }

    fn shuffled_servers(&mut self) -> Vec<NodeId> {
        let mut s = self.world.servers.clone();
        s.shuffle(&mut self.rng);
        s
    }

    fn inject(&mut self, class: FaultClass) {
        let w = self.world;
        let injected = match class {
            FaultClass::Crash => match self.pick(|s| s != NodeState::Down) {
                Some(n) => {
                    w.crash(n);
                    let down = self.span();
                    self.later(down, Action::Restart(n));
                    true
                }
                None => false,
            },
            FaultClass::Pause => match self.pick(|s| s == NodeState::Up) {
                Some(n) => {
                    w.pause(n);
                    let paused = self.span();
                    self.later(paused, Action::Resume(n));
                    true
                }
                None => false,
            },
            FaultClass::Partition | FaultClass::Split => {
                let servers = self.shuffled_servers();
                let k = if class == FaultClass::Split {
                    servers.len() / 2
                } else {
                    self.rng.gen_range(1..servers.len())
                };
                let (a, b) = servers.split_at(k);
                tracing::info!(side_a = %names(a), side_b = %names(b), %class, "partition");
                self.cut(a, b, true);
                true
            }
            FaultClass::OneWay => {
                let servers = self.shuffled_servers();
                let k = self.rng.gen_range(1..servers.len());
                let (a, b) = servers.split_at(k);
                tracing::info!(from = %names(a), to = %names(b), "one-way partition");
                self.cut(a, b, false);
                true
            }
            FaultClass::Isolate => {
                let n = *self.world.servers.choose(&mut self.rng).expect("servers");
                let others: Vec<NodeId> = w
                    .servers
                    .iter()
                    .copied()
                    .chain(w.client_ids())
                    .filter(|m| *m != n)
                    .collect();
                tracing::info!(node = %n, "isolate");
                self.cut(&[n], &others, true);
                true
            }
            FaultClass::Clog => {
                self.swizzle();
                true
            }
            FaultClass::Corrupt => match w.device(self.corruptible).mem.corrupt_random() {
                Some((path, offset)) => {
                    tracing::info!(node = %self.corruptible, path = %path.display(), offset, "bit flip at rest");
                    true
                }
                None => false,
            },
            FaultClass::ClockDrift => {
                let n = *self.world.servers.choose(&mut self.rng).expect("servers");
                let max = w.swarm.drift_max_ppm as i32;
                let ppm = self.rng.gen_range(-max..=max);
                w.clock(n).set_drift_ppm(ppm);
                let jump = if self.rng.gen_bool(0.3) {
                    let ms = WALL_CLOCK_JUMP_MAX.as_millis() as i64;
                    self.rng.gen_range(-ms..=ms)
                } else {
                    0
                };
                w.clock(n).jump_wall(jump);
                tracing::info!(node = %n, ppm, wall_jump_ms = jump, "clock drift");
                true
            }
            FaultClass::Flap => match self.pick(|s| s != NodeState::Down) {
                Some(n) => {
                    w.crash(n);
                    let down = between(
                        &mut self.rng,
                        Duration::from_millis(1),
                        Duration::from_millis(50),
                    );
                    tracing::info!(node = %n, ?down, "flap");
                    self.later(down, Action::Restart(n));
                    true
                }
                None => false,
            },
            FaultClass::LeaderChurn => {
                let leader = w.recorder.leaders_seen().1;
                self.strike_leader(leader)
            }
            FaultClass::PowerLoss => {
                tracing::info!("power loss");
                for n in w.servers.clone() {
                    w.crash(n);
                }
                let down = self.span();
                self.later(down, Action::RestartAll);
                true
            }
            FaultClass::Loss
            | FaultClass::Duplicate
            | FaultClass::Reorder
            | FaultClass::SyncFail => {
                unreachable!("{class} is not a discrete fault")
            }
        };
        if injected {
            w.count(class);
        }
    }

    /// Leader churn on `leader` (or a random node if it is unknown or down): cut it from the
    /// other servers for a while, or crash it. Returns whether anything was injected.
    fn strike_leader(&mut self, leader: Option<NodeId>) -> bool {
        let w = self.world;
        let leader = leader.filter(|n| w.servers.contains(n) && w.state(*n) != NodeState::Down);
        match leader.or_else(|| self.pick(|s| s != NodeState::Down)) {
            Some(n) if self.rng.gen_bool(0.7) => {
                let span = between(
                    &mut self.rng,
                    Duration::from_millis(100),
                    Duration::from_millis(1500),
                );
                tracing::info!(node = %n, ?span, "leader churn: cut from the servers");
                let mut links = Vec::new();
                for m in w.servers.iter().copied().filter(|m| *m != n) {
                    links.push((n, m));
                    links.push((m, n));
                }
                for &(from, to) in &links {
                    w.net.cut(from, to);
                }
                self.later(span, Action::Uncut(links));
                true
            }
            Some(n) => {
                w.crash(n);
                let down = between(
                    &mut self.rng,
                    Duration::from_millis(20),
                    Duration::from_millis(1000),
                );
                tracing::info!(node = %n, ?down, "leader churn: crash");
                self.later(down, Action::Restart(n));
                true
            }
            None => false,
        }
    }

    /// Leader churn also reacts to every new leadership observation: it strikes the new
    /// leader soon after (before it has replicated much of its own), and sometimes flaps
    /// another node (a voter losing its memory right after an election).
    fn react_to_leaders(&mut self) {
        let (seen, last) = self.world.recorder.leaders_seen();
        if seen == self.leaders_seen {
            return;
        }
        self.leaders_seen = seen;
        let Some(leader) = last else {
            return;
        };
        if self.rng.gen_bool(0.6) {
            let delay = between(&mut self.rng, Duration::ZERO, Duration::from_millis(150));
            self.later(delay, Action::StrikeLeader(leader));
        }
        if self.rng.gen_bool(0.3) {
            let delay = between(&mut self.rng, Duration::ZERO, Duration::from_millis(50));
            let others: Vec<NodeId> = self
                .world
                .servers
                .iter()
                .copied()
                .filter(|n| *n != leader)
                .collect();
            if let Some(&n) = others.choose(&mut self.rng) {
                self.later(delay, Action::Flap(n));
            }
        }
    }

    /// Swizzle-clogging: clog a random set of server links one by one, hold, then unclog them
    /// one by one in another random order.
    fn swizzle(&mut self) {
        let servers = self.world.servers.clone();
        let mut links: Vec<(NodeId, NodeId)> = servers
            .iter()
            .flat_map(|&a| servers.iter().map(move |&b| (a, b)))
            .filter(|(a, b)| a != b)
            .collect();
        links.shuffle(&mut self.rng);
        let k = self.rng.gen_range(1..=links.len());
        links.truncate(k);
        let gap = between(
            &mut self.rng,
            Duration::from_millis(5),
            Duration::from_millis(300),
        );
        let mut at = Duration::ZERO;
        for &(a, b) in &links {
            self.later(at, Action::Clog(a, b));
            at += gap;
        }
        at += self.span();
        links.shuffle(&mut self.rng);
        for &(a, b) in &links {
            self.later(at, Action::Unclog(a, b));
            at += gap;
        }
        tracing::info!(links = links.len(), ?gap, "swizzle-clog");
    }

    fn apply(&mut self, action: Action) {
        let w = self.world;
        match action {
            Action::Restart(n) => {
                if w.state(n) == NodeState::Down {
                    w.restart(n);
                }
            }
            Action::RestartAll => {
                for n in w.servers.clone() {
                    if w.state(n) == NodeState::Down {
                        w.restart(n);
                    }
                }
            }
            Action::Resume(n) => w.resume(n),
            Action::Uncut(links) => {
                for (from, to) in links {
                    w.net.uncut(from, to);
                }
            }
            Action::Clog(a, b) => w.net.clog(a, b),
            Action::Unclog(a, b) => w.net.unclog(a, b),
            Action::StrikeLeader(n) => {
                if self.strike_leader(Some(n)) {
                    w.count(FaultClass::LeaderChurn);
                }
            }
            Action::Flap(n) => {
                if w.state(n) != NodeState::Down {
                    w.crash(n);
                    let down = between(
                        &mut self.rng,
                        Duration::from_millis(1),
                        Duration::from_millis(50),
                    );
                    tracing::info!(node = %n, ?down, "leader churn: flap");
                    self.later(down, Action::Restart(n));
                    w.count(FaultClass::Flap);
                }
            }
        }
    }
}

/// How often leader churn looks for new leadership observations.
const LEADER_WATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Runs the fault phase of `world` for `length` of simulated time.
pub async fn fault_phase(world: &World, length: Duration) {
    let mut rng = stream(world.swarm.seed, Salt::Faults);
    let corruptible = *world.servers.choose(&mut rng).expect("servers");
    let mut s = Scheduler {
        world,
        rng,
        timeline: BinaryHeap::new(),
        seq: 0,
        corruptible,
        leaders_seen: 0,
    };
    let churn = world.swarm.faults.contains(&FaultClass::LeaderChurn);
    let end = time::now() + length;
    let mut next: BTreeMap<FaultClass, Duration> = BTreeMap::new();
    for (&class, &mean) in &world.swarm.mean_gap {
        let gap = exp(&mut s.rng, mean);
        next.insert(class, time::now() + gap);
    }
    loop {
        let due_fault = next.iter().map(|(c, at)| (*at, *c)).min();
        let due_action = s.timeline.peek().map(|t| t.0.at);
        // Leader churn watches for new leaders every few milliseconds.
        let watch = churn.then(|| time::now() + LEADER_WATCH_INTERVAL);
        let wake = [due_fault.map(|d| d.0), due_action, watch, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .expect("end is always there");
        time::sleep_until(wake).await;
        let now = time::now();
        if now >= end {
            break;
        }
        if churn {
            s.react_to_leaders();
        }
        while s.timeline.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(t)) = s.timeline.pop() else {
                break;
            };
            s.apply(t.action);
        }
        if let Some((at, class)) = due_fault {
            if at <= now {
                s.inject(class);
                let gap = exp(&mut s.rng, world.swarm.mean_gap[&class]);
                next.insert(class, now + gap);
            }
        }
    }
}

/// Ends every fault: resumes paused nodes, restarts crashed ones, heals the network (keeping
/// its latencies) and stops sync failures. Clock drift stays (it is within bounds).
pub fn heal(world: &World) {
    for n in world.servers.clone() {
        world.resume(n);
        if world.state(n) == NodeState::Down {
            world.restart(n);
        }
        world.device(n).heal();
    }
    let params = world.net.params();
    world.net.heal(NetParams::healthy(
        params.latency_min,
        params.latency_mean_extra,
    ));
    tracing::info!("healed: every node up, network healthy");
}
