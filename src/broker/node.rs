//! The broker's actor: one loop owning all of a node's state. See [`super`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_log::{BatchHeader, BatchIter, LogConfig};
use fjord_replication::multiraft::{GroupEvent, GroupId, MultiRaft, MultiRaftConfig};
use fjord_replication::raft::{Membership, ProposeError, RaftLog, Role, Term};
use fjord_replication::NodeId;
use futures::channel::mpsc::{self, TryRecvError};
use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::metrics::RaftCounters;
use super::producer_state::ProducerStateTable;
use super::rpc::{raft_frames, ApiFailure, ControllerOp, ControllerReply, LeaderInfo, NodeMessage};
use super::{BrokerConfig, BrokerError, BrokerIo, Command};
use crate::controller::{
    self, AlterConfigOp, AlterOpType, ApplyOutcome, Liveness, MetadataImage, MetadataRecord,
    BROKER_SESSION_TIMEOUT_DEFAULT_MS,
};

mod api;
mod fetch;
mod groups;
mod observe;
mod produce;

/// Inputs one round takes before doing its IO.
const ROUND_INPUTS_MAX: usize = 1024;
/// Raft frames are cut well below the transport's frame limit.
const FRAME_TARGET_BYTES: usize = fjord_replication::io::FRAME_SIZE_MAX_BYTES / 4;
/// How often leaders re-announce their partitions (anti-entropy of the leadership table).
const LEADER_GOSSIP_INTERVAL_MS: u64 = 1_000;
/// Broker heartbeats to the controller.
const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// A forwarded controller request is abandoned (and answered with a timeout) after this.
const CONTROLLER_RPC_TIMEOUT_MS: u64 = 10_000;
/// Metadata log entries between two snapshots of the image.
const METADATA_SNAPSHOT_INTERVAL_OFFSETS: u64 = 10_000;
/// Producer ids a broker takes from the controller at once.
const PRODUCER_ID_BLOCK_SIZE: u32 = 1_000;

/// What a broker reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerStatus {
    pub node_id: NodeId,
    pub metadata_leader: Option<NodeId>,
    pub metadata_applied: u64,
    pub cluster_id: String,
    pub registered: bool,
    /// Registered under this process's incarnation and unfenced in the local metadata image:
    /// the broker lists itself to clients and may serve them (Kafka enables its client
    /// listeners at this point, once the broker is unfenced).
    pub serving: bool,
    /// Every local Raft group's role, term and offsets.
    pub groups: BTreeMap<GroupId, fjord_replication::raft::Status>,
    /// Leaders known for every partition, local or gossiped.
    pub leaders: BTreeMap<GroupId, (Term, NodeId)>,
    pub topics: BTreeMap<String, u32>,
}

/// Who is waiting for a controller operation.
pub(super) enum Responder {
    /// A slot of a local job.
    Job { job: u64, slot: usize },
    /// A forwarded request from another broker.
    Remote { node: NodeId, id: u64 },
    /// Internal (registration, internal topics): the outcome is only logged.
    Internal(&'static str),
}

/// The result of one part of a job.
pub(super) enum SlotResult {
    Controller(Result<ControllerReply, ApiFailure>),
    Produce(kafka_protocol::messages::produce_response::PartitionProduceResponse),
}

type Finish = Box<dyn FnOnce(&Node, Vec<SlotResult>) -> Option<ResponseKind> + Send>;

/// A Kafka request whose parts complete at different times.
pub(super) struct Job {
    slots: Vec<Option<SlotResult>>,
    finish: Option<Finish>,
    reply: Option<oneshot::Sender<Option<ResponseKind>>>,
}

/// A controller operation in flight on the controller leader.
struct InflightOp {
    end: u64,
    term: Term,
    responder: Responder,
}

/// The controller's work queue (meaningful on the metadata leader only).
struct ControllerState {
    queue: VecDeque<(ControllerOp, Responder)>,
    inflight: Option<InflightOp>,
    liveness: Liveness,
    last_tick_ms: u64,
}

impl Default for ControllerState {
    fn default() -> Self {
        ControllerState {
            queue: VecDeque::new(),
            inflight: None,
            liveness: Liveness::new(BROKER_SESSION_TIMEOUT_DEFAULT_MS),
            last_tick_ms: 0,
        }
    }
}

/// A forwarded controller request awaiting its answer.
struct PendingRpc {
    responder: Responder,
    deadline_ms: u64,
}

/// A local replica of a partition.
pub(super) struct PartitionState {
    pub partition: i32,
    /// While leading: producer state including appended, uncommitted batches. Rebuilt from
    /// the log when leadership is gained.
    pub producers: Option<(Term, ProducerStateTable)>,
}

pub(crate) struct Node {
    pub(super) io: BrokerIo,
    pub(super) cfg: BrokerConfig,
    pub(super) multi: MultiRaft,
    pub(super) image: MetadataImage,
    pub(super) leaders: BTreeMap<GroupId, LeaderInfo>,
    pub(super) partitions: BTreeMap<GroupId, PartitionState>,
    pub(super) jobs: BTreeMap<u64, Job>,
    next_job: u64,
    pub(super) produce_waiters: Vec<produce::Waiter>,
    pub(super) fetch_waiters: Vec<fetch::FetchWait>,
    ctl: ControllerState,
    pending_rpcs: BTreeMap<u64, PendingRpc>,
    next_rpc: u64,
    incarnation: u64,
    pub(super) rng: ChaCha8Rng,
    registered: bool,
    next_heartbeat_ms: u64,
    next_gossip_ms: u64,
    next_maintenance_ms: u64,
    next_balance_ms: u64,
    /// Producer ids this broker may hand out: `[next, end)`.
    pub(super) producer_ids: (i64, i64),
    pub(super) producer_id_waiters: Vec<oneshot::Sender<Option<ResponseKind>>>,
    producer_id_request_pending: bool,
    /// Outcomes of applied metadata records, by end offset, for the in-flight op.
    last_outcomes: BTreeMap<u64, ApplyOutcome>,
    /// Set when something committed this round: parked fetches are re-evaluated.
    pub(super) commits_advanced: bool,
    /// A local log served corrupt data: the node stops (its log is verified at restart).
    pub(super) fatal: Option<String>,
    pub(super) coordinators: groups::Coordinators,
    raft_counters: RaftCounters,
}

impl Node {
    pub(super) fn open(io: BrokerIo, cfg: BrokerConfig) -> Result<Node, BrokerError> {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let incarnation = rng.gen::<u64>() >> 1;
        let mut mcfg = MultiRaftConfig::new(cfg.node_id, cfg.data_dir.clone(), cfg.seed);
        mcfg.raft = cfg.raft.clone();
        mcfg.raft.bugs = cfg.bugs.raft;
        let mut multi = MultiRaft::open(mcfg, Arc::clone(&io.disk))?;
        if let Some(jobs) = &io.disk_jobs {
            multi.set_disk_jobs(Arc::clone(jobs));
        }
        if multi.group(GroupId::METADATA).is_none() {
            // First start: every node begins with the configured controller quorum; nodes
            // outside it are added as learners by the controller once they register.
            multi.create_group(
                GroupId::METADATA,
                Membership::with_voters(cfg.controller_voters.iter().copied()),
                metadata_log_config(),
            )?;
        }
        let mut node = Node {
            io,
            cfg,
            multi,
            image: MetadataImage::new(),
            leaders: BTreeMap::new(),
            partitions: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 0,
            produce_waiters: Vec::new(),
            fetch_waiters: Vec::new(),
            ctl: ControllerState::default(),
            pending_rpcs: BTreeMap::new(),
            next_rpc: 1,
            incarnation,
            rng,
            registered: false,
            next_heartbeat_ms: 0,
            next_gossip_ms: 0,
            next_maintenance_ms: 0,
            next_balance_ms: 0,
            producer_ids: (0, 0),
            producer_id_waiters: Vec::new(),
            producer_id_request_pending: false,
            last_outcomes: BTreeMap::new(),
            commits_advanced: false,
            fatal: None,
            coordinators: groups::Coordinators::default(),
            raft_counters: RaftCounters::default(),
        };
        node.load_metadata_snapshot()?;
        node.apply_metadata()?;
        Ok(node)
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.io.clock.now().as_nanos() / 1_000_000
    }

