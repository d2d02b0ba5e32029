//! The fetch path: committed data only (below the high watermark = Raft commit end), whole
//! stored batches handed over unchanged, long polling with `max_wait_ms` / `min_bytes`.

use fjord_log::LogError;
use fjord_replication::raft::Role;
use futures::channel::oneshot;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;

use super::Node;

/// Most bytes one fetch response carries, whatever the request asks.
pub const FETCH_RESPONSE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A fetch parked until enough data is committed or its wait is over.
pub(crate) struct FetchWait {
    req: FetchRequest,
    version: i16,
    deadline_ms: u64,
    reply: oneshot::Sender<Option<ResponseKind>>,
}

fn partition_data(index: i32, error: Option<ResponseError>) -> PartitionData {
    let mut p = PartitionData::default();
    p.partition_index = index;
    p.error_code = error.map_or(0, |e| e.code());
    p.high_watermark = -1;
    p.last_stable_offset = -1;
    p.log_start_offset = -1;
    p.preferred_read_replica = (-1).into();
    p
}

impl Node {
    pub(super) fn on_fetch(
        &mut self,
        req: FetchRequest,
        version: i16,
        reply: oneshot::Sender<Option<ResponseKind>>,
    ) {
        let (resp, bytes, errors) = self.build_fetch(&req, version);
        let enough = bytes >= req.min_bytes.max(0) as usize || errors || req.max_wait_ms <= 0;
        if enough {
            let _ = reply.send(Some(ResponseKind::Fetch(resp)));
        } else {
            let deadline_ms = self.now_ms() + req.max_wait_ms as u64;
            self.fetch_waiters.push(FetchWait {
                req,
                version,
                deadline_ms,
                reply,
            });
        }
    }

    /// Re-evaluates parked fetches after commits advanced (or on a tick, for deadlines).
    pub(super) fn resolve_fetch_waiters(&mut self, tick: bool) {
        if !tick && !self.commits_advanced {
            return;
        }
        self.commits_advanced = false;
        let now = self.now_ms();
        let waits = std::mem::take(&mut self.fetch_waiters);
        for w in waits {
            if w.reply.is_canceled() {
                continue;
            }
            let (resp, bytes, errors) = self.build_fetch(&w.req, w.version);
            if bytes >= w.req.min_bytes.max(0) as usize || errors || now >= w.deadline_ms {
                let _ = w.reply.send(Some(ResponseKind::Fetch(resp)));
            } else {
                self.fetch_waiters.push(w);
            }
        }
    }

    /// The response to `req` as of now, its total record bytes, and whether any partition
    /// failed (which answers at once rather than waiting).
    fn build_fetch(&mut self, req: &FetchRequest, version: i16) -> (FetchResponse, usize, bool) {
        let mut resp = FetchResponse::default();
        resp.session_id = 0;
        let limit = (req.max_bytes.max(0) as usize).min(FETCH_RESPONSE_SIZE_MAX_BYTES);
        let mut total = 0usize;
        let mut errors = false;
        for topic in &req.topics {
            let mut t = FetchableTopicResponse::default();
            t.topic = topic.topic.clone();
            t.topic_id = topic.topic_id;
            for p in &topic.partitions {
                let data = if req.replica_id.0 >= 0 {
                    // Replication is Raft's business: Kafka replica fetchers are not served.
                    Err(ResponseError::NotLeaderOrFollower)
                } else {
                    let budget = if total == 0 {
                        // The first non-empty partition may exceed the limits (KIP-74).
                        p.partition_max_bytes.max(0) as usize
                    } else {
                        (p.partition_max_bytes.max(0) as usize).min(limit.saturating_sub(total))
                    };
                    self.fetch_partition(&topic.topic.0, p, budget, req.isolation_level, version)
                };
                match data {
                    Ok(d) => {
                        total += d.records.as_ref().map_or(0, |r| r.len());
                        t.partitions.push(d);
                    }
                    Err(e) => {
                        errors = true;
                        t.partitions.push(partition_data(p.partition, Some(e)));
                    }
                }
            }
            resp.responses.push(t);
        }
        (resp, total, errors)
    }

    fn fetch_partition(
        &mut self,
        topic: &str,
        p: &kafka_protocol::messages::fetch_request::FetchPartition,
        budget: usize,
        isolation_level: i8,
        version: i16,
    ) -> Result<PartitionData, ResponseError> {
        let group = self
            .group_of(topic, p.partition)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let raft = self
            .multi
            .group(group)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if raft.role() != Role::Leader {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let epoch = raft.term() as i32;
        if p.current_leader_epoch >= 0 {
            if p.current_leader_epoch > epoch {
                return Err(ResponseError::UnknownLeaderEpoch);
            }
            if p.current_leader_epoch < epoch {
                return Err(ResponseError::FencedLeaderEpoch);
            }
        }
        let log = raft.log().log();
        let hw = raft.commit_end();
        let start = log.log_start_offset();
        if p.fetch_offset < 0
            || (p.fetch_offset as u64) < start
            || p.fetch_offset as u64 > log.log_end_offset()
        {
            return Err(ResponseError::OffsetOutOfRange);
        }
        let mut d = partition_data(p.partition, None);
        d.high_watermark = hw as i64;
        d.last_stable_offset = hw as i64;
        if version >= 5 {
            d.log_start_offset = start as i64;
        }
        if isolation_level == 1 {
            d.aborted_transactions = Some(Vec::new());
        }
        let offset = p.fetch_offset as u64;
        if offset < hw && budget > 0 {
            match log.read(offset, budget, hw) {
                Ok(read) => d.records = Some(read.bytes),
                Err(LogError::Corrupt { offset }) => {
                    tracing::error!(node = %self.id(), %group, offset, "corrupt batch not served");
                    self.multi.mark_for_verification(group);
                    self.fatal = Some(format!("{group} at offset {offset}"));
                    return Err(ResponseError::KafkaStorageError);
                }
                Err(e) => {
                    tracing::warn!(node = %self.id(), %group, "read failed: {e}");
                    return Err(ResponseError::KafkaStorageError);
                }
            }
        } else {
            d.records = Some(bytes::Bytes::new());
        }
        Ok(d)
    }
}
