//! Process-group workloads over the simulator: both discovery backends, one measurement.
//!
//! A workload issues `joins` joins at `join_rate` per second on random live nodes (each join a
//! fresh local process into a random group of a random scope), then `leaves` leaves of completed
//! joins at the same rate, while an optional fault hits the cluster. It measures how fast joins
//! become visible everywhere, what they cost on the wire, memory per membership, and whether
//! every live node ends with the same table as a plain reference model.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use meshreg_membership::{MembershipCore, NodeId};
use meshreg_registry::groups::{EventKind, GroupName, ScopeName};
use meshreg_registry::{Pid, RegistryCore};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::faults::Fault;
use crate::history::{History, Outcome, Record};
use crate::sim::Sim;
use crate::stack::Stack;

const MS: u64 = 1_000_000;

/// The group workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Scopes.
    pub scopes: u32,
    /// Groups per scope.
    pub groups: u32,
    /// Joins to issue.
    pub joins: u32,
    /// Leaves to issue after the joins (of completed joins).
    pub leaves: u32,
    /// Operations per second, cluster-wide.
    pub join_rate: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            scopes: 10,
            groups: 100,
            joins: 20_000,
            leaves: 0,
            join_rate: 2_000.0,
        }
    }
}

impl Workload {
    /// Checks the workload; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.scopes == 0 || self.groups == 0 {
            return Err("--scopes and --groups must be at least 1".into());
        }
        if self.leaves > self.joins {
            return Err(format!(
                "--leaves {} exceeds --joins {}",
                self.leaves, self.joins
            ));
        }
        if !(self.join_rate.is_finite() && self.join_rate > 0.0) {
            return Err(format!(
                "--join-rate must be positive, got {}",
                self.join_rate
            ));
        }
        Ok(())
    }
}

/// Operations besides fresh joins and leaves, as probabilities per operation issued. Zero (the
/// default, and what `meshreg sim` runs) draws nothing, so a run without a mix is unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpMix {
    /// A join re-joins a pid already in its group (it is then listed once more).
    pub multi_join: f64,
    /// An operation ends a process instead (it leaves every group without a `leave`).
    pub exit: f64,
}

/// What a property adds to a workload run: an operation mix, a fault schedule and a history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Multi-joins and process exits.
    pub mix: OpMix,
    /// Fault steps at virtual ms after the workload starts, in time order (`Wait` is ignored).
    /// When there are any, every fault ends (heal, no loss, crashed nodes restarted) once the
    /// last step and the workload are both done: the heal phase convergence is measured from.
    pub faults: Vec<(u32, Fault)>,
    /// Record the [`History`] of the run (calls, table events, membership facts).
    pub record: bool,
}

impl Plan {
    /// A one-line description for replay messages.
    pub fn describe(&self) -> String {
        format!(
            "multi_join {} exit {} faults {:?}",
            self.mix.multi_join, self.mix.exit, self.faults
        )
    }
}

/// What a group workload measured. Field names are the `meshreg sim --json` contract.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupReport {
    /// Joins issued.
    pub joins: u64,
    /// Joins that completed successfully.
    pub joins_ok: u64,
    /// Every live node holds the same table, equal to the reference model.
    pub groups_converged: bool,
    /// Virtual ms from the last change (or heal) until that held.
    pub convergence_ms: Option<f64>,
    /// Median virtual ms from a join call until every live node lists the member.
    pub join_visible_ms_p50: Option<f64>,
    /// 99th percentile of the same.
    pub join_visible_ms_p99: Option<f64>,
    /// Joins that never became visible on every live node.
    pub joins_not_visible: u64,
    /// Backend messages per join issued.
    pub msgs_per_join: f64,
    /// Backend bytes per join issued.
    pub bytes_per_join: f64,
    /// Backend bytes per node per virtual second.
    pub registry_bytes_per_node_per_s: f64,
    /// Heap bytes of node 0's backend divided by the memberships its table holds.
    pub memory_bytes_per_membership: Option<f64>,
    /// Backend messages refused (malformed, non-member, stale).
    pub registry_refused: u64,
}

type Key = (ScopeName, GroupName, Pid);

struct Pending {
    issued_ns: u64,
    seen: u32,
    visible: bool,
}

