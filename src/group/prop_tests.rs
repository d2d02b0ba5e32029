//! Random interleavings of clients joining, syncing, heartbeating, leaving and committing,
//! of time passing, of appends succeeding or failing (durably or not) and of coordinator
//! failovers. Checked:
//!
//! * a generation never has two different assignments (over all coordinator incarnations:
//!   every delivered assignment of a generation comes from one leader SyncGroup);
//! * within a coordinator incarnation, JoinGroup answers never go back in generation, and all
//!   answers for one generation name the same leader (instance) and protocol;
//! * every request is answered exactly once (on failover at the latest, and after enough
//!   time once clients go quiet);
//! * OffsetFetch shows exactly the offsets of the appends acknowledged to the coordinator
//!   (after a failover: exactly what is durable in the partition), never one that is not
//!   durable;
//! * the coordinator's own invariants (checked after every call in test builds).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use fjord_log::batch::set_base_offset;
use fjord_log::{decode_records, BatchHeader};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use proptest::prelude::*;

use super::records::{self, OffsetValue, RecordKey};
use super::*;

const CLIENTS: usize = 4;
/// JoinGroup version per client: v3 (no MEMBER_ID_REQUIRED), v5, v7, v8 (static member).
const JOIN_VERSIONS: [i16; CLIENTS] = [3, 5, 7, 8];
const STATIC_CLIENT: usize = 3;
const E_NONE: i16 = 0;
const E_UNKNOWN_MEMBER_ID: i16 = 25;
const E_FENCED_INSTANCE_ID: i16 = 82;
const E_MEMBER_ID_REQUIRED: i16 = 79;

