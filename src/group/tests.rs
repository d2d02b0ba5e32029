//! Exact-output tests of the coordinator's flows. Every response is also encoded at its
//! request's version, so a field that version lacks would fail here.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use fjord_log::batch::set_base_offset;
use fjord_log::{decode_records, leader_change_batch, BatchHeader};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::records::{self, GroupValue, MemberValue, OffsetValue, RecordKey};
use super::*;

const E_NONE: i16 = 0;
const E_NOT_LEADER_OR_FOLLOWER: i16 = 6;
const E_REQUEST_TIMED_OUT: i16 = 7;
const E_OFFSET_METADATA_TOO_LARGE: i16 = 12;
const E_LOAD_IN_PROGRESS: i16 = 14;
const E_NOT_COORDINATOR: i16 = 16;
const E_ILLEGAL_GENERATION: i16 = 22;
const E_INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const E_INVALID_GROUP_ID: i16 = 24;
const E_UNKNOWN_MEMBER_ID: i16 = 25;
const E_INVALID_SESSION_TIMEOUT: i16 = 26;
const E_INVALID_REQUEST: i16 = 42;
const E_REBALANCE_IN_PROGRESS: i16 = 27;
const E_GROUP_ID_NOT_FOUND: i16 = 69;
const E_MEMBER_ID_REQUIRED: i16 = 79;
const E_GROUP_MAX_SIZE_REACHED: i16 = 81;
const E_FENCED_INSTANCE_ID: i16 = 82;
const E_UNSTABLE_OFFSET_COMMIT: i16 = 88;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const DELAY_MS: i32 = 3_000;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_min_ms: 1_000,
        session_timeout_max_ms: 60_000,
        initial_rebalance_delay_ms: DELAY_MS,
        group_size_max: 3,
        offsets_retention_ms: 100_000,
        offsets_retention_check_interval_ms: 10_000,
        offset_metadata_max_bytes: 8,
        ..GroupConfig::default()
    }
}

/// A coordinator with the versions of the requests it was sent, and the batches it appended
/// that were acknowledged (with base offsets, as the partition would hold them).
struct H {
    c: GroupCoordinator,
    now: i64,
    next_reply: Reply,
    versions: BTreeMap<Reply, (ApiKey, i16)>,
    log: Vec<u8>,
    next_offset: u64,
    pending: BTreeMap<u64, Bytes>,
}

impl H {
    fn new() -> H {
        let mut c = GroupCoordinator::new(0, 7, config());
        c.loaded(0);
        H::with(c)
    }

    fn with(c: GroupCoordinator) -> H {
        H {
            c,
            now: 0,
            next_reply: 0,
            versions: BTreeMap::new(),
            log: Vec::new(),
            next_offset: 0,
            pending: BTreeMap::new(),
        }
    }

    fn reply(&mut self, api: ApiKey, version: i16) -> Reply {
        self.next_reply += 1;
        self.versions.insert(self.next_reply, (api, version));
        self.next_reply
    }

    /// The outputs since the last call; responses must encode at their request's version.
    fn out(&mut self) -> Vec<Output> {
        let out = self.c.take_output();
        for o in &out {
            match o {
                Output::Respond { reply, response } => {
                    let (api, version) = self.versions[reply];
                    let mut buf = BytesMut::new();
                    response
                        .encode(&mut buf, version)
                        .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
                }
                Output::Append { token, batch } => {
                    self.pending.insert(*token, batch.clone());
                }
            }
        }
        out
    }

    /// Acknowledges an append; a successful one becomes part of the partition.
    fn ack(&mut self, token: u64, result: Result<(), i16>) {
        let batch = self.pending.remove(&token).expect("appended");
        if result.is_ok() {
            let mut batch = batch.to_vec();
            set_base_offset(&mut batch, self.next_offset).expect("batch");
            self.next_offset = BatchHeader::parse(&batch).expect("batch").next_offset();
            self.log.extend_from_slice(&batch);
        }
        self.c.on_appended(self.now, token, result);
    }

    fn tick(&mut self, now: i64) {
        self.now = now;
        self.c.tick(now);
    }

    fn join(
        &mut self,
        version: i16,
        member: &str,
        client: &str,
        protocols: &[(&str, &[u8])],
    ) -> Reply {
        self.join_req(version, join_req("g", member, protocols), client)
    }

    fn join_req(&mut self, version: i16, req: JoinGroupRequest, client: &str) -> Reply {
        let reply = self.reply(ApiKey::JoinGroup, version);
        let client = ClientInfo {
            client_id: client.to_string(),
            client_host: "/10.0.0.1".to_string(),
        };
        self.c.join(self.now, version, req, &client, reply);
        reply
    }

