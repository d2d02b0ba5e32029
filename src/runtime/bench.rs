//! `fjord bench`: produce and consume throughput and latency of 100-byte records through
//! fjord's own client against brokers started in this process (loopback TCP, `FileDisk` in a
//! temporary directory), printed beside the raw limit of the same disk measured in the same
//! run (a write + fdatasync loop, as `benches/replication.rs` does).
//!
//! Scenarios: (a) one broker, acks=1, no idempotence; (b) three brokers, acks=all with the
//! idempotent producer (Kafka's default). Each measures the peak produce rate (as many
//! records as the producer's buffer admits), then consumes them back from the start; (b)
//! also runs at half of its measured peak rate with a consumer tailing the log, for the
//! produce (send → acknowledgement) and end-to-end (send → consumed) latencies.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use fjord_log::RecordSpec;
use fjord_replication::{Clock, Instant, NodeId, Spawner};
use futures::FutureExt;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::server::{start_node, NodeSpec, RunningNode};
use super::{TcpConnector, TokioClock, TokioSpawner};
use crate::broker::metrics::{Histogram, LATENCY_BUCKET_BOUNDS_US};
use crate::client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use crate::client::{
    Acks, Client, ClientConfig, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use crate::controller::ClusterDefaults;

/// Bytes of every record's value (the "100-byte records").
pub const RECORD_SIZE_BYTES: usize = 100;
/// Records awaited by the producing loop at most (beyond them it waits for the oldest).
const WINDOW_MAX_RECORDS: usize = 1 << 19;
/// One record in this many has its latency measured (by a task of its own).
const LATENCY_SAMPLE_EVERY: u64 = 64;
/// How long a consumer may go without a record before the run is declared stuck.
const CONSUME_STALL_MAX: Duration = Duration::from_secs(30);
/// Records produced before measuring (connections, producer id, first segments).
const WARM_UP_RECORDS: u64 = 10_000;
/// The brokers' preferred-leader balance interval.
const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the set-up waits for every partition to be led by its preferred replica.
const LEADER_BALANCE_WAIT_MAX: Duration = Duration::from_secs(20);
/// Kafka's API key of Produce.
const PRODUCE_API_KEY: i16 = 0;
/// Kafka error codes the topic set-up tolerates.
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// What `fjord bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Records produced (and consumed) by each peak run.
    pub records: u64,
    /// Partitions of the benchmark topic.
    pub partitions: i32,
    /// The producer's `batch.size`.
    pub batch_size_bytes: usize,
    /// The producer's `linger.ms`.
    pub linger: Duration,
    /// Duration of the half-of-peak run.
    pub half_rate_duration: Duration,
    /// Extra rate-limited runs after the half-of-peak one, at these fractions of the peak
    /// (the latency curve around the target's load; the target itself is at 0.5).
    pub extra_load_fractions: Vec<f64>,
    /// Duration of each raw-disk loop.
    pub raw_duration: Duration,
    /// Where the brokers' data goes (a fresh temporary directory inside it).
    pub dir: Option<PathBuf>,
    pub single: bool,
    pub cluster: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            records: 2_000_000,
            partitions: 4,
            batch_size_bytes: 256 * 1024,
            linger: Duration::from_millis(1),
            half_rate_duration: Duration::from_secs(10),
            extra_load_fractions: Vec::new(),
            raw_duration: Duration::from_secs(3),
            dir: None,
            single: true,
            cluster: true,
        }
    }
}

/// Measured figures of one run.
#[derive(Debug, Default)]
pub struct Figures {
    pub records: u64,
    pub bytes: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Sorted latencies in nanoseconds (samples).
    pub latencies: Vec<u64>,
    /// Rate-limited runs: how far the generator fell behind its schedule at worst (a
    /// record sent late counts its latency from when it was due).
    pub lag_max: Duration,
}

