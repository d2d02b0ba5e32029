//! `raft_step`: a small cluster of Raft cores ([`fjord_replication::raft::Raft`] over the
//! in-memory [`MemLog`]) driven by a script of network, clock, client and disk events.
//!
//! Every message is one a real member produced: the script only decides which queued
//! message is delivered next, dropped or duplicated (so delivery is arbitrary: reordered,
//! late, repeated, lost), when members tick, when their disk IO completes, and when they
//! crash (losing unsynced data), restart, lose a suffix of their log to corruption (and
//! repair, never more than one member at a time, as in replication's randomized tests),
//! take proposals or transfer leadership. Arbitrary messages could impersonate a leader in
//! a term it never won — a Byzantine peer, which Raft does not tolerate — so none are made.
//!
//! Checked after every step: election safety (one leader per term), log matching (two logs
//! holding an entry with the same offset range and term are identical up to it), that
//! committed entries never change, that every leader of a later term holds every entry
//! committed before it (leader completeness), and that each member's commit end lies within
//! its log. At the end the cluster is healed and must converge, and
//! every proposal a leader saw committed in its term is in every log.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use fjord_replication::raft::testing::MemLog;
use fjord_replication::raft::{
    HardState, Membership, Message, Raft, RaftConfig, RaftLog, Role, Term,
};
use fjord_replication::NodeId;

use crate::input::{Reader, Writer};

/// Steps one input may take.
const STEPS_MAX_COUNT: usize = 2_000;
/// Messages in flight; beyond it the network drops the oldest.
const QUEUE_MAX_COUNT: usize = 2_048;
/// Deliveries one "deliver everything" step makes.
const DELIVER_ALL_MAX_COUNT: usize = 5_000;
/// Rounds of healing (tick everyone, deliver everything) before the cluster must agree.
const HEAL_ROUNDS_MAX_COUNT: usize = 400;

struct Member {
    raft: Option<Raft<MemLog>>,
    cfg: RaftConfig,
    hard_state: HardState,
    parked_log: Option<MemLog>,
    /// IO the member started and has not finished: it takes no input meanwhile.
    pending: Option<PendingIo>,
}

struct PendingIo {
    hard_state: Option<HardState>,
    sync_log: bool,
    after_persist: Vec<(NodeId, Message)>,
}

struct Cluster {
    members: BTreeMap<NodeId, Member>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Committed entries as first seen: base offset -> (end, term, bytes, and the lowest
    /// term of a member that saw it committed — it was committed in that term or earlier).
    committed: BTreeMap<u64, (u64, Term, Bytes, Term)>,
    leaders: BTreeMap<Term, NodeId>,
}

impl Cluster {
    fn new(size: u32, tweak: impl Fn(&mut RaftConfig)) -> Self {
        let membership = Membership::with_voters((1..=size).map(NodeId));
        let members = (1..=size)
            .map(|id| {
                let mut cfg = RaftConfig::new(NodeId(id), u64::from(id));
                cfg.election_timeout_min_ticks = 10;
                cfg.election_timeout_max_ticks = 20;
                cfg.heartbeat_interval_ticks = 2;
                cfg.inflight_appends_max = 4;
                cfg.append_size_max_bytes = 4096;
                tweak(&mut cfg);
                let hs = HardState::initial(membership.clone());
                let raft = Raft::new(cfg.clone(), MemLog::new(), hs.clone()).expect("new member");
                let member = Member {
                    raft: Some(raft),
                    cfg,
                    hard_state: hs,
                    parked_log: None,
                    pending: None,
                };
                (NodeId(id), member)
            })
            .collect();
        Cluster {
            members,
            queue: VecDeque::new(),
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    fn up(&self, id: NodeId) -> Option<&Raft<MemLog>> {
        self.members.get(&id).and_then(|m| m.raft.as_ref())
    }

    /// Takes the member's ready work; its IO stays pending until `complete_io`.
    fn drive(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.pending.is_none() {
            if let Some(raft) = m.raft.as_mut() {
                if raft.has_ready() {
                    let rd = raft.take_ready();
                    for (to, msg) in rd.messages {
                        self.queue.push_back((id, to, msg));
                    }
                    m.pending = Some(PendingIo {
                        hard_state: rd.hard_state,
                        sync_log: rd.sync_log,
                        after_persist: rd.messages_after_persist,
                    });
                }
            }
        }
        while self.queue.len() > QUEUE_MAX_COUNT {
            self.queue.pop_front();
        }
        self.check(id);
    }

    /// Persist, sync, advance, then send what waited for persistence.
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
            raft.log_mut().sync().expect("MemLog syncs");
        }
        raft.advance();
        for (to, msg) in io.after_persist {
            self.queue.push_back((id, to, msg));
        }
        self.drive(id);
    }

