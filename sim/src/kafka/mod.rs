//! `kafka`: the real fjord broker and client under the simulator (the default workload).
//!
//! * Every server node runs the production broker ([`fjord::broker::start`]) on its
//!   [`NodeIo`]: the metadata Raft group (every server is a controller voter), the partition
//!   Raft groups, the group coordinator. Its Kafka listener is [`conn::ServerMux`], the
//!   simulated TCP of [`conn`], so client traffic suffers the world's faults.
//! * Clients are fjord's own client ([`fjord::client`]) over [`conn::SimConnector`]:
//!   - producers: idempotent, acks=all, keyed records with unique values to [`TOPIC`]
//!     (created through the Admin API at start; auto-creation would give it the same shape);
//!   - group members: consumers of [`GROUP`] that come and go (closing cleanly or just
//!     vanishing, so that the coordinator times them out), read, commit their positions
//!     and read back the group's committed offsets after every rebalance;
//!   - a reader: a consumer assigned every partition, reading forward.
//! * The history: writes (acked at partition+offset, failed, indeterminate), reads per
//!   reader session (a member's partition within one group generation, or the reader's
//!   partition within one consumer), offset commits and committed-offset reads, and every
//!   Raft group's leader per term as the brokers report it.
//! * Liveness after heal: a fresh producer's write is acknowledged. Final reads: a fresh
//!   consumer reads every partition from offset 0 up to its high watermark.
//!
//! Bugs (`--inject-bug`): `ack-before-quorum` ([`BrokerBugs::ack_before_quorum`]).

