use std::collections::BTreeMap;

use bytes::Bytes;
use fjord_log::batch::set_base_offset;
use fjord_log::{build_batch, leader_change_batch, BuildOptions, CleanupPolicy, RecordSpec};
use proptest::prelude::*;

use super::*;
use crate::controller::{metadata_batch, ClusterDefaults, ConfigSource, ConfigType, TopicConfig};

fn register(id: u32, incarnation: u64, rack: Option<&str>) -> MetadataRecord {
    MetadataRecord::RegisterBroker {
        id: NodeId(id),
        incarnation,
        host: format!("host{id}"),
        kafka_port: 9092,
        rack: rack.map(str::to_owned),
        rpc_addr: format!("host{id}:9192"),
    }
}

fn create(name: &str, topic_id: u32, assignment: &[&[u32]]) -> MetadataRecord {
    MetadataRecord::CreateTopic {
        name: name.into(),
        topic_id,
        uuid: [(topic_id as u8).wrapping_add(16); 16],
        assignment: ids(assignment),
        configs: BTreeMap::new(),
    }
}

fn ids(assignment: &[&[u32]]) -> Vec<Vec<NodeId>> {
    assignment
        .iter()
        .map(|r| r.iter().map(|b| NodeId(*b)).collect())
        .collect()
}

/// An image with brokers `1..=n`, all unfenced.
fn with_brokers(n: u32) -> MetadataImage {
    let mut image = MetadataImage::new();
    for id in 1..=n {
        assert_eq!(
            image.apply(&register(id, 1, None), 1),
            ApplyOutcome::Applied
        );
        let unfence = MetadataRecord::UnfenceBroker { id: NodeId(id) };
        assert_eq!(image.apply(&unfence, 1), ApplyOutcome::Applied);
    }
    image
}

