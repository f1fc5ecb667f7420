//! Link modelling: a stream frame never vanishes from a link that stays up; a crashed process
//! refuses connections, a paused one stays silent.

use meshreg_membership::{Channel, MemberEvent, NodeId, Output, Profile};

use super::{MemberFact, NetConfig, Sim};
use crate::scenario::{mesh_factory, swim_factory};

const MS: u64 = 1_000_000;

/// Bytes no core accepts: if they are delivered, the receiver counts a refusal.
const JUNK: [u8; 2] = [0xde, 0xad];

/// `n` nodes (node 0 first, the others 1 ms later through it), converged within `limit_ms`
/// virtual ms, recording membership facts from then on.
fn converged<C: meshreg_membership::MembershipCore>(
    n: u32,
    seed: u64,
    factory: super::Factory<C>,
    limit_ms: u64,
) -> Sim<C> {
    let mut sim = Sim::new(n, seed, NetConfig::default(), factory);
    sim.start_at(0, 0, &[]);
    for i in 1..n {
        sim.start_at(i, MS, &[0]);
    }
    assert!(
        sim.run_until_or(limit_ms * MS, |s| s.observer().live_count() == n
            && s.observer().converged())
    );
    sim.record_members();
    sim
}

/// Two mesh nodes, linked and converged, recording membership facts from then on.
fn pair() -> Sim<meshreg_membership::Mesh> {
    converged(2, 7, mesh_factory(Profile::Test), 2_000)
}

fn send_junk(sim: &mut Sim<meshreg_membership::Mesh>, from: u32, to: u32) {
    let to = Sim::<meshreg_membership::Mesh>::addr(to);
    assert!(sim.invoke(from, |_, _, out| out.push(Output::Send {
        to,
        channel: Channel::Stream,
        payload: JUNK.to_vec(),
    })));
}

/// Whether `node` reported `Down(id)` since the last drain.
fn saw_down(records: &[super::MemberRecord], node: u32, id: NodeId) -> bool {
    records
        .iter()
        .any(|r| r.node == node && r.what == MemberFact::Event(MemberEvent::Down(id)))
}

/// Found with `prop_membership_converges_after_heal`: a node renewed during a one-way cut and
/// its Hello to a peer across the cut vanished from a link that stayed up; after the heal only
/// heartbeats (which name nobody) crossed it, so the peer listed the old generation for ever.
#[test]
fn a_stream_frame_across_a_cut_resets_the_link_instead_of_vanishing() {
    let mut sim = pair();
    let (id0, id1) = (sim.id(0), sim.id(1));
    // 0 cannot reach 1; 1 still reaches 0, so 0 never times 1 out by silence.
    sim.partition(vec![1, 0], vec![(1, 0)]);
    send_junk(&mut sim, 0, 1);
    sim.run_until(sim.now() + 50 * MS);
    let records = sim.drain_members();
    assert!(
        saw_down(&records, 0, id1),
        "the sender's link did not reset: {records:?}"
    );
    // The reset cannot cross the cut: 1 has not heard of it.
    assert!(!saw_down(&records, 1, id0), "{records:?}");
    assert_eq!(sim.stats().refused, 0, "the frame crossed the cut");
}

#[test]
fn a_frame_on_a_half_open_link_is_not_delivered_and_resets_it() {
    let mut sim = pair();
    let id0 = sim.id(0);
    sim.partition(vec![1, 0], vec![(1, 0)]);
    send_junk(&mut sim, 0, 1);
    sim.run_until(sim.now() + MS);
    sim.heal();
    // 1 still counts its end up; the connection behind it is gone.
    send_junk(&mut sim, 1, 0);
    sim.run_until(sim.now() + 10 * MS);
    assert_eq!(sim.stats().refused, 0, "a frame arrived on a dead link");
    let records = sim.drain_members();
    assert!(
        saw_down(&records, 1, id0),
        "the half-open end was not reset: {records:?}"
    );
}

/// Frames between nodes without a link (SWIM's pushes) keep the datagram rules.
#[test]
fn a_frame_without_a_link_is_delivered_when_no_cut_is_in_the_way() {
    let mut sim = Sim::new(2, 7, NetConfig::default(), mesh_factory(Profile::Test));
    sim.start_at(0, 0, &[]);
    sim.start_at(1, 0, &[]);
    sim.run_until(MS);
    send_junk(&mut sim, 0, 1);
    sim.run_until(10 * MS);
    assert_eq!(sim.stats().refused, 1);
}

