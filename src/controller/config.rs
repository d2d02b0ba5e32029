//! Topic and broker configs: the keys fjord knows, their validation, the typed
//! [`TopicConfig`] a partition runs with, and DescribeConfigs' view of them.
//!
//! A topic's value for a key is resolved as in Kafka, first hit wins: the topic's override
//! (`retention.ms`), the broker's dynamic setting of the broker-level synonym
//! (`log.retention.ms`), the cluster-wide dynamic default of that synonym, the broker's static
//! configuration ([`ClusterDefaults::topic`]), Kafka's default. Every value stored in the
//! image has passed [`validate_config_set`], so resolving never fails.

use std::collections::BTreeMap;

use fjord_log::{CleanupPolicy, LogConfig};
use fjord_replication::NodeId;

use super::image::{MetadataImage, TopicInfo, TOPIC_PARTITIONS_MAX_COUNT};
use super::records::ConfigResource;
use super::{ApiError, ControllerError};

/// Longest config value accepted (every valid value of a known key is far shorter; the
/// bound keeps records small).
pub const CONFIG_VALUE_SIZE_MAX_BYTES: usize = 1024;
/// fjord's floor for `segment.bytes`. Kafka 4 requires 1 MiB (3.x: 14 bytes); fjord allows
/// small segments so tests and the simulator exercise rolling, but not so small that every
/// batch gets its own file.
pub const SEGMENT_SIZE_MIN_BYTES: i32 = 1024;

/// DescribeConfigs' `config_source` (Kafka's `DescribeConfigsResponse.ConfigSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigSource {
    /// A topic override (Kafka's DYNAMIC_TOPIC_CONFIG, "TOPIC_CONFIG" in its tools).
    TopicConfig,
    /// Set dynamically for this broker.
    DynamicBrokerConfig,
    /// Set dynamically as the cluster-wide default.
    DynamicDefaultBrokerConfig,
    /// From the broker's static configuration.
    StaticBrokerConfig,
    /// Kafka's default.
    DefaultConfig,
}

impl ConfigSource {
    /// The wire value.
    pub fn code(self) -> i8 {
        match self {
            ConfigSource::TopicConfig => 1,
            ConfigSource::DynamicBrokerConfig => 2,
            ConfigSource::DynamicDefaultBrokerConfig => 3,
            ConfigSource::StaticBrokerConfig => 4,
            ConfigSource::DefaultConfig => 5,
        }
    }
}

/// DescribeConfigs' `config_type` (v3+, Kafka's `ConfigDef.Type` as the protocol numbers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    String,
    Int,
    Short,
    Long,
    List,
}

impl ConfigType {
    /// The wire value.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Short => 4,
            ConfigType::Long => 5,
            ConfigType::List => 7,
        }
    }
}

/// One place a value comes from (DescribeConfigs v1+ `synonyms`, most specific first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSynonym {
    pub name: String,
    pub value: Option<String>,
    pub source: ConfigSource,
}

/// One config as DescribeConfigs presents it. `synonyms` lists every level that has a value,
/// the winning one first; send them only when the request asked for synonyms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    pub is_default: bool,
    pub source: ConfigSource,
    pub sensitive: bool,
    pub config_type: ConfigType,
    pub synonyms: Vec<ConfigSynonym>,
}

/// `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The typed settings a partition runs with ([`MetadataImage::effective_topic_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 is unbounded.
    pub retention_bytes: i64,
    pub cleanup_policy: CleanupPolicy,
    pub segment_bytes: i32,
    pub segment_ms: i64,
    /// How long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// Largest batch a producer may send.
    pub max_message_bytes: i32,
    /// Replicas that must hold an acks=all write.
    pub min_insync_replicas: i32,
    pub index_interval_bytes: i32,
    pub message_timestamp_type: TimestampType,
}

impl Default for TopicConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Delete,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            delete_retention_ms: 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            min_insync_replicas: 1,
            index_interval_bytes: 4096,
            message_timestamp_type: TimestampType::CreateTime,
        }
    }
}

