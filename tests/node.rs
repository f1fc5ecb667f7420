//! Real nodes over loopback sockets, both backends: groups, processes, faults, restarts.
//!
//! Every test bounds its time (`bounded`) and uses 127.0.0.1 with OS-assigned ports. Waits
//! poll a condition with a deadline; nothing asserts on how long something took.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod common;

use common::SECRET;

use std::future::Future;
use std::time::Duration;

use meshreg::{Backend, DownReason, MemberEvent, Node, NodeError, Pid, Profile};

const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future<Output = ()>>(f: F) {
    common::bounded(LIMIT, f).await;
}

async fn start(backend: Backend, seed: Option<&Node>) -> Node {
    start_with(backend, seed, None).await
}

async fn start_with(
    backend: Backend,
    seed: Option<&Node>,
    listen: Option<std::net::SocketAddr>,
) -> Node {
    let listen = listen.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    start_tuned(backend, seed, |b| b.listen(listen)).await
}

/// A test-profile node on loopback, with `tune` applied to its builder last.
async fn start_tuned(
    backend: Backend,
    seed: Option<&Node>,
    tune: impl FnOnce(meshreg::node::NodeBuilder) -> meshreg::node::NodeBuilder,
) -> Node {
    let mut b = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .backend(backend)
        .profile(Profile::Test)
        .secret(SECRET.to_vec())
        .expected_size(4);
    if let Some(s) = seed {
        b = b.seed(s.addr().into());
    }
    tune(b).start().await.unwrap()
}

/// A coordinated node whose per-peer send queues hold `frames` frames. Lan timers: failure
/// detection stays out of the way of what full queues do.
async fn start_small_queues(seed: Option<&Node>, frames: usize) -> Node {
    let mut b = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .backend(Backend::Coordinated)
        .profile(Profile::Lan)
        .secret(SECRET.to_vec())
        .queue_frames(frames);
    if let Some(s) = seed {
        b = b.seed(s.addr().into());
    }
    b.start().await.unwrap()
}

/// Polls `cond` every 10 ms until it holds (within the test's limit).
async fn until(what: &str, cond: impl FnMut() -> bool) {
    common::until(LIMIT, what, cond).await;
}

async fn connected(nodes: &[&Node]) {
    until("every node sees every other", || {
        nodes
            .iter()
            .all(|n| n.cluster_members().len() == nodes.len() - 1)
    })
    .await;
}

fn sorted(mut v: Vec<Pid>) -> Vec<Pid> {
    v.sort();
    v
}

