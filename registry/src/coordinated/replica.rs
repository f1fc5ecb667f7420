//! The replica role: every node applies each partition's ops in sequence order, promises boss
//! terms, and reports or replaces its partition state for recovery.
//!
//! Acceptance rule (the fence): a node accepts `Apply`, `Sync` and `Recover` for a partition
//! only from the node that is that partition's boss in its own view, and only with an epoch
//! not older than the one it promised:
//! - `Recover(e)` needs `e > promised`, or `e == promised` from the same boss (a re-send);
//!   accepting is the promise: older terms are refused from then on.
//! - `Apply(e)` / `Sync(e)` need `e >= promised` (a higher one is adopted: a node that came Up
//!   after a recovery learns the term from its `Sync`), and, from a term this node did not
//!   promise (another epoch, or the same epoch of another boss), no written state here. Written
//!   state the term's recovery did not collect comes from a history the boss never saw (the
//!   node kept writing on the other side of a partition, and the boss's side learned of it only
//!   at the heal); replacing it with the boss's state would bring back what was left there
//!   (`Nack { Unrecovered }`: the boss recovers again and merges it).
//!
//! Otherwise the node answers `Nack { NotBoss | StaleEpoch { known } | Unrecovered }` and
//! changes nothing.
//!
//! Order: `seq` of a partition is applied strictly in order. An early Apply is held (FIFO
//! links make that rare: it takes a boss change); a duplicate is re-acknowledged, not applied.
//! Ops whose origin (the requesting identity) is dead here still advance `seq` but do not touch
//! the table, so an in-flight join cannot re-add a dead node's member after `remove_node`. The
//! origin, not the pid, decides: pids name their node by its root, which a renewed node keeps,
//! and its re-joins come from the new identity.
//!
//! Renewal evidence: an Apply's origin and a state's owners tell this node of identities its
//! membership view may not show yet; they go through `observe` before anything is applied, so
//! a re-join applied here early is never removed by the old identity's later `Down`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

use meshreg_membership::{NodeId, Time};

use super::groups::{CoordinatedGroups, Key, Out};
use super::message::{Entry, Message, NackReason, Op, Origin, PartitionState, Refused, Ticket};
use crate::groups::{GroupName, GroupTable, ScopeName};

/// A partition's dedupe window: the origins of its last applied ops, oldest first, each with
/// whether it was refused. Checked by a scan (at most `dedupe_per_partition` entries, 256 by
/// default): an index would double the window's memory, which at 256 partitions per scope is
/// the backend's main fixed cost. For the same reason entries are packed into 20 bytes (an
/// `(Origin, bool)` takes 40).
#[derive(Default)]
pub(crate) struct Recent {
    order: VecDeque<Packed>,
}

/// One window entry: `[ipv4, port | kind | refused, generation, ticket low, ticket high]`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Packed([u32; 5]);

/// Bit of word 1 set for [`Ticket::Exit`] (clear for [`Ticket::Call`]).
const EXIT_BIT: u32 = 1 << 16;
/// Bit of word 1 set when the op was refused (not part of the origin).
const REFUSED_BIT: u32 = 1 << 17;

impl Packed {
    fn new(origin: &Origin, refused: bool) -> Self {
        let (node, ticket) = origin;
        let (exit, n) = match *ticket {
            Ticket::Call(n) => (0, n),
            Ticket::Exit(n) => (EXIT_BIT, n),
        };
        let addr = node.addr();
        let flags = if refused { REFUSED_BIT } else { 0 };
        Self([
            u32::from(*addr.ip()),
            u32::from(addr.port()) | exit | flags,
            node.generation(),
            n as u32,
            (n >> 32) as u32,
        ])
    }

