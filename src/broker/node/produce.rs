//! The produce path: validate, deduplicate (idempotent producers), append through Raft,
//! answer after leader durability (acks=1) or commitment (acks=all).

use bytes::BytesMut;
use fjord_log::BatchError;
use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::{RaftLog, Role, Term};
use futures::channel::oneshot;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::ResponseError;

use super::{produced_header, rebuild_producers, Node, SlotResult};
use crate::broker::producer_state::SequenceCheck;

/// A produced batch waiting for durability or commitment.
pub(crate) struct Waiter {
    job: u64,
    slot: usize,
    group: GroupId,
    /// The term the batch was written in (identifies it in the log).
    entry_term: Term,
    /// The leader term in which the wait began: losing it ends the wait.
    leader_term: Term,
    base: u64,
    end: u64,
    acks: i16,
    deadline_ms: u64,
}

fn partition_response(index: i32, error: Option<ResponseError>) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default();
    r.index = index;
    r.error_code = error.map_or(0, |e| e.code());
    r.base_offset = -1;
    r.log_append_time_ms = -1;
    r.log_start_offset = -1;
    r
}

impl Node {
    pub(super) fn on_produce(
        &mut self,
        req: ProduceRequest,
        version: i16,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let acks = req.acks;
        // (topic, partition index) per slot, in request order.
        let layout: Vec<(TopicName, i32)> = req
            .topic_data
            .iter()
            .flat_map(|t| t.partition_data.iter().map(|p| (t.name.clone(), p.index)))
            .collect();
        let finish_layout = layout.clone();
        let (reply, silent) = if acks == 0 {
            // acks=0: Kafka never answers; the appends still happen.
            let _ = reply.send(None);
            (oneshot::channel().0, true)
        } else {
            (reply, false)
        };
        let job = self.new_job(
            layout.len(),
            reply,
            Box::new(move |_, results| {
                if silent {
                    return None;
                }
                let mut resp = ProduceResponse::default();
                for ((topic, _), result) in finish_layout.into_iter().zip(results) {
                    let SlotResult::Produce(mut p) = result else {
                        unreachable!("produce slots hold produce results")
                    };
                    if version < 5 {
                        p.log_start_offset = -1;
                    }
                    match resp.responses.iter_mut().find(|t| t.name == topic) {
                        Some(t) => t.partition_responses.push(p),
                        None => {
                            let mut t = TopicProduceResponse::default();
                            t.name = topic;
                            t.partition_responses.push(p);
                            resp.responses.push(t);
                        }
                    }
                }
                Some(ResponseKind::Produce(resp))
            }),
        );
        if !(-1..=1).contains(&acks) {
            for (slot, (_, index)) in layout.iter().enumerate() {
                let r = partition_response(*index, Some(ResponseError::InvalidRequiredAcks));
                self.complete_slot(job, slot, SlotResult::Produce(r));
            }
            return;
        }
        let transactional = req.transactional_id.is_some();
        let deadline_ms = self.now_ms() + req.timeout_ms.max(0) as u64;
        let mut slot = 0usize;
        for topic in req.topic_data {
            for p in topic.partition_data {
                let result = if transactional {
                    Err(ResponseError::TransactionalIdAuthorizationFailed)
                } else {
                    self.produce_partition(
                        job,
                        slot,
                        &topic.name,
                        p.index,
                        p.records.as_deref(),
                        acks,
                        deadline_ms,
                    )
                };
                match result {
                    Ok(Some(resp)) => self.complete_slot(job, slot, SlotResult::Produce(resp)),
                    Ok(None) => {}
                    Err(e) => {
                        let r = partition_response(p.index, Some(e));
                        self.complete_slot(job, slot, SlotResult::Produce(r));
                    }
                }
                slot += 1;
            }
        }
    }

