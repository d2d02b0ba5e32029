//! `SimDisk`: a node incarnation's disk, on a [`MemDisk`] device that outlives the node.
//!
//! The device ([`SimDevice`]) is fjord-log's [`MemDisk`], which implements the whole fault
//! model of `fjord_log::disk`: writes are pending until `sync`; a crash (power loss) drops,
//! keeps or tears each pending write and keeps a prefix of each directory's unsynced entry
//! operations; `sync` can fail; bits can flip at rest. Each incarnation of the node gets a
//! [`SimDisk`] view of the device which adds what only the simulator knows:
//!
//! * **A failed sync is fatal.** The first failed `sync`/`sync_dir` stops the incarnation:
//!   every later operation of this view fails, its network endpoint goes down at once (so it
//!   cannot acknowledge anything), and the world crashes and restarts the node from what is
//!   durable. The node never continues past a failed sync.
//! * **Latency** is accounted, not blocked on: each operation adds a sampled service time to
//!   the device's busy-until time, and [`SimDisk::settle`] sleeps until the device has done
//!   everything issued so far. A driver awaits it before reporting durability (e.g. after
//!   `sync`).
//! * **Deferred syncs** ([`SimDevice::defer_syncs`], off by default): a file `sync` issued at
//!   time `t` makes its writes durable only once the device completes it (`t` plus its
//!   service time, after everything queued before it); a crash earlier resolves them like
//!   unsynced writes, so a node that acknowledges before [`SimDisk::settle`] can lose what it
//!   acknowledged. Workloads switch it on to inject "acknowledge before the fsync completes".
//!   It is not the default because it is not a faithful model of a correct node: a real
//!   `fsync` blocks the process, so nothing issued after it can become durable before it,
//!   whereas here later writes and `sync_dir`s (which stay immediate) can. Modelling that
//!   ordering (dropping, at a crash, everything issued after the first incomplete sync) is
//!   what a default-on version needs.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_log::testing::MemDisk;
use fjord_log::{Disk, DiskError, DiskFile};
use fjord_replication::NodeId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faults::DiskParams;
use crate::time;

/// Called when an incarnation hits a fatal disk error: `(node, incarnation, what)`.
pub type FatalHook = Arc<dyn Fn(NodeId, u32, String) + Send + Sync>;

/// One node's storage device: survives the node's crashes and restarts.
#[derive(Clone)]
pub struct SimDevice {
    pub mem: MemDisk,
    timing: Arc<Mutex<Timing>>,
    now: time::Now,
}

struct Timing {
    rng: ChaCha8Rng,
    params: DiskParams,
    busy_until: Duration,
    /// Deferred syncs issued and not yet completed: `(completion time, MemDisk ticket)`, in
    /// order (empty unless [`SimDevice::defer_syncs`]).
    in_flight: VecDeque<(Duration, u64)>,
    defer_syncs: bool,
}

impl Timing {
    /// Pops the deferred syncs completed by `now`; the last one's ticket.
    fn due(&mut self, now: Duration) -> Option<u64> {
        let mut done = None;
        while self.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            done = self.in_flight.pop_front().map(|(_, ticket)| ticket);
        }
        done
    }
}

impl fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDevice").finish_non_exhaustive()
    }
}

impl SimDevice {
    /// A blank device: `mem_seed` drives MemDisk's own choices (torn writes, failed syncs,
    /// flipped bits), `rng` the latencies.
    pub fn new(mem_seed: u64, rng: ChaCha8Rng, params: DiskParams) -> Self {
        let mem = MemDisk::new(mem_seed);
        if params.sync_fail > 0.0 {
            mem.fail_syncs(None, params.sync_fail);
        }
        SimDevice {
            mem,
            timing: Arc::new(Mutex::new(Timing {
                rng,
                params,
                busy_until: Duration::ZERO,
                in_flight: VecDeque::new(),
                defer_syncs: false,
            })),
            now: time::Now::current(),
        }
    }

    /// Stops injecting sync failures (the heal phase).
    pub fn heal(&self) {
        self.mem.clear_sync_faults();
        self.timing
            .lock()
            .expect("disk timing poisoned")
            .params
            .sync_fail = 0.0;
    }

    /// From now on a file `sync` takes effect only when the device completes it (see the
    /// module docs).
    pub fn defer_syncs(&self) {
        self.timing
            .lock()
            .expect("disk timing poisoned")
            .defer_syncs = true;
        self.mem.defer_syncs(true);
    }

    /// Power loss: completes the syncs the device finished by now, then crashes the MemDisk
    /// (everything else pending is dropped, kept or torn).
    pub fn crash(&self) {
        self.complete_due();
        self.timing
            .lock()
            .expect("disk timing poisoned")
            .in_flight
            .clear();
        self.mem.crash();
    }

    /// Makes durable the syncs the device has completed by now.
    fn complete_due(&self) {
        let now = self.now.get();
        let done = {
            let mut t = self.timing.lock().expect("disk timing poisoned");
            t.due(now)
        };
        if let Some(ticket) = done {
            self.mem.complete_syncs(ticket);
        }
    }

