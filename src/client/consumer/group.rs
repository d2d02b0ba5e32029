//! Group membership over the classic protocol: FindCoordinator, JoinGroup (with the
//! MEMBER_ID_REQUIRED round trip of v4+), the leader's assignment, SyncGroup, a heartbeat
//! task per generation, OffsetCommit / OffsetFetch and LeaveGroup.
//!
//! The heartbeat task and the consumer share [`Membership`]: the task flags a needed rejoin
//! (REBALANCE_IN_PROGRESS, a lost membership, `max_poll_interval` without a poll) and the
//! consumer's next `poll` rejoins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fjord_replication::Instant;
use futures::channel::oneshot;
use futures::future::{select, Either};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::assignor::{self, AssignorKind, Member};
use super::protocol::{self, Assignment, Subscription, CONSUMER_PROTOCOL_TYPE};
use crate::client::cluster::Client;
use crate::client::error::{needs_coordinator_lookup, Error, ResponseError};
use crate::client::metadata::TopicPartition;
use crate::client::notify::Notify;

/// Extra time a JoinGroup may take beyond the rebalance timeout (the Java client's 5 s).
const JOIN_GROUP_SLACK: Duration = Duration::from_secs(5);

/// Group settings (see [`super::ConsumerConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct GroupConfig {
    pub(crate) group_id: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) assignors: Vec<AssignorKind>,
    pub(crate) rack_id: Option<String>,
}

/// What the consumer and the heartbeat task share.
pub(crate) struct Membership {
    coordinator: Option<String>,
    member_id: String,
    generation: i32,
    rejoin_needed: bool,
    last_poll: Instant,
}

/// The result of one join attempt.
pub(crate) enum JoinOutcome {
    /// Joined: the partitions assigned in the new generation.
    Joined(BTreeSet<TopicPartition>),
    /// Not finished before the deadline (or the coordinator is not reachable yet).
    NotYet,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn group_id(s: &str) -> GroupId {
    GroupId(str_bytes(s))
}

fn lock(m: &Mutex<Membership>) -> MutexGuard<'_, Membership> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Group {
    client: Client,
    pub(crate) config: GroupConfig,
    shared: Arc<Mutex<Membership>>,
    /// Signalled when the heartbeat task wants a rejoin.
    pub(crate) rejoin: Arc<Notify>,
    /// The assignor chosen in the current generation.
    protocol: Option<AssignorKind>,
    topics: BTreeSet<String>,
    /// Partition counts this member assigned from, if it leads the group.
    leader_snapshot: Option<BTreeMap<String, i32>>,
    stop_heartbeat: Option<oneshot::Sender<()>>,
    failures: u32,
}

impl Group {
    pub(crate) fn new(client: Client, config: GroupConfig) -> Group {
        let now = client.clock().now();
        Group {
            client,
            config,
            shared: Arc::new(Mutex::new(Membership {
                coordinator: None,
                member_id: String::new(),
                generation: -1,
                rejoin_needed: true,
                last_poll: now,
            })),
            rejoin: Arc::new(Notify::default()),
            protocol: None,
            topics: BTreeSet::new(),
            leader_snapshot: None,
            stop_heartbeat: None,
            failures: 0,
        }
    }

    /// Rebalancing is incremental only if every configured assignor supports it (as in
    /// the Java client).
    pub(crate) fn cooperative(&self) -> bool {
        self.config.assignors.iter().all(|a| a.is_cooperative())
    }

    pub(crate) fn set_topics(&mut self, topics: BTreeSet<String>) {
        if topics != self.topics {
            self.topics = topics;
            self.request_rejoin();
        }
    }

    pub(crate) fn request_rejoin(&self) {
        lock(&self.shared).rejoin_needed = true;
    }

    pub(crate) fn needs_rejoin(&self) -> bool {
        lock(&self.shared).rejoin_needed
    }

    /// Records that the application polled (for `max_poll_interval`).
    pub(crate) fn polled(&self, now: Instant) {
        lock(&self.shared).last_poll = now;
    }