    /// Appends one partition's batch. `Ok(Some)`: answered now; `Ok(None)`: a waiter will
    /// answer; `Err`: the error to answer with.
    #[allow(clippy::too_many_arguments)]
    fn produce_partition(
        &mut self,
        job: u64,
        slot: usize,
        topic: &str,
        index: i32,
        records: Option<&[u8]>,
        acks: i16,
        deadline_ms: u64,
    ) -> Result<Option<PartitionProduceResponse>, ResponseError> {
        let group = self
            .group_of(topic, index)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let raft = self
            .multi
            .group(group)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if raft.role() != Role::Leader {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let term = raft.term();
        let bytes = records
            .filter(|r| !r.is_empty())
            .ok_or(ResponseError::CorruptMessage)?;
        let header = produced_header(bytes).map_err(|e| match e {
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
            BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage,
            _ => ResponseError::InvalidRecord,
        })?;
        let max_message = self
            .image
            .effective_topic_config(topic, self.id(), &self.cfg.defaults)
            .map_or(i32::MAX, |c| c.max_message_bytes);
        if bytes.len() as u64 > max_message as u64 {
            return Err(ResponseError::MessageTooLarge);
        }
        if header.is_transactional() {
            return Err(ResponseError::TransactionalIdAuthorizationFailed);
        }
        // The leader's producer state covers everything in its log, committed or not.
        let stale = !matches!(
            self.partitions.get(&group).and_then(|p| p.producers.as_ref()),
            Some((t, _)) if *t == term
        );
        if stale {
            let table = match rebuild_producers(&self.multi, group) {
                Ok(table) => table,
                Err(e) => {
                    self.local_read_failed(group, &e);
                    return Err(ResponseError::KafkaStorageError);
                }
            };
            if let Some(p) = self.partitions.get_mut(&group) {
                p.producers = Some((term, table));
            }
        }
        let check = self
            .partitions
            .get(&group)
            .and_then(|p| p.producers.as_ref())
            .map_or(SequenceCheck::Append, |(_, t)| t.check(&header));
        let (base, end, entry_term) = match check {
            SequenceCheck::InvalidEpoch => return Err(ResponseError::InvalidProducerEpoch),
            SequenceCheck::OutOfOrder => return Err(ResponseError::OutOfOrderSequenceNumber),
            SequenceCheck::Duplicate(c) => {
                // Answer as the original was (or will be) answered.
                let entry_term = self
                    .multi
                    .group(group)
                    .and_then(|r| r.log().term_at(c.last_offset))
                    .ok_or(ResponseError::NotLeaderOrFollower)?;
                (c.base_offset, c.last_offset + 1, entry_term)
            }
            SequenceCheck::Append => {
                let (base, end) = self
                    .multi
                    .propose(group, BytesMut::from(bytes))
                    .map_err(|_| ResponseError::NotLeaderOrFollower)?;
                let mut stored = header;
                stored.base_offset = base;
                stored.partition_leader_epoch = term as i32;
                if let Some((_, table)) = self
                    .partitions
                    .get_mut(&group)
                    .and_then(|p| p.producers.as_mut())
                {
                    table.apply(&stored);
                }
                (base, end, term)
            }
        };
        if acks == 0 {
            return Ok(None);
        }
        self.produce_waiters.push(Waiter {
            job,
            slot,
            group,
            entry_term,
            leader_term: term,
            base,
            end,
            acks,
            deadline_ms,
        });
        let _ = index;
        Ok(None)
    }

    /// Answers the waiters whose batches are now durable (acks=1) or committed (acks=all),
    /// and fails those whose leader lost its term.
    pub(super) fn resolve_produce_waiters(&mut self) {
        let ack_before_quorum = self.cfg.bugs.ack_before_quorum;
        let waiters = std::mem::take(&mut self.produce_waiters);
        for w in waiters {
            // The batch is in the log already: whatever ends the wait, a later leader may
            // still commit it (one that was replicated its entry), so the answer is
            // REQUEST_TIMED_OUT — outcome unknown, the idempotent retry finds out — never
            // NOT_LEADER_OR_FOLLOWER, which tells the client it was not written.
            let Some(r) = self.multi.group(w.group) else {
                self.finish_waiter(&w, Err(ResponseError::RequestTimedOut));
                continue;
            };
            let ours = r.log().term_at(w.end - 1) == Some(w.entry_term);
            let done = ours
                && match w.acks {
                    1 => r.log().durable_end() >= w.end || r.commit_end() >= w.end,
                    _ if ack_before_quorum => true,
                    _ => r.commit_end() >= w.end,
                };
            if done {
                let log_start = r.log().start_offset();
                self.finish_waiter(&w, Ok(log_start));
            } else if r.term() != w.leader_term || r.role() != Role::Leader || !ours {
                self.finish_waiter(&w, Err(ResponseError::RequestTimedOut));
            } else {
                self.produce_waiters.push(w);
            }
        }
    }

    /// Times out the waiters past their request's deadline.
    pub(super) fn expire_produce_waiters(&mut self) {
        let now = self.now_ms();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.produce_waiters)
            .into_iter()
            .partition(|w| w.deadline_ms <= now);
        self.produce_waiters = kept;
        for w in expired {
            self.finish_waiter(&w, Err(ResponseError::RequestTimedOut));
        }
    }

    fn finish_waiter(&mut self, w: &Waiter, result: Result<u64, ResponseError>) {
        let index = self
            .partitions
            .get(&w.group)
            .map_or(w.group.partition as i32, |p| p.partition);
        let resp = match result {
            Ok(log_start) => {
                let mut r = partition_response(index, None);
                r.base_offset = w.base as i64;
                r.log_start_offset = log_start as i64;
                r
            }
            Err(e) => partition_response(index, Some(e)),
        };
        self.complete_slot(w.job, w.slot, SlotResult::Produce(resp));
    }
}