/// Three SWIM nodes, converged, recording membership facts from then on.
fn swim_trio() -> Sim<meshreg_membership::Swim> {
    converged(3, 7, swim_factory(Profile::Test, 3), 5_000)
}

fn send_frame<C: meshreg_membership::MembershipCore>(sim: &mut Sim<C>, from: u32, to: u32) {
    let to = Sim::<C>::addr(to);
    assert!(sim.invoke(from, |_, _, out| out.push(Output::Send {
        to,
        channel: Channel::Stream,
        payload: JUNK.to_vec(),
    })));
}

/// A stream frame to a crashed process is refused (the transport's on-demand dial), and SWIM
/// takes the refusal as a Down verdict, spread by gossip long before the suspicion timeout
/// (test profile: 200 ms probes, 800 ms suspicion).
#[test]
fn a_frame_to_a_crashed_swim_member_is_refused_and_it_is_down_everywhere_at_once() {
    let mut sim = swim_trio();
    let id2 = sim.id(2);
    sim.crash(2);
    send_frame(&mut sim, 0, 2);
    sim.run_until(sim.now() + 20 * MS);
    let records = sim.drain_members();
    assert!(saw_down(&records, 0, id2), "{records:?}");
    assert!(saw_down(&records, 1, id2), "not gossiped: {records:?}");
}

/// A paused process refuses nothing: the same frame just vanishes and nobody is Down at once.
#[test]
fn a_frame_to_a_paused_swim_member_declares_nothing() {
    let mut sim = swim_trio();
    sim.pause(2, 1_000 * MS);
    send_frame(&mut sim, 0, 2);
    sim.run_until(sim.now() + 20 * MS);
    let records = sim.drain_members();
    assert!(
        !records
            .iter()
            .any(|r| matches!(r.what, MemberFact::Event(MemberEvent::Down(_)))),
        "{records:?}"
    );
}

/// A mesh peer that crashed is Down on its link's reset, and a redial to it is refused (the
/// mesh retries as after any failed dial).
#[test]
fn a_crashed_mesh_peer_resets_its_link_and_refuses_redials() {
    let mut sim = pair();
    let id1 = sim.id(1);
    sim.crash(1);
    sim.run_until(sim.now() + 20 * MS);
    assert!(saw_down(&sim.drain_members(), 0, id1));
    sim.start_at(1, sim.now() + 2_000 * MS, &[0]);
    assert!(
        sim.run_until_or(sim.now() + 5_000 * MS, |s| s.observer().live_count() == 2
            && s.observer().converged())
    );
}

/// Cuts nodes `minority` off from the rest of an `n`-node SWIM cluster for 5 s (both sides
/// declare the other Down), heals, waits for convergence plus 5 s for late verdicts, and
/// returns the nodes that renewed, sorted and deduplicated.
fn renewed_after_cut(n: u32, seed: u64, minority: &[u32]) -> Vec<u32> {
    let mut sim = converged(n, seed, swim_factory(Profile::Test, n), 10_000);
    let mut sides = vec![0u8; n as usize];
    for &m in minority {
        sides[m as usize] = 1;
    }
    sim.partition(sides, vec![(0, 1), (1, 0)]);
    // Long enough for both sides to declare the other Down (test profile: ~1 s).
    sim.run_until(sim.now() + 5_000 * MS);
    heal_and_list_renewed(&mut sim, n)
}

/// Heals every cut, waits for convergence plus 5 s for late verdicts, and returns the nodes
/// that renewed since membership facts were last drained, sorted and deduplicated.
fn heal_and_list_renewed(sim: &mut Sim<meshreg_membership::Swim>, n: u32) -> Vec<u32> {
    sim.heal();
    assert!(
        sim.run_until_or(sim.now() + 30_000 * MS, |s| s.observer().live_count() == n
            && s.observer().converged()),
        "no convergence after the heal"
    );
    // Let any late verdict arrive.
    sim.run_until(sim.now() + 5_000 * MS);
    renewed_since_drain(sim)
}

