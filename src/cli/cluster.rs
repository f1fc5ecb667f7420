//! `meshreg cluster`: N real nodes on loopback in one process, a service-discovery workload,
//! then a crash, a partition and a heal, with the time until all nodes agree after each.
//!
//! Every node runs `SERVICES_PER_NODE` echo services joined to `demo/echo` and one client that
//! keeps calling a member it discovered through its own node's view. A client whose service
//! stops answering (crashed node, partition) counts a failure and fails over to another member.
//! "All nodes agree" means every live node's view equals the ground truth of its side: the
//! other reachable live nodes as members, and exactly their services in `demo/echo`.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use meshreg::{Backend, Node, Pid, Profile};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::sim::parse;

const SCOPE: &str = "demo";
const GROUP: &str = "echo";
const SERVICES_PER_NODE: usize = 2;

/// Flags of `meshreg cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Number of nodes (each a full node with its own sockets, all in this process).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(3..=64))]
    nodes: u32,
    /// Discovery backend: gossip or coordinated.
    #[arg(long, default_value = "gossip", value_parser = parse::<Backend>)]
    backend: Backend,
    /// Timer profile: test (each event settles in seconds), lan or wan.
    #[arg(long, default_value = "test", value_parser = parse::<Profile>)]
    profile: Profile,
    /// Wall-clock seconds to run: the crash, partition and heal are spread over it.
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,
    /// Print one JSON object instead of progress and a table.
    #[arg(long)]
    json: bool,
}

/// The demo's request/reply protocol.
#[derive(Debug, Serialize, Deserialize)]
enum Demo {
    Request { id: u64, client: Pid },
    Reply { id: u64 },
}

#[derive(Debug, Serialize)]
struct Event {
    event: &'static str,
    node: String,
    /// Milliseconds from the event until every live node agrees again; `None` if they never
    /// did within the wait.
    agree_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    nodes: u32,
    converged: bool,
    events: Vec<Event>,
    requests_ok: u64,
    requests_failed: u64,
}

