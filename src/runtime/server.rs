//! Running brokers for real: Tokio clock and spawner, TCP between nodes, files on disk, a
//! Kafka listener. `fjord dev` runs N such nodes in one process; `fjord broker` runs one node
//! of a multi-process cluster from a TOML file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fjord_log::{Disk, FileDisk};
use fjord_replication::{Clock, Network, NodeId, Spawner};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::metrics::{serve_metrics, MetricsServerHandle};
use super::{
    serve_kafka_when, KafkaServerHandle, TcpNetwork, ThreadDiskJobs, TokioClock, TokioSpawner,
};
use crate::broker::{self, BrokerConfig, BrokerHandle, BrokerIo};
use crate::controller::ClusterDefaults;
use crate::kafka::server::ConnectionLimits;

/// How often a starting node checks whether it may serve clients.
const SERVING_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Everything needed to run one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    /// Host and port clients are told to use.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rpc_listen: SocketAddr,
    /// The address other nodes use for this one (defaults to `rpc_listen`).
    pub rpc_advertised: Option<SocketAddr>,
    pub rack: Option<String>,
    /// Controller voters and their node-to-node addresses.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    pub cluster_id: Option<String>,
    pub defaults: ClusterDefaults,
    pub auto_create_topics: bool,
    pub seed: u64,
    /// How often leaders move partitions back to their preferred replica.
    pub leader_balance_interval: Duration,
    /// How often retention and compaction run.
    pub log_maintenance_interval: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Consumer-group coordinator settings.
    pub group: crate::group::GroupConfig,
}

impl NodeSpec {
    /// A node of a cluster on this machine: Kafka on an ephemeral 127.0.0.1 port (advertised
    /// as such), node-to-node traffic on its address in `voters` (or an ephemeral port), data
    /// in `data_dir`, Kafka's defaults otherwise. Adjust fields with struct update syntax.
    pub fn local(
        node_id: NodeId,
        data_dir: impl Into<PathBuf>,
        voters: BTreeMap<NodeId, SocketAddr>,
    ) -> NodeSpec {
        let rpc_listen = voters
            .get(&node_id)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        NodeSpec {
            node_id,
            data_dir: data_dir.into(),
            kafka_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 0,
            rpc_listen,
            rpc_advertised: None,
            rack: None,
            voters,
            cluster_id: None,
            defaults: ClusterDefaults::default(),
            auto_create_topics: true,
            seed: seed_from_clock(node_id.0),
            leader_balance_interval: Duration::from_secs(30),
            log_maintenance_interval: Duration::from_secs(5),
            metrics_listen: None,
            group: crate::group::GroupConfig::default(),
        }
    }
}

/// A node started by [`start_node`].
pub struct RunningNode {
    pub id: NodeId,
    pub broker: BrokerHandle,
    pub kafka: KafkaServerHandle,
    pub network: Arc<TcpNetwork>,
    pub task: JoinHandle<Result<(), broker::BrokerError>>,
    /// The metrics listener this node started (for `fjord dev`: the first node keeps the
    /// one endpoint that serves every node).
    pub metrics: Option<MetricsServerHandle>,
}

impl RunningNode {
    /// Graceful stop: leaderships handed over, then the loop ends and listeners close.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.broker.shutdown()).await;
        self.task.abort();
        drop(self.kafka);
    }
}

