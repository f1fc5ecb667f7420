//! The group table against a plain reference model, over random operation sequences.
//!
//! The model is a `BTreeMap<(scope, group), Vec<(Pid, meta)>>` multiset in join order; after
//! every operation each read of the table must agree with it (as sorted multisets), the events
//! must describe exactly the change, the layout invariants must hold, and a twin table with
//! another owner must list members in the same order.

use std::collections::{BTreeMap, HashSet};

use meshreg_membership::{NodeId, loopback_addr};
use proptest::collection::vec;
use proptest::prelude::*;

use super::layout::{LIST_AGAIN, LIST_MAX, NodeRecords, OWNER_SLOT};
use super::table::live;
use super::*;
use crate::Pid;

const SCOPES: u8 = 2;
const GROUPS: u8 = 3;
const NODES: u8 = 3;
const SERIALS: u8 = 3;
/// The last one is over the cap of the tables under test.
const METAS: [&[u8]; 4] = [b"", b"a", b"bb", b"12345"];
const META_CAP: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Join(u8, u8, (u8, u8), u8),
    Leave(u8, u8, (u8, u8)),
    RemovePid((u8, u8)),
    RemoveNode(u8),
    /// Node, its wanted memberships (scope, group, serial, meta), and a foreign pid to slip in.
    ReplaceNode(u8, Vec<(u8, u8, u8, u8)>, Option<(u8, u8)>),
}

fn pid_strategy() -> impl Strategy<Value = (u8, u8)> {
    (0..NODES, 0..SERIALS)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let meta = 0..METAS.len() as u8;
    prop_oneof![
        8 => (0..SCOPES, 0..GROUPS, pid_strategy(), meta.clone())
            .prop_map(|(s, g, p, m)| Op::Join(s, g, p, m)),
        5 => (0..SCOPES, 0..GROUPS, pid_strategy()).prop_map(|(s, g, p)| Op::Leave(s, g, p)),
        1 => pid_strategy().prop_map(Op::RemovePid),
        1 => (0..NODES).prop_map(Op::RemoveNode),
        2 => (
            0..NODES,
            vec((0..SCOPES, 0..GROUPS, 0..SERIALS, meta), 0..6),
            proptest::option::weighted(0.1, pid_strategy()),
        )
            .prop_map(|(n, wanted, foreign)| Op::ReplaceNode(n, wanted, foreign)),
    ]
}

fn node(n: u8) -> NodeId {
    NodeId::new(loopback_addr(u32::from(n), 7000), 1)
}

fn pid((n, serial): (u8, u8)) -> Pid {
    Pid {
        node: node(n),
        serial: u64::from(serial),
    }
}

fn scope(s: u8) -> ScopeName {
    ScopeName::new(&format!("s{s}")).unwrap()
}

/// Short, exactly the longest inline (23 bytes), and long names: the index compares them in
/// two ways.
fn group(g: u8) -> GroupName {
    let name = match g {
        0 => format!("g{g}"),
        1 => format!("g{g}{}", "x".repeat(21)),
        _ => format!("g{g}{}", "y".repeat(40)),
    };
    GroupName::new(&name).unwrap()
}

type Occurrence = (Pid, Vec<u8>);
/// (scope, group, Joined?, pid, meta): an event in comparable form.
type Change = (u8, u8, bool, Pid, Vec<u8>);

#[derive(Default)]
struct Model {
    groups: BTreeMap<(u8, u8), Vec<Occurrence>>,
}

impl Model {
    /// Applies `op`; returns the expected changes, or `None` if the table must refuse it.
    fn apply(&mut self, op: &Op) -> Option<Vec<Change>> {
        match *op {
            Op::Join(s, g, p, m) => {
                let meta = METAS[m as usize];
                if meta.len() > META_CAP {
                    return None;
                }
                let list = self.groups.entry((s, g)).or_default();
                list.push((pid(p), meta.to_vec()));
                Some(vec![(s, g, true, pid(p), meta.to_vec())])
            }
            Op::Leave(s, g, p) => {
                let list = self.groups.get_mut(&(s, g))?;
                let at = list.iter().rposition(|(q, _)| *q == pid(p))?;
                let (_, meta) = list.remove(at);
                self.prune();
                Some(vec![(s, g, false, pid(p), meta)])
            }
            Op::RemovePid(p) => Some(self.remove_where(|q| q == pid(p))),
            Op::RemoveNode(n) => Some(self.remove_where(|q| q.node == node(n))),
            Op::ReplaceNode(n, ref wanted, foreign) => self.replace(n, wanted, foreign),
        }
    }

