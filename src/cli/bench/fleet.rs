//! The controller's side of the multi-node benchmarks: a set of benchmark nodes, each an
//! [`Agent`] either in this process (a task) or in its own OS process (`meshreg bench worker`,
//! this binary re-executed), driven through the same [`Cmd`]s.
//!
//! Child processes are killed (SIGKILL) and reaped whenever their handle is dropped: on every
//! exit path of the controller, a panic included. A child also exits on its own when its stdin
//! closes, so even a killed controller leaves no orphan running.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use meshreg::{Backend, Profile};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::agent::{Agent, Clock, Cmd, Emit, Event, NodeSpec, Out, Reply};
use crate::cli::sim::parse;

/// Environment variable carrying the cluster secret (hex) to a worker.
const SECRET_ENV: &str = "MESHREG_BENCH_SECRET";

/// How long a worker may take to start its node.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of the hidden `meshreg bench worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Discovery backend.
    #[arg(long, value_parser = parse::<Backend>)]
    backend: Backend,
    /// Timer profile.
    #[arg(long, value_parser = parse::<Profile>)]
    profile: Profile,
    /// An existing member to join through.
    #[arg(long)]
    seed: Option<SocketAddrV4>,
    /// Cluster size hint.
    #[arg(long, default_value_t = 8)]
    expected_size: u32,
    /// A role of the node (repeatable).
    #[arg(long)]
    role: Vec<String>,
    /// Worker threads of the node's tokio runtime; 0 = a current-thread runtime.
    #[arg(long, default_value_t = DEFAULT_WORKER_THREADS)]
    threads: u16,
}

/// Worker threads of a worker process's runtime unless told otherwise: two, as the Erlang
/// nodes of the reference harness run two schedulers each.
pub const DEFAULT_WORKER_THREADS: u16 = 2;

/// Runs one benchmark node driven by JSON lines on stdin; answers on stdout.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let secret = std::env::var(SECRET_ENV)
        .ok()
        .and_then(|h| from_hex(&h))
        .with_context(|| format!("{SECRET_ENV} must hold the cluster secret in hex"))?;
    let spec = NodeSpec {
        backend: args.backend,
        profile: args.profile,
        secret,
        seed: args.seed,
        expected_size: args.expected_size,
        roles: args.role,
    };
    // A current-thread runtime runs every task of the node on one thread: no wake-up crosses
    // threads, which shortens each message hop when the cores are shared by many nodes.
    let rt = match args.threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let emit: Emit = Arc::new(move |out: Out| {
        if let Ok(line) = serde_json::to_string(&out) {
            let mut o = stdout.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    });
    rt.block_on(async move {
        let agent = Agent::start(&spec, Clock::Wall, emit.clone()).await?;
        emit(Out::Reply(Reply::Ready { addr: agent.addr() }));
        let (tx, rx) = mpsc::unbounded_channel();
        let errors = emit.clone();
        // Blocking stdin reads on their own thread; end of input ends the agent.
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Cmd>(&line) {
                    Ok(cmd) => {
                        if tx.send(cmd).is_err() {
                            break;
                        }
                    }
                    Err(e) => errors(Out::Reply(Reply::Error {
                        msg: format!("bad command {line:?}: {e}"),
                    })),
                }
            }
        });
        agent.serve(rx).await;
        anyhow::Ok(())
    })
}

/// A child process that is killed and reaped when dropped.
struct ChildGuard {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

enum Link {
    Local {
        cmds: mpsc::UnboundedSender<Cmd>,
        task: JoinHandle<()>,
    },
    Child(ChildGuard),
}

/// One benchmark node as the controller sees it.
pub struct Member {
    /// The node's address.
    pub addr: SocketAddrV4,
    link: Link,
    replies: mpsc::UnboundedReceiver<Reply>,
}

/// The benchmark nodes of one run.
pub struct Fleet {
    backend: Backend,
    profile: Profile,
    processes: bool,
    secret: Vec<u8>,
    expected_size: u32,
    /// The clock every stamp of this fleet is on.
    pub clock: Clock,
    members: Vec<Option<Member>>,
    events_tx: mpsc::UnboundedSender<(usize, Event)>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    /// Runtime worker threads of each worker process (0 = current-thread).
    threads: u16,
}

impl Fleet {
    /// An empty fleet. `processes`: every node in its own OS process.
    pub fn new(backend: Backend, profile: Profile, processes: bool, expected_size: u32) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Self {
            backend,
            profile,
            processes,
            secret: fresh_secret(),
            expected_size,
            clock: if processes {
                Clock::Wall
            } else {
                Clock::Mono(Instant::now())
            },
            members: Vec::new(),
            events_tx,
            events,
            threads: DEFAULT_WORKER_THREADS,
        }
    }

