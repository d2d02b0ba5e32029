//! `kafka_request_structured`: well-formed Kafka requests generated with `arbitrary`, so
//! that the fuzzer spends its time in the broker's logic rather than in the decoder:
//! topics created and deleted, valid batches (built by [`fjord_log::build_batch`], some
//! compressed, idempotent, or damaged on purpose) produced with every acks setting, fetches
//! and offset lookups at arbitrary offsets, consumer groups joining, syncing, committing and
//! leaving with member ids and generations learned from earlier answers, configs, and time
//! passing. Every request goes through [`Session::send`], with all of its checks; in
//! addition, every fetched record is the one the broker acknowledged at its offset.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use fjord::kafka::codec;
use fjord::kafka::versions::supported_range;
use std::collections::BTreeMap;

use fjord_log::{
    build_batch, decode_records, BatchHeader, BatchIter, BuildOptions, Compression, RecordSpec,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::kafka_request::{Sent, Session};

/// Requests one input may make.
const OPS_MAX_COUNT: usize = 48;

const TOPICS: [&str; 3] = ["t0", "t1", "__consumer_offsets"];
const GROUPS: [&str; 2] = ["g0", "g1"];

#[derive(Arbitrary, Debug)]
enum Op {
    CreateTopic {
        topic: u8,
        partitions: u8,
        validate_only: bool,
        compact: bool,
    },
    DeleteTopic {
        topic: u8,
    },
    Metadata {
        topics: Vec<u8>,
        auto_create: bool,
    },
    Produce {
        topic: u8,
        partition: u8,
        acks: u8,
        records: Vec<(Option<u8>, Vec<u8>)>,
        compression: u8,
        idempotent: Option<i8>,
        damage: Option<(u16, u8)>,
    },
    Fetch {
        topic: u8,
        partition: u8,
        offset: i16,
        max_bytes: u16,
        max_wait_ms: u8,
        read_committed: bool,
    },
    ListOffsets {
        topic: u8,
        partition: u8,
        timestamp: i8,
    },
    FindCoordinator {
        group: u8,
        transaction: bool,
    },
    JoinGroup {
        group: u8,
        member: u8,
        static_member: Option<u8>,
        protocols: Vec<u8>,
        session_timeout_s: u8,
    },
    SyncGroup {
        group: u8,
        member: u8,
        generation: i8,
        assignments: Vec<(u8, Vec<u8>)>,
    },
    Heartbeat {
        group: u8,
        member: u8,
        generation: i8,
    },
    LeaveGroup {
        group: u8,
        member: u8,
    },
    OffsetCommit {
        group: u8,
        member: u8,
        generation: i8,
        topic: u8,
        partition: u8,
        offset: i16,
    },
    OffsetFetch {
        group: u8,
        all: bool,
        require_stable: bool,
    },
    DescribeGroups {
        groups: Vec<u8>,
    },
    ListGroups,
    InitProducerId,
    DescribeConfigs {
        topic: u8,
        broker: bool,
    },
    AlterConfig {
        topic: u8,
        key: u8,
        value: u16,
        op: Option<u8>,
    },
    DescribeCluster,
    ApiVersions,
    Wait {
        ms: u16,
    },
}

/// A record's key and value.
type KeyValue = (Option<Bytes>, Option<Bytes>);

/// The records of a produced batch, by offset delta.
struct ProducedBatch {
    topic: String,
    partition: i32,
    records: Vec<(u64, KeyValue)>,
}

/// What earlier answers taught the client.
#[derive(Default)]
struct Learned {
    member_ids: Vec<String>,
    generations: Vec<i32>,
    producer: Option<(i64, i16)>,
    sequences: BTreeMap<(usize, i32), i32>,
    /// Records the broker acknowledged, by (topic, partition, offset): what a fetch of that
    /// offset must serve.
    produced: BTreeMap<(String, i32, u64), KeyValue>,
}

fn pick<'a>(names: &[&'a str], i: u8) -> &'a str {
    names[usize::from(i) % names.len()]
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic_name(i: u8) -> TopicName {
    TopicName(s(pick(&TOPICS, i)))
}

fn group_id(i: u8) -> GroupId {
    GroupId(s(pick(&GROUPS, i)))
}

impl Learned {
    fn member(&self, i: u8) -> StrBytes {
        if i == 0 || self.member_ids.is_empty() {
            return StrBytes::default();
        }
        s(&self.member_ids[usize::from(i) % self.member_ids.len()])
    }