    pub(super) fn wall_ms(&self) -> i64 {
        self.io.clock.wall_clock_ms()
    }

    pub(super) fn id(&self) -> NodeId {
        self.cfg.node_id
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), BrokerError> {
        let network = Arc::clone(&self.io.network);
        let clock = Arc::clone(&self.io.clock);
        let mut recv = network.recv().fuse();
        let mut tick = clock.sleep(self.cfg.tick).fuse();
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            let mut inputs = 0usize;
            // Set when the command channel turns out closed while draining: the round
            // finishes, then the loop stops.
            let mut closed = false;
            futures::select_biased! {
                env = recv => {
                    recv = network.recv().fuse();
                    self.on_frame(env.from, &env.payload)?;
                    inputs += 1;
                }
                cmd = commands.next() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.begin_shutdown();
                        shutdown = Some(reply);
                    }
                    Some(cmd) => {
                        self.on_command(cmd);
                        inputs += 1;
                    }
                    None => break,
                },
                () = tick => {
                    tick = clock.sleep(self.cfg.tick).fuse();
                    self.on_tick()?;
                }
            }
            while inputs < ROUND_INPUTS_MAX {
                if let Some(env) = (&mut recv).now_or_never() {
                    recv = network.recv().fuse();
                    self.on_frame(env.from, &env.payload)?;
                } else {
                    match commands.try_recv() {
                        Ok(Command::Shutdown { reply }) => {
                            self.begin_shutdown();
                            shutdown = Some(reply);
                        }
                        Ok(cmd) => self.on_command(cmd),
                        Err(TryRecvError::Empty) => break,
                        // Reported once: `try_recv` has now fused the receiver and
                        // `select_biased!` skips it from now on, so `commands.next()` never
                        // yields `None` again. Ignoring it kept the broker running forever
                        // after its last handle was dropped.
                        Err(TryRecvError::Closed) => {
                            closed = true;
                            break;
                        }
                    }
                }
                inputs += 1;
            }
            self.round_early_answers()?;
            self.round_io()?;
            if let Some(wait) = &self.io.io_wait {
                wait().await;
            }
            self.round_answers()?;
            if let Some(why) = self.fatal.take() {
                return Err(BrokerError::Corrupt(why));
            }
            if let Some(reply) = shutdown.take() {
                if self.shutdown_complete() {
                    let _ = reply.send(());
                    break;
                }
                shutdown = Some(reply);
            }
            if closed {
                break;
            }
        }
        Ok(())
    }

    /// Before the round's IO: answers what this round's inputs already decided (commits
    /// advanced by acknowledgements), so that those answers do not wait for the fsyncs of
    /// newer entries.
    fn round_early_answers(&mut self) -> Result<(), BrokerError> {
        self.multi.collect_commits();
        let events = self.multi.take_events();
        self.on_events(events)?;
        self.resolve_produce_waiters();
        self.resolve_fetch_waiters(false);
        Ok(())
    }

    /// The disk half of a round: every group's IO. A leader's appends leave before its own
    /// fsync, so followers persist them meanwhile.
    fn round_io(&mut self) -> Result<(), BrokerError> {
        let network = &self.io.network;
        self.multi.process_sending(|to, msgs| {
            for frame in raft_frames(msgs, FRAME_TARGET_BYTES) {
                network.send(to, frame);
            }
        })?;
        Ok(())
    }

    /// The rest of a round, once the IO is done: apply, answer, propose what follows, send.
    fn round_answers(&mut self) -> Result<(), BrokerError> {
        let events = self.multi.take_events();
        self.on_events(events)?;
        self.apply_metadata()?;
        self.controller_step();
        self.resolve_produce_waiters();
        self.resolve_fetch_waiters(false);
        self.step_coordinators();
        // Applying and resolving may have proposed more: do that IO in this round too.
        self.multi.process()?;
        let events = self.multi.take_events();
        self.on_events(events)?;
        self.flush_outbox();
        Ok(())
    }

    fn flush_outbox(&mut self) {
        for (to, msgs) in self.multi.take_outbox() {
            for frame in raft_frames(msgs, FRAME_TARGET_BYTES) {
                self.io.network.send(to, frame);
            }
        }
    }

    pub(super) fn send(&self, to: NodeId, msg: &NodeMessage) {
        self.io.network.send(to, msg.encode());
    }

    fn on_frame(&mut self, from: NodeId, payload: &[u8]) -> Result<(), BrokerError> {
        let msg = match NodeMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(node = %self.id(), %from, "undecodable node message: {e}");
                return Ok(());
            }
        };
        match msg {
            NodeMessage::Raft(msgs) => {
                for (group, m) in msgs {
                    self.multi.step(from, group, m)?;
                }
            }
            NodeMessage::Leaders(infos) => {
                for info in infos {
                    self.learn_leader(info);
                }
            }
            NodeMessage::ControllerRequest { id, op } => {
                self.submit_controller_op(op, Responder::Remote { node: from, id });
            }
            NodeMessage::ControllerResponse { id, result } => {
                if let Some(p) = self.pending_rpcs.remove(&id) {
                    self.respond(p.responder, result);
                }
            }
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Kafka {
                ctx,
                request,
                reply,
            } => self.on_kafka(*ctx, *request, reply),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.node_metrics());
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            node_id: self.id(),
            metadata_leader: self.multi.group(GroupId::METADATA).and_then(|r| r.leader()),
            metadata_applied: self.image.applied_end(),
            cluster_id: self.image.cluster_id().unwrap_or_default().to_string(),
            registered: self.registered,
            serving: self.serving(),
            groups: self
                .multi
                .group_ids()
                .filter_map(|g| self.multi.group(g).map(|r| (g, r.status())))
                .collect(),
            leaders: self
                .leaders
                .iter()
                .map(|(g, l)| (*g, (l.term, l.leader)))
                .collect(),
            topics: self
                .image
                .topics()
                .iter()
                .map(|(name, t)| (name.clone(), t.topic_id))
                .collect(),
        }
    }

    // ----- time --------------------------------------------------------------------------

    fn on_tick(&mut self) -> Result<(), BrokerError> {
        self.multi.tick(self.wall_ms())?;
        let now = self.now_ms();
        if now >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now + HEARTBEAT_INTERVAL_MS;
            self.heartbeat();
        }
        if now >= self.next_gossip_ms {
            self.next_gossip_ms = now + LEADER_GOSSIP_INTERVAL_MS;
            self.gossip_leaders(None);
        }
        if now >= self.next_maintenance_ms {
            self.next_maintenance_ms = now + self.cfg.log_maintenance_interval.as_millis() as u64;
            self.maintain_logs();
        }
        // Kafka's auto.leader.rebalance (leader.imbalance.check.interval).
        let balance_ms = self.cfg.leader_balance_interval.as_millis() as u64;
        if balance_ms > 0 && now >= self.next_balance_ms {
            if self.next_balance_ms > 0 {
                self.balance_leaders();
            }
            self.next_balance_ms = now + balance_ms;
        }
        let expired: Vec<u64> = self
            .pending_rpcs
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending_rpcs.remove(&id) {
                self.respond(
                    p.responder,
                    Err(failure(
                        ResponseError::RequestTimedOut,
                        "controller did not answer",
                    )),
                );
            }
        }
        self.expire_produce_waiters();
        self.resolve_fetch_waiters(true);
        Ok(())
    }

    /// Retention and compaction of every local partition, bounded by its commit end.
    fn maintain_logs(&mut self) {
        let now = self.wall_ms();
        let groups: Vec<GroupId> = self.partitions.keys().copied().collect();
        for g in groups {
            let Some(raft) = self.multi.group_mut(g) else {
                continue;
            };
            let commit = raft.commit_end();
            let log = raft.log_mut().log_mut();
            match log.enforce_retention(now, commit) {
                Ok(stats) if stats.segments_deleted > 0 => {
                    tracing::debug!(group = %g, ?stats, "retention");
                }
                Ok(_) => {
                    tracing::trace!(group = %g, segments = log.segment_count(), config = ?log.config(), commit, "retention: nothing to delete")
                }
                Err(e) => tracing::warn!(group = %g, "retention failed: {e}"),
            }
            if let Err(e) = log.compact(now, commit) {
                tracing::warn!(group = %g, "compaction failed: {e}");
            }
        }
    }

    /// Hands each partition led here to its preferred replica (the first of its assignment)
    /// when that replica is live and fully caught up, so that leadership spreads the way the
    /// controller placed it.
    fn balance_leaders(&mut self) {
        let me = self.id();
        let groups: Vec<GroupId> = self.partitions.keys().copied().collect();
        for g in groups {
            let Some(preferred) = self
                .image
                .partition_replicas(g.topic, g.partition)
                .and_then(|r| r.first().copied())
            else {
                continue;
            };
            let live = self.image.broker(preferred).is_some_and(|b| !b.fenced);
            let Some(r) = self.multi.group_mut(g) else {
                continue;
            };
            if preferred == me || !live || r.role() != Role::Leader {
                continue;
            }
            let s = r.status();
            if s.matches.get(&preferred) == Some(&s.log_end) {
                tracing::debug!(node = %me, group = %g, to = %preferred, "moving leadership to the preferred replica");
                let _ = r.transfer_leadership(preferred);
            }
        }
    }

    // ----- leadership --------------------------------------------------------------------

    fn on_events(&mut self, events: Vec<GroupEvent>) -> Result<(), BrokerError> {
        for e in events {
            match e {
                GroupEvent::Committed { .. } => self.commits_advanced = true,
                GroupEvent::StatusChanged { group, status } => {
                    self.raft_counters.observe(group, &status);
                    if let Some(leader) = status.leader {
                        self.learn_leader(LeaderInfo {
                            group,
                            term: status.term,
                            leader,
                            isr: Vec::new(),
                        });
                    }
                    if status.role == Role::Leader && group != GroupId::METADATA {
                        self.gossip_leaders(Some(group));
                    }
                    if status.role != Role::Leader {
                        if let Some(p) = self.partitions.get_mut(&group) {
                            p.producers = None;
                        }
                    }
                }
                GroupEvent::SnapshotInstalled { group } => {
                    if group == GroupId::METADATA {
                        self.image = MetadataImage::new();
                        self.load_metadata_snapshot()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn learn_leader(&mut self, info: LeaderInfo) {
        match self.leaders.get(&info.group) {
            Some(known) if known.term > info.term => {}
            Some(known)
                if known.term == info.term
                    && info.isr.is_empty()
                    && known.leader == info.leader => {}
            _ => {
                self.leaders.insert(info.group, info);
            }
        }
    }

    /// The leader of `group` as best known: the local replica's view first, then gossip.
    pub(super) fn leader_of(&self, group: GroupId) -> Option<(Term, NodeId)> {
        if let Some(r) = self.multi.group(group) {
            if let Some(l) = r.leader() {
                return Some((r.term(), l));
            }
        }
        self.leaders.get(&group).map(|l| (l.term, l.leader))
    }

    /// Replicas of a led group that are caught up with its commit (the leader included).
    pub(super) fn isr_of(&self, group: GroupId) -> Option<Vec<NodeId>> {
        let r = self.multi.group(group)?;
        if r.role() == Role::Leader {
            let s = r.status();
            let mut isr: Vec<NodeId> = s
                .matches
                .iter()
                .filter(|(id, m)| **m >= s.commit_end && s.membership.voters.contains(id))
                .map(|(id, _)| *id)
                .collect();
            isr.push(self.id());
            isr.sort();
            return Some(isr);
        }
        self.leaders
            .get(&group)
            .filter(|l| !l.isr.is_empty())
            .map(|l| l.isr.clone())
    }

    /// Announces the partitions this node leads (all, or one) to every known broker.
    fn gossip_leaders(&mut self, only: Option<GroupId>) {
        let mut infos = Vec::new();
        for g in self.multi.group_ids() {
            if g == GroupId::METADATA || only.is_some_and(|o| o != g) {
                continue;
            }
            let Some(r) = self.multi.group(g) else {
                continue;
            };
            if r.role() == Role::Leader {
                infos.push(LeaderInfo {
                    group: g,
                    term: r.term(),
                    leader: self.id(),
                    isr: self.isr_of(g).unwrap_or_default(),
                });
            }
        }
        for info in &infos {
            self.leaders.insert(info.group, info.clone());
        }
        if infos.is_empty() {
            return;
        }
        let msg = NodeMessage::Leaders(infos);
        for peer in self.peers() {
            self.send(peer, &msg);
        }
    }

    /// Every other node this one knows of.
    fn peers(&self) -> BTreeSet<NodeId> {
        let mut peers: BTreeSet<NodeId> = self.image.brokers().keys().copied().collect();
        peers.extend(self.cfg.controller_voters.iter().copied());
        peers.remove(&self.id());
        peers
    }

    // ----- metadata ----------------------------------------------------------------------

    fn load_metadata_snapshot(&mut self) -> Result<(), BrokerError> {
        let Some(r) = self.multi.group(GroupId::METADATA) else {
            return Ok(());
        };
        let data = r.log().snapshot_data();
        if !data.is_empty() {
            self.image = MetadataImage::from_snapshot(&data)
                .map_err(|e| BrokerError::Metadata(e.to_string()))?;
        }
        Ok(())
    }

    /// Applies newly committed metadata batches to the image, then reconciles the local
    /// partitions with it.
    fn apply_metadata(&mut self) -> Result<(), BrokerError> {
        let Some(r) = self.multi.group(GroupId::METADATA) else {
            return Ok(());
        };
        let commit = r.commit_end();
        let start = r.log().start_offset();
        let mut from = self.image.applied_end().max(start);
        let mut changed = false;
        while from < commit {
            let read = match r.log().log().read(from, 1 << 20, commit) {
                Ok(read) => read,
                Err(e) => {
                    if matches!(e, fjord_log::LogError::Corrupt { .. }) {
                        self.multi.mark_for_verification(GroupId::METADATA);
                    }
                    return Err(BrokerError::Metadata(e.to_string()));
                }
            };
            if read.bytes.is_empty() {
                break;
            }
            for item in BatchIter::new(&read.bytes) {
                let (h, batch) = item.map_err(|e| BrokerError::Metadata(e.to_string()))?;
                let end = h.last_offset() + 1;
                if end <= self.image.applied_end() {
                    continue;
                }
                let outcomes = self
                    .image
                    .apply_batch(batch)
                    .map_err(|e| BrokerError::Metadata(e.to_string()))?;
                if let Some(last) = outcomes.into_iter().last() {
                    self.last_outcomes.insert(end, last);
                }
                changed = true;
            }
            from = read.next_offset;
        }
        if changed {
            for b in self.image.brokers().values() {
                if b.id != self.cfg.node_id && !b.rpc_addr.is_empty() {
                    self.io.network.set_peer_address(b.id, &b.rpc_addr);
                }
            }
            self.reconcile_partitions()?;
            self.maybe_snapshot_metadata();
        }
        Ok(())
    }

    fn maybe_snapshot_metadata(&mut self) {
        let applied = self.image.applied_end();
        let Some(r) = self.multi.group_mut(GroupId::METADATA) else {
            return;
        };
        let start = r.log().start_offset();
        if applied.saturating_sub(start) < METADATA_SNAPSHOT_INTERVAL_OFFSETS {
            return;
        }
        let data = self.image.to_snapshot();
        if let Err(e) = r.log_mut().take_snapshot(applied, data) {
            tracing::warn!(node = %self.cfg.node_id, "metadata snapshot failed: {e}");
        }
    }

    /// Creates the groups of partitions assigned here and removes those of deleted topics.
    fn reconcile_partitions(&mut self) -> Result<(), BrokerError> {
        let me = self.id();
        let mut wanted: BTreeMap<GroupId, (String, i32, Vec<NodeId>, LogConfig)> = BTreeMap::new();
        for (name, topic) in self.image.topics() {
            for (p, info) in topic.partitions.iter().enumerate() {
                if info.replicas.contains(&me) {
                    let log_config = self
                        .image
                        .effective_topic_config(name, me, &self.cfg.defaults)
                        .map(|c| c.to_log_config())
                        .unwrap_or_default();
                    wanted.insert(
                        GroupId::new(topic.topic_id, p as u32),
                        (name.clone(), p as i32, info.replicas.clone(), log_config),
                    );
                }
            }
        }
        let existing: Vec<GroupId> = self
            .multi
            .group_ids()
            .filter(|g| *g != GroupId::METADATA)
            .collect();
        for g in existing {
            // Only a topic the image knows was deleted loses its replicas here. An image
            // that has not (yet) applied the topic's creation — its metadata log was cut by
            // corruption and is being repaired, or is still catching up — says nothing about
            // it: deleting the replica would make a Raft voter forget entries it
            // acknowledged.
            let deleted =
                g.topic < self.image.next_topic_id() && self.image.topic_by_id(g.topic).is_none();
            if !wanted.contains_key(&g) && deleted {
                tracing::info!(node = %me, group = %g, "removing partition replica");
                self.multi.remove_group(g)?;
                self.raft_counters.forget(g);
                self.partitions.remove(&g);
                self.leaders.remove(&g);
            }
        }
        for (g, (topic, partition, replicas, log_config)) in wanted {
            if self.multi.group(g).is_none() {
                tracing::info!(node = %me, group = %g, %topic, partition, "creating partition replica");
                self.multi.create_group(
                    g,
                    Membership::with_voters(replicas),
                    log_config.clone(),
                )?;
            }
            if let Some(r) = self.multi.group_mut(g) {
                let log = r.log_mut().log_mut();
                if log.config() != &log_config {
                    if let Err(e) = log.set_config(log_config) {
                        tracing::warn!(group = %g, "invalid log config: {e}");
                    }
                }
            }
            self.partitions.entry(g).or_insert_with(|| PartitionState {
                partition,
                producers: None,
            });
        }
        Ok(())
    }

    /// The partition group of `topic`/`partition`, if the topic exists.
    pub(super) fn group_of(&self, topic: &str, partition: i32) -> Option<GroupId> {
        let t = self.image.topic(topic)?;
        (partition >= 0 && (partition as usize) < t.partitions.len())
            .then(|| GroupId::new(t.topic_id, partition as u32))
    }

    // ----- controller --------------------------------------------------------------------

    fn is_controller(&self) -> bool {
        self.multi.is_leader(GroupId::METADATA)
    }

    pub(super) fn controller_id(&self) -> Option<NodeId> {
        self.multi.group(GroupId::METADATA).and_then(|r| r.leader())
    }

    /// Runs `op` on the controller: queued here if this node is the controller, forwarded
    /// otherwise.
    pub(super) fn submit_controller_op(&mut self, op: ControllerOp, responder: Responder) {
        if self.is_controller() {
            self.ctl.queue.push_back((op, responder));
            return;
        }
        match self.controller_id() {
            Some(leader) if leader != self.id() => {
                let id = self.next_rpc;
                self.next_rpc += 1;
                let deadline_ms = self.now_ms() + CONTROLLER_RPC_TIMEOUT_MS;
                self.pending_rpcs.insert(
                    id,
                    PendingRpc {
                        responder,
                        deadline_ms,
                    },
                );
                self.send(leader, &NodeMessage::ControllerRequest { id, op });
            }
            _ => self.respond(
                responder,
                Err(failure(
                    ResponseError::NotController,
                    "no controller elected yet",
                )),
            ),
        }
    }

    /// Delivers a controller outcome to whoever waits for it.
    fn respond(&mut self, responder: Responder, result: Result<ControllerReply, ApiFailure>) {
        match responder {
            Responder::Job { job, slot } => {
                self.complete_slot(job, slot, SlotResult::Controller(result))
            }
            Responder::Remote { node, id } => {
                self.send(node, &NodeMessage::ControllerResponse { id, result });
            }
            Responder::Internal(what) => match result {
                Ok(reply) => self.on_internal_reply(what, reply),
                Err(e) => {
                    tracing::debug!(node = %self.id(), what, code = e.code, "{}", e.message);
                    if what == "producer-ids" {
                        // InitProducerId is retriable: the clients ask again.
                        self.producer_id_request_pending = false;
                        let code = ResponseError::CoordinatorNotAvailable.code();
                        for reply in std::mem::take(&mut self.producer_id_waiters) {
                            let _ = reply.send(Some(api::init_producer_id_response(-1, -1, code)));
                        }
                    }
                }
            },
        }
    }

    /// See [`BrokerStatus::serving`].
    fn serving(&self) -> bool {
        self.registered
            && self
                .image
                .broker(self.id())
                .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }

    fn on_internal_reply(&mut self, what: &'static str, reply: ControllerReply) {
        match (what, reply) {
            ("register", _) => {
                if !self.registered {
                    tracing::info!(node = %self.id(), "registered with the controller");
                }
                self.registered = true;
            }
            ("producer-ids", ControllerReply::ProducerIds { first, count }) => {
                self.producer_id_request_pending = false;
                self.producer_ids = (first, first + i64::from(count));
                self.serve_producer_id_waiters();
            }
            _ => {}
        }
    }

    fn heartbeat(&mut self) {
        if self.registered {
            let op = ControllerOp::Heartbeat {
                id: self.id(),
                incarnation: self.incarnation,
            };
            self.submit_controller_op(op, Responder::Internal("heartbeat"));
        } else {
            let op = ControllerOp::RegisterBroker {
                id: self.id(),
                incarnation: self.incarnation,
                host: self.cfg.host.clone(),
                kafka_port: self.cfg.kafka_port,
                rack: self.cfg.rack.clone(),
                rpc_addr: self.cfg.rpc_addr.clone(),
            };
            self.submit_controller_op(op, Responder::Internal("register"));
        }
    }

    /// The controller leader's work: wait for its image to be current, then execute queued
    /// operations one at a time (each planned against the image that includes every earlier
    /// one), fence silent brokers, bootstrap the cluster id, add learners.
    fn controller_step(&mut self) {
        if !self.is_controller() {
            // Leadership lost: what was queued or in flight is answered; callers retry.
            if let Some(op) = self.ctl.inflight.take() {
                self.respond(
                    op.responder,
                    Err(failure(ResponseError::NotController, "controller changed")),
                );
            }
            while let Some((_, r)) = self.ctl.queue.pop_front() {
                self.respond(
                    r,
                    Err(failure(ResponseError::NotController, "not the controller")),
                );
            }
            return;
        }
        let Some(r) = self.multi.group(GroupId::METADATA) else {
            return;
        };
        let term = r.term();
        let commit = r.commit_end();
        let current = commit > 0
            && r.log().term_at(commit - 1) == Some(term)
            && self.image.applied_end() >= commit;
        if !current {
            return;
        }
        if let Some(op) = self.ctl.inflight.take() {
            if op.term != term {
                self.respond(
                    op.responder,
                    Err(failure(ResponseError::NotController, "controller changed")),
                );
            } else if self.image.applied_end() >= op.end {
                let outcome = self.last_outcomes.remove(&op.end);
                let result = match outcome {
                    Some(ApplyOutcome::Rejected(e)) => Err(ApiFailure {
                        code: e.code(),
                        message: e.message().to_string(),
                    }),
                    Some(ApplyOutcome::ProducerIds { first, count }) => {
                        Ok(ControllerReply::ProducerIds { first, count })
                    }
                    _ => Ok(ControllerReply::Done),
                };
                self.respond(op.responder, result);
            } else {
                self.ctl.inflight = Some(op);
                return;
            }
        }
        self.last_outcomes.clear();
        let now = self.now_ms();
        if now >= self.ctl.last_tick_ms + 1_000 {
            self.ctl.last_tick_ms = now;
            let mut records = self.ctl.liveness.tick(&self.image, now);
            if self.image.cluster_id().is_none() {
                let id = self.cfg.cluster_id.clone().unwrap_or_else(|| {
                    let bytes: [u8; 16] = self.rng.gen();
                    cluster_id_from_bytes(bytes)
                });
                match self.image.plan_cluster_id(&id) {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(node = %self.id(), "cluster id {id}: {}", e.message())
                    }
                }
            }
            if !records.is_empty() {
                self.ctl.queue.push_front((
                    ControllerOp::Records(records),
                    Responder::Internal("liveness"),
                ));
            }
            self.add_metadata_learners();
        }
        while let Some((op, responder)) = self.ctl.queue.pop_front() {
            match self.plan(op, now) {
                Ok(Planned::Reply(reply)) => self.respond(responder, Ok(reply)),
                Ok(Planned::Records(records)) => {
                    let batch = match controller::metadata_batch(&records, self.wall_ms()) {
                        Ok(b) => b,
                        Err(e) => {
                            self.respond(
                                responder,
                                Err(failure(ResponseError::InvalidRequest, &e.to_string())),
                            );
                            continue;
                        }
                    };
                    match self
                        .multi
                        .propose(GroupId::METADATA, BytesMut::from(&batch[..]))
                    {
                        Ok((_, end)) => {
                            self.ctl.inflight = Some(InflightOp {
                                end,
                                term,
                                responder,
                            });
                            return;
                        }
                        Err(e) => self.respond(
                            responder,
                            Err(failure(ResponseError::NotController, &e.to_string())),
                        ),
                    }
                }
                Err(e) => self.respond(responder, Err(e)),
            }
        }
    }

    /// Proposes a learner for a registered broker outside the metadata group.
    fn add_metadata_learners(&mut self) {
        let Some(r) = self.multi.group(GroupId::METADATA) else {
            return;
        };
        let membership = r.membership().clone();
        let missing = self
            .image
            .brokers()
            .keys()
            .find(|b| !membership.contains(**b))
            .copied();
        if let Some(b) = missing {
            let mut next = membership;
            next.learners.insert(b);
            if let Some(r) = self.multi.group_mut(GroupId::METADATA) {
                match r.propose_membership(next) {
                    Ok(_) => tracing::info!(broker = %b, "adding broker as metadata learner"),
                    Err(ProposeError::MembershipChangePending) => {}
                    Err(e) => tracing::debug!(broker = %b, "learner not added: {e}"),
                }
            }
        }
    }

    fn plan(&mut self, op: ControllerOp, now: u64) -> Result<Planned, ApiFailure> {
        let api = |e: controller::ApiError| ApiFailure {
            code: e.code(),
            message: e.message().to_string(),
        };
        let only_validate = |validate_only: bool, record: MetadataRecord| {
            if validate_only {
                Planned::Reply(ControllerReply::Done)
            } else {
                Planned::Records(vec![record])
            }
        };
        Ok(match op {
            ControllerOp::Heartbeat { id, incarnation } => {
                let known = self
                    .image
                    .broker(id)
                    .is_some_and(|b| b.incarnation == incarnation);
                if !known {
                    return Err(failure(ResponseError::StaleBrokerEpoch, "register again"));
                }
                self.ctl.liveness.heartbeat(id, incarnation, now);
                Planned::Reply(ControllerReply::Done)
            }
            ControllerOp::RegisterBroker {
                id,
                incarnation,
                host,
                kafka_port,
                rack,
                rpc_addr,
            } => {
                self.ctl
                    .liveness
                    .check_registration(&self.image, id, incarnation, now)
                    .map_err(api)?;
                self.ctl.liveness.heartbeat(id, incarnation, now);
                let same = self.image.broker(id).is_some_and(|b| {
                    b.incarnation == incarnation
                        && b.host == host
                        && b.kafka_port == kafka_port
                        && b.rack == rack
                        && b.rpc_addr == rpc_addr
                });
                if same {
                    Planned::Reply(ControllerReply::Done)
                } else {
                    Planned::Records(vec![self
                        .image
                        .plan_register_broker(
                            id,
                            incarnation,
                            &host,
                            kafka_port,
                            rack.as_deref(),
                            &rpc_addr,
                        )
                        .map_err(api)?])
                }
            }
            ControllerOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
            } => {
                let configs = configs.into_iter().map(|(k, v)| (k, Some(v))).collect();
                let record = self
                    .image
                    .plan_create_topic(
                        &name,
                        partitions,
                        replication_factor,
                        &configs,
                        &self.cfg.defaults,
                    )
                    .map_err(api)?;
                only_validate(validate_only, record)
            }
            ControllerOp::DeleteTopic { name } => {
                Planned::Records(vec![self.image.plan_delete_topic(&name).map_err(api)?])
            }
            ControllerOp::CreatePartitions {
                name,
                count,
                validate_only,
            } => {
                let record = self
                    .image
                    .plan_create_partitions(&name, count, None)
                    .map_err(api)?;
                only_validate(validate_only, record)
            }
            ControllerOp::AlterConfigs {
                resource,
                changes,
                validate_only,
            } => {
                let record = if changes.iter().all(|(_, op, _)| op.is_some()) {
                    let ops = changes
                        .into_iter()
                        .map(|(name, op, value)| {
                            Ok(AlterConfigOp {
                                name,
                                op: AlterOpType::from_kafka(op.unwrap_or(0))?,
                                value,
                            })
                        })
                        .collect::<Result<Vec<_>, controller::ApiError>>()
                        .map_err(api)?;
                    self.image
                        .plan_alter_configs(&resource, &ops, &self.cfg.defaults)
                        .map_err(api)?
                } else {
                    let configs: Vec<(String, Option<String>)> =
                        changes.into_iter().map(|(k, _, v)| (k, v)).collect();
                    self.image
                        .plan_replace_configs(&resource, &configs)
                        .map_err(api)?
                };
                only_validate(validate_only, record)
            }
            ControllerOp::AllocateProducerIds { broker, count } => Planned::Records(vec![self
                .image
                .plan_producer_ids(broker, count)
                .map_err(api)?]),
            ControllerOp::Records(records) => Planned::Records(records),
        })
    }

    // ----- jobs --------------------------------------------------------------------------

    /// Starts a job of `slots` parts answered by `finish` once every part is done.
    pub(super) fn new_job(
        &mut self,
        slots: usize,
        reply: oneshot::Sender<Option<ResponseKind>>,
        finish: Finish,
    ) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                slots: (0..slots).map(|_| None).collect(),
                finish: Some(finish),
                reply: Some(reply),
            },
        );
        if slots == 0 {
            self.finish_job(id);
        }
        id
    }

    pub(super) fn complete_slot(&mut self, job: u64, slot: usize, result: SlotResult) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if let Some(s) = j.slots.get_mut(slot) {
            if s.is_none() {
                *s = Some(result);
            }
        }
        if j.slots.iter().all(Option::is_some) {
            self.finish_job(job);
        }
    }

    fn finish_job(&mut self, job: u64) {
        let Some(mut j) = self.jobs.remove(&job) else {
            return;
        };
        let results: Vec<SlotResult> = j.slots.drain(..).map(|s| s.expect("complete")).collect();
        let finish = j.finish.take().expect("finished once");
        let response = finish(self, results);
        if let Some(reply) = j.reply.take() {
            let _ = reply.send(response);
        }
    }

    // ----- producer ids ------------------------------------------------------------------

    pub(super) fn serve_producer_id_waiters(&mut self) {
        while self.producer_ids.0 < self.producer_ids.1 {
            let Some(reply) = self.producer_id_waiters.pop() else {
                return;
            };
            let id = self.producer_ids.0;
            self.producer_ids.0 += 1;
            let _ = reply.send(Some(api::init_producer_id_response(id, 0, 0)));
        }
        if !self.producer_id_waiters.is_empty() && !self.producer_id_request_pending {
            self.producer_id_request_pending = true;
            let op = ControllerOp::AllocateProducerIds {
                broker: self.id(),
                count: PRODUCER_ID_BLOCK_SIZE,
            };
            self.submit_controller_op(op, Responder::Internal("producer-ids"));
        }
    }

    // ----- shutdown ----------------------------------------------------------------------

    fn begin_shutdown(&mut self) {
        let groups: Vec<GroupId> = self.multi.group_ids().collect();
        for g in groups {
            let Some(r) = self.multi.group_mut(g) else {
                continue;
            };
            if r.role() != Role::Leader {
                continue;
            }
            let s = r.status();
            let target = s
                .matches
                .iter()
                .filter(|(id, _)| s.membership.voters.contains(id))
                .max_by_key(|(id, m)| (**m, **id))
                .map(|(id, _)| *id);
            if let Some(t) = target {
                let _ = r.transfer_leadership(t);
            }
        }
    }

    fn shutdown_complete(&self) -> bool {
        self.multi.group_ids().all(|g| {
            !self.multi.is_leader(g)
                || self
                    .multi
                    .group(g)
                    .is_some_and(|r| r.membership().voters.len() <= 1)
        })
    }
}