impl TopicConfig {
    /// The log settings. Fields outside their valid ranges (possible only for a hand-built
    /// value) are clamped into them.
    pub fn to_log_config(&self) -> LogConfig {
        LogConfig {
            segment_size_max_bytes: self.segment_bytes.max(SEGMENT_SIZE_MIN_BYTES) as u64,
            segment_age_max_ms: self.segment_ms.max(1),
            index_interval_bytes: self.index_interval_bytes.max(1) as u64,
            retention_ms: (self.retention_ms >= 0).then_some(self.retention_ms),
            retention_bytes: u64::try_from(self.retention_bytes).ok(),
            cleanup_policy: self.cleanup_policy,
            delete_retention_ms: self.delete_retention_ms.max(0),
        }
    }

    /// The value of `key` as a config string.
    fn get(&self, key: Key) -> String {
        match key {
            Key::CleanupPolicy => match self.cleanup_policy {
                CleanupPolicy::Delete => "delete".into(),
                CleanupPolicy::Compact => "compact".into(),
                CleanupPolicy::CompactDelete => "compact,delete".into(),
            },
            Key::DeleteRetentionMs => self.delete_retention_ms.to_string(),
            Key::IndexIntervalBytes => self.index_interval_bytes.to_string(),
            Key::MaxMessageBytes => self.max_message_bytes.to_string(),
            Key::MessageTimestampType => match self.message_timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            Key::MinInsyncReplicas => self.min_insync_replicas.to_string(),
            Key::RetentionBytes => self.retention_bytes.to_string(),
            Key::RetentionMs => self.retention_ms.to_string(),
            Key::SegmentBytes => self.segment_bytes.to_string(),
            Key::SegmentMs => self.segment_ms.to_string(),
        }
    }

    /// Parses and validates `value` for `key` (named `name` in messages) and stores it.
    fn set(&mut self, key: Key, name: &str, value: &str) -> Result<(), ApiError> {
        if value.len() > CONFIG_VALUE_SIZE_MAX_BYTES {
            return Err(ApiError::InvalidConfig(format!(
                "Value of {name} is longer than {CONFIG_VALUE_SIZE_MAX_BYTES} bytes."
            )));
        }
        match key {
            Key::CleanupPolicy => self.cleanup_policy = parse_cleanup_policy(name, value)?,
            Key::DeleteRetentionMs => self.delete_retention_ms = parse_long(name, value, 0)?,
            Key::IndexIntervalBytes => self.index_interval_bytes = parse_int(name, value, 0)?,
            Key::MaxMessageBytes => self.max_message_bytes = parse_int(name, value, 0)?,
            Key::MessageTimestampType => {
                self.message_timestamp_type = match value.trim() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => {
                        return Err(invalid(
                            name,
                            value,
                            "String must be one of: CreateTime, LogAppendTime",
                        ))
                    }
                }
            }
            Key::MinInsyncReplicas => self.min_insync_replicas = parse_int(name, value, 1)?,
            Key::RetentionBytes => self.retention_bytes = parse_long(name, value, -1)?,
            Key::RetentionMs => self.retention_ms = parse_long(name, value, -1)?,
            Key::SegmentBytes => {
                self.segment_bytes = parse_int(name, value, SEGMENT_SIZE_MIN_BYTES)?
            }
            Key::SegmentMs => self.segment_ms = parse_long(name, value, 1)?,
        }
        Ok(())
    }
}

fn invalid(name: &str, value: &str, why: &str) -> ApiError {
    ApiError::InvalidConfig(format!(
        "Invalid value {value} for configuration {name}: {why}"
    ))
}

fn parse_long(name: &str, value: &str, min: i64) -> Result<i64, ApiError> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(name, value, "Not a number of type LONG"))?;
    if v < min {
        return Err(invalid(
            name,
            value,
            &format!("Value must be at least {min}"),
        ));
    }
    Ok(v)
}

fn parse_int(name: &str, value: &str, min: i32) -> Result<i32, ApiError> {
    let v: i32 = value
        .trim()
        .parse()
        .map_err(|_| invalid(name, value, "Not a number of type INT"))?;
    if v < min {
        return Err(invalid(
            name,
            value,
            &format!("Value must be at least {min}"),
        ));
    }
    Ok(v)
}

/// Kafka's LIST syntax: comma-separated, blanks around items ignored.
pub(crate) fn list_items(value: &str) -> Vec<&str> {
    if value.trim().is_empty() {
        return Vec::new();
    }
    value.split(',').map(str::trim).collect()
}

