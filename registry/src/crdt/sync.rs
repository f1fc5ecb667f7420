//! Incoming messages of [`GossipGroups`]: checks, deltas, and the anti-entropy exchange.
//!
//! One anti-entropy round, initiated by A towards a random peer B:
//! 1. A → B `Digest` (datagram): A's owner count and summary hash of (owner, version) pairs.
//! 2. Summaries differ: B → A `Buckets` (datagram): B's 64 bucket digests.
//! 3. A → B `Versions` (stream): A's (owner, version) pairs in the differing buckets.
//! 4. B → A `States` (stream): the full states of owners A is behind on (or lacks), and `want`:
//!    the owners B is behind on. A applies the states and answers `want` with a `States`.
//!
//! A full sync (first peer, burst of Ups) starts at step 3 with every bucket. A gap in an
//! owner's deltas is repaired by a `Pull` of that owner's state from the delta's sender. In
//! steady state a round is one ~30-byte datagram each way.

use std::collections::HashMap;
use std::net::SocketAddrV4;

use crdts::Dot;
use meshreg_membership::swim::digest::in_mask;
use meshreg_membership::wire::{self, Kind, MAX_DATAGRAM_PAYLOAD, MAX_FRAME_PAYLOAD};
use meshreg_membership::{Channel, NodeId, Time};

use super::gossip::{GossipGroups, GossipTimer};
use super::wire::{Delta, DeltaRef, GroupsMsg, Op, OwnerState, decode_deltas, state_len_bound};
use crate::groups::{EventKind, Membership};
use crate::{MessageError, Pid, RegistryOutput};

type Out = Vec<RegistryOutput<GossipTimer>>;

/// Why a delta was not applied.
enum Applied {
    Duplicate,
    Stale,
    UnknownOwner,
    /// Not the next version, or it did not apply to the replica: pull the owner's state.
    Repair,
}

impl GossipGroups {
    /// Opens, decodes and checks a message, then dispatches it. Every refusal is counted.
    pub(super) fn receive(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Out,
    ) -> Result<(), MessageError> {
        let cap = match channel {
            Channel::Datagram => MAX_DATAGRAM_PAYLOAD,
            Channel::Stream => MAX_FRAME_PAYLOAD,
        };
        let (kind, payload) = wire::open(bytes, self.cluster, cap).inspect_err(|_| {
            self.stats.wire_errors += 1;
        })?;
        if kind != Kind::Groups {
            self.stats.malformed += 1;
            return Err(MessageError::Malformed(format!(
                "{kind:?} message given to the gossip groups backend"
            )));
        }
        if let Some(decoded) = decode_deltas(payload) {
            let (sender, deltas) = decoded.map_err(|e| {
                self.stats.malformed += 1;
                MessageError::Malformed(e)
            })?;
            self.check_sender(from, sender)?;
            return self.on_deltas(now, from, deltas, out);
        }
        let msg = GroupsMsg::decode(payload).map_err(|e| {
            self.stats.malformed += 1;
            MessageError::Malformed(e)
        })?;
        self.check_sender(from, msg.from())?;
        match msg {
            // `decode_deltas` above takes every message with the Deltas tag.
            GroupsMsg::Deltas { .. } => {
                self.stats.malformed += 1;
                Err(MessageError::Malformed(
                    "groups: deltas past the deltas decoder".to_owned(),
                ))
            }
            GroupsMsg::Digest { count, hash, .. } => {
                if (count, hash) != self.digest.summary() {
                    let reply = GroupsMsg::Buckets {
                        from: self.me,
                        buckets: self.digest.buckets().to_vec(),
                    };
                    self.send(from, Channel::Datagram, &reply, out);
                }
                Ok(())
            }
            GroupsMsg::Buckets { buckets, .. } => {
                let mask = self.digest.diff_mask(&buckets);
                if mask != 0 {
                    let reply = GroupsMsg::Versions {
                        from: self.me,
                        mask,
                        versions: self.versions_in(mask),
                    };
                    self.send(from, Channel::Stream, &reply, out);
                }
                Ok(())
            }
            GroupsMsg::Versions { mask, versions, .. } => {
                self.on_versions(from, mask, &versions, out);
                Ok(())
            }
            GroupsMsg::States { states, want, .. } => {
                self.on_states(now, from, states, out);
                let states = self.states_of(&want);
                self.send_states(from, states, Vec::new(), out);
                Ok(())
            }
            GroupsMsg::Pull { owners, .. } => {
                let states = self.states_of(&owners);
                self.send_states(from, states, Vec::new(), out);
                Ok(())
            }
        }
    }

