use std::collections::BTreeMap;

use super::*;
use crate::controller::{AlterOpType, ApplyOutcome};

/// An image with unfenced brokers `(id, rack)`.
fn cluster(brokers: &[(u32, Option<&str>)]) -> MetadataImage {
    let mut image = MetadataImage::new();
    for (id, rack) in brokers {
        let register = MetadataRecord::RegisterBroker {
            id: NodeId(*id),
            incarnation: 1,
            host: "h".into(),
            kafka_port: 9092,
            rack: rack.map(str::to_owned),
            rpc_addr: "h:1".into(),
        };
        assert_eq!(image.apply(&register, 1), ApplyOutcome::Applied);
        let unfence = MetadataRecord::UnfenceBroker { id: NodeId(*id) };
        assert_eq!(image.apply(&unfence, 1), ApplyOutcome::Applied);
    }
    image
}

fn plain(n: u32) -> MetadataImage {
    let brokers: Vec<(u32, Option<&str>)> = (1..=n).map(|id| (id, None)).collect();
    cluster(&brokers)
}

fn no_configs() -> BTreeMap<String, Option<String>> {
    BTreeMap::new()
}

fn assignment_of(record: &MetadataRecord) -> &[Vec<NodeId>] {
    match record {
        MetadataRecord::CreateTopic { assignment, .. } => assignment,
        MetadataRecord::CreatePartitions { added, .. } => added,
        other => panic!("no assignment in {other:?}"),
    }
}

/// Plans and applies a topic, returning its assignment.
fn create(image: &mut MetadataImage, name: &str, partitions: i32, rf: i16) -> Vec<Vec<NodeId>> {
    let record = image
        .plan_create_topic(
            name,
            partitions,
            rf,
            &no_configs(),
            &ClusterDefaults::default(),
        )
        .expect("valid");
    assert!(matches!(
        image.apply(&record, 1),
        ApplyOutcome::TopicCreated { .. }
    ));
    assignment_of(&record).to_vec()
}

fn code<T: std::fmt::Debug>(result: Result<T, ApiError>) -> i16 {
    result.expect_err("expected an error").code()
}

#[test]
fn topic_names_follow_kafka() {
    let image = plain(1);
    let defaults = ClusterDefaults::default();
    let plan = |name: &str| image.plan_create_topic(name, 1, 1, &no_configs(), &defaults);
    for ok in [
        "a",
        "A-z_0.9",
        &"x".repeat(TOPIC_NAME_MAX_CHARS),
        "...",
        "_",
    ] {
        assert!(plan(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a b",
        "é",
        "a/b",
        &"x".repeat(TOPIC_NAME_MAX_CHARS + 1),
    ] {
        assert_eq!(code(plan(bad)), 17, "{bad:?}");
    }
    assert_eq!(
        plan("").unwrap_err().message(),
        "Topic name is illegal, it can't be empty"
    );
    assert_eq!(code(plan(CONSUMER_OFFSETS_TOPIC)), 42);
}

#[test]
fn names_differing_only_in_dot_and_underscore_collide() {
    let mut image = plain(1);
    create(&mut image, "a.b_c", 1, 1);
    let defaults = ClusterDefaults::default();
    let plan = |name: &str| image.plan_create_topic(name, 1, 1, &no_configs(), &defaults);
    assert_eq!(
        code(plan("a.b_c")),
        36,
        "the same name exists: TOPIC_ALREADY_EXISTS first"
    );
    let err = plan("a_b.c").unwrap_err();
    assert_eq!(err.code(), 17);
    assert_eq!(
        err.message(),
        "Topic 'a_b.c' collides with existing topic: a.b_c"
    );
    assert!(plan("a-b-c").is_ok());
    assert!(plan("a.b.d").is_ok());
}

#[test]
fn partition_and_replication_counts() {
    let mut image = plain(3);
    image.apply(&MetadataRecord::FenceBroker { id: NodeId(3) }, 1);
    let defaults = ClusterDefaults {
        num_partitions: 4,
        default_replication_factor: 2,
        ..ClusterDefaults::default()
    };
    let plan = |p, rf| image.plan_create_topic("t", p, rf, &no_configs(), &defaults);
    let record = plan(-1, -1).expect("defaults");
    assert_eq!(assignment_of(&record).len(), 4);
    assert!(assignment_of(&record).iter().all(|r| r.len() == 2));
    assert_eq!(code(plan(0, 1)), 37);
    assert_eq!(code(plan(-2, 1)), 37);
    assert_eq!(code(plan(TOPIC_PARTITIONS_MAX_COUNT as i32 + 1, 1)), 37);
    assert!(plan(TOPIC_PARTITIONS_MAX_COUNT as i32, 1).is_ok());
    assert_eq!(code(plan(1, 0)), 38);
    assert_eq!(code(plan(1, -2)), 38);
    // Broker 3 is fenced: only two live brokers.
    let err = plan(1, 3).unwrap_err();
    assert_eq!(err.code(), 38);
    assert!(err.message().contains("only 2 broker(s)"), "{err}");
    // The replication factor is checked before the configs, as in Kafka.
    let bad_config = BTreeMap::from([("bogus".to_owned(), Some("1".to_owned()))]);
    assert_eq!(
        code(image.plan_create_topic("t", 1, 3, &bad_config, &defaults)),
        38
    );
}

#[test]
fn creation_configs_are_validated_and_kept() {
    let image = plain(1);
    let defaults = ClusterDefaults::default();
    let configs = BTreeMap::from([
        ("cleanup.policy".to_owned(), Some("compact".to_owned())),
        ("retention.ms".to_owned(), Some("-1".to_owned())),
    ]);
    let record = image
        .plan_create_topic("t", 1, 1, &configs, &defaults)
        .expect("valid");
    let MetadataRecord::CreateTopic { configs: kept, .. } = &record else {
        panic!("{record:?}");
    };
    assert_eq!(kept["cleanup.policy"], "compact");
    assert_eq!(kept.len(), 2);
    for (key, value) in [
        ("compression.type", Some("lz4")),
        ("retention.ms", Some("x")),
        ("retention.ms", None),
    ] {
        let configs = BTreeMap::from([(key.to_owned(), value.map(str::to_owned))]);
        assert_eq!(
            code(image.plan_create_topic("t", 1, 1, &configs, &defaults)),
            40,
            "{key}={value:?}"
        );
    }
}

fn leader_counts(assignment: &[Vec<NodeId>]) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for replicas in assignment {
        *counts.entry(replicas[0]).or_default() += 1;
    }
    counts
}

fn replica_counts(assignment: &[Vec<NodeId>]) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for b in assignment.iter().flatten() {
        *counts.entry(*b).or_default() += 1;
    }
    counts
}

