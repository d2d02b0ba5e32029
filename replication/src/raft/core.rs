//! The Raft state machine. See the module docs of [`super`] for the driving contract.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::message::*;
use super::progress::{Progress, ProgressState};
use super::storage::{HardState, MembershipEntry, RaftLog, StorageError};
use super::{membership_batch, membership_of_batch, Membership, RaftBugs};
use crate::NodeId;

/// Tunables of one group member. Times are in ticks of the driver's clock.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[min, max)` after every reset.
    pub election_timeout_min_ticks: u32,
    pub election_timeout_max_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    /// Upper bound on the batch bytes of one append message.
    pub append_size_max_bytes: usize,
    /// Pipelined appends in flight per follower.
    pub inflight_appends_max: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Seed of the member's random stream (election jitter).
    pub seed: u64,
    /// Ticks a new leader waits before appending its no-op (0 in production). The
    /// simulator sets it to explore the interleavings where a leader replicates entries of
    /// earlier terms before any entry of its own: still correct Raft, since nothing of an
    /// earlier term commits before an entry of the current one does.
    pub noop_delay_ticks: u32,
    pub bugs: RaftBugs,
}

impl RaftConfig {
    pub fn new(id: NodeId, seed: u64) -> Self {
        RaftConfig {
            id,
            election_timeout_min_ticks: 30,
            election_timeout_max_ticks: 60,
            heartbeat_interval_ticks: 5,
            append_size_max_bytes: 1024 * 1024,
            inflight_appends_max: 64,
            pre_vote: true,
            check_quorum: true,
            seed,
            noop_delay_ticks: 0,
            bugs: RaftBugs::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Errors the core reports to the driver. All of them stop the group: the driver crashes
/// the node, which recovers from its durable state.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot build a control batch: {0}")]
    Batch(#[from] fjord_log::batch::BatchError),
    /// A message no correct member could have sent in this state: a second leader in our
    /// term, entries or a snapshot contradicting what we know is committed, a follower
    /// matching beyond our log, a term beyond Kafka's epoch range, a message from ourselves.
    /// A bug somewhere, or a peer that does not follow the protocol (Raft tolerates none):
    /// the group stops rather than act on it.
    #[error("protocol violation by {from}: {reason}")]
    Protocol { from: NodeId, reason: String },
}

fn violation(from: NodeId, reason: String) -> RaftError {
    RaftError::Protocol { from, reason }
}

/// Why a proposal was refused. The caller retries elsewhere (or later).
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    #[error("membership change must add, promote or remove exactly one member")]
    InvalidMembershipChange,
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// What the driver must do after feeding the core, in this order:
/// 1. send `messages` (they do not depend on anything unpersisted);
/// 2. persist `hard_state` (durably) if present;
/// 3. sync the log if `sync_log`;
/// 4. call [`Raft::advance`];
/// 5. send `messages_after_persist`.
///
/// `commit_end` and the role are informational: the driver applies committed entries and
/// wakes waiters from them.
#[derive(Debug, Default)]
pub struct Ready {
    pub messages: Vec<(NodeId, Message)>,
    pub hard_state: Option<HardState>,
    pub sync_log: bool,
    pub messages_after_persist: Vec<(NodeId, Message)>,
    /// The commit end offset (high watermark) after this round.
    pub commit_end: u64,
    /// Set when the role, term or known leader changed.
    pub status_changed: bool,
    /// Set when a snapshot replaced the log: the state machine must reload.
    pub snapshot_installed: bool,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.hard_state.is_none()
            && !self.sync_log
            && self.messages_after_persist.is_empty()
            && !self.status_changed
            && !self.snapshot_installed
    }
}

/// A snapshot of the member's state for observers (metrics, metadata responses, tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_end: u64,
    pub log_start: u64,
    pub log_end: u64,
    pub durable_end: u64,
    pub membership: Membership,
    /// Leader only: each other member's durable match end offset.
    pub matches: BTreeMap<NodeId, u64>,
}

/// A follower's acknowledgement waiting for its entries to become durable.
#[derive(Clone, Copy, Debug)]
struct PendingAck {
    leader: NodeId,
    term: Term,
    end: u64,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    elapsed: u32,
}

/// One member of one Raft group.
pub struct Raft<L: RaftLog> {
    cfg: RaftConfig,
    log: L,
    rng: ChaCha8Rng,

    // Persistent (mirrored into HardState).
    term: Term,
    vote: Option<NodeId>,
    memberships: Vec<MembershipEntry>,
    scanned_end: u64,
    repairing: bool,
    hard_state_dirty: bool,

    // Volatile.
    role: Role,
    leader: Option<NodeId>,
    commit_end: u64,
    election_elapsed: u32,
    election_timeout: u32,
    heartbeat_elapsed: u32,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    pending_ack: Option<PendingAck>,
    transfer: Option<Transfer>,
    /// Leader: ticks until the no-op of this term is appended (`None`: appended).
    noop_in_ticks: Option<u32>,
    wall_clock_ms: i64,
    sync_requested: bool,