    fn remove_where(&mut self, doomed: impl Fn(Pid) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        for (&(s, g), list) in &mut self.groups {
            list.retain(|(q, meta)| {
                let remove = doomed(*q);
                if remove {
                    changes.push((s, g, false, *q, meta.clone()));
                }
                !remove
            });
        }
        self.prune();
        changes
    }

    fn replace(
        &mut self,
        n: u8,
        wanted: &[(u8, u8, u8, u8)],
        foreign: Option<(u8, u8)>,
    ) -> Option<Vec<Change>> {
        if foreign.is_some_and(|f| f.0 != n) {
            return None;
        }
        if wanted.iter().any(|w| METAS[w.3 as usize].len() > META_CAP) {
            return None;
        }
        let mut want: BTreeMap<(u8, u8, u8, Vec<u8>), usize> = BTreeMap::new();
        for &(s, g, serial, m) in wanted {
            *want
                .entry((s, g, serial, METAS[m as usize].to_vec()))
                .or_default() += 1;
        }
        if let Some((_, serial)) = foreign {
            *want.entry((0, 0, serial, Vec::new())).or_default() += 1;
        }
        let mut changes = Vec::new();
        // Of equal occurrences the newest (rightmost) are kept.
        for (&(s, g), list) in &mut self.groups {
            let mut keep = vec![true; list.len()];
            for (i, (q, meta)) in list.iter().enumerate().rev() {
                if q.node != node(n) {
                    continue;
                }
                let serial = u8::try_from(q.serial).unwrap();
                match want.get_mut(&(s, g, serial, meta.clone())) {
                    Some(count) if *count > 0 => *count -= 1,
                    _ => {
                        keep[i] = false;
                        changes.push((s, g, false, *q, meta.clone()));
                    }
                }
            }
            let mut flags = keep.into_iter();
            list.retain(|_| flags.next().unwrap());
        }
        let mut added = |s: u8, g: u8, serial: u8, meta: &[u8]| {
            if let Some(count) = want
                .get_mut(&(s, g, serial, meta.to_vec()))
                .filter(|c| **c > 0)
            {
                *count -= 1;
                let p = pid((n, serial));
                self.groups
                    .entry((s, g))
                    .or_default()
                    .push((p, meta.to_vec()));
                changes.push((s, g, true, p, meta.to_vec()));
            }
        };
        for &(s, g, serial, m) in wanted {
            added(s, g, serial, METAS[m as usize]);
        }
        if let Some((_, serial)) = foreign {
            added(0, 0, serial, b"");
        }
        self.prune();
        Some(changes)
    }

    fn prune(&mut self) {
        self.groups.retain(|_, list| !list.is_empty());
    }