    /// A message must come from the address it names, at the generation Up here.
    fn check_sender(&mut self, from: SocketAddrV4, sender: NodeId) -> Result<(), MessageError> {
        let verdict = match self.book.live_generation(from) {
            _ if sender.addr() != from => Err(MessageError::NotAMember(from)),
            Some(generation) if generation == sender.generation() => Ok(()),
            Some(generation) if generation > sender.generation() => {
                Err(MessageError::StaleGeneration)
            }
            _ if self.is_dead(sender) => Err(MessageError::StaleGeneration),
            _ => Err(MessageError::NotAMember(from)),
        };
        match verdict {
            Err(MessageError::StaleGeneration) => self.stats.stale_generation += 1,
            Err(_) => self.stats.not_a_member += 1,
            Ok(()) => {}
        }
        verdict
    }

    /// Applies the deltas that are next in line (in owner, version order, so a message that
    /// carries consecutive versions applies them all), re-gossips them, and pulls the state
    /// of owners with a gap from the sender. `StaleGeneration` if every delta was stale.
    fn on_deltas(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        mut deltas: Vec<DeltaRef<'_>>,
        out: &mut Out,
    ) -> Result<(), MessageError> {
        deltas.sort_by_key(|d| (d.dot.actor, d.dot.counter));
        let (mut stale, mut applied, total) = (0, 0, deltas.len());
        let mut repair: Vec<NodeId> = Vec::new();
        for delta in &deltas {
            let owner = delta.dot.actor;
            match self.apply_delta(delta) {
                Ok(owned) => {
                    applied += 1;
                    self.stats.deltas_applied += 1;
                    self.stats.deltas_dropped += self.queue.push(owned);
                }
                Err(Applied::Duplicate) => self.stats.duplicate_deltas += 1,
                Err(Applied::Stale) => {
                    self.stats.stale_items += 1;
                    stale += 1;
                }
                Err(Applied::UnknownOwner) => self.stats.unknown_owner += 1,
                Err(Applied::Repair) => {
                    self.stats.gaps += 1;
                    if repair.last() != Some(&owner) {
                        repair.push(owner);
                    }
                }
            }
        }
        if applied > 0 {
            self.push_fresh(now, out);
        }
        if !repair.is_empty() {
            self.pull(now, from, repair, out);
        }
        if total > 0 && stale == total {
            self.stats.stale_generation += 1;
            return Err(MessageError::StaleGeneration);
        }
        Ok(())
    }

    /// Whether `owner` (not this node) may be applied here: Up at exactly its generation.
    fn admit(&self, owner: NodeId) -> Result<(), Applied> {
        self.admit_held(owner).map(|_| ())
    }

    /// [`Self::admit`], and for an admitted owner, in one lookup: the version held (0: none)
    /// and its *former* version (0: none), the last one applied before this generation went
    /// Down here and its memberships were dropped. A generation comes Up again only after
    /// this node renewed (the tombstone goes); a third party that never saw it Down may then
    /// relay a state older than what it had become, listing again what ended meanwhile. So
    /// until a version is held again, only a state newer than the former one, or the owner's
    /// own, is applied.
    fn admit_held(&self, owner: NodeId) -> Result<(u64, u64), Applied> {
        if owner.addr() == self.me.addr() {
            // We are the only writer of our own memberships.
            return Err(if owner.generation() < self.me.generation() {
                Applied::Stale
            } else {
                Applied::Duplicate
            });
        }
        let peer = self.book.view(owner.addr());
        if peer.dead.is_some_and(|g| owner.generation() <= g) {
            return Err(Applied::Stale);
        }
        let of_owner = |hold: Option<(u32, u64)>| match hold {
            Some((generation, version)) if generation == owner.generation() => version,
            _ => 0,
        };
        match peer.live {
            Some(generation) if generation == owner.generation() => {
                Ok((of_owner(peer.held), of_owner(peer.former)))
            }
            Some(generation) if generation > owner.generation() => Err(Applied::Stale),
            _ => Err(Applied::UnknownOwner),
        }
    }

