//! Many Raft groups on one node, over one [`Disk`]: the synchronous half of the driver.
//!
//! [`MultiRaft`] owns every group's [`Raft`] core and storage and performs the IO their
//! [`crate::raft::Ready`]s ask for, in the order the core requires (send what may go now,
//! persist the hard state, sync the log, advance, then send what waited for persistence).
//! It never touches a socket or a clock: the async node loop ([`crate::node`]) feeds it
//! messages and ticks and ships its outbox, batched per destination.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fjord_log::{Disk, LogConfig, RecoveryReport};
use serde::{Deserialize, Serialize};

use crate::io::{DiskJob, DiskJobs, InlineDiskJobs};
use crate::raft::{
    HardState, Membership, Message, ProposeError, Raft, RaftConfig, RaftError, Ready, Role, Status,
};
use crate::storage::{
    clear_verification, request_verification, verification_requested, GroupStorageError,
    HardStateFile, LogStorage,
};
use crate::NodeId;

/// A Raft group: one partition of one topic, or the metadata group (topic 0).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct GroupId {
    pub topic: u32,
    pub partition: u32,
}

impl GroupId {
    /// The controller's metadata log (KRaft's `__cluster_metadata`).
    pub const METADATA: GroupId = GroupId {
        topic: 0,
        partition: 0,
    };

    pub fn new(topic: u32, partition: u32) -> Self {
        GroupId { topic, partition }
    }

    fn dir_name(self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    fn parse_dir_name(name: &str) -> Option<GroupId> {
        let (t, p) = name.split_once('-')?;
        Some(GroupId {
            topic: t.parse().ok()?,
            partition: p.parse().ok()?,
        })
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}-{}", self.topic, self.partition)
    }
}

/// Timing and protocol settings shared by every group of a node.
#[derive(Clone, Debug)]
pub struct MultiRaftConfig {
    pub node: NodeId,
    /// Directory (on the node's disk) holding `groups/<topic>-<partition>/`.
    pub root: PathBuf,
    /// Template for every group's core; `id` and `seed` are set per group.
    pub raft: RaftConfig,
    /// Seed of this incarnation of the node; each group's jitter stream derives from it.
    pub seed: u64,
    /// Log settings of the groups [`MultiRaft::open`] finds on disk ([`MultiRaft::create_group`]
    /// takes its own).
    pub log: LogConfig,
}

impl MultiRaftConfig {
    pub fn new(node: NodeId, root: impl Into<PathBuf>, seed: u64) -> Self {
        MultiRaftConfig {
            node,
            root: root.into(),
            raft: RaftConfig::new(node, seed),
            seed,
            log: LogConfig::default(),
        }
    }
}

/// A failure that stops the node: its disk misbehaved (the state of unsynced data is
/// unknown), so it must restart and recover from what is durable.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("group {group}: {source}")]
    Storage {
        group: GroupId,
        #[source]
        source: GroupStorageError,
    },
    #[error("group {group}: {source}")]
    Raft {
        group: GroupId,
        #[source]
        source: RaftError,
    },
    #[error(transparent)]
    Disk(#[from] fjord_log::DiskError),
}

/// What happened to the groups during [`MultiRaft::process`], for the layers above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// The commit end (high watermark) advanced.
    Committed { group: GroupId, commit_end: u64 },
    /// Role, term, leader or membership changed.
    StatusChanged { group: GroupId, status: Status },
    /// A snapshot replaced the group's log: state machines must reload from it.
    SnapshotInstalled { group: GroupId },
}

struct Group {
    raft: Raft<LogStorage>,
    hard_state: HardStateFile,
    commit_end: u64,
}

/// Every Raft group hosted by one node.
pub struct MultiRaft {
    cfg: MultiRaftConfig,
    disk: Arc<dyn Disk>,
    groups: BTreeMap<GroupId, Group>,
    outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    events: Vec<GroupEvent>,
    wall_clock_ms: i64,
    /// Recovery reports of the logs opened at start, by group (for logs and tests).
    recoveries: BTreeMap<GroupId, RecoveryReport>,
    /// Runs each round's fsyncs (in order on this thread unless the runtime says otherwise).
    disk_jobs: Arc<dyn DiskJobs>,
}

