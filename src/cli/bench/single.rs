//! The single-node benchmarks (`single.1g` and `single.10kg`), as the Erlang harness runs them:
//! one task calls the node API once per pre-created local process, sequentially; memory is
//! sampled before and after the joins; each figure is the median of [`REPS`] repetitions, each
//! on a fresh node.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshreg::{Node, Pid, Process};
use tokio::sync::{mpsc, watch};

use super::Ctx;
use super::report::{Metric, combine, kname};

const SCOPE: &str = "anchor_pg";
/// Repetitions per figure (the harness's `REPS`).
const REPS: usize = 3;
/// Groups of the many-groups suite (not scaled, as in the harness).
const GROUPS: usize = 10_000;

fn metric(key: String, value: f64, unit: &'static str) -> Metric {
    Metric { key, value, unit }
}

/// `single.1g`: 10,000 processes join (then leave) one group one call at a time; one
/// `join_many` of 10,000; 10,000 tasks joining at once.
pub async fn one_group(ctx: &Ctx) -> anyhow::Result<Vec<Metric>> {
    let n = ctx.scaled(10_000);
    let label = format!("1g_{}", kname(n));
    let names = vec!["g1".to_owned()];
    let mut runs = Vec::new();
    for _ in 0..REPS {
        let node = ctx.single_node().await?;
        let mut run = seq_join_leave(&node, &label, n, &names, 0).await?;
        run.extend(batch_join(&node, &label, n).await?);
        run.extend(conc_join_leave(&node, &label, n, &names).await?);
        node.shutdown().await;
        runs.push(run);
    }
    Ok(combine(&runs, &["mem_rss"]))
}

/// `single.10kg`: 100,000 processes, process i in group `g{i % 10000}`: sequential joins and
/// leaves, 1,000,000 member reads, concurrent joins, exit cleanup.
pub async fn many_groups(ctx: &Ctx) -> anyhow::Result<Vec<Metric>> {
    let n = ctx.scaled(100_000);
    let lookups = ctx.scaled(1_000_000);
    let label = format!("{}g_{}", kname(GROUPS), kname(n));
    let names: Vec<String> = (0..GROUPS).map(|g| format!("g{g}")).collect();
    let mut runs = Vec::new();
    for _ in 0..REPS {
        let node = ctx.single_node().await?;
        let mut run = seq_join_leave(&node, &label, n, &names, lookups).await?;
        run.extend(conc_join_leave(&node, &label, n, &names).await?);
        run.extend(exit_cleanup(&node, &label, n, &names).await?);
        node.shutdown().await;
        runs.push(run);
    }
    Ok(combine(&runs, &["mem_rss"]))
}

/// Memory of this process: resident set (from `/proc/self/status` VmRSS), bytes.
pub(super) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sequential joins then leaves, timed per tenth; memory around the joins; reads in between.
async fn seq_join_leave(
    node: &Node,
    label: &str,
    n: usize,
    names: &[String],
    lookups: usize,
) -> anyhow::Result<Vec<Metric>> {
    let procs: Vec<Process> = (0..n).map(|_| node.process()).collect();
    let items: Vec<(&str, Pid)> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| (names[(i + 1) % names.len()].as_str(), p.pid()))
        .collect();
    let (heap0, rss0) = (node.stats().backend_heap_bytes, rss_bytes());
    let mut tj = Vec::new();
    for chunk in items.chunks(n.div_ceil(10).max(1)) {
        let t0 = Instant::now();
        for &(g, pid) in chunk {
            node.join(SCOPE, g, pid).await?;
        }
        tj.push((chunk.len(), t0.elapsed()));
    }
    let stats = node.stats();
    let (heap1, rss1) = (stats.backend_heap_bytes, rss_bytes());
    if stats.memberships != n as u64 {
        bail!("{} memberships after {n} joins", stats.memberships);
    }
    let mut out = Vec::new();
    if lookups > 0 {
        out.extend(reads(node, label, names, lookups));
    }
    let mut tl = Vec::new();
    for chunk in items.chunks(n.div_ceil(10).max(1)) {
        let t0 = Instant::now();
        for &(g, pid) in chunk {
            node.leave(SCOPE, g, pid).await?;
        }
        tl.push((chunk.len(), t0.elapsed()));
    }
    drop(procs);
    out.extend(tenths(&format!("single.join_seq.{label}"), &tj));
    out.extend(tenths(&format!("single.leave_seq.{label}"), &tl));
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    out.push(metric(
        format!("single.mem_node_total.{label}"),
        per(heap0, heap1),
        "bytes/membership",
    ));
    out.push(metric(
        format!("single.mem_rss.{label}"),
        per(rss0, rss1),
        "bytes/membership",
    ));
    Ok(out)
}

/// `get_members`: `lookups` reads of group `g{i % 10000}`, i counting down as the harness's
/// loop does. `with_members` iterates the borrowed members; `members` copies them into a Vec.
fn reads(node: &Node, label: &str, names: &[String], lookups: usize) -> Vec<Metric> {
    let g = |i: usize| names[i % names.len()].as_str();
    let t0 = Instant::now();
    let mut sum = 0u64;
    for i in (1..=lookups).rev() {
        sum += node.with_members(SCOPE, g(i), |m| {
            m.map(|x| x.pid.serial).fold(0, u64::wrapping_add)
        });
    }
    let borrowed = t0.elapsed();
    black_box(sum);
    let t0 = Instant::now();
    for i in (1..=lookups).rev() {
        black_box(node.members(SCOPE, g(i)));
    }
    let copied = t0.elapsed();
    vec![
        metric(
            format!("single.get_members.{label}"),
            lookups as f64 / borrowed.as_secs_f64(),
            "ops/s",
        ),
        metric(
            format!("single.get_members_vec.{label}"),
            lookups as f64 / copied.as_secs_f64(),
            "ops/s",
        ),
    ]
}

