//! `meshreg sim`.

use anyhow::{Context, anyhow};
use clap::Args;
use meshreg_membership::Profile;
use meshreg_proptests::groups::{self, Backend, GroupReport, Workload};
use meshreg_proptests::scenario::{self, Boot, MembershipKind, Report, Scenario, SimParams};
use meshreg_proptests::sessions::{self, SessionScenario, SessionWorkload};
use meshreg_proptests::sim::LatencyModel;

/// Flags of `meshreg sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Membership protocol: swim (gossip backend) or mesh (coordinated backend).
    #[arg(long, default_value = "swim", value_parser = parse::<MembershipKind>)]
    membership: MembershipKind,
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Seed of every random choice; the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual seconds to simulate.
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,
    /// One-way latency range in milliseconds, MIN..MAX (or one value).
    #[arg(long, default_value = "0.2..2", value_parser = parse_range)]
    latency_ms: (f64, f64),
    /// Latency model: uniform (each message draws from the range) or per-link (each link has
    /// a fixed latency in the range, with 10% jitter).
    #[arg(long, default_value = "uniform", value_parser = parse_latency_model)]
    latency_model: LatencyModel,
    /// Datagram loss probability, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Datagram duplication probability, 0..1.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Datagram reordering probability, 0..1 (held back up to 3x the max latency).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Timer profile: lan, wan or test.
    #[arg(long, default_value = "lan", value_parser = parse::<Profile>)]
    profile: Profile,
    /// announce (all join in the first second through seeds) or preseed (start converged).
    #[arg(long, default_value = "announce", value_parser = parse::<Boot>)]
    boot: Boot,
    /// Fault: none, crash-one, partition-half or churn; with `--workload sessions`: none,
    /// primary-crash, primary-pause or session-partition.
    #[arg(long, default_value = "none")]
    scenario: String,
    /// Threads used to build preseeded nodes (the event loop itself is single-threaded).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Run a process-group workload on this backend (membership follows: gossip runs on swim,
    /// coordinated on mesh). Without it, only membership is simulated.
    #[arg(long, value_parser = parse::<Backend>)]
    backend: Option<Backend>,
    /// Group workload: number of scopes.
    #[arg(long, default_value_t = 10)]
    scopes: u32,
    /// Group workload: groups per scope.
    #[arg(long, default_value_t = 100)]
    groups: u32,
    /// Group workload: joins to issue (each a fresh local process on a random live node).
    #[arg(long, default_value_t = 20_000)]
    joins: u32,
    /// Group workload: leaves to issue after the joins (of completed joins).
    #[arg(long, default_value_t = 0)]
    leaves: u32,
    /// Group workload: operations per second, cluster-wide.
    #[arg(long, default_value_t = 2_000.0)]
    join_rate: f64,
    /// Coordinated backend: bosses start a partition's term on its first request instead of
    /// when its scope is first used (`NodeBuilder::warm_partitions(false)`).
    #[arg(long)]
    cold_partitions: bool,
    /// Run a session-manager workload (`sessions`) instead of membership or groups alone.
    #[arg(long, value_parser = parse_workload)]
    workload: Option<WorkloadKind>,
    /// Session workload: registrations to issue (lookups and unregisters come on top).
    #[arg(long, default_value_t = 2_000)]
    sessions: u32,
    /// Session workload: nodes with the session role (the last ones).
    #[arg(long, default_value_t = 4)]
    session_nodes: u32,
    /// Session workload: shards.
    #[arg(long, default_value_t = 1024)]
    shards: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn parse<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

/// What `--workload` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorkloadKind {
    /// The session manager's workload and failover scenarios.
    Sessions,
}

fn parse_workload(s: &str) -> Result<WorkloadKind, String> {
    match s {
        "sessions" => Ok(WorkloadKind::Sessions),
        _ => Err(format!("unknown workload {s:?} (expected sessions)")),
    }
}

fn parse_latency_model(s: &str) -> Result<LatencyModel, String> {
    match s {
        "uniform" => Ok(LatencyModel::Uniform),
        "per-link" => Ok(LatencyModel::PerLink),
        _ => Err(format!(
            "unknown latency model {s:?} (expected uniform or per-link)"
        )),
    }
}

/// `A..B` or a single number `A` (meaning `A..A`).
fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("{x:?} is not a number (expected MIN..MAX in ms, e.g. 0.2..2)"))
    };
    match s.split_once("..") {
        Some((a, b)) => Ok((num(a)?, num(b)?)),
        None => num(s).map(|a| (a, a)),
    }
}

/// Runs `meshreg sim`.
pub fn run(a: SimArgs) -> anyhow::Result<()> {
    let membership = match a.backend {
        Some(Backend::Gossip) => MembershipKind::Swim,
        Some(Backend::Coordinated) => MembershipKind::Mesh,
        None => a.membership,
    };
    if a.workload == Some(WorkloadKind::Sessions) {
        return run_sessions(&a, membership);
    }
    let scenario = a.scenario.parse::<Scenario>().map_err(|e| anyhow!(e))?;
    let params = SimParams {
        membership,
        nodes: a.nodes,
        seed: a.seed,
        duration_s: a.duration_s,
        latency_ms: a.latency_ms,
        latency_model: a.latency_model,
        loss: a.loss,
        duplicate: a.duplicate,
        reorder: a.reorder,
        profile: a.profile,
        boot: a.boot,
        scenario,
        threads: a.threads,
    };
    params.validate().map_err(|e| anyhow!(e))?;
    if !a.json {
        eprintln!("simulating: {}", params.replay_command());
    }
    if let Some(backend) = a.backend {
        let w = Workload {
            scopes: a.scopes,
            groups: a.groups,
            joins: a.joins,
            leaves: a.leaves,
            join_rate: a.join_rate,
        };
        w.validate().map_err(|e| anyhow!(e))?;
        let run =
            groups::run_warm(&params, &w, backend, !a.cold_partitions).map_err(|e| anyhow!(e))?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string(&run).context("encoding the report")?
            );
        } else {
            print_table(&run.membership);
            print_groups(backend, &run.groups);
        }
        return Ok(());
    }
    let report = scenario::run(&params).map_err(|e| anyhow!(e))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `meshreg sim --workload sessions`.