    /// A v7 JoinGroup without member id, answered MEMBER_ID_REQUIRED: returns the id.
    fn member_id(&mut self, client: &str) -> String {
        let reply = self.join(7, "", client, RANGE);
        let out = self.out();
        let [Output::Respond {
            reply: r,
            response: ResponseKind::JoinGroup(resp),
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(*r, reply);
        assert_eq!(resp.error_code, E_MEMBER_ID_REQUIRED);
        assert!(resp.member_id.starts_with(&format!("{client}-")));
        resp.member_id.to_string()
    }

    fn sync(&mut self, member: &str, generation: i32, assignments: &[(&str, &[u8])]) -> Reply {
        let reply = self.reply(ApiKey::SyncGroup, 5);
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(s(m))
                            .with_assignment(Bytes::copy_from_slice(a))
                    })
                    .collect(),
            );
        self.c.sync(self.now, 5, req, reply);
        reply
    }

    fn heartbeat(&mut self, member: &str, generation: i32) -> Reply {
        self.heartbeat_static(member, None, generation)
    }

    fn heartbeat_static(&mut self, member: &str, instance: Option<&str>, generation: i32) -> Reply {
        let reply = self.reply(ApiKey::Heartbeat, 4);
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s));
        self.c.heartbeat(self.now, 4, req, reply);
        reply
    }

    fn leave(&mut self, members: &[&str]) -> Reply {
        let reply = self.reply(ApiKey::LeaveGroup, 4);
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_members(
                members
                    .iter()
                    .map(|m| MemberIdentity::default().with_member_id(s(m)))
                    .collect(),
            );
        self.c.leave(self.now, 4, req, reply);
        reply
    }

    fn commit(
        &mut self,
        group: &str,
        member: &str,
        generation: i32,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Reply {
        let reply = self.reply(ApiKey::OffsetCommit, 8);
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset, metadata) in offsets {
            let p = OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(3)
                .with_committed_metadata(Some(s(metadata)));
            match topics.last_mut() {
                Some(t) if t.name.as_str() == *topic => t.partitions.push(p),
                _ => topics.push(
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(topics);
        self.c.commit_offsets(self.now, 8, req, reply);
        reply
    }

    /// OffsetFetch v7 of one partition: (offset, leader epoch, metadata, error).
    fn fetch(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        require_stable: bool,
    ) -> (i64, i32, String, i16) {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(vec![partition])]))
            .with_require_stable(require_stable);
        let resp = self.c.fetch_offsets(7, &req);
        assert_eq!(resp.error_code, E_NONE);
        let p = &resp.topics[0].partitions[0];
        (
            p.committed_offset,
            p.committed_leader_epoch,
            p.metadata.as_deref().unwrap_or("null").to_string(),
            p.error_code,
        )
    }

    fn describe(&self, version: i16) -> DescribedGroup {
        let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]);
        self.c.describe_groups(version, &req).groups.remove(0)
    }
}

const RANGE: &[(&str, &[u8])] = &[("range", b"m")];

fn join_req(group: &str, member: &str, protocols: &[(&str, &[u8])]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(REBALANCE_MS)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|(n, m)| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(n))
                        .with_metadata(Bytes::copy_from_slice(m))
                })
                .collect(),
        )
}

fn respond(reply: Reply, response: impl Into<ResponseKind>) -> Output {
    Output::Respond {
        reply,
        response: response.into(),
    }
}

/// A successful v7 JoinGroup answer.
fn joined(
    generation: i32,
    leader: &str,
    member: &str,
    members: &[(&str, &[u8])],
) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_generation_id(generation)
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_leader(s(leader))
        .with_member_id(s(member))
        .with_members(
            members
                .iter()
                .map(|(id, md)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_metadata(Bytes::copy_from_slice(md))
                })
                .collect(),
        )
}

/// A failed v7 JoinGroup answer.
fn join_failed(code: i16, member: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_protocol_name(None)
        .with_member_id(s(member))
}

fn member_left(member: &str, code: i16) -> MemberResponse {
    MemberResponse::default()
        .with_member_id(s(member))
        .with_group_instance_id(None)
        .with_error_code(code)
}

fn synced(assignment: &[u8]) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_assignment(Bytes::copy_from_slice(assignment))
}

fn sync_failed(code: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(code)
}

fn hb(code: i16) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(code)
}

fn committed(partitions: &[(&str, i32, i16)]) -> OffsetCommitResponse {
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for (topic, partition, code) in partitions {
        let p = OffsetCommitResponsePartition::default()
            .with_partition_index(*partition)
            .with_error_code(*code);
        match topics.last_mut() {
            Some(t) if t.name.as_str() == *topic => t.partitions.push(p),
            _ => topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![p]),
            ),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// The token of the single Append in `out`, which must be the only output.
fn single_append(out: &[Output]) -> (u64, Bytes) {
    match out {
        [Output::Append { token, batch }] => (*token, batch.clone()),
        _ => panic!("expected one append: {out:?}"),
    }
}

/// The group record of an appended batch.
fn group_record(batch: &[u8]) -> GroupValue {
    let records = decode_records(batch).expect("batch");
    assert_eq!(records.len(), 1);
    let key = records[0].key.as_ref().expect("key");
    assert_eq!(
        records::decode_key(key),
        Ok(RecordKey::Group { group: "g".into() })
    );
    GroupValue::decode(records[0].value.as_ref().expect("value")).expect("group value")
}

fn member_value(id: &str, instance: Option<&str>, client: &str, assignment: &[u8]) -> MemberValue {
    MemberValue {
        member_id: id.to_string(),
        group_instance_id: instance.map(str::to_string),
        client_id: client.to_string(),
        client_host: "/10.0.0.1".to_string(),
        rebalance_timeout_ms: REBALANCE_MS,
        session_timeout_ms: SESSION_MS,
        subscription: Bytes::from_static(b"m"),
        assignment: Bytes::copy_from_slice(assignment),
    }
}

/// Two members "a" and "b" (clients "a" and "b") joined, generation 1, synced: returns ids.
fn stable_pair(h: &mut H) -> (String, String) {
    let a = h.member_id("a");
    let ra = h.join(7, &a, "a", RANGE);
    let b = h.member_id("b");
    let rb = h.join(7, &b, "b", RANGE);
    // The initial delay is extended once (b joined during it): timers run from their tick.
    h.tick(3_000);
    h.tick(6_000);
    let meta: &[(&str, &[u8])] = &[(&a, b"m"), (&b, b"m")];
    assert_eq!(
        h.out(),
        vec![
            respond(ra, joined(1, &a, &a, meta)),
            respond(rb, joined(1, &a, &b, &[])),
        ]
    );
    let sa = h.sync(&a, 1, &[(&a, b"A"), (&b, b"B")]);
    let sb = h.sync(&b, 1, &[]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(
        h.out(),
        vec![respond(sa, synced(b"A")), respond(sb, synced(b"B"))]
    );
    (a, b)
}

#[test]
fn two_members_join_one_rebalance_and_both_sync() {
    let mut h = H::new();
    let a = h.member_id("a");
    assert!(a.starts_with("a-"));
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![]);
    h.tick(100);
    let b = h.member_id("b");
    let rb = h.join(7, &b, "b", RANGE);
    assert_eq!(h.out(), vec![]);
    assert_eq!(h.describe(5).group_state.as_str(), "PreparingRebalance");
    // The initial delay (3 s) is extended once because b arrived during it.
    h.tick(3_000);
    assert_eq!(h.out(), vec![]);
    h.tick(6_000);
    let meta: &[(&str, &[u8])] = &[(&a, b"m"), (&b, b"m")];
    assert_eq!(
        h.out(),
        vec![
            respond(ra, joined(1, &a, &a, meta)),
            respond(rb, joined(1, &a, &b, &[])),
        ]
    );
    assert_eq!(h.describe(5).group_state.as_str(), "CompletingRebalance");
    // The follower waits for the leader's assignment, which waits for its append.
    let sb = h.sync(&b, 1, &[]);
    assert_eq!(h.out(), vec![]);
    let sa = h.sync(&a, 1, &[(&a, b"A"), (&b, b"B")]);
    let (token, batch) = single_append(&h.out());
    assert_eq!(
        group_record(&batch),
        GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some(a.clone()),
            state_timestamp_ms: 6_000,
            members: vec![
                member_value(&a, None, "a", b"A"),
                member_value(&b, None, "b", b"B"),
            ],
        }
    );
    assert_eq!(h.describe(5).group_state.as_str(), "CompletingRebalance");
    h.ack(token, Ok(()));
    assert_eq!(
        h.out(),
        vec![respond(sa, synced(b"A")), respond(sb, synced(b"B"))]
    );
    assert_eq!(h.describe(5).group_state.as_str(), "Stable");
    let r = h.heartbeat(&b, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_NONE))]);
    // A SyncGroup in a stable group answers at once.
    let r = h.sync(&b, 1, &[]);
    assert_eq!(h.out(), vec![respond(r, synced(b"B"))]);
}

