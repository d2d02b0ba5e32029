//! What the Raft core needs from a log, and the hard state it asks the driver to persist.
//!
//! The core appends and truncates through [`RaftLog`] (fast, page-cache operations that are
//! *not* durable) and reads from it; durability is the driver's job: it calls
//! [`RaftLog::sync`] when a [`super::Ready`] asks for it and then tells the core with
//! [`super::Raft::advance`]. Positions are end offsets (exclusive), like Kafka's high
//! watermark.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::message::Term;
use super::Membership;
use crate::NodeId;

/// A storage failure. The node cannot continue safely (for a failed sync, the state of the
/// unsynced data is unknown): the driver stops the node, which recovers from what is durable.
#[derive(Debug, thiserror::Error)]
#[error("raft storage: {message}")]
pub struct StorageError {
    pub message: String,
    /// A read found data failing its checksum: the log must be fully verified (and cut)
    /// before the member takes part again.
    pub corrupt: bool,
}

impl StorageError {
    pub fn new(message: impl Into<String>) -> Self {
        StorageError {
            message: message.into(),
            corrupt: false,
        }
    }
}

/// One Raft group's log of Kafka RecordBatches.
///
/// Invariants the core relies on: offsets only grow along the log; `term_at` is exact for
/// every offset in `[start_offset() - 1, end_offset())` (the term just below the log start
/// survives prefix deletion); `durable_end() <= end_offset()`.
pub trait RaftLog {
    /// The first offset the log holds (everything below was deleted or snapshotted).
    fn start_offset(&self) -> u64;
    /// The offset the next appended batch gets.
    fn end_offset(&self) -> u64;
    /// Everything below this offset survives a crash.
    fn durable_end(&self) -> u64;
    /// The term (leader epoch) of the batch holding `offset`; `None` outside
    /// `[start_offset() - 1, end_offset())`.
    fn term_at(&self, offset: u64) -> Option<Term>;
    /// The largest term `<= term` that has entries in the log, and the end offset of its
    /// entries (Kafka's OffsetsForLeaderEpoch). `None` if every entry has a larger term.
    fn term_end(&self, term: Term) -> Option<(Term, u64)>;
    /// Whole batches, byte-identical, starting with the one holding `from` (or the next one
    /// after a gap), at most `max_bytes` except that the first batch is always returned.
    fn read(&self, from: u64, max_bytes: usize) -> Result<Bytes, StorageError>;
    /// Leader path: appends `batch` at the end, setting its base offset and epoch. Returns
    /// the batch's `(base offset, end offset)`.
    fn append_leader(&mut self, batch: BytesMut, term: Term) -> Result<(u64, u64), StorageError>;
    /// Follower path: appends one batch whose offsets and epoch are already set; its base
    /// offset is `>= end_offset()` (a gap is legal where compaction removed whole batches).
    fn append_follower(&mut self, batch: &[u8]) -> Result<(), StorageError>;
    /// Removes the batch holding `offset` and everything after it. Returns the new end.
    fn truncate_from(&mut self, offset: u64) -> Result<u64, StorageError>;
    /// Discards the whole log and restarts it empty at `start`, with `start_term` as the term
    /// of offset `start - 1`, and stores `data` as the state below `start`.
    fn install_snapshot(
        &mut self,
        start: u64,
        start_term: Term,
        data: Bytes,
    ) -> Result<(), StorageError>;
    /// The state machine's snapshot at `start_offset()` (empty where the log is the state).
    fn snapshot_data(&self) -> Bytes;
    /// Makes everything appended or truncated so far durable. A failure is fatal.
    fn sync(&mut self) -> Result<(), StorageError>;
}

/// A membership as of the entry ending at `end` (the initial one has `end` = 0 or the
/// snapshot start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipEntry {
    pub end: u64,
    pub term: Term,
    pub membership: Membership,
}

/// What must survive a crash besides the log: Raft's term and vote, and the history of
/// membership entries (so that a restarted node knows the configuration without scanning its
/// whole log). `scanned_end`: every membership entry below it is in `memberships`; a restart
/// scans the log from there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub memberships: Vec<MembershipEntry>,
    pub scanned_end: u64,
    /// Set when this member lost log entries it may have acknowledged (corruption found on
    /// its disk): it neither votes nor campaigns until a leader has refilled its log up to
    /// that leader's commit (protocol-aware recovery), so the lost entries cannot be
    /// outvoted while it is missing them.
    pub repairing: bool,
}

impl HardState {
    /// The state of a brand-new group member.
    pub fn initial(membership: Membership) -> Self {
        HardState {
            term: 0,
            vote: None,
            memberships: vec![MembershipEntry {
                end: 0,
                term: 0,
                membership,
            }],
            scanned_end: 0,
            repairing: false,
        }
    }
}
