//! [`IntMap`]: the u64-keyed session map, an open-addressing table with linear probing.
//!
//! Why not std's `HashMap` (hashbrown): its buckets and control bytes live in two arrays, so a
//! lookup at millions of sessions costs two dependent DRAM misses, and the bucket an insert
//! writes cannot be read ahead from outside. Here key and slot share one 32-byte bucket (two
//! per cache line): a lookup or an insert touches the line at the key's home index and usually
//! nothing else, and [`IntMap::touch_at`] reads exactly that line ahead of time. No control bytes
//! also saves 1 byte per bucket.
//!
//! Invariants:
//! - `buckets.len()` is 0 or a power of two; an empty bucket has `slot.node == EMPTY`.
//! - Linear probing: every key sits at its home index (`hash & mask`) or after it, with no
//!   empty bucket in between (deletion shifts later entries back to keep this).
//! - Load stays at or below [`MAX_LOAD_NUM`]/[`MAX_LOAD_DEN`] (70%). Linear probing expects
//!   ~2.2 buckets per hit and ~6 per miss (an insert walks a miss) at 70%, ~1.8 and ~3.6 at
//!   60% (10 M sessions). With 80%, filling to 10 M measured ~2.6 instead of ~3.5 M inserts/s
//!   (misses walk ~13 buckets, beyond the lines read ahead); the price of 70% is growing
//!   earlier (a shard doubles at 11.7 M sessions instead of 13.4 M).

use std::hash::BuildHasher;

use super::hash::SeededState;
use super::table::Slot;

/// `slot.node` of an empty bucket. The node interner never hands out this index.
pub(crate) const EMPTY: u32 = u32::MAX;

const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 10;
const MIN_BUCKETS: usize = 16;

/// Aligned to its size so a bucket never straddles two cache lines (one line per probe).
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
struct Bucket {
    key: u64,
    slot: Slot,
}

const VACANT: Bucket = Bucket {
    key: 0,
    slot: Slot::VACANT,
};

/// Where a key is, or where it would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The key is at this index.
    Found(usize),
    /// The key is absent; this empty bucket ends its probe sequence.
    Vacant(usize),
}

/// u64 -> [`Slot`], see the module docs.
#[derive(Debug)]
pub(crate) struct IntMap {
    buckets: Vec<Bucket>,
    len: usize,
    state: SeededState,
}

impl IntMap {
    pub(crate) fn new(state: SeededState) -> Self {
        Self {
            buckets: Vec::new(),
            len: 0,
            state,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes: the bucket array (allocated with exact capacity).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<Bucket>()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (self.state.hash_one(key) as usize) & (self.buckets.len() - 1)
    }

    /// Find `key`, or the empty bucket where it would be inserted.
    #[inline]
    pub(crate) fn probe(&self, key: u64) -> Option<Probe> {
        self.probe_hashed(key, self.state.hash_one(key))
    }

    /// [`Self::probe`] of a key whose hash is `hash` (the caller hashed it already: the
    /// segment choice and a split's test use the same hash).
    #[inline]
    pub(crate) fn probe_hashed(&self, key: u64, hash: u64) -> Option<Probe> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut i = (hash as usize) & mask;
        loop {
            let b = &self.buckets[i];
            if b.slot.node == EMPTY {
                return Some(Probe::Vacant(i));
            }
            if b.key == key {
                return Some(Probe::Found(i));
            }
            i = (i + 1) & mask;
        }
    }

    /// The home index of a key whose hash is `hash` (None: no buckets yet).
    #[inline]
    pub(crate) fn home_of_hash(&self, hash: u64) -> Option<usize> {
        (!self.buckets.is_empty()).then(|| (hash as usize) & (self.buckets.len() - 1))
    }

    /// Read the cache lines a probe from home index `i` walks first: the bucket's line and the
    /// next (at 60% load a hit probes ~1.8 buckets on average, a miss ~3.6, so a probe often
    /// crosses into the next line; a third line measured no better).
    #[inline]
    pub(crate) fn touch_at(&self, i: usize) -> u64 {
        let next = (i + 2) & (self.buckets.len().wrapping_sub(1));
        self.buckets.get(i).map_or(0, |b| b.key) ^ self.buckets.get(next).map_or(0, |b| b.key)
    }

    pub(crate) fn get(&self, key: u64) -> Option<&Slot> {
        match self.probe(key)? {
            Probe::Found(i) => Some(&self.buckets[i].slot),
            Probe::Vacant(_) => None,
        }
    }

