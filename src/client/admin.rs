//! The admin client: topics, configs and the cluster description.
//!
//! Topic creation and deletion go to any broker (KRaft brokers forward them to the
//! controller); NOT_CONTROLLER and other retriable errors are retried a few times with
//! backoff. Per-topic outcomes are returned per topic.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::cluster::Client;
use super::error::{Error, ResponseError};
use super::metadata::{BrokerInfo, TopicInfo};

/// Attempts of an admin request that fails retriably.
const ADMIN_ATTEMPTS_MAX: u32 = 5;

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }
}

/// What a config belongs to (Kafka's resource types 2 and 4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigResource {
    Topic(String),
    Broker(i32),
}

impl ConfigResource {
    fn wire(&self) -> (i8, String) {
        match self {
            ConfigResource::Topic(t) => (2, t.clone()),
            ConfigResource::Broker(b) => (4, b.to_string()),
        }
    }
}

/// One config value as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    /// Kafka's config source (1 topic, 4 static broker, 5 default, ...; -1 unknown).
    pub source: i8,
    pub is_sensitive: bool,
}

/// An incremental config change (IncrementalAlterConfigs operations 0-3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlterConfigOp {
    Set(String, String),
    /// Back to the default.
    Delete(String),
    /// Add to a list-valued config.
    Append(String, String),
    /// Remove from a list-valued config.
    Subtract(String, String),
}

impl AlterConfigOp {
    fn wire(&self) -> AlterableConfig {
        let (name, op, value) = match self {
            AlterConfigOp::Set(k, v) => (k, 0, Some(v)),
            AlterConfigOp::Delete(k) => (k, 1, None),
            AlterConfigOp::Append(k, v) => (k, 2, Some(v)),
            AlterConfigOp::Subtract(k, v) => (k, 3, Some(v)),
        };
        AlterableConfig::default()
            .with_name(str_bytes(name))
            .with_config_operation(op)
            .with_value(value.map(|v| str_bytes(v)))
    }
}

/// The cluster as DescribeCluster describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: String,
    pub controller_id: Option<i32>,
    pub brokers: Vec<BrokerInfo>,
    /// Brokers registered but fenced (not yet, or no longer, taking partitions).
    pub fenced_brokers: Vec<i32>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