    /// (generation, member id) of the current membership, if joined.
    pub(crate) fn generation(&self) -> Option<(i32, String)> {
        let s = lock(&self.shared);
        (s.generation >= 0).then(|| (s.generation, s.member_id.clone()))
    }

    /// As leader, whether partition counts of the group's topics changed since the
    /// assignment (then the group must rebalance to cover new partitions).
    pub(crate) fn check_metadata(&self) {
        let Some(snapshot) = &self.leader_snapshot else {
            return;
        };
        let metadata = self.client.metadata();
        let changed = snapshot.iter().any(|(topic, count)| {
            metadata
                .topic(topic)
                .and_then(|t| t.partition_count())
                .is_some_and(|now| now != *count)
        });
        if changed {
            tracing::debug!(group = %self.config.group_id, "kafka consumer: partitions changed, rebalancing");
            self.request_rejoin();
        }
    }

    async fn backoff(&mut self) {
        let failures = self.failures;
        self.failures = self.failures.saturating_add(1);
        self.client.backoff(failures).await;
    }

    /// The coordinator's address, looking it up if unknown.
    async fn coordinator(&mut self) -> Result<String, Error> {
        if let Some(c) = lock(&self.shared).coordinator.clone() {
            return Ok(c);
        }
        let addr = find_coordinator(&self.client, &self.config.group_id).await?;
        lock(&self.shared).coordinator = Some(addr.clone());
        Ok(addr)
    }

    fn coordinator_lost(&self) {
        lock(&self.shared).coordinator = None;
    }

    fn subscription(&self, owned: &BTreeSet<TopicPartition>) -> Subscription {
        let generation = lock(&self.shared).generation;
        Subscription {
            topics: self.topics.iter().cloned().collect(),
            // The Java CooperativeStickyAssignor's user data: the generation as an int32,
            // for members that read it from there.
            user_data: self
                .cooperative()
                .then(|| bytes::Bytes::copy_from_slice(&generation.to_be_bytes())),
            owned_partitions: owned.iter().cloned().collect(),
            generation_id: generation,
            rack_id: self.config.rack_id.clone(),
        }
    }

    /// Stops the heartbeat task of the current generation (if any).
    pub(crate) fn stop_heartbeat(&mut self) {
        if let Some(stop) = self.stop_heartbeat.take() {
            let _ = stop.send(());
        }
    }

