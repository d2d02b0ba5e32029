//! The workload API: how a system under test plugs into the simulator.
//!
//! A workload supplies the body of a server node, the clients that drive it during the fault
//! phase, the liveness probe and final reads after heal, and the checks over the recorded
//! [`History`]. It never sees madsim: nodes get a [`NodeIo`] (the production IO traits, backed
//! by the simulator) and clients a [`ClientEnv`].
//!
//! ```text
//! register:  WorkloadKind { name, bugs, faults, build: fn(&WorldInfo) -> Arc<dyn Workload> }
//! per world: build(info) → workload
//!            workload.node(io)            at every start and restart of every server node
//!            workload.client(env)         × workload.clients(), during the fault phase
//!            workload.liveness(env)       after heal, bounded by LIVENESS_LIMIT
//!            workload.final_reads(env)    then, bounded by FINAL_READ_LIMIT
//!            workload.check(&history)     safety checks (default: every check in check::ALL)
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fjord_log::Disk;
use fjord_replication::{BoxFuture, Clock, Network, NodeId, Spawner};

use crate::bugs::Bugs;
use crate::check::{self, Violation};
use crate::disk::SimDisk;
use crate::faults::FaultClass;
use crate::history::{
    CommitOp, CommitOutcome, CommittedRead, History, LeaderObservation, Offset, Op, OpId, OpKind,
    Outcome, Partition, PrefixObservation, ReaderId, Value,
};
use crate::time;

/// Simulated time the liveness phase may take before the run fails.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(60);
/// Simulated time the final reads may take before the run fails.
pub const FINAL_READ_LIMIT: Duration = Duration::from_secs(60);

/// Everything one incarnation of a server node gets from its environment. Built afresh at
/// every (re)start: nothing in it survives a crash except what the disk made durable.
pub struct NodeIo {
    pub id: NodeId,
    /// 0 for the first start, +1 at every restart.
    pub incarnation: u32,
    /// Seed for the incarnation's own randomness (election jitter and the like).
    pub seed: u64,
    pub clock: Arc<dyn Clock>,
    pub network: Arc<dyn Network>,
    pub disk: Arc<dyn Disk>,
    pub spawner: Arc<dyn Spawner>,
    pub bugs: Bugs,
    /// The same disk as `disk`, for the simulator-only extra: [`SimDisk::settle`] models
    /// device latency.
    pub sim_disk: SimDisk,
}

/// What a client task gets. Clients run on their own simulated nodes, which never crash; they
/// are stopped abruptly at the end of the fault phase (their pending operations stay
/// indeterminate).
pub struct ClientEnv {
    pub id: NodeId,
    /// 0-based index among the clients (the liveness/final-read client is index `clients()`).
    pub index: usize,
    pub servers: Vec<NodeId>,
    pub clock: Arc<dyn Clock>,
    pub network: Arc<dyn Network>,
    pub spawner: Arc<dyn Spawner>,
    pub seed: u64,
    pub recorder: Recorder,
}

/// What a workload learns about its world when it is built.
pub struct WorldInfo {
    pub seed: u64,
    pub servers: Vec<NodeId>,
    pub bugs: Bugs,
    /// Where clients and nodes record what they observe.
    pub recorder: Recorder,
}

/// A system under test, built once per world.
pub trait Workload: Send + Sync + 'static {
    /// The body of one incarnation of a server node. Returning means the process exited: the
    /// simulator restarts it (as after a crash).
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()>;
    /// Number of clients to run during the fault phase.
    fn clients(&self) -> usize;
    /// One client; runs until the end of the fault phase, when it is dropped.
    fn client(&self, env: ClientEnv) -> BoxFuture<'static, ()>;
    /// After heal (every node up, network healthy): completes `Ok` once the cluster shows
    /// progress (e.g. a new write commits), `Err` if it can tell it never will.
    fn liveness(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>>;
    /// Reads every partition from the start and records it ([`Recorder::final_read`]).
    fn final_reads(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>>;
    /// Safety checks over the recorded history.
    fn check(&self, history: &History) -> Vec<Violation> {
        check::run_all(history)
    }
}

/// A registered workload.
pub struct WorkloadKind {
    /// `--workload NAME`.
    pub name: &'static str,
    /// Bug names the system understands (`--inject-bug`).
    pub bugs: &'static [&'static str],
    /// Fault classes the system is meant to survive; the swarm picks among these.
    pub faults: &'static [FaultClass],
    pub build: fn(&WorldInfo) -> Arc<dyn Workload>,
}

impl WorkloadKind {
    pub fn fault_set(&self) -> BTreeSet<FaultClass> {
        self.faults.iter().copied().collect()
    }
}

