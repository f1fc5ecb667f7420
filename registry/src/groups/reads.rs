//! Reads of [`GroupTable`]: borrowed iterators over the materialised lists, O(1) to start and
//! O(1) per item. Nothing is copied or hashed per member, and a group's members are read from
//! its own contiguous list.
//!
//! Reads take names as `&str` (a `&ScopeName`/`&GroupName` works too), so a lookup never
//! allocates; a name that is too long or unknown simply has no members.

use std::iter::FusedIterator;
use std::slice;

use meshreg_membership::NodeId;

use super::layout::{Entry, NodeRecords, OWNER_SLOT, Record};
use super::name::{GroupName, ScopeName};
use super::slab::{NIL, Slab};
use super::table::{GroupTable, live};
use crate::Pid;

/// One occurrence of a member, borrowed from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member<'a> {
    /// The member.
    pub pid: Pid,
    /// This occurrence's metadata; empty means none.
    pub meta: &'a [u8],
}

/// One membership, borrowed from the table (see [`GroupTable::memberships_of_node`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MembershipRef<'a> {
    /// The scope of the group.
    pub scope: &'a ScopeName,
    /// The group.
    pub group: &'a GroupName,
    /// The member.
    pub pid: Pid,
    /// The membership's metadata; empty means none.
    pub meta: &'a [u8],
}

/// The members of a group (or its local members), one item per occurrence. Exact size.
pub struct Members<'a> {
    walk: Walk<'a>,
    table: &'a GroupTable,
}

/// What a [`Members`] walks: a group's entries, or its local positions into them.
enum Walk<'a> {
    All(slice::Iter<'a, Entry>),
    Local(slice::Iter<'a, u32>, &'a [Entry]),
}

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        let entry = match &mut self.walk {
            Walk::All(entries) => entries.next()?,
            Walk::Local(at, entries) => &entries[*at.next()? as usize],
        };
        Some(self.table.member_of(entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.walk {
            Walk::All(entries) => entries.size_hint(),
            Walk::Local(at, _) => at.size_hint(),
        }
    }

    // Chooses the walk once rather than per item: what `map`, `sum`, `for_each` and `collect`
    // end up calling.
    fn fold<B, F: FnMut(B, Member<'a>) -> B>(self, init: B, mut f: F) -> B {
        let table = self.table;
        match self.walk {
            Walk::All(entries) => entries.fold(init, |acc, e| f(acc, table.member_of(e))),
            Walk::Local(at, entries) => at.fold(init, |acc, &i| {
                f(acc, table.member_of(&entries[i as usize]))
            }),
        }
    }
}

impl ExactSizeIterator for Members<'_> {}
impl FusedIterator for Members<'_> {}

/// The groups of a scope, each once. Exact size.
pub struct Groups<'a> {
    ids: slice::Iter<'a, u32>,
    table: &'a GroupTable,
}

impl<'a> Iterator for Groups<'a> {
    type Item = &'a GroupName;

    fn next(&mut self) -> Option<&'a GroupName> {
        self.ids.next().map(|&g| &live(&self.table.groups, g).name)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ids.size_hint()
    }
}

impl ExactSizeIterator for Groups<'_> {}
impl FusedIterator for Groups<'_> {}

/// The groups of one pid within a scope, one item per occurrence, newest join first.
pub struct GroupsOf<'a> {
    next: u32,
    scope: u32,
    table: &'a GroupTable,
}

impl<'a> Iterator for GroupsOf<'a> {
    type Item = &'a GroupName;

    fn next(&mut self) -> Option<&'a GroupName> {
        while self.next != NIL {
            let record = self.table.records.get(self.next);
            self.next = record.next_of_pid;
            let group = live(&self.table.groups, record.group);
            if group.scope == self.scope {
                return Some(&group.name);
            }
        }
        None
    }
}

impl FusedIterator for GroupsOf<'_> {}

/// Every membership of one pid, all scopes (see [`GroupTable::memberships_of_pid`]).
pub struct PidMemberships<'a> {
    next: u32,
    table: &'a GroupTable,
}

impl<'a> Iterator for PidMemberships<'a> {
    type Item = MembershipRef<'a>;

