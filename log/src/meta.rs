//! The partition's metadata file `log.meta`: log start offset, recovery point and the
//! leader-epoch cache, in one checksummed file replaced atomically.
//!
//! ```text
//! "FJLM" | version u32 (3) | log_start u64 | recovery_point u64 | count u32 |
//! count x (epoch i32, start_offset u64) | segments u32 |
//! segments x (base u64, min_size u64) | crc32c u32 of everything before     (big endian)
//! ```
//!
//! `segments` lists the log's segments when the file was written (`u32::MAX`: not listed):
//! each one's base offset, so that recovery notices a segment file that went missing, and the
//! number of its bytes known durable then (`min_size`), so that recovery notices a segment
//! file that got shorter — which an index rebuilt from the short file would not. Version 2
//! files (bases only: sizes unknown, 0) and version 1 files (no list) are still read.
//!
//! Written as `log.meta.tmp`, synced, renamed over `log.meta`, directory synced: after a crash
//! the file holds either the old or the new state, whole. One file (rather than Kafka's three
//! checkpoint files) so that a reset changes log start, recovery point and epochs in one
//! atomic step.

use std::path::Path;

use crate::disk::{Disk, DiskError};
use crate::epoch::{EpochCache, EpochEntry, EPOCH_ENTRIES_MAX_COUNT};

pub const META_FILE: &str = "log.meta";
pub const META_TMP_FILE: &str = "log.meta.tmp";
const MAGIC: &[u8; 4] = b"FJLM";
const VERSION: u32 = 3;
/// The version without the segment list.
const VERSION_1: u32 = 1;
/// The version whose segment list has no sizes.
const VERSION_2: u32 = 2;
const FIXED_BYTES: usize = 4 + 4 + 8 + 8 + 4;
const ENTRY_BYTES: usize = 12;
const SEGMENT_BYTES: usize = 16;
/// Segments a metadata file lists at most; a log with more lists none.
pub const SEGMENTS_LISTED_MAX_COUNT: usize = 1 << 16;
/// `segments` count meaning "not listed".
const NOT_LISTED: u32 = u32::MAX;
/// Largest metadata file a reader accepts (checked before allocating).
pub const META_FILE_SIZE_MAX_BYTES: usize = FIXED_BYTES
    + ENTRY_BYTES * EPOCH_ENTRIES_MAX_COUNT
    + 4
    + SEGMENT_BYTES * SEGMENTS_LISTED_MAX_COUNT
    + 4;

/// A segment `log.meta` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedSegment {
    pub base: u64,
    /// Bytes of the segment file known durable when the list was written: a shorter file
    /// lost data.
    pub min_size: u64,
}

/// What `log.meta` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMeta {
    pub log_start: u64,
    /// Every batch below this offset was synced and verified (so recovery need not re-verify
    /// segments wholly below it).
    pub recovery_point: u64,
    pub epochs: EpochCache,
    /// The segments the log had (those with offsets at or above the log start), ascending
    /// by base; `None` if not recorded (a version 1 file, or too many).
    pub segments: Option<Vec<ListedSegment>>,
}

/// Why a metadata file was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("metadata file has a bad size")]
    Size,
    #[error("metadata file has a bad magic, version or checksum")]
    Checksum,
    #[error("metadata file's epochs are out of order")]
    Epochs,
    #[error("metadata file's segments are out of order")]
    Segments,
}

