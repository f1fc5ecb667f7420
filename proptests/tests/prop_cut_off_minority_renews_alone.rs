//! Invariant: when a minority (one node, or every `modulus`-th node) is cut off from the rest
//! of a cluster long enough for both sides to declare the other Down, and the cut heals, only
//! the minority renews (the majority never takes the verdicts the minority reached alone), and
//! the backend converges to the reference model (the renewed nodes admit again the members they
//! had held Down, with their memberships). Both stacks: SWIM with the gossip backend, and the
//! full mesh (whose Down notices carry the sender's view size) with the coordinated backend.

use std::collections::BTreeSet;

use meshreg_membership::Profile;
use meshreg_proptests::faults::Fault;
use meshreg_proptests::groups::{self, Backend, Plan, Workload};
use meshreg_proptests::history::Record;
use meshreg_proptests::scenario::{Boot, MembershipKind, Scenario, SimParams};
use meshreg_proptests::sim::MemberFact;
use proptest::prelude::*;

fn check(backend: Backend, seed: u64, nodes: u32, modulus: u32) -> Result<(), TestCaseError> {
    let membership = match backend {
        Backend::Gossip => MembershipKind::Swim,
        Backend::Coordinated => MembershipKind::Mesh,
    };
    let params = SimParams {
        membership,
        nodes,
        seed,
        duration_s: 20.0,
        profile: Profile::Test,
        boot: Boot::Announce,
        scenario: Scenario::None,
        ..SimParams::default()
    };
    let w = Workload {
        scopes: 2,
        groups: 5,
        joins: 100,
        leaves: 30,
        join_rate: 100.0,
    };
    // 4 s cut: the test profile declares a silent member Down within about 1 s (SWIM) or
    // 0.5 s (the mesh's heartbeat timeout).
    let plan = Plan {
        faults: vec![
            (
                300,
                Fault::Partition {
                    modulus,
                    one_way: false,
                },
            ),
            (4_300, Fault::Heal),
        ],
        record: true,
        ..Plan::default()
    };
    let (run, history) =
        groups::run_plan(&params, &w, &plan, backend).map_err(TestCaseError::fail)?;
    let replay = format!("check(Backend::{backend:?}, {seed}, {nodes}, {modulus})");
    prop_assert!(
        run.groups.groups_converged,
        "{backend:?} did not converge to the model: {:?}; replay: {replay}",
        run.groups
    );
    let renewed: BTreeSet<u32> = history
        .expect("recorded")
        .records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Member {
                node,
                fact: MemberFact::Renewed(_),
            } => Some(*node),
            _ => None,
        })
        .collect();
    let minority: BTreeSet<u32> = (0..nodes).filter(|n| n % modulus == 0).collect();
    prop_assert_eq!(renewed, minority, "replay: {}", replay);
    Ok(())
}

#[test]
fn one_cut_off_node_renews_alone_and_the_tables_converge() {
    check(Backend::Gossip, 1, 8, 8).unwrap();
}

#[test]
fn one_cut_off_mesh_node_renews_alone_and_the_tables_converge() {
    check(Backend::Coordinated, 1, 8, 8).unwrap();
}

#[test]
fn a_cut_off_mesh_minority_renews_alone_and_the_tables_converge() {
    check(Backend::Coordinated, 2, 9, 3).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(12), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_a_cut_off_minority_renews_alone(seed in any::<u64>(), nodes in 5u32..13, share in 3u32..6) {
        // One node (modulus = nodes) or every 3rd to 5th node: always fewer than half.
        let modulus = if seed % 2 == 0 { nodes } else { share };
        check(Backend::Gossip, seed, nodes, modulus)?;
    }

    #[test]
    fn prop_a_cut_off_mesh_minority_renews_alone(seed in any::<u64>(), nodes in 5u32..13, share in 3u32..6) {
        let modulus = if seed % 2 == 0 { nodes } else { share };
        check(Backend::Coordinated, seed, nodes, modulus)?;
    }
}
