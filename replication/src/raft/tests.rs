//! Tests of the Raft core: exact outputs for each behaviour, then randomized clusters.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::testing::MemLog;
use super::*;
use crate::NodeId;

fn n(id: u32) -> NodeId {
    NodeId(id)
}

/// A batch of `count` records whose values are `tag-i`.
fn batch(tag: &str, count: usize) -> BytesMut {
    let records: Vec<_> = (0..count)
        .map(|i| fjord_log::batch::RecordSpec {
            key: None,
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: Vec::new(),
            timestamp_ms: 1,
        })
        .collect();
    BytesMut::from(
        &fjord_log::batch::build_batch(&records, &Default::default()).expect("batch")[..],
    )
}

fn config(id: u32, seed: u64) -> RaftConfig {
    let mut c = RaftConfig::new(n(id), seed ^ u64::from(id));
    c.election_timeout_min_ticks = 10;
    c.election_timeout_max_ticks = 20;
    c.heartbeat_interval_ticks = 2;
    c.inflight_appends_max = 4;
    c.append_size_max_bytes = 4096;
    c
}

/// A member plus what its driver persisted.
struct Member {
    raft: Option<Raft<MemLog>>,
    cfg: RaftConfig,
    hard_state: HardState,
    /// The log while the member is down.
    parked_log: Option<MemLog>,
    /// IO the driver started and has not finished: the member takes no input meanwhile.
    pending: Option<PendingIo>,
}

/// The second half of a `Ready`: persist, sync, advance, then send.
struct PendingIo {
    hard_state: Option<HardState>,
    sync_log: bool,
    after_persist: Vec<(NodeId, Message)>,
}

/// A test driver for a group: delivers messages through a queue the test controls.
struct Cluster {
    members: BTreeMap<NodeId, Member>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Committed entries as first observed: offset range -> (term, bytes).
    committed: BTreeMap<u64, (u64, Term, Bytes)>,
    leaders: BTreeMap<Term, NodeId>,
    /// Whether IO completes only when the test says so (`complete_io`), so that crashes can
    /// hit between an append and its sync.
    defer_io: bool,
}

impl Cluster {
    fn new(voters: &[u32], learners: &[u32], seed: u64) -> Self {
        Self::with_config(voters, learners, seed, |_| {})
    }

    fn with_config(
        voters: &[u32],
        learners: &[u32],
        seed: u64,
        tweak: impl Fn(&mut RaftConfig),
    ) -> Self {
        let membership = Membership {
            voters: voters.iter().map(|v| n(*v)).collect(),
            learners: learners.iter().map(|v| n(*v)).collect(),
        };
        let members = voters
            .iter()
            .chain(learners)
            .map(|id| {
                let mut cfg = config(*id, seed);
                tweak(&mut cfg);
                let hs = HardState::initial(membership.clone());
                let raft = Raft::new(cfg.clone(), MemLog::new(), hs.clone()).expect("new");
                (
                    n(*id),
                    Member {
                        raft: Some(raft),
                        cfg,
                        hard_state: hs,
                        parked_log: None,
                        pending: None,
                    },
                )
            })
            .collect();
        Cluster {
            members,
            queue: VecDeque::new(),
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            defer_io: false,
        }
    }

    fn raft(&mut self, id: u32) -> &mut Raft<MemLog> {
        self.members
            .get_mut(&n(id))
            .and_then(|m| m.raft.as_mut())
            .expect("member is up")
    }