#[test]
fn a_third_member_makes_heartbeats_answer_rebalance_in_progress() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let c = h.member_id("c");
    let rc = h.join(7, &c, "c", RANGE);
    assert_eq!(h.out(), vec![]);
    assert_eq!(h.describe(5).group_state.as_str(), "PreparingRebalance");
    let r = h.heartbeat(&a, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_REBALANCE_IN_PROGRESS))]);
    // Commits of the current generation are still accepted while rebalancing.
    let r = h.commit("g", &b, 1, &[("t", 0, 5, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(r, committed(&[("t", 0, E_NONE)]))]);
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![]);
    let rb = h.join(7, &b, "b", RANGE);
    // Everyone is in: the join phase completes without waiting for the timeout.
    let meta: &[(&str, &[u8])] = &[(&a, b"m"), (&b, b"m"), (&c, b"m")];
    assert_eq!(
        h.out(),
        vec![
            respond(ra, joined(2, &a, &a, meta)),
            respond(rb, joined(2, &a, &b, &[])),
            respond(rc, joined(2, &a, &c, &[])),
        ]
    );
    // The old generation is over.
    let r = h.heartbeat(&b, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_ILLEGAL_GENERATION))]);
    let r = h.heartbeat(&b, 2);
    assert_eq!(h.out(), vec![respond(r, hb(E_NONE))]);
}

#[test]
fn leaving_rebalances_the_rest() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let r = h.leave(&[&b, "nobody"]);
    assert_eq!(
        h.out(),
        vec![respond(
            r,
            LeaveGroupResponse::default().with_members(vec![
                member_left(&b, E_NONE),
                member_left("nobody", E_UNKNOWN_MEMBER_ID),
            ])
        )]
    );
    let r = h.heartbeat(&a, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_REBALANCE_IN_PROGRESS))]);
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![respond(ra, joined(2, &a, &a, &[(&a, b"m")]))]);
    // LeaveGroup v0-2 names one member and reports its error at the top level.
    let reply = h.reply(ApiKey::LeaveGroup, 1);
    let req = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(&b));
    h.c.leave(h.now, 1, req, reply);
    assert_eq!(
        h.out(),
        vec![respond(
            reply,
            LeaveGroupResponse::default().with_error_code(E_UNKNOWN_MEMBER_ID)
        )]
    );
    // The last member leaving empties the group, and the new generation is persisted.
    let sa = h.sync(&a, 2, &[(&a, b"A")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(sa, synced(b"A"))]);
    let r = h.leave(&[&a]);
    let out = h.out();
    assert_eq!(
        out[1],
        respond(
            r,
            LeaveGroupResponse::default().with_members(vec![member_left(&a, E_NONE)])
        )
    );
    let (_, batch) = single_append(&out[..1]);
    let record = group_record(&batch);
    assert_eq!((record.generation, record.members.len()), (3, 0));
    assert_eq!(h.describe(5).group_state.as_str(), "Empty");
}

#[test]
fn session_timeout_evicts_a_silent_member() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    // Both sessions restarted at 6000 when the assignment was handed out.
    h.tick(11_000);
    let r = h.heartbeat(&a, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_NONE))]);
    h.tick(15_999);
    assert_eq!(h.out(), vec![]);
    h.tick(16_000);
    assert_eq!(h.out(), vec![]);
    assert_eq!(h.describe(5).members.len(), 1);
    let r = h.heartbeat(&b, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_UNKNOWN_MEMBER_ID))]);
    let r = h.heartbeat(&a, 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_REBALANCE_IN_PROGRESS))]);
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![respond(ra, joined(2, &a, &a, &[(&a, b"m")]))]);
}

