//! [`GroupTable`]: construction, joins and every kind of removal.

use std::collections::HashMap;
use std::mem;

use meshreg_membership::NodeId;

use super::error::GroupError;
use super::event::{EventKind, GroupEvent, Membership};
use super::layout::{
    Entry, Group, IndexedNode, LIST_AGAIN, LIST_MAX, NameIndex, NameKey, NodeIndex, NodeRecords,
    NodeSlot, OWNER_SLOT, Record, Scope, pos_u32, push_entry, push_in_node, remove_in_node,
    shrink_vec,
};
use super::name::{GroupName, ScopeName};
use super::slab::{NIL, Slab};
use crate::Pid;

/// Event buffer capacity kept across drains.
const KEPT_EVENTS: usize = 64;

/// Scopes looked up by comparing names in place rather than through the index.
const SCAN_SCOPES: usize = 8;

/// Default cap on one membership's metadata, in bytes.
pub const DEFAULT_META_CAP_BYTES: usize = 512;

/// Settings of a [`GroupTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupTableConfig {
    /// Largest metadata accepted per membership, in bytes ([`DEFAULT_META_CAP_BYTES`] by
    /// default). Larger values are refused with [`GroupError::MetaTooLarge`].
    pub meta_cap_bytes: usize,
}

impl Default for GroupTableConfig {
    fn default() -> Self {
        Self {
            meta_cap_bytes: DEFAULT_META_CAP_BYTES,
        }
    }
}

/// The group table of one node: every scope, group and membership it knows, cluster-wide, with
/// the owner node's own memberships also listed apart.
///
/// Sans-IO and single-threaded: methods change the table and append [`GroupEvent`]s, which the
/// caller collects with [`drain_events`](Self::drain_events). The table accepts pids of any
/// node (it holds replicas too); "only local pids may join" is enforced by the backends.
///
/// Costs, with `m` = the memberships held by the pid concerned (typically 1 to a few), never the
/// size of the group:
/// - `join`: O(1) amortised; `leave`, `is_member`, `occurrences`, `which_groups_of`: O(m);
/// - `members`, `local_members`, `which_groups`, `memberships_of_node`: O(1), then O(1) per
///   item, borrowing the materialised lists (nothing copied, nothing hashed per member);
/// - `remove_pid`: O(m); `remove_node`, `replace_node`: O(that node's memberships).
///
/// Order: every list is changed only by appends and by `swap_remove` (the last entry moves into
/// the hole), so the order of `members`, `local_members`, `which_groups` and
/// `memberships_of_node` is a function of the sequence of operations alone: tables of different
/// owners given the same sequence list members in the same order. It is not join order.
pub struct GroupTable {
    pub(super) owner: NodeId,
    pub(super) meta_cap_bytes: usize,
    pub(super) scope_index: HashMap<ScopeName, u32>,
    /// Never shrinks: a scope, once used, keeps its (small) slot so handles stay valid.
    pub(super) scopes: Vec<Scope>,
    pub(super) groups: Slab<Option<Group>>,
    pub(super) records: Slab<Record>,
    /// Metadata of the records that have some; an empty box marks a free slot.
    pub(super) metas: Slab<Box<[u8]>>,
    pub(super) node_index: NodeIndex,
    pub(super) nodes: Slab<Option<NodeSlot>>,
    /// The record lists and pid indexes of the nodes with many records (see `NodeRecords`).
    pub(super) indexed: Vec<IndexedNode>,
    pub(super) memberships: usize,
    pub(super) events: Vec<GroupEvent>,
}

/// The live value behind a handle; a dead handle here is a bug in the table.
pub(super) fn live<T>(slab: &Slab<Option<T>>, id: u32) -> &T {
    slab.get(id).as_ref().expect("handle of a live slot")
}

pub(super) fn live_mut<T>(slab: &mut Slab<Option<T>>, id: u32) -> &mut T {
    slab.get_mut(id).as_mut().expect("handle of a live slot")
}

impl GroupTable {
    /// An empty table owned by `owner` (whose pids are "local"), with the default config.
    pub fn new(owner: NodeId) -> Self {
        Self::with_config(owner, GroupTableConfig::default())
    }

