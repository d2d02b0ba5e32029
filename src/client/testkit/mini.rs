//! [`MiniCluster`]: a few brokers in memory with logs, idempotence checks, a group
//! coordinator and scripted faults — just enough Kafka to test the client's protocol
//! exchanges.

use std::collections::{BTreeMap, VecDeque};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fjord_replication::{BoxFuture, Clock};
use futures::channel::oneshot;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, FindCoordinatorResponse, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupResponse, ListOffsetsResponse,
    OffsetCommitResponse, OffsetFetchResponse, ResponseKind, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{metadata_response, FnHandler, StubNetwork, VirtualClock};
use crate::kafka::codec::DecodedRequest;
use crate::kafka::server::RequestContext;

/// What the next Produce request meets (then the fault is used up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Append, then never answer (the client times out not knowing).
    AppendThenHang,
    /// Answer every partition with this error code, append nothing.
    Error(i16),
}

type Tp = (String, i32);
/// An idempotent producer on one partition: epoch, last sequence, base offset by base
/// sequence.
type ProducerEntry = (i16, i32, BTreeMap<i32, i64>);

#[derive(Default)]
pub(crate) struct MiniState {
    pub(crate) partitions: BTreeMap<String, i32>,
    /// Stored batches per partition, with their base offsets.
    pub(crate) logs: BTreeMap<Tp, Vec<(i64, bytes::Bytes)>>,
    /// Per (producer id, partition): epoch, last sequence, and base offset by base sequence.
    producers: BTreeMap<(i64, Tp), ProducerEntry>,
    next_producer_id: i64,
    pub(crate) leader: i32,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) produce_requests: usize,
    pub(crate) metadata_requests: usize,
    /// Metadata requests answered UNKNOWN_TOPIC_OR_PARTITION before topics appear.
    pub(crate) hide_topics_for: usize,
    /// Offsets below this were deleted (Fetch below it is OFFSET_OUT_OF_RANGE).
    pub(crate) log_start: i64,
    pub(crate) groups: BTreeMap<String, GroupStub>,
}

/// A tiny broker cluster for client tests: partitions of topics with an in-memory log,
/// Kafka's idempotent sequence checks, one leader for everything, and scripted faults.
/// `brokers` are (node id, address); a broker that is not the leader answers Produce with
/// NOT_LEADER_OR_FOLLOWER.
pub(crate) struct MiniCluster {
    pub(crate) brokers: Vec<(i32, String)>,
    pub(crate) state: Mutex<MiniState>,
    clock: VirtualClock,
}

