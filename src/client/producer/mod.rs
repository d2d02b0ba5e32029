//! The producer: Kafka's partitioner, per-partition batching, retries and the idempotent
//! producer, over one background sender task.
//!
//! [`Producer::send`] enqueues at once (records of one partition are sent in call order) and
//! returns a [`DeliveryFuture`]. The sender task groups ready batches per leader into
//! Produce requests, at most `max_in_flight_per_connection` per broker. With idempotence
//! (the default; requires acks=all) every batch carries the producer id, epoch and
//! per-partition sequence, so a retry after a timeout is deduplicated by the broker; see
//! [`state`] for the sequence rules.
//!
//! What a result means: `Ok` — acknowledged at that offset (acks=0: sent, offset -1;
//! a DUPLICATE_SEQUENCE_NUMBER answer: written earlier, offset -1).
//! [`ProduceError::Indeterminate`] — the records were sent and may or may not have been
//! written. Every other error — definitely not written.

mod sender;
pub(crate) mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fjord_log::Compression;
use futures::channel::oneshot;

use super::cluster::Client;
use super::error::{Error, ResponseError};
use super::notify::Notify;
use state::{Delivery, ProducerState};

/// One record to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: chosen by the default partitioner (murmur2 of the key, sticky if keyless).
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// CreateTime in ms since the epoch; `None`: the producer's wall clock at `send`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: i32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> ProducerRecord {
        self.headers.push((key.into(), value));
        self
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> ProducerRecord {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged record was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// -1 when unknown: acks=0, or the broker reported DUPLICATE_SEQUENCE_NUMBER (the
    /// record was written by an earlier attempt whose offset it no longer remembers).
    pub offset: i64,
    /// The record's CreateTime, or the broker's LogAppendTime if the topic uses it.
    pub timestamp: i64,
}

/// Why a record was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The records were sent and may or may not have been written (a timeout or broken
    /// connection after the request went out, REQUEST_TIMED_OUT, or the producer stopped
    /// while waiting). Never count such a record as lost.
    #[error("outcome unknown: {reason}")]
    Indeterminate { reason: String },
    /// The broker refused the records with a non-retriable error (or retries ran out on
    /// definite refusals). Not written.
    #[error("rejected by the broker: {0}")]
    Rejected(ResponseError),
    /// The delivery timeout passed before the records were ever written (never sent, or
    /// every attempt was refused).
    #[error("delivery timed out")]
    TimedOut,
    /// `retries` attempts failed without an answer from the broker (e.g. it could not be
    /// reached), none of which can have written the records.
    #[error("retries exhausted, last error: {last_error}")]
    RetriesExhausted { last_error: String },
    /// The topic's metadata could not be obtained within `metadata_wait_max`, or the topic
    /// is invalid.
    #[error("topic {topic} not available: {reason}")]
    TopicNotAvailable { topic: String, reason: String },
    /// An explicit partition the topic does not have.
    #[error("topic {topic} has no partition {partition}")]
    InvalidPartition { topic: String, partition: i32 },
    #[error("record of {size} bytes exceeds the request limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    /// More than `buffer_memory_bytes` are waiting to be sent: slow down.
    #[error("producer buffer full")]
    BufferFull,
    /// The producer was closed before the record could be sent.
    #[error("producer closed")]
    Closed,
    /// The producer cannot go on (e.g. no producer id could be obtained).
    #[error("producer failed: {0}")]
    Fatal(String),
}

impl ProduceError {
    /// True when the record may have been written.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ProduceError::Indeterminate { .. })
    }
}

/// Kafka's `acks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// 0: no response; the record counts as sent once handed to the transport.
    None,
    /// 1: the leader has it.
    Leader,
    /// -1: committed on the in-sync replicas.
    All,
}