    fn generation(&self, g: i8) -> i32 {
        match (g, self.generations.last()) {
            (0, Some(last)) => *last,
            (g, Some(last)) => last + i32::from(g % 3),
            (g, None) => i32::from(g),
        }
    }

    fn learn(&mut self, body: &ResponseKind) {
        match body {
            ResponseKind::JoinGroup(j) => {
                if !j.member_id.is_empty() && !self.member_ids.contains(&j.member_id.to_string()) {
                    self.member_ids.push(j.member_id.to_string());
                }
                if j.generation_id >= 0 {
                    self.generations.push(j.generation_id);
                }
            }
            ResponseKind::InitProducerId(i) if i.error_code == 0 => {
                self.producer = Some((i.producer_id.0, i.producer_epoch));
            }
            _ => {}
        }
    }
}

/// The records a Produce request carries, by their offset delta, with their topic and
/// partition; `None` for idempotent batches (a duplicate is acknowledged at the offsets of
/// the batch it repeats, which may hold other records) and batches that do not decode.
fn produced_records(body: &RequestKind) -> Option<ProducedBatch> {
    let RequestKind::Produce(p) = body else {
        return None;
    };
    let topic = p.topic_data.first()?;
    let partition = topic.partition_data.first()?;
    let batch = partition.records.as_ref()?;
    let header = BatchHeader::validate(batch).ok()?;
    if header.producer_id >= 0 {
        return None;
    }
    let records = decode_records(batch).ok()?;
    let records = records
        .into_iter()
        .map(|r| (r.offset - header.base_offset, (r.key, r.value)))
        .collect();
    Some(ProducedBatch {
        topic: topic.name.to_string(),
        partition: partition.index,
        records,
    })
}

