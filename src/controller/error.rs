//! Errors: [`ApiError`] is what a Kafka client gets back, [`ControllerError`] what stops a
//! broker from reading metadata bytes.

use fjord_log::BatchError;
use kafka_protocol::error::ResponseError;

/// A Kafka error code with a message, as the controller answers an admin request or rejects
/// a stale record. Each variant is exactly one Kafka error code ([`ApiError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// -1 UNKNOWN_SERVER_ERROR: a limit of the server itself was reached (ids exhausted).
    #[error("UNKNOWN_SERVER_ERROR: {0}")]
    UnknownServerError(String),
    /// 3 UNKNOWN_TOPIC_OR_PARTITION.
    #[error("UNKNOWN_TOPIC_OR_PARTITION: {0}")]
    UnknownTopicOrPartition(String),
    /// 17 INVALID_TOPIC_EXCEPTION: an illegal name, or one colliding with an existing topic.
    #[error("INVALID_TOPIC_EXCEPTION: {0}")]
    InvalidTopic(String),
    /// 36 TOPIC_ALREADY_EXISTS.
    #[error("TOPIC_ALREADY_EXISTS: {0}")]
    TopicAlreadyExists(String),
    /// 37 INVALID_PARTITIONS.
    #[error("INVALID_PARTITIONS: {0}")]
    InvalidPartitions(String),
    /// 38 INVALID_REPLICATION_FACTOR.
    #[error("INVALID_REPLICATION_FACTOR: {0}")]
    InvalidReplicationFactor(String),
    /// 39 INVALID_REPLICA_ASSIGNMENT.
    #[error("INVALID_REPLICA_ASSIGNMENT: {0}")]
    InvalidReplicaAssignment(String),
    /// 40 INVALID_CONFIG.
    #[error("INVALID_CONFIG: {0}")]
    InvalidConfig(String),
    /// 41 NOT_CONTROLLER (retriable): the record was planned against a state that changed
    /// under it (a topic number or id taken meanwhile); plan again.
    #[error("NOT_CONTROLLER: {0}")]
    NotController(String),
    /// 42 INVALID_REQUEST.
    #[error("INVALID_REQUEST: {0}")]
    InvalidRequest(String),
    /// 44 POLICY_VIOLATION: a fjord limit (partitions per broker, replicas per topic).
    #[error("POLICY_VIOLATION: {0}")]
    PolicyViolation(String),
    /// 101 DUPLICATE_BROKER_REGISTRATION: another live process holds the broker id.
    #[error("DUPLICATE_BROKER_REGISTRATION: {0}")]
    DuplicateBrokerRegistration(String),
    /// 102 BROKER_ID_NOT_REGISTERED.
    #[error("BROKER_ID_NOT_REGISTERED: {0}")]
    BrokerIdNotRegistered(String),
    /// 104 INCONSISTENT_CLUSTER_ID.
    #[error("INCONSISTENT_CLUSTER_ID: {0}")]
    InconsistentClusterId(String),
    /// 119 INVALID_REGISTRATION: a broker registration with unusable fields.
    #[error("INVALID_REGISTRATION: {0}")]
    InvalidRegistration(String),
}

impl ApiError {
    /// The Kafka error this is.
    pub fn response_error(&self) -> ResponseError {
        match self {
            ApiError::UnknownServerError(_) => ResponseError::UnknownServerError,
            ApiError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
            ApiError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            ApiError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            ApiError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            ApiError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            ApiError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            ApiError::InvalidConfig(_) => ResponseError::InvalidConfig,
            ApiError::NotController(_) => ResponseError::NotController,
            ApiError::InvalidRequest(_) => ResponseError::InvalidRequest,
            ApiError::PolicyViolation(_) => ResponseError::PolicyViolation,
            ApiError::DuplicateBrokerRegistration(_) => ResponseError::DuplicateBrokerRegistration,
            ApiError::BrokerIdNotRegistered(_) => ResponseError::BrokerIdNotRegistered,
            ApiError::InconsistentClusterId(_) => ResponseError::InconsistentClusterId,
            ApiError::InvalidRegistration(_) => ResponseError::InvalidRegistration,
        }
    }

    /// The Kafka error code, for the response's `error_code`.
    pub fn code(&self) -> i16 {
        self.response_error().code()
    }

    /// The human-readable message, for the response's `error_message`.
    pub fn message(&self) -> &str {
        match self {
            ApiError::UnknownServerError(m)
            | ApiError::UnknownTopicOrPartition(m)
            | ApiError::InvalidTopic(m)
            | ApiError::TopicAlreadyExists(m)
            | ApiError::InvalidPartitions(m)
            | ApiError::InvalidReplicationFactor(m)
            | ApiError::InvalidReplicaAssignment(m)
            | ApiError::InvalidConfig(m)
            | ApiError::NotController(m)
            | ApiError::InvalidRequest(m)
            | ApiError::PolicyViolation(m)
            | ApiError::DuplicateBrokerRegistration(m)
            | ApiError::BrokerIdNotRegistered(m)
            | ApiError::InconsistentClusterId(m)
            | ApiError::InvalidRegistration(m) => m,
        }
    }

    pub(crate) fn unknown_topic(name: &str) -> ApiError {
        ApiError::UnknownTopicOrPartition(format!("Topic '{name}' does not exist."))
    }

    pub(crate) fn unregistered(id: fjord_replication::NodeId) -> ApiError {
        ApiError::BrokerIdNotRegistered(format!("Broker {} is not registered.", id.0))
    }
}

/// Metadata bytes a broker cannot read: a damaged batch, an undecodable record, a bad
/// snapshot. Committed metadata is the same on every broker, so this is not a client's
/// fault; the broker must not skip the batch (its image would diverge) and stops applying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// The metadata batch itself does not validate or decode.
    #[error("metadata batch: {0}")]
    Batch(#[from] BatchError),
    /// A record (or snapshot) larger than its size limit.
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// A record value that is not a bincode [`super::MetadataRecord`].
    #[error("undecodable metadata record: {0}")]
    Decode(String),
    /// A record in a metadata batch without a value.
    #[error("metadata record at offset {offset} has no value")]
    MissingValue { offset: u64 },
    /// A snapshot that is truncated, damaged or inconsistent.
    #[error("invalid metadata snapshot: {0}")]
    Snapshot(String),
    /// Static configuration ([`super::ClusterDefaults`]) that cannot be used.
    #[error("invalid controller defaults: {0}")]
    InvalidDefaults(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kafkas() {
        let cases = [
            (ApiError::UnknownServerError(String::new()), -1),
            (ApiError::UnknownTopicOrPartition(String::new()), 3),
            (ApiError::InvalidTopic(String::new()), 17),
            (ApiError::TopicAlreadyExists(String::new()), 36),
            (ApiError::InvalidPartitions(String::new()), 37),
            (ApiError::InvalidReplicationFactor(String::new()), 38),
            (ApiError::InvalidReplicaAssignment(String::new()), 39),
            (ApiError::InvalidConfig(String::new()), 40),
            (ApiError::NotController(String::new()), 41),
            (ApiError::InvalidRequest(String::new()), 42),
            (ApiError::PolicyViolation(String::new()), 44),
            (ApiError::DuplicateBrokerRegistration(String::new()), 101),
            (ApiError::BrokerIdNotRegistered(String::new()), 102),
            (ApiError::InconsistentClusterId(String::new()), 104),
            (ApiError::InvalidRegistration(String::new()), 119),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
        let e = ApiError::InvalidConfig("bad".into());
        assert_eq!(e.message(), "bad");
        assert_eq!(e.to_string(), "INVALID_CONFIG: bad");
    }
}
