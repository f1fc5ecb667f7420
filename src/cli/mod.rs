//! Command-line parsing and dispatch.

mod sim;

use clap::{Parser, Subcommand};

/// meshreg: distributed process registry and service discovery.
#[derive(Debug, Parser)]
#[command(name = "meshreg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a cluster deterministically (virtual time, modelled network) and report
    /// convergence, failure detection and traffic.
    Sim(sim::SimArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
    }
}
