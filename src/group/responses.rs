//! Error codes and version-aware construction of the group APIs' responses.
//!
//! Fields a response version does not have are left at their defaults (the encoder rejects
//! some of them otherwise), and non-nullable-before-vN strings get "" instead of null.

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

/// The Kafka error codes the coordinator answers with.
pub(super) mod error {
    use kafka_protocol::ResponseError as E;

    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = E::UnknownServerError.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = E::UnknownTopicOrPartition.code();
    pub const NOT_LEADER_OR_FOLLOWER: i16 = E::NotLeaderOrFollower.code();
    pub const INVALID_FETCH_SIZE: i16 = E::InvalidFetchSize.code();
    pub const REQUEST_TIMED_OUT: i16 = E::RequestTimedOut.code();
    pub const MESSAGE_TOO_LARGE: i16 = E::MessageTooLarge.code();
    pub const OFFSET_METADATA_TOO_LARGE: i16 = E::OffsetMetadataTooLarge.code();
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = E::CoordinatorLoadInProgress.code();
    pub const COORDINATOR_NOT_AVAILABLE: i16 = E::CoordinatorNotAvailable.code();
    pub const NOT_COORDINATOR: i16 = E::NotCoordinator.code();
    pub const RECORD_LIST_TOO_LARGE: i16 = E::RecordListTooLarge.code();
    pub const NOT_ENOUGH_REPLICAS: i16 = E::NotEnoughReplicas.code();
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = E::NotEnoughReplicasAfterAppend.code();
    pub const ILLEGAL_GENERATION: i16 = E::IllegalGeneration.code();
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = E::InconsistentGroupProtocol.code();
    pub const INVALID_GROUP_ID: i16 = E::InvalidGroupId.code();
    pub const UNKNOWN_MEMBER_ID: i16 = E::UnknownMemberId.code();
    pub const INVALID_SESSION_TIMEOUT: i16 = E::InvalidSessionTimeout.code();
    pub const REBALANCE_IN_PROGRESS: i16 = E::RebalanceInProgress.code();
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = E::InvalidCommitOffsetSize.code();
    pub const INVALID_REQUEST: i16 = E::InvalidRequest.code();
    pub const KAFKA_STORAGE_ERROR: i16 = E::KafkaStorageError.code();
    pub const GROUP_ID_NOT_FOUND: i16 = E::GroupIdNotFound.code();
    pub const MEMBER_ID_REQUIRED: i16 = E::MemberIdRequired.code();
    pub const GROUP_MAX_SIZE_REACHED: i16 = E::GroupMaxSizeReached.code();
    pub const FENCED_INSTANCE_ID: i16 = E::FencedInstanceId.code();
    pub const UNSTABLE_OFFSET_COMMIT: i16 = E::UnstableOffsetCommit.code();

    /// Kafka's translation of a failed `__consumer_offsets` append into what a group request
    /// answers. `commit` selects OffsetCommit's variant of the size errors.
    pub fn from_append(code: i16, commit: bool) -> i16 {
        match code {
            UNKNOWN_TOPIC_OR_PARTITION | NOT_ENOUGH_REPLICAS | NOT_ENOUGH_REPLICAS_AFTER_APPEND => {
                COORDINATOR_NOT_AVAILABLE
            }
            NOT_LEADER_OR_FOLLOWER | KAFKA_STORAGE_ERROR => NOT_COORDINATOR,
            MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE | INVALID_FETCH_SIZE if commit => {
                INVALID_COMMIT_OFFSET_SIZE
            }
            MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE | INVALID_FETCH_SIZE => UNKNOWN_SERVER_ERROR,
            // A timed-out group write asks the members to rejoin (Kafka does the same).
            REQUEST_TIMED_OUT if !commit => REBALANCE_IN_PROGRESS,
            other => other,
        }
    }
}

/// What a JoinGroup is answered with, before it is shaped for the request's version.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// Only for the leader.
    pub members: Vec<JoinGroupResponseMember>,
}