impl Learned {
    /// Remembers the records of an acknowledged Produce at the offsets the broker gave them.
    fn learn_produced(&mut self, sent: Option<ProducedBatch>, body: &ResponseKind) {
        let (Some(sent), ResponseKind::Produce(resp)) = (sent, body) else {
            return;
        };
        let ProducedBatch {
            topic,
            partition,
            records,
        } = sent;
        let acked = resp
            .responses
            .iter()
            .filter(|t| t.name.as_str() == topic)
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == partition && p.error_code == 0);
        let Some(base) = acked.and_then(|p| u64::try_from(p.base_offset).ok()) else {
            return;
        };
        for (delta, kv) in records {
            self.produced
                .insert((topic.clone(), partition, base + delta), kv);
        }
    }

    /// For a negative `selector`, the place of one acknowledged record.
    fn produced_record(&self, selector: i16) -> Option<(TopicName, i32, i64)> {
        if selector >= 0 || self.produced.is_empty() {
            return None;
        }
        let i = usize::from(selector.unsigned_abs()) % self.produced.len();
        let (topic, partition, offset) = self.produced.keys().nth(i)?;
        Some((
            TopicName(s(topic)),
            *partition,
            i64::try_from(*offset).ok()?,
        ))
    }

    /// Forgets a topic's records once it may be deleted (a new topic of that name starts
    /// again at offset 0).
    fn forget_topic(&mut self, body: &RequestKind) {
        if let RequestKind::DeleteTopics(d) = body {
            let names: Vec<String> = d
                .topic_names
                .iter()
                .map(|n| n.to_string())
                .chain(
                    d.topics
                        .iter()
                        .filter_map(|t| t.name.as_ref())
                        .map(|n| n.to_string()),
                )
                .collect();
            self.produced.retain(|(t, _, _), _| !names.contains(t));
        }
    }

    /// Fetched records are the records produced at their offsets (compaction may drop
    /// records, never change them).
    fn check_fetched(&self, body: &ResponseKind) {
        let ResponseKind::Fetch(f) = body else {
            return;
        };
        for t in &f.responses {
            for p in &t.partitions {
                let records = p.records.clone().unwrap_or_default();
                for item in BatchIter::new(&records) {
                    let Ok((_, batch)) = item else {
                        continue;
                    };
                    let decoded = decode_records(batch).expect("a fetched batch decodes");
                    for r in decoded {
                        let key = (t.topic.to_string(), p.partition_index, r.offset);
                        if let Some((k, v)) = self.produced.get(&key) {
                            assert!(
                                *k == r.key && *v == r.value,
                                "{}-{} offset {}: fetched another record than was produced",
                                key.0,
                                key.1,
                                key.2
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A batch for Produce: idempotent batches continue (or, per `seq_delta`, repeat or skip)
/// the producer's sequence for the partition.
fn produce_batch(
    learned: &mut Learned,
    key: (usize, i32),
    records: &[(Option<u8>, Vec<u8>)],
    compression: u8,
    idempotent: Option<i8>,
    damage: Option<(u16, u8)>,
) -> Option<Bytes> {
    let specs: Vec<RecordSpec> = records
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, (k, v))| RecordSpec {
            key: k.map(|k| Bytes::from(vec![k])),
            value: Some(Bytes::copy_from_slice(v)),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect();
    let mut opts = BuildOptions {
        compression: match compression % 6 {
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => Compression::None,
        },
        ..BuildOptions::default()
    };
    if let (Some(delta), Some((pid, epoch))) = (idempotent, learned.producer) {
        let next = learned.sequences.entry(key).or_insert(0);
        let seq = (*next + i32::from(delta % 3)).max(0);
        opts.producer_id = pid;
        opts.producer_epoch = epoch;
        opts.base_sequence = seq;
        *next = seq + specs.len() as i32;
    }
    let mut batch = build_batch(&specs, &opts).ok()?.to_vec();
    if let Some((at, xor)) = damage {
        let at = usize::from(at) % batch.len();
        batch[at] ^= xor.max(1);
    }
    Some(Bytes::from(batch))
}

/// The request an op makes, at a version picked from the served range.
fn request(op: Op, learned: &mut Learned) -> Option<RequestKind> {
    Some(match op {
        Op::CreateTopic {
            topic,
            partitions,
            validate_only,
            compact,
        } => {
            let mut t = create_topics_request::CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(i32::from(partitions % 5) - 1)
                .with_replication_factor(-1);
            if compact {
                t.configs.push(
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(s("cleanup.policy"))
                        .with_value(Some(s("compact"))),
                );
            }
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_topics(vec![t])
                    .with_timeout_ms(5_000)
                    .with_validate_only(validate_only),
            )
        }
        Op::DeleteTopic { topic } => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![topic_name(topic)])
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(topic_name(topic)))])
                .with_timeout_ms(5_000),
        ),
        Op::Metadata {
            topics,
            auto_create,
        } => {
            let topics = (!topics.is_empty()).then(|| {
                topics
                    .iter()
                    .take(4)
                    .map(|t| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(topic_name(*t)))
                    })
                    .collect()
            });
            RequestKind::Metadata(
                MetadataRequest::default()
                    .with_topics(topics)
                    .with_allow_auto_topic_creation(auto_create),
            )
        }
        Op::Produce {
            topic,
            partition,
            acks,
            records,
            compression,
            idempotent,
            damage,
        } => {
            let key = (usize::from(topic) % TOPICS.len(), i32::from(partition % 4));
            let batch = produce_batch(learned, key, &records, compression, idempotent, damage)?;
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks([-1, 0, 1, 2][usize::from(acks % 4)])
                    .with_timeout_ms(1_000)
                    .with_topic_data(vec![produce_request::TopicProduceData::default()
                        .with_name(topic_name(topic))
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(key.1)
                                .with_records(Some(batch)),
                        ])]),
            )
        }
        Op::Fetch {
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms,
            read_committed,
        } => {
            // A negative offset, once records were acknowledged, fetches one of them (so that
            // fetches meet produced data often).
            let (name, partition, offset) = match learned.produced_record(offset) {
                Some(at) => at,
                None => (
                    topic_name(topic),
                    i32::from(partition % 4),
                    i64::from(offset),
                ),
            };
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(i32::from(max_wait_ms) * 4)
                    .with_min_bytes(1)
                    .with_max_bytes(i32::from(max_bytes))
                    .with_isolation_level(i8::from(read_committed))
                    .with_topics(vec![fetch_request::FetchTopic::default()
                        .with_topic(name)
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(i32::from(max_bytes))])]),
            )
        }
        Op::ListOffsets {
            topic,
            partition,
            timestamp,
        } => RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(i32::from(partition % 4))
                            .with_timestamp(if timestamp < -5 {
                                1_700_000_000_000 + i64::from(timestamp)
                            } else {
                                i64::from(timestamp)
                            }),
                    ])]),
        ),
        Op::FindCoordinator { group, transaction } => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_key(s(pick(&GROUPS, group)))
                .with_key_type(i8::from(transaction))
                .with_coordinator_keys(vec![s(pick(&GROUPS, group))]),
        ),
        Op::JoinGroup {
            group,
            member,
            static_member,
            protocols,
            session_timeout_s,
        } => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group_id(group))
                .with_session_timeout_ms(6_000 + i32::from(session_timeout_s) * 1_000)
                .with_rebalance_timeout_ms(2_000)
                .with_member_id(learned.member(member))
                .with_group_instance_id(static_member.map(|i| s(&format!("instance-{}", i % 3))))
                .with_protocol_type(s("consumer"))
                .with_protocols(
                    protocols
                        .iter()
                        .take(4)
                        .map(|p| {
                            join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(s(["range", "roundrobin", "sticky"][usize::from(p % 3)]))
                                .with_metadata(Bytes::from(vec![*p; 4]))
                        })
                        .collect(),
                ),
        ),
        Op::SyncGroup {
            group,
            member,
            generation,
            assignments,
        } => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(group_id(group))
                .with_generation_id(learned.generation(generation))
                .with_member_id(learned.member(member))
                .with_protocol_type(Some(s("consumer")))
                .with_protocol_name(Some(s("range")))
                .with_assignments(
                    assignments
                        .into_iter()
                        .take(4)
                        .map(|(m, a)| {
                            sync_group_request::SyncGroupRequestAssignment::default()
                                .with_member_id(learned.member(m))
                                .with_assignment(Bytes::from(a))
                        })
                        .collect(),
                ),
        ),
        Op::Heartbeat {
            group,
            member,
            generation,
        } => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(group_id(group))
                .with_generation_id(learned.generation(generation))
                .with_member_id(learned.member(member)),
        ),
        Op::LeaveGroup { group, member } => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(group_id(group))
                .with_member_id(learned.member(member))
                .with_members(vec![leave_group_request::MemberIdentity::default()
                    .with_member_id(learned.member(member))]),
        ),
        Op::OffsetCommit {
            group,
            member,
            generation,
            topic,
            partition,
            offset,
        } => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(group_id(group))
                .with_generation_id_or_member_epoch(learned.generation(generation))
                .with_member_id(learned.member(member))
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(i32::from(partition % 4))
                                .with_committed_offset(i64::from(offset)),
                        ]),
                ]),
        ),
        Op::OffsetFetch {
            group,
            all,
            require_stable,
        } => {
            let topics = (!all).then(|| {
                vec![offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic_name(0))
                    .with_partition_indexes(vec![0, 1])]
            });
            let group_topics = (!all).then(|| {
                vec![offset_fetch_request::OffsetFetchRequestTopics::default()
                    .with_name(topic_name(0))
                    .with_partition_indexes(vec![0, 1])]
            });
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(group_id(group))
                    .with_topics(topics)
                    .with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(group_id(group))
                            .with_topics(group_topics),
                    ])
                    .with_require_stable(require_stable),
            )
        }
        Op::DescribeGroups { groups } => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default()
                .with_groups(groups.iter().take(3).map(|g| group_id(*g)).collect()),
        ),
        Op::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        Op::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        Op::DescribeConfigs { topic, broker } => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(if broker { 4 } else { 2 })
                    .with_resource_name(if broker { s("1") } else { topic_name(topic).0 }),
            ]))
        }
        Op::AlterConfig {
            topic,
            key,
            value,
            op,
        } => {
            let name = s([
                "retention.ms",
                "segment.bytes",
                "cleanup.policy",
                "max.message.bytes",
                "min.insync.replicas",
                "bogus.key",
            ][usize::from(key % 6)]);
            let value = Some(s(&value.to_string()));
            match op {
                Some(op) => RequestKind::IncrementalAlterConfigs(
                    IncrementalAlterConfigsRequest::default().with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(topic_name(topic).0)
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(name)
                                    .with_config_operation((op % 4) as i8)
                                    .with_value(value),
                            ]),
                    ]),
                ),
                None => RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(
                    vec![alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(topic_name(topic).0)
                        .with_configs(vec![alter_configs_request::AlterableConfig::default()
                            .with_name(name)
                            .with_value(value)])],
                )),
            }
        }
        Op::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        Op::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(s("fjord-fuzz"))
                .with_client_software_version(s("1.0")),
        ),
        Op::Wait { .. } => return None,
    })
}