    fn members(&self, s: u8, g: u8) -> Vec<Occurrence> {
        sorted(self.groups.get(&(s, g)).cloned().unwrap_or_default())
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// Runs `op` on the table; returns the changes it reported, or `None` if it refused.
fn run(table: &mut GroupTable, op: &Op) -> Option<Vec<Change>> {
    let result = match *op {
        Op::Join(s, g, p, m) => table.join(&scope(s), &group(g), pid(p), METAS[m as usize]),
        Op::Leave(s, g, p) => table.leave(&scope(s), &group(g), pid(p)),
        Op::RemovePid(p) => {
            table.remove_pid(pid(p));
            Ok(())
        }
        Op::RemoveNode(n) => {
            table.remove_node(node(n));
            Ok(())
        }
        Op::ReplaceNode(n, ref wanted, foreign) => {
            let mut memberships: Vec<Membership> = wanted
                .iter()
                .map(|&(s, g, serial, m)| Membership {
                    scope: scope(s),
                    group: group(g),
                    pid: pid((n, serial)),
                    meta: METAS[m as usize].into(),
                })
                .collect();
            memberships.extend(foreign.map(|f| Membership {
                scope: scope(0),
                group: group(0),
                pid: pid(f),
                meta: Box::default(),
            }));
            table.replace_node(node(n), memberships).map(|_| ())
        }
    };
    let events = table.drain_events();
    if result.is_err() {
        assert!(events.is_empty(), "a refused {op:?} reported {events:?}");
        return None;
    }
    // Names are a letter, the index (one digit), then padding (see `group`).
    let index = |name: &str| name[1..2].parse::<u8>().unwrap();
    Some(
        events
            .into_iter()
            .map(|e| {
                let m = e.membership;
                let joined = e.kind == EventKind::Joined;
                (
                    index(m.scope.as_str()),
                    index(m.group.as_str()),
                    joined,
                    m.pid,
                    m.meta.into(),
                )
            })
            .collect(),
    )
}

fn assert_reads_agree(table: &GroupTable, model: &Model) {
    let owner = table.owner();
    let mut count = 0;
    for s in 0..SCOPES {
        let mut groups_of: BTreeMap<Pid, Vec<String>> = BTreeMap::new();
        for g in 0..GROUPS {
            let (sn, gn) = (scope(s), group(g));
            let expected = model.members(s, g);
            count += expected.len();
            let members: Vec<Occurrence> = table
                .members(&sn, &gn)
                .map(|m| (m.pid, m.meta.to_vec()))
                .collect();
            assert_eq!(members.len(), table.members(&sn, &gn).len());
            assert_eq!(sorted(members), expected, "members of {sn}/{gn}");
            let local: Vec<Occurrence> = table
                .local_members(&sn, &gn)
                .map(|m| (m.pid, m.meta.to_vec()))
                .collect();
            let expected_local: Vec<Occurrence> = expected
                .iter()
                .filter(|(p, _)| p.node == owner)
                .cloned()
                .collect();
            assert_eq!(sorted(local), expected_local, "local members of {sn}/{gn}");
            for n in 0..NODES {
                for serial in 0..SERIALS {
                    let p = pid((n, serial));
                    let k = expected.iter().filter(|(q, _)| *q == p).count();
                    assert_eq!(table.occurrences(&sn, &gn, p), k);
                    assert_eq!(table.is_member(&sn, &gn, p), k > 0);
                    groups_of
                        .entry(p)
                        .or_default()
                        .extend((0..k).map(|_| gn.to_string()));
                }
            }
        }
        let groups: Vec<String> = table
            .which_groups(scope(s))
            .map(|g| g.to_string())
            .collect();
        let expected: Vec<String> = (0..GROUPS)
            .filter(|&g| model.groups.contains_key(&(s, g)))
            .map(|g| group(g).to_string())
            .collect();
        assert_eq!(sorted(groups), expected, "which_groups of s{s}");
        for (p, expected) in groups_of {
            let of: Vec<String> = table
                .which_groups_of(scope(s), p)
                .map(|g| g.to_string())
                .collect();
            assert_eq!(
                sorted(of),
                sorted(expected),
                "which_groups_of {p:?} in s{s}"
            );
        }
    }
    for n in 0..NODES {
        let of_node: Vec<(String, String, Occurrence)> = table
            .memberships_of_node(node(n))
            .map(|m| {
                (
                    m.scope.to_string(),
                    m.group.to_string(),
                    (m.pid, m.meta.to_vec()),
                )
            })
            .collect();
        let mut expected = Vec::new();
        for (&(s, g), list) in &model.groups {
            for occurrence in list.iter().filter(|(p, _)| p.node == node(n)) {
                expected.push((
                    scope(s).to_string(),
                    group(g).to_string(),
                    occurrence.clone(),
                ));
            }
        }
        assert_eq!(sorted(of_node), sorted(expected), "memberships of node {n}");
    }
    assert_eq!(table.membership_count(), count);
    assert_eq!(table.group_count(), model.groups.len());
}

/// The layout invariants of `layout.rs`, checked exhaustively.
pub(super) fn assert_invariants(table: &GroupTable) {
    let mut in_groups = 0;
    for (s, scope) in table.scopes.iter().enumerate() {
        assert_eq!(scope.groups.len(), scope.list.len());
        for (at, &g) in scope.list.iter().enumerate() {
            let group = live(&table.groups, g);
            assert_eq!((group.scope as usize, group.pos_in_scope as usize), (s, at));
            assert_eq!(
                scope.groups.get(group.name.as_str(), &table.groups),
                Some(g)
            );
            assert!(!group.members.is_empty(), "an empty group exists");
            in_groups += group.members.len();
            let mut local = 0;
            for (at, entry) in group.members.iter().enumerate() {
                let record = table.records.get(entry.record);
                assert_eq!((record.group, record.pos_in_group as usize), (g, at));
                if entry.node == OWNER_SLOT {
                    local += 1;
                    assert_eq!(group.local[record.pos_in_local as usize] as usize, at);
                }
            }
            assert_eq!(local, group.local.len());
            for &at in &group.local {
                assert_eq!(group.members[at as usize].node, OWNER_SLOT);
            }
        }
    }
    assert_eq!(in_groups, table.membership_count());
    let mut in_nodes = 0;
    let mut nodes = 0;
    for n in table.node_index.iter() {
        nodes += 1;
        let slot = live(&table.nodes, n);
        assert_eq!(table.node_of(slot.id), Some(n));
        let ids: Vec<u32> = table.node_ids(n).collect();
        assert_eq!(ids.len(), table.node_ids(n).len(), "exact size");
        assert!(
            n == OWNER_SLOT || !ids.is_empty(),
            "an empty node slot exists"
        );
        in_nodes += ids.len();
        for &r in &ids {
            assert_eq!(table.entry_of(r).node, n, "a record on another node's list");
        }
        // The heads of the pids' chains, by the node's kind.
        let heads: Vec<(u64, u32)> = match slot.records {
            NodeRecords::Indexed(x) => {
                assert!(
                    ids.len() > LIST_AGAIN as usize,
                    "an indexed node this small"
                );
                for (at, &r) in ids.iter().enumerate() {
                    assert_eq!(table.records.get(r).node_link as usize, at);
                }
                {
                    assert_eq!(
                        table.indexed[x as usize].node, n,
                        "an index of another node"
                    );
                    table.indexed[x as usize].pids.iter().collect()
                }
            }
            NodeRecords::List { len, .. } => {
                assert!(u32::from(len) <= LIST_MAX, "a list node this large");
                let mut heads: Vec<(u64, u32)> = Vec::new();
                for &r in ids.iter().rev() {
                    let serial = table.entry_of(r).serial();
                    if heads.iter().all(|&(s, _)| s != serial) {
                        heads.push((serial, r));
                    }
                }
                heads
            }
        };
        let mut chained = HashSet::new();
        for (serial, head) in heads {
            let mut chain = Vec::new();
            let mut r = head;
            while r != super::slab::NIL {
                let record = table.records.get(r);
                let entry = table.entry_of(r);
                assert_eq!((entry.node, entry.serial(), entry.record), (n, serial, r));
                assert!(chained.insert(r), "a record is chained twice");
                chain.push(r);
                r = record.next_of_pid;
            }
            if let NodeRecords::List { .. } = slot.records {
                let on_list: Vec<u32> = ids
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&r| table.entry_of(r).serial() == serial)
                    .collect();
                assert_eq!(on_list, chain, "a list out of its pid's chain order");
            }
        }
        assert_eq!(chained.len(), ids.len());
    }
    let indexed = table
        .node_index
        .iter()
        .filter(|&n| matches!(live(&table.nodes, n).records, NodeRecords::Indexed(_)))
        .count();
    let live_indexed = table.indexed.len();
    assert_eq!(
        indexed, live_indexed,
        "an indexed node without its slot, or a stray one"
    );
    assert_eq!(
        nodes,
        table.nodes.slots().flatten().count(),
        "a slot outside the index"
    );
    assert_eq!(in_nodes, table.membership_count());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_group_table_agrees_with_a_reference_model(ops in vec(op_strategy(), 1..80)) {
        let config = GroupTableConfig { meta_cap_bytes: META_CAP };
        let mut table = GroupTable::with_config(node(0), config);
        let mut twin = GroupTable::with_config(node(2), config);
        let mut model = Model::default();
        for op in &ops {
            let expected = model.apply(op);
            let changes = run(&mut table, op);
            prop_assert_eq!(changes.map(sorted), expected.map(sorted), "changes of {:?}", op);
            run(&mut twin, op);
            assert_reads_agree(&table, &model);
            assert_invariants(&table);
            assert_invariants(&twin);
            for (s, g) in model.groups.keys() {
                let order = |t: &GroupTable| -> Vec<Pid> {
                    t.members(scope(*s), group(*g)).map(|m| m.pid).collect()
                };
                prop_assert_eq!(order(&table), order(&twin), "member order on two owners");
            }
            prop_assert!(table.heap_bytes() > 0);
        }
    }
}