    /// Applies `delta` if it is the next of its owner; the owned delta, to gossip on, if so.
    /// Everything else is judged from the dot alone, before anything is allocated.
    fn apply_delta(&mut self, delta: &DeltaRef<'_>) -> Result<Delta, Applied> {
        let owner = delta.dot.actor;
        let (held, former) = self.admit_held(owner)?;
        if delta.dot.counter <= held.max(former) {
            return Err(Applied::Duplicate);
        }
        // After a former hold there is no base to apply to: the memberships were dropped.
        if delta.dot.counter != held + 1 || former > 0 {
            return Err(Applied::Repair);
        }
        // Names were checked by the decoder; a failure here would be a replica to repair.
        let owned = delta.to_owned().map_err(|_| Applied::Repair)?;
        if !self.apply_op(owner, &owned.op) {
            return Err(Applied::Repair);
        }
        self.set_held(owner, delta.dot.counter);
        Ok(owned)
    }

    /// Applies one op of `owner` to the table; false if the replica had diverged (nothing or
    /// a partial change applied: the caller pulls the owner's full state, which replaces it).
    fn apply_op(&mut self, owner: NodeId, op: &Op) -> bool {
        match op {
            Op::Join {
                scope,
                group,
                serial,
                meta,
            } => {
                let pid = Pid {
                    node: owner.root(),
                    serial: *serial,
                };
                self.table.join(scope, group, pid, meta).is_ok()
            }
            Op::Leave {
                scope,
                group,
                serial,
                meta,
            } => {
                let pid = Pid {
                    node: owner.root(),
                    serial: *serial,
                };
                if self.table.leave(scope, group, pid).is_err() {
                    return false;
                }
                let removed = match self.table.pending_events().last() {
                    Some(e) if e.kind == EventKind::Left => e.membership.clone(),
                    _ => return false,
                };
                removed.meta == *meta || self.fix_leave(owner, removed, meta)
            }
            Op::Exit { serial } => {
                self.table.remove_pid(Pid {
                    node: owner.root(),
                    serial: *serial,
                });
                true
            }
        }
    }

    /// The table's `leave` removed the newest occurrence, but the owner removed one with other
    /// metadata (a replica's join order can differ after a `replace_node`): put the removed one
    /// back and remove the named one. Rare; O(the owner's memberships).
    fn fix_leave(&mut self, owner: NodeId, removed: Membership, meta: &[u8]) -> bool {
        let mut wanted: Vec<Membership> = self
            .table
            .memberships_of_node(owner.root())
            .map(|m| Membership {
                scope: m.scope.clone(),
                group: m.group.clone(),
                pid: m.pid,
                meta: m.meta.into(),
            })
            .collect();
        let Some(at) = wanted.iter().position(|m| {
            m.scope == removed.scope
                && m.group == removed.group
                && m.pid == removed.pid
                && *m.meta == *meta
        }) else {
            return false;
        };
        wanted.swap_remove(at);
        wanted.push(removed);
        self.table.replace_node(owner, wanted).is_ok()
    }

