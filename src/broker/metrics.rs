//! What a broker counts about itself, for Prometheus (`fjord::runtime::metrics` serves it).
//!
//! Two halves, both deterministic (time only from the broker's [`Clock`], ordered maps only):
//!
//! * [`RequestMetrics`]: per Kafka API, requests and a latency histogram (from the moment a
//!   decoded request reaches [`super::BrokerHandle`] until its response is ready, so queueing
//!   in the actor counts; a long-polling fetch counts its wait), plus bytes and records
//!   produced and bytes fetched. Updated by the connection tasks through the handle.
//! * [`NodeMetrics`]: a snapshot of the actor's state taken on request — every local
//!   partition replica's offsets, leadership and in-sync replicas, Raft term changes and
//!   leaderships gained, and the lag of the consumer groups this node coordinates.

use std::collections::BTreeMap;
use std::time::Duration;

use fjord_replication::multiraft::GroupId;
use fjord_replication::raft::{Role, Status, Term};
use fjord_replication::{Clock, NodeId};
use kafka_protocol::messages::{RequestKind, ResponseKind};

/// Upper bounds of the latency histogram buckets, in microseconds (an implicit +Inf bucket
/// follows): 100 µs to 10 s, roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKET_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket latency histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    counts: [u64; LATENCY_BUCKET_BOUNDS_US.len() + 1],
    sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKET_BOUNDS_US.partition_point(|b| *b < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of all observations, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The observations made since `earlier` (a snapshot of this histogram).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut d = Histogram::default();
        for ((d, now), then) in d.counts.iter_mut().zip(self.counts).zip(earlier.counts) {
            *d = now.saturating_sub(then);
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    /// The upper bound (µs) of the bucket holding the `q`-quantile: `Some(None)` when that
    /// is the +Inf bucket, `None` without observations.
    pub fn quantile_bound_us(&self, q: f64) -> Option<Option<u64>> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bound, count) in self.buckets() {
            seen += count;
            if seen >= rank {
                return Some(bound);
            }
        }
        Some(None)
    }

    /// `(upper bound in µs, observations in this bucket)`, the last bound being `None`
    /// (+Inf). Not cumulative.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        LATENCY_BUCKET_BOUNDS_US
            .iter()
            .map(|b| Some(*b))
            .chain(std::iter::once(None))
            .zip(self.counts.iter().copied())
    }
}

/// One Kafka API's requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiMetrics {
    pub requests: u64,
    pub latency: Histogram,
}

/// Request-level counters of one broker (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMetrics {
    /// By Kafka API key.
    pub apis: BTreeMap<i16, ApiMetrics>,
    /// Record batch bytes received in Produce requests.
    pub bytes_in: u64,
    /// Records received in Produce requests (as their batches declare).
    pub records_in: u64,
    /// Record batch bytes sent in Fetch responses.
    pub bytes_out: u64,
}

/// What a request brings in, measured before it is handed to the actor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestSize {
    bytes: u64,
    records: u64,
}

/// Byte offset and size of `records count` in a RecordBatch v2 header.
const BATCH_RECORDS_COUNT_OFFSET: usize = 57;

impl RequestSize {
    pub(crate) fn of(request: &RequestKind) -> RequestSize {
        let RequestKind::Produce(p) = request else {
            return RequestSize::default();
        };
        let mut size = RequestSize::default();
        for t in &p.topic_data {
            for part in &t.partition_data {
                let Some(records) = &part.records else {
                    continue;
                };
                size.bytes += records.len() as u64;
                // Only the first batch's count: clients send one batch per partition.
                if let Some(count) = records
                    .get(BATCH_RECORDS_COUNT_OFFSET..BATCH_RECORDS_COUNT_OFFSET + 4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                {
                    size.records += u64::from(u32::from_be_bytes(count));
                }
            }
        }
        size
    }
}

impl RequestMetrics {
    /// Counts one answered (or dropped: `response` is `None`) request of `api_key` that
    /// started at `start`.
    pub(crate) fn record(
        &mut self,
        api_key: i16,
        size: RequestSize,
        response: Option<&ResponseKind>,
        latency: Duration,
    ) {
        let api = self.apis.entry(api_key).or_default();
        api.requests += 1;
        api.latency.observe(latency);
        self.bytes_in += size.bytes;
        self.records_in += size.records;
        if let Some(ResponseKind::Fetch(f)) = response {
            self.bytes_out += f
                .responses
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
                .sum::<u64>();
        }
    }
}

/// Elapsed time on `clock` since `start`.
pub(crate) fn since(clock: &dyn Clock, start: fjord_replication::Instant) -> Duration {
    clock.now().saturating_duration_since(start)
}

/// One local replica of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: i32,
    pub leader: bool,
    pub term: Term,
    pub log_start: u64,
    pub log_end: u64,
    /// The commit end as this replica knows it (the leader's is authoritative).
    pub high_watermark: u64,
    pub replicas: usize,
    /// Voters caught up with the commit end, the leader included (`None` on followers).
    pub in_sync: Option<usize>,
}

