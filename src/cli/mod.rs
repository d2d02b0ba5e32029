//! The client commands of the `fjord` CLI — `topic`, `produce`, `consume` — on fjord's Kafka
//! client. Runtime-agnostic like the client: `main.rs` supplies a [`Client`] over TCP, the
//! lines of stdin and a stop signal; tests supply their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use fjord_log::Compression;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};

use crate::client::{
    Acks, Admin, AlterConfigOp, AssignorKind, Client, ConfigResource, Consumer, ConsumerConfig,
    ConsumerRecord, NewTopic, OffsetReset, ProduceError, Producer, ProducerConfig, ProducerRecord,
    RecordMetadata, TopicPartition,
};

/// Records `produce` keeps in flight before waiting for the oldest.
const PRODUCE_PENDING_MAX: usize = 10_000;
/// Bytes of values `produce` keeps in flight before waiting for the oldest (well below
/// the producer's buffer, so sends are never refused as `BufferFull`).
const PRODUCE_PENDING_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Longest single wait of `consume` (so that `--timeout-ms` and stops are noticed).
const CONSUME_POLL_MAX: Duration = Duration::from_millis(500);

/// Where the brokers are.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// Brokers to bootstrap from: host:port, comma-separated.
    #[arg(
        long = "bootstrap-server",
        default_value = "127.0.0.1:9092",
        value_delimiter = ',',
        global = true
    )]
    pub bootstrap_server: Vec<String>,
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

/// `fjord topic ...`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partitions (default: the broker's).
        #[arg(long)]
        partitions: Option<i32>,
        /// Replicas per partition (default: the broker's).
        #[arg(long)]
        replication_factor: Option<i16>,
        /// A topic config, key=value (repeatable).
        #[arg(long = "config", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// Succeed if the topic exists already.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topic names.
    List {
        /// Include internal topics (__consumer_offsets).
        #[arg(long)]
        internal: bool,
    },
    /// Show partitions, leaders, replicas, ISR and configs (all topics if none given).
    Describe { names: Vec<String> },
    /// Change topic configs.
    Alter {
        name: String,
        /// Set a config, key=value (repeatable).
        #[arg(long = "config", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// Reset a config to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `fjord produce TOPIC`: one record per line of stdin.
#[derive(Clone, Debug, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// The key of every record.
    #[arg(long, conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send everything to this partition (default: by key, murmur2 like Kafka).
    #[arg(long)]
    pub partition: Option<i32>,
    /// all (-1), 1 or 0.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Bytes per partition batch (larger batches: higher throughput).
    #[arg(long, default_value_t = 16 * 1024)]
    pub batch_size: usize,
    /// Turn the idempotent producer off (it is on by default with acks=all).
    #[arg(long)]
    pub no_idempotence: bool,
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "all" | "-1" => Ok(Acks::All),
        "1" => Ok(Acks::Leader),
        "0" => Ok(Acks::None),
        _ => Err(format!("acks must be all, 1 or 0, not {s:?}")),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        _ => Err(format!("unknown compression {s:?}")),
    }
}

/// `fjord consume TOPIC`: prints record values, one per line.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as a member of this group (committing offsets); without it, all partitions
    /// are read directly.
    #[arg(long)]
    pub group: Option<String>,
    /// Start at the earliest offset when there is no committed one (default: only new
    /// records).
    #[arg(long)]
    pub from_beginning: bool,
    /// Exit after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Exit when no record arrived for this long.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the key before the value (tab-separated).
    #[arg(long)]
    pub print_key: bool,
    /// Print partition and offset before each record.
    #[arg(long)]
    pub verbose: bool,
    /// Partition assignor for --group, in order of preference (repeatable): range,
    /// roundrobin, cooperative-sticky. Default: range, cooperative-sticky (as Kafka).
    #[arg(long = "assignor", value_parser = parse_assignor)]
    pub assignors: Vec<AssignorKind>,
}

fn parse_assignor(s: &str) -> Result<AssignorKind, String> {
    AssignorKind::from_name(s).ok_or_else(|| format!("unknown assignor {s:?}"))
}

fn lossy(bytes: &Option<bytes::Bytes>) -> String {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| "null".to_string())
}

