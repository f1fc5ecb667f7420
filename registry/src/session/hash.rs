//! A fast, seeded hasher for the shard's hash maps.
//!
//! std's SipHash costs ~20 ns per u64 key, a tenth of the whole per-registration budget
//! (5 M/s on one core). Keys come from clients, so a fixed hash would let a client aim many keys
//! at one bucket; the seed is injected by the driver (GUIDE rule 4: randomness is injected) and
//! the finaliser is a bijective 64-bit mix, so colliding keys cannot be chosen without it.

use std::hash::{BuildHasher, Hash, Hasher};

use meshreg_membership::NodeId;

/// Builds [`KeyHasher`]s sharing one seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededState {
    seed: u64,
}

/// Mixed into every seed. Why: placement puts a u64 key in shard `mix64(key) % shards`, so with
/// a zero seed (`ShardConfig::default()`, a driver that injects none) a table's hash of a key
/// would be that same `mix64(key)`, and every key of one shard would share the hash's low bits:
/// all of them would start probing from 1 in 1,024 buckets (measured: 3% more instructions per
/// registration in `cargo bench --bench session_calls` at a hundred keys per shard, and growing
/// with the shard). With the salt, only the seed equal to it does that.
const SEED_SALT: u64 = 0x243F_6A88_85A3_08D3;

impl SeededState {
    pub(crate) const fn new(seed: u64) -> Self {
        Self {
            seed: seed ^ SEED_SALT,
        }
    }
}

impl BuildHasher for SeededState {
    type Hasher = KeyHasher;

    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// Folds written words into one u64 and finishes with SplitMix64's mix.
///
/// A u64 key is a single `write_u64`, so its hash is `mix64(seed ^ key)`: one multiply chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher {
    state: u64,
}

const FOLD: u64 = 0x9E37_79B9_7F4A_7C15;

impl KeyHasher {
    #[inline]
    fn fold(&mut self, word: u64) {
        // Multiply-rotate keeps earlier words influential without a full mix per word.
        self.state = (self.state ^ word).wrapping_mul(FOLD).rotate_left(29);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        mix64(self.state)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.fold(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length tag keeps `[1]` and `[1, 0]` apart.
            self.fold(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.fold(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.fold(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.fold(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        // A lone u64 needs no fold: `finish` mixes it fully.
        self.state ^= i;
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.fold(i as u64);
    }
}

/// A [`NodeId`] as a hash-map key, hashed as two words.
///
/// Why: the shard looks up a node id per request (the client's retry window, twice) and per new
/// session (the holder's interned index), and the derived `Hash` of a `NodeId` feeds the
/// address octets as a length-prefixed byte string, then the port, then the generation (four
/// hasher rounds and a byte loop): together several percent of a registration. Here: the
/// generation, then address and port packed into one u64 (48 bits), which [`KeyHasher`] turns
/// into one fold plus the final mix. Equality is `NodeId`'s, and the hash a function of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeKey(pub(crate) NodeId);

impl Hash for NodeKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let addr = self.0.addr();
        state.write_u32(self.0.generation());
        state.write_u64((u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port()));
    }
}

/// Slot of `node` in a direct-mapped hint of `slots` entries (a power of two): address, port
/// and generation folded and multiplied, top bits taken (loopback nodes differ in the
/// address's low bits, real ones anywhere in it). Not seeded: a hint is checked before use, so
/// a collision costs a hashed lookup, never a wrong answer.
#[inline]
pub(crate) fn recent_slot(node: &NodeId, slots: usize) -> usize {
    debug_assert!(slots.is_power_of_two() && slots > 1);
    let addr = node.addr();
    let bits = (u64::from(u32::from(*addr.ip())) << 16 | u64::from(addr.port()))
        ^ u64::from(node.generation()) << 48;
    (bits.wrapping_mul(FOLD) >> (64 - slots.trailing_zeros())) as usize
}

/// SplitMix64 finaliser: bijective, every input bit reaches every output bit.
#[inline]
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_hash_depends_on_the_seed() {
        let a = SeededState::new(1).hash_one(42u64);
        let b = SeededState::new(2).hash_one(42u64);
        assert_ne!(a, b);
        assert_eq!(a, SeededState::new(1).hash_one(42u64));
    }

    #[test]
    fn byte_strings_differing_only_in_trailing_zeros_hash_apart() {
        let s = SeededState::new(7);
        assert_ne!(
            s.hash_one([1u8].as_slice()),
            s.hash_one([1u8, 0].as_slice())
        );
    }

    #[test]
    fn node_keys_differing_in_any_field_hash_apart() {
        use meshreg_membership::loopback_addr;
        let s = SeededState::new(3);
        let base = NodeKey(NodeId::new(loopback_addr(1, 7000), 1));
        let others = [
            NodeKey(NodeId::new(loopback_addr(2, 7000), 1)),
            NodeKey(NodeId::new(loopback_addr(1, 7001), 1)),
            NodeKey(NodeId::new(loopback_addr(1, 7000), 2)),
        ];
        for o in others {
            assert_ne!(s.hash_one(base), s.hash_one(o), "{o:?}");
        }
        assert_eq!(s.hash_one(base), s.hash_one(NodeKey(base.0)));
    }

    #[test]
    fn low_bits_of_sequential_keys_spread_over_buckets() {
        // hashbrown indexes by the low bits: sequential phone numbers must not pile up.
        let s = SeededState::new(0);
        let mut buckets = [0u32; 64];
        for k in 0..64_000u64 {
            buckets[(s.hash_one(k) & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (800..1200).contains(n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn keys_of_one_shard_spread_over_buckets_under_the_default_seed() {
        // Placement puts a key in shard `mix64(key) % shards`: the keys of one shard must not
        // share the table hash's low bits, whatever the seed (the default one included).
        use crate::session::manager::shard_of;
        use crate::session::{SessionKey, ShardId};
        for seed in [0, 1, 0x5eed] {
            let s = SeededState::new(seed);
            let mut buckets = [0u32; 64];
            let mut n = 0;
            for k in 0..200_000u64 {
                if shard_of(&SessionKey::U64(k), 16) == ShardId(7) {
                    buckets[(s.hash_one(k) & 63) as usize] += 1;
                    n += 1;
                }
            }
            let (lo, hi) = (n / 64 * 6 / 10, n / 64 * 14 / 10);
            assert!(
                buckets.iter().all(|b| (lo..hi).contains(b)),
                "seed {seed}: {buckets:?}"
            );
        }
    }
}