const GROUPS_DIR: &str = "groups";

impl MultiRaft {
    /// Opens every group found under the root (recovering each log).
    pub fn open(cfg: MultiRaftConfig, disk: Arc<dyn Disk>) -> Result<Self, DriverError> {
        let groups_dir = cfg.root.join(GROUPS_DIR);
        if !disk.exists(&groups_dir)? {
            disk.create_dir_all(&groups_dir)?;
            for dir in groups_dir.ancestors().skip(1) {
                disk.sync_dir(dir)?;
            }
        }
        let mut multi = MultiRaft {
            cfg,
            disk,
            groups: BTreeMap::new(),
            outbox: BTreeMap::new(),
            events: Vec::new(),
            wall_clock_ms: 0,
            recoveries: BTreeMap::new(),
            disk_jobs: Arc::new(InlineDiskJobs),
        };
        for name in multi.disk.list(&groups_dir)? {
            let Some(id) = GroupId::parse_dir_name(&name) else {
                continue;
            };
            let dir = groups_dir.join(&name);
            if !multi.disk.exists(&dir.join("raft.state"))? {
                // A group whose creation never completed (or that was removed).
                continue;
            }
            let config = multi.cfg.log.clone();
            multi.open_group(id, &dir, config)?;
        }
        Ok(multi)
    }

    fn group_dir(&self, id: GroupId) -> PathBuf {
        self.cfg.root.join(GROUPS_DIR).join(id.dir_name())
    }

    fn open_group(
        &mut self,
        id: GroupId,
        dir: &Path,
        config: LogConfig,
    ) -> Result<(), DriverError> {
        let storage_err = |source| DriverError::Storage { group: id, source };
        let (mut hard_state, hs) =
            HardStateFile::open(self.disk.as_ref(), dir).map_err(storage_err)?;
        let marked = verification_requested(self.disk.as_ref(), dir)?;
        let (log, report) =
            LogStorage::open(Arc::clone(&self.disk), dir.to_path_buf(), config, true)
                .map_err(storage_err)?;
        // A log marked for verification had a corrupt read: entries may be lost whether this
        // open cut them or an earlier one did and crashed before the repair was recorded.
        let corrupt = report.corruption.is_some() || marked;
        if let Some(at) = report.corruption {
            tracing::warn!(node = %self.cfg.node, group = %id, at, "log corruption found by recovery");
        }
        self.recoveries.insert(id, report);
        let mut raft = Raft::new(self.group_config(id), log, hs)
            .map_err(|source| DriverError::Raft { group: id, source })?;
        if corrupt {
            // Entries this member may have acknowledged are gone: no votes until refilled.
            // Durable before the mark goes, so that no crash forgets it.
            raft.start_repair();
            hard_state.store(&raft.hard_state()).map_err(storage_err)?;
        }
        if marked {
            clear_verification(self.disk.as_ref(), dir)?;
        }
        let commit_end = raft.commit_end();
        self.groups.insert(
            id,
            Group {
                raft,
                hard_state,
                commit_end,
            },
        );
        Ok(())
    }

    fn group_config(&self, id: GroupId) -> RaftConfig {
        let mut c = self.cfg.raft.clone();
        c.id = self.cfg.node;
        // Each group's stream differs, and differs per incarnation.
        c.seed = self.cfg.seed
            ^ (u64::from(id.topic) << 32 | u64::from(id.partition))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        c
    }

