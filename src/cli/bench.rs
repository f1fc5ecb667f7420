//! `meshreg bench`: loopback benchmarks that measure what the Erlang anchor harness
//! (`shared/anchors/erlang`) measures, under the same metric names (without `pg.`), so every
//! figure sits next to its `pg` reference.
//!
//! `bench groups` runs the process-group units: `single.1g`, `single.10kg` (one node, in this
//! process), `prop.kK`, `bulk.kK`, `nodedown.kK` for K = 2, 4, 8 (K nodes, in this process or,
//! with `--processes`, one OS process each, as the Erlang nodes are). The hidden
//! `bench worker` is one such node process, driven over stdin/stdout. Codemap:
//! - `bench/single.rs`: single-node throughput, reads, memory, exit cleanup;
//! - `bench/multi.rs`: propagation, bulk convergence, node-down;
//! - `bench/fleet.rs` + `bench/agent.rs`: the nodes of a multi-node run and their commands;
//! - `bench/report.rs`: figures, the Erlang reference, table and JSON output.

mod agent;
mod fleet;
mod multi;
mod report;
mod sessions;
mod single;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use meshreg::{Backend, Node, Profile};

use self::fleet::Fleet;
use self::report::{Metric, Reference, Report};
use super::sim::parse;

/// Flags of `meshreg bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Process groups against Erlang pg: single-node throughput, reads and memory;
    /// propagation latency, bulk convergence and node-down removal on K = 2, 4, 8 nodes.
    ///
    /// Memory: `single.mem_node_total.*` is the growth of the node's group backend heap
    /// (`NodeStats::backend_heap_bytes`, computed from capacities) per membership;
    /// `single.mem_rss.*` is the growth of this process's resident set (VmRSS) per
    /// membership, the closer analogue of `erlang:memory(total)` (allocator slack included).
    Groups(GroupsArgs),
    /// The session manager: one shard on one core (registrations, lookups, memory per
    /// session), then 4 nodes in separate OS processes on loopback (aggregate registrations/s,
    /// lookup latency at half that load).
    Sessions(sessions::SessionsArgs),
    /// One benchmark node driven by JSON lines on stdin (started by `groups --processes`).
    #[command(hide = true)]
    Worker(fleet::WorkerArgs),
}

/// Flags of `meshreg bench groups`.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Discovery backend: coordinated or gossip.
    #[arg(long, value_parser = parse::<Backend>)]
    backend: Backend,
    /// Print one flat JSON object (metric -> value, plus `backend` and `processes`) instead of
    /// a table.
    #[arg(long)]
    json: bool,
    /// Run every node of the multi-node units in its own OS process (this binary
    /// re-executed), as the Erlang nodes are; single-node units always run in this process.
    #[arg(long)]
    processes: bool,
    /// Run only the units whose id starts with one of these prefixes (comma-separated or
    /// repeated). Units: single.1g single.10kg prop.k2 prop.k4 prop.k8 bulk.k2 bulk.k4 bulk.k8
    /// nodedown.k2 nodedown.k4 nodedown.k8.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Multiply every size the harness scales (processes, lookups, samples, victim members)
    /// by this factor, e.g. 0.1 for a quick run. Metric names follow the actual sizes.
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    scale: f64,
    /// Timer profile of every node (default: lan, except test for gossip bulk and node-down).
    #[arg(long, value_parser = parse::<Profile>)]
    profile: Option<Profile>,
    /// Concurrent callers per node in the bulk units: each joins its slice of the node's pids,
    /// one awaited `join` per pid. 1 = one sequential caller per node, as the Erlang harness
    /// runs (a pg join returns before the other nodes have it; a coordinated one only once
    /// every node applied it, so a single coordinated caller waits for one cluster-wide round
    /// trip per join).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    bulk_callers: u16,
    /// The bulk units' callers start each join with `join_detached` and do not wait for it
    /// (Erlang `pg:join` semantics: the call returns before the other nodes have the join);
    /// converged is still every node listing every membership. One caller per node.
    #[arg(long, conflicts_with = "bulk_callers")]
    bulk_detached: bool,
    /// Runtime worker threads of each node's OS process with `--processes`: 0 runs the node
    /// on a current-thread tokio runtime (one thread), N on a multi-thread runtime of N
    /// workers. Default 2, as the Erlang nodes run two schedulers each.
    #[arg(long, default_value_t = fleet::DEFAULT_WORKER_THREADS,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    worker_threads: u16,
    /// Also write the JSON object to this file (the table is still printed).
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// The Erlang harness's results file, for the reference column.
    #[arg(long, default_value = "../shared/anchors/erlang/results.txt")]
    reference: PathBuf,
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 10.0 => Ok(f),
        Ok(f) => Err(format!(
            "{f} is out of range (expected a factor in (0, 10])"
        )),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// Every unit, in run order: `(id, multi-node K or 0)`.
