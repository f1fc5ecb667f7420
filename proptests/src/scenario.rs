//! Cluster scenarios over the simulator: boot, one fault scenario, measurements, a report.
//!
//! This is what `meshreg sim` runs and what the property suites reuse. Every run is a pure
//! function of its [`SimParams`] (wall time and memory aside).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use meshreg_membership::{MembershipCore, Mesh, Profile, Swim};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::sim::{Factory, LatencyModel, NetConfig, Sim};

/// Cluster id every simulated node uses.
pub const SIM_CLUSTER: u32 = 0x4D52_5349;

const SEC: u64 = 1_000_000_000;
const MS: f64 = 1_000_000.0;

/// Which membership core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MembershipKind {
    /// SWIM (foca) with anti-entropy: the gossip backend.
    Swim,
    /// Full mesh: the coordinated backend.
    Mesh,
}

/// How the cluster comes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Boot {
    /// Every node joins within the first second through the seeds (nodes 0, 1, 2).
    Announce,
    /// Start converged, as if restored from a snapshot, timers staggered over one probe period.
    Preseed,
}

/// The fault injected once the cluster has settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No fault.
    None,
    /// One random non-seed node crashes.
    CrashOne,
    /// The cluster splits into two halves (symmetric), then heals.
    PartitionHalf,
    /// Random non-seed nodes restart (new generation) at a steady rate, then churn stops.
    Churn,
}

macro_rules! parse_enum {
    ($t:ty, $what:literal, $($name:literal => $v:expr),+) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($v),)+
                    _ => Err(format!(concat!("unknown ", $what, " {:?} (expected one of: {})"), s, [$($name),+].join(", "))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let name = match self { $(x if *x == $v => $name,)+ _ => "?" };
                f.write_str(name)
            }
        }
    };
}

parse_enum!(MembershipKind, "membership", "swim" => MembershipKind::Swim, "mesh" => MembershipKind::Mesh);
parse_enum!(Boot, "boot mode", "announce" => Boot::Announce, "preseed" => Boot::Preseed);
parse_enum!(Scenario, "scenario", "none" => Scenario::None, "crash-one" => Scenario::CrashOne,
    "partition-half" => Scenario::PartitionHalf, "churn" => Scenario::Churn);

/// Everything a run depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct SimParams {
    /// Which core.
    pub membership: MembershipKind,
    /// Cluster size.
    pub nodes: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Virtual run length in seconds.
    pub duration_s: f64,
    /// One-way latency range in milliseconds.
    pub latency_ms: (f64, f64),
    /// How latency is drawn.
    pub latency_model: LatencyModel,
    /// Datagram loss probability.
    pub loss: f64,
    /// Datagram duplication probability.
    pub duplicate: f64,
    /// Datagram reordering probability.
    pub reorder: f64,
    /// Timer profile.
    pub profile: Profile,
    /// Boot mode.
    pub boot: Boot,
    /// Fault scenario.
    pub scenario: Scenario,
    /// Threads used to build preseeded cores (the event loop is single-threaded).
    pub threads: usize,
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            membership: MembershipKind::Swim,
            nodes: 100,
            seed: 1,
            duration_s: 60.0,
            latency_ms: (0.2, 2.0),
            latency_model: LatencyModel::Uniform,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            profile: Profile::Lan,
            boot: Boot::Announce,
            scenario: Scenario::None,
            threads: 2,
        }
    }
}

impl SimParams {
    /// Checks the parameters; the message names the offending flag.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) && p.is_finite() {
                Ok(())
            } else {
                Err(format!("--{name} must be a probability in 0..1, got {p}"))
            }
        };
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.nodes > 1_000_000 {
            return Err(format!(
                "--nodes {} is above the simulator's limit of 1,000,000",
                self.nodes
            ));
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return Err(format!(
                "--duration-s must be in (0, 86400], got {}",
                self.duration_s
            ));
        }
        let (a, b) = self.latency_ms;
        if !(a.is_finite() && b.is_finite() && a >= 0.0) {
            return Err(format!(
                "--latency-ms must be two non-negative numbers, got {a}..{b}"
            ));
        }
        if a > b {
            return Err(format!(
                "--latency-ms range is inverted: {a}..{b} (use MIN..MAX)"
            ));
        }
        if b > 60_000.0 {
            return Err(format!("--latency-ms maximum {b} is above 60000"));
        }
        prob("loss", self.loss)?;
        prob("duplicate", self.duplicate)?;
        prob("reorder", self.reorder)?;
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        Ok(())
    }

    /// The simulator's network model for these parameters.
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            latency_min_ns: (self.latency_ms.0 * MS) as u64,
            latency_max_ns: (self.latency_ms.1 * MS) as u64,
            latency_model: self.latency_model,
            loss: self.loss,
            duplicate: self.duplicate,
            reorder: self.reorder,
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "meshreg sim --membership {} --nodes {} --seed {} --duration-s {} --latency-ms {}..{} --loss {} --profile {} --boot {} --scenario {}",
            self.membership,
            self.nodes,
            self.seed,
            self.duration_s,
            self.latency_ms.0,
            self.latency_ms.1,
            self.loss,
            self.profile,
            self.boot,
            self.scenario
        )
    }
}

