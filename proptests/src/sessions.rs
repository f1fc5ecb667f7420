//! Session-manager workloads over the simulator: calls at a rate from random nodes, a fault in
//! the middle (a primary crashes, pauses, or a session node is cut off), and checks against a
//! reference model of acknowledged state.
//!
//! Every node runs a [`SessionStack`] (membership, a discovery backend, a session manager); the
//! last `session_nodes` nodes have the session role (so the seeds, nodes 0..3, are clients
//! only). Keys are fresh `u64`s, so two processes never race for a key except in deliberate
//! conflicting registrations (which must be answered `Taken` and change nothing). The model
//! holds every acknowledged registration of a process that is still alive, minus acknowledged
//! unregistrations; calls whose outcome is unknown put their key "in flux" (not checked).
//!
//! Checks (the property suites assert them; `meshreg sim --workload sessions` reports them):
//! - `sessions_lost`: model sessions the shard's primary does not hold after the heal phase;
//! - `epoch_conflicts`: a `(shard, epoch)` started by two nodes (two holders in one epoch);
//! - `calls_unfinished` + `calls_failed`: calls of surviving nodes with no definite answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use meshreg_membership::{MembershipCore, NodeId, Profile, mix64};
use meshreg_registry::session::manager::{
    CallId, ManagerConfig, SessionCallError, SessionManager, shard_of,
};
use meshreg_registry::session::{Answer, Outcome, Policy, Role, SessionKey, ShardId};
use meshreg_registry::session_stack::SessionStack;
use meshreg_registry::{Pid, RegistryCore};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::scenario::{MembershipKind, SIM_CLUSTER, SimParams};
use crate::sim::{Factory, Sim};
use crate::stack::Stack;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// The fault of a session run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionScenario {
    /// No fault.
    None,
    /// A primary crashes right after registrations reached it, before it acknowledged them.
    PrimaryCrash,
    /// A primary freezes past its term (it is declared Down), then resumes with its queue.
    PrimaryPause,
    /// A session node is cut off from every other node, then the cut heals.
    SessionPartition,
}

impl std::str::FromStr for SessionScenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "primary-crash" => Ok(Self::PrimaryCrash),
            "primary-pause" => Ok(Self::PrimaryPause),
            "session-partition" => Ok(Self::SessionPartition),
            _ => Err(format!(
                "unknown session scenario {s:?} (expected one of: none, primary-crash, primary-pause, session-partition)"
            )),
        }
    }
}

impl std::fmt::Display for SessionScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::PrimaryCrash => "primary-crash",
            Self::PrimaryPause => "primary-pause",
            Self::SessionPartition => "session-partition",
        })
    }
}

/// The session workload.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionWorkload {
    /// Registrations to issue (other operations come on top, in proportion).
    pub sessions: u32,
    /// Operations per virtual second, cluster-wide.
    pub rate: f64,
    /// Nodes with the session role (the last ones).
    pub session_nodes: u32,
    /// Shards.
    pub shards: u32,
    /// The fault.
    pub scenario: SessionScenario,
}

impl Default for SessionWorkload {
    fn default() -> Self {
        Self {
            sessions: 2_000,
            rate: 400.0,
            session_nodes: 4,
            shards: 1024,
            scenario: SessionScenario::PrimaryCrash,
        }
    }
}