    /// Same origin, whatever the refused flag (`key` is a lookup key: its flag is clear).
    ///
    /// The ticket's low word is compared first: one requester numbers its ops in sequence, so
    /// it differs between nearly all entries of a window and one compare rejects most of them.
    /// Why word by word: the boss scans the whole window for every new op (a miss), and copying
    /// each entry to mask the flag before an array compare made that scan a `memcmp` call per
    /// entry.
    #[inline]
    fn is(&self, key: &Packed) -> bool {
        let (a, b) = (&self.0, &key.0);
        a[3] == b[3] && a[0] == b[0] && a[1] & !REFUSED_BIT == b[1] && a[2] == b[2] && a[4] == b[4]
    }

    fn refused(&self) -> bool {
        self.0[1] & REFUSED_BIT != 0
    }

    fn unpack(&self) -> (Origin, bool) {
        let w = self.0;
        let addr = SocketAddrV4::new(Ipv4Addr::from(w[0]), (w[1] & 0xFFFF) as u16);
        let n = u64::from(w[3]) | (u64::from(w[4]) << 32);
        let ticket = if w[1] & EXIT_BIT != 0 {
            Ticket::Exit(n)
        } else {
            Ticket::Call(n)
        };
        ((NodeId::new(addr, w[2]), ticket), self.refused())
    }
}

impl Recent {
    /// Remembers `origin`, forgetting the oldest entries beyond `cap`. Evicts before pushing so
    /// the buffer never grows past `cap` (a full window would otherwise double its capacity).
    pub(crate) fn push(&mut self, origin: Origin, refused: bool, cap: usize) {
        while self.order.len() >= cap.max(1) {
            self.order.pop_front();
        }
        self.order.push_back(Packed::new(&origin, refused));
    }

    /// Whether `origin` was applied recently, and if so whether it was refused (newest first:
    /// a retry is usually of a recent op).
    pub(crate) fn get(&self, origin: &Origin) -> Option<bool> {
        let key = Packed::new(origin, false);
        self.order
            .iter()
            .rev()
            .find(|p| p.is(&key))
            .map(Packed::refused)
    }

    /// The window, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Origin, bool)> + '_ {
        self.order.iter().map(Packed::unpack)
    }

    /// Replaces the window (a recovered state).
    pub(crate) fn replace(&mut self, entries: Vec<(Origin, bool)>) {
        self.order = entries.iter().map(|(o, r)| Packed::new(o, *r)).collect();
    }

    /// Heap bytes of the window.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.order.capacity() * size_of::<Packed>()
    }
}

/// What one node knows of one partition.
#[derive(Default)]
pub(crate) struct Replica {
    /// Highest epoch promised or accepted.
    pub(crate) epoch: u64,
    /// The boss of `epoch` (`None` before any).
    pub(crate) boss: Option<NodeId>,
    /// Epoch of the term that wrote the last applied op.
    pub(crate) written_epoch: u64,
    /// Last applied sequence number.
    pub(crate) seq: u64,
    /// Origins of the last applied ops, oldest first, at most `dedupe_per_partition`.
    pub(crate) recent: Recent,
    /// Applies that arrived early, by seq: `(epoch, origin, op)`.
    held: BTreeMap<u64, (u64, Origin, Op)>,
    /// The boss of this partition in this node's view when last computed (to notice changes).
    pub(crate) view_boss: Option<NodeId>,
    /// Another node said this partition was written (`Handoff`): recover it when winning it,
    /// even with no local state.
    pub(crate) hinted: bool,
}

impl Replica {
    /// `(written_epoch, seq)`: the state written by the newest term, then the longest, wins.
    pub(crate) fn rank(&self) -> (u64, u64) {
        (self.written_epoch, self.seq)
    }

    /// Whether the partition was ever written, as far as this node knows.
    pub(crate) fn written(&self) -> bool {
        self.seq > 0 || self.hinted
    }
}

/// Lists `group` under its partition `key` (see `CoordinatedGroups::part_groups`), after a join
/// created it in the table. Nothing is cloned when it is listed already (an entry kept from
/// before the group was last emptied: entries are dropped lazily).
fn index_group(
    index: &mut std::collections::HashMap<Key, std::collections::HashSet<GroupName>>,
    key: &Key,
    group: &GroupName,
) {
    match index.get_mut(key) {
        Some(groups) => {
            if !groups.contains(group) {
                groups.insert(group.clone());
            }
        }
        None => {
            index.insert(key.clone(), std::iter::once(group.clone()).collect());
        }
    }
}

