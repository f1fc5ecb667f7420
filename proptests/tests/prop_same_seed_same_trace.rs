//! Invariant: the simulator is deterministic. The same seed and schedule give the same trace
//! hash and the same measurements, for membership alone and for group workloads on both
//! backends (same `GroupReport`, same history of calls, completions and table events).

mod common;

use common::{SEC, booted, fault};
use meshreg_membership::{MembershipCore, Profile};
use meshreg_proptests::faults::{self, Fault};
use meshreg_proptests::groups::{self, Backend, OpMix, Plan, Workload};
use meshreg_proptests::scenario::{
    self, Boot, MembershipKind, Scenario, SimParams, mesh_factory, swim_factory,
};
use meshreg_proptests::sim::Factory;
use proptest::prelude::*;

fn trace<C: MembershipCore>(
    n: u32,
    seed: u64,
    schedule: &[Fault],
    factory: Factory<C>,
) -> (u64, u64, u64) {
    let mut sim = booted(n, seed, factory);
    sim.run_until(2 * SEC);
    faults::apply(&mut sim, schedule);
    faults::heal_all(&mut sim);
    sim.run_until(sim.now() + 5 * SEC);
    (sim.trace_hash(), sim.stats().bytes, sim.observer().ups)
}

#[test]
fn one_seed_twice_gives_the_same_report_for_both_memberships() {
    for membership in [MembershipKind::Swim, MembershipKind::Mesh] {
        let params = SimParams {
            membership,
            nodes: 60,
            seed: 42,
            duration_s: 30.0,
            loss: 0.02,
            reorder: 0.05,
            duplicate: 0.01,
            scenario: Scenario::CrashOne,
            boot: Boot::Announce,
            ..SimParams::default()
        };
        let a = scenario::run(&params).expect("valid params");
        let b = scenario::run(&params).expect("valid params");
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "{membership}: replay with {}",
            a.replay
        );
        assert_eq!(a.bytes_per_node_per_s, b.bytes_per_node_per_s);
        assert_eq!(a.detect_down_ms, b.detect_down_ms);
        assert_eq!(a.membership_convergence_ms, b.membership_convergence_ms);
        let other = scenario::run(&SimParams { seed: 43, ..params }).expect("valid params");
        assert_ne!(a.trace_hash, other.trace_hash, "the seed must matter");
    }
}

#[test]
fn one_group_workload_twice_gives_the_same_report_and_history_for_both_backends() {
    let w = Workload {
        scopes: 2,
        groups: 5,
        joins: 120,
        leaves: 40,
        join_rate: 100.0,
    };
    let plan = Plan {
        mix: OpMix {
            multi_join: 0.2,
            exit: 0.05,
        },
        faults: vec![
            (300, Fault::Duplicate { permille: 50 }),
            (400, Fault::Reorder { permille: 100 }),
            (500, Fault::Restart { node: 2 }),
        ],
        record: true,
    };
    for (backend, membership) in [
        (Backend::Gossip, MembershipKind::Swim),
        (Backend::Coordinated, MembershipKind::Mesh),
    ] {
        let params = SimParams {
            membership,
            nodes: 8,
            seed: 9,
            duration_s: 15.0,
            loss: 0.02,
            profile: Profile::Test,
            scenario: Scenario::PartitionHalf,
            ..SimParams::default()
        };
        let (a, ha) = groups::run_plan(&params, &w, &plan, backend).expect("valid params");
        let (b, hb) = groups::run_plan(&params, &w, &plan, backend).expect("valid params");
        let replay = format!(
            "{} --backend {backend} (plus {})",
            a.membership.replay,
            plan.describe()
        );
        assert_eq!(a.membership.trace_hash, b.membership.trace_hash, "{replay}");
        assert_eq!(
            format!("{:?}", a.groups),
            format!("{:?}", b.groups),
            "{replay}"
        );
        let (ha, hb) = (ha.expect("recorded"), hb.expect("recorded"));
        assert!(ha.records.len() > 100, "{replay}");
        assert!(ha.records == hb.records, "histories differ; {replay}");
        let other = SimParams { seed: 10, ..params };
        let (c, _) = groups::run_plan(&other, &w, &plan, backend).expect("valid params");
        assert_ne!(
            a.membership.trace_hash, c.membership.trace_hash,
            "the seed must matter"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(8), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_same_seed_and_schedule_replay_exactly(seed in any::<u64>(), n in 4u32..12, schedule in proptest::collection::vec(fault(), 1..6)) {
        let case = format!("trace({n}, {seed}, &{}, ..)", faults::rust_steps(&schedule));
        let a = trace(n, seed, &schedule, swim_factory(Profile::Test, n));
        let b = trace(n, seed, &schedule, swim_factory(Profile::Test, n));
        prop_assert_eq!(a, b, "swim not reproducible: {} twice with swim_factory(Profile::Test, {})", &case, n);
        let a = trace(n, seed, &schedule, mesh_factory(Profile::Test));
        let b = trace(n, seed, &schedule, mesh_factory(Profile::Test));
        prop_assert_eq!(a, b, "mesh not reproducible: {} twice with mesh_factory(Profile::Test)", &case);
    }
}
