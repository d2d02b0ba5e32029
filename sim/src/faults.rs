//! Fault classes and swarm testing: what a world's seed decides before anything runs.
//!
//! Swarm testing (Groce et al., 2012): rather than every run enabling every fault at a fixed
//! rate, each seed enables a random subset of fault classes at random rates, so that some
//! worlds are hammered by one kind of fault with nothing masking it. `--faults a,b,c` pins
//! the subset (rates still come from the seed).
//!
//! To add a fault class: add a variant to [`FaultClass`] (and to [`FaultClass::ALL`] and
//! `name`), give it a rate in [`Swarm::pick`], and inject it in the scheduler
//! (`scheduler.rs`), counting every injection; document it in README's Simulator section.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::seed::{stream, Salt};

/// A kind of fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// Crash a node (all memory lost, unsynced writes lost) and restart it later.
    Crash,
    /// Freeze a node's process, then resume it with stale beliefs.
    Pause,
    /// Cut the servers into two random sides, both directions.
    Partition,
    /// Cut one direction of some links only.
    OneWay,
    /// Cut one node from everyone (servers and clients), both directions.
    Isolate,
    /// Cut a minority of servers from the majority.
    Split,
    /// Swizzle-clog: clog links one by one (messages held, not dropped), unclog in another order.
    Clog,
    /// Drop messages at random.
    Loss,
    /// Deliver some messages twice.
    Duplicate,
    /// Give up per-link FIFO and delay some messages far behind later ones.
    Reorder,
    /// Flip bits at rest in one replica's files.
    Corrupt,
    /// Make `sync` fail; the node stops and is restarted from what is durable.
    SyncFail,
    /// Drift node clocks apart and make wall clocks jump.
    ClockDrift,
    /// Crash every node at once, then restart them all.
    PowerLoss,
    /// Crash a node and restart it almost at once (1–50 ms): fast supervisor restarts, so
    /// that nodes lose their memory in the middle of elections and replication rounds.
    Flap,
    /// Strike the node that most recently claimed leadership (`History::leaders`): cut it
    /// from the other servers (not from clients, so it keeps appending writes it cannot
    /// replicate) for 0.1–1.5 s, or crash it. Leaders deposed one after another leave
    /// divergent suffixes of many terms behind — the ground of Raft's figure-8 scenario.
    LeaderChurn,
}

impl FaultClass {
    pub const ALL: [FaultClass; 16] = [
        FaultClass::Crash,
        FaultClass::Pause,
        FaultClass::Partition,
        FaultClass::OneWay,
        FaultClass::Isolate,
        FaultClass::Split,
        FaultClass::Clog,
        FaultClass::Loss,
        FaultClass::Duplicate,
        FaultClass::Reorder,
        FaultClass::Corrupt,
        FaultClass::SyncFail,
        FaultClass::ClockDrift,
        FaultClass::PowerLoss,
        FaultClass::Flap,
        FaultClass::LeaderChurn,
    ];

    /// Classes added after the first fourteen: the swarm draws for them after everything
    /// else, so that adding them changed no earlier seed's world.
    const LATER: [FaultClass; 2] = [FaultClass::Flap, FaultClass::LeaderChurn];

    /// The name used by `--faults` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Crash => "crash",
            FaultClass::Pause => "pause",
            FaultClass::Partition => "partition",
            FaultClass::OneWay => "one-way",
            FaultClass::Isolate => "isolate",
            FaultClass::Split => "split",
            FaultClass::Clog => "clog",
            FaultClass::Loss => "loss",
            FaultClass::Duplicate => "duplicate",
            FaultClass::Reorder => "reorder",
            FaultClass::Corrupt => "corrupt",
            FaultClass::SyncFail => "sync-fail",
            FaultClass::ClockDrift => "clock-drift",
            FaultClass::PowerLoss => "power-loss",
            FaultClass::Flap => "flap",
            FaultClass::LeaderChurn => "leader-churn",
        }
    }

    /// Classes injected as discrete events by the scheduler (the others are per-message or
    /// per-sync probabilities that hold for the whole fault phase).
    pub fn is_discrete(self) -> bool {
        !matches!(
            self,
            FaultClass::Loss | FaultClass::Duplicate | FaultClass::Reorder | FaultClass::SyncFail
        )
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown fault class name.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownFault(pub String);

impl fmt::Display for UnknownFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = FaultClass::ALL.iter().map(|c| c.name()).collect();
        write!(
            f,
            "unknown fault class {:?} (known: {}, or none)",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownFault {}

impl FromStr for FaultClass {
    type Err = UnknownFault;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownFault(s.to_string()))
    }
}

/// Parses `--faults`: a comma-separated list of class names, or `none`.
pub fn parse_fault_list(s: &str) -> Result<BTreeSet<FaultClass>, UnknownFault> {
    if s.trim() == "none" {
        return Ok(BTreeSet::new());
    }
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(FaultClass::from_str)
        .collect()
}