    /// Runs each worker process's node on `threads` runtime worker threads (0 = a
    /// current-thread runtime); no effect on nodes in this process.
    #[must_use]
    pub fn with_threads(mut self, threads: u16) -> Self {
        self.threads = threads;
        self
    }

    /// Starts a full cluster of `k` nodes (each seeded with the first) and waits until every
    /// node sees the others and a probe joined on every node is listed everywhere.
    pub async fn cluster(&mut self, scope: &str, k: usize) -> anyhow::Result<Vec<usize>> {
        let mut ids = Vec::with_capacity(k);
        for _ in 0..k {
            let seed = ids.first().map(|&i| self.addr(i)).transpose()?;
            ids.push(self.start(seed).await?);
        }
        self.settle(scope, &ids).await?;
        Ok(ids)
    }

    /// Waits until the nodes `ids` form a full cluster that agrees on a probe group, as the
    /// harness's `mesh` + `pg_settle` do.
    pub async fn settle(&mut self, scope: &str, ids: &[usize]) -> anyhow::Result<()> {
        let limit = Duration::from_secs(60);
        for &i in ids {
            self.call_within(
                i,
                Cmd::WaitPeers {
                    peers: ids.len() - 1,
                },
                limit,
            )
            .await?;
        }
        for (drop, want) in [(false, ids.len()), (true, 0)] {
            for &i in ids {
                let scope = scope.to_owned();
                self.call(i, Cmd::Probe { scope, drop }).await?;
            }
            let t0 = Instant::now();
            for &i in ids {
                loop {
                    let cmd = Cmd::GroupSize {
                        scope: scope.into(),
                        group: super::agent::PROBE.into(),
                    };
                    if self.count(i, cmd).await? == want {
                        break;
                    }
                    if t0.elapsed() > limit {
                        bail!("the probe group did not settle to {want} members within {limit:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Ok(())
    }

    /// Starts one node; its index.
    pub async fn start(&mut self, seed: Option<SocketAddrV4>) -> anyhow::Result<usize> {
        self.start_with_roles(seed, Vec::new()).await
    }

    /// Starts one node with `roles`; its index.
    pub async fn start_with_roles(
        &mut self,
        seed: Option<SocketAddrV4>,
        roles: Vec<String>,
    ) -> anyhow::Result<usize> {
        let index = self.members.len();
        let spec = NodeSpec {
            backend: self.backend,
            profile: self.profile,
            secret: self.secret.clone(),
            seed,
            expected_size: self.expected_size,
            roles,
        };
        let (reply_tx, mut replies) = mpsc::unbounded_channel();
        let events = self.events_tx.clone();
        let route: Emit = Arc::new(move |out| match out {
            Out::Reply(r) => {
                let _ = reply_tx.send(r);
            }
            Out::Event(e) => {
                let _ = events.send((index, e));
            }
        });
        let link = if self.processes {
            let guard = spawn_worker(&spec, self.threads, route)?;
            Link::Child(guard)
        } else {
            let agent = Agent::start(&spec, self.clock, route.clone()).await?;
            route(Out::Reply(Reply::Ready { addr: agent.addr() }));
            let (cmds, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(agent.serve(rx));
            Link::Local { cmds, task }
        };
        let addr = match tokio::time::timeout(START_TIMEOUT, replies.recv()).await {
            Ok(Some(Reply::Ready { addr })) => addr,
            Ok(Some(other)) => bail!("node {index} did not start: {other:?}"),
            Ok(None) => bail!("node {index} exited while starting"),
            Err(_) => bail!("node {index} did not start within {START_TIMEOUT:?}"),
        };
        self.members.push(Some(Member {
            addr,
            link,
            replies,
        }));
        Ok(index)
    }

    fn member(&mut self, i: usize) -> anyhow::Result<&mut Member> {
        self.members
            .get_mut(i)
            .and_then(Option::as_mut)
            .with_context(|| format!("node {i} is not running"))
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> anyhow::Result<SocketAddrV4> {
        self.members
            .get(i)
            .and_then(Option::as_ref)
            .map(|m| m.addr)
            .with_context(|| format!("node {i} is not running"))
    }

    /// CPU time (user + system, every thread) node `i`'s OS process has used so far; `None`
    /// for a node in this process or when `/proc` cannot be read (not Linux).
    pub fn cpu_time(&self, i: usize) -> Option<Duration> {
        match &self.members.get(i)?.as_ref()?.link {
            Link::Child(guard) => process_cpu_time(guard.child.id()),
            Link::Local { .. } => None,
        }
    }

    /// Sends `cmd` to node `i` without waiting for the reply (collect it with [`Self::reply`]).
    pub fn send(&mut self, i: usize, cmd: &Cmd) -> anyhow::Result<()> {
        let m = self.member(i)?;
        match &mut m.link {
            Link::Local { cmds, .. } => cmds
                .send(cmd.clone())
                .map_err(|_| anyhow::anyhow!("node {i} has stopped")),
            Link::Child(guard) => {
                let stdin = guard.stdin.as_mut().context("worker stdin closed")?;
                let line = serde_json::to_string(cmd)?;
                writeln!(stdin, "{line}")
                    .and_then(|()| stdin.flush())
                    .with_context(|| format!("writing to node {i}"))
            }
        }
    }

    /// The next reply of node `i`, within `limit`.
    pub async fn reply(&mut self, i: usize, limit: Duration) -> anyhow::Result<Reply> {
        let m = self.member(i)?;
        match tokio::time::timeout(limit, m.replies.recv()).await {
            Ok(Some(Reply::Error { msg })) => bail!("node {i}: {msg}"),
            Ok(Some(r)) => Ok(r),
            Ok(None) => bail!("node {i} exited"),
            Err(_) => bail!("node {i} did not answer within {limit:?}"),
        }
    }

    /// Sends `cmd` to node `i` and waits up to 60 s for its reply.
    pub async fn call(&mut self, i: usize, cmd: Cmd) -> anyhow::Result<Reply> {
        self.call_within(i, cmd, Duration::from_secs(60)).await
    }

    /// Sends `cmd` to node `i` and waits up to `limit` for its reply.
    pub async fn call_within(
        &mut self,
        i: usize,
        cmd: Cmd,
        limit: Duration,
    ) -> anyhow::Result<Reply> {
        self.send(i, &cmd)?;
        self.reply(i, limit).await
    }

    /// Like [`Self::call`] for a command answered with a count.
    pub async fn count(&mut self, i: usize, cmd: Cmd) -> anyhow::Result<usize> {
        match self.call(i, cmd).await? {
            Reply::Count { n } => Ok(n),
            other => bail!("node {i}: expected a count, got {other:?}"),
        }
    }

    /// Like [`Self::call`] for a command answered with a stamp.
    pub async fn stamp(&mut self, i: usize, cmd: Cmd) -> anyhow::Result<u64> {
        match self.call(i, cmd).await? {
            Reply::T0 { t } => Ok(t),
            other => bail!("node {i}: expected a stamp, got {other:?}"),
        }
    }

    /// The next event of any node, within `limit`.
    pub async fn event(&mut self, limit: Duration) -> anyhow::Result<(usize, Event)> {
        match tokio::time::timeout(limit, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => bail!("every node stopped"),
            Err(_) => bail!("no event within {limit:?}"),
        }
    }

    /// Kills node `i` abruptly and returns the stamp taken just before: SIGKILL for a child
    /// process (stamped here, on the wall clock), `Node::crash` for an in-process node (stamped
    /// by the agent, on this fleet's monotonic clock).
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<u64> {
        let processes = self.processes;
        let clock = self.clock;
        if !processes {
            let t = self.stamp(i, Cmd::Crash).await?;
            if let Some(Member {
                link: Link::Local { task, .. },
                ..
            }) = self.members.get_mut(i).and_then(Option::take)
            {
                let _ = task.await;
            }
            return Ok(t);
        }
        let mut m = self
            .members
            .get_mut(i)
            .and_then(Option::take)
            .with_context(|| format!("node {i} is not running"))?;
        let Link::Child(guard) = &mut m.link else {
            bail!("node {i} is not a child process");
        };
        let t = clock.now();
        guard.kill();
        Ok(t)
    }

    /// Stops every node: a clean leave, then a kill for any child that does not exit in time.
    pub async fn shutdown(&mut self) {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_some())
            .collect();
        for &i in &live {
            let _ = self.send(i, &Cmd::Quit);
        }
        for &i in &live {
            let _ = self.reply(i, Duration::from_secs(5)).await;
            if let Some(m) = self.members[i].take() {
                match m.link {
                    Link::Local { task, .. } => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                    }
                    Link::Child(guard) => wait_exit(guard, Duration::from_secs(5)).await,
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Children are killed by their guards; in-process nodes stop with their agent task.
        for m in self.members.iter().flatten() {
            if let Link::Local { task, .. } = &m.link {
                task.abort();
            }
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, which Linux fixes at 100
/// for user space on every architecture it exposes `/proc` on.
const USER_HZ: u64 = 100;

/// User + system CPU time of process `pid` (all its threads, ended ones included), from
/// `/proc/<pid>/stat`; resolution 10 ms.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_ticks(&stat).map(|t| Duration::from_millis(t * 1000 / USER_HZ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is parenthesised and may hold spaces or parentheses, so fields are counted after its last
/// `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Gives a child that was asked to quit `limit` to exit; kills it after that (dropping it).
async fn wait_exit(mut guard: ChildGuard, limit: Duration) {
    guard.stdin = None;
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if matches!(guard.child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Re-executes this binary as `bench worker`; its stdout lines are routed by `route`.
fn spawn_worker(spec: &NodeSpec, threads: u16, route: Emit) -> anyhow::Result<ChildGuard> {
    let exe = std::env::current_exe().context("locating the meshreg binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "worker", "--backend", spec.backend.name()])
        .args(["--profile", spec.profile.name()])
        .args(["--expected-size", &spec.expected_size.to_string()])
        .args(["--threads", &threads.to_string()])
        .env(SECRET_ENV, to_hex(&spec.secret))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(seed) = spec.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    for role in &spec.roles {
        cmd.args(["--role", role]);
    }
    let mut child = cmd.spawn().context("starting a benchmark worker")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    // The guard exists before anything else can fail: the child never outlives an error.
    let guard = ChildGuard { child, stdin };
    let stdout = stdout.context("worker stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Out>(&line) {
                Ok(out) => route(out),
                Err(e) => route(Out::Reply(Reply::Error {
                    msg: format!("bad worker output {line:?}: {e}"),
                })),
            }
        }
    });
    Ok(guard)
}

/// A secret for one run (loopback only; never stored).
fn fresh_secret() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64;
    let a = meshreg::membership::mix64(nanos ^ u64::from(std::process::id()));
    let b = meshreg::membership::mix64(a);
    let mut s = b"meshreg-bench-".to_vec();
    s.extend_from_slice(&a.to_le_bytes());
    s.extend_from_slice(&b.to_le_bytes());
    s
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_after_the_command_name() {
        let line = "4242 (bench (w) 1) S 1 2 3 4 5 6 7 8 9 10 17 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(line), Some(22));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None, "too short");
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(process_cpu_time(std::process::id()).is_some());
    }

    #[test]
    fn secrets_survive_the_hex_round_trip() {
        let s = fresh_secret();
        assert!(s.len() >= meshreg::node::MIN_SECRET_BYTES);
        assert_eq!(from_hex(&to_hex(&s)), Some(s));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn commands_and_outputs_are_one_json_line_each() {
        let cmd = Cmd::WatchDown {
            scope: "s".into(),
            node: "127.0.0.1:9".parse().unwrap(),
            count: 3,
        };
        let line = serde_json::to_string(&cmd).unwrap();
        assert!(!line.contains('\n'));
        assert!(matches!(
            serde_json::from_str::<Cmd>(&line).unwrap(),
            Cmd::WatchDown { count: 3, .. }
        ));
        let out = Out::Event(Event::Seen {
            join: true,
            group: "lat1".into(),
            t: 5,
        });
        let back: Out = serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert!(matches!(back, Out::Event(Event::Seen { t: 5, .. })));
    }
}
