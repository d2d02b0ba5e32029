//! `toy`: a small fixed-leader replicated log, the engine's own workload.
//!
//! It exists to exercise the whole simulator — nodes on the IO traits, SimDisk durability,
//! every fault class it is meant to survive, clients recording a history, liveness, final
//! reads, the checks and bug injection — until the real fjord workload is wired in, and
//! afterwards as a fast self-test of the engine. It is deliberately simple:
//!
//! * Node 1 is the leader forever (no elections: while it is down, writes time out). Its log
//!   is the truth and only grows: it syncs an entry *before* replicating it, so followers
//!   only ever hold prefixes of it.
//! * Followers append what the leader sends at their log end, sync, and acknowledge their
//!   durable length. An entry is committed once a majority (leader included) has it durable;
//!   the leader then acks the writes and serves reads up to the commit point.
//! * A log is one file of 16-byte records `(value, check)`; recovery keeps the longest prefix
//!   of intact records. A flipped bit therefore loses data, so the toy does not claim to
//!   survive [`FaultClass::Corrupt`].
//!
//! Bug `ack-before-fsync`: the leader counts its own entries durable as soon as they are
//! written and syncs only on its timer; a crash then loses acknowledged writes.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fjord_log::DiskFile;
use fjord_replication::{BoxFuture, Envelope, NodeId};
use futures::future::{select, Either};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::faults::FaultClass;
use crate::history::{Offset, ReaderId, Value};
use crate::workload::{ClientEnv, NodeIo, Recorder, Workload, WorkloadKind, WorldInfo};

/// The registration of the toy workload.
pub const KIND: WorkloadKind = WorkloadKind {
    name: "toy",
    bugs: &[ACK_BEFORE_FSYNC],
    faults: &[
        FaultClass::Crash,
        FaultClass::Pause,
        FaultClass::Partition,
        FaultClass::OneWay,
        FaultClass::Isolate,
        FaultClass::Split,
        FaultClass::Clog,
        FaultClass::Loss,
        FaultClass::Duplicate,
        FaultClass::Reorder,
        FaultClass::SyncFail,
        FaultClass::ClockDrift,
        FaultClass::PowerLoss,
    ],
    build,
};

pub const ACK_BEFORE_FSYNC: &str = "ack-before-fsync";

const LEADER: NodeId = NodeId(1);
const PARTITION: u32 = 0;
const LOG_DIR: &str = "toy";
const LOG_FILE: &str = "toy/log";
const RECORD_BYTES: u64 = 16;
/// Leader/follower timer: heartbeats, retransmissions, lazy syncs.
const TICK: Duration = Duration::from_millis(20);
/// Entries per append message.
const APPEND_ENTRIES_MAX: usize = 64;
/// Records per read reply.
const READ_RECORDS_MAX: u64 = 100;
/// A client gives up on a request after this long (the outcome is then indeterminate).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Replicas report their committed prefix at most this often.
const PREFIX_REPORT_INTERVAL: Duration = Duration::from_millis(50);

fn build(info: &WorldInfo) -> Arc<dyn Workload> {
    Arc::new(Toy {
        servers: info.servers.len(),
        recorder: info.recorder.clone(),
    })
}

struct Toy {
    servers: usize,
    recorder: Recorder,
}

// ---- messages ----

enum Msg {
    Write {
        req: u64,
        value: u64,
    },
    WriteOk {
        req: u64,
        offset: u64,
    },
    Read {
        req: u64,
        from: u64,
    },
    ReadOk {
        req: u64,
        records: Vec<(u64, u64)>,
    },
    Append {
        offset: u64,
        commit: u64,
        entries: Vec<u64>,
    },
    Ack {
        durable: u64,
    },
}

