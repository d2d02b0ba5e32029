//! Coordinator settings (Kafka's `group.*` and `offsets.*` broker configs) and hard limits.

/// Longest group id accepted (bytes); longer ids get INVALID_GROUP_ID. Kafka has no explicit
/// limit, but its record keys hold at most `i16::MAX` bytes.
pub const GROUP_ID_MAX_BYTES: usize = 1024;
/// Longest topic name a commit may name: Kafka's legal topic name length. A longer name cannot
/// be a topic, so it gets UNKNOWN_TOPIC_OR_PARTITION.
pub const TOPIC_NAME_MAX_BYTES: usize = 249;
/// Longest `group.instance.id` (Kafka clients enforce the same limit); longer ones get
/// INVALID_REQUEST.
pub const GROUP_INSTANCE_ID_MAX_BYTES: usize = 249;
/// Client ids longer than this are cut (at a character boundary) before being stored: they
/// only label members in DescribeGroups and in generated member ids.
pub const CLIENT_ID_MAX_BYTES: usize = 255;
/// Longest protocol type or protocol (assignor) name; longer ones get INVALID_REQUEST (they
/// are stored in the group record, whose strings hold at most `i16::MAX` bytes).
pub const PROTOCOL_NAME_MAX_BYTES: usize = 255;
/// Most protocols (assignors) one member may offer; more get INVALID_REQUEST.
pub const PROTOCOLS_PER_MEMBER_MAX_COUNT: usize = 32;
/// Most bytes of protocol names and metadata one member may send in a JoinGroup; more get
/// INVALID_REQUEST. Kafka has no such check but fails later, when the group record no longer
/// fits in a batch.
pub const MEMBER_METADATA_MAX_BYTES: usize = 256 * 1024;
/// Largest batch the coordinator asks to append, like Kafka's default `max.message.bytes` of
/// `__consumer_offsets`. A group record or offset commit that does not fit fails as it does in
/// Kafka: UNKNOWN_SERVER_ERROR for SyncGroup, INVALID_COMMIT_OFFSET_SIZE for OffsetCommit.
pub const APPEND_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// How long a member added by a JoinGroup may wait for the join phase to end before it is
/// dropped (Kafka's `NewMemberJoinTimeoutMs`): clients that gave up waiting would otherwise
/// pile up as defunct members of a long rebalance.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// Settings of one coordinator. Defaults are Kafka's, except the limits Kafka leaves unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`.
    pub session_timeout_min_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub session_timeout_max_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members (extended by the same delay per new member, up to the rebalance
    /// timeout).
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members per group (Kafka: unbounded). Also bounds the members that
    /// were handed an id by MEMBER_ID_REQUIRED and have not joined yet.
    pub group_size_max: usize,
    /// Groups one coordinator holds; creating more answers COORDINATOR_NOT_AVAILABLE
    /// (retriable: empty groups expire). Kafka: unbounded.
    pub groups_max_count: usize,
    /// Committed offsets one coordinator holds; commits of new partitions beyond it answer
    /// INVALID_COMMIT_OFFSET_SIZE. Kafka: unbounded.
    pub offsets_max_count: usize,
    /// `offsets.retention.minutes`, in ms: how long offsets of an empty group (or of a
    /// standalone consumer) are kept.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`: longer commit metadata gets OFFSET_METADATA_TOO_LARGE.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_min_ms: 6_000,
            session_timeout_max_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            group_size_max: 1_000,
            groups_max_count: 100_000,
            offsets_max_count: 1_000_000,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// A [`GroupConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("session timeouts: min {min_ms} ms must be > 0 and <= max {max_ms} ms")]
    SessionTimeouts { min_ms: i32, max_ms: i32 },
    #[error("initial rebalance delay {0} ms must be >= 0")]
    InitialRebalanceDelay(i32),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("offset metadata limit {0} exceeds what a record can hold")]
    OffsetMetadata(usize),
}

impl GroupConfig {
    /// Checks the settings (`GroupCoordinator::new` asserts this holds).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_timeout_min_ms <= 0
            || self.session_timeout_min_ms > self.session_timeout_max_ms
        {
            return Err(ConfigError::SessionTimeouts {
                min_ms: self.session_timeout_min_ms,
                max_ms: self.session_timeout_max_ms,
            });
        }
        if self.initial_rebalance_delay_ms < 0 {
            return Err(ConfigError::InitialRebalanceDelay(
                self.initial_rebalance_delay_ms,
            ));
        }
        for (name, value) in [
            ("group_size_max", self.group_size_max),
            ("groups_max_count", self.groups_max_count),
            ("offsets_max_count", self.offsets_max_count),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("offsets_retention_ms", self.offsets_retention_ms),
            (
                "offsets_retention_check_interval_ms",
                self.offsets_retention_check_interval_ms,
            ),
        ] {
            if value <= 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.offset_metadata_max_bytes > super::records::STRING_MAX_BYTES {
            return Err(ConfigError::OffsetMetadata(self.offset_metadata_max_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_settings_are_named() {
        assert_eq!(GroupConfig::default().validate(), Ok(()));
        let bad = GroupConfig {
            session_timeout_min_ms: 10,
            session_timeout_max_ms: 5,
            ..GroupConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err(ConfigError::SessionTimeouts {
                min_ms: 10,
                max_ms: 5
            })
        );
        let bad = GroupConfig {
            group_size_max: 0,
            ..GroupConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::Zero("group_size_max")));
        let bad = GroupConfig {
            offset_metadata_max_bytes: 40_000,
            ..GroupConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::OffsetMetadata(40_000)));
    }
}
