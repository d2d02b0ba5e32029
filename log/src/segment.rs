//! Segments: append-only files of whole batches, with a sparse offset index and a time index.
//!
//! # Files (`{base_offset:020}` is the offset of the segment's first batch, as in Kafka)
//!
//! * `.log` — batches back to back, byte-identical to what was appended.
//! * `.index` — written once, when the segment is closed (rolled): entries
//!   `(relative base offset u32, file position u32)`, one per `index_interval_bytes` of data
//!   (and one for the first batch), then a footer `segment_len u64 | next_offset u64 |
//!   max_timestamp i64 | first_timestamp i64 | count u32 | crc32c u32`.
//! * `.timeindex` — entries `(max timestamp so far i64, relative base offset u32)`, added at
//!   offset-index points where the maximum timestamp grew, then `segment_len u64 | count u32 |
//!   crc32c u32`.
//!
//! Batches sit in the `.log` file in their *stored form* (see [`crate::batch`]: the CRC field
//! also covers base offset, length, leader epoch and magic); everything that reads batches
//! back goes through this module, which verifies and returns the Kafka form.
//!
//! The indexes are derived data: never synced, checksummed, and rebuilt by scanning the
//! segment when missing, torn or stale (the footer's `segment_len` must match the file).
//! The byte layout of the indexes is fjord's own, not Kafka's. While a segment is active its
//! indexes live only in memory; recovery rebuilds them by scanning, which it does anyway to
//! verify the CRCs of unflushed batches.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::{seal, unseal_first, BatchError, BatchHeader, BATCH_HEADER_SIZE_BYTES};
use crate::disk::{Disk, DiskError, DiskFile};

/// Most offset-index entries one segment holds; a segment whose index is full rolls (like
/// Kafka's `segment.index.bytes`). Bounds index memory and index file reads.
pub const INDEX_ENTRIES_MAX_COUNT: usize = 1 << 20;
const INDEX_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
/// Index footer without its checksum: segment_len, next_offset, max_ts, first_ts, count.
const INDEX_FOOTER_BYTES: usize = 36;
/// Time-index footer without its checksum: segment_len, count.
const TIME_FOOTER_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
/// Bytes read at once when scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

pub const LOG_EXT: &str = "log";
pub const INDEX_EXT: &str = "index";
pub const TIME_INDEX_EXT: &str = "timeindex";
/// Suffix of a compacted copy being written; never part of the log until renamed.
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// `{base:020}.{ext}`.
pub fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// The base offset of a `{base:020}.log` file name.
pub fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// A batch found while scanning a segment.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub position: u64,
    pub header: BatchHeader,
}

/// Where and why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanStop {
    pub position: u64,
    pub error: ScanError,
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// The bytes at the position are not a valid batch.
    Batch(BatchError),
    /// A valid batch that cannot follow the previous one (offset or epoch going back).
    Order,
}

/// One segment: its file and in-memory indexes.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    file: Box<dyn DiskFile>,
    /// Bytes of whole batches (the file is cut back to this on recovery and truncation).
    pub size: u64,
    /// Offset after the last batch; `base_offset` while empty.
    pub next_offset: u64,
    /// Largest batch max timestamp; `i64::MIN` while empty.
    pub max_timestamp: i64,
    /// Max timestamp of the first batch (age-based rolling); `None` while empty.
    pub first_timestamp: Option<i64>,
    index: Vec<(u32, u32)>,
    time_index: Vec<(i64, u32)>,
    bytes_since_index: u64,
    /// Written since the last sync.
    pub dirty: bool,
    /// Bytes known durable: `size` at the last sync, lowered by truncation.
    pub synced_size: u64,
}

fn path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(file_name(base_offset, ext))
}