/// The frame of `body` at the version `selector` picks from the served range; `None` if the
/// request has fields that version cannot carry.
fn frame(body: &RequestKind, selector: u8, correlation_id: i32) -> Option<Bytes> {
    let api_key = codec::request_api_key(body).ok()?;
    let range = supported_range(api_key)?;
    let span = (range.max - range.min + 1) as u8;
    let version = range.min + i16::from(selector % span);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("fuzz")));
    codec::encode_request(&header, body).ok()
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut session = Session::open();
    let mut learned = Learned::default();
    for correlation_id in 0..OPS_MAX_COUNT as i32 {
        let (Ok(op), Ok(version)) = (Op::arbitrary(&mut u), u8::arbitrary(&mut u)) else {
            return;
        };
        if let Op::Wait { ms } = op {
            session.wait(u64::from(ms) * 4);
            continue;
        }
        let Some(body) = request(op, &mut learned) else {
            continue;
        };
        let Some(frame) = frame(&body, version, correlation_id) else {
            continue;
        };
        learned.forget_topic(&body);
        let sent = produced_records(&body);
        match session.send(frame) {
            Sent::Answered(body) => {
                learned.check_fetched(&body);
                learned.learn_produced(sent, &body);
                learned.learn(&body);
            }
            Sent::NoAnswer => {}
            Sent::End => return,
        }
    }
}