impl Msg {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            Msg::Write { req, value } => {
                b.put_u8(0);
                b.put_u64(*req);
                b.put_u64(*value);
            }
            Msg::WriteOk { req, offset } => {
                b.put_u8(1);
                b.put_u64(*req);
                b.put_u64(*offset);
            }
            Msg::Read { req, from } => {
                b.put_u8(2);
                b.put_u64(*req);
                b.put_u64(*from);
            }
            Msg::ReadOk { req, records } => {
                b.put_u8(3);
                b.put_u64(*req);
                for (o, v) in records {
                    b.put_u64(*o);
                    b.put_u64(*v);
                }
            }
            Msg::Append {
                offset,
                commit,
                entries,
            } => {
                b.put_u8(4);
                b.put_u64(*offset);
                b.put_u64(*commit);
                for v in entries {
                    b.put_u64(*v);
                }
            }
            Msg::Ack { durable } => {
                b.put_u8(5);
                b.put_u64(*durable);
            }
        }
        b.freeze()
    }

    /// `None` for a malformed message (never produced by the toy itself).
    fn decode(mut b: Bytes) -> Option<Msg> {
        let u64s = |b: &mut Bytes, n: usize| -> Option<Vec<u64>> {
            (b.remaining() >= 8 * n).then(|| (0..n).map(|_| b.get_u64()).collect())
        };
        if !b.has_remaining() {
            return None;
        }
        let tag = b.get_u8();
        Some(match tag {
            0..=2 => {
                let v = u64s(&mut b, 2)?;
                match tag {
                    0 => Msg::Write {
                        req: v[0],
                        value: v[1],
                    },
                    1 => Msg::WriteOk {
                        req: v[0],
                        offset: v[1],
                    },
                    _ => Msg::Read {
                        req: v[0],
                        from: v[1],
                    },
                }
            }
            3 => {
                let req = u64s(&mut b, 1)?[0];
                let n = b.remaining() / 8;
                let flat = u64s(&mut b, n)?;
                Msg::ReadOk {
                    req,
                    records: flat
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0], c[1]))
                        .collect(),
                }
            }
            4 => {
                let v = u64s(&mut b, 2)?;
                let n = b.remaining() / 8;
                let entries = u64s(&mut b, n)?;
                Msg::Append {
                    offset: v[0],
                    commit: v[1],
                    entries,
                }
            }
            5 => Msg::Ack {
                durable: u64s(&mut b, 1)?[0],
            },
            _ => return None,
        })
    }
}

// ---- the log on disk ----

fn check_of(offset: u64, value: u64) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write_u64(offset);
    h.write_u64(value);
    h.finish()
}

/// One replica's log: values in memory, records on disk, cumulative prefix hashes.
struct Log {
    file: Box<dyn DiskFile>,
    values: Vec<u64>,
    /// `hashes[i]`: hash of the prefix `values[..=i]`.
    hashes: Vec<u64>,
    /// Where each value is.
    offsets: BTreeMap<u64, u64>,
    /// Entries known durable.
    durable: u64,
}

impl Log {
    /// Opens (or creates) the log and keeps its longest intact prefix.
    fn open(io: &NodeIo) -> Result<Log, fjord_log::DiskError> {
        let disk = &io.disk;
        if !disk.exists(Path::new(LOG_DIR))? {
            disk.create_dir_all(Path::new(LOG_DIR))?;
            // The new directory's entry is durable only once its parent (the root) is synced.
            disk.sync_dir(Path::new("/"))?;
        }
        let path = Path::new(LOG_FILE);
        let mut file = if disk.exists(path)? {
            disk.open(path)?
        } else {
            let f = disk.create(path)?;
            disk.sync_dir(Path::new(LOG_DIR))?;
            f
        };
        let records = file.len() / RECORD_BYTES;
        let mut values = Vec::new();
        let mut buf = [0u8; RECORD_BYTES as usize];
        for i in 0..records {
            file.read_at(i * RECORD_BYTES, &mut buf)?;
            let (value, check) = buf.split_at(8);
            let value = u64::from_le_bytes(value.try_into().expect("8 bytes"));
            let check = u64::from_le_bytes(check.try_into().expect("8 bytes"));
            if check != check_of(i, value) {
                break;
            }
            values.push(value);
        }
        let intact = values.len() as u64 * RECORD_BYTES;
        if file.len() != intact {
            file.set_len(intact)?;
            file.sync()?;
        }
        let mut log = Log {
            file,
            values: Vec::new(),
            hashes: Vec::new(),
            offsets: BTreeMap::new(),
            durable: 0,
        };
        for value in values {
            log.push(value);
        }
        log.durable = log.len();
        Ok(log)
    }