struct Member {
    name: String,
    node: Node,
    /// Up, crashed, or cut off by the partition.
    alive: bool,
    services: Vec<Pid>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Runs the command.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if !(args.duration_s.is_finite() && args.duration_s >= 5.0) {
        anyhow::bail!("--duration-s must be at least 5 (got {})", args.duration_s);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(cluster(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "\n{} nodes, {} backend: converged {}, requests ok {}, failed {}",
            report.nodes,
            report.backend,
            report.converged,
            report.requests_ok,
            report.requests_failed
        );
        println!("{:<10} {:<10} {:>9}", "event", "node", "agree_ms");
        for e in &report.events {
            let ms = e.agree_ms.map_or("never".into(), |m| m.to_string());
            println!("{:<10} {:<10} {:>9}", e.event, e.node, ms);
        }
    }
    Ok(())
}

fn settle_wait(profile: Profile) -> Duration {
    match profile {
        Profile::Test => Duration::from_secs(20),
        Profile::Lan => Duration::from_secs(60),
        Profile::Wan => Duration::from_secs(240),
    }
}

async fn cluster(args: &ClusterArgs) -> anyhow::Result<Report> {
    let start = Instant::now();
    let quiet = args.json;
    let say = |msg: String| {
        if !quiet {
            eprintln!("[{:>6.1}s] {msg}", start.elapsed().as_secs_f64());
        }
    };
    let secret: Vec<u8> = format!("meshreg-demo-{:x}", start.elapsed().as_nanos() ^ 0x5eed)
        .into_bytes()
        .into_iter()
        .chain(*b"-cluster-secret")
        .collect();
    let counts = Arc::new(Counts::default());
    let mut members: Vec<Member> = Vec::new();
    let mut seed: Option<SocketAddrV4> = None;
    for i in 0..args.nodes {
        let name = format!("node-{i}");
        let mut b = Node::builder()
            .name(name.clone())
            .listen("127.0.0.1:0".parse()?)
            .backend(args.backend)
            .profile(args.profile)
            .secret(secret.clone())
            .expected_size(args.nodes);
        if let Some(s) = seed {
            b = b.seed(s.into());
        }
        let node = b
            .start()
            .await
            .with_context(|| format!("starting {name}"))?;
        seed.get_or_insert(node.addr());
        members.push(Member {
            name,
            node,
            alive: true,
            services: Vec::new(),
            tasks: Vec::new(),
        });
    }
    say(format!(
        "started {} {} nodes on 127.0.0.1 (profile {})",
        args.nodes,
        args.backend,
        args.profile.name()
    ));
    for m in &mut members {
        for _ in 0..SERVICES_PER_NODE {
            let (pid, task) = spawn_service(&m.node);
            m.node
                .join_with_meta(SCOPE, GROUP, pid, m.name.as_bytes())
                .await?;
            m.services.push(pid);
            m.tasks.push(task);
        }
    }
    for m in &mut members {
        let task = tokio::spawn(client(m.node.clone(), counts.clone(), args.profile));
        m.tasks.push(task);
    }
    // Which side of the partition each node is on (all on side 0 outside the partition).
    let mut side = vec![0; members.len()];
    let wait = settle_wait(args.profile);
    match agree_within(&members, &side, wait).await {
        Some(ms) => say(format!(
            "all nodes agree ({ms} ms after the services joined)"
        )),
        None => say("nodes did not agree before the first fault".into()),
    }

    let total = Duration::from_secs_f64(args.duration_s);
    let mut events = Vec::new();
    let n = members.len();

    // Crash the last node: its services vanish, clients fail over.
    sleep_until(start, total.mul_f64(0.2)).await;
    let victim = n - 1;
    members[victim].node.crash().await;
    members[victim].alive = false;
    for t in members[victim].tasks.drain(..) {
        t.abort();
    }
    say(format!("crashed {}", members[victim].name));
    let agree = agree_within(&members, &side, wait).await;
    say(agreed_msg(agree));
    events.push(Event {
        event: "crash",
        node: members[victim].name.clone(),
        agree_ms: agree,
    });

    // Cut another node off from everyone, then heal.
    sleep_until(start, total.mul_f64(0.45)).await;
    let cut = n - 2;
    set_partition(&members, cut, true);
    side[cut] = 1;
    say(format!(
        "partitioned {} away from the others",
        members[cut].name
    ));
    let agree = agree_within(&members, &side, wait).await;
    say(agreed_msg(agree));
    events.push(Event {
        event: "partition",
        node: members[cut].name.clone(),
        agree_ms: agree,
    });

    sleep_until(start, total.mul_f64(0.65)).await;
    set_partition(&members, cut, false);
    side[cut] = 0;
    say(format!("healed the partition of {}", members[cut].name));
    let agree = agree_within(&members, &side, wait).await;
    say(agreed_msg(agree));
    events.push(Event {
        event: "heal",
        node: members[cut].name.clone(),
        agree_ms: agree,
    });

    sleep_until(start, total).await;
    let converged = agree_within(&members, &side, Duration::ZERO)
        .await
        .is_some();
    if !quiet {
        print_table(&members);
    }
    for m in &members {
        for t in &m.tasks {
            t.abort();
        }
        if m.alive {
            m.node.shutdown().await;
        }
    }
    Ok(Report {
        backend: args.backend.name().into(),
        nodes: args.nodes,
        converged,
        events,
        requests_ok: counts.ok.load(Ordering::Relaxed),
        requests_failed: counts.failed.load(Ordering::Relaxed),
    })
}

fn agreed_msg(agree: Option<u64>) -> String {
    match agree {
        Some(ms) => format!("all live nodes agree after {ms} ms"),
        None => "live nodes did not agree within the wait".into(),
    }
}

async fn sleep_until(start: Instant, at: Duration) {
    let now = start.elapsed();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// Partitions node `cut` from every other node (both directions), or heals it.
fn set_partition(members: &[Member], cut: usize, on: bool) {
    let addr = members[cut].node.addr();
    for (i, m) in members.iter().enumerate() {
        if i != cut && m.alive {
            m.node.faults().set_partitioned(addr, on);
            members[cut]
                .node
                .faults()
                .set_partitioned(m.node.addr(), on);
        }
    }
}

/// Polls until every live node's view matches its side's ground truth; the elapsed ms.
async fn agree_within(members: &[Member], side: &[usize], wait: Duration) -> Option<u64> {
    let t0 = Instant::now();
    loop {
        if agree(members, side) {
            return Some(t0.elapsed().as_millis() as u64);
        }
        if t0.elapsed() >= wait {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn agree(members: &[Member], side: &[usize]) -> bool {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.alive)
        .all(|(i, m)| {
            let peers: BTreeSet<SocketAddrV4> = members
                .iter()
                .enumerate()
                .filter(|(j, p)| *j != i && p.alive && side[*j] == side[i])
                .map(|(_, p)| p.node.addr())
                .collect();
            let services: BTreeSet<Pid> = members
                .iter()
                .enumerate()
                .filter(|(j, p)| p.alive && side[*j] == side[i])
                .flat_map(|(_, p)| p.services.iter().copied())
                .collect();
            let seen: BTreeSet<SocketAddrV4> = m
                .node
                .cluster_members()
                .iter()
                .map(|id| id.addr())
                .collect();
            let listed = m.node.members(SCOPE, GROUP);
            seen == peers
                && listed.len() == services.len()
                && listed.iter().copied().collect::<BTreeSet<_>>() == services
        })
}

fn print_table(members: &[Member]) {
    println!(
        "\n{:<8} {:<16} {:<8} {:>8} {:>10}",
        "node", "address", "state", "members", "echo size"
    );
    for m in members {
        let (state, seen, size) = if m.alive {
            (
                "up",
                m.node.cluster_members().len().to_string(),
                m.node.members(SCOPE, GROUP).len().to_string(),
            )
        } else {
            ("crashed", "-".into(), "-".into())
        };
        println!(
            "{:<8} {:<16} {:<8} {:>8} {:>10}",
            m.name,
            m.node.addr(),
            state,
            seen,
            size
        );
    }
}

/// An echo service: answers every request to the client named in it.
fn spawn_service(node: &Node) -> (Pid, JoinHandle<()>) {
    let mut p = node.process();
    let pid = p.pid();
    let node = node.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = p.recv().await {
            if let Ok(Demo::Request { id, client }) = msg.decode::<Demo>() {
                let _ = node.send_from(pid, client, &Demo::Reply { id }).await;
            }
        }
    });
    (pid, task)
}

/// Calls a discovered service every few milliseconds; a service that does not answer within the
/// timeout counts a failure and is avoided until the node's view drops it.
async fn client(node: Node, counts: Arc<Counts>, profile: Profile) {
    let mut me = node.process();
    let timeout = match profile {
        Profile::Test => Duration::from_millis(300),
        Profile::Lan => Duration::from_secs(1),
        Profile::Wan => Duration::from_secs(3),
    };
    let mut avoid: HashSet<Pid> = HashSet::new();
    let mut next_id = 0u64;
    let mut turn = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listed = node.members(SCOPE, GROUP);
        avoid.retain(|p| listed.contains(p));
        let candidates: Vec<Pid> = listed.into_iter().filter(|p| !avoid.contains(p)).collect();
        if candidates.is_empty() {
            continue;
        }
        turn = turn.wrapping_add(1);
        let target = candidates[turn % candidates.len()];
        next_id += 1;
        let id = next_id;
        let sent = node
            .send_from(
                me.pid(),
                target,
                &Demo::Request {
                    id,
                    client: me.pid(),
                },
            )
            .await;
        let answered = sent.is_ok()
            && tokio::time::timeout(timeout, async {
                while let Some(msg) = me.recv().await {
                    if matches!(msg.decode::<Demo>(), Ok(Demo::Reply { id: got }) if got == id) {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
        if answered {
            counts.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            avoid.insert(target);
        }
    }
}
