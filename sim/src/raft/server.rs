//! A server node of the raft workload: the real replication node loop
//! ([`fjord_replication::node::run_node`] over [`MultiRaft`] and [`LogStorage`] on the
//! node's disk), a client front end, and an observer recording what the replicas believe.
//!
//! ```text
//!   network ──demux── from a server ──▶ InboxNetwork ──▶ run_node (MultiRaft, one log per group)
//!              └───── from a client ──▶ front end ──▶ RaftNodeHandle (propose / read)
//! ```
//!
//! [`LogStorage`]: fjord_replication::storage::LogStorage

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_log::batch::{build_batch, decode_records, BatchHeader, BatchIter, RecordSpec};
use fjord_replication::multiraft::{DriverError, GroupEvent, GroupId, MultiRaft, MultiRaftConfig};
use fjord_replication::node::{run_node, Acks, NodeLoopConfig, ProposeFailure, RaftNodeHandle};
use fjord_replication::raft::{Membership, RaftBugs, RaftError, Role};
use fjord_replication::{BoxFuture, Envelope, Instant, Network, NodeId};
use futures::channel::mpsc;
use futures::StreamExt;

use super::proto::{Answer, Reply, Request};
use super::{Shared, ACK_BEFORE_FSYNC, ACK_BEFORE_QUORUM, COMMIT_OLD_TERM_BY_COUNT};
use super::{NO_TRUNCATE_ON_CONFLICT, VOTE_NOT_PERSISTED};
use crate::inbox::InboxNetwork;
use crate::workload::{NodeIo, Recorder};

/// Interval of the Raft tick (the cores count election timeouts and heartbeats in ticks).
pub const TICK: Duration = Duration::from_millis(10);
/// Largest read reply, in batch bytes.
const READ_BYTES_MAX: usize = 32 * 1024;
/// Replicas report their committed prefix at most this often (per group).
const PREFIX_REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// The group id of partition `p`.
pub fn group_id(p: u32) -> GroupId {
    GroupId::new(1, p)
}

/// The value a batch carries: one record whose value is the 8-byte value.
pub fn value_batch(value: u64, timestamp_ms: i64) -> BytesMut {
    let batch = build_batch(
        &[RecordSpec {
            key: None,
            value: Some(Bytes::copy_from_slice(&value.to_be_bytes())),
            headers: Vec::new(),
            timestamp_ms,
        }],
        &Default::default(),
    )
    .expect("a one-record batch builds");
    BytesMut::from(&batch[..])
}

/// The `(offset, value)` records of committed batches; `None` if a batch is corrupt or is
/// not one of ours.
fn records_of(bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for item in BatchIter::new(bytes) {
        let (header, batch) = item.ok()?;
        BatchHeader::validate(batch).ok()?;
        if header.is_control() {
            continue;
        }
        for r in decode_records(batch).ok()? {
            let value = r.value?;
            let value: [u8; 8] = value.as_ref().try_into().ok()?;
            out.push((r.offset, u64::from_be_bytes(value)));
        }
    }
    Some(out)
}

/// The replication bugs of the world's injected bugs.
fn raft_bugs(io: &NodeIo) -> RaftBugs {
    RaftBugs {
        ack_before_fsync: io.bugs.is_on(ACK_BEFORE_FSYNC),
        vote_not_persisted: io.bugs.is_on(VOTE_NOT_PERSISTED),
        no_truncate_on_conflict: io.bugs.is_on(NO_TRUNCATE_ON_CONFLICT),
        commit_old_term_by_count: io.bugs.is_on(COMMIT_OLD_TERM_BY_COUNT),
    }
}

