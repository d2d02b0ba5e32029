//! fjord's Kafka client: cluster view ([`Client`]), [`Producer`], [`Consumer`], [`Admin`],
//! and the connection layer they share. Runtime-agnostic: it only uses `futures` and the [`Connector`],
//! [`fjord_replication::Clock`] and [`fjord_replication::Spawner`] traits, so the same code
//! runs in the CLI (Tokio, TCP) and as the simulator's workload.

pub mod admin;
pub mod backoff;
pub mod cluster;
pub mod conn;
pub mod consumer;
pub mod error;
pub mod metadata;
mod notify;
pub mod partitioner;
pub mod producer;
#[cfg(test)]
pub(crate) mod testkit;

pub use admin::{Admin, AlterConfigOp, ClusterDescription, ConfigEntry, ConfigResource, NewTopic};
pub use cluster::{Client, ClientConfig};
pub use conn::{ClientError, ClientOptions, Connector, KafkaConnection};
pub use consumer::{AssignorKind, Consumer, ConsumerConfig, ConsumerRecord, OffsetReset};
pub use error::{Error, ResponseError};
pub use metadata::{BrokerInfo, ClusterMetadata, PartitionInfo, TopicInfo, TopicPartition};
pub use producer::{
    Acks, DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
