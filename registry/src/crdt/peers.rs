//! [`PeerBook`]: everything the gossip backend keeps per other address, in one dense slot.
//!
//! Every node of an N-node cluster keeps this for the N - 1 others, so it is the backend's
//! N² term: at 10,000 nodes a byte per slot is 100 MB of the simulated cluster. Three maps
//! keyed by address (held version, live peer, tombstone) plus a `Vec<NodeId>` of live peers
//! cost about 90 bytes per peer; one 32-byte slot, a 4-byte index bucket and a 4-byte live
//! list entry, with their growth slack, cost about 51 (measured below at 10,000 peers). One lookup also answers what `admit` and `version_of` each looked
//! up separately on every received delta.

use std::mem::size_of;
use std::net::SocketAddrV4;

use hashbrown::HashTable;
use meshreg_membership::{NodeId, mix64};

use crate::groups::heap::table_bytes;

/// `live_pos` of a slot whose address is not live.
const NOT_LIVE: u32 = u32::MAX;

/// What this node knows of one other address. Slots are never freed (a tombstone outlives
/// its node), so a slot's index is stable.
#[derive(Clone, Copy)]
struct Slot {
    /// Held version of generation `held_gen`; 0: nothing held (held versions start at 1).
    version: u64,
    addr: SocketAddrV4,
    /// Generation Up here; meaningful iff `live_pos != NOT_LIVE`.
    live_gen: u32,
    /// Position in [`PeerBook::live`], or [`NOT_LIVE`].
    live_pos: u32,
    /// Generation of the held version; meaningful iff `version > 0`.
    held_gen: u32,
    /// Highest generation declared Down; meaningful iff `dead`.
    dead_gen: u32,
    dead: bool,
}

/// What a [`PeerBook`] knows of one address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PeerView {
    /// Generation Up here.
    pub(super) live: Option<u32>,
    /// Held `(generation, version)`.
    pub(super) held: Option<(u32, u64)>,
    /// Highest generation declared Down.
    pub(super) dead: Option<u32>,
}

/// Per-address bookkeeping of the gossip backend: live peers (with a list for random choice),
/// held owner versions and tombstones.
///
/// Invariants: `live[slots[s].live_pos] == s` for every live slot and every entry of `live`
/// is a live slot; the index holds every slot exactly once, found by its address's hash.
/// Nothing here depends on the index's iteration order (slots and `live` change only by
/// push and swap_remove), so peer choice is a function of the inputs and the rng seed.
pub(super) struct PeerBook {
    index: HashTable<u32>,
    seed: u64,
    slots: Vec<Slot>,
    live: Vec<u32>,
}

impl Default for PeerBook {
    fn default() -> Self {
        // Keyed per book like std's maps, so which addresses collide is not known outside.
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64);
        Self {
            index: HashTable::new(),
            seed,
            slots: Vec::new(),
            live: Vec::new(),
        }
    }
}

fn addr_key(addr: SocketAddrV4) -> u64 {
    u64::from(addr.ip().to_bits()) | (u64::from(addr.port()) << 32)
}

/// Grows `v` by a quarter instead of doubling: these lists are the N² term, and doubling
/// leaves up to half of them unused. Still amortised O(1) per push.
fn reserve_quarter<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(4));
    }
}

impl PeerBook {
    fn hash(&self, addr: SocketAddrV4) -> u64 {
        mix64(self.seed ^ mix64(addr_key(addr)))
    }

    fn find(&self, addr: SocketAddrV4) -> Option<&Slot> {
        let slots = &self.slots;
        self.index
            .find(self.hash(addr), |&s| slots[s as usize].addr == addr)
            .map(|&s| &slots[s as usize])
    }

    fn find_mut(&mut self, addr: SocketAddrV4) -> Option<&mut Slot> {
        let slots = &self.slots;
        let s = *self
            .index
            .find(self.hash(addr), |&s| slots[s as usize].addr == addr)?;
        Some(&mut self.slots[s as usize])
    }

    /// The slot of `addr`, created empty if missing.
    fn slot_of(&mut self, addr: SocketAddrV4) -> u32 {
        let hash = self.hash(addr);
        let slots = &self.slots;
        if let Some(&s) = self.index.find(hash, |&s| slots[s as usize].addr == addr) {
            return s;
        }
        let s = u32::try_from(self.slots.len()).expect("fewer than 2^32 addresses");
        reserve_quarter(&mut self.slots);
        self.slots.push(Slot {
            version: 0,
            addr,
            live_gen: 0,
            live_pos: NOT_LIVE,
            held_gen: 0,
            dead_gen: 0,
            dead: false,
        });
        let (seed, slots) = (self.seed, &self.slots);
        self.index.insert_unique(hash, s, |&t| {
            mix64(seed ^ mix64(addr_key(slots[t as usize].addr)))
        });
        s
    }