/// What one run measured. Field names are the `meshreg sim --json` contract.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `swim` or `mesh`.
    pub membership: MembershipKind,
    /// Cluster size.
    pub nodes: u32,
    /// The seed.
    pub seed: u64,
    /// Every live node lists exactly every other live node at the end of the run.
    pub converged: bool,
    /// Virtual ms from start until every live node first listed every other live node.
    pub membership_convergence_ms: Option<f64>,
    /// crash-one: virtual ms from the crash until no live node lists the victim.
    pub detect_down_ms: Option<f64>,
    /// Down events about nodes that were never faulted.
    pub false_down: u64,
    /// Messages sent per node per virtual second (run average).
    pub msgs_per_node_per_s: f64,
    /// Bytes sent per node per virtual second (run average; envelope + payload).
    pub bytes_per_node_per_s: f64,
    /// The busiest node's bytes sent per virtual second.
    pub bytes_per_node_per_s_max: f64,
    /// Wall-clock seconds of the whole run, boot included.
    pub wall_s: f64,
    /// Peak resident memory of this process in MiB (VmHWM).
    pub peak_rss_mb: Option<f64>,
    /// Timer profile.
    pub profile: String,
    /// Boot mode.
    pub boot: Boot,
    /// Fault scenario.
    pub scenario: Scenario,
    /// Virtual run length.
    pub duration_s: f64,
    /// Virtual ms from the end of the fault (heal, last churn restart, crash) until converged.
    pub recovery_ms: Option<f64>,
    /// Inputs refused as malformed by a core (0 between honest nodes).
    pub refused: u64,
    /// Hash of the whole event trace: equal for equal parameters.
    pub trace_hash: String,
    /// Command that replays this run.
    pub replay: String,
}

/// Timings a scenario uses, scaled by profile.
struct Phases {
    settle_ns: u64,
    fault_len_ns: u64,
    churn_every_ns: u64,
}

fn phases(p: Profile) -> Phases {
    match p {
        Profile::Lan => Phases {
            settle_ns: 5 * SEC,
            fault_len_ns: 20 * SEC,
            churn_every_ns: 2 * SEC,
        },
        Profile::Wan => Phases {
            settle_ns: 20 * SEC,
            fault_len_ns: 90 * SEC,
            churn_every_ns: 10 * SEC,
        },
        Profile::Test => Phases {
            settle_ns: SEC / 2,
            fault_len_ns: 3 * SEC,
            churn_every_ns: SEC / 4,
        },
    }
}

/// Builds SWIM cores for a cluster of about `n` nodes.
pub fn swim_factory(profile: Profile, n: u32) -> Factory<Swim> {
    Box::new(move |id, seed| Swim::new(id, SIM_CLUSTER, profile, n, seed))
}

/// Builds full-mesh cores.
pub fn mesh_factory(profile: Profile) -> Factory<Mesh> {
    Box::new(move |id, seed| Mesh::new(id, SIM_CLUSTER, profile, seed))
}

/// Runs one scenario and reports.
pub fn run(params: &SimParams) -> Result<Report, String> {
    params.validate()?;
    Ok(match params.membership {
        MembershipKind::Swim => run_with(params, swim_factory(params.profile, params.nodes)),
        MembershipKind::Mesh => run_with(params, mesh_factory(params.profile)),
    })
}

/// The seeds node `i` joins through: nodes 0, 1, 2 (those started before it).
pub fn seeds_for(i: u32) -> Vec<u32> {
    (0..i.min(3)).collect()
}