fn assert_balanced(counts: &BTreeMap<NodeId, usize>, brokers: usize) {
    assert_eq!(counts.len(), brokers, "every broker is used: {counts:?}");
    let min = counts.values().min().copied().unwrap_or(0);
    let max = counts.values().max().copied().unwrap_or(0);
    assert!(max - min <= 1, "unbalanced: {counts:?}");
}

#[test]
fn rack_aware_placement_spreads_replicas_and_balances_leaders() {
    let mut image = cluster(&[
        (1, Some("a")),
        (2, Some("a")),
        (3, Some("b")),
        (4, Some("b")),
        (5, Some("c")),
        (6, Some("c")),
    ]);
    let racks_of: BTreeMap<NodeId, String> = image
        .brokers()
        .values()
        .map(|b| (b.id, b.rack.clone().expect("rack")))
        .collect();
    let rack = |b: NodeId| racks_of[&b].clone();
    let assignment = create(&mut image.clone(), "t", 12, 3);
    for replicas in &assignment {
        let racks: BTreeSet<String> = replicas.iter().map(|b| rack(*b)).collect();
        assert_eq!(racks.len(), 3, "one replica per rack: {replicas:?}");
    }
    assert_balanced(&leader_counts(&assignment), 6);
    assert_balanced(&replica_counts(&assignment), 6);
    // RF 2 over 3 racks: two racks per partition, every rack used, leaders balanced.
    let assignment = create(&mut image, "u", 6, 2);
    let mut racks_used = BTreeSet::new();
    for replicas in &assignment {
        let racks: BTreeSet<String> = replicas.iter().map(|b| rack(*b)).collect();
        assert_eq!(racks.len(), 2, "{replicas:?}");
        racks_used.extend(racks);
    }
    assert_eq!(racks_used.len(), 3);
    assert_balanced(&leader_counts(&assignment), 6);
}

