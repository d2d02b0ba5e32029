//! The producer's bookkeeping, sans IO: records waiting for metadata, per-partition batch
//! queues, which batches are ready, what goes into the next Produce request per broker,
//! and what a response means for each batch. The sender task (`sender.rs`) only moves
//! requests and responses between this and the network.
//!
//! # Idempotence
//!
//! Each batch gets `(producer id, epoch, base sequence)` when it is first drained; a
//! partition's batches under one (id, epoch) form a *stream* with contiguous sequences, and
//! the broker appends a batch only if it continues the stream, answering a repeat with its
//! original result. The rules, after the Java client's `TransactionManager`:
//!
//! * at most [`PARTITION_UNFINISHED_MAX`] batches of a partition are unfinished (the broker
//!   remembers five per producer), so any retry is still deduplicated;
//! * a batch keeps its sequence across retries; while a retry is pending only the lowest
//!   unfinished sequence is sent (in-flight drops to one until the partition recovers);
//! * OUT_OF_ORDER_SEQUENCE_NUMBER for a batch that is not next in line is retried; for
//!   the next batch (the broker has a gap), UNKNOWN_PRODUCER_ID, or a definite failure of
//!   a batch with a sequence, the epoch is bumped and the partition *rewritten*: once
//!   nothing of it is on the wire, its unfinished batches restart from sequence 0 under
//!   the new epoch;
//! * a batch that may have been written (sent, no definite answer) is never resent under
//!   another (id, epoch): it could be appended twice. At a rewrite, or when its delivery
//!   timeout passes, it fails as [`ProduceError::Indeterminate`]; a timed-out batch leaves
//!   its sequence *unresolved*: new batches wait until a later batch's success shows it was
//!   written, or until nothing is left in flight, then the epoch is bumped.
//!
//! A batch "may have been written" from the moment its request is handed to the transport
//! until a definite answer: success, or an error code that says the broker did not append
//! it. REQUEST_TIMED_OUT and NOT_ENOUGH_REPLICAS_AFTER_APPEND leave it possibly written
//! (the leader appended it but the replicas did not confirm in time).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_log::{BuildOptions, RecordSpec};
use fjord_replication::Instant;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Acks, ProduceError, ProducerConfig, ProducerRecord, RecordMetadata};
use crate::client::backoff::Backoff;
use crate::client::error::{is_retriable, needs_metadata_refresh, ResponseError};
use crate::client::metadata::{ClusterMetadata, TopicPartition};
use crate::client::partitioner::{partition_for_key, StickyPartitioner};

/// Unfinished batches per partition under idempotence (Kafka brokers cache five).
pub(crate) const PARTITION_UNFINISHED_MAX: usize = 5;
/// Bytes a record takes in a batch beyond its key, value and headers (length, attributes,
/// timestamp and offset deltas, key/value lengths, header count: varints, worst case).
const RECORD_OVERHEAD_BYTES: usize = 26;
/// Per header beyond its key and value (two length varints).
const HEADER_OVERHEAD_BYTES: usize = 10;
/// Records a new batch reserves room for at most (it grows beyond if they are smaller).
const BATCH_RECORDS_PREALLOC_MAX: usize = 4096;

/// A record's own reply (a record answered by itself: refused at once, or waiting for its
/// topic's metadata when it was sent).
pub(crate) type Reply = oneshot::Sender<Result<RecordMetadata, ProduceError>>;

/// How a batch ended, shared by the [`Delivery`]s of its records: one completion per batch
/// instead of one channel per record.
pub(crate) struct BatchOutcome {
    tp: TopicPartition,
    /// Base offset (-1: unknown) and LogAppendTime, or why the batch failed.
    result: Result<(i64, Option<i64>), ProduceError>,
    /// CreateTime of every record (the reported timestamp without LogAppendTime).
    timestamps: Vec<i64>,
}

impl BatchOutcome {
    /// The result of the batch's `index`th record.
    pub(crate) fn record(&self, index: usize) -> Result<RecordMetadata, ProduceError> {
        match &self.result {
            Ok((base_offset, append_time)) => Ok(RecordMetadata {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                offset: if *base_offset < 0 {
                    -1
                } else {
                    base_offset + index as i64
                },
                timestamp: append_time
                    .or_else(|| self.timestamps.get(index).copied())
                    .unwrap_or(-1),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A batch's completion as its records await it.
pub(crate) type BatchDone = Shared<oneshot::Receiver<Arc<BatchOutcome>>>;

/// Where one record's result will come from.
pub(crate) enum Delivery {
    Own(oneshot::Receiver<Result<RecordMetadata, ProduceError>>),
    /// The `index`th record of a batch.
    Batch {
        done: BatchDone,
        index: usize,
    },
}

/// A record answered at once: its result, ready.
fn answered(result: Result<RecordMetadata, ProduceError>) -> Delivery {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(result);
    Delivery::Own(rx)
}

/// Estimated encoded size of a record (uncompressed), for batch and request limits.
fn record_size(record: &ProducerRecord) -> usize {
    let key = record.key.as_ref().map_or(0, |k| k.len());
    let value = record.value.as_ref().map_or(0, |v| v.len());
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + HEADER_OVERHEAD_BYTES)
        .sum();
    RECORD_OVERHEAD_BYTES + key + value + headers
}

/// A batch's place in its partition's idempotent stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub producer_id: i64,
    pub epoch: i16,
    pub base: i32,
}

impl Sequence {
    fn stream(&self) -> (i64, i16) {
        (self.producer_id, self.epoch)
    }
}

/// Records of one partition sent together.
pub(crate) struct Batch {
    pub(crate) tp: TopicPartition,
    pub(crate) specs: Vec<RecordSpec>,
    /// The lowest id of its records: its entry in `ProducerState::incomplete`.
    first_id: u64,
    /// Records with a reply of their own (they waited for metadata): index and reply.
    own_replies: Vec<(usize, Reply)>,
    /// Completes every other record's [`Delivery`].
    done: Option<oneshot::Sender<Arc<BatchOutcome>>>,
    done_rx: BatchDone,
    size_bytes: usize,
    created: Instant,
    /// Takes no more records (full, or drained at least once).
    closed: bool,
    pub(crate) sequence: Option<Sequence>,
    attempts: u32,
    maybe_written: bool,
    retry_at: Option<Instant>,
    last_error: String,
    /// The broker's error code of the last attempt, if it answered with one.
    last_code: Option<ResponseError>,
    /// The encoded batch for the current sequence.
    pub(crate) encoded: Option<Bytes>,
}

impl Batch {
    /// Appends a record; its delivery, unless it has a reply of its own.
    fn add(&mut self, spec: RecordSpec, reply: Option<Reply>) -> Option<Delivery> {
        let index = self.specs.len();
        self.specs.push(spec);
        match reply {
            Some(reply) => {
                self.own_replies.push((index, reply));
                None
            }
            None => Some(Delivery::Batch {
                done: self.done_rx.clone(),
                index,
            }),
        }
    }

    fn count(&self) -> i32 {
        self.specs.len() as i32
    }

    fn last_sequence(&self) -> Option<i32> {
        self.sequence.map(|s| s.base + self.count() - 1)
    }
}

/// One partition's queue and idempotent stream.
#[derive(Default)]
struct PartitionState {
    /// Batches not on the wire: retries first (in sequence order), then new ones.
    queue: VecDeque<Batch>,
    on_wire: usize,
    stream: Option<(i64, i16)>,
    next_sequence: i32,
    last_acked: Option<i32>,
    /// Base sequences of batches with a sequence that have not completed.
    unfinished: BTreeSet<i32>,
    /// Highest sequence of a possibly-written batch that expired.
    unresolved: Option<i32>,
    /// The stream must be abandoned once nothing of the partition is on the wire.
    needs_rewrite: bool,
}

/// A record waiting for its topic's metadata.
struct Waiting {
    record: ProducerRecord,
    id: u64,
    size: usize,
    timestamp: i64,
    since: Instant,
    /// `None`: the record is placed at once and answered through its batch.
    reply: Option<Reply>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ProducerId {
    /// Not idempotent.
    Disabled,
    /// Needed and not (yet) obtained.
    Missing,
    Valid {
        id: i64,
        epoch: i16,
    },
    Fatal(String),
}

/// A Produce request to send.
pub(crate) struct RequestPlan {
    pub(crate) node: i32,
    pub(crate) acks: Acks,
    pub(crate) batches: Vec<Batch>,
}

impl RequestPlan {
    /// The Produce request carrying the batches (already encoded).
    pub(crate) fn request(&self, timeout: Duration) -> ProduceRequest {
        let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
        for batch in &self.batches {
            topics.entry(&batch.tp.topic).or_default().push(
                PartitionProduceData::default()
                    .with_index(batch.tp.partition)
                    .with_records(batch.encoded.clone()),
            );
        }
        ProduceRequest::default()
            .with_acks(self.acks.wire_value())
            .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
            .with_topic_data(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_string())))
                            .with_partition_data(partitions)
                    })
                    .collect(),
            )
    }
}

