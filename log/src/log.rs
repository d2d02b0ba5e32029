//! [`Log`]: one partition's log in one directory.
//!
//! # Directory
//!
//! ```text
//! 00000000000000000000.log        batches [0, ...)            (segment, see crate::segment)
//! 00000000000000000000.index      sparse offset index          (closed segments only)
//! 00000000000000000000.timeindex  time index                   (closed segments only)
//! 00000000000000004096.log        the active segment (always the last one)
//! log.meta                        log start, recovery point, leader epochs (crate::meta)
//! ```
//!
//! # Durability
//!
//! `append` and `append_replicated` only write (page cache); [`Log::sync`] makes everything
//! appended durable (fdatasync of the segments written since the last sync, plus a directory
//! sync if a segment was created) and returns the durable end offset. Operations that
//! reshape the log — roll, `truncate_from`, `delete_prefix`, `reset`, compaction,
//! retention — are durable when they return, and ordered so that a crash in the middle
//! leaves either the old or the new shape (see each method). Any disk error while mutating
//! makes the `Log` *failed*: it refuses every later mutation with [`LogError::Failed`] and
//! never retries a sync (see [`crate::disk`]); the owner reopens it, which recovers from what
//! is durable.
//!
//! # Recovery rules (on [`Log::open`])
//!
//! 1. Leftovers of interrupted operations (`*.tmp`, `*.cleaned`) are deleted; so are
//!    segments wholly below the log start (an interrupted prefix deletion).
//! 2. Segments wholly below the *recovery point* (the offset below which everything was
//!    synced and verified, stored in `log.meta`, advanced on roll and open) are trusted:
//!    their checksummed index files are loaded, or, if missing or stale, the segment is
//!    scanned to rebuild them.
//! 3. The segment containing the recovery point and every later one are scanned: every batch
//!    is checked (framing, CRC32C, offsets increasing, its epoch agreeing with the epoch
//!    cache of `log.meta` or starting a new, later epoch, which is added to the cache).
//! 4. At the first bad batch the log is cut: the rest of that segment and every later
//!    segment are removed (durably). The cut is a *torn tail* — silently expected after a
//!    crash, reported in [`RecoveryReport::truncated_at`] — unless it is known or suspected
//!    to have destroyed durable data, in which case [`RecoveryReport::corruption`] is set
//!    too: the bad batch lies below the recovery point, or a valid batch follows it (in the
//!    same segment, right after the bad batch's declared length, or at the start of a later
//!    segment), or a valid batch is out of order. The log never serves a batch it cannot
//!    verify, so even corruption is cut rather than skipped: the replica re-fetches the rest
//!    from its peers. A crash can leave a torn batch followed by a surviving later write
//!    (pending writes may survive independently); that is reported as corruption too, since
//!    recovery cannot tell it from bit rot — conservative, never silent.
//! 5. A segment `log.meta` lists (the segments the log had when it was last written) that
//!    held data below the recovery point but whose file is gone lost durable data: the log
//!    is cut before it (later segments are removed, never served across the hole) and that
//!    is reported as corruption. Operations that remove segments first write a `log.meta`
//!    that no longer lists them (or, for truncation, lowers the recovery point below them).
//!    Without a valid `log.meta` (it exists from the first open on and is replaced
//!    atomically, so that is damage too) a non-empty log is cut at the first gap between
//!    segments and reported as corruption: segments may have gone missing unnoticed.
//! 6. Everything recovered is synced, the recovery point set to the log end and `log.meta`
//!    rewritten. So after `open`, `durable_end_offset() == log_end_offset()`.
//!
//! Bit rot inside trusted segments (below the recovery point) is found when the batch is
//! read: [`Log::read`] checks the CRC of every batch it returns and answers
//! [`LogError::Corrupt`] instead of serving it.
//!
//! # Leader epochs
//!
//! The epoch cache lives in `log.meta`, written whenever the recovery point advances or the
//! log is truncated, prefix-deleted or reset; entries for batches above the recovery point
//! are rebuilt from batch headers on open. So `epoch_at` and `epoch_end_offset` are exact
//! across crashes, including the epoch at `log_start - 1` after prefix deletion and reset
//! (which no batch header records any more). If `log.meta` is lost or corrupt, recovery
//! scans everything and rebuilds the epochs from the headers, which loses only that
//! before-the-start epoch.
//!
//! # Compaction crash safety
//!
//! Each cleaned segment is written to `{base}.log.cleaned` and synced; then the segment's
//! index files are removed and the directory synced; then the cleaned file is renamed over
//! `{base}.log` and the directory synced. Segments are swapped oldest first. A crash at any
//! step leaves every segment either wholly old or wholly new (rename is atomic; leftovers are
//! deleted on open), and since a tombstone is only dropped from a segment once every older
//! segment holding its key has been swapped, a crash can never resurrect a deleted key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{
    decode_records, rebuild_batch, set_base_offset, set_partition_leader_epoch, BatchError,
    BatchHeader, BatchIter, BATCH_HEADER_SIZE_BYTES,
};
use crate::disk::{Disk, DiskError};
use crate::epoch::{EpochCache, EpochError};
use crate::meta::{self, ListedSegment, LogMeta, META_TMP_FILE};
use crate::segment::{
    file_name, parse_log_name, ScanError, Segment, CLEANED_SUFFIX, INDEX_ENTRIES_MAX_COUNT,
    INDEX_EXT, LOG_EXT, TIME_INDEX_EXT,
};

/// Largest segment a configuration may ask for (positions in the index are `u32`, and a
/// segment may exceed its limit by one batch).
pub const SEGMENT_SIZE_MAX_BYTES: u64 = 1 << 31;
/// Smallest segment size a configuration may ask for.
pub const SEGMENT_SIZE_MIN_BYTES: u64 = BATCH_HEADER_SIZE_BYTES as u64;
/// Most bytes one [`Log::read`] returns (beyond its first batch), whatever `max_bytes` says.
pub const READ_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most distinct keys one compaction pass maps; later segments wait for the next pass.
pub const COMPACTION_KEYS_MAX_COUNT: usize = 1 << 20;

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

/// Per-log settings (Kafka topic configs of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would exceed this.
    pub segment_size_max_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is this old.
    pub segment_age_max_ms: i64,
    /// `index.interval.bytes`: bytes of batches between offset-index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms` (`None` = keep forever).
    pub retention_ms: Option<i64>,
    /// `retention.bytes` (`None` = unbounded).
    pub retention_bytes: Option<u64>,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long compaction keeps a tombstone.
    pub delete_retention_ms: i64,
}