/// One incarnation of a server node.
pub async fn serve(io: NodeIo, shared: Arc<Shared>) {
    if io.bugs.is_on(ACK_BEFORE_FSYNC) {
        // With the bug, the node acknowledges before its device completes the fsync.
        io.sim_disk.device().defer_syncs();
    }
    let mut cfg = MultiRaftConfig::new(io.id, "", io.seed);
    cfg.raft.bugs = raft_bugs(&io);
    cfg.raft.noop_delay_ticks = shared.noop_delay_ticks;
    cfg.raft.pre_vote = shared.raft.pre_vote;
    cfg.raft.check_quorum = shared.raft.check_quorum;
    cfg.raft.election_timeout_max_ticks =
        cfg.raft.election_timeout_min_ticks + shared.raft.election_jitter_ticks;
    cfg.log = shared.log_config.clone();
    let mut multi = match MultiRaft::open(cfg, io.disk.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(error = %e, "cannot open the node's groups: stopping");
            return;
        }
    };
    for (p, voters) in shared.groups.iter().enumerate() {
        if !voters.contains(&io.id) {
            continue;
        }
        let membership = Membership::with_voters(voters.iter().copied());
        let config = shared.log_config.clone();
        if let Err(e) = multi.create_group(group_id(p as u32), membership, config) {
            tracing::info!(error = %e, "cannot create a group: stopping");
            return;
        }
    }

    let (raft_tx, raft_rx) = mpsc::unbounded();
    let (client_tx, client_rx) = mpsc::unbounded();
    let servers: BTreeSet<NodeId> = shared.servers.iter().copied().collect();
    let net = io.network.clone();
    io.spawner.spawn(
        "demux",
        Box::pin(async move {
            loop {
                let env = net.recv().await;
                let to = if servers.contains(&env.from) {
                    &raft_tx
                } else {
                    &client_tx
                };
                let _ = to.unbounded_send(env);
            }
        }),
    );
    let (handle, commands) = RaftNodeHandle::channel();
    let front = FrontEnd {
        io: FrontIo {
            incarnation: io.incarnation,
            network: io.network.clone(),
            spawner: io.spawner.clone(),
            clock: io.clock.clone(),
        },
        handle,
        seen: BTreeSet::new(),
        groups: shared.groups.len() as u32,
    };
    io.spawner
        .spawn("front end", Box::pin(front.run(client_rx)));

    let observer = Arc::new(Mutex::new(Observer {
        node: io.id,
        recorder: shared.recorder.clone(),
        clock: io.clock.clone(),
        groups: BTreeMap::new(),
    }));
    let settle = io.sim_disk.clone();
    let loop_cfg = NodeLoopConfig {
        tick: TICK,
        ack_before_quorum: io.bugs.is_on(ACK_BEFORE_QUORUM),
        // The injected ack-before-fsync acknowledges without waiting for the device to
        // finish its syncs (a crash meanwhile loses what was acknowledged).
        io_wait: (!io.bugs.is_on(ACK_BEFORE_FSYNC)).then(|| {
            let wait: fjord_replication::IoWait =
                Arc::new(move || -> BoxFuture<'static, ()> { Box::pin(settle.settle()) });
            wait
        }),
        observer: Some(Arc::new(move |multi: &MultiRaft, events: &[GroupEvent]| {
            observer
                .lock()
                .expect("observer poisoned")
                .observe(multi, events);
        })),
    };
    // The Raft loop's view of the network: only messages from servers.
    let raft_net = Arc::new(InboxNetwork::new(io.network.clone(), raft_rx));
    let result = run_node(io.clock.clone(), raft_net, multi, commands, loop_cfg).await;
    match result {
        Ok(()) => tracing::info!("node loop ended"),
        Err(DriverError::Raft {
            group,
            source: RaftError::Protocol { from, reason },
        }) => {
            tracing::warn!(%group, %from, %reason, "protocol violation: stopping");
            shared.violation(format!(
                "{}.{}: group {group}: protocol violation by {from}: {reason}",
                io.id, io.incarnation
            ));
        }
        Err(e) => tracing::info!(error = %e, "node loop failed: stopping"),
    }
}

#[derive(Clone)]
struct FrontIo {
    incarnation: u32,
    network: Arc<dyn Network>,
    spawner: Arc<dyn fjord_replication::Spawner>,
    clock: Arc<dyn fjord_replication::Clock>,
}

impl FrontIo {
    fn reply(&self, to: NodeId, req: u64, answer: Answer) {
        let reply = Reply {
            req,
            incarnation: self.incarnation,
            answer,
        };
        self.network.send(to, reply.encode());
    }
}

/// Answers clients.
struct FrontEnd {
    io: FrontIo,
    handle: RaftNodeHandle,
    /// Write requests seen by this incarnation: never applied twice.
    seen: BTreeSet<(NodeId, u64)>,
    groups: u32,
}