impl SessionWorkload {
    /// Checks the workload against the cluster size; the message names the flag.
    pub fn validate(&self, nodes: u32) -> Result<(), String> {
        if self.session_nodes < 2 || self.session_nodes > nodes {
            return Err(format!(
                "--session-nodes must be in 2..={nodes} (a primary and a standby), got {}",
                self.session_nodes
            ));
        }
        if self.shards == 0 || self.shards > 65_536 {
            return Err(format!(
                "--shards must be in 1..=65536, got {}",
                self.shards
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("--join-rate must be positive, got {}", self.rate));
        }
        Ok(())
    }
}

/// What a session run measured. Field names are the `meshreg sim --json` contract.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionReport {
    /// Shards.
    pub shards: u32,
    /// Cluster size.
    pub nodes: u32,
    /// Nodes with the session role.
    pub session_nodes: u32,
    /// The fault.
    pub scenario: String,
    /// Timer profile.
    pub profile: String,
    /// The seed.
    pub seed: u64,
    /// Registrations issued.
    pub sessions_registered: u64,
    /// Registrations acknowledged `Registered`.
    pub registers_ok: u64,
    /// Lookups answered.
    pub lookups_ok: u64,
    /// Calls of surviving nodes that ended `Unavailable` (no definite answer in time).
    pub calls_failed: u64,
    /// Calls of surviving nodes still unanswered at the end of the run.
    pub calls_unfinished: u64,
    /// Calls refused by a replica or the caller's checks (other than by design).
    pub calls_refused: u64,
    /// Acknowledged sessions of live processes missing from their primary after the heal.
    pub sessions_lost: u64,
    /// Sessions the model holds at the end (the ones checked).
    pub sessions_checked: u64,
    /// Lookups answered with something else than the model held (a missing or other holder).
    pub stale_reads: u64,
    /// Deliberate conflicting registrations that did not answer `Taken` (must be 0).
    pub conflicts_not_refused: u64,
    /// `(shard, epoch)` pairs started by two nodes (must be 0).
    pub epoch_conflicts: u64,
    /// `Lost` notices for sessions the model held.
    pub lost_notices: u64,
    /// Virtual ms from the fault until every shard the victim was primary of answered a
    /// lookup issued after the fault.
    pub failover_ms: Option<f64>,
    /// Shards the victim was primary of.
    pub failover_shards: u64,
    /// The profile's failure-suspicion time for this cluster (SWIM: suspect-to-down; mesh:
    /// heartbeat timeout), in ms: the failover target is this plus 1 s.
    pub suspicion_ms: f64,
    /// Terms started cluster-wide.
    pub terms_started: u64,
    /// Sessions re-asserted cluster-wide.
    pub reasserted: u64,
    /// Session messages refused (malformed, non-member).
    pub session_refused: u64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Command that replays this run.
    pub replay: String,
}

#[derive(Clone, Debug)]
enum Op {
    /// A fresh key for a local process.
    Register {
        key: u64,
        pid: Pid,
    },
    /// A held key, from another node's process: must be `Taken`.
    Conflict {
        key: u64,
        pid: Pid,
    },
    /// By the holder.
    Unregister {
        key: u64,
        pid: Pid,
    },
    /// By a local process that does not hold the key: must be `NotHolder`.
    NotHolder {
        key: u64,
        pid: Pid,
    },
    Lookup {
        key: u64,
    },
    Probe {
        shard: ShardId,
        issued: u64,
    },
}

/// Drives a session workload over a simulation of [`SessionStack`]s.
pub struct SessionDriver {
    w: SessionWorkload,
    rng: SmallRng,
    next_key: u64,
    next_req: CallId,
    ops: u64,
    /// Acknowledged sessions: key -> holder.
    model: BTreeMap<u64, Pid>,
    /// Keys whose state is unknown (a call on them ended without a definite answer).
    flux: BTreeSet<u64>,
    /// Calls in flight: (node, call) -> what.
    inflight: HashMap<(u32, CallId), Op>,
    /// Nodes whose processes no longer count (crashed, paused, cut off): their roots.
    dead: BTreeSet<NodeId>,
    terms: BTreeMap<(ShardId, u64), u32>,
    /// Failover probes: shard -> first time a probe issued after the fault was answered.
    probes: BTreeMap<ShardId, Option<u64>>,
    fault_at: Option<u64>,
    /// Processes per node the workload uses (serials 1..=8).
    r: SessionReport,
}

/// The session nodes of an `n`-node cluster with `k` of them: the last `k`.
pub fn session_indices(n: u32, k: u32) -> std::ops::Range<u32> {
    n.saturating_sub(k)..n
}