/// Formats a set of classes as `--faults` accepts it.
pub fn format_fault_list(faults: &BTreeSet<FaultClass>) -> String {
    if faults.is_empty() {
        return "none".to_string();
    }
    let names: Vec<_> = faults.iter().map(|c| c.name()).collect();
    names.join(",")
}

/// Largest clock drift the simulator applies, in parts per million of real (simulated)
/// time. Real oscillators drift by tens of ppm; 1% leaves timeouts comfortable margins while
/// still exposing code that compares instants across nodes or assumes exact timer rates.
pub const CLOCK_DRIFT_MAX_PPM: u32 = 10_000;
/// Largest jump of a node's wall clock (`wall_clock_ms`), either direction.
pub const WALL_CLOCK_JUMP_MAX: Duration = Duration::from_secs(30);
/// Largest one-way message latency, including reordering delays.
pub const LATENCY_MAX: Duration = Duration::from_millis(500);

/// Network behaviour of a world. Probabilities are per message.
#[derive(Clone, Debug, PartialEq)]
pub struct NetParams {
    /// Every message takes at least this long.
    pub latency_min: Duration,
    /// Mean of the exponential extra latency on top of `latency_min`.
    pub latency_mean_extra: Duration,
    /// Probability that a message is dropped (never between a node and itself).
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message gets an extra delay; when zero, links are FIFO.
    pub reorder: f64,
}

impl NetParams {
    /// A well-behaved network: no loss, duplication or reordering.
    pub fn healthy(latency_min: Duration, latency_mean_extra: Duration) -> Self {
        NetParams {
            latency_min,
            latency_mean_extra,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// Disk behaviour of a world.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskParams {
    /// Mean simulated latency of a write, read or metadata operation.
    pub op_latency_mean: Duration,
    /// Mean simulated latency of a `sync`.
    pub sync_latency_mean: Duration,
    /// Probability that a `sync` fails (the node then stops and restarts).
    pub sync_fail: f64,
}

/// Everything a seed decides up front.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    pub seed: u64,
    /// Server nodes: 3 or 5.
    pub cluster_size: usize,
    /// Enabled fault classes.
    pub faults: BTreeSet<FaultClass>,
    /// Simulated length of the fault phase.
    pub fault_phase: Duration,
    /// Mean simulated time between two injections of each enabled discrete class.
    pub mean_gap: BTreeMap<FaultClass, Duration>,
    pub net: NetParams,
    pub disk: DiskParams,
    /// Bound of per-node clock drift (0 without [`FaultClass::ClockDrift`]).
    pub drift_max_ppm: u32,
}

fn uniform(rng: &mut impl Rng, lo: Duration, hi: Duration) -> Duration {
    Duration::from_nanos(rng.gen_range(lo.as_nanos() as u64..=hi.as_nanos() as u64))
}

fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    (rng.gen_range(lo.ln()..=hi.ln())).exp()
}

impl Swarm {
    /// The swarm of `seed`: `supported` are the classes the workload's system is meant to
    /// survive; `pinned` (from `--faults`) replaces the random choice among them.
    pub fn pick(
        seed: u64,
        supported: &BTreeSet<FaultClass>,
        pinned: Option<&BTreeSet<FaultClass>>,
    ) -> Swarm {
        let mut rng = stream(seed, Salt::Swarm);
        let cluster_size = if rng.gen_bool(0.5) { 3 } else { 5 };
        // Draw for every class whether pinned or not, so that pinning does not shift the
        // other choices of the seed.
        let first = || {
            FaultClass::ALL
                .into_iter()
                .filter(|c| !FaultClass::LATER.contains(c))
        };
        let coin: Vec<bool> = first().map(|_| rng.gen_bool(0.5)).collect();
        let mut faults: BTreeSet<FaultClass> = match pinned {
            Some(p) => p.clone(),
            None => first()
                .zip(coin)
                .filter(|(c, on)| *on && supported.contains(c))
                .map(|(c, _)| c)
                .collect(),
        };
        let fault_phase = uniform(&mut rng, Duration::from_secs(10), Duration::from_secs(40));
        let mut mean_gap = BTreeMap::new();
        for class in first().filter(|c| c.is_discrete()) {
            let (lo, hi) = match class {
                FaultClass::PowerLoss => (10, 60),
                FaultClass::Clog => (3, 15),
                FaultClass::Crash | FaultClass::Pause => (1, 8),
                _ => (1, 10),
            };
            // Draw for every class so that pinning does not shift the other choices.
            let gap = uniform(&mut rng, Duration::from_secs(lo), Duration::from_secs(hi));
            if faults.contains(&class) {
                mean_gap.insert(class, gap);
            }
        }
        let latency_min = uniform(
            &mut rng,
            Duration::from_micros(50),
            Duration::from_millis(1),
        );
        let latency_mean_extra = uniform(
            &mut rng,
            Duration::from_micros(100),
            Duration::from_millis(5),
        );
        let mut net = NetParams::healthy(latency_min, latency_mean_extra);
        let loss = log_uniform(&mut rng, 0.001, 0.2);
        let duplicate = log_uniform(&mut rng, 0.001, 0.1);
        let reorder = log_uniform(&mut rng, 0.01, 0.3);
        let sync_fail = log_uniform(&mut rng, 0.0005, 0.02);
        let drift_max_ppm = rng.gen_range(100..=CLOCK_DRIFT_MAX_PPM);
        let op_latency_mean = uniform(
            &mut rng,
            Duration::from_micros(5),
            Duration::from_micros(100),
        );
        let sync_latency_mean = uniform(
            &mut rng,
            Duration::from_micros(100),
            Duration::from_millis(10),
        );
        for class in FaultClass::LATER {
            let on = rng.gen_bool(0.5);
            let gap = uniform(&mut rng, Duration::from_millis(200), Duration::from_secs(2));
            if pinned.is_none() && on && supported.contains(&class) {
                faults.insert(class);
            }
            if faults.contains(&class) {
                mean_gap.insert(class, gap);
            }
        }
        let on = |c| faults.contains(&c);
        if on(FaultClass::Loss) {
            net.loss = loss;
        }
        if on(FaultClass::Duplicate) {
            net.duplicate = duplicate;
        }
        if on(FaultClass::Reorder) {
            net.reorder = reorder;
        }
        Swarm {
            seed,
            cluster_size,
            fault_phase,
            mean_gap,
            net,
            disk: DiskParams {
                op_latency_mean,
                sync_latency_mean,
                sync_fail: if on(FaultClass::SyncFail) {
                    sync_fail
                } else {
                    0.0
                },
            },
            drift_max_ppm: if on(FaultClass::ClockDrift) {
                drift_max_ppm
            } else {
                0
            },
            faults,
        }
    }
}

