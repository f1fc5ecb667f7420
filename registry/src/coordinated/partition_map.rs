//! [`PartitionMap`]: per-partition state keyed by `(scope, partition)`, as one vector of slots
//! per scope.
//!
//! Why not a `BTreeMap<(scope, partition), V>`: every op looks its partition up several times
//! (its term, its replica) on every node, and a search of an ordered map of 256 partitions per
//! scope walks three levels of nodes whose keys and inline values spread over many cache lines;
//! each sample's first op on a partition found most of them cold. Here a lookup is the scope's
//! entry in a small ordered map (a handful of scopes, compared by pointer once interned), one
//! slot of that scope's vector and the boxed entry.
//!
//! Iteration visits entries in the order the ordered map did (scope, then partition), so
//! everything driven by iteration (recoveries, syncs at a view change) happens in the same
//! order as before.

use std::collections::BTreeMap;

use super::groups::Key;
use crate::groups::ScopeName;

type Slot<V> = Option<Box<(Key, V)>>;

/// `(scope, partition) -> V`, see the module docs.
pub(crate) struct PartitionMap<V> {
    scopes: BTreeMap<ScopeName, Vec<Slot<V>>>,
}

impl<V> Default for PartitionMap<V> {
    fn default() -> Self {
        Self {
            scopes: BTreeMap::new(),
        }
    }
}

impl<V> PartitionMap<V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn slot(&self, key: &Key) -> Option<&Slot<V>> {
        self.scopes.get(&key.0)?.get(usize::from(key.1))
    }

    fn slot_mut(&mut self, key: &Key) -> Option<&mut Slot<V>> {
        self.scopes.get_mut(&key.0)?.get_mut(usize::from(key.1))
    }

    /// Whether `key` has an entry.
    pub(crate) fn contains_key(&self, key: &Key) -> bool {
        self.slot(key).is_some_and(Option::is_some)
    }

    /// The entry of `key`.
    pub(crate) fn get(&self, key: &Key) -> Option<&V> {
        self.slot(key)?.as_deref().map(|(_, v)| v)
    }

    /// The entry of `key`, mutably.
    pub(crate) fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.slot_mut(key)?.as_deref_mut().map(|(_, v)| v)
    }

    /// Sets the entry of `key`; returns the one it replaced.
    pub(crate) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        let at = usize::from(key.1);
        if !self.scopes.contains_key(&key.0) {
            self.scopes.insert(key.0.clone(), Vec::new());
        }
        let slots = self.scopes.get_mut(&key.0).expect("inserted above");
        if slots.len() <= at {
            slots.resize_with(at + 1, || None);
        }
        match &mut slots[at] {
            Some(entry) => Some(std::mem::replace(&mut entry.1, value)),
            empty => {
                *empty = Some(Box::new((key, value)));
                None
            }
        }
    }

    /// Removes the entry of `key` and returns it.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<V> {
        let entry = self.slot_mut(key)?.take()?;
        Some(entry.1)
    }

    /// Heap bytes of the slot vectors (occupied or not; the boxed entries are not counted).
    pub(crate) fn slot_bytes(&self) -> usize {
        self.scopes.values().map(Vec::capacity).sum::<usize>() * size_of::<Slot<V>>()
    }

    /// Entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.scopes
            .values()
            .flat_map(|slots| slots.iter().flatten().map(|e| (&e.0, &e.1)))
    }

    /// Entries in key order, values mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Key, &mut V)> {
        self.scopes.values_mut().flat_map(|slots| {
            slots.iter_mut().flatten().map(|e| {
                let (k, v) = &mut **e;
                (&*k, v)
            })
        })
    }

    /// Keys in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Values in key order, mutably.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }
}

impl<V: 'static> IntoIterator for PartitionMap<V> {
    type Item = (Key, V);
    type IntoIter = Box<dyn Iterator<Item = (Key, V)>>;

    /// Entries in key order.
    fn into_iter(self) -> Self::IntoIter {
        Box::new(
            self.scopes
                .into_values()
                .flat_map(|slots| slots.into_iter().flatten().map(|e| *e)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn key(scope: u8, p: u16) -> Key {
        (ScopeName::new(&format!("s{scope}")).unwrap(), p)
    }

    proptest! {
        /// Same answers and the same iteration order as the ordered map it replaces.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec((0u8..3, 0u8..4, 0u16..40, any::<u32>()), 0..300)) {
            let mut m = PartitionMap::new();
            let mut model = BTreeMap::new();
            for (what, scope, p, v) in ops {
                let k = key(scope, p);
                match what {
                    0 | 1 => prop_assert_eq!(m.insert(k.clone(), v), model.insert(k, v)),
                    _ => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                }
                prop_assert_eq!(m.iter().count(), model.len());
                prop_assert_eq!(m.contains_key(&key(scope, p)), model.contains_key(&key(scope, p)));
                prop_assert_eq!(m.get(&key(scope, p)), model.get(&key(scope, p)));
            }
            let ours: Vec<(Key, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let theirs: Vec<(Key, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            prop_assert_eq!(&ours, &theirs);
            for v in m.values_mut() {
                *v = v.wrapping_add(1);
            }
            let owned: Vec<(Key, u32)> = m.into_iter().collect();
            let bumped: Vec<(Key, u32)> = theirs.into_iter().map(|(k, v)| (k, v.wrapping_add(1))).collect();
            prop_assert_eq!(owned, bumped);
        }
    }
}