    fn len(&self) -> u64 {
        self.values.len() as u64
    }

    fn push(&mut self, value: u64) {
        let prev = self.hashes.last().copied().unwrap_or(0);
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(prev);
        h.write_u64(value);
        self.offsets.insert(value, self.len());
        self.values.push(value);
        self.hashes.push(h.finish());
    }

    fn append(&mut self, value: u64) -> Result<(), fjord_log::DiskError> {
        let offset = self.len();
        let mut rec = [0u8; RECORD_BYTES as usize];
        rec[..8].copy_from_slice(&value.to_le_bytes());
        rec[8..].copy_from_slice(&check_of(offset, value).to_le_bytes());
        self.file.write_at(offset * RECORD_BYTES, &rec)?;
        self.push(value);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), fjord_log::DiskError> {
        self.file.set_len(len * RECORD_BYTES)?;
        for value in self.values.drain(len as usize..) {
            self.offsets.remove(&value);
        }
        self.hashes.truncate(len as usize);
        self.durable = self.durable.min(len);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), fjord_log::DiskError> {
        if self.durable < self.len() {
            self.file.sync()?;
            self.durable = self.len();
        }
        Ok(())
    }
}

// ---- nodes ----

struct Replica {
    io: NodeIo,
    log: Log,
    recorder: Recorder,
    followers: Vec<NodeId>,
    majority: usize,
    /// Leader: followers' durable lengths, the next entry to send each, and writes waiting
    /// for commit (offset → client, req).
    acks: BTreeMap<NodeId, u64>,
    sent: BTreeMap<NodeId, u64>,
    waiting: BTreeMap<u64, (NodeId, u64)>,
    commit: u64,
    reported: Option<(u64, fjord_replication::Instant)>,
}

impl Replica {
    fn send(&self, to: NodeId, msg: &Msg) {
        self.io.network.send(to, msg.encode());
    }

    /// Reports the committed prefix now and then (for the prefix-agreement check).
    fn report_prefix(&mut self) {
        let commit = self.commit.min(self.log.len());
        if commit == 0 {
            return;
        }
        let now = self.io.clock.now();
        if let Some((offset, at)) = self.reported {
            if offset == commit || now.saturating_duration_since(at) < PREFIX_REPORT_INTERVAL {
                return;
            }
        }
        self.reported = Some((commit, now));
        let last = commit - 1;
        self.recorder
            .prefix(self.io.id, PARTITION, last, self.log.hashes[last as usize]);
    }

    /// Sends `to` the next durable entries it has not been sent (or an empty append carrying
    /// the commit point, as a heartbeat).
    fn replicate(&mut self, to: NodeId) {
        let from = self
            .sent
            .get(&to)
            .copied()
            .unwrap_or(0)
            .min(self.log.durable);
        let end = self.log.durable.min(from + APPEND_ENTRIES_MAX as u64);
        let entries = self.log.values[from as usize..end as usize].to_vec();
        self.sent.insert(to, end);
        self.send(
            to,
            &Msg::Append {
                offset: from,
                commit: self.commit,
                entries,
            },
        );
    }