/// The nodes that renewed since membership facts were last drained, sorted and deduplicated.
fn renewed_since_drain<C: meshreg_membership::MembershipCore>(sim: &mut Sim<C>) -> Vec<u32> {
    let mut renewed: Vec<u32> = sim
        .drain_members()
        .iter()
        .filter(|r| matches!(r.what, MemberFact::Renewed(_)))
        .map(|r| r.node)
        .collect();
    renewed.sort_unstable();
    renewed.dedup();
    renewed
}

/// An isolated SWIM node declares every other member Down during the cut, and the others
/// declare it Down. After the heal only it renews: its verdicts do not travel (a receiver
/// holding it Down ignores its `TurnUndead`, and trusts its pushes' Down records only from a
/// view at least as large as its own), and it renews with a fresh view that no longer holds
/// them. At 10,000 nodes one flaky host used to renew the whole cluster.
#[test]
fn after_one_node_is_isolated_and_healed_only_that_node_renews() {
    assert_eq!(renewed_after_cut(8, 11, &[7]), vec![7]);
}

/// The same for a minority of two or three nodes cut off together: they see each other and
/// hold the majority Down; after the heal only they renew.
#[test]
fn after_a_minority_is_cut_off_and_healed_only_the_minority_renews() {
    for (seed, minority) in [(11, vec![6, 7]), (12, vec![0, 5]), (13, vec![1, 4, 7])] {
        assert_eq!(
            renewed_after_cut(8, seed, &minority),
            minority,
            "seed {seed}"
        );
    }
    assert_eq!(renewed_after_cut(12, 14, &[2, 9, 10]), vec![2, 9, 10]);
}

/// Two halves hold each other Down with views of equal size: each side trusts the other's
/// verdicts, so both renew (no side is the cut-off one) and the cluster converges.
#[test]
fn after_two_halves_heal_the_cluster_converges() {
    let renewed = renewed_after_cut(8, 15, &[0, 1, 2, 3]);
    assert!(!renewed.is_empty(), "someone renews: {renewed:?}");
}

/// Cuts the nodes `minority` off from the rest of an `n`-node SWIM cluster and heals at the
/// first moment a heal can go wrong: every majority node holds every minority node Down and
/// some minority node holds a majority node Down, while the minority may still count other
/// majority nodes alive (not even suspected). Returns the nodes that renewed, sorted and
/// deduplicated.
fn renewed_after_earliest_heal(n: u32, seed: u64, minority: &[u32]) -> Vec<u32> {
    use meshreg_membership::MembershipCore;
    let mut sim = converged(n, seed, swim_factory(Profile::Test, n), 10_000);
    let mut sides = vec![0u8; n as usize];
    for &m in minority {
        sides[m as usize] = 1;
    }
    sim.partition(sides.clone(), vec![(0, 1), (1, 0)]);
    let side_of = |addr: std::net::SocketAddrV4| {
        (0..n)
            .find(|&i| Sim::<meshreg_membership::Swim>::addr(i) == addr)
            .map(|i| sides[i as usize])
    };
    let ready = sim.run_until_or(sim.now() + 5_000 * MS, |s| {
        let across = |i: u32| {
            s.core(i).map_or(0, |c| {
                c.members()
                    .iter()
                    .filter(|m| side_of(m.addr()) != Some(sides[i as usize]))
                    .count()
            })
        };
        let majority = n as usize - minority.len();
        let minority_holds_one_down = minority.iter().any(|&i| across(i) < majority);
        let majority_holds_them_down = (0..n)
            .filter(|i| !minority.contains(i))
            .all(|i| across(i) == 0);
        minority_holds_one_down && majority_holds_them_down
    });
    assert!(
        ready,
        "seed {seed}: the cut was never detected on both sides"
    );
    heal_and_list_renewed(&mut sim, n)
}

/// A heal as early as it can come: a cut-off node has declared one peer Down and may not have
/// probed the others yet. foca probes its members round-robin, one per probe period, and a
/// verdict comes a suspicion time (4 probe periods in the `test` profile) after the first failed
/// probe, so by the time a cut-off node holds any peer Down it has suspected up to four more,
/// and its view (members known alive) stays below the majority's. Only the cut-off side renews.
/// Counting suspected members too, the majority renews here as well (n = 3, seed 107: all three).
#[test]
fn after_the_earliest_possible_heal_only_the_cut_off_side_renews() {
    for n in 3..=12u32 {
        for seed in 0..8u64 {
            let victim = (seed as u32 + n) % n;
            assert_eq!(
                renewed_after_earliest_heal(n, 100 + seed, &[victim]),
                vec![victim],
                "n {n}, seed {}",
                100 + seed
            );
        }
    }
    for (n, minority) in [
        (7, vec![1, 4, 5]),
        (9, vec![0, 3, 6, 8]),
        (10, vec![2, 3, 7, 9]),
        (12, vec![0, 1, 5, 8, 11]),
    ] {
        for seed in 0..4u64 {
            assert_eq!(
                renewed_after_earliest_heal(n, 200 + seed, &minority),
                minority,
                "n {n}, seed {}",
                200 + seed
            );
        }
    }
}