/// A key of `shard` (for probes), found by search from a base far from the workload's keys.
pub fn key_in(shard: ShardId, shards: u32) -> u64 {
    let mut k = (1 << 50) | (u64::from(shard.0) << 20);
    while shard_of(&SessionKey::U64(k), shards) != shard {
        k += 1;
    }
    k
}

impl SessionDriver {
    /// A driver.
    pub fn new(w: SessionWorkload, seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed ^ 0x5E55_1045),
            w,
            next_key: 1,
            next_req: 0,
            ops: 0,
            model: BTreeMap::new(),
            flux: BTreeSet::new(),
            inflight: HashMap::new(),
            dead: BTreeSet::new(),
            terms: BTreeMap::new(),
            probes: BTreeMap::new(),
            fault_at: None,
            r: SessionReport::default(),
        }
    }

    /// Virtual time the workload needs at its rate (registrations are 60% of operations).
    pub fn span_ns(&self) -> u64 {
        (f64::from(self.w.sessions) / 0.6 / self.w.rate * 1e9) as u64
    }

    fn counts(&self, i: u32, sim_id: NodeId) -> bool {
        let _ = i;
        !self.dead.contains(&sim_id.root())
    }

    fn live_client<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<SessionStack<M, R>>,
    ) -> Option<u32> {
        let n = sim.len() as u32;
        for _ in 0..16 {
            let i = self.rng.random_range(0..n);
            if sim.observer().is_live(i as usize) && self.counts(i, sim.id(i)) {
                return Some(i);
            }
        }
        None
    }

    fn local_pid<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<SessionStack<M, R>>,
        i: u32,
    ) -> Pid {
        Pid {
            node: sim.id(i).root(),
            serial: self.rng.random_range(1..=8),
        }
    }

    fn random_held(&mut self) -> Option<(u64, Pid)> {
        if self.model.is_empty() {
            return None;
        }
        // Keys are dense from 1: draw until one is held (few tries; else the first held).
        for _ in 0..8 {
            let k = self.rng.random_range(1..self.next_key.max(2));
            if let Some(p) = self.model.get(&k) {
                return Some((k, *p));
            }
        }
        self.model.iter().next().map(|(k, p)| (*k, *p))
    }

    /// Sends `op` from node `i`.
    fn call<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &mut Sim<SessionStack<M, R>>,
        i: u32,
        op: Op,
    ) {
        self.next_req += 1;
        let req = self.next_req;
        let shards = self.w.shards;
        let o2 = op.clone();
        let sent = sim.invoke(i, |stack, now, out| {
            stack.call(now, out, |s, o| match o2 {
                Op::Register { key, pid } | Op::Conflict { key, pid } => {
                    s.register(
                        now,
                        req,
                        SessionKey::U64(key),
                        pid,
                        b"meta",
                        Policy::Reject,
                        o,
                    );
                }
                Op::Unregister { key, pid } | Op::NotHolder { key, pid } => {
                    s.unregister(now, req, SessionKey::U64(key), pid, o);
                }
                Op::Lookup { key } => s.lookup(now, req, SessionKey::U64(key), o),
                Op::Probe { shard, .. } => {
                    s.lookup(now, req, SessionKey::U64(key_in(shard, shards)), o);
                }
            });
        });
        if sent {
            if let Op::Unregister { key, .. } = &op {
                // Until the answer, either state is right.
                self.flux.insert(*key);
            }
            if matches!(op, Op::Register { .. }) {
                self.r.sessions_registered += 1;
            }
            self.inflight.insert((i, req), op);
        }
    }

    /// Issues the operations due by now (the workload started at `start_ns`).
    pub fn issue<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &mut Sim<SessionStack<M, R>>,
        start_ns: u64,
    ) {
        let due = (sim.now().saturating_sub(start_ns) as f64 / 1e9 * self.w.rate) as u64;
        let total = (f64::from(self.w.sessions) / 0.6) as u64;
        while self.ops < due.min(total) {
            self.ops += 1;
            let Some(i) = self.live_client(sim) else {
                continue;
            };
            let r: f64 = self.rng.random();
            let op = if r < 0.6 || self.model.is_empty() {
                let key = self.next_key;
                self.next_key += 1;
                Op::Register {
                    key,
                    pid: self.local_pid(sim, i),
                }
            } else if r < 0.85 {
                let Some((key, _)) = self.random_held() else {
                    continue;
                };
                Op::Lookup { key }
            } else if r < 0.93 {
                let Some((key, pid)) = self.random_held() else {
                    continue;
                };
                let Some(owner) = crate::sim::index_of_node(&pid.node) else {
                    continue;
                };
                if !sim.observer().is_live(owner as usize) || sim.id(owner).root() != pid.node {
                    continue;
                }
                self.call(sim, owner, Op::Unregister { key, pid });
                continue;
            } else if r < 0.97 {
                let Some((key, holder)) = self.random_held() else {
                    continue;
                };
                let pid = self.local_pid(sim, i);
                if pid.node == holder.node {
                    continue;
                }
                Op::Conflict { key, pid }
            } else {
                let Some((key, holder)) = self.random_held() else {
                    continue;
                };
                let pid = self.local_pid(sim, i);
                if pid == holder {
                    continue;
                }
                Op::NotHolder { key, pid }
            };
            self.call(sim, i, op);
        }
    }

    /// Starts failover probes for the shards node `victim` is primary of (in node
    /// `observer_node`'s view).
    fn start_probes<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<SessionStack<M, R>>,
        victim: u32,
        observer_node: u32,
    ) {
        self.fault_at = Some(sim.now());
        let Some(stack) = sim.core(observer_node) else {
            return;
        };
        let p = stack.sessions.placement();
        let vid = sim.id(victim);
        for s in 0..p.shards() {
            if p.primary(ShardId(s)) == Some(vid) {
                self.probes.insert(ShardId(s), None);
            }
        }
        self.r.failover_shards = self.probes.len() as u64;
    }

    /// One lookup per shard still failing over, from `from`.
    fn probe<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &mut Sim<SessionStack<M, R>>,
        from: u32,
    ) {
        let waiting: Vec<ShardId> = self
            .probes
            .iter()
            .filter(|(_, t)| t.is_none())
            .map(|(s, _)| *s)
            .collect();
        let issued = sim.now();
        for shard in waiting {
            self.call(sim, from, Op::Probe { shard, issued });
        }
    }

    /// A node's processes stop counting (crashed, or about to be declared Down).
    pub fn node_gone(&mut self, root: NodeId) {
        self.dead.insert(root);
        self.model.retain(|_, p| p.node != root);
    }

    /// Folds completions, losses and started terms of every node into the model and report.
    pub fn drain<M: MembershipCore, R: RegistryCore>(&mut self, sim: &mut Sim<SessionStack<M, R>>) {
        for i in 0..sim.len() as u32 {
            let id = sim.id(i);
            let counts = self.counts(i, id);
            let Some(stack) = sim.core_mut(i) else {
                continue;
            };
            let done = std::mem::take(&mut stack.completed);
            let lost = std::mem::take(&mut stack.lost);
            for (s, e) in stack.sessions.drain_terms() {
                self.r.terms_started += 1;
                if let Some(prev) = self.terms.insert((s, e), i)
                    && prev != i
                {
                    self.r.epoch_conflicts += 1;
                }
            }
            for (_, key, pid) in lost {
                if let SessionKey::U64(k) = key
                    && self.model.get(&k) == Some(&pid)
                {
                    self.r.lost_notices += 1;
                    self.model.remove(&k);
                }
            }
            for (t, req, result) in done {
                let Some(op) = self.inflight.remove(&(i, req)) else {
                    continue;
                };
                if counts {
                    self.complete(t.as_nanos() as u64, op, result);
                }
            }
        }
    }

    fn complete(&mut self, t_ns: u64, op: Op, result: Result<Outcome, SessionCallError>) {
        let answer = match result {
            Ok(Outcome::One(a)) => a,
            Ok(Outcome::Many(_)) => return,
            Err(SessionCallError::Unavailable(_)) => {
                self.r.calls_failed += 1;
                match op {
                    Op::Register { key, .. } | Op::Unregister { key, .. } => {
                        self.flux.insert(key);
                    }
                    _ => {}
                }
                return;
            }
            Err(_) => {
                self.r.calls_refused += 1;
                return;
            }
        };
        match (op, answer) {
            (Op::Register { key, pid }, Answer::Registered { .. }) => {
                self.r.registers_ok += 1;
                if !self.dead.contains(&pid.node) {
                    self.model.insert(key, pid);
                }
            }
            (Op::Register { key, .. }, _) => {
                // A fresh key is never taken: only a retry racing its own first attempt
                // could see that, which dedupe prevents.
                self.flux.insert(key);
                self.r.calls_refused += 1;
            }
            (Op::Conflict { .. }, Answer::Taken { .. }) => {}
            (Op::Conflict { key, .. }, Answer::NotHolder { .. } | Answer::Registered { .. }) => {
                // Registered is right only if the holder's session had gone meanwhile.
                if self.model.contains_key(&key) && !self.flux.contains(&key) {
                    self.r.conflicts_not_refused += 1;
                }
                self.flux.insert(key);
            }
            (Op::Conflict { .. }, _) => self.r.conflicts_not_refused += 1,
            (Op::Unregister { key, .. }, Answer::Unregistered) => {
                self.model.remove(&key);
                self.flux.remove(&key);
            }
            (Op::Unregister { key, .. }, _) => {
                self.flux.remove(&key);
            }
            (Op::NotHolder { .. }, _) => {}
            (Op::Lookup { key }, Answer::Found(found)) => {
                self.r.lookups_ok += 1;
                // A session of a process that is gone but not yet detected Down is not
                // stale: the cluster cannot know yet.
                let found = found
                    .map(|s| s.pid)
                    .filter(|p| !self.dead.contains(&p.node));
                if !self.flux.contains(&key) && found.as_ref() != self.model.get(&key) {
                    self.r.stale_reads += 1;
                }
            }
            (Op::Probe { shard, issued }, Answer::Found(_)) => {
                self.r.lookups_ok += 1;
                if let (Some(f), Some(slot)) = (self.fault_at, self.probes.get_mut(&shard))
                    && issued >= f
                    && slot.is_none()
                {
                    *slot = Some(t_ns);
                }
            }
            _ => {}
        }
    }

    /// Counts model sessions missing from their primary, in node `from`'s view.
    pub fn check_lost<M: MembershipCore, R: RegistryCore>(
        &mut self,
        sim: &Sim<SessionStack<M, R>>,
        from: u32,
    ) {
        let Some(view) = sim.core(from) else { return };
        let p = view.sessions.placement();
        let mut lost = 0;
        for (&key, &pid) in &self.model {
            if self.flux.contains(&key) || self.dead.contains(&pid.node) {
                continue;
            }
            let k = SessionKey::U64(key);
            let shard = p.shard_of(&k);
            let held = p
                .primary(shard)
                .and_then(|n| crate::sim::index_of_node(&n))
                .and_then(|j| sim.core(j))
                .and_then(|c| c.sessions.replica(shard))
                .filter(|r| r.role() == Role::Primary)
                .and_then(|r| r.peek(&k));
            if held.map(|s| s.pid) != Some(pid) {
                lost += 1;
            }
        }
        self.r.sessions_lost = lost;
        self.r.sessions_checked = self.model.len() as u64;
    }

    /// Calls of counted nodes still in flight.
    fn unfinished<M: MembershipCore, R: RegistryCore>(&self, sim: &Sim<SessionStack<M, R>>) -> u64 {
        self.inflight
            .keys()
            .filter(|(i, _)| sim.core(*i).is_some() && self.counts(*i, sim.id(*i)))
            .count() as u64
    }
}

