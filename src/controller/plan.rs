//! Planning: the active controller validates an admin request against its image and
//! decides everything the record needs (topic number and id, replica placement, resolved
//! config values). Pure functions of the image and their arguments.
//!
//! Placement is Kafka's rack-aware round-robin (`AdminUtils.assignReplicasToBrokers`):
//! live brokers are arranged alternating racks (racks sorted, brokers of a rack by id;
//! brokers without a rack form one more rack), partition `p`'s preferred leader is
//! `arranged[(p + start) % n]`, and followers are taken at a shifted stride, skipping a
//! broker whose rack already has a replica while some rack has none. Kafka draws `start`
//! and the shift at random; fjord derives them from the topic number, so that successive
//! topics rotate their leaders and every run is reproducible.

use std::collections::{BTreeMap, BTreeSet};

use fjord_replication::NodeId;

use super::config::{resolve_incremental, resolve_replace, validate_config_set};
use super::image::{
    check_cluster_id, is_reserved_uuid, BrokerInfo, MetadataImage, PRODUCER_ID_BLOCK_MAX_COUNT,
    TOPIC_PARTITIONS_MAX_COUNT, TOPIC_REPLICAS_MAX_COUNT,
};
use super::internal::CONSUMER_OFFSETS_TOPIC;
use super::records::{ConfigResource, MetadataRecord};
use super::{AlterConfigOp, ApiError, ClusterDefaults};

/// Kafka's longest topic name.
pub const TOPIC_NAME_MAX_CHARS: usize = 249;
/// Most replicas one broker hosts (each is a Raft group with its own log); placements that
/// would exceed it are refused with POLICY_VIOLATION.
pub const BROKER_REPLICAS_MAX_COUNT: usize = 10_000;

/// Kafka's `Topic.validate`.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let why = if name.is_empty() {
        "Topic name is illegal, it can't be empty".to_owned()
    } else if name == "." || name == ".." {
        "Topic name cannot be \".\" or \"..\"".to_owned()
    } else if name.len() > TOPIC_NAME_MAX_CHARS {
        format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_MAX_CHARS} characters, \
             topic name: {name}"
        )
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII \
             alphanumerics, '.', '_' and '-'"
        )
    } else {
        return Ok(());
    };
    Err(ApiError::InvalidTopic(why))
}

/// An existing topic other than `name` that equals it once '.' and '_' are unified. Kafka
/// (ZooKeeper mode and KRaft alike) refuses such a topic with INVALID_TOPIC_EXCEPTION,
/// because its metric names would be the same; fjord follows, so that clients see what they
/// see with Kafka. The least such name is reported, to keep messages deterministic.
pub(crate) fn colliding_topic<'a>(image: &'a MetadataImage, name: &str) -> Option<&'a str> {
    if !name.contains(['.', '_']) {
        return None;
    }
    let unified = name.replace('.', "_");
    image
        .topics()
        .keys()
        .find(|t| t.as_str() != name && t.replace('.', "_") == unified)
        .map(String::as_str)
}

/// Kafka's `__consumer_offsets` is the controller's to create, delete and size.
fn is_internal(name: &str) -> bool {
    name == CONSUMER_OFFSETS_TOPIC
}

/// Kafka's message when there are fewer live brokers than replicas.
fn replication_error(replication: usize, live: usize) -> ApiError {
    ApiError::InvalidReplicationFactor(format!(
        "Unable to replicate the partition {replication} time(s): The target replication \
         factor of {replication} cannot be reached because only {live} broker(s) are \
         registered."
    ))
}

/// Live brokers in Kafka's rack-alternating order, with their racks.
fn arranged_brokers(image: &MetadataImage) -> Vec<(NodeId, Option<&str>)> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<&BrokerInfo>> = BTreeMap::new();
    for b in image.live_brokers() {
        by_rack.entry(b.rack.as_deref()).or_default().push(b);
    }
    let mut queues: Vec<_> = by_rack.into_values().map(|v| v.into_iter()).collect();
    let mut out = Vec::new();
    while !queues.is_empty() {
        queues.retain_mut(|q| match q.next() {
            Some(b) => {
                out.push((b.id, b.rack.as_deref()));
                true
            }
            None => false,
        });
    }
    out
}

