//! Second-hand memberships: a node that holds memberships of an identity it never saw Up
//! learns that identity's `Down` from the node it got them from.
//!
//! Every node removes a Down node's memberships on its own `Down` (no message), which
//! membership reports only after an `Up`. A node can hold memberships of an identity it never
//! saw Up: a `Sync`, a recovery report or an `Apply` carried them before the owner came Up in its
//! view (a boot race: it comes Up a moment later), or the owner never will (the node started on
//! the other side of a partition, from a node that had not noticed the cut yet). In the second
//! case its own view gives it no `Down` to act on, so it would list those memberships for as long
//! as the cut lasts, and feed them into recoveries at the heal, where they would bring back
//! leaves completed on the owner's side.
//!
//! So a node records, for each such owner, the nodes it got the memberships from (`unseen`),
//! and after [`CoordinatedConfig::resend_interval`](super::CoordinatedConfig) asks those still
//! relevant (`Watch`: the owner is neither Up nor Down here yet). A source answers `Gone` when it
//! declares the owner Down, at once if it already has (`watchers`). The watcher then drops the
//! owner's memberships, as its own `Down` would have, unless it sees the owner Up by then (its
//! own view decides from that moment), keeps later copies of them out of the table (`gone`: a
//! recovery may still hold a report taken before the cut was noticed), and passes `Gone` on to
//! its own watchers. The owner is not tombstoned: if it comes Up here later it is live here
//! (`gone` forgets it). What was kept out meanwhile is missing here, and a boss that had it all
//! along (the owner was live on its side of a cut) may count this node as holding its state;
//! so `gone` also records the partitions where something of the owner was kept out, and when
//! the owner comes Up each of them is recovered again (`recover_again`; the recovery merges the
//! owner's own report and syncs this node).
//!
//! Cost: nothing in a boot race that settles within the interval; one `Watch` per source and
//! one `Gone` per watcher otherwise.

use std::collections::{BTreeMap, BTreeSet};

use meshreg_membership::{NodeId, Time};

use super::groups::{BossTimer, CoordinatedGroups, Key, Out};
use super::message::Message;
use super::placement::partition_of;
use crate::RegistryOutput;

impl CoordinatedGroups {
    /// Whether `node` is live in this node's view (this exact identity).
    fn is_live(&self, node: NodeId) -> bool {
        self.live.get(&node.addr()) == Some(&node)
    }

    /// This node took memberships of `owner` on `source`'s word: if `owner` is neither Up nor
    /// Down here, watch it there (after the interval, if it still is).
    pub(super) fn took_word_of(&mut self, owner: NodeId, source: NodeId, out: &mut Out) {
        if owner.addr() == self.me.addr()
            || source.addr() == self.me.addr()
            || self.is_live(owner)
            || self.is_out(owner)
        {
            return;
        }
        self.unseen.entry(owner).or_default().insert(source);
        if !self.unseen_armed {
            self.unseen_armed = true;
            out.push(RegistryOutput::SetTimer {
                after: self.config.resend_interval,
                timer: BossTimer::Watch,
            });
        }
    }

    /// `node` came Up or went Down here: its memberships follow this node's own view now.
    /// Returns the partitions where memberships or ops of `node` were kept out while it was
    /// gone (see [`Self::recover_kept_out`]).
    pub(super) fn settle_unseen(&mut self, node: NodeId) -> BTreeSet<Key> {
        self.unseen.remove(&node);
        self.gone.remove(&node).unwrap_or_default()
    }

    /// Something of `owner`, gone here, was kept out of partition `key`.
    pub(super) fn kept_out(&mut self, owner: NodeId, key: &Key) {
        if let Some(keys) = self.gone.get_mut(&owner)
            && !keys.contains(key)
        {
            keys.insert(key.clone());
        }
    }

    /// A gone identity came Up here after all: what this node kept out of `keys` while it was
    /// gone (dropped on `Gone`, refused from `Sync`s and `Apply`s) is missing here, while the
    /// partitions' bosses may have it (the owner was live on their side of a cut) and count
    /// this node as holding their state. So each such partition is recovered again
    /// (`recover_again`): the recovery merges the owner's own report and syncs this node.
    pub(super) fn recover_kept_out(&mut self, now: Time, keys: BTreeSet<Key>, out: &mut Out) {
        for key in keys {
            self.recover_again(now, &key, out);
        }
    }

    /// The interval passed: watch every owner still neither Up nor Down, at its live sources.
    pub(super) fn watch_timer(&mut self, out: &mut Out) {
        self.unseen_armed = false;
        let unseen = std::mem::take(&mut self.unseen);
        let mut asks: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for (owner, sources) in unseen {
            if self.is_live(owner) || self.is_out(owner) {
                continue;
            }
            for s in sources.into_iter().filter(|&s| self.is_live(s)) {
                asks.entry(s).or_default().push(owner);
            }
        }
        for (to, nodes) in asks {
            self.send(to, &Message::Watch { nodes }, out);
        }
    }

    /// `from` holds memberships of `nodes` on this node's word.
    pub(super) fn on_watch(&mut self, from: NodeId, nodes: Vec<NodeId>, out: &mut Out) {
        let mut gone = Vec::new();
        for node in nodes {
            if self.is_dead(node) {
                gone.push(node);
            } else {
                self.watchers.entry(node).or_default().insert(from);
            }
        }
        if !gone.is_empty() {
            self.send(from, &Message::Gone { nodes: gone }, out);
        }
    }

    /// `node` is Down here: tell the nodes that hold its memberships on this node's word.
    pub(super) fn tell_watchers(&mut self, node: NodeId, out: &mut Out) {
        let Some(watchers) = self.watchers.remove(&node) else {
            return;
        };
        // Watchers are kept until then, even across their own Down: by address, a watcher that
        // renewed since still holds what it was told (one entry per watcher and owner at most).
        for w in watchers {
            if let Some(&to) = self.live.get(&w.addr())
                && to != self.me
            {
                self.send(to, &Message::Gone { nodes: vec![node] }, out);
            }
        }
    }

    /// `from` declared `nodes` Down: drop the memberships of those this node does not see
    /// itself (neither Up nor Down here), keep later copies out (a recovery may still hold a
    /// report taken before, a late `Apply` may carry one), and pass the word on.
    pub(super) fn on_gone(&mut self, nodes: Vec<NodeId>, out: &mut Out) {
        for node in nodes {
            if node.addr() == self.me.addr() || self.is_live(node) || self.is_out(node) {
                continue;
            }
            self.unseen.remove(&node);
            // By the invariant of `known`, the root's memberships date from the newest identity
            // known at its address; only if that is `node` are they `node`'s.
            let mut keys = BTreeSet::new();
            if self.known.get(&node.addr()) == Some(&node) {
                let parts = self.config.partitions_per_scope;
                for m in self.table.remove_node(node.root()) {
                    let p = partition_of(m.scope.as_str(), m.group.as_str(), parts);
                    keys.insert((m.scope, p));
                }
            }
            self.gone.insert(node, keys);
            self.tell_watchers(node, out);
        }
    }
}
