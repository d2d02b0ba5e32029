//! [`MetadataImage`]: the state every broker derives from the committed metadata log.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use fjord_log::{decode_records, BatchHeader};
use fjord_replication::NodeId;
use serde::{Deserialize, Serialize};

use super::config::validate_config_set;
use super::plan::{colliding_topic, validate_topic_name};
use super::records::{ConfigResource, MetadataRecord};
use super::{ApiError, ControllerError};

/// Most brokers a cluster registers.
pub const BROKERS_MAX_COUNT: usize = 1024;
/// Longest host, rack, RPC address or cluster id.
pub const BROKER_FIELD_SIZE_MAX_BYTES: usize = 255;
/// Most partitions of one topic.
pub const TOPIC_PARTITIONS_MAX_COUNT: u32 = 10_000;
/// Most replicas (partitions × replication factor) of one topic: keeps a `CreateTopic`
/// record far below [`super::METADATA_RECORD_SIZE_MAX_BYTES`].
pub const TOPIC_REPLICAS_MAX_COUNT: usize = 100_000;
/// Largest snapshot [`MetadataImage::from_snapshot`] reads.
pub const METADATA_SNAPSHOT_SIZE_MAX_BYTES: usize = 1 << 28;
/// Most producer ids one `AllocateProducerIds` hands out (Kafka's blocks are 1000).
pub const PRODUCER_ID_BLOCK_MAX_COUNT: u32 = 1 << 20;

const SNAPSHOT_MAGIC: [u8; 4] = *b"FJMD";
const SNAPSHOT_VERSION: u16 = 1;
/// Magic, version, body length.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 4;
const SNAPSHOT_CRC_BYTES: usize = 4;

static NO_CONFIGS: BTreeMap<String, String> = BTreeMap::new();

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: NodeId,
    /// Identifies one run of the broker process; a new one means a restart.
    pub incarnation: u64,
    /// Advertised Kafka listener.
    pub host: String,
    pub kafka_port: u16,
    pub rack: Option<String>,
    /// Node-to-node (Raft) address.
    pub rpc_addr: String,
    /// A fenced broker gets no new replicas and is not offered to clients as a leader.
    pub fenced: bool,
}

/// One partition's replicas; `replicas[0]` is the preferred leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub replicas: Vec<NodeId>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    /// fjord's topic number: partition `p` is Raft group `GroupId::new(topic_id, p)`.
    pub topic_id: u32,
    /// Kafka's topic id.
    pub uuid: [u8; 16],
    pub partitions: Vec<PartitionInfo>,
    /// Topic-level overrides (Kafka topic config names).
    pub configs: BTreeMap<String, String>,
}

/// What applying one record did, for the proposer's response and for brokers that react to
/// changes (creating or removing partition groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The record changed the image.
    Applied,
    /// The record was valid but the image already was in its state (a retry, a duplicate).
    Unchanged,
    TopicCreated {
        topic_id: u32,
        partitions: u32,
    },
    /// Partitions `first..first + count` of the topic were added.
    PartitionsCreated {
        topic_id: u32,
        first: u32,
        count: u32,
    },
    TopicDeleted {
        topic_id: u32,
        partitions: u32,
    },
    /// The block `[first, first + count)` now belongs to the broker that asked.
    ProducerIds {
        first: i64,
        count: u32,
    },
    /// The record no longer fits the image and changed nothing.
    Rejected(ApiError),
}

/// The cluster metadata as of `applied_end`. Deterministic: equal logs give equal images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    cluster_id: Option<String>,
    brokers: BTreeMap<NodeId, BrokerInfo>,
    topics: BTreeMap<String, TopicInfo>,
    /// Derived from `topics` (rebuilt when a snapshot is loaded).
    #[serde(skip)]
    topic_names_by_id: BTreeMap<u32, String>,
    #[serde(skip)]
    topic_names_by_uuid: BTreeMap<[u8; 16], String>,
    next_topic_id: u32,
    next_producer_id: i64,
    /// Per-broker dynamic configs; a broker without any has no entry.
    broker_configs: BTreeMap<NodeId, BTreeMap<String, String>>,
    cluster_configs: BTreeMap<String, String>,
    applied_end: u64,
}

