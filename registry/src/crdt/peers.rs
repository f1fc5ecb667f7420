//! [`PeerBook`]: everything the gossip backend keeps per other address, in one bucket.
//!
//! Every node of an N-node cluster keeps this for the N - 1 others, so it is the backend's
//! N² term: at 10,000 nodes a byte per peer is 100 MB of the simulated cluster. Three maps
//! keyed by address (held version, live peer, tombstone) plus a `Vec<NodeId>` of live peers
//! cost about 90 bytes per peer; a 32-byte bucket of an open-addressing table (70% load at
//! most) and a 4-byte live-list entry cost about 56 at 10,000 peers (measured below). One
//! lookup, one cache line, answers what `admit` and `version_of` each looked up separately
//! on every received delta.

use std::mem::size_of;
use std::net::SocketAddrV4;

use meshreg_membership::{NodeId, mix64};

/// `live_pos` of a slot whose address is not live.
const NOT_LIVE: u32 = u32::MAX;

/// `key` of an empty bucket: no address key reaches it (an address key is 48 bits).
const EMPTY: u64 = u64::MAX;

/// Bit of `key` set while the address has a tombstone (`dead_gen` meaningful).
const DEAD: u64 = 1 << 48;

/// Bit of `key` set while `version` is a *former* hold: the memberships of generation
/// `held_gen` were dropped when it went Down here, and `version` is the last one applied.
const FORMER: u64 = 1 << 49;

/// The address bits of `key`.
const ADDR_MASK: u64 = DEAD - 1;

/// Load limit, 7/10: linear probing expects about 2.2 buckets per hit at 70% (one or two
/// 32-byte buckets of one 64-byte line), and an insert walks a miss (about 6).
const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 10;
const MIN_BUCKETS: usize = 16;

/// What this node knows of one other address: one bucket of the open-addressing table, key
/// and data together, so a lookup reads one line (hashbrown would read a control byte group,
/// a bucket and, for a 4-byte handle, the slot it names: three misses on every delta).
/// Slots are never removed (a tombstone outlives its node), so probing needs no deletion.
#[derive(Clone, Copy)]
#[repr(align(32))]
struct Slot {
    /// Address key (IPv4 bits, port << 32) plus the [`DEAD`] flag; [`EMPTY`] for none.
    key: u64,
    /// Held version of generation `held_gen`; 0: nothing held (held versions start at 1).
    version: u64,
    /// Generation Up here; meaningful iff `live_pos != NOT_LIVE`.
    live_gen: u32,
    /// Position in [`PeerBook::live`], or [`NOT_LIVE`].
    live_pos: u32,
    /// Generation of the held version; meaningful iff `version > 0`.
    held_gen: u32,
    /// Highest generation declared Down; meaningful iff the key has [`DEAD`].
    dead_gen: u32,
}
// A key never reaches EMPTY: address bits and flags leave the top 14 bits clear.
const _: () = assert!((ADDR_MASK | DEAD | FORMER) != EMPTY);

const VACANT: Slot = Slot {
    key: EMPTY,
    version: 0,
    live_gen: 0,
    live_pos: NOT_LIVE,
    held_gen: 0,
    dead_gen: 0,
};

impl Slot {
    fn addr(&self) -> SocketAddrV4 {
        let k = self.key & ADDR_MASK;
        SocketAddrV4::new((k as u32).into(), (k >> 32) as u16)
    }

    fn dead(&self) -> bool {
        self.key & DEAD != 0
    }

    /// The `(generation, version)` held, unless it is a former hold.
    fn held(&self) -> Option<(u32, u64)> {
        (self.version > 0 && self.key & FORMER == 0).then_some((self.held_gen, self.version))
    }

    /// The former hold, if `version` is one.
    fn former(&self) -> Option<(u32, u64)> {
        (self.version > 0 && self.key & FORMER != 0).then_some((self.held_gen, self.version))
    }
}

/// What a [`PeerBook`] knows of one address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PeerView {
    /// Generation Up here.
    pub(super) live: Option<u32>,
    /// Held `(generation, version)`.
    pub(super) held: Option<(u32, u64)>,
    /// The last `(generation, version)` held before that generation went Down here (its
    /// memberships dropped); cleared when a version is held again.
    pub(super) former: Option<(u32, u64)>,
    /// Highest generation declared Down.
    pub(super) dead: Option<u32>,
}