fn parse_cleanup_policy(name: &str, value: &str) -> Result<CleanupPolicy, ApiError> {
    let (mut delete, mut compact) = (false, false);
    for item in list_items(value) {
        match item {
            "delete" => delete = true,
            "compact" => compact = true,
            _ => {
                return Err(invalid(
                    name,
                    value,
                    "Items must be 'delete' and/or 'compact'",
                ))
            }
        }
    }
    match (delete, compact) {
        (true, false) => Ok(CleanupPolicy::Delete),
        (false, true) => Ok(CleanupPolicy::Compact),
        (true, true) => Ok(CleanupPolicy::CompactDelete),
        (false, false) => Err(invalid(name, value, "The policy must not be empty")),
    }
}

/// A topic config key fjord knows, with its broker-level synonym.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    CleanupPolicy,
    DeleteRetentionMs,
    IndexIntervalBytes,
    MaxMessageBytes,
    MessageTimestampType,
    MinInsyncReplicas,
    RetentionBytes,
    RetentionMs,
    SegmentBytes,
    SegmentMs,
}

impl Key {
    /// Ordered by topic config name.
    const ALL: [Key; 10] = [
        Key::CleanupPolicy,
        Key::DeleteRetentionMs,
        Key::IndexIntervalBytes,
        Key::MaxMessageBytes,
        Key::MessageTimestampType,
        Key::MinInsyncReplicas,
        Key::RetentionBytes,
        Key::RetentionMs,
        Key::SegmentBytes,
        Key::SegmentMs,
    ];

    fn topic_name(self) -> &'static str {
        match self {
            Key::CleanupPolicy => "cleanup.policy",
            Key::DeleteRetentionMs => "delete.retention.ms",
            Key::IndexIntervalBytes => "index.interval.bytes",
            Key::MaxMessageBytes => "max.message.bytes",
            Key::MessageTimestampType => "message.timestamp.type",
            Key::MinInsyncReplicas => "min.insync.replicas",
            Key::RetentionBytes => "retention.bytes",
            Key::RetentionMs => "retention.ms",
            Key::SegmentBytes => "segment.bytes",
            Key::SegmentMs => "segment.ms",
        }
    }

    /// The broker setting that provides the topic's default.
    fn broker_name(self) -> &'static str {
        match self {
            Key::CleanupPolicy => "log.cleanup.policy",
            Key::DeleteRetentionMs => "log.cleaner.delete.retention.ms",
            Key::IndexIntervalBytes => "log.index.interval.bytes",
            Key::MaxMessageBytes => "message.max.bytes",
            Key::MessageTimestampType => "log.message.timestamp.type",
            Key::MinInsyncReplicas => "min.insync.replicas",
            Key::RetentionBytes => "log.retention.bytes",
            Key::RetentionMs => "log.retention.ms",
            Key::SegmentBytes => "log.segment.bytes",
            Key::SegmentMs => "log.roll.ms",
        }
    }

    fn config_type(self) -> ConfigType {
        match self {
            Key::CleanupPolicy => ConfigType::List,
            Key::MessageTimestampType => ConfigType::String,
            Key::IndexIntervalBytes
            | Key::MaxMessageBytes
            | Key::MinInsyncReplicas
            | Key::SegmentBytes => ConfigType::Int,
            Key::DeleteRetentionMs | Key::RetentionBytes | Key::RetentionMs | Key::SegmentMs => {
                ConfigType::Long
            }
        }
    }

    fn by_topic_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.topic_name() == name)
    }

    fn by_broker_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.broker_name() == name)
    }

    /// The key `name` denotes for `resource` (topic names for topics, broker names else).
    fn for_resource(resource: &ConfigResource, name: &str) -> Option<Key> {
        match resource {
            ConfigResource::Topic(_) => Key::by_topic_name(name),
            ConfigResource::Broker(_) | ConfigResource::Cluster => Key::by_broker_name(name),
        }
    }
}

/// Whether `name` is a list-typed config of `resource` (APPEND / SUBTRACT apply to those).
pub(crate) fn is_list(resource: &ConfigResource, name: &str) -> bool {
    Key::for_resource(resource, name).is_some_and(|k| k.config_type() == ConfigType::List)
}

/// Checks that every key of `set` is a dynamic config of `resource` and every value is valid
/// for it. Shared by the planners and apply, so the image only ever holds valid values.
pub(crate) fn validate_config_set(
    resource: &ConfigResource,
    set: &BTreeMap<String, Option<String>>,
) -> Result<(), ApiError> {
    for (name, value) in set {
        let Some(key) = Key::for_resource(resource, name) else {
            return Err(ApiError::InvalidConfig(match resource {
                ConfigResource::Topic(_) => format!("Unknown topic config name: {name}"),
                _ => format!("Unknown or read-only broker config: {name}"),
            }));
        };
        if let Some(value) = value {
            TopicConfig::default().set(key, name, value)?;
        }
    }
    Ok(())
}