#[test]
fn rebalance_timeout_completes_the_join_with_those_who_rejoined() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    // The leader rejoining forces a rebalance, even with unchanged metadata.
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![]);
    // b keeps heartbeating but never rejoins.
    for t in [14_000, 22_000, 30_000] {
        h.tick(t);
        let r = h.heartbeat(&b, 1);
        assert_eq!(h.out(), vec![respond(r, hb(E_REBALANCE_IN_PROGRESS))]);
    }
    h.tick(6_000 + REBALANCE_MS as i64);
    assert_eq!(h.out(), vec![respond(ra, joined(2, &a, &a, &[(&a, b"m")]))]);
}

#[test]
fn known_members_rejoin_without_or_with_a_rebalance() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    // A follower rejoining with unchanged metadata gets the current generation back.
    let rb = h.join(7, &b, "b", RANGE);
    assert_eq!(h.out(), vec![respond(rb, joined(1, &a, &b, &[]))]);
    assert_eq!(h.describe(5).group_state.as_str(), "Stable");
    // With changed metadata (e.g. cooperative-sticky's owned partitions) it rebalances.
    let changed: &[(&str, &[u8])] = &[("range", b"owned")];
    let rb = h.join(7, &b, "b", changed);
    assert_eq!(h.out(), vec![]);
    let ra = h.join(7, &a, "a", RANGE);
    let meta: &[(&str, &[u8])] = &[(&a, b"m"), (&b, b"owned")];
    assert_eq!(
        h.out(),
        vec![
            respond(ra, joined(2, &a, &a, meta)),
            respond(rb, joined(2, &a, &b, &[])),
        ]
    );
    // Rejoining while completing with the same metadata repeats the answer (a lost response).
    let ra = h.join(7, &a, "a", RANGE);
    assert_eq!(h.out(), vec![respond(ra, joined(2, &a, &a, meta))]);
    // An unknown member id is refused; so is a known id in an unknown group.
    let r = h.join(7, "ghost", "x", RANGE);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_UNKNOWN_MEMBER_ID, "ghost"))]
    );
    let r = h.join_req(7, join_req("other", &a, RANGE), "a");
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_UNKNOWN_MEMBER_ID, &a))]
    );
}

#[test]
fn member_id_required_from_v4_and_pending_ids_expire() {
    let mut h = H::new();
    // v3: the member is added at once and learns its id when the join phase ends.
    let r = h.join(3, "", "old", RANGE);
    assert_eq!(h.out(), vec![]);
    h.tick(3_000);
    let out = h.out();
    let [Output::Respond {
        reply,
        response: ResponseKind::JoinGroup(resp),
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (*reply, resp.error_code, resp.generation_id),
        (r, E_NONE, 1)
    );
    assert_eq!(resp.leader, resp.member_id);
    // v4+: first MEMBER_ID_REQUIRED with an id, which then joins.
    let mut h = H::new();
    let id = h.member_id("new");
    let r = h.join(4, "", "new", RANGE);
    let out = h.out();
    assert!(
        matches!(&out[..], [Output::Respond { reply, response: ResponseKind::JoinGroup(resp) }]
        if *reply == r && resp.error_code == E_MEMBER_ID_REQUIRED && *resp.member_id != *id)
    );
    // An id not used within the session timeout expires.
    h.tick(SESSION_MS as i64);
    let r = h.join(7, &id, "new", RANGE);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_UNKNOWN_MEMBER_ID, &id))]
    );
}

#[test]
fn join_requests_are_validated() {
    let mut h = H::new();
    let r = h.join_req(7, join_req("", "", RANGE), "a");
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INVALID_GROUP_ID, ""))]
    );
    let r = h.join_req(
        7,
        join_req("g", "", RANGE).with_session_timeout_ms(999),
        "a",
    );
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INVALID_SESSION_TIMEOUT, ""))]
    );
    let long = "x".repeat(PROTOCOL_NAME_MAX_BYTES + 1);
    let r = h.join_req(7, join_req("g", "", &[(long.as_str(), b"")]), "a");
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INVALID_REQUEST, ""))]
    );
    let r = h.join_req(
        7,
        join_req("g", "", RANGE).with_group_instance_id(Some(s(&long))),
        "a",
    );
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INVALID_REQUEST, ""))]
    );
    let r = h.join_req(7, join_req("g", "", &[]), "a");
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INCONSISTENT_GROUP_PROTOCOL, ""))]
    );
    let id = h.member_id("a");
    let r = h.join(7, &id, "a", &[]);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INCONSISTENT_GROUP_PROTOCOL, &id))]
    );
    // A member must support a protocol every current member supports.
    let ra = h.join(7, &id, "a", RANGE);
    h.tick(3_000);
    assert_eq!(
        h.out(),
        vec![respond(ra, joined(1, &id, &id, &[(&id, b"m")]))]
    );
    let r = h.join(7, "", "b", &[("sticky", b"")]);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_INCONSISTENT_GROUP_PROTOCOL, ""))]
    );
}

#[test]
fn the_protocol_is_chosen_by_vote() {
    let mut h = H::new();
    let a = h.member_id("a");
    let b = h.member_id("b");
    let c = h.member_id("c");
    let both = |first: &'static str, second: &'static str| -> Vec<(&'static str, &'static [u8])> {
        vec![(first, b"1"), (second, b"2"), ("sticky", b"3")]
    };
    let ra = h.join(7, &a, "a", &both("range", "roundrobin")[..2]);
    let rb = h.join(7, &b, "b", &both("roundrobin", "range"));
    let rc = h.join(7, &c, "c", &both("roundrobin", "range"));
    h.tick(3_000);
    h.tick(6_000);
    let out = h.out();
    let names: Vec<(Reply, String)> = out
        .iter()
        .map(|o| match o {
            Output::Respond {
                reply,
                response: ResponseKind::JoinGroup(r),
            } => (*reply, r.protocol_name.as_deref().unwrap_or("").to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (ra, "roundrobin".to_string()),
            (rb, "roundrobin".to_string()),
            (rc, "roundrobin".to_string())
        ]
    );
    // The leader sees each member's metadata for that protocol.
    let Output::Respond {
        response: ResponseKind::JoinGroup(leader),
        ..
    } = &out[0]
    else {
        unreachable!()
    };
    let metadata: Vec<&[u8]> = leader.members.iter().map(|m| &m.metadata[..]).collect();
    assert_eq!(metadata, vec![&b"2"[..], b"1", b"1"]);
}

#[test]
fn the_group_size_is_limited() {
    let mut h = H::new();
    for client in ["a", "b", "c"] {
        let id = h.member_id(client);
        h.join(7, &id, client, RANGE);
    }
    // Counted among the members that joined this phase, a fourth is refused up front.
    let r = h.join(7, "", "d", RANGE);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_GROUP_MAX_SIZE_REACHED, ""))]
    );
}

