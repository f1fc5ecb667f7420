//! Invariant: a SWIM cluster that joins all at once converges within the dissemination bound
//! (virtual time, so this is a correctness bound, not a timing test), with no false Downs and no
//! refused packets between honest nodes; the full mesh does the same at its scale.

use meshreg_proptests::scenario::{self, Boot, MembershipKind, Scenario, SimParams};

#[test]
fn swim_cold_start_of_500_nodes_converges_within_5_virtual_seconds() {
    let params = SimParams {
        membership: MembershipKind::Swim,
        nodes: 500,
        duration_s: 40.0,
        boot: Boot::Announce,
        scenario: Scenario::CrashOne,
        ..SimParams::default()
    };
    let r = scenario::run(&params).expect("valid params");
    let t = r.membership_convergence_ms.expect("converged");
    assert!(t <= 5_000.0, "converged after {t} ms; replay: {}", r.replay);
    assert!(
        r.converged,
        "not converged at the end; replay: {}",
        r.replay
    );
    assert_eq!(r.false_down, 0, "replay: {}", r.replay);
    assert_eq!(
        r.refused, 0,
        "honest nodes refused packets; replay: {}",
        r.replay
    );
    let d = r.detect_down_ms.expect("crash detected");
    assert!(d <= 16_000.0, "detection took {d} ms; replay: {}", r.replay);
}

#[test]
fn mesh_cold_start_of_60_nodes_converges_and_detects_a_crash() {
    let params = SimParams {
        membership: MembershipKind::Mesh,
        nodes: 60,
        duration_s: 20.0,
        boot: Boot::Announce,
        scenario: Scenario::CrashOne,
        ..SimParams::default()
    };
    let r = scenario::run(&params).expect("valid params");
    assert!(
        r.membership_convergence_ms.is_some_and(|t| t <= 5_000.0),
        "replay: {}",
        r.replay
    );
    assert!(
        r.converged && r.detect_down_ms.is_some(),
        "replay: {}",
        r.replay
    );
    assert_eq!((r.false_down, r.refused), (0, 0), "replay: {}", r.replay);
}
