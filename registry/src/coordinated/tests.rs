//! Unit and small-cluster tests of the coordinated backend (harness in `harness.rs`).

use std::net::SocketAddrV4;

use meshreg_membership::wire::{self, Kind};
use meshreg_membership::{Channel, MemberEvent, NodeId};
use proptest::prelude::*;

use super::harness::{CLUSTER, Cluster, group, node_id, scope};
use super::message::{self, Message, NackReason, Op, PartitionState, Refused, Ticket};
use super::{CoordinatedGroups, DEFAULT_PARTITIONS_PER_SCOPE};
use crate::groups::GroupError;
use crate::{CallError, MessageError, Pid, RegistryCore, RegistryOutput};

/// A group of scope "s" whose boss in a full view of `c` is not node `not`.
fn group_not_bossed_by(c: &Cluster, not: usize) -> String {
    (0..100)
        .map(|k| format!("g{k}"))
        .find(|g| c.boss_index(0, "s", g) != not)
        .unwrap()
}

fn ok_everywhere(c: &Cluster, i: usize, req: u64, expected: usize) {
    let done = c.completion(i, req).expect("completed");
    assert_eq!(done.result, Ok(()));
    for (&j, &k) in &done.occurrences {
        assert_eq!(k, expected, "node {j} at the moment of Completed");
    }
}

#[test]
fn join_completes_only_after_every_live_node_applied_it() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    let g = group_not_bossed_by(&c, 1);
    let req = c.join(1, "s", &g, 10, b"m");
    assert!(
        c.completion(1, req).is_none(),
        "not before the boss answered"
    );
    c.settle();
    ok_everywhere(&c, 1, req, 1);
    assert_eq!(c.completions.len(), 1);
    assert_eq!(c.assert_converged().len(), 1);
}

#[test]
fn a_join_costs_two_messages_per_other_node_plus_request_and_done() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    let g = group_not_bossed_by(&c, 1);
    c.join(1, "s", &g, 10, b"");
    c.settle(); // first use of the scope: every boss recovers its partitions
    let before: u64 = c.nodes.iter().map(|n| n.stats().messages_sent()).sum();
    let boss = c.boss_index(0, "s", &g);
    let recovers = c.nodes[boss].stats().sent_of("recover");
    let req = c.join(1, "s", &g, 11, b"");
    c.settle();
    ok_everywhere(&c, 1, req, 1);
    let after: u64 = c.nodes.iter().map(|n| n.stats().messages_sent()).sum();
    // Request + 3 Apply + 3 Ack + Done.
    assert_eq!(after - before, 8);
    assert_eq!(c.nodes[boss].stats().sent_of("apply"), 6);
    assert_eq!(c.nodes[boss].stats().sent_of("recover"), recovers);
}

/// Recovers sent by the whole cluster so far.
fn recovers(c: &Cluster) -> u64 {
    c.nodes.iter().map(|n| n.stats().sent_of("recover")).sum()
}

#[test]
fn a_scope_in_use_has_every_partition_recovered_before_its_first_write() {
    let (n, parts) = (4, 16u16);
    let mut c = Cluster::new(n, parts);
    c.join(1, "s", "g0", 1, b"");
    c.settle();
    // Each partition was recovered once, by its boss, from the 3 other nodes.
    assert_eq!(recovers(&c), u64::from(parts) * 3);
    let groups: Vec<String> = (1..64).map(|k| format!("g{k}")).collect();
    let mut parts_hit = std::collections::BTreeSet::new();
    for (k, g) in groups.iter().enumerate() {
        parts_hit.insert(c.nodes[0].partition_of("s", g));
        let req = c.join(k % n, "s", g, 10 + k as u64, b"");
        c.settle();
        ok_everywhere(&c, k % n, req, 1);
    }
    assert_eq!(
        parts_hit.len(),
        usize::from(parts),
        "every partition written"
    );
    assert_eq!(
        recovers(&c),
        u64::from(parts) * 3,
        "no write waited for a recovery"
    );
    assert_eq!(c.assert_converged().len(), 64);
}

#[test]
fn partitions_that_move_at_a_view_change_are_recovered_without_a_write() {
    let mut c = Cluster::new(4, 16);
    c.join(0, "s", "g0", 1, b"");
    c.settle();
    // Node 3 bosses some partitions: they move to the others when it goes.
    let moved: Vec<u16> = (0..16)
        .filter(|&p| c.nodes[0].boss_of("s", p) == c.nodes[3].me())
        .collect();
    assert!(!moved.is_empty());
    let before = recovers(&c);
    c.crash(3);
    c.settle();
    // Each moved partition recovered once, from the 2 other survivors.
    assert_eq!(recovers(&c) - before, moved.len() as u64 * 2);
    let before = recovers(&c);
    for k in 0..48u64 {
        let g = format!("h{k}");
        let req = c.join(0, "s", &g, 100 + k, b"");
        c.settle();
        ok_everywhere(&c, 0, req, 1);
    }
    assert_eq!(recovers(&c), before);
}

#[test]
fn join_on_the_boss_node_needs_no_request_message() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let boss = c.boss_index(0, "s", "g");
    let req = c.join(boss, "s", "g", 1, b"");
    c.settle();
    ok_everywhere(&c, boss, req, 1);
    assert_eq!(c.nodes[boss].stats().sent_of("request"), 0);
    assert_eq!(c.nodes[boss].stats().sent_of("done"), 0);
}

#[test]
fn concurrent_joins_from_several_nodes_end_identical_everywhere() {
    let mut c = Cluster::new(5, 4);
    let mut reqs = Vec::new();
    for round in 0..3u64 {
        for i in 0..5 {
            reqs.push((i, c.join(i, "s", "g", round, &[u8::try_from(i).unwrap()])));
            reqs.push((i, c.join(i, "s", "h", round, b"")));
        }
    }
    c.settle();
    for (i, req) in reqs {
        assert_eq!(c.completion(i, req).unwrap().result, Ok(()));
    }
    let view = c.assert_converged();
    assert_eq!(view.len(), 30);
    let node = &c.nodes[0];
    let p = node.partition_of("s", "g");
    for j in 1..5 {
        assert_eq!(c.nodes[j].applied_seq("s", p), node.applied_seq("s", p));
    }
}

#[test]
fn leave_then_members_shows_nothing_anywhere() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    c.join(2, "s", "g", 7, b"");
    c.join(2, "s", "g", 7, b"");
    c.settle();
    let l1 = c.leave(2, "s", "g", 7);
    c.settle();
    ok_everywhere(&c, 2, l1, 1);
    let l2 = c.leave(2, "s", "g", 7);
    c.settle();
    ok_everywhere(&c, 2, l2, 0);
    for i in 0..4 {
        assert_eq!(c.nodes[i].table().members("s", "g").len(), 0);
    }
    let l3 = c.leave(2, "s", "g", 7);
    c.settle();
    let pid = c.pid(2, 7);
    assert_eq!(
        c.completion(2, l3).unwrap().result,
        Err(CallError::Group(GroupError::NotJoined {
            scope: scope("s"),
            group: group("g"),
            pid
        }))
    );
}