    // Output of the current round.
    messages: Vec<(NodeId, Message)>,
    messages_after_persist: Vec<(NodeId, Message)>,
    status_changed: bool,
    snapshot_installed: bool,
    /// Between `take_ready` and `advance`, feeding the core is a driver bug.
    awaiting_advance: bool,
}

/// How often (in offsets) the membership scan checkpoint is pushed forward, so that a
/// restart scans a bounded tail of the log.
const SCAN_CHECKPOINT_INTERVAL_OFFSETS: u64 = 1 << 20;

impl<L: RaftLog> Raft<L> {
    /// Restores a member from its persisted hard state and its log. The membership history
    /// is reconciled with the log: entries the log lost are dropped and the log's tail beyond
    /// `scanned_end` is scanned for membership batches.
    pub fn new(cfg: RaftConfig, log: L, hard_state: HardState) -> Result<Self, RaftError> {
        assert!(cfg.election_timeout_min_ticks > cfg.heartbeat_interval_ticks);
        assert!(cfg.election_timeout_max_ticks > cfg.election_timeout_min_ticks);
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut raft = Raft {
            cfg,
            log,
            rng,
            term: hard_state.term,
            vote: hard_state.vote,
            memberships: hard_state.memberships,
            scanned_end: hard_state.scanned_end,
            repairing: hard_state.repairing,
            hard_state_dirty: false,
            role: Role::Follower,
            leader: None,
            commit_end: 0,
            election_elapsed: 0,
            election_timeout: 0,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            pending_ack: None,
            transfer: None,
            noop_in_ticks: None,
            wall_clock_ms: 0,
            sync_requested: false,
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            status_changed: false,
            snapshot_installed: false,
            awaiting_advance: false,
        };
        assert!(!raft.memberships.is_empty(), "a group needs a membership");
        raft.reconcile_memberships()?;
        // Everything below the log start was committed (only committed data is deleted).
        raft.commit_end = raft.log.start_offset();
        raft.reset_election_timeout();
        Ok(raft)
    }

    fn reconcile_memberships(&mut self) -> Result<(), RaftError> {
        let end = self.log.end_offset();
        let start = self.log.start_offset();
        let log = &self.log;
        let before = self.memberships.len();
        // Keep the first entry (initial or snapshot) unless the log contradicts it; drop later
        // entries the log no longer holds.
        let first = self.memberships[0].clone();
        self.memberships.retain(|e| {
            e.end <= start || (e.end <= end && e.end > 0 && log.term_at(e.end - 1) == Some(e.term))
        });
        if self.memberships.is_empty() {
            self.memberships.push(first);
        }
        let mut from = self.scanned_end.min(end).max(start);
        while from < end {
            let bytes = self.log.read(from, 1024 * 1024)?;
            if bytes.is_empty() {
                break;
            }
            let mut pos = 0usize;
            while pos < bytes.len() {
                let header = fjord_log::batch::BatchHeader::parse(&bytes[pos..])
                    .map_err(|e| StorageError::new(format!("scan at {from}: {e}")))?;
                let size = header.total_size();
                let batch = &bytes[pos..pos + size];
                let batch_end = header.last_offset() + 1;
                if batch_end > from {
                    if let Some(m) = membership_of_batch(batch) {
                        let entry = MembershipEntry {
                            end: batch_end,
                            term: header.partition_leader_epoch as Term,
                            membership: m,
                        };
                        if !self.memberships.contains(&entry) {
                            self.memberships.push(entry);
                        }
                    }
                }
                from = from.max(batch_end);
                pos += size;
            }
        }
        self.memberships.sort_by_key(|e| e.end);
        if self.memberships.len() != before || self.scanned_end != end {
            self.scanned_end = end;
            self.hard_state_dirty = true;
        }
        Ok(())
    }

    // ----- observers -------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_end(&self) -> u64 {
        self.commit_end
    }