impl PartitionMetrics {
    /// Led here with fewer in-sync replicas than replicas.
    pub fn under_replicated(&self) -> bool {
        self.in_sync.is_some_and(|isr| isr < self.replicas)
    }
}

/// A committed offset of a group this node coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffsetMetrics {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// High watermark − committed offset, when this node hosts a replica of the partition.
    pub lag: Option<i64>,
}

/// Raft activity of all local groups since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftCounters {
    /// Times a local group's term advanced.
    pub term_changes: u64,
    /// Times a local group's member became leader.
    pub leaderships_gained: u64,
    last: BTreeMap<GroupId, (Term, Role)>,
}

impl RaftCounters {
    /// Notes a status report of `group`.
    pub(crate) fn observe(&mut self, group: GroupId, status: &Status) {
        let previous = self.last.insert(group, (status.term, status.role));
        let (term, role) = previous.unwrap_or((0, Role::Follower));
        if status.term > term {
            self.term_changes += 1;
        }
        if status.role == Role::Leader && (role != Role::Leader || status.term > term) {
            self.leaderships_gained += 1;
        }
    }

    /// Forgets a removed group.
    pub(crate) fn forget(&mut self, group: GroupId) {
        self.last.remove(&group);
    }
}

/// A snapshot of one broker's state (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    pub node_id: NodeId,
    /// This node leads the metadata group.
    pub active_controller: bool,
    /// Local partition replicas (the metadata group excluded), by topic and partition.
    pub partitions: Vec<PartitionMetrics>,
    pub group_offsets: Vec<GroupOffsetMetrics>,
    pub raft: RaftCounters,
}

impl NodeMetrics {
    pub fn leader_count(&self) -> usize {
        self.partitions.iter().filter(|p| p.leader).count()
    }

    pub fn under_replicated_count(&self) -> usize {
        self.partitions
            .iter()
            .filter(|p| p.under_replicated())
            .count()
    }
}

/// Everything a broker reports to Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerMetrics {
    pub node: NodeMetrics,
    pub requests: RequestMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_replication::raft::Membership;

    #[test]
    fn histogram_quantiles_differences_and_sums() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_bound_us(0.5), None);
        for ms in [1u64, 2, 2, 3, 40] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.quantile_bound_us(0.5), Some(Some(2_500)));
        assert_eq!(h.quantile_bound_us(0.99), Some(Some(50_000)));
        let before = h.clone();
        h.observe(Duration::from_secs(20));
        let d = h.since(&before);
        assert_eq!(d.count(), 1);
        assert_eq!(d.quantile_bound_us(0.5), Some(None));
        let mut sum = before.clone();
        sum.merge(&d);
        assert_eq!(sum, h);
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us(), 100 + 101 + 3_000 + 60_000_000);
        let b: Vec<_> = h.buckets().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            b,
            vec![(Some(100), 1), (Some(250), 1), (Some(5_000), 1), (None, 1)]
        );
    }

    fn status(term: Term, role: Role) -> Status {
        Status {
            id: NodeId(1),
            role,
            term,
            leader: None,
            commit_end: 0,
            log_end: 0,
            durable_end: 0,
            log_start: 0,
            membership: Membership::default(),
            matches: BTreeMap::new(),
        }
    }

    #[test]
    fn raft_counters_count_term_changes_and_leaderships() {
        let mut c = RaftCounters::default();
        let g = GroupId::new(1, 0);
        c.observe(g, &status(1, Role::Candidate));
        c.observe(g, &status(1, Role::Leader));
        c.observe(g, &status(1, Role::Leader));
        c.observe(g, &status(2, Role::Follower));
        c.observe(g, &status(3, Role::Leader));
        assert_eq!((c.term_changes, c.leaderships_gained), (3, 2));
        c.forget(g);
        c.observe(g, &status(3, Role::Leader));
        assert_eq!((c.term_changes, c.leaderships_gained), (4, 3));
    }

    #[test]
    fn produce_sizes_come_from_the_batches() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::ProduceRequest;
        let spec = fjord_log::RecordSpec {
            key: None,
            value: Some(bytes::Bytes::from_static(b"0123456789")),
            headers: Vec::new(),
            timestamp_ms: 0,
        };
        let batch =
            fjord_log::build_batch(&[spec.clone(), spec.clone(), spec], &Default::default())
                .expect("batch");
        let req = ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
            .with_partition_data(vec![
                PartitionProduceData::default().with_records(Some(batch.clone())),
                PartitionProduceData::default().with_records(None),
            ])]);
        let size = RequestSize::of(&RequestKind::Produce(req));
        assert_eq!(size.bytes, batch.len() as u64);
        assert_eq!(size.records, 3);
        let mut m = RequestMetrics::default();
        m.record(0, size, None, Duration::from_millis(2));
        m.record(0, size, None, Duration::from_millis(4));
        assert_eq!(m.apis[&0].requests, 2);
        assert_eq!(m.apis[&0].latency.sum_us(), 6_000);
        assert_eq!((m.bytes_in, m.records_in), (2 * batch.len() as u64, 6));
    }
}