/// A failed JoinGroup (generation -1, no leader); `member_id` is echoed (or handed out, with
/// MEMBER_ID_REQUIRED).
pub(super) fn join_error(member_id: &str, code: i16) -> JoinResult {
    JoinResult {
        error: code,
        generation: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        skip_assignment: false,
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

pub(super) fn join_response(version: i16, r: JoinResult) -> JoinGroupResponse {
    // protocol_name is nullable from v7; before, "no protocol" is "".
    let protocol_name = match r.protocol_name {
        Some(p) => Some(str_bytes(p)),
        None if version >= 7 => None,
        None => Some(StrBytes::default()),
    };
    let members = r
        .members
        .into_iter()
        .map(|m| {
            if version >= 5 {
                m
            } else {
                m.with_group_instance_id(None)
            }
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.map(str_bytes)
        } else {
            None
        })
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(r.leader))
        .with_skip_assignment(version >= 9 && r.skip_assignment)
        .with_member_id(str_bytes(r.member_id))
        .with_members(members)
}

/// What a SyncGroup is answered with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(code: i16) -> SyncResult {
        SyncResult {
            error: code,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

pub(super) fn sync_response(version: i16, r: SyncResult) -> SyncGroupResponse {
    let (protocol_type, protocol_name) = if version >= 5 {
        (
            r.protocol_type.map(str_bytes),
            r.protocol_name.map(str_bytes),
        )
    } else {
        (None, None)
    };
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(protocol_type)
        .with_protocol_name(protocol_name)
        .with_assignment(r.assignment)
}

pub(super) fn heartbeat_response(code: i16) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(code)
}

/// One leaving member's outcome.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LeaveResult {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub error: i16,
}

/// LeaveGroup v3+ answers per member; before, one member and its error at the top level.
pub(super) fn leave_response(
    version: i16,
    top: i16,
    members: Vec<LeaveResult>,
) -> LeaveGroupResponse {
    if version < 3 {
        let code = if top != error::NONE {
            top
        } else {
            members
                .iter()
                .map(|m| m.error)
                .find(|e| *e != error::NONE)
                .unwrap_or(error::NONE)
        };
        return LeaveGroupResponse::default().with_error_code(code);
    }
    LeaveGroupResponse::default()
        .with_error_code(top)
        .with_members(
            members
                .into_iter()
                .map(|m| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.instance_id.map(str_bytes))
                        .with_error_code(m.error)
                })
                .collect(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_errors_translate_as_kafka() {
        use error::*;
        assert_eq!(from_append(NOT_LEADER_OR_FOLLOWER, true), NOT_COORDINATOR);
        assert_eq!(
            from_append(NOT_ENOUGH_REPLICAS, false),
            COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(from_append(REQUEST_TIMED_OUT, true), REQUEST_TIMED_OUT);
        assert_eq!(from_append(REQUEST_TIMED_OUT, false), REBALANCE_IN_PROGRESS);
        assert_eq!(
            from_append(RECORD_LIST_TOO_LARGE, true),
            INVALID_COMMIT_OFFSET_SIZE
        );
        assert_eq!(
            from_append(RECORD_LIST_TOO_LARGE, false),
            UNKNOWN_SERVER_ERROR
        );
        assert_eq!(from_append(NOT_COORDINATOR, true), NOT_COORDINATOR);
    }

    #[test]
    fn old_versions_get_empty_protocol_names_and_top_level_leave_errors() {
        let r = join_response(6, join_error("m", error::UNKNOWN_MEMBER_ID));
        assert_eq!(r.protocol_name, Some(StrBytes::default()));
        let r = join_response(7, join_error("m", error::UNKNOWN_MEMBER_ID));
        assert_eq!(r.protocol_name, None);
        let members = vec![LeaveResult {
            member_id: "m".into(),
            instance_id: None,
            error: error::UNKNOWN_MEMBER_ID,
        }];
        let r = leave_response(2, error::NONE, members.clone());
        assert_eq!(r.error_code, error::UNKNOWN_MEMBER_ID);
        assert!(r.members.is_empty());
        let r = leave_response(3, error::NONE, members);
        assert_eq!(r.error_code, error::NONE);
        assert_eq!(r.members.len(), 1);
    }
}