#[test]
fn bad_calls_fail_at_once_without_messages() {
    let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
    let mut out = Vec::new();
    let remote = Pid {
        node: node_id(1, 1).root(),
        serial: 1,
    };
    n.join(
        std::time::Duration::ZERO,
        1,
        &scope("s"),
        &group("g"),
        remote,
        b"",
        &mut out,
    );
    let local = Pid {
        node: node_id(0, 1).root(),
        serial: 1,
    };
    n.join(
        std::time::Duration::ZERO,
        2,
        &scope("s"),
        &group("g"),
        local,
        &[0; 513],
        &mut out,
    );
    assert_eq!(
        out,
        vec![
            RegistryOutput::Completed {
                req: 1,
                result: Err(CallError::Group(GroupError::ForeignPid {
                    pid: remote,
                    node: node_id(0, 1).root()
                }))
            },
            RegistryOutput::Completed {
                req: 2,
                result: Err(CallError::Group(GroupError::MetaTooLarge {
                    len: 513,
                    cap: 512
                }))
            },
        ]
    );
    assert_eq!(n.table().membership_count(), 0);
    assert!(n.is_quiet());
}

#[test]
fn a_lone_node_completes_a_join_at_once() {
    let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
    let mut out = Vec::new();
    let pid = Pid {
        node: node_id(0, 1).root(),
        serial: 1,
    };
    let t = std::time::Duration::ZERO;
    n.join(t, 9, &scope("s"), &group("g"), pid, b"", &mut out);
    // The scope's first call warmed its terms (no other node to hear from), so even the
    // first join takes the lone-node path: no retry timer.
    assert!(matches!(
        &out[..],
        [RegistryOutput::Completed {
            req: 9,
            result: Ok(())
        }]
    ));
    assert_eq!(n.table().members("s", "g").len(), 1);
}

#[test]
fn a_lone_node_orders_later_calls_within_the_call_as_the_boss_path_does() {
    let me = node_id(0, 1);
    let mut n = CoordinatedGroups::new(me, CLUSTER, 1);
    let mut out = Vec::new();
    let pid = |serial| Pid {
        node: me.root(),
        serial,
    };
    let t = std::time::Duration::ZERO;
    // The first call recovers the partition (a retry timer guards it).
    n.join(t, 1, &scope("s"), &group("g"), pid(1), b"", &mut out);
    assert_eq!(n.applied_seq("s", 0), 1);
    out.clear();
    // Later ones are ordered and answered at once: no timer, same seq accounting.
    n.join(t, 2, &scope("s"), &group("g"), pid(2), b"m", &mut out);
    n.leave(t, 3, &scope("s"), &group("h"), pid(2), &mut out);
    n.leave(t, 4, &scope("s"), &group("g"), pid(1), &mut out);
    assert!(
        !out.iter()
            .any(|o| matches!(o, RegistryOutput::SetTimer { .. })),
        "{out:?}"
    );
    let results: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            RegistryOutput::Completed { req, result } => Some((*req, result.is_ok())),
            _ => None,
        })
        .collect();
    assert_eq!(results, [(2, true), (3, false), (4, true)]);
    // The refused leave is ordered too (its refusal is remembered), as on the boss path.
    assert_eq!(n.applied_seq("s", 0), 4);
    assert!(n.is_quiet());
    let members: Vec<_> = n.table().members("s", "g").map(|m| m.pid).collect();
    assert_eq!(members, [pid(2)]);
    // A node that comes Up later gets this state, and the next calls wait for its acks.
    let other = node_id(1, 1);
    n.member_event(t, MemberEvent::Up(other), &mut out);
    out.clear();
    n.join(t, 5, &scope("s"), &group("g"), pid(3), b"", &mut out);
    assert!(
        !out.iter()
            .any(|o| matches!(o, RegistryOutput::Completed { .. })),
        "not alone: the join waits for the other node"
    );
}

/// The requester's completion waits for every node's ack anyway, so the boss sends it the
/// Apply last and every other node's view changes as early as it can.
#[test]
fn a_boss_sends_the_requester_its_apply_last() {
    let mut c = Cluster::new(5, DEFAULT_PARTITIONS_PER_SCOPE);
    for requester in 0..5 {
        let g = (0..100)
            .map(|k| format!("r{requester}g{k}"))
            .find(|g| c.boss_index(0, "s", g) != requester)
            .unwrap();
        let boss = c.boss_index(requester, "s", &g);
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = order.clone();
        c.hold = Some(Box::new(move |from, to, m| {
            if from == boss && matches!(m, Message::Apply { .. }) {
                seen.borrow_mut().push(to);
            }
            false
        }));
        let req = c.join(requester, "s", &g, 1 + requester as u64, b"");
        c.settle();
        c.hold = None;
        ok_everywhere(&c, requester, req, 1);
        let order = order.borrow();
        assert_eq!(order.len(), 4, "one Apply per other node: {order:?}");
        assert_eq!(order.last(), Some(&requester), "boss {boss}: {order:?}");
    }
}

#[test]
fn boss_crash_mid_apply_recovers_the_highest_seq_without_double_apply() {
    let mut c = Cluster::new(5, DEFAULT_PARTITIONS_PER_SCOPE);
    let requester = 0;
    let g = group_not_bossed_by(&c, requester);
    let boss = c.boss_index(0, "s", &g);
    c.join(requester, "s", &g, 1, b"");
    c.settle();
    // The next Apply reaches only the requester and one other node; the rest is held.
    let lucky = (0..5).find(|&i| i != boss && i != requester).unwrap();
    c.hold = Some(Box::new(move |from, to, m| {
        from == boss && to != requester && to != lucky && matches!(m, Message::Apply { .. })
    }));
    let req = c.join(requester, "s", &g, 2, b"");
    c.run();
    assert!(c.completion(requester, req).is_none());
    let p = c.nodes[0].partition_of("s", &g);
    assert_eq!(c.nodes[lucky].applied_seq("s", p), 2);
    c.hold = None;
    c.held.clear(); // they die with the boss
    c.crash(boss);
    c.settle();
    ok_everywhere(&c, requester, req, 1);
    let view = c.assert_converged();
    assert_eq!(view.len(), 2, "{view:?}");
    for i in c.live() {
        assert_eq!(c.nodes[i].applied_seq("s", p), 2, "node {i}: applied once");
    }
    let new_boss = c.boss_index(requester, "s", &g);
    assert!(c.nodes[new_boss].stats().recoveries >= 1);
    assert!(c.nodes[requester].stats().retries >= 1);
}

#[test]
fn boss_crash_before_any_apply_lets_the_retry_apply_once() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    let g = group_not_bossed_by(&c, 0);
    let boss = c.boss_index(0, "s", &g);
    c.hold = Some(Box::new(move |_, to, m| {
        to == boss && matches!(m, Message::Request { .. })
    }));
    let req = c.join(0, "s", &g, 1, b"");
    c.run();
    c.hold = None;
    c.held.clear();
    c.crash(boss);
    c.settle();
    ok_everywhere(&c, 0, req, 1);
    c.assert_converged();
}

fn sealed(m: &Message) -> Vec<u8> {
    message::encode(m, CLUSTER)
}

#[test]
fn a_stale_epoch_apply_is_nacked_and_changes_nothing() {
    let mut c = Cluster::new(2, DEFAULT_PARTITIONS_PER_SCOPE);
    let boss = c.boss_index(0, "s", "g");
    let other = 1 - boss;
    c.join(boss, "s", "g", 1, b"");
    c.settle();
    let p = c.nodes[other].partition_of("s", "g");
    assert_eq!(c.nodes[other].epoch_of("s", p), 1);
    let boss_id = c.nodes[boss].me();
    let stale = Message::Apply {
        epoch: 0,
        seq: 2,
        origin: (boss_id, Ticket::Call(99)),
        op: Op::Join {
            scope: scope("s"),
            group: group("g"),
            pid: c.pid(boss, 2),
            meta: Box::default(),
        },
    };
    let mut out = Vec::new();
    let now = c.now;
    let r = c.nodes[other].handle_message(
        now,
        boss_id.addr(),
        Channel::Stream,
        &sealed(&stale),
        &mut out,
    );
    assert_eq!(r, Ok(()));
    let nack = Message::Nack {
        scope: scope("s"),
        partition: p,
        what: Refused::Apply { epoch: 0, seq: 2 },
        reason: NackReason::StaleEpoch { known: 1 },
    };
    assert_eq!(
        out,
        vec![RegistryOutput::Send {
            to: boss_id.addr(),
            channel: Channel::Stream,
            payload: sealed(&nack)
        }]
    );
    assert_eq!(c.nodes[other].applied_seq("s", p), 1);
    assert_eq!(c.nodes[other].table().members("s", "g").len(), 1);
}

