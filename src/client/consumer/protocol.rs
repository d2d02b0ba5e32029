//! The "consumer" embedded protocol of the classic group protocol: what a member puts in
//! JoinGroup's protocol metadata (`ConsumerProtocolSubscription`) and what the leader hands
//! out in SyncGroup (`ConsumerProtocolAssignment`), each as a big-endian `i16` version
//! followed by the (non-flexible) body, as the Java client and librdkafka encode them. So
//! fjord consumers share groups with Java and librdkafka consumers.
//!
//! Decoding follows the Java client: a version newer than we know is read as the newest we
//! know (later versions only append fields), an empty assignment is no partitions.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::client::metadata::TopicPartition;

/// JoinGroup's protocol type for consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The newest subscription and assignment versions we read and write (Kafka 3.x+).
pub const CONSUMER_PROTOCOL_VERSION_MAX: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("consumer protocol data shorter than its version")]
    Truncated,
    #[error("unsupported consumer protocol version {0}")]
    UnsupportedVersion(i16),
    #[error("malformed consumer protocol data: {0}")]
    Malformed(String),
}

/// What a member asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    pub user_data: Option<Bytes>,
    /// Partitions the member owns now (v1+, used by cooperative rebalancing).
    pub owned_partitions: Vec<TopicPartition>,
    /// The generation those partitions were assigned in (v2+; -1 unknown).
    pub generation_id: i32,
    pub rack_id: Option<String>,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            topics: Vec::new(),
            user_data: None,
            owned_partitions: Vec::new(),
            generation_id: -1,
            rack_id: None,
        }
    }
}

/// What the leader gives a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub partitions: Vec<TopicPartition>,
    pub user_data: Option<Bytes>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Groups partitions by topic, topics and partitions sorted.
fn by_topic(partitions: &[TopicPartition]) -> BTreeMap<&str, Vec<i32>> {
    let mut out: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        out.entry(tp.topic.as_str()).or_default().push(tp.partition);
    }
    for ps in out.values_mut() {
        ps.sort_unstable();
        ps.dedup();
    }
    out
}

fn with_version<T: Encodable>(message: &T, version: i16) -> Result<Bytes, ProtocolError> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(buf.freeze())
}

fn read_version(bytes: &mut Bytes) -> Result<i16, ProtocolError> {
    if bytes.remaining() < 2 {
        return Err(ProtocolError::Truncated);
    }
    let version = bytes.get_i16();
    if version < 0 {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    Ok(version.min(CONSUMER_PROTOCOL_VERSION_MAX))
}

pub fn encode_subscription(s: &Subscription, version: i16) -> Result<Bytes, ProtocolError> {
    let owned = by_topic(&s.owned_partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            OwnedTopic::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolSubscription::default()
        .with_topics(s.topics.iter().map(|t| str_bytes(t)).collect())
        .with_user_data(s.user_data.clone())
        .with_owned_partitions(if version >= 1 { owned } else { Vec::new() })
        .with_generation_id(if version >= 2 { s.generation_id } else { -1 })
        .with_rack_id(if version >= 3 {
            s.rack_id.as_deref().map(str_bytes)
        } else {
            None
        });
    with_version(&message, version)
}

pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription, ProtocolError> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let version = read_version(&mut buf)?;
    let m = ConsumerProtocolSubscription::decode(&mut buf, version)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(Subscription {
        topics: m.topics.iter().map(|t| t.to_string()).collect(),
        user_data: m.user_data,
        owned_partitions: m
            .owned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(t.topic.0.to_string(), *p))
            })
            .collect(),
        generation_id: m.generation_id,
        rack_id: m.rack_id.map(|r| r.to_string()),
    })
}