impl MiniCluster {
    pub(crate) fn start(
        net: &StubNetwork,
        clock: &VirtualClock,
        brokers: &[(i32, &str)],
        topics: &[(&str, i32)],
    ) -> Arc<MiniCluster> {
        let cluster = Arc::new(MiniCluster {
            clock: clock.clone(),
            brokers: brokers.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            state: Mutex::new(MiniState {
                partitions: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
                leader: brokers[0].0,
                next_producer_id: 1000,
                ..MiniState::default()
            }),
        });
        for (node, addr) in brokers {
            let c = cluster.clone();
            let node = *node;
            net.serve(
                addr,
                Arc::new(FnHandler(
                    move |_ctx: RequestContext, req: DecodedRequest| c.handle(node, req),
                )),
            );
        }
        cluster
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, MiniState> {
        self.state.lock().expect("mini cluster")
    }

    /// Values stored in `topic`-`partition`, in offset order.
    pub(crate) fn values(&self, topic: &str, partition: i32) -> Vec<(i64, Option<bytes::Bytes>)> {
        let state = self.state();
        let mut out = Vec::new();
        for (_, batch) in state
            .logs
            .get(&(topic.to_string(), partition))
            .into_iter()
            .flatten()
        {
            for r in fjord_log::decode_records(batch).expect("stored batch decodes") {
                out.push((r.offset as i64, r.value));
            }
        }
        out
    }

    fn handle(
        self: &Arc<Self>,
        node: i32,
        req: DecodedRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        use kafka_protocol::messages::RequestKind;
        match req.body {
            RequestKind::Metadata(_) => {
                let mut s = self.state();
                s.metadata_requests += 1;
                let hide = s.hide_topics_for > 0;
                s.hide_topics_for = s.hide_topics_for.saturating_sub(1);
                let brokers: Vec<(i32, &str)> =
                    self.brokers.iter().map(|(i, a)| (*i, a.as_str())).collect();
                let leaders: Vec<(String, Vec<i32>)> = s
                    .partitions
                    .iter()
                    .map(|(t, n)| (t.clone(), vec![s.leader; *n as usize]))
                    .collect();
                let topics: Vec<(&str, &[i32])> = leaders
                    .iter()
                    .map(|(t, l)| (t.as_str(), l.as_slice()))
                    .collect();
                let mut response = metadata_response(&brokers, if hide { &[] } else { &topics });
                if hide {
                    for (t, _) in &leaders {
                        response.topics.push(
                            MetadataResponseTopic::default()
                                .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                                .with_error_code(3),
                        );
                    }
                }
                ready(ResponseKind::Metadata(response))
            }
            RequestKind::InitProducerId(_) => {
                let mut s = self.state();
                let id = s.next_producer_id;
                s.next_producer_id += 1;
                ready(ResponseKind::InitProducerId(
                    kafka_protocol::messages::InitProducerIdResponse::default()
                        .with_producer_id(kafka_protocol::messages::ProducerId(id))
                        .with_producer_epoch(0),
                ))
            }
            RequestKind::Produce(p) => self.produce(node, p),
            RequestKind::Fetch(f) => self.fetch(f),
            RequestKind::ListOffsets(l) => {
                let s = self.state();
                let topics = l
                    .topics
                    .iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let tp = (t.name.0.to_string(), p.partition_index);
                                let offset = match p.timestamp {
                                    -2 => s.log_start,
                                    _ => s.end_offset(&tp),
                                };
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_offset(offset)
                                    .with_timestamp(-1)
                            })
                            .collect();
                        ListOffsetsTopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(partitions)
                    })
                    .collect();
                ready(ResponseKind::ListOffsets(
                    ListOffsetsResponse::default().with_topics(topics),
                ))
            }
            RequestKind::FindCoordinator(f) => {
                let (host, port) = self.brokers[0].1.rsplit_once(':').expect("host:port");
                let port: i32 = port.parse().expect("port");
                let mut r = FindCoordinatorResponse::default();
                if req.api_version >= 4 {
                    r.coordinators = f
                        .coordinator_keys
                        .iter()
                        .map(|k| {
                            Coordinator::default()
                                .with_key(k.clone())
                                .with_node_id(BrokerId(self.brokers[0].0))
                                .with_host(StrBytes::from_string(host.to_string()))
                                .with_port(port)
                        })
                        .collect();
                } else {
                    r = r
                        .with_node_id(BrokerId(self.brokers[0].0))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(port);
                }
                ready(ResponseKind::FindCoordinator(r))
            }
            RequestKind::JoinGroup(j) => {
                let rx = self.group(&j.group_id.0).join(&j, req.api_version);
                Box::pin(async move { rx.await.ok().map(ResponseKind::JoinGroup) })
            }
            RequestKind::SyncGroup(sync) => {
                let rx = self.group(&sync.group_id.0).sync(&sync);
                Box::pin(async move { rx.await.ok().map(ResponseKind::SyncGroup) })
            }
            RequestKind::Heartbeat(h) => {
                let mut s = self.state();
                let g = s.groups.entry(h.group_id.0.to_string()).or_default();
                let code = g.heartbeat(&h.member_id, h.generation_id);
                ready(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(code),
                ))
            }
            RequestKind::LeaveGroup(l) => {
                let mut s = self.state();
                let g = s.groups.entry(l.group_id.0.to_string()).or_default();
                let mut ids: Vec<String> =
                    l.members.iter().map(|m| m.member_id.to_string()).collect();
                if !l.member_id.is_empty() {
                    ids.push(l.member_id.to_string());
                }
                for id in ids {
                    g.leave(&id);
                }
                ready(ResponseKind::LeaveGroup(LeaveGroupResponse::default()))
            }
            RequestKind::OffsetCommit(c) => {
                let mut s = self.state();
                let g = s.groups.entry(c.group_id.0.to_string()).or_default();
                let code = g.commit_check(&c.member_id, c.generation_id_or_member_epoch);
                let topics = c
                    .topics
                    .iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                if code == 0 {
                                    g.offsets.insert(
                                        (t.name.0.to_string(), p.partition_index),
                                        p.committed_offset,
                                    );
                                }
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect();
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(partitions)
                    })
                    .collect();
                ready(ResponseKind::OffsetCommit(
                    OffsetCommitResponse::default().with_topics(topics),
                ))
            }
            RequestKind::OffsetFetch(f) => {
                let mut s = self.state();
                let groups = f
                    .groups
                    .iter()
                    .map(|g| {
                        let stub = s.groups.entry(g.group_id.0.to_string()).or_default();
                        let topics = g
                            .topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                let partitions = t
                                    .partition_indexes
                                    .iter()
                                    .map(|p| {
                                        let offset = stub
                                            .offsets
                                            .get(&(t.name.0.to_string(), *p))
                                            .copied()
                                            .unwrap_or(-1);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(offset)
                                    })
                                    .collect();
                                OffsetFetchResponseTopics::default()
                                    .with_name(t.name.clone())
                                    .with_partitions(partitions)
                            })
                            .collect();
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_topics(topics)
                    })
                    .collect();
                ready(ResponseKind::OffsetFetch(
                    OffsetFetchResponse::default().with_groups(groups),
                ))
            }
            other => panic!("mini cluster: unexpected request {other:?}"),
        }
    }

    fn group(&self, id: &str) -> GroupHandle<'_> {
        GroupHandle {
            cluster: self,
            id: id.to_string(),
        }
    }

    /// Everything stored from the batch holding `fetch_offset` on; an empty answer waits
    /// out the request's max wait first (long polling, without waking early).
    fn fetch(&self, request: FetchRequest) -> BoxFuture<'static, Option<ResponseKind>> {
        let s = self.state();
        let mut any = false;
        let topics: Vec<FetchableTopicResponse> = request
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let tp = (t.topic.0.to_string(), p.partition);
                        let end = s.end_offset(&tp);
                        let data = PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_high_watermark(end)
                            .with_log_start_offset(s.log_start);
                        if p.fetch_offset < s.log_start || p.fetch_offset > end {
                            any = true;
                            return data.with_error_code(1);
                        }
                        let mut bytes = Vec::new();
                        for (base, batch) in s.logs.get(&tp).into_iter().flatten() {
                            let h = fjord_log::BatchHeader::parse(batch).expect("stored");
                            if base + i64::from(h.last_offset_delta) >= p.fetch_offset {
                                bytes.extend_from_slice(batch);
                            }
                        }
                        any |= !bytes.is_empty();
                        data.with_records(Some(Bytes::from(bytes)))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions)
            })
            .collect();
        let response = ResponseKind::Fetch(FetchResponse::default().with_responses(topics));
        if any {
            return ready(response);
        }
        let wait = self.clock.sleep(std::time::Duration::from_millis(
            request.max_wait_ms.max(0) as u64
        ));
        Box::pin(async move {
            wait.await;
            Some(response)
        })
    }

    fn produce(
        &self,
        node: i32,
        request: kafka_protocol::messages::ProduceRequest,
    ) -> BoxFuture<'static, Option<ResponseKind>> {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let mut s = self.state();
        s.produce_requests += 1;
        let fault = s.faults.pop_front();
        let not_leader = node != s.leader;
        let mut topics = Vec::new();
        for t in &request.topic_data {
            let mut partitions = Vec::new();
            for p in &t.partition_data {
                let tp: Tp = (t.name.0.to_string(), p.index);
                let (code, base) = match fault {
                    _ if not_leader => (6, -1),
                    Some(Fault::Error(code)) => (code, -1),
                    _ => s.append(&tp, p.records.clone().expect("records")),
                };
                partitions.push(
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(code)
                        .with_base_offset(base)
                        .with_log_append_time_ms(-1),
                );
            }
            topics.push(
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(partitions),
            );
        }
        if request.acks == 0 {
            return Box::pin(futures::future::ready(None));
        }
        let response = ResponseKind::Produce(
            kafka_protocol::messages::ProduceResponse::default().with_responses(topics),
        );
        match fault {
            Some(Fault::AppendThenHang) if !not_leader => Box::pin(futures::future::pending()),
            _ => ready(response),
        }
    }
}