    fn next(&mut self) -> Option<MembershipRef<'a>> {
        if self.next == NIL {
            return None;
        }
        let table = self.table;
        let record = table.records.get(self.next);
        let group = live(&table.groups, record.group);
        let member = table.member_of(table.entry_of(self.next));
        self.next = record.next_of_pid;
        Some(MembershipRef {
            scope: &table.scopes[group.scope as usize].name,
            group: &group.name,
            pid: member.pid,
            meta: member.meta,
        })
    }
}

impl FusedIterator for PidMemberships<'_> {}

/// Every membership of one node's pids. Exact size.
pub struct NodeMemberships<'a> {
    ids: NodeIds<'a>,
    table: &'a GroupTable,
}

impl<'a> Iterator for NodeMemberships<'a> {
    type Item = MembershipRef<'a>;

    fn next(&mut self) -> Option<MembershipRef<'a>> {
        let table = self.table;
        self.ids.next().map(|id| {
            let group = live(&table.groups, table.records.get(id).group);
            let member = table.member_of(table.entry_of(id));
            MembershipRef {
                scope: &table.scopes[group.scope as usize].name,
                group: &group.name,
                pid: member.pid,
                meta: member.meta,
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ids.size_hint()
    }
}

impl ExactSizeIterator for NodeMemberships<'_> {}
impl FusedIterator for NodeMemberships<'_> {}

/// The records of one node: its record list if indexed, else its linked list. Exact size.
pub(super) struct NodeIds<'a> {
    walk: NodeWalk<'a>,
    records: &'a Slab<Record>,
}

enum NodeWalk<'a> {
    Indexed(slice::Iter<'a, u32>),
    List { next: u32, left: usize },
}

impl Iterator for NodeIds<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match &mut self.walk {
            NodeWalk::Indexed(ids) => ids.next().copied(),
            NodeWalk::List { next, left } => (*next != NIL).then(|| {
                let id = *next;
                *next = self.records.get(id).node_link;
                *left -= 1;
                id
            }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.walk {
            NodeWalk::Indexed(ids) => ids.size_hint(),
            NodeWalk::List { left, .. } => (*left, Some(*left)),
        }
    }
}

impl ExactSizeIterator for NodeIds<'_> {}
impl FusedIterator for NodeIds<'_> {}

impl GroupTable {
    /// Every occurrence of every member of `group` in `scope`, cluster-wide: a pid joined `k`
    /// times appears `k` times. Empty for an unknown scope or group. O(1) + O(1) per item.
    pub fn members(&self, scope: impl AsRef<str>, group: impl AsRef<str>) -> Members<'_> {
        let entries = self
            .find_group(scope.as_ref(), group.as_ref())
            .map_or(&[][..], |g| &live(&self.groups, g).members[..]);
        Members {
            walk: Walk::All(entries.iter()),
            table: self,
        }
    }

    /// The table's own handle of scope name `scope`, if it holds the scope: a caller that
    /// uses it rather than a fresh copy allocates nothing, and its comparisons with the
    /// table's and the backends' keys stop at the shared pointer.
    pub fn scope_name(&self, scope: &str) -> Option<&ScopeName> {
        self.scope_of(scope).map(|s| &self.scopes[s as usize].name)
    }

    /// The table's own handle of group name `group` in `scope`, if that group has members
    /// (see [`scope_name`](Self::scope_name)).
    pub fn group_name(&self, scope: &str, group: &str) -> Option<&GroupName> {
        self.find_group(scope, group)
            .map(|g| &live(&self.groups, g).name)
    }

