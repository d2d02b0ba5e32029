//! The consumer group coordinator: Kafka's classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups), sans-IO.
//!
//! A node runs one [`GroupCoordinator`] per `__consumer_offsets` partition it leads. The
//! coordinator takes decoded requests with their api version, the time and a [`Reply`]
//! token, and produces [`Output`]s: responses for waiting requests, and batches to append to
//! its partition. Whatever must survive a coordinator failover — committed offsets and each
//! group's generation, members and assignment — is appended (Raft-replicated) *before* the
//! request that depends on it is answered; a new coordinator replays the partition
//! ([`GroupCoordinator::load`]) and carries on from there. The record format is Kafka's own
//! ([`records`]).
//!
//! Driving it:
//!
//! 1. `new(partition, seed, config)`, then `load(batches)` with everything the partition
//!    committed (through the new leader's first entry), then `loaded(now)`. Until then
//!    requests answer COORDINATOR_LOAD_IN_PROGRESS — except Heartbeat (answered NONE) and
//!    SyncGroup (REBALANCE_IN_PROGRESS), exactly as Kafka does, because older clients do not
//!    expect that error there.
//! 2. Requests: `join`, `sync`, `heartbeat`, `leave`, `commit_offsets` answer through
//!    [`Output::Respond`] (maybe much later: JoinGroup waits for the join phase, SyncGroup for
//!    the leader's assignment, OffsetCommit for its append). `fetch_offsets`, `list_groups`
//!    and `describe_groups` return their response directly; for requests naming groups of
//!    several coordinators the caller splits and merges.
//! 3. `tick(now)` regularly (every ~100 ms is plenty): session timeouts, join/sync phase
//!    deadlines, the initial rebalance delay and offset expiry fire there.
//! 4. After each call, `take_output()`: send the responses, propose the `Append` batches and
//!    report each with `on_appended(now, token, Ok(()) | Err(code))` in append order.
//! 5. On losing leadership, `resign()` answers every waiting request NOT_COORDINATOR.
//!
//! Behaviour follows Kafka's classic coordinator (`GroupCoordinator.scala`, and the Java
//! `GroupMetadataManager` of Kafka 3.7+ where they differ): generations, MEMBER_ID_REQUIRED for
//! JoinGroup v4+, static membership (group instance ids, JoinGroup v5+) with fencing,
//! protocol selection by vote, the leader assigning client-side, followers' SyncGroup waiting
//! for the leader's, rebalances on join / leave / metadata change / session timeout /
//! missing SyncGroup, the initial rebalance delay, standalone (generation -1) commits,
//! `require_stable`, offset expiry of empty groups. Deviations are documented where they
//! are made (see docs/design.md, "Consumer groups").

mod admin;
mod config;
mod coordinator;
#[allow(clippy::module_inception)]
mod group;
mod offsets;
pub mod records;
mod responses;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prop_tests;

pub use config::{
    ConfigError, GroupConfig, APPEND_BATCH_MAX_BYTES, CLIENT_ID_MAX_BYTES, GROUP_ID_MAX_BYTES,
    GROUP_INSTANCE_ID_MAX_BYTES, MEMBER_METADATA_MAX_BYTES, NEW_MEMBER_JOIN_TIMEOUT_MS,
    PROTOCOLS_PER_MEMBER_MAX_COUNT, PROTOCOL_NAME_MAX_BYTES, TOPIC_NAME_MAX_BYTES,
};
pub use coordinator::{ClientInfo, GroupCoordinator, LoadError, Output, Reply};
pub use group::GroupState;