/// The failure-suspicion time of `profile` for `n` nodes under `membership`, in ms.
pub fn suspicion_ms(profile: Profile, membership: MembershipKind, n: u32) -> f64 {
    match membership {
        MembershipKind::Swim => profile.foca_config(n).suspect_to_down_after.as_secs_f64() * 1e3,
        MembershipKind::Mesh => profile.mesh_heartbeat_timeout().as_secs_f64() * 1e3,
    }
}

/// Session-manager settings for a simulated node.
pub fn manager_config(profile: Profile, shards: u32) -> ManagerConfig {
    ManagerConfig::for_profile(profile, shards)
}

fn with_sessions<M: MembershipCore + 'static, R: RegistryCore + 'static>(
    inner: Factory<Stack<M, R>>,
    profile: Profile,
    n: u32,
    w: &SessionWorkload,
) -> Factory<SessionStack<M, R>> {
    let roles: Vec<_> = session_indices(n, w.session_nodes)
        .map(crate::sim::Sim::<SessionStack<M, R>>::addr)
        .collect();
    let shards = w.shards;
    Box::new(move |id, seed| {
        let mut config = manager_config(profile, shards);
        config.shard.hash_seed = mix64(seed);
        let mut m = SessionManager::new(id, SIM_CLUSTER, config);
        let mut out = Vec::new();
        m.set_session_nodes(Duration::ZERO, roles.iter().copied(), &mut out);
        SessionStack::new(inner(id, seed), m)
    })
}

