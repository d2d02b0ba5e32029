//! [`Client`]: the cluster view shared by producers, consumers and the admin client.
//!
//! It keeps one lazily opened [`KafkaConnection`] per broker address (re-dialled after a
//! failure with exponential backoff), a metadata cache refreshed on demand (stale-leader
//! errors, connection errors), when older than `metadata_max_age`, and whenever a new
//! topic becomes interesting, and a seeded random stream for jitter. It is cheap to clone;
//! all clones share the state. Runtime-agnostic: IO goes through the [`Connector`], time
//! through the [`Clock`], tasks through the [`Spawner`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fjord_replication::{Clock, Instant, Spawner};
use futures::future::{select, Either};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestKind, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::backoff::Backoff;
use super::conn::{ClientError, ClientOptions, Connector, KafkaConnection};
use super::error::Error;
use super::metadata::ClusterMetadata;

/// How a [`Client`] reaches the cluster. Defaults are the Java client's.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of brokers to ask for metadata first.
    pub bootstrap_servers: Vec<String>,
    pub client_id: String,
    /// How long a request waits for its response (`request.timeout.ms`).
    pub request_timeout: Duration,
    /// How long a connection attempt may take (`socket.connection.setup.timeout.ms`).
    pub connect_timeout: Duration,
    /// Metadata older than this is refreshed even without an error (`metadata.max.age.ms`).
    pub metadata_max_age: Duration,
    /// Wait before retrying a failed request, doubled per failure (`retry.backoff.ms`).
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Wait before re-dialling a broker, doubled per failure (`reconnect.backoff.ms`).
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
    /// Whether Metadata requests may create missing topics (the broker decides whether it
    /// does; Kafka's producer and consumer both default to asking).
    pub allow_auto_topic_creation: bool,
    /// Seed of the client's random stream (backoff jitter, sticky partitions).
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".to_string()],
            client_id: "fjord".to_string(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            metadata_max_age: Duration::from_secs(300),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            allow_auto_topic_creation: true,
            seed: 0,
        }
    }
}

impl ClientConfig {
    pub fn retry(&self) -> Backoff {
        Backoff {
            initial: self.retry_backoff,
            max: self.retry_backoff_max,
        }
    }

    fn reconnect(&self) -> Backoff {
        Backoff {
            initial: self.reconnect_backoff,
            max: self.reconnect_backoff_max,
        }
    }
}

/// One broker address: its connection and dialling history. Its async lock is held while
/// dialling, so concurrent callers share one attempt.
#[derive(Default)]
struct Slot {
    state: futures::lock::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<KafkaConnection>>,
    failures: u32,
    retry_at: Option<Instant>,
}

struct State {
    metadata: Arc<ClusterMetadata>,
    /// Topics whose metadata is kept.
    topics: BTreeSet<String>,
    /// Set when the cache is known to be wrong (a stale-leader error, a new topic).
    stale: bool,
    refreshes: u64,
    slots: BTreeMap<String, Arc<Slot>>,
    rng: ChaCha8Rng,
    /// Rotates the broker asked for metadata, so one dead broker is not asked forever.
    cursor: usize,
}

struct Inner {
    config: ClientConfig,
    connector: Arc<dyn Connector>,
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn Spawner>,
    state: Mutex<State>,
    /// One metadata refresh at a time; callers that waited reuse its result.
    refresh: futures::lock::Mutex<()>,
}

