//! Invariant (session manager): every call of a surviving node ends with a definite answer
//! after retries — the shard's outcome (retries reuse the request id, so a call applied before
//! a failover is answered its original outcome by the promoted standby) or a refusal that
//! changed nothing — within the call deadline, through any single session-node fault. No call
//! ends `Unavailable` and none is left unanswered once the heal phase is over.

mod sessions_common;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(32), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_sessions_calls_end_definite(
        seed in any::<u64>(),
        membership in sessions_common::membership(),
        nodes in 5u32..9,
        session_nodes in 3u32..5,
        scenario in sessions_common::scenario(),
    ) {
        let r = sessions_common::run(seed, membership, nodes, session_nodes, scenario);
        prop_assert!(r.registers_ok > 0, "nothing registered; replay: {}", r.replay);
        prop_assert_eq!(r.calls_unfinished, 0, "calls left unanswered; replay: {}", r.replay);
        prop_assert_eq!(r.calls_failed, 0, "calls ended Unavailable; replay: {}", r.replay);
        prop_assert_eq!(r.calls_refused, 0, "calls refused; replay: {}", r.replay);
    }
}
