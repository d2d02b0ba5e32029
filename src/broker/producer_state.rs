//! Idempotent producers: per-partition sequence tracking (Kafka's ProducerStateManager, for
//! non-transactional producers).
//!
//! For each producer id the table keeps its epoch and the metadata of its last
//! [`CACHED_BATCHES_MAX_COUNT`] batches. A batch is checked before it is appended: a retry of
//! one of those batches is a *duplicate* and is answered with the original offsets; a gap in
//! the sequence is `OUT_OF_ORDER_SEQUENCE_NUMBER`; an older epoch is fenced. A producer the
//! table does not know (new, or all its batches deleted by retention) may start at any
//! sequence, as in Kafka.
//!
//! The table is a pure function of the batches applied to it in offset order, so every
//! replica can rebuild it from its log: a partition keeps one table for its committed prefix
//! and, while leading, a copy extended with the batches appended but not yet committed.

use std::collections::{BTreeMap, VecDeque};

use fjord_log::BatchHeader;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const CACHED_BATCHES_MAX_COUNT: usize = 5;
/// Producers tracked per partition; the least recently active are forgotten beyond it.
pub const PRODUCERS_MAX_COUNT: usize = 100_000;

/// A batch as remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    /// Offset of the last batch applied (for eviction order).
    last_offset: u64,
}

/// The verdict on a batch about to be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate(CachedBatch),
    /// Kafka's INVALID_PRODUCER_EPOCH: an older epoch of a known producer.
    InvalidEpoch,
    /// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER: a gap (or a new epoch not starting at 0).
    OutOfOrder,
}

/// The producer state of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX like Kafka's.
    let n = h.last_offset_delta;
    if h.base_sequence > i32::MAX - n {
        n - (i32::MAX - h.base_sequence) - 1
    } else {
        h.base_sequence + n
    }
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStateTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks `header` (a produced batch, offsets not yet assigned) against the table.
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return SequenceCheck::Append;
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return SequenceCheck::Append;
        };
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::InvalidEpoch;
        }
        let last = last_seq_of(h);
        if h.producer_epoch == entry.epoch {
            if let Some(b) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
            {
                return SequenceCheck::Duplicate(*b);
            }
            match entry.batches.back() {
                Some(b) if next_seq(b.last_seq) != h.base_sequence => SequenceCheck::OutOfOrder,
                _ => SequenceCheck::Append,
            }
        } else if h.base_sequence != 0 {
            // A new epoch starts its sequences again at 0.
            SequenceCheck::OutOfOrder
        } else {
            SequenceCheck::Append
        }
    }

    /// Records a batch that is now in the log (`h` with its offsets assigned). Batches must
    /// be applied in offset order.
    pub fn apply(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.base_sequence < 0 || h.is_control() {
            return;
        }
        let cached = CachedBatch {
            first_seq: h.base_sequence,
            last_seq: last_seq_of(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
        };
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_offset: 0,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(cached);
        while entry.batches.len() > CACHED_BATCHES_MAX_COUNT {
            entry.batches.pop_front();
        }
        entry.last_offset = h.last_offset();
        if self.producers.len() > PRODUCERS_MAX_COUNT {
            self.evict_oldest();
        }
    }

    /// Applies every batch of `batches` (whole stored batches in offset order).
    pub fn apply_all(&mut self, batches: &[u8]) {
        for (h, _) in fjord_log::BatchIter::new(batches).flatten() {
            self.apply(&h);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((&pid, _)) = self
            .producers
            .iter()
            .min_by_key(|(pid, e)| (e.last_offset, **pid))
        {
            self.producers.remove(&pid);
        }
    }

    /// Forgets producers whose last batch is below `log_start` (deleted by retention), as
    /// Kafka does when their batches leave the log.
    pub fn remove_below(&mut self, log_start: u64) {
        self.producers.retain(|_, e| e.last_offset >= log_start);
    }

    /// The epoch of a known producer.
    pub fn epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|e| e.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fjord_log::{build_batch, BuildOptions, RecordSpec};

    /// A stored batch of `count` records from producer `pid` at `base_offset`.
    fn batch(pid: i64, epoch: i16, seq: i32, count: usize, base_offset: u64) -> BatchHeader {
        let records: Vec<_> = (0..count)
            .map(|i| RecordSpec {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Vec::new(),
                timestamp_ms: 1000 + i as i64,
            })
            .collect();
        let bytes = build_batch(
            &records,
            &BuildOptions {
                base_offset,
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: seq,
                ..Default::default()
            },
        )
        .expect("batch");
        BatchHeader::parse(&bytes).expect("header")
    }

    #[test]
    fn in_sequence_batches_append_and_retries_are_duplicates() {
        let mut t = ProducerStateTable::new();
        let b0 = batch(7, 0, 0, 3, 0);
        assert_eq!(t.check(&b0), SequenceCheck::Append);
        t.apply(&b0);
        let b1 = batch(7, 0, 3, 2, 3);
        assert_eq!(t.check(&b1), SequenceCheck::Append);
        t.apply(&b1);
        // A retry of b0 (offsets not yet assigned on the retry: base 0 in the request).
        match t.check(&batch(7, 0, 0, 3, 0)) {
            SequenceCheck::Duplicate(c) => assert_eq!((c.base_offset, c.last_offset), (0, 2)),
            other => panic!("{other:?}"),
        }
        // A gap.
        assert_eq!(t.check(&batch(7, 0, 9, 1, 0)), SequenceCheck::OutOfOrder);
        // Only the last five batches are remembered.
        for i in 0..5 {
            t.apply(&batch(7, 0, 5 + i, 1, 5 + i as u64));
        }
        assert_eq!(t.check(&batch(7, 0, 0, 3, 0)), SequenceCheck::OutOfOrder);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut t = ProducerStateTable::new();
        t.apply(&batch(1, 3, 0, 1, 0));
        assert_eq!(t.check(&batch(1, 2, 1, 1, 0)), SequenceCheck::InvalidEpoch);
        assert_eq!(t.check(&batch(1, 4, 5, 1, 0)), SequenceCheck::OutOfOrder);
        assert_eq!(t.check(&batch(1, 4, 0, 1, 0)), SequenceCheck::Append);
        t.apply(&batch(1, 4, 0, 1, 1));
        assert_eq!(t.epoch(1), Some(4));
    }

    #[test]
    fn unknown_producers_and_plain_batches_append() {
        let t = ProducerStateTable::new();
        assert_eq!(t.check(&batch(5, 0, 42, 1, 0)), SequenceCheck::Append);
        assert_eq!(t.check(&batch(-1, -1, -1, 1, 0)), SequenceCheck::Append);
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        let mut t = ProducerStateTable::new();
        t.apply(&batch(2, 0, i32::MAX - 1, 2, 0));
        assert_eq!(t.check(&batch(2, 0, 0, 1, 0)), SequenceCheck::Append);
        assert_eq!(t.check(&batch(2, 0, 1, 1, 0)), SequenceCheck::OutOfOrder);
    }

    #[test]
    fn retention_forgets_producers() {
        let mut t = ProducerStateTable::new();
        t.apply(&batch(1, 0, 0, 1, 0));
        t.apply(&batch(2, 0, 0, 1, 10));
        t.remove_below(5);
        assert_eq!(t.epoch(1), None);
        assert_eq!(t.epoch(2), Some(0));
    }
}