/// Starts one node: its node-to-node network, its broker loop and its Kafka listener.
pub async fn start_node(mut spec: NodeSpec) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&spec.data_dir)?;
    if spec.kafka_listen.port() == 0 {
        // Pick the port now: the broker must advertise it before the listener starts.
        let probe = std::net::TcpListener::bind(spec.kafka_listen)?;
        spec.kafka_listen = probe.local_addr()?;
    }
    if spec.advertised_port == 0 {
        spec.advertised_port = spec.kafka_listen.port();
    }
    let peers: BTreeMap<NodeId, SocketAddr> = spec
        .voters
        .iter()
        .filter(|(id, _)| **id != spec.node_id)
        .map(|(id, a)| (*id, *a))
        .collect();
    let network = TcpNetwork::start(spec.node_id, spec.rpc_listen, peers).await?;
    let rpc_addr = spec.rpc_advertised.unwrap_or(network.local_addr());
    let disk: Arc<dyn Disk> = Arc::new(FileDisk::new(&spec.data_dir));
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let spawner: Arc<dyn Spawner> = Arc::new(TokioSpawner::current());
    let voters: BTreeSet<NodeId> = spec.voters.keys().copied().collect();
    let mut cfg = BrokerConfig::new(spec.node_id, voters, spec.seed);
    cfg.host = spec.advertised_host.clone();
    cfg.kafka_port = spec.advertised_port;
    cfg.rack = spec.rack.clone();
    cfg.rpc_addr = rpc_addr.to_string();
    cfg.cluster_id = spec.cluster_id.clone();
    cfg.defaults = spec.defaults.clone();
    cfg.auto_create_topics = spec.auto_create_topics;
    cfg.leader_balance_interval = spec.leader_balance_interval;
    cfg.log_maintenance_interval = spec.log_maintenance_interval;
    cfg.group = spec.group.clone();
    let io = BrokerIo {
        clock,
        network: Arc::clone(&network) as Arc<dyn Network>,
        disk,
        spawner,
        io_wait: None,
        disk_jobs: Some(Arc::new(ThreadDiskJobs)),
    };
    let (handle, run) = broker::start(io, cfg)?;
    let id = spec.node_id;
    let task = tokio::spawn(async move {
        let result = run.await;
        if let Err(e) = &result {
            tracing::error!(node = %id, "broker stopped: {e}");
        }
        result
    });
    // Clients are served once this process is registered and unfenced: before that, the
    // broker would list no broker (or not itself) in Metadata while naming itself as group
    // coordinator, and librdkafka drops a broker missing from Metadata, coordinator or not.
    let serving = {
        let handle = handle.clone();
        async move {
            loop {
                match handle.status().await {
                    Some(s) if s.serving => break,
                    None => std::future::pending::<()>().await,
                    Some(_) => tokio::time::sleep(SERVING_POLL_INTERVAL).await,
                }
            }
            tracing::info!(node = %id, "registered and unfenced: serving clients");
        }
    };
    let kafka = serve_kafka_when(
        spec.kafka_listen,
        Arc::new(handle.clone()),
        ConnectionLimits::default(),
        serving,
    )
    .await?;
    let metrics = match spec.metrics_listen {
        Some(addr) => Some(
            serve_metrics(addr, vec![handle.clone()])
                .await
                .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?,
        ),
        None => None,
    };
    tracing::info!(node = %id, kafka = %kafka.local_addr(), rpc = %rpc_addr, "broker started");
    Ok(RunningNode {
        id,
        broker: handle,
        kafka,
        network,
        task,
        metrics,
    })
}

/// Options of `fjord dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub brokers: u32,
    pub data_dir: PathBuf,
    /// Kafka port of the first broker; the others take the next ones.
    pub port: u16,
    pub host: String,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// One Prometheus endpoint for every broker (series labelled by `node`).
    pub metrics_listen: Option<SocketAddr>,
}