/// A broker's static configuration as far as the controller is concerned: the defaults for
/// CreateTopics and the internal topic, and the static layer of topic configs. Every broker
/// of a cluster should run with the same values (a broker that answers DescribeConfigs or
/// computes a partition's settings uses its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDefaults {
    /// `num.partitions`: partitions of a topic created with -1.
    pub num_partitions: i32,
    /// `default.replication.factor`: replicas of a topic created with -1.
    pub default_replication_factor: i16,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: u32,
    /// `offsets.topic.replication.factor`: `__consumer_offsets` is created once this many
    /// brokers are live.
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i32,
    /// The static `log.*` settings: the default of every topic config.
    pub topic: TopicConfig,
}

impl Default for ClusterDefaults {
    /// Kafka's defaults.
    fn default() -> Self {
        ClusterDefaults {
            num_partitions: 1,
            default_replication_factor: 1,
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            topic: TopicConfig::default(),
        }
    }
}

impl ClusterDefaults {
    /// Checks every value against the rules dynamic configs obey, plus the partition limit.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let bad = |what: String| Err(ControllerError::InvalidDefaults(what));
        let partitions_ok = |n: i64| (1..=i64::from(TOPIC_PARTITIONS_MAX_COUNT)).contains(&n);
        if !partitions_ok(i64::from(self.num_partitions)) {
            return bad(format!("num.partitions = {}", self.num_partitions));
        }
        if !partitions_ok(i64::from(self.offsets_topic_num_partitions)) {
            return bad(format!(
                "offsets.topic.num.partitions = {}",
                self.offsets_topic_num_partitions
            ));
        }
        if self.default_replication_factor < 1 {
            return bad(format!(
                "default.replication.factor = {}",
                self.default_replication_factor
            ));
        }
        if self.offsets_topic_replication_factor < 1 {
            return bad(format!(
                "offsets.topic.replication.factor = {}",
                self.offsets_topic_replication_factor
            ));
        }
        if self.offsets_topic_segment_bytes < SEGMENT_SIZE_MIN_BYTES {
            return bad(format!(
                "offsets.topic.segment.bytes = {}",
                self.offsets_topic_segment_bytes
            ));
        }
        for key in Key::ALL {
            let value = self.topic.get(key);
            if let Err(e) = TopicConfig::default().set(key, key.broker_name(), &value) {
                return bad(e.message().to_owned());
            }
        }
        Ok(())
    }

    /// The read-only static settings DescribeConfigs lists for a broker, with Kafka's
    /// default of each (`None`: no default, always static).
    fn static_entries(
        &self,
        broker: NodeId,
    ) -> [(&'static str, String, Option<&str>, ConfigType); 6] {
        [
            ("broker.id", broker.0.to_string(), None, ConfigType::Int),
            (
                "default.replication.factor",
                self.default_replication_factor.to_string(),
                Some("1"),
                ConfigType::Int,
            ),
            (
                "num.partitions",
                self.num_partitions.to_string(),
                Some("1"),
                ConfigType::Int,
            ),
            (
                "offsets.topic.num.partitions",
                self.offsets_topic_num_partitions.to_string(),
                Some("50"),
                ConfigType::Int,
            ),
            (
                "offsets.topic.replication.factor",
                self.offsets_topic_replication_factor.to_string(),
                Some("3"),
                ConfigType::Short,
            ),
            (
                "offsets.topic.segment.bytes",
                self.offsets_topic_segment_bytes.to_string(),
                Some("104857600"),
                ConfigType::Int,
            ),
        ]
    }
}

/// IncrementalAlterConfigs' operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterOpType {
    Set,
    Delete,
    /// Adds list items that are not there yet (list-typed keys only).
    Append,
    /// Removes list items (list-typed keys only).
    Subtract,
}

impl AlterOpType {
    /// From the request's `config_operation`.
    pub fn from_kafka(op: i8) -> Result<AlterOpType, ApiError> {
        match op {
            0 => Ok(AlterOpType::Set),
            1 => Ok(AlterOpType::Delete),
            2 => Ok(AlterOpType::Append),
            3 => Ok(AlterOpType::Subtract),
            other => Err(ApiError::InvalidRequest(format!(
                "Unknown config operation {other}."
            ))),
        }
    }
}