/// Byte strings for `arbitrary` (any bytes make some script; these are just varied).
pub fn seeds() -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..6)
        .map(|n| {
            (0..64 * (n + 1))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

/// A client session as bytes on the wire (size-prefixed frames), for `kafka_request`:
/// what a producer, a consumer and an admin client send first.
pub fn seed_streams() -> Vec<Vec<u8>> {
    let mut learned = Learned::default();
    let script = vec![
        (Op::ApiVersions, 3u8),
        (
            Op::Metadata {
                topics: vec![0],
                auto_create: true,
            },
            12,
        ),
        (
            Op::CreateTopic {
                topic: 1,
                partitions: 3,
                validate_only: false,
                compact: true,
            },
            5,
        ),
        (Op::InitProducerId, 4),
        (
            Op::Produce {
                topic: 0,
                partition: 0,
                acks: 0,
                records: vec![(Some(1), b"hello".to_vec()), (None, b"world".to_vec())],
                compression: 0,
                idempotent: None,
                damage: None,
            },
            6,
        ),
        (
            Op::Produce {
                topic: 1,
                partition: 2,
                acks: 2,
                records: vec![(Some(2), vec![7; 100])],
                compression: 1,
                idempotent: None,
                damage: None,
            },
            7,
        ),
        (
            Op::Fetch {
                topic: 0,
                partition: 0,
                offset: 0,
                max_bytes: 4096,
                max_wait_ms: 5,
                read_committed: false,
            },
            8,
        ),
        (
            Op::ListOffsets {
                topic: 0,
                partition: 0,
                timestamp: -1,
            },
            6,
        ),
        (
            Op::FindCoordinator {
                group: 0,
                transaction: false,
            },
            1,
        ),
        (
            Op::JoinGroup {
                group: 0,
                member: 0,
                static_member: None,
                protocols: vec![0, 1],
                session_timeout_s: 4,
            },
            9,
        ),
        (
            Op::OffsetCommit {
                group: 0,
                member: 0,
                generation: -1,
                topic: 0,
                partition: 0,
                offset: 1,
            },
            7,
        ),
        (
            Op::OffsetFetch {
                group: 0,
                all: false,
                require_stable: true,
            },
            7,
        ),
        (Op::DescribeGroups { groups: vec![0] }, 5),
        (Op::ListGroups, 4),
        (
            Op::DescribeConfigs {
                topic: 1,
                broker: false,
            },
            2,
        ),
        (
            Op::AlterConfig {
                topic: 1,
                key: 0,
                value: 60_000,
                op: Some(0),
            },
            1,
        ),
        (Op::DescribeCluster, 1),
        (Op::DeleteTopic { topic: 1 }, 6),
    ];
    let mut stream = Vec::new();
    for (i, (op, version)) in script.into_iter().enumerate() {
        let Some(body) = request(op, &mut learned) else {
            continue;
        };
        if let Some(frame) = frame(&body, version, i as i32) {
            stream.extend_from_slice(&(frame.len() as i32).to_be_bytes());
            stream.extend_from_slice(&frame);
        }
    }
    vec![stream]
}