    /// An empty table owned by `owner` with `config`.
    pub fn with_config(owner: NodeId, config: GroupTableConfig) -> Self {
        let mut nodes = Slab::new();
        let owner_slot = nodes.insert(Some(NodeSlot::new(owner)));
        debug_assert_eq!(owner_slot, OWNER_SLOT);
        let mut node_index = NodeIndex::default();
        node_index.insert(OWNER_SLOT, &nodes);
        Self {
            owner,
            meta_cap_bytes: config.meta_cap_bytes,
            scope_index: HashMap::new(),
            scopes: Vec::new(),
            groups: Slab::new(),
            records: Slab::new(),
            metas: Slab::new(),
            node_index,
            nodes,
            indexed: Vec::new(),
            memberships: 0,
            events: Vec::new(),
        }
    }

    /// The node whose pids are local to this table.
    pub fn owner(&self) -> NodeId {
        self.owner
    }

    /// The configured metadata cap, in bytes.
    pub fn meta_cap_bytes(&self) -> usize {
        self.meta_cap_bytes
    }

    /// Adds one occurrence of `pid` to `group` of `scope` with `meta` (empty for none), creating
    /// the scope and the group on first use. A pid joined `k` times is listed `k` times.
    ///
    /// Emits one `Joined`. O(1) amortised. Refuses metadata over the cap, unchanged.
    pub fn join(
        &mut self,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
    ) -> Result<(), GroupError> {
        self.join_created(scope, group, pid, meta).map(drop)
    }

    /// [`join`](Self::join), also telling whether this join created the group (it had no
    /// members before): a caller indexing groups by something of its own updates its index only
    /// then, instead of looking the group up on every join.
    pub fn join_created(
        &mut self,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
    ) -> Result<bool, GroupError> {
        self.check_meta(meta.len())?;
        let meta: Box<[u8]> = meta.into();
        let created = self.insert(scope, group, pid, meta.clone());
        self.push_event(EventKind::Joined, scope.clone(), group.clone(), pid, meta);
        Ok(created)
    }

    /// Removes one occurrence of `pid` from `group` of `scope`: the one joined most recently.
    /// The group disappears with its last member.
    ///
    /// Emits one `Left`. O(m), m = memberships of `pid`. [`GroupError::NotJoined`] when `pid`
    /// has no occurrence there (unknown scope or group included), unchanged.
    pub fn leave(
        &mut self,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
    ) -> Result<(), GroupError> {
        let found = self
            .find_group(scope.as_str(), group.as_str())
            .and_then(|g| {
                let n = self.node_of(pid.node)?;
                let (prev, id) = self.find_in_chain(n, pid.serial, g)?;
                Some((n, prev, id))
            });
        let Some((n, prev, id)) = found else {
            return Err(GroupError::NotJoined {
                scope: scope.clone(),
                group: group.clone(),
                pid,
            });
        };
        self.unlink(n, pid.serial, prev, id);
        let removed = self.detach(id, true);
        self.settle_node(n);
        self.events.push(GroupEvent {
            kind: EventKind::Left,
            membership: removed,
        });
        Ok(())
    }