/// Per-address bookkeeping of the gossip backend: live peers (with a list for random choice),
/// held owner versions and tombstones, in a linear-probing table of [`Slot`]s.
///
/// Invariants: `buckets.len()` is 0 or a power of two and at most 70% full; every address sits
/// at its home bucket or after it with no empty bucket in between; `live[slots.live_pos] ==`
/// the slot's bucket for every live slot and every entry of `live` is a live slot's bucket.
/// Peer choice goes through `live`, changed only by push and swap_remove (and renumbered in
/// place by growth), so it is a function of the inputs and the rng seed; nothing depends on
/// the table's order (its iterators feed sorted or keyed consumers only).
pub(super) struct PeerBook {
    buckets: Vec<Slot>,
    len: usize,
    seed: u64,
    live: Vec<u32>,
}

impl Default for PeerBook {
    fn default() -> Self {
        // Keyed per book like std's maps, so which addresses collide is not known outside.
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64);
        Self {
            buckets: Vec::new(),
            len: 0,
            seed,
            live: Vec::new(),
        }
    }
}

fn addr_key(addr: SocketAddrV4) -> u64 {
    u64::from(addr.ip().to_bits()) | (u64::from(addr.port()) << 32)
}

/// Grows `v` by a quarter instead of doubling: the live list is part of the N² term, and
/// doubling leaves up to half of it unused. Still amortised O(1) per push.
fn reserve_quarter<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(4));
    }
}

impl PeerBook {
    fn home(&self, key: u64) -> usize {
        (mix64(self.seed ^ key) as usize) & (self.buckets.len() - 1)
    }

    /// The bucket of `addr`, if it has one.
    fn index_of(&self, addr: SocketAddrV4) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let key = addr_key(addr);
        let mask = self.buckets.len() - 1;
        let mut i = self.home(key);
        loop {
            let k = self.buckets[i].key;
            if k == EMPTY {
                return None;
            }
            if k & ADDR_MASK == key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, addr: SocketAddrV4) -> Option<&Slot> {
        self.index_of(addr).map(|i| &self.buckets[i])
    }

    fn find_mut(&mut self, addr: SocketAddrV4) -> Option<&mut Slot> {
        self.index_of(addr).map(|i| &mut self.buckets[i])
    }

    /// Places `slot` (whose address is absent) in the first empty bucket from its home.
    fn place(&mut self, slot: Slot) -> usize {
        let mask = self.buckets.len() - 1;
        let mut i = self.home(slot.key & ADDR_MASK);
        while self.buckets[i].key != EMPTY {
            i = (i + 1) & mask;
        }
        self.buckets[i] = slot;
        i
    }