/// Drives a group workload over a simulation of [`Stack`]s.
pub struct GroupDriver {
    w: Workload,
    rng: SmallRng,
    scopes: Vec<ScopeName>,
    groups: Vec<GroupName>,
    next_serial: Vec<u64>,
    next_req: u64,
    issued: u64,
    left: u64,
    /// Completed, not yet left joins (candidates for leaves).
    live_joins: Vec<Key>,
    reqs: HashMap<u64, (Key, bool)>,
    pending: HashMap<Key, Pending>,
    visible_ms: Vec<f64>,
    /// Multiset hash per node: sum of key hashes over its table (additive, so counts matter).
    node_digest: Vec<u64>,
    /// The same over the reference model.
    model: HashMap<Key, u32>,
    /// Last virtual time any table or the model changed.
    pub last_change_ns: u64,
    joins_ok: u64,
    mix: OpMix,
    exited: HashSet<Pid>,
    /// Issued operations, joins and leaves (the rate counts both, and exits).
    ops: u64,
    history: Option<History>,
}

fn key_hash(k: &Key) -> u64 {
    let mut h = meshreg_membership::mix64(k.2.serial ^ k.2.node.stable_hash());
    for b in
        k.0.as_str()
            .bytes()
            .chain([0xFF])
            .chain(k.1.as_str().bytes())
    {
        h = meshreg_membership::mix64(h ^ u64::from(b));
    }
    h
}

impl GroupDriver {
    /// A driver for `nodes` nodes.
    pub fn new(w: Workload, nodes: u32, seed: u64) -> Self {
        let scopes = (0..w.scopes)
            .map(|i| ScopeName::new(&format!("scope-{i}")).expect("short"))
            .collect();
        let groups = (0..w.groups)
            .map(|i| GroupName::new(&format!("group-{i}")).expect("short"))
            .collect();
        Self {
            w,
            rng: SmallRng::seed_from_u64(seed ^ 0x6752_4F55_5053),
            scopes,
            groups,
            next_serial: vec![0; nodes as usize],
            next_req: 0,
            issued: 0,
            left: 0,
            live_joins: Vec::new(),
            reqs: HashMap::new(),
            pending: HashMap::new(),
            visible_ms: Vec::new(),
            node_digest: vec![0; nodes as usize],
            model: HashMap::new(),
            last_change_ns: 0,
            joins_ok: 0,
            mix: OpMix::default(),
            exited: HashSet::new(),
            ops: 0,
            history: None,
        }
    }

    /// A driver that also issues the operations of `mix`.
    pub fn with_mix(mut self, mix: OpMix) -> Self {
        self.mix = mix;
        self
    }