const UNITS: [(&str, usize); 11] = [
    ("single.1g", 0),
    ("single.10kg", 0),
    ("prop.k2", 2),
    ("prop.k4", 4),
    ("prop.k8", 8),
    ("bulk.k2", 2),
    ("bulk.k4", 4),
    ("bulk.k8", 8),
    ("nodedown.k2", 2),
    ("nodedown.k4", 4),
    ("nodedown.k8", 8),
];

/// What every unit of one run shares.
pub struct Ctx {
    backend: Backend,
    processes: bool,
    scale: f64,
    profile: Option<Profile>,
    /// Concurrent join callers per node in the bulk units.
    bulk_callers: usize,
    /// Bulk joins are started detached (not awaited).
    bulk_detached: bool,
    /// Runtime worker threads of each worker process (0 = current-thread).
    worker_threads: u16,
}

impl Ctx {
    /// The harness's `scaled`: at least 1.
    fn scaled(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }

    /// The timer profile for a unit kind (`single`, `prop`, `bulk`, `nodedown`).
    fn profile_for(&self, kind: &str) -> Profile {
        self.profile.unwrap_or(match (self.backend, kind) {
            (Backend::Gossip, "bulk" | "nodedown") => Profile::Test,
            _ => Profile::Lan,
        })
    }

    /// An empty fleet for a `kind` unit of `k` nodes.
    fn fleet(&self, kind: &str, k: usize) -> Fleet {
        Fleet::new(
            self.backend,
            self.profile_for(kind),
            self.processes,
            k as u32,
        )
        .with_threads(self.worker_threads)
    }

    /// A fresh lone node for the single-node units.
    async fn single_node(&self) -> anyhow::Result<Node> {
        Node::builder()
            .listen("127.0.0.1:0".parse()?)
            .backend(self.backend)
            .profile(self.profile_for("single"))
            .secret(b"meshreg-bench-single-node".to_vec())
            .cluster("meshreg-bench-single")
            .expected_size(1)
            .start()
            .await
            .context("starting the benchmark node")
    }
}

/// Runs `meshreg bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Groups(a) => groups(a),
        BenchCommand::Sessions(a) => sessions::run(a),
        BenchCommand::Worker(a) => fleet::worker(a),
    }
}

/// The units `only` selects (all when empty); an error names a prefix that matches none.
fn select(only: &[String]) -> anyhow::Result<Vec<(&'static str, usize)>> {
    if let Some(bad) = only
        .iter()
        .find(|p| !UNITS.iter().any(|(id, _)| id.starts_with(p.as_str())))
    {
        let ids: Vec<&str> = UNITS.iter().map(|u| u.0).collect();
        anyhow::bail!("--only {bad:?} matches no unit (units: {})", ids.join(" "));
    }
    Ok(UNITS
        .iter()
        .copied()
        .filter(|(id, _)| only.is_empty() || only.iter().any(|p| id.starts_with(p.as_str())))
        .collect())
}