#[test]
fn uneven_and_partial_racks() {
    // Rack "a" has three brokers, "b" one, and broker 5 has no rack (a rack of its own).
    let image = cluster(&[
        (1, Some("a")),
        (2, Some("a")),
        (3, Some("a")),
        (4, Some("b")),
        (5, None),
    ]);
    let record = image
        .plan_create_topic("t", 10, 3, &no_configs(), &ClusterDefaults::default())
        .expect("valid");
    let rack = |b: &NodeId| image.broker(*b).expect("known").rack.clone();
    for replicas in assignment_of(&record) {
        let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
        assert_eq!(distinct.len(), 3);
        let racks: BTreeSet<Option<String>> = replicas.iter().map(rack).collect();
        assert_eq!(
            racks.len(),
            3,
            "three racks exist, each partition uses them: {replicas:?}"
        );
    }
    assert_balanced(&leader_counts(assignment_of(&record)), 5);
}

#[test]
fn rack_unaware_placement_is_kafkas_round_robin() {
    let mut image = plain(5);
    let assignment = create(&mut image, "t", 10, 3);
    assert_balanced(&leader_counts(&assignment), 5);
    assert_balanced(&replica_counts(&assignment), 5);
    // Leaders walk the brokers in order from the start.
    let leaders: Vec<u32> = assignment.iter().map(|r| r[0].0).collect();
    let start = leaders[0] as usize - 1;
    let expected: Vec<u32> = (0..10).map(|p| ((p + start) % 5) as u32 + 1).collect();
    assert_eq!(leaders, expected);
    // The follower shift grows after every round of brokers.
    let second_gap = |r: &Vec<NodeId>| (r[1].0 + 5 - r[0].0) % 5;
    assert_eq!(
        second_gap(&assignment[5]),
        second_gap(&assignment[0]) % 4 + 1
    );
}

#[test]
fn placement_is_deterministic_and_rotates_across_topics() {
    let mut image = plain(3);
    let defaults = ClusterDefaults::default();
    let a = image.plan_create_topic("a", 1, 1, &no_configs(), &defaults);
    assert_eq!(
        a,
        image.plan_create_topic("a", 1, 1, &no_configs(), &defaults)
    );
    let mut leaders = Vec::new();
    for name in ["t1", "t2", "t3", "t4", "t5", "t6"] {
        leaders.push(create(&mut image, name, 1, 1)[0][0]);
    }
    let counts = leader_counts(&leaders.iter().map(|l| vec![*l]).collect::<Vec<_>>());
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
}

#[test]
fn topic_ids_are_unique_well_formed_uuids() {
    let mut image = plain(1);
    image.apply(&MetadataRecord::SetClusterId { id: "c1".into() }, 1);
    let mut seen = BTreeSet::new();
    for i in 0..50 {
        create(&mut image, &format!("t{i}"), 1, 1);
        let uuid = image.topic(&format!("t{i}")).expect("created").uuid;
        assert!(seen.insert(uuid));
        assert_eq!(uuid[6] >> 4, 4, "version 4");
        assert_eq!(uuid[8] >> 6, 2, "RFC 4122 variant");
        assert_ne!(uuid[0] >> 2, 62, "base64 form starts with '-'");
    }
    let mut other = plain(1);
    other.apply(&MetadataRecord::SetClusterId { id: "c2".into() }, 1);
    create(&mut other, "t0", 1, 1);
    assert_ne!(
        other.topic("t0").map(|t| t.uuid),
        image.topic("t0").map(|t| t.uuid),
        "another cluster, other ids"
    );
}

#[test]
fn manual_assignments() {
    let mut image = plain(3);
    image.apply(&MetadataRecord::FenceBroker { id: NodeId(3) }, 1);
    let plan = |a: &[(i32, Vec<i32>)]| image.plan_create_topic_assigned("t", a, &no_configs());
    let record = plan(&[(1, vec![2, 1]), (0, vec![1, 2])]).expect("valid");
    assert_eq!(
        assignment_of(&record),
        [vec![NodeId(1), NodeId(2)], vec![NodeId(2), NodeId(1)]]
    );
    for (bad, expected) in [
        (vec![], 37),
        (vec![(1, vec![1])], 39),
        (vec![(0, vec![1]), (0, vec![2])], 39),
        (vec![(0, vec![])], 39),
        (vec![(0, vec![1, 1])], 39),
        (vec![(0, vec![1, 2]), (1, vec![1])], 39),
        (vec![(0, vec![3])], 39),
        (vec![(0, vec![7])], 39),
        (vec![(0, vec![-1])], 39),
    ] {
        assert_eq!(code(plan(&bad)), expected, "{bad:?}");
    }
}

