//! The leader-epoch cache: which epoch (Raft term) wrote which offsets.
//!
//! A list of `(epoch, start_offset)` entries, both strictly increasing, like Kafka's
//! `leader-epoch-checkpoint`: epoch `e` covers offsets from its start up to the next entry's
//! start (or the log end). An entry may start before the log start: the entry covering
//! `log_start - 1` is kept through prefix deletion and reset, because Raft needs the term of
//! the entry just before the log start.

/// One epoch and the first offset it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: u64,
}

/// Most epoch entries a log keeps (each leader change adds at most one; prefix deletion
/// prunes them). Bounds the metadata file.
pub const EPOCH_ENTRIES_MAX_COUNT: usize = 1 << 20;

/// Why an epoch cannot be assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// The epoch is lower than the last one (terms never go back in a log).
    #[error("epoch {epoch} is below the last epoch {last}")]
    Regression { epoch: i32, last: i32 },
    /// A new epoch would start before the previous epoch's start.
    #[error("epoch {epoch} would start at {start_offset}, before epoch {last} at {last_start}")]
    StartRegression {
        epoch: i32,
        start_offset: u64,
        last: i32,
        last_start: u64,
    },
    /// [`EPOCH_ENTRIES_MAX_COUNT`] reached.
    #[error("too many leader epochs")]
    TooMany,
}

