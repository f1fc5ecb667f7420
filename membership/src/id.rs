//! Node identity: address plus generation.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// The identity of one running meshreg node: where it listens and which incarnation of the
/// process it is.
///
/// A restarted node gets a higher `generation`, so it is a *new* identity: stale state about the
/// old one (a Down verdict, memberships, sessions) can never be confused with it.
///
/// Architecture Invariant: `NodeId` stays 12 bytes and `Copy`. Every node keeps one per member
/// (foca's member table), so at 10,000 nodes the simulator holds 10^8 of them; a human-readable
/// node name travels in node metadata instead (see ARCHITECTURE.md, "Identity").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    addr: SocketAddrV4,
    generation: u32,
}

impl NodeId {
    /// A node listening on `addr` in its `generation`-th incarnation.
    pub const fn new(addr: SocketAddrV4, generation: u32) -> Self {
        Self { addr, generation }
    }

    /// The address the node listens on (its UDP and TCP port).
    pub const fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Which incarnation of the process at `addr` this is; higher is newer.
    pub const fn generation(&self) -> u32 {
        self.generation
    }

    /// The process incarnation this identity belongs to: the generation with its renewal bits
    /// (the low 16) cleared.
    ///
    /// A generation is `creation << 16 | renewals`: a restart starts a new *creation*
    /// ([`NodeId::next_creation`]); a node falsely declared Down keeps running and only
    /// *renews* ([`NodeId::next_generation`]). Processes (`Pid`s) name their node
    /// by this root, so they keep their identity across renewals and lose it on a restart.
    pub const fn root(&self) -> Self {
        Self {
            addr: self.addr,
            generation: self.generation & !0xFFFF,
        }
    }

    /// The first identity of the next process started at this address (renewals reset).
    pub const fn next_creation(&self) -> Self {
        Self {
            addr: self.addr,
            generation: ((self.generation >> 16).wrapping_add(1)) << 16,
        }
    }

    /// The same address in the next generation (what a node declared Down renews to).
    pub const fn next_generation(&self) -> Self {
        Self {
            addr: self.addr,
            generation: self.generation.wrapping_add(1),
        }
    }

    /// A stable 64-bit hash of the full identity (address and generation), the same on every
    /// platform and run: used in membership digests, which peers compare.
    pub fn stable_hash(&self) -> u64 {
        mix64(self.addr_key() ^ (u64::from(self.generation) << 48).rotate_left(7))
    }

    /// A stable 64-bit key of the address alone (generation excluded), so every generation of a
    /// node falls in the same digest bucket.
    pub fn addr_key(&self) -> u64 {
        (u64::from(u32::from(*self.addr.ip())) << 16) | u64::from(self.addr.port())
    }
}

/// SplitMix64 finaliser: a cheap, well-distributed, platform-independent 64-bit mix (digests,
/// per-instance seeds, trace hashes).
pub const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.generation)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddrV4;

    /// None: foca never renews on its own. A SWIM node declared Down goes defunct in foca, and
    /// the core renews itself ([`NodeId::next_generation`]) with a fresh view that no longer
    /// vouches for the Down verdicts of its old identity (see `swim`'s module docs).
    fn renew(&self) -> Option<Self> {
        None
    }

    fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// The newer generation wins: a renewed node replaces its old identity everywhere.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// The address of the `index`-th simulated or test node: 127.0.0.0/8 only, so a test that ever
/// put these on a real socket could only reach this machine.
pub fn loopback_addr(index: u32, port: u16) -> SocketAddrV4 {
    // 127.1.0.0 + index stays inside 127.0.0.0/8 for up to 2^24 - 2^16 nodes.
    SocketAddrV4::new(Ipv4Addr::from(0x7F01_0000u32.wrapping_add(index)), port)
}

/// The inverse of [`loopback_addr`]: `None` for an address outside the simulated range.
pub fn loopback_index(addr: SocketAddrV4) -> Option<u32> {
    let ip = u32::from(*addr.ip());
    ip.checked_sub(0x7F01_0000).filter(|i| *i < 0x00FF_0000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn node_id_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<NodeId>(), 12);
    }

    #[test]
    fn renewed_identity_wins_the_address_conflict() {
        let a = NodeId::new(loopback_addr(3, 7000), 5);
        assert_eq!(a.renew(), None, "the SWIM core renews, not foca");
        let b = a.next_generation();
        assert_eq!(b.generation(), 6);
        assert_eq!(Identity::addr(&a), Identity::addr(&b));
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
    }

    #[test]
    fn renewals_keep_the_root_and_a_restart_changes_it() {
        let a = NodeId::new(loopback_addr(3, 7000), 1 << 16);
        let renewed = a.next_generation().next_generation();
        assert_eq!(renewed.root(), a);
        assert!(renewed.generation() > a.generation());
        let restarted = renewed.next_creation();
        assert_eq!(restarted.generation(), 2 << 16);
        assert!(restarted.generation() > renewed.generation());
        assert_eq!(restarted.root(), restarted);
    }

    #[test]
    fn loopback_index_round_trips() {
        for i in [0u32, 1, 255, 256, 9_999, 65_535] {
            assert_eq!(loopback_index(loopback_addr(i, 1)), Some(i));
        }
        assert_eq!(
            loopback_index(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)),
            None
        );
    }

    #[test]
    fn stable_hash_depends_on_generation_but_addr_key_does_not() {
        let a = NodeId::new(loopback_addr(1, 1), 1);
        let b = a.next_generation();
        assert_ne!(a.stable_hash(), b.stable_hash());
        assert_eq!(a.addr_key(), b.addr_key());
    }
}