/// Runs a `fjord topic` command, writing its report to `out`.
pub async fn topic<W: Write>(
    client: &Client,
    command: TopicCommand,
    out: &mut W,
) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
        } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions: partitions.unwrap_or(-1),
                replication_factor: replication_factor.unwrap_or(-1),
                configs: configs.into_iter().collect(),
            };
            for (name, result) in admin.create_topics(&[topic]).await? {
                match result {
                    Ok(()) => writeln!(out, "Created topic {name}.")?,
                    Err(crate::client::Error::Broker {
                        code: crate::client::ResponseError::TopicAlreadyExists,
                        ..
                    }) if if_not_exists => writeln!(out, "Topic {name} exists.")?,
                    Err(e) => return Err(e).context(format!("creating {name}")),
                }
            }
        }
        TopicCommand::List { internal } => {
            for name in admin.list_topics(internal).await? {
                writeln!(out, "{name}")?;
            }
        }
        TopicCommand::Describe { names } => {
            let topics = admin.describe_topics(&names).await?;
            let resources: Vec<ConfigResource> = topics
                .iter()
                .filter(|t| t.error.is_none())
                .map(|t| ConfigResource::Topic(t.name.clone()))
                .collect();
            let configs = admin.describe_configs(&resources).await?;
            for t in topics {
                if let Some(e) = t.error {
                    writeln!(out, "Topic: {}\tError: {e}", t.name)?;
                    continue;
                }
                let set: Vec<String> = configs
                    .get(&ConfigResource::Topic(t.name.clone()))
                    .and_then(|r| r.as_ref().ok())
                    .map(|entries| {
                        entries
                            .iter()
                            .filter(|e| e.source == 1)
                            .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                let rf = t
                    .partitions
                    .values()
                    .map(|p| p.replicas.len())
                    .max()
                    .unwrap_or(0);
                writeln!(
                    out,
                    "Topic: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}",
                    t.name,
                    t.partitions.len(),
                    rf,
                    set.join(",")
                )?;
                for p in t.partitions.values() {
                    let list =
                        |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                    writeln!(
                        out,
                        "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
                        t.name,
                        p.partition,
                        p.leader.map_or("none".to_string(), |l| l.to_string()),
                        list(&p.replicas),
                        list(&p.isr)
                    )?;
                }
            }
        }
        TopicCommand::Alter {
            name,
            configs,
            delete_configs,
        } => {
            let mut ops: Vec<AlterConfigOp> = configs
                .into_iter()
                .map(|(k, v)| AlterConfigOp::Set(k, v))
                .collect();
            ops.extend(delete_configs.into_iter().map(AlterConfigOp::Delete));
            anyhow::ensure!(
                !ops.is_empty(),
                "nothing to change: give --config or --delete-config"
            );
            admin
                .alter_configs(&ConfigResource::Topic(name.clone()), &ops)
                .await
                .with_context(|| format!("altering {name}"))?;
            writeln!(out, "Altered topic {name}.")?;
        }
        TopicCommand::Delete { names } => {
            let mut failed = Vec::new();
            for (name, result) in admin.delete_topics(&names).await? {
                match result {
                    Ok(()) => writeln!(out, "Deleted topic {name}.")?,
                    Err(e) => {
                        writeln!(out, "Topic {name} not deleted: {e}")?;
                        failed.push(name);
                    }
                }
            }
            anyhow::ensure!(failed.is_empty(), "not deleted: {}", failed.join(", "));
        }
    }
    Ok(())
}

/// What `produce` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProduceSummary {
    pub acknowledged: u64,
    pub failed: u64,
}

fn account<W: Write>(
    result: Result<RecordMetadata, ProduceError>,
    summary: &mut ProduceSummary,
    err: &mut W,
) -> io::Result<()> {
    match result {
        Ok(_) => summary.acknowledged += 1,
        Err(e) => {
            summary.failed += 1;
            writeln!(err, "error: {e}")?;
        }
    }
    Ok(())
}

/// Sends each line of `lines` as a record; failures are reported on `err`.
pub async fn produce<S, W>(
    client: &Client,
    args: &ProduceArgs,
    mut lines: S,
    err: &mut W,
) -> anyhow::Result<ProduceSummary>
where
    S: Stream<Item = io::Result<String>> + Unpin,
    W: Write,
{
    let config = ProducerConfig {
        acks: args.acks,
        idempotence: args.acks == Acks::All && !args.no_idempotence,
        compression: args.compression,
        linger: Duration::from_millis(args.linger_ms),
        batch_size_bytes: args.batch_size,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let mut pending: FuturesOrdered<futures::future::Map<_, _>> = FuturesOrdered::new();
    let mut pending_bytes = 0usize;
    let mut summary = ProduceSummary::default();
    while let Some(line) = lines.next().await {
        let line = line.context("reading input")?;
        let (key, value) = match (&args.key, &args.key_separator) {
            (Some(k), _) => (Some(k.clone()), line),
            (None, Some(sep)) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => {
                    summary.failed += 1;
                    writeln!(err, "error: no key separator {sep:?} in line {line:?}")?;
                    continue;
                }
            },
            (None, None) => (None, line),
        };
        let mut record = ProducerRecord::new(args.topic.clone(), value);
        record.key = key.map(bytes::Bytes::from);
        record.partition = args.partition;
        let size = record.value.as_ref().map_or(0, |v| v.len())
            + record.key.as_ref().map_or(0, |k| k.len());
        pending_bytes += size;
        pending.push_back(producer.send(record).map(move |r| (r, size)));
        while pending.len() >= PRODUCE_PENDING_MAX || pending_bytes >= PRODUCE_PENDING_MAX_BYTES {
            let Some((r, size)) = pending.next().await else {
                break;
            };
            pending_bytes -= size;
            account(r, &mut summary, err)?;
        }
    }
    producer.flush().await;
    while let Some((r, _)) = pending.next().await {
        account(r, &mut summary, err)?;
    }
    producer.close().await;
    Ok(summary)
}