/// How a Produce request ended.
pub(crate) enum Outcome {
    Response(ProduceResponse),
    /// acks=0: handed to the transport.
    Sent,
    /// No response. `written`: the request may have reached the broker.
    Failed {
        written: bool,
        error: String,
    },
}

/// What the sender should do now.
#[derive(Default)]
pub(crate) struct Step {
    pub(crate) requests: Vec<RequestPlan>,
    pub(crate) want_metadata: bool,
    pub(crate) want_producer_id: bool,
    /// When to look again if nothing else happens.
    pub(crate) wake_at: Option<Instant>,
    /// Closed and nothing left: the sender may stop.
    pub(crate) finished: bool,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(Instant::from_nanos(u64::MAX))
}

pub(crate) struct ProducerState {
    config: ProducerConfig,
    retry: Backoff,
    rng: ChaCha8Rng,
    waiting: BTreeMap<String, VecDeque<Waiting>>,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    sticky: StickyPartitioner,
    producer_id: ProducerId,
    node_in_flight: BTreeMap<i32, usize>,
    buffered_bytes: usize,
    next_record_id: u64,
    /// Records not completed, for `flush`: a record with a reply of its own under its id,
    /// a batch's records under the lowest id among them (they complete together), with
    /// the number of records each entry stands for. The first key is the lowest id of
    /// any incomplete record.
    incomplete: BTreeMap<u64, usize>,
    /// Records not completed (the sum of `incomplete`'s counts).
    incomplete_records: usize,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    closed: bool,
    /// Rotates the partition drained first, for fairness between partitions.
    drain_start: usize,
}

impl ProducerState {
    pub(crate) fn new(config: ProducerConfig, retry: Backoff, seed: u64) -> ProducerState {
        let producer_id = if config.idempotence {
            ProducerId::Missing
        } else {
            ProducerId::Disabled
        };
        ProducerState {
            config,
            retry,
            rng: ChaCha8Rng::seed_from_u64(seed),
            waiting: BTreeMap::new(),
            partitions: BTreeMap::new(),
            sticky: StickyPartitioner::default(),
            producer_id,
            node_in_flight: BTreeMap::new(),
            buffered_bytes: 0,
            next_record_id: 0,
            incomplete: BTreeMap::new(),
            incomplete_records: 0,
            flush_waiters: Vec::new(),
            closed: false,
            drain_start: 0,
        }
    }

    pub(crate) fn producer_id(&self) -> Option<(i64, i16)> {
        match self.producer_id {
            ProducerId::Valid { id, epoch } => Some((id, epoch)),
            _ => None,
        }
    }

    pub(crate) fn pending_records(&self) -> usize {
        self.incomplete_records
    }

    /// Topics with records waiting for metadata.
    pub(crate) fn waiting_topics(&self) -> Vec<String> {
        self.waiting.keys().cloned().collect()
    }

    // ---- appending ----

    /// Enqueues a record (or answers it at once with an error). Returns whether the sender
    /// should look at the state now (a new batch, a full batch, an unknown topic), and where
    /// the record's result will come from.
    pub(crate) fn append(
        &mut self,
        record: ProducerRecord,
        now: Instant,
        wall_clock_ms: i64,
        metadata: &ClusterMetadata,
    ) -> (bool, Delivery) {
        let size = record_size(&record);
        let refuse = if self.closed {
            Some(ProduceError::Closed)
        } else if let ProducerId::Fatal(e) = &self.producer_id {
            Some(ProduceError::Fatal(e.clone()))
        } else if size > self.config.max_request_size_bytes {
            Some(ProduceError::RecordTooLarge {
                size,
                max: self.config.max_request_size_bytes,
            })
        } else if self.buffered_bytes + size > self.config.buffer_memory_bytes {
            Some(ProduceError::BufferFull)
        } else {
            None
        };
        if let Some(error) = refuse {
            return (false, answered(Err(error)));
        }
        let id = self.next_record_id;
        self.next_record_id += 1;
        self.buffered_bytes += size;
        let waiting = Waiting {
            timestamp: record.timestamp.unwrap_or(wall_clock_ms),
            record,
            id,
            size,
            since: now,
            reply: None,
        };
        let topic_ready = !self.waiting.contains_key(&waiting.record.topic)
            && metadata
                .topic(&waiting.record.topic)
                .and_then(|t| t.partition_count())
                .is_some();
        if topic_ready {
            let (wake, delivery) = self.place(waiting, now, metadata);
            let Some(delivery) = delivery else {
                unreachable!("a record without a reply of its own gets a delivery");
            };
            (wake, delivery)
        } else {
            let (tx, rx) = oneshot::channel();
            let waiting = Waiting {
                reply: Some(tx),
                ..waiting
            };
            self.track(id, 1);
            self.waiting
                .entry(waiting.record.topic.clone())
                .or_default()
                .push_back(waiting);
            (true, Delivery::Own(rx))
        }
    }