fn encode(meta: &LogMeta) -> Vec<u8> {
    let entries = meta.epochs.entries();
    let mut out = Vec::with_capacity(FIXED_BYTES + ENTRY_BYTES * entries.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&meta.log_start.to_be_bytes());
    out.extend_from_slice(&meta.recovery_point.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.epoch.to_be_bytes());
        out.extend_from_slice(&e.start_offset.to_be_bytes());
    }
    match meta
        .segments
        .as_ref()
        .filter(|s| s.len() <= SEGMENTS_LISTED_MAX_COUNT)
    {
        Some(listed) => {
            out.extend_from_slice(&(listed.len() as u32).to_be_bytes());
            for segment in listed {
                out.extend_from_slice(&segment.base.to_be_bytes());
                out.extend_from_slice(&segment.min_size.to_be_bytes());
            }
        }
        None => out.extend_from_slice(&NOT_LISTED.to_be_bytes()),
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<LogMeta, MetaError> {
    if bytes.len() < FIXED_BYTES + 4 {
        return Err(MetaError::Size);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc || &body[0..4] != MAGIC {
        return Err(MetaError::Checksum);
    }
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(4);
    if ![VERSION, VERSION_1, VERSION_2].contains(&version) {
        return Err(MetaError::Checksum);
    }
    let count = u32_at(24) as usize;
    let epochs_end = count
        .checked_mul(ENTRY_BYTES)
        .and_then(|n| n.checked_add(FIXED_BYTES))
        .filter(|end| *end <= body.len())
        .ok_or(MetaError::Size)?;
    let segments = if version == VERSION_1 {
        if body.len() != epochs_end {
            return Err(MetaError::Size);
        }
        None
    } else {
        if body.len() < epochs_end + 4 {
            return Err(MetaError::Size);
        }
        match u32_at(epochs_end) {
            NOT_LISTED if body.len() == epochs_end + 4 => None,
            listed => {
                let listed = listed as usize;
                let width = if version == VERSION_2 {
                    8
                } else {
                    SEGMENT_BYTES
                };
                if listed > SEGMENTS_LISTED_MAX_COUNT
                    || body.len() != epochs_end + 4 + width * listed
                {
                    return Err(MetaError::Size);
                }
                let segments: Vec<ListedSegment> = (0..listed)
                    .map(|i| {
                        let at = epochs_end + 4 + width * i;
                        ListedSegment {
                            base: u64_at(at),
                            min_size: if width == 8 { 0 } else { u64_at(at + 8) },
                        }
                    })
                    .collect();
                if segments.windows(2).any(|w| w[0].base >= w[1].base) {
                    return Err(MetaError::Segments);
                }
                Some(segments)
            }
        }
    };
    let entries = (0..count)
        .map(|i| {
            let at = FIXED_BYTES + i * ENTRY_BYTES;
            EpochEntry {
                epoch: u32_at(at) as i32,
                start_offset: u64_at(at + 4),
            }
        })
        .collect();
    Ok(LogMeta {
        log_start: u64_at(8),
        recovery_point: u64_at(16),
        epochs: EpochCache::from_entries(entries).ok_or(MetaError::Epochs)?,
        segments,
    })
}

/// Reads `dir/log.meta`: `Ok(None)` if absent, `Ok(Some(Err))` if present but unusable.
pub fn read(disk: &dyn Disk, dir: &Path) -> Result<Option<Result<LogMeta, MetaError>>, DiskError> {
    let file = match disk.open(&dir.join(META_FILE)) {
        Ok(file) => file,
        Err(DiskError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.len();
    let Some(len) = usize::try_from(len)
        .ok()
        .filter(|l| *l <= META_FILE_SIZE_MAX_BYTES)
    else {
        return Ok(Some(Err(MetaError::Size)));
    };
    let mut buf = vec![0; len];
    file.read_at(0, &mut buf)?;
    Ok(Some(decode(&buf)))
}

/// Replaces `dir/log.meta` atomically and durably (write tmp, sync, rename, sync dir).
pub fn write(disk: &dyn Disk, dir: &Path, meta: &LogMeta) -> Result<(), DiskError> {
    let tmp = dir.join(META_TMP_FILE);
    match disk.remove(&tmp) {
        Ok(()) | Err(DiskError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let mut file = disk.create(&tmp)?;
    file.write_at(0, &encode(meta))?;
    file.sync()?;
    disk.rename(&tmp, &dir.join(META_FILE))?;
    disk.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemDisk;

    fn sample() -> LogMeta {
        let mut epochs = EpochCache::default();
        epochs.assign(1, 0).expect("assign");
        epochs.assign(4, 17).expect("assign");
        LogMeta {
            log_start: 5,
            recovery_point: 30,
            epochs,
            segments: Some(
                [(0, 4096), (12, 900), (30, 0)]
                    .into_iter()
                    .map(|(base, min_size)| ListedSegment { base, min_size })
                    .collect(),
            ),
        }
    }

    #[test]
    fn version_1_files_and_unlisted_segments_read() {
        let mut unlisted = sample();
        unlisted.segments = None;
        assert_eq!(decode(&encode(&unlisted)), Ok(unlisted.clone()));
        // Version 1: no segment part.
        let mut v1 = encode(&unlisted);
        v1.truncate(v1.len() - 8);
        v1[4..8].copy_from_slice(&VERSION_1.to_be_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(decode(&v1), Ok(unlisted));
        // Version 2: bases without sizes.
        let listed = sample();
        let v3 = encode(&listed);
        let list_at = v3.len() - 4 - 3 * SEGMENT_BYTES;
        let mut v2 = v3[..list_at].to_vec();
        for segment in listed.segments.as_ref().expect("listed") {
            v2.extend_from_slice(&segment.base.to_be_bytes());
        }
        v2[4..8].copy_from_slice(&VERSION_2.to_be_bytes());
        let crc = crc32c::crc32c(&v2);
        v2.extend_from_slice(&crc.to_be_bytes());
        let mut sizeless = listed.clone();
        for segment in sizeless.segments.as_mut().expect("listed") {
            segment.min_size = 0;
        }
        assert_eq!(decode(&v2), Ok(sizeless));
    }

    #[test]
    fn roundtrip_and_replace() {
        let disk = MemDisk::new(1);
        let dir = Path::new("p");
        disk.create_dir_all(dir).expect("mkdir");
        assert_eq!(read(&disk, dir).expect("read"), None);
        write(&disk, dir, &sample()).expect("write");
        assert_eq!(read(&disk, dir).expect("read"), Some(Ok(sample())));
        let mut next = sample();
        next.log_start = 9;
        write(&disk, dir, &next).expect("write");
        assert_eq!(read(&disk, dir).expect("read"), Some(Ok(next)));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode(&sample());
        for pos in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {pos}");
        }
        assert_eq!(decode(&bytes[..10]), Err(MetaError::Size));
    }

    #[test]
    fn a_crash_leaves_the_old_or_the_new_file() {
        for seed in 0..32 {
            let disk = MemDisk::new(seed);
            let dir = Path::new("p");
            disk.create_dir_all(dir).expect("mkdir");
            disk.sync_dir(Path::new("")).expect("sync root");
            write(&disk, dir, &sample()).expect("write");
            let mut next = sample();
            next.recovery_point = 99;
            for step in 1..=6 {
                disk.crash_at_mutation(Some(disk.stats().mutations + step));
                let done = write(&disk, dir, &next).is_ok();
                disk.crash_at_mutation(None);
                disk.crash();
                let found = read(&disk, dir)
                    .expect("read")
                    .expect("present")
                    .expect("valid");
                assert!(
                    found == sample() || found == next,
                    "seed {seed} step {step}"
                );
                if done {
                    assert_eq!(found, next);
                }
                write(&disk, dir, &sample()).expect("restore");
            }
        }
    }
}
