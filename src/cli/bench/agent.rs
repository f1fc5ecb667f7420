//! The benchmark agent: one node plus the few operations the multi-node benchmarks ask of it.
//!
//! The controller drives every node through the same [`Cmd`]s whether the node runs in the
//! controller's process (a task, [`Clock::Mono`] stamps) or in its own OS process
//! (`meshreg bench worker`, one JSON line per command on stdin, [`Clock::Wall`] stamps). Each
//! command gets exactly one [`Reply`], in order; [`Event`]s (an observer saw something) are
//! interleaved with replies as they happen. A stamp is nanoseconds on the agent's clock: the
//! controller only subtracts stamps of the same clock (one process, or one host's OS clock, as
//! the Erlang harness does).

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use meshreg::node::Subscription;
use meshreg::registry::groups::{EventKind, GroupEvent};
use meshreg::{Backend, Node, Process, Profile};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The sentinel group of a bulk round.
pub const BULK_DONE: &str = "bulk_done";
/// Prefix of the groups a bulk round fills.
pub const BULK_PREFIX: &str = "bulk";
/// Prefix of the groups the node-down benchmark fills.
pub const ND_PREFIX: &str = "nd";
/// The group the settle probe joins.
pub const PROBE: &str = "probe";

/// Where stamps come from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Nanoseconds since a base instant shared by every agent of one process.
    Mono(Instant),
    /// Nanoseconds since the Unix epoch (CLOCK_REALTIME): comparable across processes of one host.
    Wall,
}

impl Clock {
    /// The current stamp.
    pub fn now(self) -> u64 {
        match self {
            Clock::Mono(base) => base.elapsed().as_nanos() as u64,
            Clock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos() as u64,
        }
    }
}

/// How to start an agent's node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Discovery backend.
    pub backend: Backend,
    /// Timer profile.
    pub profile: Profile,
    /// Cluster secret.
    pub secret: Vec<u8>,
    /// An existing member, none for the first node.
    pub seed: Option<SocketAddrV4>,
    /// Cluster size hint.
    pub expected_size: u32,
    /// Roles of the node (e.g. `session`).
    pub roles: Vec<String>,
}

/// A controller's request to one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Cmd {
    /// Reply `Ok` once the node sees `peers` other live nodes.
    WaitPeers { peers: usize },
    /// Join a probe process to [`PROBE`] (`drop`: end it instead); reply `Ok`.
    Probe { scope: String, drop: bool },
    /// Reply `Count` with the members of `group`.
    GroupSize { scope: String, group: String },
    /// Start the propagation observer of `scope`: every later join (leave) of a `lat*` group
    /// is reported as `Seen` once the node's table lists (no longer lists) the member.
    Observe { scope: String },
    /// A fresh process joins `group`; reply `T0` stamped just before the join call.
    PropJoin { scope: String, group: String },
    /// That process leaves `group`; reply `T0` stamped just before the leave call; the
    /// process then ends.
    PropLeave { scope: String, group: String },
    /// Create `count` idle processes for the next bulk round; arm the convergence watcher
    /// (reported as `Converged` once [`BULK_DONE`] lists `nodes` sentinels and the node holds
    /// `total + nodes` memberships); reply `Ok`.
    BulkPrepare {
        scope: String,
        count: usize,
        nodes: usize,
        total: usize,
    },
    /// Join prepared process `j` to `bulk{(offset + j) % groups}`, one call each, then reply
    /// `T0` with the stamp after the last join, then join a sentinel to [`BULK_DONE`].
    /// `callers` concurrent tasks share the calls, each a contiguous slice of the pids
    /// (1: one sequential caller).
    BulkGo {
        scope: String,
        offset: usize,
        groups: usize,
        callers: usize,
        /// Start each join with `join_detached` instead of awaiting it.
        #[serde(default)]
        detached: bool,
    },
    /// Reply `Count` with the members of every `bulk*` group except the sentinels'.
    BulkCount { scope: String },
    /// End every bulk process; reply `Ok`.
    BulkClear,
    /// Create `count` processes and join process `i` to `nd{i % groups}` (one `join_many` per
    /// group); reply `Ok`.
    Hold {
        scope: String,
        count: usize,
        groups: usize,
    },
    /// Reply `Count` with the memberships of `scope` whose pid lives at `node`.
    CountFrom { scope: String, node: SocketAddrV4 },
    /// Watch `scope` for `count` removals of `node`'s pids; reply `Ok` once armed; `Dropped`
    /// follows when the last one is gone.
    WatchDown {
        scope: String,
        node: SocketAddrV4,
        count: usize,
    },
    /// Reply `Ok` once the node knows `nodes` session-role nodes and a register, lookup and
    /// unregister of a probe key all succeeded (every shard then has a primary in its view).
    SessionsReady { nodes: usize },
    /// Register u64 keys `base..base + count` (policy `Reject`) from `concurrency` concurrent
    /// callers, each with its own process, each call awaited before the caller's next; reply
    /// `Load`.
    SessionRegister {
        base: u64,
        count: u64,
        concurrency: usize,
    },
    /// Look up keys drawn from `base..base + span` at `rate` calls per second (open loop:
    /// issued on schedule whether or not earlier calls answered) for `millis`; reply
    /// `Latencies`.
    SessionLookup {
        base: u64,
        span: u64,
        rate: f64,
        millis: u64,
    },
    /// Reply `Stats`.
    Stats,
    /// Stop the node abruptly (peers detect a failure); reply `T0` stamped just before.
    Crash,
    /// Leave the cluster and stop; reply `Ok`.
    Quit,
}

