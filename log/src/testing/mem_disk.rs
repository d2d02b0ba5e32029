//! [`MemDisk`]: an in-memory [`Disk`] that implements exactly the fault model of
//! [`crate::disk`], driven by one seeded `ChaCha8Rng`.
//!
//! # What it models
//!
//! * Every file keeps its *durable* content and a list of *pending* operations (`write_at`,
//!   `set_len`) issued since its last successful `sync`; reads see durable content with the
//!   pending operations applied. `sync` makes them durable.
//! * [`MemDisk::crash`] (power loss) resolves each pending operation of each file
//!   independently: dropped, kept whole, or (for a write) kept as a torn prefix. The
//!   survivors are replayed on the durable content in issue order, so an unsynced region may
//!   end up holding old bytes, new bytes or zeros (holes), but never bytes that were not
//!   written there.
//! * Directory entry operations (create, `create_dir_all`, rename, remove) are logged per
//!   parent directory until `sync_dir` of that directory. A crash keeps a random prefix of
//!   each directory's log (possibly empty, possibly all of it). A rename is one operation,
//!   so it is atomic. A cross-directory rename is logged in the *destination* directory (it
//!   becomes durable with that directory's sync). Entries whose parent directory did not
//!   survive vanish with it.
//! * Crashing kills every open handle: later operations on it fail with
//!   [`DiskError::Injected`] `{ what: "crashed" }`. The disk itself stays usable: open the
//!   files again.
//! * [`MemDisk::fail_syncs`] makes `sync` fail with a probability. A failed file `sync`
//!   resolves that file's pending operations as a crash would (the kernel may have dropped
//!   the dirty pages), poisons the handle ([`DiskError::Poisoned`] for every later
//!   operation on it) and reports [`DiskError::Injected`] `{ what: "sync failed" }`. A failed
//!   `sync_dir` makes nothing durable.
//! * [`MemDisk::corrupt`] and [`MemDisk::corrupt_random`] flip one bit of durable content (at
//!   rest); the flip is visible to reads unless a pending write currently covers the byte.
//! * [`MemDisk::defer_syncs`] models a device that finishes a `sync` later than it is
//!   issued: a successful file `sync` then only tags the file's pending operations with a
//!   ticket ([`MemDisk::last_sync_ticket`]); they become durable at
//!   [`MemDisk::complete_syncs`] of that ticket, and a crash before that resolves them like
//!   any pending operation. (`sync_dir` stays immediate.)
//! * [`MemDisk::set_space_limit`] bounds the total length of all files: a `write_at` or
//!   `set_len` that would exceed it fails with [`DiskError::NoSpace`] and changes nothing.
//!
//! It models nothing else: no latency, no failed reads or writes, no reordering of
//! directory operations beyond the prefix rule. Every random choice comes from the single
//! `ChaCha8Rng` seeded by [`MemDisk::new`], and every iteration is over ordered maps, so a
//! seed and a sequence of calls reproduce the same disk.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{Disk, DiskError, DiskFile};

/// An in-memory disk with crashes, torn writes, failed syncs, bit flips and a space limit.
/// Clones share the same state (one simulated device).
#[derive(Clone)]
pub struct MemDisk {
    inner: Arc<Mutex<Inner>>,
}

/// Counters for tests that check how a component uses the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemDiskStats {
    /// Successful file `sync` calls.
    pub syncs: u64,
    /// Successful `sync_dir` calls.
    pub dir_syncs: u64,
    /// Injected `sync`/`sync_dir` failures.
    pub failed_syncs: u64,
    /// Bytes passed to successful `write_at` calls.
    pub bytes_written: u64,
    /// Calls to [`MemDisk::crash`].
    pub crashes: u64,
    /// Mutating calls attempted (write, set_len, sync, create, rename, remove, sync_dir,
    /// each directory made by create_dir_all): the steps [`MemDisk::crash_at_mutation`]
    /// counts.
    pub mutations: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

#[derive(Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
    /// Deferred syncs in flight: `(ticket, n)` — the first `n` pending operations become
    /// durable when `ticket` completes. Tickets and `n` increase along the list.
    flushing: Vec<(u64, usize)>,
    /// Live handles (of the current crash epoch) on this inode.
    handles: usize,
}

#[derive(Debug, Clone)]
enum DirOp {
    Mkdir(PathBuf),
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: u64,
    },
}

