//! Running worlds: one seed ([`run`]) and sweeps over many seeds ([`sweep`]).
//!
//! A world's life: the seed picks the swarm; the workload is built; nodes and clients start;
//! the fault scheduler runs the fault phase; clients stop; everything heals; the liveness
//! probe must succeed within [`LIVENESS_LIMIT`]; the final reads run; the checks judge the
//! history. Any panic in any task (an `assert!` in the system under test, or madsim finding
//! every task blocked forever) fails the seed too.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::bugs::Bugs;
use crate::check::Violation;
use crate::faults::{format_fault_list, FaultClass, Swarm};
use crate::scheduler;
use crate::time;
use crate::trace::{self, TraceHash};
use crate::workload::{Recorder, WorkloadKind, WorldInfo, FINAL_READ_LIMIT, LIVENESS_LIMIT};
use crate::world::World;

/// What to run.
#[derive(Clone)]
pub struct RunOptions {
    pub workload: &'static WorkloadKind,
    /// `--faults`: pins the enabled fault classes.
    pub faults: Option<BTreeSet<FaultClass>>,
    /// `--nodes`: pins the number of server nodes.
    pub nodes: Option<usize>,
    pub bugs: Bugs,
    /// Print trace events at this level or above (and let panics print); `None` is quiet.
    pub print: Option<tracing::Level>,
}

impl RunOptions {
    /// The one-line command that replays `seed` with these options.
    pub fn repro(&self, seed: u64, default_workload: &str) -> String {
        let mut cmd = format!("scripts/sim --seed {seed}");
        if self.workload.name != default_workload {
            cmd += &format!(" --workload {}", self.workload.name);
        }
        if let Some(n) = self.nodes {
            cmd += &format!(" --nodes {n}");
        }
        if let Some(f) = &self.faults {
            cmd += &format!(" --faults {}", format_fault_list(f));
        }
        for bug in self.bugs.names() {
            cmd += &format!(" --inject-bug {bug}");
        }
        cmd
    }
}

/// Why a seed failed.
#[derive(Clone, Debug)]
pub enum Failure {
    /// A task panicked (an assertion in the system under test, or a deadlock).
    Panic(String),
    /// The cluster made no progress after heal.
    Liveness(String),
    /// The final reads did not complete.
    FinalRead(String),
    /// Safety checks failed.
    Safety(Vec<Violation>),
    /// Two runs of the seed produced different traces.
    Nondeterminism { first: u64, second: u64 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Liveness(m) => write!(f, "liveness: {m}"),
            Failure::FinalRead(m) => write!(f, "final read: {m}"),
            Failure::Safety(v) => {
                write!(f, "safety:")?;
                for violation in v {
                    write!(f, "\n  {violation}")?;
                }
                Ok(())
            }
            Failure::Nondeterminism { first, second } => write!(
                f,
                "nondeterminism: trace hash {first:016x} on the first run, {second:016x} on the second"
            ),
        }
    }
}

/// What one run of one seed did.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub swarm: Swarm,
    pub failure: Option<Failure>,
    /// Simulated time the world ran.
    pub sim_time: Duration,
    /// Real time the run took.
    pub wall_time: Duration,
    /// CPU time the run's thread spent (Linux; the wall time elsewhere). On a loaded machine
    /// this, not the wall time, measures the simulator's speed.
    pub cpu_time: Duration,
    pub faults: BTreeMap<FaultClass, u64>,
    /// Hash of the whole trace (see [`crate::trace`]).
    pub trace_hash: u64,
    /// Client operations recorded.
    pub ops: usize,
}

thread_local! {
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records panic messages for reports; prints them only when the run is not quiet.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            if !QUIET_PANICS.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds on the
/// CPU); `None` where that file does not exist.
fn thread_cpu_time() -> Option<Duration> {
    ThreadCpu::open()?.read()
}

/// `/proc/thread-self/schedstat` of the thread that opened it, kept open: the watchdog
/// reads it once per simulated second, and opening it each time cost more than the read.
struct ThreadCpu(std::fs::File);

impl ThreadCpu {
    fn open() -> Option<Self> {
        std::fs::File::open("/proc/thread-self/schedstat")
            .ok()
            .map(ThreadCpu)
    }

    /// The thread's CPU time now (a read from offset 0 regenerates the file).
    fn read(&self) -> Option<Duration> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        let stat = std::str::from_utf8(&buf[..n]).ok()?;
        let nanos = stat.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(nanos))
    }
}

