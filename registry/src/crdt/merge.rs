//! The replica state of the gossip backend as a pure value, and its merge: the CRDT that
//! [`GossipGroups`](super::GossipGroups) implements incrementally on a
//! [`GroupTable`](crate::groups::GroupTable).
//!
//! A replica holds, per owner *address*, at most one [`OwnerSet`] (the newest owner generation
//! it knows, at one version) and a tombstone: the highest generation of that address declared
//! Down. The merge is, per address:
//! - tombstone: the max of both;
//! - owner set: the one with the higher `(generation, version)`, dropped when its generation is
//!   at or below the merged tombstone (a dead generation stays dead).
//!
//! Both parts are max-lattices and the drop depends only on the merged values, so the merge is
//! commutative, associative and idempotent (proved as properties in
//! `proptests/tests/prop_crdt_merge_laws.rs`). It relies on the owner-authoritative model: one
//! `(owner, version)` names exactly one membership set, because only the owner writes it.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use meshreg_membership::NodeId;

use super::wire::{Delta, Entry, Op, OwnerState};

/// One owner's memberships at a version: a multiset of [`Entry`] (entry -> occurrences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerSet {
    /// The owner, with generation.
    pub owner: NodeId,
    /// Changes applied since the generation started (0: none).
    pub version: u64,
    /// Memberships with their occurrence counts (never 0).
    pub entries: BTreeMap<Entry, u32>,
}

impl OwnerSet {
    /// The empty set of `owner` at version 0.
    pub fn new(owner: NodeId) -> Self {
        Self {
            owner,
            version: 0,
            entries: BTreeMap::new(),
        }
    }

    /// The owner's side: applies `op` and, when it changed something, bumps the version and
    /// returns the delta to disseminate (a `Leave` of an absent entry changes nothing).
    pub fn record(&mut self, op: Op) -> Option<Delta> {
        if !self.apply_op(&op) {
            return None;
        }
        self.version += 1;
        Some(Delta {
            dot: crdts::Dot::new(self.owner, self.version),
            op,
        })
    }

    /// Applies `op` to the multiset; false if it changed nothing.
    pub fn apply_op(&mut self, op: &Op) -> bool {
        match op {
            Op::Join {
                scope,
                group,
                serial,
                meta,
            } => {
                let entry = Entry::of(scope, group, *serial, meta);
                *self.entries.entry(entry).or_insert(0) += 1;
                true
            }
            Op::Leave {
                scope,
                group,
                serial,
                meta,
            } => {
                let entry = Entry::of(scope, group, *serial, meta);
                match self.entries.get_mut(&entry) {
                    None => false,
                    Some(1) => {
                        self.entries.remove(&entry);
                        true
                    }
                    Some(n) => {
                        *n -= 1;
                        true
                    }
                }
            }
            Op::Exit { serial } => {
                let before = self.entries.len();
                self.entries.retain(|e, _| e.serial != *serial);
                before != self.entries.len()
            }
        }
    }

    /// The wire form (entries repeated by occurrence count, in entry order).
    pub fn to_state(&self) -> OwnerState {
        let entries = self
            .entries
            .iter()
            .flat_map(|(e, &n)| std::iter::repeat_n(e.clone(), n as usize))
            .collect();
        OwnerState {
            owner: self.owner,
            version: self.version,
            entries,
        }
    }

    /// From the wire form.
    pub fn from_state(state: &OwnerState) -> Self {
        let mut entries = BTreeMap::new();
        for e in &state.entries {
            *entries.entry(e.clone()).or_insert(0) += 1;
        }
        Self {
            owner: state.owner,
            version: state.version,
            entries,
        }
    }

    fn stamp(&self) -> (u32, u64) {
        (self.owner.generation(), self.version)
    }
}

/// What [`ReplicaState::apply_delta`] did with a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// It was the next version of its owner: applied.
    Applied,
    /// The replica already holds that version or a newer one of the same generation.
    Duplicate,
    /// Versions are missing in between: not applied; the owner's full state must be pulled.
    Gap,
    /// About a generation older than one held, or tombstoned: never applied.
    Stale,
}

/// One replica's state: owner sets and tombstones by address. The merge rules are in this module's docs (`crdt::merge`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    owners: BTreeMap<SocketAddrV4, OwnerSet>,
    tombstones: BTreeMap<SocketAddrV4, u32>,
}

impl ReplicaState {
    /// The empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The owner sets held, by address.
    pub fn owners(&self) -> &BTreeMap<SocketAddrV4, OwnerSet> {
        &self.owners
    }

    /// The tombstones: the highest dead generation per address.
    pub fn tombstones(&self) -> &BTreeMap<SocketAddrV4, u32> {
        &self.tombstones
    }

    /// Whether `node`'s generation is dead here.
    pub fn is_dead(&self, node: NodeId) -> bool {
        self.tombstones
            .get(&node.addr())
            .is_some_and(|&g| node.generation() <= g)
    }

