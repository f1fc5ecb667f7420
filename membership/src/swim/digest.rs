//! A bucketed, incrementally maintained digest of a node's active member set.

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::id::mix64;

/// Number of digest buckets; a bucket mask fits one `u64`.
pub const BUCKETS: usize = 64;

/// Bucket mask that selects every bucket.
pub const ALL_BUCKETS: u64 = u64::MAX;

/// One bucket: how many active members fall in it and the XOR of their identity hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Active members in the bucket.
    pub count: u32,
    /// XOR of [`NodeId::stable_hash`] over them.
    pub hash: u64,
}

/// The digest: [`BUCKETS`] buckets keyed by a hash of the member's *address*, so every generation
/// of a node lands in the same bucket and a restart changes exactly one bucket.
///
/// Invariant: equals the digest recomputed from scratch over the active set, because every
/// `MemberUp` adds and every `MemberDown` removes exactly the identity the core reports.
/// XOR makes add/remove O(1) and order-independent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: [Bucket; BUCKETS],
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS],
        }
    }
}

/// The bucket an identity belongs to.
pub fn bucket_of(id: &NodeId) -> usize {
    // The top bits of a mixed address key are well distributed.
    (mix64(id.addr_key()) >> 58) as usize
}

impl Digest {
    /// Records `id` as active.
    pub fn add(&mut self, id: &NodeId) {
        self.add_hashed(id, id.stable_hash());
    }

    /// Records `id` as no longer active.
    pub fn remove(&mut self, id: &NodeId) {
        self.remove_hashed(id, id.stable_hash());
    }

    /// Adds an entry with its own `hash` to the bucket of `id`'s address: for digests over
    /// more than identities (the gossip backend hashes (owner, version) pairs).
    pub fn add_hashed(&mut self, id: &NodeId, hash: u64) {
        let b = &mut self.buckets[bucket_of(id)];
        b.count = b.count.wrapping_add(1);
        b.hash ^= hash;
    }

    /// Removes an entry added with [`Digest::add_hashed`].
    pub fn remove_hashed(&mut self, id: &NodeId, hash: u64) {
        let b = &mut self.buckets[bucket_of(id)];
        b.count = b.count.wrapping_sub(1);
        b.hash ^= hash;
    }

    /// Total active members and a hash over all buckets: what one random peer is sent each round.
    pub fn summary(&self) -> (u32, u64) {
        self.buckets
            .iter()
            .enumerate()
            .fold((0u32, 0u64), |(c, h), (i, b)| {
                (c.wrapping_add(b.count), h ^ mix64(b.hash ^ i as u64))
            })
    }

    /// The per-bucket view, sent when summaries differ.
    pub fn buckets(&self) -> &[Bucket; BUCKETS] {
        &self.buckets
    }

    /// Mask of the buckets in which `other` differs from this digest.
    pub fn diff_mask(&self, other: &[Bucket]) -> u64 {
        if other.len() != BUCKETS {
            return ALL_BUCKETS;
        }
        self.buckets
            .iter()
            .zip(other)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .fold(0u64, |m, (i, _)| m | (1u64 << i))
    }
}

/// Whether `mask` selects the bucket of `id`.
pub fn in_mask(mask: u64, id: &NodeId) -> bool {
    mask & (1u64 << bucket_of(id)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback_addr;

    fn id(i: u32, g: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), g)
    }

    #[test]
    fn digest_is_independent_of_insertion_order() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        for i in 0..100 {
            a.add(&id(i, 1));
        }
        for i in (0..100).rev() {
            b.add(&id(i, 1));
        }
        assert_eq!(a, b);
        assert_eq!(a.summary(), b.summary());
        assert_eq!(a.summary().0, 100);
    }

    #[test]
    fn remove_undoes_add() {
        let mut a = Digest::default();
        a.add(&id(1, 1));
        let before = a.clone();
        a.add(&id(2, 1));
        a.remove(&id(2, 1));
        assert_eq!(a, before);
    }

    #[test]
    fn a_restart_changes_exactly_one_bucket() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        for i in 0..50 {
            a.add(&id(i, 1));
            b.add(&id(i, 1));
        }
        b.remove(&id(7, 1));
        b.add(&id(7, 2));
        let mask = a.diff_mask(b.buckets());
        assert_eq!(mask.count_ones(), 1);
        assert!(in_mask(mask, &id(7, 2)));
        assert_ne!(a.summary(), b.summary());
    }
}
