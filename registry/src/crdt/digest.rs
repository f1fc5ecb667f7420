//! The anti-entropy digest of a node's owner versions, bucketed like the SWIM member digest.
//!
//! Each owner the node holds at a version contributes `mix64(owner hash ^ mix64(version))` to
//! the bucket of its *address*: every generation of a node lands in the same bucket, and an
//! owner's change of version changes exactly one bucket. Two nodes holding the same
//! (owner, version) pairs have equal digests; a mismatch ships only the differing buckets'
//! owner versions.

use meshreg_membership::swim::digest::{BUCKETS, Bucket, Digest};
use meshreg_membership::{NodeId, mix64};

/// Bucketed count + XOR hash over (owner, version) pairs: the SWIM member [`Digest`] with a
/// pair hash per entry. Maintained incrementally: O(1) per version change, order-independent.
///
/// Invariant: equals the digest recomputed from scratch over the pairs the node holds, because
/// every change of a held version removes the old pair and adds the new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionDigest(Digest);

fn pair_hash(owner: &NodeId, version: u64) -> u64 {
    mix64(owner.stable_hash() ^ mix64(version))
}

impl VersionDigest {
    /// Records that `owner` is held at `version`.
    pub fn add(&mut self, owner: &NodeId, version: u64) {
        self.0.add_hashed(owner, pair_hash(owner, version));
    }

    /// Records that `owner` is no longer held at `version`.
    pub fn remove(&mut self, owner: &NodeId, version: u64) {
        self.0.remove_hashed(owner, pair_hash(owner, version));
    }

    /// Owner count and a hash over all buckets: what one random peer is sent each round.
    pub fn summary(&self) -> (u32, u64) {
        self.0.summary()
    }

    /// The per-bucket view, sent when summaries differ.
    pub fn buckets(&self) -> &[Bucket; BUCKETS] {
        self.0.buckets()
    }

    /// Mask of the buckets in which `other` differs from this digest.
    pub fn diff_mask(&self, other: &[Bucket]) -> u64 {
        self.0.diff_mask(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;
    use meshreg_membership::swim::digest::in_mask;

    fn id(i: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), 1)
    }

    #[test]
    fn a_version_change_changes_exactly_that_owners_bucket() {
        let mut a = VersionDigest::default();
        for i in 0..100 {
            a.add(&id(i), 3);
        }
        let mut b = a.clone();
        b.remove(&id(42), 3);
        b.add(&id(42), 4);
        assert_eq!(a.summary().0, b.summary().0);
        assert_ne!(a.summary().1, b.summary().1);
        let mask = a.diff_mask(b.buckets());
        assert_eq!(mask.count_ones(), 1);
        assert!(in_mask(mask, &id(42)));
    }

    #[test]
    fn the_digest_does_not_depend_on_insertion_order() {
        let mut a = VersionDigest::default();
        let mut b = VersionDigest::default();
        for i in 0..50 {
            a.add(&id(i), u64::from(i));
            b.add(&id(49 - i), u64::from(49 - i));
        }
        assert_eq!(a, b);
        assert_eq!(a.diff_mask(b.buckets()), 0);
    }
}