#[test]
fn an_apply_from_a_node_that_is_not_the_boss_is_nacked() {
    // Cold: the Apply is node b's first word of scope "s", and warming would add b's own
    // Recovers to the output under test.
    let mut c = Cluster::cold(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let boss = c.boss_index(0, "s", "g");
    let (a, b) = match boss {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let a_id = c.nodes[a].me();
    let m = Message::Apply {
        epoch: 5,
        seq: 1,
        origin: (a_id, Ticket::Call(1)),
        op: Op::Join {
            scope: scope("s"),
            group: group("g"),
            pid: c.pid(a, 1),
            meta: Box::default(),
        },
    };
    let mut out = Vec::new();
    let now = c.now;
    c.nodes[b]
        .handle_message(now, a_id.addr(), Channel::Stream, &sealed(&m), &mut out)
        .unwrap();
    let p = c.nodes[b].partition_of("s", "g");
    let nack = Message::Nack {
        scope: scope("s"),
        partition: p,
        what: Refused::Apply { epoch: 5, seq: 1 },
        reason: NackReason::NotBoss,
    };
    assert_eq!(
        out,
        vec![RegistryOutput::Send {
            to: a_id.addr(),
            channel: Channel::Stream,
            payload: sealed(&nack)
        }]
    );
    assert_eq!(c.nodes[b].table().membership_count(), 0);
}

#[test]
fn a_fenced_boss_restarts_its_term_above_the_known_epoch() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let boss = c.boss_index(0, "s", "g");
    let other = (boss + 1) % 3;
    c.join(boss, "s", "g", 1, b"");
    c.settle();
    let p = c.nodes[boss].partition_of("s", "g");
    // A replica reports a newer promise than the boss's term (as after a term it missed).
    let nack = Message::Nack {
        scope: scope("s"),
        partition: p,
        what: Refused::Apply { epoch: 1, seq: 2 },
        reason: NackReason::StaleEpoch { known: 4 },
    };
    let mut out = Vec::new();
    let (now, from) = (c.now, c.nodes[other].me().addr());
    c.nodes[boss]
        .handle_message(now, from, Channel::Stream, &sealed(&nack), &mut out)
        .unwrap();
    assert_eq!(c.nodes[boss].stats().fenced, 1);
    assert_eq!(c.nodes[boss].epoch_of("s", p), 5);
    let recovers = out
        .iter()
        .filter(|o| matches!(o, RegistryOutput::Send { .. }))
        .count();
    assert_eq!(recovers, 2, "a new term recovers from both other nodes");
}

#[test]
fn a_sync_of_a_term_it_did_not_promise_is_refused_by_a_node_with_written_state() {
    let mut c = Cluster::new(2, DEFAULT_PARTITIONS_PER_SCOPE);
    let boss = c.boss_index(0, "s", "g");
    let other = 1 - boss;
    c.join(boss, "s", "g", 1, b"");
    c.settle();
    let p = c.nodes[other].partition_of("s", "g");
    assert_eq!(c.nodes[other].epoch_of("s", p), 1);
    let boss_id = c.nodes[boss].me();
    // A state of term 2, whose recovery never asked `other`: it would drop the membership.
    let sync = Message::Sync {
        scope: scope("s"),
        partition: p,
        epoch: 2,
        state: PartitionState {
            written_epoch: 2,
            seq: 5,
            recent: Vec::new(),
            entries: Vec::new(),
            owners: vec![boss_id],
        },
    };
    let mut out = Vec::new();
    let now = c.now;
    c.nodes[other]
        .handle_message(
            now,
            boss_id.addr(),
            Channel::Stream,
            &sealed(&sync),
            &mut out,
        )
        .unwrap();
    let nack = Message::Nack {
        scope: scope("s"),
        partition: p,
        what: Refused::Recover { epoch: 2 },
        reason: NackReason::Unrecovered,
    };
    assert_eq!(
        out,
        vec![RegistryOutput::Send {
            to: boss_id.addr(),
            channel: Channel::Stream,
            payload: sealed(&nack)
        }]
    );
    assert_eq!(c.nodes[other].applied_seq("s", p), 1);
    assert_eq!(c.nodes[other].epoch_of("s", p), 1);
    assert_eq!(c.nodes[other].table().members("s", "g").len(), 1);

    // The boss of term 1 takes the same refusal as a cue to recover again, with `other`.
    let refusal = Message::Nack {
        scope: scope("s"),
        partition: p,
        what: Refused::Recover { epoch: 1 },
        reason: NackReason::Unrecovered,
    };
    let mut out = Vec::new();
    let from = c.nodes[other].me().addr();
    c.nodes[boss]
        .handle_message(now, from, Channel::Stream, &sealed(&refusal), &mut out)
        .unwrap();
    assert_eq!(c.nodes[boss].epoch_of("s", p), 2);
    let recover = Message::Recover {
        scope: scope("s"),
        partition: p,
        epoch: 2,
    };
    assert!(out.contains(&RegistryOutput::Send {
        to: from,
        channel: Channel::Stream,
        payload: sealed(&recover)
    }));
    c.settle();
    assert_eq!(c.assert_converged().len(), 1);
}

/// Nodes of [`cut_with_a_restart_on_the_far_side`]: `x` joins and leaves, `a` is on its side,
/// `b` on the other, where `f` restarts.
const CUT: (usize, usize, usize, usize) = (0, 2, 1, 3);

/// The shape of seed 0 in `prop_no_stale_read_after_leave`: 4 nodes, node 0 (`x`) joined pid 1
/// to the returned group, then a cut {0, 2} | {1, 3} (messages across it are held), and node 3
/// (`f`) restarted on the far side before node 1 (`b`) noticed the cut. The restarted node
/// bosses the group's partition in every view that holds it, so it learned node 0's membership
/// from node 1's recovery report, but it never sees node 0. Returns the group, the restarted
/// identity and the one before it.
fn cut_with_a_restart_on_the_far_side(c: &mut Cluster) -> (String, NodeId, NodeId) {
    let (x, a, b, f) = CUT;
    // Node 0 as a first incarnation (a root identity, as in the simulator): an identity that
    // renewed gets a recovery at any boss it comes Up at anyway.
    c.crash(x);
    c.restart(x);
    c.settle();
    let id = |c: &Cluster, i: usize| c.nodes[i].me();
    assert_eq!(id(c, x), id(c, x).root());
    let fresh = id(c, f).next_creation();
    let views = [
        vec![id(c, b), fresh],
        vec![id(c, x), id(c, b), id(c, a), fresh],
        vec![id(c, x), id(c, a), fresh],
    ];
    let g = (0..200)
        .map(|k| format!("g{k}"))
        .find(|g| {
            let p = c.nodes[0].partition_of("s", g);
            views
                .iter()
                .all(|v| super::boss_of("s", p, v.iter().copied()) == Some(fresh))
        })
        .unwrap();
    let req = c.join(x, "s", &g, 1, b"");
    c.settle();
    ok_everywhere(c, x, req, 1);

    let side = move |i: usize| i == x || i == a;
    c.hold = Some(Box::new(move |from, to, _| side(from) != side(to)));
    let old_f = c.crash_silently(f);
    assert_eq!(c.restart_among(f, &[b]), fresh);
    c.settle();
    assert_eq!(c.nodes[f].table().members("s", g.as_str()).len(), 1);
    (g, fresh, old_f)
}

/// Node 0 leaves pid 1 of `g` on its side; the leave completes there.
fn leave_on_the_near_side(c: &mut Cluster, g: &str) {
    let (x, a, _, _) = CUT;
    let left = c.leave(x, "s", g, 1);
    c.settle();
    let done = c.completion(x, left).expect("completed");
    assert_eq!(done.result, Ok(()));
    assert_eq!((done.occurrences[&x], done.occurrences[&a]), (0, 0));
}

#[test]
fn memberships_of_a_node_never_seen_go_when_their_source_sees_it_down() {
    let mut c = Cluster::cold(4, 16);
    let (x, a, b, f) = CUT;
    let (g, _, old_f) = cut_with_a_restart_on_the_far_side(&mut c);
    // The restarted node asked node 1, once, to tell it when node 0 goes.
    assert_eq!(c.nodes[f].stats().sent_of("watch"), 1);
    for (i, gone) in [(x, [b, f]), (a, [b, f]), (b, [x, a])] {
        for j in gone {
            let down = if j == f { old_f } else { c.nodes[j].me() };
            c.member_event(i, MemberEvent::Down(down));
        }
    }
    c.settle();
    assert_eq!(c.nodes[b].stats().sent_of("gone"), 1);
    assert!(
        c.view(f)
            .iter()
            .all(|(_, _, pid, _)| pid.node.addr() != c.nodes[x].me().addr()),
        "node 3 still lists node 0's memberships"
    );
    assert_eq!(c.view(f), c.view(b));
    leave_on_the_near_side(&mut c, &g);
    assert_eq!(c.view(f), c.view(b));
}

#[test]
fn a_watch_of_a_node_already_down_is_answered_gone_at_once_and_gone_spares_a_live_node() {
    let mut c = Cluster::new(3, 16);
    c.join(2, "s", "g", 1, b"");
    c.settle();
    let (n0, n2) = (c.nodes[0].me(), c.nodes[2].me());
    c.member_event(0, MemberEvent::Down(n2));
    let mut out = Vec::new();
    let now = c.now;
    let watch = Message::Watch { nodes: vec![n2] };
    let from = c.nodes[1].me().addr();
    c.nodes[0]
        .handle_message(now, from, Channel::Stream, &sealed(&watch), &mut out)
        .unwrap();
    let gone = Message::Gone { nodes: vec![n2] };
    assert_eq!(
        out,
        vec![RegistryOutput::Send {
            to: from,
            channel: Channel::Stream,
            payload: sealed(&gone)
        }]
    );
    // Node 1 sees node 2 Up itself: its own view decides, not node 0's word.
    let mut out = Vec::new();
    c.nodes[1]
        .handle_message(now, n0.addr(), Channel::Stream, &sealed(&gone), &mut out)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(c.nodes[1].table().members("s", "g").len(), 1);
}

/// A `Gone` may come before the copy it is about: a recovery still holding a report taken before
/// the cut was noticed, or a late `Sync`, must not bring the memberships in afterwards.
#[test]
fn memberships_of_a_node_said_gone_stay_out_until_it_comes_up_here() {
    let mut c = Cluster::new(3, 16);
    let g = group_not_bossed_by(&c, 0);
    let boss = c.boss_index(0, "s", &g);
    let p = c.nodes[0].partition_of("s", &g);
    let unseen = NodeId::new(meshreg_membership::loopback_addr(5, 7000), 1 << 16);
    let gone = Message::Gone {
        nodes: vec![unseen],
    };
    let sync = Message::Sync {
        scope: scope("s"),
        partition: p,
        epoch: 1,
        state: PartitionState {
            written_epoch: 1,
            seq: 1,
            recent: Vec::new(),
            entries: vec![super::message::Entry {
                group: group(&g),
                pid: Pid {
                    node: unseen,
                    serial: 1,
                },
                meta: Box::default(),
            }],
            owners: vec![unseen, c.nodes[boss].me()],
        },
    };
    let (now, boss_addr) = (c.now, c.nodes[boss].me().addr());
    let mut out = Vec::new();
    for m in [&gone, &sync] {
        c.nodes[0]
            .handle_message(now, boss_addr, Channel::Stream, &sealed(m), &mut out)
            .unwrap();
    }
    assert_eq!(c.nodes[0].table().members("s", g.as_str()).len(), 0);
    assert_eq!(
        c.nodes[0].applied_seq("s", p),
        1,
        "the state itself is taken"
    );
    // Up here: this node's own view decides from now on.
    c.member_event(0, MemberEvent::Up(unseen));
    let mut out = Vec::new();
    let again = Message::Sync {
        scope: scope("s"),
        partition: p,
        epoch: 1,
        state: match sync {
            Message::Sync { state, .. } => state,
            _ => unreachable!(),
        },
    };
    c.nodes[0]
        .handle_message(now, boss_addr, Channel::Stream, &sealed(&again), &mut out)
        .unwrap();
    assert_eq!(c.nodes[0].table().members("s", g.as_str()).len(), 1);
}

/// The shape of seed 3715190028928044077 in `prop_no_stale_read_after_leave`: a node (`w`)
/// restarted on one side of a cut was told that a node of the other side (`x`) is gone and
/// dropped its memberships, while the partition's boss (`b`) kept them and counted `w` as
/// holding its state. When `x` comes Up at `w` after all (the node that declared it Down
/// renewed instead), `w` must get them back: it has the partition recovered again.
#[test]
fn a_node_said_gone_that_comes_up_after_all_gets_its_memberships_back() {
    let mut c = Cluster::cold(3, 16);
    let (w, b, x) = (0, 1, 2);
    let fresh = c.nodes[w].me().next_creation();
    let (b_id, x_id) = (c.nodes[b].me(), c.nodes[x].me());
    let views = [vec![fresh, b_id], vec![b_id, x_id], vec![fresh, b_id, x_id]];
    let g = (0..200)
        .map(|k| format!("g{k}"))
        .find(|g| {
            let p = c.nodes[b].partition_of("s", g);
            views
                .iter()
                .all(|v| super::boss_of("s", p, v.iter().copied()) == Some(b_id))
        })
        .unwrap();
    // `w` restarts seeing only `b`; `x` never sees it (a cut between them).
    c.crash_silently(w);
    c.member_event(b, MemberEvent::Down(c.nodes[w].me()));
    c.member_event(x, MemberEvent::Down(c.nodes[w].me()));
    assert_eq!(c.restart_among(w, &[b]), fresh);
    c.settle();
    c.hold = Some(Box::new(move |from, to, _| {
        (from == w && to == x) || (from == x && to == w)
    }));
    let first = c.join(x, "s", &g, 1, b"");
    c.settle();
    ok_everywhere(&c, x, first, 1);
    // The word of a node that saw `x` Down (in the property, one on `w`'s side of a cut; the
    // receiver does not check who says it, so `b`'s address stands in for it).
    let gone = Message::Gone { nodes: vec![x_id] };
    let mut out = Vec::new();
    let from = b_id.addr();
    c.nodes[w]
        .handle_message(c.now, from, Channel::Stream, &sealed(&gone), &mut out)
        .unwrap();
    assert!(c.view(w).is_empty(), "the premise: `w` dropped them");
    let second = c.join(x, "s", &g, 2, b"");
    c.settle();
    assert_eq!(c.completion(x, second).map(|d| &d.result), Some(&Ok(())));
    assert!(c.view(w).is_empty(), "the premise: `w` kept the join out");

    // `x` comes Up at `w` after all.
    c.hold = None;
    c.member_event(w, MemberEvent::Up(x_id));
    c.member_event(x, MemberEvent::Up(fresh));
    c.settle();
    let view = c.assert_converged();
    assert_eq!(view.len(), 2, "{view:?}");
}

/// As above, but node 1 crashes before it notices the cut, so nobody tells the restarted node
/// that node 0 is gone: it still lists node 0's membership when the cut heals, and bosses the
/// partition in node 0's view then, with a higher epoch than node 0's side. Its `Sync` must not
/// bring back the leave node 0 completed on its side (node 0 would then re-join it everywhere
/// when it renews): node 0 refuses it (`Unrecovered`) and the boss merges node 0's state.
#[test]
fn a_boss_from_the_other_side_of_a_healed_partition_does_not_undo_a_completed_leave() {
    let mut c = Cluster::cold(4, 16);
    let (x, a, b, f) = CUT;
    let (g, fresh, old_f) = cut_with_a_restart_on_the_far_side(&mut c);
    let b_id = c.crash_silently(b);
    c.member_event(f, MemberEvent::Down(b_id));
    for i in [x, a] {
        c.member_event(i, MemberEvent::Down(b_id));
        c.member_event(i, MemberEvent::Down(old_f));
    }
    c.settle();
    leave_on_the_near_side(&mut c, &g);
    let pid = c.pid(x, 1);
    let listed = |c: &Cluster, i: usize| c.nodes[i].table().occurrences(scope("s"), group(&g), pid);
    assert_eq!(
        listed(&c, f),
        1,
        "the premise: node 3 kept node 0's membership"
    );

    // Heal: the restarted node and node 0 meet for the first time.
    c.hold = None;
    c.held.clear(); // what was sent across the cut is lost with the links
    let x_id = c.nodes[x].me();
    c.member_event(f, MemberEvent::Up(x_id));
    c.member_event(x, MemberEvent::Up(fresh));
    c.settle();
    for i in [x, f] {
        assert_eq!(
            listed(&c, i),
            0,
            "node {i} lists the membership node 0 left"
        );
    }
}

#[test]
fn down_of_a_node_removes_its_memberships_everywhere() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    for k in 0..5 {
        c.join(3, "s", &format!("g{k}"), k, b"");
        c.join(1, "s", &format!("g{k}"), k, b"");
    }
    c.settle();
    c.crash(3);
    c.settle();
    let view = c.assert_converged();
    assert_eq!(view.len(), 5);
    assert!(
        view.iter()
            .all(|(_, _, pid, _)| pid.node == c.nodes[1].me().root())
    );
}