    /// Runs the driver contract for one member until it has nothing left to do (or, with
    /// `defer_io`, until it waits for IO).
    fn drive(&mut self, id: NodeId) {
        loop {
            let Some(m) = self.members.get_mut(&id) else {
                return;
            };
            if m.pending.is_some() {
                break;
            }
            let Some(raft) = m.raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                break;
            }
            let rd = raft.take_ready();
            for (to, msg) in rd.messages {
                self.queue.push_back((id, to, msg));
            }
            m.pending = Some(PendingIo {
                hard_state: rd.hard_state,
                sync_log: rd.sync_log,
                after_persist: rd.messages_after_persist,
            });
            if !self.defer_io {
                self.complete_io(id);
            }
        }
        self.check(id);
    }

    /// Finishes the IO a member started: persist, sync, advance, send.
    fn complete_io(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let Some(io) = m.pending.take() else {
            return;
        };
        let raft = m.raft.as_mut().expect("pending IO only on a live member");
        if let Some(hs) = io.hard_state {
            m.hard_state = hs;
        }
        if io.sync_log {
            raft.log_mut().sync().expect("sync");
        }
        raft.advance();
        for (to, msg) in io.after_persist {
            self.queue.push_back((id, to, msg));
        }
        self.drive(id);
    }

    /// Safety checks after every round: election safety and committed-entry agreement.
    fn check(&mut self, id: NodeId) {
        let Some(raft) = self.members.get(&id).and_then(|m| m.raft.as_ref()) else {
            return;
        };
        if raft.role() == Role::Leader {
            let prev = self.leaders.insert(raft.term(), id);
            assert!(
                prev.is_none() || prev == Some(id),
                "two leaders in term {}: {prev:?} and {id}",
                raft.term()
            );
        }
        let commit = raft.commit_end();
        for e in raft.log().entries() {
            if e.end > commit {
                break;
            }
            match self.committed.get(&e.base) {
                Some((end, term, bytes)) => assert!(
                    *end == e.end && *term == e.term && bytes == &e.bytes,
                    "{id}: committed entry at {} differs from the one committed before",
                    e.base
                ),
                None => {
                    self.committed
                        .insert(e.base, (e.end, e.term, e.bytes.clone()));
                }
            }
        }
    }

    fn tick(&mut self, id: u32) {
        if self.members[&n(id)].pending.is_some() {
            return;
        }
        if let Some(r) = self.members.get_mut(&n(id)).and_then(|m| m.raft.as_mut()) {
            r.tick().expect("tick");
            self.drive(n(id));
        }
    }

    fn tick_all(&mut self) {
        let ids: Vec<u32> = self.members.keys().map(|i| i.0).collect();
        for id in ids {
            self.tick(id);
        }
    }

    /// Delivers every queued message (and what they cause) in order.
    fn deliver_all(&mut self) {
        self.deliver_all_but(|_| false);
    }

    /// Like `deliver_all`, dropping the messages `drop` picks.
    fn deliver_all_but(&mut self, drop: impl Fn(&Message) -> bool) {
        let mut budget = 100_000;
        loop {
            let ids: Vec<NodeId> = self.members.keys().copied().collect();
            for id in ids {
                self.complete_io(id);
            }
            let Some((from, to, msg)) = self.queue.pop_front() else {
                break;
            };
            budget -= 1;
            assert!(budget > 0, "message storm");
            if !drop(&msg) {
                self.deliver(from, to, msg);
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: Message) {
        if self.members.get(&to).is_some_and(|m| m.pending.is_some()) {
            self.queue.push_back((from, to, msg));
            return;
        }
        if let Some(r) = self.members.get_mut(&to).and_then(|m| m.raft.as_mut()) {
            r.step(from, msg).expect("step");
            self.drive(to);
        }
    }

    fn crash(&mut self, id: u32) {
        let m = self.members.get_mut(&n(id)).expect("member");
        m.pending = None;
        if let Some(raft) = m.raft.take() {
            let mut log = raft.into_log();
            log.crash();
            m.parked_log = Some(log);
        }
        // Messages already in flight stay in flight: they may reach the member after it
        // restarts, as they would on a real network.
    }

    fn restart(&mut self, id: u32) {
        let m = self.members.get_mut(&n(id)).expect("member");
        if let Some(log) = m.parked_log.take() {
            let raft = Raft::new(m.cfg.clone(), log, m.hard_state.clone()).expect("restart");
            m.raft = Some(raft);
        }
        self.drive(n(id));
    }

    /// The member's disk loses its log from `offset` on (corruption found at restart): it
    /// restarts in repair mode unless `skip_repair` (the bug the repair mode prevents).
    fn corrupt(&mut self, id: u32, offset: u64, skip_repair: bool) {
        self.crash(id);
        let m = self.members.get_mut(&n(id)).expect("member");
        if let Some(log) = m.parked_log.as_mut() {
            log.lose_from(offset);
        }
        if !skip_repair {
            m.hard_state.repairing = true;
        }
        self.restart(id);
    }

    fn leader(&self) -> Option<u32> {
        self.members
            .values()
            .filter_map(|m| m.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id().0)
    }

    /// Ticks everyone until a leader is elected (bounded).
    fn elect(&mut self) -> u32 {
        for _ in 0..500 {
            self.tick_all();
            self.deliver_all();
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader elected");
    }
}

// ----- exact behaviours ----------------------------------------------------------------

#[test]
fn timeout_starts_a_pre_vote_without_changing_the_term() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 1);
    let r = c.raft(1);
    for _ in 0..20 {
        r.tick().unwrap();
    }
    let rd = r.take_ready();
    assert_eq!(r.term(), 0);
    assert_eq!(r.role(), Role::PreCandidate);
    assert!(rd.hard_state.is_none(), "a pre-vote persists nothing");
    let expected = Message::PreVote(VoteRequest {
        term: 1,
        log_end: 0,
        last_term: 0,
        transfer: false,
    });
    assert_eq!(
        rd.messages,
        vec![(n(2), expected.clone()), (n(3), expected)]
    );
    r.advance();
}

