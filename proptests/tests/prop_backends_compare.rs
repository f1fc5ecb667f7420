//! Invariant: the same seeded workload (joins, multi-joins, leaves, process exits; the driver's
//! choices come from the seed alone, except that leaves pick among the joins completed so far)
//! under the same fault, run on both backends, ends, after the heal phase, with every live node of
//! each backend holding the reference model's table. Each run reports its convergence time and
//! traffic; the suite prints them side by side (`cargo test -p meshreg-proptests --test
//! prop_backends_compare -- --nocapture`).
//!
//! Faults: none, a crash, a crash then restart, a half partition, and a noisy network (loss,
//! duplication, reordering of datagrams: membership traffic and gossip; the coordinated
//! backend's streams stay reliable and FIFO).

use meshreg_membership::Profile;
use meshreg_proptests::faults::Fault;
use meshreg_proptests::groups::{self, Backend, GroupRun, OpMix, Plan, Workload};
use meshreg_proptests::scenario::{Boot, MembershipKind, Scenario, SimParams};

const SEEDS: [u64; 3] = [1, 2, 3];

struct Fixture {
    name: &'static str,
    scenario: Scenario,
    noisy: bool,
    faults: Vec<(u32, Fault)>,
}

fn fixtures() -> Vec<Fixture> {
    let f = |name, scenario, noisy, faults| Fixture {
        name,
        scenario,
        noisy,
        faults,
    };
    vec![
        f("steady", Scenario::None, false, vec![]),
        f("crash-one", Scenario::CrashOne, false, vec![]),
        f(
            "crash-restart",
            Scenario::None,
            false,
            vec![
                (500, Fault::Crash { node: 1 }),
                (1_500, Fault::Restart { node: 1 }),
            ],
        ),
        f("partition-half", Scenario::PartitionHalf, false, vec![]),
        f("noisy", Scenario::None, true, vec![]),
    ]
}

fn one(backend: Backend, seed: u64, fx: &Fixture) -> (GroupRun, String) {
    let membership = match backend {
        Backend::Gossip => MembershipKind::Swim,
        Backend::Coordinated => MembershipKind::Mesh,
    };
    let (loss, duplicate, reorder) = if fx.noisy {
        (0.05, 0.05, 0.1)
    } else {
        (0.0, 0.0, 0.0)
    };
    let params = SimParams {
        membership,
        nodes: 8,
        seed,
        duration_s: 20.0,
        loss,
        duplicate,
        reorder,
        profile: Profile::Test,
        boot: Boot::Announce,
        scenario: fx.scenario,
        ..SimParams::default()
    };
    let w = Workload {
        scopes: 2,
        groups: 5,
        joins: 150,
        leaves: 50,
        join_rate: 100.0,
    };
    let plan = Plan {
        mix: OpMix {
            multi_join: 0.2,
            exit: 0.05,
        },
        faults: fx.faults.clone(),
        record: false,
    };
    let (run, _) = groups::run_plan(&params, &w, &plan, backend).expect("valid params");
    let replay = format!(
        "{} --duplicate {duplicate} --reorder {reorder} --backend {backend} --joins 150 --leaves 50 --join-rate 100 --scopes 2 --groups 5 (plus {})",
        run.membership.replay,
        plan.describe()
    );
    (run, replay)
}

#[test]
fn both_backends_reach_the_model_on_the_same_operations() {
    eprintln!(
        "{:<15} {:>4} {:<12} {:>9} {:>14} {:>13} {:>14}",
        "scenario",
        "seed",
        "backend",
        "converged",
        "convergence_ms",
        "msgs_per_join",
        "bytes_per_join"
    );
    let mut failures = Vec::new();
    for fx in fixtures() {
        for seed in SEEDS {
            for backend in [Backend::Coordinated, Backend::Gossip] {
                let (run, replay) = one(backend, seed, &fx);
                let g = &run.groups;
                eprintln!(
                    "{:<15} {:>4} {:<12} {:>9} {:>14} {:>13.1} {:>14.0}",
                    fx.name,
                    seed,
                    backend.to_string(),
                    g.groups_converged,
                    g.convergence_ms.map_or("-".into(), |c| format!("{c:.0}")),
                    g.msgs_per_join,
                    g.bytes_per_join
                );
                if !g.groups_converged || g.joins_ok == 0 {
                    failures.push(format!(
                        "{} seed {seed} {backend}: {g:?}; replay: {replay}",
                        fx.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
