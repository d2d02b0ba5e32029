//! The consumer: manual assignment or group subscription (classic protocol, client-side
//! assignors), a fetch loop with per-partition positions, committed offsets and
//! `auto_offset_reset`.
//!
//! Like the Java consumer it is driven by [`Consumer::poll`]: joining and rebalancing,
//! offset lookups, auto-commits and fetches all happen inside it; only heartbeats run in a
//! background task (so slow processing between polls does not cost the membership, up to
//! `max_poll_interval`). A poll waits at most `max_wait` for records, except that a
//! JoinGroup in flight is waited for (up to the rebalance timeout).
//!
//! Positions are the next offset to return. A rebalance commits positions first when
//! auto-commit is on (as the Java client's `onJoinPrepare`); the eager protocol revokes
//! everything before rejoining, the cooperative one only what moves (then rejoins once more
//! so the moved partitions can be handed over).

pub mod assignor;
pub mod fetcher;
mod group;
pub mod protocol;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fjord_replication::{BoxFuture, Instant};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::FetchResponse;

use crate::client::cluster::Client;
use crate::client::error::{needs_metadata_refresh, Error, ResponseError};
use crate::client::metadata::TopicPartition;
pub use assignor::AssignorKind;
use fetcher::{Buffered, FetchLimits};
use group::{Group, GroupConfig, JoinOutcome};

/// A record as consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: i64,
}

/// Where to start when there is no committed offset, or the position is out of range
/// (`auto.offset.reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail with [`Error::NoOffsetForPartition`].
    None,
}

/// Consumer settings; defaults are the Java client's.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Required for `subscribe` and for committing offsets.
    pub group_id: Option<String>,
    pub auto_offset_reset: OffsetReset,
    pub enable_auto_commit: bool,
    pub auto_commit_interval: Duration,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Longest time between polls before the member leaves the group; also the rebalance
    /// timeout sent in JoinGroup (as the Java client does).
    pub max_poll_interval: Duration,
    /// In order of preference (`partition.assignment.strategy`). Rebalancing is cooperative
    /// only if all of them are cooperative.
    pub assignors: Vec<AssignorKind>,
    pub fetch_max_wait: Duration,
    pub fetch_min_bytes: i32,
    pub fetch_max_bytes: i32,
    pub max_partition_fetch_bytes: i32,
    /// Most records one `poll` returns.
    pub max_poll_records: usize,
    pub client_rack: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            auto_offset_reset: OffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
            assignors: vec![AssignorKind::Range, AssignorKind::CooperativeSticky],
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            max_poll_records: 500,
            client_rack: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Look up the committed offset (or reset if none).
    Unknown,
    /// Reset by `auto_offset_reset`.
    Reset,
    Known(i64),
}

#[derive(Debug)]
struct PartitionState {
    position: Position,
    high_watermark: Option<i64>,
    retry_at: Option<Instant>,
}

impl PartitionState {
    fn new() -> PartitionState {
        PartitionState {
            position: Position::Unknown,
            high_watermark: None,
            retry_at: None,
        }
    }
}

struct FetchDone {
    node: i32,
    offsets: BTreeMap<TopicPartition, i64>,
    result: Result<FetchResponse, Error>,
}

fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(Instant::from_nanos(u64::MAX))
}

/// A Kafka consumer. Not shared: one task drives it through `poll`.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    group: Option<Group>,
    /// `Some` in subscription mode.
    subscription: Option<BTreeSet<String>>,
    /// The current assignment and its positions.
    partitions: BTreeMap<TopicPartition, PartitionState>,
    buffered: VecDeque<Buffered>,
    in_flight: FuturesUnordered<BoxFuture<'static, FetchDone>>,
    in_flight_nodes: BTreeSet<i32>,
    in_flight_partitions: BTreeSet<TopicPartition>,
    next_auto_commit: Instant,
    /// Earliest next offset lookup or metadata refresh after a failure.
    retry_at: Option<Instant>,
    failures: u32,
    closed: bool,
}