#[test]
fn a_static_member_replaces_its_previous_incarnation() {
    let mut h = H::new();
    let a = h.member_id("a");
    let ra = h.join(7, &a, "a", RANGE);
    // Static members get no MEMBER_ID_REQUIRED.
    let rs = h.join_req(
        7,
        join_req("g", "", RANGE).with_group_instance_id(Some(s("i1"))),
        "s",
    );
    h.tick(3_000);
    h.tick(6_000);
    let out = h.out();
    let s1 = match &out[1] {
        Output::Respond {
            response: ResponseKind::JoinGroup(r),
            ..
        } => r.member_id.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(s1.starts_with("i1-"));
    let mut leader_view = joined(1, &a, &a, &[(&a, b"m"), (&s1, b"m")]);
    leader_view.members[1].group_instance_id = Some(s("i1"));
    assert_eq!(
        out,
        vec![
            respond(ra, leader_view),
            respond(rs, joined(1, &a, &s1, &[])),
        ]
    );
    let sa = h.sync(&a, 1, &[(&a, b"A"), (&s1, b"S")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(sa, synced(b"A"))]);
    // The process restarts: same instance id, no member id. The group stays stable; the new
    // id is persisted before the member learns it.
    h.tick(7_000);
    let rs = h.join_req(
        7,
        join_req("g", "", RANGE).with_group_instance_id(Some(s("i1"))),
        "s",
    );
    let (token, batch) = single_append(&h.out());
    let s2 = group_record(&batch).members[1].member_id.clone();
    assert_ne!(s1, s2);
    assert_eq!(
        group_record(&batch).members[1],
        member_value(&s2, Some("i1"), "s", b"S")
    );
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(rs, joined(1, &a, &s2, &[]))]);
    assert_eq!(h.describe(5).group_state.as_str(), "Stable");
    // The old incarnation is fenced; the new one syncs and keeps the assignment.
    let r = h.heartbeat_static(&s1, Some("i1"), 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_FENCED_INSTANCE_ID))]);
    let reply = h.reply(ApiKey::SyncGroup, 3);
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id(1)
        .with_member_id(s(&s2))
        .with_group_instance_id(Some(s("i1")));
    h.c.sync(h.now, 3, req, reply);
    assert_eq!(
        h.out(),
        vec![respond(
            reply,
            SyncGroupResponse::default().with_assignment(Bytes::from_static(b"S"))
        )]
    );
    // Removing a static member by instance id alone (the admin path) rebalances.
    let reply = h.reply(ApiKey::LeaveGroup, 4);
    let req = LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_members(vec![
            MemberIdentity::default().with_group_instance_id(Some(s("i1")))
        ]);
    h.c.leave(h.now, 4, req, reply);
    assert_eq!(
        h.out(),
        vec![respond(
            reply,
            LeaveGroupResponse::default().with_members(vec![
                MemberResponse::default().with_group_instance_id(Some(s("i1")))
            ])
        )]
    );
    assert_eq!(h.describe(5).group_state.as_str(), "PreparingRebalance");
}

#[test]
fn commits_are_checked_against_the_generation() {
    let mut h = H::new();
    let (a, _) = stable_pair(&mut h);
    let r = h.commit("g", &a, 0, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_ILLEGAL_GENERATION)]))]
    );
    let r = h.commit("g", "ghost", 1, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_UNKNOWN_MEMBER_ID)]))]
    );
    // A standalone commit into a group with members is refused.
    let r = h.commit("g", "", -1, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_UNKNOWN_MEMBER_ID)]))]
    );
    // A member of a generation this coordinator never saw.
    let r = h.commit("unknown", &a, 5, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_ILLEGAL_GENERATION)]))]
    );
    assert_eq!(h.fetch("g", "t", 0, false), (-1, -1, String::new(), E_NONE));
    // Partitions are checked one by one: the valid ones are still committed.
    let r = h.commit("g", &a, 1, &[("t", 0, 1, "too long!"), ("t", 1, 2, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(
        h.out(),
        vec![respond(
            r,
            committed(&[("t", 0, E_OFFSET_METADATA_TOO_LARGE), ("t", 1, E_NONE)])
        )]
    );
    // While completing a rebalance the member has no assignment yet.
    h.join(7, &a, "a", RANGE);
    h.tick(h.now + REBALANCE_MS as i64);
    h.out();
    let r = h.commit("g", &a, 2, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_REBALANCE_IN_PROGRESS)]))]
    );
}