    /// Creates `id` with its initial membership, durably; a no-op if it exists.
    pub fn create_group(
        &mut self,
        id: GroupId,
        membership: Membership,
        config: LogConfig,
    ) -> Result<(), DriverError> {
        if self.groups.contains_key(&id) {
            return Ok(());
        }
        let dir = self.group_dir(id);
        let storage_err = |source| DriverError::Storage { group: id, source };
        if !self.disk.exists(&dir)? {
            self.disk.create_dir_all(&dir)?;
            self.disk.sync_dir(&self.cfg.root.join(GROUPS_DIR))?;
        }
        // The log first: the hard state file marks the group as complete.
        let (log, _) = LogStorage::open(Arc::clone(&self.disk), dir.clone(), config.clone(), false)
            .map_err(storage_err)?;
        drop(log);
        let hs_path = dir.join("raft.state");
        if self.disk.exists(&hs_path)? {
            self.disk.remove(&hs_path)?;
        }
        HardStateFile::create(self.disk.as_ref(), &dir, &HardState::initial(membership))
            .map_err(storage_err)?;
        self.open_group(id, &dir, config)?;
        Ok(())
    }

    /// Stops hosting `id` and deletes its files (the hard state first, so that a crash
    /// midway leaves an incomplete group that `open` ignores).
    pub fn remove_group(&mut self, id: GroupId) -> Result<(), DriverError> {
        if self.groups.remove(&id).is_none() {
            return Ok(());
        }
        let dir = self.group_dir(id);
        self.disk.remove(&dir.join("raft.state"))?;
        self.disk.sync_dir(&dir)?;
        for name in self.disk.list(&dir)? {
            self.disk.remove(&dir.join(name))?;
        }
        self.disk.sync_dir(&dir)?;
        for msgs in self.outbox.values_mut() {
            msgs.retain(|(g, _)| *g != id);
        }
        Ok(())
    }

    pub fn node(&self) -> NodeId {
        self.cfg.node
    }

    /// How each round's disk jobs run (default: [`InlineDiskJobs`]).
    pub fn set_disk_jobs(&mut self, jobs: Arc<dyn DiskJobs>) {
        self.disk_jobs = jobs;
    }

    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    pub fn group(&self, id: GroupId) -> Option<&Raft<LogStorage>> {
        self.groups.get(&id).map(|g| &g.raft)
    }

    /// For state-machine work on the log (retention, compaction, snapshots, configs).
    pub fn group_mut(&mut self, id: GroupId) -> Option<&mut Raft<LogStorage>> {
        self.groups.get_mut(&id).map(|g| &mut g.raft)
    }

    pub fn recovery_report(&self, id: GroupId) -> Option<&RecoveryReport> {
        self.recoveries.get(&id)
    }

    /// Feeds a message from `from` to `group`. Messages for groups this node does not host
    /// (yet, or any more) are dropped: the sender retries.
    pub fn step(&mut self, from: NodeId, group: GroupId, msg: Message) -> Result<(), DriverError> {
        let Some(g) = self.groups.get_mut(&group) else {
            tracing::trace!(node = %self.cfg.node, %group, %from, kind = msg.kind(), "message for unknown group dropped");
            return Ok(());
        };
        let result = g.raft.step(from, msg);
        result.map_err(|source| self.raft_failure(group, source))
    }

    /// The error that stops the node; a checksum failure on read also asks for the group's
    /// log to be verified whole at the next open (recovery then cuts it at the bad batch and
    /// the member repairs from its peers).
    fn raft_failure(&self, group: GroupId, source: RaftError) -> DriverError {
        if matches!(&source, RaftError::Storage(e) if e.corrupt) {
            self.mark_for_verification(group);
        }
        DriverError::Raft { group, source }
    }

    /// Durably marks `group`'s log for full verification at the next open (a read found a
    /// bad checksum). The caller stops the node.
    pub fn mark_for_verification(&self, group: GroupId) {
        let dir = self.group_dir(group);
        tracing::error!(node = %self.cfg.node, %group, "corrupt data read: the log will be verified at restart");
        if let Err(e) = request_verification(self.disk.as_ref(), &dir) {
            tracing::error!(node = %self.cfg.node, %group, "cannot mark the log for verification: {e}");
        }
    }

    /// One tick for every group; `wall_clock_ms` stamps the batches the cores write.
    pub fn tick(&mut self, wall_clock_ms: i64) -> Result<(), DriverError> {
        self.wall_clock_ms = wall_clock_ms;
        let mut failure = None;
        for (id, g) in &mut self.groups {
            g.raft.set_wall_clock_ms(wall_clock_ms);
            if let Err(source) = g.raft.tick() {
                failure = Some((*id, source));
                break;
            }
        }
        match failure {
            Some((group, source)) => Err(self.raft_failure(group, source)),
            None => Ok(()),
        }
    }