/// Waits until `topic` has metadata and returns its partitions.
async fn partitions_of(
    client: &Client,
    topic: &str,
    deadline: Option<fjord_replication::Instant>,
) -> anyhow::Result<Vec<TopicPartition>> {
    client.register_topics([topic]);
    let mut failures = 0;
    loop {
        match client.refresh_metadata().await {
            Ok(md) => {
                if let Some(n) = md.topic(topic).and_then(|t| t.partition_count()) {
                    return Ok((0..n).map(|p| TopicPartition::new(topic, p)).collect());
                }
            }
            Err(e) if !e.is_retriable() => return Err(e.into()),
            Err(_) => {}
        }
        if deadline.is_some_and(|d| client.clock().now() >= d) {
            anyhow::bail!("topic {topic} not available");
        }
        client.backoff(failures).await;
        failures += 1;
    }
}

fn print_record<W: Write>(out: &mut W, args: &ConsumeArgs, r: &ConsumerRecord) -> io::Result<()> {
    if args.verbose {
        write!(out, "{}-{}@{}\t", r.topic, r.partition, r.offset)?;
    }
    if args.print_key {
        write!(out, "{}\t", lossy(&r.key))?;
    }
    writeln!(out, "{}", lossy(&r.value))
}

/// Prints records of `args.topic` to `out` until `--max-messages`, `--timeout-ms` or
/// `stop`. Returns how many were printed.
pub async fn consume<W, F>(
    client: &Client,
    args: &ConsumeArgs,
    out: &mut W,
    stop: F,
) -> anyhow::Result<u64>
where
    W: Write,
    F: Future<Output = ()>,
{
    let clock = client.clock().clone();
    let idle_max = args.timeout_ms.map(Duration::from_millis);
    let config = ConsumerConfig {
        group_id: args.group.clone(),
        auto_offset_reset: if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        },
        assignors: if args.assignors.is_empty() {
            ConsumerConfig::default().assignors
        } else {
            args.assignors.clone()
        },
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config)?;
    let mut stop = std::pin::pin!(stop.fuse());
    if args.group.is_some() {
        consumer.subscribe([args.topic.clone()])?;
    } else {
        let deadline = idle_max.and_then(|d| clock.now().checked_add(d));
        let partitions = futures::select_biased! {
            () = stop.as_mut() => return Ok(0),
            p = partitions_of(client, &args.topic, deadline).fuse() => p?,
        };
        consumer.assign(partitions)?;
    }
    let mut printed = 0u64;
    let mut last_record = clock.now();
    let result = loop {
        if args.max_messages.is_some_and(|m| printed >= m) {
            break Ok(());
        }
        let idle = clock.now().saturating_duration_since(last_record);
        if idle_max.is_some_and(|m| idle >= m) {
            break Ok(());
        }
        let wait = idle_max.map_or(CONSUME_POLL_MAX, |m| (m - idle).min(CONSUME_POLL_MAX));
        let records = futures::select_biased! {
            () = stop.as_mut() => break Ok(()),
            r = consumer.poll(wait).fuse() => r,
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if !records.is_empty() {
            last_record = clock.now();
        }
        // Records beyond --max-messages are not printed: rewind to the first of them per
        // partition, so that the group's commit at close does not skip them.
        let mut rewind: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for r in &records {
            if args.max_messages.is_some_and(|m| printed >= m) {
                rewind
                    .entry(TopicPartition::new(r.topic.clone(), r.partition))
                    .or_insert(r.offset);
                continue;
            }
            print_record(out, args, r)?;
            printed += 1;
        }
        for (tp, offset) in rewind {
            consumer.seek(&tp, offset)?;
        }
        out.flush()?;
    };
    // A failed final commit (say, a rebalance under way) only means those records may be
    // delivered again: worth a warning, not a failed command.
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "closing the consumer");
    }
    result?;
    Ok(printed)
}