#[test]
fn a_commit_is_answered_and_visible_once_durable() {
    let mut h = H::new();
    h.now = 500;
    let r = h.commit("s", "", -1, &[("t", 0, 42, "m"), ("u", 3, 7, "")]);
    let (token, batch) = single_append(&h.out());
    let records = decode_records(&batch).expect("batch");
    let decoded: Vec<(RecordKey, OffsetValue)> = records
        .iter()
        .map(|r| {
            (
                records::decode_key(r.key.as_ref().expect("key")).expect("key"),
                OffsetValue::decode(r.value.as_ref().expect("value")).expect("value"),
            )
        })
        .collect();
    assert_eq!(
        decoded,
        vec![
            (
                RecordKey::Offset {
                    group: "s".into(),
                    topic: "t".into(),
                    partition: 0
                },
                OffsetValue {
                    offset: 42,
                    leader_epoch: 3,
                    metadata: "m".into(),
                    commit_timestamp_ms: 500
                }
            ),
            (
                RecordKey::Offset {
                    group: "s".into(),
                    topic: "u".into(),
                    partition: 3
                },
                OffsetValue {
                    offset: 7,
                    leader_epoch: 3,
                    metadata: String::new(),
                    commit_timestamp_ms: 500
                }
            ),
        ]
    );
    assert_eq!(h.fetch("s", "t", 0, false), (-1, -1, String::new(), E_NONE));
    assert_eq!(
        h.fetch("s", "t", 0, true),
        (-1, -1, String::new(), E_UNSTABLE_OFFSET_COMMIT)
    );
    h.ack(token, Ok(()));
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_NONE), ("u", 3, E_NONE)]))]
    );
    assert_eq!(h.fetch("s", "t", 0, true), (42, 3, "m".to_string(), E_NONE));
    assert_eq!(h.fetch("s", "t", 1, true), (-1, -1, String::new(), E_NONE));
    // All partitions (null topics), v8 with several groups (one unknown).
    let req = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("s")))
            .with_topics(None),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s("nope")))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(s("t")))
                .with_partition_indexes(vec![0])])),
    ]);
    let partition = |p: i32, offset: i64, epoch: i32, metadata: &str| {
        OffsetFetchResponsePartitions::default()
            .with_partition_index(p)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(epoch)
            .with_metadata(Some(s(metadata)))
    };
    assert_eq!(
        h.c.fetch_offsets(8, &req),
        OffsetFetchResponse::default().with_groups(vec![
            OffsetFetchResponseGroup::default()
                .with_group_id(GroupId(s("s")))
                .with_topics(vec![
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![partition(0, 42, 3, "m")]),
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(s("u")))
                        .with_partitions(vec![partition(3, 7, 3, "")]),
                ]),
            OffsetFetchResponseGroup::default()
                .with_group_id(GroupId(s("nope")))
                .with_topics(vec![OffsetFetchResponseTopics::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![partition(0, -1, -1, "")])]),
        ])
    );
}

#[test]
fn a_failed_commit_is_answered_with_the_error_and_stays_invisible() {
    let mut h = H::new();
    let r = h.commit("s", "", -1, &[("t", 0, 42, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Err(E_NOT_LEADER_OR_FOLLOWER));
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_NOT_COORDINATOR)]))]
    );
    assert_eq!(h.fetch("s", "t", 0, true), (-1, -1, String::new(), E_NONE));
    let r = h.commit("s", "", -1, &[("t", 0, 43, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Err(E_REQUEST_TIMED_OUT));
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_REQUEST_TIMED_OUT)]))]
    );
    assert_eq!(h.fetch("s", "t", 0, true), (-1, -1, String::new(), E_NONE));
    // A later success overwrites an earlier one.
    let r1 = h.commit("s", "", -1, &[("t", 0, 44, "")]);
    let r2 = h.commit("s", "", -1, &[("t", 0, 45, "")]);
    let out = h.out();
    let tokens: Vec<u64> = out
        .iter()
        .map(|o| match o {
            Output::Append { token, .. } => *token,
            other => panic!("{other:?}"),
        })
        .collect();
    h.ack(tokens[0], Ok(()));
    assert_eq!(h.fetch("s", "t", 0, true).3, E_UNSTABLE_OFFSET_COMMIT);
    h.ack(tokens[1], Ok(()));
    assert_eq!(
        h.out(),
        vec![
            respond(r1, committed(&[("t", 0, E_NONE)])),
            respond(r2, committed(&[("t", 0, E_NONE)]))
        ]
    );
    assert_eq!(h.fetch("s", "t", 0, true).0, 45);
}

#[test]
fn the_sync_store_failing_makes_members_rejoin() {
    let mut h = H::new();
    let a = h.member_id("a");
    let ra = h.join(7, &a, "a", RANGE);
    h.tick(3_000);
    assert_eq!(h.out(), vec![respond(ra, joined(1, &a, &a, &[(&a, b"m")]))]);
    let sa = h.sync(&a, 1, &[(&a, b"A")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Err(E_REQUEST_TIMED_OUT));
    assert_eq!(
        h.out(),
        vec![respond(sa, sync_failed(E_REBALANCE_IN_PROGRESS))]
    );
    assert_eq!(h.describe(5).group_state.as_str(), "PreparingRebalance");
}

#[test]
fn a_repeated_leader_sync_persists_one_assignment_per_generation() {
    let mut h = H::new();
    let a = h.member_id("a");
    let ra = h.join(7, &a, "a", RANGE);
    h.tick(3_000);
    assert_eq!(h.out(), vec![respond(ra, joined(1, &a, &a, &[(&a, b"m")]))]);
    let first = h.sync(&a, 1, &[(&a, b"A")]);
    let (token, _) = single_append(&h.out());
    // A retry replaces the parked request; its (different) assignment is not written: a
    // coordinator loading it later would hand out another assignment for generation 1.
    let second = h.sync(&a, 1, &[(&a, b"other")]);
    assert_eq!(
        h.out(),
        vec![respond(first, sync_failed(E_REBALANCE_IN_PROGRESS))]
    );
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(second, synced(b"A"))]);
}

