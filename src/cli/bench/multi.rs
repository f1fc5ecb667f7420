//! The multi-node benchmarks, as the Erlang harness runs them: propagation latency of one
//! join/leave (`prop.kK`), bulk convergence of 100,000 joins (`bulk.10kg_100k.kK`) and the
//! removal of a killed node's members (`nodedown.sigkill.10km.kK`).
//!
//! Every node is driven through a [`Fleet`], in this process or one OS process per node; the
//! measuring code is the same for both, only the clock of the stamps differs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Ctx;
use super::agent::{Cmd, Event, Reply};
use super::fleet::Fleet;
use super::report::{Metric, combine, kname, pct};

/// The scope every multi-node benchmark uses.
const SCOPE: &str = "anchor_pg";
/// Propagation: unmeasured samples first.
const PROP_WARMUP: usize = 50;
/// Propagation: sampling stops after this long (the harness's bound).
const PROP_DEADLINE: Duration = Duration::from_secs(40);
/// How long one observation may take before the sample fails.
const SEEN_LIMIT: Duration = Duration::from_secs(10);
/// Bulk: groups the joins spread over (not scaled, as in the harness).
const BULK_GROUPS: usize = 10_000;
/// Bulk: measured rounds; each figure is their median.
const BULK_REPS: usize = 3;
/// Node-down: groups the members spread over (not scaled).
const ND_GROUPS: usize = 100;
/// Node-down: members each survivor holds (not scaled).
const ND_SURVIVOR_MEMBERS: usize = 1000;
/// Node-down: kills, each of a fresh victim.
const ND_TRIALS: usize = 5;

fn ns_between(t0: u64, t: u64) -> f64 {
    (i128::from(t) - i128::from(t0)) as f64
}

fn metric(key: String, value: f64, unit: &'static str) -> Metric {
    Metric { key, value, unit }
}

/// `prop.kK`: one join (then its leave) at a time, origin rotating over the nodes, stamped
/// by an observer on every node once its table agrees.
pub async fn prop(ctx: &Ctx, k: usize) -> anyhow::Result<Vec<Metric>> {
    let mut fleet = ctx.fleet("prop", k);
    let ids = fleet.cluster(SCOPE, k).await?;
    for &i in &ids {
        fleet
            .call(
                i,
                Cmd::Observe {
                    scope: SCOPE.into(),
                },
            )
            .await?;
    }
    let samples = ctx.scaled(1000);
    let t_start = Instant::now();
    let mut rs: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for i in 1..=PROP_WARMUP + samples {
        if t_start.elapsed() > PROP_DEADLINE {
            break;
        }
        let origin = ids[i % k];
        let group = format!("lat{i}");
        let (scope, g) = (SCOPE.to_owned(), group.clone());
        let tj = fleet
            .stamp(origin, Cmd::PropJoin { scope, group: g })
            .await?;
        let joins = seen(&mut fleet, true, &group, k).await?;
        let (scope, g) = (SCOPE.to_owned(), group.clone());
        let tl = fleet
            .stamp(origin, Cmd::PropLeave { scope, group: g })
            .await?;
        let leaves = seen(&mut fleet, false, &group, k).await?;
        let remote = |s: &HashMap<usize, u64>, t0: u64| -> Vec<f64> {
            s.iter()
                .filter(|&(&n, _)| n != origin)
                .map(|(_, &t)| ns_between(t0, t) / 1000.0)
                .collect()
        };
        rs.push((remote(&joins, tj), remote(&leaves, tl)));
    }
    fleet.shutdown().await;
    let measured = &rs[PROP_WARMUP.min(rs.len())..];
    let p = format!("prop.k{k}");
    let mut out = vec![metric(
        format!("{p}.samples"),
        measured.len() as f64,
        "joins",
    )];
    let joins: Vec<Vec<f64>> = measured.iter().map(|(j, _)| j.clone()).collect();
    let leaves: Vec<Vec<f64>> = measured.iter().map(|(_, l)| l.clone()).collect();
    out.extend(prop_stats(&format!("{p}.join"), &joins));
    out.extend(prop_stats(&format!("{p}.leave"), &leaves));
    Ok(out)
}