    /// Appends a client batch to `group` as leader; see [`Raft::propose`].
    pub fn propose(&mut self, group: GroupId, batch: BytesMut) -> Result<(u64, u64), ProposeError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let result = g.raft.propose(batch);
        if let Err(ProposeError::Raft(RaftError::Storage(e))) = &result {
            if e.corrupt {
                self.mark_for_verification(group);
            }
        }
        result
    }

    /// Performs every group's pending IO, collecting outgoing messages and events.
    pub fn process(&mut self) -> Result<(), DriverError> {
        self.process_inner(None)
    }

    /// [`MultiRaft::process`], handing `send` the messages that may leave before this
    /// round's disk IO (a leader's appends: Raft lets followers persist them while the
    /// leader does) just before that IO starts. Everything produced after it stays in the
    /// outbox.
    ///
    /// Each pass takes every group's [`crate::raft::Ready`], runs the disk jobs of all of
    /// them through the [`DiskJobs`] (one job per group: hard state, then log sync), then
    /// advances every group; passes repeat while a core has more to do (acknowledgements of
    /// what just became durable).
    pub fn process_sending(
        &mut self,
        mut send: impl FnMut(NodeId, Vec<(GroupId, Message)>),
    ) -> Result<(), DriverError> {
        self.process_inner(Some(&mut send))
    }

    /// `send`: where the first pass's messages go before the IO (`None`: they stay in the
    /// outbox with everything else).
    fn process_inner(
        &mut self,
        mut send: Option<&mut dyn FnMut(NodeId, Outgoing)>,
    ) -> Result<(), DriverError> {
        let mut first_pass = true;
        loop {
            let mut readies: BTreeMap<GroupId, Ready> = BTreeMap::new();
            for (id, g) in &mut self.groups {
                if !g.raft.has_ready() {
                    continue;
                }
                let mut rd = g.raft.take_ready();
                for (to, msg) in std::mem::take(&mut rd.messages) {
                    self.outbox.entry(to).or_default().push((*id, msg));
                }
                readies.insert(*id, rd);
            }
            if readies.is_empty() {
                break;
            }
            if std::mem::take(&mut first_pass) {
                if let Some(send) = send.as_mut() {
                    for (to, msgs) in std::mem::take(&mut self.outbox) {
                        send(to, msgs);
                    }
                }
            }
            self.persist(&readies)?;
            for (group, rd) in readies {
                let g = self.groups.get_mut(&group).expect("taken from this map");
                g.raft.advance();
                for (to, msg) in rd.messages_after_persist {
                    self.outbox.entry(to).or_default().push((group, msg));
                }
                if rd.snapshot_installed {
                    self.events.push(GroupEvent::SnapshotInstalled { group });
                }
                if rd.status_changed {
                    self.events.push(GroupEvent::StatusChanged {
                        group,
                        status: g.raft.status(),
                    });
                }
            }
        }
        self.collect_commits();
        Ok(())
    }

    /// Records a [`GroupEvent::Committed`] for every group whose commit end moved since the
    /// last call. [`MultiRaft::process`] does it too; calling it before the IO lets a driver
    /// answer what the inputs just committed (acknowledgements received) without waiting
    /// for the fsyncs of newer entries.
    pub fn collect_commits(&mut self) {
        for (id, g) in &mut self.groups {
            let commit_end = g.raft.commit_end();
            if commit_end != g.commit_end {
                g.commit_end = commit_end;
                self.events.push(GroupEvent::Committed {
                    group: *id,
                    commit_end,
                });
            }
        }
    }

    /// The disk half of one pass: each group's hard state, then its log sync, groups
    /// independently of one another. The first failure (in group order) is returned.
    fn persist(&mut self, readies: &BTreeMap<GroupId, Ready>) -> Result<(), DriverError> {
        let mut results: Vec<Result<(), DriverError>> = Vec::new();
        let mut targets = Vec::new();
        for (id, g) in &mut self.groups {
            let Some(rd) = readies.get(id) else {
                continue;
            };
            if rd.hard_state.is_none() && !rd.sync_log {
                continue;
            }
            targets.push((*id, rd, &mut g.hard_state, g.raft.log_mut()));
            results.push(Ok(()));
        }
        let jobs: Vec<DiskJob<'_>> = targets
            .into_iter()
            .zip(results.iter_mut())
            .map(|((group, rd, hard_state, log), result)| -> DiskJob<'_> {
                Box::new(move || {
                    *result = persist_group(group, rd, hard_state, log);
                })
            })
            .collect();
        self.disk_jobs.run(jobs);
        results.into_iter().collect()
    }

    /// Messages to send, by destination, in the order the cores produced them.
    pub fn take_outbox(&mut self) -> BTreeMap<NodeId, Vec<(GroupId, Message)>> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether `id`'s member here is the leader.
    pub fn is_leader(&self, id: GroupId) -> bool {
        self.group(id).is_some_and(|r| r.role() == Role::Leader)
    }
}

