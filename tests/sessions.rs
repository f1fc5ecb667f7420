//! The session registry on real nodes over loopback sockets, both backends: registrations
//! from several nodes, a session node killed under load, process exits, `Replace` notices,
//! refused calls.
//!
//! Every test bounds its time and uses 127.0.0.1 with OS-assigned ports. Waits poll a
//! condition with a deadline; nothing asserts on how long something took.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod common;

use common::SECRET;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use meshreg::node::{Registered, SESSION_ROLE, SessionLost};
use meshreg::registry::session::SessionError;
use meshreg::registry::session::manager::SessionCallError;
use meshreg::{Backend, Node, NodeError, Pid, Policy, Process, Profile, SessionKey};

const LIMIT: Duration = Duration::from_secs(90);

async fn bounded<F: Future<Output = ()>>(f: F) {
    common::bounded(LIMIT, f).await;
}

async fn start(backend: Backend, seed: Option<&Node>, session: bool) -> Node {
    let mut b = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .backend(backend)
        .profile(Profile::Test)
        .secret(SECRET.to_vec())
        .session_shards(64)
        .expected_size(4);
    if session {
        b = b.role(SESSION_ROLE);
    }
    if let Some(s) = seed {
        b = b.seed(s.addr().into());
    }
    b.start().await.unwrap()
}

/// Polls `cond` every 10 ms until it holds (within the test's limit).
async fn until(what: &str, cond: impl FnMut() -> bool) {
    common::until(LIMIT, what, cond).await;
}

/// Starts `n` nodes, the first `sessions` of them with the session role, and waits until every
/// node sees every other and knows every session node.
async fn cluster(backend: Backend, n: usize, sessions: usize) -> Vec<Node> {
    let first = start(backend, None, sessions > 0).await;
    let mut nodes = vec![first];
    for i in 1..n {
        let node = start(backend, Some(&nodes[0]), i < sessions).await;
        nodes.push(node);
    }
    until("every node sees every other and every session node", || {
        nodes.iter().all(|node| {
            node.cluster_members().len() == n - 1
                && node.members(meshreg::node::ROLES_SCOPE, SESSION_ROLE).len() == sessions
        })
    })
    .await;
    nodes
}

async fn registrations_from_several_nodes_are_read_everywhere(backend: Backend) {
    let nodes = cluster(backend, 3, 2).await;
    let procs: Vec<Process> = nodes.iter().map(Node::process).collect();
    for (i, (node, p)) in nodes.iter().zip(&procs).enumerate() {
        for k in 0..50u64 {
            let key = k * 3 + i as u64;
            let r = node
                .sessions()
                .register(key, p.pid(), Policy::Reject)
                .await
                .unwrap();
            assert_eq!(r, Registered::New);
        }
    }
    node_meta_and_bytes_keys(&nodes[2], &procs[2]).await;
    for reader in &nodes {
        let keys: Vec<SessionKey> = (0..150u64).map(SessionKey::from).collect();
        let found = reader.sessions().lookup_many(keys).await.unwrap();
        for (k, s) in found.iter().enumerate() {
            let want = procs[k % 3].pid();
            assert_eq!(s.as_ref().map(|s| s.pid), Some(want), "key {k}");
        }
        let one = reader.sessions().lookup(151u64).await.unwrap();
        assert_eq!(one, None);
    }
    // Reject: another process cannot take a held key; the holder keeps it.
    let err = nodes[0]
        .sessions()
        .register(1u64, procs[0].pid(), Policy::Reject)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Taken { holder } if holder == procs[1].pid()),
        "{err}"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

