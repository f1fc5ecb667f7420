//! Exact-output tests of the key transitions of a [`SessionManager`].

use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::{Channel, MemberEvent, NodeId, loopback_addr};

use super::server::next_epoch;
use super::wire::{self, ManagerMessage};
use super::*;
use crate::session::{
    Answer, Body, Call, Outcome, Policy, Reply, RequestId, Role, SessionKey, ShardId,
};

const CLUSTER: u32 = 3;
const T0: Duration = Duration::from_secs(1);

fn node(i: u32) -> NodeId {
    NodeId::new(loopback_addr(i, 7000), 1 << 16)
}

fn config() -> ManagerConfig {
    ManagerConfig {
        shards: 4,
        ..ManagerConfig::default()
    }
}

fn manager(i: u32, live: &[u32], roles: &[u32]) -> SessionManager {
    let mut m = SessionManager::new(node(i), CLUSTER, config());
    let mut out = Vec::new();
    for &j in live {
        if j != i {
            m.member_event(T0, MemberEvent::Up(node(j)), &mut out);
        }
    }
    m.set_session_nodes(T0, roles.iter().map(|&j| node(j).addr()), &mut out);
    m
}

/// The messages among `out`, decoded, with their destination.
fn sent(out: &[SessionOutput]) -> Vec<(SocketAddrV4, ManagerMessage)> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Send {
                to,
                channel,
                payload,
            } => {
                assert_eq!(*channel, Channel::Stream);
                Some((*to, wire::decode(payload, CLUSTER).expect("decodes")))
            }
            _ => None,
        })
        .collect()
}