    fn advance_commit(&mut self) {
        let mut durable: Vec<u64> = self
            .acks
            .values()
            .map(|a| (*a).min(self.log.durable))
            .collect();
        durable.push(self.log.durable);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        // Followers not heard from since this incarnation started count as holding nothing.
        let quorum = durable.get(self.majority - 1).copied().unwrap_or(0);
        self.commit = self.commit.max(quorum);
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() >= self.commit {
                break;
            }
            let (offset, (client, req)) = entry.remove_entry();
            self.send(client, &Msg::WriteOk { req, offset });
        }
        self.report_prefix();
    }

    async fn lead(&mut self) -> Result<(), fjord_log::DiskError> {
        let bugged = self.io.bugs.is_on(ACK_BEFORE_FSYNC);
        let followers = self.followers.clone();
        let network = self.io.network.clone();
        let clock = self.io.clock.clone();
        let mut tick = clock.sleep(TICK);
        // With the bug: writes the leader counted durable without syncing them.
        let mut lazy_sync = false;
        loop {
            match select(network.recv(), &mut tick).await {
                Either::Left((env, _)) => {
                    let mut appended = false;
                    let mut next = Some(env);
                    while let Some(Envelope { from, payload, .. }) = next.take() {
                        match Msg::decode(payload) {
                            Some(Msg::Write { req, value }) => {
                                // The network may deliver a write twice: values are unique,
                                // so a value already in the log is the same write.
                                match self.log.offsets.get(&value) {
                                    Some(&offset) => {
                                        self.waiting.insert(offset, (from, req));
                                    }
                                    None => {
                                        self.waiting.insert(self.log.len(), (from, req));
                                        self.log.append(value)?;
                                        appended = true;
                                    }
                                }
                            }
                            Some(Msg::Read { req, from: start }) => {
                                let end = self.commit.min(start.saturating_add(READ_RECORDS_MAX));
                                let records = (start..end)
                                    .map(|o| (o, self.log.values[o as usize]))
                                    .collect();
                                self.send(from, &Msg::ReadOk { req, records });
                            }
                            Some(Msg::Ack { durable }) => {
                                let before = self.acks.insert(from, durable).unwrap_or(0);
                                let sent = self.sent.get(&from).copied().unwrap_or(0);
                                if durable < before || durable > sent {
                                    // The follower lost entries (it restarted), or this is
                                    // news from before our own restart: resend from there.
                                    self.sent.insert(from, durable);
                                }
                                if durable > before && durable < self.log.durable {
                                    // Progress: pipeline the next chunk of a catch-up.
                                    self.replicate(from);
                                }
                            }
                            _ => {}
                        }
                        // Group commit: take what else is already in the inbox.
                        next = futures::FutureExt::now_or_never(network.recv());
                    }
                    if appended {
                        if bugged {
                            self.log.durable = self.log.len();
                            lazy_sync = true;
                        } else {
                            self.log.sync()?;
                            self.io.sim_disk.settle().await;
                        }
                        for f in &followers {
                            self.replicate(*f);
                        }
                    }
                    self.advance_commit();
                }
                Either::Right(((), _)) => {
                    if std::mem::take(&mut lazy_sync) {
                        self.log.file.sync()?;
                    }
                    for f in &followers {
                        // Retransmit what was not acknowledged since (messages get lost),
                        // or send a heartbeat carrying the commit point.
                        let acked = self.acks.get(f).copied().unwrap_or(0);
                        if acked < self.log.durable {
                            self.sent.insert(*f, acked);
                        }
                        self.replicate(*f);
                    }
                    self.advance_commit();
                    tick = clock.sleep(TICK);
                }
            }
        }
    }

    async fn follow(&mut self) -> Result<(), fjord_log::DiskError> {
        let network = self.io.network.clone();
        loop {
            let Envelope { from, payload, .. } = network.recv().await;
            let Some(Msg::Append {
                offset,
                commit,
                entries,
            }) = Msg::decode(payload)
            else {
                continue;
            };
            if offset <= self.log.len() {
                for (i, value) in entries.into_iter().enumerate() {
                    let at = offset + i as u64;
                    if at < self.log.len() {
                        if self.log.values[at as usize] == value {
                            continue;
                        }
                        // Only a buggy leader rewrites its log: follow it, as Raft would.
                        self.log.truncate(at)?;
                    }
                    self.log.append(value)?;
                }
                self.log.sync()?;
                self.io.sim_disk.settle().await;
                self.commit = self.commit.max(commit);
                self.report_prefix();
            }
            self.send(
                from,
                &Msg::Ack {
                    durable: self.log.durable,
                },
            );
        }
    }
}