#[test]
fn election_persists_term_and_vote_before_asking_for_votes() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 2);
    let r = c.raft(1);
    for _ in 0..20 {
        r.tick().unwrap();
    }
    let _ = r.take_ready();
    r.advance();
    r.step(
        n(2),
        Message::PreVoteResponse(VoteResponse {
            term: 1,
            granted: true,
        }),
    )
    .unwrap();
    let rd = r.take_ready();
    assert_eq!(r.role(), Role::Candidate);
    let hs = rd.hard_state.clone().expect("term and vote persisted");
    assert_eq!((hs.term, hs.vote), (1, Some(n(1))));
    assert!(rd.messages.is_empty(), "vote requests wait for persistence");
    let expected = Message::Vote(VoteRequest {
        term: 1,
        log_end: 0,
        last_term: 0,
        transfer: false,
    });
    assert_eq!(
        rd.messages_after_persist,
        vec![(n(2), expected.clone()), (n(3), expected)]
    );
    r.advance();
    // One more vote makes a majority: leader, with a no-op of its term.
    r.step(
        n(3),
        Message::VoteResponse(VoteResponse {
            term: 1,
            granted: true,
        }),
    )
    .unwrap();
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.log().end_offset(), 1);
    assert_eq!(r.log().term_at(0), Some(1));
    let rd = r.take_ready();
    assert!(rd.sync_log);
    let appends: Vec<_> = rd
        .messages
        .iter()
        .filter(
            |(_, m)| matches!(m, Message::Append(a) if a.prev_end == 0 && !a.batches.is_empty()),
        )
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(appends, vec![n(2), n(3)]);
    r.advance();
}

#[test]
fn vote_is_granted_once_per_term_and_only_after_persisting() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 3);
    let r = c.raft(2);
    let req = |t| {
        Message::Vote(VoteRequest {
            term: t,
            log_end: 0,
            last_term: 0,
            transfer: false,
        })
    };
    r.step(n(1), req(1)).unwrap();
    let rd = r.take_ready();
    assert_eq!(
        rd.hard_state.as_ref().map(|h| (h.term, h.vote)),
        Some((1, Some(n(1))))
    );
    assert_eq!(
        rd.messages_after_persist,
        vec![(
            n(1),
            Message::VoteResponse(VoteResponse {
                term: 1,
                granted: true
            })
        )]
    );
    r.advance();
    r.step(n(3), req(1)).unwrap();
    let rd = r.take_ready();
    assert_eq!(
        rd.messages,
        vec![(
            n(3),
            Message::VoteResponse(VoteResponse {
                term: 1,
                granted: false
            })
        )]
    );
    r.advance();
}

#[test]
fn vote_is_refused_to_a_candidate_with_a_stale_log() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 4);
    let leader = c.elect();
    c.raft(leader).propose(batch("a", 3)).unwrap();
    c.drive(n(leader));
    c.deliver_all();
    let voter = if leader == 1 { 2 } else { 1 };
    let term = c.raft(voter).term();
    let r = c.raft(voter);
    // Let the lease expire so the request is considered at all.
    for _ in 0..10 {
        r.tick().unwrap();
    }
    let _ = r.take_ready();
    r.advance();
    let r = c.raft(voter);
    r.step(
        n(9),
        Message::Vote(VoteRequest {
            term: term + 1,
            log_end: 1,
            last_term: term,
            transfer: false,
        }),
    )
    .unwrap();
    let rd = r.take_ready();
    assert!(rd.messages.contains(&(
        n(9),
        Message::VoteResponse(VoteResponse {
            term: term + 1,
            granted: false
        })
    )));
    r.advance();
}

#[test]
fn follower_truncates_a_conflicting_suffix() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 5);
    let leader = c.elect();
    let term = c.raft(leader).term();
    let f = if leader == 1 { 2 } else { 1 };
    // Give the follower an uncommitted entry of an old leader at offsets 1..4.
    {
        let r = c.raft(f);
        let mut b = batch("stale", 3);
        fjord_log::batch::set_base_offset(&mut b, 1).expect("a whole batch");
        fjord_log::batch::set_partition_leader_epoch(&mut b, term as i32).expect("a whole batch");
        r.log_mut().append_follower(&b).unwrap();
    }
    // The real leader's entry at 1 is of a newer term.
    let mut b = batch("new", 2);
    fjord_log::batch::set_base_offset(&mut b, 1).expect("a whole batch");
    fjord_log::batch::set_partition_leader_epoch(&mut b, (term + 1) as i32).expect("a whole batch");
    let r = c.raft(f);
    r.step(
        n(leader),
        Message::Append(AppendRequest {
            term,
            prev_end: 1,
            prev_term: term,
            commit_end: 1,
            leader_end: 0,
            batches: b.freeze(),
        }),
    )
    .unwrap();
    assert_eq!(r.log().end_offset(), 3);
    assert_eq!(r.log().term_at(1), Some(term + 1));
    let rd = r.take_ready();
    assert!(rd.sync_log);
    assert!(
        rd.messages.is_empty(),
        "no ack before the entries are durable"
    );
    r.log_mut().sync().unwrap();
    r.advance();
    let rd = r.take_ready();
    assert_eq!(
        rd.messages,
        vec![(
            n(leader),
            Message::AppendResponse(AppendResponse {
                term,
                match_end: Some(3),
                rejected_prev_end: 0,
                hint_end: 3,
                hint_term: term + 1,
            })
        )]
    );
    r.advance();
}