/// One entry of an IncrementalAlterConfigs resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterConfigOp {
    pub name: String,
    pub op: AlterOpType,
    /// Ignored for DELETE; required otherwise.
    pub value: Option<String>,
}

impl MetadataImage {
    /// The settings a replica of topic `name` on `broker` runs with, or `None` for an unknown
    /// topic.
    pub fn effective_topic_config(
        &self,
        name: &str,
        broker: NodeId,
        defaults: &ClusterDefaults,
    ) -> Option<TopicConfig> {
        let topic = self.topic(name)?;
        let mut config = defaults.topic.clone();
        let layers = [
            (self.cluster_configs(), false),
            (self.broker_configs(broker), false),
            (&topic.configs, true),
        ];
        for (values, topic_level) in layers {
            for (key_name, value) in values {
                let key = if topic_level {
                    Key::by_topic_name(key_name)
                } else {
                    Key::by_broker_name(key_name)
                };
                let key = key.expect("the image holds only known config keys");
                config
                    .set(key, key_name, value)
                    .expect("the image holds only valid config values");
            }
        }
        Some(config)
    }

    /// The value `name` (a key of `resource`) would have without a setting at `resource`'s
    /// own level, as seen by the controller (no per-broker layer for topics).
    pub(crate) fn inherited_value(
        &self,
        resource: &ConfigResource,
        name: &str,
        defaults: &ClusterDefaults,
    ) -> Option<String> {
        let key = Key::for_resource(resource, name)?;
        let below: &[ConfigSource] = match resource {
            ConfigResource::Topic(_) | ConfigResource::Broker(_) => &[
                ConfigSource::DynamicDefaultBrokerConfig,
                ConfigSource::StaticBrokerConfig,
                ConfigSource::DefaultConfig,
            ],
            ConfigResource::Cluster => &[
                ConfigSource::StaticBrokerConfig,
                ConfigSource::DefaultConfig,
            ],
        };
        self.layers(key, None, None, defaults)
            .into_iter()
            .find(|s| below.contains(&s.source))
            .and_then(|s| s.value)
    }

    /// The dynamic values set at exactly `resource`'s level.
    pub(crate) fn configs_at(
        &self,
        resource: &ConfigResource,
    ) -> Option<&BTreeMap<String, String>> {
        match resource {
            ConfigResource::Topic(name) => self.topic(name).map(|t| &t.configs),
            ConfigResource::Broker(id) => Some(self.broker_configs(*id)),
            ConfigResource::Cluster => Some(self.cluster_configs()),
        }
    }

    /// Every level with a value for `key`, most specific first: the topic override (if
    /// `topic`), the broker's dynamic value (if `broker`), the cluster default, the static
    /// value (if it differs from Kafka's default), Kafka's default.
    fn layers(
        &self,
        key: Key,
        topic: Option<&TopicInfo>,
        broker: Option<NodeId>,
        defaults: &ClusterDefaults,
    ) -> Vec<ConfigSynonym> {
        let synonym = |name: &str, value: &str, source| ConfigSynonym {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            source,
        };
        let mut out = Vec::new();
        if let Some(v) = topic.and_then(|t| t.configs.get(key.topic_name())) {
            out.push(synonym(key.topic_name(), v, ConfigSource::TopicConfig));
        }
        let broker_name = key.broker_name();
        if let Some(v) = broker.and_then(|b| self.broker_configs(b).get(broker_name)) {
            out.push(synonym(broker_name, v, ConfigSource::DynamicBrokerConfig));
        }
        if let Some(v) = self.cluster_configs().get(broker_name) {
            out.push(synonym(
                broker_name,
                v,
                ConfigSource::DynamicDefaultBrokerConfig,
            ));
        }
        let kafka_default = TopicConfig::default().get(key);
        let configured = defaults.topic.get(key);
        if configured != kafka_default {
            out.push(synonym(
                broker_name,
                &configured,
                ConfigSource::StaticBrokerConfig,
            ));
        }
        out.push(synonym(
            broker_name,
            &kafka_default,
            ConfigSource::DefaultConfig,
        ));
        out
    }

