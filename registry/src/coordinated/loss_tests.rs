//! Liveness when stream frames are lost and under bursts: the node runtime drops a protocol
//! frame when a peer's send queue is full (a counted drop the protocols must repair), so every
//! message a boss waits on must be re-sent until acknowledged, and a burst of local requests
//! must not flood the links.

use super::DEFAULT_PARTITIONS_PER_SCOPE;
use super::harness::{Cluster, HoldFn};
use super::message::Message;

/// A group of scope "s" bossed by node `boss` in a full view of `c`.
fn group_bossed_by(c: &Cluster, boss: usize) -> String {
    (0..1000)
        .map(|k| format!("g{k}"))
        .find(|g| c.boss_index(0, "s", g) == boss)
        .unwrap()
}

/// Holds (and so loses, once `held` is cleared) the first `n` messages matching `what`.
fn lose_first(n: usize, what: impl Fn(usize, usize, &Message) -> bool + 'static) -> HoldFn {
    let mut left = n;
    Box::new(move |from, to, m| {
        if left > 0 && what(from, to, m) {
            left -= 1;
            true
        } else {
            false
        }
    })
}

fn assert_all_quiet(c: &Cluster) {
    for i in c.live() {
        assert!(c.nodes[i].is_quiet(), "node {i} still busy");
    }
}

#[test]
fn lost_applies_are_re_sent_until_every_node_holds_them() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let (requester, boss, victim) = (0, 1, 2);
    let g = group_bossed_by(&c, boss);
    let first = c.join(requester, "s", &g, 1, b"");
    c.settle(); // the partition is recovered and serving
    assert_eq!(c.completion(requester, first).unwrap().result, Ok(()));
    // The next Apply to the victim is lost; the one after it arrives early (a gap).
    c.hold = Some(lose_first(1, move |from, to, m| {
        from == boss && to == victim && matches!(m, Message::Apply { .. })
    }));
    let lost = c.join(requester, "s", &g, 2, b"");
    c.run();
    assert_eq!(c.held.len(), 1);
    c.held.clear();
    let after_gap = c.join(requester, "s", &g, 3, b"");
    c.settle();
    for req in [lost, after_gap] {
        let done = c.completion(requester, req).expect("completed");
        assert_eq!(done.result, Ok(()));
        assert!(done.occurrences.values().all(|&k| k == 1), "{done:?}");
    }
    assert_eq!(c.assert_converged().len(), 3);
    assert_all_quiet(&c);
}

#[test]
fn a_lost_ack_is_repaired() {
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let (requester, boss, victim) = (0, 1, 2);
    let g = group_bossed_by(&c, boss);
    c.join(requester, "s", &g, 1, b"");
    c.settle();
    c.hold = Some(lose_first(1, move |from, to, m| {
        from == victim && to == boss && matches!(m, Message::Ack { .. })
    }));
    let req = c.join(requester, "s", &g, 2, b"");
    c.run();
    assert_eq!(c.held.len(), 1);
    c.held.clear();
    c.settle();
    assert_eq!(c.completion(requester, req).unwrap().result, Ok(()));
    assert_eq!(c.assert_converged().len(), 2);
    assert_all_quiet(&c);
}

#[test]
fn a_lost_leave_apply_is_repaired_on_the_leaving_node_too() {
    // The leaving node itself misses the Apply of its own leave: a state transfer would let it
    // keep its own membership (a `Sync` that does not name it), a re-sent Apply removes it.
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let (requester, boss) = (0, 1);
    let g = group_bossed_by(&c, boss);
    c.join(requester, "s", &g, 1, b"");
    c.settle();
    c.hold = Some(lose_first(1, move |from, to, m| {
        from == boss && to == requester && matches!(m, Message::Apply { .. })
    }));
    c.exit(requester, 1);
    c.run();
    assert_eq!(c.held.len(), 1);
    c.held.clear();
    c.settle();
    assert!(c.assert_converged().is_empty());
    assert_all_quiet(&c);
}