#[test]
fn append_with_unknown_prev_is_rejected_with_a_hint() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 6);
    let r = c.raft(2);
    r.step(
        n(1),
        Message::Append(AppendRequest {
            term: 3,
            prev_end: 10,
            prev_term: 3,
            commit_end: 0,
            leader_end: 0,
            batches: Bytes::new(),
        }),
    )
    .unwrap();
    let rd = r.take_ready();
    assert_eq!(
        rd.messages,
        vec![(
            n(1),
            Message::AppendResponse(AppendResponse {
                term: 3,
                match_end: None,
                rejected_prev_end: 10,
                hint_end: 0,
                hint_term: 0,
            })
        )]
    );
    r.advance();
}

/// Raft figure 8: a leader must not commit an entry of an earlier term by counting the
/// replicas that hold it; only an entry of its own term commits (and the earlier ones with it).
#[test]
fn leader_never_commits_an_earlier_term_entry_by_counting() {
    assert_eq!(figure_8_commit(false), None);
    assert!(
        figure_8_commit(true).is_some(),
        "the injected bug is observable"
    );
}

/// Returns the commit end the re-elected leader reaches from a quorum holding only an entry
/// of its previous term, or `None` if it (rightly) commits nothing new.
fn figure_8_commit(bug: bool) -> Option<u64> {
    let mut c = Cluster::with_config(&[1, 2, 3], &[], 7, |cfg| {
        cfg.bugs.commit_old_term_by_count = bug;
    });
    let first = c.elect();
    c.deliver_all();
    let commit0 = c.raft(first).commit_end();
    // An entry of the first term reaches only the leader.
    c.raft(first).propose(batch("old", 1)).unwrap();
    c.drive(n(first));
    c.queue.clear();
    let old_end = c.raft(first).log().end_offset();
    // The same node wins the next term (its log is the most up to date), but none of its
    // appends of the new term get through.
    let r = c.raft(first);
    let next_term = r.term() + 1;
    r.become_follower(next_term, None);
    r.campaign(false, true).unwrap();
    c.drive(n(first));
    c.deliver_all_but(|m| matches!(m, Message::Append(_)));
    assert_eq!(c.leader(), Some(first));
    let term = c.raft(first).term();
    let follower = if first == 1 { 2 } else { 1 };
    let r = c.raft(first);
    assert!(r.log().term_at(old_end - 1).unwrap() < term);
    // A follower durably holds the old entry: with the leader, a majority has it.
    r.step(
        n(follower),
        Message::AppendResponse(AppendResponse {
            term,
            match_end: Some(old_end),
            rejected_prev_end: 0,
            hint_end: old_end,
            hint_term: term - 1,
        }),
    )
    .unwrap();
    let commit = r.commit_end();
    let _ = r.take_ready();
    r.advance();
    (commit != commit0).then_some(commit)
}

#[test]
fn partitioned_node_with_pre_vote_does_not_inflate_its_term() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 8);
    let leader = c.elect();
    c.deliver_all();
    let term = c.raft(leader).term();
    let lonely = if leader == 3 { 2 } else { 3 };
    // `lonely` hears nothing for a long time: its pre-votes go nowhere.
    for _ in 0..200 {
        c.tick(lonely);
        c.queue.retain(|(f, _, _)| *f != n(lonely));
    }
    assert_eq!(c.raft(lonely).term(), term);
    // Rejoining does not depose the leader.
    for _ in 0..50 {
        c.tick_all();
        c.deliver_all();
    }
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.raft(leader).term(), term);
}

#[test]
fn vote_requests_are_ignored_within_the_leader_lease() {
    // Without pre-vote a partitioned node inflates its term; check-quorum's lease makes the
    // followers of a healthy leader ignore its vote requests (no reply, no term change).
    let mut c = Cluster::with_config(&[1, 2, 3], &[], 9, |cfg| cfg.pre_vote = false);
    let leader = c.elect();
    c.deliver_all();
    let term = c.raft(leader).term();
    let follower = if leader == 1 { 2 } else { 1 };
    let r = c.raft(follower);
    r.step(
        n(3),
        Message::Vote(VoteRequest {
            term: term + 5,
            log_end: 100,
            last_term: term,
            transfer: false,
        }),
    )
    .unwrap();
    assert_eq!(r.term(), term);
    let rd = r.take_ready();
    assert!(rd.is_empty(), "{rd:?}");
    r.advance();
    // A transfer-initiated election is not disruptive: it is honoured.
    r.step(
        n(3),
        Message::Vote(VoteRequest {
            term: term + 5,
            log_end: 100,
            last_term: term,
            transfer: true,
        }),
    )
    .unwrap();
    assert_eq!(r.term(), term + 5);
}

#[test]
fn isolated_leader_steps_down_by_check_quorum() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 10);
    let leader = c.elect();
    c.deliver_all();
    for _ in 0..25 {
        c.tick(leader);
        c.queue.clear();
    }
    assert_eq!(c.raft(leader).role(), Role::Follower);
}