    /// Takes the log back (the member is dropped, as in a crash).
    pub fn into_log(self) -> L {
        self.log
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    /// Mutable access for the driver: syncing, and state-machine work such as retention.
    /// The driver must not append or truncate through it.
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// The membership in force: the latest one in the log, committed or not (Raft thesis
    /// §4.1: a server uses the newest configuration in its log).
    pub fn membership(&self) -> &Membership {
        &self.memberships.last().expect("never empty").membership
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_end: self.commit_end,
            log_start: self.log.start_offset(),
            log_end: self.log.end_offset(),
            durable_end: self.log.durable_end(),
            membership: self.membership().clone(),
            matches: self
                .progress
                .iter()
                .map(|(id, p)| (*id, p.match_end))
                .collect(),
        }
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: if self.cfg.bugs.vote_not_persisted {
                None
            } else {
                self.vote
            },
            memberships: self.memberships.clone(),
            scanned_end: self.scanned_end,
            repairing: self.repairing,
        }
    }

    /// The wall clock (ms since the epoch) used as timestamp of the batches the core writes.
    pub fn set_wall_clock_ms(&mut self, ms: i64) {
        self.wall_clock_ms = ms;
    }

    // ----- driving ---------------------------------------------------------------------

    /// What the driver must do now. See [`Ready`] for the order.
    pub fn take_ready(&mut self) -> Ready {
        assert!(!self.awaiting_advance, "take_ready twice without advance");
        self.awaiting_advance = true;
        let sync_log = self.sync_requested || self.log.durable_end() < self.log.end_offset();
        self.sync_requested = false;
        let hard_state = if self.hard_state_dirty {
            self.hard_state_dirty = false;
            Some(self.hard_state())
        } else {
            None
        };
        Ready {
            messages: std::mem::take(&mut self.messages),
            hard_state,
            sync_log,
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            commit_end: self.commit_end,
            status_changed: std::mem::take(&mut self.status_changed),
            snapshot_installed: std::mem::take(&mut self.snapshot_installed),
        }
    }

    /// The driver did everything the last [`Ready`] asked. Acknowledgements of entries that
    /// are now durable are queued for the next round.
    pub fn advance(&mut self) {
        assert!(self.awaiting_advance, "advance without take_ready");
        self.awaiting_advance = false;
        self.flush_ack();
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Whether calling [`Raft::take_ready`] would hand out any work.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.hard_state_dirty
            || self.sync_requested
            || self.status_changed
            || self.snapshot_installed
            || self.log.durable_end() < self.log.end_offset()
    }

    fn assert_fed_in_order(&self) {
        assert!(
            !self.awaiting_advance,
            "core fed between take_ready and advance"
        );
    }

    /// One tick of the driver's clock.
    pub fn tick(&mut self) -> Result<(), RaftError> {
        self.assert_fed_in_order();
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                if self.can_elect() && self.election_elapsed >= self.election_timeout {
                    self.campaign(self.cfg.pre_vote, false)?;
                }
                Ok(())
            }
        }
    }

    fn tick_leader(&mut self) -> Result<(), RaftError> {
        self.heartbeat_elapsed += 1;
        if let Some(t) = self.noop_in_ticks {
            if t <= 1 {
                self.append_noop()?;
            } else {
                self.noop_in_ticks = Some(t - 1);
            }
        }
        for p in self.progress.values_mut() {
            p.ticks_since_progress = p.ticks_since_progress.saturating_add(1);
        }
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.election_timeout_min_ticks {
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_min_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                tracing::debug!(id = %self.cfg.id, term = self.term, "check-quorum failed: stepping down");
                self.become_follower(self.term, None);
                return Ok(());
            }
            for p in self.progress.values_mut() {
                p.recent_active = false;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn quorum_active(&self) -> bool {
        let membership = self.membership();
        let active = membership
            .voters
            .iter()
            .filter(|v| **v == self.cfg.id || self.progress.get(v).is_some_and(|p| p.recent_active))
            .count();
        active >= membership.quorum()
    }

    /// Appends `batch` (a client's RecordBatch) as leader. Returns its `(base, end)` offsets;
    /// it is committed once [`Raft::commit_end`] reaches `end`.
    pub fn propose(&mut self, batch: BytesMut) -> Result<(u64, u64), ProposeError> {
        self.assert_fed_in_order();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let (base, end) = self
            .log
            .append_leader(batch, self.term)
            .map_err(RaftError::from)?;
        self.broadcast_append();
        Ok((base, end))
    }

    /// Proposes a single-step membership change (add a learner, promote one, remove one).
    /// Only one change may be uncommitted at a time.
    pub fn propose_membership(&mut self, next: Membership) -> Result<(u64, u64), ProposeError> {
        self.assert_fed_in_order();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.memberships.last().expect("never empty").end > self.commit_end {
            return Err(ProposeError::MembershipChangePending);
        }
        if !self.membership().is_single_step_to(&next) {
            return Err(ProposeError::InvalidMembershipChange);
        }
        let batch = membership_batch(&next, self.wall_clock_ms).map_err(RaftError::from)?;
        let (base, end) = self
            .log
            .append_leader(BytesMut::from(&batch[..]), self.term)
            .map_err(RaftError::from)?;
        self.push_membership(end, self.term, next);
        self.broadcast_append();
        Ok((base, end))
    }

    /// Hands leadership to `target` (a voter): once its log is caught up it is told to
    /// campaign at once. Proposals are refused meanwhile (for at most an election timeout).
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.assert_fed_in_order();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.cfg.id || !self.membership().voters.contains(&target) {
            return Err(ProposeError::InvalidMembershipChange);
        }
        self.transfer = Some(Transfer { target, elapsed: 0 });
        self.maybe_send_timeout_now(target);
        self.maybe_send_append(target, true)?;
        Ok(())
    }

    /// Feeds one message from `from`.
    pub fn step(&mut self, from: NodeId, msg: Message) -> Result<(), RaftError> {
        self.assert_fed_in_order();
        let msg_term = msg.term();
        if msg_term > i32::MAX as Term {
            let reason = format!("term {msg_term} is not a Kafka leader epoch");
            return Err(violation(from, reason));
        }
        if from == self.cfg.id {
            let reason = format!("{} message from this member itself", msg.kind());
            return Err(violation(from, reason));
        }
        // Pre-votes never change anyone's term.
        let is_pre_vote = matches!(msg, Message::PreVote(_) | Message::PreVoteResponse(_));
        if msg_term > self.term && !is_pre_vote {
            if let Message::Vote(req) = &msg {
                if self.in_lease() && !req.transfer {
                    // Check-quorum's lease: we heard from a leader recently, so this
                    // candidate is disruptive (e.g. a node rejoining after a partition).
                    tracing::debug!(id = %self.cfg.id, %from, term = msg_term, "vote ignored: leader lease");
                    return Ok(());
                }
            }
            let leader = match msg {
                Message::Append(_) | Message::Heartbeat(_) | Message::InstallSnapshot(_) => {
                    Some(from)
                }
                _ => None,
            };
            self.become_follower(msg_term, leader);
        }
        match msg {
            Message::PreVote(req) => self.handle_pre_vote(from, req),
            Message::Vote(req) => self.handle_vote(from, req),
            Message::PreVoteResponse(resp) => self.handle_pre_vote_response(from, resp),
            Message::VoteResponse(resp) => self.handle_vote_response(from, resp),
            Message::Append(req) => self.handle_append(from, req),
            Message::AppendResponse(resp) => self.handle_append_response(from, resp),
            Message::Heartbeat(hb) => self.handle_heartbeat(from, hb),
            Message::HeartbeatResponse(resp) => self.handle_heartbeat_response(from, resp),
            Message::InstallSnapshot(req) => self.handle_snapshot(from, req),
            Message::TimeoutNow { term } => {
                if term == self.term && self.role != Role::Leader && self.can_elect() {
                    tracing::debug!(id = %self.cfg.id, term, "timeout-now: campaigning");
                    self.campaign(false, true)?;
                }
                Ok(())
            }
        }
    }

    // ----- elections -------------------------------------------------------------------

    fn is_voter(&self) -> bool {
        self.membership().voters.contains(&self.cfg.id)
    }

    /// Whether this member may campaign and grant votes (not while repairing lost entries).
    fn can_elect(&self) -> bool {
        self.is_voter() && !self.repairing
    }

    /// Marks the member as having lost entries (corruption cut its log): see
    /// [`HardState::repairing`].
    pub fn start_repair(&mut self) {
        if !self.repairing {
            tracing::warn!(id = %self.cfg.id, "log lost entries: repairing before voting again");
            self.repairing = true;
            self.hard_state_dirty = true;
        }
    }

    pub fn is_repairing(&self) -> bool {
        self.repairing
    }

    /// Heard from a live leader within the minimum election timeout (or is the leader).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.cfg.election_timeout_min_ticks
    }

    fn reset_election_timeout(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self
            .rng
            .gen_range(self.cfg.election_timeout_min_ticks..self.cfg.election_timeout_max_ticks);
    }

    fn last_term(&self) -> Term {
        let end = self.log.end_offset();
        if end == 0 {
            0
        } else {
            self.log
                .term_at(end - 1)
                .expect("term of the last entry is known")
        }
    }

    fn term_before(&self, end: u64) -> Option<Term> {
        if end == 0 {
            Some(0)
        } else {
            self.log.term_at(end - 1)
        }
    }

    fn log_is_up_to_date(&self, last_term: Term, log_end: u64) -> bool {
        (last_term, log_end) >= (self.last_term(), self.log.end_offset())
    }

    pub(super) fn campaign(&mut self, pre_vote: bool, transfer: bool) -> Result<(), RaftError> {
        let voters: Vec<NodeId> = self.membership().voters.iter().copied().collect();
        self.votes.clear();
        self.reset_election_timeout();
        let term = if pre_vote {
            self.set_role(Role::PreCandidate, None);
            self.term + 1
        } else {
            self.set_term(self.term + 1);
            self.vote = Some(self.cfg.id);
            self.hard_state_dirty = true;
            self.set_role(Role::Candidate, None);
            self.term
        };
        tracing::debug!(id = %self.cfg.id, term, pre_vote, "campaign");
        self.votes.insert(self.cfg.id, true);
        if self.votes_granted() >= self.membership().quorum() {
            // A single-voter group elects itself.
            return if pre_vote {
                self.campaign(false, transfer)
            } else {
                self.become_leader()
            };
        }
        let req = VoteRequest {
            term,
            log_end: self.log.end_offset(),
            last_term: self.last_term(),
            transfer,
        };
        for v in voters {
            if v == self.cfg.id {
                continue;
            }
            if pre_vote {
                self.messages.push((v, Message::PreVote(req.clone())));
            } else {
                // Our own vote and the new term must be durable before we ask for votes.
                self.messages_after_persist
                    .push((v, Message::Vote(req.clone())));
            }
        }
        Ok(())
    }

    fn votes_granted(&self) -> usize {
        let voters = &self.membership().voters;
        self.votes
            .iter()
            .filter(|(id, granted)| **granted && voters.contains(id))
            .count()
    }

    fn votes_rejected(&self) -> usize {
        let voters = &self.membership().voters;
        self.votes
            .iter()
            .filter(|(id, granted)| !**granted && voters.contains(id))
            .count()
    }

    fn handle_pre_vote(&mut self, from: NodeId, req: VoteRequest) -> Result<(), RaftError> {
        let granted = req.term > self.term
            && !self.repairing
            && (!self.in_lease() || req.transfer)
            && self.role != Role::Leader
            && self.log_is_up_to_date(req.last_term, req.log_end);
        let term = if granted { req.term } else { self.term };
        self.messages.push((
            from,
            Message::PreVoteResponse(VoteResponse { term, granted }),
        ));
        Ok(())
    }

    fn handle_vote(&mut self, from: NodeId, req: VoteRequest) -> Result<(), RaftError> {
        // Terms were aligned in `step`: req.term <= self.term here.
        let granted = req.term == self.term
            && !self.repairing
            && (self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()))
            && self.log_is_up_to_date(req.last_term, req.log_end);
        if granted {
            self.vote = Some(from);
            self.hard_state_dirty = true;
            self.election_elapsed = 0;
        }
        let resp = Message::VoteResponse(VoteResponse {
            term: self.term,
            granted,
        });
        if granted && !self.cfg.bugs.vote_not_persisted {
            self.messages_after_persist.push((from, resp));
        } else {
            self.messages.push((from, resp));
        }
        Ok(())
    }

    fn handle_pre_vote_response(
        &mut self,
        from: NodeId,
        resp: VoteResponse,
    ) -> Result<(), RaftError> {
        if self.role != Role::PreCandidate {
            return Ok(());
        }
        if resp.granted && resp.term == self.term + 1 {
            self.votes.insert(from, true);
        } else if !resp.granted {
            if resp.term > self.term {
                self.become_follower(resp.term, None);
                return Ok(());
            }
            self.votes.insert(from, false);
        }
        if self.votes_granted() >= self.membership().quorum() {
            self.campaign(false, false)?;
        } else if self.votes_rejected() >= self.membership().quorum() {
            self.become_follower(self.term, self.leader);
        }
        Ok(())
    }

    fn handle_vote_response(&mut self, from: NodeId, resp: VoteResponse) -> Result<(), RaftError> {
        if self.role != Role::Candidate || resp.term != self.term {
            return Ok(());
        }
        self.votes.insert(from, resp.granted);
        if self.votes_granted() >= self.membership().quorum() {
            self.become_leader()?;
        } else if self.votes_rejected() >= self.membership().quorum() {
            self.become_follower(self.term, None);
        }
        Ok(())
    }

    // ----- role changes ----------------------------------------------------------------

    fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "terms never go back");
        assert!(
            term <= i32::MAX as Term,
            "a term is a Kafka leader epoch (i32)"
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hard_state_dirty = true;
            self.status_changed = true;
        }
    }

    fn set_role(&mut self, role: Role, leader: Option<NodeId>) {
        if self.role != role || self.leader != leader {
            self.status_changed = true;
        }
        self.role = role;
        self.leader = leader;
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.set_term(term);
        self.set_role(Role::Follower, leader);
        self.progress.clear();
        self.transfer = None;
        self.noop_in_ticks = None;
        self.votes.clear();
        if self.pending_ack.is_some_and(|a| a.term != self.term) {
            self.pending_ack = None;
        }
        self.reset_election_timeout();
        self.heartbeat_elapsed = 0;
    }

    fn become_leader(&mut self) -> Result<(), RaftError> {
        assert_eq!(self.role, Role::Candidate);
        tracing::debug!(id = %self.cfg.id, term = self.term, "became leader");
        self.set_role(Role::Leader, Some(self.cfg.id));
        self.pending_ack = None;
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let end = self.log.end_offset();
        self.progress = self
            .membership()
            .members()
            .filter(|m| *m != self.cfg.id)
            .map(|m| (m, Progress::new(end)))
            .collect();
        if self.cfg.noop_delay_ticks == 0 {
            self.append_noop()?;
        } else {
            self.noop_in_ticks = Some(self.cfg.noop_delay_ticks);
            // Followers still learn of the new leader, and get older entries, right away.
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            for p in peers {
                self.maybe_send_append(p, true)?;
            }
        }
        Ok(())
    }

    /// The no-op of the new term: entries of earlier terms commit with it (Raft §5.4.2).
    fn append_noop(&mut self) -> Result<(), RaftError> {
        self.noop_in_ticks = None;
        let noop = fjord_log::batch::leader_change_batch(
            self.term as i32,
            self.cfg.id.0 as i32,
            self.wall_clock_ms,
        );
        self.log
            .append_leader(BytesMut::from(&noop[..]), self.term)?;
        self.broadcast_append();
        Ok(())
    }

    // ----- replication (leader) --------------------------------------------------------

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            if let Err(e) = self.maybe_send_append(p, false) {
                tracing::warn!(id = %self.cfg.id, peer = %p, "append not sent: {e}");
            }
        }
        if self.progress.is_empty() {
            // Alone in the group: commitment only waits for our own sync.
            self.maybe_commit();
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let commit_end = self.commit_end;
        let term = self.term;
        for (id, p) in &self.progress {
            self.messages.push((
                *id,
                Message::Heartbeat(Heartbeat {
                    term,
                    commit_end: commit_end.min(p.match_end),
                }),
            ));
        }
    }

    /// Sends the next append to `peer` if flow control allows (`allow_empty`: also when
    /// there is nothing new, as a probe).
    fn maybe_send_append(&mut self, peer: NodeId, allow_empty: bool) -> Result<(), RaftError> {
        let start = self.log.start_offset();
        let end = self.log.end_offset();
        let Some(p) = self.progress.get_mut(&peer) else {
            return Ok(());
        };
        if !p.can_send(self.cfg.inflight_appends_max) {
            return Ok(());
        }
        if p.next_end < start {
            p.become_snapshot();
            let start_term = self
                .log
                .term_at(start - 1)
                .expect("term below the log start");
            let membership = self.membership_at(start).clone();
            let data = self.log.snapshot_data();
            self.messages.push((
                peer,
                Message::InstallSnapshot(SnapshotRequest {
                    term: self.term,
                    start,
                    start_term,
                    data,
                    membership,
                    commit_end: self.commit_end,
                }),
            ));
            return Ok(());
        }
        let prev_end = p.next_end;
        if prev_end >= end && !allow_empty {
            return Ok(());
        }
        let prev_term = self
            .term_before(prev_end)
            .expect("a follower's next offset is within the leader's log");
        let batches = if prev_end < end {
            self.log.read(prev_end, self.cfg.append_size_max_bytes)?
        } else {
            Bytes::new()
        };
        let sent_end = last_batch_end(&batches).unwrap_or(prev_end);
        let p = self.progress.get_mut(&peer).expect("checked above");
        match p.state {
            ProgressState::Replicate => {
                p.next_end = sent_end;
                p.inflight.push_back(sent_end);
            }
            ProgressState::Probe => p.probe_sent = true,
            ProgressState::Snapshot => unreachable!("can_send is false while snapshotting"),
        }
        self.messages.push((
            peer,
            Message::Append(AppendRequest {
                term: self.term,
                prev_end,
                prev_term,
                commit_end: self.commit_end,
                leader_end: end,
                batches,
            }),
        ));
        Ok(())
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        resp: AppendResponse,
    ) -> Result<(), RaftError> {
        if self.role != Role::Leader || resp.term != self.term {
            return Ok(());
        }
        let log_end = self.log.end_offset();
        let Some(p) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        p.recent_active = true;
        match resp.match_end {
            Some(match_end) => {
                if match_end > log_end {
                    let reason = format!("matches {match_end}, beyond our log end {log_end}");
                    return Err(violation(from, reason));
                }
                let advanced = p.on_match(match_end);
                match p.state {
                    ProgressState::Probe => p.become_replicate(),
                    ProgressState::Snapshot if p.match_end >= self.log.start_offset() => {
                        p.become_probe(p.match_end)
                    }
                    _ => {}
                }
                if advanced {
                    self.maybe_commit();
                }
                self.maybe_send_timeout_now(from);
                // Keep the pipeline full.
                while self.progress.get(&from).is_some_and(|p| {
                    p.can_send(self.cfg.inflight_appends_max) && p.next_end < log_end
                }) {
                    let before = self.progress[&from].next_end;
                    self.maybe_send_append(from, false)?;
                    if self.progress[&from].next_end == before {
                        break;
                    }
                }
            }
            None => {
                let stale = match p.state {
                    ProgressState::Replicate => resp.rejected_prev_end <= p.match_end,
                    ProgressState::Probe => resp.rejected_prev_end != p.next_end,
                    ProgressState::Snapshot => true,
                };
                if stale {
                    return Ok(());
                }
                // Where do we agree? At most at the follower's hint, and no further than the
                // end of the hinted term's entries in our log.
                let mut next = resp.hint_end.min(resp.rejected_prev_end);
                match self.log.term_end(resp.hint_term) {
                    Some((_, e)) => next = next.min(e),
                    None => next = next.min(self.log.start_offset()),
                }
                tracing::trace!(id = %self.cfg.id, peer = %from, next, "append rejected: probing");
                let p = self.progress.get_mut(&from).expect("present");
                // A fresh rejection below what the follower acknowledged means its disk lost
                // entries (it is repairing): believe it.
                p.match_end = p.match_end.min(next);
                p.become_probe(next);
                self.maybe_send_append(from, true)?;
            }
        }
        Ok(())
    }

    fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        resp: HeartbeatResponse,
    ) -> Result<(), RaftError> {
        if self.role != Role::Leader || resp.term != self.term {
            return Ok(());
        }
        let end = self.log.end_offset();
        let stall_ticks = 2 * self.cfg.heartbeat_interval_ticks;
        let Some(p) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        p.recent_active = true;
        if resp.log_end < p.match_end {
            // The follower's disk lost entries: start over from what it has.
            p.match_end = resp.log_end;
            p.become_probe(resp.log_end);
        }
        if p.match_end < end {
            match p.state {
                ProgressState::Probe => p.probe_sent = false,
                // Pipelined appends made no progress for a while: some were lost.
                ProgressState::Replicate if p.ticks_since_progress >= stall_ticks => {
                    let m = p.match_end;
                    p.become_probe(m);
                }
                ProgressState::Snapshot if p.ticks_since_progress >= stall_ticks => {
                    p.probe_sent = false;
                    p.state = ProgressState::Probe;
                    p.next_end = 0;
                }
                _ => {}
            }
            self.maybe_send_append(from, true)?;
        }
        Ok(())
    }

    fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let end = self.log.end_offset();
        if let Some(t) = self.transfer {
            if t.target == peer && self.progress.get(&peer).is_some_and(|p| p.match_end == end) {
                self.messages
                    .push((peer, Message::TimeoutNow { term: self.term }));
            }
        }
    }

    /// Advances the commit end to the largest end offset durable on a quorum of voters,
    /// provided that entry is of the current term (Raft §5.4.2).
    fn maybe_commit(&mut self) {
        let own = if self.cfg.bugs.ack_before_fsync {
            self.log.end_offset()
        } else {
            self.log.durable_end()
        };
        let membership = self.membership().clone();
        let mut matches: Vec<u64> = membership
            .voters
            .iter()
            .map(|v| {
                if *v == self.cfg.id {
                    own
                } else {
                    self.progress.get(v).map_or(0, |p| p.match_end)
                }
            })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matches[membership.quorum() - 1];
        if candidate <= self.commit_end {
            return;
        }
        let term_ok = self.term_before(candidate) == Some(self.term);
        if term_ok || self.cfg.bugs.commit_old_term_by_count {
            self.set_commit(candidate);
            // Followers learn the new commit point with the next append or heartbeat.
            if self.commit_end == self.log.end_offset() {
                let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                for p in peers {
                    let _ = self.maybe_send_append(p, false);
                }
            }
        }
    }

    fn set_commit(&mut self, end: u64) {
        if end <= self.commit_end {
            return;
        }
        self.commit_end = end;
        if self.commit_end.saturating_sub(self.scanned_end) > SCAN_CHECKPOINT_INTERVAL_OFFSETS {
            self.scanned_end = self.log.end_offset();
            self.hard_state_dirty = true;
        }
        // A leader that removed itself steps down once the removal is committed.
        if self.role == Role::Leader && !self.is_voter() && self.membership_committed() {
            tracing::debug!(id = %self.cfg.id, "removed from the group: stepping down");
            self.become_follower(self.term, None);
        }
    }

    fn membership_committed(&self) -> bool {
        self.memberships.last().expect("never empty").end <= self.commit_end
    }

    fn membership_at(&self, end: u64) -> &Membership {
        &self
            .memberships
            .iter()
            .rev()
            .find(|e| e.end <= end)
            .unwrap_or(&self.memberships[0])
            .membership
    }

    fn push_membership(&mut self, end: u64, term: Term, membership: Membership) {
        tracing::debug!(id = %self.cfg.id, end, ?membership, "membership entry");
        self.memberships.push(MembershipEntry {
            end,
            term,
            membership,
        });
        self.hard_state_dirty = true;
        self.status_changed = true;
        if self.role == Role::Leader {
            let log_end = self.log.end_offset();
            let members: BTreeSet<NodeId> = self
                .membership()
                .members()
                .filter(|m| *m != self.cfg.id)
                .collect();
            self.progress.retain(|id, _| members.contains(id));
            for m in members {
                self.progress
                    .entry(m)
                    .or_insert_with(|| Progress::new(log_end));
            }
        }
    }

    // ----- replication (follower) ------------------------------------------------------

    fn handle_append(&mut self, from: NodeId, req: AppendRequest) -> Result<(), RaftError> {
        if req.term < self.term {
            // A stale leader: tell it about the newer term.
            self.messages.push((from, self.reject(req.prev_end, 0)));
            return Ok(());
        }
        self.accept_leader(from)?;
        let start = self.log.start_offset();
        let end = self.log.end_offset();
        // Below our log start everything is committed, hence identical on every member.
        let prev_ok = req.prev_end <= start
            || (req.prev_end <= end && self.term_before(req.prev_end) == Some(req.prev_term));
        if !prev_ok {
            let resp = self.reject(req.prev_end, req.prev_term);
            self.messages.push((from, resp));
            return Ok(());
        }
        let mut last_end = req.prev_end;
        let mut pos = 0usize;
        let bytes = &req.batches;
        while pos < bytes.len() {
            let Ok(header) = fjord_log::batch::BatchHeader::parse(&bytes[pos..]) else {
                tracing::warn!(id = %self.cfg.id, %from, "garbled batch in append: dropped");
                break;
            };
            let size = header.total_size();
            if pos + size > bytes.len() {
                tracing::warn!(id = %self.cfg.id, %from, "torn batch in append: dropped");
                break;
            }
            let batch = &bytes[pos..pos + size];
            pos += size;
            let base = header.base_offset;
            let batch_end = header.last_offset() + 1;
            let batch_term = header.partition_leader_epoch as Term;
            let log_end = self.log.end_offset();
            if batch_end <= self.log.start_offset() {
                last_end = last_end.max(batch_end);
                continue;
            }
            if base < log_end {
                if batch_end <= log_end && self.log.term_at(batch_end - 1) == Some(batch_term) {
                    last_end = batch_end; // Already have it.
                    continue;
                }
                if self.cfg.bugs.no_truncate_on_conflict {
                    last_end = batch_end;
                    continue;
                }
                if base < self.commit_end {
                    let reason = format!(
                        "{}: entries conflict with committed ones at {base} (commit end {})",
                        self.cfg.id, self.commit_end
                    );
                    return Err(violation(from, reason));
                }
                self.truncate_from(base)?;
                if self.log.end_offset() < last_end {
                    // Our batches are not aligned with the leader's where they should agree:
                    // treat it as a failed consistency check and let the leader probe.
                    let resp = self.reject(req.prev_end, req.prev_term);
                    self.messages.push((from, resp));
                    return Ok(());
                }
            }
            self.log.append_follower(batch)?;
            if header.is_control() {
                if let Some(m) = membership_of_batch(batch) {
                    self.push_membership(batch_end, batch_term, m);
                }
            }
            last_end = batch_end;
        }
        let commit = req.commit_end.min(last_end);
        if commit > self.commit_end {
            self.set_commit(commit);
        }
        if self.repairing && last_end >= req.commit_end.max(req.leader_end) {
            // We hold everything this leader had: whatever we lost and had acknowledged is
            // back (a leader counting our acknowledgement had it), the rest was never
            // committed.
            tracing::info!(id = %self.cfg.id, end = last_end, "repair complete");
            self.repairing = false;
            self.hard_state_dirty = true;
        }
        self.queue_ack(from, last_end);
        Ok(())
    }

    fn accept_leader(&mut self, from: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Follower || self.leader != Some(from) {
            if self.role == Role::Leader {
                let reason = format!(
                    "{}: two leaders in term {} ({} and {from})",
                    self.cfg.id, self.term, self.cfg.id
                );
                return Err(violation(from, reason));
            }
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        Ok(())
    }

    fn truncate_from(&mut self, offset: u64) -> Result<(), RaftError> {
        let new_end = self.log.truncate_from(offset)?;
        tracing::debug!(id = %self.cfg.id, offset, new_end, "truncated conflicting suffix");
        let before = self.memberships.len();
        let first = self.memberships[0].clone();
        self.memberships.retain(|e| e.end <= new_end);
        if self.memberships.is_empty() {
            self.memberships.push(first);
        }
        if self.memberships.len() != before {
            self.status_changed = true;
        }
        self.scanned_end = self.scanned_end.min(new_end);
        self.hard_state_dirty = true;
        self.sync_requested = true;
        if let Some(a) = &mut self.pending_ack {
            a.end = a.end.min(new_end);
        }
        Ok(())
    }

    fn reject(&self, rejected_prev_end: u64, prev_term: Term) -> Message {
        // Hint: the end of our entries whose term is <= the leader's term at prev_end.
        let end = self.log.end_offset();
        let probe = rejected_prev_end.min(end);
        let (hint_term, hint_end) = match self.log.term_end(prev_term) {
            Some((t, e)) => (t, e.min(probe)),
            None => (0, self.log.start_offset().min(probe)),
        };
        Message::AppendResponse(AppendResponse {
            term: self.term,
            match_end: None,
            rejected_prev_end,
            hint_end,
            hint_term,
        })
    }

    fn queue_ack(&mut self, leader: NodeId, end: u64) {
        let term = self.term;
        let end = match self.pending_ack {
            Some(a) if a.leader == leader && a.term == term => a.end.max(end),
            _ => end,
        };
        self.pending_ack = Some(PendingAck { leader, term, end });
        if self.cfg.bugs.ack_before_fsync || self.log.durable_end() >= end {
            self.flush_ack();
        }
    }

    /// Sends the pending acknowledgement for what is durable now.
    fn flush_ack(&mut self) {
        let Some(ack) = self.pending_ack else {
            return;
        };
        if ack.term != self.term || self.role != Role::Follower {
            self.pending_ack = None;
            return;
        }
        let durable = if self.cfg.bugs.ack_before_fsync {
            ack.end
        } else {
            self.log.durable_end().min(ack.end)
        };
        if durable < ack.end {
            return;
        }
        self.pending_ack = None;
        let resp = Message::AppendResponse(AppendResponse {
            term: self.term,
            match_end: Some(durable),
            rejected_prev_end: 0,
            hint_end: self.log.end_offset(),
            hint_term: self.last_term(),
        });
        if self.hard_state_dirty {
            self.messages_after_persist.push((ack.leader, resp));
        } else {
            self.messages.push((ack.leader, resp));
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) -> Result<(), RaftError> {
        if hb.term < self.term {
            self.messages.push((
                from,
                Message::HeartbeatResponse(HeartbeatResponse {
                    term: self.term,
                    log_end: self.log.end_offset(),
                }),
            ));
            return Ok(());
        }
        self.accept_leader(from)?;
        // The leader only sends what it knows we durably match.
        let commit = hb.commit_end.min(self.log.end_offset());
        if commit > self.commit_end {
            self.set_commit(commit);
        }
        self.messages.push((
            from,
            Message::HeartbeatResponse(HeartbeatResponse {
                term: self.term,
                log_end: self.log.end_offset(),
            }),
        ));
        Ok(())
    }

    fn handle_snapshot(&mut self, from: NodeId, req: SnapshotRequest) -> Result<(), RaftError> {
        if req.term < self.term {
            self.messages.push((from, self.reject(0, 0)));
            return Ok(());
        }
        self.accept_leader(from)?;
        let covered = req.start <= self.log.end_offset()
            && req.start >= self.log.start_offset()
            && self.term_before(req.start) == Some(req.start_term);
        if !covered {
            if req.start < self.commit_end {
                let reason = format!(
                    "{}: snapshot at {} below our commit end {}",
                    self.cfg.id, req.start, self.commit_end
                );
                return Err(violation(from, reason));
            }
            tracing::debug!(id = %self.cfg.id, start = req.start, "installing snapshot");
            self.log
                .install_snapshot(req.start, req.start_term, req.data)?;
            self.memberships = vec![MembershipEntry {
                end: req.start,
                term: req.start_term,
                membership: req.membership,
            }];
            self.scanned_end = req.start;
            self.hard_state_dirty = true;
            self.sync_requested = true;
            self.snapshot_installed = true;
            self.status_changed = true;
            self.commit_end = req.start;
            self.pending_ack = None;
        }
        let commit = req.commit_end.min(req.start);
        if commit > self.commit_end {
            self.set_commit(commit);
        }
        self.queue_ack(from, req.start);
        Ok(())
    }
}

/// The end offset of the last batch in a buffer of whole batches.
fn last_batch_end(bytes: &[u8]) -> Option<u64> {
    let mut pos = 0usize;
    let mut end = None;
    while pos < bytes.len() {
        let header = fjord_log::batch::BatchHeader::parse(&bytes[pos..]).ok()?;
        end = Some(header.last_offset() + 1);
        pos += header.total_size();
    }
    end
}