/// Messages for one destination, by group, in the order the cores produced them.
type Outgoing = Vec<(GroupId, Message)>;

/// One group's persistence, in the order [`crate::raft::Ready`] requires.
fn persist_group(
    group: GroupId,
    rd: &Ready,
    hard_state: &mut HardStateFile,
    log: &mut LogStorage,
) -> Result<(), DriverError> {
    if let Some(hs) = &rd.hard_state {
        hard_state
            .store(hs)
            .map_err(|source| DriverError::Storage { group, source })?;
    }
    if rd.sync_log {
        use crate::raft::RaftLog as _;
        log.sync().map_err(|e| DriverError::Raft {
            group,
            source: RaftError::Storage(e),
        })?;
    }
    Ok(())
}

/// Encodes messages for one destination into frames of at most `frame_max` bytes each
/// (a single larger message still gets a frame of its own).
pub fn encode_messages(msgs: &[(GroupId, Message)], frame_max: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut chunk: Vec<&(GroupId, Message)> = Vec::new();
    let mut size = 0usize;
    for m in msgs {
        let approx = approx_size(&m.1);
        if !chunk.is_empty() && size + approx > frame_max {
            frames.push(encode_chunk(&chunk));
            chunk.clear();
            size = 0;
        }
        chunk.push(m);
        size += approx;
    }
    if !chunk.is_empty() {
        frames.push(encode_chunk(&chunk));
    }
    frames
}

fn approx_size(m: &Message) -> usize {
    match m {
        Message::Append(a) => 64 + a.batches.len(),
        Message::InstallSnapshot(s) => 128 + s.data.len(),
        _ => 64,
    }
}

fn encode_chunk(chunk: &[&(GroupId, Message)]) -> Bytes {
    Bytes::from(
        bincode::serde::encode_to_vec(chunk, bincode::config::standard())
            .expect("messages always encode"),
    )
}

