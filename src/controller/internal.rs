//! The internal `__consumer_offsets` topic: when the controller creates it, and which of its
//! partitions coordinates a consumer group.

use std::collections::BTreeMap;

use super::{ClusterDefaults, MetadataImage, MetadataRecord};

/// Kafka's internal topic of committed offsets and group metadata.
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";

/// What the active controller should propose for the internal topics: `__consumer_offsets`
/// (`offsets.topic.num.partitions` partitions, `cleanup.policy=compact`,
/// `offsets.topic.segment.bytes`) once it is missing and at least
/// `offsets.topic.replication.factor` brokers are live; nothing otherwise. Call it whenever
/// the image changes (it is cheap and idempotent).
pub fn plan_internal_topics(
    image: &MetadataImage,
    defaults: &ClusterDefaults,
) -> Vec<MetadataRecord> {
    if image.topic(CONSUMER_OFFSETS_TOPIC).is_some() {
        return Vec::new();
    }
    let replication = usize::try_from(defaults.offsets_topic_replication_factor).unwrap_or(0);
    if replication == 0 || image.live_brokers().count() < replication {
        return Vec::new();
    }
    let configs = BTreeMap::from([
        ("cleanup.policy".to_owned(), "compact".to_owned()),
        (
            "segment.bytes".to_owned(),
            defaults.offsets_topic_segment_bytes.to_string(),
        ),
    ]);
    // Fails only on a fjord limit (replicas per broker, topic numbers); the next call
    // retries, and FindCoordinator answers COORDINATOR_NOT_AVAILABLE meanwhile.
    image
        .plan_placed_topic(
            CONSUMER_OFFSETS_TOPIC,
            defaults.offsets_topic_num_partitions,
            replication,
            configs,
        )
        .into_iter()
        .collect()
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, in
/// wrapping 32-bit arithmetic.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The `__consumer_offsets` partition whose leader coordinates `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `Utils.abs(n)` is `n & 0x7fffffff`
/// (so `i32::MIN` maps to 0, not to itself). `partitions` must be at least 1.
pub fn group_coordinator_partition(group_id: &str, partitions: u32) -> u32 {
    assert!(
        partitions > 0,
        "__consumer_offsets has at least one partition"
    );
    (java_string_hash(group_id) & 0x7fff_ffff) as u32 % partitions
}

#[cfg(test)]
mod tests {
    use fjord_replication::NodeId;

    use super::*;
    use crate::controller::{ApplyOutcome, TopicConfig};

    #[test]
    fn java_hash_code_vectors() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("abc"), 96354);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // Overflows i32: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(java_string_hash("my-consumer-group"), 1_513_705_513);
        // Non-ASCII: 'é' is one UTF-16 unit (0xE9); the emoji is a surrogate pair.
        assert_eq!(java_string_hash("é"), 233);
        assert_eq!(java_string_hash("groupé"), -1_237_460_406);
        assert_eq!(java_string_hash("\u{1F600}"), 1_772_899);
    }

    #[test]
    fn coordinator_partition_is_kafkas() {
        assert_eq!(group_coordinator_partition("", 50), 0);
        assert_eq!(group_coordinator_partition("abc", 50), 96354 % 50);
        // Utils.abs(Integer.MIN_VALUE) is 0, not MIN_VALUE.
        assert_eq!(group_coordinator_partition("polygenelubricants", 50), 0);
        // Negative hash: -1237460406 & 0x7fffffff = 910023242.
        assert_eq!(group_coordinator_partition("groupé", 50), 910_023_242 % 50);
        assert_eq!(group_coordinator_partition("anything", 1), 0);
    }

    fn register(image: &mut MetadataImage, id: u32) {
        let records = [
            MetadataRecord::RegisterBroker {
                id: NodeId(id),
                incarnation: 1,
                host: "h".into(),
                kafka_port: 9092,
                rack: None,
                rpc_addr: "h:1".into(),
            },
            MetadataRecord::UnfenceBroker { id: NodeId(id) },
        ];
        for r in &records {
            assert_eq!(image.apply(r, 1), ApplyOutcome::Applied);
        }
    }

    #[test]
    fn offsets_topic_waits_for_enough_brokers_then_is_created_once() {
        let defaults = ClusterDefaults {
            offsets_topic_num_partitions: 5,
            offsets_topic_replication_factor: 2,
            ..ClusterDefaults::default()
        };
        let mut image = MetadataImage::new();
        assert!(plan_internal_topics(&image, &defaults).is_empty());
        register(&mut image, 1);
        assert!(plan_internal_topics(&image, &defaults).is_empty());
        register(&mut image, 2);
        let records = plan_internal_topics(&image, &defaults);
        let [MetadataRecord::CreateTopic {
            name,
            assignment,
            configs,
            ..
        }] = records.as_slice()
        else {
            panic!("expected one CreateTopic: {records:?}");
        };
        assert_eq!(name, CONSUMER_OFFSETS_TOPIC);
        assert_eq!(assignment.len(), 5);
        assert!(assignment.iter().all(|r| r.len() == 2));
        assert_eq!(configs["cleanup.policy"], "compact");
        assert!(matches!(
            image.apply(&records[0], 2),
            ApplyOutcome::TopicCreated { partitions: 5, .. }
        ));
        assert!(plan_internal_topics(&image, &defaults).is_empty());
        let config = image
            .effective_topic_config(CONSUMER_OFFSETS_TOPIC, NodeId(1), &defaults)
            .expect("exists");
        assert_eq!(
            config,
            TopicConfig {
                cleanup_policy: fjord_log::CleanupPolicy::Compact,
                segment_bytes: 100 * 1024 * 1024,
                ..TopicConfig::default()
            }
        );
    }
}