#[test]
fn delete_topic_rules() {
    let mut image = plain(1);
    assert_eq!(code(image.plan_delete_topic("t")), 3);
    create(&mut image, "t", 1, 1);
    assert_eq!(
        image.plan_delete_topic("t"),
        Ok(MetadataRecord::DeleteTopic { name: "t".into() })
    );
    let defaults = ClusterDefaults {
        offsets_topic_replication_factor: 1,
        ..ClusterDefaults::default()
    };
    for r in crate::controller::plan_internal_topics(&image, &defaults) {
        image.apply(&r, 2);
    }
    assert_eq!(code(image.plan_delete_topic(CONSUMER_OFFSETS_TOPIC)), 42);
    assert_eq!(
        code(image.plan_create_partitions(CONSUMER_OFFSETS_TOPIC, 60, None)),
        42
    );
}

#[test]
fn create_partitions_rules_and_placement() {
    let mut image = plain(4);
    let original = create(&mut image, "t", 3, 2);
    assert_eq!(code(image.plan_create_partitions("nope", 5, None)), 3);
    let err = image.plan_create_partitions("t", 2, None).unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            37,
            "Topic currently has 3 partitions, which is higher than the requested 2."
        )
    );
    assert_eq!(
        image
            .plan_create_partitions("t", 3, None)
            .unwrap_err()
            .message(),
        "Topic already has 3 partitions."
    );
    assert_eq!(code(image.plan_create_partitions("t", -1, None)), 37);
    assert_eq!(
        code(image.plan_create_partitions("t", TOPIC_PARTITIONS_MAX_COUNT as i32 + 1, None)),
        37
    );
    let record = image.plan_create_partitions("t", 8, None).expect("valid");
    let added = assignment_of(&record).to_vec();
    assert_eq!(added.len(), 5);
    assert!(added.iter().all(|r| r.len() == 2));
    // Leaders continue the round-robin that started at partition 0's leader.
    let leaders: Vec<u32> = original.iter().chain(&added).map(|r| r[0].0).collect();
    let start = leaders[0] - 1;
    let expected: Vec<u32> = (0..8).map(|p| (p + start) % 4 + 1).collect();
    assert_eq!(leaders, expected);
    assert_eq!(
        image.apply(&record, 2),
        ApplyOutcome::PartitionsCreated {
            topic_id: 1,
            first: 3,
            count: 5
        }
    );
    // Manual placement of the new partitions.
    let manual = image
        .plan_create_partitions("t", 9, Some(&[vec![4, 1]]))
        .expect("valid");
    assert_eq!(assignment_of(&manual), [vec![NodeId(4), NodeId(1)]]);
    assert_eq!(
        code(image.plan_create_partitions("t", 10, Some(&[vec![4, 1]]))),
        39
    );
    assert_eq!(
        code(image.plan_create_partitions("t", 9, Some(&[vec![4]]))),
        39
    );
    // Not enough live brokers for the topic's replication factor.
    for id in 2..=4 {
        image.apply(&MetadataRecord::FenceBroker { id: NodeId(id) }, 3);
    }
    assert_eq!(code(image.plan_create_partitions("t", 9, None)), 38);
}

#[test]
fn broker_replica_limit() {
    let mut image = plain(1);
    create(&mut image, "big", TOPIC_PARTITIONS_MAX_COUNT as i32, 1);
    assert_eq!(
        BROKER_REPLICAS_MAX_COUNT,
        TOPIC_PARTITIONS_MAX_COUNT as usize
    );
    let defaults = ClusterDefaults::default();
    assert_eq!(
        code(image.plan_create_topic("more", 1, 1, &no_configs(), &defaults)),
        44
    );
}