/// Releases what `m` held; exactly one message must leave.
fn release_one(m: &mut SessionManager) -> (SocketAddrV4, ManagerMessage) {
    let mut out = Vec::new();
    m.release(T0, &mut out);
    let mut msgs = sent(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs.remove(0)
}

fn deliver(m: &mut SessionManager, from: u32, msg: &ManagerMessage) -> Vec<SessionOutput> {
    let mut out = Vec::new();
    let bytes = wire::encode(msg, CLUSTER);
    m.handle_message(T0, node(from).addr(), Channel::Stream, &bytes, &mut out)
        .expect("accepted");
    out
}

#[test]
fn a_lone_session_node_starts_a_term_for_every_shard_at_the_first_epoch() {
    let mut m = manager(1, &[1], &[1]);
    let terms = m.drain_terms();
    let e = next_epoch(0, node(1));
    assert_eq!(e >> 48, 1, "term 1");
    assert_eq!(
        e & 0xFFFF_FFFF_FFFF,
        node(1).addr_key(),
        "the node's address bits"
    );
    assert_eq!(terms, (0..4).map(|s| (ShardId(s), e)).collect::<Vec<_>>());
    assert!((0..4).all(|s| m.replica(ShardId(s)).map(|r| r.role()) == Some(Role::Primary)));
}

#[test]
fn a_new_primary_asks_for_epochs_then_fills_its_standby_and_announces_the_term() {
    // Node 1 and node 2 have the role; pick a shard node 1 ranks first in.
    let mut m = SessionManager::new(node(1), CLUSTER, config());
    let mut out = Vec::new();
    m.member_event(T0, MemberEvent::Up(node(2)), &mut out);
    m.set_session_nodes(T0, [node(1).addr(), node(2).addr()], &mut out);
    let mine: Vec<ShardId> = (0..4)
        .map(ShardId)
        .filter(|s| m.placement().primary(*s) == Some(node(1)))
        .collect();
    assert!(!mine.is_empty());
    let queries: Vec<_> = sent(&out)
        .into_iter()
        .filter(|(_, msg)| matches!(msg, ManagerMessage::EpochQuery { .. }))
        .collect();
    assert_eq!(
        queries.len(),
        mine.len(),
        "one query per shard becoming primary"
    );
    assert!(queries.iter().all(|(to, _)| *to == node(2).addr()));
    assert!(m.drain_terms().is_empty(), "no term before node 2 answered");

    // Node 2 saw epoch 7 of the first shard: the term goes above it.
    let (_, ManagerMessage::EpochQuery { round, shards }) = &queries[0] else {
        unreachable!()
    };
    let shard = shards[0];
    let seen = 7 << 48;
    let out = deliver(
        &mut m,
        2,
        &ManagerMessage::EpochReport {
            round: *round,
            epochs: vec![(shard, seen)],
        },
    );
    let epoch = next_epoch(seen, node(1));
    assert_eq!(m.drain_terms(), vec![(shard, epoch)]);
    let msgs = sent(&out);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    match &msgs[0] {
        (to, ManagerMessage::Fill(snap)) => {
            assert_eq!(*to, node(2).addr());
            assert_eq!((snap.shard, snap.epoch, snap.seq), (shard, epoch, 0));
        }
        other => panic!("expected a fill, got {other:?}"),
    }
    assert_eq!(
        msgs[1],
        (node(2).addr(), ManagerMessage::Terms(vec![(shard, epoch)]))
    );
}

#[test]
fn a_call_is_batched_refused_for_its_epoch_and_resent_with_the_one_learned() {
    // Node 5 is a client; node 1 the only session node.
    let mut m = manager(5, &[1, 5], &[1]);
    let mut out = Vec::new();
    let pid = crate::Pid {
        node: node(5),
        serial: 9,
    };
    let key = SessionKey::U64(42);
    m.register(T0, 1, key.clone(), pid, b"x", Policy::Reject, &mut out);
    m.lookup(T0, 2, SessionKey::U64(43), &mut out);
    assert!(sent(&out).is_empty(), "held for the flush");
    assert!(out.contains(&SessionOutput::SetTimer {
        after: Duration::ZERO,
        timer: SessionTimer::Flush
    }));
    let mut out = Vec::new();
    m.handle_timer(T0, SessionTimer::Flush, &mut out);
    let msgs = sent(&out);
    assert_eq!(msgs.len(), 1, "both calls in one message");
    let ManagerMessage::Requests(reqs) = &msgs[0].1 else {
        panic!("{msgs:?}")
    };
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].epoch, 0);
    assert_eq!(reqs[0].id.client, node(5).root());

    // The primary is at epoch 9: the register goes again at once, same id, epoch 9.
    let stale = Reply {
        to: reqs[0].id,
        result: Err(crate::session::SessionError::StaleEpoch { current: 9 }),
    };
    let out = deliver(&mut m, 1, &ManagerMessage::Replies(vec![stale]));
    let mut out2 = out.clone();
    m.handle_timer(T0, SessionTimer::Flush, &mut out2);
    let again: Vec<_> = sent(&out2)
        .into_iter()
        .flat_map(|(_, msg)| match msg {
            ManagerMessage::Requests(r) => r,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].epoch), (reqs[0].id, 9));

    // Acknowledged: completed, and owned for re-assertion.
    let ok = Reply {
        to: reqs[0].id,
        result: Ok(Outcome::One(Answer::Registered { version: 1 })),
    };
    let out = deliver(&mut m, 1, &ManagerMessage::Replies(vec![ok]));
    assert_eq!(
        out,
        vec![SessionOutput::Completed {
            req: 1,
            result: Ok(Outcome::One(Answer::Registered { version: 1 }))
        }]
    );
    assert_eq!(m.owned().collect::<Vec<_>>(), vec![(&key, pid)]);

    // A new term of that shard: the session is re-asserted there.
    let shard = m.placement().shard_of(&key);
    let mut out = deliver(&mut m, 1, &ManagerMessage::Terms(vec![(shard, 11)]));
    m.handle_timer(T0, SessionTimer::Flush, &mut out);
    let reassert: Vec<_> = sent(&out)
        .into_iter()
        .flat_map(|(_, msg)| match msg {
            ManagerMessage::Requests(r) => r,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(reassert.len(), 1);
    assert_eq!(reassert[0].epoch, 11);
    let Body::Reassert(all) = &reassert[0].body else {
        panic!("{:?}", reassert[0].body)
    };
    assert_eq!((all[0].key.clone(), all[0].pid), (key, pid));
}

#[test]
fn oversized_keys_and_foreign_pids_are_refused_without_sending() {
    let mut m = manager(5, &[1, 5], &[1]);
    let mut out = Vec::new();
    let pid = crate::Pid {
        node: node(5),
        serial: 1,
    };
    let big = SessionKey::Bytes(vec![0; 300].into_boxed_slice());
    m.register(T0, 1, big, pid, b"", Policy::Reject, &mut out);
    let foreign = crate::Pid {
        node: node(6),
        serial: 1,
    };
    m.unregister(T0, 2, SessionKey::U64(1), foreign, &mut out);
    assert_eq!(
        out,
        vec![
            SessionOutput::Completed {
                req: 1,
                result: Err(SessionCallError::Refused(
                    crate::session::SessionError::KeyTooLarge {
                        call: 0,
                        len: 300,
                        max: 256
                    }
                ))
            },
            SessionOutput::Completed {
                req: 2,
                result: Err(SessionCallError::ForeignPid(foreign))
            },
        ]
    );
    assert_eq!(m.pending_requests(), 0);
}

/// Node 1 (`a`) and node 2 (`b`), both session nodes, after node 1's epoch round and fill:
/// `a` serves the shard returned with `b` as its standby.
fn serving_pair() -> (SessionManager, SessionManager, ShardId) {
    let mut a = manager(1, &[1, 2], &[1, 2]);
    let mut b = manager(2, &[1, 2], &[1, 2]);
    let shard = (0..4)
        .map(ShardId)
        .find(|s| a.placement().primary(*s) == Some(node(1)))
        .expect("node 1 ranks first somewhere");
    // Run the epoch round and the fill between the two.
    let mut pending = vec![(1u32, 2u32, ManagerMessage::Terms(Vec::new()))];
    pending.clear();
    let mut out = Vec::new();
    a.handle_timer(T0, SessionTimer::Tick, &mut out);
    for (to, msg) in sent(&out) {
        pending.push((1, if to == node(2).addr() { 2 } else { 1 }, msg));
    }
    while let Some((from, to, msg)) = pending.pop() {
        let m = if to == 1 { &mut a } else { &mut b };
        let out = deliver(m, from, &msg);
        for (dest, msg) in sent(&out) {
            let dest = if dest == node(1).addr() { 1 } else { 2 };
            pending.insert(0, (to, dest, msg));
        }
    }
    let primary = a.replica(shard).expect("serving");
    assert_eq!(primary.role(), Role::Primary);
    let standby = b.replica(shard).expect("filled");
    assert_eq!(
        (standby.role(), standby.epoch()),
        (Role::Standby, primary.epoch())
    );
    (a, b, shard)
}

/// A register request of `key` for node 2's process 1, as node 2's request `id`.
fn register_request(
    shard: ShardId,
    epoch: u64,
    id: u64,
    key: SessionKey,
) -> crate::session::Request {
    crate::session::Request {
        shard,
        epoch,
        id: RequestId {
            client: node(2),
            id,
        },
        answered_below: 0,
        body: Body::One(Call::Register {
            key,
            pid: crate::Pid {
                node: node(2),
                serial: 1,
            },
            metadata: Box::new([]),
            policy: Policy::Reject,
        }),
    }
}

#[test]
fn the_standby_takes_over_with_its_sessions_when_the_primary_goes_down() {
    // Node 1 primary, node 2 standby of every shard they share; node 2 alone after the Down.
    let (mut a, mut b, shard) = serving_pair();
    let primary = a.replica(shard).expect("serving");
    // A write on node 1's shard, replicated to node 2.
    let pid = crate::Pid {
        node: node(2),
        serial: 1,
    };
    let key = (0u64..)
        .map(SessionKey::U64)
        .find(|k| a.placement().shard_of(k) == shard)
        .expect("some key");
    let req = register_request(shard, primary.epoch(), 1, key.clone());
    let out = deliver(&mut a, 2, &ManagerMessage::Requests(vec![req]));
    let (_, rep) = sent(&out)
        .into_iter()
        .find(|(_, m)| matches!(m, ManagerMessage::Replicate(_)))
        .expect("replicated before the reply");
    deliver(&mut b, 1, &rep);
    let old = a.replica(shard).map(|r| r.epoch()).unwrap_or(0);

    // Node 1 goes Down: node 2 has nobody to ask, promotes at once, keeps the session.
    let mut out = Vec::new();
    b.member_event(T0, MemberEvent::Down(node(1)), &mut out);
    let r = b.replica(shard).expect("promoted");
    assert_eq!(r.role(), Role::Primary);
    assert_eq!(r.epoch(), next_epoch(old, node(2)));
    assert!(r.epoch() > old);
    assert_eq!(r.peek(&key).map(|s| s.pid), Some(pid));
    let epoch = r.epoch();
    assert!(b.drain_terms().contains(&(shard, epoch)));
}

#[test]
fn held_inputs_send_one_replicate_one_ack_and_one_reply_message_per_peer() {
    let (mut a, mut b, shard) = serving_pair();
    let epoch = a.replica(shard).expect("serving").epoch();
    let keys: Vec<SessionKey> = (0u64..)
        .map(SessionKey::U64)
        .filter(|k| a.placement().shard_of(k) == shard)
        .take(2)
        .collect();
    let reqs: Vec<ManagerMessage> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let req = register_request(shard, epoch, i as u64 + 1, k.clone());
            ManagerMessage::Requests(vec![req])
        })
        .collect();

    // Unheld, each input replicates on its own (checked on a copy of the primary's input).
    let (mut a2, _, _) = serving_pair();
    let unheld: usize = reqs
        .iter()
        .map(|r| sent(&deliver(&mut a2, 2, r)).len())
        .sum();
    assert_eq!(unheld, 2, "one Replicate per input");

    // Held: nothing leaves until the release, then one Replicate with both entries.
    a.hold();
    for r in &reqs {
        assert!(sent(&deliver(&mut a, 2, r)).is_empty(), "held");
    }
    let (to, msg) = release_one(&mut a);
    let ManagerMessage::Replicate(entries) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!((to, entries.len()), (node(2).addr(), 2));

    // The standby applies them over two held inputs: one cumulative ack at the release.
    b.hold();
    for e in entries {
        let one = ManagerMessage::Replicate(vec![e.clone()]);
        assert!(sent(&deliver(&mut b, 1, &one)).is_empty(), "held");
    }
    let (to, ack_msg) = release_one(&mut b);
    let ManagerMessage::Acks(acks) = &ack_msg else {
        panic!("{ack_msg:?}")
    };
    assert_eq!(to, node(1).addr());
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].seq, entries[1].seq, "the newest entry");

    // The primary releases both replies only on the ack, in one message at its release.
    a.hold();
    assert!(sent(&deliver(&mut a, 2, &ack_msg)).is_empty(), "held");
    let (to, msg) = release_one(&mut a);
    let ManagerMessage::Replies(replies) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(to, node(2).addr());
    let ids: Vec<u64> = replies.iter().map(|r| r.to.id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert!(replies.iter().all(|r| r.result.is_ok()), "{replies:?}");
}