/// Starts a development cluster in this process and returns its nodes. Brokers are
/// controller voters (the first five of them); node-to-node traffic uses loopback ports
/// picked by the OS, remembered in `<data_dir>/dev-ports.toml` so that a restart finds
/// the same cluster.
pub async fn start_dev(opts: &DevOptions) -> anyhow::Result<Vec<RunningNode>> {
    anyhow::ensure!(opts.brokers >= 1, "at least one broker");
    std::fs::create_dir_all(&opts.data_dir)?;
    let ports_file = opts.data_dir.join("dev-ports.toml");
    let mut rpc: BTreeMap<u32, u16> = std::fs::read_to_string(&ports_file)
        .ok()
        .and_then(|s| toml::from_str::<BTreeMap<String, u16>>(&s).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
                .collect()
        })
        .unwrap_or_default();
    for id in 1..=opts.brokers {
        if let std::collections::btree_map::Entry::Vacant(e) = rpc.entry(id) {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            e.insert(l.local_addr()?.port());
        }
    }
    let text: BTreeMap<String, u16> = rpc.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    std::fs::write(&ports_file, toml::to_string(&text)?)?;
    let voters: BTreeMap<NodeId, SocketAddr> = rpc
        .iter()
        .filter(|(id, _)| **id <= opts.brokers.min(5))
        .map(|(id, port)| (NodeId(*id), SocketAddr::from(([127, 0, 0, 1], *port))))
        .collect();
    let defaults = ClusterDefaults {
        num_partitions: opts.default_partitions,
        default_replication_factor: opts.brokers.min(3) as i16,
        offsets_topic_replication_factor: opts.brokers.min(3) as i16,
        ..ClusterDefaults::default()
    };
    let mut nodes = Vec::new();
    for id in 1..=opts.brokers {
        let port = opts.port + (id - 1) as u16;
        let spec = NodeSpec {
            node_id: NodeId(id),
            data_dir: opts.data_dir.join(format!("broker-{id}")),
            kafka_listen: format!("{}:{port}", listen_host(&opts.host)).parse()?,
            advertised_host: opts.host.clone(),
            advertised_port: port,
            rpc_listen: SocketAddr::from(([127, 0, 0, 1], rpc[&id])),
            rpc_advertised: None,
            rack: None,
            voters: voters.clone(),
            cluster_id: Some("fjord-dev".into()),
            defaults: defaults.clone(),
            auto_create_topics: opts.auto_create_topics,
            seed: seed_from_clock(id),
            leader_balance_interval: Duration::from_secs(30),
            log_maintenance_interval: Duration::from_secs(5),
            metrics_listen: None,
            // A development cluster starts group rebalances at once (as Kafka's dev images do).
            group: crate::group::GroupConfig {
                initial_rebalance_delay_ms: 0,
                ..crate::group::GroupConfig::default()
            },
        };
        nodes.push(start_node(spec).await?);
    }
    if let Some(addr) = opts.metrics_listen {
        let brokers = nodes.iter().map(|n| n.broker.clone()).collect();
        let server = serve_metrics(addr, brokers).await.map_err(|e| {
            anyhow::anyhow!("metrics listener on {addr}: {e} (use --metrics-addr off to disable)")
        })?;
        if let Some(first) = nodes.first_mut() {
            first.metrics = Some(server);
        }
    }
    Ok(nodes)
}

fn listen_host(host: &str) -> &str {
    if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    }
}

/// A fresh seed per process start (the production node's incarnation, election jitter).
#[allow(clippy::disallowed_methods)] // The production runtime may read real time.
fn seed_from_clock(salt: u32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(salt) << 48) ^ u64::from(std::process::id())
}

/// `fjord broker --config FILE`: one node of a multi-process cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    pub node_id: u32,
    pub data_dir: PathBuf,
    /// Kafka listener, e.g. "0.0.0.0:9092".
    pub listen: SocketAddr,
    /// What clients are told (defaults to the listener).
    pub advertised_host: Option<String>,
    pub advertised_port: Option<u16>,
    /// Node-to-node listener.
    pub rpc_listen: SocketAddr,
    pub rpc_advertised: Option<SocketAddr>,
    pub rack: Option<String>,
    pub cluster_id: Option<String>,
    #[serde(default = "default_true")]
    pub auto_create_topics: bool,
    #[serde(default)]
    pub default_partitions: Option<i32>,
    /// Also the replicas of `__consumer_offsets` unless `offsets_topic_replication_factor`
    /// is given.
    #[serde(default)]
    pub default_replication_factor: Option<i16>,
    /// `offsets.topic.replication.factor` (Kafka's default: 3).
    #[serde(default)]
    pub offsets_topic_replication_factor: Option<i16>,
    /// `offsets.topic.num.partitions` (Kafka's default: 50).
    #[serde(default)]
    pub offsets_topic_num_partitions: Option<u32>,
    /// `group.initial.rebalance.delay.ms` (Kafka's default: 3000).
    #[serde(default)]
    pub group_initial_rebalance_delay_ms: Option<i32>,
    /// How often leaders move partitions back to their preferred replica (default: 30000).
    #[serde(default)]
    pub leader_balance_interval_ms: Option<u64>,
    /// Controller voters: node id → node-to-node address.
    pub controller_voters: BTreeMap<String, SocketAddr>,
    /// Prometheus endpoint (`GET /metrics`), e.g. "127.0.0.1:9644"; not served if absent.
    pub metrics_listen: Option<SocketAddr>,
}

