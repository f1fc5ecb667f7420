//! Invariant (both backends): a membership joined before a partition and left during it on its
//! owner's side (the `leave` completed Ok, leaving no occurrence) is listed by no node after the
//! partition heals and the tables converge, and no node's table ever lists it again after the
//! leave completed. The same holds for a process that ends during the partition: none of its
//! memberships is listed after heal, nor ever again after it ended.
//!
//! Shape of a run: boot, joins (some multi-joins) until every node lists them, a symmetric
//! partition into two halves, failure detection on both sides, leaves (or process exits) of
//! random memberships on their owners, heal, convergence to the reference model. No join is
//! issued after the partition starts, so any `Joined` event of a left membership after its
//! leave is a resurrection (a renewed owner re-publishing an old state, a recovery adopting the
//! other side's stale copy, a late delta).

use meshreg_membership::{MembershipCore, Profile};
use meshreg_proptests::groups::{self, GroupDriver, Workload};
use meshreg_proptests::history::{self, Outcome, Record};
use meshreg_proptests::scenario::{Boot, MembershipKind, Scenario, SimParams};
use meshreg_proptests::sim::{Factory, Sim};
use meshreg_proptests::stack::Stack;
use meshreg_registry::RegistryCore;
use proptest::prelude::*;

const MS: u64 = 1_000_000;

struct Case {
    seed: u64,
    nodes: u32,
    joins: u32,
    /// Leaves (or exits) during the partition.
    ops: u32,
    exit: bool,
    /// The case is known to empty memberships (a fixed seed): require it.
    must_empty: bool,
}

/// Lets `ms` of virtual time pass in driver steps, folding every log into the driver.
fn advance<M: MembershipCore, R: RegistryCore>(
    sim: &mut Sim<Stack<M, R>>,
    d: &mut GroupDriver,
    ms: u64,
) {
    let end = sim.now() + ms * MS;
    while sim.now() < end {
        let t = sim.now() + 5 * MS;
        sim.run_until(t);
        d.drain(sim);
    }
}

/// Advances until the tables equal the model (or `ms` passed); whether they do.
fn settle<M: MembershipCore, R: RegistryCore>(
    sim: &mut Sim<Stack<M, R>>,
    d: &mut GroupDriver,
    ms: u64,
) -> bool {
    let end = sim.now() + ms * MS;
    while sim.now() < end && !d.converged(sim) {
        advance(sim, d, 5);
    }
    d.converged(sim)
}