impl Default for MetadataImage {
    fn default() -> Self {
        MetadataImage {
            cluster_id: None,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            topic_names_by_id: BTreeMap::new(),
            topic_names_by_uuid: BTreeMap::new(),
            next_topic_id: 1,
            next_producer_id: 0,
            broker_configs: BTreeMap::new(),
            cluster_configs: BTreeMap::new(),
            applied_end: 0,
        }
    }
}

fn check_field(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > BROKER_FIELD_SIZE_MAX_BYTES {
        return Err(ApiError::InvalidRegistration(format!(
            "The {what} must have 1 to {BROKER_FIELD_SIZE_MAX_BYTES} bytes."
        )));
    }
    Ok(())
}

pub(crate) fn check_cluster_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > BROKER_FIELD_SIZE_MAX_BYTES {
        return Err(ApiError::InvalidRequest(format!(
            "A cluster id has 1 to {BROKER_FIELD_SIZE_MAX_BYTES} bytes."
        )));
    }
    Ok(())
}

/// Kafka reserves the all-zero id and `AAAAAAAAAAAAAAAAAAAAAQ` (its metadata topic).
pub(crate) fn is_reserved_uuid(uuid: &[u8; 16]) -> bool {
    uuid[..15].iter().all(|b| *b == 0) && uuid[15] <= 1
}

impl MetadataImage {
    /// An empty image: the state before the first record.
    pub fn new() -> MetadataImage {
        MetadataImage::default()
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Every registered broker, fenced or not, by id.
    pub fn brokers(&self) -> &BTreeMap<NodeId, BrokerInfo> {
        &self.brokers
    }

    pub fn broker(&self, id: NodeId) -> Option<&BrokerInfo> {
        self.brokers.get(&id)
    }

    /// Unfenced brokers, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerInfo> + '_ {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> &BTreeMap<String, TopicInfo> {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// The topic with fjord topic number `topic_id`.
    pub fn topic_by_id(&self, topic_id: u32) -> Option<&TopicInfo> {
        self.topic_names_by_id
            .get(&topic_id)
            .and_then(|name| self.topics.get(name))
    }

    /// The topic with Kafka topic id `uuid`.
    pub fn topic_by_uuid(&self, uuid: &[u8; 16]) -> Option<&TopicInfo> {
        self.topic_names_by_uuid
            .get(uuid)
            .and_then(|name| self.topics.get(name))
    }

    /// Replicas of partition `partition` of topic number `topic_id`, preferred leader first.
    pub fn partition_replicas(&self, topic_id: u32, partition: u32) -> Option<&[NodeId]> {
        let topic = self.topic_by_id(topic_id)?;
        let p = topic.partitions.get(usize::try_from(partition).ok()?)?;
        Some(&p.replicas)
    }

    /// Every `(topic_id, partition)` with a replica on `broker`, sorted.
    pub fn partitions_of(&self, broker: NodeId) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (topic_id, name) in &self.topic_names_by_id {
            for (p, partition) in self.topics[name].partitions.iter().enumerate() {
                if partition.replicas.contains(&broker) {
                    out.push((*topic_id, p as u32));
                }
            }
        }
        out
    }

    /// The next unused topic number (topic numbers are never reused).
    pub fn next_topic_id(&self) -> u32 {
        self.next_topic_id
    }

    /// The first producer id of the next block.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Dynamic configs set for broker `id` (broker config names).
    pub fn broker_configs(&self, id: NodeId) -> &BTreeMap<String, String> {
        self.broker_configs.get(&id).unwrap_or(&NO_CONFIGS)
    }

    /// Cluster-wide dynamic defaults (broker config names).
    pub fn cluster_configs(&self) -> &BTreeMap<String, String> {
        &self.cluster_configs
    }

    /// End offset (last offset + 1) of the last batch applied.
    pub fn applied_end(&self) -> u64 {
        self.applied_end
    }

