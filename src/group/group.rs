//! One consumer group: members, generations and the rebalance state machine of Kafka's
//! classic protocol (Kafka's `GroupMetadata` + the group half of `GroupCoordinator`).
//!
//! ```text
//!            join / leave / session timeout (any member change)
//!   Empty ──────────────► PreparingRebalance ──(all joined, or rebalance timeout)──► CompletingRebalance
//!     ▲                        ▲    │ (nobody left)                                     │ leader's SyncGroup
//!     └────────────────────────┼────┘                                                   ▼ persisted
//!                              └──────────────── member change ◄──────────────────── Stable
//! ```
//!
//! A group never holds `Dead`: a group that would be dead is removed from the coordinator.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::coordinator::{Ctx, PendingAppend, Reply};
use super::records::{GroupValue, MemberValue, OffsetValue};
use super::responses::{error, join_error, JoinResult, SyncResult};

/// A partition of a topic, as offsets are keyed.
pub(super) type TopicPartition = (String, i32);

/// Where a group is in its rebalance cycle; names are Kafka's, as DescribeGroups and
/// ListGroups show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// Shown for groups the coordinator does not hold.
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    fn valid_previous(self) -> &'static [GroupState] {
        use GroupState::*;
        match self {
            Empty => &[PreparingRebalance],
            PreparingRebalance => &[Stable, CompletingRebalance, Empty],
            CompletingRebalance => &[PreparingRebalance],
            Stable => &[CompletingRebalance],
            Dead => &[Empty, PreparingRebalance, CompletingRebalance, Stable, Dead],
        }
    }
}

/// A parked request: answered when the join phase or the assignment completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiter {
    pub reply: Reply,
    pub version: i16,
}

/// What a JoinGroup says about the member (validated by the coordinator).
#[derive(Debug, Clone)]
pub(super) struct JoinParams {
    pub version: i16,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

impl JoinParams {
    fn protocol_names(&self) -> BTreeSet<&str> {
        self.protocols.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// In the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub awaiting_join: Option<Waiter>,
    pub awaiting_sync: Option<Waiter>,
    /// Joined during the current join phase with a fresh member id: expires after
    /// [`super::config::NEW_MEMBER_JOIN_TIMEOUT_MS`] even while waiting.
    pub is_new: bool,
    /// When the member is evicted unless it shows life; `None` while a parked request keeps
    /// it alive (rescheduled when that request is answered).
    pub session_deadline_ms: Option<i64>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn protocol_names(&self) -> BTreeSet<&str> {
        self.protocols.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Kafka's `hasSatisfiedHeartbeat` at expiry: a member waiting in a rebalance needs no
    /// heartbeat, unless it is new (it may have given up; see `NEW_MEMBER_JOIN_TIMEOUT_MS`).
    fn parked(&self) -> bool {
        !self.is_new && (self.awaiting_join.is_some() || self.awaiting_sync.is_some())
    }
}

/// The delayed completion of a join phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JoinTimer {
    /// Completes early once every member and pending member has joined.
    Delayed { deadline_ms: i64 },
    /// An empty group's first join phase (`group.initial.rebalance.delay.ms`): never completes
    /// early; extended by `configured_ms` while new members keep arriving, for at most
    /// `remaining_ms` more (Kafka's `InitialDelayedJoin`).
    Initial {
        deadline_ms: i64,
        configured_ms: i64,
        delay_ms: i64,
        remaining_ms: i64,
    },
}

impl JoinTimer {
    fn deadline_ms(self) -> i64 {
        match self {
            JoinTimer::Delayed { deadline_ms } | JoinTimer::Initial { deadline_ms, .. } => {
                deadline_ms
            }
        }
    }
}

/// A due timer of a group, fired by [`Group::fire`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    PendingMember(String),
    Session(String),
    Join,
    Sync,
}

#[derive(Debug)]
pub(super) struct Group {
    pub id: String,
    pub state: GroupState,
    previous_state: GroupState,
    pub state_timestamp_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group instance id → member id.
    pub static_members: BTreeMap<String, String>,
    /// Ids handed out by MEMBER_ID_REQUIRED, not joined yet → expiry deadline.
    pub pending_members: BTreeMap<String, i64>,
    /// Members that have not sent SyncGroup for the current generation.
    pending_sync: BTreeSet<String>,
    sync_deadline_ms: Option<i64>,
    /// Protocol name → number of members offering it.
    supported_protocols: BTreeMap<String, usize>,
    awaiting_join_count: usize,
    new_member_added: bool,
    join_timer: Option<JoinTimer>,
    /// The generation whose assignment is being persisted: a repeated leader SyncGroup must
    /// not persist a second, different assignment for the same generation (a coordinator
    /// loading the later record would hand out another assignment than the one delivered).
    assignment_stored_for: Option<i32>,
    pub offsets: BTreeMap<TopicPartition, OffsetValue>,
    /// Partitions with commits appended but not yet acknowledged, and how many.
    pub pending_commits: BTreeMap<TopicPartition, u32>,
    /// A metadata record of this group may exist in the log (so removal needs a tombstone).
    pub persisted: bool,
}

impl Group {
    pub fn new(id: String, now_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            previous_state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            sync_deadline_ms: None,
            supported_protocols: BTreeMap::new(),
            awaiting_join_count: 0,
            new_member_added: false,
            join_timer: None,
            assignment_stored_for: None,
            offsets: BTreeMap::new(),
            pending_commits: BTreeMap::new(),
            persisted: false,
        }
    }