/// Runs a session workload on the membership `params` names (SWIM with the gossip backend, or
/// the mesh with the coordinated backend).
pub fn run(params: &SimParams, w: &SessionWorkload) -> Result<SessionReport, String> {
    params.validate()?;
    w.validate(params.nodes)?;
    let (profile, n) = (params.profile, params.nodes);
    Ok(match params.membership {
        MembershipKind::Swim => {
            let f = with_sessions(crate::groups::gossip_factory(profile, n), profile, n, w);
            run_with(params, w, f)
        }
        MembershipKind::Mesh => {
            let f = with_sessions(crate::groups::coordinated_factory(profile), profile, n, w);
            run_with(params, w, f)
        }
    })
}

/// The command line that replays a session run.
pub fn replay_command(params: &SimParams, w: &SessionWorkload) -> String {
    format!(
        "meshreg sim --workload sessions --membership {} --nodes {} --seed {} --duration-s {} --latency-ms {}..{} --profile {} --scenario {} --sessions {} --session-nodes {} --shards {} --join-rate {}",
        params.membership,
        params.nodes,
        params.seed,
        params.duration_s,
        params.latency_ms.0,
        params.latency_ms.1,
        params.profile,
        w.scenario,
        w.sessions,
        w.session_nodes,
        w.shards,
        w.rate
    )
}