fn remove_if_exists(disk: &dyn Disk, path: &Path) -> Result<bool, DiskError> {
    match disk.remove(path) {
        Ok(()) => Ok(true),
        Err(DiskError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Segment {
    fn new(base_offset: u64, file: Box<dyn DiskFile>) -> Segment {
        Segment {
            base_offset,
            file,
            size: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            first_timestamp: None,
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
            dirty: false,
            synced_size: 0,
        }
    }

    /// Creates an empty segment file (replacing a leftover of the same name). The directory
    /// entry is durable only after the caller syncs the directory.
    pub fn create(disk: &dyn Disk, dir: &Path, base_offset: u64) -> Result<Segment, DiskError> {
        let log = path(dir, base_offset, LOG_EXT);
        remove_if_exists(disk, &log)?;
        Ok(Segment::new(base_offset, disk.create(&log)?))
    }

    /// Creates an empty file at `path` that will become segment `base_offset` once renamed
    /// (compaction's cleaned copy).
    pub fn create_at(disk: &dyn Disk, path: &Path, base_offset: u64) -> Result<Segment, DiskError> {
        remove_if_exists(disk, path)?;
        Ok(Segment::new(base_offset, disk.create(path)?))
    }

    /// Reads the whole batch at `position`, verifies it and returns it in the Kafka form.
    pub fn batch_at(
        &self,
        position: u64,
    ) -> Result<Result<(BatchHeader, Bytes), BatchError>, DiskError> {
        let header = match self.header_at(position)? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        self.read_batch(position, header.total_size())
    }

    /// Reads the `len` bytes at `position`, which must be exactly one batch (as located by a
    /// header), verifies it and returns it in the Kafka form.
    pub fn read_batch(
        &self,
        position: u64,
        len: usize,
    ) -> Result<Result<(BatchHeader, Bytes), BatchError>, DiskError> {
        let mut bytes = self.read_raw(position, len)?;
        Ok(unseal_first(&mut bytes).and_then(|h| {
            if h.total_size() == len {
                Ok((h, Bytes::from(bytes)))
            } else {
                Err(BatchError::TrailingBytes {
                    extra: len.saturating_sub(h.total_size()),
                })
            }
        }))
    }

    /// Reads up to `len` bytes of whole batches from `position`: the longest prefix of valid
    /// batches among them (each verified, in the Kafka form) and their headers. A bad or cut
    /// batch ends the prefix; the caller decides what an empty one means.
    pub fn read_batches(
        &self,
        position: u64,
        len: usize,
    ) -> Result<(Bytes, Vec<BatchHeader>), DiskError> {
        let mut bytes = self.read_raw(position, len)?;
        let mut headers = Vec::new();
        let mut end = 0;
        while end < bytes.len() {
            let Ok(header) = unseal_first(&mut bytes[end..]) else {
                break;
            };
            end += header.total_size();
            headers.push(header);
        }
        bytes.truncate(end);
        Ok((Bytes::from(bytes), headers))
    }

    /// Opens an existing segment file without reading it: call [`Segment::load_indexes`] or
    /// [`Segment::scan`] next.
    pub fn open(disk: &dyn Disk, dir: &Path, base_offset: u64) -> Result<Segment, DiskError> {
        let file = disk.open(&path(dir, base_offset, LOG_EXT))?;
        Ok(Segment::new(base_offset, file))
    }

    /// The file's length, which may exceed `size` before recovery cut a torn tail.
    pub fn file_len(&self) -> u64 {
        self.file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Whether a batch spanning up to `last_offset` can be addressed by a relative offset.
    pub fn fits_offset(&self, last_offset: u64) -> bool {
        last_offset
            .checked_sub(self.base_offset)
            .is_some_and(|rel| rel <= u64::from(u32::MAX))
    }

    /// Appends one validated batch at the end of the file and indexes it.
    pub fn append(
        &mut self,
        header: &BatchHeader,
        bytes: &[u8],
        index_interval_bytes: u64,
    ) -> Result<(), DiskError> {
        assert!(header.base_offset >= self.next_offset, "offsets go forward");
        assert!(
            self.fits_offset(header.last_offset()),
            "relative offset fits"
        );
        assert_eq!(bytes.len(), header.total_size(), "one whole batch");
        let mut stored = bytes.to_vec();
        seal(&mut stored);
        self.file.write_at(self.size, &stored)?;
        self.dirty = true;
        let position = self.size;
        self.size += bytes.len() as u64;
        self.note_batch(header, position, index_interval_bytes);
        Ok(())
    }

    /// Updates offsets, timestamps and indexes for a batch at `position`.
    fn note_batch(&mut self, header: &BatchHeader, position: u64, index_interval_bytes: u64) {
        let timestamp = data_timestamp(header);
        let rel = u32::try_from(header.base_offset - self.base_offset).expect("checked by caller");
        let pos = u32::try_from(position).expect("segment positions fit in u32");
        if self.index.is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.index.push((rel, pos));
            self.bytes_since_index = 0;
            let max_so_far = self.max_timestamp.max(timestamp);
            if self
                .time_index
                .last()
                .is_none_or(|(ts, _)| max_so_far > *ts)
            {
                self.time_index.push((max_so_far, rel));
            }
        }
        self.bytes_since_index += header.total_size() as u64;
        self.next_offset = header.next_offset();
        self.max_timestamp = self.max_timestamp.max(timestamp);
        if timestamp != i64::MIN {
            self.first_timestamp.get_or_insert(timestamp);
        }
    }

    fn reset_indexes(&mut self) {
        self.size = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = i64::MIN;
        self.first_timestamp = None;
        self.index.clear();
        self.time_index.clear();
        self.bytes_since_index = 0;
    }

    /// Reads the whole file from the start, verifying every batch (CRC, framing, offsets
    /// going forward from `expected_offset`), rebuilding the indexes, and calling `visit` on
    /// each batch (which may reject it, e.g. for an epoch going back). Stops at the first bad
    /// batch: `size` then covers the valid prefix only. Returns where it stopped, if early.
    pub fn scan(
        &mut self,
        index_interval_bytes: u64,
        expected_offset: u64,
        visit: &mut dyn FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<ScanStop>, DiskError> {
        self.reset_indexes();
        let file_len = self.file.len();
        let mut expected = expected_offset.max(self.base_offset);
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        let mut position = 0u64;
        while position < file_len {
            let want = (file_len - position).min(BATCH_HEADER_SIZE_BYTES as u64) as usize;
            if !in_buf(&buf, buf_start, position, want) {
                buf_start = position;
                let chunk = (file_len - position).min(SCAN_CHUNK_BYTES as u64) as usize;
                buf.resize(chunk, 0);
                self.file.read_at(position, &mut buf)?;
            }
            let at = (position - buf_start) as usize;
            let header = match BatchHeader::parse(&buf[at..]) {
                Ok(h) => h,
                Err(e) => {
                    return Ok(Some(ScanStop {
                        position,
                        error: ScanError::Batch(e),
                    }))
                }
            };
            let total = header.total_size();
            if position + total as u64 > file_len {
                return Ok(Some(ScanStop {
                    position,
                    error: ScanError::Batch(BatchError::Truncated {
                        needed: total,
                        available: (file_len - position) as usize,
                    }),
                }));
            }
            if !in_buf(&buf, buf_start, position, total) {
                buf_start = position;
                let chunk = (file_len - position).min(SCAN_CHUNK_BYTES.max(total) as u64) as usize;
                buf.resize(chunk, 0);
                self.file.read_at(position, &mut buf)?;
            }
            let at = (position - buf_start) as usize;
            let checked = BatchHeader::validate_stored(&buf[at..at + total]);
            let header = match checked {
                Ok(h) => h,
                Err(e) => {
                    return Ok(Some(ScanStop {
                        position,
                        error: ScanError::Batch(e),
                    }))
                }
            };
            let in_order = header.base_offset >= expected
                && self.fits_offset(header.last_offset())
                && position + total as u64 <= u64::from(u32::MAX);
            if !in_order || !visit(&header) {
                return Ok(Some(ScanStop {
                    position,
                    error: ScanError::Order,
                }));
            }
            self.note_batch(&header, position, index_interval_bytes);
            position += total as u64;
            self.size = position;
            expected = header.next_offset();
        }
        Ok(None)
    }

    /// Whether a valid batch starts at `position` (used by recovery to tell a torn tail from
    /// corruption followed by good data).
    pub fn valid_batch_at(&self, position: u64) -> Result<bool, DiskError> {
        let file_len = self.file.len();
        if position + BATCH_HEADER_SIZE_BYTES as u64 > file_len {
            return Ok(false);
        }
        let mut head = [0; BATCH_HEADER_SIZE_BYTES];
        self.file.read_at(position, &mut head)?;
        let Ok(header) = BatchHeader::parse(&head) else {
            return Ok(false);
        };
        if position + header.total_size() as u64 > file_len {
            return Ok(false);
        }
        let mut bytes = vec![0; header.total_size()];
        self.file.read_at(position, &mut bytes)?;
        Ok(BatchHeader::validate_stored(&bytes).is_ok())
    }

    /// The position just after the (possibly invalid) batch at `position`, if its header
    /// parses: where the next batch would start if only this one's content is damaged.
    pub fn next_position_after(&self, position: u64) -> Result<Option<u64>, DiskError> {
        if position + BATCH_HEADER_SIZE_BYTES as u64 > self.file.len() {
            return Ok(None);
        }
        let mut head = [0; BATCH_HEADER_SIZE_BYTES];
        self.file.read_at(position, &mut head)?;
        Ok(BatchHeader::parse(&head)
            .ok()
            .map(|h| position + h.total_size() as u64))
    }

    /// Reads the header of the batch at `position` (without checking its CRC).
    pub fn header_at(&self, position: u64) -> Result<Result<BatchHeader, BatchError>, DiskError> {
        if position + BATCH_HEADER_SIZE_BYTES as u64 > self.size {
            return Ok(Err(BatchError::Truncated {
                needed: BATCH_HEADER_SIZE_BYTES,
                available: self.size.saturating_sub(position) as usize,
            }));
        }
        let mut head = [0; BATCH_HEADER_SIZE_BYTES];
        self.file.read_at(position, &mut head)?;
        Ok(BatchHeader::parse(&head).and_then(|h| {
            if position + h.total_size() as u64 > self.size {
                Err(BatchError::Truncated {
                    needed: h.total_size(),
                    available: (self.size - position) as usize,
                })
            } else {
                Ok(h)
            }
        }))
    }

    /// Position of the last indexed batch starting at or before `offset` (0 if none).
    fn index_position(&self, offset: u64) -> u64 {
        self.index_entry(offset).0
    }

    /// The last index entry at or before `offset`: its position and the base offset of the
    /// batch there (`None` when there is no such entry: position 0).
    fn index_entry(&self, offset: u64) -> (u64, Option<u64>) {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let idx = self.index.partition_point(|(r, _)| *r <= rel);
        idx.checked_sub(1).map_or((0, None), |i| {
            let (rel, position) = self.index[i];
            (u64::from(position), Some(self.base_offset + u64::from(rel)))
        })
    }

    /// Checks that a header met while walking a segment without reading whole batches
    /// continues the chain: its base offset is the one the index recorded at that position
    /// (`exact`), or at least the end of the batch before it. Rot in a walked header (which
    /// no checksum covers until the batch itself is read) must not make a walk skip the
    /// batch it looks for.
    fn continues_chain(
        header: &BatchHeader,
        exact: Option<u64>,
        min_base: u64,
    ) -> Result<(), BatchError> {
        let ok = match exact {
            Some(base) => header.base_offset == base,
            None => header.base_offset >= min_base,
        };
        if ok {
            Ok(())
        } else {
            Err(BatchError::InvalidOffsets {
                base_offset: header.base_offset as i64,
                last_offset_delta: header.last_offset_delta,
            })
        }
    }

    /// Where the batch after the one at `position` starts. Batches chain exactly to the
    /// segment's end: a length reaching beyond it is rot in a header (outside the CRC's
    /// reach until the batch is read), which would otherwise make a scan skip the rest of
    /// the segment and report offsets the log holds as absent.
    fn next_position(&self, position: u64, header: &BatchHeader) -> Result<u64, BatchError> {
        let next = position + header.total_size() as u64;
        if next > self.size {
            return Err(BatchError::Truncated {
                needed: header.total_size(),
                available: (self.size - position) as usize,
            });
        }
        Ok(next)
    }

    /// The first batch whose last offset is `>= offset` (the batch containing it, or the next
    /// one after a gap), found through the sparse index and a short header walk.
    pub fn find(&self, offset: u64) -> Result<Result<Option<Located>, BatchError>, DiskError> {
        let (mut position, mut exact) = self.index_entry(offset);
        let mut min_base = self.base_offset;
        while position < self.size {
            let header = match self.header_at(position)? {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = Self::continues_chain(&header, exact.take(), min_base) {
                return Ok(Err(e));
            }
            min_base = header.next_offset();
            if header.last_offset() >= offset {
                return Ok(Ok(Some(Located { position, header })));
            }
            position = match self.next_position(position, &header) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
        }
        Ok(Ok(None))
    }

    /// The first batch at or after `start_position` whose max timestamp is
    /// `>= timestamp_ms` and whose last offset is `>= from_offset`, if any. The time index
    /// skips the batches that cannot qualify.
    pub fn next_by_timestamp(
        &self,
        timestamp_ms: i64,
        from_offset: u64,
        start_position: u64,
    ) -> Result<Result<Option<Located>, BatchError>, DiskError> {
        if self.max_timestamp < timestamp_ms {
            return Ok(Ok(None));
        }
        let idx = self
            .time_index
            .partition_point(|(ts, _)| *ts < timestamp_ms);
        let by_time = match idx.checked_sub(1) {
            Some(i) => self.index_position(self.base_offset + u64::from(self.time_index[i].1)),
            None => 0,
        };
        let mut position = start_position
            .max(by_time)
            .max(self.index_position(from_offset));
        let mut min_base = self.base_offset;
        while position < self.size {
            let header = match self.header_at(position)? {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = Self::continues_chain(&header, None, min_base) {
                return Ok(Err(e));
            }
            min_base = header.next_offset();
            if data_timestamp(&header) >= timestamp_ms && header.last_offset() >= from_offset {
                return Ok(Ok(Some(Located { position, header })));
            }
            position = match self.next_position(position, &header) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
        }
        Ok(Ok(None))
    }

    /// Reads `len` bytes at `position` as stored (batches in the stored form).
    fn read_raw(&self, position: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let mut buf = vec![0; len];
        self.file.read_at(position, &mut buf)?;
        Ok(buf)
    }

    /// Cuts the segment to its first `position` bytes (a batch boundary found by
    /// [`Segment::find`]) and trims the indexes, re-reading only the headers after the last
    /// remaining index point. The caller syncs.
    pub fn truncate_to(&mut self, position: u64) -> Result<Result<(), BatchError>, DiskError> {
        assert!(position <= self.size, "truncation only shortens");
        self.file.set_len(position)?;
        self.dirty = true;
        self.synced_size = self.synced_size.min(position);
        self.index.retain(|(_, pos)| u64::from(*pos) < position);
        let last_rel = self.index.last().map(|(rel, _)| *rel);
        self.time_index
            .retain(|(_, rel)| last_rel.is_some_and(|last| *rel <= last));
        let mut walk = self.index.last().map_or(0, |(_, pos)| u64::from(*pos));
        self.size = position;
        self.max_timestamp = self.time_index.last().map_or(i64::MIN, |(ts, _)| *ts);
        self.next_offset = self.base_offset;
        self.bytes_since_index = 0;
        if position == 0 {
            self.first_timestamp = None;
        }
        while walk < position {
            let header = match self.header_at(walk)? {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            self.max_timestamp = self.max_timestamp.max(data_timestamp(&header));
            self.next_offset = header.next_offset();
            self.bytes_since_index += header.total_size() as u64;
            walk += header.total_size() as u64;
        }
        Ok(Ok(()))
    }

    pub fn sync(&mut self) -> Result<(), DiskError> {
        self.file.sync()?;
        self.dirty = false;
        self.synced_size = self.size;
        Ok(())
    }

    /// Writes the `.index` and `.timeindex` files of a closed segment (not synced: they are
    /// checksummed and rebuilt when lost).
    pub fn write_indexes(&self, disk: &dyn Disk, dir: &Path) -> Result<(), DiskError> {
        let mut index =
            Vec::with_capacity(self.index.len() * INDEX_ENTRY_BYTES + INDEX_FOOTER_BYTES);
        for (rel, pos) in &self.index {
            index.extend_from_slice(&rel.to_be_bytes());
            index.extend_from_slice(&pos.to_be_bytes());
        }
        index.extend_from_slice(&self.size.to_be_bytes());
        index.extend_from_slice(&self.next_offset.to_be_bytes());
        index.extend_from_slice(&self.max_timestamp.to_be_bytes());
        index.extend_from_slice(&self.first_timestamp.unwrap_or(i64::MIN).to_be_bytes());
        index.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        let crc = crc32c::crc32c(&index);
        index.extend_from_slice(&crc.to_be_bytes());

        let mut time =
            Vec::with_capacity(self.time_index.len() * TIME_ENTRY_BYTES + TIME_FOOTER_BYTES);
        for (ts, rel) in &self.time_index {
            time.extend_from_slice(&ts.to_be_bytes());
            time.extend_from_slice(&rel.to_be_bytes());
        }
        time.extend_from_slice(&self.size.to_be_bytes());
        time.extend_from_slice(&(self.time_index.len() as u32).to_be_bytes());
        let crc = crc32c::crc32c(&time);
        time.extend_from_slice(&crc.to_be_bytes());

        for (ext, bytes) in [(INDEX_EXT, index), (TIME_INDEX_EXT, time)] {
            let p = path(dir, self.base_offset, ext);
            remove_if_exists(disk, &p)?;
            disk.create(&p)?.write_at(0, &bytes)?;
        }
        Ok(())
    }

    /// Loads the index files of a closed segment whose file length is `size`; returns false
    /// (changing nothing) if they are missing, torn, or describe another file length.
    pub fn load_indexes(&mut self, disk: &dyn Disk, dir: &Path) -> Result<bool, DiskError> {
        let max_index =
            INDEX_ENTRIES_MAX_COUNT * INDEX_ENTRY_BYTES + INDEX_FOOTER_BYTES + CRC_BYTES;
        let max_time = INDEX_ENTRIES_MAX_COUNT * TIME_ENTRY_BYTES + TIME_FOOTER_BYTES + CRC_BYTES;
        let Some(index) = read_checked(disk, &path(dir, self.base_offset, INDEX_EXT), max_index)?
        else {
            return Ok(false);
        };
        let Some(time) =
            read_checked(disk, &path(dir, self.base_offset, TIME_INDEX_EXT), max_time)?
        else {
            return Ok(false);
        };
        if index.len() < INDEX_FOOTER_BYTES || time.len() < TIME_FOOTER_BYTES {
            return Ok(false);
        }
        let f = &index[index.len() - INDEX_FOOTER_BYTES..];
        let seg_len = u64::from_be_bytes(f[0..8].try_into().expect("8"));
        let next_offset = u64::from_be_bytes(f[8..16].try_into().expect("8"));
        let max_ts = i64::from_be_bytes(f[16..24].try_into().expect("8"));
        let first_ts = i64::from_be_bytes(f[24..32].try_into().expect("8"));
        let count = u32::from_be_bytes(f[32..36].try_into().expect("4")) as usize;
        let t = &time[time.len() - TIME_FOOTER_BYTES..];
        let time_seg_len = u64::from_be_bytes(t[0..8].try_into().expect("8"));
        let time_count = u32::from_be_bytes(t[8..12].try_into().expect("4")) as usize;
        let file_len = self.file.len();
        let plausible = seg_len == file_len
            && time_seg_len == file_len
            && count * INDEX_ENTRY_BYTES + INDEX_FOOTER_BYTES == index.len()
            && time_count * TIME_ENTRY_BYTES + TIME_FOOTER_BYTES == time.len()
            && next_offset >= self.base_offset
            && (file_len == 0) == (count == 0);
        if !plausible {
            return Ok(false);
        }
        let entries: Vec<(u32, u32)> = index[..count * INDEX_ENTRY_BYTES]
            .chunks_exact(INDEX_ENTRY_BYTES)
            .map(|c| {
                (
                    u32::from_be_bytes(c[0..4].try_into().expect("4")),
                    u32::from_be_bytes(c[4..8].try_into().expect("4")),
                )
            })
            .collect();
        let time_entries: Vec<(i64, u32)> = time[..time_count * TIME_ENTRY_BYTES]
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(|c| {
                (
                    i64::from_be_bytes(c[0..8].try_into().expect("8")),
                    u32::from_be_bytes(c[8..12].try_into().expect("4")),
                )
            })
            .collect();
        let ordered = entries.first().is_none_or(|e| *e == (0, 0))
            && entries
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && entries.last().is_none_or(|e| u64::from(e.1) < file_len)
            && time_entries
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        if !ordered {
            return Ok(false);
        }
        self.index = entries;
        self.time_index = time_entries;
        self.size = file_len;
        self.next_offset = next_offset;
        self.max_timestamp = max_ts;
        self.first_timestamp = (file_len > 0).then_some(first_ts);
        self.bytes_since_index = 0;
        Ok(true)
    }

    /// Removes the index files (before the segment's content changes, so that a crash can
    /// never pair new content with an old index).
    pub fn remove_indexes(
        disk: &dyn Disk,
        dir: &Path,
        base_offset: u64,
    ) -> Result<bool, DiskError> {
        let a = remove_if_exists(disk, &path(dir, base_offset, INDEX_EXT))?;
        let b = remove_if_exists(disk, &path(dir, base_offset, TIME_INDEX_EXT))?;
        Ok(a || b)
    }

    /// Removes the segment's files. The caller syncs the directory.
    pub fn remove_files(disk: &dyn Disk, dir: &Path, base_offset: u64) -> Result<(), DiskError> {
        remove_if_exists(disk, &path(dir, base_offset, LOG_EXT))?;
        Segment::remove_indexes(disk, dir, base_offset)?;
        Ok(())
    }

    /// Replaces this segment's file handle and indexes with those of `other` (same base
    /// offset), after `other`'s file was renamed over this one's.
    pub fn replace_with(&mut self, other: Segment) {
        assert_eq!(self.base_offset, other.base_offset);
        *self = other;
    }
}

fn in_buf(buf: &[u8], buf_start: u64, position: u64, len: usize) -> bool {
    position >= buf_start && position + len as u64 <= buf_start + buf.len() as u64
}

/// Reads a whole small file whose checksum is its last 4 bytes (over everything before);
/// `None` if missing, too large, or the checksum fails.
fn read_checked(
    disk: &dyn Disk,
    path: &Path,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, DiskError> {
    let file = match disk.open(path) {
        Ok(f) => f,
        Err(DiskError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.len();
    let Some(len) = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 4 && *l <= max_bytes)
    else {
        return Ok(None);
    };
    let mut buf = vec![0; len];
    file.read_at(0, &mut buf)?;
    let (body, crc) = buf.split_at(len - 4);
    let crc = u32::from_be_bytes(crc.try_into().expect("4"));
    if crc32c::crc32c(body) != crc {
        return Ok(None);
    }
    buf.truncate(len - 4);
    Ok(Some(buf))
}

/// The timestamp a batch contributes to its segment's time bounds: control batches (Raft
/// no-ops, markers) carry the time they were written, not data time, and must neither keep
/// an old segment from expiring nor appear in the time index.
fn data_timestamp(header: &BatchHeader) -> i64 {
    if header.is_control() {
        i64::MIN
    } else {
        header.max_timestamp
    }
}
