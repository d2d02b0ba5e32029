//! The coordinator of one `__consumer_offsets` partition: its groups, their offsets, loading,
//! timers, and the hand-off of records to persist.

use std::collections::BTreeMap;

use bytes::Bytes;
use fjord_log::{build_batch, decode_records, BatchError, BatchIter, BuildOptions, RecordSpec};
use kafka_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ResponseKind, SyncGroupRequest,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tracing::warn;

use super::config::{
    GroupConfig, APPEND_BATCH_MAX_BYTES, CLIENT_ID_MAX_BYTES, GROUP_ID_MAX_BYTES,
    GROUP_INSTANCE_ID_MAX_BYTES, MEMBER_METADATA_MAX_BYTES, PROTOCOLS_PER_MEMBER_MAX_COUNT,
    PROTOCOL_NAME_MAX_BYTES,
};
use super::group::{Group, JoinParams, Timer, TopicPartition, Waiter};
use super::records::{self, GroupValue, OffsetValue, RecordError, RecordKey};
use super::responses::{
    error, heartbeat_response, join_error, join_response, leave_response, sync_response,
    JoinResult, LeaveResult, SyncResult,
};

/// Identifies a waiting request to the caller (which maps it to a connection).
pub type Reply = u64;

/// Something the caller must do.
// Most outputs are responses: boxing them would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `response` for the request registered as `reply` (encode it at that request's
    /// version).
    Respond {
        reply: Reply,
        response: ResponseKind,
    },
    /// Propose `batch` (a RecordBatch with base offset 0 and no leader epoch, for the caller to
    /// set) to this coordinator's `__consumer_offsets` partition, then report the outcome
    /// with [`GroupCoordinator::on_appended`]`(token, ..)`, in append order.
    Append { token: u64, batch: Bytes },
}

/// Who sent a JoinGroup (from the request header and the connection): shown by
/// DescribeGroups, and used as the prefix of generated member ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    /// As Kafka shows it, e.g. "/127.0.0.1".
    pub client_host: String,
}

/// Why replaying the partition failed. The state loaded so far is kept.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad batch: {0}")]
    Batch(#[from] BatchError),
    #[error("record at offset {offset} has no key")]
    MissingKey { offset: u64 },
    #[error("record at offset {offset}: {source}")]
    Record { offset: u64, source: RecordError },
}

/// A record append the coordinator waits for.
#[derive(Debug)]
pub(super) enum PendingAppend {
    /// The leader's assignment, handed out once durable.
    SyncStore {
        group: String,
        generation: i32,
        assignment: BTreeMap<String, Bytes>,
    },
    /// A static member's new id, answered once durable.
    StaticJoin {
        group: String,
        generation: i32,
        member_id: String,
        old_leader: String,
    },
    /// An OffsetCommit, answered (and made visible) once durable.
    Commit {
        group: String,
        reply: Reply,
        results: Vec<super::offsets::TopicResults>,
        offsets: Vec<(TopicPartition, OffsetValue)>,
    },
    /// Written for its own sake (empty-group metadata, expiry tombstones): nobody waits.
    Background { what: &'static str },
}

/// Time, randomness, settings and outputs: what group logic needs besides the group itself.
pub(super) struct Ctx {
    pub now_ms: i64,
    pub config: GroupConfig,
    out: Vec<Output>,
    rng: ChaCha20Rng,
    next_token: u64,
    pub pending: BTreeMap<u64, PendingAppend>,
}

impl Ctx {
    /// `timeout_ms` from now, at least 1 ms ahead, so that a timer fired by `tick` never
    /// schedules another one that is already due (a zero timeout fires at the next tick).
    pub fn deadline(&self, timeout_ms: i64) -> i64 {
        self.now_ms.saturating_add(timeout_ms.max(1))
    }

    pub fn respond(&mut self, reply: Reply, response: ResponseKind) {
        self.out.push(Output::Respond { reply, response });
    }

    pub fn respond_join(&mut self, w: Waiter, r: JoinResult) {
        self.respond(
            w.reply,
            ResponseKind::JoinGroup(join_response(w.version, r)),
        );
    }