/// Shared sink of a world's [`History`]; clones record into the same history. Times are
/// simulated time.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder::default()
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().expect("history poisoned")
    }

    fn invoke(&self, client: NodeId, kind: OpKind) -> OpId {
        let mut h = self.lock();
        let id = OpId(h.ops.len() as u64);
        h.ops.push(Op {
            id,
            client,
            invoked_at: time::now(),
            completed_at: None,
            kind,
            outcome: Outcome::Pending,
        });
        id
    }

    /// A client starts writing `value` (unique in the world) to `partition`.
    pub fn invoke_write(&self, client: NodeId, partition: Partition, value: Value) -> OpId {
        self.invoke(client, OpKind::Write { partition, value })
    }

    /// A client starts reading `partition` from `from` in session `reader`.
    pub fn invoke_read(
        &self,
        client: NodeId,
        partition: Partition,
        reader: ReaderId,
        from: Offset,
    ) -> OpId {
        self.invoke(
            client,
            OpKind::Read {
                partition,
                reader,
                from,
            },
        )
    }

    fn complete(&self, op: OpId, outcome: Outcome) {
        let mut h = self.lock();
        let entry = usize::try_from(op.0)
            .ok()
            .and_then(|i| h.ops.get_mut(i))
            .expect("completing an operation this recorder issued");
        assert_eq!(
            entry.outcome,
            Outcome::Pending,
            "operation {op:?} completed twice"
        );
        entry.completed_at = Some(time::now());
        entry.outcome = outcome;
    }

    /// The write was acknowledged at `offset`.
    pub fn written(&self, op: OpId, offset: Offset) {
        self.complete(op, Outcome::Written { offset });
    }

    /// The read returned `records`.
    pub fn read(&self, op: OpId, records: Vec<(Offset, Value)>) {
        self.complete(op, Outcome::Read { records });
    }

    /// The operation definitely did not take effect.
    pub fn failed(&self, op: OpId, reason: impl Into<String>) {
        self.complete(
            op,
            Outcome::Failed {
                reason: reason.into(),
            },
        );
    }

    /// The operation may or may not have taken effect (timeout, broken connection).
    pub fn indeterminate(&self, op: OpId, reason: impl Into<String>) {
        self.complete(
            op,
            Outcome::Indeterminate {
                reason: reason.into(),
            },
        );
    }

    /// The final read of `partition`, from its start to its end.
    pub fn final_read(&self, partition: Partition, records: Vec<(Offset, Value)>) {
        self.lock().final_reads.insert(partition, records);
    }

    /// `node` believes it leads `group` in `term`.
    pub fn leader(&self, node: NodeId, group: u32, term: u64) {
        let at = time::now();
        self.lock().leaders.push(LeaderObservation {
            at,
            node,
            group,
            term,
        });
    }

    /// How many leadership observations there are, and the node of the latest.
    pub fn leaders_seen(&self) -> (usize, Option<NodeId>) {
        let h = self.lock();
        (h.leaders.len(), h.leaders.last().map(|l| l.node))
    }

    /// `node`'s committed prefix of `partition` up to `offset` hashes to `hash`.
    pub fn prefix(&self, node: NodeId, partition: Partition, offset: Offset, hash: u64) {
        let at = time::now();
        self.lock().prefixes.push(PrefixObservation {
            at,
            node,
            partition,
            offset,
            hash,
        });
    }

    /// A client starts committing `offset` of `partition` for `group`; returns the commit's
    /// index for [`Recorder::commit_done`].
    pub fn invoke_commit(
        &self,
        client: NodeId,
        group: &str,
        partition: Partition,
        offset: Offset,
    ) -> usize {
        let mut h = self.lock();
        h.commits.push(CommitOp {
            client,
            group: group.to_string(),
            partition,
            offset,
            invoked_at: time::now(),
            completed_at: None,
            outcome: CommitOutcome::Pending,
        });
        h.commits.len() - 1
    }

    /// The commit `index` ended with `outcome`.
    pub fn commit_done(&self, index: usize, outcome: CommitOutcome) {
        let mut h = self.lock();
        let c = &mut h.commits[index];
        assert_eq!(c.outcome, CommitOutcome::Pending, "commit completed twice");
        c.completed_at = Some(time::now());
        c.outcome = outcome;
    }

    /// A client read `group`'s committed offset of `partition` (invoked at `invoked_at`).
    pub fn committed_read(
        &self,
        client: NodeId,
        group: &str,
        partition: Partition,
        invoked_at: std::time::Duration,
        offset: Option<Offset>,
    ) {
        let completed_at = time::now();
        self.lock().committed_reads.push(CommittedRead {
            client,
            group: group.to_string(),
            partition,
            invoked_at,
            completed_at,
            offset,
        });
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }
}
