//! The partition's metadata file `log.meta`: log start offset, recovery point and the
//! leader-epoch cache, in one checksummed file replaced atomically.
//!
//! ```text
//! "FJLM" | version u32 (1) | log_start u64 | recovery_point u64 | count u32 |
//! count x (epoch i32, start_offset u64) | crc32c u32 of everything before     (big endian)
//! ```
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
const VERSION: u32 = 1;
const FIXED_BYTES: usize = 4 + 4 + 8 + 8 + 4;
const ENTRY_BYTES: usize = 12;
/// Largest metadata file a reader accepts (checked before allocating).
pub const META_FILE_SIZE_MAX_BYTES: usize = FIXED_BYTES + ENTRY_BYTES * EPOCH_ENTRIES_MAX_COUNT + 4;

/// What `log.meta` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMeta {
    pub log_start: u64,
    /// Every batch below this offset was synced and verified (so recovery need not re-verify
    /// segments wholly below it).
    pub recovery_point: u64,
    pub epochs: EpochCache,
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
    if u32_at(4) != VERSION {
        return Err(MetaError::Checksum);
    }
    let count = u32_at(24) as usize;
    if body.len() != FIXED_BYTES + count * ENTRY_BYTES {
        return Err(MetaError::Size);
    }
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
        }
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