fn rejected_code(outcome: ApplyOutcome) -> i16 {
    match outcome {
        ApplyOutcome::Rejected(e) => e.code(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn registration_fences_new_incarnations_and_updates_retries() {
    let mut image = MetadataImage::new();
    assert_eq!(
        image.apply(&register(1, 5, None), 10),
        ApplyOutcome::Applied
    );
    let b = image.broker(NodeId(1)).expect("registered").clone();
    assert!(b.fenced);
    assert_eq!((b.incarnation, b.host.as_str()), (5, "host1"));
    assert_eq!(image.applied_end(), 10);
    // The same registration again: nothing to do.
    assert_eq!(
        image.apply(&register(1, 5, None), 11),
        ApplyOutcome::Unchanged
    );
    image.apply(&MetadataRecord::UnfenceBroker { id: NodeId(1) }, 12);
    // Same incarnation, new endpoint: updated, fencing kept.
    let mut moved = register(1, 5, Some("r1"));
    if let MetadataRecord::RegisterBroker { host, .. } = &mut moved {
        *host = "elsewhere".into();
    }
    assert_eq!(image.apply(&moved, 13), ApplyOutcome::Applied);
    let b = image.broker(NodeId(1)).expect("registered");
    assert_eq!(
        (b.host.as_str(), b.rack.as_deref(), b.fenced),
        ("elsewhere", Some("r1"), false)
    );
    // A restart: replaced, fenced again.
    assert_eq!(
        image.apply(&register(1, 6, None), 14),
        ApplyOutcome::Applied
    );
    let b = image.broker(NodeId(1)).expect("registered");
    assert_eq!(
        (b.incarnation, b.fenced, b.host.as_str()),
        (6, true, "host1")
    );
    assert_eq!(image.live_brokers().count(), 0);
}

#[test]
fn registrations_with_unusable_fields_are_rejected() {
    let mut image = MetadataImage::new();
    let bad = [
        MetadataRecord::RegisterBroker {
            id: NodeId(1),
            incarnation: 1,
            host: String::new(),
            kafka_port: 9092,
            rack: None,
            rpc_addr: "a:1".into(),
        },
        MetadataRecord::RegisterBroker {
            id: NodeId(1),
            incarnation: 1,
            host: "h".into(),
            kafka_port: 0,
            rack: None,
            rpc_addr: "a:1".into(),
        },
        MetadataRecord::RegisterBroker {
            id: NodeId(1),
            incarnation: 1,
            host: "h".into(),
            kafka_port: 1,
            rack: Some(String::new()),
            rpc_addr: "a:1".into(),
        },
        MetadataRecord::RegisterBroker {
            id: NodeId(1),
            incarnation: 1,
            host: "h".repeat(BROKER_FIELD_SIZE_MAX_BYTES + 1),
            kafka_port: 1,
            rack: None,
            rpc_addr: "a:1".into(),
        },
    ];
    for record in &bad {
        assert_eq!(rejected_code(image.apply(record, 1)), 119, "{record:?}");
    }
    assert!(image.brokers().is_empty());
}

#[test]
fn broker_count_is_bounded() {
    let mut image = MetadataImage::new();
    for id in 0..BROKERS_MAX_COUNT as u32 {
        assert_eq!(
            image.apply(&register(id, 1, None), 1),
            ApplyOutcome::Applied
        );
    }
    let over = register(BROKERS_MAX_COUNT as u32, 1, None);
    assert_eq!(rejected_code(image.apply(&over, 1)), 119);
    // Known brokers may still re-register.
    assert_eq!(image.apply(&register(0, 2, None), 1), ApplyOutcome::Applied);
}

#[test]
fn fencing_is_idempotent_and_needs_a_registration() {
    let mut image = MetadataImage::new();
    let fence = MetadataRecord::FenceBroker { id: NodeId(1) };
    let unfence = MetadataRecord::UnfenceBroker { id: NodeId(1) };
    assert_eq!(rejected_code(image.apply(&fence, 1)), 102);
    assert_eq!(rejected_code(image.apply(&unfence, 1)), 102);
    image.apply(&register(1, 1, None), 2);
    assert_eq!(image.apply(&fence, 3), ApplyOutcome::Unchanged);
    assert_eq!(image.apply(&unfence, 4), ApplyOutcome::Applied);
    assert_eq!(image.apply(&unfence, 5), ApplyOutcome::Unchanged);
    assert_eq!(
        image.live_brokers().map(|b| b.id).collect::<Vec<_>>(),
        [NodeId(1)]
    );
    assert_eq!(image.apply(&fence, 6), ApplyOutcome::Applied);
    assert_eq!(image.live_brokers().count(), 0);
}

#[test]
fn create_topic_and_its_queries() {
    let mut image = with_brokers(3);
    let outcome = image.apply(&create("orders", 1, &[&[1, 2], &[2, 3], &[3, 1]]), 20);
    assert_eq!(
        outcome,
        ApplyOutcome::TopicCreated {
            topic_id: 1,
            partitions: 3
        }
    );
    let topic = image.topic("orders").expect("created");
    assert_eq!(topic.partitions.len(), 3);
    assert_eq!(
        image.topic_by_id(1).map(|t| t.name.as_str()),
        Some("orders")
    );
    assert_eq!(image.topic_by_uuid(&[17; 16]).map(|t| t.topic_id), Some(1));
    assert_eq!(
        image.partition_replicas(1, 1),
        Some(&[NodeId(2), NodeId(3)][..])
    );
    assert_eq!(image.partition_replicas(1, 3), None);
    assert_eq!(image.partition_replicas(2, 0), None);
    assert_eq!(image.partitions_of(NodeId(1)), vec![(1, 0), (1, 2)]);
    assert_eq!(image.partitions_of(NodeId(9)), vec![]);
    assert_eq!(image.next_topic_id(), 2);
    // Topic numbers may skip ahead (a proposal was lost), never go back.
    assert!(matches!(
        image.apply(&create("later", 5, &[&[1]]), 21),
        ApplyOutcome::TopicCreated { topic_id: 5, .. }
    ));
    assert_eq!(image.next_topic_id(), 6);
    assert_eq!(image.partitions_of(NodeId(1)), vec![(1, 0), (1, 2), (5, 0)]);
}

#[test]
fn stale_or_malformed_create_topic_is_rejected() {
    let mut image = with_brokers(3);
    image.apply(&create("a.b", 1, &[&[1]]), 1);
    let before = image.clone();
    let cases: Vec<(MetadataRecord, i16)> = vec![
        (create("a.b", 2, &[&[1]]), 36),
        (create("a_b", 2, &[&[1]]), 17),
        (create("bad name", 2, &[&[1]]), 17),
        (create("x", 1, &[&[1]]), 41),
        (create("x", 0, &[&[1]]), 41),
        (create("x", u32::MAX, &[&[1]]), 41),
        (create("x", 2, &[]), 37),
        (create("x", 2, &[&[]]), 39),
        (create("x", 2, &[&[1, 1]]), 39),
        (create("x", 2, &[&[1, 2], &[1]]), 39),
        (create("x", 2, &[&[4]]), 39),
        (
            MetadataRecord::CreateTopic {
                name: "x".into(),
                topic_id: 2,
                uuid: [17; 16],
                assignment: ids(&[&[1]]),
                configs: BTreeMap::new(),
            },
            41,
        ),
        (
            MetadataRecord::CreateTopic {
                name: "x".into(),
                topic_id: 2,
                uuid: [0; 16],
                assignment: ids(&[&[1]]),
                configs: BTreeMap::new(),
            },
            41,
        ),
        (
            MetadataRecord::CreateTopic {
                name: "x".into(),
                topic_id: 2,
                uuid: [9; 16],
                assignment: ids(&[&[1]]),
                configs: BTreeMap::from([("retention.ms".into(), "soon".into())]),
            },
            40,
        ),
    ];
    for (record, code) in cases {
        let mut image = image.clone();
        assert_eq!(rejected_code(image.apply(&record, 2)), code, "{record:?}");
        assert_eq!(image.applied_end(), 2);
        image.applied_end = before.applied_end;
        assert_eq!(image, before, "a rejection changes nothing: {record:?}");
    }
}

#[test]
fn topic_replica_limit_is_enforced_on_apply() {
    let mut image = with_brokers(20);
    let wide: Vec<NodeId> = (1..=20).map(NodeId).collect();
    let too_many = TOPIC_REPLICAS_MAX_COUNT / 20 + 1;
    let record = MetadataRecord::CreateTopic {
        name: "wide".into(),
        topic_id: 1,
        uuid: [5; 16],
        assignment: vec![wide; too_many],
        configs: BTreeMap::new(),
    };
    assert_eq!(rejected_code(image.apply(&record, 1)), 44);
}

#[test]
fn delete_topic_frees_the_name_but_not_the_number() {
    let mut image = with_brokers(1);
    image.apply(&create("t", 1, &[&[1], &[1]]), 1);
    let delete = MetadataRecord::DeleteTopic { name: "t".into() };
    assert_eq!(
        image.apply(&delete, 2),
        ApplyOutcome::TopicDeleted {
            topic_id: 1,
            partitions: 2
        }
    );
    assert_eq!(rejected_code(image.apply(&delete, 3)), 3);
    assert!(image.topic_by_id(1).is_none() && image.topic_by_uuid(&[17; 16]).is_none());
    assert!(image.partitions_of(NodeId(1)).is_empty());
    assert_eq!(rejected_code(image.apply(&create("t", 1, &[&[1]]), 4)), 41);
    assert!(matches!(
        image.apply(&create("t", 2, &[&[1]]), 5),
        ApplyOutcome::TopicCreated { topic_id: 2, .. }
    ));
}

#[test]
fn create_partitions_appends_with_the_same_replication() {
    let mut image = with_brokers(3);
    image.apply(&create("t", 1, &[&[1, 2]]), 1);
    let add = |added: &[&[u32]]| MetadataRecord::CreatePartitions {
        name: "t".into(),
        added: ids(added),
    };
    assert_eq!(
        image.apply(&add(&[&[2, 3], &[3, 1]]), 2),
        ApplyOutcome::PartitionsCreated {
            topic_id: 1,
            first: 1,
            count: 2
        }
    );
    assert_eq!(
        image.partition_replicas(1, 2),
        Some(&[NodeId(3), NodeId(1)][..])
    );
    assert_eq!(rejected_code(image.apply(&add(&[&[1]]), 3)), 39);
    assert_eq!(rejected_code(image.apply(&add(&[]), 3)), 37);
    assert_eq!(rejected_code(image.apply(&add(&[&[1, 7]]), 3)), 39);
    let unknown = MetadataRecord::CreatePartitions {
        name: "nope".into(),
        added: ids(&[&[1, 2]]),
    };
    assert_eq!(rejected_code(image.apply(&unknown, 3)), 3);
    assert_eq!(image.topic("t").map(|t| t.partitions.len()), Some(3));
}

#[test]
fn alter_configs_sets_and_deletes_per_level() {
    let mut image = with_brokers(1);
    image.apply(&create("t", 1, &[&[1]]), 1);
    let alter =
        |resource: ConfigResource, set: &[(&str, Option<&str>)]| MetadataRecord::AlterConfigs {
            resource,
            set: set
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
        };
    let topic = ConfigResource::Topic("t".into());
    let set = alter(
        topic.clone(),
        &[("retention.ms", Some("5")), ("segment.ms", Some("9"))],
    );
    assert_eq!(image.apply(&set, 2), ApplyOutcome::Applied);
    assert_eq!(image.apply(&set, 3), ApplyOutcome::Unchanged);
    let delete = alter(topic.clone(), &[("segment.ms", None)]);
    assert_eq!(image.apply(&delete, 4), ApplyOutcome::Applied);
    assert_eq!(
        image.topic("t").map(|t| t.configs.clone()),
        Some(BTreeMap::from([(
            "retention.ms".to_owned(),
            "5".to_owned()
        )]))
    );
    // Topic names on a topic, broker names on brokers and the cluster.
    assert_eq!(
        rejected_code(image.apply(&alter(topic, &[("log.retention.ms", Some("5"))]), 5)),
        40
    );
    let cluster = alter(ConfigResource::Cluster, &[("log.retention.ms", Some("5"))]);
    assert_eq!(image.apply(&cluster, 6), ApplyOutcome::Applied);
    assert_eq!(image.cluster_configs()["log.retention.ms"], "5");
    let broker = ConfigResource::Broker(NodeId(1));
    assert_eq!(
        image.apply(&alter(broker.clone(), &[("log.roll.ms", Some("7"))]), 7),
        ApplyOutcome::Applied
    );
    assert_eq!(image.broker_configs(NodeId(1))["log.roll.ms"], "7");
    assert_eq!(
        image.apply(&alter(broker, &[("log.roll.ms", None)]), 8),
        ApplyOutcome::Applied
    );
    assert!(
        image.broker_configs.is_empty(),
        "no empty per-broker map is kept"
    );
    let ghost = alter(
        ConfigResource::Broker(NodeId(9)),
        &[("log.roll.ms", Some("7"))],
    );
    assert_eq!(rejected_code(image.apply(&ghost, 9)), 102);
    let unknown = alter(
        ConfigResource::Topic("u".into()),
        &[("retention.ms", Some("1"))],
    );
    assert_eq!(rejected_code(image.apply(&unknown, 9)), 3);
}

#[test]
fn producer_id_blocks_are_consecutive() {
    let mut image = with_brokers(2);
    let alloc = |broker: u32, count| MetadataRecord::AllocateProducerIds {
        broker: NodeId(broker),
        count,
    };
    assert_eq!(
        image.apply(&alloc(1, 1000), 1),
        ApplyOutcome::ProducerIds {
            first: 0,
            count: 1000
        }
    );
    assert_eq!(
        image.apply(&alloc(2, 10), 2),
        ApplyOutcome::ProducerIds {
            first: 1000,
            count: 10
        }
    );
    assert_eq!(image.next_producer_id(), 1010);
    assert_eq!(rejected_code(image.apply(&alloc(3, 10), 3)), 102);
    assert_eq!(rejected_code(image.apply(&alloc(1, 0), 3)), 42);
    assert_eq!(
        rejected_code(image.apply(&alloc(1, PRODUCER_ID_BLOCK_MAX_COUNT + 1), 3)),
        42
    );
    image.next_producer_id = i64::MAX - 5;
    assert_eq!(rejected_code(image.apply(&alloc(1, 10), 4)), -1);
    assert_eq!(image.next_producer_id(), i64::MAX - 5);
}

#[test]
fn cluster_id_is_written_once() {
    let mut image = MetadataImage::new();
    let set = |id: &str| MetadataRecord::SetClusterId { id: id.into() };
    assert_eq!(rejected_code(image.apply(&set(""), 1)), 42);
    assert_eq!(image.apply(&set("c1"), 2), ApplyOutcome::Applied);
    assert_eq!(image.apply(&set("c1"), 3), ApplyOutcome::Unchanged);
    assert_eq!(rejected_code(image.apply(&set("c2"), 4)), 104);
    assert_eq!(image.cluster_id(), Some("c1"));
}

#[test]
fn applied_end_never_goes_back() {
    let mut image = MetadataImage::new();
    image.apply(&register(1, 1, None), 10);
    image.apply(&register(2, 1, None), 5);
    assert_eq!(image.applied_end(), 10);
}

fn at_offset(batch: &Bytes, base_offset: u64) -> Vec<u8> {
    let mut bytes = batch.to_vec();
    set_base_offset(&mut bytes, base_offset).expect("offset");
    bytes
}

#[test]
fn apply_batch_applies_records_in_order_once() {
    let mut image = MetadataImage::new();
    let records = [
        register(1, 1, None),
        MetadataRecord::UnfenceBroker { id: NodeId(1) },
        MetadataRecord::FenceBroker { id: NodeId(2) },
    ];
    let batch = at_offset(&metadata_batch(&records, 0).expect("batch"), 0);
    let outcomes = image.apply_batch(&batch).expect("applies");
    assert_eq!(outcomes.len(), 3);
    assert_eq!(
        outcomes[..2],
        [ApplyOutcome::Applied, ApplyOutcome::Applied]
    );
    assert!(matches!(outcomes[2], ApplyOutcome::Rejected(_)));
    assert_eq!(image.applied_end(), 3);
    // Replayed (e.g. after a snapshot at that point): skipped.
    let before = image.clone();
    assert_eq!(image.apply_batch(&batch), Ok(vec![]));
    assert_eq!(image, before);
    // A leader's no-op only advances the end.
    let noop = at_offset(&leader_change_batch(2, 1, 0), 3);
    assert_eq!(image.apply_batch(&noop), Ok(vec![]));
    assert_eq!(image.applied_end(), 4);
}

#[test]
fn unreadable_batches_change_nothing() {
    let mut image = MetadataImage::new();
    let good = register(1, 1, None).encode();
    let garbage = Bytes::from_static(&[250, 1, 2]);
    let spec = |value: Option<Bytes>| RecordSpec {
        value,
        ..RecordSpec::default()
    };
    let cases = [
        build_batch(
            &[spec(Some(good.clone())), spec(Some(garbage))],
            &BuildOptions::default(),
        ),
        build_batch(
            &[spec(Some(good.clone())), spec(None)],
            &BuildOptions::default(),
        ),
    ];
    for batch in cases {
        let batch = batch.expect("built");
        assert!(image.apply_batch(&batch).is_err());
        assert_eq!(image, MetadataImage::new());
    }
    let mut corrupt = metadata_batch(&[register(1, 1, None)], 0)
        .expect("batch")
        .to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(
        image.apply_batch(&corrupt),
        Err(ControllerError::Batch(_))
    ));
    assert_eq!(image, MetadataImage::new());
}

fn populated() -> MetadataImage {
    let mut image = with_brokers(3);
    image.apply(&MetadataRecord::SetClusterId { id: "c".into() }, 1);
    image.apply(&create("t", 1, &[&[1, 2], &[2, 3]]), 2);
    image.apply(&create("u", 2, &[&[3]]), 3);
    image.apply(
        &MetadataRecord::AlterConfigs {
            resource: ConfigResource::Broker(NodeId(2)),
            set: BTreeMap::from([("log.retention.bytes".into(), Some("100".into()))]),
        },
        4,
    );
    image.apply(
        &MetadataRecord::AllocateProducerIds {
            broker: NodeId(1),
            count: 1000,
        },
        5,
    );
    image
}

#[test]
fn snapshot_round_trips_with_its_indexes() {
    let image = populated();
    let snapshot = image.to_snapshot();
    let back = MetadataImage::from_snapshot(&snapshot).expect("valid");
    assert_eq!(back, image);
    assert_eq!(back.topic_by_id(2).map(|t| t.name.as_str()), Some("u"));
    assert_eq!(back.to_snapshot(), snapshot, "encoding is canonical");
}

#[test]
fn damaged_snapshots_are_refused() {
    let snapshot = populated().to_snapshot().to_vec();
    for cut in [0, 5, 13, snapshot.len() - 1] {
        assert!(
            MetadataImage::from_snapshot(&snapshot[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    for at in [0, 4, 7, 20, snapshot.len() - 2] {
        let mut bad = snapshot.clone();
        bad[at] ^= 0x10;
        assert!(MetadataImage::from_snapshot(&bad).is_err(), "flip at {at}");
    }
    // Valid framing around an inconsistent image.
    let mut broken = populated();
    broken.next_topic_id = 2;
    assert!(matches!(
        MetadataImage::from_snapshot(&broken.to_snapshot()),
        Err(ControllerError::Snapshot(_))
    ));
    let mut broken = populated();
    broken
        .cluster_configs
        .insert("log.retention.ms".into(), "never".into());
    assert!(MetadataImage::from_snapshot(&broken.to_snapshot()).is_err());
}

#[test]
fn describe_topic_configs_with_sources_and_synonyms() {
    let mut image = populated();
    let defaults = ClusterDefaults {
        topic: TopicConfig {
            segment_ms: 3_600_000,
            ..TopicConfig::default()
        },
        ..ClusterDefaults::default()
    };
    let alter = |resource, key: &str, value: &str| MetadataRecord::AlterConfigs {
        resource,
        set: BTreeMap::from([(key.to_owned(), Some(value.to_owned()))]),
    };
    image.apply(
        &alter(ConfigResource::Topic("t".into()), "retention.ms", "1000"),
        6,
    );
    image.apply(
        &alter(ConfigResource::Cluster, "log.retention.ms", "2000"),
        7,
    );
    image.apply(
        &alter(ConfigResource::Cluster, "log.cleanup.policy", "compact"),
        8,
    );
    let entries = image
        .describe_configs(
            &ConfigResource::Topic("t".into()),
            None,
            NodeId(2),
            &defaults,
        )
        .expect("topic exists");
    assert_eq!(entries.len(), 10);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let get = |name: &str| entries.iter().find(|e| e.name == name).expect(name).clone();

    let retention = get("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("1000"));
    assert_eq!(retention.source, ConfigSource::TopicConfig);
    assert!(!retention.is_default && !retention.read_only && !retention.sensitive);
    assert_eq!(retention.config_type, ConfigType::Long);
    let synonyms: Vec<(&str, &str, ConfigSource)> = retention
        .synonyms
        .iter()
        .map(|s| (s.name.as_str(), s.value.as_deref().unwrap_or(""), s.source))
        .collect();
    assert_eq!(
        synonyms,
        [
            ("retention.ms", "1000", ConfigSource::TopicConfig),
            (
                "log.retention.ms",
                "2000",
                ConfigSource::DynamicDefaultBrokerConfig
            ),
            ("log.retention.ms", "604800000", ConfigSource::DefaultConfig),
        ]
    );
    let policy = get("cleanup.policy");
    assert_eq!(
        (policy.value.as_deref(), policy.source, policy.config_type),
        (
            Some("compact"),
            ConfigSource::DynamicDefaultBrokerConfig,
            ConfigType::List
        )
    );
    let bytes = get("retention.bytes");
    assert_eq!(
        (bytes.value.as_deref(), bytes.source),
        (Some("100"), ConfigSource::DynamicBrokerConfig),
        "broker 2's own setting applies when broker 2 answers"
    );
    let segment_ms = get("segment.ms");
    assert_eq!(
        (segment_ms.value.as_deref(), segment_ms.source),
        (Some("3600000"), ConfigSource::StaticBrokerConfig)
    );
    let segment_bytes = get("segment.bytes");
    assert_eq!(
        (
            segment_bytes.value.as_deref(),
            segment_bytes.source,
            segment_bytes.is_default
        ),
        (Some("1073741824"), ConfigSource::DefaultConfig, true)
    );
    assert_eq!(ConfigSource::TopicConfig.code(), 1);
    assert_eq!(ConfigSource::DefaultConfig.code(), 5);

    // As seen from broker 1 (no per-broker setting) and for a subset of keys.
    let keys = ["retention.bytes".to_owned(), "no.such.key".to_owned()];
    let some = image
        .describe_configs(
            &ConfigResource::Topic("t".into()),
            Some(&keys),
            NodeId(1),
            &defaults,
        )
        .expect("topic exists");
    assert_eq!(some.len(), 1);
    assert_eq!(some[0].value.as_deref(), Some("-1"));
    assert_eq!(some[0].source, ConfigSource::DefaultConfig);

    let unknown = image.describe_configs(
        &ConfigResource::Topic("nope".into()),
        None,
        NodeId(1),
        &defaults,
    );
    assert_eq!(unknown.map_err(|e| e.code()), Err(3));

    // The typed view agrees with the description.
    let config = image
        .effective_topic_config("t", NodeId(2), &defaults)
        .expect("exists");
    assert_eq!(
        config,
        TopicConfig {
            retention_ms: 1000,
            retention_bytes: 100,
            cleanup_policy: CleanupPolicy::Compact,
            segment_ms: 3_600_000,
            ..TopicConfig::default()
        }
    );
    let on_1 = image
        .effective_topic_config("t", NodeId(1), &defaults)
        .expect("exists");
    assert_eq!(on_1.retention_bytes, -1);
    assert!(image
        .effective_topic_config("nope", NodeId(1), &defaults)
        .is_none());
}

#[test]
fn describe_broker_and_cluster_configs() {
    let mut image = populated();
    let defaults = ClusterDefaults {
        num_partitions: 3,
        ..ClusterDefaults::default()
    };
    image.apply(
        &MetadataRecord::AlterConfigs {
            resource: ConfigResource::Cluster,
            set: BTreeMap::from([("log.roll.ms".into(), Some("60000".into()))]),
        },
        6,
    );
    let entries = image
        .describe_configs(
            &ConfigResource::Broker(NodeId(2)),
            None,
            NodeId(1),
            &defaults,
        )
        .expect("describable");
    let get = |name: &str| entries.iter().find(|e| e.name == name).expect(name).clone();
    assert_eq!(entries.len(), 16);
    let id = get("broker.id");
    assert_eq!(
        (id.value.as_deref(), id.read_only, id.source),
        (Some("2"), true, ConfigSource::StaticBrokerConfig)
    );
    let partitions = get("num.partitions");
    assert_eq!(
        (
            partitions.value.as_deref(),
            partitions.read_only,
            partitions.source
        ),
        (Some("3"), true, ConfigSource::StaticBrokerConfig)
    );
    assert_eq!(
        get("offsets.topic.num.partitions").source,
        ConfigSource::DefaultConfig
    );
    let retention = get("log.retention.bytes");
    assert_eq!(
        (
            retention.value.as_deref(),
            retention.read_only,
            retention.source
        ),
        (Some("100"), false, ConfigSource::DynamicBrokerConfig)
    );
    assert_eq!(
        get("log.roll.ms").source,
        ConfigSource::DynamicDefaultBrokerConfig
    );

    let cluster = image
        .describe_configs(&ConfigResource::Cluster, None, NodeId(1), &defaults)
        .expect("describable");
    assert_eq!(cluster.len(), 1);
    assert_eq!(
        (
            cluster[0].name.as_str(),
            cluster[0].value.as_deref(),
            cluster[0].source
        ),
        (
            "log.roll.ms",
            Some("60000"),
            ConfigSource::DynamicDefaultBrokerConfig
        )
    );
}

/// Records over a small domain, so that sequences hit both accepted and stale cases.
fn arb_record() -> impl Strategy<Value = MetadataRecord> {
    let id = (0u32..4).prop_map(NodeId);
    let name = prop::sample::select(vec!["a", "b", "a.b", "a_b", "__consumer_offsets"])
        .prop_map(str::to_owned);
    let replicas = prop::collection::vec(0u32..4, 0..3)
        .prop_map(|v| v.into_iter().map(NodeId).collect::<Vec<_>>());
    // Mostly well-formed placements (uniform, distinct brokers), sometimes anything.
    let well_formed =
        (1usize..3, 1usize..4, 0u32..4).prop_map(|(replication, partitions, shift)| {
            (0..partitions)
                .map(|p| {
                    (0..replication)
                        .map(|k| NodeId((p as u32 + k as u32 + shift) % 4))
                        .collect()
                })
                .collect::<Vec<Vec<NodeId>>>()
        });
    let assignment = prop_oneof![
        3 => well_formed,
        1 => prop::collection::vec(replicas, 0..3),
    ];
    let config = prop::sample::select(vec![
        ("retention.ms", Some("1000")),
        ("retention.ms", None),
        ("cleanup.policy", Some("compact")),
        ("log.roll.ms", Some("5")),
        ("log.roll.ms", None),
        ("segment.bytes", Some("12")),
    ])
    .prop_map(|(k, v)| (k.to_owned(), v.map(str::to_owned)));
    let resource = prop_oneof![
        name.clone().prop_map(ConfigResource::Topic),
        id.clone().prop_map(ConfigResource::Broker),
        Just(ConfigResource::Cluster),
    ];
    prop_oneof![
        (
            id.clone(),
            0u64..3,
            prop::option::of(prop::sample::select(vec!["r1", "r2"]))
        )
            .prop_map(|(id, incarnation, rack)| register(id.0, incarnation, rack)),
        id.clone().prop_map(|id| MetadataRecord::FenceBroker { id }),
        id.clone()
            .prop_map(|id| MetadataRecord::UnfenceBroker { id }),
        (
            name.clone(),
            0u32..12,
            0u8..4,
            assignment.clone(),
            prop::collection::btree_map(
                prop::sample::select(vec!["retention.ms", "segment.ms", "segment.ms", "bogus"])
                    .prop_map(str::to_owned),
                prop::sample::select(vec!["1", "100", "100", "x"]).prop_map(str::to_owned),
                0..2
            )
        )
            .prop_map(|(name, topic_id, uuid, assignment, configs)| {
                MetadataRecord::CreateTopic {
                    name,
                    topic_id,
                    uuid: [uuid; 16],
                    assignment,
                    configs,
                }
            }),
        name.clone()
            .prop_map(|name| MetadataRecord::DeleteTopic { name }),
        (name, assignment)
            .prop_map(|(name, added)| MetadataRecord::CreatePartitions { name, added }),
        (
            resource,
            prop::collection::btree_map(
                config.clone().prop_map(|c| c.0),
                config.prop_map(|c| c.1),
                0..3
            )
        )
            .prop_map(|(resource, set)| MetadataRecord::AlterConfigs { resource, set }),
        (id, 0u32..2000)
            .prop_map(|(broker, count)| MetadataRecord::AllocateProducerIds { broker, count }),
        prop::sample::select(vec!["", "c1", "c2"])
            .prop_map(|id| MetadataRecord::SetClusterId { id: id.to_owned() }),
    ]
}

proptest! {
    #[test]
    fn apply_is_deterministic_and_snapshots_round_trip(
        records in prop::collection::vec(arb_record(), 0..60),
        cut in 0usize..64,
    ) {
        // Registered brokers first, so that placements often fit.
        let records: Vec<MetadataRecord> =
            (0..4).map(|id| register(id, 0, None)).chain(records).collect();
        let mut a = MetadataImage::new();
        let mut b = MetadataImage::new();
        let mut resumed = MetadataImage::new();
        for (i, record) in records.iter().enumerate() {
            let end = i as u64 + 1;
            let outcome = a.apply(record, end);
            prop_assert_eq!(&outcome, &b.apply(record, end));
            let decoded = MetadataRecord::decode(&record.encode());
            prop_assert_eq!(decoded.as_ref(), Ok(record));
            if i == cut {
                resumed = MetadataImage::from_snapshot(&resumed.to_snapshot())
                    .expect("own snapshot");
            }
            resumed.apply(record, end);
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&resumed, &a);
        let back = MetadataImage::from_snapshot(&a.to_snapshot()).expect("own snapshot");
        prop_assert_eq!(&back, &a);
        for topic in a.topics().values() {
            prop_assert_eq!(back.topic_by_id(topic.topic_id), Some(topic));
            prop_assert_eq!(back.topic_by_uuid(&topic.uuid), Some(topic));
        }
    }
}