fn run_case<M, R>(
    c: &Case,
    membership: MembershipKind,
    factory: Factory<Stack<M, R>>,
) -> Result<(), TestCaseError>
where
    M: MembershipCore + Send,
    R: RegistryCore + Send,
    M::Timer: Send,
    R::Timer: Send,
{
    let backend = match membership {
        MembershipKind::Swim => "gossip",
        MembershipKind::Mesh => "coordinated",
    };
    let params = SimParams {
        membership,
        nodes: c.nodes,
        seed: c.seed,
        duration_s: 30.0,
        profile: Profile::Test,
        boot: Boot::Announce,
        scenario: Scenario::PartitionHalf,
        ..SimParams::default()
    };
    let replay = format!(
        "{} --backend {backend} (exact case: seed {}, nodes {}, joins {}, {} {} during the partition)",
        params.replay_command(),
        c.seed,
        c.nodes,
        c.joins,
        c.ops,
        if c.exit { "exits" } else { "leaves" }
    );
    let w = Workload {
        scopes: 2,
        groups: 3,
        joins: c.joins,
        leaves: c.ops,
        join_rate: 100.0,
    };
    let mut sim = Sim::new(c.nodes, c.seed, params.net_config(), factory);
    let mut d = GroupDriver::new(w, c.nodes, c.seed);
    d.record(&mut sim);
    prop_assert!(
        groups::boot(&params, &mut sim).is_some(),
        "no membership; replay: {replay}"
    );
    for k in 0..c.joins {
        if k % 4 == 3 {
            d.join_again(&mut sim);
        } else {
            d.join_fresh(&mut sim);
        }
        advance(&mut sim, &mut d, 10);
    }
    prop_assert!(
        settle(&mut sim, &mut d, 5_000),
        "joins did not converge; replay: {replay}"
    );
    let n = c.nodes;
    let cut_ns = sim.now();
    sim.partition(
        (0..n).map(|i| u8::from(i >= n / 2)).collect(),
        vec![(0, 1), (1, 0)],
    );
    // Both sides detect the other (test timers) before the leaves.
    advance(&mut sim, &mut d, 1_500);
    for _ in 0..c.ops {
        if c.exit {
            d.exit_one(&mut sim);
        } else {
            d.leave_one(&mut sim);
        }
        advance(&mut sim, &mut d, 20);
    }
    advance(&mut sim, &mut d, 1_000);
    let heal_ns = sim.now();
    sim.heal();
    prop_assert!(
        settle(&mut sim, &mut d, 20_000),
        "{backend} did not converge to the model after heal; replay: {replay}"
    );
    advance(&mut sim, &mut d, 1_000);
    let h = d.take_history().expect("recorded");
    let tables: Vec<_> = (0..n)
        .filter_map(|i| sim.core(i).map(|s| (i, s.registry.table())))
        .collect();
    if c.exit {
        let exits: Vec<_> = h
            .records
            .iter()
            .filter_map(|(t, r)| match r {
                Record::Exit { pid, .. } if (cut_ns..heal_ns).contains(t) => Some((*pid, *t)),
                _ => None,
            })
            .collect();
        prop_assert!(!exits.is_empty(), "no process ended; replay: {replay}");
        for (pid, t) in exits {
            for (i, table) in &tables {
                let listed = table
                    .memberships_of_node(pid.node)
                    .filter(|m| m.pid == pid)
                    .count();
                prop_assert_eq!(
                    listed,
                    0,
                    "{} node {} lists ended {:?}; replay: {}",
                    backend,
                    i,
                    pid,
                    &replay
                );
            }
            let again = history::joined_after(&h, pid, None, t);
            prop_assert!(
                again.is_empty(),
                "{backend}: ended {pid:?} came back: {:?}; replay: {replay}",
                &again[..again.len().min(3)]
            );
        }
    } else {
        let left_ok = h
            .records
            .iter()
            .filter(|(t, r)| {
                (cut_ns..heal_ns).contains(t)
                    && matches!(
                        r,
                        Record::Done {
                            outcome: Outcome::Ok,
                            ..
                        }
                    )
            })
            .count();
        prop_assert!(
            left_ok > 0,
            "no leave completed during the partition; replay: {replay}"
        );
        // A leave of a multi-joined membership may leave an occurrence (its renewal re-joins
        // then rightly log `Joined` again): the memberships it emptied are the ones checked.
        let emptied = history::emptied_by_leave(&h, cut_ns, heal_ns);
        if c.must_empty {
            prop_assert!(!emptied.is_empty(), "nothing emptied; replay: {replay}");
        }
        for (key, t) in emptied {
            for (i, table) in &tables {
                let listed = table.occurrences(&key.0, &key.1, key.2);
                prop_assert_eq!(
                    listed,
                    0,
                    "{} node {} lists {:?} left during the partition; replay: {}",
                    backend,
                    i,
                    &key,
                    &replay
                );
            }
            let again = history::joined_after(&h, key.2, Some(&key), t);
            prop_assert!(
                again.is_empty(),
                "{backend}: {key:?} left during the partition came back: {:?}; replay: {replay}",
                &again[..again.len().min(3)]
            );
        }
    }
    Ok(())
}

fn both(c: &Case) -> Result<(), TestCaseError> {
    run_case(
        c,
        MembershipKind::Swim,
        groups::gossip_factory(Profile::Test, c.nodes),
    )?;
    run_case(
        c,
        MembershipKind::Mesh,
        groups::coordinated_factory(Profile::Test),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_a_group_left_during_a_partition_does_not_come_back(seed in any::<u64>(), nodes in 4u32..12, joins in 8u32..30, ops in 1u32..8) {
        both(&Case { seed, nodes, joins, ops, exit: false, must_empty: false })?;
    }

    #[test]
    fn prop_a_process_ended_during_a_partition_does_not_come_back(seed in any::<u64>(), nodes in 4u32..12, joins in 8u32..30, ops in 1u32..6) {
        both(&Case { seed, nodes, joins, ops, exit: true, must_empty: false })?;
    }
}

#[test]
fn leaves_on_both_sides_of_a_partition_stay_left_after_heal() {
    let c = Case {
        seed: 5,
        nodes: 8,
        joins: 24,
        ops: 8,
        exit: false,
        must_empty: true,
    };
    both(&c).unwrap();
}

/// Regression (found at `PROPTEST_CASES=8000`): a renewed node admitted again an owner it had
/// held Down and took that owner's state, from before the cut, from a node that had never seen
/// it Down: a process that ended during the cut was listed again
/// (`crdt::tests::a_renewed_node_takes_no_older_state_of_an_owner_it_held_down_from_a_third_party`).
#[test]
fn a_process_ended_during_the_cut_stays_gone_when_a_stale_copy_is_relayed() {
    let c = Case {
        seed: 2791473286024314900,
        nodes: 11,
        joins: 18,
        ops: 3,
        exit: true,
        must_empty: false,
    };
    run_case(
        &c,
        MembershipKind::Swim,
        groups::gossip_factory(Profile::Test, c.nodes),
    )
    .unwrap();
}