pub mod conn;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord::broker::{self, BrokerBugs, BrokerConfig, BrokerHandle, BrokerIo};
use fjord::client::partitioner::partition_for_key;
use fjord::client::{
    Admin, AssignorKind, Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Error,
    NewTopic, OffsetReset, ProduceError, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use fjord::controller::ClusterDefaults;
use fjord_replication::raft::Role;
use fjord_replication::{BoxFuture, Clock, IoWait, NodeId};
use futures::future::{select, Either};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bugs::Bugs;
use crate::faults::FaultClass;
use crate::history::{CommitOutcome, Offset, Partition, ReaderId, Value};
use crate::time;
use crate::workload::{ClientEnv, NodeIo, Recorder, Workload, WorkloadKind, WorldInfo};
use conn::{broker_host, ServerMux, SimConnector, KAFKA_PORT};

/// The registration of the kafka workload.
pub const KIND: WorkloadKind = WorkloadKind {
    name: "kafka",
    bugs: &[ACK_BEFORE_QUORUM],
    faults: &FaultClass::ALL,
    build,
};

/// acks=all answered once the leader appended the batch, before a quorum has it
/// ([`BrokerBugs::ack_before_quorum`]). The Raft-level bugs are the `raft` workload's to
/// prove.
pub const ACK_BEFORE_QUORUM: &str = "ack-before-quorum";

/// The topic clients write and read.
pub const TOPIC: &str = "events";
pub const PARTITIONS: i32 = 3;
/// The consumer group.
pub const GROUP: &str = "sim-group";
/// Producers, group members and readers during the fault phase.
const PRODUCERS: usize = 2;
const MEMBERS: usize = 2;
const READERS: usize = 1;
/// Sends one producer keeps in flight.
const PRODUCER_IN_FLIGHT: usize = 4;
/// How often brokers report their Raft leaderships.
const LEADER_REPORT_INTERVAL: Duration = Duration::from_millis(200);

fn build(info: &WorldInfo) -> Arc<dyn Workload> {
    let mut rng = ChaCha8Rng::seed_from_u64(info.seed ^ 0x006b_6166_6b61);
    let assignors = match rng.gen_range(0..3) {
        0 => vec![AssignorKind::Range],
        1 => vec![AssignorKind::CooperativeSticky],
        _ => vec![AssignorKind::Range, AssignorKind::CooperativeSticky],
    };
    Arc::new(Kafka {
        servers: info.servers.clone(),
        recorder: info.recorder.clone(),
        bugs: broker_bugs(&info.bugs),
        assignors,
    })
}

fn broker_bugs(bugs: &Bugs) -> BrokerBugs {
    BrokerBugs {
        ack_before_quorum: bugs.is_on(ACK_BEFORE_QUORUM),
        ..BrokerBugs::default()
    }
}

struct Kafka {
    servers: Vec<NodeId>,
    recorder: Recorder,
    bugs: BrokerBugs,
    /// The group's assignors (the same for every member of a world).
    assignors: Vec<AssignorKind>,
}

impl Kafka {
    fn replication_factor(&self) -> i16 {
        self.servers.len().min(3) as i16
    }
}

// ---- server nodes ----

async fn run_node(io: NodeIo, servers: Vec<NodeId>, recorder: Recorder, bugs: BrokerBugs) {
    let rf = servers.len().min(3) as i16;
    let voters: BTreeSet<NodeId> = servers.iter().copied().collect();
    let mut config = BrokerConfig::new(io.id, voters, io.seed);
    config.host = broker_host(io.id);
    config.kafka_port = KAFKA_PORT;
    config.rpc_addr = format!("{}:9093", broker_host(io.id));
    config.data_dir = "fjord".into();
    config.cluster_id = Some("sim".into());
    config.defaults = ClusterDefaults {
        num_partitions: PARTITIONS,
        default_replication_factor: rf,
        offsets_topic_num_partitions: 3,
        offsets_topic_replication_factor: rf,
        ..ClusterDefaults::default()
    };
    config.group = fjord::group::GroupConfig {
        session_timeout_min_ms: 500,
        initial_rebalance_delay_ms: 0,
        ..fjord::group::GroupConfig::default()
    };
    config.bugs = bugs;
    let mux = ServerMux::new(io.network.clone(), io.clock.clone(), io.spawner.clone());
    let sim_disk = io.sim_disk.clone();
    let io_wait: IoWait = Arc::new(move || Box::pin(sim_disk.settle()));
    let broker_io = BrokerIo {
        clock: io.clock.clone(),
        network: mux.broker_network(),
        disk: io.disk.clone(),
        spawner: io.spawner.clone(),
        io_wait: Some(io_wait),
        // Fsyncs in order on the broker's task: deterministic, and the device latency is
        // modelled by `io_wait`.
        disk_jobs: None,
    };
    let (handle, run) = match broker::start(broker_io, config) {
        Ok(started) => started,
        Err(e) => {
            tracing::info!(error = %e, "broker does not start: the process exits");
            return;
        }
    };
    io.spawner.spawn(
        "kafka-listener",
        Box::pin(mux.run(Arc::new(handle.clone()))),
    );
    io.spawner.spawn(
        "leader-reports",
        Box::pin(report_leaders(handle, io.clock.clone(), io.id, recorder)),
    );
    match run.await {
        Ok(()) => tracing::info!("broker stopped"),
        Err(e) => tracing::info!(error = %e, "broker failed: the process exits"),
    }
}

/// Records every Raft group this broker leads, once per term.
async fn report_leaders(
    handle: BrokerHandle,
    clock: Arc<dyn Clock>,
    node: NodeId,
    recorder: Recorder,
) {
    let mut reported: BTreeMap<u32, u64> = BTreeMap::new();
    loop {
        clock.sleep(LEADER_REPORT_INTERVAL).await;
        let Some(status) = handle.status().await else {
            return;
        };
        for (gid, st) in &status.groups {
            if st.role != Role::Leader {
                continue;
            }
            let group = (gid.topic << 16) | (gid.partition & 0xffff);
            if reported.get(&group) != Some(&st.term) {
                reported.insert(group, st.term);
                recorder.leader(node, group, st.term);
            }
        }
    }
}

// ---- clients ----

fn client_of(env: &ClientEnv, servers: &[NodeId]) -> Client {
    let connector =
        SimConnector::start(env.network.clone(), env.clock.clone(), env.spawner.clone());
    Client::new(
        connector,
        env.clock.clone(),
        env.spawner.clone(),
        ClientConfig {
            bootstrap_servers: servers
                .iter()
                .map(|n| format!("{}:{KAFKA_PORT}", broker_host(*n)))
                .collect(),
            client_id: format!("sim-client-{}", env.index),
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            metadata_max_age: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(500),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            allow_auto_topic_creation: true,
            seed: env.seed,
        },
    )
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(2),
        delivery_timeout: Duration::from_secs(15),
        metadata_wait_max: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

/// Creates [`TOPIC`] (or finds it created), retrying for a while.
async fn ensure_topic(client: &Client, rf: i16) {
    let admin = Admin::new(client);
    for attempt in 0..20u32 {
        match admin
            .create_topics(&[NewTopic::new(TOPIC, PARTITIONS, rf)])
            .await
        {
            Ok(results) => {
                let done = results.iter().all(|(_, r)| match r {
                    Ok(()) => true,
                    Err(Error::Broker { code, .. }) => {
                        *code == fjord::client::ResponseError::TopicAlreadyExists
                    }
                    Err(_) => false,
                });
                if done {
                    tracing::info!("topic {TOPIC} exists");
                    return;
                }
                tracing::debug!(?results, "create topic: retrying");
            }
            Err(e) => tracing::debug!(error = %e, "create topic: retrying"),
        }
        client.backoff(attempt).await;
    }
}

fn encode_value(v: Value) -> Bytes {
    Bytes::copy_from_slice(&v.to_be_bytes())
}

/// A record's value as the history knows it: anything but 8 bytes is no client's value.
fn decode_value(r: &ConsumerRecord) -> Value {
    r.value
        .as_ref()
        .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
        .map_or(u64::MAX, u64::from_be_bytes)
}

/// Writes value number `n` of client `env`; returns the future recording its outcome.
fn write(
    env: &ClientEnv,
    producer: &Producer,
    n: u64,
) -> impl std::future::Future<Output = Result<Offset, ProduceError>> + Send + 'static {
    let value: Value = ((env.index as u64 + 1) << 40) | n;
    let key = format!("key-{}", n % 13);
    let partition = partition_for_key(key.as_bytes(), PARTITIONS) as Partition;
    let op = env.recorder.invoke_write(env.id, partition, value);
    let delivery = producer.send(ProducerRecord::new(TOPIC, encode_value(value)).with_key(key));
    let recorder = env.recorder.clone();
    async move {
        match delivery.await {
            Ok(meta) if meta.offset >= 0 => {
                if meta.partition as Partition != partition {
                    tracing::warn!(
                        partition = meta.partition,
                        expected = partition,
                        "record acked in another partition"
                    );
                }
                recorder.written(op, meta.offset as Offset);
                Ok(meta.offset as Offset)
            }
            Ok(_) => {
                recorder.indeterminate(op, "acked as a duplicate: offset unknown");
                Err(ProduceError::Indeterminate {
                    reason: "duplicate".into(),
                })
            }
            Err(e) if e.is_indeterminate() => {
                recorder.indeterminate(op, e.to_string());
                Err(e)
            }
            Err(e) => {
                tracing::debug!(value, error = %e, "write failed");
                recorder.failed(op, e.to_string());
                Err(e)
            }
        }
    }
}

async fn producer_client(env: ClientEnv, servers: Vec<NodeId>, rf: i16) {
    let client = client_of(&env, &servers);
    if env.index == 0 {
        ensure_topic(&client, rf).await;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(env.seed);
    let mut n = 0u64;
    loop {
        let producer = match Producer::new(&client, producer_config()) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "producer: cannot start");
                env.clock.sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut in_flight = FuturesUnordered::new();
        let mut next_send = env.clock.now();
        loop {
            let now = env.clock.now();
            if in_flight.len() < PRODUCER_IN_FLIGHT && now >= next_send {
                n += 1;
                in_flight.push(write(&env, &producer, n));
                let gap = Duration::from_micros(rng.gen_range(0..30_000));
                next_send = now.checked_add(gap).unwrap_or(now);
                continue;
            }
            let wait = if in_flight.len() < PRODUCER_IN_FLIGHT {
                env.clock.sleep(next_send.saturating_duration_since(now))
            } else {
                Box::pin(futures::future::pending())
            };
            if in_flight.is_empty() {
                wait.await;
                continue;
            }
            if let Either::Left((Some(Err(ProduceError::Fatal(e))), _)) =
                select(in_flight.next(), wait).await
            {
                tracing::info!(error = %e, "producer failed: starting a new one");
                break;
            }
        }
        // The unfinished sends stay pending (indeterminate) in the history.
        drop(in_flight);
        drop(producer);
    }
}

/// Reader sessions: a new id whenever a consumer may legitimately go back.
struct Sessions {
    base: u64,
    next: u64,
    current: BTreeMap<i32, ReaderId>,
}

impl Sessions {
    fn new(index: usize) -> Sessions {
        Sessions {
            base: (index as u64 + 1) << 32,
            next: 0,
            current: BTreeMap::new(),
        }
    }

    fn reset(&mut self) {
        self.current.clear();
    }

    fn of(&mut self, partition: i32) -> ReaderId {
        let (base, next) = (self.base, &mut self.next);
        *self.current.entry(partition).or_insert_with(|| {
            *next += 1;
            ReaderId(base | *next)
        })
    }
}

/// Records one poll's records, per partition, as reads of their sessions.
fn record_reads(env: &ClientEnv, sessions: &mut Sessions, records: &[ConsumerRecord]) {
    let mut by_partition: BTreeMap<i32, Vec<(Offset, Value)>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(r.partition)
            .or_default()
            .push((r.offset as Offset, decode_value(r)));
    }
    for (partition, recs) in by_partition {
        let reader = sessions.of(partition);
        let from = recs.first().map_or(0, |r| r.0);
        let op = env
            .recorder
            .invoke_read(env.id, partition as Partition, reader, from);
        env.recorder.read(op, recs);
    }
}

