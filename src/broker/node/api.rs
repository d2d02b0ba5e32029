//! Kafka APIs answered from the metadata image and the controller: Metadata, ListOffsets,
//! CreateTopics, DeleteTopics, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs,
//! DescribeCluster, InitProducerId, FindCoordinator.

use std::collections::BTreeSet;

use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::{RaftLog, Role};
use fjord_replication::NodeId;
use futures::channel::oneshot;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest, RequestKind, ResponseKind,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{failure, Node, Responder, SlotResult};
use crate::broker::rpc::{ApiFailure, ControllerOp};
use crate::controller::{self, ConfigResource};
use crate::kafka::codec::DecodedRequest;
use crate::kafka::server::RequestContext;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub(super) fn init_producer_id_response(id: i64, epoch: i16, error: i16) -> ResponseKind {
    let mut r = InitProducerIdResponse::default();
    r.error_code = error;
    r.producer_id = id.into();
    r.producer_epoch = epoch;
    ResponseKind::InitProducerId(r)
}

fn controller_error(result: &SlotResult) -> Option<&ApiFailure> {
    match result {
        SlotResult::Controller(Err(e)) => Some(e),
        _ => None,
    }
}

impl Node {
    pub(super) fn on_kafka(
        &mut self,
        ctx: RequestContext,
        request: DecodedRequest,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let version = request.api_version;
        match request.body {
            RequestKind::Produce(req) => self.on_produce(req, version, reply),
            RequestKind::Fetch(req) => self.on_fetch(req, version, reply),
            RequestKind::Metadata(req) => {
                let resp = self.metadata(req, version);
                let _ = reply.send(Some(ResponseKind::Metadata(resp)));
            }
            RequestKind::ListOffsets(req) => {
                let resp = self.list_offsets(req, version);
                let _ = reply.send(Some(ResponseKind::ListOffsets(resp)));
            }
            RequestKind::CreateTopics(req) => self.create_topics(req, version, reply),
            RequestKind::DeleteTopics(req) => self.delete_topics(req, version, reply),
            RequestKind::DescribeConfigs(req) => {
                let _ = reply.send(Some(ResponseKind::DescribeConfigs(
                    self.describe_configs(req),
                )));
            }
            RequestKind::AlterConfigs(req) => {
                let resources = req
                    .resources
                    .into_iter()
                    .map(|r| {
                        let changes = r
                            .configs
                            .into_iter()
                            .map(|c| (c.name.to_string(), None, c.value.map(|v| v.to_string())))
                            .collect();
                        (r.resource_type, r.resource_name.to_string(), changes)
                    })
                    .collect();
                self.alter_configs(resources, req.validate_only, false, reply);
            }
            RequestKind::IncrementalAlterConfigs(req) => {
                let resources = req
                    .resources
                    .into_iter()
                    .map(|r| {
                        let changes = r
                            .configs
                            .into_iter()
                            .map(|c| {
                                (
                                    c.name.to_string(),
                                    Some(c.config_operation),
                                    c.value.map(|v| v.to_string()),
                                )
                            })
                            .collect();
                        (r.resource_type, r.resource_name.to_string(), changes)
                    })
                    .collect();
                self.alter_configs(resources, req.validate_only, true, reply);
            }
            RequestKind::DescribeCluster(_) => {
                let resp = self.describe_cluster(version);
                let _ = reply.send(Some(ResponseKind::DescribeCluster(resp)));
            }
            RequestKind::InitProducerId(req) => {
                if req.transactional_id.is_some() {
                    let code = ResponseError::TransactionalIdAuthorizationFailed.code();
                    let _ = reply.send(Some(init_producer_id_response(-1, -1, code)));
                } else if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
                    // An idempotent producer bumping its epoch keeps its id (KIP-360).
                    let epoch = req.producer_epoch.checked_add(1);
                    let resp = match epoch {
                        Some(e) => init_producer_id_response(req.producer_id.0, e, 0),
                        None => {
                            self.producer_id_waiters.push(reply);
                            self.serve_producer_id_waiters();
                            return;
                        }
                    };
                    let _ = reply.send(Some(resp));
                } else {
                    self.producer_id_waiters.push(reply);
                    self.serve_producer_id_waiters();
                }
            }
            RequestKind::FindCoordinator(req) => {
                let resp = self.find_coordinator(req, version);
                let _ = reply.send(Some(ResponseKind::FindCoordinator(resp)));
            }
            other => self.on_group_request(ctx, version, other, reply),
        }
    }

    // ----- Metadata ----------------------------------------------------------------------

    fn broker_entries(&self, version: i16) -> Vec<MetadataResponseBroker> {
        self.image
            .live_brokers()
            .map(|b| {
                let mut e = MetadataResponseBroker::default();
                e.node_id = BrokerId(b.id.0 as i32);
                e.host = s(&b.host);
                e.port = i32::from(b.kafka_port);
                if version >= 1 {
                    e.rack = b.rack.as_deref().map(s);
                }
                e
            })
            .collect()
    }

    /// Fields a response may carry depend on its version: kafka-protocol refuses to encode
    /// a field the version lacks, so every builder below sets them by version.
    fn metadata(&mut self, req: MetadataRequest, version: i16) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        resp.brokers = self.broker_entries(version);
        if version >= 2 {
            resp.cluster_id = self.image.cluster_id().map(s);
        }
        resp.controller_id = BrokerId(self.controller_id().map_or(-1, |c| c.0 as i32));
        let names: Vec<String> = match &req.topics {
            None => self.image.topics().keys().cloned().collect(),
            Some(topics) => topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect(),
        };
        for name in names {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(TopicName(s(&name)));
            match self.image.topic(&name) {
                None => {
                    let creatable = req.topics.is_some()
                        && req.allow_auto_topic_creation
                        && self.cfg.auto_create_topics
                        && controller::validate_topic_name(&name).is_ok();
                    t.error_code = if creatable {
                        let op = ControllerOp::CreateTopic {
                            name: name.clone(),
                            partitions: -1,
                            replication_factor: -1,
                            configs: Vec::new(),
                            validate_only: false,
                        };
                        self.submit_controller_op(op, Responder::Internal("auto-create"));
                        ResponseError::LeaderNotAvailable.code()
                    } else if controller::validate_topic_name(&name).is_ok() {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else {
                        ResponseError::InvalidTopicException.code()
                    };
                }
                Some(topic) => {
                    if version >= 10 {
                        t.topic_id = uuid::Uuid::from_bytes(topic.uuid);
                    }
                    if version >= 1 {
                        t.is_internal = name.starts_with("__");
                    }
                    for (p, info) in topic.partitions.iter().enumerate() {
                        let group = GroupId::new(topic.topic_id, p as u32);
                        let mut mp = MetadataResponsePartition::default();
                        mp.partition_index = p as i32;
                        mp.replica_nodes =
                            info.replicas.iter().map(|r| BrokerId(r.0 as i32)).collect();
                        match self.leader_of(group) {
                            Some((term, leader)) => {
                                mp.leader_id = BrokerId(leader.0 as i32);
                                if version >= 7 {
                                    mp.leader_epoch = term as i32;
                                }
                                let isr = self.isr_of(group).unwrap_or_else(|| vec![leader]);
                                mp.isr_nodes = isr.iter().map(|r| BrokerId(r.0 as i32)).collect();
                            }
                            None => {
                                mp.error_code = ResponseError::LeaderNotAvailable.code();
                                mp.leader_id = BrokerId(-1);
                                mp.leader_epoch = -1;
                            }
                        }
                        let live: BTreeSet<NodeId> =
                            self.image.live_brokers().map(|b| b.id).collect();
                        if version < 5 {
                            t.partitions.push(mp);
                            continue;
                        }
                        mp.offline_replicas = info
                            .replicas
                            .iter()
                            .filter(|r| !live.contains(r))
                            .map(|r| BrokerId(r.0 as i32))
                            .collect();
                        t.partitions.push(mp);
                    }
                }
            }
            resp.topics.push(t);
        }
        resp
    }

    fn describe_cluster(&self, version: i16) -> DescribeClusterResponse {
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = s(self.image.cluster_id().unwrap_or_default());
        resp.controller_id = BrokerId(self.controller_id().map_or(-1, |c| c.0 as i32));
        resp.endpoint_type = 1;
        resp.brokers = self
            .image
            .brokers()
            .values()
            .map(|b| {
                let mut e = DescribeClusterBroker::default();
                e.broker_id = BrokerId(b.id.0 as i32);
                e.host = s(&b.host);
                e.port = i32::from(b.kafka_port);
                e.rack = b.rack.as_deref().map(s);
                if version >= 2 {
                    e.is_fenced = b.fenced;
                }
                e
            })
            .collect();
        resp
    }

    // ----- ListOffsets -------------------------------------------------------------------

    fn list_offsets(&self, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for topic in req.topics {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = topic.name.clone();
            for p in topic.partitions {
                let mut r = ListOffsetsPartitionResponse::default();
                r.partition_index = p.partition_index;
                r.timestamp = -1;
                r.offset = -1;
                r.leader_epoch = -1;
                match self.list_offset(
                    &topic.name.0,
                    p.partition_index,
                    p.current_leader_epoch,
                    p.timestamp,
                ) {
                    Ok((offset, timestamp, epoch)) => {
                        r.offset = offset;
                        r.timestamp = timestamp;
                        if version >= 4 {
                            r.leader_epoch = epoch;
                        }
                    }
                    Err(e) => r.error_code = e.code(),
                }
                t.partitions.push(r);
            }
            resp.topics.push(t);
        }
        resp
    }

    fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        current_leader_epoch: i32,
        timestamp: i64,
    ) -> Result<(i64, i64, i32), ResponseError> {
        let group = self
            .group_of(topic, partition)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let raft = self
            .multi
            .group(group)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if raft.role() != Role::Leader {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let epoch = raft.term() as i32;
        if current_leader_epoch >= 0 && current_leader_epoch != epoch {
            return Err(if current_leader_epoch > epoch {
                ResponseError::UnknownLeaderEpoch
            } else {
                ResponseError::FencedLeaderEpoch
            });
        }
        let hw = raft.commit_end();
        let log = raft.log().log();
        let epoch_of = |o: u64| raft.log().term_at(o).map_or(-1, |t| t as i32);
        match timestamp {
            // Earliest.
            -2 => Ok((
                log.log_start_offset() as i64,
                -1,
                epoch_of(log.log_start_offset()),
            )),
            // Latest: the high watermark (only committed data is visible).
            -1 => Ok((hw as i64, -1, epoch_of(hw.saturating_sub(1)))),
            ts if ts >= 0 => match log.offset_for_timestamp(ts) {
                Ok(Some((offset, found_ts))) if offset < hw => {
                    Ok((offset as i64, found_ts, epoch_of(offset)))
                }
                Ok(_) => Ok((-1, -1, -1)),
                Err(_) => Err(ResponseError::KafkaStorageError),
            },
            // Max timestamp, local log start, tiered: not offered.
            _ => Err(ResponseError::InvalidRequest),
        }
    }

    // ----- topics and configs ------------------------------------------------------------

    fn create_topics(
        &mut self,
        req: CreateTopicsRequest,
        version: i16,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let names: Vec<String> = req.topics.iter().map(|t| t.name.0.to_string()).collect();
        let finish_names = names.clone();
        let job = self.new_job(
            names.len(),
            reply,
            Box::new(move |node, results| {
                let mut resp = CreateTopicsResponse::default();
                for (name, result) in finish_names.into_iter().zip(results) {
                    let mut t = CreatableTopicResult::default();
                    t.name = TopicName(s(&name));
                    t.num_partitions = -1;
                    t.replication_factor = -1;
                    match controller_error(&result) {
                        Some(e) => {
                            t.error_code = e.code;
                            t.error_message = Some(s(&e.message));
                        }
                        None => {
                            if let Some(topic) = node.image.topic(&name).filter(|_| version >= 5) {
                                if version >= 7 {
                                    t.topic_id = uuid::Uuid::from_bytes(topic.uuid);
                                }
                                t.num_partitions = topic.partitions.len() as i32;
                                t.replication_factor = topic
                                    .partitions
                                    .first()
                                    .map_or(-1, |p| p.replicas.len() as i16);
                            }
                        }
                    }
                    resp.topics.push(t);
                }
                Some(ResponseKind::CreateTopics(resp))
            }),
        );
        for (slot, topic) in req.topics.into_iter().enumerate() {
            if !topic.assignments.is_empty() {
                let result = Err(failure(
                    ResponseError::InvalidReplicaAssignment,
                    "manual replica assignment is not supported",
                ));
                self.complete_slot(job, slot, SlotResult::Controller(result));
                continue;
            }
            let configs = topic
                .configs
                .into_iter()
                .filter_map(|c| c.value.map(|v| (c.name.to_string(), v.to_string())))
                .collect();
            let op = ControllerOp::CreateTopic {
                name: topic.name.0.to_string(),
                partitions: topic.num_partitions,
                replication_factor: topic.replication_factor,
                configs,
                validate_only: req.validate_only,
            };
            self.submit_controller_op(op, Responder::Job { job, slot });
        }
    }

    fn delete_topics(
        &mut self,
        req: DeleteTopicsRequest,
        version: i16,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let mut names: Vec<Result<String, ApiFailure>> = Vec::new();
        if version <= 5 {
            names.extend(req.topic_names.iter().map(|n| Ok(n.0.to_string())));
        } else {
            for t in &req.topics {
                names.push(match &t.name {
                    Some(n) => Ok(n.0.to_string()),
                    None => self
                        .image
                        .topic_by_uuid(t.topic_id.as_bytes())
                        .map(|x| x.name.clone())
                        .ok_or_else(|| failure(ResponseError::UnknownTopicId, "unknown topic id")),
                });
            }
        }
        let finish_names: Vec<String> = names
            .iter()
            .map(|n| n.as_ref().map_or(String::new(), Clone::clone))
            .collect();
        let job = self.new_job(
            names.len(),
            reply,
            Box::new(move |_, results| {
                let mut resp = DeleteTopicsResponse::default();
                for (name, result) in finish_names.into_iter().zip(results) {
                    let mut r = DeletableTopicResult::default();
                    r.name = Some(TopicName(s(&name)));
                    if let Some(e) = controller_error(&result) {
                        r.error_code = e.code;
                        if version >= 5 {
                            r.error_message = Some(s(&e.message));
                        }
                    }
                    resp.responses.push(r);
                }
                Some(ResponseKind::DeleteTopics(resp))
            }),
        );
        for (slot, name) in names.into_iter().enumerate() {
            match name {
                Ok(name) => self.submit_controller_op(
                    ControllerOp::DeleteTopic { name },
                    Responder::Job { job, slot },
                ),
                Err(e) => self.complete_slot(job, slot, SlotResult::Controller(Err(e))),
            }
        }
    }

    fn config_resource(resource_type: i8, name: &str) -> Result<ConfigResource, ApiFailure> {
        ConfigResource::from_kafka(resource_type, name).map_err(|e| ApiFailure {
            code: e.code(),
            message: e.message().to_string(),
        })
    }

    fn describe_configs(&self, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let mut resp = DescribeConfigsResponse::default();
        for r in req.resources {
            let mut out = DescribeConfigsResult::default();
            out.resource_type = r.resource_type;
            out.resource_name = r.resource_name.clone();
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let entries =
                Self::config_resource(r.resource_type, &r.resource_name).and_then(|res| {
                    self.image
                        .describe_configs(&res, keys.as_deref(), self.id(), &self.cfg.defaults)
                        .map_err(|e| ApiFailure {
                            code: e.code(),
                            message: e.message().to_string(),
                        })
                });
            match entries {
                Ok(entries) => {
                    for e in entries {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = s(&e.name);
                        c.value = e.value.as_deref().map(s);
                        c.read_only = e.read_only;
                        c.config_source = e.source.code();
                        c.is_sensitive = e.sensitive;
                        out.configs.push(c);
                    }
                }
                Err(e) => {
                    out.error_code = e.code;
                    out.error_message = Some(s(&e.message));
                }
            }
            resp.results.push(out);
        }
        resp
    }

    #[allow(clippy::type_complexity)]
    fn alter_configs(
        &mut self,
        resources: Vec<(i8, String, Vec<(String, Option<i8>, Option<String>)>)>,
        validate_only: bool,
        incremental: bool,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let layout: Vec<(i8, String)> = resources.iter().map(|(t, n, _)| (*t, n.clone())).collect();
        let job = self.new_job(
            layout.len(),
            reply,
            Box::new(move |_, results| {
                let items = layout.into_iter().zip(results).map(|((t, n), r)| {
                    let e = controller_error(&r).cloned();
                    (t, n, e)
                });
                if incremental {
                    use kafka_protocol::messages::incremental_alter_configs_response as m;
                    let mut resp = m::IncrementalAlterConfigsResponse::default();
                    for (t, n, e) in items {
                        let mut r = m::AlterConfigsResourceResponse::default();
                        r.resource_type = t;
                        r.resource_name = s(&n);
                        if let Some(e) = e {
                            r.error_code = e.code;
                            r.error_message = Some(s(&e.message));
                        }
                        resp.responses.push(r);
                    }
                    Some(ResponseKind::IncrementalAlterConfigs(resp))
                } else {
                    use kafka_protocol::messages::alter_configs_response as m;
                    let mut resp = m::AlterConfigsResponse::default();
                    for (t, n, e) in items {
                        let mut r = m::AlterConfigsResourceResponse::default();
                        r.resource_type = t;
                        r.resource_name = s(&n);
                        if let Some(e) = e {
                            r.error_code = e.code;
                            r.error_message = Some(s(&e.message));
                        }
                        resp.responses.push(r);
                    }
                    Some(ResponseKind::AlterConfigs(resp))
                }
            }),
        );
        for (slot, (t, name, changes)) in resources.into_iter().enumerate() {
            match Self::config_resource(t, &name) {
                Ok(resource) => {
                    let op = ControllerOp::AlterConfigs {
                        resource,
                        changes,
                        validate_only,
                    };
                    self.submit_controller_op(op, Responder::Job { job, slot });
                }
                Err(e) => self.complete_slot(job, slot, SlotResult::Controller(Err(e))),
            }
        }
    }

    // ----- coordinators ------------------------------------------------------------------

    fn find_coordinator(
        &mut self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let keys: Vec<String> = if version >= 4 {
            req.coordinator_keys.iter().map(|k| k.to_string()).collect()
        } else {
            vec![req.key.to_string()]
        };
        let mut resp = FindCoordinatorResponse::default();
        for key in keys {
            let mut c = Coordinator::default();
            c.key = s(&key);
            c.node_id = BrokerId(-1);
            c.port = -1;
            let found = if req.key_type != 0 {
                Err(failure(
                    ResponseError::InvalidRequest,
                    "only group coordinators exist",
                ))
            } else {
                self.group_coordinator_broker(&key)
            };
            match found {
                Ok((id, host, port)) => {
                    c.node_id = BrokerId(id.0 as i32);
                    c.host = s(&host);
                    c.port = i32::from(port);
                }
                Err(e) => {
                    c.error_code = e.code;
                    c.error_message = Some(s(&e.message));
                }
            }
            resp.coordinators.push(c);
        }
        if version < 4 {
            let c = resp.coordinators.pop().expect("one key");
            resp.error_code = c.error_code;
            resp.error_message = c.error_message;
            resp.node_id = c.node_id;
            resp.host = c.host;
            resp.port = c.port;
        }
        resp
    }

    /// The broker leading the `__consumer_offsets` partition of `group`, creating the topic
    /// on first use.
    fn group_coordinator_broker(
        &mut self,
        group: &str,
    ) -> Result<(NodeId, String, u16), ApiFailure> {
        let not_available = || {
            failure(
                ResponseError::CoordinatorNotAvailable,
                "coordinator not available",
            )
        };
        let Some(topic) = self.image.topic(controller::CONSUMER_OFFSETS_TOPIC) else {
            let records = controller::plan_internal_topics(&self.image, &self.cfg.defaults);
            if !records.is_empty() {
                self.submit_controller_op(
                    ControllerOp::Records(records),
                    Responder::Internal("offsets-topic"),
                );
            }
            return Err(not_available());
        };
        let partitions = topic.partitions.len() as u32;
        let p = controller::group_coordinator_partition(group, partitions);
        let gid = GroupId::new(topic.topic_id, p);
        let (_, leader) = self.leader_of(gid).ok_or_else(not_available)?;
        let b = self.image.broker(leader).ok_or_else(not_available)?;
        Ok((leader, b.host.clone(), b.kafka_port))
    }
}