    /// Merges one full owner set in (anti-entropy): kept iff its `(generation, version)` is
    /// higher than the one held and its generation is not dead.
    pub fn insert_owner(&mut self, set: OwnerSet) {
        if self.is_dead(set.owner) {
            return;
        }
        let addr = set.owner.addr();
        match self.owners.get(&addr) {
            Some(held) if held.stamp() >= set.stamp() => {}
            _ => {
                self.owners.insert(addr, set);
            }
        }
    }

    /// `node` was declared Down: its generation and every older one of its address are dead,
    /// and the owner set of such a generation is dropped.
    pub fn tombstone(&mut self, node: NodeId) {
        let addr = node.addr();
        let dead = self.tombstones.entry(addr).or_insert(0);
        *dead = (*dead).max(node.generation());
        let dead = *dead;
        if self
            .owners
            .get(&addr)
            .is_some_and(|o| o.owner.generation() <= dead)
        {
            self.owners.remove(&addr);
        }
    }

    /// Applies a delta iff it is exactly the next version of its owner generation (a first
    /// version of a newer generation replaces the older generation's set).
    pub fn apply_delta(&mut self, delta: &Delta) -> DeltaOutcome {
        let owner = delta.dot.actor;
        if self.is_dead(owner) {
            return DeltaOutcome::Stale;
        }
        let held = self.owners.get(&owner.addr());
        let base = match held {
            Some(h) if h.owner.generation() > owner.generation() => return DeltaOutcome::Stale,
            Some(h) if h.owner == owner => h.version,
            // Unknown owner, or an older generation that this delta's generation supersedes.
            _ => 0,
        };
        if delta.dot.counter <= base {
            return DeltaOutcome::Duplicate;
        }
        if delta.dot.counter != base + 1 {
            return DeltaOutcome::Gap;
        }
        let set = match self.owners.get_mut(&owner.addr()) {
            Some(h) if h.owner == owner => h,
            _ => {
                self.owners.insert(owner.addr(), OwnerSet::new(owner));
                self.owners
                    .get_mut(&owner.addr())
                    .expect("inserted just above")
            }
        };
        // The owner only emits deltas that changed its set, so this applies (a replica in step
        // with the owner holds the entry a Leave names).
        set.apply_op(&delta.op);
        set.version = delta.dot.counter;
        DeltaOutcome::Applied
    }

    /// The merge of two replica states (rules in the `crdt::merge` module docs). Pure.
    pub fn merge(&self, other: &Self) -> Self {
        let mut merged = self.clone();
        for (&addr, &generation) in &other.tombstones {
            merged.tombstone(NodeId::new(addr, generation));
        }
        // Owners of `self` dead under `other`'s tombstones went above; now the others' owners.
        for set in other.owners.values() {
            merged.insert_owner(set.clone());
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::{GroupName, ScopeName};
    use meshreg_membership::loopback_addr;

    fn owner(generation: u32) -> NodeId {
        NodeId::new(loopback_addr(1, 7000), generation)
    }

    fn join(group: &str, serial: u64) -> Op {
        Op::Join {
            scope: ScopeName::new("s").expect("short"),
            group: GroupName::new(group).expect("short"),
            serial,
            meta: Box::default(),
        }
    }

    #[test]
    fn deltas_apply_in_order_only() {
        let mut set = OwnerSet::new(owner(1));
        let d1 = set.record(join("a", 1)).expect("changed");
        let d2 = set.record(join("b", 1)).expect("changed");
        let mut r = ReplicaState::new();
        assert_eq!(r.apply_delta(&d2), DeltaOutcome::Gap);
        assert_eq!(r.apply_delta(&d1), DeltaOutcome::Applied);
        assert_eq!(r.apply_delta(&d1), DeltaOutcome::Duplicate);
        assert_eq!(r.apply_delta(&d2), DeltaOutcome::Applied);
        assert_eq!(r.owners()[&owner(1).addr()], set);
    }

    #[test]
    fn a_tombstoned_generation_stays_dead_but_a_newer_one_lives() {
        let mut old = OwnerSet::new(owner(1));
        let d1 = old.record(join("a", 1)).expect("changed");
        let mut r = ReplicaState::new();
        r.tombstone(owner(1));
        assert_eq!(r.apply_delta(&d1), DeltaOutcome::Stale);
        r.insert_owner(old);
        assert!(r.owners().is_empty());
        let mut new = OwnerSet::new(owner(2));
        let d = new.record(join("a", 1)).expect("changed");
        assert_eq!(r.apply_delta(&d), DeltaOutcome::Applied);
    }

    #[test]
    fn a_leave_of_an_absent_entry_records_nothing() {
        let mut set = OwnerSet::new(owner(1));
        let leave = Op::Leave {
            scope: ScopeName::new("s").expect("short"),
            group: GroupName::new("a").expect("short"),
            serial: 1,
            meta: Box::default(),
        };
        assert_eq!(set.record(leave), None);
        assert_eq!(set.version, 0);
    }
}