fn groups(args: GroupsArgs) -> anyhow::Result<()> {
    let units = select(&args.only)?;
    let ctx = Ctx {
        backend: args.backend,
        processes: args.processes,
        scale: args.scale,
        profile: args.profile,
        bulk_callers: usize::from(args.bulk_callers),
        bulk_detached: args.bulk_detached,
        worker_threads: args.worker_threads,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = Report::default();
    for kind in ["single", "prop", "bulk", "nodedown"] {
        report.notes.push((
            format!("profile.{kind}"),
            ctx.profile_for(kind).name().to_owned(),
        ));
    }
    report
        .notes
        .push(("scale".into(), format!("{}", ctx.scale)));
    report
        .notes
        .push(("bulk_callers".into(), ctx.bulk_callers.to_string()));
    report
        .notes
        .push(("bulk_detached".into(), ctx.bulk_detached.to_string()));
    if ctx.processes {
        report
            .notes
            .push(("worker_threads".into(), ctx.worker_threads.to_string()));
    }
    for (id, k) in units {
        let t0 = Instant::now();
        eprintln!("[bench] running {id} ({} backend)", ctx.backend);
        let result = rt.block_on(run_unit(&ctx, id, k));
        match result {
            Ok(metrics) => report.extend(metrics),
            Err(e) => {
                eprintln!("[bench] {id} failed: {e:#}");
                report.failed.push((id.to_owned(), format!("{e:#}")));
            }
        }
        eprintln!("[bench] {id} done in {:.1} s", t0.elapsed().as_secs_f64());
    }
    // Nodes of a failed unit may still be stopping: give them no chance to linger.
    rt.shutdown_timeout(Duration::from_secs(5));
    let json = report.to_json(ctx.backend.name(), ctx.processes);
    if let Some(path) = &args.json_out {
        report::write_json(path, &json)?;
    }
    if args.json {
        println!("{json}");
    } else {
        let reference = Reference::load(&args.reference);
        println!(
            "meshreg bench groups: {} backend, {}, scale {}; reference: {}",
            ctx.backend,
            if ctx.processes {
                "one OS process per node"
            } else {
                "all nodes in one process"
            },
            ctx.scale,
            reference
                .source
                .as_deref()
                .unwrap_or("none (see --reference)")
        );
        print!("{}", report.table(&reference));
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} unit(s) failed", report.failed.len())
    }
}

/// Unit time bound: a stuck unit fails instead of hanging the run.
const UNIT_LIMIT: Duration = Duration::from_secs(600);

async fn run_unit(ctx: &Ctx, id: &str, k: usize) -> anyhow::Result<Vec<Metric>> {
    let fut: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Vec<Metric>>> + '_>> =
        match id.split('.').next() {
            Some("single") if id == "single.1g" => Box::pin(single::one_group(ctx)),
            Some("single") => Box::pin(single::many_groups(ctx)),
            Some("prop") => Box::pin(multi::prop(ctx, k)),
            Some("bulk") => Box::pin(multi::bulk(ctx, k)),
            _ => Box::pin(multi::nodedown(ctx, k)),
        };
    tokio::time::timeout(UNIT_LIMIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("exceeded {UNIT_LIMIT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_by_prefix_and_refuses_unknown_prefixes() {
        let ids = |only: &[&str]| -> Vec<&str> {
            let only: Vec<String> = only.iter().map(|s| (*s).to_owned()).collect();
            select(&only).unwrap().into_iter().map(|u| u.0).collect()
        };
        assert_eq!(ids(&[]).len(), UNITS.len());
        assert_eq!(ids(&["single"]), vec!["single.1g", "single.10kg"]);
        assert_eq!(ids(&["prop.k8", "bulk.k8"]), vec!["prop.k8", "bulk.k8"]);
        let err = select(&["gossip".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("--only"), "{err}");
    }

    #[test]
    fn scale_is_a_positive_factor() {
        assert_eq!(parse_scale("0.01"), Ok(0.01));
        assert!(parse_scale("0").is_err());
        assert!(parse_scale("-1").is_err());
        assert!(parse_scale("x").is_err());
        assert!(parse_scale("NaN").is_err());
    }

    #[test]
    fn gossip_uses_the_test_profile_for_bulk_and_node_down_only() {
        let ctx = Ctx {
            backend: Backend::Gossip,
            processes: false,
            scale: 1.0,
            profile: None,
            bulk_callers: 1,
            bulk_detached: false,
            worker_threads: 2,
        };
        assert_eq!(ctx.profile_for("bulk"), Profile::Test);
        assert_eq!(ctx.profile_for("nodedown"), Profile::Test);
        assert_eq!(ctx.profile_for("prop"), Profile::Lan);
        assert_eq!(ctx.scaled(10_000), 10_000);
        let small = Ctx { scale: 0.01, ..ctx };
        assert_eq!(small.scaled(10_000), 100);
        assert_eq!(small.scaled(10), 1);
    }
}
