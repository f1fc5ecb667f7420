//! [`ShardMap`]: per-shard state of a [`SessionManager`](super::SessionManager), found by
//! indexing instead of searching.
//!
//! Why: a registration looks up its shard's replica, ownership map, believed epoch and
//! acknowledged epoch about a dozen times over its four hops, and each lookup in an ordered
//! map of a thousand shards walked three nodes of key comparisons (measured ~5% of a node's
//! CPU under load, mostly the searches' branches and loads). Shards are few and dense, so a
//! position array answers a lookup with two loads.
//!
//! Invariants: `slots` is sorted by shard (iteration is in shard order, as an ordered map's
//! was, so outputs that iterate still depend only on the inputs); `index[s]` is the position
//! of shard `s` in `slots` plus one, or 0 when absent, for every `s` below `index.len()`
//! (shards at or above it, which a correct peer never names, are found by binary search).
//! Inserting or removing a shard moves the positions after it: O(shards), and rare (a term
//! starts or ends, a shard is first used).

use crate::session::ShardId;

/// Per-shard values, in shard order. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct ShardMap<T> {
    slots: Vec<(ShardId, T)>,
    index: Vec<u32>,
    /// Length `index` takes at the first insert (the configured shard count): a map that
    /// never holds anything allocates nothing.
    limit: u32,
}

impl<T> ShardMap<T> {
    /// An empty map indexing shards below `shards`.
    pub(crate) fn new(shards: u32) -> Self {
        Self {
            slots: Vec::new(),
            index: Vec::new(),
            limit: shards,
        }
    }

    fn position(&self, shard: ShardId) -> Option<usize> {
        match self.index.get(shard.0 as usize) {
            Some(&at) => at.checked_sub(1).map(|p| p as usize),
            None if self.slots.is_empty() => None,
            None => self.slots.binary_search_by_key(&shard, |(s, _)| *s).ok(),
        }
    }

    /// Re-records the positions of `slots[from..]`.
    fn reindex(&mut self, from: usize) {
        for (p, (s, _)) in self.slots.iter().enumerate().skip(from) {
            if let Some(at) = self.index.get_mut(s.0 as usize) {
                *at = u32::try_from(p + 1).unwrap_or(0);
            }
        }
    }

    /// Adds `shard` (absent) with `value`; returns its position.
    fn insert_new(&mut self, shard: ShardId, value: T) -> usize {
        if self.index.is_empty() {
            self.index = vec![0; self.limit as usize];
        }
        let p = self.slots.partition_point(|(s, _)| *s < shard);
        self.slots.insert(p, (shard, value));
        self.reindex(p);
        p
    }

    pub(crate) fn get(&self, shard: &ShardId) -> Option<&T> {
        self.position(*shard).map(|p| &self.slots[p].1)
    }

    pub(crate) fn get_mut(&mut self, shard: &ShardId) -> Option<&mut T> {
        self.position(*shard).map(|p| &mut self.slots[p].1)
    }

    /// Sets `shard` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, shard: ShardId, value: T) -> Option<T> {
        match self.position(shard) {
            Some(p) => Some(std::mem::replace(&mut self.slots[p].1, value)),
            None => {
                self.insert_new(shard, value);
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, shard: &ShardId) -> Option<T> {
        let p = self.position(*shard)?;
        let (_, value) = self.slots.remove(p);
        if let Some(at) = self.index.get_mut(shard.0 as usize) {
            *at = 0;
        }
        self.reindex(p);
        Some(value)
    }

    /// The value of `shard`, inserted from `f` if absent.
    pub(crate) fn get_or_insert_with(&mut self, shard: ShardId, f: impl FnOnce() -> T) -> &mut T {
        let p = match self.position(shard) {
            Some(p) => p,
            None => self.insert_new(shard, f()),
        };
        &mut self.slots[p].1
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// `(shard, value)` in shard order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ShardId, &T)> {
        self.slots.iter().map(|(s, v)| (s, v))
    }

    /// `(shard, value)` in shard order, values mutable.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&ShardId, &mut T)> {
        self.slots.iter_mut().map(|(s, v)| (&*s, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &ShardId> {
        self.slots.iter().map(|(s, _)| s)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    proptest! {
        /// Behaves as an ordered map, for shards inside and outside the indexed range.
        #[test]
        fn prop_matches_an_ordered_map(ops in proptest::collection::vec((0u8..3, 0u32..40, any::<u16>()), 0..200)) {
            let mut m = ShardMap::new(32);
            let mut model = BTreeMap::new();
            for (op, s, v) in ops {
                let s = ShardId(s);
                match op {
                    0 => prop_assert_eq!(m.insert(s, v), model.insert(s, v)),
                    1 => prop_assert_eq!(m.remove(&s), model.remove(&s)),
                    _ => {
                        let got = *m.get_or_insert_with(s, || v);
                        prop_assert_eq!(got, *model.entry(s).or_insert(v));
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                for probe in 0..40 {
                    let probe = ShardId(probe);
                    prop_assert_eq!(m.get(&probe), model.get(&probe));
                }
                let listed: Vec<_> = m.iter().map(|(s, v)| (*s, *v)).collect();
                let expected: Vec<_> = model.iter().map(|(s, v)| (*s, *v)).collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }
}