impl Default for LogConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        LogConfig {
            segment_size_max_bytes: 1 << 30,
            segment_age_max_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

impl LogConfig {
    /// Small segments and a dense index, so tests exercise rolling and index lookups.
    pub fn for_tests() -> Self {
        LogConfig {
            segment_size_max_bytes: 4096,
            segment_age_max_ms: 60_000,
            index_interval_bytes: 256,
            retention_ms: None,
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 1_000,
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), LogError> {
        let ok = (SEGMENT_SIZE_MIN_BYTES..=SEGMENT_SIZE_MAX_BYTES)
            .contains(&self.segment_size_max_bytes)
            && self.segment_age_max_ms > 0
            && self.index_interval_bytes > 0
            && self.retention_ms.is_none_or(|r| r >= 0)
            && self.delete_retention_ms >= 0;
        if ok {
            Ok(())
        } else {
            Err(LogError::InvalidConfig(format!("{self:?}")))
        }
    }
}

/// What an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Base offset of the first batch.
    pub base_offset: u64,
    /// Last offset of the last batch.
    pub last_offset: u64,
    /// Largest batch max timestamp.
    pub max_timestamp: i64,
    /// Records in all batches.
    pub records_count: u64,
    /// Bytes written.
    pub bytes: usize,
}

/// Whole stored batches, byte-identical, from [`Log::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub bytes: Bytes,
    /// Base offset of the first batch returned (may be below the requested offset); the
    /// requested offset when nothing is returned.
    pub first_offset: u64,
    /// The offset after the last batch returned; the requested offset when nothing is.
    pub next_offset: u64,
}

/// How [`Log::open_with`] opens a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Verify every batch, not only those after the recovery point: for a log where a read
    /// found a bad checksum in trusted data. A bad batch below the recovery point is then cut
    /// and reported as corruption.
    pub verify_all: bool,
    /// The caller knows this log was created before (its first open, which writes
    /// `log.meta`, completed): a directory without `log.meta` then lost its files (reported
    /// as corruption) rather than holding a new log.
    pub existing: bool,
}

/// What `log.meta`'s segment list tells recovery.
#[derive(Debug)]
struct Listing {
    /// A listed segment below the recovery point whose file is gone.
    missing: Option<u64>,
    /// Each listed segment's durable size when the list was written.
    min_sizes: BTreeMap<u64, u64>,
}

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Batches whose CRC recovery checked.
    pub batches_verified: u64,
    /// Closed segments whose index files were missing or stale.
    pub indexes_rebuilt: usize,
    /// `log.meta` was missing (a new or pre-metadata log) or unreadable.
    pub meta_missing: bool,
    pub meta_invalid: bool,
    /// Leftover files of interrupted operations removed.
    pub leftovers_removed: usize,
    /// Segments below the log start removed (an interrupted prefix deletion).
    pub segments_below_start_removed: usize,
    /// Where the log was cut (the new log end), if it was.
    pub truncated_at: Option<u64>,
    /// Bytes removed by the cut.
    pub truncated_bytes: u64,
    /// Set when the cut may have destroyed durable data (see the module docs): the offset
    /// where verified data ends. The replica must treat everything from here as lost.
    pub corruption: Option<u64>,
}

/// What [`Log::enforce_retention`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: u64,
}

/// What [`Log::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments rewritten.
    pub segments_cleaned: usize,
    /// Segments looked at (closed, below the bound, within the key budget).
    pub segments_examined: usize,
    pub records_removed: u64,
    /// Batches dropped whole (leaving an offset gap).
    pub batches_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Errors of the log. Input errors (bad batches, bad offsets) leave the log unchanged;
/// [`LogError::Disk`] from a mutation makes it failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A stored batch failed its CRC (or framing) check: it is never served.
    #[error("corrupt batch at offset {offset}")]
    Corrupt { offset: u64 },
    #[error("offset {offset} outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    /// `truncate_from` must cut between batches.
    #[error("offset {offset} is inside a batch")]
    NotBatchBoundary { offset: u64 },
    /// A replicated batch starts below the log end.
    #[error("batch at {base_offset} is below the log end {log_end}")]
    OffsetRegression { base_offset: u64, log_end: u64 },
    #[error(transparent)]
    Epoch(#[from] EpochError),
    /// Offsets would exceed `i64::MAX`.
    #[error("offset overflow")]
    OffsetOverflow,
    #[error("nothing to append")]
    EmptyAppend,
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// An earlier disk error (a failed sync, a failed write) made the log unusable until
    /// reopened.
    #[error("log failed earlier: {0}")]
    Failed(String),
}

/// One partition's log. See the module docs.
#[derive(Debug)]
pub struct Log {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: LogConfig,
    /// By base offset; the last is the active segment. Never empty.
    segments: BTreeMap<u64, Segment>,
    log_start: u64,
    log_end: u64,
    durable_end: u64,
    /// As last written to `log.meta`.
    recovery_point: u64,
    epochs: EpochCache,
    /// A directory entry (segment creation) is not yet durable.
    dir_dirty: bool,
    failed: Option<String>,
}

