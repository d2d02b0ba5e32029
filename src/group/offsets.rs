//! OffsetCommit, OffsetFetch and offset expiry.
//!
//! A commit becomes an [`Output::Append`](super::Output::Append) of one batch (all its
//! partitions, atomically); the response and the offsets' visibility to OffsetFetch both wait
//! for [`GroupCoordinator::on_appended`], so an offset is only ever served once it is durable
//! on a quorum. Meanwhile the partitions count as pending: OffsetFetch with `require_stable`
//! answers UNSTABLE_OFFSET_COMMIT for them (the client retries), and expiry skips them.

use std::collections::BTreeSet;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::config::{APPEND_BATCH_MAX_BYTES, TOPIC_NAME_MAX_BYTES};
use super::coordinator::{Api, GroupCoordinator, PendingAppend, Reply};
use super::group::{Group, GroupState, TopicPartition};
use super::records::{self, OffsetValue};
use super::responses::error;

/// One topic of an OffsetCommit: per partition its error, or `None` while its record is
/// being appended.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TopicResults {
    pub name: String,
    pub partitions: Vec<(i32, Option<i16>)>,
}

/// The OffsetCommit response, with `pending_code` for the partitions that were appended.
pub(super) fn commit_response(
    results: Vec<TopicResults>,
    pending_code: i16,
) -> OffsetCommitResponse {
    OffsetCommitResponse::default().with_topics(
        results
            .into_iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.name)))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|(p, code)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code.unwrap_or(pending_code))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// One partition's committed offset as OffsetFetch reports it.
#[derive(Debug, Clone, PartialEq)]
struct FetchedOffset {
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: String,
    error: i16,
}

impl FetchedOffset {
    /// "No committed offset": -1, as Kafka answers.
    fn none(partition: i32, error: i16) -> FetchedOffset {
        FetchedOffset {
            partition,
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            error,
        }
    }

    fn committed(partition: i32, v: &OffsetValue) -> FetchedOffset {
        FetchedOffset {
            partition,
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata.clone(),
            error: error::NONE,
        }
    }
}

type TopicOffsets = Vec<(String, Vec<FetchedOffset>)>;

fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