    /// Rebuilds a group from its persisted record: stable if it had members (they keep their
    /// ids and assignments and must heartbeat within their session timeout), else empty.
    pub fn from_record(id: String, value: GroupValue, now_ms: i64) -> Group {
        let mut group = Group::new(id, value.state_timestamp_ms);
        group.protocol_type = Some(value.protocol_type.clone());
        group.generation = value.generation;
        group.persisted = true;
        if value.members.is_empty() {
            return group;
        }
        group.state = GroupState::Stable;
        group.protocol_name = value.protocol.clone();
        let protocol = value.protocol.unwrap_or_default();
        for m in value.members {
            let member = Member {
                id: m.member_id,
                instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocol_type: value.protocol_type.clone(),
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                is_new: false,
                session_deadline_ms: Some(
                    now_ms.saturating_add(i64::from(m.session_timeout_ms.max(1))),
                ),
            };
            group.add_member(member);
        }
        // The record's leader, if it is a member (add_member made the first member leader).
        if let Some(leader) = value.leader.filter(|l| group.members.contains_key(l)) {
            group.leader = Some(leader);
        }
        group
    }

    pub fn has(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    pub fn leader_or_empty(&self) -> String {
        self.leader.clone().unwrap_or_default()
    }

    pub fn has_offsets(&self) -> bool {
        !self.offsets.is_empty() || !self.pending_commits.is_empty()
    }

    /// Holds nothing worth keeping and was never written: can be dropped without a trace.
    pub fn is_vacant(&self) -> bool {
        self.state == GroupState::Empty
            && self.pending_members.is_empty()
            && !self.has_offsets()
            && !self.persisted
    }

    fn transition(&mut self, cx: &Ctx, to: GroupState) {
        assert!(
            to.valid_previous().contains(&self.state),
            "group {}: invalid transition {:?} -> {:?}",
            self.id,
            self.state,
            to
        );
        self.previous_state = self.state;
        self.state = to;
        self.state_timestamp_ms = cx.now_ms;
    }

    /// Largest rebalance timeout of the members: how long a join phase may take.
    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms.max(0)))
            .max()
            .unwrap_or(0)
    }

    // ---- membership bookkeeping (Kafka's GroupMetadata add / remove / updateMember) ----

    fn add_member(&mut self, member: Member) {
        assert!(!self.members.contains_key(&member.id));
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        for name in member.protocol_names() {
            *self
                .supported_protocols
                .entry(name.to_string())
                .or_default() += 1;
        }
        if member.awaiting_join.is_some() {
            self.awaiting_join_count += 1;
        }
        if let Some(instance) = &member.instance_id {
            self.static_members
                .insert(instance.clone(), member.id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        self.members.insert(member.id.clone(), member);
    }

    fn forget_protocols(&mut self, member_id: &str) {
        let member = &self.members[member_id];
        for name in member.protocol_names() {
            let count = self
                .supported_protocols
                .get_mut(name)
                .expect("protocol counted");
            *count -= 1;
            if *count == 0 {
                self.supported_protocols.remove(name);
            }
        }
    }

    /// Removes a member (answering any parked request of it with UNKNOWN_MEMBER_ID, so that
    /// no reply is ever left waiting), without starting a rebalance.
    fn remove_member(&mut self, cx: &mut Ctx, member_id: &str) {
        if !self.members.contains_key(member_id) {
            return;
        }
        self.forget_protocols(member_id);
        let member = self.members.remove(member_id).expect("present");
        if let Some(w) = member.awaiting_join {
            self.awaiting_join_count -= 1;
            cx.respond_join(w, join_error("", error::UNKNOWN_MEMBER_ID));
        }
        if let Some(w) = member.awaiting_sync {
            cx.respond_sync(w, SyncResult::error(error::UNKNOWN_MEMBER_ID));
        }
        if let Some(instance) = &member.instance_id {
            self.static_members.remove(instance);
        }
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        self.remove_pending_sync(member_id);
    }

    fn remove_pending_sync(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline_ms = None;
        }
    }

    fn update_member(
        &mut self,
        member_id: &str,
        params: &JoinParams,
        protocols: Vec<(String, Bytes)>,
        waiter: Waiter,
        cx: &mut Ctx,
    ) {
        self.forget_protocols(member_id);
        let member = self.members.get_mut(member_id).expect("member");
        member.protocols = protocols;
        member.rebalance_timeout_ms = params.rebalance_timeout_ms;
        member.session_timeout_ms = params.session_timeout_ms;
        match member.awaiting_join.replace(waiter) {
            // A newer JoinGroup replaces the parked one (the client gave up on it).
            Some(old) => cx.respond_join(old, join_error(member_id, error::REBALANCE_IN_PROGRESS)),
            None => self.awaiting_join_count += 1,
        }
        let names: Vec<String> = self.members[member_id]
            .protocol_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        for name in names {
            *self.supported_protocols.entry(name).or_default() += 1;
        }
    }

    /// Answers the member's parked JoinGroup, if any.
    fn complete_join_waiter(&mut self, cx: &mut Ctx, member_id: &str, result: JoinResult) {
        let member = self.members.get_mut(member_id).expect("member");
        if let Some(w) = member.awaiting_join.take() {
            self.awaiting_join_count -= 1;
            cx.respond_join(w, result);
        }
    }

    /// Answers the member's parked SyncGroup, if any; true if there was one.
    fn complete_sync_waiter(&mut self, cx: &mut Ctx, member_id: &str, result: SyncResult) -> bool {
        let member = self.members.get_mut(member_id).expect("member");
        match member.awaiting_sync.take() {
            Some(w) => {
                cx.respond_sync(w, result);
                true
            }
            None => false,
        }
    }

    /// Restarts the member's session timer (Kafka's `completeAndScheduleNextHeartbeatExpiration`).
    pub fn touch(&mut self, cx: &Ctx, member_id: &str) {
        let member = self.members.get_mut(member_id).expect("member");
        member.session_deadline_ms = Some(cx.deadline(i64::from(member.session_timeout_ms)));
    }

    // ---- protocol checks and selection ----

    /// Kafka's `supportsProtocols`: a first member needs a type and a protocol; later ones the
    /// group's type and a protocol every member offers.
    fn supports_protocols(&self, protocol_type: &str, names: &BTreeSet<&str>) -> bool {
        if self.state == GroupState::Empty {
            !protocol_type.is_empty() && !names.is_empty()
        } else {
            self.protocol_type.as_deref() == Some(protocol_type)
                && names
                    .iter()
                    .any(|n| self.supported_protocols.get(*n) == Some(&self.members.len()))
        }
    }

    /// The group's protocol for the next generation: each member votes for its most preferred
    /// protocol that every member supports; most votes wins (Kafka's `selectProtocol`). Kafka
    /// breaks ties arbitrarily; fjord takes the one the leader prefers.
    fn select_protocol(&self) -> String {
        let n = self.members.len();
        let candidates: BTreeSet<&str> = self
            .supported_protocols
            .iter()
            .filter(|(_, c)| **c == n)
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(
            !candidates.is_empty(),
            "group {} has no common protocol",
            self.id
        );
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            let vote = m
                .protocols
                .iter()
                .map(|(p, _)| p.as_str())
                .find(|p| candidates.contains(p))
                .expect("every member supports the candidates");
            *votes.entry(vote).or_default() += 1;
        }
        let most = votes.values().copied().max().expect("members");
        let leader = &self.members[self.leader.as_deref().expect("leader of a non-empty group")];
        leader
            .protocols
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| votes.get(p) == Some(&most))
            .expect("the leader supports every candidate")
            .to_string()
    }

    /// Every member's metadata for the selected protocol, for the leader's JoinGroup answer.
    fn member_metadata(&self) -> Vec<JoinGroupResponseMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .values()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(StrBytes::from_string(m.id.clone()))
                    .with_group_instance_id(m.instance_id.clone().map(StrBytes::from_string))
                    .with_metadata(m.metadata(protocol))
            })
            .collect()
    }

    fn join_result(&self, member_id: &str, members: Vec<JoinGroupResponseMember>) -> JoinResult {
        JoinResult {
            error: error::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_or_empty(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members,
        }
    }

    // ---- JoinGroup ----

    /// Kafka's `acceptJoiningMember`: new members up to the size limit, counted among those
    /// that joined this phase while rebalancing (members that do not rejoin will be dropped).
    pub fn accept_joining_member(&self, member_id: &str, group_size_max: usize) -> bool {
        match self.state {
            GroupState::Empty | GroupState::Dead => true,
            GroupState::PreparingRebalance => {
                self.members
                    .get(member_id)
                    .is_some_and(|m| m.awaiting_join.is_some())
                    || self.awaiting_join_count < group_size_max
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.has(member_id) || self.members.len() < group_size_max
            }
        }
    }

    /// A JoinGroup without a member id.
    pub fn join_new_member(&mut self, cx: &mut Ctx, params: JoinParams, waiter: Waiter) {
        if !self.supports_protocols(&params.protocol_type, &params.protocol_names()) {
            cx.respond_join(waiter, join_error("", error::INCONSISTENT_GROUP_PROTOCOL));
            return;
        }
        let prefix = params.instance_id.as_deref().unwrap_or(&params.client_id);
        let new_id = cx.new_member_id(prefix);
        match params.instance_id.clone() {
            Some(instance) => match self.static_members.get(&instance).cloned() {
                Some(old_id) => {
                    self.replace_static_member(cx, &old_id, &new_id, params, waiter);
                }
                None => self.add_member_and_rebalance(cx, new_id, params, waiter),
            },
            // JoinGroup v4+: hand out the id first, so that a client that retries after
            // a timeout comes back as the same member (KIP-394).
            None if params.version >= 4 => {
                if self.pending_members.len() >= cx.config.group_size_max {
                    cx.respond_join(waiter, join_error("", error::GROUP_MAX_SIZE_REACHED));
                    return;
                }
                let deadline = cx.deadline(i64::from(params.session_timeout_ms));
                self.pending_members.insert(new_id.clone(), deadline);
                cx.respond_join(waiter, join_error(&new_id, error::MEMBER_ID_REQUIRED));
            }
            None => self.add_member_and_rebalance(cx, new_id, params, waiter),
        }
    }

    /// A JoinGroup with a member id.
    pub fn join_known_member(
        &mut self,
        cx: &mut Ctx,
        member_id: &str,
        params: JoinParams,
        waiter: Waiter,
    ) {
        if !self.supports_protocols(&params.protocol_type, &params.protocol_names()) {
            cx.respond_join(
                waiter,
                join_error(member_id, error::INCONSISTENT_GROUP_PROTOCOL),
            );
            return;
        }
        if self.pending_members.contains_key(member_id) {
            if params.instance_id.is_some() {
                // Pending ids are only handed to dynamic members.
                cx.respond_join(waiter, join_error(member_id, error::UNKNOWN_MEMBER_ID));
                return;
            }
            self.pending_members.remove(member_id);
            self.add_member_and_rebalance(cx, member_id.to_string(), params, waiter);
            return;
        }
        if let Some(code) = self.validate_member(member_id, params.instance_id.as_deref()) {
            cx.respond_join(waiter, join_error(member_id, code));
            return;
        }
        let member = &self.members[member_id];
        let same_metadata = member.protocols == params.protocols;
        match self.state {
            GroupState::PreparingRebalance => {
                self.update_member_and_rebalance(cx, member_id, params, waiter, "member rejoined");
            }
            GroupState::CompletingRebalance if same_metadata => {
                // The member missed the JoinGroup answer: send it again.
                let members = if self.is_leader(member_id) {
                    self.member_metadata()
                } else {
                    Vec::new()
                };
                cx.respond_join(waiter, self.join_result(member_id, members));
            }
            GroupState::CompletingRebalance => {
                self.update_member_and_rebalance(cx, member_id, params, waiter, "metadata changed");
            }
            GroupState::Stable if self.is_leader(member_id) || !same_metadata => {
                // The leader rejoining forces a rebalance: it may have seen a change that
                // affects the assignment but not its metadata (new partitions of a topic).
                self.update_member_and_rebalance(
                    cx,
                    member_id,
                    params,
                    waiter,
                    "leader rejoined or metadata changed",
                );
            }
            GroupState::Stable => {
                cx.respond_join(waiter, self.join_result(member_id, Vec::new()));
            }
            GroupState::Empty | GroupState::Dead => {
                cx.respond_join(waiter, join_error(member_id, error::UNKNOWN_MEMBER_ID));
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        cx: &mut Ctx,
        member_id: String,
        params: JoinParams,
        waiter: Waiter,
    ) {
        let member = Member {
            id: member_id.clone(),
            instance_id: params.instance_id,
            client_id: params.client_id,
            client_host: params.client_host,
            rebalance_timeout_ms: params.rebalance_timeout_ms,
            session_timeout_ms: params.session_timeout_ms,
            protocol_type: params.protocol_type,
            protocols: params.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(waiter),
            awaiting_sync: None,
            is_new: true,
            session_deadline_ms: Some(cx.deadline(super::config::NEW_MEMBER_JOIN_TIMEOUT_MS)),
        };
        if self.state == GroupState::PreparingRebalance && self.previous_state == GroupState::Empty
        {
            self.new_member_added = true;
        }
        self.add_member(member);
        self.maybe_prepare_rebalance(cx, "member added");
    }

    fn update_member_and_rebalance(
        &mut self,
        cx: &mut Ctx,
        member_id: &str,
        params: JoinParams,
        waiter: Waiter,
        reason: &str,
    ) {
        let protocols = params.protocols.clone();
        self.update_member(member_id, &params, protocols, waiter, cx);
        self.maybe_prepare_rebalance(cx, reason);
    }

    /// A static member came back with a new member id: the old id is fenced (its parked
    /// requests answered FENCED_INSTANCE_ID) and the member continues under the new id.
    fn replace_static_member(
        &mut self,
        cx: &mut Ctx,
        old_id: &str,
        new_id: &str,
        params: JoinParams,
        waiter: Waiter,
    ) {
        let old_leader = self.leader_or_empty();
        let mut member = {
            self.forget_protocols(old_id);
            self.members.remove(old_id).expect("static member")
        };
        if let Some(w) = member.awaiting_join.take() {
            self.awaiting_join_count -= 1;
            cx.respond_join(w, join_error(old_id, error::FENCED_INSTANCE_ID));
        }
        if let Some(w) = member.awaiting_sync.take() {
            cx.respond_sync(w, SyncResult::error(error::FENCED_INSTANCE_ID));
        }
        member.id = new_id.to_string();
        member.protocols = Vec::new();
        member.client_id = params.client_id.clone();
        member.client_host = params.client_host.clone();
        self.static_members.insert(
            member.instance_id.clone().expect("static"),
            new_id.to_string(),
        );
        let was_leader = self.is_leader(old_id);
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.to_string());
        }
        // Re-add under the new id (the leader stays the leader, now under its new id).
        self.members.insert(new_id.to_string(), member);
        if was_leader {
            self.leader = Some(new_id.to_string());
        }
        let protocols = params.protocols.clone();
        self.update_member(new_id, &params, protocols, waiter, cx);
        self.touch(cx, new_id);
        match self.state {
            GroupState::Stable => {
                let selected = self.select_protocol();
                if self.protocol_name.as_deref() == Some(selected.as_str()) {
                    // Nothing changes for the others: persist the new id, then answer.
                    let assignment = self
                        .members
                        .values()
                        .map(|m| (m.id.clone(), m.assignment.clone()))
                        .collect();
                    let pending = PendingAppend::StaticJoin {
                        group: self.id.clone(),
                        generation: self.generation,
                        member_id: new_id.to_string(),
                        old_leader,
                    };
                    if let Err(code) = self.store(cx, &assignment, pending) {
                        self.fail_static_join(cx, new_id, code);
                    }
                } else {
                    self.prepare_rebalance(cx, "static member rejoined with other protocols");
                }
            }
            // The leader may already hold the old id's metadata: assign again.
            GroupState::CompletingRebalance => {
                self.prepare_rebalance(cx, "static member rejoined while completing");
            }
            GroupState::PreparingRebalance => {}
            GroupState::Empty | GroupState::Dead => {
                unreachable!(
                    "group {} has a static member in state {:?}",
                    self.id, self.state
                )
            }
        }
    }

    /// The replaced static member's id is durable: tell it (if the group did not move on, in
    /// which case its JoinGroup stays parked for the new join phase).
    pub fn complete_static_join(
        &mut self,
        cx: &mut Ctx,
        generation: i32,
        member_id: &str,
        old_leader: String,
        result: Result<(), i16>,
    ) {
        if self.state != GroupState::Stable || self.generation != generation {
            return;
        }
        if !self.has(member_id) {
            return;
        }
        match result {
            Ok(()) => {
                // JoinGroup v9 lets the leader skip assigning (KIP-814); before that the old
                // leader id keeps a replaced leader from assigning in a stable group, whose
                // SyncGroup would not propagate anything.
                let version = self.members[member_id]
                    .awaiting_join
                    .map(|w| w.version)
                    .unwrap_or_default();
                let is_leader = self.is_leader(member_id);
                let skip = version >= 9;
                let members = if is_leader {
                    self.member_metadata()
                } else {
                    Vec::new()
                };
                let mut result = self.join_result(member_id, members);
                if !skip {
                    result.leader = old_leader;
                }
                result.skip_assignment = skip && is_leader;
                self.complete_join_waiter(cx, member_id, result);
                self.touch(cx, member_id);
            }
            Err(code) => self.fail_static_join(cx, member_id, code),
        }
    }

    /// Kafka reverts the replacement; fjord keeps the new id (nobody knows it, so it will
    /// time out) and the client retries with a fresh JoinGroup, replacing it again.
    fn fail_static_join(&mut self, cx: &mut Ctx, member_id: &str, code: i16) {
        let mut result = join_error("", code);
        result.generation = self.generation;
        self.complete_join_waiter(cx, member_id, result);
        self.touch(cx, member_id);
    }

    pub fn maybe_prepare_rebalance(&mut self, cx: &mut Ctx, reason: &str) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(cx, reason);
        }
    }

    fn prepare_rebalance(&mut self, cx: &mut Ctx, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_and_propagate_assignment_error(cx, error::REBALANCE_IN_PROGRESS);
        }
        self.pending_sync.clear();
        self.sync_deadline_ms = None;
        let timer = if self.state == GroupState::Empty {
            let configured = i64::from(cx.config.initial_rebalance_delay_ms);
            JoinTimer::Initial {
                deadline_ms: cx.deadline(configured),
                configured_ms: configured,
                delay_ms: configured,
                remaining_ms: (self.rebalance_timeout_ms() - configured).max(0),
            }
        } else {
            JoinTimer::Delayed {
                deadline_ms: cx.deadline(self.rebalance_timeout_ms()),
            }
        };
        info!(
            group = %self.id,
            state = self.state.name(),
            generation = self.generation,
            reason,
            "preparing to rebalance"
        );
        self.transition(cx, GroupState::PreparingRebalance);
        self.join_timer = Some(timer);
        self.maybe_complete_join(cx);
    }

    fn has_all_members_joined(&self) -> bool {
        self.members.len() == self.awaiting_join_count && self.pending_members.is_empty()
    }

    /// Completes the join phase early if everyone is in (never during the initial delay).
    pub fn maybe_complete_join(&mut self, cx: &mut Ctx) {
        if self.state == GroupState::PreparingRebalance
            && matches!(self.join_timer, Some(JoinTimer::Delayed { .. }))
            && self.has_all_members_joined()
        {
            self.complete_join(cx);
        }
    }

    /// Ends the join phase: drops dynamic members that did not rejoin, starts the next
    /// generation and answers every parked JoinGroup (the leader gets everyone's metadata).
    fn complete_join(&mut self, cx: &mut Ctx) {
        assert_eq!(self.state, GroupState::PreparingRebalance);
        self.join_timer = None;
        let not_rejoined: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in &not_rejoined {
            info!(group = %self.id, member = %id, "removing member that did not rejoin");
            self.remove_member(cx, id);
        }
        if !self.maybe_elect_joined_leader() && !self.members.is_empty() {
            // Only absent static members are left: wait for them (or their session timeout).
            self.join_timer = Some(JoinTimer::Delayed {
                deadline_ms: cx.deadline(self.rebalance_timeout_ms()),
            });
            return;
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.transition(cx, GroupState::Empty);
            info!(group = %self.id, generation = self.generation, "group is now empty");
            // A failed write only means a new coordinator starts from the previous generation
            // record, whose members then time out: nothing waits on it.
            let pending = PendingAppend::Background {
                what: "empty group",
            };
            let _ = self.store(cx, &BTreeMap::new(), pending);
            return;
        }
        self.protocol_name = Some(self.select_protocol());
        self.transition(cx, GroupState::CompletingRebalance);
        self.pending_sync.clear();
        info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or_default(),
            "join phase complete"
        );
        let leader_view = self.member_metadata();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in &ids {
            let members = if self.is_leader(id) {
                leader_view.clone()
            } else {
                Vec::new()
            };
            let result = self.join_result(id, members);
            self.complete_join_waiter(cx, id, result);
            self.touch(cx, id);
            self.members.get_mut(id).expect("member").is_new = false;
            self.pending_sync.insert(id.clone());
        }
        self.sync_deadline_ms = Some(cx.deadline(self.rebalance_timeout_ms()));
    }

    /// Kafka's `maybeElectNewJoinedLeader`: keep a leader that rejoined, else pick any member
    /// that did. False if nobody rejoined.
    fn maybe_elect_joined_leader(&mut self) -> bool {
        let Some(leader) = &self.leader else {
            return false;
        };
        if self.members[leader].awaiting_join.is_some() {
            return true;
        }
        match self.members.values().find(|m| m.awaiting_join.is_some()) {
            Some(m) => {
                self.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    // ---- SyncGroup ----

    /// Kafka's `validateCurrentMember`: a static member's instance id must map to this member
    /// id (else it was replaced: FENCED_INSTANCE_ID), and the member must exist.
    pub fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
        if let Some(instance) = instance_id {
            return match self.static_members.get(instance) {
                Some(current) if current != member_id => Some(error::FENCED_INSTANCE_ID),
                Some(_) => None,
                None => Some(error::UNKNOWN_MEMBER_ID),
            };
        }
        if self.has(member_id) {
            None
        } else {
            Some(error::UNKNOWN_MEMBER_ID)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        cx: &mut Ctx,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        waiter: Waiter,
    ) {
        let invalid = self.validate_member(member_id, instance_id).or_else(|| {
            if generation != self.generation {
                Some(error::ILLEGAL_GENERATION)
            } else if protocol_type.is_some_and(|t| self.protocol_type.as_deref() != Some(t))
                || protocol_name.is_some_and(|p| self.protocol_name.as_deref() != Some(p))
            {
                Some(error::INCONSISTENT_GROUP_PROTOCOL)
            } else {
                None
            }
        });
        if let Some(code) = invalid {
            cx.respond_sync(waiter, SyncResult::error(code));
            return;
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                cx.respond_sync(waiter, SyncResult::error(error::UNKNOWN_MEMBER_ID));
            }
            GroupState::PreparingRebalance => {
                cx.respond_sync(waiter, SyncResult::error(error::REBALANCE_IN_PROGRESS));
            }
            GroupState::CompletingRebalance => {
                let member = self.members.get_mut(member_id).expect("validated");
                if let Some(old) = member.awaiting_sync.replace(waiter) {
                    cx.respond_sync(old, SyncResult::error(error::REBALANCE_IN_PROGRESS));
                }
                self.remove_pending_sync(member_id);
                if self.is_leader(member_id) && self.assignment_stored_for != Some(self.generation)
                {
                    self.store_assignment(cx, assignments);
                }
            }
            GroupState::Stable => {
                self.remove_pending_sync(member_id);
                let result = SyncResult {
                    error: error::NONE,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment: self.members[member_id].assignment.clone(),
                };
                cx.respond_sync(waiter, result);
                self.touch(cx, member_id);
            }
        }
    }

    /// The leader's assignment: persisted first, handed out once durable.
    fn store_assignment(&mut self, cx: &mut Ctx, assignments: Vec<(String, Bytes)>) {
        info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            "assignment received from the leader"
        );
        let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
        // Members the leader left out get an empty assignment; unknown ids are dropped.
        let assignment: BTreeMap<String, Bytes> = self
            .members
            .keys()
            .map(|id| (id.clone(), given.remove(id).unwrap_or_default()))
            .collect();
        let pending = PendingAppend::SyncStore {
            group: self.id.clone(),
            generation: self.generation,
            assignment: assignment.clone(),
        };
        self.assignment_stored_for = Some(self.generation);
        if let Err(code) = self.store(cx, &assignment, pending) {
            self.complete_assignment(cx, self.generation, assignment, Err(code));
        }
    }

    /// The leader's assignment was persisted (or not): hand it out, if the group is still
    /// waiting for exactly this generation's assignment.
    pub fn complete_assignment(
        &mut self,
        cx: &mut Ctx,
        generation: i32,
        assignment: BTreeMap<String, Bytes>,
        result: Result<(), i16>,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        match result {
            Ok(()) => {
                for (id, m) in self.members.iter_mut() {
                    m.assignment = assignment.get(id).cloned().unwrap_or_default();
                }
                self.propagate_assignment(cx, error::NONE);
                self.transition(cx, GroupState::Stable);
            }
            Err(code) => {
                self.reset_and_propagate_assignment_error(cx, code);
                self.maybe_prepare_rebalance(cx, "storing the assignment failed");
            }
        }
    }

    fn reset_and_propagate_assignment_error(&mut self, cx: &mut Ctx, code: i16) {
        assert_eq!(self.state, GroupState::CompletingRebalance);
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        self.propagate_assignment(cx, code);
    }

    fn propagate_assignment(&mut self, cx: &mut Ctx, code: i16) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in &ids {
            let result = if code == error::NONE {
                SyncResult {
                    error: code,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment: self.members[id].assignment.clone(),
                }
            } else {
                SyncResult::error(code)
            };
            if self.complete_sync_waiter(cx, id, result) {
                // Its session may have expired while it waited (which was ignored then).
                self.touch(cx, id);
            }
        }
    }

    /// Appends this group's metadata record with `assignment`.
    fn store(
        &mut self,
        cx: &mut Ctx,
        assignment: &BTreeMap<String, Bytes>,
        pending: PendingAppend,
    ) -> Result<(), i16> {
        let value = self.record(assignment);
        self.persisted = true;
        cx.append_group(&self.id, Some(value), pending)
    }

    fn record(&self, assignment: &BTreeMap<String, Bytes>) -> GroupValue {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(protocol),
                    assignment: assignment.get(&m.id).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }

    // ---- Heartbeat, LeaveGroup, commits ----

    /// Heartbeat of a validated group (the coordinator checked load state and existence).
    pub fn heartbeat(
        &mut self,
        cx: &mut Ctx,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if let Some(code) = self.validate_member(member_id, instance_id) {
            return code;
        }
        if generation != self.generation {
            return error::ILLEGAL_GENERATION;
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => error::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => {
                self.touch(cx, member_id);
                error::REBALANCE_IN_PROGRESS
            }
            // Members may heartbeat between their JoinGroup and SyncGroup answers.
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(cx, member_id);
                error::NONE
            }
        }
    }

    /// One leaving member of a LeaveGroup: by member id, or by instance id alone (the admin
    /// removal of a static member).
    pub fn leave(&mut self, cx: &mut Ctx, member_id: &str, instance_id: Option<&str>) -> i16 {
        if member_id.is_empty() {
            return match instance_id.and_then(|i| self.static_members.get(i).cloned()) {
                Some(current) => {
                    self.remove_member_and_update(cx, &current, "static member removed");
                    error::NONE
                }
                None => error::UNKNOWN_MEMBER_ID,
            };
        }
        if self.pending_members.remove(member_id).is_some() {
            self.maybe_complete_join(cx);
            return error::NONE;
        }
        if let Some(code) = self.validate_member(member_id, instance_id) {
            return code;
        }
        self.remove_member_and_update(cx, member_id, "member left");
        error::NONE
    }

    /// Removes a member and rebalances (or finishes the join phase without it).
    fn remove_member_and_update(&mut self, cx: &mut Ctx, member_id: &str, reason: &str) {
        info!(group = %self.id, member = %member_id, reason, "removing member");
        self.remove_member(cx, member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(cx, reason);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(cx),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Kafka's `validateOffsetCommit` for a group that exists: members commit with their
    /// generation; a request without member id and generation (-1) is a standalone commit,
    /// allowed only while the group has no members.
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<i16> {
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            let invalid = self.validate_member(member_id, instance_id);
            if invalid.is_some() {
                invalid
            } else if generation != self.generation {
                Some(error::ILLEGAL_GENERATION)
            } else {
                None
            }
        } else if self.state != GroupState::Empty {
            Some(error::UNKNOWN_MEMBER_ID)
        } else {
            None
        }
    }

    // ---- timers ----

    /// Timers of this group due at `now_ms`, with their deadlines.
    pub fn due_timers(&self, now_ms: i64, due: &mut Vec<(i64, Timer)>) {
        for (id, deadline) in &self.pending_members {
            if *deadline <= now_ms {
                due.push((*deadline, Timer::PendingMember(id.clone())));
            }
        }
        for m in self.members.values() {
            if let Some(deadline) = m.session_deadline_ms.filter(|d| *d <= now_ms) {
                due.push((deadline, Timer::Session(m.id.clone())));
            }
        }
        if let Some(deadline) = self.join_timer.map(JoinTimer::deadline_ms) {
            if deadline <= now_ms {
                due.push((deadline, Timer::Join));
            }
        }
        if let Some(deadline) = self.sync_deadline_ms.filter(|d| *d <= now_ms) {
            due.push((deadline, Timer::Sync));
        }
    }

    /// Fires `timer` if it is still scheduled for `deadline` (an earlier timer may have
    /// changed things).
    pub fn fire(&mut self, cx: &mut Ctx, timer: &Timer, deadline: i64) {
        match timer {
            Timer::PendingMember(id) => {
                if self.pending_members.get(id) == Some(&deadline) {
                    info!(group = %self.id, member = %id, "pending member expired");
                    self.pending_members.remove(id);
                    self.maybe_complete_join(cx);
                }
            }
            Timer::Session(id) => {
                let Some(member) = self.members.get_mut(id) else {
                    return;
                };
                if member.session_deadline_ms != Some(deadline) {
                    return;
                }
                if member.parked() {
                    member.session_deadline_ms = None;
                } else {
                    self.remove_member_and_update(cx, id, "session timeout");
                }
            }
            Timer::Join => {
                if self.join_timer.map(JoinTimer::deadline_ms) == Some(deadline) {
                    self.on_join_timer(cx);
                }
            }
            Timer::Sync => {
                if self.sync_deadline_ms == Some(deadline) {
                    self.on_sync_timer(cx);
                }
            }
        }
    }

    fn on_join_timer(&mut self, cx: &mut Ctx) {
        match self.join_timer.expect("join timer") {
            JoinTimer::Initial {
                configured_ms,
                delay_ms,
                remaining_ms,
                ..
            } if self.new_member_added && remaining_ms != 0 => {
                self.new_member_added = false;
                let delay = configured_ms.min(remaining_ms);
                self.join_timer = Some(JoinTimer::Initial {
                    deadline_ms: cx.deadline(delay),
                    configured_ms,
                    delay_ms: delay,
                    remaining_ms: (remaining_ms - delay_ms).max(0),
                });
            }
            _ => self.complete_join(cx),
        }
    }

    /// Members that did not send SyncGroup within the rebalance timeout are dropped.
    fn on_sync_timer(&mut self, cx: &mut Ctx) {
        self.sync_deadline_ms = None;
        let missing: Vec<String> = std::mem::take(&mut self.pending_sync).into_iter().collect();
        if missing.is_empty() {
            return;
        }
        for id in &missing {
            info!(group = %self.id, member = %id, "removing member that did not sync");
            self.remove_member(cx, id);
        }
        self.maybe_prepare_rebalance(cx, "members did not sync");
    }

    /// Consistency of the bookkeeping (checked after every call in tests).
    #[cfg(test)]
    pub fn assert_invariants(&self) {
        assert_ne!(self.state, GroupState::Dead);
        let awaiting = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_some())
            .count();
        assert_eq!(awaiting, self.awaiting_join_count, "group {}", self.id);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.members.values() {
            for n in m.protocol_names() {
                *counts.entry(n.to_string()).or_default() += 1;
            }
        }
        assert_eq!(counts, self.supported_protocols, "group {}", self.id);
        match &self.leader {
            Some(l) => assert!(self.members.contains_key(l), "group {}", self.id),
            None => assert!(self.members.is_empty(), "group {}", self.id),
        }
        for (instance, id) in &self.static_members {
            assert_eq!(
                self.members[id].instance_id.as_deref(),
                Some(instance.as_str())
            );
        }
        let statics = self
            .members
            .values()
            .filter(|m| m.instance_id.is_some())
            .count();
        assert_eq!(statics, self.static_members.len());
        if self.state == GroupState::Empty {
            assert!(self.members.is_empty(), "group {}", self.id);
        }
        if self.members.is_empty() {
            assert!(matches!(
                self.state,
                GroupState::Empty | GroupState::PreparingRebalance
            ));
        }
        assert_eq!(
            self.join_timer.is_some(),
            self.state == GroupState::PreparingRebalance,
            "group {} in {:?}",
            self.id,
            self.state
        );
        for id in &self.pending_sync {
            assert!(self.members.contains_key(id));
        }
        assert_eq!(
            self.sync_deadline_ms.is_some(),
            !self.pending_sync.is_empty()
        );
        if !self.pending_sync.is_empty() {
            assert!(matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ));
        }
        for m in self.members.values() {
            if m.awaiting_sync.is_some() {
                assert_eq!(self.state, GroupState::CompletingRebalance);
            }
            if m.awaiting_join.is_some() {
                assert!(matches!(
                    self.state,
                    GroupState::PreparingRebalance | GroupState::Stable
                ));
            }
        }
        if matches!(
            self.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            assert!(self.protocol_name.is_some());
        }
    }
}
