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

/// A [`Disk`] on the real filesystem (`std::fs`), rooted at a directory.
///
/// `sync` is `fdatasync` (`File::sync_data`); `sync_dir` opens the directory and `fsync`s it.
/// Every path is joined to the root given at construction, so components never see absolute
/// paths. A failed `sync` poisons the handle (see the module docs): the kernel may already
/// have dropped the dirty pages and cleared the error, so a retry could falsely succeed.
#[derive(Debug, Clone)]
pub struct FileDisk {
    root: PathBuf,
}

impl FileDisk {
    /// A disk whose paths are relative to `root` (which must exist for `create`/`open` to work;
    /// `create_dir_all` creates it).
    pub fn new(root: impl Into<PathBuf>) -> FileDisk {
        FileDisk { root: root.into() }
    }

    /// The directory every path is joined to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

/// Maps an OS error to the typed [`DiskError`] kinds callers branch on.
fn io_error(path: &Path, source: std::io::Error) -> DiskError {
    match source.kind() {
        std::io::ErrorKind::NotFound => DiskError::NotFound(path.to_path_buf()),
        std::io::ErrorKind::AlreadyExists => DiskError::AlreadyExists(path.to_path_buf()),
        std::io::ErrorKind::StorageFull => DiskError::NoSpace(path.to_path_buf()),
        _ => DiskError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl Disk for FileDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        std::fs::create_dir_all(self.full(dir)).map_err(|e| io_error(dir, e))
    }

    fn create(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.full(path))
            .map_err(|e| io_error(path, e))?;
        Ok(Box::new(FileDiskFile {
            file,
            path: path.to_path_buf(),
            poisoned: false,
        }))
    }

    fn open(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let full = self.full(path);
        if full.is_dir() {
            return Err(DiskError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("is a directory"),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(full)
            .map_err(|e| io_error(path, e))?;
        Ok(Box::new(FileDiskFile {
            file,
            path: path.to_path_buf(),
            poisoned: false,
        }))
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        self.full(path).try_exists().map_err(|e| io_error(path, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.full(dir)).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        std::fs::rename(self.full(from), self.full(to)).map_err(|e| io_error(from, e))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        std::fs::remove_file(self.full(path)).map_err(|e| io_error(path, e))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let handle = std::fs::File::open(self.full(dir)).map_err(|e| io_error(dir, e))?;
        handle.sync_all().map_err(|e| io_error(dir, e))
    }
}

/// An open file of a [`FileDisk`].
#[derive(Debug)]
struct FileDiskFile {
    file: std::fs::File,
    path: PathBuf,
    poisoned: bool,
}

impl FileDiskFile {
    fn check(&self) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(DiskError::Poisoned(self.path.clone()));
        }
        Ok(())
    }
}

impl DiskFile for FileDiskFile {
    /// The length from `fstat`; 0 if `fstat` fails (a later read or write reports the error).
    fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        use std::os::unix::fs::FileExt;
        self.check()?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DiskError::ShortRead {
                    path: self.path.clone(),
                    offset,
                    wanted: buf.len(),
                    len: self.len(),
                }
            } else {
                io_error(&self.path, e)
            }
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        use std::os::unix::fs::FileExt;
        self.check()?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_error(&self.path, e))
    }

    fn set_len(&mut self, len: u64) -> Result<(), DiskError> {
        self.check()?;
        self.file.set_len(len).map_err(|e| io_error(&self.path, e))
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.check()?;
        self.file.sync_data().map_err(|e| {
            self.poisoned = true;
            io_error(&self.path, e)
        })
    }
}