#[test]
fn calls_to_a_served_shard_replicate_together_at_the_flush() {
    let (mut a, _, shard) = serving_pair();
    let pid = Pid {
        node: node(1),
        serial: 3,
    };
    let keys: Vec<SessionKey> = (0u64..)
        .map(SessionKey::U64)
        .filter(|k| a.placement().shard_of(k) == shard)
        .take(2)
        .collect();
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        a.register(
            T0,
            i as u64 + 1,
            k.clone(),
            pid,
            b"",
            Policy::Reject,
            &mut out,
        );
    }
    assert!(sent(&out).is_empty(), "{out:?}");
    assert!(
        !out.iter()
            .any(|o| matches!(o, SessionOutput::Completed { .. })),
        "nothing completes before the standby acknowledged"
    );
    let flushes = out
        .iter()
        .filter(|o| {
            matches!(
                o,
                SessionOutput::SetTimer {
                    timer: SessionTimer::Flush,
                    ..
                }
            )
        })
        .count();
    assert_eq!(flushes, 1, "{out:?}");
    let mut out = Vec::new();
    a.handle_timer(T0, SessionTimer::Flush, &mut out);
    let msgs = sent(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let (to, ManagerMessage::Replicate(entries)) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!((*to, entries.len()), (node(2).addr(), 2));
}