    pub fn respond_sync(&mut self, w: Waiter, r: SyncResult) {
        self.respond(
            w.reply,
            ResponseKind::SyncGroup(sync_response(w.version, r)),
        );
    }

    /// A fresh member id, `prefix-<uuid v4>` as Kafka makes them.
    pub fn new_member_id(&mut self, prefix: &str) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{prefix}-{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// One batch of `records`, or the error Kafka's log would give for an oversized one.
    pub fn build(&self, records: &[RecordSpec]) -> Result<Bytes, i16> {
        let size: usize = records
            .iter()
            .map(|r| {
                r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len) + 32
            })
            .sum();
        if size > APPEND_BATCH_MAX_BYTES {
            return Err(error::RECORD_LIST_TOO_LARGE);
        }
        let batch = build_batch(records, &BuildOptions::default()).map_err(|e| {
            warn!(error = %e, "building a __consumer_offsets batch failed");
            error::UNKNOWN_SERVER_ERROR
        })?;
        if batch.len() > APPEND_BATCH_MAX_BYTES {
            return Err(error::RECORD_LIST_TOO_LARGE);
        }
        Ok(batch)
    }

    pub fn push_append(&mut self, batch: Bytes, pending: PendingAppend) {
        self.next_token += 1;
        let token = self.next_token;
        self.pending.insert(token, pending);
        self.out.push(Output::Append { token, batch });
    }

    pub fn record(&self, key: Bytes, value: Option<Bytes>) -> RecordSpec {
        RecordSpec {
            key: Some(key),
            value,
            headers: Vec::new(),
            timestamp_ms: self.now_ms,
        }
    }

    /// Appends a group's metadata record (or its tombstone); the error is the one the
    /// waiting request gets if the record cannot even be built.
    pub fn append_group(
        &mut self,
        group: &str,
        value: Option<GroupValue>,
        pending: PendingAppend,
    ) -> Result<(), i16> {
        if value
            .as_ref()
            .is_some_and(|v| v.encoded_len() > APPEND_BATCH_MAX_BYTES)
        {
            return Err(error::from_append(error::RECORD_LIST_TOO_LARGE, false));
        }
        let record = self.record(records::group_key(group), value.map(|v| v.encode()));
        let batch = self
            .build(&[record])
            .map_err(|code| error::from_append(code, false))?;
        self.push_append(batch, pending);
        Ok(())
    }
}

/// Committed state replayed from the partition, before groups are rebuilt from it.
#[derive(Debug, Default)]
struct Replay {
    offsets: BTreeMap<(String, String, i32), OffsetValue>,
    groups: BTreeMap<String, GroupValue>,
}

#[derive(Debug)]
enum Phase {
    Loading(Replay),
    Active,
}

/// Which API a group id arrives with (the empty group id is legal for some).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Join,
    Sync,
    Heartbeat,
    Leave,
    Commit,
    Fetch,
    Describe,
}

/// The group coordinator of one `__consumer_offsets` partition (Kafka's classic protocol).
///
/// Sans-IO: every input carries the time, outputs are collected by [`Self::take_output`],
/// randomness (member ids) comes from a ChaCha stream seeded at construction, and all
/// iteration is in key order, so a run is a pure function of its inputs.
pub struct GroupCoordinator {
    partition: u32,
    phase: Phase,
    pub(super) groups: BTreeMap<String, Group>,
    /// Committed offsets held, over all groups.
    pub(super) offsets_count: usize,
    next_expiry_check_ms: i64,
    pub(super) cx: Ctx,
}