#[test]
fn an_in_flight_join_of_a_down_node_is_not_re_added() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    let g = group_not_bossed_by(&c, 3);
    let boss = c.boss_index(0, "s", &g);
    let late = (0..4).find(|&i| i != boss && i != 3).unwrap();
    c.join(3, "s", &g, 0, b""); // recovery done, partition written
    c.settle();
    c.hold = Some(Box::new(move |from, to, m| {
        from == boss && to == late && matches!(m, Message::Apply { .. })
    }));
    c.join(3, "s", &g, 1, b"");
    c.run();
    c.hold = None;
    c.crash(3);
    c.release();
    c.settle();
    let view = c.assert_converged();
    assert!(view.is_empty(), "{view:?}");
    let p = c.nodes[late].partition_of("s", &g);
    assert_eq!(
        c.nodes[late].applied_seq("s", p),
        2,
        "seq advanced, table untouched"
    );
}

#[test]
fn a_restarted_node_has_no_memberships_and_receives_the_others() {
    let mut c = Cluster::new(4, 8);
    for k in 0..8 {
        c.join(2, "s", &format!("g{k}"), k, b"");
        c.join(0, "s", &format!("g{k}"), k, b"x");
    }
    c.settle();
    c.crash(2);
    c.settle();
    c.restart(2);
    c.settle();
    let view = c.assert_converged();
    assert_eq!(view.len(), 8);
    assert!(
        view.iter()
            .all(|(_, _, pid, _)| pid.node == c.nodes[0].me().root())
    );
    let req = c.join(2, "s", "g0", 1, b"");
    c.settle();
    ok_everywhere(&c, 2, req, 1);
}

