//! Where a group's writes are ordered: its partition, and the partition's boss.
//!
//! Both functions are pure and platform-independent (FNV-1a then [`mix64`]), so every node
//! computes the same partition and, given the same live set, the same boss.
//!
//! The boss of `(scope, partition)` is the live node with the highest rendezvous weight
//! `w(scope, partition, node)` (ties, practically impossible, go to the larger `NodeId`). So
//! bosses spread evenly over nodes, and a membership change moves only the partitions whose
//! maximum changed: those of a node that went Down, and those a new node now wins.

use meshreg_membership::{NodeId, mix64};

/// FNV-1a over `bytes`: a stable byte hash (the std hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition of `group` in `scope`: `hash(scope, group) % partitions_per_scope`.
pub fn partition_of(scope: &str, group: &str, partitions_per_scope: u16) -> u16 {
    let h = mix64(fnv1a(scope.as_bytes()) ^ mix64(fnv1a(group.as_bytes())));
    let p = h % u64::from(partitions_per_scope.max(1));
    u16::try_from(p).expect("below a u16 modulus")
}

/// The rendezvous weight of `node` for `(scope, partition)`.
pub fn weight(scope: &str, partition: u16, node: NodeId) -> u64 {
    mix64(mix64(fnv1a(scope.as_bytes()) ^ u64::from(partition)) ^ node.stable_hash())
}

/// The boss of `(scope, partition)` among `live` (`None` only if `live` is empty).
pub fn boss_of(
    scope: &str,
    partition: u16,
    live: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    live.into_iter()
        .max_by_key(|&n| (weight(scope, partition, n), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;

    fn node(i: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), 1)
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        // Pinned: a change here would split a mixed-version cluster's partitions.
        assert_eq!(partition_of("s", "g", 256), partition_of("s", "g", 256));
        assert!(partition_of("scope", "group", 7) < 7);
        assert_eq!(partition_of("a", "b", 1), 0);
        assert_ne!(
            (0..64)
                .map(|i| partition_of("s", &i.to_string(), 256))
                .max(),
            Some(0),
            "groups spread over partitions"
        );
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions() {
        let all: Vec<NodeId> = (0..5).map(node).collect();
        let without: Vec<NodeId> = all.iter().copied().filter(|&n| n != node(2)).collect();
        let mut moved = 0;
        for p in 0..256 {
            let before = boss_of("s", p, all.iter().copied()).unwrap();
            let after = boss_of("s", p, without.iter().copied()).unwrap();
            if before != node(2) {
                assert_eq!(before, after);
            } else {
                moved += 1;
            }
        }
        // Each of the 5 nodes bosses roughly a fifth of the 256 partitions.
        assert!((25..80).contains(&moved), "{moved}");
    }
}
