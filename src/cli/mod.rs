//! Command-line parsing and dispatch.

mod bench;
mod cluster;
mod node;
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
    /// Run N real nodes on loopback in this process with a service-discovery workload, then
    /// crash one, partition another and heal, reporting how fast every node agrees again.
    Cluster(cluster::ClusterArgs),
    /// Run one node as a daemon until SIGINT/SIGTERM (then leave the cluster cleanly).
    Node(node::NodeArgs),
    /// Loopback benchmarks measuring what the Erlang anchor harness measures, reported next to
    /// its figures.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Node(args) => node::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