impl GroupCoordinator {
    /// OffsetCommit: validated like Kafka (members commit with their generation; standalone
    /// consumers with member id "" and generation -1, only while the group has no members),
    /// then appended; answered by [`Self::on_appended`].
    pub fn commit_offsets(
        &mut self,
        now_ms: i64,
        version: i16,
        req: OffsetCommitRequest,
        reply: Reply,
    ) {
        self.cx.now_ms = now_ms;
        let group_id = req.group_id.0.to_string();
        let mut results: Vec<TopicResults> = req
            .topics
            .iter()
            .map(|t| TopicResults {
                name: t.name.0.to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, None))
                    .collect(),
            })
            .collect();
        if let Some(code) = self.commit_group_error(&group_id, version, &req) {
            let response = commit_response(results, code);
            self.cx.respond(reply, ResponseKind::OffsetCommit(response));
            self.settle(&group_id);
            return;
        }
        let group = &self.groups[&group_id];
        let mut records = Vec::new();
        let mut offsets: Vec<(TopicPartition, OffsetValue)> = Vec::new();
        let mut new_keys: BTreeSet<TopicPartition> = BTreeSet::new();
        for (topic, result) in req.topics.iter().zip(results.iter_mut()) {
            for (p, slot) in topic.partitions.iter().zip(result.partitions.iter_mut()) {
                let tp = (result.name.clone(), p.partition_index);
                let metadata = p.committed_metadata.as_deref().unwrap_or_default();
                let is_new = !group.offsets.contains_key(&tp) && !new_keys.contains(&tp);
                slot.1 = if result.name.len() > TOPIC_NAME_MAX_BYTES {
                    Some(error::UNKNOWN_TOPIC_OR_PARTITION)
                } else if metadata.len() > self.cx.config.offset_metadata_max_bytes {
                    Some(error::OFFSET_METADATA_TOO_LARGE)
                } else if is_new
                    && self.offsets_count + new_keys.len() >= self.cx.config.offsets_max_count
                {
                    Some(error::INVALID_COMMIT_OFFSET_SIZE)
                } else {
                    None
                };
                if slot.1.is_some() {
                    continue;
                }
                if is_new {
                    new_keys.insert(tp.clone());
                }
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: metadata.to_string(),
                    commit_timestamp_ms: now_ms,
                };
                let key = records::offset_key(&group_id, &tp.0, tp.1);
                records.push(self.cx.record(key, Some(value.encode())));
                offsets.push((tp, value));
            }
        }
        if records.is_empty() {
            let response = commit_response(results, error::NONE);
            self.cx.respond(reply, ResponseKind::OffsetCommit(response));
            self.settle(&group_id);
            return;
        }
        match self.cx.build(&records) {
            Err(code) => {
                let response = commit_response(results, error::from_append(code, true));
                self.cx.respond(reply, ResponseKind::OffsetCommit(response));
            }
            Ok(batch) => {
                let group = self.groups.get_mut(&group_id).expect("present");
                for (tp, _) in &offsets {
                    *group.pending_commits.entry(tp.clone()).or_default() += 1;
                }
                let pending = PendingAppend::Commit {
                    group: group_id.clone(),
                    reply,
                    results,
                    offsets,
                };
                self.cx.push_append(batch, pending);
            }
        }
        self.settle(&group_id);
    }

    /// The error every partition of the commit gets, if the group refuses it (Kafka's
    /// `handleCommitOffsets` + `validateOffsetCommit`). Creates the group of a standalone
    /// consumer's first commit.
    fn commit_group_error(
        &mut self,
        group_id: &str,
        version: i16,
        req: &OffsetCommitRequest,
    ) -> Option<i16> {
        if let Some(code) = self.group_status(group_id, Api::Commit) {
            return Some(code);
        }
        let generation = req.generation_id_or_member_epoch;
        let instance_id = if version >= 7 {
            req.group_instance_id.as_deref()
        } else {
            None
        };
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                // A member of a generation this coordinator does not know.
                return Some(error::ILLEGAL_GENERATION);
            }
            if self.groups.len() >= self.cx.config.groups_max_count {
                return Some(error::COORDINATOR_NOT_AVAILABLE);
            }
            let group = Group::new(group_id.to_string(), self.cx.now_ms);
            self.groups.insert(group_id.to_string(), group);
        }
        let group = self.groups.get_mut(group_id).expect("present");
        if let Some(code) = group.validate_commit(&req.member_id, instance_id, generation) {
            return Some(code);
        }
        match group.state {
            // The member has its new generation from JoinGroup but no assignment yet.
            GroupState::CompletingRebalance => Some(error::REBALANCE_IN_PROGRESS),
            // Commits are allowed while rebalancing: the heartbeat tells the member to rejoin.
            GroupState::Stable | GroupState::PreparingRebalance => {
                group.touch(&self.cx, &req.member_id);
                None
            }
            GroupState::Empty | GroupState::Dead => None,
        }
    }

    pub(super) fn complete_commit(
        &mut self,
        group_id: &str,
        reply: Reply,
        results: Vec<TopicResults>,
        offsets: Vec<(TopicPartition, OffsetValue)>,
        result: Result<(), i16>,
    ) {
        let group = self
            .groups
            .get_mut(group_id)
            .expect("a group with pending commits is kept");
        for (tp, _) in &offsets {
            let count = group.pending_commits.get_mut(tp).expect("pending commit");
            *count -= 1;
            if *count == 0 {
                group.pending_commits.remove(tp);
            }
        }
        let code = match result {
            Ok(()) => {
                for (tp, value) in offsets {
                    if group.offsets.insert(tp, value).is_none() {
                        self.offsets_count += 1;
                    }
                }
                error::NONE
            }
            Err(code) => error::from_append(code, true),
        };
        let response = commit_response(results, code);
        self.cx.respond(reply, ResponseKind::OffsetCommit(response));
        self.settle(group_id);
    }

    /// Removes expired offsets and the groups left with nothing, and appends their
    /// tombstones. Offsets expire `offsets_retention_ms` after their commit for standalone
    /// consumers (no protocol type), and for an empty group after the later of the commit and
    /// the moment the group became empty (Kafka uses the latter alone); a group with members
    /// keeps its offsets. Partitions with a commit in flight are kept.
    pub(super) fn expire_offsets(&mut self) {
        let now = self.cx.now_ms;
        let retention = self.cx.config.offsets_retention_ms;
        let mut tombstones = Vec::new();
        let mut dead = Vec::new();
        for (id, group) in self.groups.iter_mut() {
            let empty_since = match (&group.protocol_type, group.state) {
                (None, _) => Some(i64::MIN),
                (Some(_), GroupState::Empty) => Some(group.state_timestamp_ms),
                _ => None,
            };
            if let Some(empty_since) = empty_since {
                let expired: Vec<TopicPartition> = group
                    .offsets
                    .iter()
                    .filter(|(tp, v)| {
                        !group.pending_commits.contains_key(*tp)
                            && v.commit_timestamp_ms
                                .max(empty_since)
                                .saturating_add(retention)
                                <= now
                    })
                    .map(|(tp, _)| tp.clone())
                    .collect();
                for tp in expired {
                    group.offsets.remove(&tp);
                    self.offsets_count -= 1;
                    let key = records::offset_key(id, &tp.0, tp.1);
                    tombstones.push(self.cx.record(key, None));
                }
            }
            if group.state == GroupState::Empty && !group.has_offsets() {
                info!(group = %id, "removing empty group without offsets");
                if group.persisted {
                    tombstones.push(self.cx.record(records::group_key(id), None));
                }
                dead.push(id.clone());
            }
        }
        for id in dead {
            self.groups.remove(&id);
        }
        // Tombstones are small (a key is at most ~1.3 KiB): split them into batches well
        // under the limit.
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let mut tombstones = tombstones.into_iter().peekable();
        while let Some(record) = tombstones.next() {
            chunk_bytes += record.key.as_ref().map_or(0, |k| k.len()) + 32;
            chunk.push(record);
            if chunk_bytes >= APPEND_BATCH_MAX_BYTES / 2 || tombstones.peek().is_none() {
                match self.cx.build(&chunk) {
                    Ok(batch) => self.cx.push_append(
                        batch,
                        PendingAppend::Background {
                            what: "expiry tombstones",
                        },
                    ),
                    Err(code) => tracing::warn!(code, "expiry tombstones not written"),
                }
                chunk.clear();
                chunk_bytes = 0;
            }
        }
    }

    /// OffsetFetch (answered at once). v8+ may name several groups: the caller splits them by
    /// coordinator, asks each with the groups it owns, and concatenates the `groups` arrays.
    /// Null topics mean every partition the group committed. Unknown partitions (and groups)
    /// answer offset -1.
    pub fn fetch_offsets(&self, version: i16, req: &OffsetFetchRequest) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = req
                .groups
                .iter()
                .map(|g| {
                    let topics = g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                            .collect()
                    });
                    let (code, topics) =
                        match self.fetch_group(&g.group_id, topics, req.require_stable) {
                            Ok(topics) => (error::NONE, topics),
                            Err(code) => (code, Vec::new()),
                        };
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(code)
                        .with_topics(
                            topics
                                .into_iter()
                                .map(|(name, parts)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(str_bytes(name)))
                                        .with_partitions(
                                            parts
                                                .into_iter()
                                                .map(|p| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p.partition)
                                                        .with_committed_offset(p.offset)
                                                        .with_committed_leader_epoch(p.leader_epoch)
                                                        .with_metadata(Some(str_bytes(p.metadata)))
                                                        .with_error_code(p.error)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let require_stable = version >= 7 && req.require_stable;
        let requested: Option<Vec<(String, Vec<i32>)>> = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let (code, topics) =
            match self.fetch_group(&req.group_id, requested.clone(), require_stable) {
                Ok(topics) => (error::NONE, topics),
                // v1 has no top-level error: every requested partition carries it.
                Err(code) if version < 2 => {
                    let topics = requested
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, parts)| {
                            let parts = parts
                                .into_iter()
                                .map(|p| FetchedOffset::none(p, code))
                                .collect();
                            (name, parts)
                        })
                        .collect();
                    (error::NONE, topics)
                }
                Err(code) => (code, Vec::new()),
            };
        let topics = topics
            .into_iter()
            .map(|(name, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p.partition)
                                    .with_committed_offset(p.offset)
                                    .with_committed_leader_epoch(if version >= 5 {
                                        p.leader_epoch
                                    } else {
                                        -1
                                    })
                                    .with_metadata(Some(str_bytes(p.metadata)))
                                    .with_error_code(p.error)
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default()
            .with_topics(topics)
            .with_error_code(if version >= 2 { code } else { error::NONE })
    }

    fn fetch_group(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Result<TopicOffsets, i16> {
        if let Some(code) = self.group_status(group_id, Api::Fetch) {
            return Err(code);
        }
        let group = self.groups.get(group_id);
        let lookup = |tp: &TopicPartition| -> FetchedOffset {
            let Some(g) = group else {
                return FetchedOffset::none(tp.1, error::NONE);
            };
            if require_stable && g.pending_commits.contains_key(tp) {
                return FetchedOffset::none(tp.1, error::UNSTABLE_OFFSET_COMMIT);
            }
            match g.offsets.get(tp) {
                Some(v) => FetchedOffset::committed(tp.1, v),
                None => FetchedOffset::none(tp.1, error::NONE),
            }
        };
        let Some(topics) = topics else {
            let mut all: TopicOffsets = Vec::new();
            for tp in group.iter().flat_map(|g| g.offsets.keys()) {
                let fetched = lookup(tp);
                match all.last_mut() {
                    Some((name, parts)) if *name == tp.0 => parts.push(fetched),
                    _ => all.push((tp.0.clone(), vec![fetched])),
                }
            }
            return Ok(all);
        };
        Ok(topics
            .into_iter()
            .map(|(name, parts)| {
                let fetched = parts.iter().map(|p| lookup(&(name.clone(), *p))).collect();
                (name, fetched)
            })
            .collect())
    }
}