impl CoordinatedGroups {
    pub(super) fn replica(&mut self, key: &Key) -> &mut Replica {
        // Looked up before inserting: `entry` would take (and drop) a clone of the key's scope
        // name on every call, an atomic count update per op on the hot path.
        if !self.replicas.contains_key(key) {
            self.replicas.insert(key.clone(), Replica::default());
        }
        self.replicas.get_mut(key).expect("inserted above")
    }

    /// Applies `op` as the next seq of its partition, in term `epoch`, and returns whether it
    /// was refused (a leave of a non-member: ordered like any op, but a no-op). The caller
    /// checked order. Every replica holds the same state at the same seq, so all agree on the
    /// refusal (ops on dead pids excepted: nobody waits for those).
    pub(super) fn apply_next(&mut self, key: &Key, epoch: u64, origin: Origin, op: &Op) -> bool {
        let refused = if self.is_out(origin.0) {
            self.kept_out(origin.0, key);
            false
        } else {
            match op {
                // Metadata was checked at decode (remote) or in `join` (local).
                Op::Join {
                    scope,
                    group,
                    pid,
                    meta,
                } => {
                    // A group already in the table is already indexed (the invariant of
                    // `part_groups`): only a group this join created needs listing.
                    match self.table.join_created(scope, group, *pid, meta) {
                        Ok(true) => {
                            index_group(&mut self.part_groups, key, group);
                            false
                        }
                        Ok(false) => false,
                        Err(_) => true,
                    }
                }
                Op::Leave { scope, group, pid } => self.table.leave(scope, group, *pid).is_err(),
            }
        };
        let cap = self.config.dedupe_per_partition;
        let r = self.replica(key);
        r.seq += 1;
        r.written_epoch = epoch;
        r.recent.push(origin, refused, cap);
        refused
    }

    /// Whether `from` may drive `key` with `epoch`; answers the `Nack` itself otherwise.
    fn accepts(
        &mut self,
        from: NodeId,
        key: &Key,
        epoch: u64,
        what: Refused,
        out: &mut Out,
    ) -> bool {
        let reason = if self.boss_of(&key.0, key.1) != from {
            Some(NackReason::NotBoss)
        } else {
            let known = self.replica(key).epoch;
            (epoch < known).then_some(NackReason::StaleEpoch { known })
        };
        let Some(reason) = reason else {
            return true;
        };
        let nack = Message::Nack {
            scope: key.0.clone(),
            partition: key.1,
            what,
            reason,
        };
        self.send(from, &nack, out);
        false
    }

    /// Whether this node may take an `Apply`/`Sync` of term `epoch` from `boss` (which
    /// [`Self::accepts`]): a term it promised, or any term while it holds no written state of
    /// `key`. Answers `Nack { Unrecovered }` otherwise (see the module docs).
    fn in_term(
        &mut self,
        boss: NodeId,
        key: &Key,
        epoch: u64,
        what: Refused,
        out: &mut Out,
    ) -> bool {
        let r = self.replica(key);
        if r.seq == 0 || (r.epoch == epoch && r.boss == Some(boss)) {
            return true;
        }
        let nack = Message::Nack {
            scope: key.0.clone(),
            partition: key.1,
            what,
            reason: NackReason::Unrecovered,
        };
        self.send(boss, &nack, out);
        false
    }

    /// Adopts term `epoch` of `boss` (not older than the promised one); drops held Applies of
    /// older terms, which that term may have ordered differently.
    fn adopt_term(&mut self, key: &Key, epoch: u64, boss: NodeId) {
        let r = self.replica(key);
        if epoch > r.epoch {
            r.held.retain(|_, (e, _, _)| *e >= epoch);
        }
        r.epoch = epoch;
        r.boss = Some(boss);
    }