    /// Like [`members`](Self::members), but only the owner node's pids. O(1) + O(1) per item.
    pub fn local_members(&self, scope: impl AsRef<str>, group: impl AsRef<str>) -> Members<'_> {
        let (at, entries) =
            self.find_group(scope.as_ref(), group.as_ref())
                .map_or((&[][..], &[][..]), |g| {
                    let group = live(&self.groups, g);
                    (&group.local[..], &group.members[..])
                });
        Members {
            walk: Walk::Local(at.iter(), entries),
            table: self,
        }
    }

    /// Whether `pid` has at least one occurrence in `group` of `scope`. O(m), m = memberships of
    /// `pid`.
    pub fn is_member(&self, scope: impl AsRef<str>, group: impl AsRef<str>, pid: Pid) -> bool {
        self.occurrences(scope, group, pid) > 0
    }

    /// How many times `pid` is in `group` of `scope`. O(m), m = memberships of `pid`.
    pub fn occurrences(&self, scope: impl AsRef<str>, group: impl AsRef<str>, pid: Pid) -> usize {
        let Some(g) = self.find_group(scope.as_ref(), group.as_ref()) else {
            return 0;
        };
        self.chain(pid)
            .filter(|&id| self.records.get(id).group == g)
            .count()
    }

    /// The non-empty groups of `scope`, each once (pg's `which_groups/1`). O(1) + O(1) per item.
    pub fn which_groups(&self, scope: impl AsRef<str>) -> Groups<'_> {
        let ids = self
            .scope_of(scope.as_ref())
            .map_or(&[][..], |s| &self.scopes[s as usize].list[..]);
        Groups {
            ids: ids.iter(),
            table: self,
        }
    }

    /// The groups of `scope` that `pid` is in, one item per occurrence, newest join first.
    /// O(m), m = memberships of `pid` in all scopes.
    pub fn which_groups_of(&self, scope: impl AsRef<str>, pid: Pid) -> GroupsOf<'_> {
        let scope = self.scope_of(scope.as_ref());
        let head = match scope {
            Some(_) => self.chain_head(pid),
            None => NIL,
        };
        GroupsOf {
            next: head,
            scope: scope.unwrap_or(NIL),
            table: self,
        }
    }

    /// Every membership of `pid`, in all scopes, one item per occurrence, newest join first.
    /// O(1) + O(1) per item: what a process exit walks.
    pub fn memberships_of_pid(&self, pid: Pid) -> PidMemberships<'_> {
        PidMemberships {
            next: self.chain_head(pid),
            table: self,
        }
    }

    /// Every membership of `node`'s pids, in all scopes. The gossip backend's view of one
    /// owner's set. O(1) + O(1) per item.
    pub fn memberships_of_node(&self, node: NodeId) -> NodeMemberships<'_> {
        let ids = match self.node_of(node) {
            Some(n) => self.node_ids(n),
            None => NodeIds {
                walk: NodeWalk::List { next: NIL, left: 0 },
                records: &self.records,
            },
        };
        NodeMemberships { ids, table: self }
    }

    /// The scopes used so far (a scope, once created, stays), in creation order.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &ScopeName> {
        self.scopes.iter().map(|scope| &scope.name)
    }

    /// Number of membership occurrences held, all scopes and nodes.
    pub fn membership_count(&self) -> usize {
        self.memberships
    }

    /// Number of non-empty groups, all scopes.
    pub fn group_count(&self) -> usize {
        self.scopes.iter().map(|scope| scope.list.len()).sum()
    }

    /// The records of node slot `n`, in `memberships_of_node` order.
    pub(super) fn node_ids(&self, n: u32) -> NodeIds<'_> {
        let walk = match live(&self.nodes, n).records {
            NodeRecords::Indexed(x) => NodeWalk::Indexed(self.indexed[x as usize].records.iter()),
            NodeRecords::List { len, head } => NodeWalk::List {
                next: head,
                left: usize::from(len),
            },
        };
        NodeIds {
            walk,
            records: &self.records,
        }
    }

    /// The owner's pids (most reads) resolve their node without touching the node slab.
    #[inline]
    fn member_of(&self, entry: &Entry) -> Member<'_> {
        Member {
            pid: Pid {
                node: if entry.node == OWNER_SLOT {
                    self.owner
                } else {
                    live(&self.nodes, entry.node).id
                },
                serial: entry.serial(),
            },
            meta: if entry.meta == NIL {
                &[]
            } else {
                self.metas.get(entry.meta)
            },
        }
    }

    fn chain_head(&self, pid: Pid) -> u32 {
        self.node_of(pid.node)
            .and_then(|n| self.pid_head(n, pid.serial))
            .unwrap_or(NIL)
    }

    /// The records of `pid`, newest first.
    fn chain(&self, pid: Pid) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.chain_head(pid);
        std::iter::from_fn(move || {
            (next != NIL).then(|| {
                let id = next;
                next = self.records.get(id).next_of_pid;
                id
            })
        })
    }
}
