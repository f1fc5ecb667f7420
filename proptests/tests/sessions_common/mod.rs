//! Shared by the session property suites: one small session run per case.

use meshreg_membership::Profile;
use meshreg_proptests::scenario::{Boot, MembershipKind, Scenario, SimParams};
use meshreg_proptests::sessions::{self, SessionReport, SessionScenario, SessionWorkload};
use proptest::prelude::*;

/// Every fault the session suites draw from.
pub fn scenario() -> impl Strategy<Value = SessionScenario> {
    prop_oneof![
        Just(SessionScenario::PrimaryCrash),
        Just(SessionScenario::PrimaryPause),
        Just(SessionScenario::SessionPartition),
    ]
}

/// Either membership (and its backend).
pub fn membership() -> impl Strategy<Value = MembershipKind> {
    prop_oneof![Just(MembershipKind::Swim), Just(MembershipKind::Mesh)]
}

/// Runs one small case on the test profile; the report and its replay command.
pub fn run(
    seed: u64,
    membership: MembershipKind,
    nodes: u32,
    session_nodes: u32,
    scenario: SessionScenario,
) -> SessionReport {
    let params = SimParams {
        membership,
        nodes,
        seed,
        duration_s: 8.0,
        profile: Profile::Test,
        boot: Boot::Announce,
        scenario: Scenario::None,
        ..SimParams::default()
    };
    let w = SessionWorkload {
        sessions: 300,
        rate: 500.0,
        session_nodes,
        shards: 64,
        scenario,
    };
    sessions::run(&params, &w).expect("valid parameters")
}