impl Figures {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }

    /// The `p`-quantile latency in milliseconds (`None` without samples).
    pub fn latency_ms(&self, p: f64) -> Option<f64> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let i = ((n as f64 * p) as usize).min(n - 1);
        Some(self.latencies[i] as f64 / 1e6)
    }

    fn latency_text(&self) -> String {
        match (self.latency_ms(0.5), self.latency_ms(0.99)) {
            (Some(p50), Some(p99)) => format!("p50 {p50:>8.2} ms  p99 {p99:>8.2} ms"),
            _ => String::new(),
        }
    }
}

fn print_row(name: &str, f: &Figures) {
    let failures = if f.failures > 0 {
        format!("  ({} failed)", f.failures)
    } else {
        String::new()
    };
    println!(
        "  {name:<44} {:>11.0} rec/s {:>8.1} MB/s  {}{failures}",
        f.records_per_s(),
        f.mb_per_s(),
        f.latency_text()
    );
}

/// What the brokers say about themselves: the latency of Produce requests (decoded request
/// handed to the broker → response ready: the commit path without the client's batching and
/// queueing), summed over the nodes, and how many times a local Raft member became leader
/// (a leadership change stalls its partitions' produce for an election).
#[derive(Default)]
struct BrokerSnapshot {
    produce: Histogram,
    leaderships_gained: u64,
}

impl BrokerSnapshot {
    async fn take(nodes: &[RunningNode]) -> BrokerSnapshot {
        let mut snapshot = BrokerSnapshot::default();
        for n in nodes {
            let Some(m) = n.broker.metrics().await else {
                continue;
            };
            snapshot.leaderships_gained += m.node.raft.leaderships_gained;
            if let Some(api) = m.requests.apis.get(&PRODUCE_API_KEY) {
                snapshot.produce.merge(&api.latency);
            }
        }
        snapshot
    }

    /// Prints what changed since `before`: Produce latency quantiles (bucket upper bounds)
    /// and leadership changes.
    async fn print_since(self, nodes: &[RunningNode]) {
        let now = BrokerSnapshot::take(nodes).await;
        let h = now.produce.since(&self.produce);
        let text = |q: f64| match h.quantile_bound_us(q) {
            None => "-".to_string(),
            Some(None) => format!(
                "> {:.0} ms",
                LATENCY_BUCKET_BOUNDS_US[LATENCY_BUCKET_BOUNDS_US.len() - 1] as f64 / 1e3
            ),
            Some(Some(us)) => format!("≤ {} ms", us as f64 / 1e3),
        };
        println!(
            "    in the brokers (request in → response ready, {} requests)   p50 {}  p99 {}  leaders elected during the run: {}",
            h.count(),
            text(0.5),
            text(0.99),
            now.leaderships_gained
                .saturating_sub(self.leaderships_gained)
        );
    }
}

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub peak: Figures,
    pub consume: Figures,
    /// The half-of-peak run: produce latencies, and end-to-end latencies of a tailing
    /// consumer.
    pub half: Option<(Figures, Figures)>,
}

/// Everything `fjord bench` measured.
#[derive(Debug, Default)]
pub struct BenchReport {
    pub raw_per_batch: Figures,
    pub raw_per_mib: Figures,
    pub single: Option<ScenarioReport>,
    pub cluster: Option<ScenarioReport>,
}