/// Waits for every node's observer to report `group` (the origin's included, as the harness
/// waits for all K); the stamp per node.
async fn seen(
    fleet: &mut Fleet,
    join: bool,
    group: &str,
    k: usize,
) -> anyhow::Result<HashMap<usize, u64>> {
    let mut got = HashMap::new();
    let t0 = Instant::now();
    while got.len() < k {
        let left = SEEN_LIMIT.saturating_sub(t0.elapsed());
        let (node, ev) = fleet
            .event(left)
            .await
            .with_context(|| format!("waiting for every node to show {group} (join {join})"))?;
        if let Event::Seen {
            join: j,
            group: g,
            t,
        } = ev
            && j == join
            && g == group
        {
            got.insert(node, t);
        }
    }
    Ok(got)
}

/// Per sample: `all_nodes` = the last remote node's latency, `one_node` = every remote one.
fn prop_stats(prefix: &str, per_sample: &[Vec<f64>]) -> Vec<Metric> {
    let mut all: Vec<f64> = per_sample
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().copied().fold(f64::MIN, f64::max))
        .collect();
    let mut one: Vec<f64> = per_sample.iter().flatten().copied().collect();
    if all.is_empty() {
        return Vec::new();
    }
    all.sort_by(f64::total_cmp);
    one.sort_by(f64::total_cmp);
    vec![
        metric(format!("{prefix}.all_nodes.p50"), pct(&all, 50.0), "us"),
        metric(format!("{prefix}.all_nodes.p99"), pct(&all, 99.0), "us"),
        metric(format!("{prefix}.all_nodes.max"), all[all.len() - 1], "us"),
        metric(format!("{prefix}.one_node.p50"), pct(&one, 50.0), "us"),
        metric(format!("{prefix}.one_node.p99"), pct(&one, 99.0), "us"),
    ]
}

/// `bulk.10kg_100k.kK`: every node joins its share at once, then a sentinel; converged when
/// every node lists all K sentinels and every membership. Median of [`BULK_REPS`] rounds.
pub async fn bulk(ctx: &Ctx, k: usize) -> anyhow::Result<Vec<Metric>> {
    let total = ctx.scaled(100_000);
    let mut fleet = ctx.fleet("bulk", k);
    let ids = fleet.cluster(SCOPE, k).await?;
    let mut runs = Vec::new();
    for rep in 0..BULK_REPS {
        let mut step = bulk_round(&mut fleet, &ids, total, ctx.bulk_callers, ctx.bulk_detached)
            .await
            .map(|r| runs.push(r));
        if step.is_ok() && rep + 1 < BULK_REPS {
            step = bulk_clear(&mut fleet, &ids).await;
        }
        if let Err(e) = step {
            let health = health(&mut fleet, &ids).await;
            return Err(e.context(format!("round {}; {health}", rep + 1)));
        }
    }
    // Healthy runs drop no frame and renew nobody: worth seeing when a figure looks off.
    eprintln!(
        "[bench] bulk.k{k} health: {}",
        health(&mut fleet, &ids).await
    );
    fleet.shutdown().await;
    let p = format!("bulk.{}g_{}.k{k}", kname(BULK_GROUPS), kname(total));
    Ok(combine(&runs, &[])
        .into_iter()
        .map(|m| metric(format!("{p}.{}", m.key), m.value, m.unit))
        .collect())
}

/// Splits `total` over `k` nodes as the harness does: `(offset, count)` per node.
pub fn shares(total: usize, k: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (total / k, total % k);
    let mut off = 0;
    (0..k)
        .map(|i| {
            let c = base + usize::from(i < extra);
            let s = (off, c);
            off += c;
            s
        })
        .collect()
}

