//! Hosting consumer-group coordinators: one [`GroupCoordinator`] per `__consumer_offsets`
//! partition this node leads. A new leader loads the partition once its own no-op is
//! committed (so it holds everything any earlier leader committed), then serves; what the
//! coordinator appends (offset commits, assignments) is proposed to the partition's Raft
//! group and reported back once committed; losing leadership resigns the coordinator, which
//! answers whatever was waiting with NOT_COORDINATOR.

use std::collections::BTreeMap;

use bytes::BytesMut;
use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::{RaftLog, Role, Term};
use futures::channel::oneshot;
use kafka_protocol::messages::describe_groups_response::{DescribeGroupsResponse, DescribedGroup};
use kafka_protocol::messages::list_groups_response::ListGroupsResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    OffsetFetchRequest, RequestKind, ResponseKind, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{read_batches, Node};
use crate::controller;
use crate::group::{ClientInfo, GroupCoordinator, Output, Reply};
use crate::kafka::server::RequestContext;

/// How often coordinators are ticked (session and rebalance timeouts).
const COORDINATOR_TICK_INTERVAL_MS: u64 = 100;

/// A coordinator hosted here, for one term of leadership of its partition.
pub(crate) struct HostedCoordinator {
    term: Term,
    coordinator: GroupCoordinator,
    loaded: bool,
    /// Appends proposed for the coordinator: `(end offset, token)` in proposal order.
    appends: Vec<(u64, u64)>,
}

/// Coordinator state of the node.
#[derive(Default)]
pub(crate) struct Coordinators {
    hosted: BTreeMap<u32, HostedCoordinator>,
    replies: BTreeMap<Reply, oneshot::Sender<Option<ResponseKind>>>,
    next_reply: Reply,
    next_tick_ms: u64,
}

impl Coordinators {
    /// Committed offsets of every group coordinated here (loaded coordinators only):
    /// `(group, topic, partition, offset)`.
    pub(super) fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        self.hosted
            .values()
            .filter(|h| h.loaded)
            .flat_map(|h| h.coordinator.committed_offsets())
            .map(|(g, t, p, o)| (g.to_string(), t.to_string(), p, o))
            .collect()
    }
}

impl Node {
    /// The `__consumer_offsets` topic: its fjord topic number and partition count.
    fn offsets_topic(&self) -> Option<(u32, u32)> {
        self.image
            .topic(controller::CONSUMER_OFFSETS_TOPIC)
            .map(|t| (t.topic_id, t.partitions.len() as u32))
    }

    /// Starts, loads, ticks and resigns coordinators to follow the leadership of the
    /// `__consumer_offsets` partitions, and completes their committed appends.
    pub(super) fn step_coordinators(&mut self) {
        let Some((topic, partitions)) = self.offsets_topic() else {
            return;
        };
        let now = self.now_ms();
        for p in 0..partitions {
            let group = GroupId::new(topic, p);
            let leading = self
                .multi
                .group(group)
                .filter(|r| r.role() == Role::Leader)
                .map(|r| r.term());
            let hosted_term = self.coordinators.hosted.get(&p).map(|h| h.term);
            if hosted_term.is_some() && hosted_term != leading {
                let h = self.coordinators.hosted.remove(&p).expect("hosted");
                tracing::info!(node = %self.id(), partition = p, "group coordinator resigned");
                let outputs = h.coordinator.resign();
                self.deliver_group_outputs(p, group, outputs);
            }
            if let Some(term) = leading {
                if !self.coordinators.hosted.contains_key(&p) {
                    let seed =
                        self.cfg.seed ^ (u64::from(p) << 32) ^ term.wrapping_mul(0x9e37_79b9);
                    self.coordinators.hosted.insert(
                        p,
                        HostedCoordinator {
                            term,
                            coordinator: GroupCoordinator::new(p, seed, self.cfg.group.clone()),
                            loaded: false,
                            appends: Vec::new(),
                        },
                    );
                }
                self.load_coordinator(p, group, term);
                self.complete_appends(p, group);
            }
        }
        if now >= self.coordinators.next_tick_ms {
            self.coordinators.next_tick_ms = now + COORDINATOR_TICK_INTERVAL_MS;
            let parts: Vec<u32> = self.coordinators.hosted.keys().copied().collect();
            for p in parts {
                if let Some(h) = self.coordinators.hosted.get_mut(&p) {
                    if h.loaded {
                        h.coordinator.tick(now as i64);
                    }
                    let outputs = h.coordinator.take_output();
                    self.deliver_group_outputs(p, GroupId::new(topic, p), outputs);
                }
            }
        }
    }