impl FrontEnd {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Envelope>) {
        while let Some(Envelope { from, payload, .. }) = rx.next().await {
            let Some(request) = Request::decode(payload) else {
                continue;
            };
            match request {
                Request::Hello { req } => self.io.reply(from, req, Answer::Hello),
                Request::Write {
                    req,
                    group,
                    incarnation,
                    value,
                } => {
                    if incarnation != self.io.incarnation {
                        self.io.reply(from, req, Answer::Stale);
                        continue;
                    }
                    if !self.seen.insert((from, req)) {
                        continue; // A duplicate: the first copy is answered.
                    }
                    if group >= self.groups {
                        self.io.reply(from, req, Answer::NotLeader { hint: None });
                        continue;
                    }
                    let io = self.io.clone();
                    let handle = self.handle.clone();
                    self.io.spawner.spawn(
                        "write",
                        Box::pin(async move {
                            let batch = value_batch(value, io.clock.wall_clock_ms());
                            let answer =
                                match handle.propose(group_id(group), batch, Acks::Quorum).await {
                                    Ok((base, _)) => Answer::Written { offset: base },
                                    Err(ProposeFailure::NotLeader { leader }) => {
                                        Answer::NotLeader { hint: leader }
                                    }
                                    Err(
                                        ProposeFailure::Indeterminate | ProposeFailure::Stopped,
                                    ) => Answer::Unknown,
                                };
                            io.reply(from, req, answer);
                        }),
                    );
                }
                Request::Read {
                    req,
                    group,
                    from: start,
                    leader_only,
                } => {
                    let io = self.io.clone();
                    let handle = self.handle.clone();
                    self.io.spawner.spawn(
                        "read",
                        Box::pin(async move {
                            let answer = read(&handle, group, start, leader_only).await;
                            io.reply(from, req, answer);
                        }),
                    );
                }
            }
        }
    }
}

async fn read(handle: &RaftNodeHandle, group: u32, from: u64, leader_only: bool) -> Answer {
    let id = group_id(group);
    if leader_only {
        match handle.status(id).await {
            Some(s) if s.role == Role::Leader => {}
            Some(s) => return Answer::NotLeader { hint: s.leader },
            None => return Answer::NotLeader { hint: None },
        }
    }
    match handle.read_committed(id, from, READ_BYTES_MAX).await {
        Ok(read) => match records_of(&read.bytes) {
            Some(records) => Answer::Records {
                next: read.next_offset,
                records,
            },
            None => Answer::ReadFailed,
        },
        Err(_) => Answer::ReadFailed,
    }
}

/// Per group: how far this incarnation has hashed its committed prefix.
#[derive(Default)]
struct PrefixState {
    /// End offset of the hashed prefix (a batch boundary).
    end: u64,
    hash: u64,
    /// Last report: end offset and when.
    reported: Option<(u64, Instant)>,
    /// A read failed (corruption): stop hashing in this incarnation.
    failed: bool,
}

/// Records leaderships (at once) and committed-prefix hashes (rate limited) from the node
/// loop's rounds.
struct Observer {
    node: NodeId,
    recorder: Recorder,
    clock: Arc<dyn fjord_replication::Clock>,
    groups: BTreeMap<GroupId, PrefixState>,
}

impl Observer {
    fn observe(&mut self, multi: &MultiRaft, events: &[GroupEvent]) {
        for e in events {
            if let GroupEvent::StatusChanged { group, status } = e {
                if status.role == Role::Leader {
                    self.recorder
                        .leader(self.node, group.partition, status.term);
                }
            }
        }
        let now = self.clock.now();
        for id in multi.group_ids() {
            let Some(raft) = multi.group(id) else {
                continue;
            };
            let commit = raft.commit_end();
            let state = self.groups.entry(id).or_default();
            if state.failed || commit <= state.end {
                continue;
            }
            let due = state
                .reported
                .is_none_or(|(_, at)| now.saturating_duration_since(at) >= PREFIX_REPORT_INTERVAL);
            if !due {
                continue;
            }
            let log = raft.log().log();
            while state.end < commit {
                let Ok(read) = log.read(state.end, 1 << 20, commit) else {
                    state.failed = true;
                    break;
                };
                if read.bytes.is_empty() {
                    break;
                }
                let mut end = state.end;
                for item in BatchIter::new(&read.bytes) {
                    let Ok((header, batch)) = item else {
                        break;
                    };
                    let mut h = std::hash::DefaultHasher::new();
                    h.write_u64(state.hash);
                    h.write(batch);
                    state.hash = h.finish();
                    end = header.next_offset();
                }
                if end <= state.end {
                    state.failed = true;
                    break;
                }
                state.end = end;
            }
            if !state.failed && state.end > 0 {
                state.reported = Some((state.end, now));
                self.recorder
                    .prefix(self.node, id.partition, state.end - 1, state.hash);
            }
        }
    }
}