#[test]
fn process_exit_leaves_every_group_everywhere() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    for k in 0..4 {
        c.join(1, "s", &format!("g{k}"), 5, b"");
    }
    c.join(1, "s", "g0", 5, b"");
    c.join(1, "s", "g0", 6, b"");
    c.settle();
    c.exit(1, 5);
    c.settle();
    let view = c.assert_converged();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].2, c.pid(1, 6));
}

#[test]
fn a_join_pending_when_its_process_exits_leaves_again() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let g = group_not_bossed_by(&c, 1);
    let req = c.join(1, "s", &g, 5, b"");
    c.exit(1, 5);
    c.settle();
    assert_eq!(c.completion(1, req).unwrap().result, Ok(()));
    assert!(c.assert_converged().is_empty());
}

#[test]
fn a_new_boss_after_a_node_comes_up_takes_over_with_recovery() {
    let mut c = Cluster::new(4, 16);
    let mut reqs = Vec::new();
    for k in 0..16 {
        reqs.push(c.join(0, "s", &format!("g{k}"), k, b""));
    }
    c.settle();
    c.crash(3);
    c.settle();
    c.restart(3);
    c.settle();
    // Writes after the restart go to whichever node now bosses each partition.
    for k in 0..16 {
        let req = c.join(1, "s", &format!("g{k}"), k, b"");
        c.settle();
        ok_everywhere(&c, 1, req, 1);
    }
    assert_eq!(c.assert_converged().len(), 32);
}

#[test]
fn messages_from_non_members_and_datagrams_are_refused() {
    let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
    let m = sealed(&Message::Handoff {
        scope: scope("s"),
        partition: 1,
    });
    let stranger = node_id(9, 1).addr();
    let mut out = Vec::new();
    let t = std::time::Duration::ZERO;
    assert_eq!(
        n.handle_message(t, stranger, Channel::Stream, &m, &mut out),
        Err(MessageError::NotAMember(stranger))
    );
    n.member_event(t, MemberEvent::Up(node_id(9, 1)), &mut out);
    assert!(matches!(
        n.handle_message(t, stranger, Channel::Datagram, &m, &mut out),
        Err(MessageError::Malformed(_))
    ));
    assert!(matches!(
        n.handle_message(
            t,
            stranger,
            Channel::Stream,
            &wire::seal(Kind::Mesh, CLUSTER, b""),
            &mut out
        ),
        Err(MessageError::Malformed(_))
    ));
    assert_eq!(n.stats().refused, 3);
    assert!(out.is_empty());
}

/// A join request whose metadata (600 bytes) is over the 512-byte cap the tests decode with.
fn over_cap_join() -> Message {
    Message::Request {
        from: node_id(1, 1),
        ticket: Ticket::Call(1),
        op: Op::Join {
            scope: scope("s"),
            group: group("g"),
            pid: Pid {
                node: node_id(1, 1).root(),
                serial: 1,
            },
            meta: vec![0; 600].into(),
        },
    }
}

