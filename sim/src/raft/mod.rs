//! `raft`: fjord's real replication layer under the simulator.
//!
//! Every server node runs [`fjord_replication::node::run_node`] — the production node loop —
//! over the node's simulated clock, network and disk, hosting [`GROUPS`] Raft groups
//! (partitions) whose logs are fjord-log [`Log`](fjord_log::Log)s on the node's `SimDisk`.
//! In a 3-node world every group has the three nodes as voters; in a 5-node world partition 0
//! has all five and partition 1 three of them (chosen by the seed).
//!
//! * **Clients** run on their own nodes and speak a small protocol ([`proto`]) to the
//!   servers: writes of unique values (each a one-record batch built with fjord-log's batch
//!   builder, proposed with acks=all) and reads of committed records. A server that does not
//!   lead answers with a hint; a timeout is indeterminate. Requests name the server
//!   incarnation they are meant for and are deduplicated per incarnation, so that a message
//!   the network duplicated is never appended twice.
//! * **Reads** return committed data only (`read_committed`, bounded by the commit end), from
//!   any replica; final reads ask the leader and page until the log end is past the write
//!   the liveness probe committed.
//! * **Observations**: an observer on the node loop records every leadership `(node, group,
//!   term)` when a member becomes leader, and hashes of committed prefixes (the raw batch
//!   bytes, which are identical on every replica) for the prefix-agreement check. A Raft
//!   protocol violation (`RaftError::Protocol`) stops the node and is reported as a violation
//!   too: every member here runs correct code, so one member seeing another break the
//!   protocol is a bug.
//! * **Faults**: every class. Corruption exercises the verify-and-repair path (a checksum
//!   failure on read marks the log for full verification; the restarted member cuts its log
//!   and repairs from its peers without voting); a failed sync stops the node.
//!
//! Bugs (`--inject-bug`): the [`RaftBugs`](fjord_replication::raft::RaftBugs) of the core
//! (`vote-not-persisted`, `no-truncate-on-conflict`, `commit-old-term-by-count`),
//! `ack-before-quorum` (the node loop answers acks=all once the leader appended), and
//! `ack-before-fsync` (the core counts unsynced entries toward commitment and acknowledges
//! appends at once, the node's device completes each fsync only after its latency —
//! `SimDevice::defer_syncs` — and the loop sends its messages without waiting for it: a crash
//! in between loses what was acknowledged).

mod client;
pub mod proto;
mod server;

use std::sync::{Arc, Mutex};

use fjord_log::LogConfig;
use fjord_replication::{BoxFuture, NodeId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use self::client::{Client, ReadOutcome, WriteOutcome};
use crate::check::{self, Violation};
use crate::faults::FaultClass;
use crate::history::{History, Offset, ReaderId, Value};
use crate::seed::{stream, Salt};
use crate::workload::{ClientEnv, NodeIo, Recorder, Workload, WorkloadKind, WorldInfo};

pub use server::TICK;

pub const ACK_BEFORE_FSYNC: &str = "ack-before-fsync";
pub const ACK_BEFORE_QUORUM: &str = "ack-before-quorum";
pub const VOTE_NOT_PERSISTED: &str = "vote-not-persisted";
pub const NO_TRUNCATE_ON_CONFLICT: &str = "no-truncate-on-conflict";
pub const COMMIT_OLD_TERM_BY_COUNT: &str = "commit-old-term-by-count";

/// Partitions (Raft groups) of the world.
pub const GROUPS: u32 = 2;

/// The registration of the raft workload.
pub const KIND: WorkloadKind = WorkloadKind {
    name: "raft",
    bugs: &[
        ACK_BEFORE_FSYNC,
        ACK_BEFORE_QUORUM,
        VOTE_NOT_PERSISTED,
        NO_TRUNCATE_ON_CONFLICT,
        COMMIT_OLD_TERM_BY_COUNT,
    ],
    faults: &FaultClass::ALL,
    build,
};

/// Name of the check that reports protocol violations seen by the nodes.
pub const PROTOCOL_CHECK: &str = "protocol-violation";

/// Raft settings a world picks (see `build`).
#[derive(Clone, Copy, Debug)]
pub struct RaftSettings {
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Election timeouts are drawn from `[min, min + jitter)` ticks.
    pub election_jitter_ticks: u32,
}

/// What every node and client of a world shares.
pub struct Shared {
    pub servers: Vec<NodeId>,
    /// Voters of each group.
    pub groups: Arc<Vec<Vec<NodeId>>>,
    pub recorder: Recorder,
    pub noop_delay_ticks: u32,
    pub raft: RaftSettings,
    pub log_config: LogConfig,
    /// Protocol violations the nodes reported.
    violations: Mutex<Vec<String>>,
    /// Offset of the write the liveness probe committed, per group.
    liveness: Mutex<Vec<Option<Offset>>>,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations
            .lock()
            .expect("violations poisoned")
            .push(what);
    }
}

