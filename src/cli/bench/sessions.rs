//! `meshreg bench sessions`: the session manager's figures (issue keys, exactly):
//!
//! - `shard.register_ops_per_s`, `shard.lookup_ops_per_s`: one shard state machine on one core,
//!   in this process, u64 keys: single-call `Register` (policy `Reject`, distinct keys) into an
//!   empty primary without a standby until it holds `--sessions`, then single-call `Lookup`s of
//!   every key in a scattered order (median of 3 passes). Requests are handed over 64 at a
//!   time (`Shard::handle_requests`), as a node hands over what it decoded from one read of a
//!   pipelined link; each is still one request with its own dedupe record and reply.
//! - `mem.bytes_per_session`: the full shard's heap bytes per session (`Shard::heap_bytes`,
//!   exact accounting from capacities, checked against a counting allocator within 10% by
//!   `registry/tests/session_memory.rs`); `context.rss_bytes_per_session` is this process's
//!   resident-set growth per session while the shard filled.
//! - `context.shard.register_cpu_ops_per_s`, `context.shard.lookup_cpu_ops_per_s`: the same
//!   operations per second of this thread's CPU time (median lookup pass), not wall time: on
//!   a shared host they do not count time spent waiting for a core (left out where the kernel
//!   does not report a thread's CPU time).
//! - `e2e.k4.register_ops_per_s`: 4 nodes on loopback, each in its own OS process (this binary
//!   as `bench worker`), 2 with the session role; callers on all 4 register distinct keys at
//!   once, each call awaited (`--concurrency` callers per node). Aggregate = acknowledged
//!   registrations / (last end - first start) on the host clock.
//! - `e2e.k4.cpu_us_per_register`: CPU time (user + system) the 4 worker processes used over
//!   the registration phase, summed, per acknowledged registration (from `/proc/<pid>/stat`,
//!   10 ms resolution; omitted where `/proc` is unavailable). Steadier than the rate on a
//!   shared host: 2 cores run everything, so the rate is bounded by cores / this cost.
//! - `e2e.k4.lookup_p50_us`, `e2e.k4.lookup_p99_us`: then lookups of registered keys from all
//!   4 nodes, open loop, at half the measured registration rate in total, for `--lookup-ms`.
//!
//! The Erlang anchor is `global:register_name` (`global.k4.*` of the harness results).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use meshreg::membership::{NodeId, loopback_addr};
use meshreg::registry::Pid;
use meshreg::registry::session::{
    Body, Call, Output, Policy, Request, RequestId, SessionKey, Shard, ShardConfig, ShardId,
};
use meshreg::{Backend, Profile};

use super::agent::{Cmd, Reply};
use super::fleet::Fleet;
use super::report::{Metric, Reference, Report, pct};
use crate::cli::sim::parse;

/// Flags of `meshreg bench sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Print one flat JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Parts to run: `shard` (one core, in process) and/or `e2e` (4 OS processes).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("shard"), String::from("e2e")])]
    only: Vec<String>,
    /// Sessions the shard part fills (the memory figure is taken at this size).
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    sessions: u64,
    /// Registrations of the end-to-end part, over all 4 nodes.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    registrations: u64,
    /// Concurrent callers per node in the end-to-end registration phase.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Runtime worker threads of each end-to-end node process: 0 runs the node on a
    /// current-thread tokio runtime, N on a multi-thread runtime of N workers.
    #[arg(long, default_value_t = super::fleet::DEFAULT_WORKER_THREADS,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    worker_threads: u16,
    /// Length of the end-to-end lookup phase, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    lookup_ms: u64,
    /// Discovery backend of the end-to-end nodes (membership follows it).
    #[arg(long, default_value = "coordinated", value_parser = parse::<Backend>)]
    backend: Backend,
    /// The Erlang harness's results file, for the `global.k4` reference.
    #[arg(long, default_value = "../shared/anchors/erlang/results.txt")]
    reference: PathBuf,
}