impl Log {
    /// Opens (creating if missing) the log in `dir` and recovers it; see the module docs.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        config: LogConfig,
    ) -> Result<(Log, RecoveryReport), LogError> {
        Self::open_with(disk, dir, config, OpenOptions::default())
    }

    /// [`Log::open`] with [`OpenOptions`]: full verification, and whether the caller knows
    /// the log existed before.
    pub fn open_with(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        config: LogConfig,
        options: OpenOptions,
    ) -> Result<(Log, RecoveryReport), LogError> {
        let OpenOptions {
            verify_all,
            existing,
        } = options;
        config.validate()?;
        let mut report = RecoveryReport::default();
        if !disk.exists(&dir)? {
            disk.create_dir_all(&dir)?;
            for ancestor in dir.ancestors().skip(1) {
                disk.sync_dir(ancestor)?;
            }
        }
        let names = disk.list(&dir)?;
        let mut leftovers = false;
        for name in &names {
            if name.ends_with(CLEANED_SUFFIX) || name == META_TMP_FILE {
                disk.remove(&dir.join(name))?;
                report.leftovers_removed += 1;
                leftovers = true;
            }
        }
        let (log_start, recovery_point, mut epochs, listed) = match meta::read(disk.as_ref(), &dir)?
        {
            Some(Ok(m)) => (m.log_start, m.recovery_point, m.epochs, m.segments),
            found => {
                report.meta_missing = found.is_none();
                report.meta_invalid = found.is_some();
                (0, 0, EpochCache::default(), None)
            }
        };
        let bases: Vec<u64> = names.iter().filter_map(|n| parse_log_name(n)).collect();
        let mut log = Log {
            disk,
            dir,
            config,
            segments: BTreeMap::new(),
            log_start,
            log_end: 0,
            durable_end: 0,
            recovery_point,
            epochs: EpochCache::default(),
            dir_dirty: leftovers,
            failed: None,
        };
        if report.meta_missing || report.meta_invalid {
            log.log_start = bases.first().copied().unwrap_or(0);
        }
        // A segment `log.meta` lists that held data below the recovery point but whose file
        // is gone: everything from it on is lost.
        let listing = Listing {
            missing: listed.as_ref().and_then(|listed| {
                listed
                    .iter()
                    .map(|s| s.base)
                    .find(|b| *b < recovery_point && bases.binary_search(b).is_err())
            }),
            min_sizes: listed
                .into_iter()
                .flatten()
                .map(|s| (s.base, s.min_size))
                .collect(),
        };
        let meta_lost = report.meta_missing || report.meta_invalid;
        // Index files exist only beside segments with data, so only in a log that had its
        // `log.meta` written.
        let index_files = names.iter().any(|n| {
            n.strip_suffix(INDEX_EXT)
                .or_else(|| n.strip_suffix(TIME_INDEX_EXT))
                .and_then(|stem| stem.strip_suffix('.'))
                .is_some_and(|base| base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit()))
        });
        log.recover(
            &bases,
            &listing,
            meta_lost,
            &mut epochs,
            &mut report,
            verify_all,
        )?;
        let had_data = log.log_end > log.log_start
            || index_files
            || report.meta_invalid
            || (existing && report.meta_missing);
        if meta_lost && had_data && report.corruption.is_none() {
            // `log.meta` exists from the first open on and is replaced atomically: without it
            // nothing tells whether segments went missing (before the first one found, too).
            report.corruption = Some(log.log_start);
        }
        log.epochs = epochs;
        log.epochs.truncate_from_end(log.log_end);
        // Make everything recovered durable (a process crash leaves unsynced page-cache
        // data readable), then record the new recovery point.
        for segment in log.segments.values_mut() {
            segment.sync()?;
        }
        log.disk.sync_dir(&log.dir)?;
        log.dir_dirty = false;
        log.durable_end = log.log_end;
        log.write_meta(log.log_end)?;
        report.segments = log.segments.len();
        Ok((log, report))
    }

    /// Steps 1-5 of recovery: loads or scans segments, cuts at the first bad batch, or before
    /// the `missing` segment (one `log.meta` lists whose file is gone).
    fn recover(
        &mut self,
        bases: &[u64],
        listing: &Listing,
        meta_lost: bool,
        epochs: &mut EpochCache,
        report: &mut RecoveryReport,
        verify_all: bool,
    ) -> Result<(), LogError> {
        let disk = Arc::clone(&self.disk);
        let disk = disk.as_ref();
        let Listing { missing, min_sizes } = listing;
        let missing = *missing;
        let interval = self.config.index_interval_bytes;
        // Segments wholly below the log start: an interrupted prefix deletion.
        let mut bases: Vec<u64> = bases.to_vec();
        while bases.len() > 1 && bases[1] <= self.log_start {
            Segment::remove_files(disk, &self.dir, bases[0])?;
            bases.remove(0);
            report.segments_below_start_removed += 1;
            self.dir_dirty = true;
        }
        // The first segment to verify: the one containing the recovery point.
        let verify_from = if verify_all {
            0
        } else {
            bases
                .iter()
                .rposition(|b| *b <= self.recovery_point)
                .unwrap_or(0)
        };
        let last_index = bases.len().saturating_sub(1);
        let mut expected = 0u64;
        let mut loaded_unscanned: Vec<u64> = Vec::new();
        // (segment, position to cut at or None to drop it whole, corrupt?)
        let mut cut: Option<(usize, Option<u64>, bool)> = None;
        for (i, base) in bases.iter().copied().enumerate() {
            if missing.is_some_and(|m| base > m) {
                // The segments after a lost one: never served across the hole.
                cut = Some((i, None, true));
                break;
            }
            if meta_lost && i > 0 && base > expected {
                // Without `log.meta` a gap between segments may be a lost segment: not served
                // across.
                cut = Some((i, None, true));
                break;
            }
            let mut segment = Segment::open(disk, &self.dir, base)?;
            if base < expected {
                // A segment overlapping its predecessor: never written by this code.
                cut = Some((i, None, true));
                break;
            }
            let verify = i >= verify_from;
            let loaded = !verify && i < last_index && segment.load_indexes(disk, &self.dir)?;
            if loaded {
                loaded_unscanned.push(base);
            } else {
                if !verify {
                    report.indexes_rebuilt += 1;
                }
                let mut epoch_error = false;
                let mut verified = 0u64;
                let log_start = self.log_start;
                let stop = segment.scan(interval, expected, &mut |h| {
                    verified += 1;
                    // The cache no longer covers batches wholly before `log_start - 1`.
                    let covered = h.last_offset().saturating_add(1) >= log_start;
                    if verify && covered && !epochs.observe(h.partition_leader_epoch, h.base_offset)
                    {
                        epoch_error = true;
                        return false;
                    }
                    true
                })?;
                report.batches_verified += verified - u64::from(epoch_error);
                if let Some(stop) = stop {
                    let below_recovery_point = segment.next_offset < self.recovery_point;
                    let out_of_order = stop.error == ScanError::Order;
                    let followed = match segment.next_position_after(stop.position)? {
                        Some(next) => segment.valid_batch_at(next)?,
                        None => false,
                    };
                    let later_valid = self.later_segment_valid(&bases[i + 1..])?;
                    // A full verification is asked for only after a checksum failure on
                    // data read back as durable: whatever it finds bad is corruption, even a
                    // last batch that looks like a torn tail write.
                    let corrupt = verify_all
                        || !verify
                        || below_recovery_point
                        || out_of_order
                        || followed
                        || later_valid;
                    let position = stop.position;
                    self.segments.insert(base, segment);
                    cut = Some((i, Some(position), corrupt));
                    break;
                }
                if i < last_index {
                    segment.write_indexes(disk, &self.dir)?;
                }
            }
            if min_sizes
                .get(&base)
                .is_some_and(|min| segment.file_len() < *min)
            {
                // Shorter than when `log.meta` was written: durable batches are gone (an
                // index rebuilt from the short file would agree with it). Nothing after the
                // hole is served.
                let end = segment.size;
                self.segments.insert(base, segment);
                cut = Some((i, Some(end), true));
                break;
            }
            if i == last_index && Segment::remove_indexes(disk, &self.dir, base)? {
                self.dir_dirty = true;
            }
            expected = if segment.is_empty() {
                expected.max(base)
            } else {
                segment.next_offset
            };
            self.segments.insert(base, segment);
        }
        match cut {
            Some((i, position, corrupt)) => {
                self.cut(&bases, i, position, corrupt || missing.is_some(), report)?
            }
            // The lost segment was the last one listed: the log ends before it.
            None if missing.is_some() => self.cut(&bases, bases.len(), None, true, report)?,
            None => {}
        }
        // A cut can leave a segment trusted through its index files (never read) as the
        // last one, which the next open verifies as the active segment: verify it now, so
        // that recovery is idempotent.
        let last = self.segments.keys().next_back().copied();
        if let Some(last) = last.filter(|b| loaded_unscanned.contains(b)) {
            let segment = self.segments.get_mut(&last).expect("last segment");
            if let Some(stop) = segment.scan(interval, last, &mut |_| true)? {
                self.cut(&[last], 0, Some(stop.position), true, report)?;
            }
        }
        self.remove_segments_below_start()?;
        if self.segments.is_empty() {
            let segment = Segment::create(disk, &self.dir, self.log_start)?;
            self.segments.insert(self.log_start, segment);
            self.dir_dirty = true;
        }
        self.log_end = self.active().next_offset.max(self.log_start);
        Ok(())
    }

    /// Whether any segment in `bases` starts with a valid batch.
    fn later_segment_valid(&self, bases: &[u64]) -> Result<bool, LogError> {
        for base in bases {
            let segment = Segment::open(self.disk.as_ref(), &self.dir, *base)?;
            if segment.valid_batch_at(0)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Cuts the log at `position` of segment `bases[i]` (or before that segment if
    /// `None`): removes later segments (newest first, so a crash leaves a prefix), shortens
    /// that one, makes it durable. The new last segment loses its index files (it is active).
    fn cut(
        &mut self,
        bases: &[u64],
        i: usize,
        position: Option<u64>,
        corrupt: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), LogError> {
        let disk = Arc::clone(&self.disk);
        let disk = disk.as_ref();
        let first_removed = if position.is_some() { i + 1 } else { i };
        let mut removed_bytes = 0u64;
        for base in bases[first_removed..].iter().rev() {
            removed_bytes += Segment::open(disk, &self.dir, *base)?.file_len();
            Segment::remove_files(disk, &self.dir, *base)?;
        }
        if let Some(&last) = self.segments.keys().next_back() {
            Segment::remove_indexes(disk, &self.dir, last)?;
        }
        disk.sync_dir(&self.dir)?;
        let at = match position {
            Some(position) => {
                let segment = self
                    .segments
                    .get_mut(&bases[i])
                    .expect("cut segment is loaded");
                removed_bytes += segment.file_len() - position;
                segment
                    .truncate_to(position)?
                    .map_err(|_| LogError::Corrupt {
                        offset: segment.next_offset,
                    })?;
                segment.sync()?;
                segment.next_offset
            }
            None => self
                .segments
                .values()
                .next_back()
                .map_or(self.log_start, |s| s.next_offset),
        };
        report.truncated_at = Some(at);
        report.truncated_bytes = removed_bytes;
        if corrupt {
            report.corruption = Some(at);
        }
        Ok(())
    }

    /// Removes leading segments (never the last) whose batches all lie below the log start.
    fn remove_segments_below_start(&mut self) -> Result<(usize, u64), LogError> {
        let mut deleted = (0usize, 0u64);
        while self.segments.len() > 1 {
            let (&base, segment) = self.segments.iter().next().expect("non-empty");
            if segment.next_offset > self.log_start {
                break;
            }
            deleted.0 += 1;
            deleted.1 += segment.size;
            self.segments.remove(&base);
            Segment::remove_files(self.disk.as_ref(), &self.dir, base)?;
        }
        if deleted.0 > 0 {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log has a segment")
    }

    fn write_meta(&mut self, recovery_point: u64) -> Result<(), DiskError> {
        self.write_meta_capped(recovery_point, &[])
    }

    /// [`Log::write_meta`], listing each segment `caps[i].0` with at most `caps[i].1` durable
    /// bytes: for segments about to get shorter or be removed (truncation, compaction's swap),
    /// whose shorter (or re-created) files must not look like a loss after a crash.
    fn write_meta_capped(
        &mut self,
        recovery_point: u64,
        caps: &[(u64, u64)],
    ) -> Result<(), DiskError> {
        // Segments wholly below the log start are not listed: they are about to go.
        let last = self.segments.keys().next_back().copied();
        let segments = self
            .segments
            .iter()
            .filter(|(b, s)| s.next_offset > self.log_start || Some(**b) == last)
            .map(|(b, s)| ListedSegment {
                base: *b,
                min_size: caps
                    .iter()
                    .filter(|(base, _)| base == b)
                    .fold(s.synced_size, |min, (_, cap)| min.min(*cap)),
            })
            .collect();
        let m = LogMeta {
            log_start: self.log_start,
            recovery_point,
            epochs: self.epochs.clone(),
            segments: Some(segments),
        };
        meta::write(self.disk.as_ref(), &self.dir, &m)?;
        self.recovery_point = recovery_point;
        // The rename's directory sync made every earlier entry durable too.
        self.dir_dirty = false;
        Ok(())
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Marks the log failed on a disk error (see the module docs).
    fn note<T>(&mut self, result: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(LogError::Disk(e)) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration (takes effect for later appends, rolls and cleanups).
    pub fn set_config(&mut self, config: LogConfig) -> Result<(), LogError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First offset a read may ask for.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start
    }

    /// The next offset to assign.
    pub fn log_end_offset(&self) -> u64 {
        self.log_end
    }

    /// Every batch below this offset is durable.
    pub fn durable_end_offset(&self) -> u64 {
        self.durable_end
    }

    /// The epoch of the last batch (or of the reset point for an empty log).
    pub fn last_epoch(&self) -> Option<i32> {
        self.epochs.last_epoch()
    }

    /// Whether an earlier disk error made the log refuse mutations.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// The epoch (Raft term) of `offset`, for offsets in `[log_start - 1, log_end)`.
    pub fn epoch_at(&self, offset: u64) -> Option<i32> {
        if offset >= self.log_end || offset.saturating_add(1) < self.log_start {
            return None;
        }
        self.epochs.epoch_at(offset)
    }

    /// Kafka's OffsetsForLeaderEpoch: the largest epoch `<= epoch` and its end offset (the
    /// next epoch's start, or the log end); `None` if every known epoch is larger.
    pub fn epoch_end_offset(&self, epoch: i32) -> Option<(i32, u64)> {
        self.epochs.end_offset_for(epoch, self.log_end)
    }

    /// Leader path: validates a producer's batch, assigns it offsets from the log end and
    /// `leader_epoch` (rewriting both fields in place, outside the CRC) and writes it.
    pub fn append(&mut self, batch: &mut [u8], leader_epoch: i32) -> Result<AppendInfo, LogError> {
        self.check_usable()?;
        let mut header = BatchHeader::validate_produced(batch)?;
        let base = self.log_end;
        self.epochs.check(leader_epoch, base)?;
        if base
            .checked_add(header.last_offset_delta as u64 + 1)
            .is_none_or(|n| n > i64::MAX as u64)
        {
            return Err(LogError::OffsetOverflow);
        }
        set_base_offset(batch, base)?;
        set_partition_leader_epoch(batch, leader_epoch)?;
        header.base_offset = base;
        header.partition_leader_epoch = leader_epoch;
        let result = self.write_batch(&header, batch);
        self.note(result)?;
        Ok(AppendInfo {
            base_offset: base,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
            records_count: header.records_count as u64,
            bytes: batch.len(),
        })
    }

    /// Follower path: appends whole batches whose offsets and epochs the leader set. Each
    /// must start at or after the log end (a gap is fine: compaction may have removed whole
    /// batches upstream), epochs must not decrease, CRCs must match. All batches are checked
    /// before any is written.
    pub fn append_replicated(&mut self, batches: &[u8]) -> Result<AppendInfo, LogError> {
        self.check_usable()?;
        if batches.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        // Check epochs against a copy of the last entry only.
        let mut probe = EpochCache::default();
        if let Some(last) = self.epochs.entries().last() {
            probe.assign(last.epoch, last.start_offset)?;
        }
        let mut expected = self.log_end;
        let mut checked = Vec::new();
        for item in BatchIter::new(batches) {
            let (header, bytes) = item?;
            if header.base_offset < expected {
                return Err(LogError::OffsetRegression {
                    base_offset: header.base_offset,
                    log_end: expected,
                });
            }
            probe.assign(header.partition_leader_epoch, header.base_offset)?;
            if header.next_offset() > i64::MAX as u64 {
                return Err(LogError::OffsetOverflow);
            }
            expected = header.next_offset();
            checked.push((header, bytes));
        }
        let mut info = AppendInfo {
            base_offset: checked[0].0.base_offset,
            last_offset: 0,
            max_timestamp: i64::MIN,
            records_count: 0,
            bytes: 0,
        };
        for (header, bytes) in checked {
            let result = self.write_batch(&header, bytes);
            self.note(result)?;
            info.last_offset = header.last_offset();
            info.max_timestamp = info.max_timestamp.max(header.max_timestamp);
            info.records_count += header.records_count as u64;
            info.bytes += bytes.len();
        }
        Ok(info)
    }

    /// Writes one checked batch at the end, rolling first if needed.
    fn write_batch(&mut self, header: &BatchHeader, bytes: &[u8]) -> Result<(), LogError> {
        let active = self.active();
        let len = bytes.len() as u64;
        let must_roll = !active.fits_offset(header.last_offset())
            || active.size + len > u64::from(u32::MAX)
            || active.index_len() >= INDEX_ENTRIES_MAX_COUNT
            || active.size + len > self.config.segment_size_max_bytes;
        if must_roll && !active.is_empty() {
            self.roll(header.base_offset)?;
        } else if must_roll {
            // An empty active segment that cannot address this batch: re-create it at the
            // batch's offset.
            let old = self.active().base_offset;
            if old != header.base_offset {
                self.segments.remove(&old);
                Segment::remove_files(self.disk.as_ref(), &self.dir, old)?;
                let segment = Segment::create(self.disk.as_ref(), &self.dir, header.base_offset)?;
                self.segments.insert(header.base_offset, segment);
                self.dir_dirty = true;
            }
        }
        self.epochs
            .assign(header.partition_leader_epoch, header.base_offset)?;
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(header, bytes, interval)?;
        self.log_end = header.next_offset();
        Ok(())
    }

    /// Closes the active segment (synced, indexes written) and starts one at `base`; the
    /// recovery point advances to the log end.
    fn roll(&mut self, base: u64) -> Result<(), LogError> {
        assert!(
            base >= self.log_end,
            "a new segment starts at or after the log end"
        );
        for segment in self.segments.values_mut() {
            if segment.dirty {
                segment.sync()?;
            }
        }
        self.active().write_indexes(self.disk.as_ref(), &self.dir)?;
        let segment = Segment::create(self.disk.as_ref(), &self.dir, base)?;
        self.segments.insert(base, segment);
        self.durable_end = self.log_end;
        // Durable: the old segment synced above, the new entry by the meta rename.
        self.write_meta(self.log_end)?;
        Ok(())
    }

    /// Rolls the active segment if its first batch is older than `segment_age_max_ms` at
    /// `now_ms`. Returns whether it rolled.
    pub fn roll_if_needed(&mut self, now_ms: i64) -> Result<bool, LogError> {
        self.check_usable()?;
        let active = self.active();
        let old = active
            .first_timestamp
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.segment_age_max_ms);
        if !old || active.is_empty() {
            return Ok(false);
        }
        let result = self.roll(self.log_end);
        self.note(result)?;
        Ok(true)
    }

    /// Makes every appended batch durable; returns the durable end offset. A failure is
    /// fatal (the log is failed; see the module docs).
    pub fn sync(&mut self) -> Result<u64, LogError> {
        self.check_usable()?;
        let result = self.sync_inner();
        self.note(result)
    }

    fn sync_inner(&mut self) -> Result<u64, LogError> {
        for segment in self.segments.values_mut() {
            if segment.dirty {
                segment.sync()?;
            }
        }
        if self.dir_dirty {
            self.disk.sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.durable_end = self.log_end;
        Ok(self.durable_end)
    }

    /// Syncs and records the recovery point, so the next open verifies nothing (a clean
    /// shutdown).
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        let result = self.sync_inner().and_then(|end| Ok(self.write_meta(end)?));
        self.note(result)
    }

    /// Whole stored batches starting with the one containing `from_offset` (or the next one
    /// after a gap), byte-identical, only those with `base_offset < upper_bound`, up to
    /// `max_bytes` (but always the first qualifying batch). Every returned batch passed the
    /// stored form's checksum (which covers base offset and epoch too, see [`crate::batch`])
    /// and lies in order within its segment; a bad first batch is [`LogError::Corrupt`].
    pub fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
        upper_bound: u64,
    ) -> Result<ReadResult, LogError> {
        if from_offset < self.log_start || from_offset > self.log_end {
            return Err(LogError::OffsetOutOfRange {
                offset: from_offset,
                start: self.log_start,
                end: self.log_end,
            });
        }
        let empty = ReadResult {
            bytes: Bytes::new(),
            first_offset: from_offset,
            next_offset: from_offset,
        };
        if from_offset >= upper_bound || from_offset == self.log_end {
            return Ok(empty);
        }
        let limit = max_bytes.min(READ_SIZE_MAX_BYTES);
        let first = self
            .segments
            .range(..=from_offset)
            .next_back()
            .map_or(0, |(b, _)| *b);
        for (&segment_base, segment) in self.segments.range(first..) {
            // Where this segment's offsets must end: base offsets sit outside the CRC, so a
            // batch claiming offsets beyond it (or before the previous batch's end) is corrupt.
            let segment_end = self
                .segments
                .range(segment_base + 1..)
                .next()
                .map_or(self.log_end, |(b, _)| *b);
            let located = segment.find(from_offset)?.map_err(|_| LogError::Corrupt {
                offset: from_offset,
            })?;
            let Some(located) = located else {
                continue;
            };
            let head = located.header;
            if head.base_offset < segment_base || head.next_offset() > segment_end {
                // Rot in a base offset (outside the CRC) moved the batch out of its segment:
                // answering "nothing there" would hide entries the log holds.
                return Err(LogError::Corrupt {
                    offset: from_offset,
                });
            }
            if head.base_offset >= upper_bound {
                return Ok(empty);
            }
            let available = (segment.size - located.position) as usize;
            let want = head.total_size().max(limit.min(available));
            let (bytes, headers) = segment.read_batches(located.position, want)?;
            let mut end = 0usize;
            let mut next = from_offset;
            for header in headers {
                let fits = end == 0 || end + header.total_size() <= limit;
                if header.base_offset >= upper_bound || !fits {
                    break;
                }
                let in_order = header.base_offset >= segment_base
                    && (end == 0 || header.base_offset >= next)
                    && header.next_offset() <= segment_end;
                if !in_order {
                    break;
                }
                end += header.total_size();
                next = header.next_offset();
            }
            if end == 0 {
                return Err(LogError::Corrupt {
                    offset: head.base_offset,
                });
            }
            return Ok(ReadResult {
                bytes: bytes.slice(..end),
                first_offset: head.base_offset,
                next_offset: next,
            });
        }
        Ok(empty)
    }

    /// The first offset at or after the log start whose record timestamp is `>= ts_ms`, and
    /// that timestamp (Kafka's ListOffsets by time). Uses the time indexes and batch max
    /// timestamps, then decodes the one batch that qualifies.
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(u64, i64)>, LogError> {
        let first = self
            .segments
            .range(..=self.log_start)
            .next_back()
            .map_or(0, |(b, _)| *b);
        for segment in self.segments.range(first..).map(|(_, s)| s) {
            let mut position = 0u64;
            loop {
                let found = segment
                    .next_by_timestamp(ts_ms, self.log_start, position)?
                    .map_err(|_| LogError::Corrupt {
                        offset: self.log_start,
                    })?;
                let Some(located) = found else {
                    break;
                };
                let head = located.header;
                let bytes = Self::read_verified(segment, located.position, &head)?;
                match decode_records(&bytes) {
                    Ok(records) => {
                        let hit = records
                            .iter()
                            .find(|r| r.timestamp_ms >= ts_ms && r.offset >= self.log_start);
                        if let Some(r) = hit {
                            return Ok(Some((r.offset, r.timestamp_ms)));
                        }
                    }
                    // Records we cannot materialise: answer with the batch.
                    Err(BatchError::TooManyRecords(_) | BatchError::Codec(_)) => {
                        return Ok(Some((
                            head.base_offset.max(self.log_start),
                            head.max_timestamp,
                        )))
                    }
                    Err(_) => {
                        return Err(LogError::Corrupt {
                            offset: head.base_offset,
                        })
                    }
                }
                position = located.position + head.total_size() as u64;
            }
        }
        Ok(None)
    }

    /// Removes every batch whose last offset is `>= offset`, which must be a batch boundary
    /// (or in a gap, or the log end) at or after the log start. Durable when it returns. The
    /// log end becomes the end of the last remaining batch (at least the log start).
    ///
    /// Crash safety: `log.meta` (epochs cut, recovery point lowered) is written first; later
    /// segments are removed newest first; the cut segment loses its index files before it
    /// is shortened. A crash leaves a prefix of the old log that contains the new one.
    pub fn truncate_from(&mut self, offset: u64) -> Result<(), LogError> {
        self.check_usable()?;
        if offset == self.log_end {
            return Ok(());
        }
        if offset < self.log_start || offset > self.log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.log_end,
            });
        }
        let cut = self.segments.range(..offset).next_back().map(|(b, _)| *b);
        let cut_at = match cut {
            Some(base) => {
                let segment = &self.segments[&base];
                let found = segment
                    .find(offset)?
                    .map_err(|_| LogError::Corrupt { offset })?;
                match found {
                    Some(l) if l.header.base_offset < offset => {
                        return Err(LogError::NotBatchBoundary { offset })
                    }
                    Some(l) => Some((base, l.position)),
                    None => None,
                }
            }
            None => None,
        };
        let result = self.truncate_inner(offset, cut, cut_at);
        self.note(result)
    }

    fn truncate_inner(
        &mut self,
        offset: u64,
        cut: Option<u64>,
        cut_at: Option<(u64, u64)>,
    ) -> Result<(), LogError> {
        let disk = Arc::clone(&self.disk);
        let disk = disk.as_ref();
        self.epochs.truncate_from_end(offset);
        let doomed: Vec<u64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        // The removed segments listed as empty: a file of the same name may be created
        // again (a new first segment at `offset`) before `log.meta` is next written.
        let caps: Vec<(u64, u64)> = doomed.iter().map(|b| (*b, 0)).chain(cut_at).collect();
        self.write_meta_capped(self.recovery_point.min(offset), &caps)?;
        for base in doomed.iter().rev() {
            self.segments.remove(base);
            Segment::remove_files(disk, &self.dir, *base)?;
        }
        if let Some(base) = cut {
            Segment::remove_indexes(disk, &self.dir, base)?;
        }
        disk.sync_dir(&self.dir)?;
        if let Some((base, position)) = cut_at {
            let segment = self.segments.get_mut(&base).expect("cut segment exists");
            segment
                .truncate_to(position)?
                .map_err(|_| LogError::Corrupt { offset })?;
            segment.sync()?;
        }
        if self.segments.is_empty() {
            // Every segment started at or after `offset`: no batch is left from the log
            // start on, so the log ends at its start (not at `offset`, which may lie after
            // a gap that retention moved the start into).
            let segment = Segment::create(disk, &self.dir, self.log_start)?;
            self.segments.insert(self.log_start, segment);
            disk.sync_dir(&self.dir)?;
        }
        self.log_end = self.active().next_offset.max(self.log_start);
        self.epochs.truncate_from_end(self.log_end);
        self.durable_end = self.durable_end.min(self.log_end);
        Ok(())
    }

    /// Raises the log start to `new_start` (Kafka's DeleteRecords; it may fall inside a
    /// batch) and deletes the segments wholly below it. Durable when it returns: `log.meta`
    /// is written before any file is removed, and open finishes an interrupted deletion.
    pub fn delete_prefix(&mut self, new_start: u64) -> Result<(), LogError> {
        self.check_usable()?;
        if new_start <= self.log_start {
            return Ok(());
        }
        if new_start > self.log_end {
            return Err(LogError::OffsetOutOfRange {
                offset: new_start,
                start: self.log_start,
                end: self.log_end,
            });
        }
        let result = self.delete_prefix_inner(new_start);
        self.note(result).map(|_| ())
    }

    fn delete_prefix_inner(&mut self, new_start: u64) -> Result<(usize, u64), LogError> {
        self.log_start = new_start;
        self.epochs.truncate_from_start(new_start);
        self.write_meta(self.recovery_point)?;
        self.remove_segments_below_start()
    }

    /// Discards everything: the log becomes empty, starting at `start_offset`, with
    /// `epoch_before_start` as the epoch of `start_offset - 1` (a follower behind the
    /// leader's log start). Durable when it returns; a crash in the middle leaves either a
    /// prefix of the old log or the new empty one.
    pub fn reset(&mut self, start_offset: u64, epoch_before_start: i32) -> Result<(), LogError> {
        self.check_usable()?;
        if start_offset > i64::MAX as u64 {
            return Err(LogError::OffsetOverflow);
        }
        let result = self.reset_inner(start_offset, epoch_before_start);
        self.note(result)
    }

    fn reset_inner(&mut self, start_offset: u64, epoch_before_start: i32) -> Result<(), LogError> {
        let disk = Arc::clone(&self.disk);
        let disk = disk.as_ref();
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        // First no longer list the segments (a crash while removing them is no loss).
        self.segments.clear();
        self.write_meta(self.recovery_point)?;
        for base in bases.iter().rev() {
            Segment::remove_files(disk, &self.dir, *base)?;
        }
        disk.sync_dir(&self.dir)?;
        self.log_start = start_offset;
        self.log_end = start_offset;
        self.durable_end = start_offset;
        match start_offset.checked_sub(1) {
            Some(before) => self.epochs.reset(epoch_before_start, before),
            None => self.epochs.clear(),
        }
        self.write_meta(start_offset)?;
        let segment = Segment::create(disk, &self.dir, start_offset)?;
        self.segments.insert(start_offset, segment);
        disk.sync_dir(&self.dir)?;
        Ok(())
    }

    /// Deletes whole closed segments (never the active one, never one holding an offset
    /// `>= max_offset`, e.g. the commit index) that are older than `retention_ms` (by their
    /// largest batch max timestamp, against `now_ms`) or beyond `retention_bytes`, oldest
    /// first. Only under a `Delete` cleanup policy.
    pub fn enforce_retention(
        &mut self,
        now_ms: i64,
        max_offset: u64,
    ) -> Result<RetentionStats, LogError> {
        self.check_usable()?;
        let mut stats = RetentionStats {
            log_start_offset: self.log_start,
            ..RetentionStats::default()
        };
        if !self.config.cleanup_policy.deletes() {
            return Ok(stats);
        }
        let mut total = self.size_bytes();
        let mut new_start = None;
        let closed = self.segments.len() - 1;
        for segment in self.segments.values().take(closed) {
            if segment.next_offset > max_offset {
                break;
            }
            let by_time = self
                .config
                .retention_ms
                .is_some_and(|r| segment.max_timestamp < now_ms.saturating_sub(r));
            let by_size = self
                .config
                .retention_bytes
                .is_some_and(|r| total - segment.size >= r);
            if !by_time && !by_size {
                break;
            }
            total -= segment.size;
            new_start = Some(segment.next_offset);
        }
        if let Some(start) = new_start.filter(|s| *s > self.log_start) {
            let result = self.delete_prefix_inner(start);
            let (segments, bytes) = self.note(result)?;
            stats.segments_deleted = segments;
            stats.bytes_deleted = bytes;
        }
        stats.log_start_offset = self.log_start;
        Ok(stats)
    }

    /// Compacts closed segments wholly below `max_offset` (the caller passes the commit
    /// index): keeps the latest record per key, drops tombstones older than
    /// `delete_retention_ms` at `now_ms`, keeps offsets (batches keep their range; fully
    /// emptied batches are dropped, leaving a gap, except the log's last batch and each
    /// producer's last batch, kept empty). Control and transactional batches, and batches
    /// whose records cannot be decoded, are kept as they are. See the module docs for the
    /// crash-safe swap.
    pub fn compact(&mut self, now_ms: i64, max_offset: u64) -> Result<CompactionStats, LogError> {
        self.check_usable()?;
        if !self.config.cleanup_policy.compacts() {
            return Ok(CompactionStats::default());
        }
        let result = self.compact_inner(now_ms, max_offset);
        self.note(result)
    }

    /// The batch at `position` (whose header is `header`), verified, in the Kafka form.
    fn read_verified(
        segment: &Segment,
        position: u64,
        header: &BatchHeader,
    ) -> Result<Bytes, LogError> {
        match segment.read_batch(position, header.total_size())? {
            Ok((_, bytes)) => Ok(bytes),
            Err(_) => Err(LogError::Corrupt {
                offset: header.base_offset,
            }),
        }
    }

    /// Every batch of a segment, read and verified in order.
    fn segment_batches(segment: &Segment) -> Result<Vec<(u64, BatchHeader)>, LogError> {
        let mut out = Vec::new();
        let mut position = 0;
        while position < segment.size {
            let header = segment
                .header_at(position)?
                .map_err(|_| LogError::Corrupt {
                    offset: segment.next_offset,
                })?;
            out.push((position, header));
            position += header.total_size() as u64;
        }
        Ok(out)
    }

    fn compact_inner(&mut self, now_ms: i64, max_offset: u64) -> Result<CompactionStats, LogError> {
        let mut stats = CompactionStats::default();
        let closed = self.segments.len() - 1;
        let candidates: Vec<u64> = self
            .segments
            .iter()
            .take(closed)
            .take_while(|(_, s)| s.next_offset <= max_offset)
            .map(|(b, _)| *b)
            .collect();
        // Pass 1: the latest offset of every key, and each producer's last batch.
        let mut latest: BTreeMap<Bytes, u64> = BTreeMap::new();
        let mut producer_last: BTreeMap<i64, u64> = BTreeMap::new();
        let mut mapped = Vec::new();
        for base in candidates {
            let segment = &self.segments[&base];
            let mut keys: Vec<(Bytes, u64)> = Vec::new();
            for (position, header) in Self::segment_batches(segment)? {
                if header.producer_id >= 0 {
                    producer_last.insert(header.producer_id, header.base_offset);
                }
                if header.is_control() || header.is_transactional() {
                    continue;
                }
                // Verified by the read; records that do not decode keep no key alive.
                let bytes = Self::read_verified(segment, position, &header)?;
                if let Ok(records) = decode_records(&bytes) {
                    keys.extend(
                        records
                            .into_iter()
                            .filter_map(|r| r.key.map(|k| (k, r.offset))),
                    );
                }
            }
            let new_keys = keys.iter().filter(|(k, _)| !latest.contains_key(k)).count();
            if latest.len() + new_keys > COMPACTION_KEYS_MAX_COUNT {
                break;
            }
            latest.extend(keys);
            mapped.push(base);
        }
        stats.segments_examined = mapped.len();
        let tombstone_horizon = now_ms.saturating_sub(self.config.delete_retention_ms);
        // Pass 2: rewrite and swap, oldest first.
        for base in mapped {
            let before = self.segments[&base].size;
            let cleaned = self.clean_segment(base, &latest, &producer_last, tombstone_horizon)?;
            let Some((cleaned, records_removed, batches_removed)) = cleaned else {
                continue;
            };
            stats.records_removed += records_removed;
            stats.batches_removed += batches_removed;
            stats.bytes_before += before;
            stats.bytes_after += cleaned.size;
            self.swap_in(base, cleaned)?;
            stats.segments_cleaned += 1;
        }
        Ok(stats)
    }

    /// What compaction does with one batch (`bytes`, verified by [`Log::read_verified`]).
    fn decide(
        &self,
        header: &BatchHeader,
        bytes: &[u8],
        latest: &BTreeMap<Bytes, u64>,
        producer_last: &BTreeMap<i64, u64>,
        tombstone_horizon: i64,
    ) -> Result<Decision, LogError> {
        if header.is_control() || header.is_transactional() {
            return Ok(Decision::Keep);
        }
        // Records we cannot materialise stay as they are.
        let Ok(records) = decode_records(bytes) else {
            return Ok(Decision::Keep);
        };
        let before = records.len();
        let kept: Vec<_> = records
            .into_iter()
            .filter(|r| match &r.key {
                None => true,
                Some(k) => {
                    latest.get(k) == Some(&r.offset)
                        && (r.value.is_some() || r.timestamp_ms >= tombstone_horizon)
                }
            })
            .collect();
        let removed = (before - kept.len()) as u64;
        if removed == 0 {
            return Ok(Decision::Keep);
        }
        let needed = header.next_offset() >= self.log_end
            || (header.producer_id >= 0
                && producer_last.get(&header.producer_id) == Some(&header.base_offset));
        if kept.is_empty() && !needed {
            return Ok(Decision::Drop { removed });
        }
        let rebuilt = rebuild_batch(header, &kept)?;
        let new_header = BatchHeader::validate(&rebuilt)?;
        Ok(Decision::Replace {
            header: new_header,
            bytes: rebuilt,
            removed,
        })
    }

    /// Streams the cleaned copy of segment `base` into `{base}.log.cleaned` (started at the
    /// first batch that changes, so one batch at a time is in memory) and syncs it. `None`
    /// if nothing changes. Also returns the records and batches removed.
    fn clean_segment(
        &self,
        base: u64,
        latest: &BTreeMap<Bytes, u64>,
        producer_last: &BTreeMap<i64, u64>,
        tombstone_horizon: i64,
    ) -> Result<Option<(Segment, u64, u64)>, LogError> {
        let segment = &self.segments[&base];
        let interval = self.config.index_interval_bytes;
        let batches = Self::segment_batches(segment)?;
        let mut cleaned: Option<Segment> = None;
        let (mut records_removed, mut batches_removed) = (0u64, 0u64);
        for (i, (position, header)) in batches.iter().enumerate() {
            let bytes = Self::read_verified(segment, *position, header)?;
            let decision = self.decide(header, &bytes, latest, producer_last, tombstone_horizon)?;
            if cleaned.is_none() && !matches!(decision, Decision::Keep) {
                let path = self.cleaned_path(base);
                let mut copy = Segment::create_at(self.disk.as_ref(), &path, base)?;
                for (p, h) in &batches[..i] {
                    copy.append(h, &Self::read_verified(segment, *p, h)?, interval)?;
                }
                cleaned = Some(copy);
            }
            let Some(copy) = cleaned.as_mut() else {
                continue;
            };
            match decision {
                Decision::Keep => copy.append(header, &bytes, interval)?,
                Decision::Drop { removed } => {
                    records_removed += removed;
                    batches_removed += 1;
                }
                Decision::Replace {
                    header,
                    bytes,
                    removed,
                } => {
                    records_removed += removed;
                    copy.append(&header, &bytes, interval)?;
                }
            }
        }
        let Some(mut copy) = cleaned else {
            return Ok(None);
        };
        copy.sync()?;
        Ok(Some((copy, records_removed, batches_removed)))
    }

    fn cleaned_path(&self, base: u64) -> PathBuf {
        self.dir
            .join(format!("{}{CLEANED_SUFFIX}", file_name(base, LOG_EXT)))
    }

    /// The atomic swap: old indexes gone (durably), then the rename (durably).
    fn swap_in(&mut self, base: u64, cleaned: Segment) -> Result<(), LogError> {
        let disk = Arc::clone(&self.disk);
        let disk = disk.as_ref();
        Segment::remove_indexes(disk, &self.dir, base)?;
        // The cleaned copy is shorter: list the segment with its size first.
        self.write_meta_capped(self.recovery_point, &[(base, cleaned.size)])?;
        disk.rename(
            &self.cleaned_path(base),
            &self.dir.join(file_name(base, LOG_EXT)),
        )?;
        disk.sync_dir(&self.dir)?;
        let segment = self
            .segments
            .get_mut(&base)
            .expect("swapped segment exists");
        segment.replace_with(cleaned);
        segment.write_indexes(disk, &self.dir)?;
        Ok(())
    }
}

/// What compaction does with one batch.
#[derive(Debug)]
enum Decision {
    /// Copy it byte for byte.
    Keep,
    /// Drop it whole (every record removed), leaving an offset gap.
    Drop { removed: u64 },
    /// Write this re-encoded batch (same offset range) instead.
    Replace {
        header: BatchHeader,
        bytes: Bytes,
        removed: u64,
    },
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