/// Runs the benchmark, printing its figures as they come.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.records > 0, "--records must be positive");
    anyhow::ensure!(opts.partitions > 0, "--partitions must be positive");
    let base = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::Builder::new()
        .prefix("fjord-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("temporary directory in {}", base.display()))?;
    let (batch, per_batch) = template_batch(opts.batch_size_bytes);
    println!(
        "fjord bench: {RECORD_SIZE_BYTES}-byte records, {} partitions, batch.size {} KiB, linger {} ms, FileDisk in {}",
        opts.partitions,
        opts.batch_size_bytes / 1024,
        opts.linger.as_millis(),
        dir.path().display()
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        // Other processes on the machine skew every figure: say how busy it was.
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "load average {} on {} CPUs",
            load.join(" "),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let raw_batch = raw_limit(&raw_dir, &batch, per_batch, 1, opts.raw_duration)?;
    let raw_mib = raw_limit(
        &raw_dir,
        &batch,
        per_batch,
        (1 << 20) / batch.len().max(1),
        opts.raw_duration,
    )?;
    println!("raw disk (write + fdatasync loop, latency = one write + fdatasync):");
    print_row(
        &format!("fdatasync every {} B batch", batch.len()),
        &raw_batch,
    );
    print_row("fdatasync every 1 MiB", &raw_mib);
    let mut report = BenchReport {
        raw_per_batch: raw_batch,
        raw_per_mib: raw_mib,
        ..BenchReport::default()
    };
    if opts.single {
        println!("single broker, acks=1 (no idempotence):");
        let nodes = start_cluster(1, &dir.path().join("single")).await?;
        let config = ProducerConfig {
            acks: Acks::Leader,
            idempotence: false,
            ..producer_config(opts)
        };
        let result = scenario(&nodes, opts, config, false).await;
        stop(nodes).await;
        report.single = Some(result?);
    }
    if opts.cluster {
        println!("3 brokers, acks=all (idempotent producer), replication factor 3:");
        let nodes = start_cluster(3, &dir.path().join("cluster")).await?;
        let result = scenario(&nodes, opts, producer_config(opts), true).await;
        stop(nodes).await;
        report.cluster = Some(result?);
    }
    Ok(report)
}

fn producer_config(opts: &BenchOptions) -> ProducerConfig {
    ProducerConfig {
        linger: opts.linger,
        batch_size_bytes: opts.batch_size_bytes,
        max_request_size_bytes: (4 * opts.batch_size_bytes).clamp(1 << 20, 8 << 20),
        buffer_memory_bytes: 256 * 1024 * 1024,
        ..ProducerConfig::default()
    }
}

async fn stop(nodes: Vec<RunningNode>) {
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

/// Peak produce, consume from the start, and (if `half_rate`) the half-of-peak run.
async fn scenario(
    nodes: &[RunningNode],
    opts: &BenchOptions,
    config: ProducerConfig,
    half_rate: bool,
) -> anyhow::Result<ScenarioReport> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let client = client_for(nodes, &clock);
    let topic = "bench";
    let replication = i16::try_from(nodes.len()).unwrap_or(3);
    create_topic(&client, topic, opts.partitions, replication).await?;
    let producer = Producer::new(&client, config)?;
    // Warm-up: connections, producer id, first segment files.
    produce(&producer, &clock, topic, WARM_UP_RECORDS, None).await;
    let before = BrokerSnapshot::take(nodes).await;
    let peak = produce(&producer, &clock, topic, opts.records, None).await;
    print_row("produce, peak (latency: sampled, queueing incl.)", &peak);
    before.print_since(nodes).await;
    let consumed = consume_all(
        &client,
        &clock,
        topic,
        opts.partitions,
        WARM_UP_RECORDS + peak.records,
    )
    .await?;
    print_row("consume from the start", &consumed);
    let mut report = ScenarioReport {
        peak,
        consume: consumed,
        half: None,
    };
    if half_rate {
        let rate = report.peak.records_per_s() / 2.0;
        let records = (rate * opts.half_rate_duration.as_secs_f64()) as u64;
        let (tail, stop_tail) = start_tail(&client, &clock, topic, opts.partitions).await?;
        let before = BrokerSnapshot::take(nodes).await;
        let half = produce(&producer, &clock, topic, records, Some(rate)).await;
        print_row(&format!("produce at half of peak ({rate:.0} rec/s)"), &half);
        println!(
            "    latency from each record's scheduled send time (open loop); the generator was at most {:.2} ms behind schedule",
            half.lag_max.as_secs_f64() * 1e3
        );
        before.print_since(nodes).await;
        // Let the tail reach the end, then stop it.
        let deadline = clock.now().checked_add(Duration::from_secs(10));
        while tail.records() < half.records && deadline.is_some_and(|d| clock.now() < d) {
            clock.sleep(Duration::from_millis(10)).await;
        }
        stop_tail.store(true, Ordering::Relaxed);
        let e2e = tail.figures(half.elapsed);
        print_row("  end to end (send → consumed) at half of peak", &e2e);
        report.half = Some((half, e2e));
        for fraction in &opts.extra_load_fractions {
            let rate = report.peak.records_per_s() * fraction;
            let records = (rate * opts.half_rate_duration.as_secs_f64()) as u64;
            let before = BrokerSnapshot::take(nodes).await;
            let run = produce(&producer, &clock, topic, records, Some(rate)).await;
            print_row(
                &format!(
                    "produce at {:.0}% of peak ({rate:.0} rec/s)",
                    fraction * 100.0
                ),
                &run,
            );
            println!(
                "    (no tailing consumer; generator at most {:.2} ms behind schedule)",
                run.lag_max.as_secs_f64() * 1e3
            );
            before.print_since(nodes).await;
        }
    }
    producer.close().await;
    Ok(report)
}

/// A batch of 100-byte records of at most `size` bytes (at least one record), and its
/// record count.
fn template_batch(size: usize) -> (Bytes, u64) {
    let spec = RecordSpec {
        key: None,
        value: Some(Bytes::from(vec![b'x'; RECORD_SIZE_BYTES])),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
    };
    let build = |n: usize| {
        fjord_log::build_batch(&vec![spec.clone(); n], &Default::default())
            .expect("a batch of small records builds")
    };
    let (one, two) = (build(1).len(), build(2).len());
    let per_record = two - one;
    let mut count = (size.saturating_sub(one - per_record) / per_record).max(1);
    let mut batch = build(count);
    // Varints grow with the offset and timestamp deltas: trim until it fits.
    while batch.len() > size && count > 1 {
        count -= count / 64 + 1;
        batch = build(count);
    }
    (batch, count as u64)
}

/// The disk's limit: append `per_sync` copies of `batch`, fdatasync, repeat.
fn raw_limit(
    dir: &Path,
    batch: &Bytes,
    records_per_batch: u64,
    per_sync: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let path = dir.join(format!("raw-{per_sync}"));
    let mut f = std::fs::File::create(&path)?;
    let clock = TokioClock::new();
    let start = clock.now();
    let mut batches = 0u64;
    let mut latencies = Vec::new();
    while clock.now().saturating_duration_since(start) < duration {
        let t = clock.now();
        for _ in 0..per_sync.max(1) {
            f.write_all(batch)?;
        }
        f.sync_data()?;
        latencies.push(elapsed_nanos(&clock, t));
        batches += per_sync.max(1) as u64;
    }
    latencies.sort_unstable();
    let elapsed = clock.now().saturating_duration_since(start);
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(Figures {
        records: batches * records_per_batch,
        bytes: batches * batch.len() as u64,
        failures: 0,
        elapsed,
        latencies,
        lag_max: Duration::ZERO,
    })
}

fn elapsed_nanos(clock: &dyn Clock, since: Instant) -> u64 {
    u64::try_from(clock.now().saturating_duration_since(since).as_nanos()).unwrap_or(u64::MAX)
}

/// Starts `n` brokers (all controller voters) on loopback with data under `dir`.
async fn start_cluster(n: u32, dir: &Path) -> anyhow::Result<Vec<RunningNode>> {
    let mut voters = BTreeMap::new();
    for id in 1..=n {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        voters.insert(NodeId(id), probe.local_addr()?);
    }
    let replication = i16::try_from(n.min(3)).unwrap_or(3);
    let defaults = ClusterDefaults {
        default_replication_factor: replication,
        offsets_topic_replication_factor: replication,
        offsets_topic_num_partitions: 1,
        ..ClusterDefaults::default()
    };
    let mut nodes = Vec::new();
    for id in 1..=n {
        let spec = NodeSpec {
            cluster_id: Some("fjord-bench".into()),
            defaults: defaults.clone(),
            auto_create_topics: false,
            // Leaders move to their preferred replicas before the measurements start (see
            // `create_topic`), not 30 s after start in the middle of a run.
            leader_balance_interval: LEADER_BALANCE_INTERVAL,
            seed: u64::from(id),
            ..NodeSpec::local(NodeId(id), dir.join(format!("broker-{id}")), voters.clone())
        };
        nodes.push(start_node(spec).await?);
    }
    Ok(nodes)
}

fn client_for(nodes: &[RunningNode], clock: &Arc<dyn Clock>) -> Client {
    let spawner: Arc<dyn Spawner> = Arc::new(TokioSpawner::current());
    let config = ClientConfig {
        bootstrap_servers: nodes
            .iter()
            .map(|n| n.kafka.local_addr().to_string())
            .collect(),
        client_id: "fjord-bench".into(),
        seed: 7,
        ..ClientConfig::default()
    };
    Client::new(
        Arc::new(TcpConnector::default()),
        Arc::clone(clock),
        spawner,
        config,
    )
}

/// Creates the topic (retrying while the cluster elects its controller) and waits until
/// every partition has a leader.
async fn create_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
    replication: i16,
) -> anyhow::Result<()> {
    let clock = client.clock().clone();
    let start = clock.now();
    let give_up = Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            clock.now().saturating_duration_since(start) < give_up,
            "the cluster did not create topic {topic} within {give_up:?}"
        );
        let result = client
            .call_any(|_| {
                CreateTopicsRequest::default()
                    .with_timeout_ms(10_000)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_num_partitions(partitions)
                        .with_replication_factor(replication)])
            })
            .await;
        let code = match &result {
            Ok(r) => r.topics.first().map_or(-1, |t| t.error_code),
            Err(_) => -1,
        };
        if code == 0 || code == TOPIC_ALREADY_EXISTS {
            break;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    loop {
        anyhow::ensure!(
            clock.now().saturating_duration_since(start) < give_up,
            "topic {topic} has partitions without a leader after {give_up:?}"
        );
        if let Ok(md) = client.fetch_metadata(&[topic.to_string()]).await {
            let led = md
                .topic(topic)
                .map_or(0, |t| t.available_partitions().len());
            if led == partitions as usize {
                break;
            }
        }
        clock.sleep(Duration::from_millis(50)).await;
    }
    // A leadership change stalls its partition for an election: let the brokers' balance
    // put every leader on its preferred replica now rather than during a run.
    let balanced_by = clock.now().checked_add(LEADER_BALANCE_WAIT_MAX);
    loop {
        if let Ok(md) = client.fetch_metadata(&[topic.to_string()]).await {
            let preferred = md.topic(topic).is_some_and(|t| {
                t.partitions.len() == partitions as usize
                    && t.partitions
                        .values()
                        .all(|p| p.leader.is_some() && p.leader == p.replicas.first().copied())
            });
            if preferred {
                return Ok(());
            }
        }
        if balanced_by.is_none_or(|at| clock.now() >= at) {
            println!(
                "  (not every partition is led by its preferred replica yet: measuring anyway)"
            );
            return Ok(());
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
}

/// Values carved from one buffer of this size (one allocation per many records).
const VALUE_ARENA_BYTES: usize = 1 << 16;

/// A record whose value starts with the send time (for end-to-end latency), its value cut
/// from `arena`.
fn record(topic: &str, template: &[u8], sent: Instant, arena: &mut BytesMut) -> ProducerRecord {
    if arena.capacity() < template.len() {
        *arena = BytesMut::with_capacity(VALUE_ARENA_BYTES.max(template.len()));
    }
    arena.put_u64(sent.as_nanos());
    arena.extend_from_slice(&template[8..]);
    ProducerRecord::new(topic, arena.split().freeze())
}

/// Produces `records` records, as fast as the producer takes them or at `rate` records/s.
async fn produce(
    producer: &Producer,
    clock: &Arc<dyn Clock>,
    topic: &str,
    records: u64,
    rate: Option<f64>,
) -> Figures {
    let template = vec![b'x'; RECORD_SIZE_BYTES];
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let mut sample_tasks = Vec::new();
    let mut window: VecDeque<DeliveryFuture> = VecDeque::new();
    let start = clock.now();
    let mut sent = 0u64;
    let mut lag_max = Duration::ZERO;
    let mut arena = BytesMut::new();
    while sent < records {
        let due = match rate {
            Some(r) => {
                let secs = clock.now().saturating_duration_since(start).as_secs_f64();
                ((secs * r) as u64 + 1).min(records)
            }
            None => records,
        };
        while sent < due && window.len() < WINDOW_MAX_RECORDS {
            let now = clock.now();
            // Open loop: a record's latency runs from when the schedule says it is due, so
            // a generator that falls behind (CPU starvation, a full window) shows up in the
            // figures instead of hiding its backlog (coordinated omission). At peak there
            // is no schedule: from the send itself.
            let t = match rate {
                Some(r) => {
                    let due_at = start
                        .checked_add(Duration::from_secs_f64(sent as f64 / r))
                        .unwrap_or(now)
                        .min(now);
                    lag_max = lag_max.max(now.saturating_duration_since(due_at));
                    due_at
                }
                None => now,
            };
            let delivery = producer.send(record(topic, &template, t, &mut arena));
            if sent % LATENCY_SAMPLE_EVERY == 0 {
                let (clock, samples, failures) = (clock.clone(), samples.clone(), failures.clone());
                sample_tasks.push(tokio::spawn(async move {
                    match delivery.await {
                        Ok(_) => samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(elapsed_nanos(clock.as_ref(), t)),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            } else {
                window.push_back(delivery);
            }
            sent += 1;
        }
        // Collect what completed without waiting.
        while let Some(front) = window.front_mut() {
            match front.now_or_never() {
                Some(result) => {
                    if result.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    window.pop_front();
                }
                None => break,
            }
        }
        if window.len() >= WINDOW_MAX_RECORDS {
            if let Some(front) = window.pop_front() {
                if front.await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if rate.is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for delivery in window {
        if delivery.await.is_err() {
            failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    for task in sample_tasks {
        let _ = task.await;
    }
    let elapsed = clock.now().saturating_duration_since(start);
    let mut latencies =
        std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    latencies.sort_unstable();
    let failures = failures.load(Ordering::Relaxed);
    Figures {
        records: records - failures,
        bytes: (records - failures) * RECORD_SIZE_BYTES as u64,
        failures,
        elapsed,
        latencies,
        lag_max,
    }
}

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: false,
        fetch_max_wait: Duration::from_millis(100),
        max_partition_fetch_bytes: 4 * 1024 * 1024,
        max_poll_records: 1 << 16,
        ..ConsumerConfig::default()
    }
}

fn partitions_of(topic: &str, partitions: i32) -> Vec<TopicPartition> {
    (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect()
}

/// Reads `expected` records from the start of the topic.
async fn consume_all(
    client: &Client,
    clock: &Arc<dyn Clock>,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> anyhow::Result<Figures> {
    let mut consumer = Consumer::new(client, consumer_config())?;
    consumer.assign(partitions_of(topic, partitions))?;
    let start = clock.now();
    let mut last_progress = start;
    let mut records = 0u64;
    let mut bytes = 0u64;
    while records < expected {
        let batch = consumer.poll(Duration::from_millis(500)).await?;
        if batch.is_empty() {
            anyhow::ensure!(
                clock.now().saturating_duration_since(last_progress) < CONSUME_STALL_MAX,
                "consumer stalled at {records} of {expected} records"
            );
            continue;
        }
        last_progress = clock.now();
        records += batch.len() as u64;
        bytes += batch
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
            .sum::<u64>();
    }
    let elapsed = clock.now().saturating_duration_since(start);
    let _ = consumer.close().await;
    Ok(Figures {
        records,
        bytes,
        failures: 0,
        elapsed,
        latencies: Vec::new(),
        lag_max: Duration::ZERO,
    })
}

/// A consumer tailing the topic, recording end-to-end latencies.
struct Tail {
    records: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl Tail {
    fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn figures(&self, elapsed: Duration) -> Figures {
        let mut latencies = std::mem::take(
            &mut *self
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        latencies.sort_unstable();
        let records = self.records();
        Figures {
            records,
            bytes: records * RECORD_SIZE_BYTES as u64,
            failures: 0,
            elapsed,
            latencies,
            lag_max: Duration::ZERO,
        }
    }
}

/// Starts a consumer at the end of every partition; returns once its positions are known.
async fn start_tail(
    client: &Client,
    clock: &Arc<dyn Clock>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(Tail, Arc<AtomicBool>)> {
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::Latest,
            ..consumer_config()
        },
    )?;
    let tps = partitions_of(topic, partitions);
    consumer.assign(tps.clone())?;
    let start = clock.now();
    while !tps.iter().all(|tp| consumer.position(tp).is_some()) {
        anyhow::ensure!(
            clock.now().saturating_duration_since(start) < CONSUME_STALL_MAX,
            "the tailing consumer found no positions"
        );
        let _ = consumer.poll(Duration::from_millis(10)).await?;
    }
    let tail = Tail {
        records: Arc::default(),
        latencies: Arc::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (records, latencies, stop_flag, clock) = (
        tail.records.clone(),
        tail.latencies.clone(),
        stop.clone(),
        clock.clone(),
    );
    tokio::spawn(async move {
        while !stop_flag.load(Ordering::Relaxed) {
            let Ok(batch) = consumer.poll(Duration::from_millis(50)).await else {
                break;
            };
            let now = clock.now().as_nanos();
            let mut l = latencies.lock().unwrap_or_else(PoisonError::into_inner);
            for r in &batch {
                if let Some(sent) = r.value.as_ref().and_then(|v| v.get(..8)) {
                    let sent = u64::from_be_bytes(sent.try_into().unwrap_or([0; 8]));
                    l.push(now.saturating_sub(sent));
                }
            }
            records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        let _ = consumer.close().await;
    });
    Ok((tail, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_batches_hold_100_byte_records() {
        let (batch, count) = template_batch(64 * 1024);
        assert!(
            batch.len() <= 64 * 1024 && batch.len() > 32 * 1024,
            "{}",
            batch.len()
        );
        let records = fjord_log::batch::decode_records(&batch).expect("decodes");
        assert_eq!(records.len() as u64, count);
        assert!(records
            .iter()
            .all(|r| r.value.as_ref().map(|v| v.len()) == Some(RECORD_SIZE_BYTES)));
    }

    #[test]
    fn latency_quantiles_of_sorted_samples() {
        let f = Figures {
            records: 100,
            bytes: 10_000,
            failures: 0,
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(|i| i * 1_000_000).collect(),
            lag_max: Duration::ZERO,
        };
        assert_eq!(f.records_per_s(), 50.0);
        assert_eq!(f.latency_ms(0.5), Some(51.0));
        assert_eq!(f.latency_ms(0.99), Some(100.0));
        assert_eq!(Figures::default().latency_ms(0.5), None);
    }
}