#[test]
fn members_that_do_not_sync_in_time_are_removed() {
    let mut h = H::new();
    let a = h.member_id("a");
    let ra = h.join(7, &a, "a", RANGE);
    let b = h.member_id("b");
    let rb = h.join(7, &b, "b", RANGE);
    h.tick(3_000);
    h.tick(6_000);
    assert_eq!(h.out().len(), 2);
    let _ = (ra, rb);
    let sb = h.sync(&b, 1, &[]);
    h.tick(6_000 + REBALANCE_MS as i64);
    // The leader never sent its assignment: it is dropped and b must rejoin.
    assert_eq!(
        h.out(),
        vec![respond(sb, sync_failed(E_REBALANCE_IN_PROGRESS))]
    );
    assert_eq!(h.describe(5).members.len(), 1);
}

/// A scenario with offsets (overwritten, expired), a stable group, an empty group, and a
/// removed group, replayed into a new coordinator.
#[test]
fn replaying_the_partition_rebuilds_the_same_state() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let commit =
        |h: &mut H, group: &str, member: &str, gen: i32, offsets: &[(&str, i32, i64, &str)]| {
            let r = h.commit(group, member, gen, offsets);
            let (token, _) = single_append(&h.out());
            h.ack(token, Ok(()));
            assert!(matches!(&h.out()[..], [Output::Respond { reply, .. }] if *reply == r));
        };
    commit(&mut h, "g", &a, 1, &[("t", 0, 10, "x"), ("t", 1, 11, "")]);
    commit(&mut h, "g", &b, 1, &[("t", 0, 12, "y")]);
    commit(&mut h, "old", "", -1, &[("u", 0, 5, "")]);
    commit(&mut h, "gone", "", -1, &[("u", 0, 5, "")]);
    // Members keep their sessions alive while time passes.
    let mut t = h.now;
    while t < 111_000 {
        t += 5_000;
        h.tick(t);
        h.out();
        for m in [&a, &b] {
            let r = h.heartbeat(m, 1);
            assert_eq!(h.out(), vec![respond(r, hb(E_NONE))]);
        }
        if t == 51_000 {
            commit(&mut h, "s", "", -1, &[("u", 0, 1, "")]);
            commit(&mut h, "old", "", -1, &[("u", 1, 5, "")]);
        }
    }
    // "gone" expired (and was removed), "old" kept its newer offset, "s" is young, "g" has
    // members. The tombstones were appended.
    for token in h.pending.keys().copied().collect::<Vec<_>>() {
        h.ack(token, Ok(()));
    }
    assert_eq!(h.out(), vec![]);
    // A leader-change no-op sits in the log too.
    let noop = leader_change_batch(2, 1, 0).to_vec();
    h.log.extend_from_slice(&noop);

    let groups = ["g", "s", "old", "gone"];
    let fetch_all = |c: &GroupCoordinator| {
        let req = OffsetFetchRequest::default().with_groups(
            groups
                .iter()
                .map(|g| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s(g)))
                        .with_topics(None)
                })
                .collect(),
        );
        c.fetch_offsets(8, &req)
    };
    let describe_all = |c: &GroupCoordinator| {
        let req = DescribeGroupsRequest::default()
            .with_groups(groups.iter().map(|g| GroupId(s(g))).collect());
        c.describe_groups(5, &req)
    };
    let list = |c: &GroupCoordinator| c.list_groups(4, &ListGroupsRequest::default());
    let before = (fetch_all(&h.c), describe_all(&h.c), list(&h.c));
    assert_eq!(before.2.groups.len(), 3, "{:?}", before.2);
    assert_eq!(before.0.groups[2].topics[0].partitions.len(), 1);

    let mut c = GroupCoordinator::new(0, 8, config());
    let split = {
        // Load in two calls, cut at a batch boundary.
        let first = BatchHeader::parse(&h.log).expect("batch").total_size();
        h.log.split_at(first)
    };
    c.load(split.0).expect("load");
    c.load(split.1).expect("load");
    c.loaded(h.now);
    assert_eq!((fetch_all(&c), describe_all(&c), list(&c)), before);
    // The stable group carries on: members heartbeat with their generation.
    let mut h2 = H::with(c);
    h2.now = h.now;
    let r = h2.heartbeat(&a, 1);
    assert_eq!(h2.out(), vec![respond(r, hb(E_NONE))]);
    let r = h2.sync(&b, 1, &[]);
    assert_eq!(h2.out(), vec![respond(r, synced(b"B"))]);
}

