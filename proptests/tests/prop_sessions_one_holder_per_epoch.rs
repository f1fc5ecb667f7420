//! Invariant (session manager): never two holders of a key in one epoch. Epochs carry the
//! address of the node that starts the term in their low bits and a term above every epoch it
//! learned in their high bits, so one `(shard, epoch)` is started by one node at most: the
//! suite collects every term started cluster-wide (`SessionManager::drain_terms`) and fails on
//! a pair started twice by different nodes; deliberate conflicting registrations (policy
//! `Reject`, another node's process) must all be answered `Taken`.

mod sessions_common;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(32), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_sessions_one_holder_per_epoch(
        seed in any::<u64>(),
        membership in sessions_common::membership(),
        nodes in 5u32..9,
        session_nodes in 3u32..5,
        scenario in sessions_common::scenario(),
    ) {
        let r = sessions_common::run(seed, membership, nodes, session_nodes, scenario);
        prop_assert!(r.terms_started > 0);
        prop_assert_eq!(r.epoch_conflicts, 0, "a term started twice; replay: {}", r.replay);
        prop_assert_eq!(
            r.conflicts_not_refused, 0,
            "a conflicting registration was not refused; replay: {}", r.replay
        );
    }
}
