//! Invariant: after any schedule of partitions, loss, crashes, restarts and pauses, once every
//! fault ends, membership converges within a bound: every live node lists exactly every other
//! live node, in its current generation (so no live node is Down in a live node's view).

mod common;

use common::{SEC, booted, fault};
use meshreg_membership::{MembershipCore, Profile};
use meshreg_proptests::faults::{self, Fault};
use meshreg_proptests::scenario::{mesh_factory, swim_factory};
use meshreg_proptests::sim::{Factory, Sim};
use proptest::prelude::*;

/// Virtual time allowed to converge after the heal (test profile: suspicion 0.8 s,
/// anti-entropy 0.25 s, mesh reconnect backoff capped at 0.5 s).
const HEAL_BOUND_S: u64 = 30;

fn check<C: MembershipCore>(
    name: &str,
    n: u32,
    seed: u64,
    schedule: &[Fault],
    factory: Factory<C>,
) -> Result<(), TestCaseError> {
    let factory_src = match name {
        "swim" => format!("swim_factory(Profile::Test, {n})"),
        _ => "mesh_factory(Profile::Test)".to_owned(),
    };
    let regression = format!(
        "check({name:?}, {n}, {seed}, &{}, {factory_src}).unwrap()",
        faults::rust_steps(schedule)
    );
    let mut sim: Sim<C> = booted(n, seed, factory);
    let up = sim.run_until_or(20 * SEC, |s| {
        s.observer().live_count() == n && s.observer().converged()
    });
    prop_assert!(
        up,
        "{name} seed {seed}: {n} nodes did not converge after boot; regression test: {regression}"
    );
    faults::apply(&mut sim, schedule);
    faults::heal_all(&mut sim);
    let healed_at = sim.now();
    let ok = sim.run_until_or(healed_at + HEAL_BOUND_S * SEC, |s| s.observer().converged());
    if std::env::var_os("MESHREG_PRINT_RECOVERY").is_some() {
        eprintln!(
            "recovery {name} n={n} ms={}",
            (sim.now() - healed_at) / 1_000_000
        );
    }
    prop_assert!(
        ok,
        "{name} seed {seed} nodes {n}: {} live nodes still not converged {HEAL_BOUND_S} s after heal; regression test: {regression}",
        sim.observer().unconverged_nodes()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(64), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_swim_converges_after_heal(seed in any::<u64>(), n in 4u32..32, schedule in proptest::collection::vec(fault(), 1..10)) {
        check("swim", n, seed, &schedule, swim_factory(Profile::Test, n))?;
    }

    #[test]
    fn prop_mesh_converges_after_heal(seed in any::<u64>(), n in 4u32..32, schedule in proptest::collection::vec(fault(), 1..10)) {
        check("mesh", n, seed, &schedule, mesh_factory(Profile::Test))?;
    }
}

/// Found by this property: a symmetric cut `{0, 3, 6} | rest`, replaced 842 ms later by a one-way
/// cut (nodes `4k` cannot reach the others), healed 309 ms after that. Node 0, told Down by node 4
/// on its side, renewed just before the heal; its Hellos to 3 and 6 (linked since the first cut
/// put them on its side) crossed the one-way cut, and the simulator dropped them while the links
/// stayed up. After the heal only heartbeats, which name nobody, crossed those links, so 3 and 6
/// listed node 0's old generation for ever. A frame that cannot be delivered now resets its link,
/// as the node runtime's transport does (`Sim::resets_link`).
#[test]
fn mesh_converges_after_a_symmetric_cut_replaced_by_a_one_way_cut() {
    check(
        "mesh",
        9,
        0,
        &[
            Fault::Partition {
                modulus: 3,
                one_way: false,
            },
            Fault::Wait { ms: 842 },
            Fault::Partition {
                modulus: 4,
                one_way: true,
            },
            Fault::Wait { ms: 309 },
        ],
        mesh_factory(Profile::Test),
    )
    .unwrap();
}