async fn stats(fleet: &mut Fleet, i: usize) -> anyhow::Result<(u64, u64)> {
    match fleet.call(i, Cmd::Stats).await? {
        Reply::Stats {
            memberships,
            heap_bytes,
            ..
        } => Ok((memberships, heap_bytes)),
        other => bail!("node {i}: expected stats, got {other:?}"),
    }
}

/// The health counters of every node, for a failure message: memberships listed, protocol
/// frames dropped on full peer queues, renewals (declared Down while running), refused
/// messages.
async fn health(fleet: &mut Fleet, ids: &[usize]) -> String {
    let mut parts = Vec::new();
    for &i in ids {
        let part = match fleet.call(i, Cmd::Stats).await {
            Ok(Reply::Stats {
                memberships,
                frames_dropped,
                renewals,
                refused,
                ..
            }) => format!(
                "node {i}: {memberships} memberships, {frames_dropped} frames dropped, \
                 {renewals} renewals, {refused} refused"
            ),
            Ok(other) => format!("node {i}: {other:?}"),
            Err(e) => format!("node {i}: no stats ({e})"),
        };
        parts.push(part);
    }
    parts.join("; ")
}

async fn bulk_round(
    fleet: &mut Fleet,
    ids: &[usize],
    total: usize,
    callers: usize,
    detached: bool,
) -> anyhow::Result<Vec<Metric>> {
    let k = ids.len();
    let shares = shares(total, k);
    for (&i, &(_, count)) in ids.iter().zip(&shares) {
        let scope = SCOPE.to_owned();
        let cmd = Cmd::BulkPrepare {
            scope,
            count,
            nodes: k,
            total,
        };
        fleet.call(i, cmd).await?;
    }
    let (_, heap0) = stats(fleet, ids[0]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = fleet.clock.now();
    for (&i, &(offset, _)) in ids.iter().zip(&shares) {
        let scope = SCOPE.to_owned();
        let groups = BULK_GROUPS;
        fleet.send(
            i,
            &Cmd::BulkGo {
                scope,
                offset,
                groups,
                callers,
                detached,
            },
        )?;
    }
    let limit = Duration::from_secs(300);
    let mut local_done = 0u64;
    for &i in ids {
        match fleet.reply(i, limit).await? {
            Reply::T0 { t } => local_done = local_done.max(t),
            other => bail!("node {i}: expected a stamp, got {other:?}"),
        }
    }
    let mut converged = 0u64;
    let mut seen = 0;
    while seen < k {
        if let (_, Event::Converged { t }) = fleet.event(limit).await? {
            converged = converged.max(t);
            seen += 1;
        }
    }
    let (_, heap1) = stats(fleet, ids[0]).await?;
    let mut verified = true;
    for &i in ids {
        let n = fleet
            .count(
                i,
                Cmd::BulkCount {
                    scope: SCOPE.into(),
                },
            )
            .await?;
        verified &= n == total;
    }
    let conv_ms = ns_between(t0, converged) / 1e6;
    Ok(vec![
        metric("converge".into(), conv_ms, "ms"),
        metric(
            "converge_rate".into(),
            total as f64 / (conv_ms / 1000.0),
            "joins/s",
        ),
        metric(
            "local_joins_done".into(),
            ns_between(t0, local_done) / 1e6,
            "ms",
        ),
        metric(
            "heap_per_node".into(),
            (heap1 as f64 - heap0 as f64) / total as f64,
            "bytes/membership",
        ),
        metric("verified".into(), f64::from(u8::from(verified)), "1=ok"),
    ])
}

/// Ends every bulk process and waits until every node's table is empty again.
async fn bulk_clear(fleet: &mut Fleet, ids: &[usize]) -> anyhow::Result<()> {
    for &i in ids {
        fleet.call(i, Cmd::BulkClear).await?;
    }
    let t0 = Instant::now();
    for &i in ids {
        while stats(fleet, i).await?.0 != 0 {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("node {i} still lists bulk members 60 s after they ended");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// `nodedown.sigkill.10km.kK`: K-1 survivors hold 1,000 members each; a fresh victim holds
/// 10,000 in the same groups and is killed; the time until the last survivor dropped them all.
pub async fn nodedown(ctx: &Ctx, k: usize) -> anyhow::Result<Vec<Metric>> {
    let m = ctx.scaled(10_000);
    let mut fleet = ctx.fleet("nodedown", k);
    let survivors = fleet.cluster(SCOPE, k - 1).await?;
    for &s in &survivors {
        let cmd = Cmd::Hold {
            scope: SCOPE.into(),
            count: ND_SURVIVOR_MEMBERS,
            groups: ND_GROUPS,
        };
        fleet.call(s, cmd).await?;
    }
    let mut lat = Vec::new();
    for _ in 0..ND_TRIALS {
        lat.push(nodedown_trial(&mut fleet, &survivors, m).await?);
    }
    fleet.shutdown().await;
    lat.sort_by(f64::total_cmp);
    let p = format!("nodedown.sigkill.{}m.k{k}", kname(m));
    Ok(vec![
        metric(format!("{p}.trials"), lat.len() as f64, "kills"),
        metric(format!("{p}.median"), pct(&lat, 50.0), "ms"),
        metric(format!("{p}.max"), lat[lat.len() - 1], "ms"),
    ])
}

async fn nodedown_trial(fleet: &mut Fleet, survivors: &[usize], m: usize) -> anyhow::Result<f64> {
    let v = fleet.start(Some(fleet.addr(survivors[0])?)).await?;
    let mut all = survivors.to_vec();
    all.push(v);
    fleet.settle(SCOPE, &all).await?;
    let cmd = Cmd::Hold {
        scope: SCOPE.into(),
        count: m,
        groups: ND_GROUPS,
    };
    fleet.call_within(v, cmd, Duration::from_secs(120)).await?;
    let vaddr = fleet.addr(v)?;
    let t0 = Instant::now();
    for &s in survivors {
        loop {
            let cmd = Cmd::CountFrom {
                scope: SCOPE.into(),
                node: vaddr,
            };
            if fleet.count(s, cmd).await? == m {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("the victim's members did not reach every survivor within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for &s in survivors {
        let cmd = Cmd::WatchDown {
            scope: SCOPE.into(),
            node: vaddr,
            count: m,
        };
        fleet.call(s, cmd).await?;
    }
    let t_kill = fleet.kill(v).await?;
    let mut last = 0u64;
    let mut dropped = 0;
    while dropped < survivors.len() {
        if let (_, Event::Dropped { t }) = fleet.event(Duration::from_secs(30)).await? {
            last = last.max(t);
            dropped += 1;
        }
    }
    for &s in survivors {
        let cmd = Cmd::CountFrom {
            scope: SCOPE.into(),
            node: vaddr,
        };
        let left = fleet.count(s, cmd).await?;
        if left != 0 {
            bail!("node {s} still lists {left} members of the killed node");
        }
    }
    Ok(ns_between(t_kill, last) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_like_the_harness() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(
            shares(100_000, 8).iter().map(|s| s.1).sum::<usize>(),
            100_000
        );
    }

    #[test]
    fn prop_stats_take_the_slowest_remote_node_per_sample() {
        let s = prop_stats("p", &[vec![1.0, 5.0], vec![2.0, 3.0], vec![]]);
        let get = |k: &str| s.iter().find(|m| m.key == k).map(|m| m.value);
        assert_eq!(get("p.all_nodes.p50"), Some(3.0));
        assert_eq!(get("p.all_nodes.max"), Some(5.0));
        assert_eq!(get("p.one_node.p50"), Some(2.0));
    }
}
