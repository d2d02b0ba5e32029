//! Replication benchmark: three Raft nodes in one process over loopback TCP with FileDisk,
//! 100-byte records in 16 KiB batches, committed with acks=all; printed beside the raw
//! limit of the same disk (a write + fdatasync loop of the same batch size) measured in the
//! same run.
//!
//! `cargo bench --bench replication` (env: `BENCH_SECONDS`, default 5 per phase).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord::runtime::{TcpNetwork, ThreadDiskJobs, TokioClock};
use fjord_log::{Disk, FileDisk, LogConfig, RecordSpec};
use fjord_replication::multiraft::{GroupId, MultiRaft, MultiRaftConfig};
use fjord_replication::node::{run_node, Acks, NodeLoopConfig, RaftNodeHandle};
use fjord_replication::raft::{Membership, Role};
use fjord_replication::{Clock, NodeId};
use futures::stream::{FuturesUnordered, StreamExt};

const GROUP: GroupId = GroupId {
    topic: 1,
    partition: 0,
};
const RECORD_BYTES: usize = 100;
const BATCH_BYTES: usize = 16 * 1024;

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0)
}

/// One batch of ~16 KiB of 100-byte records, and its record count.
fn template() -> (Bytes, usize) {
    let value = Bytes::from(vec![b'x'; RECORD_BYTES - 20]);
    let mut records = Vec::new();
    loop {
        records.push(RecordSpec {
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        });
        let b = fjord_log::build_batch(&records, &Default::default()).expect("batch");
        if b.len() >= BATCH_BYTES - RECORD_BYTES {
            return (b, records.len());
        }
    }
}

struct Figures {
    batches: usize,
    bytes: usize,
    records: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    fn records_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn batches_s(&self) -> f64 {
        self.batches as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i]
    }
}

/// The disk's limit: append `per_sync` batches, fdatasync, repeat.
fn raw_limit(dir: &Path, batch: &Bytes, records: usize, per_sync: usize) -> Figures {
    let path = dir.join(format!("raw-{per_sync}"));
    let mut f = std::fs::File::create(&path).expect("create");
    let limit = Duration::from_secs_f64(seconds());
    let start = now();
    let mut batches = 0;
    let mut latencies = Vec::new();
    while start.elapsed() < limit {
        let t = now();
        for _ in 0..per_sync {
            f.write_all(batch).expect("write");
        }
        f.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
        batches += per_sync;
    }
    Figures {
        batches,
        bytes: batches * batch.len(),
        records: batches * records,
        elapsed: start.elapsed(),
        latencies,
    }
}

async fn start_cluster(dirs: &[tempfile::TempDir]) -> BTreeMap<NodeId, RaftNodeHandle> {
    let mut addrs = BTreeMap::new();
    for i in 1..=3u32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        addrs.insert(NodeId(i), l.local_addr().expect("addr"));
    }
    let mut handles = BTreeMap::new();
    for (i, (id, addr)) in addrs.iter().enumerate() {
        let disk: Arc<dyn Disk> = Arc::new(FileDisk::new(dirs[i].path()));
        let mut cfg = MultiRaftConfig::new(*id, "", u64::from(id.0));
        cfg.raft.append_size_max_bytes = 1024 * 1024;
        let mut multi = MultiRaft::open(cfg, disk).expect("open");
        multi.set_disk_jobs(Arc::new(ThreadDiskJobs));
        multi
            .create_group(
                GROUP,
                Membership::with_voters(addrs.keys().copied()),
                LogConfig::default(),
            )
            .expect("group");
        let peers: BTreeMap<NodeId, SocketAddr> = addrs
            .iter()
            .filter(|(p, _)| *p != id)
            .map(|(p, a)| (*p, *a))
            .collect();
        let network = TcpNetwork::start(*id, *addr, peers).await.expect("network");
        let (handle, rx) = RaftNodeHandle::channel();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        tokio::spawn(run_node(
            clock,
            network,
            multi,
            rx,
            NodeLoopConfig::default(),
        ));
        handles.insert(*id, handle);
    }
    handles
}