/// Found by `prop_gossip_converges_after_partition_or_loss` (4 nodes, 5% loss): during a long
/// cut into halves every node renewed on its own side (loss made its partner declare it Down),
/// and a renewed node's fresh view held none of the members its old identity had declared Down.
/// Nobody then knew an address across the cut, so the healed halves never found each other. A
/// renewal now keeps those addresses as rendezvous targets for the anti-entropy rounds that go
/// to members believed Down. Here each node is paused in turn until its partner declares it
/// Down, so it renews when it resumes.
#[test]
fn halves_that_each_renewed_during_the_cut_find_each_other_after_the_heal() {
    for seed in [21, 22, 23] {
        let mut sim = converged(4, seed, swim_factory(Profile::Test, 4), 10_000);
        sim.partition(vec![0, 0, 1, 1], vec![(0, 1), (1, 0)]);
        sim.run_until(sim.now() + 5_000 * MS);
        // Pause each node in turn until its partner declares it Down: it renews on resuming.
        for i in 0..4 {
            sim.pause(i, 3_000 * MS);
            sim.run_until(sim.now() + 5_000 * MS);
        }
        assert_eq!(
            renewed_since_drain(&mut sim),
            vec![0, 1, 2, 3],
            "seed {seed}: every node renewed"
        );
        sim.heal();
        assert!(
            sim.run_until_or(sim.now() + 30_000 * MS, |s| s.observer().live_count() == 4
                && s.observer().converged()),
            "seed {seed}: the halves never found each other"
        );
    }
}

/// The nodes of a converged `n`-node SWIM cluster (`test` profile) that renewed while node 0
/// was paused five times for `pause_ms`, 3 s apart.
fn renewed_after_pauses(n: u32, seed: u64, pause_ms: u64) -> Vec<u32> {
    let mut sim = converged(n, seed, swim_factory(Profile::Test, n), 20_000);
    for _ in 0..5 {
        sim.pause(0, pause_ms * MS);
        sim.run_until(sim.now() + 3_000 * MS);
    }
    renewed_since_drain(&mut sim)
}

/// A node paused for half the suspicion time is suspected by its probers; everything sent to it
/// arrives when it resumes, so it refutes, provided some of it carried the suspicion. With
/// foca's budget of 2 transmissions per update at 4 nodes, the prober's next ping and the first
/// target of its next gossip round used both, the suspect never heard of it, and 26 of these 40
/// seeds declared a live node Down (it renewed). The profiles' floor covers one gossip round.
#[test]
fn a_node_paused_for_half_the_suspicion_time_refutes_and_is_never_declared_down() {
    let mut renewed = Vec::new();
    for seed in 1..=40u64 {
        let r = renewed_after_pauses(4, seed, 400);
        if !r.is_empty() {
            renewed.push((seed, r));
        }
    }
    assert!(renewed.is_empty(), "(seed, renewed nodes): {renewed:?}");
}

/// The same pauses, longer (three quarters of the suspicion time) and at sizes where foca's
/// own budget applies: a suspicion that travels only piggybacked missed its suspect in 14 of
/// these 320 runs (1-5 per size) and a live node was declared Down. The suspecter now also
/// tells the suspect directly, which refutes and announces itself back.
#[test]
fn a_suspect_hears_of_its_suspicion_directly_at_every_size() {
    let mut renewed = Vec::new();
    for n in [5u32, 6, 8, 9, 10, 12, 16, 24] {
        for seed in 1..=40u64 {
            let r = renewed_after_pauses(n, seed, 600);
            if !r.is_empty() {
                renewed.push((n, seed, r));
            }
        }
    }
    assert!(
        renewed.is_empty(),
        "(nodes, seed, renewed nodes): {renewed:?}"
    );
}