    /// Records a [`History`] from now on (membership facts too: see [`Sim::record_members`]).
    pub fn record<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        sim.record_members();
        let answer_delay_ns = sim.net().latency_max_ns;
        self.history.get_or_insert_with(|| History {
            answer_delay_ns,
            ..History::default()
        });
    }

    /// The history recorded so far.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Takes the recorded history.
    pub fn take_history(&mut self) -> Option<History> {
        self.history.take()
    }

    fn note(&mut self, t_ns: u64, r: Record) {
        if let Some(h) = self.history.as_mut() {
            h.push(t_ns, r);
        }
    }

    /// The reference model: occurrences per membership of the calls that completed.
    pub fn model(&self) -> &HashMap<Key, u32> {
        &self.model
    }

    /// Virtual time the workload needs at its rate.
    pub fn span_ns(&self) -> u64 {
        (f64::from(self.w.joins + self.w.leaves) / self.w.join_rate * 1e9) as u64
    }

    /// Issues the operations due by now (the workload started at `start_ns`).
    pub fn issue<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &mut Sim<Stack<M, R>>,
        start_ns: u64,
    ) {
        let due = ((sim.now().saturating_sub(start_ns)) as f64 / 1e9 * self.w.join_rate) as u64;
        let total = u64::from(self.w.joins + self.w.leaves);
        while self.ops < due.min(total) {
            let joining = self.ops < u64::from(self.w.joins);
            if !joining && self.live_joins.is_empty() {
                break;
            }
            self.ops += 1;
            let r = if self.mix == OpMix::default() {
                1.0
            } else {
                self.rng.random::<f64>()
            };
            if r < self.mix.exit {
                self.exit_one(sim);
            } else if joining && r < self.mix.exit + self.mix.multi_join {
                self.join_again(sim);
            } else if joining {
                self.join_fresh(sim);
            } else {
                self.leave_one(sim);
            }
        }
    }

    fn live_node<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<Stack<M, R>>,
    ) -> Option<u32> {
        let n = sim.len() as u32;
        (0..8)
            .map(|_| self.rng.random_range(0..n))
            .find(|i| sim.observer().is_live(*i as usize))
    }

    /// Joins a fresh local process of a random live node to a random group.
    pub fn join_fresh<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        self.issued += 1;
        let Some(i) = self.live_node(sim) else { return };
        let scope = self.scopes[self.rng.random_range(0..self.scopes.len())].clone();
        let group = self.groups[self.rng.random_range(0..self.groups.len())].clone();
        self.next_serial[i as usize] += 1;
        let pid = Pid {
            node: sim.id(i).root(),
            serial: self.next_serial[i as usize],
        };
        self.pending.insert(
            (scope.clone(), group.clone(), pid),
            Pending {
                issued_ns: sim.now(),
                seen: 0,
                visible: false,
            },
        );
        self.call_join(sim, i, (scope, group, pid));
    }

    /// Joins a completed membership's pid to the same group once more (a multi-join).
    pub fn join_again<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        self.issued += 1;
        let Some((i, key)) = self.pick_owned(sim) else {
            return;
        };
        self.call_join(sim, i, key);
    }

    fn call_join<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &mut Sim<Stack<M, R>>,
        i: u32,
        key: Key,
    ) {
        self.next_req += 1;
        let req = self.next_req;
        self.reqs.insert(req, (key.clone(), true));
        let call = Record::Call {
            req,
            node: i,
            key: key.clone(),
            join: true,
        };
        self.note(sim.now(), call);
        let (scope, group, pid) = key;
        sim.invoke(i, |stack, now, out| {
            stack.call(now, out, |r, o| {
                r.join(now, req, &scope, &group, pid, b"", o)
            });
        });
    }

    /// A random completed membership whose owner runs as the pid's node, with the owner.
    fn pick_owned<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<Stack<M, R>>,
    ) -> Option<(u32, Key)> {
        if self.live_joins.is_empty() {
            return None;
        }
        let key = self.live_joins[self.rng.random_range(0..self.live_joins.len())].clone();
        let i = crate::sim::index_of_node(&key.2.node)?;
        (sim.observer().is_live(i as usize) && sim.id(i).root() == key.2.node).then_some((i, key))
    }

    /// Ends the process of a random completed membership: it leaves every group.
    pub fn exit_one<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        let Some((i, (_, _, pid))) = self.pick_owned(sim) else {
            return;
        };
        self.exited.insert(pid);
        self.live_joins.retain(|k| k.2 != pid);
        self.model.retain(|k, _| k.2 != pid);
        self.last_change_ns = self.last_change_ns.max(sim.now());
        self.note(sim.now(), Record::Exit { node: i, pid });
        sim.invoke(i, |stack, now, out| {
            stack.call(now, out, |r, o| r.process_exit(now, pid, o));
        });
    }

    /// Leaves one occurrence of a random completed membership, on its owner.
    pub fn leave_one<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        self.left += 1;
        if self.live_joins.is_empty() {
            return;
        }
        let k = self.rng.random_range(0..self.live_joins.len());
        let key = self.live_joins.swap_remove(k);
        let Some(i) = crate::sim::index_of_node(&key.2.node) else {
            return;
        };
        if !sim.observer().is_live(i as usize) || sim.id(i).root() != key.2.node {
            return;
        }
        self.next_req += 1;
        let req = self.next_req;
        self.reqs.insert(req, (key.clone(), false));
        let call = Record::Call {
            req,
            node: i,
            key: key.clone(),
            join: false,
        };
        self.note(sim.now(), call);
        let (scope, group, pid) = key;
        sim.invoke(i, |stack, now, out| {
            stack.call(now, out, |r, o| r.leave(now, req, &scope, &group, pid, o));
        });
    }

    /// Folds every node's logged table events and completions into the measurements.
    pub fn drain<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<Stack<M, R>>) {
        if let Some(h) = self.history.as_mut() {
            h.members(sim.drain_members());
        }
        let live = sim.observer().live_count();
        for i in 0..sim.len() as u32 {
            let Some(stack) = sim.core_mut(i) else {
                continue;
            };
            let log = std::mem::take(&mut stack.log);
            let done = std::mem::take(&mut stack.completed);
            for (t, e) in log {
                let t_ns = t.as_nanos() as u64;
                self.last_change_ns = self.last_change_ns.max(t_ns);
                let m = e.membership;
                let key = (m.scope, m.group, m.pid);
                if let Some(h) = self.history.as_mut() {
                    let joined = e.kind == EventKind::Joined;
                    let key = key.clone();
                    h.push(
                        t_ns,
                        Record::Table {
                            node: i,
                            key,
                            joined,
                        },
                    );
                }
                let h = key_hash(&key);
                let d = &mut self.node_digest[i as usize];
                match e.kind {
                    EventKind::Joined => {
                        *d = d.wrapping_add(h);
                        if let Some(p) = self.pending.get_mut(&key) {
                            p.seen += 1;
                            if !p.visible && p.seen >= live {
                                p.visible = true;
                                self.visible_ms
                                    .push((t_ns - p.issued_ns) as f64 / MS as f64);
                            }
                        }
                    }
                    EventKind::Left => *d = d.wrapping_sub(h),
                }
            }
            for (t, req, result) in done {
                let Some((key, is_join)) = self.reqs.remove(&req) else {
                    continue;
                };
                let outcome = match &result {
                    Ok(()) => Outcome::Ok,
                    Err(meshreg_registry::CallError::Unavailable(_)) => Outcome::Unavailable,
                    Err(_) => Outcome::Refused,
                };
                if let Some(h) = self.history.as_mut() {
                    h.push(t.as_nanos() as u64, Record::Done { req, outcome });
                }
                if result.is_err() {
                    continue;
                }
                self.last_change_ns = self.last_change_ns.max(t.as_nanos() as u64);
                if is_join && self.exited.contains(&key.2) {
                    // Completed after its process ended: the backend leaves it again.
                    self.joins_ok += 1;
                } else if is_join {
                    self.joins_ok += 1;
                    *self.model.entry(key.clone()).or_insert(0) += 1;
                    self.live_joins.push(key);
                } else if let Some(c) = self.model.get_mut(&key) {
                    *c -= 1;
                    if *c == 0 {
                        self.model.remove(&key);
                    }
                }
            }
        }
    }

    /// A crashed node's processes are gone: drop them from the model, and reset its digest.
    pub fn node_crashed(&mut self, node: NodeId, index: u32) {
        let root = node.root();
        self.model.retain(|k, _| k.2.node != root);
        self.live_joins.retain(|k| k.2.node != root);
        self.node_digest[index as usize] = 0;
    }

    fn model_digest(&self) -> u64 {
        self.model.iter().fold(0u64, |d, (k, c)| {
            d.wrapping_add(key_hash(k).wrapping_mul(u64::from(*c)))
        })
    }

    /// Whether every live node's table digest equals the reference model's.
    pub fn converged<M: MembershipCore, R: RegistryCore>(&self, sim: &Sim<Stack<M, R>>) -> bool {
        let want = self.model_digest();
        (0..sim.len()).all(|i| !sim.observer().is_live(i) || self.node_digest[i] == want)
    }

    /// The report, with traffic from the simulator's counters.
    pub fn report<M: MembershipCore, R: RegistryCore>(
        &self,
        sim: &Sim<Stack<M, R>>,
        secs: f64,
        kinds: &[usize],
    ) -> GroupReport {
        let mut v = self.visible_ms.clone();
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize]);
        let st = sim.stats();
        let msgs: u64 = kinds.iter().map(|k| st.msgs_by_kind[*k]).sum();
        let bytes: u64 = kinds.iter().map(|k| st.bytes_by_kind[*k]).sum();
        let joins = self.issued.max(1) as f64;
        let mem = sim.core(0).and_then(|s| {
            let n = s.registry.table().membership_count();
            (n > 0).then(|| s.registry.heap_bytes() as f64 / n as f64)
        });
        GroupReport {
            joins: self.issued,
            joins_ok: self.joins_ok,
            groups_converged: self.converged(sim),
            convergence_ms: None,
            join_visible_ms_p50: pct(0.5),
            join_visible_ms_p99: pct(0.99),
            joins_not_visible: self.pending.values().filter(|p| !p.visible).count() as u64,
            msgs_per_join: msgs as f64 / joins,
            bytes_per_join: bytes as f64 / joins,
            registry_bytes_per_node_per_s: bytes as f64 / sim.len() as f64 / secs,
            memory_bytes_per_membership: mem,
            registry_refused: (0..sim.len() as u32)
                .filter_map(|i| sim.core(i))
                .map(|s| s.refused)
                .sum(),
        }
    }
}