    /// DescribeConfigs for `resource`: the configs named in `keys` (all when `None`; unknown
    /// names are left out, as Kafka does), sorted by name, as answered by `local_broker`
    /// (whose dynamic settings apply to topics).
    pub fn describe_configs(
        &self,
        resource: &ConfigResource,
        keys: Option<&[String]>,
        local_broker: NodeId,
        defaults: &ClusterDefaults,
    ) -> Result<Vec<ConfigEntry>, ApiError> {
        let wanted = |name: &str| keys.is_none_or(|ks| ks.iter().any(|k| k == name));
        let from_layers = |name: &str, config_type, layers: Vec<ConfigSynonym>| {
            let top = layers.first().expect("a default layer is always present");
            ConfigEntry {
                name: name.to_owned(),
                value: top.value.clone(),
                read_only: false,
                is_default: top.source == ConfigSource::DefaultConfig,
                source: top.source,
                sensitive: false,
                config_type,
                synonyms: layers,
            }
        };
        let mut out = Vec::new();
        match resource {
            ConfigResource::Topic(name) => {
                let topic = self
                    .topic(name)
                    .ok_or_else(|| ApiError::unknown_topic(name))?;
                for key in Key::ALL {
                    if wanted(key.topic_name()) {
                        let layers = self.layers(key, Some(topic), Some(local_broker), defaults);
                        out.push(from_layers(key.topic_name(), key.config_type(), layers));
                    }
                }
            }
            ConfigResource::Broker(id) => {
                for key in Key::ALL {
                    if wanted(key.broker_name()) {
                        let layers = self.layers(key, None, Some(*id), defaults);
                        out.push(from_layers(key.broker_name(), key.config_type(), layers));
                    }
                }
                for (name, value, kafka_default, config_type) in defaults.static_entries(*id) {
                    if !wanted(name) {
                        continue;
                    }
                    let source = if kafka_default == Some(value.as_str()) {
                        ConfigSource::DefaultConfig
                    } else {
                        ConfigSource::StaticBrokerConfig
                    };
                    let layers = vec![ConfigSynonym {
                        name: name.to_owned(),
                        value: Some(value),
                        source,
                    }];
                    let mut entry = from_layers(name, config_type, layers);
                    entry.read_only = true;
                    out.push(entry);
                }
            }
            ConfigResource::Cluster => {
                for key in Key::ALL {
                    let name = key.broker_name();
                    if let (true, Some(value)) = (wanted(name), self.cluster_configs().get(name)) {
                        let layers = vec![ConfigSynonym {
                            name: name.to_owned(),
                            value: Some(value.clone()),
                            source: ConfigSource::DynamicDefaultBrokerConfig,
                        }];
                        out.push(from_layers(name, key.config_type(), layers));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Resolves IncrementalAlterConfigs `ops` on the current values `current` (with `inherited`
/// giving a key's value when it is not set at this level) into the record's change set.
pub(crate) fn resolve_incremental(
    resource: &ConfigResource,
    ops: &[AlterConfigOp],
    current: &BTreeMap<String, String>,
    inherited: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let mut set = BTreeMap::new();
    for op in ops {
        if set.contains_key(&op.name) {
            return Err(ApiError::InvalidRequest(format!(
                "Error due to duplicate config keys: {}",
                op.name
            )));
        }
        let value = match (op.op, &op.value) {
            (AlterOpType::Delete, _) => None,
            (_, None) => {
                return Err(ApiError::InvalidRequest(format!(
                    "Null value not supported for: {}",
                    op.name
                )))
            }
            (AlterOpType::Set, Some(v)) => Some(v.clone()),
            (AlterOpType::Append | AlterOpType::Subtract, Some(v)) => {
                if Key::for_resource(resource, &op.name).is_some() && !is_list(resource, &op.name) {
                    return Err(ApiError::InvalidConfig(format!(
                        "Config value append or subtract is not allowed for config key: {}",
                        op.name
                    )));
                }
                let old = current
                    .get(&op.name)
                    .cloned()
                    .or_else(|| inherited(&op.name))
                    .unwrap_or_default();
                let mut items: Vec<&str> = list_items(&old);
                let given = list_items(v);
                if op.op == AlterOpType::Append {
                    for item in given {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                } else {
                    items.retain(|item| !given.contains(item));
                }
                Some(items.join(","))
            }
        };
        set.insert(op.name.clone(), value);
    }
    validate_config_set(resource, &set)?;
    Ok(set)
}

/// Legacy AlterConfigs: `configs` replace every value set at `resource`'s level; keys set
/// now but not given are deleted.
pub(crate) fn resolve_replace(
    resource: &ConfigResource,
    configs: &[(String, Option<String>)],
    current: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let mut set: BTreeMap<String, Option<String>> =
        current.keys().map(|k| (k.clone(), None)).collect();
    let mut seen = Vec::with_capacity(configs.len());
    for (name, value) in configs {
        if seen.contains(&name) {
            return Err(ApiError::InvalidRequest(format!(
                "Error due to duplicate config keys: {name}"
            )));
        }
        seen.push(name);
        let Some(value) = value else {
            return Err(ApiError::InvalidRequest(format!(
                "Null value not supported for: {name}"
            )));
        };
        set.insert(name.clone(), Some(value.clone()));
    }
    validate_config_set(resource, &set)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_defaults_round_trip_through_strings() {
        let defaults = TopicConfig::default();
        for key in Key::ALL {
            let mut c = TopicConfig::default();
            c.set(key, key.topic_name(), &defaults.get(key))
                .expect("default is valid");
            assert_eq!(c, defaults);
        }
        assert!(ClusterDefaults::default().validate().is_ok());
    }

    #[test]
    fn values_are_typed_and_bounded() {
        let check = |name: &str, value: &str| {
            let set = BTreeMap::from([(name.to_owned(), Some(value.to_owned()))]);
            validate_config_set(&ConfigResource::Topic("t".into()), &set)
        };
        for (name, value) in [
            ("retention.ms", "-1"),
            ("retention.ms", " 1000 "),
            ("retention.bytes", "-1"),
            ("retention.bytes", "1073741824"),
            ("cleanup.policy", "compact"),
            ("cleanup.policy", "compact,delete"),
            ("cleanup.policy", "delete, compact"),
            ("segment.bytes", "1024"),
            ("segment.ms", "1"),
            ("delete.retention.ms", "0"),
            ("min.insync.replicas", "2"),
            ("max.message.bytes", "0"),
            ("message.timestamp.type", "LogAppendTime"),
            ("index.interval.bytes", "0"),
        ] {
            assert_eq!(check(name, value), Ok(()), "{name}={value}");
        }
        for (name, value) in [
            ("retention.ms", "-2"),
            ("retention.ms", "1h"),
            ("retention.ms", "99999999999999999999"),
            ("retention.bytes", "-2"),
            ("cleanup.policy", "remove"),
            ("cleanup.policy", ""),
            ("segment.bytes", "1023"),
            ("segment.bytes", "4294967296"),
            ("segment.ms", "0"),
            ("delete.retention.ms", "-1"),
            ("min.insync.replicas", "0"),
            ("max.message.bytes", "-1"),
            ("message.timestamp.type", "createtime"),
            ("compression.type", "lz4"),
            ("log.retention.ms", "1000"),
        ] {
            let result = check(name, value);
            assert!(
                matches!(result, Err(ApiError::InvalidConfig(_))),
                "{name}={value}: {result:?}"
            );
        }
        let long = "1".repeat(CONFIG_VALUE_SIZE_MAX_BYTES + 1);
        assert!(check("retention.ms", &long).is_err());
        assert_eq!(
            check("retention.ms", "x"),
            Err(ApiError::InvalidConfig(
                "Invalid value x for configuration retention.ms: Not a number of type LONG".into()
            ))
        );
    }

    #[test]
    fn broker_resources_take_broker_names() {
        let ok = BTreeMap::from([("log.retention.ms".to_owned(), Some("5".to_owned()))]);
        let topic_name = BTreeMap::from([("retention.ms".to_owned(), Some("5".to_owned()))]);
        let read_only = BTreeMap::from([("num.partitions".to_owned(), Some("5".to_owned()))]);
        for resource in [ConfigResource::Cluster, ConfigResource::Broker(NodeId(1))] {
            assert_eq!(validate_config_set(&resource, &ok), Ok(()));
            assert!(validate_config_set(&resource, &topic_name).is_err());
            assert!(validate_config_set(&resource, &read_only).is_err());
        }
    }

    #[test]
    fn log_config_follows_the_topic_config() {
        let mut c = TopicConfig::default();
        assert_eq!(c.to_log_config(), LogConfig::default());
        c.retention_ms = -1;
        c.retention_bytes = 1000;
        c.cleanup_policy = CleanupPolicy::Compact;
        c.segment_bytes = 4096;
        c.segment_ms = 60_000;
        c.delete_retention_ms = 5;
        c.index_interval_bytes = 0;
        let log = c.to_log_config();
        assert_eq!(
            log,
            LogConfig {
                segment_size_max_bytes: 4096,
                segment_age_max_ms: 60_000,
                index_interval_bytes: 1,
                retention_ms: None,
                retention_bytes: Some(1000),
                cleanup_policy: CleanupPolicy::Compact,
                delete_retention_ms: 5,
            }
        );
        assert!(log.validate().is_ok());
    }

    #[test]
    fn incremental_ops_resolve_against_current_and_inherited_values() {
        let topic = ConfigResource::Topic("t".into());
        let current = BTreeMap::from([("retention.ms".to_owned(), "5".to_owned())]);
        let inherited = |_: &str| Some("delete".to_owned());
        let op = |name: &str, op, value: Option<&str>| AlterConfigOp {
            name: name.into(),
            op,
            value: value.map(str::to_owned),
        };
        let set = resolve_incremental(
            &topic,
            &[
                op("retention.ms", AlterOpType::Delete, None),
                op("cleanup.policy", AlterOpType::Append, Some("compact")),
                op("segment.bytes", AlterOpType::Set, Some("2048")),
            ],
            &current,
            inherited,
        )
        .expect("valid");
        assert_eq!(
            set,
            BTreeMap::from([
                (
                    "cleanup.policy".to_owned(),
                    Some("delete,compact".to_owned())
                ),
                ("retention.ms".to_owned(), None),
                ("segment.bytes".to_owned(), Some("2048".to_owned())),
            ])
        );
        let compact_delete =
            BTreeMap::from([("cleanup.policy".to_owned(), "compact,delete".to_owned())]);
        let set = resolve_incremental(
            &topic,
            &[op("cleanup.policy", AlterOpType::Subtract, Some("delete"))],
            &compact_delete,
            inherited,
        )
        .expect("valid");
        assert_eq!(set["cleanup.policy"], Some("compact".to_owned()));
        // Subtracting the last item leaves an empty (invalid) policy.
        assert!(matches!(
            resolve_incremental(
                &topic,
                &[op("cleanup.policy", AlterOpType::Subtract, Some("delete"))],
                &BTreeMap::new(),
                inherited,
            ),
            Err(ApiError::InvalidConfig(_))
        ));
        assert!(matches!(
            resolve_incremental(
                &topic,
                &[op("retention.ms", AlterOpType::Append, Some("5"))],
                &current,
                inherited
            ),
            Err(ApiError::InvalidConfig(_))
        ));
        assert!(matches!(
            resolve_incremental(
                &topic,
                &[op("retention.ms", AlterOpType::Set, None)],
                &current,
                inherited
            ),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            resolve_incremental(
                &topic,
                &[
                    op("retention.ms", AlterOpType::Set, Some("1")),
                    op("retention.ms", AlterOpType::Delete, None)
                ],
                &current,
                inherited
            ),
            Err(ApiError::InvalidRequest(_))
        ));
        assert!(matches!(
            resolve_incremental(
                &topic,
                &[op("bogus", AlterOpType::Delete, None)],
                &current,
                inherited
            ),
            Err(ApiError::InvalidConfig(_))
        ));
        assert_eq!(AlterOpType::from_kafka(2), Ok(AlterOpType::Append));
        assert!(AlterOpType::from_kafka(4).is_err());
    }

    #[test]
    fn replace_deletes_what_is_not_given() {
        let topic = ConfigResource::Topic("t".into());
        let current = BTreeMap::from([
            ("retention.ms".to_owned(), "5".to_owned()),
            ("segment.ms".to_owned(), "5".to_owned()),
        ]);
        let set = resolve_replace(
            &topic,
            &[("retention.ms".into(), Some("7".into()))],
            &current,
        )
        .expect("valid");
        assert_eq!(
            set,
            BTreeMap::from([
                ("retention.ms".to_owned(), Some("7".to_owned())),
                ("segment.ms".to_owned(), None),
            ])
        );
        assert!(resolve_replace(&topic, &[("retention.ms".into(), None)], &current).is_err());
        assert!(resolve_replace(&topic, &[("x".into(), Some("1".into()))], &current).is_err());
    }
}