fn topic_partitions() -> Vec<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(TOPIC, p))
        .collect()
}

async fn member_client(env: ClientEnv, servers: Vec<NodeId>, assignors: Vec<AssignorKind>) {
    let client = client_of(&env, &servers);
    let mut rng = ChaCha8Rng::seed_from_u64(env.seed);
    let mut sessions = Sessions::new(env.index);
    loop {
        let config = ConsumerConfig {
            group_id: Some(GROUP.to_string()),
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            session_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(500),
            max_poll_interval: Duration::from_secs(10),
            assignors: assignors.clone(),
            fetch_max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        };
        let mut consumer = match Consumer::new(&client, config) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "member: cannot start");
                return;
            }
        };
        if let Err(e) = consumer.subscribe([TOPIC]) {
            tracing::info!(error = %e, "member: cannot subscribe");
            return;
        }
        sessions.reset();
        let life = Duration::from_millis(rng.gen_range(2_000..15_000));
        let commit_every = Duration::from_millis(rng.gen_range(300..2_000));
        let started = env.clock.now();
        let mut last_commit = started;
        let mut generation: Option<i32> = None;
        while env.clock.now().saturating_duration_since(started) < life {
            let polled = consumer.poll(Duration::from_millis(200)).await;
            let now_generation = consumer.membership().map(|m| m.0).filter(|g| *g >= 0);
            if now_generation != generation {
                generation = now_generation;
                sessions.reset();
                if generation.is_some() {
                    read_committed(&env, &mut consumer).await;
                }
            }
            match polled {
                Ok(records) => record_reads(&env, &mut sessions, &records),
                Err(e) => {
                    tracing::debug!(error = %e, "member: poll failed");
                    sessions.reset();
                    env.clock.sleep(Duration::from_millis(100)).await;
                }
            }
            let now = env.clock.now();
            if now.saturating_duration_since(last_commit) >= commit_every {
                last_commit = now;
                commit(&env, &mut consumer).await;
            }
        }
        if rng.gen_bool(0.6) {
            commit(&env, &mut consumer).await;
            if let Err(e) = consumer.close().await {
                tracing::debug!(error = %e, "member: close failed");
            }
        } else {
            // Vanishes: the coordinator notices after the session timeout.
            drop(consumer);
        }
        env.clock
            .sleep(Duration::from_millis(rng.gen_range(0..3_000)))
            .await;
    }
}