/// How often the driver issues operations and drains logs (virtual time).
pub const STEP: Duration = Duration::from_millis(5);

/// Boots a cluster of stacks, runs the workload with the scenario's fault in the middle of it,
/// and reports both membership and group figures. `kinds` are the envelope kinds counted as
/// backend traffic.
pub fn run_groups_with<M, R>(
    params: &crate::scenario::SimParams,
    w: &Workload,
    factory: crate::sim::Factory<Stack<M, R>>,
    kinds: &[usize],
) -> (crate::scenario::Report, GroupReport)
where
    M: MembershipCore + Send,
    R: RegistryCore + Send,
    M::Timer: Send,
    R::Timer: Send,
{
    let (m, g, _) = run_plan_with(params, w, &Plan::default(), factory, kinds);
    (m, g)
}

/// Boots a cluster the way `params` says and runs until membership converged (or a third of
/// the run). Returns the virtual ms it took, if it converged.
pub fn boot<C: MembershipCore + Send>(
    params: &crate::scenario::SimParams,
    sim: &mut Sim<C>,
) -> Option<f64>
where
    C::Timer: Send,
{
    use crate::scenario::{Boot, seeds_for};
    let n = params.nodes;
    let sec = 1_000_000_000u64;
    let end = (params.duration_s * sec as f64) as u64;
    match params.boot {
        Boot::Announce => {
            for i in 0..n {
                sim.start_at(i, u64::from(i) * sec / u64::from(n), &seeds_for(i));
            }
        }
        Boot::Preseed => {
            let stagger = params.profile.foca_config(n).probe_period.as_nanos() as u64;
            sim.preseed_all(stagger, params.threads);
        }
    }
    let up = sim.run_until_or(end / 3, |s| {
        s.observer().live_count() == n && s.observer().converged()
    });
    up.then(|| sim.now() as f64 / MS as f64)
}