#[test]
fn learner_receives_the_log_but_never_votes_or_campaigns() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], 11);
    let leader = c.elect();
    c.raft(leader).propose(batch("x", 5)).unwrap();
    c.drive(n(leader));
    for _ in 0..5 {
        c.tick_all();
        c.deliver_all();
    }
    assert_eq!(
        c.raft(4).log().end_offset(),
        c.raft(leader).log().end_offset()
    );
    assert_eq!(c.raft(4).commit_end(), c.raft(leader).commit_end());
    // Cut the learner off: it never campaigns.
    for _ in 0..200 {
        c.tick(4);
        let rd_empty = c.queue.iter().all(|(f, _, _)| *f != n(4));
        assert!(rd_empty, "a learner sent something on its own");
    }
    assert_eq!(c.raft(4).role(), Role::Follower);
}

#[test]
fn membership_change_promotes_a_caught_up_learner() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], 12);
    let leader = c.elect();
    c.deliver_all();
    for _ in 0..3 {
        c.tick_all();
        c.deliver_all();
    }
    let mut next = c.raft(leader).membership().clone();
    next.learners.remove(&n(4));
    next.voters.insert(n(4));
    // Two-step changes are refused.
    let mut bad = next.clone();
    bad.voters.remove(&n(1));
    assert!(matches!(
        c.raft(leader).propose_membership(bad),
        Err(ProposeError::InvalidMembershipChange)
    ));
    let (_, end) = c.raft(leader).propose_membership(next.clone()).unwrap();
    assert!(matches!(
        c.raft(leader).propose_membership(next.clone()),
        Err(ProposeError::MembershipChangePending)
    ));
    c.drive(n(leader));
    for _ in 0..5 {
        c.tick_all();
        c.deliver_all();
    }
    for id in 1..=4 {
        assert_eq!(c.raft(id).membership(), &next, "member {id}");
        assert!(c.raft(id).commit_end() >= end);
    }
    // The membership survives a restart (from the persisted hard state).
    c.crash(4);
    c.restart(4);
    assert_eq!(c.raft(4).membership(), &next);
}

#[test]
fn leadership_transfer_hands_over_to_the_target() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 13);
    let leader = c.elect();
    c.deliver_all();
    let target = if leader == 1 { 2 } else { 1 };
    let term = c.raft(leader).term();
    c.raft(leader).transfer_leadership(n(target)).unwrap();
    assert!(matches!(
        c.raft(leader).propose(batch("x", 1)),
        Err(ProposeError::TransferInProgress)
    ));
    c.drive(n(leader));
    for _ in 0..3 {
        c.deliver_all();
        c.tick_all();
    }
    c.deliver_all();
    assert_eq!(c.leader(), Some(target));
    assert!(c.raft(target).term() > term);
}

#[test]
fn follower_behind_the_leaders_log_start_restarts_from_it() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 14);
    let leader = c.elect();
    c.deliver_all();
    let lagging = if leader == 1 { 2 } else { 1 };
    c.crash(lagging);
    for i in 0..5 {
        c.raft(leader).propose(batch(&format!("b{i}"), 2)).unwrap();
        c.drive(n(leader));
        c.deliver_all();
    }
    let commit = c.raft(leader).commit_end();
    c.raft(leader).log_mut().delete_prefix(commit - 2);
    let start = c.raft(leader).log().start_offset();
    assert!(start > 1);
    c.restart(lagging);
    for _ in 0..10 {
        c.tick_all();
        c.deliver_all();
    }
    let r = c.raft(lagging);
    assert_eq!(r.log().start_offset(), start);
    assert_eq!(r.log().end_offset(), c.raft(leader).log().end_offset());
}

#[test]
fn a_repairing_member_neither_votes_nor_campaigns_until_refilled() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 16);
    let leader = c.elect();
    for i in 0..3 {
        c.raft(leader).propose(batch(&format!("r{i}"), 2)).unwrap();
        c.drive(n(leader));
        c.deliver_all();
    }
    let f = if leader == 1 { 2 } else { 1 };
    c.corrupt(f, 1, false);
    assert!(c.raft(f).is_repairing());
    // It refuses votes while repairing.
    let term = c.raft(f).term();
    let r = c.raft(f);
    for _ in 0..30 {
        r.tick().unwrap();
    }
    assert_eq!(
        r.role(),
        Role::Follower,
        "a repairing member does not campaign"
    );
    let _ = r.take_ready();
    r.advance();
    r.step(
        n(9),
        Message::Vote(VoteRequest {
            term: term + 1,
            log_end: 100,
            last_term: term + 1,
            transfer: true,
        }),
    )
    .unwrap();
    let rd = r.take_ready();
    assert!(rd
        .messages
        .iter()
        .all(|(_, m)| !matches!(m, Message::VoteResponse(v) if v.granted)));
    r.advance();
    // The leader refills it; then it is a full member again (and says so durably).
    for _ in 0..60 {
        c.tick_all();
        c.deliver_all();
    }
    assert!(!c.raft(f).is_repairing());
    assert!(!c.members[&n(f)].hard_state.repairing);
}