/// Decodes a frame of [`encode_messages`]. Garbage is an error, never a panic.
pub fn decode_messages(
    frame: &[u8],
) -> Result<Vec<(GroupId, Message)>, bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<{ crate::io::FRAME_SIZE_MAX_BYTES }>();
    let (msgs, _) = bincode::serde::decode_from_slice(frame, config)?;
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::raft::{
        AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, SnapshotRequest, VoteRequest,
        VoteResponse,
    };

    #[test]
    fn group_dir_names_round_trip() {
        let g = GroupId::new(7, 12);
        assert_eq!(GroupId::parse_dir_name(&g.dir_name()), Some(g));
        assert_eq!(GroupId::parse_dir_name("7"), None);
        assert_eq!(GroupId::parse_dir_name("x-1"), None);
    }

    #[test]
    fn messages_are_framed_below_the_limit_and_decode() {
        let append = |n: usize| {
            Message::Append(crate::raft::AppendRequest {
                term: 1,
                prev_end: 0,
                prev_term: 0,
                commit_end: 0,
                leader_end: 0,
                batches: Bytes::from(vec![7u8; n]),
            })
        };
        let msgs = vec![
            (GroupId::new(1, 0), append(600)),
            (
                GroupId::new(1, 1),
                Message::Heartbeat(Heartbeat {
                    term: 2,
                    commit_end: 5,
                }),
            ),
            (GroupId::new(2, 0), append(600)),
            (
                GroupId::METADATA,
                Message::Vote(VoteRequest {
                    term: 3,
                    log_end: 1,
                    last_term: 1,
                    transfer: false,
                }),
            ),
        ];
        let frames = encode_messages(&msgs, 1000);
        assert_eq!(frames.len(), 2);
        let decoded: Vec<_> = frames
            .iter()
            .flat_map(|f| decode_messages(f).expect("decodes"))
            .collect();
        assert_eq!(decoded, msgs);
        assert!(decode_messages(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_messages(&[]).is_err());
    }

    fn node_ids() -> impl Strategy<Value = BTreeSet<NodeId>> {
        prop::collection::btree_set(any::<u32>().prop_map(NodeId), 0..4)
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    /// Every kind of Raft message with arbitrary field values.
    fn message() -> impl Strategy<Value = Message> {
        let vote = (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(term, log_end, last_term, transfer)| VoteRequest {
                term,
                log_end,
                last_term,
                transfer,
            },
        );
        let vote_response = (any::<u64>(), any::<bool>())
            .prop_map(|(term, granted)| VoteResponse { term, granted });
        let append = (any::<[u64; 5]>(), bytes()).prop_map(|(f, batches)| {
            Message::Append(AppendRequest {
                term: f[0],
                prev_end: f[1],
                prev_term: f[2],
                commit_end: f[3],
                leader_end: f[4],
                batches,
            })
        });
        let append_response = (any::<[u64; 4]>(), any::<Option<u64>>()).prop_map(|(f, m)| {
            Message::AppendResponse(AppendResponse {
                term: f[0],
                match_end: m,
                rejected_prev_end: f[1],
                hint_end: f[2],
                hint_term: f[3],
            })
        });
        let snapshot = (any::<[u64; 4]>(), bytes(), node_ids(), node_ids()).prop_map(
            |(f, data, voters, learners)| {
                Message::InstallSnapshot(SnapshotRequest {
                    term: f[0],
                    start: f[1],
                    start_term: f[2],
                    data,
                    membership: Membership { voters, learners },
                    commit_end: f[3],
                })
            },
        );
        prop_oneof![
            vote.clone().prop_map(Message::PreVote),
            vote_response.clone().prop_map(Message::PreVoteResponse),
            vote.prop_map(Message::Vote),
            vote_response.prop_map(Message::VoteResponse),
            append,
            append_response,
            (any::<u64>(), any::<u64>())
                .prop_map(|(term, commit_end)| Message::Heartbeat(Heartbeat { term, commit_end })),
            (any::<u64>(), any::<u64>()).prop_map(|(term, log_end)| {
                Message::HeartbeatResponse(HeartbeatResponse { term, log_end })
            }),
            snapshot,
            any::<u64>().prop_map(|term| Message::TimeoutNow { term }),
        ]
    }

    proptest! {
        /// Every Raft message type round-trips through the node frames, whatever the frame
        /// size limit splits them into.
        #[test]
        fn raft_messages_round_trip(
            msgs in prop::collection::vec(
                ((any::<u32>(), any::<u32>()).prop_map(|(t, p)| GroupId::new(t, p)), message()),
                0..12,
            ),
            frame_max in 1usize..2048,
        ) {
            let frames = encode_messages(&msgs, frame_max);
            let decoded: Vec<_> = frames
                .iter()
                .flat_map(|f| decode_messages(f).expect("decodes"))
                .collect();
            prop_assert_eq!(decoded, msgs);
        }

        /// Garbage never panics the decoder.
        #[test]
        fn arbitrary_frames_never_panic(frame in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_messages(&frame);
        }
    }
}