/// [`run_groups_with`] plus a [`Plan`]; returns the history if the plan records one.
pub fn run_plan_with<M, R>(
    params: &crate::scenario::SimParams,
    w: &Workload,
    plan: &Plan,
    factory: crate::sim::Factory<Stack<M, R>>,
    kinds: &[usize],
) -> (crate::scenario::Report, GroupReport, Option<History>)
where
    M: MembershipCore + Send,
    R: RegistryCore + Send,
    M::Timer: Send,
    R::Timer: Send,
{
    use crate::scenario::{Scenario, Times, report};
    let started = std::time::Instant::now();
    let n = params.nodes;
    let sec = 1_000_000_000u64;
    let end = (params.duration_s * sec as f64) as u64;
    let mut sim = Sim::new(n, params.seed, params.net_config(), factory);
    let mut rng = SmallRng::seed_from_u64(params.seed ^ 0x5CE4_A210);
    let mut d = GroupDriver::new(w.clone(), n, params.seed).with_mix(plan.mix.clone());
    if plan.record {
        d.record(&mut sim);
    }
    let membership_convergence_ms = boot(params, &mut sim);
    let start_ns = sim.now() + sec;
    sim.run_until(start_ns);
    let span = d.span_ns();
    let fault_at = start_ns + span / 2;
    let fault_len = match params.profile {
        meshreg_membership::Profile::Lan => 20 * sec,
        meshreg_membership::Profile::Wan => 90 * sec,
        meshreg_membership::Profile::Test => 3 * sec,
    };
    let victim = if n > 3 { rng.random_range(3..n) } else { n - 1 };
    let (mut faulted, mut healed_at) = (false, None::<u64>);
    // The plan's steps, then its heal (if it has steps).
    let mut steps = plan.faults.iter().peekable();
    let plan_heal_at = plan
        .faults
        .last()
        .map(|(ms, _)| (start_ns + u64::from(*ms) * MS).max(start_ns + span));
    let mut plan_healed = plan_heal_at.is_none().then_some(0u64);
    let mut detect_down_ms = None;
    let mut conv_at = None;
    let step = STEP.as_nanos() as u64;
    while sim.now() < end {
        let now = sim.now();
        while let Some((ms, f)) = steps.next_if(|(ms, _)| start_ns + u64::from(*ms) * MS <= now) {
            let _ = ms;
            if let Some((i, id)) = crate::faults::apply_step(&mut sim, f) {
                d.node_crashed(id, i);
            }
        }
        if plan_healed.is_none() && plan_heal_at.is_some_and(|h| now >= h) {
            crate::faults::heal_all(&mut sim);
            plan_healed = Some(now);
        }
        if !faulted && now >= fault_at {
            faulted = true;
            match params.scenario {
                Scenario::CrashOne => {
                    let id = sim.id(victim);
                    sim.crash(victim);
                    d.node_crashed(id, victim);
                    healed_at = Some(now);
                }
                Scenario::PartitionHalf => {
                    sim.partition(
                        (0..n).map(|i| u8::from(i >= n / 2)).collect(),
                        vec![(0, 1), (1, 0)],
                    );
                }
                Scenario::None | Scenario::Churn => healed_at = Some(now),
            }
        }
        if faulted && healed_at.is_none() && now >= fault_at + fault_len {
            sim.heal();
            healed_at = Some(now);
        }
        if faulted
            && detect_down_ms.is_none()
            && params.scenario == Scenario::CrashOne
            && sim.observer().listers(victim as usize) == 0
        {
            detect_down_ms = Some((now - fault_at) as f64 / MS as f64);
        }
        d.issue(&mut sim, start_ns);
        sim.run_until(now + step);
        d.drain(&mut sim);
        let workload_done = sim.now() >= start_ns + span;
        if let (Some(h), Some(p)) = (healed_at, plan_healed)
            && workload_done
            && conv_at.is_none()
            && d.converged(&sim)
        {
            let reference = h.max(p).max(start_ns + span);
            conv_at = Some((sim.now().saturating_sub(reference)) as f64 / MS as f64);
        }
    }
    let times = Times {
        membership_convergence_ms,
        detect_down_ms,
        recovery_ms: None,
    };
    let membership = report(params, &sim, started, times);
    let mut g = d.report(&sim, params.duration_s, kinds);
    g.convergence_ms = conv_at;
    (membership, g, d.take_history())
}

