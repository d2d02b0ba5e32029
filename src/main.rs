//! The `fjord` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fjord::runtime::server::{self, BrokerFile, DevOptions};

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
    },
    /// Run one broker of a multi-process cluster.
    Broker {
        /// TOML configuration (see config/cluster/).
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
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
            } => {
                let opts = DevOptions {
                    brokers,
                    data_dir,
                    port,
                    host,
                    auto_create_topics: !no_auto_create_topics,
                    default_partitions: partitions,
                };
                let nodes = server::start_dev(&opts).await?;
                for n in &nodes {
                    println!("broker {} listening on {}", n.id, n.kafka.local_addr());
                }
                server::wait_for_signal().await;
                for n in nodes {
                    n.shutdown(Duration::from_secs(5)).await;
                }
                Ok(())
            }
            Command::Broker { config } => {
                let spec = BrokerFile::load(&config)?.spec()?;
                let node = server::start_node(spec).await?;
                println!(
                    "broker {} listening on {}",
                    node.id,
                    node.kafka.local_addr()
                );
                server::wait_for_signal().await;
                node.shutdown(Duration::from_secs(10)).await;
                Ok(())
            }
        }
    })
}