    #[expect(clippy::too_many_arguments, reason = "the Apply's fields, flat")]
    pub(super) fn replica_apply(
        &mut self,
        now: Time,
        from: NodeId,
        epoch: u64,
        seq: u64,
        origin: Origin,
        op: Op,
        out: &mut Out,
    ) {
        // The boss is a live member, so its word that `origin` exists is good even if this
        // node's view has not shown that identity Up yet.
        self.observe(now, origin.0, out);
        let key = self.key_of(&op);
        let what = Refused::Apply { epoch, seq };
        if !self.accepts(from, &key, epoch, what, out)
            || !self.in_term(from, &key, epoch, what, out)
        {
            return;
        }
        self.adopt_term(&key, epoch, from);
        if matches!(op, Op::Join { .. }) {
            self.took_word_of(origin.0, from, out);
        }
        let r = self.replica(&key);
        if seq == r.seq + 1 && r.held.is_empty() {
            // In order with nothing held, the usual case: what `drain_held` would do, without
            // parking the op in the map first.
            self.apply_next(&key, epoch, origin, &op);
        } else {
            if seq > r.seq {
                r.held.insert(seq, (epoch, origin, op));
            }
            self.drain_held(&key);
        }
        self.ack(from, &key, epoch, out);
    }

    fn drain_held(&mut self, key: &Key) {
        loop {
            let r = self.replica(key);
            let next = r.seq + 1;
            r.held.retain(|&s, _| s >= next);
            let Some((epoch, origin, op)) = r.held.remove(&next) else {
                return;
            };
            self.apply_next(key, epoch, origin, &op);
        }
    }

    fn ack(&mut self, boss: NodeId, key: &Key, epoch: u64, out: &mut Out) {
        let seq = self.replica(key).seq;
        let ack = Message::Ack {
            scope: key.0.clone(),
            partition: key.1,
            epoch,
            seq,
        };
        self.send(boss, &ack, out);
    }

    pub(super) fn replica_recover(&mut self, from: NodeId, key: Key, epoch: u64, out: &mut Out) {
        let r = self.replica(&key);
        let resend = epoch == r.epoch && r.boss == Some(from);
        let (what, promised) = (Refused::Recover { epoch }, r.epoch);
        if !resend && epoch <= promised {
            let nack = Message::Nack {
                scope: key.0.clone(),
                partition: key.1,
                what,
                reason: NackReason::StaleEpoch { known: promised },
            };
            self.send(from, &nack, out);
            return;
        }
        if !self.accepts(from, &key, epoch, what, out) {
            return;
        }
        self.adopt_term(&key, epoch, from);
        let state = self.partition_state(&key);
        let msg = Message::State {
            scope: key.0,
            partition: key.1,
            epoch,
            state,
        };
        self.send(from, &msg, out);
    }

    pub(super) fn replica_sync(
        &mut self,
        now: Time,
        from: NodeId,
        key: Key,
        epoch: u64,
        state: PartitionState,
        out: &mut Out,
    ) {
        let what = Refused::Recover { epoch };
        if !self.accepts(from, &key, epoch, what, out)
            || !self.in_term(from, &key, epoch, what, out)
        {
            return;
        }
        self.adopt_term(&key, epoch, from);
        for &owner in &state.owners {
            self.took_word_of(owner, from, out);
        }
        self.install_state(now, &key, state, out);
        self.drain_held(&key);
        self.ack(from, &key, epoch, out);
    }

    /// The groups of partition `key` that have members: O(groups of the partition). Groups
    /// left empty since they were recorded are forgotten here.
    fn groups_of_partition(&mut self, key: &Key) -> Vec<GroupName> {
        let Some(groups) = self.part_groups.get_mut(key) else {
            return Vec::new();
        };
        let table = &self.table;
        groups.retain(|g| table.members(&key.0, g).next().is_some());
        let out = groups.iter().cloned().collect();
        if groups.is_empty() {
            self.part_groups.remove(key);
        }
        out
    }