async fn leader(handles: &BTreeMap<NodeId, RaftNodeHandle>) -> RaftNodeHandle {
    loop {
        for h in handles.values() {
            if h.status(GROUP)
                .await
                .is_some_and(|s| s.role == Role::Leader)
            {
                return h.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Proposes batches with `window` in flight (or at `rate` batches/s when given).
async fn load(
    leader: &RaftNodeHandle,
    batch: &Bytes,
    records: usize,
    window: usize,
    rate: Option<f64>,
) -> Figures {
    let limit = Duration::from_secs_f64(seconds());
    let start = now();
    let mut inflight = FuturesUnordered::new();
    let mut latencies = Vec::new();
    let mut sent = 0usize;
    loop {
        let due = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r) as usize,
            None => usize::MAX,
        };
        while start.elapsed() < limit && inflight.len() < window && sent < due {
            let h = leader.clone();
            let b = BytesMut::from(&batch[..]);
            sent += 1;
            inflight.push(async move {
                let t = now();
                h.propose(GROUP, b, Acks::Quorum).await.expect("commit");
                t.elapsed()
            });
        }
        if start.elapsed() >= limit && inflight.is_empty() {
            break;
        }
        if rate.is_some() && inflight.len() < window && start.elapsed() < limit {
            tokio::select! {
                Some(l) = inflight.next() => latencies.push(l),
                () = tokio::time::sleep(Duration::from_micros(200)) => {}
            }
        } else if let Some(l) = inflight.next().await {
            latencies.push(l);
        }
    }
    let n = latencies.len();
    Figures {
        batches: n,
        bytes: n * batch.len(),
        records: n * records,
        elapsed: start.elapsed(),
        latencies,
    }
}

fn row(name: &str, f: &mut Figures, raw: &Figures) {
    println!(
        "{name:<34} {:>9.1} MB/s {:>11.0} rec/s {:>8.0} batch/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>5.0}% of raw MB/s",
        f.mb_s(),
        f.records_s(),
        f.batches_s(),
        f.pct(0.50).as_secs_f64() * 1e3,
        f.pct(0.99).as_secs_f64() * 1e3,
        100.0 * f.mb_s() / raw.mb_s()
    );
}

fn main() {
    let (batch, records) = template();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    println!(
        "replication benchmark: 3 nodes, loopback TCP, FileDisk, {records} x {RECORD_BYTES} B records per {} B batch, acks=all",
        batch.len()
    );
    let mut raw = raw_limit(dirs[3].path(), &batch, records, 1);
    let mut raw_mib = raw_limit(dirs[3].path(), &batch, records, 64);
    let raw_copy = Figures {
        latencies: Vec::new(),
        ..raw_mib
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut peak, mut half) = rt.block_on(async {
        let handles = start_cluster(&dirs[..3]).await;
        let leader = leader(&handles).await;
        // Warm up.
        for _ in 0..50 {
            leader
                .propose(GROUP, BytesMut::from(&batch[..]), Acks::Quorum)
                .await
                .expect("warm-up");
        }
        let peak = load(&leader, &batch, records, 256, None).await;
        let half_rate = peak.batches_s() / 2.0;
        let half = load(&leader, &batch, records, 256, Some(half_rate)).await;
        (peak, half)
    });
    println!("(latency of raw rows: one write+fdatasync; % column: of the 1 MiB-per-fdatasync raw limit)");
    row("raw: fdatasync every batch", &mut raw, &raw_copy);
    row("raw: fdatasync every 1 MiB", &mut raw_mib, &raw_copy);
    row("replicated, peak (256 in flight)", &mut peak, &raw_copy);
    row("replicated, half of peak rate", &mut half, &raw_copy);
}
