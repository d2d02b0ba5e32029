//! Property test: random sequences of append (leader and follower, with gaps) / sync / crash
//! / reopen / read / truncate / delete_prefix / reset on a `MemDisk`, with power losses both
//! between operations and at any disk step inside one, checked against a model.
//!
//! Properties: every batch below the durable end before a crash is readable after it,
//! byte-identical; nothing that was truncated or lost is ever returned; offsets strictly
//! increase; `epoch_at` matches the epoch each batch was written with (including at
//! `log_start - 1`). `PROPTEST_CASES` sets the number of cases (default 48).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_log::testing::MemDisk;
use fjord_log::{build_batch, BatchIter, BuildOptions, Log, LogConfig, LogError, RecordSpec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Leader append: records, value size, and whether the epoch goes up.
    Append {
        records: usize,
        value_bytes: usize,
        new_epoch: bool,
    },
    /// Follower append of a batch starting `gap` offsets after the log end.
    Replicate {
        gap: u64,
        records: usize,
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
    /// Reset to an empty log starting `gap` offsets after the log end.
    Reset {
        gap: u64,
    },
    /// Power loss at the `step`-th disk mutation of an operation, then reopen.
    Interrupted {
        op: Box<Op>,
        step: u64,
    },
}

fn mutation() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..6, 0usize..300, proptest::bool::weighted(0.1)).prop_map(
            |(records, value_bytes, new_epoch)| Op::Append { records, value_bytes, new_epoch }
        ),
        1 => (0u64..20, 1usize..4).prop_map(|(gap, records)| Op::Replicate { gap, records }),
        2 => Just(Op::Sync),
        1 => (0u16..1000).prop_map(|at| Op::Truncate { at }),
        1 => (0u16..1000).prop_map(|at| Op::DeletePrefix { at }),
        1 => (1u64..50).prop_map(|gap| Op::Reset { gap }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => mutation(),
        2 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        3 => (0u16..1000, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        2 => (mutation(), 1u64..12).prop_map(|(op, step)| Op::Interrupted { op: Box::new(op), step }),
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
    /// The batch the last append tried to write (what a crash may or may not have kept).
    attempt: Option<Stored>,
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
            attempt: None,
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

    fn truncate_target(&self, at: u16) -> Option<u64> {
        let candidates: Vec<u64> = self.visible().iter().map(|b| b.base).collect();
        let offset = *candidates.get(candidates.len() * usize::from(at) / 1000)?;
        (offset >= self.log.log_start_offset()).then_some(offset)
    }

    fn fraction(&self, at: u16) -> u64 {
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        start + (end - start) * u64::from(at) / 1000
    }

    /// Runs a mutating operation; updates the model only if the log reports success.
    fn try_apply(&mut self, op: &Op) -> Result<(), LogError> {
        match op {
            Op::Append {
                records,
                value_bytes,
                new_epoch,
            } => {
                let epoch = self.epoch + i32::from(*new_epoch);
                let mut b = batch(*records, *value_bytes, &BuildOptions::default());
                let end = self.log.log_end_offset();
                let mut stored = b.clone();
                fjord_log::batch::set_base_offset(&mut stored, end).expect("set");
                fjord_log::batch::set_partition_leader_epoch(&mut stored, epoch).expect("set");
                self.attempt = Some(Stored {
                    base: end,
                    last: end + *records as u64 - 1,
                    epoch,
                    bytes: stored.freeze(),
                });
                let info = self.log.append(&mut b, epoch)?;
                assert_eq!(info.base_offset, end);
                self.epoch = epoch;
                self.push(info.base_offset, info.last_offset, b.freeze());
            }
            Op::Replicate { gap, records } => {
                let opts = BuildOptions {
                    base_offset: self.log.log_end_offset() + gap,
                    partition_leader_epoch: self.epoch,
                    ..BuildOptions::default()
                };
                let b = batch(*records, 10, &opts).freeze();
                self.attempt = Some(Stored {
                    base: opts.base_offset,
                    last: opts.base_offset + *records as u64 - 1,
                    epoch: self.epoch,
                    bytes: b.clone(),
                });
                let info = self.log.append_replicated(&b)?;
                self.push(info.base_offset, info.last_offset, b);
            }
            Op::Sync => {
                let durable = self.log.sync()?;
                assert_eq!(durable, self.log.log_end_offset());
            }
            Op::Truncate { at } => {
                let Some(offset) = self.truncate_target(*at) else {
                    return Ok(());
                };
                self.log.truncate_from(offset)?;
                let start = self.log.log_start_offset();
                self.batches.retain(|b| b.base < offset);
                self.epochs.retain(|(base, _, _)| *base < offset);
                let end = self.batches.last().map_or(start, |b| b.last + 1).max(start);
                assert_eq!(self.log.log_end_offset(), end);
            }
            Op::DeletePrefix { at } => {
                let start = self.log.log_start_offset();
                let offset = self.fraction(*at);
                self.log.delete_prefix(offset)?;
                assert_eq!(self.log.log_start_offset(), offset.max(start));
            }
            Op::Reset { gap } => {
                let start = self.log.log_end_offset() + gap;
                self.log.reset(start, self.epoch)?;
                self.batches.clear();
                self.epochs = vec![(start - 1, start - 1, self.epoch)];
            }
            Op::Crash | Op::Reopen | Op::Read { .. } | Op::Interrupted { .. } => {
                unreachable!("not a plain mutation: {op:?}")
            }
        }
        Ok(())
    }

    fn push(&mut self, base: u64, last: u64, bytes: Bytes) {
        self.batches.push(Stored {
            base,
            last,
            epoch: self.epoch,
            bytes,
        });
        self.epochs.push((base, last, self.epoch));
    }

    /// After a crash: the log must hold a prefix of `candidates` (from its log start) that
    /// includes every batch ending below `must_keep`; the model becomes what was found.
    fn adopt_prefix(&mut self, candidates: Vec<Stored>, must_keep: u64) {
        let start = self.log.log_start_offset();
        let found = read_all(&self.log);
        let visible: Vec<&Stored> = candidates.iter().filter(|b| b.last >= start).collect();
        assert!(
            found.len() <= visible.len(),
            "nothing lost or truncated comes back"
        );
        for (f, e) in found.iter().zip(&visible) {
            assert_eq!((f.0, f.1, f.2), (e.base, e.last, e.epoch));
            assert_eq!(f.3, e.bytes, "byte-identical after the crash");
        }
        for e in visible.iter().skip(found.len()) {
            assert!(
                e.last >= must_keep,
                "durable batch {}..{} lost",
                e.base,
                e.last
            );
        }
        let end = self.log.log_end_offset();
        self.batches = candidates.into_iter().filter(|b| b.last < end).collect();
        self.epochs.retain(|(_, last, _)| *last < end);
        self.epoch = self.epoch.max(self.log.last_epoch().unwrap_or(1));
        self.check_contents();
    }

    fn apply(&mut self, op: &Op) {
        match op {
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
                let candidates = self.batches.clone();
                self.adopt_prefix(candidates, durable_end);
            }
            Op::Reopen => {
                let end = self.log.log_end_offset();
                self.log.checkpoint().expect("checkpoint");
                self.log = open(&self.disk);
                assert_eq!(self.log.log_end_offset(), end);
                self.check_contents();
            }
            Op::Read { at, max_bytes } => {
                let offset = self.fraction(*at);
                let r = self.log.read(offset, *max_bytes, u64::MAX).expect("read");
                let mut expected = self
                    .visible()
                    .into_iter()
                    .filter(|b| b.last >= offset)
                    .peekable();
                let Some(first) = expected.peek() else {
                    assert!(r.bytes.is_empty());
                    return;
                };
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
            Op::Interrupted { op, step } => self.interrupted(op, *step),
            mutation => {
                self.try_apply(mutation).expect("mutation");
                self.check_contents();
            }
        }
    }

    /// Runs `op` with a power loss scheduled at its `step`-th disk mutation. If the crash
    /// hit, reopens and checks that the log is either the old or the new one (or, for
    /// operations that remove data, in between: a prefix), and never lost durable data.
    fn interrupted(&mut self, op: &Op, step: u64) {
        let before = self.batches.clone();
        let durable_end = self.log.durable_end_offset();
        let old_start = self.log.log_start_offset();
        let old_epochs = self.epochs.clone();
        let truncate_at = match op {
            Op::Truncate { at } => self.truncate_target(*at),
            _ => None,
        };
        let reset_to = match op {
            Op::Reset { gap } => Some((self.log.log_end_offset() + gap, self.epoch)),
            _ => None,
        };
        self.disk
            .crash_at_mutation(Some(self.disk.stats().mutations + step));
        let result = self.try_apply(op);
        self.disk.crash_at_mutation(None);
        if result.is_ok() {
            self.check_contents();
            return;
        }
        self.log = open(&self.disk);
        let start = self.log.log_start_offset();
        if let Some((reset_start, epoch)) = reset_to.filter(|(s, _)| *s == start) {
            // The reset happened: empty from its start, with the epoch before it.
            assert_eq!(self.log.log_end_offset(), reset_start);
            assert_eq!(self.log.epoch_at(reset_start - 1), Some(epoch));
            self.batches.clear();
            self.epochs = vec![(reset_start - 1, reset_start - 1, epoch)];
            self.check_contents();
            return;
        }
        self.epochs = old_epochs;
        let must_keep = match op {
            // A reset that did not happen may have removed any suffix already.
            Op::Reset { .. } => 0,
            Op::Truncate { .. } => durable_end.min(truncate_at.unwrap_or(u64::MAX)),
            _ => durable_end,
        };
        if !matches!(op, Op::DeletePrefix { .. }) {
            assert_eq!(start, old_start, "only delete_prefix moves the start");
        }
        // An interrupted append may or may not have kept its batch.
        let mut candidates = before;
        if matches!(op, Op::Append { .. } | Op::Replicate { .. }) {
            let attempt = self.attempt.take().expect("an append was attempted");
            self.epochs
                .push((attempt.base, attempt.last, attempt.epoch));
            candidates.push(attempt);
        }
        self.adopt_prefix(candidates, must_keep);
    }
}

fn batch(records: usize, value_bytes: usize, opts: &BuildOptions) -> BytesMut {
    let specs: Vec<RecordSpec> = (0..records)
        .map(|i| RecordSpec {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(vec![b'v'; value_bytes])),
            headers: Vec::new(),
            timestamp_ms: i as i64,
        })
        .collect();
    BytesMut::from(&build_batch(&specs, opts).expect("build")[..])
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

/// Positions in a segment file that a bit flip may hit and that the CRC covers (or whose
/// damage breaks the framing): everything except each batch's base offset (bytes 0..8) and
/// partition leader epoch (12..16), which Kafka's format leaves outside the CRC.
fn protected_positions(content: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Ok(h) = fjord_log::BatchHeader::parse(&content[at..]) {
        let end = (at + h.total_size()).min(content.len());
        out.extend((at + 8..at + 12).chain(at + 16..end).map(|p| p as u64));
        at = end;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Bit flips at rest in synced data are never served: every read returns model bytes or
    /// `Corrupt`, before and after a reopen (whatever recovery decided to cut).
    #[test]
    fn corruption_is_never_served(
        seed in any::<u64>(),
        sizes in proptest::collection::vec((1usize..6, 0usize..400), 1..40),
        flips in proptest::collection::vec((any::<u16>(), any::<u32>()), 1..4),
        checkpoint in any::<bool>(),
    ) {
        let disk = MemDisk::new(seed);
        let mut log = open(&disk);
        let mut model = Vec::new();
        for (records, value_bytes) in sizes {
            let mut b = batch(records, value_bytes, &BuildOptions::default());
            let info = log.append(&mut b, 1).expect("append");
            model.push((info.base_offset, info.last_offset, b.freeze()));
        }
        log.sync().expect("sync");
        if checkpoint {
            log.checkpoint().expect("checkpoint");
        }
        let check = |log: &Log| {
            let mut next = log.log_start_offset();
            while next < log.log_end_offset() {
                match log.read(next, 2000, u64::MAX) {
                    Ok(r) => {
                        let mut pos = 0;
                        for item in BatchIter::new(&r.bytes) {
                            let (h, b) = item.expect("a served batch is valid");
                            let m = model.iter().find(|m| m.0 == h.base_offset).expect("known batch");
                            assert_eq!(b, &m.2[..], "served bytes are the stored bytes");
                            pos += b.len();
                        }
                        assert_eq!(pos, r.bytes.len());
                        next = r.next_offset;
                    }
                    Err(LogError::Corrupt { .. }) => {
                        // Skip the damaged batch.
                        next = model.iter().find(|m| m.1 >= next).map_or(u64::MAX, |m| m.1 + 1);
                    }
                    Err(e) => panic!("unexpected read error {e}"),
                }
            }
        };
        let segments: Vec<PathBuf> = disk
            .file_names()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        // Where flips may land, computed before any flip.
        let positions: Vec<Vec<u64>> = segments
            .iter()
            .map(|path| {
                let f = fjord_log::Disk::open(&disk, path).expect("open");
                let mut content = vec![0; f.len() as usize];
                f.read_at(0, &mut content).expect("read");
                protected_positions(&content)
            })
            .collect();
        for (file, pick) in flips {
            let i = usize::from(file) % segments.len();
            if positions[i].is_empty() {
                continue;
            }
            let pos = positions[i][pick as usize % positions[i].len()];
            disk.corrupt(&segments[i], pos, 1).expect("flipped");
        }
        check(&log);
        drop(log);
        let log = open(&disk);
        check(&log);
        prop_assert!(log.log_end_offset() <= model.last().map_or(0, |m| m.1 + 1));
    }
}