/// The whole pass's rate and those of its first and last tenth.
fn tenths(name: &str, chunks: &[(usize, Duration)]) -> Vec<Metric> {
    let rate = |c: usize, d: Duration| c as f64 / d.as_secs_f64();
    let count = chunks.iter().map(|c| c.0).sum();
    let time = chunks.iter().map(|c| c.1).sum();
    let mut out = vec![metric(name.to_owned(), rate(count, time), "ops/s")];
    if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
        out.push(metric(
            format!("{name}.first_tenth"),
            rate(first.0, first.1),
            "ops/s",
        ));
        out.push(metric(
            format!("{name}.last_tenth"),
            rate(last.0, last.1),
            "ops/s",
        ));
    }
    out
}

/// `join_batch`: one `join_many` call carrying `n` pids.
async fn batch_join(node: &Node, label: &str, n: usize) -> anyhow::Result<Vec<Metric>> {
    let procs: Vec<Process> = (0..n).map(|_| node.process()).collect();
    let pids: Vec<Pid> = procs.iter().map(Process::pid).collect();
    let t0 = Instant::now();
    node.join_many(SCOPE, "gbatch", &pids).await?;
    let t = t0.elapsed();
    let listed = node.with_members(SCOPE, "gbatch", |m| m.len());
    if listed != n {
        bail!("join_many listed {listed} of {n}");
    }
    drop(procs);
    wait_empty(node).await?;
    Ok(vec![metric(
        format!("single.join_batch.{label}"),
        n as f64 / t.as_secs_f64(),
        "memberships/s",
    )])
}

/// `join_conc` / `leave_conc`: `n` tasks each join (then leave) their own process at the same
/// moment; timed from the go until the last one reported back.
async fn conc_join_leave(
    node: &Node,
    label: &str,
    n: usize,
    names: &[String],
) -> anyhow::Result<Vec<Metric>> {
    let (go_tx, go_rx) = watch::channel(0u8);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<anyhow::Result<()>>();
    let mut tasks = Vec::with_capacity(n);
    for i in 1..=n {
        let (node, mut go, done) = (node.clone(), go_rx.clone(), done_tx.clone());
        let group = names[i % names.len()].clone();
        tasks.push(tokio::spawn(async move {
            let me = node.process();
            let _ = go.wait_for(|v| *v >= 1).await;
            let r = node.join(SCOPE, &group, me.pid()).await;
            let _ = done.send(r.map_err(Into::into));
            let _ = go.wait_for(|v| *v >= 2).await;
            let r = node.leave(SCOPE, &group, me.pid()).await;
            let _ = done.send(r.map_err(Into::into));
            // The harness's members stay alive (idle) after leaving: ending them here would
            // put process-exit work inside the timed pass. Ended after the measurement.
            me
        }));
    }
    drop(done_tx);
    // Every task has created its process and is parked on `go` once the node lists n of them.
    while node.stats().processes < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let phase = |v: u8| {
        let t0 = Instant::now();
        let _ = go_tx.send(v);
        t0
    };
    let t0 = phase(1);
    collect(&mut done_rx, n).await?;
    let joined = t0.elapsed();
    let t0 = phase(2);
    collect(&mut done_rx, n).await?;
    let left = t0.elapsed();
    let mut procs = Vec::with_capacity(n);
    for t in tasks {
        procs.push(t.await.context("a joining task failed")?);
    }
    drop(procs);
    Ok(vec![
        metric(
            format!("single.join_conc.{label}"),
            n as f64 / joined.as_secs_f64(),
            "ops/s",
        ),
        metric(
            format!("single.leave_conc.{label}"),
            n as f64 / left.as_secs_f64(),
            "ops/s",
        ),
    ])
}

async fn collect(
    rx: &mut mpsc::UnboundedReceiver<anyhow::Result<()>>,
    n: usize,
) -> anyhow::Result<()> {
    for _ in 0..n {
        rx.recv().await.context("a joining task vanished")??;
    }
    Ok(())
}

/// `exit_cleanup`: `n` joined processes end (their handles are dropped); the time until the
/// node's table lists none of them.
async fn exit_cleanup(
    node: &Node,
    label: &str,
    n: usize,
    names: &[String],
) -> anyhow::Result<Vec<Metric>> {
    let procs: Vec<Process> = (0..n).map(|_| node.process()).collect();
    let before = node.stats().memberships;
    for (i, p) in procs.iter().enumerate() {
        node.join(SCOPE, &names[(i + 1) % names.len()], p.pid())
            .await?;
    }
    let t0 = Instant::now();
    drop(procs);
    wait_until_count(node, before).await?;
    let t = t0.elapsed();
    Ok(vec![
        metric(
            format!("single.exit_cleanup.{label}"),
            t.as_secs_f64() * 1000.0,
            "ms",
        ),
        metric(
            format!("single.exit_cleanup_rate.{label}"),
            n as f64 / t.as_secs_f64(),
            "members/s",
        ),
    ])
}

async fn wait_empty(node: &Node) -> anyhow::Result<()> {
    wait_until_count(node, 0).await
}

/// Polls until the node holds `want` memberships. A stats call walks the table's groups, so
/// polls are 100 us apart (a sleep of this benchmark thread, not of the node's).
async fn wait_until_count(node: &Node, want: u64) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while node.stats().memberships != want {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the table did not return to {want} memberships within 60 s");
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}