impl GroupCoordinator {
    /// A coordinator for `partition`, loading until [`Self::loaded`]. `seed` must differ
    /// between incarnations (e.g. derive it from node id, partition and Raft term): member ids
    /// are drawn from it and must never repeat a previous coordinator's.
    ///
    /// Panics if `config` is invalid ([`GroupConfig::validate`]).
    pub fn new(partition: u32, seed: u64, config: GroupConfig) -> GroupCoordinator {
        if let Err(e) = config.validate() {
            panic!("invalid group coordinator config: {e}");
        }
        GroupCoordinator {
            partition,
            phase: Phase::Loading(Replay::default()),
            groups: BTreeMap::new(),
            offsets_count: 0,
            next_expiry_check_ms: 0,
            cx: Ctx {
                now_ms: 0,
                config,
                out: Vec::new(),
                rng: ChaCha20Rng::seed_from_u64(seed),
                next_token: 0,
                pending: BTreeMap::new(),
            },
        }
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn is_loaded(&self) -> bool {
        matches!(self.phase, Phase::Active)
    }

    /// Every committed (durable) offset held: `(group, topic, partition, offset)`, ordered
    /// by group, topic and partition. For metrics (consumer lag).
    pub fn committed_offsets(&self) -> impl Iterator<Item = (&str, &str, i32, i64)> + '_ {
        self.groups.iter().flat_map(|(id, g)| {
            g.offsets
                .iter()
                .map(move |((topic, p), v)| (id.as_str(), topic.as_str(), *p, v.offset))
        })
    }