#[derive(Debug, Clone)]
enum Op {
    /// Clients rejoin when told to; `change_metadata` makes one rejoin anyway (as
    /// cooperative-sticky members do after revoking partitions).
    Join {
        client: usize,
        change_metadata: bool,
    },
    /// Clients sync once per generation; `again` sends a duplicate.
    Sync {
        client: usize,
        again: bool,
    },
    Heartbeat {
        client: usize,
    },
    Leave {
        client: usize,
    },
    Commit {
        client: usize,
    },
    Tick {
        ms: u32,
    },
    /// Acknowledges the oldest append; a failed one may still have become durable (a
    /// timeout).
    Ack {
        ok: bool,
        durable_anyway: bool,
    },
    /// Leadership moves: appends in flight become durable or are lost.
    Failover {
        in_flight_durable: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS;
    prop_oneof![
        12 => (client.clone(), prop::bool::weighted(0.1))
            .prop_map(|(client, change_metadata)| Op::Join { client, change_metadata }),
        20 => (client.clone(), prop::bool::weighted(0.1))
            .prop_map(|(client, again)| Op::Sync { client, again }),
        9 => client.clone().prop_map(|client| Op::Heartbeat { client }),
        2 => client.clone().prop_map(|client| Op::Leave { client }),
        6 => client.prop_map(|client| Op::Commit { client }),
        12 => (0u32..4_000).prop_map(|ms| Op::Tick { ms }),
        20 => (prop::bool::weighted(0.85), any::<bool>())
            .prop_map(|(ok, durable_anyway)| Op::Ack { ok, durable_anyway }),
        1 => any::<bool>().prop_map(|in_flight_durable| Op::Failover { in_flight_durable }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave,
    Commit,
}

#[derive(Debug, Default)]
struct Client {
    member_id: String,
    generation: i32,
    /// The members to assign, if the last JoinGroup made this client the leader.
    leader_of: Option<Vec<String>>,
    metadata: u8,
    next_offset: i64,
    needs_join: bool,
    needs_sync: bool,
}

impl Client {
    fn reset(&mut self) {
        self.member_id.clear();
        self.generation = -1;
        self.leader_of = None;
        self.needs_join = true;
    }
}

struct World {
    c: GroupCoordinator,
    incarnation: u64,
    now: i64,
    clients: Vec<Client>,
    next_reply: Reply,
    outstanding: BTreeMap<Reply, Kind>,
    appends: VecDeque<(u64, Bytes)>,
    log: Vec<u8>,
    next_offset: u64,
    /// Offsets durable in the partition, per (group, topic, partition).
    durable: BTreeMap<(String, String, i32), i64>,
    /// What the coordinator must show: durable and acknowledged to it (or loaded).
    visible: BTreeMap<(String, String, i32), i64>,
    nonce: u64,
    /// Per generation: the leader SyncGroup (nonce) whose assignments were delivered, and
    /// what each member got.
    delivered: BTreeMap<i32, (Option<u64>, BTreeMap<String, Bytes>)>,
    /// This incarnation's JoinGroup answers: last generation, and per generation the leader
    /// and protocol.
    last_join_generation: i32,
    join_views: BTreeMap<i32, (String, String)>,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_min_ms: 1_000,
        session_timeout_max_ms: 60_000,
        initial_rebalance_delay_ms: 2_000,
        group_size_max: CLIENTS,
        // No expiry during a run: offsets must always equal what is durable.
        offsets_retention_ms: i64::MAX / 4,
        ..GroupConfig::default()
    }
}

impl World {
    fn new() -> World {
        let mut c = GroupCoordinator::new(0, 0, config());
        c.loaded(0);
        World {
            c,
            incarnation: 0,
            now: 0,
            clients: (0..CLIENTS)
                .map(|_| Client {
                    generation: -1,
                    needs_join: true,
                    ..Client::default()
                })
                .collect(),
            next_reply: 0,
            outstanding: BTreeMap::new(),
            appends: VecDeque::new(),
            log: Vec::new(),
            next_offset: 0,
            durable: BTreeMap::new(),
            visible: BTreeMap::new(),
            nonce: 0,
            delivered: BTreeMap::new(),
            last_join_generation: -1,
            join_views: BTreeMap::new(),
        }
    }

    fn reply(&mut self, kind: Kind) -> Reply {
        self.next_reply += 1;
        self.outstanding.insert(self.next_reply, kind);
        self.next_reply
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Join {
                client,
                change_metadata,
            } => {
                let cl = &mut self.clients[client];
                if !cl.needs_join && !change_metadata {
                    return;
                }
                if change_metadata {
                    cl.metadata = cl.metadata.wrapping_add(1);
                }
                let meta = Bytes::from(vec![cl.metadata]);
                let mut protocols = vec![("range", meta.clone())];
                if client == 2 {
                    protocols.insert(0, ("roundrobin", meta));
                }
                let req = JoinGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_session_timeout_ms(30_000)
                    .with_rebalance_timeout_ms(20_000)
                    .with_member_id(s(&cl.member_id))
                    .with_group_instance_id((client == STATIC_CLIENT).then(|| s("static")))
                    .with_protocol_type(s("consumer"))
                    .with_protocols(
                        protocols
                            .into_iter()
                            .map(|(n, m)| {
                                JoinGroupRequestProtocol::default()
                                    .with_name(s(n))
                                    .with_metadata(m)
                            })
                            .collect(),
                    );
                let reply = self.reply(Kind::Join(client));
                let info = ClientInfo {
                    client_id: format!("c{client}"),
                    client_host: "/h".into(),
                };
                self.c
                    .join(self.now, JOIN_VERSIONS[client], req, &info, reply);
            }
            Op::Sync { client, again } => {
                let cl = &mut self.clients[client];
                if cl.member_id.is_empty() || !(cl.needs_sync || again) {
                    return;
                }
                cl.needs_sync = false;
                let cl = &self.clients[client];
                self.nonce += 1;
                let generation = cl.generation;
                let assignments = cl
                    .leader_of
                    .iter()
                    .flatten()
                    .map(|m| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::from(format!(
                                "{generation}:{}:{m}",
                                self.nonce
                            )))
                    })
                    .collect();
                let req = SyncGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_generation_id(generation)
                    .with_member_id(s(&cl.member_id))
                    .with_group_instance_id((client == STATIC_CLIENT).then(|| s("static")))
                    .with_assignments(assignments);
                let reply = self.reply(Kind::Sync(client));
                self.c.sync(self.now, 5, req, reply);
            }
            Op::Heartbeat { client } => {
                let cl = &self.clients[client];
                if cl.member_id.is_empty() {
                    return;
                }
                let req = HeartbeatRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_generation_id(cl.generation)
                    .with_member_id(s(&cl.member_id))
                    .with_group_instance_id((client == STATIC_CLIENT).then(|| s("static")));
                let reply = self.reply(Kind::Heartbeat(client));
                self.c.heartbeat(self.now, 4, req, reply);
            }
            Op::Leave { client } => {
                let cl = &mut self.clients[client];
                if cl.member_id.is_empty() {
                    return;
                }
                let req = LeaveGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_members(vec![MemberIdentity::default()
                        .with_member_id(s(&cl.member_id))
                        .with_group_instance_id(
                            (client == STATIC_CLIENT).then(|| s("static")),
                        )]);
                cl.reset();
                let reply = self.reply(Kind::Leave);
                self.c.leave(self.now, 4, req, reply);
            }
            Op::Commit { client } => {
                let cl = &mut self.clients[client];
                cl.next_offset += 1;
                let (member, generation) = if cl.member_id.is_empty() {
                    (String::new(), -1)
                } else {
                    (cl.member_id.clone(), cl.generation)
                };
                let req = OffsetCommitRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_generation_id_or_member_epoch(generation)
                    .with_member_id(s(&member))
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_partition_index(client as i32)
                            .with_committed_offset(cl.next_offset)])]);
                let reply = self.reply(Kind::Commit);
                self.c.commit_offsets(self.now, 8, req, reply);
            }
            Op::Tick { ms } => {
                self.now += i64::from(ms);
                self.c.tick(self.now);
            }
            Op::Ack { ok, durable_anyway } => {
                let Some((token, batch)) = self.appends.pop_front() else {
                    return;
                };
                if ok || durable_anyway {
                    self.make_durable(&batch);
                }
                if ok {
                    apply_offsets(&mut self.visible, &batch);
                }
                let result = if ok { Ok(()) } else { Err(7) };
                self.c.on_appended(self.now, token, result);
            }
            Op::Failover { in_flight_durable } => self.failover(in_flight_durable),
        }
        let out = self.c.take_output();
        self.process(out);
        self.check_offsets();
    }

    fn failover(&mut self, in_flight_durable: bool) {
        let old = std::mem::replace(&mut self.c, GroupCoordinator::new(0, 0, config()));
        let out = old.resign();
        self.process(out);
        assert!(
            self.outstanding.is_empty(),
            "unanswered after resign: {:?}",
            self.outstanding
        );
        for (_, batch) in std::mem::take(&mut self.appends) {
            if in_flight_durable {
                self.make_durable(&batch);
            }
        }
        self.incarnation += 1;
        self.c = GroupCoordinator::new(0, self.incarnation, config());
        self.c.load(&self.log).expect("replay");
        self.c.loaded(self.now);
        self.visible = self.durable.clone();
        self.last_join_generation = -1;
        self.join_views.clear();
    }

    fn make_durable(&mut self, batch: &Bytes) {
        let mut batch = batch.to_vec();
        set_base_offset(&mut batch, self.next_offset).expect("batch");
        self.next_offset = BatchHeader::parse(&batch).expect("batch").next_offset();
        apply_offsets(&mut self.durable, &batch);
        self.log.extend_from_slice(&batch);
    }

    fn process(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Append { token, batch } => self.appends.push_back((token, batch)),
                Output::Respond { reply, response } => {
                    let kind = self
                        .outstanding
                        .remove(&reply)
                        .unwrap_or_else(|| panic!("reply {reply} answered twice or never asked"));
                    self.on_response(kind, response);
                }
            }
        }
    }

    fn on_response(&mut self, kind: Kind, response: ResponseKind) {
        match (kind, response) {
            (Kind::Join(client), ResponseKind::JoinGroup(r)) => {
                let cl = &mut self.clients[client];
                match r.error_code {
                    E_NONE => {
                        let generation = r.generation_id;
                        assert!(
                            generation >= self.last_join_generation,
                            "generation went back from {} to {generation}",
                            self.last_join_generation
                        );
                        self.last_join_generation = generation;
                        // A static member replaced within a generation keeps its role
                        // under a new id (its ids are "static-<uuid>"): compare instances.
                        let leader = if r.leader.starts_with("static-") {
                            "static".to_string()
                        } else {
                            r.leader.to_string()
                        };
                        let view = (
                            leader,
                            r.protocol_name.as_deref().unwrap_or_default().to_string(),
                        );
                        let seen = self.join_views.entry(generation).or_insert(view.clone());
                        assert_eq!(*seen, view, "generation {generation}");
                        cl.member_id = r.member_id.to_string();
                        cl.generation = generation;
                        cl.leader_of = (r.leader == r.member_id)
                            .then(|| r.members.iter().map(|m| m.member_id.to_string()).collect());
                        cl.needs_join = false;
                        cl.needs_sync = true;
                    }
                    E_MEMBER_ID_REQUIRED => cl.member_id = r.member_id.to_string(),
                    E_UNKNOWN_MEMBER_ID | E_FENCED_INSTANCE_ID => cl.reset(),
                    _ => cl.needs_join = true,
                }
            }
            (Kind::Sync(client), ResponseKind::SyncGroup(r)) => {
                let cl = &mut self.clients[client];
                match r.error_code {
                    E_NONE => {
                        let generation = cl.generation;
                        let (nonce, per_member) = self.delivered.entry(generation).or_default();
                        if !r.assignment.is_empty() {
                            let text = String::from_utf8(r.assignment.to_vec()).expect("utf8");
                            let mut parts = text.splitn(3, ':');
                            let g: i32 = parts.next().expect("gen").parse().expect("gen");
                            let n: u64 = parts.next().expect("nonce").parse().expect("nonce");
                            assert_eq!(g, generation, "assignment of another generation");
                            assert_eq!(
                                *nonce.get_or_insert(n),
                                n,
                                "two assignments for generation {generation}"
                            );
                        }
                        let previous = per_member
                            .entry(cl.member_id.clone())
                            .or_insert(r.assignment.clone());
                        assert_eq!(*previous, r.assignment, "member got two assignments");
                    }
                    E_UNKNOWN_MEMBER_ID | E_FENCED_INSTANCE_ID => cl.reset(),
                    _ => cl.needs_join = true,
                }
            }
            (Kind::Heartbeat(client), ResponseKind::Heartbeat(r)) => {
                let cl = &mut self.clients[client];
                match r.error_code {
                    E_NONE => {}
                    E_UNKNOWN_MEMBER_ID | E_FENCED_INSTANCE_ID => cl.reset(),
                    _ => cl.needs_join = true,
                }
            }
            (Kind::Leave, ResponseKind::LeaveGroup(_))
            | (Kind::Commit, ResponseKind::OffsetCommit(_)) => {}
            (kind, response) => panic!("{kind:?} answered with {response:?}"),
        }
    }

    /// OffsetFetch shows exactly the durable offsets.
    fn check_offsets(&self) {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes((0..CLIENTS as i32).collect())]));
        let resp = self.c.fetch_offsets(7, &req);
        for p in &resp.topics[0].partitions {
            let key = ("g".to_string(), "t".to_string(), p.partition_index);
            let visible = self.visible.get(&key).copied().unwrap_or(-1);
            assert_eq!(
                p.committed_offset, visible,
                "partition {}",
                p.partition_index
            );
        }
    }

    /// Lets every append succeed and time pass until nothing is left waiting.
    fn drain(&mut self) {
        for _ in 0..20 {
            while !self.appends.is_empty() {
                self.apply(&Op::Ack {
                    ok: true,
                    durable_anyway: true,
                });
            }
            self.apply(&Op::Tick { ms: 60_000 });
        }
        assert!(self.appends.is_empty());
        assert!(
            self.outstanding.is_empty(),
            "never answered: {:?}",
            self.outstanding
        );
        let groups: BTreeSet<String> = self
            .c
            .list_groups(4, &ListGroupsRequest::default())
            .groups
            .iter()
            .map(|g| g.group_state.to_string())
            .collect();
        assert!(
            groups.iter().all(|state| state == "Empty"),
            "quiet groups end empty: {groups:?}"
        );
    }
}

/// Applies the offset records of `batch` to `offsets`.
fn apply_offsets(offsets: &mut BTreeMap<(String, String, i32), i64>, batch: &[u8]) {
    for r in decode_records(batch).expect("batch") {
        if let RecordKey::Offset {
            group,
            topic,
            partition,
        } = records::decode_key(r.key.as_ref().expect("key")).expect("key")
        {
            let key = (group, topic, partition);
            match &r.value {
                Some(v) => {
                    offsets.insert(key, OffsetValue::decode(v).expect("value").offset);
                }
                None => {
                    offsets.remove(&key);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_generations_and_assignments_consistent(
        ops in prop::collection::vec(op(), 1..400)
    ) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        w.drain();
    }
}