impl MiniState {
    /// The next offset of `tp`.
    pub(crate) fn end_offset(&self, tp: &Tp) -> i64 {
        self.logs
            .get(tp)
            .and_then(|l| l.last())
            .map_or(0, |(base, b)| {
                let h = fjord_log::BatchHeader::parse(b).expect("stored");
                base + i64::from(h.last_offset_delta) + 1
            })
    }

    /// Appends a batch with Kafka's idempotence checks: (error code, base offset).
    fn append(&mut self, tp: &Tp, batch: bytes::Bytes) -> (i16, i64) {
        if self.partitions.get(&tp.0).is_none_or(|n| tp.1 >= *n) {
            return (3, -1);
        }
        let header = fjord_log::BatchHeader::validate_produced(&batch).expect("valid batch");
        let count = header.records_count;
        let log = self.logs.entry(tp.clone()).or_default();
        let next = log.last().map_or(0, |(base, b)| {
            let h = fjord_log::BatchHeader::parse(b).expect("stored");
            base + i64::from(h.last_offset_delta) + 1
        });
        if header.producer_id >= 0 {
            let key = (header.producer_id, tp.clone());
            let seq = header.base_sequence;
            match self.producers.get(&key) {
                Some((epoch, _, _)) if header.producer_epoch < *epoch => return (47, -1),
                Some((epoch, last, bases)) if header.producer_epoch == *epoch => {
                    if let Some(base) = bases.get(&seq) {
                        return (0, *base);
                    }
                    if seq != last + 1 {
                        return (45, -1);
                    }
                }
                Some(_) if seq != 0 => return (45, -1),
                _ => {}
            }
            let entry =
                self.producers
                    .entry(key)
                    .or_insert((header.producer_epoch, -1, BTreeMap::new()));
            if entry.0 != header.producer_epoch {
                *entry = (header.producer_epoch, -1, BTreeMap::new());
            }
            entry.1 = seq + count - 1;
            entry.2.insert(seq, next);
        }
        let mut stored = batch.to_vec();
        fjord_log::batch::set_base_offset(&mut stored, next as u64).expect("offset fits");
        log.push((next, bytes::Bytes::from(stored)));
        (0, next)
    }
}