#[test]
fn over_cap_metadata_in_an_apply_is_refused_at_decode() {
    let m = over_cap_join();
    assert!(matches!(
        message::decode(&sealed(&m), CLUSTER, 512),
        Err(MessageError::Malformed(_))
    ));
    assert_eq!(message::decode(&sealed(&m), CLUSTER, 600), Ok(m));
}

#[test]
fn bursts_batch_frames_and_coalesce_acks_with_the_same_outcome() {
    let mut c = Cluster::new(4, 16);
    let mut reqs = Vec::new();
    for k in 0..200u64 {
        let i = usize::try_from(k % 4).unwrap();
        let g = format!("g{}", k % 10);
        reqs.push((i, c.join(i, "s", &g, 100 + k, b"")));
    }
    c.run_bursts();
    for &(i, req) in &reqs {
        ok_everywhere(&c, i, req, 1);
    }
    assert_eq!(c.assert_converged().len(), 200);
    let stats: Vec<_> = c.nodes.iter().map(|n| n.stats().clone()).collect();
    let messages: u64 = stats.iter().map(super::BossStats::messages_sent).sum();
    let frames: u64 = stats.iter().map(|s| s.frames_sent).sum();
    assert!(stats.iter().map(|s| s.sent_of("batch")).sum::<u64>() > 0);
    assert!(stats.iter().map(|s| s.acks_coalesced).sum::<u64>() > 0);
    assert!(
        frames * 2 < messages,
        "{frames} frames for {messages} messages"
    );
    // Leaves in bursts too: nothing is left anywhere.
    let mut leaves = Vec::new();
    for k in 0..200u64 {
        let i = usize::try_from(k % 4).unwrap();
        let g = format!("g{}", k % 10);
        leaves.push((i, c.leave(i, "s", &g, 100 + k)));
    }
    c.run_bursts();
    for &(i, req) in &leaves {
        ok_everywhere(&c, i, req, 0);
    }
    assert!(c.assert_converged().is_empty());
}

#[test]
fn a_batch_decodes_to_its_messages_in_order() {
    let ack = Message::Ack {
        scope: scope("s"),
        partition: 3,
        epoch: 2,
        seq: 9,
    };
    let done = Message::Done {
        ticket: Ticket::Call(4),
        refused: None,
    };
    let frame = message::encode_bodies(vec![message::body(&ack), message::body(&done)], CLUSTER);
    assert_eq!(
        message::decode_frame(&frame, CLUSTER, 512),
        Ok(vec![ack.clone(), done])
    );
    // One body alone is the plain message, as an unbatched sender writes it.
    let one = message::encode_bodies(vec![message::body(&ack)], CLUSTER);
    assert_eq!(one, message::encode(&ack, CLUSTER));
}

#[test]
fn a_nested_or_bad_batch_entry_refuses_the_whole_frame() {
    let ack = message::body(&Message::Ack {
        scope: scope("s"),
        partition: 3,
        epoch: 2,
        seq: 9,
    });
    let inner = message::body(&Message::Batch {
        bodies: vec![ack.clone()],
    });
    let nested = message::encode_bodies(vec![ack.clone(), inner], CLUSTER);
    assert!(matches!(
        message::decode_frame(&nested, CLUSTER, 512),
        Err(MessageError::Malformed(_))
    ));
    let big = message::body(&over_cap_join());
    let over_cap = message::encode_bodies(vec![ack.clone(), big], CLUSTER);
    assert!(matches!(
        message::decode_frame(&over_cap, CLUSTER, 512),
        Err(MessageError::Malformed(_))
    ));
    // Refused as a whole: the node applies nothing of it.
    let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
    let mut out = Vec::new();
    let t = std::time::Duration::ZERO;
    n.member_event(t, MemberEvent::Up(node_id(1, 1)), &mut out);
    out.clear();
    let from: SocketAddrV4 = node_id(1, 1).addr();
    assert!(
        n.handle_message(t, from, Channel::Stream, &nested, &mut out)
            .is_err()
    );
    assert!(out.is_empty());
}

/// Hands `framed` to a node that has seen its sender come Up (so only decoding can refuse it).
fn feed_from_a_known_peer(framed: &[u8]) {
    let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
    let mut out = Vec::new();
    let t = std::time::Duration::ZERO;
    n.member_event(t, MemberEvent::Up(node_id(1, 1)), &mut out);
    let from: SocketAddrV4 = node_id(1, 1).addr();
    let _ = n.handle_message(t, from, Channel::Stream, framed, &mut out);
}

proptest! {
    #[test]
    fn prop_decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let framed = wire::seal(Kind::Boss, CLUSTER, &body);
        let _ = message::decode(&framed, CLUSTER, 512);
        let _ = message::decode(&body, CLUSTER, 512);
        feed_from_a_known_peer(&framed);
    }

    #[test]
    fn prop_decoding_arbitrary_batch_entries_never_panics(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)
    ) {
        let bodies: Vec<Box<[u8]>> = bodies.into_iter().map(Vec::into_boxed_slice).collect();
        let framed = message::encode_bodies(bodies, CLUSTER);
        let _ = message::decode_frame(&framed, CLUSTER, 512);
        feed_from_a_known_peer(&framed);
    }

    #[test]
    fn prop_mutated_valid_messages_never_panic(flip in 0usize..64, byte in any::<u8>()) {
        let m = Message::Sync {
            scope: scope("s"),
            partition: 3,
            epoch: 2,
            state: message::PartitionState {
                written_epoch: 1,
                seq: 4,
                recent: vec![((node_id(1, 1), Ticket::Exit(2)), false)],
                entries: vec![message::Entry { group: group("g"), pid: Pid { node: node_id(1, 1).root(), serial: 3 }, meta: b"ab".to_vec().into() }],
                owners: vec![node_id(1, 1)],
            },
        };
        let mut bytes = sealed(&m);
        let at = wire::HEADER_LEN + flip % (bytes.len() - wire::HEADER_LEN);
        bytes[at] = byte;
        let mut n = CoordinatedGroups::new(node_id(0, 1), CLUSTER, 16);
        let mut out = Vec::new();
        let t = std::time::Duration::ZERO;
        n.member_event(t, MemberEvent::Up(node_id(1, 1)), &mut out);
        let _ = n.handle_message(t, node_id(1, 1).addr(), Channel::Stream, &bytes, &mut out);
    }
}

/// Found by the property test: a leave refused `NotJoined` by one boss, re-sent to a new
/// boss before the refusal arrived, must not apply later (refusals are ordered and deduped).
#[test]
fn a_refused_leave_re_sent_to_a_new_boss_is_not_applied_later() {
    let mut c = Cluster::new(5, 1);
    let l = c.leave(2, "s", "g0", 1);
    c.crash(0);
    c.join(2, "s", "g0", 0, b"0");
    c.join(2, "s", "g0", 1, b"1");
    c.crash(1);
    c.join(2, "s", "g0", 0, b"0");
    c.crash(4);
    for _ in 0..6 {
        c.step();
    }
    c.restart(0);
    c.settle();
    assert!(matches!(
        c.completion(2, l).unwrap().result,
        Err(CallError::Group(GroupError::NotJoined { .. }))
    ));
    let view = c.assert_converged();
    let serials: Vec<u64> = view.iter().map(|(_, _, pid, _)| pid.serial).collect();
    assert_eq!(serials, vec![0, 0, 1]);
}