    pub(crate) fn at_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.buckets[i].slot
    }

    /// Number of buckets (0 or a power of two).
    pub(crate) fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Whether one more key would take the load past the cap (the map must grow or split).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        (self.len + 1) * MAX_LOAD_DEN > self.buckets.len() * MAX_LOAD_NUM
    }

    /// An empty map of `buckets` buckets (a power of two), all allocated and written now.
    pub(crate) fn with_buckets(state: SeededState, buckets: usize) -> Self {
        debug_assert!(buckets.is_power_of_two());
        Self {
            buckets: vec![VACANT; buckets],
            len: 0,
            state,
        }
    }

    /// Move every entry whose hash `moves` into `other`, an empty map of the same size. In
    /// place: this map keeps its buckets (no allocation, no page touched for the first time).
    ///
    /// Run by run (a run is a maximal stretch of full buckets): the run's entries are lifted
    /// out and put back by the usual probe, the movers into `other`. Keys keep their home
    /// index in both maps (same size, same low hash bits), and a subset of a run's entries
    /// re-placed from their homes fits in the run's own stretch (at most `b - x + 1` of them
    /// have a home at or after any `x` of a run ending at `b`). So a run never spills into the
    /// next one still to be lifted, except the run that wraps past the last index, which is
    /// lifted last, when nothing else is left to move. The scan starts right after an empty
    /// bucket to make that so.
    pub(crate) fn split_into(&mut self, other: &mut IntMap, moves: impl Fn(u64) -> bool) {
        debug_assert!(other.len == 0 && other.buckets.len() == self.buckets.len());
        let n = self.buckets.len();
        // The load cap keeps an empty bucket in every non-empty table.
        let Some(start) = self.buckets.iter().position(|b| b.slot.node == EMPTY) else {
            return;
        };
        let mask = n - 1;
        let mut run: Vec<Bucket> = Vec::with_capacity(64);
        for step in 1..=n {
            let i = (start + step) & mask;
            let b = self.buckets[i];
            if b.slot.node != EMPTY {
                run.push(b);
                self.buckets[i] = VACANT;
                continue;
            }
            // `i` ends a run (the last step returns to `start`): put its entries back.
            for b in run.drain(..) {
                let hash = self.state.hash_one(b.key);
                if moves(hash) {
                    if let Some(Probe::Vacant(at)) = other.probe_hashed(b.key, hash) {
                        other.insert_at(at, b.key, b.slot);
                    }
                    self.len -= 1;
                } else if let Some(Probe::Vacant(at)) = self.probe_hashed(b.key, hash) {
                    self.buckets[at] = b;
                }
            }
        }
    }

    /// Make room for one more key; returns whether the table was rebuilt (probe results taken
    /// before are then stale).
    pub(crate) fn reserve_one(&mut self) -> bool {
        if !self.is_full() {
            return false;
        }
        let size = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let mut grown = Vec::with_capacity(size);
        grown.resize(size, VACANT);
        let old = std::mem::replace(&mut self.buckets, grown);
        for b in old.into_iter().filter(|b| b.slot.node != EMPTY) {
            if let Some(Probe::Vacant(i)) = self.probe(b.key) {
                self.buckets[i] = b;
            }
        }
        true
    }

    /// Insert `key` at `at`, an index [`probe`](Self::probe) returned as vacant after
    /// [`reserve_one`](Self::reserve_one).
    pub(crate) fn insert_at(&mut self, at: usize, key: u64, slot: Slot) {
        debug_assert_eq!(self.buckets[at].slot.node, EMPTY);
        self.buckets[at] = Bucket { key, slot };
        self.len += 1;
    }

    /// Remove the key at index `at` and return its slot, shifting later entries of the same
    /// probe run back so no lookup crosses an empty bucket it should not.
    pub(crate) fn remove_at(&mut self, at: usize) -> Slot {
        let mask = self.buckets.len() - 1;
        let removed = self.buckets[at].slot;
        let mut hole = at;
        let mut i = (at + 1) & mask;
        loop {
            let b = self.buckets[i];
            if b.slot.node == EMPTY {
                break;
            }
            // `b` may fill the hole if its home is not cyclically within (hole, i].
            let home = self.home(b.key);
            let dist_home = i.wrapping_sub(home) & mask;
            let dist_hole = i.wrapping_sub(hole) & mask;
            if dist_home >= dist_hole {
                self.buckets[hole] = b;
                hole = i;
            }
            i = (i + 1) & mask;
        }
        self.buckets[hole] = VACANT;
        self.len -= 1;
        removed
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<Slot> {
        match self.probe(key)? {
            Probe::Found(i) => Some(self.remove_at(i)),
            Probe::Vacant(_) => None,
        }
    }

    /// Every entry, in table order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Slot)> {
        self.buckets
            .iter()
            .filter(|b| b.slot.node != EMPTY)
            .map(|b| (b.key, &b.slot))
    }

    /// Remove every entry for which `keep` says no (`keep` sees each entry once).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut Slot) -> bool) {
        let mut gone = Vec::new();
        for b in self.buckets.iter_mut().filter(|b| b.slot.node != EMPTY) {
            if !keep(&mut b.slot) {
                gone.push(b.key);
            }
        }
        for key in gone {
            self.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn slot(v: u64) -> Slot {
        Slot {
            serial: v,
            version: v,
            node: 0,
            meta: 0,
        }
    }

    fn insert(m: &mut IntMap, k: u64, v: u64) {
        m.reserve_one();
        match m.probe(k) {
            Some(Probe::Found(i)) => *m.at_mut(i) = slot(v),
            Some(Probe::Vacant(i)) => m.insert_at(i, k, slot(v)),
            None => panic!("reserved"),
        }
    }

    #[test]
    fn a_bucket_is_32_bytes() {
        assert_eq!(size_of::<Bucket>(), 32);
    }

    #[test]
    fn grows_past_seventy_percent_load() {
        let mut m = IntMap::new(SeededState::new(1));
        for k in 0..11 {
            insert(&mut m, k, k);
        }
        assert_eq!(m.heap_bytes(), 16 * 32);
        insert(&mut m, 11, 11);
        assert_eq!(m.heap_bytes(), 32 * 32);
    }

    proptest! {
        /// Splitting moves exactly the chosen keys, and both halves stay valid maps (every key
        /// found, later inserts and removals still right), including runs that wrap around.
        #[test]
        fn prop_split_moves_exactly_the_chosen_keys(seed in any::<u64>(), keys in proptest::collection::hash_set(any::<u64>(), 0..300), bit in 0u32..64, extra in proptest::collection::vec(any::<u64>(), 0..40)) {
            let state = SeededState::new(seed);
            let mut m = IntMap::new(state);
            for &k in &keys {
                insert(&mut m, k, k);
            }
            let size = m.bucket_count().max(MIN_BUCKETS);
            let mut m = if m.bucket_count() == 0 { IntMap::with_buckets(state, size) } else { m };
            let mut other = IntMap::with_buckets(state, size);
            let moves = |h: u64| (h >> bit) & 1 == 1;
            m.split_into(&mut other, moves);
            prop_assert_eq!(m.len() + other.len(), keys.len());
            for &k in &keys {
                let (here, there) = if moves(state.hash_one(k)) { (&other, &m) } else { (&m, &other) };
                prop_assert_eq!(here.get(k).map(|s| s.version), Some(k));
                prop_assert!(there.get(k).is_none());
            }
            // Both halves keep working as maps afterwards.
            for &k in &extra {
                insert(&mut m, k, k);
                prop_assert_eq!(m.get(k).map(|s| s.version), Some(k));
            }
            for &k in keys.iter().take(50) {
                let target = if moves(state.hash_one(k)) { &mut other } else { &mut m };
                prop_assert_eq!(target.remove(k).map(|s| s.version), Some(k));
                prop_assert!(target.get(k).is_none());
            }
            for &k in keys.iter().skip(50) {
                let (here, _) = if moves(state.hash_one(k)) { (&other, &m) } else { (&m, &other) };
                prop_assert_eq!(here.get(k).map(|s| s.version), Some(k));
            }
        }

        /// Against std's HashMap, with a tiny key space and a seed that makes collisions and
        /// wrap-around runs common.
        #[test]
        fn prop_behaves_like_a_hash_map(seed in any::<u64>(), ops in proptest::collection::vec((any::<bool>(), 0u64..64, any::<u64>()), 1..400)) {
            let mut m = IntMap::new(SeededState::new(seed));
            let mut model = HashMap::new();
            for (put, k, v) in ops {
                if put {
                    insert(&mut m, k, v);
                    model.insert(k, v);
                } else {
                    prop_assert_eq!(m.remove(k).map(|s| s.version), model.remove(&k));
                }
                prop_assert_eq!(m.len(), model.len());
            }
            for k in 0..64 {
                prop_assert_eq!(m.get(k).map(|s| s.version), model.get(&k).copied());
            }
            m.retain(|s| s.version % 2 == 0);
            model.retain(|_, v| *v % 2 == 0);
            let mut got: Vec<_> = m.iter().map(|(k, s)| (k, s.version)).collect();
            got.sort_unstable();
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }
    }
}
