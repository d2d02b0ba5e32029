//! The storage contract every fjord component writes through.
//!
//! The log engine never touches `std::fs` directly: it goes through [`Disk`] so that the same
//! code runs on real files ([`FileDisk`]), in memory ([`crate::testing::MemDisk`]) and inside the
//! simulator, which implements this trait with fault injection.
//!
//! # Fault model (what an implementation may do, and what callers must survive)
//!
//! * **Writes are pending until [`DiskFile::sync`].** `write_at` and `set_len` change what
//!   later reads of the same file return immediately, but a crash before `sync` returns may
//!   drop any pending write, or keep only a prefix of it (a *torn* write). Pending writes to
//!   one file may survive independently of each other (a later write may survive while an
//!   earlier one is lost), so a crash can leave holes (old bytes or zeros) in the unsynced
//!   region. Everything written before a successful `sync` survives any crash.
//! * **A failed `sync` is fatal for that file.** After `sync` returns an error the state of
//!   the unsynced data is unknown (Linux may have dropped the dirty pages and cleared the error).
//!   Callers must never retry `sync` and assume success: they stop using the file (the node
//!   stops, recovers from what is durable, or re-fetches from a replica). Implementations
//!   poison the handle: every later operation on it fails with [`DiskError::Poisoned`].
//! * **Directory entries are durable only after [`Disk::sync_dir`].** `create`, `rename`
//!   and `remove` are visible at once but may be undone by a crash until the parent
//!   directory is synced. Operations on one directory that survive a crash form a prefix
//!   of the operations issued on it (a rename is atomic: after a crash the destination holds
//!   either the old or the new file, never a mix).
//! * **Reads may return corrupted bytes** where the storage medium flipped bits at rest
//!   (injected by the simulator and by `MemDisk`). The disk does not detect it: the log
//!   checks a CRC on every batch and never serves a batch whose CRC fails.
//!
//! The disk is synchronous: fjord's log calls are short (page-cache writes) except `sync`,
//! which drivers schedule off their latency-critical paths. Simulated latency is modelled by
//! the simulator's driver, not by blocking inside these calls.

use std::fmt;
use std::path::{Path, PathBuf};

/// Errors a [`Disk`] or [`DiskFile`] reports. None of them is a bug in the caller's input
/// alone: they come from the environment (or the simulator's fault injection).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file or directory does not exist.
    #[error("not found: {0}")]
    NotFound(PathBuf),
    /// `create` found an existing file.
    #[error("already exists: {0}")]
    AlreadyExists(PathBuf),
    /// `read_at` asked for bytes past the end of the file.
    #[error("short read on {path}: wanted {wanted} bytes at {offset}, file has {len}")]
    ShortRead {
        path: PathBuf,
        offset: u64,
        wanted: usize,
        len: u64,
    },
    /// A previous `sync` on this handle failed: the handle must not be used again.
    #[error("file poisoned by an earlier failed sync: {0}")]
    Poisoned(PathBuf),
    /// The disk has no space left (real or injected).
    #[error("no space left for {0}")]
    NoSpace(PathBuf),
    /// A fault injected by a test disk (failed sync, failed write, crashed node).
    #[error("injected fault on {path}: {what}")]
    Injected { path: PathBuf, what: &'static str },
    /// Any other operating-system error.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A filesystem namespace: the directory operations of the fault model above.
///
/// Paths are interpreted by the implementation (`FileDisk` joins them to real paths;
/// in-memory disks treat them as keys). All paths a component uses live under a root
/// directory it was given.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents. Durable once each created parent is dir-synced.
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError>;
    /// Creates a new, empty file; fails with [`DiskError::AlreadyExists`] if it exists.
    /// The entry is durable only after `sync_dir` of its parent.
    fn create(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError>;
    /// Whether `path` names an existing file or directory.
    fn exists(&self, path: &Path) -> Result<bool, DiskError>;
    /// Names (not paths) of the entries directly inside `dir`, sorted bytewise.
    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists. Durable after
    /// `sync_dir` of the parent(s).
    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError>;
    /// Removes a file. Durable after `sync_dir` of its parent.
    fn remove(&self, path: &Path) -> Result<(), DiskError>;
    /// Makes every earlier entry operation (create, rename, remove) in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError>;
}

/// An open file. Reads see every earlier write through any handle of the same file.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Current length, including pending (unsynced) writes.
    fn len(&self) -> u64;
    /// Whether the file is empty (including pending writes).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset`, or fails with [`DiskError::ShortRead`].
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `data` at `offset`, extending the file (with zeros) if needed. Pending until `sync`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Truncates or extends the file to `len` bytes. Pending until `sync`.
    fn set_len(&mut self, len: u64) -> Result<(), DiskError>;
    /// Makes every earlier write and length change of this file durable (`fdatasync`).
    /// On error the handle is poisoned; see the module docs.
    fn sync(&mut self) -> Result<(), DiskError>;
}
