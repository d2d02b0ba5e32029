//! Property test: random sequences of append / sync / crash / reopen / read / truncate /
//! delete_prefix on a `MemDisk`, checked against a model.
//!
//! Properties: every batch below the durable end before a crash is readable after it,
//! byte-identical; nothing that was truncated or lost is ever returned; offsets strictly
//! increase; `epoch_at` matches the epoch each batch was written with (including at
//! `log_start - 1`). `PROPTEST_CASES` sets the number of cases (default 48).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_log::testing::MemDisk;
use fjord_log::{build_batch, BatchIter, BuildOptions, Log, LogConfig, RecordSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Records, value size, and whether the epoch goes up.
    Append {
        records: usize,
        value_bytes: usize,
        new_epoch: bool,
    },
    Sync,
    /// Power loss, then reopen.
    Crash,
    /// Clean drop and reopen.
    Reopen,
    /// Read from a point in the log (a fraction of its length, in thousandths).
    Read {
        at: u16,
        max_bytes: usize,
    },
    /// Truncate at a batch boundary chosen by fraction.
    Truncate {
        at: u16,
    },
    DeletePrefix {
        at: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, 0usize..300, proptest::bool::weighted(0.1))
            .prop_map(|(records, value_bytes, new_epoch)| Op::Append { records, value_bytes, new_epoch }),
        3 => Just(Op::Sync),
        2 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        3 => (0u16..1000, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0u16..1000).prop_map(|at| Op::Truncate { at }),
        1 => (0u16..1000).prop_map(|at| Op::DeletePrefix { at }),
    ]
}

/// One batch the model believes is in the log.
#[derive(Debug, Clone)]
struct Stored {
    base: u64,
    last: u64,
    epoch: i32,
    bytes: Bytes,
}

struct Harness {
    disk: MemDisk,
    log: Log,
    /// Batches at or above the first segment, in order (some may be below the log start).
    batches: Vec<Stored>,
    /// Epochs of every batch ever appended and not truncated, for `epoch_at` below the start.
    epochs: Vec<(u64, u64, i32)>,
    epoch: i32,
}

fn dir() -> PathBuf {
    PathBuf::from("p")
}

fn open(disk: &MemDisk) -> Log {
    let (log, _) = Log::open(Arc::new(disk.clone()), dir(), LogConfig::for_tests()).expect("open");
    assert_eq!(log.durable_end_offset(), log.log_end_offset());
    log
}