/// Runs `meshreg bench sessions`.
pub fn run(args: SessionsArgs) -> anyhow::Result<()> {
    if let Some(bad) = args
        .only
        .iter()
        .find(|p| !matches!(p.as_str(), "shard" | "e2e"))
    {
        bail!("--only {bad:?}: expected shard and/or e2e");
    }
    let mut report = Report::default();
    if args.only.iter().any(|p| p == "shard") {
        eprintln!("[bench] sessions shard: {} sessions", args.sessions);
        report.extend(shard(args.sessions));
    }
    if args.only.iter().any(|p| p == "e2e") {
        eprintln!(
            "[bench] sessions e2e.k4: {} registrations, {} callers per node ({} backend)",
            args.registrations, args.concurrency, args.backend
        );
        report
            .notes
            .push(("worker_threads".into(), args.worker_threads.to_string()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        match rt.block_on(e2e(&args)) {
            Ok(m) => report.extend(m),
            Err(e) => {
                eprintln!("[bench] e2e.k4 failed: {e:#}");
                report.failed.push(("e2e.k4".into(), format!("{e:#}")));
            }
        }
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    let json = report.to_json(args.backend.name(), true);
    if let Some(path) = &args.json_out {
        super::report::write_json(path, &json)?;
    }
    if args.json {
        println!("{json}");
    } else {
        let reference = Reference::load_with(&args.reference, "global.");
        println!(
            "meshreg bench sessions ({} backend for e2e); Erlang global reference: {}",
            args.backend,
            reference.source.as_deref().unwrap_or("not found")
        );
        print!("{}", report.table(&Reference::default()));
        for key in [
            "k4.register_seq",
            "k4.register_conc_1pernode",
            "k4.register_conc_1pernode.p99",
        ] {
            if let Some(v) = reference.get(key) {
                println!("{:<46} {v:>14} (Erlang global.{key})", "reference");
            }
        }
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        bail!("{} part(s) failed", report.failed.len())
    }
}

// ---- shard: one core, in process ----

const SHARD: ShardId = ShardId(0);
/// Keys look like phone numbers.
const PHONE_BASE: u64 = 447_000_000_000;
/// Outputs are drained every this many answers, as a driver flushing its send buffers would.
const DRAIN_EVERY: usize = 1024;
/// Requests per `handle_requests` call (one read of a pipelined link).
const PIPELINE: u64 = 64;

fn key_of(i: u64) -> u64 {
    PHONE_BASE + i * 7919
}

fn request(id: u64, body: Body) -> Request {
    Request {
        shard: SHARD,
        epoch: 1,
        id: RequestId {
            client: NodeId::new(loopback_addr(1000, 7000), 1),
            id,
        },
        answered_below: id,
        body,
    }
}

fn register_call(i: u64, nodes: &[NodeId]) -> Call {
    Call::Register {
        key: SessionKey::U64(key_of(i)),
        pid: Pid {
            node: nodes[(i % nodes.len() as u64) as usize],
            serial: i,
        },
        metadata: Box::default(),
        policy: Policy::Reject,
    }
}

/// A scattered visiting order of 0..n (a multiplicative permutation when n's prime factors
/// are 2 and 5; otherwise some keys repeat, which only changes which keys are read).
fn scattered(i: u64, n: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % n
}

fn drain(out: &mut Vec<Output>, every: usize) {
    if out.len() >= every {
        black_box(&out);
        out.clear();
    }
}

/// Seconds this thread has run on a CPU (the scheduler's exact count, in ns, from
/// `/proc/thread-self/schedstat`; 0 where that is unavailable). Why: on a shared host the wall
/// clock also counts time spent waiting for a core; CPU time does not.
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Wall-clock and on-CPU seconds of one timed phase.
#[derive(Clone, Copy)]
struct Timed {
    wall_s: f64,
    cpu_s: f64,
}

/// Runs `make(i)` for i in 0..n, handed to the shard `PIPELINE` at a time, each request
/// answering `calls` calls. Replies are dropped once `DRAIN_EVERY` answers are held, whatever
/// their grouping: a node sends its replies per burst. Why per answer: holding 1,024 replies
/// of 64 answers (3 MB) and freeing them at once had the allocator return and re-fault that
/// much heap every 1,024 batches once its trim threshold was low (it follows the largest
/// block freed so far), which measured the allocator rather than the shard.
fn pipelined(
    shard: &mut Shard,
    n: u64,
    calls: usize,
    mut make: impl FnMut(u64) -> Request,
) -> Timed {
    let every = (DRAIN_EVERY / calls).max(1);
    let mut out: Vec<Output> = Vec::with_capacity(2 * every);
    let cpu0 = thread_cpu_s();
    let start = Instant::now();
    for first in (0..n).step_by(PIPELINE as usize) {
        let batch = first..(first + PIPELINE).min(n);
        shard.handle_requests(batch.map(&mut make), &mut out);
        drain(&mut out, every);
    }
    Timed {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: thread_cpu_s() - cpu0,
    }
}

fn shard(n: u64) -> Vec<Metric> {
    let nodes: Vec<NodeId> = (0..64)
        .map(|i| NodeId::new(loopback_addr(i, 7000), 1))
        .collect();
    let config = ShardConfig {
        hash_seed: 0x5eed,
        ..ShardConfig::default()
    };
    let rss0 = super::single::rss_bytes();
    let mut shard = Shard::primary(SHARD, 1, config);
    let register = pipelined(&mut shard, n, 1, |i| {
        request(i + 1, Body::One(register_call(i, &nodes)))
    });
    let rss1 = super::single::rss_bytes();
    let heap = shard.heap_bytes() as f64;
    let held = shard.len() as u64;
    let mut passes: Vec<Timed> = (0..3)
        .map(|_| {
            pipelined(&mut shard, n, 1, |i| {
                let key = SessionKey::U64(key_of(scattered(i, n)));
                request(n + i + 1, Body::One(Call::Lookup { key }))
            })
        })
        .collect();
    passes.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let lookup = passes[1];
    let mut lookup_cpu: Vec<f64> = passes.iter().map(|p| p.cpu_s).collect();
    lookup_cpu.sort_by(f64::total_cmp);
    let reregister = pipelined(&mut shard, n, 1, |j| {
        request(
            2 * n + j + 1,
            Body::One(register_call(scattered(j, n), &nodes)),
        )
    });
    let batches = n / 64;
    let lookup_many = pipelined(&mut shard, batches, 64, |b| {
        let keys = (0..64).map(|j| SessionKey::U64(key_of(scattered(b * 64 + j, n))));
        request(3 * n + b + 1, Body::lookup_many(keys))
    });
    drop(shard);
    let rate = |ops: u64, s: f64| ops as f64 / s;
    let m = |key: &str, value: f64, unit: &'static str| Metric {
        key: key.to_owned(),
        value,
        unit,
    };
    let mut metrics = vec![
        m("shard.sessions", held as f64, "sessions"),
        m(
            "shard.register_ops_per_s",
            rate(n, register.wall_s),
            "ops/s",
        ),
        m("shard.lookup_ops_per_s", rate(n, lookup.wall_s), "ops/s"),
        m("mem.bytes_per_session", heap / n as f64, "bytes/session"),
        m(
            "context.rss_bytes_per_session",
            rss1.saturating_sub(rss0) as f64 / n as f64,
            "bytes/session",
        ),
        m(
            "context.shard.reregister_full_ops_per_s",
            rate(n, reregister.wall_s),
            "ops/s",
        ),
        m(
            "context.shard.lookup_many64_ops_per_s",
            rate(batches * 64, lookup_many.wall_s),
            "ops/s",
        ),
    ];
    // CPU time is 0 where the kernel does not report it: leave those figures out.
    if register.cpu_s > 0.0 && lookup_cpu[1] > 0.0 {
        metrics.push(m(
            "context.shard.register_cpu_ops_per_s",
            rate(n, register.cpu_s),
            "ops/s",
        ));
        metrics.push(m(
            "context.shard.lookup_cpu_ops_per_s",
            rate(n, lookup_cpu[1]),
            "ops/s",
        ));
    }
    metrics
}

// ---- e2e: 4 nodes, separate OS processes ----

const K: usize = 4;
const SESSION_NODES: usize = 2;

async fn e2e(args: &SessionsArgs) -> anyhow::Result<Vec<Metric>> {
    let mut fleet =
        Fleet::new(args.backend, Profile::Lan, true, K as u32).with_threads(args.worker_threads);
    let mut ids = Vec::with_capacity(K);
    for i in 0..K {
        let seed = ids.first().map(|&f| fleet.addr(f)).transpose()?;
        let roles = if i < SESSION_NODES {
            vec![meshreg::node::SESSION_ROLE.to_owned()]
        } else {
            Vec::new()
        };
        ids.push(fleet.start_with_roles(seed, roles).await?);
    }
    let result = e2e_run(&mut fleet, &ids, args).await;
    fleet.shutdown().await;
    result
}

async fn e2e_run(
    fleet: &mut Fleet,
    ids: &[usize],
    args: &SessionsArgs,
) -> anyhow::Result<Vec<Metric>> {
    let limit = Duration::from_secs(120);
    for &i in ids {
        fleet
            .call_within(i, Cmd::WaitPeers { peers: K - 1 }, limit)
            .await?;
        fleet
            .call_within(
                i,
                Cmd::SessionsReady {
                    nodes: SESSION_NODES,
                },
                limit,
            )
            .await?;
    }
    // Registrations: every node at once, distinct key ranges.
    let per_node = args.registrations / K as u64;
    let cpu_before = fleet_cpu_time(fleet, ids);
    for (n, &i) in ids.iter().enumerate() {
        let cmd = Cmd::SessionRegister {
            base: n as u64 * per_node,
            count: per_node,
            concurrency: args.concurrency as usize,
        };
        fleet.send(i, &cmd)?;
    }
    let (mut t0, mut t1, mut ok, mut failed) = (u64::MAX, 0u64, 0u64, 0u64);
    for &i in ids {
        match fleet.reply(i, Duration::from_secs(600)).await? {
            Reply::Load {
                t0: a,
                t1: b,
                ok: o,
                failed: f,
            } => {
                t0 = t0.min(a);
                t1 = t1.max(b);
                ok += o;
                failed += f;
            }
            other => bail!("node {i}: expected a load report, got {other:?}"),
        }
    }
    let cpu = cpu_before
        .zip(fleet_cpu_time(fleet, ids))
        .map(|(a, b)| b.saturating_sub(a));
    if failed > 0 {
        bail!("{failed} of {} registrations failed", ok + failed);
    }
    let secs = (t1.saturating_sub(t0)) as f64 / 1e9;
    let register_rate = ok as f64 / secs;
    // Lookups at half that rate in total, spread over the 4 nodes, of registered keys.
    let per_node_rate = register_rate / 2.0 / K as f64;
    for &i in ids {
        let cmd = Cmd::SessionLookup {
            base: 0,
            span: per_node * K as u64,
            rate: per_node_rate,
            millis: args.lookup_ms,
        };
        fleet.send(i, &cmd)?;
    }
    let (mut lat, mut lfailed, mut missing) = (Vec::new(), 0u64, 0u64);
    for &i in ids {
        match fleet.reply(i, Duration::from_secs(600)).await? {
            Reply::Latencies {
                us,
                failed,
                missing: m,
            } => {
                lat.extend(us.into_iter().map(f64::from));
                lfailed += failed;
                missing += m;
            }
            other => bail!("node {i}: expected latencies, got {other:?}"),
        }
    }
    if lfailed > 0 || missing > 0 {
        bail!("lookups: {lfailed} failed, {missing} found no session (all keys were registered)");
    }
    lat.sort_by(f64::total_cmp);
    let m = |key: &str, value: f64, unit: &'static str| Metric {
        key: key.to_owned(),
        value,
        unit,
    };
    let mut metrics = vec![
        m("e2e.k4.registrations", ok as f64, "sessions"),
        m("e2e.k4.register_ops_per_s", register_rate, "ops/s"),
        m(
            "e2e.k4.lookup_rate_per_s",
            per_node_rate * K as f64,
            "ops/s",
        ),
        m("e2e.k4.lookups", lat.len() as f64, "calls"),
        m("e2e.k4.lookup_p50_us", pct(&lat, 50.0), "us"),
        m("e2e.k4.lookup_p99_us", pct(&lat, 99.0), "us"),
    ];
    if let Some(cpu) = cpu {
        let us = cpu.as_secs_f64() * 1e6 / ok.max(1) as f64;
        metrics.push(m("e2e.k4.cpu_us_per_register", us, "us"));
    }
    Ok(metrics)
}

/// CPU time used so far by the worker processes of `ids`, summed; `None` if any is not a
/// child process or its time cannot be read. Taken around the registration phase, it gives
/// the CPU cost per acknowledged registration, which the host's load does not scale the way
/// it scales the throughput.
fn fleet_cpu_time(fleet: &Fleet, ids: &[usize]) -> Option<Duration> {
    ids.iter().map(|&i| fleet.cpu_time(i)).sum()
}