enum Planned {
    Reply(ControllerReply),
    Records(Vec<MetadataRecord>),
}

pub(super) fn failure(e: ResponseError, message: &str) -> ApiFailure {
    ApiFailure {
        code: e.code(),
        message: message.to_string(),
    }
}

/// A Kafka-style cluster id: 16 random bytes in URL-safe base64 without padding.
fn cluster_id_from_bytes(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0u32;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

/// The metadata group's log: small segments, kept until snapshotted.
fn metadata_log_config() -> LogConfig {
    LogConfig {
        segment_size_max_bytes: 8 * 1024 * 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Reads whole batches `[from, to)` of a local group (committed or not).
/// Whole stored batches of `group`'s local log in `[from, to)`. An error (a corrupt batch)
/// is returned, never skipped: state rebuilt from a log with a hole in it (producer
/// sequences, group offsets) would be silently wrong.
pub(super) fn read_batches(
    multi: &MultiRaft,
    group: GroupId,
    from: u64,
    to: u64,
) -> Result<Vec<Bytes>, fjord_log::LogError> {
    let mut out = Vec::new();
    let Some(r) = multi.group(group) else {
        return Ok(out);
    };
    let mut at = from.max(r.log().start_offset());
    while at < to {
        let read = r.log().log().read(at, 1 << 20, to)?;
        if read.bytes.is_empty() {
            break;
        }
        at = read.next_offset;
        out.push(read.bytes);
    }
    Ok(out)
}

/// The producer state of a partition's whole local log.
pub(super) fn rebuild_producers(
    multi: &MultiRaft,
    group: GroupId,
) -> Result<ProducerStateTable, fjord_log::LogError> {
    let mut table = ProducerStateTable::new();
    if let Some(r) = multi.group(group) {
        let end = r.log().end_offset();
        for chunk in read_batches(multi, group, 0, end)? {
            table.apply_all(&chunk);
        }
    }
    Ok(table)
}

impl Node {
    /// A local read needed to rebuild state failed: a corrupt log is marked for
    /// verification and the node stops (as when a fetch hits corruption).
    pub(super) fn local_read_failed(&mut self, group: GroupId, e: &fjord_log::LogError) {
        tracing::error!(node = %self.id(), %group, "local log unreadable: {e}");
        if matches!(e, fjord_log::LogError::Corrupt { .. }) {
            self.multi.mark_for_verification(group);
            self.fatal = Some(format!("{group}: {e}"));
        }
    }
}

/// Parses the header of a produced batch.
pub(super) fn produced_header(bytes: &[u8]) -> Result<BatchHeader, fjord_log::BatchError> {
    BatchHeader::validate_produced(bytes)
}