/// Every batch from the log start, by repeated reads; checks offsets strictly increase.
fn read_all(log: &Log) -> Vec<(u64, u64, i32, Bytes)> {
    let mut out: Vec<(u64, u64, i32, Bytes)> = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let r = log.read(next, 4096, u64::MAX).expect("read");
        if r.bytes.is_empty() {
            break;
        }
        for item in BatchIter::new(&r.bytes) {
            let (h, b) = item.expect("every returned batch is valid");
            if let Some(prev) = out.last() {
                assert!(h.base_offset > prev.1, "offsets strictly increase");
            }
            out.push((
                h.base_offset,
                h.last_offset(),
                h.partition_leader_epoch,
                Bytes::copy_from_slice(b),
            ));
        }
        assert!(r.next_offset > next, "reads make progress");
        next = r.next_offset;
    }
    out
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let disk = MemDisk::new(seed);
        let log = open(&disk);
        Harness {
            disk,
            log,
            batches: Vec::new(),
            epochs: Vec::new(),
            epoch: 1,
        }
    }

    fn visible(&self) -> Vec<&Stored> {
        let start = self.log.log_start_offset();
        self.batches.iter().filter(|b| b.last >= start).collect()
    }

    /// The log holds exactly the model's batches from the log start.
    fn check_contents(&self) {
        let found = read_all(&self.log);
        let expected = self.visible();
        assert_eq!(found.len(), expected.len(), "batch count");
        for (f, e) in found.iter().zip(expected) {
            assert_eq!((f.0, f.1, f.2), (e.base, e.last, e.epoch));
            assert_eq!(f.3, e.bytes, "byte-identical");
        }
        self.check_epochs();
    }

    fn check_epochs(&self) {
        let start = self.log.log_start_offset();
        let end = self.log.log_end_offset();
        for (base, last, epoch) in &self.epochs {
            for offset in [*base, *last] {
                if offset + 1 >= start && offset < end {
                    assert_eq!(
                        self.log.epoch_at(offset),
                        Some(*epoch),
                        "epoch_at({offset})"
                    );
                }
            }
        }
        assert_eq!(self.log.epoch_at(end), None);
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append {
                records,
                value_bytes,
                new_epoch,
            } => {
                if *new_epoch {
                    self.epoch += 1;
                }
                let specs: Vec<RecordSpec> = (0..*records)
                    .map(|i| RecordSpec {
                        key: Some(Bytes::from(format!("k{i}"))),
                        value: Some(Bytes::from(vec![b'v'; *value_bytes])),
                        headers: Vec::new(),
                        timestamp_ms: self.log.log_end_offset() as i64,
                    })
                    .collect();
                let mut b = BytesMut::from(
                    &build_batch(&specs, &BuildOptions::default()).expect("build")[..],
                );
                let info = self.log.append(&mut b, self.epoch).expect("append");
                assert_eq!(
                    info.base_offset,
                    self.batches
                        .last()
                        .map_or(info.base_offset, |l| l.last + 1)
                        .max(info.base_offset)
                );
                self.batches.push(Stored {
                    base: info.base_offset,
                    last: info.last_offset,
                    epoch: self.epoch,
                    bytes: b.freeze(),
                });
                self.epochs
                    .push((info.base_offset, info.last_offset, self.epoch));
            }
            Op::Sync => {
                let durable = self.log.sync().expect("sync");
                assert_eq!(durable, self.log.log_end_offset());
            }
            Op::Crash => {
                let durable_end = self.log.durable_end_offset();
                let start = self.log.log_start_offset();
                self.disk.crash();
                self.log = open(&self.disk);
                assert_eq!(
                    self.log.log_start_offset(),
                    start,
                    "the log start is durable"
                );
                assert!(
                    self.log.log_end_offset() >= durable_end,
                    "durable batches survive"
                );
                // What survived must be a prefix of the model (nothing lost comes back, no
                // holes), containing at least everything durable.
                let found = read_all(&self.log);
                let expected = self.visible();
                assert!(found.len() <= expected.len());
                for (f, e) in found.iter().zip(&expected) {
                    assert_eq!((f.0, f.1, f.2), (e.base, e.last, e.epoch));
                    assert_eq!(f.3, e.bytes, "byte-identical after the crash");
                }
                let end = self.log.log_end_offset();
                self.batches.retain(|b| b.last < end);
                self.epochs.retain(|(_, last, _)| *last < end);
                self.epoch = self.epoch.max(self.log.last_epoch().unwrap_or(1));
                self.check_contents();
            }
            Op::Reopen => {
                let end = self.log.log_end_offset();
                self.log.checkpoint().expect("checkpoint");
                self.log = open(&self.disk);
                assert_eq!(self.log.log_end_offset(), end);
                self.check_contents();
            }
            Op::Read { at, max_bytes } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (end - start) * u64::from(*at) / 1000;
                let r = self.log.read(offset, *max_bytes, u64::MAX).expect("read");
                let mut expected = self
                    .visible()
                    .into_iter()
                    .filter(|b| b.last >= offset)
                    .peekable();
                if offset == end {
                    assert!(r.bytes.is_empty());
                    return;
                }
                let first = expected.peek().expect("a batch at or after the offset");
                assert_eq!(r.first_offset, first.base);
                let mut pos = 0;
                for e in expected {
                    if pos == r.bytes.len() {
                        break;
                    }
                    assert_eq!(&r.bytes[pos..pos + e.bytes.len()], &e.bytes[..]);
                    pos += e.bytes.len();
                    assert!(
                        pos == e.bytes.len() || pos <= *max_bytes,
                        "max_bytes respected"
                    );
                }
                assert_eq!(pos, r.bytes.len());
            }
            Op::Truncate { at } => {
                let candidates: Vec<u64> = self.visible().iter().map(|b| b.base).collect();
                if candidates.is_empty() {
                    return;
                }
                let start = self.log.log_start_offset();
                let idx = candidates.len() * usize::from(*at) / 1000;
                let offset = candidates[idx];
                if offset < start {
                    return;
                }
                self.log.truncate_from(offset).expect("truncate");
                self.batches.retain(|b| b.base < offset);
                self.epochs.retain(|(base, _, _)| *base < offset);
                assert_eq!(
                    self.log.log_end_offset(),
                    self.batches.last().map_or(start, |b| b.last + 1).max(start)
                );
                self.check_contents();
            }
            Op::DeletePrefix { at } => {
                let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
                let offset = start + (end - start) * u64::from(*at) / 1000;
                self.log.delete_prefix(offset).expect("delete_prefix");
                assert_eq!(self.log.log_start_offset(), offset.max(start));
                self.check_contents();
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_log_matches_its_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new(seed);
        for op in &ops {
            h.apply(op);
        }
        h.apply(&Op::Crash);
    }
}