    /// Applies full owner states that are newer than what we hold (`replace_node`). A state
    /// relayed by `from` that is no newer than the owner's former version (see
    /// [`Self::admit_held`]) is refused, and the owner's own state is pulled from it instead.
    fn on_states(&mut self, now: Time, from: SocketAddrV4, states: Vec<OwnerState>, out: &mut Out) {
        let mut ask_owners: Vec<NodeId> = Vec::new();
        for state in states {
            let owner = state.owner;
            let (held, former) = match self.admit_held(owner) {
                Err(Applied::Stale) => {
                    self.stats.stale_items += 1;
                    continue;
                }
                Err(Applied::UnknownOwner) => {
                    self.stats.unknown_owner += 1;
                    continue;
                }
                Err(_) => continue,
                Ok(versions) => versions,
            };
            if state.version <= held {
                continue;
            }
            if state.version <= former && from != owner.addr() {
                self.stats.stale_items += 1;
                ask_owners.push(owner);
                continue;
            }
            let wanted = state
                .entries
                .into_iter()
                .map(|e| Membership {
                    scope: e.scope,
                    group: e.group,
                    pid: Pid {
                        node: owner.root(),
                        serial: e.serial,
                    },
                    meta: e.meta,
                })
                .collect();
            match self.table.replace_node(owner.root(), wanted) {
                Ok(_) => {
                    self.set_held(owner, state.version);
                    self.pulling.remove(&owner.addr());
                    self.stats.states_applied += 1;
                }
                // Over-cap metadata (the owner's cap is larger than ours).
                Err(_) => self.stats.malformed += 1,
            }
        }
        for owner in ask_owners {
            self.pull(now, owner.addr(), vec![owner], out);
        }
    }

    /// Step 4 at B: states of the owners in `mask` the peer is behind on, and the owners it is
    /// ahead on that are Up here.
    fn on_versions(
        &mut self,
        to: SocketAddrV4,
        mask: u64,
        versions: &[Dot<NodeId>],
        out: &mut Out,
    ) {
        let theirs: HashMap<SocketAddrV4, (u32, u64)> = versions
            .iter()
            .map(|d| (d.actor.addr(), (d.actor.generation(), d.counter)))
            .collect();
        let behind: Vec<NodeId> = self
            .versions_in(mask)
            .into_iter()
            .filter(|ours| {
                theirs
                    .get(&ours.actor.addr())
                    .is_none_or(|&(generation, version)| {
                        (generation, version) < (ours.actor.generation(), ours.counter)
                    })
            })
            .map(|d| d.actor)
            .collect();
        let want: Vec<NodeId> = versions
            .iter()
            .filter(|d| self.admit(d.actor).is_ok() && d.counter > self.version_of(d.actor))
            .map(|d| d.actor)
            .collect();
        let states = self.states_of(&behind);
        self.send_states(to, states, want, out);
    }

    /// Our (owner, version) pairs in the buckets of `mask`, this node included, sorted by
    /// owner (the maps are never iterated into a message unsorted: determinism).
    pub(super) fn versions_in(&self, mask: u64) -> Vec<Dot<NodeId>> {
        let mut v: Vec<Dot<NodeId>> = self
            .book
            .held_iter()
            .map(|(owner, version)| Dot::new(owner, version))
            .chain((self.version > 0).then(|| Dot::new(self.me, self.version)))
            .filter(|d| in_mask(mask, &d.actor))
            .collect();
        v.sort_by_key(|d| d.actor);
        v
    }

    /// The states we hold of `owners` (exact generation), this node's own included.
    fn states_of(&self, owners: &[NodeId]) -> Vec<OwnerState> {
        owners
            .iter()
            .filter_map(|&owner| {
                let version = self.version_of(owner);
                (version > 0).then(|| self.owner_state(owner, version))
            })
            .collect()
    }

    /// Sends states (and `want`) as stream frames, split so each stays well under the frame
    /// cap. Nothing is sent when both are empty.
    fn send_states(
        &self,
        to: SocketAddrV4,
        states: Vec<OwnerState>,
        mut want: Vec<NodeId>,
        out: &mut Out,
    ) {
        let limit = MAX_FRAME_PAYLOAD / 2;
        let mut batch: Vec<OwnerState> = Vec::new();
        let mut size = 0;
        for state in states {
            let len = state_len_bound(&state);
            if !batch.is_empty() && size + len > limit {
                let msg = GroupsMsg::States {
                    from: self.me,
                    states: std::mem::take(&mut batch),
                    want: std::mem::take(&mut want),
                };
                self.send(to, Channel::Stream, &msg, out);
                size = 0;
            }
            size += len;
            batch.push(state);
        }
        if !batch.is_empty() || !want.is_empty() {
            let msg = GroupsMsg::States {
                from: self.me,
                states: batch,
                want,
            };
            self.send(to, Channel::Stream, &msg, out);
        }
    }
}
