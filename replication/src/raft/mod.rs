//! A sans-IO Raft for fjord's partitions and its metadata group.
//!
//! [`Raft`] is a plain struct: the driver feeds it ticks ([`Raft::tick`]), messages
//! ([`Raft::step`]) and proposals ([`Raft::propose`]); the core appends to and truncates its
//! [`RaftLog`] (not durable yet) and returns a [`Ready`] saying what to persist and what to
//! send. The driver persists, calls [`Raft::advance`], and only then sends the messages that
//! depend on what was persisted. Messages that claim durability (a follower's append
//! acknowledgement) are created *at* `advance`, from the state of that moment, so nothing
//! truncated in between can ever be acknowledged.
//!
//! Implemented: leader election with pre-vote and check-quorum (leader leases: a node that
//! heard from a leader within the minimum election timeout ignores vote requests, so a
//! partitioned node that rejoins cannot depose a healthy leader), pipelined replication with
//! flow control, fast conflict resolution through the leader-epoch cache (Kafka's
//! OffsetsForLeaderEpoch), commit by quorum of *durable* matches with the current-term rule,
//! snapshots / log-start catch-up, single-server membership changes with learners, and
//! leadership transfer.

mod core;
mod message;
mod progress;
mod storage;
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::core::{ProposeError, Raft, RaftConfig, RaftError, Ready, Role, Status};
pub use message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Message, SnapshotRequest, Term,
    VoteRequest, VoteResponse,
};
pub use storage::{HardState, MembershipEntry, RaftLog, StorageError};

use crate::NodeId;

/// Who takes part in a group: voters elect and count for commitment; learners only receive
/// the log (new members catch up as learners before they are promoted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Every member, voters first then learners, each in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether `next` differs from `self` by a single step: add a learner, promote a learner,
    /// or remove one member. Raft's single-server rule keeps old and new majorities
    /// overlapping without joint consensus.
    pub fn is_single_step_to(&self, next: &Membership) -> bool {
        if !next.voters.is_disjoint(&next.learners) || next.voters.is_empty() {
            return false;
        }
        let added_voters: Vec<_> = next.voters.difference(&self.voters).collect();
        let removed_voters: Vec<_> = self.voters.difference(&next.voters).collect();
        let added_learners: Vec<_> = next.learners.difference(&self.learners).collect();
        let removed_learners: Vec<_> = self.learners.difference(&next.learners).collect();
        match (
            added_voters.as_slice(),
            removed_voters.as_slice(),
            added_learners.as_slice(),
            removed_learners.as_slice(),
        ) {
            // Promote a learner.
            ([v], [], [], [l]) => v == l,
            // Add a learner (not already a voter).
            ([], [], [l], []) => !self.voters.contains(l),
            // Remove a voter or a learner.
            ([], [_], [], []) | ([], [], [], [_]) => true,
            _ => false,
        }
    }
}

/// Control record type fjord uses for membership entries (outside the range Kafka assigns:
/// Kafka clients skip control batches, and unknown control types, without reading them).
pub const CONTROL_TYPE_MEMBERSHIP: i16 = 100;

/// Deliberate bugs the simulator switches on to prove its checkers catch them. All off in
/// production; each one breaks one rule that correctness depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftBugs {
    /// Followers acknowledge appends before they are durable; leaders count their own
    /// unsynced entries toward commitment.
    pub ack_before_fsync: bool,
    /// Votes are granted without being persisted first (and not persisted at all).
    pub vote_not_persisted: bool,
    /// A follower keeps its conflicting entries instead of truncating them.
    pub no_truncate_on_conflict: bool,
    /// A leader commits entries of earlier terms by counting replicas (Raft §5.4.2).
    pub commit_old_term_by_count: bool,
}

/// Encodes a membership as the payload of a control batch (see [`CONTROL_TYPE_MEMBERSHIP`]).
pub fn membership_batch(
    membership: &Membership,
    timestamp_ms: i64,
) -> Result<Bytes, fjord_log::batch::BatchError> {
    let value = bincode::serde::encode_to_vec(membership, bincode::config::standard())
        .expect("a membership always encodes");
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&CONTROL_TYPE_MEMBERSHIP.to_be_bytes());
    fjord_log::batch::build_batch(
        &[fjord_log::batch::RecordSpec {
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
            timestamp_ms,
        }],
        &fjord_log::batch::BuildOptions {
            is_control: true,
            ..Default::default()
        },
    )
}

/// The membership carried by `batch`, if it is a membership control batch. Malformed
/// control records are not memberships (they were never written by us).
pub fn membership_of_batch(batch: &[u8]) -> Option<Membership> {
    let header = fjord_log::batch::BatchHeader::parse(batch).ok()?;
    if !header.is_control() {
        return None;
    }
    let records = fjord_log::batch::decode_records(batch).ok()?;
    let record = records.first()?;
    let key = record.key.as_ref()?;
    if key.len() < 4 || i16::from_be_bytes([key[2], key[3]]) != CONTROL_TYPE_MEMBERSHIP {
        return None;
    }
    let value = record.value.as_ref()?;
    bincode::serde::decode_from_slice(value, bincode::config::standard())
        .ok()
        .map(|(m, _)| m)
}
