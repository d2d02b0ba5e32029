//! Errors of the cluster-level client (metadata, admin, consumer) and Kafka's error table.
//!
//! Kafka error codes come from the broker; whether one is worth retrying follows Kafka's own
//! table (`ResponseError::is_retriable`, the `RetriableException` classes of the Java
//! client). Which ones also mean "your metadata is stale" is the Java client's list.

use std::time::Duration;

pub use kafka_protocol::error::ResponseError;

use super::conn::ClientError;

/// A failure of a cluster-level operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection to a broker failed, closed or timed out.
    #[error("transport: {0}")]
    Transport(#[from] ClientError),
    /// The broker answered with an error code.
    #[error("broker error {code}{}", message_suffix(.message))]
    Broker {
        code: ResponseError,
        message: Option<String>,
    },
    /// No broker (known or bootstrap) accepted a connection.
    #[error("no broker reachable (last error: {0})")]
    NoBrokerAvailable(String),
    /// The operation did not finish within its time budget.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A response that contradicts the request (missing entries, impossible values).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// The caller asked for something impossible (bad config, unknown partition).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An offset commit was refused because the group rebalanced: the partitions may be
    /// owned by another member now (Java's `CommitFailedException`).
    #[error("commit failed: {0}")]
    CommitFailed(ResponseError),
    /// No committed offset and `auto_offset_reset` is `None`.
    #[error("no offset for {topic}-{partition} and no reset policy")]
    NoOffsetForPartition { topic: String, partition: i32 },
    /// A fetched batch failed validation (CRC, framing): a broker bug or corruption.
    #[error("corrupt batch in {topic}-{partition} at offset {offset}: {reason}")]
    CorruptRecord {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    /// The consumer or producer was closed.
    #[error("closed")]
    Closed,
}

fn message_suffix(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl Error {
    /// An error from a broker's error code, `None` for 0.
    pub fn from_code(code: i16, message: Option<String>) -> Option<Error> {
        ResponseError::try_from_code(code).map(|code| Error::Broker { code, message })
    }

    /// Whether trying again (after a backoff, maybe on another connection) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Transport(e) => transport_is_retriable(e),
            Error::Broker { code, .. } => is_retriable(*code),
            Error::NoBrokerAvailable(_) | Error::Timeout(_) => true,
            _ => false,
        }
    }
}

/// Connection-level failures are retriable except a codec or version mismatch, which will
/// not go away by itself.
pub fn transport_is_retriable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_) | ClientError::Timeout(_) | ClientError::Closed
    )
}

/// Kafka's retriable table.
pub fn is_retriable(code: ResponseError) -> bool {
    code.is_retriable()
}

/// Errors after which the client's view of leaders is stale: refresh metadata before
/// retrying (the Java client's `InvalidMetadataException` subclasses, plus
/// LEADER_NOT_AVAILABLE and KAFKA_STORAGE_ERROR which it also treats that way).
pub fn needs_metadata_refresh(code: ResponseError) -> bool {
    matches!(
        code,
        ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::LeaderNotAvailable
            | ResponseError::ReplicaNotAvailable
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
            | ResponseError::KafkaStorageError
            | ResponseError::UnknownTopicId
            | ResponseError::InconsistentTopicId
            | ResponseError::ListenerNotFound
            | ResponseError::NotController
    )
}

/// Errors that say the group coordinator moved or is not ready: find it again.
pub fn needs_coordinator_lookup(code: ResponseError) -> bool {
    matches!(
        code,
        ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_table_follows_kafka() {
        for code in [
            ResponseError::NotLeaderOrFollower,
            ResponseError::LeaderNotAvailable,
            ResponseError::RequestTimedOut,
            ResponseError::NotEnoughReplicas,
            ResponseError::NotEnoughReplicasAfterAppend,
            ResponseError::UnknownTopicOrPartition,
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::CorruptMessage,
            ResponseError::OffsetNotAvailable,
        ] {
            assert!(is_retriable(code), "{code}");
        }
        for code in [
            ResponseError::MessageTooLarge,
            ResponseError::OutOfOrderSequenceNumber,
            ResponseError::InvalidProducerEpoch,
            ResponseError::TopicAuthorizationFailed,
            ResponseError::OffsetOutOfRange,
            ResponseError::RebalanceInProgress,
            ResponseError::Unknown(999),
        ] {
            assert!(!is_retriable(code), "{code}");
        }
    }

    #[test]
    fn stale_leader_errors_refresh_metadata() {
        assert!(needs_metadata_refresh(ResponseError::NotLeaderOrFollower));
        assert!(needs_metadata_refresh(
            ResponseError::UnknownTopicOrPartition
        ));
        assert!(needs_metadata_refresh(ResponseError::LeaderNotAvailable));
        assert!(!needs_metadata_refresh(ResponseError::RequestTimedOut));
        assert!(!needs_metadata_refresh(ResponseError::NotEnoughReplicas));
    }

    #[test]
    fn error_classification_covers_transport_and_codes() {
        assert!(Error::Transport(ClientError::Closed).is_retriable());
        assert!(!Error::Transport(ClientError::ApiVersions(35)).is_retriable());
        assert!(Error::from_code(6, None).expect("error").is_retriable());
        assert!(Error::from_code(0, None).is_none());
        let e = Error::from_code(36, Some("exists".into())).expect("error");
        assert!(!e.is_retriable());
        assert_eq!(e.to_string(), "broker error TopicAlreadyExists: exists");
    }
}