/// An agent's answer to one [`Cmd`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The node runs at `addr` (sent once, unasked, after start).
    Ready { addr: SocketAddrV4 },
    /// Done.
    Ok,
    /// A stamp.
    T0 { t: u64 },
    /// A count.
    Count { n: usize },
    /// The node's counters that the benchmarks use, and the health counters a failure
    /// message reports (`NodeStats`).
    Stats {
        memberships: u64,
        heap_bytes: u64,
        frames_dropped: u64,
        renewals: u64,
        refused: u64,
    },
    /// A load phase: stamps around it and its call counts.
    Load {
        t0: u64,
        t1: u64,
        ok: u64,
        failed: u64,
    },
    /// Per-call latencies in microseconds, plus failed calls and lookups that found nothing.
    Latencies {
        us: Vec<u32>,
        failed: u64,
        missing: u64,
    },
    /// The command failed.
    Error { msg: String },
}

/// Something an agent's observer saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// The node's table shows the join (`join` true) or leave of `group`.
    Seen { join: bool, group: String, t: u64 },
    /// The bulk round converged on this node.
    Converged { t: u64 },
    /// The watched node's pids are all gone from this node.
    Dropped { t: u64 },
}

/// Everything an agent says, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Out {
    /// The answer to the oldest unanswered command.
    Reply(Reply),
    /// An observation.
    Event(Event),
}

/// Where an agent's output goes.
pub type Emit = Arc<dyn Fn(Out) + Send + Sync>;

/// One node and the processes the benchmarks gave it.
pub struct Agent {
    node: Node,
    clock: Clock,
    emit: Emit,
    prop: Option<Process>,
    probe: Option<Process>,
    bulk: Vec<Process>,
    bulk_sentinel: Option<Process>,
    held: Vec<Process>,
    /// Holders of the sessions registered by `SessionRegister`: alive until the agent stops.
    session_holders: Vec<Process>,
    watchers: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts the node.
    pub async fn start(spec: &NodeSpec, clock: Clock, emit: Emit) -> anyhow::Result<Self> {
        let mut b = Node::builder()
            .listen("127.0.0.1:0".parse()?)
            .backend(spec.backend)
            .profile(spec.profile)
            .secret(spec.secret.clone())
            .cluster("meshreg-bench")
            .expected_size(spec.expected_size);
        for role in &spec.roles {
            b = b.role(role.clone());
        }
        if let Some(seed) = spec.seed {
            b = b.seed(seed.into());
        }
        let node = b.start().await.context("starting a benchmark node")?;
        Ok(Self {
            node,
            clock,
            emit,
            prop: None,
            probe: None,
            bulk: Vec::new(),
            bulk_sentinel: None,
            held: Vec::new(),
            session_holders: Vec::new(),
            watchers: Vec::new(),
        })
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.node.addr()
    }

    /// Serves commands until `Quit`, `Crash` or the end of `cmds`; then stops the node.
    pub async fn serve(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = cmds.recv().await {
            let last = matches!(cmd, Cmd::Quit | Cmd::Crash);
            let reply = match self.handle(cmd).await {
                Ok(r) => r,
                Err(e) => Reply::Error {
                    msg: format!("{e:#}"),
                },
            };
            (self.emit)(Out::Reply(reply));
            if last {
                break;
            }
        }
        self.stop().await;
    }

    async fn stop(&mut self) {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        self.node.shutdown().await;
    }

