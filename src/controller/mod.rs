//! The controller: the state machine of the metadata Raft group
//! ([`fjord_replication::multiraft::GroupId::METADATA`], KRaft's `__cluster_metadata`).
//!
//! Every broker applies the committed metadata log, in order, to its own [`MetadataImage`]:
//! registered brokers and whether they are fenced, topics with their replica assignment and
//! configs, dynamic broker and cluster configs, the producer-id counter and the cluster id.
//! The metadata group's leader (the active controller) additionally *plans*: it validates
//! admin requests against its image, makes every decision, and proposes the result as
//! records. This module does no IO: the broker's node loop proposes, commits and feeds
//! batches in.
//!
//! # Records
//!
//! One [`MetadataRecord`] is the value of one Kafka record in a metadata batch (bincode 2,
//! standard config, at most [`METADATA_RECORD_SIZE_MAX_BYTES`]); key and headers are unused.
//! `RegisterBroker` / `FenceBroker` / `UnfenceBroker` track brokers, `CreateTopic` /
//! `DeleteTopic` / `CreatePartitions` topics, `AlterConfigs` dynamic configs (topic, one
//! broker, or the cluster-wide default), `AllocateProducerIds` hands a block of producer ids
//! to a broker, and `SetClusterId` is written once at bootstrap.
//!
//! # The proposer decides, every broker applies verbatim
//!
//! A record carries the *result* of every decision: the topic number, the Kafka topic id,
//! the full replica assignment, the resulting config values (an incremental APPEND is
//! resolved into the new value before proposing). Applying never decides anything, because
//! the inputs of a decision are not all in the log (which brokers heartbeat right now is in
//! the leader's memory), and because the placement algorithm may change between fjord
//! versions while every broker, old or new, must derive the same image from the same log.
//! Apply only re-checks the record against the image and rejects it if it no longer fits
//! (a `CreateTopic` for a name created meanwhile); the rejection is an [`ApplyOutcome`]
//! the proposer turns into the Kafka response. A leader that plans against an image which
//! already includes its own in-flight proposals (apply them to a clone) never sees such
//! rejections; apply's checks are the safety net for everything else.
//!
//! # Determinism
//!
//! Apply, the planners and [`Liveness`] are pure functions of their inputs: no clock, no
//! randomness (the Kafka topic id is derived from the cluster id and the topic number,
//! the placement start from the topic number), `BTreeMap` everywhere, so every broker
//! reaches the same image and every simulator run is reproducible. Apply never panics on
//! any record: whatever a (possibly buggy or newer) proposer committed, brokers stay in
//! step.

mod config;
mod error;
mod image;
mod internal;
mod liveness;
mod plan;
mod records;

pub use config::{
    AlterConfigOp, AlterOpType, ClusterDefaults, ConfigEntry, ConfigSource, ConfigSynonym,
    ConfigType, TimestampType, TopicConfig, CONFIG_VALUE_SIZE_MAX_BYTES, SEGMENT_SIZE_MIN_BYTES,
};
pub use error::{ApiError, ControllerError};
pub use image::{
    ApplyOutcome, BrokerInfo, MetadataImage, PartitionInfo, TopicInfo, BROKERS_MAX_COUNT,
    BROKER_FIELD_SIZE_MAX_BYTES, METADATA_SNAPSHOT_SIZE_MAX_BYTES, PRODUCER_ID_BLOCK_MAX_COUNT,
    TOPIC_PARTITIONS_MAX_COUNT, TOPIC_REPLICAS_MAX_COUNT,
};
pub use internal::{
    group_coordinator_partition, java_string_hash, plan_internal_topics, CONSUMER_OFFSETS_TOPIC,
};
pub use liveness::{Liveness, BROKER_SESSION_TIMEOUT_DEFAULT_MS};
pub use plan::{validate_topic_name, BROKER_REPLICAS_MAX_COUNT, TOPIC_NAME_MAX_CHARS};
pub use records::{metadata_batch, ConfigResource, MetadataRecord, METADATA_RECORD_SIZE_MAX_BYTES};