impl Swarm {
    /// The same world with `nodes` servers instead of the seed's choice (`--nodes`).
    pub fn with_cluster_size(mut self, nodes: usize) -> Swarm {
        assert!(nodes > 0, "a cluster has at least one node");
        self.cluster_size = nodes;
        self
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} nodes, fault phase {:?}, faults [{}], latency {:?}+exp({:?}), loss {:.4}, \
             dup {:.4}, reorder {:.4}, sync-fail {:.4}, drift ±{}ppm",
            self.cluster_size,
            self.fault_phase,
            format_fault_list(&self.faults),
            self.net.latency_min,
            self.net.latency_mean_extra,
            self.net.loss,
            self.net.duplicate,
            self.net.reorder,
            self.disk.sync_fail,
            self.drift_max_ppm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> BTreeSet<FaultClass> {
        FaultClass::ALL.into_iter().collect()
    }

    #[test]
    fn names_round_trip() {
        for class in FaultClass::ALL {
            assert_eq!(class.name().parse::<FaultClass>(), Ok(class));
        }
        assert!("meteor".parse::<FaultClass>().is_err());
        let set = parse_fault_list("crash, clog,loss").expect("parses");
        assert_eq!(format_fault_list(&set), "crash,clog,loss");
        assert_eq!(parse_fault_list("none"), Ok(BTreeSet::new()));
        assert_eq!(format_fault_list(&BTreeSet::new()), "none");
        assert!(parse_fault_list("crash,meteor").is_err());
    }

    #[test]
    fn swarm_is_a_function_of_the_seed() {
        assert_eq!(Swarm::pick(5, &all(), None), Swarm::pick(5, &all(), None));
        let picks: BTreeSet<_> = (0..64)
            .map(|s| format_fault_list(&Swarm::pick(s, &all(), None).faults))
            .collect();
        assert!(picks.len() > 50, "swarm subsets should vary: {picks:?}");
        let sizes: BTreeSet<_> = (0..64)
            .map(|s| Swarm::pick(s, &all(), None).cluster_size)
            .collect();
        assert_eq!(sizes, BTreeSet::from([3, 5]));
    }

    #[test]
    fn pinned_and_unsupported_classes() {
        let pinned = BTreeSet::from([FaultClass::Crash, FaultClass::Loss]);
        for seed in 0..32 {
            let s = Swarm::pick(seed, &all(), Some(&pinned));
            assert_eq!(s.faults, pinned);
            assert!(s.net.loss > 0.0);
            assert_eq!(s.net.duplicate, 0.0);
            assert_eq!(s.disk.sync_fail, 0.0);
            assert_eq!(s.drift_max_ppm, 0);
            assert_eq!(
                s.mean_gap.keys().copied().collect::<Vec<_>>(),
                [FaultClass::Crash]
            );
            // Pinning changes which faults are on, not the rest of the world.
            let free = Swarm::pick(seed, &all(), None);
            assert_eq!(s.cluster_size, free.cluster_size);
            assert_eq!(s.fault_phase, free.fault_phase);
        }
        let only_crash = BTreeSet::from([FaultClass::Crash]);
        for seed in 0..32 {
            assert!(Swarm::pick(seed, &only_crash, None)
                .faults
                .is_subset(&only_crash));
        }
    }
}
