//! The records of the metadata log and their encoding.

use std::collections::BTreeMap;

use bytes::Bytes;
use fjord_log::{build_batch, BuildOptions, RecordSpec};
use fjord_replication::NodeId;
use serde::{Deserialize, Serialize};

use super::{ApiError, ControllerError};

/// Largest encoded [`MetadataRecord`]. The planners keep every record they produce below it
/// (names, config values, partitions and replicas per topic are bounded), so a committed
/// record always decodes.
pub const METADATA_RECORD_SIZE_MAX_BYTES: usize = 1 << 20;

/// What a dynamic config applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigResource {
    /// A topic's overrides (Kafka resource type TOPIC).
    Topic(String),
    /// One broker's dynamic settings (Kafka resource type BROKER, name = the id).
    Broker(NodeId),
    /// The cluster-wide dynamic default of broker settings (Kafka resource type BROKER with
    /// an empty name, `kafka-configs --entity-default`).
    Cluster,
}

impl ConfigResource {
    /// Kafka's `ConfigResource.Type.TOPIC`.
    pub const KAFKA_TYPE_TOPIC: i8 = 2;
    /// Kafka's `ConfigResource.Type.BROKER`.
    pub const KAFKA_TYPE_BROKER: i8 = 4;

    /// The resource a DescribeConfigs / AlterConfigs request names. Other resource types
    /// (broker loggers, client metrics, groups) are not served: INVALID_REQUEST.
    pub fn from_kafka(resource_type: i8, name: &str) -> Result<ConfigResource, ApiError> {
        match resource_type {
            Self::KAFKA_TYPE_TOPIC => Ok(ConfigResource::Topic(name.to_owned())),
            Self::KAFKA_TYPE_BROKER if name.is_empty() => Ok(ConfigResource::Cluster),
            Self::KAFKA_TYPE_BROKER => name
                .parse::<u32>()
                .map(|id| ConfigResource::Broker(NodeId(id)))
                .map_err(|_| {
                    ApiError::InvalidRequest(format!(
                        "Broker id must be a non-negative integer, not '{name}'."
                    ))
                }),
            other => Err(ApiError::InvalidRequest(format!(
                "Config resource type {other} is not supported."
            ))),
        }
    }

    /// The Kafka `(resource_type, resource_name)` of this resource.
    pub fn to_kafka(&self) -> (i8, String) {
        match self {
            ConfigResource::Topic(name) => (Self::KAFKA_TYPE_TOPIC, name.clone()),
            ConfigResource::Broker(id) => (Self::KAFKA_TYPE_BROKER, id.0.to_string()),
            ConfigResource::Cluster => (Self::KAFKA_TYPE_BROKER, String::new()),
        }
    }
}

/// One entry of the metadata log: the value of one record in a metadata batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker process announces itself. A new `incarnation` (a restart) replaces the
    /// previous registration and starts fenced; the same incarnation again (a retried
    /// registration) only updates the endpoints.
    RegisterBroker {
        id: NodeId,
        incarnation: u64,
        host: String,
        kafka_port: u16,
        rack: Option<String>,
        /// Address of the node-to-node (Raft) listener.
        rpc_addr: String,
    },
    /// The broker missed its session: no new replicas are placed on it.
    FenceBroker {
        id: NodeId,
    },
    /// The broker heartbeats again.
    UnfenceBroker {
        id: NodeId,
    },
    /// A topic with its complete placement, decided by the proposer.
    CreateTopic {
        name: String,
        /// fjord's topic number (the Raft group's `topic`), >= 1, never reused.
        topic_id: u32,
        /// Kafka's topic id (Metadata v10+, Fetch v13+).
        uuid: [u8; 16],
        /// Replicas per partition; the first is the preferred leader.
        assignment: Vec<Vec<NodeId>>,
        /// Topic-level overrides (Kafka topic config names).
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Partitions appended to a topic (indexes continue after the existing ones).
    CreatePartitions {
        name: String,
        added: Vec<Vec<NodeId>>,
    },
    /// Dynamic config changes: `Some` sets, `None` deletes (back to the inherited value).
    AlterConfigs {
        resource: ConfigResource,
        set: BTreeMap<String, Option<String>>,
    },
    /// Hands `[next_producer_id, next_producer_id + count)` to `broker`.
    AllocateProducerIds {
        broker: NodeId,
        count: u32,
    },
    /// Written once when the cluster is bootstrapped.
    SetClusterId {
        id: String,
    },
}

fn codec_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<METADATA_RECORD_SIZE_MAX_BYTES>()
}

impl MetadataRecord {
    /// bincode 2 (standard config). Panics if the record exceeds
    /// [`METADATA_RECORD_SIZE_MAX_BYTES`]: the planners never produce such a record, and
    /// committing one would stop every broker's metadata.
    pub fn encode(&self) -> Bytes {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("metadata records always encode");
        assert!(
            bytes.len() <= METADATA_RECORD_SIZE_MAX_BYTES,
            "metadata record of {} bytes exceeds the limit",
            bytes.len()
        );
        Bytes::from(bytes)
    }

