//! The `fjord` command line.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "fjord", version, about = "A Kafka-compatible replicated log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a single-process development cluster (not yet available).
    Dev,
    /// Run one broker of a multi-process cluster (not yet available).
    Broker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev | Command::Broker => {
            anyhow::bail!(
                "{:?} is not available yet: see the open issues",
                cli.command
            )
        }
    }
}