#[test]
fn an_empty_group_expires_with_its_offsets() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let r = h.commit("g", &a, 1, &[("t", 0, 10, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert_eq!(h.out(), vec![respond(r, committed(&[("t", 0, E_NONE)]))]);
    h.leave(&[&a, &b]);
    let out = h.out();
    let (token, _) = single_append(&out[..1]);
    h.ack(token, Ok(()));
    // Empty since 6000: its offsets are kept for the retention (100 s) from then; expiry
    // runs every 10 s.
    h.tick(100_000);
    assert_eq!(h.out(), vec![]);
    assert_eq!(h.fetch("g", "t", 0, false).0, 10);
    h.tick(109_999);
    assert_eq!(h.out(), vec![]);
    h.tick(110_000);
    let (_, batch) = single_append(&h.out());
    let keys: Vec<(RecordKey, bool)> = decode_records(&batch)
        .expect("batch")
        .iter()
        .map(|r| {
            (
                records::decode_key(r.key.as_ref().expect("key")).expect("key"),
                r.value.is_some(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            (
                RecordKey::Offset {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0
                },
                false
            ),
            (RecordKey::Group { group: "g".into() }, false),
        ]
    );
    assert_eq!(h.fetch("g", "t", 0, false).0, -1);
    assert_eq!(h.describe(5).group_state.as_str(), "Dead");
}

#[test]
fn requests_wait_for_the_partition_to_load() {
    let mut h = H::with(GroupCoordinator::new(0, 1, config()));
    let r = h.join(7, "", "a", RANGE);
    assert_eq!(
        h.out(),
        vec![respond(r, join_failed(E_LOAD_IN_PROGRESS, ""))]
    );
    // Kafka answers these two so that old clients simply rejoin or carry on.
    let r = h.sync("m", 1, &[]);
    assert_eq!(
        h.out(),
        vec![respond(r, sync_failed(E_REBALANCE_IN_PROGRESS))]
    );
    let r = h.heartbeat("m", 1);
    assert_eq!(h.out(), vec![respond(r, hb(E_NONE))]);
    let r = h.leave(&["m"]);
    assert_eq!(
        h.out(),
        vec![respond(
            r,
            LeaveGroupResponse::default().with_error_code(E_LOAD_IN_PROGRESS)
        )]
    );
    let r = h.commit("g", "", -1, &[("t", 0, 1, "")]);
    assert_eq!(
        h.out(),
        vec![respond(r, committed(&[("t", 0, E_LOAD_IN_PROGRESS)]))]
    );
    let req = OffsetFetchRequest::default().with_group_id(GroupId(s("g")));
    assert_eq!(
        h.c.fetch_offsets(7, &req),
        OffsetFetchResponse::default().with_error_code(E_LOAD_IN_PROGRESS)
    );
    let req = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default().with_group_id(GroupId(s("g")))
    ]);
    assert_eq!(
        h.c.fetch_offsets(8, &req),
        OffsetFetchResponse::default().with_groups(vec![OffsetFetchResponseGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_error_code(E_LOAD_IN_PROGRESS)])
    );
    // v1 has no top-level error: each partition carries it.
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(vec![0])]));
    assert_eq!(
        h.c.fetch_offsets(1, &req),
        OffsetFetchResponse::default().with_topics(vec![OffsetFetchResponseTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![OffsetFetchResponsePartition::default()
                .with_committed_offset(-1)
                .with_committed_leader_epoch(-1)
                .with_metadata(Some(s("")))
                .with_error_code(E_LOAD_IN_PROGRESS)])])
    );
    assert_eq!(
        h.c.list_groups(4, &ListGroupsRequest::default()),
        ListGroupsResponse::default().with_error_code(E_LOAD_IN_PROGRESS)
    );
    assert_eq!(
        h.describe(5),
        DescribedGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_error_code(E_LOAD_IN_PROGRESS)
    );
    h.tick(100);
    assert_eq!(h.out(), vec![]);
    h.c.loaded(100);
    let r = h.join(7, "", "a", RANGE);
    assert!(
        matches!(&h.out()[..], [Output::Respond { reply, response: ResponseKind::JoinGroup(j) }]
        if *reply == r && j.error_code == E_MEMBER_ID_REQUIRED)
    );
}

#[test]
fn describe_and_list_show_groups_as_kafka_does() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let r = h.commit("s", "", -1, &[("t", 0, 1, "")]);
    let (token, _) = single_append(&h.out());
    h.ack(token, Ok(()));
    assert!(matches!(&h.out()[..], [Output::Respond { reply, .. }] if *reply == r));
    let member = |id: &str, client: &str, assignment: &'static [u8]| {
        DescribedGroupMember::default()
            .with_member_id(s(id))
            .with_client_id(s(client))
            .with_client_host(s("/10.0.0.1"))
            .with_member_metadata(Bytes::from_static(b"m"))
            .with_member_assignment(Bytes::from_static(assignment))
    };
    let req = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(s("g")), GroupId(s("none"))])
        .with_include_authorized_operations(true);
    assert_eq!(
        h.c.describe_groups(5, &req),
        DescribeGroupsResponse::default().with_groups(vec![
            DescribedGroup::default()
                .with_group_id(GroupId(s("g")))
                .with_group_state(s("Stable"))
                .with_protocol_type(s("consumer"))
                .with_protocol_data(s("range"))
                .with_members(vec![member(&a, "a", b"A"), member(&b, "b", b"B")])
                .with_authorized_operations(328),
            DescribedGroup::default()
                .with_group_id(GroupId(s("none")))
                .with_group_state(s("Dead"))
                .with_authorized_operations(328),
        ])
    );
    let none = &h.c.describe_groups(6, &req).groups[1];
    assert_eq!(
        (none.error_code, none.error_message.as_deref()),
        (E_GROUP_ID_NOT_FOUND, Some("Group none not found."))
    );
    let listed = |id: &str, ptype: &str, state: &str| {
        ListedGroup::default()
            .with_group_id(GroupId(s(id)))
            .with_protocol_type(s(ptype))
            .with_group_state(s(state))
            .with_group_type(s("classic"))
    };
    assert_eq!(
        h.c.list_groups(5, &ListGroupsRequest::default()).groups,
        vec![listed("g", "consumer", "Stable"), listed("s", "", "Empty")]
    );
    let stable = ListGroupsRequest::default().with_states_filter(vec![s("stable")]);
    assert_eq!(
        h.c.list_groups(5, &stable).groups,
        vec![listed("g", "consumer", "Stable")]
    );
    let consumer = ListGroupsRequest::default().with_types_filter(vec![s("consumer")]);
    assert_eq!(h.c.list_groups(5, &consumer).groups, vec![]);
    // v0-3 have no state.
    assert_eq!(
        h.c.list_groups(3, &ListGroupsRequest::default()).groups[0],
        ListedGroup::default()
            .with_group_id(GroupId(s("g")))
            .with_protocol_type(s("consumer"))
    );
}

#[test]
fn resigning_answers_everyone_waiting() {
    let mut h = H::new();
    let (a, b) = stable_pair(&mut h);
    let ra = h.join(7, &a, "a", RANGE);
    let rc = h.commit("s", "", -1, &[("t", 0, 1, "")]);
    let (token, _) = single_append(&h.out());
    let _ = (b, token);
    let out = h.c.resign();
    assert_eq!(
        out,
        vec![
            respond(ra, join_failed(E_NOT_COORDINATOR, &a)),
            respond(rc, committed(&[("t", 0, E_NOT_COORDINATOR)])),
        ]
    );
}