    /// Partitions a record whose topic's metadata is known and appends it to a batch.
    /// Returns whether the sender should look, and the record's delivery unless it has a
    /// reply of its own.
    fn place(
        &mut self,
        w: Waiting,
        now: Instant,
        metadata: &ClusterMetadata,
    ) -> (bool, Option<Delivery>) {
        let topic = w.record.topic.clone();
        let Some(info) = metadata.topic(&topic) else {
            unreachable!("place is called with the topic's metadata known");
        };
        let Some(count) = info.partition_count() else {
            unreachable!("place is called with the topic's partition count known");
        };
        let partition = match (w.record.partition, &w.record.key) {
            (Some(p), _) if p < 0 || p >= count => {
                let delivery = self.complete_record(
                    w.id,
                    w.size,
                    w.reply,
                    Err(ProduceError::InvalidPartition {
                        topic,
                        partition: p,
                    }),
                );
                return (false, delivery);
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => {
                // The common case (the sticky partition's open batch takes the record) needs
                // neither the available partitions nor the generator.
                match self.sticky.current(&topic, count) {
                    Some(p)
                        if self.open_batch_fits(&TopicPartition::new(topic.clone(), p), w.size) =>
                    {
                        p
                    }
                    _ => {
                        let available = info.available_partitions();
                        let p = self
                            .sticky
                            .partition(&topic, count, &available, &mut self.rng);
                        let tp = TopicPartition::new(topic.clone(), p);
                        if self.open_batch_fits(&tp, w.size) {
                            p
                        } else {
                            // A keyless record that needs a new batch moves on (KIP-480).
                            self.sticky.batch_completed(
                                &topic,
                                p,
                                count,
                                &available,
                                &mut self.rng,
                            );
                            self.sticky
                                .partition(&topic, count, &available, &mut self.rng)
                        }
                    }
                }
            }
        };
        let spec = RecordSpec {
            key: w.record.key,
            value: w.record.value,
            headers: w.record.headers,
            timestamp_ms: w.timestamp,
        };
        self.append_to_partition(
            TopicPartition::new(topic, partition),
            spec,
            (w.id, w.reply),
            w.size,
            now,
        )
    }

    fn open_batch_fits(&self, tp: &TopicPartition, size: usize) -> bool {
        self.partitions
            .get(tp)
            .and_then(|p| p.queue.back())
            .is_some_and(|b| !b.closed && b.size_bytes + size <= self.config.batch_size_bytes)
    }

    fn append_to_partition(
        &mut self,
        tp: TopicPartition,
        spec: RecordSpec,
        (id, reply): (u64, Option<Reply>),
        size: usize,
        now: Instant,
    ) -> (bool, Option<Delivery>) {
        let batch_size = self.config.batch_size_bytes;
        let own = reply.is_some();
        let fits = self.open_batch_fits(&tp, size);
        if !self.partitions.contains_key(&tp) {
            self.partitions
                .insert(tp.clone(), PartitionState::default());
        }
        let Some(p) = self.partitions.get_mut(&tp) else {
            unreachable!("inserted above");
        };
        if fits {
            let Some(batch) = p.queue.back_mut() else {
                unreachable!("open_batch_fits saw a batch");
            };
            let key = batch.first_id;
            batch.first_id = key.min(id);
            let delivery = batch.add(spec, reply);
            batch.size_bytes += size;
            let full = batch.size_bytes >= batch_size;
            if full {
                batch.closed = true;
            }
            self.track_in_batch(own, id, key);
            return (full, delivery);
        }
        if let Some(last) = p.queue.back_mut() {
            last.closed = true;
        }
        // Room for as many records of this size as the batch takes: no regrowth per record.
        let capacity = (batch_size / size.max(1)).clamp(1, BATCH_RECORDS_PREALLOC_MAX);
        let (done, done_rx) = oneshot::channel();
        let mut batch = Batch {
            tp,
            specs: Vec::with_capacity(capacity),
            first_id: id,
            own_replies: Vec::new(),
            done: Some(done),
            done_rx: done_rx.shared(),
            size_bytes: fjord_log::batch::BATCH_HEADER_SIZE_BYTES + size,
            created: now,
            closed: size >= batch_size,
            sequence: None,
            attempts: 0,
            maybe_written: false,
            retry_at: None,
            last_error: String::new(),
            last_code: None,
            encoded: None,
        };
        let delivery = batch.add(spec, reply);
        p.queue.push_back(batch);
        self.track_in_batch(own, id, id);
        (true, delivery)
    }

    /// Counts `n` more incomplete records under `key`.
    fn track(&mut self, key: u64, n: usize) {
        *self.incomplete.entry(key).or_default() += n;
        self.incomplete_records += n;
    }

    /// `n` records counted under `key` completed.
    fn untrack(&mut self, key: u64, n: usize) {
        if let Some(count) = self.incomplete.get_mut(&key) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.incomplete.remove(&key);
            }
        }
        self.incomplete_records = self.incomplete_records.saturating_sub(n);
    }

    /// Record `id` joined the batch whose entry was `key` (`id` itself for a new batch);
    /// `own`: it was counted under its own id until now (it waited for metadata).
    fn track_in_batch(&mut self, own: bool, id: u64, key: u64) {
        if own {
            self.untrack(id, 1);
        }
        if id < key {
            // A batch's records are placed in id order, so this is not expected; kept exact
            // anyway: the batch's entry moves to its new lowest id.
            let n = self.incomplete.remove(&key).unwrap_or(0);
            self.incomplete_records = self.incomplete_records.saturating_sub(n);
            self.track(id, n + 1);
        } else {
            self.track(key, 1);
        }
    }

    // ---- flush and close ----

    /// A receiver completed once every record enqueued so far has completed.
    pub(crate) fn flush(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let target = self.next_record_id;
        self.flush_waiters.push((target, tx));
        self.check_flushes();
        rx
    }

    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    fn check_flushes(&mut self) {
        let first_incomplete = self
            .incomplete
            .first_key_value()
            .map_or(u64::MAX, |(id, _)| *id);
        let waiters = std::mem::take(&mut self.flush_waiters);
        for (target, tx) in waiters {
            if target <= first_incomplete {
                let _ = tx.send(());
            } else {
                self.flush_waiters.push((target, tx));
            }
        }
    }

    /// Answers a record on its own: through its reply, or (without one) through the
    /// returned delivery.
    fn complete_record(
        &mut self,
        id: u64,
        size: usize,
        reply: Option<Reply>,
        result: Result<RecordMetadata, ProduceError>,
    ) -> Option<Delivery> {
        let delivery = match reply {
            Some(reply) => {
                // Only records with a reply of their own are tracked by their id.
                self.untrack(id, 1);
                let _ = reply.send(result);
                None
            }
            None => Some(answered(result)),
        };
        self.buffered_bytes = self.buffered_bytes.saturating_sub(size);
        self.check_flushes();
        delivery
    }

    fn complete_batch(
        &mut self,
        mut batch: Batch,
        result: Result<(i64, Option<i64>), ProduceError>,
    ) {
        let timestamps = match result {
            Ok((_, Some(_))) => Vec::new(),
            _ => batch.specs.iter().map(|s| s.timestamp_ms).collect(),
        };
        let outcome = Arc::new(BatchOutcome {
            tp: batch.tp.clone(),
            result,
            timestamps,
        });
        for (index, reply) in batch.own_replies.drain(..) {
            let _ = reply.send(outcome.record(index));
        }
        if let Some(done) = batch.done.take() {
            let _ = done.send(outcome);
        }
        self.untrack(batch.first_id, batch.specs.len());
        self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.size_bytes);
        self.check_flushes();
    }

    /// Fails a batch: indeterminate if any attempt may have written it.
    fn fail_batch(&mut self, batch: Batch, definite: ProduceError) {
        let error = if batch.maybe_written {
            ProduceError::Indeterminate {
                reason: format!(
                    "{} after {} attempt(s), last: {}",
                    batch.tp, batch.attempts, batch.last_error
                ),
            }
        } else {
            definite
        };
        tracing::debug!(tp = %batch.tp, %error, "kafka producer: batch failed");
        self.complete_batch(batch, Err(error));
    }

    // ---- the step ----

    /// Looks at everything: places records whose metadata arrived, expires, resolves
    /// idempotent streams, and drains ready batches into requests.
    pub(crate) fn step(&mut self, now: Instant, metadata: &ClusterMetadata) -> Step {
        let mut step = Step::default();
        self.place_waiting(now, metadata, &mut step);
        self.expire(now);
        self.resolve_streams();
        self.drain(now, metadata, &mut step);
        step.want_producer_id =
            self.producer_id == ProducerId::Missing && self.incomplete_records > 0;
        step.finished = self.closed && self.incomplete_records == 0;
        step
    }

    fn place_waiting(&mut self, now: Instant, metadata: &ClusterMetadata, step: &mut Step) {
        let topics: Vec<String> = self.waiting.keys().cloned().collect();
        for topic in topics {
            let Some(mut queue) = self.waiting.remove(&topic) else {
                continue;
            };
            let info = metadata.topic(&topic);
            let unusable = info
                .and_then(|t| t.error)
                .filter(|e| !is_retriable(*e))
                .map(|e| e.to_string());
            if let Some(reason) = unusable {
                for w in queue {
                    let error = ProduceError::TopicNotAvailable {
                        topic: topic.clone(),
                        reason: reason.clone(),
                    };
                    self.complete_record(w.id, w.size, w.reply, Err(error));
                }
                continue;
            }
            if info.and_then(|t| t.partition_count()).is_some() {
                for w in queue {
                    self.place(w, now, metadata);
                }
                continue;
            }
            step.want_metadata = true;
            while let Some(w) = queue.front() {
                let deadline = after(w.since, self.config.metadata_wait_max);
                if deadline > now {
                    step.wake_at = earliest(step.wake_at, Some(deadline));
                    break;
                }
                let Some(w) = queue.pop_front() else {
                    break;
                };
                let reason = match info.and_then(|t| t.error) {
                    Some(e) => format!("{e} after {:?}", self.config.metadata_wait_max),
                    None => format!("no metadata after {:?}", self.config.metadata_wait_max),
                };
                let error = ProduceError::TopicNotAvailable {
                    topic: topic.clone(),
                    reason,
                };
                self.complete_record(w.id, w.size, w.reply, Err(error));
            }
            if !queue.is_empty() {
                self.waiting.insert(topic, queue);
            }
        }
    }

    /// Fails queued batches whose delivery timeout passed.
    fn expire(&mut self, now: Instant) {
        let timeout = self.config.delivery_timeout;
        let mut expired = Vec::new();
        for p in self.partitions.values_mut() {
            let mut kept = VecDeque::with_capacity(p.queue.len());
            while let Some(batch) = p.queue.pop_front() {
                if after(batch.created, timeout) <= now {
                    expired.push(batch);
                } else {
                    kept.push_back(batch);
                }
            }
            p.queue = kept;
        }
        for batch in expired {
            self.forget_sequence(&batch);
            self.fail_batch(batch, ProduceError::TimedOut);
        }
    }

    /// A batch with a sequence leaves its stream without success: if it may have been
    /// written its sequence is unresolved, otherwise the stream has a gap and must be
    /// abandoned.
    fn forget_sequence(&mut self, batch: &Batch) {
        let (Some(seq), Some(last)) = (batch.sequence, batch.last_sequence()) else {
            return;
        };
        let Some(p) = self.partitions.get_mut(&batch.tp) else {
            return;
        };
        if p.stream != Some(seq.stream()) {
            return;
        }
        p.unfinished.remove(&seq.base);
        if batch.maybe_written {
            p.unresolved = Some(p.unresolved.map_or(last, |u| u.max(last)));
        } else {
            let tp = batch.tp.clone();
            self.request_rewrite(&tp);
        }
    }

    /// Abandons the partition's stream: bumps the producer epoch (or asks for a new id) if
    /// the partition still uses the current one; the rewrite happens in `resolve_streams`.
    fn request_rewrite(&mut self, tp: &TopicPartition) {
        let Some(p) = self.partitions.get_mut(tp) else {
            return;
        };
        p.needs_rewrite = true;
        if let ProducerId::Valid { id, epoch } = self.producer_id {
            if p.stream == Some((id, epoch)) {
                self.producer_id = if epoch == i16::MAX {
                    ProducerId::Missing
                } else {
                    ProducerId::Valid {
                        id,
                        epoch: epoch + 1,
                    }
                };
                tracing::debug!(%tp, "kafka producer: bumping the producer epoch");
            }
        }
    }

    fn resolve_streams(&mut self) {
        if self.producer_id == ProducerId::Disabled {
            return;
        }
        let tps: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
        for tp in tps {
            let Some(p) = self.partitions.get(&tp) else {
                continue;
            };
            if p.unresolved.is_some() && p.unfinished.is_empty() && p.on_wire == 0 {
                // Nothing left that could show the unresolved batches were written.
                self.request_rewrite(&tp);
            }
            let current = match self.producer_id {
                ProducerId::Valid { id, epoch } => (id, epoch),
                _ => continue,
            };
            let Some(p) = self.partitions.get_mut(&tp) else {
                continue;
            };
            if !(p.needs_rewrite && p.on_wire == 0 && p.stream != Some(current)) {
                continue;
            }
            let old = p.stream;
            let mut doomed = Vec::new();
            let mut kept = VecDeque::with_capacity(p.queue.len());
            while let Some(mut batch) = p.queue.pop_front() {
                if batch.sequence.is_some_and(|s| Some(s.stream()) == old) {
                    if batch.maybe_written {
                        doomed.push(batch);
                        continue;
                    }
                    batch.sequence = None;
                    batch.encoded = None;
                }
                kept.push_back(batch);
            }
            p.queue = kept;
            p.stream = None;
            p.next_sequence = 0;
            p.last_acked = None;
            p.unfinished.clear();
            p.unresolved = None;
            p.needs_rewrite = false;
            for batch in doomed {
                self.fail_batch(batch, ProduceError::TimedOut);
            }
        }
    }

    /// Whether the front batch of `tp` may be sent under idempotence; assigns its sequence
    /// if it is new.
    fn take_sequence(&mut self, tp: &TopicPartition) -> bool {
        let current = match self.producer_id {
            ProducerId::Disabled => return true,
            ProducerId::Valid { id, epoch } => (id, epoch),
            ProducerId::Missing | ProducerId::Fatal(_) => return false,
        };
        let Some(p) = self.partitions.get_mut(tp) else {
            return false;
        };
        if p.needs_rewrite {
            return false;
        }
        let Some(front) = p.queue.front() else {
            return false;
        };
        let count = front.count();
        if let Some(seq) = front.sequence {
            // A retry: only the lowest unfinished sequence goes out.
            return p.unfinished.first() == Some(&seq.base);
        }
        if p.unresolved.is_some() {
            return false;
        }
        if p.stream != Some(current) {
            if !p.unfinished.is_empty() {
                // The old stream must finish first.
                return false;
            }
            p.stream = Some(current);
            p.next_sequence = 0;
            p.last_acked = None;
        }
        if p.unfinished.len() >= PARTITION_UNFINISHED_MAX {
            return false;
        }
        if p.next_sequence > i32::MAX - count {
            // Never wrap: start a new stream instead.
            self.request_rewrite(tp);
            return false;
        }
        let base = p.next_sequence;
        p.next_sequence += count;
        p.unfinished.insert(base);
        if let Some(front) = p.queue.front_mut() {
            front.sequence = Some(Sequence {
                producer_id: current.0,
                epoch: current.1,
                base,
            });
            front.encoded = None;
        }
        true
    }

    fn drain(&mut self, now: Instant, metadata: &ClusterMetadata, step: &mut Step) {
        let flushing = !self.flush_waiters.is_empty() || self.closed;
        let tps: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, p)| !p.queue.is_empty())
            .map(|(tp, _)| tp.clone())
            .collect();
        if tps.is_empty() {
            return;
        }
        let start = self.drain_start % tps.len();
        self.drain_start = self.drain_start.wrapping_add(1);
        let mut plans: BTreeMap<i32, (Vec<Batch>, usize)> = BTreeMap::new();
        let max_in_flight = self.config.max_in_flight_per_connection;
        let strict_order = self.producer_id == ProducerId::Disabled && max_in_flight == 1;
        for tp in tps[start..].iter().chain(&tps[..start]) {
            let Some(node) = metadata.leader(&tp.topic, tp.partition) else {
                step.want_metadata = true;
                continue;
            };
            if self.node_in_flight.get(&node).copied().unwrap_or(0) >= max_in_flight {
                continue;
            }
            let Some(p) = self.partitions.get(tp) else {
                continue;
            };
            let Some(front) = p.queue.front() else {
                continue;
            };
            if strict_order && p.on_wire > 0 {
                continue;
            }
            if let Some(at) = front.retry_at.filter(|at| *at > now) {
                step.wake_at = earliest(step.wake_at, Some(at));
                continue;
            }
            let linger_end = after(front.created, self.config.linger);
            let ready = front.closed
                || p.queue.len() > 1
                || front.attempts > 0
                || flushing
                || linger_end <= now;
            if !ready {
                step.wake_at = earliest(step.wake_at, Some(linger_end));
                continue;
            }
            let size = front.size_bytes;
            let (batches, bytes) = plans.entry(node).or_default();
            if !batches.is_empty() && *bytes + size > self.config.max_request_size_bytes {
                continue;
            }
            if !self.take_sequence(tp) {
                continue;
            }
            let Some(p) = self.partitions.get_mut(tp) else {
                continue;
            };
            let Some(mut batch) = p.queue.pop_front() else {
                continue;
            };
            p.on_wire += 1;
            batch.closed = true;
            batch.attempts += 1;
            batch.retry_at = None;
            let (batches, bytes) = plans.entry(node).or_default();
            *bytes += size;
            batches.push(batch);
        }
        let compression = self.config.compression;
        for (node, (batches, _)) in plans {
            let mut ready = Vec::with_capacity(batches.len());
            for mut batch in batches {
                match encode(&mut batch, compression) {
                    Ok(()) => ready.push(batch),
                    Err(e) => {
                        // Cannot be sent at all: nothing was written.
                        self.on_batch_done(batch, now, BatchResult::Fatal(e));
                    }
                }
            }
            if ready.is_empty() {
                continue;
            }
            *self.node_in_flight.entry(node).or_default() += 1;
            step.requests.push(RequestPlan {
                node,
                acks: self.config.acks,
                batches: ready,
            });
        }
    }

    // ---- outcomes ----

    /// Applies the outcome of a request planned by `step`. Returns whether metadata should
    /// be refreshed.
    pub(crate) fn on_outcome(&mut self, plan: RequestPlan, outcome: Outcome, now: Instant) -> bool {
        if let Some(n) = self.node_in_flight.get_mut(&plan.node) {
            *n = n.saturating_sub(1);
        }
        let mut refresh = false;
        let mut responses: BTreeMap<(String, i32), PartitionProduceResponse> = BTreeMap::new();
        let failure = match outcome {
            Outcome::Response(response) => {
                for topic in response.responses {
                    for p in topic.partition_responses {
                        responses.insert((topic.name.0.to_string(), p.index), p);
                    }
                }
                None
            }
            Outcome::Sent => None,
            Outcome::Failed { written, error } => {
                refresh = true;
                Some((written, error))
            }
        };
        let acks_zero = plan.acks == Acks::None;
        for batch in plan.batches {
            if let Some(p) = self.partitions.get_mut(&batch.tp) {
                p.on_wire = p.on_wire.saturating_sub(1);
            }
            let result = if let Some((written, error)) = &failure {
                BatchResult::NoAnswer {
                    written: *written,
                    error: error.clone(),
                }
            } else if acks_zero {
                BatchResult::Acked {
                    base_offset: -1,
                    append_time: None,
                }
            } else {
                let key = (batch.tp.topic.clone(), batch.tp.partition);
                match responses.remove(&key) {
                    None => BatchResult::NoAnswer {
                        written: true,
                        error: "partition missing from the produce response".to_string(),
                    },
                    Some(r) => match ResponseError::try_from_code(r.error_code) {
                        None => BatchResult::Acked {
                            base_offset: r.base_offset,
                            append_time: (r.log_append_time_ms >= 0)
                                .then_some(r.log_append_time_ms),
                        },
                        Some(ResponseError::DuplicateSequenceNumber) => BatchResult::Acked {
                            base_offset: -1,
                            append_time: None,
                        },
                        Some(code) => {
                            refresh |= needs_metadata_refresh(code);
                            BatchResult::Error(code)
                        }
                    },
                }
            };
            self.on_batch_done(batch, now, result);
        }
        refresh
    }

    fn on_batch_done(&mut self, mut batch: Batch, now: Instant, result: BatchResult) {
        let idempotent = self.producer_id != ProducerId::Disabled;
        match result {
            BatchResult::Acked {
                base_offset,
                append_time,
            } => {
                if let (Some(seq), Some(last)) = (batch.sequence, batch.last_sequence()) {
                    if let Some(p) = self.partitions.get_mut(&batch.tp) {
                        if p.stream == Some(seq.stream()) {
                            p.unfinished.remove(&seq.base);
                            p.last_acked = Some(p.last_acked.map_or(last, |a| a.max(last)));
                            if p.unresolved.is_some_and(|u| u <= last) {
                                p.unresolved = None;
                            }
                        }
                    }
                }
                self.complete_batch(batch, Ok((base_offset, append_time)));
            }
            BatchResult::NoAnswer { written, error } => {
                batch.maybe_written |= written;
                batch.last_error = error;
                batch.last_code = None;
                self.retry_or_fail(batch, now);
            }
            BatchResult::Fatal(error) => {
                batch.last_error = error.clone();
                self.forget_sequence(&batch);
                self.fail_batch(batch, ProduceError::Fatal(error));
            }
            BatchResult::Error(code) => {
                batch.last_error = code.to_string();
                batch.last_code = Some(code);
                match code {
                    ResponseError::OutOfOrderSequenceNumber if idempotent => {
                        self.on_out_of_order(&batch);
                        self.retry_or_fail(batch, now);
                    }
                    ResponseError::UnknownProducerId if idempotent => {
                        let tp = batch.tp.clone();
                        self.request_rewrite(&tp);
                        self.retry_or_fail(batch, now);
                    }
                    ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced
                        if idempotent =>
                    {
                        // Someone holds a newer epoch of our id: start over with a new id.
                        let tp = batch.tp.clone();
                        if let Some(p) = self.partitions.get_mut(&tp) {
                            p.needs_rewrite = true;
                        }
                        if matches!(self.producer_id, ProducerId::Valid { .. }) {
                            self.producer_id = ProducerId::Missing;
                        }
                        self.retry_or_fail(batch, now);
                    }
                    ResponseError::RequestTimedOut
                    | ResponseError::NotEnoughReplicasAfterAppend => {
                        batch.maybe_written = true;
                        self.retry_or_fail(batch, now);
                    }
                    code if is_retriable(code) => self.retry_or_fail(batch, now),
                    code => {
                        self.forget_sequence(&batch);
                        self.fail_batch(batch, ProduceError::Rejected(code));
                    }
                }
            }
        }
    }

    /// OUT_OF_ORDER_SEQUENCE_NUMBER: retry if an earlier batch is still unresolved or in
    /// flight; if this batch is next in line the broker has a gap: abandon the stream.
    fn on_out_of_order(&mut self, batch: &Batch) {
        let Some(seq) = batch.sequence else {
            return;
        };
        let Some(p) = self.partitions.get(&batch.tp) else {
            return;
        };
        if p.stream != Some(seq.stream()) {
            return;
        }
        let expected = match p.unresolved {
            Some(u) => u.checked_add(1),
            None => Some(p.last_acked.map_or(0, |a| a + 1)),
        };
        if expected == Some(seq.base) {
            let tp = batch.tp.clone();
            self.request_rewrite(&tp);
        }
    }

    /// Requeues a batch for another attempt after a backoff, or fails it when out of
    /// retries or time.
    fn retry_or_fail(&mut self, mut batch: Batch, now: Instant) {
        let deadline = after(batch.created, self.config.delivery_timeout);
        if batch.attempts > self.config.retries || now >= deadline {
            self.forget_sequence(&batch);
            let definite = match batch.last_code {
                _ if now >= deadline => ProduceError::TimedOut,
                Some(code) => ProduceError::Rejected(code),
                None => ProduceError::RetriesExhausted {
                    last_error: batch.last_error.clone(),
                },
            };
            self.fail_batch(batch, definite);
            return;
        }
        let delay = self
            .retry
            .delay(batch.attempts.saturating_sub(1), &mut self.rng);
        batch.retry_at = Some(after(now, delay));
        tracing::debug!(tp = %batch.tp, attempts = batch.attempts, error = %batch.last_error, "kafka producer: retrying batch");
        let Some(p) = self.partitions.get_mut(&batch.tp) else {
            unreachable!("a batch's partition state exists while the batch does");
        };
        match batch.sequence {
            Some(seq) => {
                let at = p
                    .queue
                    .iter()
                    .position(|b| b.sequence.is_none_or(|s| s.base > seq.base))
                    .unwrap_or(p.queue.len());
                p.queue.insert(at, batch);
            }
            None => p.queue.push_front(batch),
        }
    }

    /// The InitProducerId answer.
    pub(crate) fn on_producer_id(&mut self, result: Result<(i64, i16), String>) {
        match result {
            Ok((id, epoch)) => {
                tracing::debug!(id, epoch, "kafka producer: producer id");
                self.producer_id = ProducerId::Valid { id, epoch };
            }
            Err(error) => {
                tracing::warn!(%error, "kafka producer: no producer id");
                self.producer_id = ProducerId::Fatal(error.clone());
                let mut failed = Vec::new();
                for p in self.partitions.values_mut() {
                    failed.extend(p.queue.drain(..));
                }
                for batch in failed {
                    self.fail_batch(batch, ProduceError::Fatal(error.clone()));
                }
                let waiting = std::mem::take(&mut self.waiting);
                for w in waiting.into_values().flatten() {
                    self.complete_record(
                        w.id,
                        w.size,
                        w.reply,
                        Err(ProduceError::Fatal(error.clone())),
                    );
                }
            }
        }
    }
}