/// Boots, injects the fault and measures, for any core.
pub fn run_with<C>(params: &SimParams, factory: Factory<C>) -> Report
where
    C: MembershipCore + Send,
    C::Timer: Send,
{
    let started = Instant::now();
    let n = params.nodes;
    let end = (params.duration_s * SEC as f64) as u64;
    let ph = phases(params.profile);
    let mut sim = Sim::new(n, params.seed, params.net_config(), factory);
    let mut rng = SmallRng::seed_from_u64(params.seed ^ 0x5CE4_A210);

    match params.boot {
        Boot::Announce => {
            for i in 0..n {
                sim.start_at(i, u64::from(i) * SEC / u64::from(n), &seeds_for(i));
            }
        }
        Boot::Preseed => {
            let stagger = ns(params.profile.foca_config(n).probe_period);
            sim.preseed_all(stagger, params.threads);
        }
    }
    // First convergence; the fault comes once the cluster settled (or a third of the run).
    let converged_first = sim.run_until_or(end / 3, |s| {
        s.observer().live_count() == n && s.observer().converged()
    });
    let membership_convergence_ms = converged_first.then(|| sim.now() as f64 / MS);
    let fault_at = (sim.now() + ph.settle_ns).min(end);
    sim.run_until(fault_at);

    let victim = if n > 3 { rng.random_range(3..n) } else { n - 1 };
    let mut detect_down_ms = None;
    let mut recovery_from = None;
    match params.scenario {
        Scenario::None => {}
        Scenario::CrashOne => {
            sim.crash(victim);
            let t0 = sim.now();
            if sim.run_until_or(end, |s| s.observer().listers(victim as usize) == 0) {
                detect_down_ms = Some((sim.now() - t0) as f64 / MS);
            }
            recovery_from = Some(t0);
        }
        Scenario::PartitionHalf => {
            let sides = (0..n).map(|i| u8::from(i >= n / 2)).collect();
            sim.partition(sides, vec![(0, 1), (1, 0)]);
            sim.run_until((fault_at + ph.fault_len_ns).min(end));
            sim.heal();
            recovery_from = Some(sim.now());
        }
        Scenario::Churn => {
            let stop = (fault_at + ph.fault_len_ns).min(end);
            while sim.now() + ph.churn_every_ns <= stop {
                sim.run_until(sim.now() + ph.churn_every_ns);
                let v = if n > 3 { rng.random_range(3..n) } else { n - 1 };
                sim.restart(v, &seeds_for(3));
            }
            recovery_from = Some(sim.now());
        }
    }
    let mut recovery_ms = None;
    if let Some(t0) = recovery_from
        && sim.run_until_or(end, |s| s.observer().converged())
    {
        recovery_ms = Some((sim.now() - t0) as f64 / MS);
    }
    sim.run_until(end);

    let times = Times {
        membership_convergence_ms,
        detect_down_ms,
        recovery_ms,
    };
    report(params, &sim, started, times)
}

/// The virtual-time measurements of a run.
pub struct Times {
    /// See [`Report::membership_convergence_ms`].
    pub membership_convergence_ms: Option<f64>,
    /// See [`Report::detect_down_ms`].
    pub detect_down_ms: Option<f64>,
    /// See [`Report::recovery_ms`].
    pub recovery_ms: Option<f64>,
}

/// Builds the membership report of a finished run.
pub fn report<C: MembershipCore>(
    params: &SimParams,
    sim: &Sim<C>,
    started: Instant,
    t: Times,
) -> Report {
    let (n, secs) = (params.nodes, params.duration_s);
    let st = sim.stats();
    let per_node = |x: u64| x as f64 / f64::from(n) / secs;
    Report {
        membership: params.membership,
        nodes: n,
        seed: params.seed,
        converged: sim.observer().converged(),
        membership_convergence_ms: t.membership_convergence_ms,
        detect_down_ms: t.detect_down_ms,
        false_down: sim.observer().false_down,
        msgs_per_node_per_s: per_node(st.msgs),
        bytes_per_node_per_s: per_node(st.bytes),
        bytes_per_node_per_s_max: st.bytes_by_node.iter().copied().max().unwrap_or(0) as f64 / secs,
        wall_s: started.elapsed().as_secs_f64(),
        peak_rss_mb: peak_rss_mb(),
        profile: params.profile.to_string(),
        boot: params.boot,
        scenario: params.scenario,
        duration_s: secs,
        recovery_ms: t.recovery_ms,
        refused: st.refused,
        trace_hash: format!("{:016x}", sim.trace_hash()),
        replay: params.replay_command(),
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Peak resident set of this process in MiB, from `/proc/self/status` (Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_are_named_in_the_error() {
        let ok = SimParams::default();
        assert!(ok.validate().is_ok());
        let e = SimParams {
            nodes: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("--nodes"), "{e}");
        let e = SimParams {
            loss: 1.5,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("--loss"), "{e}");
        let e = SimParams {
            latency_ms: (5.0, 1.0),
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("inverted"), "{e}");
    }

    #[test]
    fn names_parse_and_print_back() {
        for s in ["none", "crash-one", "partition-half", "churn"] {
            assert_eq!(
                s.parse::<Scenario>().map(|x| x.to_string()),
                Ok(s.to_owned())
            );
        }
        assert!("meshy".parse::<MembershipKind>().is_err());
    }
}