/// Joins pids 1.. of node `x` to `groups` in scope "s", one each, and pid 1 to the first
/// group a second time.
fn join_renewing_node(c: &mut Cluster, x: usize, groups: &[String]) {
    for (k, g) in groups.iter().enumerate() {
        let serial = k as u64 + 1;
        c.join(x, "s", g, serial, &[u8::try_from(serial).unwrap()]);
    }
    // Multiplicity survives the renewal: a second occurrence of the first membership.
    c.join(x, "s", &groups[0], 1, b"again");
}

#[test]
fn a_renewed_node_re_joins_its_memberships_everywhere() {
    let mut c = Cluster::new(4, 16);
    let x = 1;
    let groups: Vec<String> = (0..4).map(|k| format!("g{k}")).collect();
    join_renewing_node(&mut c, x, &groups);
    c.join(2, "s", "g0", 7, b"other");
    c.settle();
    let before = c.assert_converged();
    let old = c.nodes[x].me();

    for j in [0, 2, 3] {
        c.member_event(j, MemberEvent::Down(old));
    }
    c.settle();
    for j in [0, 2, 3] {
        assert!(
            c.view(j)
                .iter()
                .all(|(_, _, pid, _)| pid.node != old.root()),
            "node {j} still lists the Down node's memberships"
        );
    }

    let new = c.renew(x);
    assert_eq!(new.root(), old.root());
    for j in [0, 2, 3] {
        c.member_event(j, MemberEvent::Up(new));
    }
    c.settle();
    // Same pids (the root), same metadata, same multiplicity, on every node.
    assert_eq!(c.assert_converged(), before);
    for i in c.live() {
        assert!(c.nodes[i].is_quiet(), "node {i} still busy");
    }
}

/// A node cut off alone declares the others Down (they declare it Down too), renews at the
/// heal, and then sees the others Up again under the generation it had declared Down (they
/// never renewed: the membership renews only the side that saw less). It must take them back,
/// memberships included: those made before the cut, and the join and leave the majority made
/// during it, next to its own re-joins and the join it made alone.
#[test]
fn a_renewed_node_takes_back_the_nodes_it_had_declared_down() {
    let mut c = Cluster::new(4, 16);
    let x = 0;
    for i in 0..4 {
        c.join(i, "s", &format!("g{i}"), 1, b"before");
    }
    c.settle();
    let x_old = c.nodes[x].me();
    let others: Vec<NodeId> = (1..4).map(|j| c.nodes[j].me()).collect();
    for (j, &o) in (1..4).zip(&others) {
        c.member_event(j, MemberEvent::Down(x_old));
        c.member_event(x, MemberEvent::Down(o));
    }
    c.settle();
    c.join(x, "s", "alone", 2, b"cut");
    c.join(1, "s", "majority", 2, b"cut");
    c.leave(2, "s", "g2", 1);
    c.settle();

    let x_new = c.renew(x);
    for (j, &o) in (1..4).zip(&others) {
        c.member_event(j, MemberEvent::Up(x_new));
        c.member_event(x, MemberEvent::Up(o));
    }
    c.settle();
    let view = c.assert_converged();
    let listed: Vec<(String, u64)> = view
        .iter()
        .map(|(_, g, pid, _)| (g.clone(), pid.serial))
        .collect();
    let expected: Vec<(String, u64)> = [
        ("alone", 2),
        ("g0", 1),
        ("g1", 1),
        ("g3", 1),
        ("majority", 2),
    ]
    .iter()
    .map(|&(g, s)| (g.to_owned(), s))
    .collect();
    assert_eq!(listed, expected);
    for i in c.live() {
        assert!(c.nodes[i].is_quiet(), "node {i} still busy");
    }
}

/// Found by `prop_no_stale_read_after_leave` with `PROPTEST_CASES=3000` (seed
/// 4300469693059870211): the boss of a partition renews while a leave is on its way to it. Its
/// new identity's `Up` at the requester retired the old one before the new one was in the view,
/// so for a moment the requester was the partition's boss alone: it ordered the leave, applied
/// it, and completed it without the renewed node, which keeps its table and still listed the
/// membership. The new identity now takes the old one's place in the view first.
#[test]
fn a_renewed_boss_is_in_the_view_before_its_old_identity_is_retired() {
    let mut c = Cluster::new(2, 16);
    let (x, b) = (0, 1);
    let b_old = c.nodes[b].me();
    let b_new = b_old.next_generation();
    let g = (0..200)
        .map(|k| format!("g{k}"))
        .find(|g| {
            let p = c.nodes[x].partition_of("s", g);
            let boss_in = |v: [NodeId; 2]| super::boss_of("s", p, v);
            boss_in([c.nodes[x].me(), b_old]) == Some(b_old)
                && boss_in([c.nodes[x].me(), b_new]) == Some(b_new)
        })
        .unwrap();
    let joined = c.join(x, "s", &g, 1, b"");
    c.settle();
    ok_everywhere(&c, x, joined, 1);
    // The leave request is on its way to the old identity when the boss renews.
    c.hold = Some(Box::new(move |from, to, _| from == x && to == b));
    let left = c.leave(x, "s", &g, 1);
    c.run();
    assert_eq!(c.renew(b), b_new);
    c.hold = None;
    c.held.clear(); // the old identity's link is gone
    // As the stack feeds a renewal: the new identity's Up, then the old one's Down.
    c.member_event(x, MemberEvent::Up(b_new));
    c.member_event(x, MemberEvent::Down(b_old));
    if let Some(done) = c.completion(x, left) {
        assert_eq!(
            done.occurrences[&b], 0,
            "completed while the renewed boss still listed the membership"
        );
    }
    c.member_event(b, MemberEvent::Up(c.nodes[x].me()));
    c.settle();
    ok_everywhere(&c, x, left, 0);
    assert!(c.assert_converged().is_empty());
}

/// Found by `prop_no_stale_read_after_leave` (seed 1206143698789191312): a node renews while an
/// Apply to it is in flight; its new identity's `Up` at the boss retires the old one, whose ack
/// the op was waiting for. The renewed node keeps its table, so the op must not complete on the
/// old identity's retirement: the boss waits for the new one (here the new identity takes the
/// partition over, and answers the requester's retry from a recovered state).
#[test]
fn a_renewal_does_not_complete_an_op_the_renewed_node_has_not_applied() {
    let mut c = Cluster::new(3, 16);
    let (boss, n) = (0, 2);
    let g = (0..100)
        .map(|k| format!("g{k}"))
        .find(|g| c.boss_index(0, "s", g) == boss)
        .unwrap();
    c.join(1, "s", &g, 1, b"");
    c.settle();
    c.hold = Some(Box::new(move |from, to, m| {
        from == boss && to == n && matches!(m, Message::Apply { .. })
    }));
    let left = c.leave(1, "s", &g, 1);
    c.run();
    assert!(c.completion(1, left).is_none());
    let new = c.renew(n);
    c.member_event(boss, MemberEvent::Up(new));
    c.member_event(1, MemberEvent::Up(new));
    c.run();
    c.hold = None;
    c.held.clear();
    c.settle();
    ok_everywhere(&c, 1, left, 0);
    assert!(c.assert_converged().is_empty());
}

/// Node 1 (the boss of the group's partition) joins pid 1 to it `joins` times, leaves it once
/// with its Applies held, and renews before anyone applied the leave; the others then see the
/// renewal. Returns the leave's request id.
fn leave_then_renew(c: &mut Cluster, joins: usize) -> u64 {
    let x = 1;
    let g = (0..100)
        .map(|k| format!("g{k}"))
        .find(|g| c.boss_index(0, "s", g) == x)
        .unwrap();
    for _ in 0..joins {
        c.join(x, "s", &g, 1, b"");
    }
    c.settle();
    c.hold = Some(Box::new(move |from, _, m| {
        from == x && matches!(m, Message::Apply { .. })
    }));
    let left = c.leave(x, "s", &g, 1);
    c.run();
    assert!(c.completion(x, left).is_none());
    let old = c.nodes[x].me();
    let new = c.renew(x);
    c.hold = None;
    c.held.clear(); // the old identity's Applies: refused once it is Down anyway
    for j in [0, 2, 3] {
        c.member_event(j, MemberEvent::Down(old));
        c.member_event(j, MemberEvent::Up(new));
    }
    c.settle();
    left
}

