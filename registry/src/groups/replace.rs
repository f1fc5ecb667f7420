//! Replacing one owner's whole set of memberships: what the gossip backend does when a full
//! state of an owner arrives (anti-entropy), at a cost in that owner's memberships only.

use std::collections::{HashMap, HashSet};

use meshreg_membership::NodeId;

use super::error::GroupError;
use super::event::{EventKind, GroupEvent, Membership};
use super::slab::NIL;
use super::table::{GroupTable, live};

/// What [`GroupTable::replace_node`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Occurrences removed (one `Left` event each).
    pub left: usize,
    /// Occurrences added (one `Joined` event each).
    pub joined: usize,
}

/// A membership as a multiset key: equal keys are indistinguishable occurrences.
type Key<'a> = (&'a str, &'a str, u64, &'a [u8]);

impl GroupTable {
    /// Makes the memberships of `node`'s pids exactly `wanted` (a multiset), changing only the
    /// difference: occurrences in both are kept (no event; of equal ones, the newest), the
    /// surplus leaves (pid by pid, newest first), missing ones join in `wanted` order (so the
    /// last of them counts as the newest). Other nodes' memberships are not
    /// touched.
    ///
    /// O(old + new memberships of `node`). Refuses, unchanged, a membership of a pid on another
    /// node ([`GroupError::ForeignPid`]) or with metadata over the cap.
    pub fn replace_node(
        &mut self,
        node: NodeId,
        wanted: Vec<Membership>,
    ) -> Result<Replaced, GroupError> {
        for m in &wanted {
            if m.pid.node != node {
                return Err(GroupError::ForeignPid { pid: m.pid, node });
            }
            self.check_meta(m.meta.len())?;
        }
        let (doomed, to_add) = self.diff(node, &wanted);
        let mut replaced = Replaced::default();
        if let Some(n) = self.node_of(node) {
            replaced.left = self.remove_doomed(n, &doomed);
        }
        for (m, add) in wanted.into_iter().zip(to_add) {
            if add {
                self.insert(&m.scope, &m.group, m.pid, m.meta.clone());
                self.events.push(GroupEvent {
                    kind: EventKind::Joined,
                    membership: m,
                });
                replaced.joined += 1;
            }
        }
        if let Some(n) = self.node_of(node) {
            self.settle_node(n);
        }
        Ok(replaced)
    }

    /// Matches `node`'s records against `wanted`: returns the records to remove, with their
    /// pids in first-seen order, and which `wanted` entries are missing. Of equal occurrences
    /// the newest are kept (each pid's chain is walked newest first), so which one a later
    /// `leave` removes is well defined. Reads only; the maps are lookups, never iterated.
    fn diff(&self, node: NodeId, wanted: &[Membership]) -> (Doomed, Vec<bool>) {
        let mut want: HashMap<Key<'_>, usize> = HashMap::with_capacity(wanted.len());
        for m in wanted {
            *want.entry(key(m)).or_insert(0) += 1;
        }
        let mut doomed = Doomed::default();
        if let Some(n) = self.node_of(node) {
            let mut seen = HashSet::new();
            for first in self.node_ids(n) {
                let serial = self.entry_of(first).serial();
                if !seen.insert(serial) {
                    continue;
                }
                let mut id = self.pid_head(n, serial).unwrap_or(NIL);
                while id != NIL {
                    match want.get_mut(&self.key_of(id)) {
                        Some(count) if *count > 0 => *count -= 1,
                        _ => doomed.add(serial, id),
                    }
                    id = self.records.get(id).next_of_pid;
                }
            }
        }
        // What is left in `want` is missing: mark that many of each key, first ones first.
        let to_add = wanted
            .iter()
            .map(|m| match want.get_mut(&key(m)) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    true
                }
                _ => false,
            })
            .collect();
        (doomed, to_add)
    }

    fn key_of(&self, id: u32) -> Key<'_> {
        let group = live(&self.groups, self.records.get(id).group);
        let entry = self.entry_of(id);
        let meta: &[u8] = if entry.meta == NIL {
            &[]
        } else {
            self.metas.get(entry.meta)
        };
        (
            self.scopes[group.scope as usize].name.as_str(),
            group.name.as_str(),
            entry.serial(),
            meta,
        )
    }

    /// Removes the doomed records of node slot `n`, one walk of each affected pid's chain.
    fn remove_doomed(&mut self, n: u32, doomed: &Doomed) -> usize {
        let mut left = 0;
        for &serial in &doomed.serials {
            let Some(head) = self.pid_head(n, serial) else {
                continue;
            };
            let (mut prev, mut id) = (NIL, head);
            while id != NIL {
                let next = self.records.get(id).next_of_pid;
                if doomed.records.contains(&id) {
                    self.unlink(n, serial, prev, id);
                    let membership = self.detach(id, true);
                    self.events.push(GroupEvent {
                        kind: EventKind::Left,
                        membership,
                    });
                    left += 1;
                } else {
                    prev = id;
                }
                id = next;
            }
        }
        left
    }
}

fn key(m: &Membership) -> Key<'_> {
    (m.scope.as_str(), m.group.as_str(), m.pid.serial, &m.meta)
}

/// Records chosen for removal, and their pids in first-seen order (the order of the events).
#[derive(Default)]
struct Doomed {
    serials: Vec<u64>,
    records: HashSet<u32>,
}

impl Doomed {
    /// Called pid by pid, so a new pid is always the last one pushed.
    fn add(&mut self, serial: u64, id: u32) {
        if self.serials.last() != Some(&serial) {
            self.serials.push(serial);
        }
        self.records.insert(id);
    }
}