/// Builds gossip stacks (SWIM membership, CRDT groups) for a cluster of about `n` nodes.
pub fn gossip_factory(
    profile: meshreg_membership::Profile,
    n: u32,
) -> crate::sim::Factory<Stack<meshreg_membership::Swim, meshreg_registry::crdt::GossipGroups>> {
    use crate::scenario::SIM_CLUSTER;
    Box::new(move |id, seed| {
        Stack::new(
            meshreg_membership::Swim::new(id, SIM_CLUSTER, profile, n, seed),
            meshreg_registry::crdt::GossipGroups::new(
                id,
                SIM_CLUSTER,
                profile,
                meshreg_membership::mix64(seed),
            ),
        )
    })
}

/// Builds coordinated stacks (full mesh, boss-coordinated groups).
pub fn coordinated_factory(
    profile: meshreg_membership::Profile,
) -> crate::sim::Factory<
    Stack<meshreg_membership::Mesh, meshreg_registry::coordinated::CoordinatedGroups>,
> {
    coordinated_factory_with(profile, true)
}

/// Like [`coordinated_factory`], with `warm_terms` (bosses start the terms of a scope's
/// partitions when it is first used) on or off.
pub fn coordinated_factory_with(
    profile: meshreg_membership::Profile,
    warm_terms: bool,
) -> crate::sim::Factory<
    Stack<meshreg_membership::Mesh, meshreg_registry::coordinated::CoordinatedGroups>,