#[test]
fn a_lost_sync_to_a_node_that_came_up_is_re_sent() {
    let mut c = Cluster::new(4, DEFAULT_PARTITIONS_PER_SCOPE);
    let (requester, boss, late) = (0, 1, 3);
    let g = (0..1000)
        .map(|k| format!("g{k}"))
        .find(|g| {
            c.boss_index(0, "s", g) == boss && {
                // Still bossed by `boss` when `late` is Down.
                let p = c.nodes[0].partition_of("s", g);
                let live = [0, 1, 2].map(|i| c.nodes[i].me());
                crate::coordinated::boss_of("s", p, live) == Some(live[boss])
            }
        })
        .unwrap();
    c.join(requester, "s", &g, 1, b"");
    c.settle();
    c.crash(late);
    c.settle();
    c.hold = Some(lose_first(1, move |from, to, m| {
        from == boss && to == late && matches!(m, Message::Sync { .. })
    }));
    c.restart(late);
    c.run();
    assert_eq!(c.held.len(), 1, "the boss synced the node that came up");
    c.held.clear();
    let req = c.join(requester, "s", &g, 2, b"");
    c.settle();
    let done = c.completion(requester, req).expect("completed");
    assert_eq!(done.result, Ok(()));
    assert_eq!(done.occurrences.get(&late), Some(&1));
    assert_eq!(c.assert_converged().len(), 2);
    assert_all_quiet(&c);
}

#[test]
fn an_exit_leave_is_never_given_up() {
    // Nobody waits for an exit leave: given up, the ended process would stay listed on every
    // node until its own node goes Down.
    let mut c = Cluster::new(3, DEFAULT_PARTITIONS_PER_SCOPE);
    let (requester, boss) = (0, 1);
    let g = group_bossed_by(&c, boss);
    c.join(requester, "s", &g, 1, b"");
    c.settle();
    c.hold = Some(Box::new(move |_, to, m| {
        to == boss && matches!(m, Message::Request { .. })
    }));
    c.exit(requester, 1);
    let attempts = c.nodes[requester].config().max_attempts;
    for _ in 0..2 * attempts {
        c.run();
        c.fire_next_timer();
    }
    c.hold = None;
    c.held.clear();
    c.settle();
    assert!(c.assert_converged().is_empty());
    assert_all_quiet(&c);
}

#[test]
fn a_burst_of_requests_keeps_at_most_max_in_flight_on_the_wire() {
    let mut c = Cluster::new(3, 16);
    let requester = 0;
    let cap = c.nodes[requester].config().max_in_flight;
    let n = cap * 4;
    let groups: Vec<String> = (0..n).map(|k| format!("g{k}")).collect();
    for g in &groups {
        c.join(requester, "s", g, 1, b"");
    }
    let sent = |c: &Cluster| c.nodes[requester].stats().sent_of("request");
    // Remote requests leave at once up to the cap; local ones (this node bosses their
    // partition) count against it too.
    assert!(sent(&c) <= cap as u64, "{} requests sent", sent(&c));
    c.settle();
    assert_eq!(c.completions.len(), n);
    assert!(c.completions.iter().all(|d| d.result.is_ok()));
    assert_eq!(c.assert_converged().len(), n);
    // Ending the process is a burst of `n` leaves: paced the same way, none retried.
    let before = sent(&c);
    c.exit(requester, 1);
    assert!(sent(&c) - before <= cap as u64);
    c.settle();
    assert!(c.assert_converged().is_empty());
    assert_eq!(c.nodes[requester].stats().retries, 0);
    assert_all_quiet(&c);
}

#[test]
fn a_lone_node_serves_a_large_burst_without_recursing() {
    let mut c = Cluster::new(1, 16);
    let n = 50_000;
    for k in 0..n {
        c.join(0, "s", &format!("g{}", k % 100), 1, b"");
    }
    c.settle();
    assert_eq!(c.completions.len(), n);
    c.exit(0, 1);
    c.settle();
    assert!(c.view(0).is_empty());
    assert_all_quiet(&c);
}