async fn run_node(io: NodeIo, recorder: Recorder, servers: usize) {
    let log = match Log::open(&io) {
        Ok(log) => log,
        Err(e) => {
            tracing::info!(error = %e, "cannot open the log: stopping");
            return;
        }
    };
    tracing::debug!(entries = log.len(), "log recovered");
    let mut replica = Replica {
        majority: servers / 2 + 1,
        followers: (2..=servers as u32).map(NodeId).collect(),
        io,
        log,
        recorder,
        acks: BTreeMap::new(),
        sent: BTreeMap::new(),
        waiting: BTreeMap::new(),
        commit: 0,
        reported: None,
    };
    let result = if replica.io.id == LEADER {
        replica
            .recorder
            .leader(LEADER, PARTITION, u64::from(replica.io.incarnation) + 1);
        replica.lead().await
    } else {
        replica.follow().await
    };
    if let Err(e) = result {
        tracing::info!(error = %e, "disk error: stopping");
    }
}

// ---- clients ----

/// Sends `msg` to the leader and waits for the reply to `req`; `None` on timeout.
async fn request(env: &ClientEnv, req: u64, msg: Msg) -> Option<Msg> {
    env.network.send(LEADER, msg.encode());
    let deadline = env.clock.sleep(REQUEST_TIMEOUT);
    let reply = async {
        loop {
            let e = env.network.recv().await;
            match Msg::decode(e.payload) {
                Some(m @ Msg::WriteOk { req: r, .. }) | Some(m @ Msg::ReadOk { req: r, .. })
                    if r == req =>
                {
                    return m;
                }
                _ => {}
            }
        }
    };
    match select(Box::pin(reply), deadline).await {
        Either::Left((m, _)) => Some(m),
        Either::Right(_) => None,
    }
}

/// Writes a fresh value; records the outcome; returns the offset if acked.
async fn write_once(env: &ClientEnv, req: u64) -> Option<Offset> {
    let value: Value = ((env.index as u64 + 1) << 40) | req;
    let op = env.recorder.invoke_write(env.id, PARTITION, value);
    match request(env, req, Msg::Write { req, value }).await {
        Some(Msg::WriteOk { offset, .. }) => {
            env.recorder.written(op, offset);
            Some(offset)
        }
        _ => {
            env.recorder.indeterminate(op, "timeout");
            None
        }
    }
}

/// Reads from `from`; records the outcome; returns the records if the read completed.
async fn read_once(
    env: &ClientEnv,
    req: u64,
    reader: ReaderId,
    from: Offset,
) -> Option<Vec<(Offset, Value)>> {
    let op = env.recorder.invoke_read(env.id, PARTITION, reader, from);
    match request(env, req, Msg::Read { req, from }).await {
        Some(Msg::ReadOk { records, .. }) => {
            env.recorder.read(op, records.clone());
            Some(records)
        }
        _ => {
            env.recorder.indeterminate(op, "timeout");
            None
        }
    }
}

impl Workload for Toy {
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()> {
        Box::pin(run_node(io, self.recorder.clone(), self.servers))
    }

    fn clients(&self) -> usize {
        3
    }

    fn client(&self, env: ClientEnv) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(env.seed);
            let reader = ReaderId(env.index as u64);
            let mut from = 0;
            for req in 0.. {
                if env.index == 2 {
                    if let Some(records) = read_once(&env, req, reader, from).await {
                        if let Some((last, _)) = records.last() {
                            from = last + 1;
                        }
                    }
                } else {
                    write_once(&env, req).await;
                }
                env.clock
                    .sleep(Duration::from_micros(rng.gen_range(0..20_000)))
                    .await;
            }
        })
    }

    fn liveness(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let mut req = 0;
            while write_once(&env, req).await.is_none() {
                req += 1;
            }
            Ok(())
        })
    }

    fn final_reads(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let mut records = Vec::new();
            let mut req = 0;
            loop {
                req += 1;
                let from = records.last().map_or(0, |(o, _): &(Offset, Value)| o + 1);
                match request(&env, req, Msg::Read { req, from }).await {
                    Some(Msg::ReadOk { records: got, .. }) if got.is_empty() => break,
                    Some(Msg::ReadOk { records: got, .. }) => records.extend(got),
                    _ => {}
                }
            }
            env.recorder.final_read(PARTITION, records);
            Ok(())
        })
    }
}