impl Acks {
    pub fn wire_value(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Producer settings; defaults are the Java client's.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// Idempotent producer (`enable.idempotence`): requires acks=all and at most
    /// [`IDEMPOTENT_IN_FLIGHT_MAX`] requests in flight per connection.
    pub idempotence: bool,
    /// How long a batch waits for more records before it is sent (`linger.ms`).
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (`batch.size`).
    pub batch_size_bytes: usize,
    /// Largest Produce request, and so largest record (`max.request.size`).
    pub max_request_size_bytes: usize,
    /// Records waiting to be sent beyond this are refused with `BufferFull`
    /// (`buffer.memory`).
    pub buffer_memory_bytes: usize,
    pub compression: Compression,
    /// Retries of a batch after retriable errors (`retries`), within `delivery_timeout`.
    pub retries: u32,
    /// Upper bound on the time from `send` to the result (`delivery.timeout.ms`), give or
    /// take one request timeout for a request on the wire.
    pub delivery_timeout: Duration,
    /// Produce requests in flight per broker connection
    /// (`max.in.flight.requests.per.connection`).
    pub max_in_flight_per_connection: usize,
    /// How long records wait for their topic's metadata (`max.block.ms`).
    pub metadata_wait_max: Duration,
}

/// The most requests in flight per connection idempotence allows: brokers remember the last
/// five batches per producer and partition for deduplication.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_size_bytes: 16 * 1024,
            max_request_size_bytes: 1024 * 1024,
            buffer_memory_bytes: 32 * 1024 * 1024,
            compression: Compression::None,
            retries: u32::MAX,
            delivery_timeout: Duration::from_secs(120),
            max_in_flight_per_connection: IDEMPOTENT_IN_FLIGHT_MAX,
            metadata_wait_max: Duration::from_secs(60),
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.idempotence && self.acks != Acks::All {
            return invalid("idempotence requires acks=all");
        }
        if self.idempotence && self.max_in_flight_per_connection > IDEMPOTENT_IN_FLIGHT_MAX {
            return invalid("idempotence allows at most 5 requests in flight per connection");
        }
        if self.max_in_flight_per_connection == 0 {
            return invalid("max_in_flight_per_connection must be at least 1");
        }
        if self.batch_size_bytes == 0 || self.max_request_size_bytes == 0 {
            return invalid("batch and request sizes must be positive");
        }
        if self.max_request_size_bytes > fjord_log::batch::BATCH_SIZE_MAX_BYTES {
            return invalid("max_request_size_bytes exceeds the 8 MiB batch limit");
        }
        Ok(())
    }
}

struct Shared {
    client: Client,
    state: Mutex<ProducerState>,
    notify: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ProducerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tells the sender task that every handle is gone: it finishes what is queued and stops.
struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.state().close();
        self.0.notify.notify();
    }
}

/// A Kafka producer. Clones share one sender task; it stops after the last clone is dropped
/// (finishing queued records first) or after [`Producer::close`].
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    _guard: Arc<HandleGuard>,
}

impl Producer {
    /// Starts a producer on `client` (its background task runs on the client's spawner).
    pub fn new(client: &Client, config: ProducerConfig) -> Result<Producer, Error> {
        config.validate()?;
        let seed = client.derive_seed();
        let shared = Arc::new(Shared {
            client: client.clone(),
            state: Mutex::new(ProducerState::new(config, client.config().retry(), seed)),
            notify: Notify::default(),
        });
        client
            .spawner()
            .spawn("kafka-producer", Box::pin(sender::run(shared.clone())));
        Ok(Producer {
            _guard: Arc::new(HandleGuard(shared.clone())),
            shared,
        })
    }

    /// Enqueues `record`. Never waits: the result comes through the returned future (which
    /// need not be polled for the record to be sent).
    pub fn send(&self, record: ProducerRecord) -> DeliveryFuture {
        let client = &self.shared.client;
        let now = client.clock().now();
        let wall = client.clock().wall_clock_ms();
        let metadata = client.metadata();
        let (wake, delivery) = self.shared.state().append(record, now, wall, &metadata);
        if wake {
            self.shared.notify.notify();
        }
        DeliveryFuture(delivery)
    }

    /// Sends everything enqueued before this call without lingering and waits for all of it
    /// to complete (successfully or not).
    pub async fn flush(&self) {
        let done = self.shared.state().flush();
        self.shared.notify.notify();
        let _ = done.await;
    }

    /// Flushes, then stops the sender task. Records sent by other clones afterwards fail
    /// with `Closed`.
    pub async fn close(self) {
        self.flush().await;
        self.shared.state().close();
        self.shared.notify.notify();
    }

    /// The idempotent producer's current id and epoch, once obtained.
    pub fn producer_id(&self) -> Option<(i64, i16)> {
        self.shared.state().producer_id()
    }

    /// Records enqueued and not yet completed.
    pub fn pending_records(&self) -> usize {
        self.shared.state().pending_records()
    }
}

/// The result of one [`Producer::send`]. Records sent into a batch share the batch's one
/// completion (no channel per record).
pub struct DeliveryFuture(Delivery);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The sender task went away without answering (its node stopped): the record may
        // have been sent.
        let stopped = |oneshot::Canceled| {
            Err(ProduceError::Indeterminate {
                reason: "producer stopped before the outcome was known".to_string(),
            })
        };
        match &mut self.0 {
            Delivery::Own(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or_else(stopped)),
            Delivery::Batch { done, index } => {
                let index = *index;
                Pin::new(done)
                    .poll(cx)
                    .map(|r| r.map_or_else(stopped, |outcome| outcome.record(index)))
            }
        }
    }
}
