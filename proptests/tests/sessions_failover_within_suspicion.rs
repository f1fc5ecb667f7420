//! Target (session manager, issue "failover"): a shard whose primary stops answering serves
//! again within the membership's suspicion time + 1 s, with no acknowledged session lost. On
//! SWIM a paused or cut-off primary refuses no dial, so this holds only because the partner
//! watch starts SWIM's suspicion instead of waiting for a probe to pick the node. Virtual time
//! on the `lan` profile, as the README's failover table (one seed per scenario; the table
//! lists more).

use meshreg_membership::Profile;
use meshreg_proptests::scenario::{Boot, MembershipKind, Scenario, SimParams};
use meshreg_proptests::sessions::{self, SessionScenario, SessionWorkload};

fn failover(seed: u64, scenario: SessionScenario) {
    let params = SimParams {
        membership: MembershipKind::Swim,
        nodes: 20,
        seed,
        duration_s: 30.0,
        profile: Profile::Lan,
        boot: Boot::Announce,
        scenario: Scenario::None,
        ..SimParams::default()
    };
    let w = SessionWorkload {
        sessions: 1_000,
        rate: 1_000.0,
        session_nodes: 4,
        shards: 256,
        scenario,
    };
    let r = sessions::run(&params, &w).expect("valid parameters");
    let replay = sessions::replay_command(&params, &w);
    assert_eq!(r.sessions_lost, 0, "{replay}");
    let took = r
        .failover_ms
        .unwrap_or_else(|| panic!("no failover: {replay}"));
    assert!(
        took <= r.suspicion_ms + 1_000.0,
        "failover {took} ms > suspicion {} ms + 1 s: {replay}",
        r.suspicion_ms
    );
}

#[test]
fn a_paused_primary_fails_over_within_suspicion_plus_one_second() {
    failover(1, SessionScenario::PrimaryPause);
}

#[test]
fn a_cut_off_primary_fails_over_within_suspicion_plus_one_second() {
    failover(2, SessionScenario::SessionPartition);
}