/// The cache itself. Invariant: epochs and start offsets strictly increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    /// A cache from entries already known to be ordered (from a checked metadata file).
    pub fn from_entries(entries: Vec<EpochEntry>) -> Option<EpochCache> {
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
        (ordered && entries.len() <= EPOCH_ENTRIES_MAX_COUNT).then_some(EpochCache { entries })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn last_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Checks that a batch of `epoch` starting at `start_offset` may follow the log.
    pub fn check(&self, epoch: i32, start_offset: u64) -> Result<(), EpochError> {
        let Some(last) = self.entries.last() else {
            return Ok(());
        };
        if epoch < last.epoch {
            return Err(EpochError::Regression {
                epoch,
                last: last.epoch,
            });
        }
        if epoch > last.epoch && start_offset < last.start_offset {
            return Err(EpochError::StartRegression {
                epoch,
                start_offset,
                last: last.epoch,
                last_start: last.start_offset,
            });
        }
        if epoch > last.epoch && self.entries.len() >= EPOCH_ENTRIES_MAX_COUNT {
            return Err(EpochError::TooMany);
        }
        Ok(())
    }

    /// Records that a batch of `epoch` starts at `start_offset`; returns whether an entry was
    /// added. A new epoch starting where the last one starts replaces it (the last epoch wrote
    /// nothing).
    pub fn assign(&mut self, epoch: i32, start_offset: u64) -> Result<bool, EpochError> {
        self.check(epoch, start_offset)?;
        match self.entries.last_mut() {
            Some(last) if last.epoch == epoch => return Ok(false),
            Some(last) if last.start_offset == start_offset => last.epoch = epoch,
            _ => self.entries.push(EpochEntry {
                epoch,
                start_offset,
            }),
        }
        Ok(true)
    }

    /// Recovery's check of a batch found on disk against the cache: true if the cache
    /// already says `epoch` wrote `start_offset`, or if this is a new, later epoch (then it
    /// is assigned); false if the two disagree (an epoch field damaged, or a cache that does
    /// not describe this log).
    pub fn observe(&mut self, epoch: i32, start_offset: u64) -> bool {
        if self.epoch_at(start_offset) == Some(epoch) {
            return true;
        }
        let is_new = self
            .entries
            .last()
            .is_none_or(|l| epoch > l.epoch && start_offset >= l.start_offset);
        is_new && self.assign(epoch, start_offset).is_ok()
    }

    /// The epoch of `offset`: the last entry starting at or before it.
    pub fn epoch_at(&self, offset: u64) -> Option<i32> {
        let idx = self.entries.partition_point(|e| e.start_offset <= offset);
        idx.checked_sub(1).map(|i| self.entries[i].epoch)
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch `<= epoch` and the offset where it
    /// ends (the next epoch's start, or `log_end`); `None` if every epoch is larger.
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let idx = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(idx.checked_sub(1)?)?;
        let end = self
            .entries
            .get(idx)
            .map_or(log_end, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Forgets epochs that start at or after `offset` (the log was truncated there).
    pub fn truncate_from_end(&mut self, offset: u64) {
        self.entries.retain(|e| e.start_offset < offset);
    }

    /// Forgets epochs that end before `log_start - 1` (the log start moved up), keeping the
    /// one that covers `log_start - 1`.
    pub fn truncate_from_start(&mut self, log_start: u64) {
        let Some(before) = log_start.checked_sub(1) else {
            return;
        };
        let covering = self.entries.partition_point(|e| e.start_offset <= before);
        if covering > 1 {
            self.entries.drain(..covering - 1);
        }
    }

    /// Replaces everything by one entry: `epoch` covers `start_offset` onwards.
    pub fn reset(&mut self, epoch: i32, start_offset: u64) {
        self.entries = vec![EpochEntry {
            epoch,
            start_offset,
        }];
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for (e, s) in entries {
            c.assign(*e, *s).expect("assign");
        }
        c
    }

    #[test]
    fn epoch_at_uses_the_last_entry_at_or_before() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.epoch_at(0), Some(1));
        assert_eq!(c.epoch_at(9), Some(1));
        assert_eq!(c.epoch_at(10), Some(3));
        assert_eq!(c.epoch_at(1000), Some(4));
        assert_eq!(cache(&[(2, 5)]).epoch_at(4), None);
    }

    #[test]
    fn end_offsets_follow_kafka_offsets_for_leader_epoch() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for(0, 40), None);
        assert_eq!(c.end_offset_for(1, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(2, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for(3, 40), Some((3, 25)));
        assert_eq!(c.end_offset_for(4, 40), Some((4, 40)));
        assert_eq!(c.end_offset_for(9, 40), Some((4, 40)));
    }

    #[test]
    fn assign_rejects_regressions_and_dedups() {
        let mut c = cache(&[(2, 5)]);
        assert_eq!(c.assign(2, 9), Ok(false));
        assert_eq!(
            c.assign(1, 10),
            Err(EpochError::Regression { epoch: 1, last: 2 })
        );
        assert!(matches!(
            c.assign(3, 4),
            Err(EpochError::StartRegression { .. })
        ));
        assert_eq!(
            c.assign(3, 5),
            Ok(true),
            "replaces an epoch that wrote nothing"
        );
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 5
            }]
        );
    }

    #[test]
    fn truncations_keep_the_epoch_before_the_log_start() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        c.truncate_from_start(20);
        assert_eq!(c.epoch_at(19), Some(3));
        assert_eq!(c.entries().len(), 2);
        c.truncate_from_start(10);
        assert_eq!(c.entries().len(), 2, "never moves back");
        c.truncate_from_end(25);
        assert_eq!(c.last_epoch(), Some(3));
        c.reset(7, 99);
        assert_eq!((c.epoch_at(99), c.epoch_at(98)), (Some(7), None));
    }

    #[test]
    fn observe_accepts_known_and_new_epochs_only() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(c.observe(1, 4));
        assert!(c.observe(3, 10));
        assert!(c.observe(3, 12));
        assert!(!c.observe(2, 12), "disagrees with the cache");
        assert!(!c.observe(3, 5), "epoch 3 starts later");
        assert!(c.observe(5, 20));
        assert_eq!(c.last_epoch(), Some(5));
        let mut empty = EpochCache::default();
        assert!(empty.observe(2, 7));
        assert_eq!(empty.epoch_at(7), Some(2));
    }

    #[test]
    fn from_entries_checks_the_order() {
        let ok = vec![
            EpochEntry {
                epoch: 1,
                start_offset: 0,
            },
            EpochEntry {
                epoch: 2,
                start_offset: 3,
            },
        ];
        assert!(EpochCache::from_entries(ok.clone()).is_some());
        let mut bad = ok;
        bad[1].start_offset = 0;
        assert!(EpochCache::from_entries(bad).is_none());
    }
}