#[test]
fn alter_configs_plans() {
    let mut image = plain(1);
    create(&mut image, "t", 1, 1);
    let defaults = ClusterDefaults::default();
    let topic = ConfigResource::Topic("t".into());
    let op = |name: &str, op, value: Option<&str>| AlterConfigOp {
        name: name.into(),
        op,
        value: value.map(str::to_owned),
    };
    let record = image
        .plan_alter_configs(
            &topic,
            &[op("cleanup.policy", AlterOpType::Append, Some("compact"))],
            &defaults,
        )
        .expect("valid");
    assert_eq!(
        record,
        MetadataRecord::AlterConfigs {
            resource: topic.clone(),
            set: BTreeMap::from([("cleanup.policy".into(), Some("delete,compact".into()))]),
        }
    );
    assert_eq!(image.apply(&record, 2), ApplyOutcome::Applied);
    // The cluster level inherits the static value; APPEND starts from it.
    let cluster = image
        .plan_alter_configs(
            &ConfigResource::Cluster,
            &[op(
                "log.cleanup.policy",
                AlterOpType::Append,
                Some("compact"),
            )],
            &defaults,
        )
        .expect("valid");
    let MetadataRecord::AlterConfigs { set, .. } = &cluster else {
        panic!("{cluster:?}");
    };
    assert_eq!(set["log.cleanup.policy"], Some("delete,compact".into()));
    assert_eq!(
        code(image.plan_alter_configs(
            &ConfigResource::Topic("nope".into()),
            &[op("retention.ms", AlterOpType::Set, Some("1"))],
            &defaults
        )),
        3
    );
    assert_eq!(
        code(image.plan_alter_configs(
            &ConfigResource::Broker(NodeId(9)),
            &[op("log.retention.ms", AlterOpType::Set, Some("1"))],
            &defaults
        )),
        102
    );
    // Legacy AlterConfigs replaces the whole set.
    let replace = image
        .plan_replace_configs(&topic, &[("retention.ms".into(), Some("10".into()))])
        .expect("valid");
    image.apply(&replace, 3);
    assert_eq!(
        image.topic("t").map(|t| t.configs.clone()),
        Some(BTreeMap::from([(
            "retention.ms".to_owned(),
            "10".to_owned()
        )]))
    );
    assert_eq!(
        code(image.plan_replace_configs(&topic, &[("segment.bytes".into(), Some("1".into()))])),
        40
    );
}

#[test]
fn producer_id_plans() {
    let image = plain(1);
    assert_eq!(
        image.plan_producer_ids(NodeId(1), 1000),
        Ok(MetadataRecord::AllocateProducerIds {
            broker: NodeId(1),
            count: 1000
        })
    );
    assert_eq!(code(image.plan_producer_ids(NodeId(2), 1000)), 102);
    assert_eq!(code(image.plan_producer_ids(NodeId(1), 0)), 42);
    assert_eq!(
        code(image.plan_producer_ids(NodeId(1), PRODUCER_ID_BLOCK_MAX_COUNT + 1)),
        42
    );
}

#[test]
fn every_plan_applies_cleanly() {
    let mut image = cluster(&[(1, Some("a")), (2, Some("b")), (3, Some("a"))]);
    let defaults = ClusterDefaults::default();
    let configs = BTreeMap::from([("segment.bytes".to_owned(), Some("1048576".to_owned()))]);
    let plans = [
        image.plan_create_topic("x", 7, 3, &configs, &defaults),
        image.plan_producer_ids(NodeId(2), 10),
    ];
    for plan in plans {
        let record = plan.expect("valid");
        let outcome = image.apply(&record, 1);
        assert!(!matches!(outcome, ApplyOutcome::Rejected(_)), "{outcome:?}");
    }
    let record = image.plan_create_partitions("x", 12, None).expect("valid");
    assert!(matches!(
        image.apply(&record, 2),
        ApplyOutcome::PartitionsCreated { .. }
    ));
    let record = image.plan_delete_topic("x").expect("valid");
    assert!(matches!(
        image.apply(&record, 3),
        ApplyOutcome::TopicDeleted { .. }
    ));
}

#[test]
fn registration_and_cluster_id_plans() {
    let mut image = MetadataImage::new();
    let record = image
        .plan_register_broker(NodeId(1), 3, "h", 9092, Some("r"), "h:1")
        .expect("valid");
    assert_eq!(image.apply(&record, 1), ApplyOutcome::Applied);
    assert_eq!(image.broker(NodeId(1)).map(|b| b.incarnation), Some(3));
    let huge = "h".repeat(10 << 20);
    assert_eq!(
        code(image.plan_register_broker(NodeId(2), 1, &huge, 9092, None, "h:1")),
        119
    );
    assert_eq!(
        code(image.plan_register_broker(NodeId(2), 1, "h", 0, None, "h:1")),
        119
    );
    let set = image.plan_cluster_id("c1").expect("valid").expect("unset");
    assert_eq!(image.apply(&set, 2), ApplyOutcome::Applied);
    assert_eq!(image.plan_cluster_id("c1"), Ok(None));
    assert_eq!(code(image.plan_cluster_id("c2")), 104);
    assert_eq!(code(image.plan_cluster_id("")), 42);
}