    /// Replays committed batches of the partition, in log order (any number of calls).
    /// Control batches are skipped; a null value deletes its key.
    ///
    /// Load everything the partition committed before this coordinator's leadership began,
    /// up to and including the new leader's first entry, so that appends proposed by a
    /// previous coordinator are all seen; after [`Self::loaded`], never load this
    /// coordinator's own appends (they come back through [`Self::on_appended`]).
    ///
    /// Panics if called after `loaded`.
    pub fn load(&mut self, batches: &[u8]) -> Result<(), LoadError> {
        let Phase::Loading(replay) = &mut self.phase else {
            panic!("load after loaded");
        };
        for item in BatchIter::new(batches) {
            let (header, batch) = item?;
            if header.is_control() {
                continue;
            }
            for record in decode_records(batch)? {
                let offset = record.offset;
                let key = record.key.ok_or(LoadError::MissingKey { offset })?;
                let bad = |source| LoadError::Record { offset, source };
                match records::decode_key(&key).map_err(bad)? {
                    RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    } => {
                        let key = (group, topic, partition);
                        match record.value {
                            Some(v) => {
                                let value = OffsetValue::decode(&v).map_err(bad)?;
                                replay.offsets.insert(key, value);
                            }
                            None => {
                                replay.offsets.remove(&key);
                            }
                        }
                    }
                    RecordKey::Group { group } => match record.value {
                        Some(v) => {
                            let value = GroupValue::decode(&v).map_err(bad)?;
                            replay.groups.insert(group, value);
                        }
                        None => {
                            replay.groups.remove(&group);
                        }
                    },
                }
            }
        }
        Ok(())
    }

    /// Ends loading: groups are rebuilt (members of a stable group must heartbeat within
    /// their session timeout from now) and requests are served.
    ///
    /// Panics if called twice.
    pub fn loaded(&mut self, now_ms: i64) {
        let Phase::Loading(replay) = std::mem::replace(&mut self.phase, Phase::Active) else {
            panic!("loaded twice");
        };
        self.cx.now_ms = now_ms;
        for (id, value) in replay.groups {
            self.groups
                .insert(id.clone(), Group::from_record(id, value, now_ms));
        }
        for ((group, topic, partition), value) in replay.offsets {
            let g = self
                .groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, now_ms));
            g.offsets.insert((topic, partition), value);
            self.offsets_count += 1;
        }
        self.next_expiry_check_ms =
            now_ms.saturating_add(self.cx.config.offsets_retention_check_interval_ms);
        self.check_invariants();
    }

    /// Everything to do since the last call, in order.
    pub fn take_output(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.cx.out)
    }

    /// Kafka's `validateGroupStatus`: the group id, then the load state.
    pub(super) fn group_status(&self, group_id: &str, api: Api) -> Option<i16> {
        let empty_ok = matches!(api, Api::Commit | Api::Fetch | Api::Describe);
        if (group_id.is_empty() && !empty_ok) || group_id.len() > GROUP_ID_MAX_BYTES {
            Some(error::INVALID_GROUP_ID)
        } else if !self.is_loaded() {
            Some(error::COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            None
        }
    }

    /// Drops a group that holds nothing, and checks invariants in tests.
    pub(super) fn settle(&mut self, group_id: &str) {
        if self.groups.get(group_id).is_some_and(Group::is_vacant) {
            self.groups.remove(group_id);
        }
        self.check_invariants();
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        for g in self.groups.values() {
            g.assert_invariants();
        }
        let count: usize = self.groups.values().map(|g| g.offsets.len()).sum();
        assert_eq!(count, self.offsets_count);
    }

    #[cfg(not(test))]
    fn check_invariants(&self) {}

    /// JoinGroup. `client` is the request header's client id and the peer's host.
    pub fn join(
        &mut self,
        now_ms: i64,
        version: i16,
        req: JoinGroupRequest,
        client: &ClientInfo,
        reply: Reply,
    ) {
        self.cx.now_ms = now_ms;
        let waiter = Waiter { reply, version };
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        if let Some(code) = self.group_status(&group_id, Api::Join) {
            self.cx.respond_join(waiter, join_error(&member_id, code));
            return;
        }
        let config = &self.cx.config;
        if req.session_timeout_ms < config.session_timeout_min_ms
            || req.session_timeout_ms > config.session_timeout_max_ms
        {
            self.cx.respond_join(
                waiter,
                join_error(&member_id, error::INVALID_SESSION_TIMEOUT),
            );
            return;
        }
        let instance_id = if version >= 5 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        };
        let metadata_bytes: usize = req
            .protocols
            .iter()
            .map(|p| p.name.len() + p.metadata.len())
            .sum();
        if instance_id
            .as_ref()
            .is_some_and(|i| i.is_empty() || i.len() > GROUP_INSTANCE_ID_MAX_BYTES)
            || req.protocols.len() > PROTOCOLS_PER_MEMBER_MAX_COUNT
            || metadata_bytes > MEMBER_METADATA_MAX_BYTES
            || req.protocol_type.len() > PROTOCOL_NAME_MAX_BYTES
            || req
                .protocols
                .iter()
                .any(|p| p.name.len() > PROTOCOL_NAME_MAX_BYTES)
        {
            self.cx
                .respond_join(waiter, join_error(&member_id, error::INVALID_REQUEST));
            return;
        }
        let params = JoinParams {
            version,
            client_id: truncate(&client.client_id, CLIENT_ID_MAX_BYTES),
            client_host: truncate(&client.client_host, CLIENT_ID_MAX_BYTES),
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: the session timeout is used instead.
            rebalance_timeout_ms: if version == 0 {
                req.session_timeout_ms
            } else {
                req.rebalance_timeout_ms
            },
            instance_id,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
        };
        if !self.groups.contains_key(&group_id) {
            // Only a new member creates a group; a known member id of an unknown group is
            // stale (the group expired or moved).
            let code = if !member_id.is_empty() {
                Some(error::UNKNOWN_MEMBER_ID)
            } else if self.groups.len() >= self.cx.config.groups_max_count {
                Some(error::COORDINATOR_NOT_AVAILABLE)
            } else {
                None
            };
            if let Some(code) = code {
                self.cx.respond_join(waiter, join_error(&member_id, code));
                return;
            }
            self.groups
                .insert(group_id.clone(), Group::new(group_id.clone(), now_ms));
        }
        let group = self.groups.get_mut(&group_id).expect("present");
        if !group.accept_joining_member(&member_id, self.cx.config.group_size_max) {
            group.pending_members.remove(&member_id);
            self.cx
                .respond_join(waiter, join_error("", error::GROUP_MAX_SIZE_REACHED));
        } else if member_id.is_empty() {
            group.join_new_member(&mut self.cx, params, waiter);
        } else {
            group.join_known_member(&mut self.cx, &member_id, params, waiter);
        }
        group.maybe_complete_join(&mut self.cx);
        self.settle(&group_id);
    }

    /// SyncGroup. Followers wait for the leader's assignment; the leader's is persisted before
    /// anyone gets it.
    pub fn sync(&mut self, now_ms: i64, version: i16, req: SyncGroupRequest, reply: Reply) {
        self.cx.now_ms = now_ms;
        let waiter = Waiter { reply, version };
        let group_id = req.group_id.0.to_string();
        match self.group_status(&group_id, Api::Sync) {
            // The rebalance state was lost with the previous coordinator: rejoin (older clients
            // do not expect COORDINATOR_LOAD_IN_PROGRESS here; Kafka answers the same).
            Some(error::COORDINATOR_LOAD_IN_PROGRESS) => {
                self.cx
                    .respond_sync(waiter, SyncResult::error(error::REBALANCE_IN_PROGRESS));
                return;
            }
            Some(code) => {
                self.cx.respond_sync(waiter, SyncResult::error(code));
                return;
            }
            None => {}
        }
        let Some(group) = self.groups.get_mut(&group_id) else {
            self.cx
                .respond_sync(waiter, SyncResult::error(error::UNKNOWN_MEMBER_ID));
            return;
        };
        let instance_id = if version >= 3 {
            req.group_instance_id.as_deref()
        } else {
            None
        };
        let (protocol_type, protocol_name) = if version >= 5 {
            (req.protocol_type.as_deref(), req.protocol_name.as_deref())
        } else {
            (None, None)
        };
        let assignments = req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        group.sync(
            &mut self.cx,
            &req.member_id,
            instance_id,
            req.generation_id,
            protocol_type,
            protocol_name,
            assignments,
            waiter,
        );
        self.settle(&group_id);
    }

    /// Heartbeat: REBALANCE_IN_PROGRESS tells a member to rejoin.
    pub fn heartbeat(&mut self, now_ms: i64, version: i16, req: HeartbeatRequest, reply: Reply) {
        self.cx.now_ms = now_ms;
        let group_id = req.group_id.0.to_string();
        let code = match self.group_status(&group_id, Api::Heartbeat) {
            // Answered blindly while loading, as Kafka does: the member's session starts
            // over once the group is loaded.
            Some(error::COORDINATOR_LOAD_IN_PROGRESS) => error::NONE,
            Some(code) => code,
            None => match self.groups.get_mut(&group_id) {
                None => error::UNKNOWN_MEMBER_ID,
                Some(group) => {
                    let instance_id = if version >= 3 {
                        req.group_instance_id.as_deref()
                    } else {
                        None
                    };
                    group.heartbeat(&mut self.cx, &req.member_id, instance_id, req.generation_id)
                }
            },
        };
        self.cx
            .respond(reply, ResponseKind::Heartbeat(heartbeat_response(code)));
        self.check_invariants();
    }

    /// LeaveGroup: one member (v0-2) or several, by member id or by group instance id (v3+).
    pub fn leave(&mut self, now_ms: i64, version: i16, req: LeaveGroupRequest, reply: Reply) {
        self.cx.now_ms = now_ms;
        let group_id = req.group_id.0.to_string();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        if let Some(code) = self.group_status(&group_id, Api::Leave) {
            let response = leave_response(version, code, Vec::new());
            self.cx.respond(reply, ResponseKind::LeaveGroup(response));
            return;
        }
        let mut results = Vec::with_capacity(leaving.len());
        for (member_id, instance_id) in leaving {
            let error = match self.groups.get_mut(&group_id) {
                None => error::UNKNOWN_MEMBER_ID,
                Some(group) => group.leave(&mut self.cx, &member_id, instance_id.as_deref()),
            };
            results.push(LeaveResult {
                member_id,
                instance_id,
                error,
            });
        }
        let response = leave_response(version, error::NONE, results);
        self.cx.respond(reply, ResponseKind::LeaveGroup(response));
        self.settle(&group_id);
    }

    /// Advances timers to `now_ms`: session timeouts, join and sync phase deadlines, expiry of
    /// pending member ids, and (every `offsets_retention_check_interval_ms`) offset expiry.
    /// Due timers fire in deadline order (ties: group id, then kind).
    pub fn tick(&mut self, now_ms: i64) {
        self.cx.now_ms = now_ms;
        if !self.is_loaded() {
            return;
        }
        // Firing never schedules a timer at or before now (`Ctx::deadline`), so this ends;
        // a second pass only sees timers an earlier one rescheduled.
        for _pass in 0..3 {
            let mut due: Vec<(i64, String, Timer)> = Vec::new();
            for (id, group) in &self.groups {
                let mut timers = Vec::new();
                group.due_timers(now_ms, &mut timers);
                due.extend(timers.into_iter().map(|(d, t)| (d, id.clone(), t)));
            }
            if due.is_empty() {
                break;
            }
            due.sort();
            for (deadline, group_id, timer) in due {
                if let Some(group) = self.groups.get_mut(&group_id) {
                    group.fire(&mut self.cx, &timer, deadline);
                    self.settle(&group_id);
                }
            }
        }
        if now_ms >= self.next_expiry_check_ms {
            self.expire_offsets();
            self.next_expiry_check_ms =
                now_ms.saturating_add(self.cx.config.offsets_retention_check_interval_ms);
        }
        self.check_invariants();
    }

    /// Reports the outcome of an [`Output::Append`]: `Ok` once the batch is committed (durable
    /// on a quorum), else the Kafka error of the append (e.g. NOT_LEADER_OR_FOLLOWER,
    /// REQUEST_TIMED_OUT), which becomes what the waiting request is answered with.
    ///
    /// Panics on an unknown token or `Err(0)` (caller bugs).
    pub fn on_appended(&mut self, now_ms: i64, token: u64, result: Result<(), i16>) {
        self.cx.now_ms = now_ms;
        assert!(
            result != Err(error::NONE),
            "append failure without an error code"
        );
        let pending = self
            .cx
            .pending
            .remove(&token)
            .unwrap_or_else(|| panic!("unknown append token {token}"));
        match pending {
            PendingAppend::SyncStore {
                group,
                generation,
                assignment,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    let result = result.map_err(|c| error::from_append(c, false));
                    g.complete_assignment(&mut self.cx, generation, assignment, result);
                    self.settle(&group);
                }
            }
            PendingAppend::StaticJoin {
                group,
                generation,
                member_id,
                old_leader,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    let result = result.map_err(|c| error::from_append(c, false));
                    g.complete_static_join(
                        &mut self.cx,
                        generation,
                        &member_id,
                        old_leader,
                        result,
                    );
                    self.settle(&group);
                }
            }
            PendingAppend::Commit {
                group,
                reply,
                results,
                offsets,
            } => self.complete_commit(&group, reply, results, offsets, result),
            PendingAppend::Background { what } => {
                if let Err(code) = result {
                    warn!(partition = self.partition, what, code, "append failed");
                }
            }
        }
    }

    /// Stops coordinating (leadership of the partition is lost): every waiting request is
    /// answered NOT_COORDINATOR so clients look for the new coordinator. Returns what remains
    /// to send; appends not yet handed out are dropped, and those in flight may or may not
    /// commit (the next coordinator loads whatever did).
    pub fn resign(mut self) -> Vec<Output> {
        let mut out: Vec<Output> = self
            .take_output()
            .into_iter()
            .filter(|o| matches!(o, Output::Respond { .. }))
            .collect();
        for group in self.groups.values_mut() {
            for member in group.members.values_mut() {
                if let Some(w) = member.awaiting_join.take() {
                    self.cx
                        .respond_join(w, join_error(&member.id, error::NOT_COORDINATOR));
                }
                if let Some(w) = member.awaiting_sync.take() {
                    self.cx
                        .respond_sync(w, SyncResult::error(error::NOT_COORDINATOR));
                }
            }
        }
        for pending in std::mem::take(&mut self.cx.pending).into_values() {
            if let PendingAppend::Commit { reply, results, .. } = pending {
                let response = super::offsets::commit_response(results, error::NOT_COORDINATOR);
                self.cx.respond(reply, ResponseKind::OffsetCommit(response));
            }
        }
        out.append(&mut self.cx.out);
        out
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