fn run_sessions(a: &SimArgs, membership: MembershipKind) -> anyhow::Result<()> {
    let scenario = a
        .scenario
        .parse::<SessionScenario>()
        .map_err(|e| anyhow!(e))?;
    let params = SimParams {
        membership,
        nodes: a.nodes,
        seed: a.seed,
        duration_s: a.duration_s,
        latency_ms: a.latency_ms,
        latency_model: a.latency_model,
        loss: a.loss,
        duplicate: a.duplicate,
        reorder: a.reorder,
        profile: a.profile,
        boot: a.boot,
        scenario: Scenario::None,
        threads: a.threads,
    };
    let w = SessionWorkload {
        sessions: a.sessions,
        rate: a.join_rate,
        session_nodes: a.session_nodes,
        shards: a.shards,
        scenario,
    };
    let r = sessions::run(&params, &w).map_err(|e| anyhow!(e))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).context("encoding the report")?
        );
        return Ok(());
    }
    eprintln!("simulating: {}", r.replay);
    let rows = [
        (
            "nodes / session nodes",
            format!("{} / {}", r.nodes, r.session_nodes),
        ),
        ("shards", r.shards.to_string()),
        (
            "scenario / profile",
            format!("{} / {}", r.scenario, r.profile),
        ),
        (
            "registered (ok)",
            format!("{} ({})", r.sessions_registered, r.registers_ok),
        ),
        ("lookups ok", r.lookups_ok.to_string()),
        (
            "calls failed / unfinished",
            format!("{} / {}", r.calls_failed, r.calls_unfinished),
        ),
        (
            "sessions lost / checked",
            format!("{} / {}", r.sessions_lost, r.sessions_checked),
        ),
        ("stale reads", r.stale_reads.to_string()),
        ("epoch conflicts", r.epoch_conflicts.to_string()),
        (
            "failover (suspicion)",
            format!(
                "{} ({})",
                opt_ms(r.failover_ms),
                opt_ms(Some(r.suspicion_ms))
            ),
        ),
        ("wall", format!("{:.1} s", r.wall_s)),
    ];
    for (k, v) in rows {
        println!("{k:<26} {v}");
    }
    Ok(())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(
        || "-".to_owned(),
        |x| {
            if x < 10.0 {
                format!("{x:.2} ms")
            } else {
                format!("{x:.0} ms")
            }
        },
    )
}

fn print_groups(backend: Backend, g: &GroupReport) {
    let rows = [
        ("backend", backend.to_string()),
        ("joins (ok)", format!("{} ({})", g.joins, g.joins_ok)),
        ("tables converged", g.groups_converged.to_string()),
        ("group convergence", opt_ms(g.convergence_ms)),
        (
            "join visible p50 / p99",
            format!(
                "{} / {}",
                opt_ms(g.join_visible_ms_p50),
                opt_ms(g.join_visible_ms_p99)
            ),
        ),
        ("joins never visible", g.joins_not_visible.to_string()),
        (
            "msgs / bytes per join",
            format!("{:.1} / {:.0}", g.msgs_per_join, g.bytes_per_join),
        ),
        (
            "registry bytes/node/s",
            format!("{:.0}", g.registry_bytes_per_node_per_s),
        ),
        (
            "bytes per membership",
            g.memory_bytes_per_membership
                .map_or("-".into(), |b| format!("{b:.1}")),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<24} {v}");
    }
}

fn print_table(r: &Report) {
    let rows = [
        ("membership", r.membership.to_string()),
        ("nodes", r.nodes.to_string()),
        ("boot / scenario", format!("{} / {}", r.boot, r.scenario)),
        (
            "profile / duration",
            format!("{} / {} s", r.profile, r.duration_s),
        ),
        ("converged at end", r.converged.to_string()),
        (
            "membership convergence",
            opt_ms(r.membership_convergence_ms),
        ),
        ("down detected by all", opt_ms(r.detect_down_ms)),
        ("recovery after fault", opt_ms(r.recovery_ms)),
        ("false downs", r.false_down.to_string()),
        ("msgs / node / s", format!("{:.2}", r.msgs_per_node_per_s)),
        (
            "bytes / node / s",
            format!(
                "{:.0} (max {:.0})",
                r.bytes_per_node_per_s, r.bytes_per_node_per_s_max
            ),
        ),
        (
            "wall / peak RSS",
            format!(
                "{:.1} s / {}",
                r.wall_s,
                r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0} MiB"))
            ),
        ),
        ("trace hash", r.trace_hash.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<24} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_range_parses_both_forms() {
        assert_eq!(parse_range("0.2..2"), Ok((0.2, 2.0)));
        assert_eq!(parse_range("1"), Ok((1.0, 1.0)));
        assert!(parse_range("a..2").is_err());
    }
}
