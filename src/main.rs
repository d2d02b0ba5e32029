//! The `fjord` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use fjord::cli::{ConnectArgs, ConsumeArgs, ProduceArgs, TopicCommand};
use fjord::client::{Client, ClientConfig};
use fjord::runtime::bench::{self, BenchOptions};
use fjord::runtime::server::{self, BrokerFile, DevOptions};
use fjord::runtime::{TcpConnector, TokioClock, TokioSpawner};

#[derive(Debug, Parser)]
#[command(name = "fjord", version, about = "A Kafka-compatible replicated log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a development cluster in this process (first broker on 127.0.0.1:9092).
    Dev {
        /// Brokers to run (the first five are controller voters).
        #[arg(long, default_value_t = 1)]
        brokers: u32,
        /// Where the brokers keep their data.
        #[arg(long, default_value = "data/dev")]
        data_dir: PathBuf,
        /// Kafka port of the first broker; the others use the next ports.
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Host the brokers listen on and advertise.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Partitions of auto-created topics.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Do not create topics on first use.
        #[arg(long)]
        no_auto_create_topics: bool,
        /// Prometheus endpoint for every broker (GET /metrics), or "off".
        #[arg(long, default_value = "127.0.0.1:9644", value_parser = parse_metrics_addr)]
        metrics_addr: MetricsAddr,
    },
    /// Run one broker of a multi-process cluster.
    Broker {
        /// TOML configuration (see config/cluster/).
        #[arg(long)]
        config: PathBuf,
        /// Prometheus endpoint (GET /metrics), or "off"; overrides `metrics_listen` of the
        /// configuration file (default: off).
        #[arg(long, value_parser = parse_metrics_addr)]
        metrics_addr: Option<MetricsAddr>,
        /// Where this broker keeps its data; overrides `data_dir` of the configuration file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create, list, describe, alter or delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Send the lines of stdin to a topic, one record per line.
    Produce {
        #[command(flatten)]
        args: ProduceArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print the records of a topic.
    Consume {
        #[command(flatten)]
        args: ConsumeArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Measure produce/consume throughput and latency against in-process brokers.
    Bench {
        /// Records produced and consumed by each peak run.
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        /// Partitions of the benchmark topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// The producer's batch.size in KiB.
        #[arg(long, default_value_t = 256)]
        batch_kib: usize,
        /// The producer's linger.ms (Kafka's default is 5: every record of a batch that
        /// does not fill waits that long, which the half-of-peak latency would measure).
        #[arg(long, default_value_t = 1)]
        linger_ms: u64,
        /// Seconds of the half-of-peak run (3 brokers).
        #[arg(long, default_value_t = 10.0)]
        half_rate_seconds: f64,
        /// After the half-of-peak run (3 brokers), runs at these fractions of the peak too
        /// (comma-separated, e.g. 0.25,0.75), without the tailing consumer.
        #[arg(long, value_delimiter = ',')]
        extra_load_fractions: Vec<f64>,
        /// Seconds of each raw write+fdatasync loop.
        #[arg(long, default_value_t = 3.0)]
        raw_seconds: f64,
        /// Directory for the brokers' data (a temporary directory inside it; default: .).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only the single-broker acks=1 scenario.
        #[arg(long, conflicts_with = "only_cluster")]
        only_single: bool,
        /// Only the 3-broker acks=all scenario.
        #[arg(long)]
        only_cluster: bool,
    },
}

/// `--metrics-addr`: an address, or "off".
#[derive(Clone, Copy, Debug)]
struct MetricsAddr(Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("{e} (expected host:port or \"off\")"))
}

/// A client over TCP on the current Tokio runtime.
fn client(connect: ConnectArgs) -> Client {
    #[allow(
        clippy::disallowed_methods,
        reason = "the binary seeds the client's jitter from the real clock"
    )]
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Client::new(
        Arc::new(TcpConnector::default()),
        Arc::new(TokioClock::new()),
        Arc::new(TokioSpawner::current()),
        ClientConfig {
            bootstrap_servers: connect.bootstrap_server,
            client_id: "fjord-cli".to_string(),
            seed,
            ..ClientConfig::default()
        },
    )
}

/// Lines of stdin read in one go at most (larger chunks mean fewer thread hand-overs).
const STDIN_CHUNK_LINES_MAX: usize = 4096;