    /// Loads a new leader's coordinator once the leader's first entry is committed.
    fn load_coordinator(&mut self, p: u32, group: GroupId, term: Term) {
        if self.coordinators.hosted.get(&p).is_none_or(|h| h.loaded) {
            return;
        }
        let Some(r) = self.multi.group(group) else {
            return;
        };
        let commit = r.commit_end();
        if commit == 0 || r.log().term_at(commit - 1) != Some(term) {
            return;
        }
        let chunks = match read_batches(&self.multi, group, 0, commit) {
            Ok(chunks) => chunks,
            Err(e) => {
                self.local_read_failed(group, &e);
                return;
            }
        };
        let now = self.now_ms() as i64;
        let h = self.coordinators.hosted.get_mut(&p).expect("hosted");
        for chunk in chunks {
            if let Err(e) = h.coordinator.load(&chunk) {
                tracing::error!(node = %self.cfg.node_id, partition = p, "group state unreadable: {e}");
            }
        }
        h.coordinator.loaded(now);
        h.loaded = true;
        tracing::info!(node = %self.cfg.node_id, partition = p, term, commit, "group coordinator loaded");
        let outputs = h.coordinator.take_output();
        self.deliver_group_outputs(p, group, outputs);
    }

    /// Reports the coordinator's committed appends (in order), or their failure.
    fn complete_appends(&mut self, p: u32, group: GroupId) {
        let Some(r) = self.multi.group(group) else {
            return;
        };
        let commit = r.commit_end();
        let term = r.term();
        let now = self.now_ms() as i64;
        let Some(h) = self.coordinators.hosted.get_mut(&p) else {
            return;
        };
        let mut done = Vec::new();
        while let Some(&(end, token)) = h.appends.first() {
            if commit < end {
                break;
            }
            let ours = r.log().term_at(end - 1) == Some(h.term) && term == h.term;
            h.appends.remove(0);
            done.push((token, ours));
        }
        for (token, ours) in done {
            let result = if ours {
                Ok(())
            } else {
                Err(ResponseError::NotLeaderOrFollower.code())
            };
            h.coordinator.on_appended(now, token, result);
        }
        let outputs = h.coordinator.take_output();
        self.deliver_group_outputs(p, group, outputs);
    }