    /// Doubles the table and renumbers the live list to the slots' new buckets.
    fn grow(&mut self) {
        let size = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![VACANT; size]);
        for slot in old.into_iter().filter(|s| s.key != EMPTY) {
            let i = self.place(slot);
            if slot.live_pos != NOT_LIVE {
                self.live[slot.live_pos as usize] = i as u32;
            }
        }
    }

    /// The bucket of `addr`, created empty if missing.
    fn slot_of(&mut self, addr: SocketAddrV4) -> usize {
        if let Some(i) = self.index_of(addr) {
            return i;
        }
        if (self.len + 1) * MAX_LOAD_DEN > self.buckets.len() * MAX_LOAD_NUM {
            self.grow();
        }
        self.len += 1;
        self.place(Slot {
            key: addr_key(addr),
            ..VACANT
        })
    }

    /// Everything known of `addr`, in one lookup (the per-delta path).
    pub(super) fn view(&self, addr: SocketAddrV4) -> PeerView {
        self.find(addr).map_or(PeerView::default(), |s| PeerView {
            live: (s.live_pos != NOT_LIVE).then_some(s.live_gen),
            held: s.held(),
            former: s.former(),
            dead: s.dead().then_some(s.dead_gen),
        })
    }

    /// The generation of `addr` Up here, if any.
    pub(super) fn live_generation(&self, addr: SocketAddrV4) -> Option<u32> {
        self.find(addr)
            .filter(|s| s.live_pos != NOT_LIVE)
            .map(|s| s.live_gen)
    }

    /// The `(generation, version)` held of `addr`, if any.
    pub(super) fn held(&self, addr: SocketAddrV4) -> Option<(u32, u64)> {
        self.find(addr).and_then(Slot::held)
    }

    /// Holds `owner` at `version` (> 0); returns what was held of its address before (a
    /// former hold is not held: it is cleared without being returned).
    pub(super) fn set_held(&mut self, owner: NodeId, version: u64) -> Option<(u32, u64)> {
        debug_assert!(version > 0, "held versions start at 1");
        let i = self.slot_of(owner.addr());
        let slot = &mut self.buckets[i];
        let old = slot.held();
        slot.key &= !FORMER;
        slot.held_gen = owner.generation();
        slot.version = version;
        old
    }

    /// Stops holding `addr` (its memberships were dropped) but remembers the version as a
    /// former hold; returns it.
    pub(super) fn retire_held(&mut self, addr: SocketAddrV4) -> Option<(u32, u64)> {
        let slot = self.find_mut(addr)?;
        let old = slot.held();
        if old.is_some() {
            slot.key |= FORMER;
        }
        old
    }

    /// The highest generation of `addr` declared Down, if any.
    pub(super) fn dead_generation(&self, addr: SocketAddrV4) -> Option<u32> {
        self.find(addr).filter(|s| s.dead()).map(|s| s.dead_gen)
    }

    /// Tombstones `node`'s generation (and so every older one of its address).
    pub(super) fn bury(&mut self, node: NodeId) {
        let i = self.slot_of(node.addr());
        let slot = &mut self.buckets[i];
        slot.dead_gen = if slot.dead() {
            slot.dead_gen.max(node.generation())
        } else {
            node.generation()
        };
        slot.key |= DEAD;
    }

    /// Drops every tombstone.
    pub(super) fn clear_dead(&mut self) {
        for slot in self.buckets.iter_mut().filter(|s| s.key != EMPTY) {
            slot.key &= !DEAD;
        }
    }

    /// Makes `node` a live peer at its generation (its address must not be live).
    pub(super) fn add_live(&mut self, node: NodeId) {
        let i = self.slot_of(node.addr());
        debug_assert_eq!(self.buckets[i].live_pos, NOT_LIVE);
        let pos = u32::try_from(self.live.len()).expect("fewer than 2^32 peers");
        reserve_quarter(&mut self.live);
        self.live.push(i as u32);
        let slot = &mut self.buckets[i];
        slot.live_gen = node.generation();
        slot.live_pos = pos;
    }

    /// Takes `addr` out of the live peers; returns the generation it was live at.
    pub(super) fn remove_live(&mut self, addr: SocketAddrV4) -> Option<u32> {
        let slot = self.find_mut(addr)?;
        if slot.live_pos == NOT_LIVE {
            return None;
        }
        let (pos, generation) = (slot.live_pos, slot.live_gen);
        slot.live_pos = NOT_LIVE;
        self.live.swap_remove(pos as usize);
        if let Some(&moved) = self.live.get(pos as usize) {
            self.buckets[moved as usize].live_pos = pos;
        }
        Some(generation)
    }

    /// Number of live peers.
    pub(super) fn live_len(&self) -> usize {
        self.live.len()
    }

    /// The `i`-th live peer (`i < live_len()`), in the list's deterministic order.
    pub(super) fn live_at(&self, i: usize) -> NodeId {
        let slot = &self.buckets[self.live[i] as usize];
        NodeId::new(slot.addr(), slot.live_gen)
    }

    /// Every held `(owner, version)`, in table order.
    pub(super) fn held_iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.buckets
            .iter()
            .filter(|s| s.key != EMPTY)
            .filter_map(|s| s.held().map(|(g, v)| (NodeId::new(s.addr(), g), v)))
    }

    /// Every tombstone, as the highest dead generation of its address, in table order.
    pub(super) fn dead_iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.buckets
            .iter()
            .filter(|s| s.key != EMPTY && s.dead())
            .map(|s| NodeId::new(s.addr(), s.dead_gen))
    }

    /// Heap bytes of the table and the live list.
    pub(super) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<Slot>() + self.live.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;

    fn id(i: u32, generation: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), generation)
    }

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(size_of::<Slot>(), 32);
    }

    #[test]
    fn live_list_positions_stay_exact_across_removals() {
        let mut book = PeerBook::default();
        for i in 0..10 {
            book.add_live(id(i, 1));
        }
        assert_eq!(book.remove_live(id(3, 1).addr()), Some(1));
        assert_eq!(book.remove_live(id(3, 1).addr()), None);
        assert_eq!(book.remove_live(id(9, 1).addr()), Some(1));
        assert_eq!(book.live_len(), 8);
        let mut seen: Vec<NodeId> = (0..book.live_len()).map(|i| book.live_at(i)).collect();
        seen.sort();
        let mut want: Vec<NodeId> = [0, 1, 2, 4, 5, 6, 7, 8].map(|i| id(i, 1)).to_vec();
        want.sort();
        assert_eq!(seen, want);
        for i in [0, 1, 2, 4, 5, 6, 7, 8] {
            assert_eq!(book.live_generation(id(i, 1).addr()), Some(1));
        }
        assert_eq!(book.live_generation(id(3, 1).addr()), None);
    }

    #[test]
    fn growth_keeps_every_slot_and_the_live_list_exact() {
        let mut book = PeerBook::default();
        for i in 0..1_000 {
            book.add_live(id(i, 2));
            book.set_held(id(i, 2), u64::from(i) + 1);
            if i % 3 == 0 {
                book.remove_live(id(i, 2).addr());
                book.bury(id(i, 2));
            }
        }
        let mut live: Vec<NodeId> = (0..book.live_len()).map(|i| book.live_at(i)).collect();
        live.sort();
        let want: Vec<NodeId> = (0..1_000)
            .filter(|i| i % 3 != 0)
            .map(|i| id(i, 2))
            .collect();
        assert_eq!(live, want);
        for i in 0..1_000 {
            let addr = id(i, 2).addr();
            let view = book.view(addr);
            assert_eq!(view.held, Some((2, u64::from(i) + 1)));
            assert_eq!(view.live, (i % 3 != 0).then_some(2));
            assert_eq!(view.dead, (i % 3 == 0).then_some(2));
        }
        assert_eq!(book.view(id(5_000, 1).addr()), PeerView::default());
        assert_eq!(book.dead_iter().count(), 334);
        assert_eq!(book.held_iter().count(), 1_000);
    }

    #[test]
    fn held_versions_and_tombstones_are_independent_of_liveness() {
        let mut book = PeerBook::default();
        assert_eq!(book.held(id(1, 1).addr()), None);
        assert_eq!(book.set_held(id(1, 1), 4), None);
        assert_eq!(book.set_held(id(1, 2), 1), Some((1, 4)));
        assert_eq!(book.held(id(1, 1).addr()), Some((2, 1)));
        book.bury(id(1, 3));
        book.bury(id(1, 2));
        assert_eq!(book.dead_generation(id(1, 1).addr()), Some(3));
        assert_eq!(book.retire_held(id(1, 1).addr()), Some((2, 1)));
        assert_eq!(book.retire_held(id(1, 1).addr()), None);
        assert_eq!(book.held(id(1, 1).addr()), None);
        assert_eq!(book.view(id(1, 1).addr()).former, Some((2, 1)));
        assert_eq!(book.dead_iter().collect::<Vec<_>>(), vec![id(1, 3)]);
        book.clear_dead();
        assert_eq!(book.dead_generation(id(1, 1).addr()), None);
        assert_eq!(book.held_iter().count(), 0);
        // A former hold outlives the tombstones, and the next hold replaces it.
        assert_eq!(book.view(id(1, 1).addr()).former, Some((2, 1)));
        assert_eq!(book.set_held(id(1, 2), 3), None);
        let view = book.view(id(1, 1).addr());
        assert_eq!((view.held, view.former), (Some((2, 3)), None));
    }

    #[test]
    fn ten_thousand_peers_cost_under_60_bytes_each() {
        let mut book = PeerBook::default();
        for i in 0..10_000 {
            book.add_live(id(i, 1));
            book.set_held(id(i, 1), 1);
        }
        let per_peer = book.heap_bytes() / 10_000;
        assert!(per_peer < 60, "{per_peer} B per peer");
    }
}