/// What happened to one batch.
enum BatchResult {
    Acked {
        base_offset: i64,
        append_time: Option<i64>,
    },
    NoAnswer {
        written: bool,
        error: String,
    },
    Error(ResponseError),
    /// Cannot be sent (encoding failed).
    Fatal(String),
}

/// Encodes the batch for its current sequence, once.
fn encode(batch: &mut Batch, compression: fjord_log::Compression) -> Result<(), String> {
    if batch.encoded.is_some() {
        return Ok(());
    }
    let opts = match batch.sequence {
        Some(seq) => BuildOptions {
            producer_id: seq.producer_id,
            producer_epoch: seq.epoch,
            base_sequence: seq.base,
            compression,
            ..BuildOptions::default()
        },
        None => BuildOptions {
            compression,
            ..BuildOptions::default()
        },
    };
    let bytes = fjord_log::build_batch(&batch.specs, &opts).map_err(|e| e.to_string())?;
    batch.encoded = Some(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use kafka_protocol::messages::produce_response::TopicProduceResponse;

    use super::*;
    use crate::client::testkit::metadata_response;

    type Rx = crate::client::producer::DeliveryFuture;

    fn config() -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_size_bytes: 1000,
            ..ProducerConfig::default()
        }
    }

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }

    fn metadata(partitions: usize) -> ClusterMetadata {
        let leaders = vec![1; partitions];
        let mut md = ClusterMetadata::default();
        md.apply(
            &metadata_response(&[(1, "b1:9092")], &[("t", &leaders)]),
            false,
            Instant::ZERO,
        );
        md
    }

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    struct Harness {
        state: ProducerState,
        md: ClusterMetadata,
    }

    impl Harness {
        fn new(config: ProducerConfig, partitions: usize) -> Harness {
            let mut state = ProducerState::new(config, backoff(), 1);
            if state.producer_id == ProducerId::Missing {
                state.on_producer_id(Ok((1000, 0)));
            }
            Harness {
                state,
                md: metadata(partitions),
            }
        }

        fn send(&mut self, partition: i32, value: &[u8], now: Instant) -> Rx {
            let record =
                ProducerRecord::new("t", Bytes::copy_from_slice(value)).with_partition(partition);
            crate::client::producer::DeliveryFuture(self.state.append(record, now, 0, &self.md).1)
        }

        fn step(&mut self, now: Instant) -> Step {
            self.state.step(now, &self.md)
        }
    }

    fn response(plan: &RequestPlan, code: i16, base_offsets: &[i64]) -> Outcome {
        let topics = plan
            .batches
            .iter()
            .zip(base_offsets)
            .map(|(b, offset)| {
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(b.tp.topic.clone())))
                    .with_partition_responses(vec![PartitionProduceResponse::default()
                        .with_index(b.tp.partition)
                        .with_error_code(code)
                        .with_base_offset(*offset)
                        .with_log_append_time_ms(-1)])
            })
            .collect();
        Outcome::Response(ProduceResponse::default().with_responses(topics))
    }

    fn result(rx: &mut Rx) -> Option<Result<RecordMetadata, ProduceError>> {
        rx.now_or_never()
    }

    fn seqs(plan: &RequestPlan) -> Vec<(i32, i32, i16)> {
        plan.batches
            .iter()
            .map(|b| {
                let s = b.sequence.expect("idempotent batch has a sequence");
                (b.tp.partition, s.base, s.epoch)
            })
            .collect()
    }

    #[test]
    fn records_linger_then_go_out_as_one_batch() {
        let mut h = Harness::new(config(), 1);
        let mut rxs: Vec<Rx> = (0..3).map(|i| h.send(0, &[i], ms(0))).collect();
        let step = h.step(ms(1));
        assert!(step.requests.is_empty());
        assert_eq!(step.wake_at, Some(ms(5)), "woken when the linger ends");
        let mut step = h.step(ms(5));
        assert_eq!(step.requests.len(), 1);
        let plan = step.requests.remove(0);
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].specs.len(), 3);
        let header =
            fjord_log::BatchHeader::validate(plan.batches[0].encoded.as_ref().expect("encoded"))
                .expect("valid batch");
        assert_eq!((header.producer_id, header.base_sequence), (1000, 0));
        let outcome = response(&plan, 0, &[40]);
        h.state.on_outcome(plan, outcome, ms(6));
        let offsets: Vec<i64> = rxs
            .iter_mut()
            .map(|rx| result(rx).expect("done").expect("acked").offset)
            .collect();
        assert_eq!(offsets, [40, 41, 42]);
        assert_eq!(h.state.pending_records(), 0);
    }

    #[test]
    fn records_of_a_batch_share_one_completion_and_waiting_records_keep_their_own() {
        let mut h = Harness::new(config(), 1);
        // A record for a topic without metadata waits with a reply of its own...
        let wrap = crate::client::producer::DeliveryFuture;
        let mut waited = wrap(
            h.state
                .append(
                    ProducerRecord::new("other", "w").with_timestamp(7),
                    ms(0),
                    0,
                    &h.md,
                )
                .1,
        );
        assert!(matches!(waited.0, Delivery::Own(_)));
        h.md.apply(
            &metadata_response(&[(1, "b1:9092")], &[("t", &[1]), ("other", &[1])]),
            false,
            ms(1),
        );
        h.step(ms(1));
        // ...and shares the batch the next records of its partition join.
        let mut joined: Vec<Rx> = (0..2)
            .map(|i| {
                let record = ProducerRecord::new("other", vec![i])
                    .with_partition(0)
                    .with_timestamp(8 + i64::from(i));
                wrap(h.state.append(record, ms(2), 0, &h.md).1)
            })
            .collect();
        let (a, b) = match (&joined[0].0, &joined[1].0) {
            (Delivery::Batch { done: a, index: 1 }, Delivery::Batch { done: b, index: 2 }) => {
                (a, b)
            }
            _ => panic!("records placed at once complete through their batch"),
        };
        assert!(a.ptr_eq(b), "one completion for the whole batch");
        assert!(result(&mut joined[0]).is_none());
        assert_eq!(h.state.pending_records(), 3);
        let mut flushed = h.state.flush();
        assert_eq!(flushed.try_recv(), Ok(None), "the batch is not done");
        let mut step = h.step(ms(10));
        let plan = step.requests.remove(0);
        assert_eq!(plan.batches[0].specs.len(), 3);
        let outcome = response(&plan, 0, &[20]);
        h.state.on_outcome(plan, outcome, ms(11));
        let meta = |rx: &mut Rx| {
            let m = result(rx).expect("done").expect("acked");
            (m.topic, m.partition, m.offset, m.timestamp)
        };
        assert_eq!(meta(&mut waited), ("other".to_string(), 0, 20, 7));
        assert_eq!(meta(&mut joined[0]), ("other".to_string(), 0, 21, 8));
        assert_eq!(meta(&mut joined[1]), ("other".to_string(), 0, 22, 9));
        assert_eq!(h.state.pending_records(), 0);
        assert_eq!(flushed.try_recv(), Ok(Some(())));
    }

    #[test]
    fn a_batch_failure_reaches_every_record_and_a_dropped_producer_is_indeterminate() {
        let mut h = Harness::new(config(), 1);
        let mut rxs: Vec<Rx> = (0..2).map(|i| h.send(0, &[i], ms(0))).collect();
        let mut step = h.step(ms(5));
        let plan = step.requests.remove(0);
        let outcome = response(&plan, ResponseError::MessageTooLarge.code(), &[0]);
        h.state.on_outcome(plan, outcome, ms(6));
        for rx in &mut rxs {
            assert!(matches!(
                result(rx),
                Some(Err(ProduceError::Rejected(ResponseError::MessageTooLarge)))
            ));
        }
        let mut pending = h.send(0, b"x", ms(7));
        drop(h);
        assert!(matches!(
            result(&mut pending),
            Some(Err(ProduceError::Indeterminate { .. }))
        ));
    }

    #[test]
    fn a_full_batch_goes_at_once_and_the_next_record_opens_another() {
        let mut h = Harness::new(config(), 1);
        let big = vec![7u8; 600];
        let _a = h.send(0, &big, ms(0));
        let _b = h.send(0, &big, ms(0));
        let p = &h.state.partitions[&TopicPartition::new("t", 0)];
        assert_eq!(
            p.queue.len(),
            2,
            "the second record does not fit the first batch"
        );
        let step = h.step(ms(0));
        assert_eq!(step.requests.len(), 1, "ready without lingering");
        assert_eq!(seqs(&step.requests[0]), [(0, 0, 0)]);
    }

    #[test]
    fn at_most_five_batches_of_a_partition_are_unfinished() {
        let mut h = Harness::new(
            ProducerConfig {
                max_in_flight_per_connection: 5,
                ..config()
            },
            1,
        );
        let mut sent = Vec::new();
        for i in 0..7u64 {
            let _rx = h.send(0, &[i as u8], ms(i * 10));
            let mut step = h.step(ms(i * 10 + 5));
            sent.append(&mut step.requests);
        }
        assert_eq!(sent.len(), 5);
        let bases: Vec<i32> = sent.iter().map(|p| seqs(p)[0].1).collect();
        assert_eq!(bases, [0, 1, 2, 3, 4]);
        let first = sent.remove(0);
        let outcome = response(&first, 0, &[0]);
        h.state.on_outcome(first, outcome, ms(80));
        let step = h.step(ms(80));
        assert_eq!(step.requests.len(), 1);
        assert_eq!(seqs(&step.requests[0]), [(0, 5, 0)]);
    }

    #[test]
    fn a_retry_keeps_its_sequence_and_only_the_lowest_goes_out() {
        let mut h = Harness::new(config(), 1);
        let mut rx0 = h.send(0, b"a", ms(0));
        let mut first = h.step(ms(5)).requests;
        let mut rx1 = h.send(0, b"b", ms(6));
        let mut second = h.step(ms(11)).requests;
        let (p0, p1) = (first.remove(0), second.remove(0));
        assert_eq!((seqs(&p0), seqs(&p1)), (vec![(0, 0, 0)], vec![(0, 1, 0)]));
        // The first is refused (stale leader), the second arrives out of order.
        h.state.on_outcome(p0, response_of(0, 6), ms(12));
        h.state.on_outcome(p1, response_of(1, 45), ms(12));
        let step = h.step(ms(13));
        assert!(step.requests.is_empty(), "backing off");
        let mut step = h.step(ms(200));
        assert_eq!(step.requests.len(), 1);
        let retry = step.requests.remove(0);
        assert_eq!(
            seqs(&retry),
            [(0, 0, 0)],
            "only the lowest sequence is resent"
        );
        assert!(h.step(ms(400)).requests.is_empty(), "seq 1 waits for seq 0");
        let outcome = response(&retry, 0, &[10]);
        h.state.on_outcome(retry, outcome, ms(401));
        let mut step = h.step(ms(402));
        let retry = step.requests.remove(0);
        assert_eq!(seqs(&retry), [(0, 1, 0)], "same sequence, same epoch");
        let outcome = response(&retry, 0, &[11]);
        h.state.on_outcome(retry, outcome, ms(403));
        assert_eq!(result(&mut rx0).expect("done").expect("ok").offset, 10);
        assert_eq!(result(&mut rx1).expect("done").expect("ok").offset, 11);
    }

    /// A response for one batch of partition 0 of "t" with `code`.
    fn response_of(_seq: i32, code: i16) -> Outcome {
        Outcome::Response(ProduceResponse::default().with_responses(
            vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(0)
                    .with_error_code(code)
                    .with_base_offset(-1)])],
        ))
    }

    #[test]
    fn a_gap_at_the_broker_bumps_the_epoch_and_rewrites_from_zero() {
        let mut h = Harness::new(config(), 1);
        let _rx0 = h.send(0, b"a", ms(0));
        let p0 = h.step(ms(5)).requests.remove(0);
        h.state
            .on_outcome(p0, response(&Harness::plan_for_test(), 0, &[0]), ms(6));
        let mut rx1 = h.send(0, b"b", ms(7));
        let p1 = h.step(ms(12)).requests.remove(0);
        assert_eq!(seqs(&p1), [(0, 1, 0)]);
        // Seq 1 is next in line and still out of order: the broker lost seq 0.
        h.state.on_outcome(p1, response_of(1, 45), ms(13));
        assert_eq!(h.state.producer_id(), Some((1000, 1)), "epoch bumped");
        let mut step = h.step(ms(300));
        let retry = step.requests.remove(0);
        assert_eq!(
            seqs(&retry),
            [(0, 0, 1)],
            "rewritten from 0 under the new epoch"
        );
        let outcome = response(&retry, 0, &[5]);
        h.state.on_outcome(retry, outcome, ms(301));
        assert_eq!(result(&mut rx1).expect("done").expect("ok").offset, 5);
    }

    impl Harness {
        /// A plan shape for `response`: one batch of t-0.
        fn plan_for_test() -> RequestPlan {
            RequestPlan {
                node: 1,
                acks: Acks::All,
                batches: vec![Batch {
                    tp: TopicPartition::new("t", 0),
                    specs: Vec::new(),
                    first_id: 0,
                    own_replies: Vec::new(),
                    done: None,
                    done_rx: oneshot::channel().1.shared(),
                    size_bytes: 0,
                    created: Instant::ZERO,
                    closed: true,
                    sequence: None,
                    attempts: 0,
                    maybe_written: false,
                    retry_at: None,
                    last_error: String::new(),
                    last_code: None,
                    encoded: None,
                }],
            }
        }
    }

    #[test]
    fn a_possibly_written_batch_is_never_resent_under_a_new_epoch() {
        let mut h = Harness::new(config(), 1);
        let mut rx0 = h.send(0, b"a", ms(0));
        let p0 = h.step(ms(5)).requests.remove(0);
        // Timed out on the wire: may have been written; retried with the same sequence.
        h.state.on_outcome(
            p0,
            Outcome::Failed {
                written: true,
                error: "timeout".into(),
            },
            ms(6),
        );
        let retry = h.step(ms(300)).requests.remove(0);
        assert_eq!(seqs(&retry), [(0, 0, 0)]);
        // The broker has lost the producer: the stream must restart, but this batch may
        // be in the log already.
        h.state.on_outcome(retry, response_of(0, 59), ms(301));
        let step = h.step(ms(302));
        assert!(step.requests.is_empty());
        let err = result(&mut rx0).expect("done").expect_err("failed");
        assert!(err.is_indeterminate(), "{err:?}");
        // New records use the new epoch from sequence 0.
        let _rx1 = h.send(0, b"b", ms(303));
        let next = h.step(ms(310)).requests.remove(0);
        assert_eq!(seqs(&next), [(0, 0, 1)]);
    }

    #[test]
    fn expiry_is_definite_before_sending_and_indeterminate_after() {
        let mut h = Harness::new(
            ProducerConfig {
                delivery_timeout: Duration::from_millis(1000),
                ..config()
            },
            2,
        );
        // Partition 1's leader is unknown: its record is never sent.
        h.md.topics
            .get_mut("t")
            .expect("t")
            .partitions
            .get_mut(&1)
            .expect("p1")
            .leader = None;
        let mut never_sent = h.send(1, b"x", ms(0));
        let mut sent = h.send(0, b"y", ms(0));
        let plan = h.step(ms(5)).requests.remove(0);
        h.state.on_outcome(
            plan,
            Outcome::Failed {
                written: true,
                error: "connection closed".into(),
            },
            ms(6),
        );
        // Retried until the delivery timeout, never answered.
        let mut now = 6;
        let sent_result = loop {
            if let Some(r) = result(&mut sent) {
                break r;
            }
            now += 50;
            for plan in h.step(ms(now)).requests {
                h.state.on_outcome(
                    plan,
                    Outcome::Failed {
                        written: true,
                        error: "timeout".into(),
                    },
                    ms(now),
                );
            }
            assert!(now < 5000);
        };
        assert!(sent_result.expect_err("failed").is_indeterminate());
        assert_eq!(
            result(&mut never_sent).expect("done"),
            Err(ProduceError::TimedOut)
        );
        let p = &h.state.partitions[&TopicPartition::new("t", 0)];
        assert_eq!(
            p.unresolved, None,
            "nothing in flight: resolved by a new stream"
        );
        assert_eq!(h.state.producer_id(), Some((1000, 1)));
    }

    #[test]
    fn an_unresolved_sequence_is_resolved_by_a_later_success() {
        let mut h = Harness::new(
            ProducerConfig {
                delivery_timeout: Duration::from_millis(1000),
                ..config()
            },
            1,
        );
        let mut rx0 = h.send(0, b"a", ms(0));
        let p0 = h.step(ms(5)).requests.remove(0);
        let _rx1 = h.send(0, b"b", ms(500));
        let p1 = h.step(ms(505)).requests.remove(0);
        h.state.on_outcome(
            p0,
            Outcome::Failed {
                written: true,
                error: "timeout".into(),
            },
            ms(1001),
        );
        let err = result(&mut rx0).expect("expired").expect_err("failed");
        assert!(err.is_indeterminate());
        assert_eq!(
            h.state.partitions[&TopicPartition::new("t", 0)].unresolved,
            Some(0)
        );
        // Seq 1 succeeds: seq 0 must have been written; the stream continues.
        let outcome = response(&p1, 0, &[8]);
        h.state.on_outcome(p1, outcome, ms(1002));
        let p = &h.state.partitions[&TopicPartition::new("t", 0)];
        assert_eq!((p.unresolved, p.last_acked), (None, Some(1)));
        assert_eq!(h.state.producer_id(), Some((1000, 0)), "no bump needed");
        let _rx2 = h.send(0, b"c", ms(1003));
        assert_eq!(seqs(&h.step(ms(1010)).requests.remove(0)), [(0, 2, 0)]);
    }

    #[test]
    fn duplicate_sequence_counts_as_success_with_unknown_offset() {
        let mut h = Harness::new(config(), 1);
        let mut rx = h.send(0, b"a", ms(0));
        let plan = h.step(ms(5)).requests.remove(0);
        h.state.on_outcome(plan, response_of(0, 46), ms(6));
        let meta = result(&mut rx).expect("done").expect("acked");
        assert_eq!(meta.offset, -1);
    }

    #[test]
    fn non_retriable_errors_are_definite_unless_an_attempt_may_have_written() {
        let mut h = Harness::new(config(), 1);
        let mut rx = h.send(0, b"a", ms(0));
        let plan = h.step(ms(5)).requests.remove(0);
        h.state.on_outcome(plan, response_of(0, 10), ms(6));
        assert_eq!(
            result(&mut rx).expect("done"),
            Err(ProduceError::Rejected(ResponseError::MessageTooLarge))
        );

        let mut rx = h.send(0, b"b", ms(10));
        let plan = h.step(ms(15)).requests.remove(0);
        // REQUEST_TIMED_OUT: the leader may have appended it.
        h.state.on_outcome(plan, response_of(0, 7), ms(16));
        let plan = h.step(ms(400)).requests.remove(0);
        h.state.on_outcome(plan, response_of(0, 10), ms(401));
        assert!(result(&mut rx)
            .expect("done")
            .expect_err("failed")
            .is_indeterminate());
    }

    #[test]
    fn without_idempotence_batches_have_no_sequence_and_retry_at_the_front() {
        let mut h = Harness::new(
            ProducerConfig {
                idempotence: false,
                acks: Acks::Leader,
                ..config()
            },
            1,
        );
        let _a = h.send(0, b"a", ms(0));
        let plan = h.step(ms(5)).requests.remove(0);
        assert!(plan.batches[0].sequence.is_none());
        let header = fjord_log::BatchHeader::validate(plan.batches[0].encoded.as_ref().unwrap())
            .expect("valid");
        assert_eq!((header.producer_id, header.base_sequence), (-1, -1));
        let _b = h.send(0, b"b", ms(6));
        h.state.on_outcome(plan, response_of(0, 6), ms(7));
        let plan = h.step(ms(300)).requests.remove(0);
        assert_eq!(plan.batches[0].specs[0].value.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn flush_completes_when_earlier_records_complete() {
        let mut h = Harness::new(config(), 1);
        let _a = h.send(0, b"a", ms(0));
        let mut flushed = h.state.flush();
        assert!(flushed.try_recv().expect("open").is_none());
        let step = h.step(ms(0));
        assert_eq!(step.requests.len(), 1, "a flush skips the linger");
        let plan = step.requests.into_iter().next().expect("plan");
        let outcome = response(&plan, 0, &[0]);
        h.state.on_outcome(plan, outcome, ms(1));
        assert_eq!(flushed.try_recv(), Ok(Some(())));
        let mut empty = h.state.flush();
        assert_eq!(empty.try_recv(), Ok(Some(())));
    }

    #[test]
    fn limits_refuse_records_at_once() {
        let mut h = Harness::new(
            ProducerConfig {
                max_request_size_bytes: 100,
                buffer_memory_bytes: 150,
                ..config()
            },
            1,
        );
        let mut big = h.send(0, &[0; 200], ms(0));
        assert!(matches!(
            result(&mut big),
            Some(Err(ProduceError::RecordTooLarge { .. }))
        ));
        let _ok = h.send(0, &[0; 60], ms(0));
        let mut full = h.send(0, &[0; 60], ms(0));
        assert_eq!(result(&mut full), Some(Err(ProduceError::BufferFull)));
        let mut bad = h.send(9, b"x", ms(0));
        assert!(matches!(
            result(&mut bad),
            Some(Err(ProduceError::InvalidPartition { partition: 9, .. }))
        ));
        h.state.close();
        let mut closed = h.send(0, b"x", ms(0));
        assert_eq!(result(&mut closed), Some(Err(ProduceError::Closed)));
    }

    #[test]
    fn records_wait_for_metadata_then_give_up() {
        let mut h = Harness::new(
            ProducerConfig {
                metadata_wait_max: Duration::from_secs(1),
                ..config()
            },
            1,
        );
        let mut rx = crate::client::producer::DeliveryFuture(
            h.state
                .append(ProducerRecord::new("other", "v"), ms(0), 0, &h.md)
                .1,
        );
        let step = h.step(ms(1));
        assert!(step.want_metadata);
        assert_eq!(step.wake_at, Some(ms(1000)));
        assert_eq!(h.state.waiting_topics(), ["other"]);
        h.step(ms(1000));
        assert!(matches!(
            result(&mut rx),
            Some(Err(ProduceError::TopicNotAvailable { .. }))
        ));
    }

    #[test]
    fn keyed_records_follow_murmur2_and_keyless_stick_per_batch() {
        let mut h = Harness::new(config(), 4);
        for key in ["a", "b", "c", "d", "e"] {
            let _ = h
                .state
                .append(ProducerRecord::new("t", "v").with_key(key), ms(0), 0, &h.md);
            let p = partition_for_key(key.as_bytes(), 4);
            let q = &h.state.partitions[&TopicPartition::new("t", p)].queue;
            assert!(q
                .back()
                .expect("batch")
                .specs
                .iter()
                .any(|s| s.key.as_deref() == Some(key.as_bytes())));
        }
        let mut h = Harness::new(config(), 4);
        for _ in 0..5 {
            let _ = h
                .state
                .append(ProducerRecord::new("t", "v"), ms(0), 0, &h.md);
        }
        let used: Vec<usize> = h
            .state
            .partitions
            .values()
            .map(|p| p.queue.iter().map(|b| b.specs.len()).sum())
            .filter(|n| *n > 0)
            .collect();
        assert_eq!(used, [5], "keyless records share one batch");
    }
}