> {
    use crate::scenario::SIM_CLUSTER;
    use meshreg_registry::coordinated::{CoordinatedConfig, CoordinatedGroups};
    Box::new(move |id, seed| {
        let config = CoordinatedConfig {
            warm_terms,
            ..CoordinatedConfig::for_profile(profile)
        };
        Stack::new(
            meshreg_membership::Mesh::new(id, SIM_CLUSTER, profile, seed),
            CoordinatedGroups::with_config(id, SIM_CLUSTER, config),
        )
    })
}

/// Which discovery backend runs (membership follows: gossip on SWIM, coordinated on the mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Boss-node coordinated groups over the full mesh.
    Coordinated,
    /// CRDT gossip groups over SWIM.
    Gossip,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "coordinated" => Ok(Self::Coordinated),
            "gossip" => Ok(Self::Gossip),
            _ => Err(format!(
                "unknown backend {s:?} (expected coordinated or gossip)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Coordinated => "coordinated",
            Self::Gossip => "gossip",
        })
    }
}

/// One object with every field of a group run: membership figures, `backend`, group figures.
/// `converged` is true only if membership converged *and* every live node's table equals the
/// reference model.
#[derive(Clone, Debug, Serialize)]
pub struct GroupRun {
    /// Membership figures.
    #[serde(flatten)]
    pub membership: crate::scenario::Report,
    /// The backend.
    pub backend: Backend,
    /// Membership alone converged at the end (`converged` also requires the tables to).
    pub membership_converged: bool,
    /// Group figures.
    #[serde(flatten)]
    pub groups: GroupReport,
}

/// Runs a group workload on `backend`.
pub fn run(
    params: &crate::scenario::SimParams,
    w: &Workload,
    backend: Backend,
) -> Result<GroupRun, String> {
    run_plan(params, w, &Plan::default(), backend).map(|(run, _)| run)
}

/// [`run`] with the coordinated backend's `warm_terms` set (no effect on gossip).
pub fn run_warm(
    params: &crate::scenario::SimParams,
    w: &Workload,
    backend: Backend,
    warm_terms: bool,
) -> Result<GroupRun, String> {
    run_plan_warm(params, w, &Plan::default(), backend, warm_terms).map(|(run, _)| run)
}

/// Runs a group workload with a [`Plan`] on `backend`; the history if the plan records one.
pub fn run_plan(
    params: &crate::scenario::SimParams,
    w: &Workload,
    plan: &Plan,
    backend: Backend,
) -> Result<(GroupRun, Option<History>), String> {
    run_plan_warm(params, w, plan, backend, true)
}

/// [`run_plan`] with the coordinated backend's `warm_terms` set (no effect on gossip).
pub fn run_plan_warm(
    params: &crate::scenario::SimParams,
    w: &Workload,
    plan: &Plan,
    backend: Backend,
    warm_terms: bool,
) -> Result<(GroupRun, Option<History>), String> {
    use crate::scenario::MembershipKind;
    use meshreg_membership::wire::Kind;
    params.validate()?;
    w.validate()?;
    let (profile, n) = (params.profile, params.nodes);
    let (mut membership, groups, history) = match backend {
        Backend::Gossip => {
            if params.membership != MembershipKind::Swim {
                return Err("--backend gossip runs on --membership swim".into());
            }
            let factory = gossip_factory(profile, n);
            run_plan_with(params, w, plan, factory, &[Kind::Groups as usize])
        }
        Backend::Coordinated => {
            if params.membership != MembershipKind::Mesh {
                return Err("--backend coordinated runs on --membership mesh".into());
            }
            let factory = coordinated_factory_with(profile, warm_terms);
            run_plan_with(params, w, plan, factory, &[Kind::Boss as usize])
        }
    };
    let membership_converged = membership.converged;
    membership.converged &= groups.groups_converged;
    let run = GroupRun {
        membership,
        backend,
        membership_converged,
        groups,
    };
    Ok((run, history))
}