#[test]
fn a_requester_whose_boss_goes_down_moves_only_sent_requests() {
    // Requests waiting for room in the window have no boss yet: a view change sends none of
    // them early, and they all complete once sent.
    let mut c = Cluster::new(3, 16);
    let cap = c.nodes[0].config().max_in_flight;
    let n = cap * 3;
    for k in 0..n {
        c.join(0, "s", &format!("g{k}"), 1, b"");
    }
    let sent_before = c.nodes[0].stats().sent_of("request");
    c.crash(2);
    let sent_after = c.nodes[0].stats().sent_of("request");
    assert!(sent_after - sent_before <= cap as u64);
    c.settle();
    assert_eq!(c.completions.len(), n);
    assert!(c.completions.iter().all(|d| d.result.is_ok()));
    assert_eq!(c.assert_converged().len(), n);
    assert_all_quiet(&c);
}

/// Three nodes, one partition per scope with a dedupe window of 4 ops, and the two nodes that
/// are not the boss of `s/g`.
fn hot_partition_cluster() -> (Cluster, usize, usize) {
    let config = super::CoordinatedConfig {
        partitions_per_scope: 1,
        dedupe_per_partition: 4,
        ..super::CoordinatedConfig::default()
    };
    let c = Cluster::with_config(3, config);
    let (a, b) = match c.boss_index(0, "s", "g") {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    (c, a, b)
}

#[test]
fn a_retry_of_an_op_still_in_flight_is_not_applied_again_after_leaving_the_dedupe_window() {
    // A hot partition orders more ops than its dedupe window holds while one node's acks are
    // late: the retries of the early ops (evicted from the window, still awaiting acks) must
    // wait for those acks, not be ordered a second time.
    let (mut c, requester, slow) = hot_partition_cluster();
    c.join(requester, "s", "g", 100, b"");
    c.settle();
    c.hold = Some(Box::new(move |from, _, m| {
        from == slow && matches!(m, Message::Ack { .. })
    }));
    let n: u64 = 12;
    let reqs: Vec<_> = (0..n)
        .map(|k| c.join(requester, "s", "g", k, b""))
        .collect();
    c.run();
    // Every request times out at least once (acks held) and is re-sent.
    for _ in 0..3 * n {
        c.fire_next_timer();
        c.run();
    }
    assert!(c.nodes[requester].stats().retries >= n);
    c.hold = None;
    c.release();
    c.settle();
    for req in reqs {
        let done = c.completion(requester, req).expect("completed");
        assert_eq!(done.result, Ok(()));
        assert!(done.occurrences.values().all(|&k| k == 1), "{done:?}");
    }
    assert_eq!(c.assert_converged().len(), 13);
    assert_all_quiet(&c);
}

/// Known limit, kept as a reproduction: a lost `Done` whose retry arrives after the partition
/// ordered more ops than its dedupe window holds is ordered again (a join then counts twice).
/// The window is per partition and knows nothing of which answers reached their requester;
/// closing this needs requesters to say which answers they still wait for (a watermark in
/// `Request`), a wire change.
#[test]
#[ignore = "known limit of the per-partition dedupe window: see the doc comment"]
fn a_lost_done_retried_after_the_dedupe_window_moved_on_is_not_applied_twice() {
    let (mut c, requester, other) = hot_partition_cluster();
    c.join(other, "s", "g", 100, b"");
    c.settle();
    c.hold = Some(lose_first(1, move |_, to, m| {
        to == requester && matches!(m, Message::Done { .. })
    }));
    let req = c.join(requester, "s", "g", 1, b"");
    c.run();
    assert_eq!(c.held.len(), 1);
    c.held.clear();
    for k in 0..8 {
        c.join(other, "s", "g", k, b"");
        c.run();
    }
    c.settle();
    let done = c.completion(requester, req).expect("completed");
    assert!(done.occurrences.values().all(|&k| k == 1), "{done:?}");
}
