//! Invariant: the gossip backend's replica state is a CRDT. Its merge
//! (`meshreg_registry::crdt::ReplicaState::merge`: per owner address the higher
//! `(generation, version)` wins, tombstoned generations stay dead) is commutative, associative
//! and idempotent, and applying an owner's delta sequence to a replica equals merging that
//! owner's full state into it.
//!
//! States are built from random owner histories: 3 addresses x 3 generations, each an
//! authoritative sequence of joins, leaves and exits (so one `(owner, version)` names exactly
//! one membership set, as in the real system), and replicas hold a random version of a random
//! generation per address plus random tombstones. proptest prints the failing case and seed.

use meshreg_membership::{NodeId, loopback_addr};
use meshreg_registry::crdt::{Delta, DeltaOutcome, Op, OwnerSet, ReplicaState};
use meshreg_registry::groups::{GroupName, ScopeName};
use proptest::prelude::*;

const ADDRS: u32 = 3;
const GENERATIONS: u32 = 3;

fn node(addr: u32, generation: u32) -> NodeId {
    NodeId::new(loopback_addr(addr, 7000), generation)
}

fn names(g: u8) -> (ScopeName, GroupName) {
    let scope = ScopeName::new("s").expect("short");
    let group = GroupName::new(["a", "b", "c"][usize::from(g) % 3]).expect("short");
    (scope, group)
}

fn meta(m: u8) -> Box<[u8]> {
    if m == 0 {
        Box::default()
    } else {
        Box::from(&b"x"[..])
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3u8, 1..4u64, 0..2u8).prop_map(|(g, serial, m)| {
            let (scope, group) = names(g);
            Op::Join { scope, group, serial, meta: meta(m) }
        }),
        2 => (0..3u8, 1..4u64, 0..2u8).prop_map(|(g, serial, m)| {
            let (scope, group) = names(g);
            Op::Leave { scope, group, serial, meta: meta(m) }
        }),
        1 => (1..4u64).prop_map(|serial| Op::Exit { serial }),
    ]
}

/// One owner generation's authoritative history: its deltas, and its set at each version.
struct History {
    deltas: Vec<Delta>,
    sets: Vec<OwnerSet>,
}

fn history(owner: NodeId, ops: Vec<Op>) -> History {
    let mut set = OwnerSet::new(owner);
    let mut sets = vec![set.clone()];
    let mut deltas = Vec::new();
    for op in ops {
        if let Some(delta) = set.record(op) {
            deltas.push(delta);
            sets.push(set.clone());
        }
    }
    History { deltas, sets }
}

/// Every owner generation's history, indexed `[addr][generation - 1]`.
type World = Vec<Vec<History>>;

fn world(ops: Vec<Vec<Op>>) -> World {
    let mut ops = ops.into_iter();
    (0..ADDRS)
        .map(|a| {
            (1..=GENERATIONS)
                .map(|g| history(node(a, g), ops.next().unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// Per address: which generation is held (0: none) and a version pick, and a tombstone
/// generation (0: none).
type ReplicaPlan = Vec<(u32, usize, u32)>;

fn replica_plan() -> impl Strategy<Value = ReplicaPlan> {
    proptest::collection::vec(
        (0..=GENERATIONS, any::<usize>(), 0..=GENERATIONS),
        ADDRS as usize,
    )
}

fn replica(world: &World, plan: &ReplicaPlan) -> ReplicaState {
    let mut state = ReplicaState::new();
    for (a, &(generation, pick, dead)) in plan.iter().enumerate() {
        if generation > 0 {
            let sets = &world[a][generation as usize - 1].sets;
            state.insert_owner(sets[pick % sets.len()].clone());
        }
        if dead > 0 {
            state.tombstone(node(a as u32, dead));
        }
    }
    state
}

fn world_ops() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(
        proptest::collection::vec(op(), 0..12),
        (ADDRS * GENERATIONS) as usize,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(256), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_merge_is_commutative(ops in world_ops(), a in replica_plan(), b in replica_plan()) {
        let w = world(ops);
        let (a, b) = (replica(&w, &a), replica(&w, &b));
        prop_assert_eq!(a.merge(&b), b.merge(&a));
    }

    #[test]
    fn prop_merge_is_associative(
        ops in world_ops(), a in replica_plan(), b in replica_plan(), c in replica_plan()
    ) {
        let w = world(ops);
        let (a, b, c) = (replica(&w, &a), replica(&w, &b), replica(&w, &c));
        prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
    }

    #[test]
    fn prop_merge_is_idempotent(ops in world_ops(), a in replica_plan(), b in replica_plan()) {
        let w = world(ops);
        let (a, b) = (replica(&w, &a), replica(&w, &b));
        prop_assert_eq!(a.merge(&a), a.clone());
        let ab = a.merge(&b);
        prop_assert_eq!(ab.merge(&b), ab.clone());
    }

    /// Applying an owner generation's deltas 1..=m in order (those held come back Duplicate,
    /// a dead or superseded generation's come back Stale) equals merging its full state at m.
    #[test]
    fn prop_deltas_then_merge_equal_full_state_merge(
        ops in world_ops(),
        a in replica_plan(),
        b in replica_plan(),
        owner in (0..ADDRS, 1..=GENERATIONS),
        upto in any::<usize>(),
    ) {
        let w = world(ops);
        let h = &w[owner.0 as usize][owner.1 as usize - 1];
        prop_assume!(!h.deltas.is_empty());
        let m = 1 + upto % h.deltas.len();
        let (a, b) = (replica(&w, &a), replica(&w, &b));
        let mut by_deltas = a.clone();
        for delta in &h.deltas[..m] {
            let outcome = by_deltas.apply_delta(delta);
            prop_assert_ne!(outcome, DeltaOutcome::Gap);
        }
        let mut full = ReplicaState::new();
        full.insert_owner(h.sets[m].clone());
        prop_assert_eq!(&by_deltas, &a.merge(&full));
        // And the delta path then commutes with any further merge.
        prop_assert_eq!(by_deltas.merge(&b), a.merge(&full).merge(&b));
    }
}