fn ready(response: ResponseKind) -> BoxFuture<'static, Option<ResponseKind>> {
    Box::pin(futures::future::ready(Some(response)))
}

/// A consumer group as a coordinator keeps it, without timeouts: a rebalance completes once
/// every member has (re)joined; members learn of a rebalance from their heartbeats.
#[derive(Default)]
pub(crate) struct GroupStub {
    pub(crate) generation: i32,
    /// Members and their protocols (name, metadata) from their latest join.
    members: BTreeMap<String, Vec<(String, Bytes)>>,
    pending_joins: Vec<(String, oneshot::Sender<JoinGroupResponse>)>,
    pending_syncs: Vec<(String, oneshot::Sender<SyncGroupResponse>)>,
    pub(crate) leader: String,
    pub(crate) protocol: String,
    /// A rebalance is under way (joining or waiting for the leader's assignment).
    rebalancing: bool,
    awaiting_sync: bool,
    next_member: u32,
    pub(crate) offsets: BTreeMap<Tp, i64>,
    /// Completed rebalances.
    pub(crate) rebalances: usize,
}

struct GroupHandle<'a> {
    cluster: &'a MiniCluster,
    id: String,
}

impl GroupHandle<'_> {
    fn join(&self, j: &JoinGroupRequest, version: i16) -> oneshot::Receiver<JoinGroupResponse> {
        let mut s = self.cluster.state();
        let g = s.groups.entry(self.id.clone()).or_default();
        let (tx, rx) = oneshot::channel();
        let mut member = j.member_id.to_string();
        if member.is_empty() {
            g.next_member += 1;
            member = format!("member-{}", g.next_member);
            if version >= 4 {
                let _ = tx.send(
                    JoinGroupResponse::default()
                        .with_error_code(79)
                        .with_member_id(StrBytes::from_string(member)),
                );
                return rx;
            }
        }
        let protocols = j
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        g.members.insert(member.clone(), protocols);
        g.start_rebalance();
        g.pending_joins.retain(|(m, _)| *m != member);
        g.pending_joins.push((member, tx));
        g.try_complete_join();
        rx
    }

    fn sync(&self, sync: &SyncGroupRequest) -> oneshot::Receiver<SyncGroupResponse> {
        let mut s = self.cluster.state();
        let g = s.groups.entry(self.id.clone()).or_default();
        let (tx, rx) = oneshot::channel();
        let member = sync.member_id.to_string();
        let code = if !g.members.contains_key(&member) {
            25
        } else if sync.generation_id != g.generation {
            22
        } else if !g.awaiting_sync {
            27
        } else {
            0
        };
        if code != 0 {
            let _ = tx.send(SyncGroupResponse::default().with_error_code(code));
            return rx;
        }
        g.pending_syncs.push((member.clone(), tx));
        if member == g.leader {
            let assignments: BTreeMap<String, Bytes> = sync
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect();
            for (m, tx) in g.pending_syncs.drain(..) {
                let assignment = assignments.get(&m).cloned().unwrap_or_default();
                let _ = tx.send(
                    SyncGroupResponse::default()
                        .with_assignment(assignment)
                        .with_protocol_name(Some(StrBytes::from_string(g.protocol.clone()))),
                );
            }
            g.awaiting_sync = false;
            g.rebalancing = false;
            g.rebalances += 1;
        }
        rx
    }
}