/// CPU time one world may take before its watchdog fails it: a livelock (tasks always
/// ready, simulated time crawling) must not hang a sweep.
pub const CPU_PER_SEED_MAX: Duration = Duration::from_secs(120);

/// Fails the run (by panicking inside the world) once its thread has spent
/// [`CPU_PER_SEED_MAX`]; checks once per simulated second. Reads `/proc`, which madsim does
/// not virtualise (it does virtualise the clocks).
async fn watchdog() {
    let Some(cpu) = ThreadCpu::open() else {
        return;
    };
    let Some(start) = cpu.read() else {
        return;
    };
    loop {
        time::sleep(Duration::from_secs(1)).await;
        let spent = cpu
            .read()
            .map_or(Duration::ZERO, |t| t.saturating_sub(start));
        assert!(
            spent <= CPU_PER_SEED_MAX,
            "watchdog: the world used {spent:?} of CPU (limit {CPU_PER_SEED_MAX:?}) by simulated \
             time {:?}: livelock or runaway load",
            time::now()
        );
    }
}

/// What the supervisor hands back, also after a panic.
#[derive(Default)]
struct Outcome {
    world: Option<Arc<World>>,
    sim_time: Duration,
}

/// Runs the world of `seed` to the end, on this thread.
pub fn run(seed: u64, opts: &RunOptions) -> Report {
    install_panic_hook();
    QUIET_PANICS.with(|q| q.set(opts.print.is_none()));
    let hash = TraceHash::default();
    let guard = trace::install(hash.clone(), opts.print);
    let mut swarm = Swarm::pick(seed, &opts.workload.fault_set(), opts.faults.as_ref());
    if let Some(nodes) = opts.nodes {
        swarm = swarm.with_cluster_size(nodes);
    }
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    #[allow(clippy::disallowed_methods)] // Measures the simulator's own speed, outside the world.
    let started = std::time::Instant::now();
    let cpu_started = thread_cpu_time();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(supervise(swarm.clone(), opts.clone(), outcome.clone()))
    }));
    let wall_time = started.elapsed();
    let cpu_time = match (cpu_started, thread_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall_time,
    };
    let failure = match result {
        Ok(r) => {
            drop(runtime);
            r.err()
        }
        Err(_) => {
            // The executor is mid-poll: dropping it could run destructors that need the
            // runtime. Leak it; failing seeds are rare.
            std::mem::forget(runtime);
            let message = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "unknown panic".to_string());
            Some(Failure::Panic(message))
        }
    };
    drop(guard);
    let outcome = std::mem::take(&mut *outcome.lock().unwrap_or_else(|e| e.into_inner()));
    let (faults, ops) = match &outcome.world {
        Some(w) => (w.fault_counts(), w.recorder.snapshot().ops.len()),
        None => (BTreeMap::new(), 0),
    };
    Report {
        seed,
        swarm,
        failure,
        sim_time: outcome.sim_time.max(hash.last_at()),
        wall_time,
        cpu_time,
        faults,
        trace_hash: hash.value(),
        ops,
    }
}