    fn deliver_group_outputs(&mut self, p: u32, group: GroupId, outputs: Vec<Output>) {
        for out in outputs {
            match out {
                Output::Respond { reply, response } => {
                    if let Some(tx) = self.coordinators.replies.remove(&reply) {
                        let _ = tx.send(Some(response));
                    }
                }
                Output::Append { token, batch } => {
                    let result = self.multi.propose(group, BytesMut::from(&batch[..]));
                    let now = self.now_ms() as i64;
                    match result {
                        Ok((_, end)) => {
                            if let Some(h) = self.coordinators.hosted.get_mut(&p) {
                                h.appends.push((end, token));
                            }
                        }
                        Err(_) => {
                            if let Some(h) = self.coordinators.hosted.get_mut(&p) {
                                h.coordinator.on_appended(
                                    now,
                                    token,
                                    Err(ResponseError::NotLeaderOrFollower.code()),
                                );
                                let more = h.coordinator.take_output();
                                self.deliver_group_outputs(p, group, more);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The hosted coordinator of `group_id`, if this node coordinates it.
    fn coordinator_partition(&self, group_id: &str) -> Option<u32> {
        let (_, partitions) = self.offsets_topic()?;
        let p = controller::group_coordinator_partition(group_id, partitions);
        self.coordinators.hosted.contains_key(&p).then_some(p)
    }

    fn new_reply(&mut self, tx: oneshot::Sender<Option<ResponseKind>>) -> Reply {
        let r = self.coordinators.next_reply;
        self.coordinators.next_reply += 1;
        self.coordinators.replies.insert(r, tx);
        r
    }

    /// Routes a group API request to the coordinator hosted here, or answers
    /// NOT_COORDINATOR (the client looks the coordinator up again).
    pub(super) fn on_group_request(
        &mut self,
        ctx: RequestContext,
        version: i16,
        request: RequestKind,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let now = self.now_ms() as i64;
        let not_coordinator = ResponseError::NotCoordinator.code();
        let client = ClientInfo {
            client_id: ctx.client_id.clone().unwrap_or_default(),
            client_host: format!(
                "/{}",
                ctx.peer
                    .rsplit_once(':')
                    .map_or(ctx.peer.as_str(), |(h, _)| h)
            ),
        };
        let single = |req: &RequestKind| -> Option<String> {
            match req {
                RequestKind::JoinGroup(r) => Some(r.group_id.0.to_string()),
                RequestKind::SyncGroup(r) => Some(r.group_id.0.to_string()),
                RequestKind::Heartbeat(r) => Some(r.group_id.0.to_string()),
                RequestKind::LeaveGroup(r) => Some(r.group_id.0.to_string()),
                RequestKind::OffsetCommit(r) => Some(r.group_id.0.to_string()),
                _ => None,
            }
        };
        if let Some(group_id) = single(&request) {
            let Some(p) = self.coordinator_partition(&group_id) else {
                let _ = reply.send(Some(not_coordinator_response(&request, not_coordinator)));
                return;
            };
            let token = self.new_reply(reply);
            let h = self.coordinators.hosted.get_mut(&p).expect("hosted");
            let c = &mut h.coordinator;
            match request {
                RequestKind::JoinGroup(r) => c.join(now, version, r, &client, token),
                RequestKind::SyncGroup(r) => c.sync(now, version, r, token),
                RequestKind::Heartbeat(r) => c.heartbeat(now, version, r, token),
                RequestKind::LeaveGroup(r) => c.leave(now, version, r, token),
                RequestKind::OffsetCommit(r) => c.commit_offsets(now, version, r, token),
                _ => unreachable!("single-group requests only"),
            }
            let outputs = c.take_output();
            let offsets_topic = self.offsets_topic().map_or(0, |(t, _)| t);
            self.deliver_group_outputs(p, GroupId::new(offsets_topic, p), outputs);
            return;
        }
        let response = match request {
            RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(self.offset_fetch(version, r)),
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(self.describe_groups(version, r))
            }
            RequestKind::ListGroups(r) => {
                let mut resp = ListGroupsResponse::default();
                for h in self.coordinators.hosted.values() {
                    let part = h.coordinator.list_groups(version, &r);
                    if part.error_code != 0 && resp.error_code == 0 {
                        resp.error_code = part.error_code;
                    }
                    resp.groups.extend(part.groups);
                }
                ResponseKind::ListGroups(resp)
            }
            other => {
                tracing::debug!(node = %self.id(), api = ?crate::kafka::codec::request_api_key(&other).ok(), "request not served");
                let _ = reply.send(None);
                return;
            }
        };
        let _ = reply.send(Some(response));
    }

    fn offset_fetch(&self, version: i16, req: OffsetFetchRequest) -> OffsetFetchResponse {
        if version < 8 {
            return match self.coordinator_partition(&req.group_id.0) {
                Some(p) => self.coordinators.hosted[&p]
                    .coordinator
                    .fetch_offsets(version, &req),
                None => {
                    let mut r = OffsetFetchResponse::default();
                    r.error_code = ResponseError::NotCoordinator.code();
                    r
                }
            };
        }
        let mut resp = OffsetFetchResponse::default();
        for g in &req.groups {
            match self.coordinator_partition(&g.group_id.0) {
                Some(p) => {
                    let mut sub = req.clone();
                    sub.groups = vec![g.clone()];
                    let part = self.coordinators.hosted[&p]
                        .coordinator
                        .fetch_offsets(version, &sub);
                    resp.groups.extend(part.groups);
                }
                None => {
                    let mut e = OffsetFetchResponseGroup::default();
                    e.group_id = g.group_id.clone();
                    e.error_code = ResponseError::NotCoordinator.code();
                    resp.groups.push(e);
                }
            }
        }
        resp
    }

    fn describe_groups(&self, version: i16, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let mut resp = DescribeGroupsResponse::default();
        for g in &req.groups {
            match self.coordinator_partition(&g.0) {
                Some(p) => {
                    let mut sub = req.clone();
                    sub.groups = vec![g.clone()];
                    let part = self.coordinators.hosted[&p]
                        .coordinator
                        .describe_groups(version, &sub);
                    resp.groups.extend(part.groups);
                }
                None => {
                    let mut d = DescribedGroup::default();
                    d.group_id = g.clone();
                    d.error_code = ResponseError::NotCoordinator.code();
                    d.group_state = StrBytes::default();
                    resp.groups.push(d);
                }
            }
        }
        resp
    }
}

/// The NOT_COORDINATOR answer to a single-group request.
fn not_coordinator_response(request: &RequestKind, code: i16) -> ResponseKind {
    match request {
        RequestKind::JoinGroup(r) => {
            let mut resp = JoinGroupResponse::default();
            resp.error_code = code;
            resp.generation_id = -1;
            resp.member_id = r.member_id.clone();
            ResponseKind::JoinGroup(resp)
        }
        RequestKind::SyncGroup(_) => {
            let mut resp = SyncGroupResponse::default();
            resp.error_code = code;
            ResponseKind::SyncGroup(resp)
        }
        RequestKind::Heartbeat(_) => {
            let mut resp = HeartbeatResponse::default();
            resp.error_code = code;
            ResponseKind::Heartbeat(resp)
        }
        RequestKind::LeaveGroup(_) => {
            let mut resp = LeaveGroupResponse::default();
            resp.error_code = code;
            ResponseKind::LeaveGroup(resp)
        }
        RequestKind::OffsetCommit(r) => {
            let mut resp = OffsetCommitResponse::default();
            for t in &r.topics {
                let mut rt = OffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.topic_id = t.topic_id;
                for p in &t.partitions {
                    let mut rp = OffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            ResponseKind::OffsetCommit(resp)
        }
        _ => unreachable!("single-group requests only"),
    }
}