struct Inner {
    rng: ChaCha8Rng,
    /// Incremented by every crash; handles of older epochs are dead.
    epoch: u64,
    next_inode: u64,
    next_seq: u64,
    inodes: BTreeMap<u64, Inode>,
    /// Inodes left by the last [`Inner::gc`].
    inodes_after_gc: usize,
    /// The namespace as visible now.
    current: BTreeMap<PathBuf, Entry>,
    /// The namespace a crash falls back to (before the surviving prefixes are replayed).
    durable: BTreeMap<PathBuf, Entry>,
    /// Pending entry operations per parent directory, with a global sequence number.
    dir_ops: BTreeMap<PathBuf, Vec<(u64, DirOp)>>,
    sync_faults: Vec<(Option<PathBuf>, f64)>,
    space_limit_bytes: Option<u64>,
    crash_at_mutation: Option<u64>,
    /// See [`MemDisk::defer_syncs`].
    defer_syncs: bool,
    /// The last ticket handed out by a deferred sync.
    sync_ticket: u64,
    stats: MemDiskStats,
}

/// Normalises a path to a relative key: `/a/./b` and `a/b` name the same entry; the root is
/// the empty path.
fn key(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn apply_write(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = usize::try_from(offset).expect("MemDisk offsets fit in memory");
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

fn apply_set_len(content: &mut Vec<u8>, len: u64) {
    content.resize(
        usize::try_from(len).expect("MemDisk lengths fit in memory"),
        0,
    );
}

impl Inode {
    /// Resolves pending operations as a power loss would: each is dropped, kept, or (writes)
    /// torn to a prefix; survivors are replayed on the durable content in issue order.
    fn resolve(&mut self, rng: &mut ChaCha8Rng) {
        self.flushing.clear();
        if self.pending.is_empty() {
            // Nothing unsynced (the common case at a crash): the visible content is the
            // durable one already, and copying every file of the disk made a crash cost
            // the disk's size.
            debug_assert_eq!(self.current.len(), self.durable.len());
            return;
        }
        let mut content = std::mem::take(&mut self.durable);
        for op in self.pending.drain(..) {
            match op {
                PendingOp::Write { offset, data } => match rng.gen_range(0..3u8) {
                    0 => {}
                    1 => apply_write(&mut content, offset, &data),
                    _ => {
                        let keep = rng.gen_range(0..=data.len());
                        apply_write(&mut content, offset, &data[..keep]);
                    }
                },
                PendingOp::SetLen(len) => {
                    if rng.gen_bool(0.5) {
                        apply_set_len(&mut content, len);
                    }
                }
            }
        }
        self.current = content.clone();
        self.durable = content;
    }

    /// Makes the first `n` pending operations durable.
    fn make_durable(&mut self, n: usize) {
        // Replaying the pending operations (rather than copying the whole file) keeps a sync
        // proportional to what it makes durable.
        for op in self.pending.drain(..n) {
            match op {
                PendingOp::Write { offset, data } => apply_write(&mut self.durable, offset, &data),
                PendingOp::SetLen(len) => apply_set_len(&mut self.durable, len),
            }
        }
    }

    /// Completes the deferred syncs with tickets up to `ticket`.
    fn complete_syncs(&mut self, ticket: u64) {
        let Some(done) = self.flushing.iter().rposition(|(t, _)| *t <= ticket) else {
            return;
        };
        let n = self.flushing[done].1;
        self.flushing.drain(..=done);
        for f in &mut self.flushing {
            f.1 -= n;
        }
        self.make_durable(n);
    }

    /// Whether a pending operation changed byte `pos` (so the visible byte is not the durable one).
    fn pending_covers(&self, pos: u64) -> bool {
        self.pending.iter().any(|op| match op {
            PendingOp::Write { offset, data } => {
                pos >= *offset && pos < offset.saturating_add(data.len() as u64)
            }
            PendingOp::SetLen(len) => pos >= *len,
        })
    }
}

impl Inner {
    fn log_dir_op(&mut self, dir: PathBuf, op: DirOp) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.dir_ops.entry(dir).or_default().push((seq, op));
    }

    /// Counts one mutating step; if a crash was scheduled for this step, crashes instead
    /// (the operation does not happen).
    fn begin_mutation(&mut self, path: &Path) -> Result<(), DiskError> {
        self.stats.mutations += 1;
        if self.crash_at_mutation == Some(self.stats.mutations) {
            self.crash_at_mutation = None;
            self.crash();
            return Err(DiskError::Injected {
                path: path.to_path_buf(),
                what: "crashed",
            });
        }
        Ok(())
    }

    fn apply_durable(durable: &mut BTreeMap<PathBuf, Entry>, op: DirOp) {
        match op {
            DirOp::Mkdir(path) => {
                durable.insert(path, Entry::Dir);
            }
            DirOp::Link(path, inode) => {
                durable.insert(path, Entry::File(inode));
            }
            DirOp::Unlink(path) => {
                durable.remove(&path);
            }
            DirOp::Rename { from, to, inode } => {
                durable.remove(&from);
                durable.insert(to, Entry::File(inode));
            }
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.as_os_str().is_empty() || self.current.get(path) == Some(&Entry::Dir)
    }

    fn file(&self, path: &Path) -> Result<u64, DiskError> {
        match self.current.get(path) {
            Some(Entry::File(inode)) => Ok(*inode),
            Some(Entry::Dir) => Err(DiskError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("is a directory"),
            }),
            None => Err(DiskError::NotFound(path.to_path_buf())),
        }
    }

    fn total_len(&self) -> u64 {
        self.inodes.values().map(|i| i.current.len() as u64).sum()
    }

    fn check_space(&self, path: &Path, old_len: u64, new_len: u64) -> Result<(), DiskError> {
        if let Some(limit) = self.space_limit_bytes {
            if new_len > old_len && self.total_len() - old_len + new_len > limit {
                return Err(DiskError::NoSpace(path.to_path_buf()));
            }
        }
        Ok(())
    }

    fn sync_fails(&mut self, path: &Path) -> bool {
        let mut fail = false;
        for i in 0..self.sync_faults.len() {
            let (prefix, probability) = &self.sync_faults[i];
            let applies = prefix.as_ref().is_none_or(|p| path.starts_with(p));
            let probability = *probability;
            if applies && self.rng.gen_bool(probability) {
                fail = true;
            }
        }
        if fail {
            self.stats.failed_syncs += 1;
        }
        fail
    }

    /// [`Inner::gc`] once the inodes doubled since the last one (so a disk of many files is
    /// not scanned whole on every close, rename or directory sync), or every time under a
    /// space limit (unreachable inodes would count against it).
    fn gc_amortized(&mut self) {
        if self.space_limit_bytes.is_some() || self.inodes.len() >= 2 * self.inodes_after_gc + 16 {
            self.gc();
        }
    }

    /// Drops inodes nothing can reach any more: no name (current, durable or pending) and no
    /// live handle.
    fn gc(&mut self) {
        let mut live: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        for entry in self.current.values().chain(self.durable.values()) {
            if let Entry::File(inode) = entry {
                live.insert(*inode);
            }
        }
        for (_, op) in self.dir_ops.values().flatten() {
            match op {
                DirOp::Link(_, inode) | DirOp::Rename { inode, .. } => {
                    live.insert(*inode);
                }
                DirOp::Mkdir(_) | DirOp::Unlink(_) => {}
            }
        }
        self.inodes
            .retain(|id, inode| inode.handles > 0 || live.contains(id));
        self.inodes_after_gc = self.inodes.len();
    }

    fn crash(&mut self) {
        self.stats.crashes += 1;
        self.epoch += 1;
        for inode in self.inodes.values_mut() {
            inode.resolve(&mut self.rng);
            inode.handles = 0;
        }
        let mut surviving = Vec::new();
        for ops in std::mem::take(&mut self.dir_ops).into_values() {
            let keep = self.rng.gen_range(0..=ops.len());
            surviving.extend(ops.into_iter().take(keep));
        }
        surviving.sort_by_key(|(seq, _)| *seq);
        for (_, op) in surviving {
            Self::apply_durable(&mut self.durable, op);
        }
        // Entries whose parent directory did not survive vanish with it. Paths sort parents
        // before their descendants, so one ordered pass suffices.
        let mut kept: BTreeMap<PathBuf, Entry> = BTreeMap::new();
        for (path, entry) in std::mem::take(&mut self.durable) {
            let p = path.parent().unwrap_or(Path::new(""));
            if p.as_os_str().is_empty() || kept.get(p) == Some(&Entry::Dir) {
                kept.insert(path, entry);
            }
        }
        self.durable = kept;
        self.current = self.durable.clone();
        self.gc();
    }
}

impl MemDisk {
    /// An empty disk (only the root directory exists) whose random choices all come from a
    /// `ChaCha8Rng` seeded with `seed`.
    pub fn new(seed: u64) -> MemDisk {
        MemDisk {
            inner: Arc::new(Mutex::new(Inner {
                rng: ChaCha8Rng::seed_from_u64(seed),
                epoch: 0,
                next_inode: 1,
                next_seq: 0,
                inodes: BTreeMap::new(),
                inodes_after_gc: 0,
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
                dir_ops: BTreeMap::new(),
                sync_faults: Vec::new(),
                space_limit_bytes: None,
                crash_at_mutation: None,
                defer_syncs: false,
                sync_ticket: 0,
                stats: MemDiskStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Power loss: see the module docs. All open handles die; the disk stays usable.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Flips one random bit of the durable content of `path` in `[offset, offset + len)`.
    /// Returns the byte offset flipped, or `None` if the file is missing or the range holds
    /// no durable byte.
    pub fn corrupt(&self, path: &Path, offset: u64, len: u64) -> Option<u64> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Ok(id) = inner.file(&key(path)) else {
            return None;
        };
        let inode = inner.inodes.get_mut(&id)?;
        let end = offset.saturating_add(len).min(inode.durable.len() as u64);
        if offset >= end {
            return None;
        }
        let pos = inner.rng.gen_range(offset..end);
        let bit = 1u8 << inner.rng.gen_range(0..8u32);
        let index = usize::try_from(pos).ok()?;
        inode.durable[index] ^= bit;
        if !inode.pending_covers(pos) && index < inode.current.len() {
            inode.current[index] ^= bit;
        }
        Some(pos)
    }

    /// Flips one random bit in a random file with durable content; returns where.
    pub fn corrupt_random(&self) -> Option<(PathBuf, u64)> {
        let mut candidates: Vec<(PathBuf, u64)> = {
            let inner = self.lock();
            inner
                .current
                .iter()
                .filter_map(|(path, entry)| match entry {
                    Entry::File(id) => {
                        let len = inner.inodes.get(id).map_or(0, |i| i.durable.len() as u64);
                        (len > 0).then(|| (path.clone(), len))
                    }
                    Entry::Dir => None,
                })
                .collect()
        };
        if candidates.is_empty() {
            return None;
        }
        let pick = self.lock().rng.gen_range(0..candidates.len());
        let (path, len) = candidates.swap_remove(pick);
        let pos = self.corrupt(&path, 0, len)?;
        Some((path, pos))
    }

    /// From now on, each `sync`/`sync_dir` of a path under `path_prefix` (every path if
    /// `None`) fails with `probability`. Rules accumulate; a probability of 0 disables
    /// nothing, use [`MemDisk::clear_sync_faults`].
    pub fn fail_syncs(&self, path_prefix: Option<&Path>, probability: f64) {
        assert!(
            (0.0..=1.0).contains(&probability),
            "probability {probability}"
        );
        self.lock()
            .sync_faults
            .push((path_prefix.map(key), probability));
    }

    /// Removes every rule added by [`MemDisk::fail_syncs`].
    pub fn clear_sync_faults(&self) {
        self.lock().sync_faults.clear();
    }

    /// Bounds the total length of all files (`None`: unbounded).
    pub fn set_space_limit(&self, bytes: Option<u64>) {
        self.lock().space_limit_bytes = bytes;
    }

    /// Length of the durable content of the file at `path` (before any pending operation).
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let inner = self.lock();
        let id = inner.file(&key(path)).ok()?;
        inner.inodes.get(&id).map(|i| i.durable.len() as u64)
    }

    /// Whether the file at `path` has pending (unsynced) operations.
    pub fn has_pending(&self, path: &Path) -> bool {
        let inner = self.lock();
        let Ok(id) = inner.file(&key(path)) else {
            return false;
        };
        inner.inodes.get(&id).is_some_and(|i| !i.pending.is_empty())
    }

    /// Paths of every file visible now, sorted.
    pub fn file_names(&self) -> Vec<PathBuf> {
        self.lock()
            .current
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Schedules a crash at mutating step `step` (counted by [`MemDiskStats::mutations`],
    /// starting at 1 for the first mutation after creation): that operation does not happen,
    /// the disk crashes as [`MemDisk::crash`] does and the call fails with
    /// [`DiskError::Injected`] `{ what: "crashed" }`. Used to crash a component at every step
    /// of a multi-step procedure. `None` cancels.
    pub fn crash_at_mutation(&self, step: Option<u64>) {
        self.lock().crash_at_mutation = step;
    }

    /// From now on (if `on`), a successful file `sync` only starts making the file's pending
    /// operations durable: it tags them with a new ticket ([`MemDisk::last_sync_ticket`]), and
    /// they become durable at [`MemDisk::complete_syncs`]; a crash before then resolves them
    /// as it resolves any pending operation. Models the device latency of a flush.
    pub fn defer_syncs(&self, on: bool) {
        self.lock().defer_syncs = on;
    }

    /// The ticket of the last deferred sync (0 before the first).
    pub fn last_sync_ticket(&self) -> u64 {
        self.lock().sync_ticket
    }

    /// Completes every deferred sync whose ticket is at most `ticket`.
    pub fn complete_syncs(&self, ticket: u64) {
        let mut inner = self.lock();
        for inode in inner.inodes.values_mut() {
            inode.complete_syncs(ticket);
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> MemDiskStats {
        self.lock().stats
    }
}

impl fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemDisk")
            .field("files", &inner.inodes.len())
            .field("epoch", &inner.epoch)
            .field("stats", &inner.stats)
            .finish()
    }
}

impl Disk for MemDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let dir = key(dir);
        let mut inner = self.lock();
        let mut path = PathBuf::new();
        for component in dir.components() {
            path.push(component);
            match inner.current.get(&path) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => {
                    return Err(DiskError::Io {
                        path: path.clone(),
                        source: std::io::Error::other("not a directory"),
                    })
                }
                None => {
                    inner.begin_mutation(&path)?;
                    inner.current.insert(path.clone(), Entry::Dir);
                    inner.log_dir_op(parent(&path), DirOp::Mkdir(path.clone()));
                }
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let path = key(path);
        let mut inner = self.lock();
        if inner.current.contains_key(&path) {
            return Err(DiskError::AlreadyExists(path));
        }
        if !inner.is_dir(&parent(&path)) {
            return Err(DiskError::NotFound(path));
        }
        inner.begin_mutation(&path)?;
        let id = inner.next_inode;
        inner.next_inode += 1;
        inner.inodes.insert(
            id,
            Inode {
                handles: 1,
                ..Inode::default()
            },
        );
        inner.current.insert(path.clone(), Entry::File(id));
        inner.log_dir_op(parent(&path), DirOp::Link(path.clone(), id));
        Ok(Box::new(MemFile {
            inner: Arc::clone(&self.inner),
            inode: id,
            epoch: inner.epoch,
            path,
            poisoned: false,
        }))
    }

    fn open(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let path = key(path);
        let mut inner = self.lock();
        let id = inner.file(&path)?;
        inner
            .inodes
            .get_mut(&id)
            .expect("a named inode exists")
            .handles += 1;
        Ok(Box::new(MemFile {
            inner: Arc::clone(&self.inner),
            inode: id,
            epoch: inner.epoch,
            path,
            poisoned: false,
        }))
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        let path = key(path);
        let inner = self.lock();
        Ok(inner.is_dir(&path) || inner.current.contains_key(&path))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let dir = key(dir);
        let inner = self.lock();
        if !inner.is_dir(&dir) {
            return Err(DiskError::NotFound(dir));
        }
        // A directory's descendants sort right after it.
        let mut names: Vec<String> = inner
            .current
            .range(dir.clone()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(&dir))
            .filter(|p| p.parent().unwrap_or(Path::new("")) == dir)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        let (from, to) = (key(from), key(to));
        let mut inner = self.lock();
        let id = inner.file(&from)?;
        if !inner.is_dir(&parent(&to)) {
            return Err(DiskError::NotFound(to));
        }
        if inner.current.get(&to) == Some(&Entry::Dir) {
            return Err(DiskError::Io {
                path: to,
                source: std::io::Error::other("is a directory"),
            });
        }
        if from == to {
            return Ok(());
        }
        inner.begin_mutation(&to)?;
        inner.current.remove(&from);
        inner.current.insert(to.clone(), Entry::File(id));
        let dir = parent(&to);
        inner.log_dir_op(
            dir,
            DirOp::Rename {
                from,
                to,
                inode: id,
            },
        );
        inner.gc_amortized();
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let path = key(path);
        let mut inner = self.lock();
        inner.file(&path)?;
        inner.begin_mutation(&path)?;
        inner.current.remove(&path);
        inner.log_dir_op(parent(&path), DirOp::Unlink(path));
        inner.gc_amortized();
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let dir = key(dir);
        let mut inner = self.lock();
        if !inner.is_dir(&dir) {
            return Err(DiskError::NotFound(dir));
        }
        inner.begin_mutation(&dir)?;
        if inner.sync_fails(&dir) {
            return Err(DiskError::Injected {
                path: dir,
                what: "sync failed",
            });
        }
        inner.stats.dir_syncs += 1;
        let ops = inner.dir_ops.remove(&dir).unwrap_or_default();
        for (_, op) in ops {
            Inner::apply_durable(&mut inner.durable, op);
        }
        inner.gc_amortized();
        Ok(())
    }
}

/// An open file of a [`MemDisk`].
struct MemFile {
    inner: Arc<Mutex<Inner>>,
    inode: u64,
    epoch: u64,
    path: PathBuf,
    poisoned: bool,
}

impl MemFile {
    /// Locks the disk and checks that this handle is still usable.
    fn live(&self) -> Result<MutexGuard<'_, Inner>, DiskError> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != self.epoch {
            return Err(DiskError::Injected {
                path: self.path.clone(),
                what: "crashed",
            });
        }
        if self.poisoned {
            return Err(DiskError::Poisoned(self.path.clone()));
        }
        Ok(inner)
    }
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFile")
            .field("path", &self.path)
            .field("inode", &self.inode)
            .field("epoch", &self.epoch)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.epoch == self.epoch {
            if let Some(inode) = inner.inodes.get_mut(&self.inode) {
                inode.handles -= 1;
            }
            inner.gc_amortized();
        }
    }
}

impl DiskFile for MemFile {
    /// The visible length; 0 for a handle killed by a crash.
    fn len(&self) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != self.epoch {
            return 0;
        }
        inner
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let inner = self.live()?;
        let inode = inner.inodes.get(&self.inode).expect("open inode exists");
        let len = inode.current.len() as u64;
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= len => {
                let start = usize::try_from(offset).expect("offset below a memory length");
                buf.copy_from_slice(&inode.current[start..start + buf.len()]);
                Ok(())
            }
            _ => Err(DiskError::ShortRead {
                path: self.path.clone(),
                offset,
                wanted: buf.len(),
                len,
            }),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let mut inner = self.live()?;
        let old_len = inner.inodes[&self.inode].current.len() as u64;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| DiskError::NoSpace(self.path.clone()))?;
        inner.check_space(&self.path, old_len, old_len.max(end))?;
        inner.begin_mutation(&self.path)?;
        inner.stats.bytes_written += data.len() as u64;
        let inode = inner
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        apply_write(&mut inode.current, offset, data);
        inode.pending.push(PendingOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<(), DiskError> {
        let mut inner = self.live()?;
        let old_len = inner.inodes[&self.inode].current.len() as u64;
        inner.check_space(&self.path, old_len, len)?;
        inner.begin_mutation(&self.path)?;
        let inode = inner
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        apply_set_len(&mut inode.current, len);
        inode.pending.push(PendingOp::SetLen(len));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        let failed = {
            let mut guard = self.live()?;
            let inner = &mut *guard;
            inner.begin_mutation(&self.path)?;
            let failed = inner.sync_fails(&self.path);
            let inode = inner
                .inodes
                .get_mut(&self.inode)
                .expect("open inode exists");
            if failed {
                inode.resolve(&mut inner.rng);
            } else if inner.defer_syncs {
                inner.stats.syncs += 1;
                inner.sync_ticket += 1;
                let covered = inode.pending.len();
                if inode.flushing.last().is_none_or(|(_, n)| *n < covered) {
                    inode.flushing.push((inner.sync_ticket, covered));
                }
            } else {
                inner.stats.syncs += 1;
                inode.flushing.clear();
                inode.make_durable(inode.pending.len());
                debug_assert!(
                    inode.durable == inode.current,
                    "replay equals the visible file"
                );
            }
            failed
        };
        if failed {
            self.poisoned = true;
            return Err(DiskError::Injected {
                path: self.path.clone(),
                what: "sync failed",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(disk: &MemDisk, path: &str) -> Vec<u8> {
        let file = disk.open(Path::new(path)).expect("open");
        let mut buf = vec![0; file.len() as usize];
        file.read_at(0, &mut buf).expect("read");
        buf
    }

    /// A disk with a durable, empty directory `d`.
    fn disk_with_dir(seed: u64) -> MemDisk {
        let disk = MemDisk::new(seed);
        disk.create_dir_all(Path::new("d")).expect("mkdir");
        disk.sync_dir(Path::new("")).expect("sync root");
        disk
    }

    #[test]
    fn deferred_syncs_are_durable_only_once_completed() {
        let mut lost = 0;
        for seed in 0..32 {
            let disk = disk_with_dir(seed);
            disk.defer_syncs(true);
            let mut file = disk.create(Path::new("d/f")).expect("create");
            disk.sync_dir(Path::new("d")).expect("sync_dir");
            file.write_at(0, &[1; 10]).expect("write");
            file.sync().expect("sync");
            let first = disk.last_sync_ticket();
            file.write_at(10, &[2; 10]).expect("write");
            file.sync().expect("sync");
            file.write_at(20, &[3; 10]).expect("write");
            disk.complete_syncs(first);
            assert_eq!(disk.durable_len(Path::new("d/f")), Some(10), "seed {seed}");
            disk.crash();
            let content = read_all(&disk, "d/f");
            assert_eq!(
                content[..10],
                [1; 10],
                "seed {seed}: the completed sync holds"
            );
            lost += usize::from(content.len() < 20);
        }
        assert!(lost > 0, "an uncompleted sync can be lost");
        let disk = disk_with_dir(1);
        disk.defer_syncs(true);
        let mut file = disk.create(Path::new("d/f")).expect("create");
        disk.sync_dir(Path::new("d")).expect("sync_dir");
        file.write_at(0, &[1; 10]).expect("write");
        file.sync().expect("sync");
        disk.complete_syncs(disk.last_sync_ticket());
        disk.crash();
        assert_eq!(read_all(&disk, "d/f"), [1; 10]);
    }

    #[test]
    fn crash_drops_keeps_or_tears_pending_writes() {
        let (mut dropped, mut kept, mut torn) = (0, 0, 0);
        for seed in 0..64 {
            let disk = disk_with_dir(seed);
            let mut file = disk.create(Path::new("d/f")).expect("create");
            disk.sync_dir(Path::new("d")).expect("sync_dir");
            file.write_at(0, &[7; 100]).expect("write");
            disk.crash();
            let content = read_all(&disk, "d/f");
            assert!(content.iter().all(|b| *b == 7), "seed {seed}");
            match content.len() {
                0 => dropped += 1,
                100 => kept += 1,
                _ => torn += 1,
            }
        }
        assert!(
            dropped > 0 && kept > 0 && torn > 0,
            "{dropped} {kept} {torn}"
        );
    }

    #[test]
    fn a_later_write_may_survive_an_earlier_lost_one() {
        let mut hole = false;
        for seed in 0..64 {
            let disk = disk_with_dir(seed);
            let mut file = disk.create(Path::new("d/f")).expect("create");
            disk.sync_dir(Path::new("d")).expect("sync_dir");
            file.write_at(0, b"aaaa").expect("write");
            file.write_at(4, b"bbbb").expect("write");
            disk.crash();
            hole |= read_all(&disk, "d/f") == b"\0\0\0\0bbbb";
        }
        assert!(hole, "no seed left a hole before a surviving write");
    }

    #[test]
    fn unsynced_entries_vanish_or_survive_with_their_directory() {
        let (mut vanished, mut survived) = (0, 0);
        for seed in 0..64 {
            let disk = MemDisk::new(seed);
            disk.create_dir_all(Path::new("a/b")).expect("mkdir");
            let mut file = disk.create(Path::new("a/b/f")).expect("create");
            file.sync().expect("sync data");
            disk.sync_dir(Path::new("a/b"))
                .expect("sync only the innermost dir");
            disk.crash();
            if disk.exists(Path::new("a/b/f")).expect("exists") {
                survived += 1;
            } else {
                vanished += 1;
            }
            // Fully synced, the file survives every crash.
            disk.create_dir_all(Path::new("a/b")).expect("mkdir");
            if !disk.exists(Path::new("a/b/f")).expect("exists") {
                disk.create(Path::new("a/b/f")).expect("create");
            }
            for dir in ["a/b", "a", ""] {
                disk.sync_dir(Path::new(dir)).expect("sync_dir");
            }
            disk.crash();
            assert!(
                disk.exists(Path::new("a/b/f")).expect("exists"),
                "seed {seed}"
            );
        }
        assert!(vanished > 0 && survived > 0, "{vanished} {survived}");
    }

    #[test]
    fn same_seed_same_outcome() {
        let run = |seed| {
            let disk = disk_with_dir(seed);
            for i in 0..4u8 {
                let mut file = disk.create(Path::new(&format!("d/f{i}"))).expect("create");
                file.write_at(0, &[i; 64]).expect("write");
            }
            disk.crash();
            let mut out = Vec::new();
            for name in disk.file_names() {
                out.push((name.clone(), read_all(&disk, &name.to_string_lossy())));
            }
            out
        };
        assert_eq!(run(5), run(5));
        let differs = (0..8).any(|s| run(s) != run(5));
        assert!(differs, "every seed gave the same outcome");
    }

    #[test]
    fn corrupt_flips_exactly_one_durable_bit_in_range() {
        let disk = disk_with_dir(1);
        let mut file = disk.create(Path::new("d/f")).expect("create");
        file.write_at(0, &[0; 32]).expect("write");
        file.sync().expect("sync");
        let pos = disk.corrupt(Path::new("d/f"), 8, 4).expect("corrupted");
        assert!((8..12).contains(&pos));
        let content = read_all(&disk, "d/f");
        let ones: u32 = content.iter().map(|b| b.count_ones()).sum();
        assert_eq!(ones, 1);
        assert_ne!(content[pos as usize], 0);
        assert_eq!(disk.corrupt(Path::new("d/f"), 32, 8), None, "past the end");
        assert_eq!(
            disk.corrupt(Path::new("d/none"), 0, 8),
            None,
            "missing file"
        );
    }

    #[test]
    fn corruption_under_a_pending_write_shows_after_the_write_is_lost() {
        let disk = disk_with_dir(2);
        let mut file = disk.create(Path::new("d/f")).expect("create");
        disk.sync_dir(Path::new("d")).expect("sync_dir");
        file.write_at(0, &[0; 8]).expect("write");
        file.sync().expect("sync");
        file.write_at(0, &[0; 8]).expect("pending rewrite");
        disk.corrupt(Path::new("d/f"), 0, 8).expect("corrupted");
        assert_eq!(read_all(&disk, "d/f"), [0; 8], "the pending write hides it");
        assert!(disk.has_pending(Path::new("d/f")));
        assert_eq!(disk.durable_len(Path::new("d/f")), Some(8));
    }

    #[test]
    fn corrupt_random_picks_a_non_empty_file() {
        let disk = disk_with_dir(3);
        assert_eq!(disk.corrupt_random(), None);
        disk.create(Path::new("d/empty")).expect("create");
        let mut file = disk.create(Path::new("d/full")).expect("create");
        file.write_at(0, &[0; 16]).expect("write");
        assert_eq!(disk.corrupt_random(), None, "nothing durable yet");
        file.sync().expect("sync");
        let (path, pos) = disk.corrupt_random().expect("corrupted");
        assert_eq!(path, Path::new("d/full"));
        assert!(pos < 16);
    }

    #[test]
    fn space_limit_rejects_growth_and_changes_nothing() {
        let disk = disk_with_dir(4);
        disk.set_space_limit(Some(10));
        let mut file = disk.create(Path::new("d/f")).expect("create");
        file.write_at(0, &[1; 8]).expect("fits");
        let err = file.write_at(8, &[1; 3]).expect_err("over the limit");
        assert!(matches!(err, DiskError::NoSpace(_)), "{err:?}");
        let err = file.set_len(11).expect_err("over the limit");
        assert!(matches!(err, DiskError::NoSpace(_)), "{err:?}");
        assert_eq!(file.len(), 8);
        file.write_at(0, &[2; 8])
            .expect("overwriting needs no space");
        disk.set_space_limit(None);
        file.write_at(8, &[1; 3]).expect("unbounded");
    }

    #[test]
    fn sync_faults_apply_under_their_prefix_only() {
        let disk = disk_with_dir(5);
        disk.create_dir_all(Path::new("e")).expect("mkdir");
        disk.fail_syncs(Some(Path::new("d")), 1.0);
        let mut in_d = disk.create(Path::new("d/f")).expect("create");
        let mut in_e = disk.create(Path::new("e/f")).expect("create");
        in_e.sync().expect("outside the prefix");
        disk.sync_dir(Path::new("e")).expect("outside the prefix");
        let err = in_d.sync().expect_err("injected");
        assert!(
            matches!(
                err,
                DiskError::Injected {
                    what: "sync failed",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(disk.sync_dir(Path::new("d")).is_err());
        disk.clear_sync_faults();
        let err = in_d.sync().expect_err("poisoned");
        assert!(matches!(err, DiskError::Poisoned(_)), "{err:?}");
        let mut reopened = disk.open(Path::new("d/f")).expect("reopen");
        reopened.sync().expect("a new handle works");
        assert_eq!(disk.stats().failed_syncs, 2);
    }

    #[test]
    fn crash_at_mutation_stops_the_operation_and_crashes() {
        let disk = MemDisk::new(6);
        disk.create_dir_all(Path::new("d")).expect("mkdir"); // step 1
        disk.sync_dir(Path::new("")).expect("sync root"); // step 2
        let mut file = disk.create(Path::new("d/f")).expect("create"); // step 3
        disk.sync_dir(Path::new("d")).expect("sync d"); // step 4
        file.write_at(0, b"abc").expect("write"); // step 5
        file.sync().expect("sync"); // step 6
        assert_eq!(disk.stats().mutations, 6);
        disk.crash_at_mutation(Some(7));
        let err = file.write_at(3, b"def").expect_err("crashed");
        assert!(
            matches!(
                err,
                DiskError::Injected {
                    what: "crashed",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(disk.stats().crashes, 1);
        assert_eq!(read_all(&disk, "d/f"), b"abc");
        let err = file.sync().expect_err("dead handle");
        assert!(
            matches!(
                err,
                DiskError::Injected {
                    what: "crashed",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn stats_count_syncs_and_bytes() {
        let disk = disk_with_dir(7);
        let mut file = disk.create(Path::new("d/f")).expect("create");
        file.write_at(0, &[0; 10]).expect("write");
        file.write_at(10, &[0; 5]).expect("write");
        file.sync().expect("sync");
        let stats = disk.stats();
        assert_eq!(stats.bytes_written, 15);
        assert_eq!(stats.syncs, 1);
        assert_eq!(stats.dir_syncs, 1);
    }

    #[test]
    fn removed_files_are_freed() {
        let disk = disk_with_dir(8);
        for _ in 0..100 {
            let mut file = disk.create(Path::new("d/f")).expect("create");
            file.write_at(0, &[0; 10]).expect("write");
            drop(file);
            disk.remove(Path::new("d/f")).expect("remove");
            disk.sync_dir(Path::new("d")).expect("sync_dir");
        }
        // Collected in amortized passes: never more than a few unreachable inodes.
        let left = disk.lock().inodes.len();
        assert!(left <= 17, "{left} inodes");
        disk.lock().gc();
        assert!(disk.lock().inodes.is_empty());
    }
}