    async fn handle(&mut self, cmd: Cmd) -> anyhow::Result<Reply> {
        match cmd {
            Cmd::WaitPeers { peers } => {
                while self.node.cluster_members().len() < peers {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(Reply::Ok)
            }
            Cmd::Probe { scope, drop: true } => {
                let _ = scope;
                self.probe = None;
                Ok(Reply::Ok)
            }
            Cmd::Probe { scope, drop: false } => {
                let p = self.node.process();
                self.node.join(&scope, PROBE, p.pid()).await?;
                self.probe = Some(p);
                Ok(Reply::Ok)
            }
            Cmd::GroupSize { scope, group } => Ok(Reply::Count {
                n: self.node.with_members(&scope, &group, |m| m.len()),
            }),
            Cmd::Observe { scope } => {
                let (_, sub) = self.node.monitor_scope(&scope)?;
                let task = tokio::spawn(observe(
                    self.node.clone(),
                    scope,
                    sub,
                    self.clock,
                    self.emit.clone(),
                ));
                self.watchers.push(task);
                Ok(Reply::Ok)
            }
            Cmd::PropJoin { scope, group } => {
                let p = self.node.process();
                let t = self.clock.now();
                self.node.join(&scope, &group, p.pid()).await?;
                self.prop = Some(p);
                Ok(Reply::T0 { t })
            }
            Cmd::PropLeave { scope, group } => {
                let p = self.prop.take().context("no process joined")?;
                let t = self.clock.now();
                self.node.leave(&scope, &group, p.pid()).await?;
                Ok(Reply::T0 { t })
            }
            Cmd::BulkPrepare {
                scope,
                count,
                nodes,
                total,
            } => {
                self.bulk = (0..count).map(|_| self.node.process()).collect();
                self.bulk_sentinel = Some(self.node.process());
                let (_, sub) = self.node.monitor_group(&scope, BULK_DONE)?;
                let want = (total + nodes) as u64;
                let task = tokio::spawn(watch_bulk(
                    self.node.clone(),
                    sub,
                    nodes,
                    want,
                    self.clock,
                    self.emit.clone(),
                ));
                self.watchers.push(task);
                Ok(Reply::Ok)
            }
            Cmd::BulkGo {
                scope,
                offset,
                groups,
                callers,
                detached,
            } => {
                self.bulk_go(&scope, offset, groups, callers, detached)
                    .await
            }
            Cmd::BulkCount { scope } => Ok(Reply::Count {
                n: bulk_count(&self.node, &scope),
            }),
            Cmd::BulkClear => {
                self.bulk.clear();
                self.bulk_sentinel = None;
                Ok(Reply::Ok)
            }
            Cmd::Hold {
                scope,
                count,
                groups,
            } => self.hold(&scope, count, groups).await,
            Cmd::CountFrom { scope, node } => Ok(Reply::Count {
                n: count_from(&self.node, &scope, node),
            }),
            Cmd::WatchDown { scope, node, count } => {
                let (_, sub) = self.node.monitor_scope(&scope)?;
                let task =
                    tokio::spawn(watch_down(sub, node, count, self.clock, self.emit.clone()));
                self.watchers.push(task);
                Ok(Reply::Ok)
            }
            Cmd::SessionsReady { nodes } => self.sessions_ready(nodes).await,
            Cmd::SessionRegister {
                base,
                count,
                concurrency,
            } => self.session_register(base, count, concurrency).await,
            Cmd::SessionLookup {
                base,
                span,
                rate,
                millis,
            } => Ok(session_lookup(&self.node, base, span, rate, millis).await),
            Cmd::Stats => {
                let s = self.node.stats();
                Ok(Reply::Stats {
                    memberships: s.memberships,
                    heap_bytes: s.backend_heap_bytes,
                    frames_dropped: s.protocol_frames_dropped,
                    renewals: s.renewals,
                    refused: s.refused_messages,
                })
            }
            Cmd::Crash => {
                let t = self.clock.now();
                self.node.crash().await;
                Ok(Reply::T0 { t })
            }
            Cmd::Quit => Ok(Reply::Ok),
        }
    }

    async fn bulk_go(
        &mut self,
        scope: &str,
        offset: usize,
        groups: usize,
        callers: usize,
        detached: bool,
    ) -> anyhow::Result<Reply> {
        let names: Arc<[String]> = (0..groups).map(|g| format!("{BULK_PREFIX}{g}")).collect();
        if detached {
            // One caller, as the harness's; yields now and then so the node's own tasks run
            // meanwhile on a current-thread runtime.
            for (j, p) in self.bulk.iter().enumerate() {
                self.node
                    .join_detached(scope, &names[(offset + j) % groups], p.pid())?;
                if j % 256 == 255 {
                    tokio::task::yield_now().await;
                }
            }
        } else if callers <= 1 {
            for (j, p) in self.bulk.iter().enumerate() {
                self.node
                    .join(scope, &names[(offset + j) % groups], p.pid())
                    .await?;
            }
        } else {
            // Caller `c` joins the contiguous slice `c` of the pids, one awaited call each.
            let pids: Vec<meshreg::Pid> = self.bulk.iter().map(Process::pid).collect();
            let chunk = pids.len().div_ceil(callers).max(1);
            let mut tasks = tokio::task::JoinSet::new();
            for (c, slice) in pids.chunks(chunk).enumerate() {
                let (node, names, slice) = (self.node.clone(), names.clone(), slice.to_vec());
                let (scope, first) = (scope.to_owned(), c * chunk);
                tasks.spawn(async move {
                    for (i, pid) in slice.into_iter().enumerate() {
                        let j = first + i;
                        node.join(&scope, &names[(offset + j) % groups], pid)
                            .await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.context("a bulk caller panicked")??;
            }
        }
        let t = self.clock.now();
        let sentinel = self
            .bulk_sentinel
            .as_ref()
            .context("no bulk round prepared")?;
        self.node.join(scope, BULK_DONE, sentinel.pid()).await?;
        Ok(Reply::T0 { t })
    }

    async fn hold(&mut self, scope: &str, count: usize, groups: usize) -> anyhow::Result<Reply> {
        let procs: Vec<Process> = (0..count).map(|_| self.node.process()).collect();
        let mut buckets: Vec<Vec<meshreg::Pid>> = vec![Vec::new(); groups.max(1)];
        for (i, p) in procs.iter().enumerate() {
            buckets[(i + 1) % groups.max(1)].push(p.pid());
        }
        for (g, pids) in buckets.iter().enumerate() {
            if !pids.is_empty() {
                self.node
                    .join_many(scope, &format!("{ND_PREFIX}{g}"), pids)
                    .await?;
            }
        }
        self.held.extend(procs);
        Ok(Reply::Ok)
    }
}

impl Agent {
    async fn sessions_ready(&mut self, nodes: usize) -> anyhow::Result<Reply> {
        use meshreg::node::{ROLES_SCOPE, SESSION_ROLE};
        while self.node.members(ROLES_SCOPE, SESSION_ROLE).len() < nodes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let p = self.node.process();
        let key = u64::MAX - u64::from(self.node.addr().port());
        let s = self.node.sessions();
        s.register(key, p.pid(), meshreg::Policy::Replace).await?;
        let found = s.lookup(key).await?.map(|s| s.pid);
        anyhow::ensure!(found == Some(p.pid()), "probe key read back as {found:?}");
        s.unregister(key, p.pid()).await?;
        Ok(Reply::Ok)
    }

    async fn session_register(
        &mut self,
        base: u64,
        count: u64,
        concurrency: usize,
    ) -> anyhow::Result<Reply> {
        let callers = concurrency.clamp(1, 100_000) as u64;
        let t0 = self.clock.now();
        let mut tasks = Vec::with_capacity(callers as usize);
        for j in 0..callers.min(count) {
            let p = self.node.process();
            let pid = p.pid();
            self.session_holders.push(p);
            let s = self.node.sessions();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut k = base + j;
                while k < base + count {
                    match s.register(k, pid, meshreg::Policy::Reject).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    k += callers;
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await?;
            ok += o;
            failed += f;
        }
        Ok(Reply::Load {
            t0,
            t1: self.clock.now(),
            ok,
            failed,
        })
    }
}

/// Open-loop lookups: every millisecond, the calls due by then are issued as their own tasks
/// (so a slow answer never delays the schedule); each records its latency.
///
/// Each task hands its result over a channel and ends, so its memory is freed as soon as the
/// call completes. Why: holding every task's `JoinHandle` until the end kept every finished
/// task (150 k per node in the default run) allocated, and faulting in that growing heap cost
/// the generator a large share of a core (`clear_page_erms` under the generator thread in a
/// profile), CPU taken from the nodes whose latency is being measured.
async fn session_lookup(node: &Node, base: u64, span: u64, rate: f64, millis: u64) -> Reply {
    /// Latency (µs) and whether the key was found, or `None` for a failed call.
    type Done = Option<(u32, bool)>;
    let s = node.sessions();
    let start = Instant::now();
    let total = (rate * millis as f64 / 1000.0).round() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let mut issued = 0u64;
    let (mut us, mut failed, mut missing) = (Vec::with_capacity(total as usize), 0, 0);
    let mut take = |done: Done, us: &mut Vec<u32>| match done {
        Some((lat, found)) => {
            us.push(lat);
            missing += u64::from(!found);
        }
        None => failed += 1,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while issued < total {
        tick.tick().await;
        while let Ok(done) = rx.try_recv() {
            take(done, &mut us);
        }
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while issued < due {
            let key = base + meshreg::membership::mix64(issued ^ base) % span.max(1);
            let (s, tx) = (s.clone(), tx.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = s.lookup(key).await;
                let lat = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                let _ = tx.send(r.ok().map(|found| (lat, found.is_some())));
            });
            issued += 1;
        }
    }
    // Every task holds a sender: the channel ends once the last call has completed (a task
    // that ended without sending counts as failed below).
    drop(tx);
    while let Some(done) = rx.recv().await {
        take(done, &mut us);
    }
    let answered = us.len() as u64 + failed;
    Reply::Latencies {
        us,
        failed: failed + total.saturating_sub(answered),
        missing,
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Watchers hold node handles: abort them so a dropped agent's node stops.
        for w in &self.watchers {
            w.abort();
        }
    }
}

/// Sum of the members of every bulk group (the sentinels' group excluded).
fn bulk_count(node: &Node, scope: &str) -> usize {
    node.which_groups(scope)
        .iter()
        .filter(|g| g.starts_with(BULK_PREFIX) && g.as_str() != BULK_DONE)
        .map(|g| node.with_members(scope, g, |m| m.len()))
        .sum()
}

/// Memberships of `scope` whose pid lives at `addr`.
fn count_from(node: &Node, scope: &str, addr: SocketAddrV4) -> usize {
    node.which_groups(scope)
        .iter()
        .map(|g| {
            node.with_members(scope, g, |m| {
                m.filter(|x| x.pid.node.addr() == addr).count()
            })
        })
        .sum()
}

/// The propagation observer: stamps each `lat*` join (leave) once the table agrees.
async fn observe(
    node: Node,
    scope: String,
    mut sub: Subscription<GroupEvent>,
    clock: Clock,
    emit: Emit,
) {
    while let Some(e) = sub.recv().await {
        let m = &e.membership;
        if !m.group.as_str().starts_with("lat") {
            continue;
        }
        let join = e.kind == EventKind::Joined;
        let group = m.group.as_str();
        // The harness polls get_members until it agrees with the event; so do we.
        while node.is_member(&scope, group, m.pid) != join {
            tokio::task::yield_now().await;
        }
        let t = clock.now();
        // Report after the tasks this change woke have run: the stamp is taken, and the report
        // (a pipe write that wakes the controller) must not hold up the frames this node is
        // about to send, such as a boss's applies to the other nodes. The harness's observers
        // likewise report with an asynchronous message.
        tokio::task::yield_now().await;
        emit(Out::Event(Event::Seen {
            join,
            group: group.to_owned(),
            t,
        }));
    }
}

/// Reports `Converged` once `nodes` sentinels are listed and the node holds `want`
/// memberships (all of the round's joins plus the sentinels).
async fn watch_bulk(
    node: Node,
    mut sub: Subscription<GroupEvent>,
    nodes: usize,
    want: u64,
    clock: Clock,
    emit: Emit,
) {
    let mut sentinels = 0usize;
    while sentinels < nodes {
        match sub.recv().await {
            Some(e) if e.kind == EventKind::Joined => sentinels += 1,
            Some(_) => {}
            None => return,
        }
    }
    // Gossip may deliver a sentinel before some joins: wait for the count too. Polled at 1 ms
    // (a stats call walks the table's groups), which bounds the error of a seconds-long figure.
    loop {
        if node.stats().memberships >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    emit(Out::Event(Event::Converged { t: clock.now() }));
}

/// Reports `Dropped` once `count` memberships of `addr`'s pids have been removed.
async fn watch_down(
    mut sub: Subscription<GroupEvent>,
    addr: SocketAddrV4,
    count: usize,
    clock: Clock,
    emit: Emit,
) {
    let mut left = count;
    while left > 0 {
        match sub.recv().await {
            Some(e) if e.kind == EventKind::Left && e.membership.pid.node.addr() == addr => {
                left -= 1;
            }
            Some(_) => {}
            None => return,
        }
    }
    emit(Out::Event(Event::Dropped { t: clock.now() }));
}