/// Messages no correct member sends are typed errors (the group stops), never panics: a
/// peer breaking the protocol must not crash the node (found by the rpc_frame fuzz target).
#[test]
fn protocol_violations_are_errors() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 16);
    let leader = c.elect();
    let term = c.raft(leader).term();
    let other = if leader == 1 { 2 } else { 1 };
    let violation = |r: Result<(), RaftError>| matches!(r, Err(RaftError::Protocol { .. }));
    let heartbeat = |term| {
        Message::Heartbeat(Heartbeat {
            term,
            commit_end: 0,
        })
    };
    let r = c.raft(leader);
    assert!(
        violation(r.step(n(other), heartbeat(term))),
        "a second leader in our term"
    );
    assert!(
        violation(r.step(n(leader), heartbeat(term + 1))),
        "a message from ourselves"
    );
    assert!(
        violation(r.step(n(other), heartbeat(1 << 40))),
        "a term beyond i32"
    );
    let ahead = Message::AppendResponse(AppendResponse {
        term,
        match_end: Some(1 << 20),
        rejected_prev_end: 0,
        hint_end: 0,
        hint_term: 0,
    });
    assert!(
        violation(r.step(n(other), ahead)),
        "a match beyond our log end"
    );
    assert_eq!(r.role(), Role::Leader, "violations change nothing");
}

#[test]
fn single_voter_group_commits_after_its_own_sync() {
    let mut c = Cluster::new(&[1], &[], 15);
    assert_eq!(c.elect(), 1);
    let (_, end) = c.raft(1).propose(batch("solo", 4)).unwrap();
    assert!(c.raft(1).commit_end() < end, "not durable yet");
    c.drive(n(1));
    assert_eq!(c.raft(1).commit_end(), end);
}

// ----- randomized clusters ----------------------------------------------------------------

/// Many seeds of a 3- or 5-member group under loss, duplication, reordering, crashes that
/// lose unsynced state, and restarts. After every step: at most one leader per term, and
/// committed entries never change (`Cluster::check`). At the end: heal, and every
/// acknowledged (committed) proposal is in every member's log.
#[test]
fn randomized_clusters_keep_committed_entries() {
    let seeds: u64 = std::env::var("RAFT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let from: u64 = std::env::var("RAFT_SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in from..from + seeds {
        run_random(seed, RaftBugs::default());
    }
}

fn bug(name: &str) -> RaftBugs {
    let mut b = RaftBugs::default();
    match name {
        "ack-before-fsync" => b.ack_before_fsync = true,
        "vote-not-persisted" => b.vote_not_persisted = true,
        "no-truncate-on-conflict" => b.no_truncate_on_conflict = true,
        "commit-old-term-by-count" => b.commit_old_term_by_count = true,
        _ => panic!("unknown bug {name}"),
    }
    b
}

/// The first seed below `limit` whose randomized run fails with `bugs` switched on.
fn first_failing_seed(bugs: RaftBugs, limit: u64) -> Option<u64> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found =
        (0..limit).find(|seed| std::panic::catch_unwind(|| run_random(*seed, bugs)).is_err());
    std::panic::set_hook(hook);
    found
}

/// The randomized test must be able to fail: each injected bug is caught (by the checks or
/// by a core assertion) within a bounded number of seeds.
#[test]
fn randomized_clusters_catch_injected_bugs() {
    for name in [
        "ack-before-fsync",
        "vote-not-persisted",
        "no-truncate-on-conflict",
    ] {
        let seed = first_failing_seed(bug(name), 400);
        assert!(seed.is_some(), "{name} not caught within 400 seeds");
    }
}

/// Without repair mode, a member whose disk lost acknowledged entries votes at once and can
/// help elect a leader lacking committed entries: the randomized test must notice.
#[test]
fn randomized_clusters_catch_voting_after_data_loss() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = (0..2000u64).find(|seed| {
        std::panic::catch_unwind(|| run_random_with(*seed, RaftBugs::default(), true)).is_err()
    });
    std::panic::set_hook(hook);
    assert!(
        found.is_some(),
        "voting right after data loss was not caught"
    );
}

/// Raft's figure-8 bug needs a long chain of coincidences (an old-term entry committed by
/// count, the leader lost before its own entry spreads, a rival with a newer last term
/// elected): found after a few thousand seeds (3935 when last measured), too slow for the
/// debug test run. `figure_8_commit` checks the rule deterministically;
/// run this with `cargo test --release -p fjord-replication -- --ignored`.
#[test]
#[ignore]
fn randomized_clusters_catch_commit_old_term_by_count() {
    let seed = first_failing_seed(bug("commit-old-term-by-count"), 50_000);
    assert!(
        seed.is_some(),
        "commit-old-term-by-count not caught within 50000 seeds"
    );
}

fn run_random(seed: u64, bugs: RaftBugs) {
    run_random_with(seed, bugs, false)
}