fn default_true() -> bool {
    true
}

impl BrokerFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(toml::from_str(&text)?)
    }

    pub fn spec(&self) -> anyhow::Result<NodeSpec> {
        let mut voters = BTreeMap::new();
        for (id, addr) in &self.controller_voters {
            voters.insert(NodeId(id.parse()?), *addr);
        }
        let mut defaults = ClusterDefaults::default();
        if let Some(p) = self.default_partitions {
            defaults.num_partitions = p;
        }
        if let Some(rf) = self.default_replication_factor {
            defaults.default_replication_factor = rf;
            defaults.offsets_topic_replication_factor = rf;
        }
        if let Some(rf) = self.offsets_topic_replication_factor {
            defaults.offsets_topic_replication_factor = rf;
        }
        if let Some(n) = self.offsets_topic_num_partitions {
            defaults.offsets_topic_num_partitions = n;
        }
        let mut group = crate::group::GroupConfig::default();
        if let Some(ms) = self.group_initial_rebalance_delay_ms {
            group.initial_rebalance_delay_ms = ms;
        }
        group
            .validate()
            .map_err(|e| anyhow::anyhow!("group settings: {e}"))?;
        Ok(NodeSpec {
            node_id: NodeId(self.node_id),
            data_dir: self.data_dir.clone(),
            kafka_listen: self.listen,
            advertised_host: self
                .advertised_host
                .clone()
                .unwrap_or_else(|| self.listen.ip().to_string()),
            advertised_port: self.advertised_port.unwrap_or(self.listen.port()),
            rpc_listen: self.rpc_listen,
            rpc_advertised: self.rpc_advertised,
            rack: self.rack.clone(),
            voters,
            cluster_id: self.cluster_id.clone(),
            defaults,
            auto_create_topics: self.auto_create_topics,
            seed: seed_from_clock(self.node_id),
            leader_balance_interval: Duration::from_millis(
                self.leader_balance_interval_ms.unwrap_or(30_000).max(1),
            ),
            log_maintenance_interval: Duration::from_secs(5),
            metrics_listen: self.metrics_listen,
            group,
        })
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example cluster (config/cluster/, started by scripts/cluster) is three voters that
    /// agree on the voters and use distinct ports.
    #[test]
    fn example_cluster_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster");
        let mut ports = BTreeSet::new();
        let mut voters = None;
        for id in 1..=3u32 {
            let spec = BrokerFile::load(&dir.join(format!("node{id}.toml")))
                .and_then(|f| f.spec())
                .expect("loads");
            assert_eq!(spec.node_id, NodeId(id));
            assert_eq!(spec.voters.get(&NodeId(id)), Some(&spec.rpc_listen));
            assert_eq!(spec.defaults.default_replication_factor, 3);
            assert_eq!(spec.group.initial_rebalance_delay_ms, 0);
            for addr in [
                Some(spec.kafka_listen),
                Some(spec.rpc_listen),
                spec.metrics_listen,
            ] {
                let addr = addr.expect("metrics served");
                assert!(addr.ip().is_loopback());
                assert!(ports.insert(addr.port()), "port {} twice", addr.port());
            }
            assert_eq!(*voters.get_or_insert(spec.voters.clone()), spec.voters);
        }
    }
}