impl Consumer {
    pub fn new(client: &Client, config: ConsumerConfig) -> Result<Consumer, Error> {
        if config.assignors.is_empty() {
            return Err(Error::InvalidArgument("at least one assignor".into()));
        }
        if config.max_poll_records == 0 {
            return Err(Error::InvalidArgument(
                "max_poll_records must be positive".into(),
            ));
        }
        let group = config.group_id.as_ref().map(|id| {
            Group::new(
                client.clone(),
                GroupConfig {
                    group_id: id.clone(),
                    session_timeout: config.session_timeout,
                    rebalance_timeout: config.max_poll_interval,
                    heartbeat_interval: config.heartbeat_interval,
                    max_poll_interval: config.max_poll_interval,
                    assignors: config.assignors.clone(),
                    rack_id: config.client_rack.clone(),
                },
            )
        });
        let now = client.clock().now();
        Ok(Consumer {
            client: client.clone(),
            next_auto_commit: after(now, config.auto_commit_interval),
            config,
            group,
            subscription: None,
            partitions: BTreeMap::new(),
            buffered: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            in_flight_nodes: BTreeSet::new(),
            in_flight_partitions: BTreeSet::new(),
            retry_at: None,
            failures: 0,
            closed: false,
        })
    }

    /// Consumes exactly `partitions` (no group membership; commits still go to `group_id`
    /// if set). Replaces any earlier assignment.
    pub fn assign(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<(), Error> {
        if self.subscription.is_some() {
            return Err(Error::InvalidArgument("already subscribed".into()));
        }
        let wanted: BTreeSet<TopicPartition> = partitions.into_iter().collect();
        self.client
            .register_topics(wanted.iter().map(|tp| tp.topic.as_str()));
        let gone: Vec<TopicPartition> = self
            .partitions
            .keys()
            .filter(|tp| !wanted.contains(*tp))
            .cloned()
            .collect();
        self.revoke(&gone);
        for tp in wanted {
            self.partitions
                .entry(tp)
                .or_insert_with(PartitionState::new);
        }
        Ok(())
    }

    /// Joins `group_id` consuming `topics`; partitions come from the group's assignment.
    pub fn subscribe<S: Into<String>>(
        &mut self,
        topics: impl IntoIterator<Item = S>,
    ) -> Result<(), Error> {
        let topics: BTreeSet<String> = topics.into_iter().map(Into::into).collect();
        let Some(group) = self.group.as_mut() else {
            return Err(Error::InvalidArgument("subscribe needs a group_id".into()));
        };
        if self.subscription.is_none() && !self.partitions.is_empty() {
            return Err(Error::InvalidArgument("already assigned partitions".into()));
        }
        self.client
            .register_topics(topics.iter().map(String::as_str));
        group.set_topics(topics.clone());
        self.subscription = Some(topics);
        Ok(())
    }

    /// The partitions currently assigned.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// The next offset `poll` returns for `tp`, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        match self.partitions.get(tp)?.position {
            Position::Known(p) => Some(p),
            _ => None,
        }
    }

    /// The high watermark of `tp` from the last fetch (lag = high watermark - position).
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp)?.high_watermark
    }

    /// The group generation and member id, once joined.
    pub fn membership(&self) -> Option<(i32, String)> {
        self.group.as_ref()?.generation()
    }

    /// Continues `tp` from `offset` at the next poll.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<(), Error> {
        let Some(state) = self.partitions.get_mut(tp) else {
            return Err(Error::InvalidArgument(format!("{tp} is not assigned")));
        };
        state.position = Position::Known(offset);
        state.retry_at = None;
        self.buffered.retain(|b| &b.tp != tp);
        Ok(())
    }

    fn revoke(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.partitions.remove(tp);
        }
        self.buffered
            .retain(|b| self.partitions.contains_key(&b.tp));
    }

    /// Waits up to `max_wait` for records (at most `max_poll_records`). Empty when none
    /// arrived in time.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumerRecord>, Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        let clock = self.client.clock().clone();
        let deadline = after(clock.now(), max_wait);
        if let Some(group) = &self.group {
            group.polled(clock.now());
        }
        loop {
            if self.subscription.is_some() && !self.ensure_group(deadline).await? {
                return Ok(Vec::new());
            }
            let now = clock.now();
            if self.retry_at.is_none_or(|at| at <= now) {
                self.retry_at = None;
                self.refresh_metadata().await;
                self.update_positions().await?;
            }
            self.maybe_auto_commit().await;
            let records = self.drain_buffered();
            if !records.is_empty() {
                return Ok(records);
            }
            let now = clock.now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            self.send_fetches(now, deadline);
            // Backoffs that already ended were acted on above (fetches sent, lookups
            // retried); counting them would make this a busy loop.
            let mut wake = deadline;
            for at in self
                .partitions
                .values()
                .filter_map(|p| p.retry_at)
                .chain(self.retry_at)
                .filter(|at| *at > now)
            {
                wake = wake.min(at);
            }
            let mut sleep = clock.sleep(wake.saturating_duration_since(now));
            let rejoin = self.group.as_ref().map(|g| g.rejoin.clone());
            let mut rejoin_notified = rejoin.as_ref().map(|r| Box::pin(r.notified()));
            let in_flight = &mut self.in_flight;
            let done = futures::future::poll_fn(|cx| {
                if !in_flight.is_empty() {
                    if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                        return Poll::Ready(Some(done));
                    }
                }
                if let Some(r) = rejoin_notified.as_mut() {
                    if r.as_mut().poll_unpin(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
                if sleep.poll_unpin(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            if let Some(done) = done {
                self.on_fetch(done)?;
            }
        }
    }

    /// Joins or rejoins the group if needed. `Ok(false)`: not a member yet.
    async fn ensure_group(&mut self, deadline: Instant) -> Result<bool, Error> {
        let Some(group) = self.group.as_ref() else {
            return Ok(false);
        };
        if !group.needs_rejoin() {
            return Ok(true);
        }
        let cooperative = group.cooperative();
        if self.config.enable_auto_commit {
            if let Err(e) = self.commit_positions().await {
                tracing::debug!(error = %e, "kafka consumer: commit before rebalance failed");
            }
        }
        if !cooperative {
            let all: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            self.revoke(&all);
        }
        let owned: BTreeSet<TopicPartition> = self.partitions.keys().cloned().collect();
        let Some(group) = self.group.as_mut() else {
            return Ok(false);
        };
        let assigned = match group.join(&owned, deadline).await? {
            JoinOutcome::NotYet => return Ok(false),
            JoinOutcome::Joined(assigned) => assigned,
        };
        let revoked: Vec<TopicPartition> = owned.difference(&assigned).cloned().collect();
        if cooperative && !revoked.is_empty() {
            // Give the revoked partitions up, then rejoin so they can be reassigned.
            group.request_rejoin();
        }
        self.revoke(&revoked);
        self.client
            .register_topics(assigned.iter().map(|tp| tp.topic.as_str()));
        for tp in assigned {
            self.partitions
                .entry(tp)
                .or_insert_with(PartitionState::new);
        }
        Ok(true)
    }

    async fn refresh_metadata(&mut self) {
        if !self.client.metadata_needs_refresh() {
            return;
        }
        match self.client.refresh_metadata().await {
            Ok(_) => {
                if let Some(group) = &self.group {
                    group.check_metadata();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "kafka consumer: metadata refresh failed");
                self.failed();
            }
        }
    }

    fn failed(&mut self) {
        let delay = self.client.retry_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = self.client.clock().now().checked_add(delay);
    }

    /// Resolves unknown positions: committed offsets first, then `auto_offset_reset`.
    async fn update_positions(&mut self) -> Result<(), Error> {
        let unknown: BTreeSet<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.position == Position::Unknown)
            .map(|(tp, _)| tp.clone())
            .collect();
        if !unknown.is_empty() {
            let committed = match self.group.as_mut() {
                Some(group) => match group.committed(&unknown).await {
                    Ok(c) => c,
                    Err(e) if e.is_retriable() => {
                        tracing::debug!(error = %e, "kafka consumer: committed offsets unavailable");
                        self.failed();
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
                None => BTreeMap::new(),
            };
            for tp in &unknown {
                if let Some(state) = self.partitions.get_mut(tp) {
                    state.position = match committed.get(tp).copied().flatten() {
                        Some(offset) => Position::Known(offset),
                        None => Position::Reset,
                    };
                }
            }
        }
        let reset: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.position == Position::Reset)
            .map(|(tp, _)| tp.clone())
            .collect();
        if reset.is_empty() {
            return Ok(());
        }
        let timestamp = match self.config.auto_offset_reset {
            OffsetReset::Earliest => fetcher::EARLIEST_TIMESTAMP,
            OffsetReset::Latest => fetcher::LATEST_TIMESTAMP,
            OffsetReset::None => {
                let tp = &reset[0];
                return Err(Error::NoOffsetForPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                });
            }
        };
        let metadata = self.client.metadata();
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in reset {
            match metadata.leader(&tp.topic, tp.partition) {
                Some(leader) => by_leader.entry(leader).or_default().push(tp),
                None => self.client.request_metadata_update(),
            }
        }
        let mut ok = true;
        for (leader, tps) in by_leader {
            let result = self
                .client
                .call_node(
                    leader,
                    |_| fetcher::list_offsets_request(&tps, timestamp),
                    None,
                )
                .await;
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "kafka consumer: ListOffsets failed");
                    ok = false;
                    continue;
                }
            };
            for t in &response.topics {
                for p in &t.partitions {
                    let tp = TopicPartition::new(t.name.0.to_string(), p.partition_index);
                    match ResponseError::try_from_code(p.error_code) {
                        None => {
                            if let Some(state) = self.partitions.get_mut(&tp) {
                                if state.position == Position::Reset {
                                    state.position = Position::Known(p.offset);
                                }
                            }
                        }
                        Some(code) => {
                            tracing::debug!(%tp, %code, "kafka consumer: ListOffsets error");
                            if needs_metadata_refresh(code) {
                                self.client.request_metadata_update();
                            }
                            ok = false;
                        }
                    }
                }
            }
        }
        if ok {
            self.failures = 0;
        } else {
            self.failed();
        }
        Ok(())
    }

    fn send_fetches(&mut self, now: Instant, deadline: Instant) {
        let metadata = self.client.metadata();
        let mut per_node: BTreeMap<i32, BTreeMap<TopicPartition, i64>> = BTreeMap::new();
        let buffered: BTreeSet<&TopicPartition> = self.buffered.iter().map(|b| &b.tp).collect();
        for (tp, state) in &self.partitions {
            let Position::Known(offset) = state.position else {
                continue;
            };
            if self.in_flight_partitions.contains(tp)
                || buffered.contains(tp)
                || state.retry_at.is_some_and(|at| at > now)
            {
                continue;
            }
            let Some(leader) = metadata.leader(&tp.topic, tp.partition) else {
                self.client.request_metadata_update();
                continue;
            };
            if self.in_flight_nodes.contains(&leader) {
                continue;
            }
            per_node
                .entry(leader)
                .or_default()
                .insert(tp.clone(), offset);
        }
        let limits = FetchLimits {
            max_wait: self
                .config
                .fetch_max_wait
                .min(deadline.saturating_duration_since(now)),
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_max_bytes,
            partition_max_bytes: self.config.max_partition_fetch_bytes,
        };
        let timeout = self.client.config().request_timeout + limits.max_wait;
        for (node, offsets) in per_node {
            self.in_flight_nodes.insert(node);
            self.in_flight_partitions.extend(offsets.keys().cloned());
            let client = self.client.clone();
            self.in_flight.push(Box::pin(async move {
                let result = client
                    .call_node(
                        node,
                        |_| fetcher::fetch_request(&offsets, limits),
                        Some(timeout),
                    )
                    .await;
                FetchDone {
                    node,
                    offsets,
                    result,
                }
            }));
        }
    }

    fn on_fetch(&mut self, done: FetchDone) -> Result<(), Error> {
        self.in_flight_nodes.remove(&done.node);
        for tp in done.offsets.keys() {
            self.in_flight_partitions.remove(tp);
        }
        let now = self.client.clock().now();
        let backoff = after(now, self.client.config().retry_backoff);
        let response = match done.result {
            Ok(r) if r.error_code == 0 => r,
            Ok(r) => {
                tracing::debug!(code = r.error_code, "kafka consumer: fetch error");
                self.delay(done.offsets.keys(), backoff);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(node = done.node, error = %e, "kafka consumer: fetch failed");
                self.client.request_metadata_update();
                self.delay(done.offsets.keys(), backoff);
                return Ok(());
            }
        };
        for topic in response.responses {
            for p in topic.partitions {
                let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition_index);
                let Some(&fetch_offset) = done.offsets.get(&tp) else {
                    continue;
                };
                let Some(state) = self.partitions.get_mut(&tp) else {
                    continue;
                };
                if state.position != Position::Known(fetch_offset) {
                    // Seeked or revoked meanwhile: this data is stale.
                    continue;
                }
                match ResponseError::try_from_code(p.error_code) {
                    None => {
                        state.high_watermark = Some(p.high_watermark);
                        let Some(data) = p.records else {
                            continue;
                        };
                        let parsed = fetcher::parse_fetched(&tp, &data, fetch_offset)?;
                        if !parsed.records.is_empty() || parsed.next_offset > fetch_offset {
                            self.buffered.push_back(Buffered {
                                tp,
                                records: parsed.records.into(),
                                next_offset: parsed.next_offset,
                            });
                        }
                    }
                    Some(ResponseError::OffsetOutOfRange) => {
                        tracing::debug!(%tp, fetch_offset, "kafka consumer: offset out of range, resetting");
                        state.position = Position::Reset;
                    }
                    Some(code) => {
                        tracing::debug!(%tp, %code, "kafka consumer: partition fetch error");
                        if needs_metadata_refresh(code) {
                            self.client.request_metadata_update();
                        }
                        state.retry_at = Some(backoff);
                    }
                }
            }
        }
        Ok(())
    }

    fn delay<'a>(&mut self, tps: impl Iterator<Item = &'a TopicPartition>, until: Instant) {
        for tp in tps {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.retry_at = Some(until);
            }
        }
    }

    /// Hands out buffered records, advancing positions.
    fn drain_buffered(&mut self) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        while out.len() < self.config.max_poll_records {
            let Some(front) = self.buffered.front_mut() else {
                break;
            };
            let Some(state) = self.partitions.get_mut(&front.tp) else {
                self.buffered.pop_front();
                continue;
            };
            while out.len() < self.config.max_poll_records {
                let Some(record) = front.records.pop_front() else {
                    break;
                };
                state.position = Position::Known(record.offset + 1);
                out.push(record);
            }
            if front.records.is_empty() {
                if let Position::Known(p) = state.position {
                    state.position = Position::Known(p.max(front.next_offset));
                }
                self.buffered.pop_front();
            }
        }
        out
    }

    async fn maybe_auto_commit(&mut self) {
        if !self.config.enable_auto_commit || self.group.is_none() {
            return;
        }
        let now = self.client.clock().now();
        if now < self.next_auto_commit {
            return;
        }
        self.next_auto_commit = after(now, self.config.auto_commit_interval);
        if let Err(e) = self.commit_positions().await {
            tracing::debug!(error = %e, "kafka consumer: auto-commit failed");
        }
    }

    fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.partitions
            .iter()
            .filter_map(|(tp, s)| match s.position {
                Position::Known(p) => Some((tp.clone(), p)),
                _ => None,
            })
            .collect()
    }

    async fn commit_positions(&mut self) -> Result<(), Error> {
        let offsets = self.positions();
        self.commit_offsets(offsets).await
    }

    /// Commits the current positions of all assigned partitions.
    pub async fn commit_sync(&mut self) -> Result<(), Error> {
        self.commit_positions().await
    }

    /// Commits `offsets` (next offsets to consume) for the group.
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<TopicPartition, i64>,
    ) -> Result<(), Error> {
        let Some(group) = self.group.as_mut() else {
            return Err(Error::InvalidArgument("committing needs a group_id".into()));
        };
        group.commit(&offsets).await
    }

    /// The group's committed offsets for `partitions` (`None`: nothing committed).
    pub async fn committed(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>, Error> {
        let Some(group) = self.group.as_mut() else {
            return Err(Error::InvalidArgument(
                "committed offsets need a group_id".into(),
            ));
        };
        group.committed(&partitions.iter().cloned().collect()).await
    }

    /// Commits (with auto-commit on) and leaves the group. Dropping a consumer without
    /// closing it stops heartbeats; the group then notices after the session timeout.
    pub async fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        let commit = if self.config.enable_auto_commit && self.group.is_some() {
            self.commit_positions().await
        } else {
            Ok(())
        };
        if let Some(group) = self.group.as_mut() {
            group.leave().await;
        }
        commit
    }
}