    /// Applies one record of the batch ending at `end_offset`. Never panics: a record that no
    /// longer fits the image is `Rejected` and changes nothing but `applied_end`.
    pub fn apply(&mut self, record: &MetadataRecord, end_offset: u64) -> ApplyOutcome {
        let outcome = match record {
            MetadataRecord::RegisterBroker {
                id,
                incarnation,
                host,
                kafka_port,
                rack,
                rpc_addr,
            } => self.register_broker(BrokerInfo {
                id: *id,
                incarnation: *incarnation,
                host: host.clone(),
                kafka_port: *kafka_port,
                rack: rack.clone(),
                rpc_addr: rpc_addr.clone(),
                fenced: true,
            }),
            MetadataRecord::FenceBroker { id } => self.set_fenced(*id, true),
            MetadataRecord::UnfenceBroker { id } => self.set_fenced(*id, false),
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                uuid,
                assignment,
                configs,
            } => self.create_topic(name, *topic_id, uuid, assignment, configs),
            MetadataRecord::DeleteTopic { name } => self.delete_topic(name),
            MetadataRecord::CreatePartitions { name, added } => self.create_partitions(name, added),
            MetadataRecord::AlterConfigs { resource, set } => self.alter_configs(resource, set),
            MetadataRecord::AllocateProducerIds { broker, count } => {
                self.allocate_producer_ids(*broker, *count)
            }
            MetadataRecord::SetClusterId { id } => self.set_cluster_id(id),
        };
        self.applied_end = self.applied_end.max(end_offset);
        outcome
    }

    /// Decodes one metadata batch and applies its records in order, returning one outcome
    /// per record. Control batches (a leader's no-op) only advance `applied_end`; a batch
    /// ending at or before `applied_end` is already in the image and is skipped. All records
    /// are decoded before any is applied, so an error leaves the image unchanged.
    pub fn apply_batch(&mut self, batch: &[u8]) -> Result<Vec<ApplyOutcome>, ControllerError> {
        let header = BatchHeader::validate(batch)?;
        let end = header.next_offset();
        if end <= self.applied_end {
            return Ok(Vec::new());
        }
        if header.is_control() {
            self.applied_end = end;
            return Ok(Vec::new());
        }
        let records = decode_records(batch)?
            .into_iter()
            .map(|r| match &r.value {
                Some(value) => MetadataRecord::decode(value),
                None => Err(ControllerError::MissingValue { offset: r.offset }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(records.iter().map(|r| self.apply(r, end)).collect())
    }

    /// What apply and [`MetadataImage::plan_register_broker`] require of a registration:
    /// usable endpoint fields, and room for a broker id not seen before.
    pub(crate) fn check_registration(&self, info: &BrokerInfo) -> Result<(), ApiError> {
        check_field("host", &info.host)?;
        check_field("RPC address", &info.rpc_addr)?;
        if let Some(rack) = &info.rack {
            check_field("rack", rack)?;
        }
        if info.kafka_port == 0 {
            return Err(ApiError::InvalidRegistration(
                "The Kafka port must not be 0.".into(),
            ));
        }
        if !self.brokers.contains_key(&info.id) && self.brokers.len() >= BROKERS_MAX_COUNT {
            return Err(ApiError::InvalidRegistration(format!(
                "The cluster already has {BROKERS_MAX_COUNT} brokers."
            )));
        }
        Ok(())
    }

    fn register_broker(&mut self, info: BrokerInfo) -> ApplyOutcome {
        if let Err(e) = self.check_registration(&info) {
            return ApplyOutcome::Rejected(e);
        }
        match self.brokers.get_mut(&info.id) {
            Some(old) if old.incarnation == info.incarnation => {
                let updated = BrokerInfo {
                    fenced: old.fenced,
                    ..info
                };
                if *old == updated {
                    ApplyOutcome::Unchanged
                } else {
                    *old = updated;
                    ApplyOutcome::Applied
                }
            }
            _ => {
                self.brokers.insert(info.id, info);
                ApplyOutcome::Applied
            }
        }
    }

    fn set_fenced(&mut self, id: NodeId, fenced: bool) -> ApplyOutcome {
        match self.brokers.get_mut(&id) {
            None => ApplyOutcome::Rejected(ApiError::unregistered(id)),
            Some(b) if b.fenced == fenced => ApplyOutcome::Unchanged,
            Some(b) => {
                b.fenced = fenced;
                ApplyOutcome::Applied
            }
        }
    }

    /// Checks partitions `added` to a topic that has `existing` ones (none for a new topic):
    /// partition and replica limits, the existing replication factor (or one uniform count),
    /// distinct registered brokers.
    fn check_assignment(
        &self,
        added: &[Vec<NodeId>],
        existing: &[PartitionInfo],
    ) -> Result<(), ApiError> {
        let total = existing.len().saturating_add(added.len());
        if added.is_empty() || total > TOPIC_PARTITIONS_MAX_COUNT as usize {
            return Err(ApiError::InvalidPartitions(format!(
                "A topic has 1 to {TOPIC_PARTITIONS_MAX_COUNT} partitions; {total} requested."
            )));
        }
        let replication = existing
            .first()
            .map_or(added[0].len(), |p| p.replicas.len());
        let mut replicas_total = existing.len().saturating_mul(replication);
        for replicas in added {
            if replicas.is_empty() || replicas.len() != replication {
                return Err(ApiError::InvalidReplicaAssignment(format!(
                    "Every partition must have the same number of replicas ({replication}), \
                     not {}.",
                    replicas.len()
                )));
            }
            let distinct: BTreeSet<NodeId> = replicas.iter().copied().collect();
            if distinct.len() != replicas.len() {
                return Err(ApiError::InvalidReplicaAssignment(format!(
                    "Duplicate replica assignment found: {replicas:?}"
                )));
            }
            if let Some(b) = replicas.iter().find(|b| !self.brokers.contains_key(b)) {
                return Err(ApiError::InvalidReplicaAssignment(format!(
                    "The assignment includes broker {}, which is not registered.",
                    b.0
                )));
            }
            replicas_total = replicas_total.saturating_add(replicas.len());
        }
        if replicas_total > TOPIC_REPLICAS_MAX_COUNT {
            return Err(ApiError::PolicyViolation(format!(
                "A topic has at most {TOPIC_REPLICAS_MAX_COUNT} replicas; {replicas_total} requested."
            )));
        }
        Ok(())
    }

    fn create_topic(
        &mut self,
        name: &str,
        topic_id: u32,
        uuid: &[u8; 16],
        assignment: &[Vec<NodeId>],
        configs: &BTreeMap<String, String>,
    ) -> ApplyOutcome {
        if let Err(e) = validate_topic_name(name) {
            return ApplyOutcome::Rejected(e);
        }
        if self.topics.contains_key(name) {
            return ApplyOutcome::Rejected(ApiError::TopicAlreadyExists(format!(
                "Topic '{name}' already exists."
            )));
        }
        if let Some(other) = colliding_topic(self, name) {
            return ApplyOutcome::Rejected(ApiError::InvalidTopic(format!(
                "Topic '{name}' collides with existing topic: {other}"
            )));
        }
        if topic_id < self.next_topic_id || topic_id == u32::MAX {
            return ApplyOutcome::Rejected(ApiError::NotController(format!(
                "Topic number {topic_id} is taken (next is {}); plan again.",
                self.next_topic_id
            )));
        }
        if is_reserved_uuid(uuid) || self.topic_names_by_uuid.contains_key(uuid) {
            return ApplyOutcome::Rejected(ApiError::NotController(
                "The topic id is reserved or taken; plan again.".into(),
            ));
        }
        if let Err(e) = self.check_assignment(assignment, &[]) {
            return ApplyOutcome::Rejected(e);
        }
        let set = configs
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        if let Err(e) = validate_config_set(&ConfigResource::Topic(name.to_owned()), &set) {
            return ApplyOutcome::Rejected(e);
        }
        let partitions = assignment
            .iter()
            .map(|replicas| PartitionInfo {
                replicas: replicas.clone(),
            })
            .collect();
        self.insert_topic(TopicInfo {
            name: name.to_owned(),
            topic_id,
            uuid: *uuid,
            partitions,
            configs: configs.clone(),
        });
        self.next_topic_id = topic_id + 1;
        ApplyOutcome::TopicCreated {
            topic_id,
            partitions: assignment.len() as u32,
        }
    }

    fn insert_topic(&mut self, topic: TopicInfo) {
        self.topic_names_by_id
            .insert(topic.topic_id, topic.name.clone());
        self.topic_names_by_uuid
            .insert(topic.uuid, topic.name.clone());
        self.topics.insert(topic.name.clone(), topic);
    }

    fn delete_topic(&mut self, name: &str) -> ApplyOutcome {
        let Some(topic) = self.topics.remove(name) else {
            return ApplyOutcome::Rejected(ApiError::unknown_topic(name));
        };
        self.topic_names_by_id.remove(&topic.topic_id);
        self.topic_names_by_uuid.remove(&topic.uuid);
        ApplyOutcome::TopicDeleted {
            topic_id: topic.topic_id,
            partitions: topic.partitions.len() as u32,
        }
    }

    fn create_partitions(&mut self, name: &str, added: &[Vec<NodeId>]) -> ApplyOutcome {
        let Some(topic) = self.topics.get(name) else {
            return ApplyOutcome::Rejected(ApiError::unknown_topic(name));
        };
        if let Err(e) = self.check_assignment(added, &topic.partitions) {
            return ApplyOutcome::Rejected(e);
        }
        let topic = self.topics.get_mut(name).expect("checked above");
        let first = topic.partitions.len() as u32;
        topic
            .partitions
            .extend(added.iter().map(|replicas| PartitionInfo {
                replicas: replicas.clone(),
            }));
        ApplyOutcome::PartitionsCreated {
            topic_id: topic.topic_id,
            first,
            count: added.len() as u32,
        }
    }

    fn alter_configs(
        &mut self,
        resource: &ConfigResource,
        set: &BTreeMap<String, Option<String>>,
    ) -> ApplyOutcome {
        if let Err(e) = validate_config_set(resource, set) {
            return ApplyOutcome::Rejected(e);
        }
        let target = match resource {
            ConfigResource::Topic(name) => match self.topics.get_mut(name) {
                Some(t) => &mut t.configs,
                None => return ApplyOutcome::Rejected(ApiError::unknown_topic(name)),
            },
            ConfigResource::Broker(id) if !self.brokers.contains_key(id) => {
                return ApplyOutcome::Rejected(ApiError::unregistered(*id))
            }
            ConfigResource::Broker(id) => self.broker_configs.entry(*id).or_default(),
            ConfigResource::Cluster => &mut self.cluster_configs,
        };
        let before = target.clone();
        for (key, value) in set {
            match value {
                Some(v) => target.insert(key.clone(), v.clone()),
                None => target.remove(key),
            };
        }
        let changed = *target != before;
        // Keep the image canonical: no empty per-broker maps.
        if let ConfigResource::Broker(id) = resource {
            if self.broker_configs.get(id).is_some_and(BTreeMap::is_empty) {
                self.broker_configs.remove(id);
            }
        }
        if changed {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Unchanged
        }
    }

    fn allocate_producer_ids(&mut self, broker: NodeId, count: u32) -> ApplyOutcome {
        if !self.brokers.contains_key(&broker) {
            return ApplyOutcome::Rejected(ApiError::unregistered(broker));
        }
        if count == 0 || count > PRODUCER_ID_BLOCK_MAX_COUNT {
            return ApplyOutcome::Rejected(ApiError::InvalidRequest(format!(
                "A producer id block has 1 to {PRODUCER_ID_BLOCK_MAX_COUNT} ids, not {count}."
            )));
        }
        let first = self.next_producer_id;
        match first.checked_add(i64::from(count)) {
            Some(next) => {
                self.next_producer_id = next;
                ApplyOutcome::ProducerIds { first, count }
            }
            None => ApplyOutcome::Rejected(ApiError::UnknownServerError(
                "Producer ids are exhausted.".into(),
            )),
        }
    }

    fn set_cluster_id(&mut self, id: &str) -> ApplyOutcome {
        if let Err(e) = check_cluster_id(id) {
            return ApplyOutcome::Rejected(e);
        }
        match &self.cluster_id {
            Some(current) if current == id => ApplyOutcome::Unchanged,
            Some(current) => ApplyOutcome::Rejected(ApiError::InconsistentClusterId(format!(
                "The cluster id is already {current}."
            ))),
            None => {
                self.cluster_id = Some(id.to_owned());
                ApplyOutcome::Applied
            }
        }
    }

    /// The image as bytes: magic `FJMD`, version (u16), body length (u32), the bincode body,
    /// then a CRC32C of everything before it (big-endian integers).
    pub fn to_snapshot(&self) -> Bytes {
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("the image always encodes");
        let total = SNAPSHOT_HEADER_BYTES + body.len() + SNAPSHOT_CRC_BYTES;
        assert!(
            total <= METADATA_SNAPSHOT_SIZE_MAX_BYTES,
            "metadata snapshot of {total} bytes exceeds the limit"
        );
        let mut out = BytesMut::with_capacity(total);
        out.put_slice(&SNAPSHOT_MAGIC);
        out.put_u16(SNAPSHOT_VERSION);
        out.put_u32(body.len() as u32);
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out.freeze()
    }

    /// Reads a [`MetadataImage::to_snapshot`] back, checking framing, checksum and the
    /// image's invariants.
    pub fn from_snapshot(bytes: &[u8]) -> Result<MetadataImage, ControllerError> {
        let bad = |why: String| ControllerError::Snapshot(why);
        if bytes.len() > METADATA_SNAPSHOT_SIZE_MAX_BYTES {
            return Err(ControllerError::TooLarge {
                what: "metadata snapshot",
                size: bytes.len(),
                max: METADATA_SNAPSHOT_SIZE_MAX_BYTES,
            });
        }
        if bytes.len() < SNAPSHOT_HEADER_BYTES + SNAPSHOT_CRC_BYTES {
            return Err(bad(format!("only {} bytes", bytes.len())));
        }
        if bytes[..4] != SNAPSHOT_MAGIC {
            return Err(bad("bad magic".into()));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != SNAPSHOT_VERSION {
            return Err(bad(format!("unsupported version {version}")));
        }
        let body_len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
        if body_len != bytes.len() - SNAPSHOT_HEADER_BYTES - SNAPSHOT_CRC_BYTES {
            return Err(bad(format!(
                "body length {body_len} does not match {} bytes",
                bytes.len()
            )));
        }
        let (framed, crc_bytes) = bytes.split_at(bytes.len() - SNAPSHOT_CRC_BYTES);
        let stored = u32::from_be_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32c::crc32c(framed);
        if stored != computed {
            return Err(bad(format!(
                "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )));
        }
        let config = bincode::config::standard().with_limit::<METADATA_SNAPSHOT_SIZE_MAX_BYTES>();
        let (mut image, read): (MetadataImage, usize) =
            bincode::serde::decode_from_slice(&framed[SNAPSHOT_HEADER_BYTES..], config)
                .map_err(|e| bad(e.to_string()))?;
        if read != body_len {
            return Err(bad(format!("{} trailing bytes", body_len - read)));
        }
        image.rebuild_indexes().map_err(bad)?;
        Ok(image)
    }

    /// Rebuilds the derived indexes and checks what apply guarantees of every image.
    fn rebuild_indexes(&mut self) -> Result<(), String> {
        if self.brokers.len() > BROKERS_MAX_COUNT {
            return Err(format!("{} brokers", self.brokers.len()));
        }
        if let Some((id, b)) = self.brokers.iter().find(|(id, b)| **id != b.id) {
            return Err(format!("broker {} stored under {}", b.id, id));
        }
        let topics = std::mem::take(&mut self.topics);
        for (name, topic) in topics {
            if name != topic.name {
                return Err(format!("topic {} stored under {name}", topic.name));
            }
            if topic.topic_id == 0
                || topic.topic_id >= self.next_topic_id
                || self.topic_names_by_id.contains_key(&topic.topic_id)
            {
                return Err(format!("topic {name} has number {}", topic.topic_id));
            }
            if is_reserved_uuid(&topic.uuid) || self.topic_names_by_uuid.contains_key(&topic.uuid) {
                return Err(format!("topic {name} has a reserved or duplicate id"));
            }
            let replicas: Vec<Vec<NodeId>> = topic
                .partitions
                .iter()
                .map(|p| p.replicas.clone())
                .collect();
            self.check_assignment(&replicas, &[])
                .and_then(|()| {
                    let set = topic
                        .configs
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect();
                    validate_config_set(&ConfigResource::Topic(name.clone()), &set)
                })
                .map_err(|e| format!("topic {name}: {e}"))?;
            self.insert_topic(topic);
        }
        let levels = self
            .broker_configs
            .iter()
            .map(|(id, c)| (ConfigResource::Broker(*id), c))
            .chain([(ConfigResource::Cluster, &self.cluster_configs)]);
        if let Some(id) = self
            .broker_configs
            .keys()
            .find(|id| !self.brokers.contains_key(id))
        {
            return Err(format!("configs of unregistered broker {}", id.0));
        }
        for (resource, configs) in levels {
            let set = configs
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            validate_config_set(&resource, &set).map_err(|e| format!("{resource:?}: {e}"))?;
        }
        if self.next_producer_id < 0 {
            return Err(format!("next producer id {}", self.next_producer_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
