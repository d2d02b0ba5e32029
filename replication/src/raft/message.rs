//! Messages exchanged by the members of one Raft group.
//!
//! Offsets are Kafka offsets and every position is an *end offset* (exclusive), the way
//! Kafka's high watermark is: `commit_end = 10` means offsets `0..10` are committed. An
//! entry is a whole RecordBatch; its term is the batch's partition leader epoch.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A Raft term (Kafka leader epoch). Stored in batches as an `i32`.
pub type Term = u64;

/// What the members of a group say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" — changes nobody's term (pre-vote, Raft thesis §9.6).
    PreVote(VoteRequest),
    PreVoteResponse(VoteResponse),
    Vote(VoteRequest),
    VoteResponse(VoteResponse),
    Append(AppendRequest),
    AppendResponse(AppendResponse),
    Heartbeat(Heartbeat),
    HeartbeatResponse(HeartbeatResponse),
    InstallSnapshot(SnapshotRequest),
    /// Leadership transfer: the leader tells an up-to-date follower to campaign at once.
    TimeoutNow {
        term: Term,
    },
}

impl Message {
    /// The term the sender was in when it sent the message.
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote(m) | Message::Vote(m) => m.term,
            Message::PreVoteResponse(m) | Message::VoteResponse(m) => m.term,
            Message::Append(m) => m.term,
            Message::AppendResponse(m) => m.term,
            Message::Heartbeat(m) => m.term,
            Message::HeartbeatResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::TimeoutNow { term } => *term,
        }
    }

    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote(_) => "pre-vote",
            Message::PreVoteResponse(_) => "pre-vote-resp",
            Message::Vote(_) => "vote",
            Message::VoteResponse(_) => "vote-resp",
            Message::Append(_) => "append",
            Message::AppendResponse(_) => "append-resp",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatResponse(_) => "heartbeat-resp",
            Message::InstallSnapshot(_) => "snapshot",
            Message::TimeoutNow { .. } => "timeout-now",
        }
    }
}

/// A (pre-)vote request. For a pre-vote, `term` is the term the sender would campaign in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    pub term: Term,
    /// The candidate's log end offset and the term of its last entry.
    pub log_end: u64,
    pub last_term: Term,
    /// Set when the leader asked for this election (leadership transfer): voters grant it
    /// even though they heard from a leader recently.
    pub transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// For a pre-vote response: the term of the request when granted, the voter's own
    /// term otherwise (so that a stale pre-candidate learns of the newer term).
    pub term: Term,
    pub granted: bool,
}

/// Entries (whole RecordBatches, concatenated) following the entry that ends at `prev_end`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    pub term: Term,
    /// The leader's log agrees with the follower's up to here if the follower's term at
    /// offset `prev_end - 1` is `prev_term` (`prev_end == 0`: the empty prefix).
    pub prev_end: u64,
    pub prev_term: Term,
    /// The leader's commit end offset (high watermark).
    pub commit_end: u64,
    /// The leader's log end when it sent this. A repairing follower (one that lost entries
    /// it may have acknowledged) waits until it holds everything up to here.
    pub leader_end: u64,
    /// Zero or more whole RecordBatches with offsets and epochs set, contiguous from
    /// `prev_end` (gaps only where compaction removed whole batches).
    pub batches: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    pub term: Term,
    /// `Some(end)`: the follower's log durably matches the leader's below `end`.
    /// `None`: the consistency check at `rejected_prev_end` failed.
    pub match_end: Option<u64>,
    /// The `prev_end` of the rejected append (lets the leader ignore stale rejections).
    pub rejected_prev_end: u64,
    /// Where the follower believes the logs may still agree: the end of its entries whose
    /// term is `hint_term`, the largest term it holds that is `<=` the leader's `prev_term`
    /// (on success: the follower's log end and last term).
    pub hint_end: u64,
    pub hint_term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub term: Term,
    /// `min(follower's match, leader's commit)`: safe for the follower to commit.
    pub commit_end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub term: Term,
    /// The follower's log end: below what the leader believes it matches only if its disk
    /// lost entries (or the response is stale); the leader then probes it again.
    pub log_end: u64,
}

/// Sent when a follower needs entries the leader no longer has (retention or a metadata
/// snapshot removed them): the follower discards its log and restarts at `start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub term: Term,
    /// The leader's log start offset; the snapshot covers everything below it.
    pub start: u64,
    /// The term of the entry at `start - 1`.
    pub start_term: Term,
    /// The state machine at `start` (empty for partitions: their state is the log).
    pub data: Bytes,
    /// The membership in force at `start`.
    pub membership: super::Membership,
    /// The leader's commit end offset.
    pub commit_end: u64,
}