    /// This node's memberships of partition `key`, sorted (so states compare by value).
    fn entries_of_partition(&mut self, key: &Key) -> Vec<Entry> {
        let groups = self.groups_of_partition(key);
        partition_entries(&self.table, &key.0, &groups)
    }

    /// This node's state of `key`: seq, dedupe window and memberships.
    pub(super) fn partition_state(&mut self, key: &Key) -> PartitionState {
        let entries = self.entries_of_partition(key);
        // This node names itself even without entries: a boss merging states learns from it
        // which identity reported (see `boss::merge_own`).
        let mut owners: Vec<NodeId> = entries.iter().map(|e| self.owner_of(e.pid)).collect();
        owners.push(self.me);
        owners.sort();
        owners.dedup();
        let r = self.replica(key);
        PartitionState {
            written_epoch: r.written_epoch,
            seq: r.seq,
            recent: r.recent.iter().collect(),
            entries,
            owners,
        }
    }

    /// The identity `pid`'s memberships here date from: this node for local pids, else the
    /// newest known identity of its root (see the invariant of `known`).
    fn owner_of(&self, pid: crate::Pid) -> NodeId {
        if pid.node == self.me.root() {
            return self.me;
        }
        self.known
            .get(&pid.node.addr())
            .copied()
            .filter(|k| k.root() == pid.node)
            .unwrap_or(pid.node)
    }

    /// Takes a state's owners as evidence of identities (before anything of it is applied).
    pub(super) fn observe_owners(&mut self, now: Time, state: &PartitionState, out: &mut Out) {
        for &owner in &state.owners {
            self.observe(now, owner, out);
        }
        for &((origin, _), _) in &state.recent {
            self.observe(now, origin, out);
        }
    }

    /// Makes this node's partition exactly `state`, minus the entries of owners dead here. An
    /// entry whose root the state names no owner for is taken as its root's (conservative:
    /// dead as soon as any generation of that address is).
    pub(super) fn install_state(
        &mut self,
        now: Time,
        key: &Key,
        state: PartitionState,
        out: &mut Out,
    ) {
        self.observe_owners(now, &state, out);
        let owners = state.owners;
        let have = self.entries_of_partition(key);
        // A state that does not know this node's identity comes from a history that never saw
        // it (the other side of a healed partition, or a boss addressing the old identity):
        // this node's own memberships stay as they are, and a boss's recovery merges them
        // once it sees this identity Up.
        let keep_own = !owners.contains(&self.me);
        let own: Vec<Entry> = if keep_own {
            have.iter()
                .filter(|e| e.pid.node == self.me.root())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let mut gone_owners = BTreeSet::new();
        let mut wanted: Vec<Entry> = state
            .entries
            .into_iter()
            .filter(|e| {
                let owner = owners
                    .iter()
                    .copied()
                    .find(|o| o.root() == e.pid.node)
                    .unwrap_or(e.pid.node);
                // This node's own entries are live only under its current identity.
                if e.pid.node == self.me.root() {
                    !keep_own && owner == self.me
                } else if self.is_out(owner) {
                    gone_owners.insert(owner);
                    false
                } else {
                    true
                }
            })
            .collect();
        for owner in gone_owners {
            self.kept_out(owner, key);
        }
        wanted.extend(own);
        let groups = self.part_groups.entry(key.clone()).or_default();
        groups.extend(wanted.iter().map(|e| e.group.clone()));
        replace_partition(&mut self.table, &key.0, have, wanted);
        let r = self.replica(key);
        r.seq = state.seq;
        r.written_epoch = state.written_epoch;
        r.recent.replace(state.recent);
    }
}

#[cfg(test)]
impl CoordinatedGroups {
    /// Panics unless every group with members is listed under its partition in `part_groups`.
    pub(super) fn check_partition_index(&self) {
        let parts = self.config.partitions_per_scope;
        for scope in self.table.scopes() {
            for group in self.table.which_groups(scope) {
                let p = super::placement::partition_of(scope.as_str(), group.as_str(), parts);
                let listed = self
                    .part_groups
                    .get(&(scope.clone(), p))
                    .is_some_and(|g| g.contains(group));
                assert!(listed, "{scope}/{group} missing from partition {p}'s index");
            }
        }
    }
}

/// The memberships of `groups` (one partition's) of `scope` in `table`, sorted (so states
/// compare by value).
fn partition_entries(table: &GroupTable, scope: &ScopeName, groups: &[GroupName]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for group in groups {
        for m in table.members(scope, group) {
            entries.push(Entry {
                group: group.clone(),
                pid: m.pid,
                meta: m.meta.into(),
            });
        }
    }
    entries.sort();
    entries
}

/// Makes a partition of `scope` that holds `have` hold exactly `wanted` (multisets), touching
/// only the `(group, pid)` pairs that differ: those lose all their occurrences and get the
/// wanted ones back, so unchanged memberships produce no event. O(partition memberships).
fn replace_partition(
    table: &mut GroupTable,
    scope: &ScopeName,
    have: Vec<Entry>,
    mut wanted: Vec<Entry>,
) {
    wanted.sort();
    let pairs = |v: &[Entry]| -> BTreeMap<(crate::groups::GroupName, crate::Pid), Vec<Box<[u8]>>> {
        let mut m: BTreeMap<_, Vec<Box<[u8]>>> = BTreeMap::new();
        for e in v {
            m.entry((e.group.clone(), e.pid))
                .or_default()
                .push(e.meta.clone());
        }
        m
    };
    let (have, want) = (pairs(&have), pairs(&wanted));
    for (k, metas) in &have {
        if want.get(k) != Some(metas) {
            for _ in metas {
                drop(table.leave(scope, &k.0, k.1));
            }
        }
    }
    for (k, metas) in &want {
        if have.get(k) != Some(metas) {
            for meta in metas {
                drop(table.join(scope, &k.0, k.1, meta));
            }
        }
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn origin(n: u64) -> Origin {
        (
            NodeId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), 1),
            Ticket::Exit(n),
        )
    }