/// The cluster view: connections, metadata, retry policy. Clone freely.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub fn new(
        connector: Arc<dyn Connector>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn Spawner>,
        config: ClientConfig,
    ) -> Client {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Client {
            inner: Arc::new(Inner {
                config,
                connector,
                clock,
                spawner,
                state: Mutex::new(State {
                    metadata: Arc::new(ClusterMetadata::default()),
                    topics: BTreeSet::new(),
                    stale: true,
                    refreshes: 0,
                    slots: BTreeMap::new(),
                    rng,
                    cursor: 0,
                }),
                refresh: futures::lock::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn spawner(&self) -> &Arc<dyn Spawner> {
        &self.inner.spawner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A seed drawn from the client's stream, for components that keep their own.
    pub fn derive_seed(&self) -> u64 {
        self.state().rng.gen()
    }

    /// The retry backoff after `failures` consecutive failures, jittered.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let backoff = self.inner.config.retry();
        backoff.delay(failures, &mut self.state().rng)
    }

    /// Sleeps for the retry backoff after `failures` consecutive failures.
    pub async fn backoff(&self, failures: u32) {
        let delay = self.retry_delay(failures);
        self.inner.clock.sleep(delay).await;
    }

    // ---- metadata ----

    /// The current metadata snapshot (may be empty before the first refresh).
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.state().metadata.clone()
    }

    /// Keeps metadata for `topics` from now on; a topic not seen before makes the cache
    /// stale.
    pub fn register_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut state = self.state();
        for topic in topics {
            if state.topics.insert(topic.to_string()) {
                state.stale = true;
            }
        }
    }

    /// Marks the cache stale ([`Client::metadata_needs_refresh`] says so until a refresh).
    pub fn request_metadata_update(&self) {
        self.state().stale = true;
    }

    /// Whether the cache is stale or older than `metadata_max_age`.
    pub fn metadata_needs_refresh(&self) -> bool {
        let state = self.state();
        if state.stale {
            return true;
        }
        match state.metadata.updated_at {
            None => true,
            Some(at) => {
                self.inner.clock.now().saturating_duration_since(at)
                    >= self.inner.config.metadata_max_age
            }
        }
    }

    /// Asks a broker for the metadata of the registered topics. Concurrent calls share one
    /// request: a caller that waited for another's refresh returns its result.
    pub async fn refresh_metadata(&self) -> Result<Arc<ClusterMetadata>, Error> {
        let seen = self.state().refreshes;
        let _one_at_a_time = self.inner.refresh.lock().await;
        {
            let state = self.state();
            if state.refreshes != seen && !state.stale {
                return Ok(state.metadata.clone());
            }
        }
        let topics: Vec<String> = self.state().topics.iter().cloned().collect();
        let auto_create = self.inner.config.allow_auto_topic_creation;
        let response = self
            .call_any(|_| metadata_request(Some(&topics), auto_create))
            .await?;
        if let Some(e) = Error::from_code(response.error_code, None) {
            return Err(e);
        }
        let now = self.inner.clock.now();
        let mut state = self.state();
        let mut metadata = (*state.metadata).clone();
        metadata.apply(&response, false, now);
        state.metadata = Arc::new(metadata);
        state.stale = false;
        state.refreshes += 1;
        Ok(state.metadata.clone())
    }

    /// Metadata of every topic in the cluster (not cached beyond the topics registered).
    pub async fn fetch_all_metadata(&self) -> Result<ClusterMetadata, Error> {
        let response = self.call_any(|_| metadata_request(None, false)).await?;
        if let Some(e) = Error::from_code(response.error_code, None) {
            return Err(e);
        }
        let mut metadata = ClusterMetadata::default();
        metadata.apply(&response, true, self.inner.clock.now());
        Ok(metadata)
    }

    /// Metadata of `topics` only, never creating them (for describing).
    pub async fn fetch_metadata(&self, topics: &[String]) -> Result<ClusterMetadata, Error> {
        let response = self
            .call_any(|_| metadata_request(Some(topics), false))
            .await?;
        if let Some(e) = Error::from_code(response.error_code, None) {
            return Err(e);
        }
        let mut metadata = ClusterMetadata::default();
        metadata.apply(&response, false, self.inner.clock.now());
        Ok(metadata)
    }

    /// `host:port` of broker `node_id`, from the cache.
    pub fn broker_address(&self, node_id: i32) -> Option<String> {
        self.state()
            .metadata
            .brokers
            .get(&node_id)
            .map(|b| b.address())
    }

    // ---- connections ----

    fn slot(&self, addr: &str) -> Arc<Slot> {
        self.state()
            .slots
            .entry(addr.to_string())
            .or_default()
            .clone()
    }

    /// The connection to `addr`, dialling it if needed. Waits out the reconnect backoff of
    /// an address that failed recently.
    pub async fn connection(&self, addr: &str) -> Result<Arc<KafkaConnection>, Error> {
        self.connection_inner(addr, true).await
    }

    async fn connection_inner(
        &self,
        addr: &str,
        wait_backoff: bool,
    ) -> Result<Arc<KafkaConnection>, Error> {
        let slot = self.slot(addr);
        let mut s = slot.state.lock().await;
        if let Some(conn) = &s.conn {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            s.conn = None;
        }
        if let Some(at) = s.retry_at {
            let now = self.inner.clock.now();
            if at > now {
                if !wait_backoff {
                    return Err(Error::NoBrokerAvailable(format!("{addr} is backing off")));
                }
                self.inner
                    .clock
                    .sleep(at.saturating_duration_since(now))
                    .await;
            }
        }
        let config = &self.inner.config;
        let options = ClientOptions {
            client_id: config.client_id.clone(),
            request_timeout: config.request_timeout,
            ..ClientOptions::default()
        };
        let connect = KafkaConnection::connect(
            self.inner.connector.as_ref(),
            addr,
            self.inner.clock.clone(),
            self.inner.spawner.as_ref(),
            options,
        );
        let timeout = self.inner.clock.sleep(config.connect_timeout);
        let result = match select(Box::pin(connect), timeout).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => Err(ClientError::Timeout(config.connect_timeout)),
        };
        match result {
            Ok(conn) => {
                let conn = Arc::new(conn);
                s.conn = Some(conn.clone());
                s.failures = 0;
                s.retry_at = None;
                Ok(conn)
            }
            Err(e) => {
                let delay = config.reconnect().delay(s.failures, &mut self.state().rng);
                s.failures = s.failures.saturating_add(1);
                s.retry_at = self.inner.clock.now().checked_add(delay);
                tracing::debug!(%addr, error = %e, ?delay, "kafka client: connect failed");
                Err(Error::Transport(e))
            }
        }
    }

    /// Forgets `conn` after `error`: a timed-out or out-of-step connection is closed (its
    /// late responses could never be matched), a broken one is dropped.
    pub async fn connection_failed(&self, conn: &Arc<KafkaConnection>, error: &ClientError) {
        tracing::debug!(peer = %conn.peer(), %error, "kafka client: dropping connection");
        conn.close().await;
        let slot = self.state().slots.get(conn.peer()).cloned();
        if let Some(slot) = slot {
            let mut s = slot.state.lock().await;
            if s.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                s.conn = None;
            }
        }
    }

    /// Addresses to try for a request any broker can answer: live connections first, then
    /// known brokers, then the bootstrap list, rotated between calls.
    fn candidate_addresses(&self) -> Vec<String> {
        let mut state = self.state();
        let mut out: Vec<String> = Vec::new();
        let known: Vec<String> = state
            .metadata
            .brokers
            .values()
            .map(|b| b.address())
            .collect();
        let mut rest: Vec<String> = known;
        for addr in &self.inner.config.bootstrap_servers {
            if !rest.contains(addr) {
                rest.push(addr.clone());
            }
        }
        if !rest.is_empty() {
            let shift = state.cursor % rest.len();
            rest.rotate_left(shift);
        }
        state.cursor = state.cursor.wrapping_add(1);
        for (addr, slot) in &state.slots {
            let live = slot
                .state
                .try_lock()
                .is_some_and(|s| s.conn.as_ref().is_some_and(|c| !c.is_closed()));
            if live && rest.contains(addr) {
                out.push(addr.clone());
            }
        }
        for addr in rest {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// Sends a request to any broker that answers, trying candidates in turn.
    pub async fn call_any<R, F>(&self, build: F) -> Result<R::Response, Error>
    where
        R: Request + Into<RequestKind>,
        F: Fn(i16) -> R,
    {
        let candidates = self.candidate_addresses();
        let mut last = String::from("no broker address known");
        for addr in &candidates {
            let conn = match self.connection_inner(addr, false).await {
                Ok(conn) => conn,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match self.call_on(&conn, &build, None).await {
                Ok(response) => return Ok(response),
                Err(Error::Transport(e)) => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoBrokerAvailable(last))
    }

    /// Sends a request to broker `node_id` (its address from the cache).
    pub async fn call_node<R, F>(
        &self,
        node_id: i32,
        build: F,
        timeout: Option<Duration>,
    ) -> Result<R::Response, Error>
    where
        R: Request + Into<RequestKind>,
        F: Fn(i16) -> R,
    {
        let addr = self
            .broker_address(node_id)
            .ok_or(Error::NoBrokerAvailable(format!(
                "broker {node_id} unknown"
            )))?;
        self.call_addr(&addr, build, timeout).await
    }

    /// Sends a request to `addr`. `build` gets the negotiated version (request layouts
    /// differ between versions).
    pub async fn call_addr<R, F>(
        &self,
        addr: &str,
        build: F,
        timeout: Option<Duration>,
    ) -> Result<R::Response, Error>
    where
        R: Request + Into<RequestKind>,
        F: Fn(i16) -> R,
    {
        let conn = self.connection(addr).await?;
        self.call_on(&conn, &build, timeout).await
    }

    /// Sends a request on `conn`; a transport failure drops the connection.
    pub async fn call_on<R, F>(
        &self,
        conn: &Arc<KafkaConnection>,
        build: &F,
        timeout: Option<Duration>,
    ) -> Result<R::Response, Error>
    where
        R: Request + Into<RequestKind>,
        F: Fn(i16) -> R,
    {
        let api_key = ApiKey::try_from(R::KEY)
            .map_err(|()| Error::InvalidArgument(format!("unknown api key {}", R::KEY)))?;
        let version = conn.version_for(api_key)?;
        let timeout = timeout.unwrap_or(self.inner.config.request_timeout);
        match conn.call_with_timeout(build(version), timeout).await {
            Ok(response) => Ok(response),
            Err(e) => {
                if matches!(
                    e,
                    ClientError::Timeout(_)
                        | ClientError::Closed
                        | ClientError::Io(_)
                        | ClientError::Codec(_)
                ) {
                    self.connection_failed(conn, &e).await;
                    self.request_metadata_update();
                }
                Err(Error::Transport(e))
            }
        }
    }
}

/// A Metadata request for `topics` (`None`: all topics).
fn metadata_request(topics: Option<&[String]>, auto_create: bool) -> MetadataRequest {
    let topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
            })
            .collect()
    });
    MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(auto_create)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::client::testkit::{MiniCluster, StubNetwork, TestEnv};

    #[test]
    fn a_dead_bootstrap_server_is_skipped_and_connections_are_reused() {
        let mut env = TestEnv::new();
        let net = StubNetwork::new(&env);
        let _cluster = MiniCluster::start(&net, &env.clock, &[(2, "b2:9092")], &[("t", 2)]);
        let client = env.client(
            &net,
            ClientConfig {
                bootstrap_servers: vec!["dead:9092".into(), "b2:9092".into()],
                ..ClientConfig::default()
            },
        );
        client.register_topics(["t"]);
        assert!(client.metadata_needs_refresh());
        let md = env.run(client.refresh_metadata()).expect("metadata via b2");
        assert_eq!(md.leader("t", 1), Some(2));
        assert!(!client.metadata_needs_refresh());
        let connects = net.connects.load(Ordering::SeqCst);
        for _ in 0..3 {
            client.request_metadata_update();
            env.run(client.refresh_metadata()).expect("metadata");
        }
        assert_eq!(
            net.connects.load(Ordering::SeqCst),
            connects,
            "the live connection is reused, the dead server not redialled"
        );
        // Metadata ages out.
        let stale_at = env.now();
        env.run(env.clock.sleep(ClientConfig::default().metadata_max_age));
        assert!(client.metadata_needs_refresh());
        assert!(env.now() > stale_at);
    }

    #[test]
    fn no_reachable_broker_is_a_retriable_error() {
        let mut env = TestEnv::new();
        let net = StubNetwork::new(&env);
        let client = env.client(
            &net,
            ClientConfig {
                bootstrap_servers: vec!["dead:9092".into()],
                ..ClientConfig::default()
            },
        );
        let err = env
            .run(client.refresh_metadata())
            .expect_err("nothing to ask");
        assert!(matches!(err, Error::NoBrokerAvailable(_)), "{err}");
        assert!(err.is_retriable());
    }
}