fn build(info: &WorldInfo) -> Arc<dyn Workload> {
    let mut rng = stream(info.seed, Salt::Workload);
    let groups: Vec<Vec<NodeId>> = (0..GROUPS)
        .map(|p| {
            if p == 0 || info.servers.len() <= 3 {
                info.servers.clone()
            } else {
                let mut v: Vec<NodeId> =
                    info.servers.choose_multiple(&mut rng, 3).copied().collect();
                v.sort();
                v
            }
        })
        .collect();
    // Most worlds delay each new leader's no-op, so that leaders replicate entries of
    // earlier terms before any of their own (still correct Raft; see RaftConfig).
    let noop_delay_ticks = if rng.gen_bool(0.25) {
        0
    } else {
        rng.gen_range(1..=30)
    };
    // Swarm over the Raft settings: production's (pre-vote, check-quorum, wide election
    // jitter) in half the worlds; otherwise each protection may be off and the jitter narrow,
    // so that elections collide (split votes, two candidates of one term) far more often.
    let production = rng.gen_bool(0.5);
    let raft = RaftSettings {
        pre_vote: production || rng.gen_bool(0.5),
        check_quorum: production || rng.gen_bool(0.5),
        election_jitter_ticks: if production || rng.gen_bool(0.5) {
            30
        } else {
            rng.gen_range(2..=6)
        },
    };
    Arc::new(RaftWorkload {
        shared: Arc::new(Shared {
            servers: info.servers.clone(),
            groups: Arc::new(groups),
            recorder: info.recorder.clone(),
            noop_delay_ticks,
            raft,
            log_config: LogConfig {
                // Small segments: closed segments, rolling, and corruption found on read.
                segment_size_max_bytes: 16 * 1024,
                retention_ms: None,
                ..LogConfig::default()
            },
            violations: Mutex::new(Vec::new()),
            liveness: Mutex::new(vec![None; GROUPS as usize]),
        }),
    })
}

struct RaftWorkload {
    shared: Arc<Shared>,
}

impl RaftWorkload {
    fn client_of(&self, env: ClientEnv) -> Client {
        let rng = ChaCha8Rng::seed_from_u64(env.seed);
        Client::new(env, self.shared.groups.clone(), rng)
    }
}

/// A value unique in the world: the client's index and a counter.
fn value_of(index: usize, n: u64) -> Value {
    ((index as u64 + 1) << 40) | n
}

/// Writes a fresh value to `group` and records the outcome.
async fn write_once(c: &mut Client, group: u32, n: u64) -> Option<Offset> {
    let value = value_of(c.env.index, n);
    let op = c.env.recorder.invoke_write(c.env.id, group, value);
    match c.write(group, value).await {
        WriteOutcome::Written(offset) => {
            c.env.recorder.written(op, offset);
            Some(offset)
        }
        WriteOutcome::Failed(why) => {
            c.env.recorder.failed(op, why);
            None
        }
        WriteOutcome::Unknown(why) => {
            c.env.recorder.indeterminate(op, why);
            None
        }
    }
}