/// Commits the member's positions, recording each partition's commit.
async fn commit(env: &ClientEnv, consumer: &mut Consumer) {
    let positions: BTreeMap<TopicPartition, i64> = consumer
        .assignment()
        .into_iter()
        .filter_map(|tp| consumer.position(&tp).map(|p| (tp, p)))
        .collect();
    if positions.is_empty() {
        return;
    }
    let ops: Vec<usize> = positions
        .iter()
        .map(|(tp, offset)| {
            env.recorder
                .invoke_commit(env.id, GROUP, tp.partition as Partition, *offset as Offset)
        })
        .collect();
    let outcome = match consumer.commit_offsets(positions).await {
        Ok(()) => CommitOutcome::Acked,
        // Commits are retried inside the client: an earlier attempt may have been applied.
        Err(e) => {
            tracing::debug!(error = %e, "member: commit failed");
            CommitOutcome::Indeterminate
        }
    };
    for op in ops {
        env.recorder.commit_done(op, outcome);
    }
}

/// Reads the group's committed offsets of the member's partitions back.
async fn read_committed(env: &ClientEnv, consumer: &mut Consumer) {
    let partitions: Vec<TopicPartition> = consumer.assignment().into_iter().collect();
    if partitions.is_empty() {
        return;
    }
    let invoked = time::now();
    match consumer.committed(&partitions).await {
        Ok(committed) => {
            for (tp, offset) in committed {
                env.recorder.committed_read(
                    env.id,
                    GROUP,
                    tp.partition as Partition,
                    invoked,
                    offset.map(|o| o as Offset),
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "member: reading committed offsets failed"),
    }
}

async fn reader_client(env: ClientEnv, servers: Vec<NodeId>) {
    let client = client_of(&env, &servers);
    let mut sessions = Sessions::new(env.index);
    loop {
        let mut consumer = match Consumer::new(
            &client,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                fetch_max_wait: Duration::from_millis(200),
                ..ConsumerConfig::default()
            },
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "reader: cannot start");
                return;
            }
        };
        if let Err(e) = consumer.assign(topic_partitions()) {
            tracing::info!(error = %e, "reader: cannot assign");
            return;
        }
        sessions.reset();
        let mut failures = 0;
        while failures < 10 {
            match consumer.poll(Duration::from_millis(300)).await {
                Ok(records) => {
                    failures = 0;
                    record_reads(&env, &mut sessions, &records);
                }
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, "reader: poll failed");
                    env.clock.sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Workload for Kafka {
    fn node(&self, io: NodeIo) -> BoxFuture<'static, ()> {
        Box::pin(run_node(
            io,
            self.servers.clone(),
            self.recorder.clone(),
            self.bugs,
        ))
    }

    fn clients(&self) -> usize {
        PRODUCERS + MEMBERS + READERS
    }

    fn client(&self, env: ClientEnv) -> BoxFuture<'static, ()> {
        let servers = self.servers.clone();
        if env.index < PRODUCERS {
            Box::pin(producer_client(env, servers, self.replication_factor()))
        } else if env.index < PRODUCERS + MEMBERS {
            Box::pin(member_client(env, servers, self.assignors.clone()))
        } else {
            Box::pin(reader_client(env, servers))
        }
    }

    fn liveness(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        let servers = self.servers.clone();
        let rf = self.replication_factor();
        Box::pin(async move {
            let client = client_of(&env, &servers);
            ensure_topic(&client, rf).await;
            let mut n = 0;
            loop {
                let producer = Producer::new(&client, producer_config())
                    .map_err(|e| format!("liveness producer: {e}"))?;
                loop {
                    n += 1;
                    match write(&env, &producer, n).await {
                        Ok(_) => return Ok(()),
                        Err(ProduceError::Fatal(_)) => break,
                        Err(_) => {}
                    }
                }
            }
        })
    }

    fn final_reads(&self, env: ClientEnv) -> BoxFuture<'static, Result<(), String>> {
        let servers = self.servers.clone();
        Box::pin(async move {
            let client = client_of(&env, &servers);
            let mut consumer = Consumer::new(
                &client,
                ConsumerConfig {
                    auto_offset_reset: OffsetReset::Earliest,
                    fetch_max_wait: Duration::from_millis(100),
                    ..ConsumerConfig::default()
                },
            )
            .map_err(|e| format!("final reader: {e}"))?;
            consumer
                .assign(topic_partitions())
                .map_err(|e| format!("final reader: {e}"))?;
            let mut records: BTreeMap<i32, Vec<(Offset, Value)>> = BTreeMap::new();
            loop {
                match consumer.poll(Duration::from_millis(300)).await {
                    Ok(got) => {
                        for r in &got {
                            records
                                .entry(r.partition)
                                .or_default()
                                .push((r.offset as Offset, decode_value(r)));
                        }
                        if !got.is_empty() {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "final reader: poll failed");
                        continue;
                    }
                }
                let caught_up = topic_partitions().iter().all(|tp| {
                    match (consumer.position(tp), consumer.high_watermark(tp)) {
                        (Some(p), Some(hw)) => p >= hw,
                        _ => false,
                    }
                });
                if caught_up {
                    break;
                }
            }
            for p in 0..PARTITIONS {
                env.recorder
                    .final_read(p as Partition, records.remove(&p).unwrap_or_default());
            }
            Ok(())
        })
    }
}