fn outcome(code: i16, message: Option<&StrBytes>) -> Result<(), Error> {
    match Error::from_code(code, message.map(|m| m.to_string())) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Admin operations over a [`Client`].
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub fn new(client: &Client) -> Admin {
        Admin {
            client: client.clone(),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Err(e) if e.is_retriable() && failures + 1 < ADMIN_ATTEMPTS_MAX => {
                    tracing::debug!(error = %e, "kafka admin: retrying");
                    self.client.backoff(failures).await;
                    failures += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates topics; one outcome per topic, in request order.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
    ) -> Result<Vec<(String, Result<(), Error>)>, Error> {
        let timeout_ms = millis(self.client.config().request_timeout);
        let creatable: Vec<CreatableTopic> = topics
            .iter()
            .map(|t| {
                CreatableTopic::default()
                    .with_name(topic_name(&t.name))
                    .with_num_partitions(t.partitions)
                    .with_replication_factor(t.replication_factor)
                    .with_configs(
                        t.configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(v)))
                            })
                            .collect(),
                    )
            })
            .collect();
        let response = self
            .retrying(|| async {
                let r = self
                    .client
                    .call_any(|_| {
                        CreateTopicsRequest::default()
                            .with_topics(creatable.clone())
                            .with_timeout_ms(timeout_ms)
                    })
                    .await?;
                // A controller move fails every topic alike: retry the whole request.
                if let Some(e) = r
                    .topics
                    .iter()
                    .find(|t| t.error_code == ResponseError::NotController.code())
                    .and_then(|t| Error::from_code(t.error_code, None))
                {
                    return Err(e);
                }
                Ok(r)
            })
            .await?;
        let mut by_name: BTreeMap<String, Result<(), Error>> = response
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    outcome(t.error_code, t.error_message.as_ref()),
                )
            })
            .collect();
        self.client
            .register_topics(topics.iter().map(|t| t.name.as_str()));
        Ok(topics
            .iter()
            .map(|t| {
                let r = by_name
                    .remove(&t.name)
                    .unwrap_or_else(|| Err(Error::InvalidResponse(format!("{} missing", t.name))));
                (t.name.clone(), r)
            })
            .collect())
    }

    /// Deletes topics by name; one outcome per topic, in request order.
    pub async fn delete_topics(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Result<(), Error>)>, Error> {
        let timeout_ms = millis(self.client.config().request_timeout);
        let response = self
            .retrying(|| async {
                self.client
                    .call_any(|version| {
                        let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                        if version >= 6 {
                            request.with_topics(
                                names
                                    .iter()
                                    .map(|n| {
                                        DeleteTopicState::default().with_name(Some(topic_name(n)))
                                    })
                                    .collect(),
                            )
                        } else {
                            request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                        }
                    })
                    .await
            })
            .await?;
        let mut by_name: BTreeMap<String, Result<(), Error>> = response
            .responses
            .iter()
            .filter_map(|r| {
                let name = r.name.as_ref()?.0.to_string();
                Some((name, outcome(r.error_code, r.error_message.as_ref())))
            })
            .collect();
        self.client.request_metadata_update();
        Ok(names
            .iter()
            .map(|n| {
                let r = by_name
                    .remove(n)
                    .unwrap_or_else(|| Err(Error::InvalidResponse(format!("{n} missing"))));
                (n.clone(), r)
            })
            .collect())
    }

    /// Names of all topics, sorted; internal ones (`__consumer_offsets`) only if asked.
    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<String>, Error> {
        let metadata = self.retrying(|| self.client.fetch_all_metadata()).await?;
        Ok(metadata
            .topics
            .values()
            .filter(|t| include_internal || !t.is_internal)
            .map(|t| t.name.clone())
            .collect())
    }

    /// Partitions, leaders, replicas and ISR of `names` (all topics if empty). A topic
    /// that does not exist comes back with its error (UNKNOWN_TOPIC_OR_PARTITION).
    pub async fn describe_topics(&self, names: &[String]) -> Result<Vec<TopicInfo>, Error> {
        let metadata = if names.is_empty() {
            self.retrying(|| self.client.fetch_all_metadata()).await?
        } else {
            self.retrying(|| self.client.fetch_metadata(names)).await?
        };
        Ok(metadata.topics.into_values().collect())
    }

    /// Config entries of each resource. Broker resources are asked of that broker.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
    ) -> Result<BTreeMap<ConfigResource, Result<Vec<ConfigEntry>, Error>>, Error> {
        let mut out = BTreeMap::new();
        for resource in resources {
            let (resource_type, resource_name) = resource.wire();
            let build = |_| {
                DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(resource_type)
                        .with_resource_name(str_bytes(&resource_name))
                        .with_configuration_keys(None),
                ])
            };
            let response = self
                .retrying(|| async {
                    match resource {
                        ConfigResource::Broker(id) => self.client.call_node(*id, build, None).await,
                        ConfigResource::Topic(_) => self.client.call_any(build).await,
                    }
                })
                .await?;
            let result = match response.results.first() {
                None => Err(Error::InvalidResponse("no DescribeConfigs result".into())),
                Some(r) => outcome(r.error_code, r.error_message.as_ref()).map(|()| {
                    r.configs
                        .iter()
                        .map(|c| ConfigEntry {
                            name: c.name.to_string(),
                            value: c.value.as_ref().map(|v| v.to_string()),
                            read_only: c.read_only,
                            source: c.config_source,
                            is_sensitive: c.is_sensitive,
                        })
                        .collect()
                }),
            };
            out.insert(resource.clone(), result);
        }
        Ok(out)
    }

    /// Applies `ops` to `resource` (IncrementalAlterConfigs).
    pub async fn alter_configs(
        &self,
        resource: &ConfigResource,
        ops: &[AlterConfigOp],
    ) -> Result<(), Error> {
        let (resource_type, resource_name) = resource.wire();
        let configs: Vec<AlterableConfig> = ops.iter().map(AlterConfigOp::wire).collect();
        let build = |_| {
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(str_bytes(&resource_name))
                    .with_configs(configs.clone()),
            ])
        };
        let response = self
            .retrying(|| async {
                match resource {
                    ConfigResource::Broker(id) => self.client.call_node(*id, build, None).await,
                    ConfigResource::Topic(_) => self.client.call_any(build).await,
                }
            })
            .await?;
        match response.responses.first() {
            None => Err(Error::InvalidResponse(
                "no IncrementalAlterConfigs result".into(),
            )),
            Some(r) => outcome(r.error_code, r.error_message.as_ref()),
        }
    }

    /// Cluster id, controller and brokers.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription, Error> {
        let response = self
            .retrying(|| {
                self.client.call_any(|version| {
                    let request = DescribeClusterRequest::default();
                    match version {
                        0 => request,
                        1 => request.with_endpoint_type(1),
                        _ => request
                            .with_endpoint_type(1)
                            .with_include_fenced_brokers(true),
                    }
                })
            })
            .await?;
        outcome(response.error_code, response.error_message.as_ref())?;
        Ok(ClusterDescription {
            cluster_id: response.cluster_id.to_string(),
            controller_id: (response.controller_id.0 >= 0).then_some(response.controller_id.0),
            brokers: response
                .brokers
                .iter()
                .map(|b| BrokerInfo {
                    node_id: b.broker_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                })
                .collect(),
            fenced_brokers: response
                .brokers
                .iter()
                .filter(|b| b.is_fenced)
                .map(|b| b.broker_id.0)
                .collect(),
        })
    }
}

fn millis(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
