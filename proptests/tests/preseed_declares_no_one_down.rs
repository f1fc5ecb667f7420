//! A preseeded cluster starts converged: no node is ever declared Down, on either backend,
//! although the registries open stream links during the preseed itself (the gossip backend's
//! first full sync). Every core exists before any output is carried out.

use meshreg_membership::Profile;
use meshreg_proptests::groups::{self, Backend, Workload};
use meshreg_proptests::scenario::{Boot, MembershipKind, SimParams};

fn no_false_down(backend: Backend, membership: MembershipKind) {
    let params = SimParams {
        membership,
        nodes: 40,
        seed: 3,
        duration_s: 3.0,
        profile: Profile::Lan,
        boot: Boot::Preseed,
        ..SimParams::default()
    };
    let w = Workload {
        joins: 200,
        join_rate: 200.0,
        ..Workload::default()
    };
    let run = groups::run(&params, &w, backend).expect("valid params");
    assert_eq!(run.membership.false_down, 0, "{backend:?}");
    assert!(run.membership_converged, "{backend:?}");
}

#[test]
fn a_preseeded_gossip_cluster_declares_no_one_down() {
    no_false_down(Backend::Gossip, MembershipKind::Swim);
}

#[test]
fn a_preseeded_coordinated_cluster_declares_no_one_down() {
    no_false_down(Backend::Coordinated, MembershipKind::Mesh);
}