/// `skip_repair`: corrupted members come back voting at once (what repair mode prevents).
fn run_random_with(seed: u64, bugs: RaftBugs, skip_repair: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let size = if rng.gen_bool(0.5) { 3 } else { 5 };
    let ids: Vec<u32> = (1..=size).collect();
    // Sometimes one batch per append, so that acknowledgements cover partial ranges.
    let append_size_max_bytes = if rng.gen_bool(0.5) { 1 } else { 4096 };
    // Swarm: each seed picks its own protocol options and timing.
    let pre_vote = rng.gen_bool(0.5);
    let check_quorum = rng.gen_bool(0.7);
    let timeout_spread = rng.gen_range(5..15);
    let reorder_window = rng.gen_range(1..32);
    let noop_delay_ticks = [0, 0, rng.gen_range(1..30)][rng.gen_range(0..3)];
    let corruption = [0.0, 0.0, 0.3, 1.0][rng.gen_range(0..4)];
    let mut damaged: BTreeMap<u32, u64> = BTreeMap::new();
    let mut c = Cluster::with_config(&ids, &[], seed, |cfg| {
        cfg.bugs = bugs;
        cfg.append_size_max_bytes = append_size_max_bytes;
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
        cfg.noop_delay_ticks = noop_delay_ticks;
        cfg.election_timeout_max_ticks = cfg.election_timeout_min_ticks + timeout_spread;
    });
    c.defer_io = true;
    let mut acked: Vec<(u64, u64, String)> = Vec::new();
    let mut proposed: Vec<(u32, Term, u64, u64, String)> = Vec::new();
    let mut down: BTreeSet<u32> = BTreeSet::new();
    // Links cut in both directions.
    let mut isolated: BTreeSet<u32> = BTreeSet::new();
    let crash_weight = rng.gen_range(1..6);
    // Leader churn: a new leader is cut off soon after its election, so that terms turn
    // over while entries are only partly replicated (where Raft's subtle rules matter).
    let churn = [0.0, 0.3, 0.8][rng.gen_range(0..3)];
    // Per-link loss rates (some links are bad).
    let loss: BTreeMap<(u32, u32), f64> = ids
        .iter()
        .flat_map(|a| ids.iter().map(move |b| (*a, *b)))
        .map(|l| (l, [0.0, 0.0, 0.05, 0.3, 0.6][rng.gen_range(0..5)]))
        .collect();
    let mut seen_leader: Option<(Term, u32)> = None;
    let mut churn_at: Option<(u32, u32)> = None;
    for step in 0..4000u32 {
        if let Some(l) = c.leader() {
            let t = c.raft(l).term();
            if seen_leader != Some((t, l)) {
                seen_leader = Some((t, l));
                if rng.gen_bool(churn) {
                    churn_at = Some((step + rng.gen_range(2..80), l));
                }
            }
        }
        if let Some((at, l)) = churn_at {
            if at == step {
                churn_at = None;
                if isolated.len() < (size as usize - 1) / 2 {
                    isolated.insert(l);
                }
            }
        }
        let roll = rng.gen_range(0..100);
        match roll {
            0..=34 => {
                // Deliver one of the first queued messages (reordering), maybe drop or
                // duplicate it.
                if !c.queue.is_empty() {
                    let i = rng.gen_range(0..c.queue.len().min(reorder_window));
                    let (f, t, m) = c.queue.remove(i).expect("index");
                    if isolated.contains(&f.0)
                        || isolated.contains(&t.0)
                        || rng.gen_bool(loss[&(f.0, t.0)])
                    {
                        continue;
                    }
                    if rng.gen_bool(0.05) {
                        c.queue.push_back((f, t, m.clone()));
                    }
                    c.deliver(f, t, m);
                }
            }
            35..=49 => {
                let id = ids[rng.gen_range(0..ids.len())];
                c.complete_io(n(id));
            }
            50..=74 => {
                let id = ids[rng.gen_range(0..ids.len())];
                c.tick(id);
            }
            75..=84 => {
                if let Some(l) = c.leader() {
                    if c.members[&n(l)].pending.is_none() {
                        let tag = format!("s{seed}-{step}");
                        if let Ok((base, end)) = c.raft(l).propose(batch(&tag, rng.gen_range(1..4)))
                        {
                            let term = c.raft(l).term();
                            proposed.push((l, term, base, end, tag));
                        }
                        c.drive(n(l));
                    }
                }
            }
            85..=89 => {
                if roll - 85 < crash_weight {
                    let id = ids[rng.gen_range(0..ids.len())];
                    if down.len() < (size as usize - 1) / 2 && down.insert(id) {
                        c.crash(id);
                        // A quick reboot: messages sent before the crash may still arrive.
                        if rng.gen_bool(0.5) {
                            down.remove(&id);
                            c.restart(id);
                        }
                    }
                }
            }
            90 => {
                // Disk corruption on one member: its log is cut somewhere (maybe below what
                // it acknowledged, even below the commit point).
                // Data on a majority is never destroyed: one member is damaged at a time,
                // until its log holds again everything the others had when it was hit.
                damaged.retain(|i, target| {
                    let m = &c.members[&n(*i)];
                    m.hard_state.repairing
                        || m.raft
                            .as_ref()
                            .is_none_or(|r| r.log().end_offset() < *target || r.is_repairing())
                });
                let id = ids[rng.gen_range(0..ids.len())];
                if !down.contains(&id) && damaged.is_empty() && rng.gen_bool(corruption) {
                    let end = c.raft(id).log().end_offset();
                    if end > 0 {
                        let target = ids
                            .iter()
                            .filter_map(|i| c.members[&n(*i)].raft.as_ref())
                            .map(|r| r.log().end_offset())
                            .max()
                            .unwrap_or(0);
                        let at = rng.gen_range(0..end);
                        if std::env::var("RAFT_TRACE").is_ok() {
                            eprintln!(
                                "step {step}: corrupt {id} at {at} (end {end}, target {target})"
                            );
                        }
                        c.corrupt(id, at, skip_repair);
                        damaged.insert(id, target);
                    }
                }
            }
            91..=93 => {
                if let Some(&id) = down.iter().next() {
                    down.remove(&id);
                    c.restart(id);
                }
            }
            94..=95 => {
                // Cut off a random member, often the leader (forcing elections).
                let id = match c.leader() {
                    Some(l) if rng.gen_bool(0.7) => l,
                    _ => ids[rng.gen_range(0..ids.len())],
                };
                if !isolated.remove(&id) && isolated.len() < (size as usize - 1) / 2 {
                    isolated.insert(id);
                }
            }
            _ => {
                c.deliver_all_but(|_| false);
                isolated.clear();
            }
        }
        // A proposal is acknowledged once its leader's commit covers it in its term.
        for (l, term, base, end, tag) in &proposed {
            let Some(r) = c.members.get(&n(*l)).and_then(|m| m.raft.as_ref()) else {
                continue;
            };
            if r.term() == *term && r.commit_end() >= *end && !acked.iter().any(|a| &a.2 == tag) {
                if std::env::var("RAFT_TRACE").is_ok() {
                    eprintln!("step {step}: acked {tag} [{base},{end}) by {l} term {term} role {:?} log_end {} term_at {:?}", r.role(), r.log().end_offset(), r.log().term_at(end - 1));
                }
                acked.push((*base, *end, tag.clone()));
            }
        }
    }
    if std::env::var("RAFT_STATS").is_ok() {
        eprintln!(
            "seed {seed}: size {size} terms {} leaders {} acked {} commit {:?}",
            c.members
                .values()
                .filter_map(|m| m.raft.as_ref())
                .map(|r| r.term())
                .max()
                .unwrap_or(0),
            c.leaders.len(),
            acked.len(),
            c.leader().map(|l| c.raft(l).commit_end())
        );
    }
    // Heal: everyone up, messages flow reliably.
    for id in down.clone() {
        c.restart(id);
    }
    let mut converged = false;
    for _ in 0..400 {
        c.tick_all();
        c.deliver_all();
        let leader = c.leader();
        if let Some(l) = leader {
            let end = c.raft(l).log().end_offset();
            let commit = c.raft(l).commit_end();
            // Every member knows everything is committed (so their logs are the leader's).
            if commit == end
                && ids.iter().all(|i| {
                    let r = c.raft(*i);
                    r.log().end_offset() == end && r.commit_end() == end
                })
            {
                converged = true;
                break;
            }
        }
    }
    if !converged {
        for id in &ids {
            let st = c.raft(*id).status();
            eprintln!(
                "{st:?} pending={} repairing={}",
                c.members[&n(*id)].pending.is_some(),
                c.raft(*id).is_repairing()
            );
        }
    }
    assert!(
        converged,
        "seed {seed}: the group did not converge after healing"
    );
    if std::env::var("RAFT_TRACE").is_ok() {
        for id in &ids {
            let es: Vec<_> = c
                .raft(*id)
                .log()
                .entries()
                .iter()
                .filter(|e| e.end > 55)
                .map(|e| (e.base, e.end, e.term))
                .collect();
            eprintln!(
                "final {id}: {:?} pending={} {:?}",
                c.raft(*id).status(),
                c.members[&n(*id)].pending.is_some(),
                es
            );
        }
    }
    for (base, end, tag) in &acked {
        for id in &ids {
            let log = c.raft(*id).log();
            let e = log
                .entries()
                .iter()
                .find(|e| e.base == *base)
                .unwrap_or_else(|| panic!("seed {seed}: acked {tag} lost on {id}"));
            assert_eq!(e.end, *end, "seed {seed}");
            let records = fjord_log::batch::decode_records(&e.bytes).expect("decode");
            let v = records[0].value.as_ref().expect("value");
            assert!(
                v.starts_with(tag.as_bytes()),
                "seed {seed}: acked {tag} replaced on {id}"
            );
        }
    }
}