    /// Joins (or rejoins) the group and returns the new assignment. `owned` are the
    /// partitions the member holds now (after eager revocation: none). Gives up with
    /// `NotYet` between attempts once `deadline` has passed.
    pub(crate) async fn join(
        &mut self,
        owned: &BTreeSet<TopicPartition>,
        deadline: Instant,
    ) -> Result<JoinOutcome, Error> {
        self.stop_heartbeat();
        loop {
            if self.client.clock().now() >= deadline {
                return Ok(JoinOutcome::NotYet);
            }
            let coordinator = match self.coordinator().await {
                Ok(c) => c,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "kafka consumer: no coordinator yet");
                    self.backoff().await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.join_once(&coordinator, owned).await {
                Ok(Some(assigned)) => {
                    self.failures = 0;
                    self.start_heartbeat();
                    return Ok(JoinOutcome::Joined(assigned));
                }
                Ok(None) => continue,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "kafka consumer: join attempt failed");
                    if matches!(e, Error::Transport(_)) {
                        self.coordinator_lost();
                    }
                    self.backoff().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One JoinGroup + SyncGroup. `Ok(None)`: try again at once (a new member id, a
    /// rebalance that started meanwhile).
    async fn join_once(
        &mut self,
        coordinator: &str,
        owned: &BTreeSet<TopicPartition>,
    ) -> Result<Option<BTreeSet<TopicPartition>>, Error> {
        let subscription = self.subscription(owned);
        let metadata =
            protocol::encode_subscription(&subscription, protocol::CONSUMER_PROTOCOL_VERSION_MAX)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let protocols: Vec<JoinGroupRequestProtocol> = self
            .config
            .assignors
            .iter()
            .map(|a| {
                JoinGroupRequestProtocol::default()
                    .with_name(str_bytes(a.name()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let member_id = lock(&self.shared).member_id.clone();
        let config = self.config.clone();
        let response = self
            .client
            .call_addr(
                coordinator,
                |_| {
                    JoinGroupRequest::default()
                        .with_group_id(group_id(&config.group_id))
                        .with_session_timeout_ms(millis(config.session_timeout))
                        .with_rebalance_timeout_ms(millis(config.rebalance_timeout))
                        .with_member_id(str_bytes(&member_id))
                        .with_protocol_type(str_bytes(CONSUMER_PROTOCOL_TYPE))
                        .with_protocols(protocols.clone())
                },
                Some(config.rebalance_timeout + JOIN_GROUP_SLACK),
            )
            .await?;
        match ResponseError::try_from_code(response.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                lock(&self.shared).member_id = response.member_id.to_string();
                return Ok(None);
            }
            Some(code) => return self.join_error(code).map(|()| None),
        }
        let member_id = response.member_id.to_string();
        let generation = response.generation_id;
        {
            let mut s = lock(&self.shared);
            s.member_id = member_id.clone();
            s.generation = generation;
        }
        let protocol_name = response
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let protocol = AssignorKind::from_name(&protocol_name).ok_or_else(|| {
            Error::InvalidResponse(format!("group chose unknown assignor {protocol_name:?}"))
        })?;
        self.protocol = Some(protocol);
        let leader = response.leader.as_str() == member_id;
        let assignments = if leader && !response.skip_assignment {
            let members = response
                .members
                .iter()
                .map(|m| {
                    let subscription = protocol::decode_subscription(&m.metadata)
                        .map_err(|e| Error::InvalidResponse(e.to_string()))?;
                    Ok(Member {
                        member_id: m.member_id.to_string(),
                        group_instance_id: m.group_instance_id.as_ref().map(|g| g.to_string()),
                        subscription,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            self.lead(protocol, &members).await?
        } else {
            self.leader_snapshot = None;
            Vec::new()
        };
        let response = self
            .client
            .call_addr(
                coordinator,
                |_| {
                    SyncGroupRequest::default()
                        .with_group_id(group_id(&self.config.group_id))
                        .with_generation_id(generation)
                        .with_member_id(str_bytes(&member_id))
                        .with_protocol_type(Some(str_bytes(CONSUMER_PROTOCOL_TYPE)))
                        .with_protocol_name(Some(str_bytes(protocol.name())))
                        .with_assignments(assignments.clone())
                },
                None,
            )
            .await?;
        if let Some(code) = ResponseError::try_from_code(response.error_code) {
            return self.join_error(code).map(|()| None);
        }
        let assignment = protocol::decode_assignment(&response.assignment)
            .map_err(|e| Error::InvalidResponse(e.to_string()))?;
        lock(&self.shared).rejoin_needed = false;
        tracing::debug!(
            group = %self.config.group_id,
            generation,
            %member_id,
            leader,
            assignor = protocol.name(),
            partitions = assignment.partitions.len(),
            "kafka consumer: joined"
        );
        Ok(Some(assignment.partitions.into_iter().collect()))
    }

    /// The leader's part: refresh metadata for every member's topics and run the assignor.
    async fn lead(
        &mut self,
        protocol: AssignorKind,
        members: &[Member],
    ) -> Result<Vec<SyncGroupRequestAssignment>, Error> {
        let topics: BTreeSet<&str> = members
            .iter()
            .flat_map(|m| m.subscription.topics.iter().map(String::as_str))
            .collect();
        self.client.register_topics(topics.iter().copied());
        let metadata = self.client.refresh_metadata().await?;
        let counts: BTreeMap<String, i32> = topics
            .iter()
            .filter_map(|t| {
                metadata
                    .topic(t)
                    .and_then(|info| info.partition_count())
                    .map(|n| (t.to_string(), n))
            })
            .collect();
        let assignment = assignor::assign(protocol, members, &counts);
        self.leader_snapshot = Some(counts);
        assignment
            .into_iter()
            .map(|(member_id, partitions)| {
                let bytes = protocol::encode_assignment(
                    &Assignment {
                        partitions,
                        user_data: None,
                    },
                    protocol::CONSUMER_PROTOCOL_VERSION_MAX,
                )
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member_id))
                    .with_assignment(bytes))
            })
            .collect()
    }

    /// What a JoinGroup/SyncGroup error means: Ok(()) to try again, Err to give up.
    fn join_error(&mut self, code: ResponseError) -> Result<(), Error> {
        tracing::debug!(group = %self.config.group_id, %code, "kafka consumer: join error");
        match code {
            ResponseError::UnknownMemberId => {
                let mut s = lock(&self.shared);
                s.member_id.clear();
                s.generation = -1;
                Ok(())
            }
            ResponseError::IllegalGeneration => {
                lock(&self.shared).generation = -1;
                Ok(())
            }
            ResponseError::RebalanceInProgress => Ok(()),
            code if needs_coordinator_lookup(code) => {
                self.coordinator_lost();
                Err(Error::Broker {
                    code,
                    message: None,
                })
            }
            code if code.is_retriable() => Err(Error::Broker {
                code,
                message: None,
            }),
            code => Err(Error::Broker {
                code,
                message: Some("cannot join the group".to_string()),
            }),
        }
    }

    fn start_heartbeat(&mut self) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.stop_heartbeat = Some(stop_tx);
        let task = heartbeat(
            self.client.clone(),
            self.config.clone(),
            self.shared.clone(),
            self.rejoin.clone(),
            stop_rx,
        );
        self.client
            .spawner()
            .spawn("kafka-consumer-heartbeat", Box::pin(task));
    }

    /// Commits `offsets` (the next offsets to consume) in the current generation (or as a
    /// simple consumer, generation -1, when not a member). Retries coordinator errors.
    pub(crate) async fn commit(
        &mut self,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut attempts = 0u32;
        loop {
            let coordinator = self.coordinator().await?;
            let (generation, member_id) = {
                let s = lock(&self.shared);
                (s.generation, s.member_id.clone())
            };
            let topics = commit_topics(offsets);
            let result = self
                .client
                .call_addr(
                    &coordinator,
                    |_| {
                        OffsetCommitRequest::default()
                            .with_group_id(group_id(&self.config.group_id))
                            .with_generation_id_or_member_epoch(generation)
                            .with_member_id(str_bytes(&member_id))
                            .with_retention_time_ms(-1)
                            .with_topics(topics.clone())
                    },
                    None,
                )
                .await;
            let error = match result {
                Ok(response) => response
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .find_map(|p| ResponseError::try_from_code(p.error_code)),
                Err(e) if e.is_retriable() && attempts < 5 => {
                    self.coordinator_lost();
                    attempts += 1;
                    self.client.backoff(attempts).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match error {
                None => return Ok(()),
                Some(
                    code @ (ResponseError::UnknownMemberId
                    | ResponseError::IllegalGeneration
                    | ResponseError::RebalanceInProgress),
                ) => {
                    if code != ResponseError::RebalanceInProgress {
                        let mut s = lock(&self.shared);
                        s.generation = -1;
                        if code == ResponseError::UnknownMemberId {
                            s.member_id.clear();
                        }
                    }
                    self.request_rejoin();
                    return Err(Error::CommitFailed(code));
                }
                Some(code) if code.is_retriable() && attempts < 5 => {
                    if needs_coordinator_lookup(code) {
                        self.coordinator_lost();
                    }
                    attempts += 1;
                    self.client.backoff(attempts).await;
                }
                Some(code) => {
                    return Err(Error::Broker {
                        code,
                        message: Some("offset commit".to_string()),
                    })
                }
            }
        }
    }

    /// The committed offsets of `partitions` (`None`: no commit).
    pub(crate) async fn committed(
        &mut self,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, Error> {
        let mut attempts = 0u32;
        loop {
            match self.fetch_offsets(partitions).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retriable() && attempts < 10 => {
                    if matches!(&e, Error::Transport(_))
                        || matches!(&e, Error::Broker { code, .. } if needs_coordinator_lookup(*code))
                    {
                        self.coordinator_lost();
                    }
                    attempts += 1;
                    self.client.backoff(attempts).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_offsets(
        &mut self,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, Error> {
        let coordinator = self.coordinator().await?;
        let conn = self.client.connection(&coordinator).await?;
        let version = conn.version_for(ApiKey::OffsetFetch)?;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let group = self.config.group_id.clone();
        let (member_id, generation) = {
            let s = lock(&self.shared);
            (s.member_id.clone(), s.generation)
        };
        let request = if version >= 8 {
            let topics = by_topic
                .iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(TopicName(str_bytes(t)))
                        .with_partition_indexes(ps.clone())
                })
                .collect();
            let mut g = OffsetFetchRequestGroup::default()
                .with_group_id(group_id(&group))
                .with_topics(Some(topics));
            if version >= 9 {
                g = g
                    .with_member_id((!member_id.is_empty()).then(|| str_bytes(&member_id)))
                    .with_member_epoch(if member_id.is_empty() { -1 } else { generation });
            }
            OffsetFetchRequest::default()
                .with_groups(vec![g])
                .with_require_stable(true)
        } else {
            let topics = by_topic
                .iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(str_bytes(t)))
                        .with_partition_indexes(ps.clone())
                })
                .collect();
            OffsetFetchRequest::default()
                .with_group_id(group_id(&group))
                .with_topics(Some(topics))
                .with_require_stable(version >= 7)
        };
        let response = self
            .client
            .call_on(&conn, &|_| request.clone(), None)
            .await?;
        let mut out: BTreeMap<TopicPartition, Option<i64>> =
            partitions.iter().map(|tp| (tp.clone(), None)).collect();
        let mut found = |topic: &str, partition: i32, offset: i64, code: i16| {
            if let Some(e) = Error::from_code(code, None) {
                return Err(e);
            }
            out.insert(
                TopicPartition::new(topic, partition),
                (offset >= 0).then_some(offset),
            );
            Ok(())
        };
        if version >= 8 {
            for g in &response.groups {
                if let Some(e) = Error::from_code(g.error_code, None) {
                    return Err(e);
                }
                for t in &g.topics {
                    for p in &t.partitions {
                        found(
                            &t.name.0,
                            p.partition_index,
                            p.committed_offset,
                            p.error_code,
                        )?;
                    }
                }
            }
        } else {
            if let Some(e) = Error::from_code(response.error_code, None) {
                return Err(e);
            }
            for t in &response.topics {
                for p in &t.partitions {
                    found(
                        &t.name.0,
                        p.partition_index,
                        p.committed_offset,
                        p.error_code,
                    )?;
                }
            }
        }
        Ok(out)
    }

    /// Leaves the group (best effort) and stops heartbeating.
    pub(crate) async fn leave(&mut self) {
        self.stop_heartbeat();
        let (member_id, coordinator) = {
            let s = lock(&self.shared);
            (s.member_id.clone(), s.coordinator.clone())
        };
        let (Some(coordinator), false) = (coordinator, member_id.is_empty()) else {
            return;
        };
        let result = leave_group(
            &self.client,
            &coordinator,
            &self.config.group_id,
            &member_id,
        )
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "kafka consumer: LeaveGroup failed");
        }
        let mut s = lock(&self.shared);
        s.member_id.clear();
        s.generation = -1;
        s.rejoin_needed = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn commit_topics(offsets: &BTreeMap<TopicPartition, i64>) -> Vec<OffsetCommitRequestTopic> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, offset) in offsets {
        by_topic.entry(&tp.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    by_topic
        .into_iter()
        .map(|(t, partitions)| {
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(t)))
                .with_partitions(partitions)
        })
        .collect()
}

/// Asks any broker for the coordinator of `group`.
pub(crate) async fn find_coordinator(client: &Client, group: &str) -> Result<String, Error> {
    let response = client
        .call_any(|version| {
            let request = FindCoordinatorRequest::default().with_key_type(0);
            if version >= 4 {
                request.with_coordinator_keys(vec![str_bytes(group)])
            } else {
                request.with_key(str_bytes(group))
            }
        })
        .await?;
    let (code, host, port) = match response.coordinators.first() {
        Some(c) => (c.error_code, c.host.to_string(), c.port),
        None => (
            response.error_code,
            response.host.to_string(),
            response.port,
        ),
    };
    if let Some(e) = Error::from_code(code, None) {
        return Err(e);
    }
    let broker = crate::client::metadata::BrokerInfo {
        node_id: -1,
        host,
        port,
        rack: None,
    };
    Ok(broker.address())
}

async fn leave_group(
    client: &Client,
    coordinator: &str,
    group: &str,
    member_id: &str,
) -> Result<(), Error> {
    let response = client
        .call_addr(
            coordinator,
            |version| {
                let request = LeaveGroupRequest::default().with_group_id(group_id(group));
                if version >= 3 {
                    request.with_members(vec![MemberIdentity::default()
                        .with_member_id(str_bytes(member_id))
                        .with_reason((version >= 5).then(|| str_bytes("the consumer is closing")))])
                } else {
                    request.with_member_id(str_bytes(member_id))
                }
            },
            None,
        )
        .await?;
    match Error::from_code(response.error_code, None) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Heartbeats every `heartbeat_interval` for one generation until stopped, the generation
/// ends, or the membership is lost; then asks the consumer to rejoin.
async fn heartbeat(
    client: Client,
    config: GroupConfig,
    shared: Arc<Mutex<Membership>>,
    rejoin: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) {
    let clock = client.clock().clone();
    let (generation, member_id) = {
        let s = lock(&shared);
        (s.generation, s.member_id.clone())
    };
    let mut last_ok = clock.now();
    let mut failures = 0u32;
    let needs_rejoin = |reset_member: bool| {
        let mut s = lock(&shared);
        if s.generation == generation {
            s.rejoin_needed = true;
            if reset_member {
                s.member_id.clear();
                s.generation = -1;
            }
        }
        rejoin.notify();
    };
    loop {
        let wait = if failures == 0 {
            config.heartbeat_interval
        } else {
            client
                .retry_delay(failures - 1)
                .min(config.heartbeat_interval)
        };
        match select(clock.sleep(wait), &mut stop).await {
            Either::Left(((), _)) => {}
            Either::Right(_) => return,
        }
        let now = clock.now();
        let (coordinator, last_poll) = {
            let s = lock(&shared);
            if s.generation != generation || s.member_id != member_id {
                return;
            }
            (s.coordinator.clone(), s.last_poll)
        };
        if now.saturating_duration_since(last_poll) > config.max_poll_interval {
            tracing::warn!(group = %config.group_id, "kafka consumer: no poll within max_poll_interval, leaving the group");
            if let Some(c) = &coordinator {
                let _ = leave_group(&client, c, &config.group_id, &member_id).await;
            }
            needs_rejoin(true);
            return;
        }
        if now.saturating_duration_since(last_ok) > config.session_timeout {
            needs_rejoin(false);
            return;
        }
        let coordinator = match coordinator {
            Some(c) => c,
            None => match find_coordinator(&client, &config.group_id).await {
                Ok(c) => {
                    lock(&shared).coordinator = Some(c.clone());
                    c
                }
                Err(_) => {
                    failures += 1;
                    continue;
                }
            },
        };
        let result = client
            .call_addr(
                &coordinator,
                |_| {
                    HeartbeatRequest::default()
                        .with_group_id(group_id(&config.group_id))
                        .with_generation_id(generation)
                        .with_member_id(str_bytes(&member_id))
                },
                None,
            )
            .await;
        match result.map(|r| ResponseError::try_from_code(r.error_code)) {
            Ok(None) => {
                last_ok = now;
                failures = 0;
            }
            Ok(Some(ResponseError::RebalanceInProgress)) => {
                needs_rejoin(false);
                return;
            }
            Ok(Some(
                ResponseError::UnknownMemberId
                | ResponseError::IllegalGeneration
                | ResponseError::FencedInstanceId,
            )) => {
                needs_rejoin(true);
                return;
            }
            Ok(Some(code)) => {
                tracing::debug!(%code, "kafka consumer: heartbeat error");
                if needs_coordinator_lookup(code) {
                    lock(&shared).coordinator = None;
                }
                failures += 1;
            }
            Err(e) => {
                tracing::debug!(error = %e, "kafka consumer: heartbeat failed");
                lock(&shared).coordinator = None;
                failures += 1;
            }
        }
    }
}
