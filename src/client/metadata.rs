//! The client's picture of the cluster: brokers, controller, and per topic its partitions
//! with leader, replicas and ISR, as the last Metadata response described them.

use std::collections::BTreeMap;
use std::fmt;

use fjord_replication::Instant;
use kafka_protocol::messages::MetadataResponse;

use super::error::ResponseError;

/// A topic and one of its partitions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A broker as advertised in Metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    /// `host:port`, bracketing IPv6 literals.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One partition as Metadata described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// `None` while the partition has no leader (election in progress, or all replicas down).
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
    /// A partition-level error (LEADER_NOT_AVAILABLE while a new partition elects).
    pub error: Option<ResponseError>,
}

/// One topic as Metadata described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE (being created), INVALID_TOPIC, ...
    pub error: Option<ResponseError>,
    pub is_internal: bool,
    /// By partition index.
    pub partitions: BTreeMap<i32, PartitionInfo>,
}

impl TopicInfo {
    /// The number of partitions, if the topic is usable.
    pub fn partition_count(&self) -> Option<i32> {
        if self.error.is_some() || self.partitions.is_empty() {
            return None;
        }
        i32::try_from(self.partitions.len()).ok()
    }

    /// Partitions with a leader, in order.
    pub fn available_partitions(&self) -> Vec<i32> {
        self.partitions
            .values()
            .filter(|p| p.leader.is_some())
            .map(|p| p.partition)
            .collect()
    }
}

/// A snapshot of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: Option<i32>,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// When this snapshot was taken (`None`: never refreshed).
    pub updated_at: Option<Instant>,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// The leader of `topic`-`partition`, if known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.topics.get(topic)?.partitions.get(&partition)?.leader
    }

    /// Merges a Metadata response: brokers, controller and cluster id are replaced; the
    /// topics in the response replace their previous entries; with `all_topics`, topics not
    /// in the response are dropped (they no longer exist).
    pub fn apply(&mut self, response: &MetadataResponse, all_topics: bool, now: Instant) {
        self.cluster_id = response.cluster_id.as_ref().map(|c| c.to_string());
        self.controller_id = (response.controller_id.0 >= 0).then_some(response.controller_id.0);
        self.brokers = response
            .brokers
            .iter()
            .map(|b| {
                let info = BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                };
                (b.node_id.0, info)
            })
            .collect();
        if all_topics {
            self.topics.clear();
        }
        for t in &response.topics {
            let Some(name) = t.name.as_ref() else {
                continue;
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let info = PartitionInfo {
                        partition: p.partition_index,
                        leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                        error: ResponseError::try_from_code(p.error_code),
                    };
                    (p.partition_index, info)
                })
                .collect();
            let info = TopicInfo {
                name: name.to_string(),
                error: ResponseError::try_from_code(t.error_code),
                is_internal: t.is_internal,
                partitions,
            };
            self.topics.insert(name.to_string(), info);
        }
        self.updated_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    /// (name, error code, (partition, leader) pairs).
    type TopicSpec<'a> = (&'a str, i16, &'a [(i32, i32)]);

    fn response(topics: &[TopicSpec<'_>]) -> MetadataResponse {
        MetadataResponse::default()
            .with_cluster_id(Some(StrBytes::from_static_str("c1")))
            .with_controller_id(BrokerId(2))
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("h1"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("::1"))
                    .with_port(9093),
            ])
            .with_topics(
                topics
                    .iter()
                    .map(|(name, error, parts)| {
                        MetadataResponseTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                            .with_error_code(*error)
                            .with_partitions(
                                parts
                                    .iter()
                                    .map(|(p, leader)| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(*p)
                                            .with_leader_id(BrokerId(*leader))
                                            .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                                            .with_isr_nodes(vec![BrokerId(1)])
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
    }

    #[test]
    fn apply_merges_requested_topics_and_replaces_on_full_listing() {
        let mut md = ClusterMetadata::default();
        md.apply(
            &response(&[("a", 0, &[(0, 1), (1, -1)]), ("gone", 3, &[])]),
            false,
            Instant::from_nanos(5),
        );
        assert_eq!(md.cluster_id.as_deref(), Some("c1"));
        assert_eq!(md.controller_id, Some(2));
        assert_eq!(md.brokers[&1].address(), "h1:9092");
        assert_eq!(md.brokers[&2].address(), "[::1]:9093");
        let a = md.topic("a").expect("a");
        assert_eq!(a.partition_count(), Some(2));
        assert_eq!(a.available_partitions(), vec![0]);
        assert_eq!(md.leader("a", 0), Some(1));
        assert_eq!(md.leader("a", 1), None);
        assert_eq!(a.partitions[&0].isr, vec![1]);
        let gone = md.topic("gone").expect("listed with its error");
        assert_eq!(gone.error, Some(ResponseError::UnknownTopicOrPartition));
        assert_eq!(gone.partition_count(), None);

        md.apply(
            &response(&[("b", 0, &[(0, 2)])]),
            false,
            Instant::from_nanos(6),
        );
        assert!(
            md.topic("a").is_some(),
            "partial refresh keeps other topics"
        );
        md.apply(
            &response(&[("b", 0, &[(0, 2)])]),
            true,
            Instant::from_nanos(7),
        );
        assert!(
            md.topic("a").is_none(),
            "a full listing drops missing topics"
        );
        assert_eq!(md.updated_at, Some(Instant::from_nanos(7)));
    }
}