/// The lines of stdin, read on a blocking thread and handed over in chunks: a chunk is sent
/// when full or when no more input is buffered (so interactive input is not held back).
fn stdin_lines() -> impl futures::Stream<Item = std::io::Result<String>> + Unpin {
    use std::io::BufRead;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Vec<std::io::Result<String>>>(16);
    tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
        let mut chunk = Vec::new();
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let done = matches!(read, Ok(0) | Err(_));
            match read {
                Ok(0) => {}
                Ok(_) => {
                    if line.ends_with('\n') {
                        line.pop();
                        if line.ends_with('\r') {
                            line.pop();
                        }
                    }
                    chunk.push(Ok(line));
                }
                Err(e) => chunk.push(Err(e)),
            }
            if done || chunk.len() >= STDIN_CHUNK_LINES_MAX || reader.buffer().is_empty() {
                let full = std::mem::take(&mut chunk);
                if !full.is_empty()
                    && futures::executor::block_on(futures::SinkExt::send(&mut tx, full)).is_err()
                {
                    return;
                }
            }
            if done {
                return;
            }
        }
    });
    futures::StreamExt::flat_map(rx, futures::stream::iter)
}

/// Logs go to stderr (stdout carries `consume`'s records), at `default` unless RUST_LOG
/// says otherwise.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: scripts/cluster and the tests write logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(match cli.command {
        Command::Dev { .. } | Command::Broker { .. } => "info",
        _ => "warn",
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev {
                brokers,
                data_dir,
                port,
                host,
                partitions,
                no_auto_create_topics,
                metrics_addr,
            } => {
                let opts = DevOptions {
                    brokers,
                    data_dir,
                    port,
                    host,
                    auto_create_topics: !no_auto_create_topics,
                    default_partitions: partitions,
                    metrics_listen: metrics_addr.0,
                };
                let nodes = server::start_dev(&opts).await?;
                for n in &nodes {
                    println!("broker {} listening on {}", n.id, n.kafka.local_addr());
                }
                if let Some(m) = nodes.iter().find_map(|n| n.metrics.as_ref()) {
                    println!("metrics on http://{}/metrics", m.local_addr());
                }
                server::wait_for_signal().await;
                for n in nodes {
                    n.shutdown(Duration::from_secs(5)).await;
                }
                Ok(())
            }
            Command::Broker {
                config,
                metrics_addr,
                data_dir,
            } => {
                let mut spec = BrokerFile::load(&config)
                    .and_then(|f| f.spec())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
                if let Some(MetricsAddr(addr)) = metrics_addr {
                    spec.metrics_listen = addr;
                }
                if let Some(dir) = data_dir {
                    spec.data_dir = dir;
                }
                let node = server::start_node(spec).await?;
                println!(
                    "broker {} listening on {}",
                    node.id,
                    node.kafka.local_addr()
                );
                if let Some(m) = &node.metrics {
                    println!("metrics on http://{}/metrics", m.local_addr());
                }
                server::wait_for_signal().await;
                node.shutdown(Duration::from_secs(10)).await;
                Ok(())
            }
            Command::Topic { command, connect } => {
                fjord::cli::topic(&client(connect), command, &mut std::io::stdout()).await
            }
            Command::Produce { args, connect } => {
                let summary = fjord::cli::produce(
                    &client(connect),
                    &args,
                    stdin_lines(),
                    &mut std::io::stderr(),
                )
                .await?;
                anyhow::ensure!(summary.failed == 0, "{} record(s) not sent", summary.failed);
                Ok(())
            }
            Command::Consume { args, connect } => {
                let stop = server::wait_for_signal();
                fjord::cli::consume(&client(connect), &args, &mut std::io::stdout(), stop)
                    .await
                    .map(|_| ())
            }
            Command::Bench {
                records,
                partitions,
                batch_kib,
                linger_ms,
                half_rate_seconds,
                extra_load_fractions,
                raw_seconds,
                dir,
                only_single,
                only_cluster,
            } => {
                let opts = BenchOptions {
                    records,
                    partitions,
                    batch_size_bytes: batch_kib * 1024,
                    linger: Duration::from_millis(linger_ms),
                    half_rate_duration: Duration::from_secs_f64(half_rate_seconds.max(0.1)),
                    extra_load_fractions: extra_load_fractions
                        .into_iter()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .collect(),
                    raw_duration: Duration::from_secs_f64(raw_seconds.max(0.1)),
                    dir,
                    single: !only_cluster,
                    cluster: !only_single,
                };
                bench::run(&opts).await.map(|_| ())
            }
        }
    })
}