impl GroupStub {
    pub(crate) fn members_count(&self) -> usize {
        self.members.len()
    }

    fn start_rebalance(&mut self) {
        if self.rebalancing && !self.awaiting_sync {
            return;
        }
        self.rebalancing = true;
        self.awaiting_sync = false;
        for (_, tx) in self.pending_syncs.drain(..) {
            let _ = tx.send(SyncGroupResponse::default().with_error_code(27));
        }
    }

    fn try_complete_join(&mut self) {
        let joined: Vec<&String> = self.pending_joins.iter().map(|(m, _)| m).collect();
        if self.members.is_empty() || !self.members.keys().all(|m| joined.contains(&m)) {
            return;
        }
        self.generation += 1;
        if !self.members.contains_key(&self.leader) {
            self.leader = self.pending_joins[0].0.clone();
        }
        let leader_protocols = &self.members[&self.leader];
        self.protocol = leader_protocols
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| {
                self.members
                    .values()
                    .all(|ps| ps.iter().any(|(n, _)| n == name))
            })
            .expect("a protocol every member supports");
        let everyone: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|(m, ps)| {
                let metadata = ps
                    .iter()
                    .find(|(n, _)| *n == self.protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                JoinGroupResponseMember::default()
                    .with_member_id(StrBytes::from_string(m.clone()))
                    .with_metadata(metadata)
            })
            .collect();
        for (m, tx) in self.pending_joins.drain(..) {
            let members = if m == self.leader {
                everyone.clone()
            } else {
                Vec::new()
            };
            let _ = tx.send(
                JoinGroupResponse::default()
                    .with_generation_id(self.generation)
                    .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
                    .with_protocol_name(Some(StrBytes::from_string(self.protocol.clone())))
                    .with_leader(StrBytes::from_string(self.leader.clone()))
                    .with_member_id(StrBytes::from_string(m))
                    .with_members(members),
            );
        }
        self.awaiting_sync = true;
    }

    fn heartbeat(&self, member: &str, generation: i32) -> i16 {
        if !self.members.contains_key(member) {
            25
        } else if generation != self.generation {
            22
        } else if self.rebalancing {
            27
        } else {
            0
        }
    }

    fn leave(&mut self, member: &str) {
        if self.members.remove(member).is_none() {
            return;
        }
        self.pending_joins.retain(|(m, _)| m != member);
        if !self.members.is_empty() {
            self.start_rebalance();
            self.try_complete_join();
        }
    }

    /// Commits from members check the generation; generation -1 is a simple consumer.
    fn commit_check(&self, member: &str, generation: i32) -> i16 {
        if generation < 0 {
            0
        } else if !self.members.contains_key(member) {
            25
        } else if generation != self.generation {
            22
        } else if self.rebalancing {
            27
        } else {
            0
        }
    }
}