    fn tick(&mut self, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.pending.is_some() {
            return;
        }
        if let Some(r) = m.raft.as_mut() {
            r.tick().expect("tick");
            self.drive(id);
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: Message) {
        let Some(m) = self.members.get_mut(&to) else {
            return;
        };
        if m.pending.is_some() {
            self.queue.push_back((from, to, msg));
            return;
        }
        if let Some(r) = m.raft.as_mut() {
            r.step(from, msg).expect("step");
            self.drive(to);
        }
    }

    fn deliver_all(&mut self) {
        for _ in 0..DELIVER_ALL_MAX_COUNT {
            for id in self.ids() {
                self.complete_io(id);
            }
            let Some((from, to, msg)) = self.queue.pop_front() else {
                return;
            };
            self.deliver(from, to, msg);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).expect("member");
        m.pending = None;
        if let Some(raft) = m.raft.take() {
            let mut log = raft.into_log();
            log.crash();
            m.parked_log = Some(log);
        }
    }

    fn restart(&mut self, id: NodeId) {
        let m = self.members.get_mut(&id).expect("member");
        if let Some(log) = m.parked_log.take() {
            let raft = Raft::new(m.cfg.clone(), log, m.hard_state.clone()).expect("restart");
            m.raft = Some(raft);
        }
        self.drive(id);
    }

    fn leader(&self) -> Option<NodeId> {
        self.members
            .values()
            .filter_map(|m| m.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// Election safety and committed entries that never change, for member `id`; log
    /// matching between `id` and every other live member.
    fn check(&mut self, id: NodeId) {
        let Some(raft) = self.members.get(&id).and_then(|m| m.raft.as_ref()) else {
            return;
        };
        if raft.role() == Role::Leader {
            let prev = self.leaders.insert(raft.term(), id);
            assert!(
                prev.is_none_or(|p| p == id),
                "two leaders in term {}: {prev:?} and {id}",
                raft.term()
            );
        }
        let commit = raft.commit_end();
        assert!(
            raft.log().start_offset() <= commit && commit <= raft.log().end_offset(),
            "{id}: commit end {commit} outside its log [{}, {})",
            raft.log().start_offset(),
            raft.log().end_offset()
        );
        let mut newly = Vec::new();
        for e in raft.log().entries() {
            if e.end > commit {
                break;
            }
            match self.committed.get_mut(&e.base) {
                Some((end, term, bytes, seen)) => {
                    assert!(
                        *end == e.end && *term == e.term && *bytes == e.bytes,
                        "{id}: committed entry at {} changed",
                        e.base
                    );
                    *seen = (*seen).min(raft.term());
                }
                None => newly.push((e.base, (e.end, e.term, e.bytes.clone(), raft.term()))),
            }
        }
        self.committed.extend(newly);
        // Leader completeness (committed entries are durable): a leader of a later term than
        // the one an entry was committed in holds it, unchanged.
        if raft.role() == Role::Leader {
            let entries = raft.log().entries();
            for (base, (end, term, bytes, seen)) in &self.committed {
                if *seen >= raft.term() || *base < raft.log().start_offset() {
                    continue;
                }
                let held = entries
                    .binary_search_by_key(base, |e| e.base)
                    .ok()
                    .map(|i| &entries[i]);
                assert!(
                    held.is_some_and(|e| e.end == *end && e.term == *term && e.bytes == *bytes),
                    "{id}: leader of term {} lacks the entry at {base} committed by term {seen}",
                    raft.term()
                );
            }
        }
        for other in self.ids() {
            if other != id {
                if let (Some(a), Some(b)) = (self.up(id), self.up(other)) {
                    check_log_matching(id, a.log(), other, b.log());
                }
            }
        }
    }
}

/// Raft's log matching property: if both logs hold an entry with the same offsets and term,
/// they are identical up to and including it.
fn check_log_matching(a_id: NodeId, a: &MemLog, b_id: NodeId, b: &MemLog) {
    let (a, b) = (a.entries(), b.entries());
    let by_base: BTreeMap<u64, usize> = b.iter().enumerate().map(|(i, e)| (e.base, i)).collect();
    let last_common = a.iter().enumerate().rev().find_map(|(i, e)| {
        let j = *by_base.get(&e.base)?;
        (b[j].end == e.end && b[j].term == e.term).then_some((i, j))
    });
    if let Some((i, j)) = last_common {
        assert!(
            a[..=i] == b[..=j],
            "log matching broken between {a_id} and {b_id} below offset {}",
            a[i].end
        );
    }
}

/// A batch of `count` records tagged with the step that proposed it.
fn batch(tag: u32, count: u8) -> BytesMut {
    let records: Vec<_> = (0..count)
        .map(|i| fjord_log::RecordSpec {
            key: None,
            value: Some(Bytes::from(format!("p{tag}-{i}"))),
            headers: Vec::new(),
            timestamp_ms: 1,
        })
        .collect();
    BytesMut::from(&fjord_log::build_batch(&records, &Default::default()).expect("batch")[..])
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(setup) = r.u8() else {
        return;
    };
    let size = if setup & 1 == 0 { 3 } else { 5 };
    let mut c = Cluster::new(size, |cfg| {
        cfg.pre_vote = setup & 2 == 0;
        cfg.check_quorum = setup & 4 == 0;
        if setup & 8 != 0 {
            cfg.append_size_max_bytes = 1; // One batch per append.
        }
        cfg.noop_delay_ticks = u32::from(setup >> 4 & 3) * 5;
    });
    let ids = c.ids();
    let pick = |b: u8| ids[usize::from(b) % ids.len()];
    // (leader, term, base, end, tag) of every accepted proposal; the acknowledged ones.
    let mut proposed: Vec<(NodeId, Term, u64, u64, u32)> = Vec::new();
    let mut acked: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    // A member whose log lost entries, and the log end it must get back to before another
    // member may be damaged (data on a majority is never destroyed).
    let mut damaged: Option<(NodeId, u64)> = None;
    for step in 0..STEPS_MAX_COUNT as u32 {
        let (Some(op), Some(arg)) = (r.u8(), r.u8()) else {
            break;
        };
        match op % 16 {
            0..=3 => {
                if !c.queue.is_empty() {
                    let i = usize::from(arg) % c.queue.len().min(32);
                    let (f, t, m) = c.queue.remove(i).expect("index in range");
                    c.deliver(f, t, m);
                }
            }
            4 => {
                if !c.queue.is_empty() {
                    let i = usize::from(arg) % c.queue.len().min(32);
                    c.queue.remove(i);
                }
            }
            5 => {
                if !c.queue.is_empty() {
                    let i = usize::from(arg) % c.queue.len().min(32);
                    let copy = c.queue[i].clone();
                    c.queue.push_back(copy);
                }
            }
            6 => c.tick(pick(arg)),
            7 => {
                for id in c.ids() {
                    c.tick(id);
                }
            }
            8 => c.complete_io(pick(arg)),
            9 => {
                if let Some(l) = c.leader() {
                    if c.members[&l].pending.is_none() {
                        let raft = c.members.get_mut(&l).and_then(|m| m.raft.as_mut());
                        let raft = raft.expect("the leader is up");
                        if let Ok((base, end)) = raft.propose(batch(step, arg % 4 + 1)) {
                            proposed.push((l, raft.term(), base, end, step));
                        }
                        c.drive(l);
                    }
                }
            }
            10 => c.crash(pick(arg)),
            11 => c.restart(pick(arg)),
            12 => c.deliver_all(),
            13 => {
                if let Some((id, target)) = damaged {
                    let m = &c.members[&id];
                    let healed = !m.hard_state.repairing
                        && m.raft
                            .as_ref()
                            .is_some_and(|r| !r.is_repairing() && r.log().end_offset() >= target);
                    if healed {
                        damaged = None;
                    }
                }
                let id = pick(arg);
                let end = c.up(id).map_or(0, |r| r.log().end_offset());
                if damaged.is_none() && end > 0 {
                    let target = ids
                        .iter()
                        .filter_map(|i| c.up(*i))
                        .map(|r| r.log().end_offset())
                        .max()
                        .unwrap_or(0);
                    let at = u64::from(r.u8().unwrap_or(0)) % end;
                    c.crash(id);
                    let m = c.members.get_mut(&id).expect("member");
                    m.parked_log.as_mut().expect("just crashed").lose_from(at);
                    m.hard_state.repairing = true;
                    c.restart(id);
                    damaged = Some((id, target));
                }
            }
            14 => {
                if let Some(l) = c.leader() {
                    if c.members[&l].pending.is_none() {
                        let raft = c.members.get_mut(&l).and_then(|m| m.raft.as_mut());
                        let _ = raft.expect("up").transfer_leadership(pick(arg));
                        c.drive(l);
                    }
                }
            }
            _ => {
                let id = pick(arg);
                for _ in 0..10 {
                    c.tick(id);
                    c.complete_io(id);
                }
            }
        }
        for (l, term, base, end, tag) in &proposed {
            if let Some(r) = c.up(*l) {
                if r.term() == *term && r.commit_end() >= *end {
                    acked.entry(*tag).or_insert((*base, *end));
                }
            }
        }
    }
    heal(&mut c, &acked);
}

/// Everyone up, messages flow: the cluster must converge and hold every acknowledged entry.
fn heal(c: &mut Cluster, acked: &BTreeMap<u32, (u64, u64)>) {
    for id in c.ids() {
        c.restart(id);
    }
    let ids = c.ids();
    let mut converged = false;
    for _ in 0..HEAL_ROUNDS_MAX_COUNT {
        for id in c.ids() {
            c.tick(id);
        }
        c.deliver_all();
        if let Some(l) = c.leader() {
            let leader = c.up(l).expect("up");
            let end = leader.log().end_offset();
            if leader.commit_end() == end
                && ids.iter().all(|i| {
                    c.up(*i)
                        .is_some_and(|r| r.log().end_offset() == end && r.commit_end() == end)
                })
            {
                converged = true;
                break;
            }
        }
    }
    assert!(converged, "the cluster did not converge after healing");
    for (tag, (base, end)) in acked {
        for id in &ids {
            let log = c.up(*id).expect("up").log();
            let e = log
                .entries()
                .iter()
                .find(|e| e.base == *base)
                .unwrap_or_else(|| panic!("acknowledged proposal {tag} lost on {id}"));
            assert_eq!(e.end, *end);
            let records = fjord_log::decode_records(&e.bytes).expect("decodes");
            let value = records[0].value.as_ref().expect("value");
            assert!(
                value.starts_with(format!("p{tag}-").as_bytes()),
                "acknowledged proposal {tag} replaced on {id}"
            );
        }
    }
}

/// Scripts that elect a leader, replicate proposals through loss and reordering, crash and
/// restart members, and damage one log.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for setup in [0u8, 1, 0x18, 0x26] {
        let mut w = Writer::default();
        w.u8(setup);
        for round in 0..40u8 {
            w.u8(7).u8(0); // tick all
            w.u8(12).u8(0); // deliver all
            if round % 3 == 0 {
                w.u8(9).u8(round); // propose
            }
            if round % 7 == 3 {
                w.u8(4).u8(round).u8(0).u8(round); // drop one, deliver one
            }
            if round == 15 {
                w.u8(10).u8(1); // crash a member
            }
            if round == 22 {
                w.u8(11).u8(1).u8(13).u8(2).u8(5); // restart it; damage another
            }
            if round == 30 {
                w.u8(14).u8(2).u8(5).u8(3); // transfer leadership; duplicate
            }
        }
        out.push(w.out);
    }
    out
}
