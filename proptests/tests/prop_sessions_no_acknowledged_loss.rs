//! Invariant (session manager): no acknowledged registration of a live process is lost after
//! any single session-node fault — a primary crash (right after registrations reached it), a
//! primary pause past its term, or a session node cut off and healed — on either membership.
//!
//! "Acknowledged" is the reference model of `meshreg_proptests::sessions`: every `Registered`
//! answer, minus acknowledged unregistrations, minus the sessions of the faulted node's
//! processes (a node declared Down has its sessions removed; its renewal re-asserts them, which
//! is not checked here). After the heal phase, the primary of each key's shard (in a client's
//! view) must hold exactly the model's holder.

mod sessions_common;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(32), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_sessions_no_acknowledged_loss(
        seed in any::<u64>(),
        membership in sessions_common::membership(),
        nodes in 5u32..9,
        session_nodes in 3u32..5,
        scenario in sessions_common::scenario(),
    ) {
        let r = sessions_common::run(seed, membership, nodes, session_nodes, scenario);
        prop_assert!(r.sessions_checked > 0, "nothing checked; replay: {}", r.replay);
        prop_assert_eq!(
            r.sessions_lost, 0,
            "{} of {} acknowledged sessions lost; replay: {}",
            r.sessions_lost, r.sessions_checked, r.replay
        );
    }
}