/// Boots, runs the workload with the fault in its middle, heals, settles and checks.
pub fn run_with<M, R>(
    params: &SimParams,
    w: &SessionWorkload,
    factory: Factory<SessionStack<M, R>>,
) -> SessionReport
where
    M: MembershipCore + Send,
    R: RegistryCore + Send,
    M::Timer: Send,
    R::Timer: Send,
{
    let started = Instant::now();
    let n = params.nodes;
    let mut sim = Sim::new(n, params.seed, params.net_config(), factory);
    let mut rng = SmallRng::seed_from_u64(params.seed ^ 0x5CE4_A210);
    let mut d = SessionDriver::new(w.clone(), params.seed);
    let _ = crate::groups::boot(params, &mut sim);
    // Let the shard map settle and the first terms fill their standbys.
    let start_ns = sim.now() + 2 * SEC;
    sim.run_until(start_ns);
    let span = d.span_ns();
    let suspicion = suspicion_ms(params.profile, params.membership, n);
    let sus_ns = (suspicion * MS as f64) as u64;
    let fault_at = start_ns + span / 2;
    let fault_len = match w.scenario {
        SessionScenario::PrimaryPause => sus_ns * 2 + 3 * SEC,
        SessionScenario::SessionPartition => sus_ns * 2 + 5 * SEC,
        _ => 0,
    };
    let settle = (sus_ns * 4).max(10 * SEC);
    let end = ((params.duration_s * SEC as f64) as u64).max(fault_at + fault_len + settle);
    let roles = session_indices(n, w.session_nodes);
    // The victim: a random session node that is not a seed when possible.
    let candidates: Vec<u32> = roles.clone().filter(|i| *i >= 3.min(n - 1)).collect();
    let victim = candidates[rng.random_range(0..candidates.len())];
    let observer_node = (0..n).find(|i| !roles.contains(i)).unwrap_or(0);
    let (mut faulted, mut healed) = (false, false);
    let step = 5 * MS;
    let probe_every = 20 * MS;
    let mut next_probe = 0;
    while sim.now() < end {
        let now = sim.now();
        if !faulted && now >= fault_at && w.scenario != SessionScenario::None {
            faulted = true;
            d.start_probes(&sim, victim, observer_node);
            let root = sim.id(victim).root();
            match w.scenario {
                SessionScenario::PrimaryCrash => {
                    // Registrations that reach the primary, which dies before acknowledging.
                    for _ in 0..20 {
                        let shard = *d
                            .probes
                            .keys()
                            .nth(d.rng.random_range(0..d.probes.len().max(1)))
                            .unwrap_or(&ShardId(0));
                        let mut key = d.next_key;
                        while shard_of(&SessionKey::U64(key), w.shards) != shard {
                            key += 1;
                        }
                        // Skip the keys passed over: they stay unused (fresh keys only).
                        d.next_key = key + 1;
                        if let Some(i) = d.live_client(&sim).filter(|i| *i != victim) {
                            let pid = d.local_pid(&sim, i);
                            d.call(&mut sim, i, Op::Register { key, pid });
                        }
                    }
                    sim.run_until(now + params.net_config().latency_max_ns.max(MS) / 2 + MS);
                    d.drain(&mut sim);
                    sim.crash(victim);
                    d.node_gone(root);
                }
                SessionScenario::PrimaryPause => {
                    d.node_gone(root);
                    sim.pause(victim, fault_len);
                }
                SessionScenario::SessionPartition => {
                    d.node_gone(root);
                    let sides = (0..n).map(|i| u8::from(i == victim)).collect();
                    sim.partition(sides, vec![(0, 1), (1, 0)]);
                }
                SessionScenario::None => {}
            }
        }
        if faulted && !healed && now >= fault_at + fault_len {
            healed = true;
            if w.scenario == SessionScenario::SessionPartition {
                sim.heal();
            }
        }
        d.issue(&mut sim, start_ns);
        if faulted && now >= next_probe {
            next_probe = now + probe_every;
            d.probe(&mut sim, observer_node);
        }
        sim.run_until(now + step);
        d.drain(&mut sim);
    }
    d.check_lost(&sim, observer_node);
    let mut r = std::mem::take(&mut d.r);
    r.calls_unfinished = d.unfinished(&sim);
    if let Some(f) = d.fault_at {
        let times: Vec<Option<u64>> = d.probes.values().copied().collect();
        if !times.is_empty() && times.iter().all(Option::is_some) {
            let last = times.iter().flatten().max().copied().unwrap_or(f);
            r.failover_ms = Some(last.saturating_sub(f) as f64 / MS as f64);
        }
    }
    for i in 0..n {
        if let Some(c) = sim.core(i) {
            r.reasserted += c.sessions.stats().reasserted;
            r.session_refused += c.refused;
        }
    }
    r.shards = w.shards;
    r.nodes = n;
    r.session_nodes = w.session_nodes;
    r.scenario = w.scenario.to_string();
    r.profile = params.profile.to_string();
    r.seed = params.seed;
    r.suspicion_ms = suspicion;
    r.wall_s = started.elapsed().as_secs_f64();
    r.replay = replay_command(params, w);
    r
}