    /// Decodes exactly one record; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, ControllerError> {
        if bytes.len() > METADATA_RECORD_SIZE_MAX_BYTES {
            return Err(ControllerError::TooLarge {
                what: "metadata record",
                size: bytes.len(),
                max: METADATA_RECORD_SIZE_MAX_BYTES,
            });
        }
        let (record, read) = bincode::serde::decode_from_slice(bytes, codec_config())
            .map_err(|e| ControllerError::Decode(e.to_string()))?;
        if read != bytes.len() {
            return Err(ControllerError::Decode(format!(
                "{} trailing bytes",
                bytes.len() - read
            )));
        }
        Ok(record)
    }
}

/// One metadata batch holding `records` (record values, no keys), for proposing to the
/// metadata group; the log assigns offsets and the leader epoch on append. Fails if the
/// records do not fit one batch ([`fjord_log::batch::BATCH_SIZE_MAX_BYTES`]) or if there
/// are none.
pub fn metadata_batch(
    records: &[MetadataRecord],
    timestamp_ms: i64,
) -> Result<Bytes, ControllerError> {
    let specs: Vec<RecordSpec> = records
        .iter()
        .map(|r| RecordSpec {
            key: None,
            value: Some(r.encode()),
            headers: Vec::new(),
            timestamp_ms,
        })
        .collect();
    Ok(build_batch(&specs, &BuildOptions::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<MetadataRecord> {
        vec![
            MetadataRecord::RegisterBroker {
                id: NodeId(1),
                incarnation: 7,
                host: "localhost".into(),
                kafka_port: 9092,
                rack: Some("r1".into()),
                rpc_addr: "127.0.0.1:9192".into(),
            },
            MetadataRecord::FenceBroker { id: NodeId(1) },
            MetadataRecord::UnfenceBroker { id: NodeId(1) },
            MetadataRecord::CreateTopic {
                name: "t".into(),
                topic_id: 1,
                uuid: [7; 16],
                assignment: vec![vec![NodeId(1)]],
                configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            },
            MetadataRecord::DeleteTopic { name: "t".into() },
            MetadataRecord::CreatePartitions {
                name: "t".into(),
                added: vec![vec![NodeId(1)]],
            },
            MetadataRecord::AlterConfigs {
                resource: ConfigResource::Cluster,
                set: BTreeMap::from([("log.retention.ms".into(), None)]),
            },
            MetadataRecord::AllocateProducerIds {
                broker: NodeId(1),
                count: 1000,
            },
            MetadataRecord::SetClusterId { id: "c".into() },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for record in samples() {
            assert_eq!(MetadataRecord::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        let bytes = samples()[0].encode();
        for cut in 0..bytes.len() {
            assert!(
                MetadataRecord::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            MetadataRecord::decode(&long),
            Err(ControllerError::Decode(_))
        ));
        assert!(matches!(
            MetadataRecord::decode(&[200]),
            Err(ControllerError::Decode(_))
        ));
        let huge = vec![0; METADATA_RECORD_SIZE_MAX_BYTES + 1];
        assert!(matches!(
            MetadataRecord::decode(&huge),
            Err(ControllerError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_declared_length_beyond_the_input_is_refused_without_allocating_it() {
        // Variant 8 (SetClusterId) with a string length of u64::MAX (varint 253 + 8 bytes).
        let mut bytes = vec![8, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(MetadataRecord::decode(&bytes).is_err());
    }

    #[test]
    fn batch_holds_the_records_in_order() {
        let records = samples();
        let batch = metadata_batch(&records, 5).expect("batch");
        let decoded = fjord_log::decode_records(&batch).expect("decode");
        let values: Vec<MetadataRecord> = decoded
            .iter()
            .map(|r| MetadataRecord::decode(r.value.as_ref().expect("value")).expect("record"))
            .collect();
        assert_eq!(values, records);
        assert!(decoded
            .iter()
            .all(|r| r.key.is_none() && r.timestamp_ms == 5));
        assert!(metadata_batch(&[], 0).is_err());
    }

    #[test]
    fn kafka_resource_names() {
        assert_eq!(
            ConfigResource::from_kafka(2, "t"),
            Ok(ConfigResource::Topic("t".into()))
        );
        assert_eq!(
            ConfigResource::from_kafka(4, ""),
            Ok(ConfigResource::Cluster)
        );
        assert_eq!(
            ConfigResource::from_kafka(4, "3"),
            Ok(ConfigResource::Broker(NodeId(3)))
        );
        assert!(matches!(
            ConfigResource::from_kafka(4, "-1"),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            ConfigResource::from_kafka(8, "1"),
            Err(ApiError::InvalidRequest(_))
        ));
        for r in [
            ConfigResource::Topic("t".into()),
            ConfigResource::Broker(NodeId(3)),
            ConfigResource::Cluster,
        ] {
            let (ty, name) = r.to_kafka();
            assert_eq!(ConfigResource::from_kafka(ty, &name), Ok(r));
        }
    }
}