async fn supervise(
    swarm: Swarm,
    opts: RunOptions,
    outcome: Arc<Mutex<Outcome>>,
) -> Result<(), Failure> {
    tracing::info!(seed = swarm.seed, workload = opts.workload.name, bugs = %opts.bugs, "world: {swarm}");
    drop(madsim::task::spawn(watchdog()));
    let recorder = Recorder::new();
    let servers = (1..=swarm.cluster_size as u32)
        .map(fjord_replication::NodeId)
        .collect();
    let workload = (opts.workload.build)(&WorldInfo {
        seed: swarm.seed,
        servers,
        bugs: opts.bugs.clone(),
        recorder: recorder.clone(),
    });
    let world = World::new(
        swarm.clone(),
        opts.bugs.clone(),
        recorder.clone(),
        workload.clone(),
    );
    outcome.lock().expect("outcome poisoned").world = Some(world.clone());
    world.start();

    let clients: Vec<_> = (0..workload.clients())
        .map(|i| {
            let w = workload.clone();
            world.start_client(i, move |env| w.client(env))
        })
        .collect();
    scheduler::fault_phase(&world, swarm.fault_phase).await;
    for (client, _) in &clients {
        world.stop_client(client);
    }
    let net = world.net.stats();
    tracing::info!(
        digest = world.net.digest(),
        sent = net.sent,
        delivered = net.delivered,
        faults = ?world.fault_counts(),
        "fault phase over"
    );
    scheduler::heal(&world);

    let mut probe = world.start_client(workload.clients(), |env| workload.liveness(env));
    let live = time::timeout(LIVENESS_LIMIT, &mut probe.1).await;
    world.stop_client(&probe.0);
    match live {
        None => {
            return Err(Failure::Liveness(format!(
                "no progress within {LIVENESS_LIMIT:?} after heal"
            )))
        }
        Some(Err(e)) => return Err(Failure::Liveness(format!("liveness probe died: {e:?}"))),
        Some(Ok(Err(e))) => return Err(Failure::Liveness(e)),
        Some(Ok(Ok(()))) => tracing::info!("liveness: the cluster made progress"),
    }
    let mut reader = world.start_client(workload.clients() + 1, |env| workload.final_reads(env));
    let read = time::timeout(FINAL_READ_LIMIT, &mut reader.1).await;
    world.stop_client(&reader.0);
    match read {
        None => {
            return Err(Failure::FinalRead(format!(
                "not done within {FINAL_READ_LIMIT:?}"
            )))
        }
        Some(Err(e)) => return Err(Failure::FinalRead(format!("final reader died: {e:?}"))),
        Some(Ok(Err(e))) => return Err(Failure::FinalRead(e)),
        Some(Ok(Ok(()))) => {}
    }
    let history = recorder.snapshot();
    let violations = workload.check(&history);
    tracing::info!(
        ops = history.ops.len(),
        violations = violations.len(),
        digest = world.net.digest(),
        "checked"
    );
    outcome.lock().expect("outcome poisoned").sim_time = time::now();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Failure::Safety(violations))
    }
}

/// What to sweep.
#[derive(Clone)]
pub struct SweepOptions {
    pub from: u64,
    pub count: u64,
    pub jobs: usize,
    /// Run each seed twice and compare trace hashes.
    pub check_determinism: bool,
    pub run: RunOptions,
}

/// Totals of a sweep.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// Failed seeds, by seed.
    pub failures: BTreeMap<u64, Report>,
    pub sim_time: Duration,
    /// Sum of the runs' CPU times.
    pub cpu_time: Duration,
    pub faults: BTreeMap<FaultClass, u64>,
    pub ops: u64,
}

impl Summary {
    fn add(&mut self, report: Report) {
        self.seeds += 1;
        self.sim_time += report.sim_time;
        self.cpu_time += report.cpu_time;
        self.ops += report.ops as u64;
        for (class, n) in &report.faults {
            *self.faults.entry(*class).or_default() += n;
        }
        if report.failure.is_some() {
            self.failures.insert(report.seed, report);
        }
    }
}

/// Runs one seed, twice if `check_determinism`.
pub fn run_checked(seed: u64, opts: &RunOptions, check_determinism: bool) -> Report {
    let mut report = run(seed, opts);
    if check_determinism {
        let quiet = RunOptions {
            print: None,
            ..opts.clone()
        };
        let again = run(seed, &quiet);
        if again.trace_hash != report.trace_hash && report.failure.is_none() {
            report.failure = Some(Failure::Nondeterminism {
                first: report.trace_hash,
                second: again.trace_hash,
            });
        }
    }
    report
}

/// Runs seeds `from..from + count` on `jobs` threads; `progress(done, failures)` is called
/// after each seed.
pub fn sweep(opts: &SweepOptions, mut progress: impl FnMut(u64, usize)) -> Summary {
    let next = AtomicU64::new(opts.from);
    let end = opts.from + opts.count;
    let (tx, rx) = mpsc::channel();
    let mut summary = Summary::default();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            #[allow(clippy::disallowed_methods)] // Sweep workers: each runs whole worlds.
            std::thread::Builder::new()
                .name("fjord-sim-worker".into())
                .spawn_scoped(scope, move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let report = run_checked(seed, &opts.run, opts.check_determinism);
                    if tx.send(report).is_err() {
                        break;
                    }
                })
                .expect("spawn sweep worker");
        }
        drop(tx);
        for report in rx {
            summary.add(report);
            progress(summary.seeds, summary.failures.len());
        }
    });
    summary
}
