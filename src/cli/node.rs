//! `meshreg node`: one node as a daemon. SIGINT or SIGTERM leaves the cluster cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use meshreg::{Backend, MemberEvent, Node, Profile};

use super::sim::parse;

/// Flags of `meshreg node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A label for logs (defaults to the listen address).
    #[arg(long)]
    name: Option<String>,
    /// UDP and TCP listen address, IPv4.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// An existing member to join through (repeatable); none for the first node.
    #[arg(long = "seed")]
    seeds: Vec<SocketAddr>,
    /// Discovery backend: gossip or coordinated.
    #[arg(long, default_value = "gossip", value_parser = parse::<Backend>)]
    backend: Backend,
    /// File holding the cluster secret (at least 16 bytes; one trailing newline is ignored).
    #[arg(long)]
    secret_file: PathBuf,
    /// Cluster name: nodes of other clusters are refused.
    #[arg(long, default_value = "meshreg")]
    cluster: String,
    /// Timer profile: lan, wan or test.
    #[arg(long, default_value = "lan", value_parser = parse::<Profile>)]
    profile: Profile,
    /// Roles this node offers (repeatable), e.g. `session`.
    #[arg(long = "role")]
    roles: Vec<String>,
}

/// Runs the command until a signal.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut secret = std::fs::read(&args.secret_file)
        .with_context(|| format!("--secret-file {}", args.secret_file.display()))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut b = Node::builder()
            .listen(args.listen)
            .seeds(args.seeds)
            .backend(args.backend)
            .secret(secret)
            .cluster(args.cluster)
            .profile(args.profile);
        if let Some(name) = args.name {
            b = b.name(name);
        }
        for r in args.roles {
            b = b.role(r);
        }
        let node = b.start().await?;
        let (members, mut events) = node.monitor_cluster();
        println!(
            "{} listening on {} ({} backend), {} members known",
            node.config().name,
            node.addr(),
            node.config().backend,
            members.len()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                ev = events.recv() => match ev {
                    Some(MemberEvent::Up(id)) => println!("up   {id:?}"),
                    Some(MemberEvent::Down(id)) => println!("down {id:?}"),
                    None => break,
                },
            }
        }
        println!("leaving the cluster");
        node.shutdown().await;
        Ok(())
    })
}