async fn node_meta_and_bytes_keys(node: &Node, p: &Process) {
    let s = node.sessions();
    s.register_with_meta("user:alice", p.pid(), b"tablet", Policy::Reject)
        .await
        .unwrap();
    let got = s.lookup("user:alice").await.unwrap().unwrap();
    assert_eq!((got.pid, &*got.metadata), (p.pid(), &b"tablet"[..]));
    s.unregister("user:alice", p.pid()).await.unwrap();
    assert_eq!(s.lookup("user:alice").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_registrations_from_several_nodes_are_read_everywhere() {
    bounded(registrations_from_several_nodes_are_read_everywhere(
        Backend::Gossip,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_registrations_from_several_nodes_are_read_everywhere() {
    bounded(registrations_from_several_nodes_are_read_everywhere(
        Backend::Coordinated,
    ))
    .await;
}

/// Registers keys `keys` for `pid` on `node` one after another, recording each acknowledged
/// one; stops at the first error (the node under it may be going away).
async fn register_load(node: Node, pid: Pid, keys: std::ops::Range<u64>) -> Vec<u64> {
    let s = node.sessions();
    let mut acked = Vec::new();
    for k in keys {
        match s.register(k, pid, Policy::Reject).await {
            Ok(_) => acked.push(k),
            Err(e) => panic!("registration of {k} on a live node failed: {e}"),
        }
    }
    acked
}

async fn a_session_node_killed_under_load_loses_no_acknowledged_session(backend: Backend) {
    // Nodes 0..3 serve shards; node 3 is a client only. Node 2 is killed mid-load.
    let nodes = cluster(backend, 4, 3).await;
    let victim = nodes[2].clone();
    let survivors = [nodes[0].clone(), nodes[1].clone(), nodes[3].clone()];
    let procs: Vec<Process> = survivors.iter().map(Node::process).collect();
    let doomed = victim.process();
    for k in 0..100u64 {
        victim
            .sessions()
            .register(1_000_000 + k, doomed.pid(), Policy::Reject)
            .await
            .unwrap();
    }
    let mut loads = Vec::new();
    for (i, (node, p)) in survivors.iter().zip(&procs).enumerate() {
        let base = i as u64 * 100_000;
        loads.push(tokio::spawn(register_load(
            node.clone(),
            p.pid(),
            base..base + 400,
        )));
    }
    let terms_before: u64 = survivors
        .iter()
        .map(|n| n.stats().session_terms_started)
        .sum();
    tokio::time::sleep(Duration::from_millis(100)).await;
    victim.crash().await;
    let mut acked: BTreeMap<u64, Pid> = BTreeMap::new();
    for (load, p) in loads.into_iter().zip(&procs) {
        for k in load.await.unwrap() {
            acked.insert(k, p.pid());
        }
    }
    assert_eq!(
        acked.len(),
        1200,
        "every call on a live node ends acknowledged"
    );
    until("every survivor's view dropped the killed node", || {
        survivors.iter().all(|n| n.cluster_members().len() == 2)
    })
    .await;
    // Every acknowledged session of a live process is held, read from every survivor.
    let keys: Vec<u64> = acked.keys().copied().collect();
    for reader in &survivors {
        for chunk in keys.chunks(256) {
            let found = reader
                .sessions()
                .lookup_many(chunk.iter().map(|&k| SessionKey::from(k)).collect())
                .await
                .unwrap();
            for (k, s) in chunk.iter().zip(found) {
                assert_eq!(s.map(|s| s.pid), Some(acked[k]), "key {k} lost");
            }
        }
    }
    // The killed node's own sessions are removed with it.
    let s = survivors[2].sessions();
    let mut left = usize::MAX;
    for _ in 0..500 {
        let keys = (0..100u64)
            .map(|k| SessionKey::from(1_000_000 + k))
            .collect();
        left = s
            .lookup_many(keys)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.is_some())
            .count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left, 0,
        "sessions of the dead node's processes were removed"
    );
    let promoted: u64 = survivors
        .iter()
        .map(|n| n.stats().session_terms_started)
        .sum();
    assert!(
        promoted > terms_before,
        "the killed node's shards moved to new primaries"
    );
    for n in survivors {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_a_session_node_killed_under_load_loses_no_acknowledged_session() {
    bounded(a_session_node_killed_under_load_loses_no_acknowledged_session(Backend::Gossip)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_a_session_node_killed_under_load_loses_no_acknowledged_session() {
    bounded(a_session_node_killed_under_load_loses_no_acknowledged_session(Backend::Coordinated))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_loses_its_sessions_and_replace_tells_the_old_holder() {
    bounded(async {
        let nodes = cluster(Backend::Coordinated, 3, 2).await;
        let (a, b) = (&nodes[1], &nodes[2]);
        let p = a.process();
        let q = b.process();
        let mut lost = a.sessions().lost();
        a.sessions()
            .register(7u64, p.pid(), Policy::Reject)
            .await
            .unwrap();
        a.sessions()
            .register(8u64, p.pid(), Policy::Reject)
            .await
            .unwrap();
        let r = b
            .sessions()
            .register(7u64, q.pid(), Policy::Replace)
            .await
            .unwrap();
        assert_eq!(r, Registered::Replaced { old: p.pid() });
        let notice = tokio::time::timeout(Duration::from_secs(10), lost.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            notice,
            SessionLost {
                key: SessionKey::from(7u64),
                pid: p.pid()
            }
        );
        // p ends: its remaining session (8) goes; q keeps 7.
        drop(p);
        let s = b.sessions();
        let mut gone = false;
        for _ in 0..500 {
            if s.lookup(8u64).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the ended process's session was removed");
        assert_eq!(s.lookup(7u64).await.unwrap().map(|s| s.pid), Some(q.pid()));
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_calls_are_refused_with_the_cause_and_change_nothing() {
    bounded(async {
        let nodes = cluster(Backend::Gossip, 2, 1).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        let p = a.process();
        let q = b.process();
        let s = a.sessions();
        s.register(1u64, p.pid(), Policy::Reject).await.unwrap();
        // Unregister by a non-holder.
        let e = b.sessions().unregister(1u64, q.pid()).await.unwrap_err();
        assert!(
            matches!(e, NodeError::NotHolder { holder: Some(h) } if h == p.pid()),
            "{e}"
        );
        // A pid of another node.
        let e = s.register(2u64, q.pid(), Policy::Reject).await.unwrap_err();
        assert!(
            matches!(e, NodeError::Session(SessionCallError::ForeignPid(_))),
            "{e}"
        );
        // An oversized key names the limit.
        let big = vec![b'k'; 100_000];
        let e = s
            .register(&big[..], p.pid(), Policy::Reject)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                NodeError::Session(SessionCallError::Refused(SessionError::KeyTooLarge { .. }))
            ),
            "{e}"
        );
        assert!(e.to_string().contains("100000"), "{e}");
        // The reserved roles scope cannot be joined.
        let e = a
            .join(meshreg::node::ROLES_SCOPE, SESSION_ROLE, p.pid())
            .await
            .unwrap_err();
        assert!(matches!(e, NodeError::ReservedScope(_)), "{e}");
        // Nothing changed.
        assert_eq!(s.lookup(1u64).await.unwrap().map(|s| s.pid), Some(p.pid()));
        assert_eq!(s.lookup(2u64).await.unwrap(), None);
        assert_eq!(a.members(meshreg::node::ROLES_SCOPE, SESSION_ROLE).len(), 1);
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}