    /// A process ended: removes every occurrence of `pid` in every scope and returns them, newest
    /// join first (empty if it had none).
    ///
    /// Emits one `Left` per occurrence, in the returned order. O(m).
    pub fn remove_pid(&mut self, pid: Pid) -> Vec<Membership> {
        let Some(n) = self.node_of(pid.node) else {
            return Vec::new();
        };
        // The whole chain goes: an index drops its entry at once, not record by record.
        let head = match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => self.indexed[x as usize].pids.remove(pid.serial),
            NodeRecords::List { head, .. } => self.last_of_pid(head, pid.serial).0,
        };
        let Some(mut id) = head else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        while id != NIL {
            let next = self.records.get(id).next_of_pid;
            let membership = self.detach(id, true);
            self.events.push(GroupEvent {
                kind: EventKind::Left,
                membership: membership.clone(),
            });
            removed.push(membership);
            id = next;
        }
        self.settle_node(n);
        removed
    }

    /// A node went down: removes every membership of its pids and returns them, in
    /// [`memberships_of_node`](Self::memberships_of_node) order (empty if it had none).
    ///
    /// Emits one `Left` per occurrence, in the returned order. O(that node's memberships).
    pub fn remove_node(&mut self, node: NodeId) -> Vec<Membership> {
        let Some(n) = self.node_of(node) else {
            return Vec::new();
        };
        // Every record goes: the node's list and pid index are dropped at once, no chain needs
        // unlinking record by record.
        let records = match mem::replace(
            &mut live_mut(&mut self.nodes, n).records,
            NodeRecords::EMPTY,
        ) {
            NodeRecords::Indexed(x) => self.take_indexed(x).records,
            NodeRecords::List { len, head } => {
                let mut ids = Vec::with_capacity(usize::from(len));
                let mut id = head;
                while id != NIL {
                    ids.push(id);
                    id = self.records.get(id).node_link;
                }
                ids
            }
        };
        let mut removed = Vec::with_capacity(records.len());
        for id in records {
            let membership = self.detach(id, false);
            self.events.push(GroupEvent {
                kind: EventKind::Left,
                membership: membership.clone(),
            });
            removed.push(membership);
        }
        self.settle_node(n);
        removed
    }

    /// Takes the events produced since the last call, oldest first (the buffer's memory goes
    /// with them). Callers drain after each batch of operations: undrained events are held, not
    /// dropped, and count in [`heap_bytes`](Self::heap_bytes).
    pub fn drain_events(&mut self) -> Vec<GroupEvent> {
        mem::take(&mut self.events)
    }

    /// Hands the events produced since the last drain to `f`, oldest first, keeping the
    /// buffer's memory for the next ones.
    pub fn drain_events_with(&mut self, f: &mut dyn FnMut(GroupEvent)) {
        self.events.drain(..).for_each(f);
        // A burst (a node's memberships removed at once) does not keep its buffer.
        if self.events.capacity() > KEPT_EVENTS {
            self.events = Vec::new();
        }
    }

    /// The events produced since the last drain, oldest first.
    pub fn pending_events(&self) -> &[GroupEvent] {
        &self.events
    }

    pub(super) fn check_meta(&self, len: usize) -> Result<(), GroupError> {
        if len > self.meta_cap_bytes {
            return Err(GroupError::MetaTooLarge {
                len,
                cap: self.meta_cap_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn push_event(
        &mut self,
        kind: EventKind,
        scope: ScopeName,
        group: GroupName,
        pid: Pid,
        meta: Box<[u8]>,
    ) {
        self.events.push(GroupEvent {
            kind,
            membership: Membership {
                scope,
                group,
                pid,
                meta,
            },
        });
    }

    pub(super) fn find_group(&self, scope: &str, group: &str) -> Option<u32> {
        let s = self.scope_of(scope)?;
        self.scopes[s as usize].groups.get(group, &self.groups)
    }

    /// The slot of `scope`. A node uses a handful of scopes: up to [`SCAN_SCOPES`] of them are
    /// compared in place (a length and a few bytes each), cheaper than hashing the name on
    /// every read and write; beyond, the index.
    pub(super) fn scope_of(&self, scope: &str) -> Option<u32> {
        if self.scopes.len() <= SCAN_SCOPES {
            let at = self.scopes.iter().position(|s| s.name.as_str() == scope)?;
            return Some(pos_u32(at));
        }
        self.scope_index.get(scope).copied()
    }

    /// The newest record of pid (`n`, `serial`) in group `g`, with its predecessor in the pid's
    /// chain (`NIL` if it is the head).
    pub(super) fn find_in_chain(&self, n: u32, serial: u64, g: u32) -> Option<(u32, u32)> {
        let mut prev = NIL;
        let mut id = self.pid_head(n, serial)?;
        while id != NIL {
            let record = self.records.get(id);
            if record.group == g {
                return Some((prev, id));
            }
            prev = id;
            id = record.next_of_pid;
        }
        None
    }

    /// Adds one record; no validation, no event. O(1) amortised.
    pub(super) fn insert(
        &mut self,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: Box<[u8]>,
    ) -> bool {
        let s = self.scope_slot(scope);
        let (g, created) = self.group_slot(s, group);
        let n = self.node_slot(pid.node);
        let meta = if meta.is_empty() {
            NIL
        } else {
            self.metas.insert(meta)
        };
        let grp = live_mut(&mut self.groups, g);
        let at = pos_u32(grp.members.len());
        let id = self.records.insert(Record::new(g, at));
        push_entry(&mut grp.members, Entry::new(pid.serial, n, meta, id));
        if n == OWNER_SLOT {
            self.records.get_mut(id).pos_in_local = pos_u32(grp.local.len());
            grp.local.push(at);
        }
        // The new record becomes the head of its pid's chain: newest first.
        let (older, outgrown) = match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => {
                let node = &mut self.indexed[x as usize];
                push_in_node(&mut node.records, id, &mut self.records);
                (node.pids.insert(pid.serial, id), false)
            }
            NodeRecords::List { len, head } => {
                // Looked up before the record is on the list, where it goes last.
                let (older, tail) = self.last_of_pid(head, pid.serial);
                let head = if tail == NIL {
                    id
                } else {
                    self.records.get_mut(tail).node_link = id;
                    head
                };
                live_mut(&mut self.nodes, n).records = NodeRecords::List { len: len + 1, head };
                (older, u32::from(len) + 1 > LIST_MAX)
            }
        };
        self.records.get_mut(id).next_of_pid = older.unwrap_or(NIL);
        if outgrown {
            self.index_node(n);
        }
        self.memberships += 1;
        created
    }

    /// Unlinks record `id` (whose chain predecessor is `prev`) from the chain of pid
    /// (`n`, `serial`).
    pub(super) fn unlink(&mut self, n: u32, serial: u64, prev: u32, id: u32) {
        let next = self.records.get(id).next_of_pid;
        if prev != NIL {
            self.records.get_mut(prev).next_of_pid = next;
            return;
        }
        // `id` heads its pid's chain. On a list node, `next` precedes it on the list and is the
        // pid's last record there once `detach` takes `id` off.
        if let NodeRecords::Indexed(x) = live(&self.nodes, n).records {
            let pids = &mut self.indexed[x as usize].pids;
            if next == NIL {
                pids.remove(serial);
            } else {
                pids.insert(serial, next);
            }
        }
    }

    /// Removes record `id` from its group's lists (and from its node's list when `from_node`),
    /// frees it and its metadata, deletes the group if it became empty, and returns what it was.
    /// The caller has already unlinked it from its pid chain (or dropped the whole chain).
    pub(super) fn detach(&mut self, id: u32, from_node: bool) -> Membership {
        let record = *self.records.get(id);
        let group = live_mut(&mut self.groups, record.group);
        let at = record.pos_in_group as usize;
        let entry = group.members[at];
        if entry.node == OWNER_SLOT {
            // Before the members move: the moved local position still names its entry.
            let at = record.pos_in_local as usize;
            group.local.swap_remove(at);
            if let Some(&moved) = group.local.get(at) {
                let moved = group.members[moved as usize].record;
                self.records.get_mut(moved).pos_in_local = pos_u32(at);
            }
            shrink_vec(&mut group.local);
        }
        group.members.swap_remove(at);
        if let Some(moved) = group.members.get(at) {
            let moved_record = self.records.get_mut(moved.record);
            moved_record.pos_in_group = pos_u32(at);
            if moved.node == OWNER_SLOT {
                group.local[moved_record.pos_in_local as usize] = pos_u32(at);
            }
        }
        shrink_vec(&mut group.members);
        let group_name = group.name.clone();
        let scope = group.scope;
        let group_is_empty = group.members.is_empty();
        if from_node {
            self.remove_from_node(entry.node, id, record.node_link);
        }
        let pid = Pid {
            node: live(&self.nodes, entry.node).id,
            serial: entry.serial(),
        };
        let meta = if entry.meta == NIL {
            Box::default()
        } else {
            self.metas.remove(entry.meta)
        };
        self.records.remove(id);
        self.memberships -= 1;
        if group_is_empty {
            self.drop_group(record.group);
        }
        Membership {
            scope: self.scopes[scope as usize].name.clone(),
            group: group_name,
            pid,
            meta,
        }
    }

    /// The group entry of live record `id`.
    pub(super) fn entry_of(&self, id: u32) -> &Entry {
        let record = self.records.get(id);
        &live(&self.groups, record.group).members[record.pos_in_group as usize]
    }

    fn scope_slot(&mut self, scope: &ScopeName) -> u32 {
        if let Some(s) = self.scope_of(scope.as_str()) {
            return s;
        }
        let s = pos_u32(self.scopes.len());
        self.scopes.push(Scope {
            name: scope.clone(),
            groups: NameIndex::default(),
            list: Vec::new(),
        });
        self.scope_index.insert(scope.clone(), s);
        s
    }

    /// The handle of `group` in scope `s`, and whether it was created now.
    fn group_slot(&mut self, s: u32, group: &GroupName) -> (u32, bool) {
        let scope = &mut self.scopes[s as usize];
        if let Some(g) = scope.groups.get(group.as_str(), &self.groups) {
            return (g, false);
        }
        let g = self.groups.insert(Some(Group {
            key: NameKey::of(group.as_str()),
            name: group.clone(),
            scope: s,
            pos_in_scope: pos_u32(scope.list.len()),
            members: Vec::new(),
            local: Vec::new(),
        }));
        scope.list.push(g);
        scope.groups.insert(g, &self.groups);
        (g, true)
    }

    /// The slot of `node`, if it has one. The owner's is always [`OWNER_SLOT`]: most calls are
    /// about the owner's own pids, which then hash nothing.
    pub(super) fn node_of(&self, node: NodeId) -> Option<u32> {
        if node == self.owner {
            return Some(OWNER_SLOT);
        }
        self.node_index.get(&node, &self.nodes)
    }

    fn node_slot(&mut self, node: NodeId) -> u32 {
        if let Some(n) = self.node_of(node) {
            return n;
        }
        let n = self.nodes.insert(Some(NodeSlot::new(node)));
        self.node_index.insert(n, &self.nodes);
        n
    }

    /// Deletes group `g`, which has no member left: a group with no members does not exist.
    fn drop_group(&mut self, g: u32) {
        let scope = &mut self.scopes[live(&self.groups, g).scope as usize];
        // While the group is live: the index finds it by its name.
        scope.groups.remove(g, &self.groups);
        let group = self.groups.remove(g).expect("handle of a live group");
        let at = group.pos_in_scope as usize;
        scope.list.swap_remove(at);
        if let Some(&moved) = scope.list.get(at) {
            live_mut(&mut self.groups, moved).pos_in_scope = pos_u32(at);
        }
        shrink_vec(&mut scope.list);
    }

    /// After removals from node slot `n`: an indexed node down to [`LIST_AGAIN`] records
    /// becomes a list again, and a slot that holds nothing is freed (the owner's is kept).
    /// The check is inline (every leave makes it); the change is not.
    #[inline(always)]
    pub(super) fn settle_node(&mut self, n: u32) {
        let settled = match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => self.indexed[x as usize].records.len() > LIST_AGAIN as usize,
            NodeRecords::List { len, .. } => len > 0 || n == OWNER_SLOT,
        };
        if !settled {
            self.reshape_node(n);
        }
    }

    #[inline(never)]
    fn reshape_node(&mut self, n: u32) {
        if let NodeRecords::Indexed(x) = live(&self.nodes, n).records {
            self.list_node(n, x);
        }
        let empty = matches!(
            live(&self.nodes, n).records,
            NodeRecords::List { len: 0, .. }
        );
        if n == OWNER_SLOT || !empty {
            return;
        }
        // While the slot is live: the index finds it by its id.
        self.node_index.remove(n, &self.nodes);
        self.nodes.remove(n);
    }

    /// The head of the chain of pid (`n`, `serial`), if it has records.
    pub(super) fn pid_head(&self, n: u32, serial: u64) -> Option<u32> {
        match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => self.indexed[x as usize].pids.get(serial),
            NodeRecords::List { head, .. } => self.last_of_pid(head, serial).0,
        }
    }

    /// The last record of pid `serial` on the node list starting at `head` (the head of its
    /// chain: a list holds each pid's records oldest first), and the list's last record (`NIL`
    /// if empty). Walks the whole list: at most [`LIST_MAX`] hops.
    fn last_of_pid(&self, head: u32, serial: u64) -> (Option<u32>, u32) {
        let (mut last, mut tail) = (None, NIL);
        let mut id = head;
        while id != NIL {
            if self.entry_of(id).serial() == serial {
                last = Some(id);
            }
            tail = id;
            id = self.records.get(id).node_link;
        }
        (last, tail)
    }

    /// Takes record `id` (whose `node_link` was `link`) off the records of node slot `n`: a
    /// `swap_remove` on an indexed node, an unlink (at most [`LIST_MAX`] hops) on a list.
    fn remove_from_node(&mut self, n: u32, id: u32, link: u32) {
        match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => {
                remove_in_node(
                    &mut self.indexed[x as usize].records,
                    link,
                    &mut self.records,
                );
            }
            NodeRecords::List { len, head } => {
                let head = if head == id {
                    link
                } else {
                    let mut at = head;
                    loop {
                        let next = self.records.get(at).node_link;
                        if next == id {
                            break;
                        }
                        at = next;
                    }
                    self.records.get_mut(at).node_link = link;
                    head
                };
                live_mut(&mut self.nodes, n).records = NodeRecords::List { len: len - 1, head };
            }
        }
    }

    /// Indexes list node `n`, which outgrew [`LIST_MAX`]: its list, in order, becomes its
    /// record list, and each pid's last record on it (the head of its chain) its index entry.
    #[inline(never)]
    fn index_node(&mut self, n: u32) {
        let NodeRecords::List { head, .. } = live(&self.nodes, n).records else {
            return;
        };
        let mut node = IndexedNode {
            node: n,
            ..IndexedNode::default()
        };
        let mut id = head;
        while id != NIL {
            let next = self.records.get(id).node_link;
            let serial = self.entry_of(id).serial();
            node.pids.insert(serial, id);
            push_in_node(&mut node.records, id, &mut self.records);
            id = next;
        }
        let x = pos_u32(self.indexed.len());
        self.indexed.push(node);
        live_mut(&mut self.nodes, n).records = NodeRecords::Indexed(x);
    }

    /// Removes the indexed node at `x` from the list (O(1): the last one moves into its place,
    /// and its slot is told) and returns it. The caller re-marks the node it belonged to.
    fn take_indexed(&mut self, x: u32) -> IndexedNode {
        let node = self.indexed.swap_remove(x as usize);
        if let Some(moved) = self.indexed.get(x as usize) {
            live_mut(&mut self.nodes, moved.node).records = NodeRecords::Indexed(x);
        }
        shrink_vec(&mut self.indexed);
        node
    }

    /// Turns indexed node `n` (whose records and index are `x`) back into a list: each pid's
    /// chain in one piece, oldest first, pids in the order of their heads in the record list.
    /// Built from the back: the last pid's chain first, each record pushed in front.
    fn list_node(&mut self, n: u32, x: u32) {
        let node = self.take_indexed(x);
        let mut head = NIL;
        for &newest in node.records.iter().rev() {
            if node.pids.get(self.entry_of(newest).serial()) != Some(newest) {
                continue;
            }
            let mut id = newest;
            while id != NIL {
                let older = self.records.get(id).next_of_pid;
                self.records.get_mut(id).node_link = head;
                head = id;
                id = older;
            }
        }
        live_mut(&mut self.nodes, n).records = NodeRecords::List {
            len: u8::try_from(node.records.len()).expect("at most LIST_AGAIN records"),
            head,
        };
    }
}