#[test]
fn a_call_to_a_shard_this_node_serves_completes_within_the_call() {
    // A lone session node serves every shard itself: the call must not wait for some later
    // input (a tick, a message) to be delivered to its own shard.
    let mut m = manager(1, &[1], &[1]);
    let mut out = Vec::new();
    let pid = Pid {
        node: node(1),
        serial: 9,
    };
    m.register(
        T0,
        1,
        SessionKey::U64(5),
        pid,
        b"",
        Policy::Reject,
        &mut out,
    );
    m.lookup(T0, 2, SessionKey::U64(5), &mut out);
    m.lookup_many(
        T0,
        3,
        vec![SessionKey::U64(5), SessionKey::U64(6)],
        &mut out,
    );
    let done: Vec<CallId> = out
        .iter()
        .filter_map(|o| match o {
            SessionOutput::Completed { req, result } => {
                assert!(result.is_ok(), "{result:?}");
                Some(*req)
            }
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![1, 2, 3]);
    out.clear();
    m.unregister(T0, 4, SessionKey::U64(5), pid, &mut out);
    assert!(out.iter().any(|o| matches!(
        o,
        SessionOutput::Completed {
            req: 4,
            result: Ok(Outcome::One(Answer::Unregistered))
        }
    )));
}

#[test]
fn a_newcomer_is_told_the_terms_this_node_serves() {
    let mut m = manager(1, &[1], &[1]);
    let served: Vec<(ShardId, crate::session::Epoch)> = m.drain_terms();
    assert_eq!(served.len(), 4);
    let mut out = Vec::new();
    m.member_event(T0, MemberEvent::Up(node(2)), &mut out);
    let terms: Vec<_> = sent(&out)
        .into_iter()
        .filter_map(|(to, msg)| match msg {
            ManagerMessage::Terms(t) => Some((to, t)),
            _ => None,
        })
        .collect();
    assert_eq!(terms, vec![(node(2).addr(), served)]);
}

fn tick_at(m: &mut SessionManager, at: Duration) -> Vec<SessionOutput> {
    let mut out = Vec::new();
    m.handle_timer(at, SessionTimer::Tick, &mut out);
    out
}

fn suspects(out: &[SessionOutput]) -> Vec<NodeId> {
    out.iter()
        .filter_map(|o| match o {
            SessionOutput::Suspect(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[test]
fn replication_partners_keep_quiet_links_alive_and_report_a_silent_partner() {
    let (mut a, mut b, _) = serving_pair();
    let ms = Duration::from_millis;
    // Node 1 sent node 2 nothing since T0: its tick sends a keepalive, and suspects nobody.
    let out = tick_at(&mut a, T0 + ms(200));
    assert!(suspects(&out).is_empty());
    let keepalive: Vec<_> = sent(&out)
        .into_iter()
        .filter(|(to, m)| *to == node(2).addr() && *m == ManagerMessage::Replicate(Vec::new()))
        .collect();
    assert_eq!(keepalive.len(), 1, "{out:?}");
    // A keepalive is only for a quiet link: a second tick at the same time sends none.
    assert!(sent(&tick_at(&mut a, T0 + ms(200))).is_empty());
    let mut none = Vec::new();
    let bytes = wire::encode(&keepalive[0].1, CLUSTER);
    b.handle_message(
        T0 + ms(200),
        node(1).addr(),
        Channel::Stream,
        &bytes,
        &mut none,
    )
    .expect("a keepalive is accepted");
    assert!(none.is_empty(), "{none:?}");
    // Node 2 heard node 1 at +200 ms: silent for 400 ms is within the patience.
    assert!(suspects(&tick_at(&mut b, T0 + ms(600))).is_empty());
    // Nothing more arrives: node 2 reports its primary, node 1 (who heard nothing from its
    // standby since T0) reports its standby, each once per tick while the silence lasts.
    assert_eq!(suspects(&tick_at(&mut b, T0 + ms(800))), vec![node(1)]);
    assert_eq!(suspects(&tick_at(&mut a, T0 + ms(800))), vec![node(2)]);
    assert_eq!(b.stats().suspected, 1);
    // With the watch off, silence is never reported.
    let (mut a, _, _) = serving_pair();
    a.config.suspect_silent_after = None;
    assert!(suspects(&tick_at(&mut a, T0 + ms(10_000))).is_empty());
}