    /// A sync was issued (and charged): it completes when the device is done with it.
    fn issued_sync(&self) {
        let mut t = self.timing.lock().expect("disk timing poisoned");
        if !t.defer_syncs {
            return;
        }
        let ticket = self.mem.last_sync_ticket();
        let at = t.busy_until;
        t.in_flight.push_back((at, ticket));
    }

    /// Accounts one operation's service time (completing the deferred syncs done by now).
    fn charge(&self, sync: bool) {
        let now = self.now.get();
        let done = {
            let mut t = self.timing.lock().expect("disk timing poisoned");
            let done = t.due(now);
            let mean = if sync {
                t.params.sync_latency_mean
            } else {
                t.params.op_latency_mean
            };
            let u: f64 = t.rng.gen();
            let service = Duration::from_secs_f64(-mean.as_secs_f64() * (1.0 - u).ln());
            t.busy_until = t.busy_until.max(now) + service;
            done
        };
        if let Some(ticket) = done {
            self.mem.complete_syncs(ticket);
        }
    }

    fn busy_until(&self) -> Duration {
        self.timing.lock().expect("disk timing poisoned").busy_until
    }
}

/// One incarnation's state shared by its disk view and its files.
struct Incarnation {
    node: NodeId,
    incarnation: u32,
    device: SimDevice,
    stopped: AtomicBool,
    on_fatal: FatalHook,
}

impl Incarnation {
    fn check(&self, path: &Path) -> Result<(), DiskError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(DiskError::Injected {
                path: path.to_path_buf(),
                what: "node stopping after a failed sync",
            });
        }
        Ok(())
    }

    fn fatal<T>(&self, path: &Path, result: Result<T, DiskError>) -> Result<T, DiskError> {
        if let Err(e) = &result {
            if !self.stopped.swap(true, Ordering::Relaxed) {
                tracing::info!(node = %self.node, path = %path.display(), error = %e, "sync failed: node stops");
                (self.on_fatal)(self.node, self.incarnation, format!("sync failed: {e}"));
            }
        }
        result
    }
}

/// A node incarnation's disk: implements [`Disk`] over its [`SimDevice`].
#[derive(Clone)]
pub struct SimDisk {
    inc: Arc<Incarnation>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("node", &self.inc.node)
            .field("incarnation", &self.inc.incarnation)
            .finish()
    }
}

impl SimDisk {
    /// The view of incarnation `incarnation` of `node` on `device`. `on_fatal` is called
    /// once, on the first failed sync.
    pub fn new(node: NodeId, incarnation: u32, device: SimDevice, on_fatal: FatalHook) -> Self {
        SimDisk {
            inc: Arc::new(Incarnation {
                node,
                incarnation,
                device,
                stopped: AtomicBool::new(false),
                on_fatal,
            }),
        }
    }

    /// The device under this view.
    pub fn device(&self) -> &SimDevice {
        &self.inc.device
    }

    /// Whether a failed sync stopped this incarnation.
    pub fn is_stopped(&self) -> bool {
        self.inc.stopped.load(Ordering::Relaxed)
    }

    /// Completes when the device has served every operation issued so far (simulated
    /// latency; see the module docs).
    pub fn settle(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let device = self.inc.device.clone();
        let at = device.busy_until();
        async move {
            time::sleep_until(at).await;
            device.complete_due();
        }
    }

    fn op<T>(
        &self,
        path: &Path,
        f: impl FnOnce(&MemDisk) -> Result<T, DiskError>,
    ) -> Result<T, DiskError> {
        self.inc.check(path)?;
        self.inc.device.charge(false);
        f(&self.inc.device.mem)
    }

    fn named(&self, file: Box<dyn DiskFile>, path: &Path) -> Box<dyn DiskFile> {
        Box::new(SimFile {
            inc: self.inc.clone(),
            path: path.to_path_buf(),
            inner: file,
        })
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        self.op(dir, |m| m.create_dir_all(dir))
    }

    fn create(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let f = self.op(path, |m| m.create(path))?;
        Ok(self.named(f, path))
    }

    fn open(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let f = self.op(path, |m| m.open(path))?;
        Ok(self.named(f, path))
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        self.op(path, |m| m.exists(path))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.op(dir, |m| m.list(dir))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        self.op(from, |m| m.rename(from, to))
    }

    fn remove(&self, path: &Path) -> Result<(), DiskError> {
        self.op(path, |m| m.remove(path))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        self.inc.check(dir)?;
        self.inc.device.charge(true);
        let result = self.inc.device.mem.sync_dir(dir);
        self.inc.fatal(dir, result)
    }
}

/// An open file of a [`SimDisk`].
struct SimFile {
    inc: Arc<Incarnation>,
    path: std::path::PathBuf,
    inner: Box<dyn DiskFile>,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("path", &self.path).finish()
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.inc.check(&self.path)?;
        self.inc.device.charge(false);
        self.inner.read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.inc.check(&self.path)?;
        self.inc.device.charge(false);
        self.inner.write_at(offset, data)
    }

    fn set_len(&mut self, len: u64) -> Result<(), DiskError> {
        self.inc.check(&self.path)?;
        self.inc.device.charge(false);
        self.inner.set_len(len)
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.inc.check(&self.path)?;
        self.inc.device.charge(true);
        let result = self.inner.sync();
        if result.is_ok() {
            self.inc.device.issued_sync();
        }
        self.inc.fatal(&self.path, result)
    }
}