pub fn encode_assignment(a: &Assignment, version: i16) -> Result<Bytes, ProtocolError> {
    let topics = by_topic(&a.partitions)
        .into_iter()
        .map(|(topic, partitions)| {
            AssignedTopic::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    let message = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(topics)
        .with_user_data(a.user_data.clone());
    with_version(&message, version)
}

pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, ProtocolError> {
    if bytes.is_empty() {
        return Ok(Assignment::default());
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    let version = read_version(&mut buf)?;
    let m = ConsumerProtocolAssignment::decode(&mut buf, version)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(Assignment {
        partitions: m
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(t.topic.0.to_string(), *p))
            })
            .collect(),
        user_data: m.user_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's wire primitives, written by hand from the schema (not through the crate).
    struct Wire(Vec<u8>);

    impl Wire {
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn string(self, s: &str) -> Self {
            let mut w = self.i16(s.len() as i16);
            w.0.extend_from_slice(s.as_bytes());
            w
        }
        fn bytes(self, b: Option<&[u8]>) -> Self {
            match b {
                None => self.i32(-1),
                Some(b) => {
                    let mut w = self.i32(b.len() as i32);
                    w.0.extend_from_slice(b);
                    w
                }
            }
        }
    }

    /// ConsumerProtocolSubscription v3 as the Java client (3.x) writes it for a
    /// cooperative-sticky member owning t1-0 and t1-2 in generation 4: topics, user data
    /// (the generation as an int32, CooperativeStickyAssignor), owned partitions,
    /// generation, rack.
    fn java_subscription_v3() -> Vec<u8> {
        Wire(Vec::new())
            .i16(3)
            .i32(2)
            .string("t1")
            .string("t2")
            .bytes(Some(&4i32.to_be_bytes()))
            .i32(1)
            .string("t1")
            .i32(2)
            .i32(0)
            .i32(2)
            .i32(4)
            .string("rack-a")
            .0
    }

    #[test]
    fn subscription_matches_the_java_encoding_both_ways() {
        let bytes = java_subscription_v3();
        let s = decode_subscription(&bytes).expect("decodes");
        let expected = Subscription {
            topics: vec!["t1".into(), "t2".into()],
            user_data: Some(Bytes::copy_from_slice(&4i32.to_be_bytes())),
            owned_partitions: vec![TopicPartition::new("t1", 0), TopicPartition::new("t1", 2)],
            generation_id: 4,
            rack_id: Some("rack-a".into()),
        };
        assert_eq!(s, expected);
        assert_eq!(encode_subscription(&s, 3).expect("encodes"), bytes);
    }

    #[test]
    fn old_and_future_subscription_versions_decode() {
        // v0 (librdkafka's eager assignors, old Java clients): topics and user data only.
        let v0 = Wire(Vec::new()).i16(0).i32(1).string("t").bytes(None).0;
        let s = decode_subscription(&v0).expect("v0");
        assert_eq!(s.topics, ["t"]);
        assert_eq!(s.generation_id, -1);
        assert!(s.owned_partitions.is_empty());
        // A future version: read as v3, trailing fields ignored.
        let mut v9 = java_subscription_v3();
        v9[1] = 9;
        v9.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_subscription(&v9).expect("v9").generation_id, 4);
        assert_eq!(decode_subscription(&[0]), Err(ProtocolError::Truncated));
        assert!(decode_subscription(&[0, 1, 0, 0]).is_err());
        assert_eq!(
            decode_subscription(&[0xff, 0xff]),
            Err(ProtocolError::UnsupportedVersion(-1))
        );
    }

    #[test]
    fn assignment_matches_the_java_encoding_both_ways() {
        // ConsumerProtocolAssignment v3: [topic, [partition]], user data null.
        let bytes = Wire(Vec::new())
            .i16(3)
            .i32(2)
            .string("a")
            .i32(2)
            .i32(1)
            .i32(3)
            .string("b")
            .i32(1)
            .i32(0)
            .bytes(None)
            .0;
        let a = decode_assignment(&bytes).expect("decodes");
        assert_eq!(
            a.partitions,
            [
                TopicPartition::new("a", 1),
                TopicPartition::new("a", 3),
                TopicPartition::new("b", 0)
            ]
        );
        // Partitions given in any order encode grouped and sorted, as Java does.
        let shuffled = Assignment {
            partitions: vec![
                TopicPartition::new("b", 0),
                TopicPartition::new("a", 3),
                TopicPartition::new("a", 1),
            ],
            user_data: None,
        };
        assert_eq!(encode_assignment(&shuffled, 3).expect("encodes"), bytes);
        assert_eq!(
            decode_assignment(&[]).expect("empty"),
            Assignment::default()
        );
    }

    #[test]
    fn round_trips_at_every_version() {
        let s = Subscription {
            topics: vec!["x".into()],
            user_data: Some(Bytes::from_static(b"ud")),
            owned_partitions: vec![TopicPartition::new("x", 7)],
            generation_id: 9,
            rack_id: None,
        };
        for version in 0..=3 {
            let back =
                decode_subscription(&encode_subscription(&s, version).expect("enc")).expect("dec");
            assert_eq!(back.topics, s.topics);
            assert_eq!(back.owned_partitions.is_empty(), version == 0);
            assert_eq!(back.generation_id, if version >= 2 { 9 } else { -1 });
            let a = Assignment {
                partitions: vec![TopicPartition::new("x", 1)],
                user_data: Some(Bytes::from_static(b"u")),
            };
            assert_eq!(
                decode_assignment(&encode_assignment(&a, version).expect("enc")).expect("dec"),
                a
            );
        }
    }
}