/// Found by `prop_no_stale_read_after_leave` (seeds 5419089251074546709, 9061748316690936746): a
/// node renews while its own leave is applied at home but not yet elsewhere. The leave used to
/// complete at once, while the other nodes still listed the old identity's memberships, the
/// left one included. It completes with the re-join of the occurrence left...
#[test]
fn a_leave_in_flight_when_its_node_renews_completes_once_every_node_dropped_it() {
    let mut c = Cluster::new(4, 16);
    let left = leave_then_renew(&mut c, 2);
    ok_everywhere(&c, 1, left, 1);
    assert_eq!(c.assert_converged().len(), 1);
}

/// ... or, with nothing to re-join, once ordered again (a no-op) under the new identity.
#[test]
fn a_leave_in_flight_when_its_node_renews_with_nothing_to_re_join_waits_for_the_others() {
    let mut c = Cluster::new(4, 16);
    let left = leave_then_renew(&mut c, 1);
    ok_everywhere(&c, 1, left, 0);
    assert!(c.assert_converged().is_empty());
}

#[test]
fn a_re_join_applied_before_the_old_identity_is_down_survives_that_down() {
    let mut c = Cluster::new(4, 16);
    let (x, late) = (1, 3);
    let old = c.nodes[x].me();
    let new = old.next_generation();
    // Groups whose boss is node 0 or 2 in every view along the way (with `old`, without it,
    // with `new`): their Applies reach the late node while it still lists `old` live.
    let ids = |id| [c.nodes[0].me(), id, c.nodes[2].me(), c.nodes[3].me()];
    let (with_old, with_new) = (ids(old), ids(new));
    let groups: Vec<String> = (0..200)
        .map(|k| format!("g{k}"))
        .filter(|g| {
            let p = c.nodes[0].partition_of("s", g);
            let a = super::boss_of("s", p, with_old.iter().copied());
            let b = super::boss_of("s", p, with_new.iter().copied());
            a == b && [0, 2].iter().any(|&i| a == Some(c.nodes[i].me()))
        })
        .take(3)
        .collect();
    assert_eq!(groups.len(), 3);
    join_renewing_node(&mut c, x, &groups);
    c.settle();
    let before = c.assert_converged();

    // Nodes 0 and 2 see the Down and the renewed identity; node 3 sees nothing yet.
    for j in [0, 2] {
        c.member_event(j, MemberEvent::Down(old));
    }
    c.run();
    c.renew(x);
    for j in [0, 2] {
        c.member_event(j, MemberEvent::Up(new));
    }
    c.run();
    // The re-joins reached node 3 as Applies with origin `new`: it dropped the old identity's
    // memberships on that evidence and holds the re-joined ones.
    assert_eq!(c.view(late), before);

    // Its mesh view catches up: `Down(old)` must not remove the re-joined memberships.
    c.member_event(late, MemberEvent::Down(old));
    assert_eq!(c.view(late), before);
    c.member_event(late, MemberEvent::Up(new));
    c.settle();
    assert_eq!(c.assert_converged(), before);
    for i in c.live() {
        assert!(c.nodes[i].is_quiet(), "node {i} still busy");
    }
}

#[test]
fn the_retry_window_outlasts_failure_detection_for_every_profile() {
    for profile in meshreg_membership::Profile::ALL {
        let c = super::CoordinatedConfig::for_profile(profile);
        let window = c.request_timeout * c.max_attempts;
        assert!(
            window >= profile.mesh_heartbeat_timeout() * 3,
            "{profile}: {window:?}"
        );
        assert!(c.max_attempts >= super::CoordinatedConfig::default().max_attempts);
    }
}

#[test]
fn a_detached_join_completes_nothing_and_outlasts_the_attempts_a_call_gets() {
    let mut c = Cluster::new(3, 16);
    c.join(1, "s", "warm", 1, b"");
    c.settle();
    let g = group_not_bossed_by(&c, 1);
    let boss = c.boss_index(0, "s", &g);
    let calls = c.completions.len();
    // Everything to and from the boss is held: nobody answers node 1.
    c.hold = Some(Box::new(move |from, to, _| from == boss || to == boss));
    let req = c.join(1, "s", &g, 2, b"");
    assert_eq!(c.join_detached(1, "s", &g, 3), Ok(()));
    let max = c.nodes[1].config().max_attempts;
    while c.completion(1, req).is_none() {
        assert!(c.fire_next_timer(), "the call must give up");
    }
    let gave_up = c.completion(1, req).unwrap().result.clone();
    assert!(
        matches!(gave_up, Err(CallError::Unavailable(_))),
        "{gave_up:?}"
    );
    // Well past the call's attempts, the detached join is still being retried.
    for _ in 0..(max as usize * 8) {
        c.fire_next_timer();
    }
    assert!(c.nodes[1].stats().retries > u64::from(max) * 2);
    c.hold = None;
    c.release();
    c.settle();
    assert_eq!(c.completions.len(), calls + 1, "only the call completed");
    let pid = c.pid(1, 3);
    for n in &c.nodes {
        assert!(n.table().members("s", &g).any(|m| m.pid == pid));
    }
    c.assert_converged();
}

#[test]
fn a_detached_join_of_a_process_that_ended_meanwhile_leaves_again() {
    let mut c = Cluster::new(3, 16);
    let g = group_not_bossed_by(&c, 1);
    assert_eq!(c.join_detached(1, "s", &g, 5), Ok(()));
    c.exit(1, 5);
    c.settle();
    for n in &c.nodes {
        assert_eq!(n.table().members("s", &g).len(), 0);
    }
    assert!(c.completions.is_empty());
    assert!(c.nodes.iter().all(CoordinatedGroups::is_quiet));
}

#[test]
fn a_detached_join_with_bad_settings_fails_at_once_and_changes_nothing() {
    let mut c = Cluster::new(2, 16);
    let req = 77;
    let foreign = c.pid(0, 1);
    let mut out = Vec::new();
    let r = c.nodes[1].join_detached(c.now, req, &scope("s"), &group("g"), foreign, b"", &mut out);
    assert!(
        matches!(r, Err(CallError::Group(GroupError::ForeignPid { .. }))),
        "{r:?}"
    );
    assert!(out.is_empty());
    assert!(c.nodes[1].is_quiet());
}

#[test]
fn a_node_that_comes_back_warms_the_partitions_it_wins() {
    let mut c = Cluster::new(4, 16);
    c.join(0, "s", "g0", 1, b"");
    c.settle();
    c.crash(3);
    c.settle();
    c.restart(3);
    c.settle();
    let back = c.nodes[3].me();
    assert!((0..16).any(|p| c.nodes[0].boss_of("s", p) == back));
    let before = recovers(&c);
    for k in 0..48u64 {
        let g = format!("h{k}");
        let req = c.join(usize::try_from(k % 4).unwrap(), "s", &g, 100 + k, b"");
        c.settle();
        ok_everywhere(&c, usize::try_from(k % 4).unwrap(), req, 1);
    }
    assert_eq!(recovers(&c), before, "no write waited for a recovery");
    c.assert_converged();
}