/// Places `count` partitions numbered from `first_partition` with `replication` replicas
/// each over `arranged` (Kafka's `assignReplicasToBrokersRackAware`; with a single rack it
/// is exactly the rack-unaware algorithm).
fn place(
    arranged: &[(NodeId, Option<&str>)],
    count: usize,
    replication: usize,
    first_partition: usize,
    start: usize,
    shift: usize,
) -> Vec<Vec<NodeId>> {
    let n = arranged.len();
    assert!(
        (1..=n).contains(&replication),
        "replication {replication} over {n} brokers"
    );
    let rack_count = arranged
        .iter()
        .map(|(_, r)| *r)
        .collect::<BTreeSet<_>>()
        .len();
    let mut shift = shift;
    let mut out = Vec::with_capacity(count);
    for p in first_partition..first_partition + count {
        if p > 0 && p % n == 0 {
            shift += 1;
        }
        let first = (p + start) % n;
        let mut replicas = vec![arranged[first].0];
        let mut racks = BTreeSet::from([arranged[first].1]);
        let mut k = 0;
        while replicas.len() < replication {
            // Each pass over n - 1 candidates finds one: an unused broker of an uncovered
            // rack, or any unused broker once every rack is covered.
            assert!(k < replication * n, "placement found no broker");
            let index = (first + 1 + (shift * rack_count + k) % (n - 1)) % n;
            let (broker, rack) = arranged[index];
            if (!racks.contains(&rack) || racks.len() == rack_count) && !replicas.contains(&broker)
            {
                replicas.push(broker);
                racks.insert(rack);
            }
            k += 1;
        }
        out.push(replicas);
    }
    out
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A version-4-shaped UUID derived from the cluster id, the topic number and `attempt`.
fn derived_uuid(cluster_id: &str, topic_id: u32, attempt: u64) -> [u8; 16] {
    // FNV-1a of the cluster id: topics of different clusters get different ids.
    let seed = cluster_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let a = splitmix64(seed ^ (u64::from(topic_id) << 20) ^ attempt);
    let b = splitmix64(a ^ seed);
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&a.to_be_bytes());
    uuid[8..].copy_from_slice(&b.to_be_bytes());
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

impl MetadataImage {
    /// Kafka's topic id for topic number `topic_id`: derived, not drawn, so planning stays a
    /// pure function of the image. Like Kafka's `Uuid.randomUuid`, it avoids the reserved ids
    /// and ids whose base64 form starts with '-' (command-line tools read those as flags).
    fn topic_uuid(&self, topic_id: u32) -> [u8; 16] {
        let cluster_id = self.cluster_id().unwrap_or("");
        (0..)
            .map(|attempt| derived_uuid(cluster_id, topic_id, attempt))
            .find(|u| u[0] >> 2 != 62 && !is_reserved_uuid(u) && self.topic_by_uuid(u).is_none())
            .expect("an unused id is found")
    }

    /// Name checks of a new topic, in Kafka's order.
    fn check_new_name(&self, name: &str, internal_ok: bool) -> Result<(), ApiError> {
        validate_topic_name(name)?;
        if self.topic(name).is_some() {
            return Err(ApiError::TopicAlreadyExists(format!(
                "Topic '{name}' already exists."
            )));
        }
        if is_internal(name) && !internal_ok {
            return Err(ApiError::InvalidRequest(format!(
                "Topic '{name}' is internal; the controller creates it."
            )));
        }
        if let Some(other) = colliding_topic(self, name) {
            return Err(ApiError::InvalidTopic(format!(
                "Topic '{name}' collides with existing topic: {other}"
            )));
        }
        Ok(())
    }

    /// Refuses placements that would put more than [`BROKER_REPLICAS_MAX_COUNT`] replicas on
    /// a broker.
    fn check_broker_limits(&self, added: &[Vec<NodeId>]) -> Result<(), ApiError> {
        let mut per_broker: BTreeMap<NodeId, usize> = BTreeMap::new();
        for topic in self.topics().values() {
            for p in &topic.partitions {
                for b in &p.replicas {
                    *per_broker.entry(*b).or_default() += 1;
                }
            }
        }
        for b in added.iter().flatten() {
            let n = per_broker.entry(*b).or_default();
            *n += 1;
            if *n > BROKER_REPLICAS_MAX_COUNT {
                return Err(ApiError::PolicyViolation(format!(
                    "Broker {} would host more than {BROKER_REPLICAS_MAX_COUNT} replicas.",
                    b.0
                )));
            }
        }
        Ok(())
    }

    fn check_replicas_limit(partitions: usize, replication: usize) -> Result<(), ApiError> {
        let total = partitions.saturating_mul(replication);
        if total > TOPIC_REPLICAS_MAX_COUNT {
            return Err(ApiError::PolicyViolation(format!(
                "A topic has at most {TOPIC_REPLICAS_MAX_COUNT} replicas; {total} requested."
            )));
        }
        Ok(())
    }

    /// A manual assignment's replica lists as node ids: non-empty, of one length
    /// (`replication` if given), no broker twice, every broker registered and unfenced.
    fn manual_replicas(
        &self,
        lists: &[&[i32]],
        replication: Option<usize>,
    ) -> Result<Vec<Vec<NodeId>>, ApiError> {
        let want = replication.or(lists.first().map(|l| l.len()));
        let mut out = Vec::with_capacity(lists.len());
        for list in lists {
            if list.is_empty() {
                return Err(ApiError::InvalidReplicaAssignment(
                    "The manual partition assignment includes an empty replica list.".into(),
                ));
            }
            if Some(list.len()) != want {
                return Err(ApiError::InvalidReplicaAssignment(format!(
                    "The manual partition assignment includes a partition with {} replica(s), \
                     but this is not consistent with the others, which have {} replica(s).",
                    list.len(),
                    want.unwrap_or(0)
                )));
            }
            let mut replicas = Vec::with_capacity(list.len());
            for &id in *list {
                let registered = u32::try_from(id)
                    .ok()
                    .map(NodeId)
                    .and_then(|n| self.broker(n));
                let Some(broker) = registered else {
                    return Err(ApiError::InvalidReplicaAssignment(format!(
                        "The manual partition assignment includes broker {id}, but no such \
                         broker is registered."
                    )));
                };
                if broker.fenced {
                    return Err(ApiError::InvalidReplicaAssignment(format!(
                        "The manual partition assignment includes broker {id}, which is fenced."
                    )));
                }
                if replicas.contains(&broker.id) {
                    return Err(ApiError::InvalidReplicaAssignment(format!(
                        "The manual partition assignment includes the broker {id} more than once."
                    )));
                }
                replicas.push(broker.id);
            }
            out.push(replicas);
        }
        Ok(out)
    }

    /// Topic configs of a CreateTopics request: no null values, known keys, valid values.
    fn creation_configs(
        name: &str,
        configs: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        validate_config_set(&ConfigResource::Topic(name.to_owned()), configs)?;
        configs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Ok((k.clone(), v.clone())),
                None => Err(ApiError::InvalidConfig(format!(
                    "Null value not supported for topic configs: {k}"
                ))),
            })
            .collect()
    }

    /// The `CreateTopic` record for a placement already decided.
    fn new_topic_record(
        &self,
        name: &str,
        assignment: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    ) -> Result<MetadataRecord, ApiError> {
        self.check_broker_limits(&assignment)?;
        let topic_id = self.next_topic_id();
        Ok(MetadataRecord::CreateTopic {
            name: name.to_owned(),
            topic_id,
            uuid: self.topic_uuid(topic_id),
            assignment,
            configs,
        })
    }

    fn check_topic_ids_left(&self) -> Result<(), ApiError> {
        if self.next_topic_id() == u32::MAX {
            return Err(ApiError::UnknownServerError(
                "Topic numbers are exhausted.".into(),
            ));
        }
        Ok(())
    }

    /// Places a new topic of `partitions` × `replication` over the live brokers.
    pub(crate) fn plan_placed_topic(
        &self,
        name: &str,
        partitions: u32,
        replication: usize,
        configs: BTreeMap<String, String>,
    ) -> Result<MetadataRecord, ApiError> {
        let arranged = arranged_brokers(self);
        if replication > arranged.len() {
            return Err(replication_error(replication, arranged.len()));
        }
        let partitions = partitions as usize;
        Self::check_replicas_limit(partitions, replication)?;
        self.check_topic_ids_left()?;
        let topic_id = self.next_topic_id() as usize;
        let n = arranged.len();
        let assignment = place(
            &arranged,
            partitions,
            replication,
            0,
            topic_id % n,
            (topic_id / n) % n,
        );
        self.new_topic_record(name, assignment, configs)
    }

    /// CreateTopics for one topic without a manual assignment (`num_partitions` and
    /// `replication_factor` -1 take `defaults`).
    pub fn plan_create_topic(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, Option<String>>,
        defaults: &ClusterDefaults,
    ) -> Result<MetadataRecord, ApiError> {
        self.check_new_name(name, false)?;
        let partitions = match num_partitions {
            -1 => defaults.num_partitions,
            n => n,
        };
        if partitions < 1 {
            return Err(ApiError::InvalidPartitions(
                "Number of partitions was set to an invalid non-positive value.".into(),
            ));
        }
        if partitions as u32 > TOPIC_PARTITIONS_MAX_COUNT {
            return Err(ApiError::InvalidPartitions(format!(
                "Number of partitions {partitions} exceeds the limit of \
                 {TOPIC_PARTITIONS_MAX_COUNT}."
            )));
        }
        let replication = match replication_factor {
            -1 => defaults.default_replication_factor,
            n => n,
        };
        if replication < 1 {
            return Err(ApiError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        let live = self.live_brokers().count();
        if replication as usize > live {
            // Before the config checks, as in Kafka.
            return Err(replication_error(replication as usize, live));
        }
        let configs = Self::creation_configs(name, configs)?;
        self.plan_placed_topic(name, partitions as u32, replication as usize, configs)
    }

    /// CreateTopics for one topic with a manual assignment: `(partition index, broker ids)`
    /// for every partition (indexes 0..n, any order). The request's partition count and
    /// replication factor must both have been -1 (the handler checks that: INVALID_REQUEST).
    pub fn plan_create_topic_assigned(
        &self,
        name: &str,
        assignments: &[(i32, Vec<i32>)],
        configs: &BTreeMap<String, Option<String>>,
    ) -> Result<MetadataRecord, ApiError> {
        self.check_new_name(name, false)?;
        if assignments.is_empty() || assignments.len() > TOPIC_PARTITIONS_MAX_COUNT as usize {
            return Err(ApiError::InvalidPartitions(format!(
                "A topic has 1 to {TOPIC_PARTITIONS_MAX_COUNT} partitions; {} requested.",
                assignments.len()
            )));
        }
        let mut ordered: Vec<&(i32, Vec<i32>)> = assignments.iter().collect();
        ordered.sort_by_key(|(p, _)| *p);
        if ordered
            .iter()
            .enumerate()
            .any(|(i, (p, _))| usize::try_from(*p).ok() != Some(i))
        {
            return Err(ApiError::InvalidReplicaAssignment(
                "Partitions should be a consecutive 0-based integer sequence.".into(),
            ));
        }
        Self::check_replicas_limit(assignments.len(), ordered[0].1.len())?;
        let lists: Vec<&[i32]> = ordered.iter().map(|(_, l)| l.as_slice()).collect();
        let assignment = self.manual_replicas(&lists, None)?;
        let configs = Self::creation_configs(name, configs)?;
        self.check_topic_ids_left()?;
        self.new_topic_record(name, assignment, configs)
    }

    /// DeleteTopics for one topic.
    pub fn plan_delete_topic(&self, name: &str) -> Result<MetadataRecord, ApiError> {
        if self.topic(name).is_none() {
            return Err(ApiError::unknown_topic(name));
        }
        if is_internal(name) {
            // Kafka lets an admin do it; it loses every group's committed offsets.
            return Err(ApiError::InvalidRequest(format!(
                "Topic '{name}' is internal and cannot be deleted."
            )));
        }
        Ok(MetadataRecord::DeleteTopic {
            name: name.to_owned(),
        })
    }

    /// CreatePartitions for one topic: grow it to `count` partitions, placing the new ones
    /// like Kafka (continuing the round-robin from partition 0's leader) unless
    /// `assignment` gives one replica list per new partition.
    pub fn plan_create_partitions(
        &self,
        name: &str,
        count: i32,
        assignment: Option<&[Vec<i32>]>,
    ) -> Result<MetadataRecord, ApiError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))?;
        if is_internal(name) {
            // Kafka allows it, but it moves every group to another coordinator partition.
            return Err(ApiError::InvalidRequest(format!(
                "Topic '{name}' is internal; its partition count is fixed."
            )));
        }
        let current = topic.partitions.len();
        let wanted = usize::try_from(count).unwrap_or(0);
        if wanted < current {
            return Err(ApiError::InvalidPartitions(format!(
                "Topic currently has {current} partitions, which is higher than the requested \
                 {count}."
            )));
        }
        if wanted == current {
            return Err(ApiError::InvalidPartitions(format!(
                "Topic already has {current} partitions."
            )));
        }
        if wanted > TOPIC_PARTITIONS_MAX_COUNT as usize {
            return Err(ApiError::InvalidPartitions(format!(
                "Number of partitions {count} exceeds the limit of {TOPIC_PARTITIONS_MAX_COUNT}."
            )));
        }
        let adding = wanted - current;
        let replication = topic.partitions[0].replicas.len();
        Self::check_replicas_limit(wanted, replication)?;
        let added = match assignment {
            Some(lists) => {
                if lists.len() != adding {
                    return Err(ApiError::InvalidReplicaAssignment(format!(
                        "Attempted to add {adding} additional partition(s), but only {} \
                         assignment(s) were specified.",
                        lists.len()
                    )));
                }
                let lists: Vec<&[i32]> = lists.iter().map(Vec::as_slice).collect();
                self.manual_replicas(&lists, Some(replication))?
            }
            None => {
                let arranged = arranged_brokers(self);
                if replication > arranged.len() {
                    return Err(replication_error(replication, arranged.len()));
                }
                let leader = topic.partitions[0].replicas[0];
                let start = arranged.iter().position(|(b, _)| *b == leader).unwrap_or(0);
                place(&arranged, adding, replication, current, start, start)
            }
        };
        self.check_broker_limits(&added)?;
        Ok(MetadataRecord::CreatePartitions {
            name: name.to_owned(),
            added,
        })
    }

    fn check_resource(&self, resource: &ConfigResource) -> Result<(), ApiError> {
        match resource {
            ConfigResource::Topic(name) if self.topic(name).is_none() => {
                Err(ApiError::unknown_topic(name))
            }
            ConfigResource::Broker(id) if self.broker(*id).is_none() => {
                Err(ApiError::unregistered(*id))
            }
            _ => Ok(()),
        }
    }

    /// IncrementalAlterConfigs for one resource. APPEND / SUBTRACT (list-typed keys only)
    /// start from the value set at this level, or else from the value it inherits.
    pub fn plan_alter_configs(
        &self,
        resource: &ConfigResource,
        ops: &[AlterConfigOp],
        defaults: &ClusterDefaults,
    ) -> Result<MetadataRecord, ApiError> {
        self.check_resource(resource)?;
        let current = self.configs_at(resource).expect("resource checked");
        let set = resolve_incremental(resource, ops, current, |name| {
            self.inherited_value(resource, name, defaults)
        })?;
        Ok(MetadataRecord::AlterConfigs {
            resource: resource.clone(),
            set,
        })
    }

    /// Legacy AlterConfigs for one resource: `configs` become the complete set of values at
    /// this level (keys not given are deleted).
    pub fn plan_replace_configs(
        &self,
        resource: &ConfigResource,
        configs: &[(String, Option<String>)],
    ) -> Result<MetadataRecord, ApiError> {
        self.check_resource(resource)?;
        let current = self.configs_at(resource).expect("resource checked");
        let set = resolve_replace(resource, configs, current)?;
        Ok(MetadataRecord::AlterConfigs {
            resource: resource.clone(),
            set,
        })
    }

    /// A broker's registration request as a record (a new `incarnation` replaces the
    /// registered one; the same again only updates endpoints). Records should always come
    /// from a planner: [`MetadataRecord::encode`] refuses oversized ones by panicking.
    /// Whether another live process holds the id is [`super::Liveness::check_registration`].
    pub fn plan_register_broker(
        &self,
        id: NodeId,
        incarnation: u64,
        host: &str,
        kafka_port: u16,
        rack: Option<&str>,
        rpc_addr: &str,
    ) -> Result<MetadataRecord, ApiError> {
        let info = BrokerInfo {
            id,
            incarnation,
            host: host.to_owned(),
            kafka_port,
            rack: rack.map(str::to_owned),
            rpc_addr: rpc_addr.to_owned(),
            fenced: true,
        };
        self.check_registration(&info)?;
        Ok(MetadataRecord::RegisterBroker {
            id,
            incarnation,
            host: info.host,
            kafka_port,
            rack: info.rack,
            rpc_addr: info.rpc_addr,
        })
    }

    /// The bootstrap record: `SetClusterId` while the image has no cluster id, nothing once
    /// it has `id`, INCONSISTENT_CLUSTER_ID if it has another (this node belongs elsewhere).
    pub fn plan_cluster_id(&self, id: &str) -> Result<Option<MetadataRecord>, ApiError> {
        check_cluster_id(id)?;
        match self.cluster_id() {
            None => Ok(Some(MetadataRecord::SetClusterId { id: id.to_owned() })),
            Some(current) if current == id => Ok(None),
            Some(current) => Err(ApiError::InconsistentClusterId(format!(
                "The cluster id is {current}, not {id}."
            ))),
        }
    }

    /// A block of `count` producer ids for `broker` (which InitProducerId then hands out).
    pub fn plan_producer_ids(
        &self,
        broker: NodeId,
        count: u32,
    ) -> Result<MetadataRecord, ApiError> {
        if self.broker(broker).is_none() {
            return Err(ApiError::unregistered(broker));
        }
        if count == 0 || count > PRODUCER_ID_BLOCK_MAX_COUNT {
            return Err(ApiError::InvalidRequest(format!(
                "A producer id block has 1 to {PRODUCER_ID_BLOCK_MAX_COUNT} ids, not {count}."
            )));
        }
        if self
            .next_producer_id()
            .checked_add(i64::from(count))
            .is_none()
        {
            return Err(ApiError::UnknownServerError(
                "Producer ids are exhausted.".into(),
            ));
        }
        Ok(MetadataRecord::AllocateProducerIds { broker, count })
    }
}

#[cfg(test)]
mod tests;