    /// Everything known of `addr`, in one lookup (the per-delta path).
    pub(super) fn view(&self, addr: SocketAddrV4) -> PeerView {
        self.find(addr).map_or(PeerView::default(), |s| PeerView {
            live: (s.live_pos != NOT_LIVE).then_some(s.live_gen),
            held: (s.version > 0).then_some((s.held_gen, s.version)),
            dead: s.dead.then_some(s.dead_gen),
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
        self.find(addr)
            .filter(|s| s.version > 0)
            .map(|s| (s.held_gen, s.version))
    }

    /// Holds `owner` at `version` (> 0); returns what was held of its address before.
    pub(super) fn set_held(&mut self, owner: NodeId, version: u64) -> Option<(u32, u64)> {
        debug_assert!(version > 0, "held versions start at 1");
        let s = self.slot_of(owner.addr());
        let slot = &mut self.slots[s as usize];
        let old = (slot.version > 0).then_some((slot.held_gen, slot.version));
        slot.held_gen = owner.generation();
        slot.version = version;
        old
    }

    /// Forgets the version held of `addr`; returns it.
    pub(super) fn remove_held(&mut self, addr: SocketAddrV4) -> Option<(u32, u64)> {
        let slot = self.find_mut(addr)?;
        let old = (slot.version > 0).then_some((slot.held_gen, slot.version));
        slot.version = 0;
        old
    }

    /// The highest generation of `addr` declared Down, if any.
    pub(super) fn dead_generation(&self, addr: SocketAddrV4) -> Option<u32> {
        self.find(addr).filter(|s| s.dead).map(|s| s.dead_gen)
    }

    /// Tombstones `node`'s generation (and so every older one of its address).
    pub(super) fn bury(&mut self, node: NodeId) {
        let s = self.slot_of(node.addr());
        let slot = &mut self.slots[s as usize];
        slot.dead_gen = if slot.dead {
            slot.dead_gen.max(node.generation())
        } else {
            node.generation()
        };
        slot.dead = true;
    }

    /// Drops every tombstone.
    pub(super) fn clear_dead(&mut self) {
        for slot in &mut self.slots {
            slot.dead = false;
        }
    }

    /// Makes `node` a live peer at its generation (its address must not be live).
    pub(super) fn add_live(&mut self, node: NodeId) {
        let s = self.slot_of(node.addr());
        debug_assert_eq!(self.slots[s as usize].live_pos, NOT_LIVE);
        let pos = u32::try_from(self.live.len()).expect("fewer than 2^32 peers");
        reserve_quarter(&mut self.live);
        self.live.push(s);
        let slot = &mut self.slots[s as usize];
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
            self.slots[moved as usize].live_pos = pos;
        }
        Some(generation)
    }

    /// Number of live peers.
    pub(super) fn live_len(&self) -> usize {
        self.live.len()
    }

    /// The `i`-th live peer (`i < live_len()`), in the list's deterministic order.
    pub(super) fn live_at(&self, i: usize) -> NodeId {
        let slot = &self.slots[self.live[i] as usize];
        NodeId::new(slot.addr, slot.live_gen)
    }

    /// Every held `(owner, version)`, in slot order.
    pub(super) fn held_iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.version > 0)
            .map(|s| (NodeId::new(s.addr, s.held_gen), s.version))
    }

    /// Every tombstone, as the highest dead generation of its address, in slot order.
    pub(super) fn dead_iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.slots
            .iter()
            .filter(|s| s.dead)
            .map(|s| NodeId::new(s.addr, s.dead_gen))
    }

    /// Heap bytes of the slots, the live list and the index.
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.live.capacity() * size_of::<u32>()
            + table_bytes::<u32>(self.index.capacity())
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
    fn held_versions_and_tombstones_are_independent_of_liveness() {
        let mut book = PeerBook::default();
        assert_eq!(book.held(id(1, 1).addr()), None);
        assert_eq!(book.set_held(id(1, 1), 4), None);
        assert_eq!(book.set_held(id(1, 2), 1), Some((1, 4)));
        assert_eq!(book.held(id(1, 1).addr()), Some((2, 1)));
        book.bury(id(1, 3));
        book.bury(id(1, 2));
        assert_eq!(book.dead_generation(id(1, 1).addr()), Some(3));
        assert_eq!(book.remove_held(id(1, 1).addr()), Some((2, 1)));
        assert_eq!(book.held(id(1, 1).addr()), None);
        assert_eq!(book.dead_iter().collect::<Vec<_>>(), vec![id(1, 3)]);
        book.clear_dead();
        assert_eq!(book.dead_generation(id(1, 1).addr()), None);
        assert_eq!(book.held_iter().count(), 0);
    }

    #[test]
    fn ten_thousand_peers_cost_under_56_bytes_each() {
        let mut book = PeerBook::default();
        for i in 0..10_000 {
            book.add_live(id(i, 1));
            book.set_held(id(i, 1), 1);
        }
        let per_peer = book.heap_bytes() / 10_000;
        assert!(per_peer < 56, "{per_peer} B per peer");
    }
}