/// Reads `group` from `from` in session `reader`, recording the outcome; returns the next
/// offset to read.
async fn read_once(c: &mut Client, group: u32, reader: ReaderId, from: Offset) -> Offset {
    let op = c.env.recorder.invoke_read(c.env.id, group, reader, from);
    match c.read(group, from, false).await {
        ReadOutcome::Records { records, .. } => {
            let next = records.last().map_or(from, |(o, _)| o + 1);
            c.env.recorder.read(op, records);
            next
        }
        ReadOutcome::Failed(why) => {
            c.env.recorder.failed(op, why);
            from
        }
        ReadOutcome::Unknown(why) => {
            c.env.recorder.indeterminate(op, why);
            from
        }
    }
}

impl Workload for RaftWorkload {
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()> {
        Box::pin(server::serve(io, self.shared.clone()))
    }

    fn clients(&self) -> usize {
        4
    }

    /// Clients 0 and 1 write to random partitions; client 2 reads both partitions forward
    /// (one reader session each); client 3 mixes writes and reads.
    fn client(&self, env: ClientEnv) -> BoxFuture<'static, ()> {
        let mut c = self.client_of(env);
        Box::pin(async move {
            let index = c.env.index;
            let mut from = [0; GROUPS as usize];
            for n in 0.. {
                let group = c.rng.gen_range(0..GROUPS);
                let read = index == 2 || (index == 3 && c.rng.gen_bool(0.5));
                if read {
                    let reader = ReaderId(index as u64 * u64::from(GROUPS) + u64::from(group));
                    from[group as usize] =
                        read_once(&mut c, group, reader, from[group as usize]).await;
                } else {
                    write_once(&mut c, group, n).await;
                }
                let pause = std::time::Duration::from_micros(c.rng.gen_range(0..20_000));
                c.env.clock.sleep(pause).await;
            }
        })
    }

    /// A new write commits in every partition.
    fn liveness(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        let mut c = self.client_of(env);
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut n = 0;
            for group in 0..GROUPS {
                loop {
                    n += 1;
                    if let Some(offset) = write_once(&mut c, group, n).await {
                        shared.liveness.lock().expect("liveness poisoned")[group as usize] =
                            Some(offset);
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// Reads every partition from its leader, from the start to past the liveness write.
    fn final_reads(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        let mut c = self.client_of(env);
        let shared = self.shared.clone();
        Box::pin(async move {
            for group in 0..GROUPS {
                let past = shared.liveness.lock().expect("liveness poisoned")[group as usize]
                    .ok_or("no liveness write")?;
                let mut records: Vec<(Offset, Value)> = Vec::new();
                let mut from = 0;
                loop {
                    match c.read(group, from, true).await {
                        ReadOutcome::Records { next, records: got } => {
                            if got.is_empty() && next <= from {
                                if from > past {
                                    break;
                                }
                                // The leader has not learned the commit point yet.
                                c.env.clock.sleep(server::TICK).await;
                                continue;
                            }
                            records.extend(got);
                            from = next.max(from);
                        }
                        ReadOutcome::Failed(_) | ReadOutcome::Unknown(_) => {
                            c.env.clock.sleep(server::TICK).await;
                        }
                    }
                }
                c.env.recorder.final_read(group, records);
            }
            Ok(())
        })
    }

    fn check(&self, history: &History) -> Vec<Violation> {
        let mut found = check::run_all(history);
        let messages = self
            .shared
            .violations
            .lock()
            .expect("violations poisoned")
            .clone();
        if !messages.is_empty() {
            found.push(Violation {
                check: PROTOCOL_CHECK,
                count: messages.len(),
                messages: messages
                    .into_iter()
                    .take(check::MESSAGES_PER_CHECK_MAX)
                    .collect(),
            });
        }
        found
    }
}