async fn joins_are_seen_and_vanish_when_the_process_exits(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    connected(&[&a, &b]).await;
    let p = a.process();
    let q = b.process();
    a.join("s", "g", p.pid()).await.unwrap();
    a.join("s", "g", p.pid()).await.unwrap();
    b.join_with_meta("s", "g", q.pid(), b"meta").await.unwrap();
    let want = sorted(vec![p.pid(), p.pid(), q.pid()]);
    until("both nodes list both joins", || {
        sorted(a.members("s", "g")) == want && sorted(b.members("s", "g")) == want
    })
    .await;
    assert_eq!(a.local_members("s", "g"), vec![p.pid(), p.pid()]);
    assert_eq!(b.which_groups("s"), vec!["g".to_string()]);
    let meta: Vec<Vec<u8>> = a
        .members_with_meta("s", "g")
        .into_iter()
        .filter(|m| m.pid == q.pid())
        .map(|m| m.meta)
        .collect();
    assert_eq!(meta, vec![b"meta".to_vec()]);
    drop(p);
    until("the exited process is gone everywhere", || {
        a.members("s", "g") == vec![q.pid()] && b.members("s", "g") == vec![q.pid()]
    })
    .await;
    b.leave("s", "g", q.pid()).await.unwrap();
    until("the group vanished", || {
        a.which_groups("s").is_empty() && b.which_groups("s").is_empty()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_joins_are_seen_and_vanish_when_the_process_exits() {
    bounded(joins_are_seen_and_vanish_when_the_process_exits(
        Backend::Gossip,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_joins_are_seen_and_vanish_when_the_process_exits() {
    bounded(joins_are_seen_and_vanish_when_the_process_exits(
        Backend::Coordinated,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_join_is_visible_everywhere_when_it_returns() {
    bounded(async {
        let a = start(Backend::Coordinated, None).await;
        let b = start(Backend::Coordinated, Some(&a)).await;
        let c = start(Backend::Coordinated, Some(&a)).await;
        connected(&[&a, &b, &c]).await;
        // Wait until every node's backend has seen the others Up too (membership first).
        let p = b.process();
        for i in 0..20 {
            let g = format!("g{i}");
            b.join("s", &g, p.pid()).await.unwrap();
            for n in [&a, &b, &c] {
                assert_eq!(
                    n.members("s", &g),
                    vec![p.pid()],
                    "read-your-write on {n:?}"
                );
            }
        }
        for n in [a, b, c] {
            n.shutdown().await;
        }
    })
    .await;
}

async fn a_late_node_receives_the_existing_groups(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    connected(&[&a, &b]).await;
    let procs: Vec<_> = (0..50).map(|_| a.process()).collect();
    for (i, p) in procs.iter().enumerate() {
        a.join("late", &format!("g{}", i % 5), p.pid())
            .await
            .unwrap();
    }
    let c = start(backend, Some(&b)).await;
    connected(&[&a, &b, &c]).await;
    until("the late node lists all 50 memberships", || {
        (0..5).all(|g| c.members("late", &format!("g{g}")).len() == 10)
    })
    .await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_late_node_receives_the_existing_groups() {
    bounded(a_late_node_receives_the_existing_groups(Backend::Gossip)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_late_node_receives_the_existing_groups() {
    bounded(a_late_node_receives_the_existing_groups(
        Backend::Coordinated,
    ))
    .await;
}

/// A node cut off from the two others, long enough for both sides to declare the other Down,
/// then healed: everyone converges, and only the cut-off node renews its identity.
async fn partition_and_heal_converges(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    let c = start(backend, Some(&a)).await;
    connected(&[&a, &b, &c]).await;
    let pc = c.process();
    let pa = a.process();
    c.join("p", "g", pc.pid()).await.unwrap();
    a.join("p", "g", pa.pid()).await.unwrap();
    until("all list both", || {
        [&a, &b, &c].iter().all(|n| n.members("p", "g").len() == 2)
    })
    .await;
    for n in [&a, &b] {
        n.faults().set_partitioned(c.addr(), true);
        c.faults().set_partitioned(n.addr(), true);
    }
    until("each side lost the other's members", || {
        a.members("p", "g") == vec![pa.pid()]
            && b.members("p", "g") == vec![pa.pid()]
            && c.members("p", "g") == vec![pc.pid()]
    })
    .await;
    // The cut is complete: c declared both a and b Down, as they declared c. (A heal before
    // c has even suspected b is another case: c's view still counts b and ties theirs; see
    // ARCHITECTURE.md, "Verdicts of a cut-off node stay with it".)
    until("each side declared the other Down", || {
        a.cluster_members().len() == 1
            && b.cluster_members().len() == 1
            && c.cluster_members().is_empty()
    })
    .await;
    // A leave on c's side during the partition must stay a leave after the heal.
    let pc2 = c.process();
    c.join("p", "left", pc2.pid()).await.unwrap();
    c.leave("p", "left", pc2.pid()).await.unwrap();
    for n in [&a, &b] {
        n.faults().set_partitioned(c.addr(), false);
        c.faults().set_partitioned(n.addr(), false);
    }
    connected(&[&a, &b, &c]).await;
    let want = sorted(vec![pa.pid(), pc.pid()]);
    until("all list both again", || {
        [&a, &b, &c]
            .iter()
            .all(|n| sorted(n.members("p", "g")) == want && n.members("p", "left").is_empty())
    })
    .await;
    // Only the cut-off side renews: the majority kept its identities (and so its members).
    assert!(c.stats().renewals >= 1, "{backend:?}: c never renewed");
    for n in [&a, &b] {
        assert_eq!(
            n.stats().renewals,
            0,
            "{backend:?}: a majority node renewed"
        );
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_partition_and_heal_on_three_nodes_converges() {
    bounded(partition_and_heal_converges(Backend::Gossip)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_partition_and_heal_on_three_nodes_converges() {
    bounded(partition_and_heal_converges(Backend::Coordinated)).await;
}

async fn a_restarted_node_comes_back_new_and_its_old_memberships_never_reappear(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    connected(&[&a, &b]).await;
    let (_, mut events) = a.monitor_cluster();
    let old = b.process();
    b.join("r", "g", old.pid()).await.unwrap();
    until("a lists b's member", || {
        a.members("r", "g") == vec![old.pid()]
    })
    .await;
    let addr = b.addr();
    let old_id = b.id();
    b.crash().await;
    drop(old);
    until("a dropped the crashed node's member", || {
        a.members("r", "g").is_empty()
    })
    .await;
    // Same address, a later creation.
    let b2 = Node::builder()
        .listen(addr.into())
        .seed(a.addr().into())
        .backend(backend)
        .profile(Profile::Test)
        .secret(SECRET.to_vec())
        .creation((old_id.generation() >> 16) as u16 + 1)
        .start()
        .await
        .unwrap();
    assert!(b2.id().generation() > old_id.generation());
    connected(&[&a, &b2]).await;
    let fresh = b2.process();
    b2.join("r", "g", fresh.pid()).await.unwrap();
    until("a lists only the new member", || {
        a.members("r", "g") == vec![fresh.pid()]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.members("r", "g"),
        vec![fresh.pid()],
        "old membership reappeared"
    );
    let mut saw_new_up = false;
    while let Some(e) = events.try_recv() {
        if let MemberEvent::Up(id) = e
            && id.addr() == addr
            && id.generation() > old_id.generation()
        {
            saw_new_up = true;
        }
    }
    assert!(saw_new_up, "a saw the restarted node as a new generation");
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_restarted_node_comes_back_new() {
    bounded(
        a_restarted_node_comes_back_new_and_its_old_memberships_never_reappear(Backend::Gossip),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_restarted_node_comes_back_new() {
    bounded(
        a_restarted_node_comes_back_new_and_its_old_memberships_never_reappear(
            Backend::Coordinated,
        ),
    )
    .await;
}

async fn messages_and_monitors_cross_nodes(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    connected(&[&a, &b]).await;
    let mut pa = a.process();
    let mut pb = b.process();
    for i in 0..100u32 {
        b.send_from(pb.pid(), pa.pid(), &i).await.unwrap();
    }
    for i in 0..100u32 {
        let m = pa.recv().await.unwrap();
        assert_eq!(m.from, Some(pb.pid()));
        assert_eq!(m.decode::<u32>().unwrap(), i, "per-sender order");
    }
    let watch = a.monitor(pb.pid());
    // The monitor request and this message share the a -> b link: once the message arrived,
    // b has registered the monitor, so the exit must be reported as such.
    a.send(pb.pid(), &0u8).await.unwrap();
    pb.recv().await.unwrap();
    drop(pb);
    assert_eq!(watch.await, DownReason::Exited);
    let dead = Pid {
        node: b.id(),
        serial: 999_999,
    };
    assert_eq!(a.monitor(dead).await, DownReason::NoProcess);
    assert!(matches!(
        a.send(
            Pid {
                node: a.id(),
                serial: 999_999
            },
            &1u8
        )
        .await,
        Err(NodeError::NoProcess(_))
    ));
    let pb2 = b.process();
    let watch = a.monitor(pb2.pid());
    b.crash().await;
    assert_eq!(watch.await, DownReason::NodeDown);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_messages_and_monitors_cross_nodes() {
    bounded(messages_and_monitors_cross_nodes(Backend::Gossip)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_messages_and_monitors_cross_nodes() {
    bounded(messages_and_monitors_cross_nodes(Backend::Coordinated)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_monitor_streams_the_snapshot_then_ordered_events() {
    bounded(async {
        let a = start(Backend::Gossip, None).await;
        let p = a.process();
        a.join("m", "g", p.pid()).await.unwrap();
        let (snapshot, mut events) = a.monitor_group("m", "g").unwrap();
        assert_eq!(snapshot.len(), 1);
        let q = a.process();
        a.join("m", "g", q.pid()).await.unwrap();
        a.leave("m", "g", p.pid()).await.unwrap();
        let e1 = events.recv().await.unwrap();
        let e2 = events.recv().await.unwrap();
        assert_eq!(e1.membership.pid, q.pid());
        assert_eq!(e2.membership.pid, p.pid());
        a.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_and_change_nothing() {
    bounded(async {
        let a = start(Backend::Gossip, None).await;
        let b = start(Backend::Gossip, Some(&a)).await;
        let remote = b.process();
        assert!(matches!(
            a.join("s", "g", remote.pid()).await,
            Err(NodeError::Group(_))
        ));
        let p = a.process();
        assert!(matches!(
            a.leave("s", "g", p.pid()).await,
            Err(NodeError::Group(_))
        ));
        let big = vec![0u8; 4096];
        assert!(matches!(
            a.join_with_meta("s", "g", p.pid(), &big).await,
            Err(NodeError::Group(_))
        ));
        assert!(a.which_groups("s").is_empty());
        let short = Node::builder().secret(b"short".to_vec()).start().await;
        assert!(matches!(
            short,
            Err(NodeError::Config {
                setting: "secret",
                ..
            })
        ));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused() {
    bounded(async {
        let a = start(Backend::Gossip, None).await;
        let intruder = Node::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .seed(a.addr().into())
            .profile(Profile::Test)
            .secret(b"not-the-cluster-secret".to_vec())
            .start()
            .await
            .unwrap();
        until("the intruder's packets were refused", || {
            a.transport_stats().bad_datagrams_tag > 0
        })
        .await;
        assert!(a.cluster_members().is_empty());
        assert!(intruder.cluster_members().is_empty());
        intruder.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

/// The same workload on both backends gives the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_the_same_answers_for_the_same_workload() {
    bounded(async {
        let mut answers = Vec::new();
        for backend in [Backend::Gossip, Backend::Coordinated] {
            let a = start(backend, None).await;
            let b = start(backend, Some(&a)).await;
            connected(&[&a, &b]).await;
            let pa: Vec<_> = (0..6).map(|_| a.process()).collect();
            let pb: Vec<_> = (0..6).map(|_| b.process()).collect();
            for (i, p) in pa.iter().enumerate() {
                a.join("w", &format!("g{}", i % 3), p.pid()).await.unwrap();
            }
            for (i, p) in pb.iter().enumerate() {
                b.join("w", &format!("g{}", i % 2), p.pid()).await.unwrap();
                if i % 3 == 0 {
                    b.leave("w", &format!("g{}", i % 2), p.pid()).await.unwrap();
                }
            }
            // Answer shape: per group, (how many of a's, how many of b's) members.
            let shape = |n: &Node| -> Vec<(String, usize, usize)> {
                let mut groups = n.which_groups("w");
                groups.sort();
                groups
                    .into_iter()
                    .map(|g| {
                        let m = n.members("w", &g);
                        let of_a = m.iter().filter(|p| p.node == a.id()).count();
                        (g, of_a, m.len() - of_a)
                    })
                    .collect()
            };
            until("both nodes agree", || shape(&a) == shape(&b)).await;
            answers.push(shape(&a));
            a.shutdown().await;
            b.shutdown().await;
        }
        assert_eq!(answers[0], answers[1]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_is_seen_as_a_leave() {
    bounded(async {
        for backend in [Backend::Gossip, Backend::Coordinated] {
            let a = start(backend, None).await;
            let b = start(backend, Some(&a)).await;
            connected(&[&a, &b]).await;
            let p = b.process();
            b.join("q", "g", p.pid()).await.unwrap();
            until("a lists b's member", || a.members("q", "g").len() == 1).await;
            b.shutdown().await;
            until("a saw b leave", || a.cluster_members().is_empty()).await;
            until("b's memberships are gone", || {
                a.members("q", "g").is_empty()
            })
            .await;
            assert_eq!(a.stats().renewals, 0);
            assert_eq!(a.stats().peers_left, 1, "{backend}: b's farewell was heard");
            a.shutdown().await;
        }
    })
    .await;
}

/// Per-peer send queues so small that bursts overflow them: the runtime drops protocol frames
/// (counted), and the coordinated backend must re-send what its bosses wait for. Every join
/// completes and every node ends with exactly the joined memberships, then with none once the
/// processes ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_converges_when_full_peer_queues_drop_frames() {
    bounded(async {
        let a = start_small_queues(None, 16).await;
        let b = start_small_queues(Some(&a), 16).await;
        let c = start_small_queues(Some(&a), 16).await;
        let nodes = [&a, &b, &c];
        connected(&nodes).await;
        let per_node = 400;
        let mut procs = Vec::new();
        // One burst of concurrent joins per node, 10 per group: spread over partitions, so
        // no partition orders more ops than its dedupe window holds (a known limit when a
        // `Done` is lost, see the coordinated `loss_tests`).
        let mut calls = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let ps: Vec<_> = (0..per_node).map(|_| n.process()).collect();
            for (g, chunk) in ps.chunks(10).enumerate() {
                let pids: Vec<Pid> = chunk.iter().map(|p| p.pid()).collect();
                let n = (*n).clone();
                calls.spawn(async move { n.join_many("s", &format!("g{i}_{g}"), &pids).await });
            }
            procs.push(ps);
        }
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
        let count = |n: &Node| -> usize {
            n.which_groups("s")
                .iter()
                .map(|g| n.members("s", g).len())
                .sum()
        };
        for n in nodes {
            assert_eq!(
                count(n),
                3 * per_node,
                "a completed join is applied everywhere"
            );
        }
        procs.clear();
        until("every ended process is gone from every node", || {
            nodes.iter().all(|n| count(n) == 0)
        })
        .await;
        let dropped: u64 = nodes
            .iter()
            .map(|n| n.stats().protocol_frames_dropped)
            .sum();
        assert!(
            dropped > 0,
            "the queues never overflowed: the test lost its point"
        );
        for n in nodes {
            assert_eq!(n.stats().renewals, 0);
            n.shutdown().await;
        }
    })
    .await;
}

/// Monitor notices have no repair path: when the watched node's queue to the watcher is full,
/// they wait for room instead of being dropped, so every monitor still fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_notices_survive_a_full_peer_queue() {
    bounded(async {
        // Only b's queues are small (its notices to a must wait for room); a's monitor
        // requests must all find room, or the message below could overtake deferred ones.
        let a = start_small_queues(None, 4096).await;
        let b = start_small_queues(Some(&a), 4).await;
        connected(&[&a, &b]).await;
        let procs: Vec<_> = (0..32).map(|_| b.process()).collect();
        let watches: Vec<_> = procs.iter().map(|p| a.monitor(p.pid())).collect();
        // Every monitor request has reached b once a message sent after them arrives.
        let mut last = b.process();
        a.send(last.pid(), &0u8).await.unwrap();
        last.recv().await.unwrap();
        // Frames to a now sit in the queue for a while: 32 notices cannot all fit in 4 slots.
        b.faults().set_delay(a.addr(), Duration::from_millis(50));
        drop(procs);
        for w in watches {
            assert_eq!(w.await, DownReason::Exited);
        }
        assert!(
            b.transport_stats().frames_deferred > 0,
            "the queue was full at least once"
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// Many detached joins from one caller: each returns at once, and every node ends up listing
/// all of them; a bad one is refused at once.
async fn detached_joins_reach_every_node(backend: Backend) {
    let a = start(backend, None).await;
    let b = start(backend, Some(&a)).await;
    connected(&[&a, &b]).await;
    let procs: Vec<_> = (0..500).map(|_| a.process()).collect();
    for (i, p) in procs.iter().enumerate() {
        a.join_detached("s", &format!("d{}", i % 50), p.pid())
            .unwrap();
    }
    let count = |n: &Node| -> usize {
        n.which_groups("s")
            .iter()
            .map(|g| n.members("s", g).len())
            .sum()
    };
    until("both nodes list every detached join", || {
        count(&a) == 500 && count(&b) == 500
    })
    .await;
    let foreign = b.process();
    let r = a.join_detached("s", "d0", foreign.pid());
    assert!(matches!(r, Err(NodeError::Group(_))), "{r:?}");
    drop(procs);
    until("ended processes are gone everywhere", || {
        count(&a) == 0 && count(&b) == 0
    })
    .await;
    a.shutdown().await;
    assert!(matches!(
        a.join_detached("s", "d0", foreign.pid()),
        Err(NodeError::Stopped)
    ));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_detached_joins_reach_every_node() {
    bounded(detached_joins_reach_every_node(Backend::Gossip)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_detached_joins_reach_every_node() {
    bounded(detached_joins_reach_every_node(Backend::Coordinated)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_cold_partitions_serve_joins_too() {
    bounded(async {
        let a = start_tuned(Backend::Coordinated, None, |b| b.warm_partitions(false)).await;
        let b = start_tuned(Backend::Coordinated, Some(&a), |b| b.warm_partitions(false)).await;
        assert!(!a.config().warm_partitions);
        connected(&[&a, &b]).await;
        let p = a.process();
        for k in 0..20 {
            a.join("s", &format!("g{k}"), p.pid()).await.unwrap();
            // Coordinated: listed everywhere when the join returns.
            assert_eq!(b.members("s", &format!("g{k}")), vec![p.pid()]);
        }
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}