    #[test]
    fn the_window_forgets_the_oldest_and_never_outgrows_its_cap() {
        let mut r = Recent::default();
        for n in 0..5 {
            r.push(origin(n), n % 2 == 1, 3);
        }
        assert_eq!(r.get(&origin(0)), None);
        assert_eq!(r.get(&origin(1)), None);
        assert_eq!(r.get(&origin(2)), Some(false));
        assert_eq!(r.get(&origin(3)), Some(true));
        assert_eq!(r.iter().count(), 3);
        assert!(r.order.capacity() < 8, "capacity {}", r.order.capacity());
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![(origin(2), false), (origin(3), true), (origin(4), false)]
        );
        r.replace(vec![(origin(7), true)]);
        assert_eq!(r.get(&origin(9)), None);
        assert_eq!(r.get(&origin(7)), Some(true));
    }

    #[test]
    fn a_packed_entry_keeps_every_field_of_its_origin() {
        let node = NodeId::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 65_535),
            u32::MAX,
        );
        let other = NodeId::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 65_534),
            u32::MAX,
        );
        let mut r = Recent::default();
        let origins = [
            (node, Ticket::Call(u64::MAX)),
            (node, Ticket::Exit(u64::MAX)),
            (node, Ticket::Call(1 << 32)),
            (other, Ticket::Call(u64::MAX)),
        ];
        for (i, o) in origins.iter().enumerate() {
            r.push(*o, i % 2 == 0, 8);
        }
        let back: Vec<_> = r.iter().collect();
        for (i, o) in origins.iter().enumerate() {
            assert_eq!(back[i], (*o, i % 2 == 0));
            assert_eq!(r.get(o), Some(i % 2 == 0), "{o:?}");
        }
        assert_eq!(r.get(&(node, Ticket::Exit(1 << 32))), None);
        assert_eq!(
            r.get(&(node.next_generation(), Ticket::Call(u64::MAX))),
            None
        );
        assert_eq!(size_of::<Packed>(), 20);
    }
}
