//! Unit tests of the group table: pg semantics, events, errors, order and memory.

use meshreg_membership::{NodeId, loopback_addr};

use super::layout::{LIST_AGAIN, LIST_MAX};
use super::*;
use crate::Pid;

fn node(index: u32) -> NodeId {
    NodeId::new(loopback_addr(index, 7000), 1)
}

/// Node 0 owns the tables built by `table()`.
fn pid(node_index: u32, serial: u64) -> Pid {
    Pid {
        node: node(node_index),
        serial,
    }
}

fn scope(name: &str) -> ScopeName {
    ScopeName::new(name).unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn table() -> GroupTable {
    GroupTable::new(node(0))
}

fn pids(members: Members<'_>) -> Vec<Pid> {
    let mut pids: Vec<Pid> = members.map(|m| m.pid).collect();
    pids.sort();
    pids
}

fn membership(s: &str, g: &str, p: Pid, meta: &[u8]) -> Membership {
    Membership {
        scope: scope(s),
        group: group(g),
        pid: p,
        meta: meta.into(),
    }
}

fn event(kind: EventKind, s: &str, g: &str, p: Pid, meta: &[u8]) -> GroupEvent {
    GroupEvent {
        kind,
        membership: membership(s, g, p, meta),
    }
}

/// The table's observable state, to show that a refused call changed nothing.
fn snapshot(t: &GroupTable) -> Vec<(String, String, Pid, Vec<u8>)> {
    let mut all = Vec::new();
    for s in t.scopes() {
        for g in t.which_groups(s) {
            for m in t.members(s, g) {
                all.push((s.to_string(), g.to_string(), m.pid, m.meta.to_vec()));
            }
        }
    }
    all
}

#[test]
fn a_pid_joined_twice_is_listed_twice() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(0, 1), b"").unwrap();
    t.join(&s, &g, pid(0, 1), b"").unwrap();
    t.join(&s, &g, pid(1, 2), b"").unwrap();
    assert_eq!(pids(t.members("s", "g")), [pid(0, 1), pid(0, 1), pid(1, 2)]);
    assert_eq!(t.occurrences("s", "g", pid(0, 1)), 2);
    assert_eq!(t.membership_count(), 3);
}

#[test]
fn leave_removes_one_occurrence_the_newest() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(0, 1), b"old").unwrap();
    t.join(&s, &g, pid(0, 1), b"new").unwrap();
    t.drain_events();
    t.leave(&s, &g, pid(0, 1)).unwrap();
    let left: Vec<Member<'_>> = t.members("s", "g").collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].meta, b"old");
    assert_eq!(
        t.drain_events(),
        [event(EventKind::Left, "s", "g", pid(0, 1), b"new")]
    );
}

#[test]
fn leave_of_unknown_group_reports_not_joined() {
    let mut t = table();
    t.join(&scope("s"), &group("g"), pid(0, 1), b"").unwrap();
    t.drain_events();
    let before = snapshot(&t);
    for (s, g) in [("s", "other"), ("other", "g")] {
        let err = t.leave(&scope(s), &group(g), pid(0, 1)).unwrap_err();
        assert_eq!(
            err,
            GroupError::NotJoined {
                scope: scope(s),
                group: group(g),
                pid: pid(0, 1)
            }
        );
    }
    assert_eq!(snapshot(&t), before);
    assert!(t.pending_events().is_empty());
}

#[test]
fn leave_of_a_pid_not_in_the_group_reports_not_joined() {
    let mut t = table();
    let (s, g, h) = (scope("s"), group("g"), group("h"));
    t.join(&s, &g, pid(0, 1), b"").unwrap();
    t.join(&s, &h, pid(0, 2), b"").unwrap();
    let before = snapshot(&t);
    assert!(t.leave(&s, &g, pid(0, 2)).is_err());
    assert!(t.leave(&s, &g, pid(3, 1)).is_err());
    t.leave(&s, &g, pid(0, 1)).unwrap();
    let err = t.leave(&s, &g, pid(0, 1)).unwrap_err();
    assert!(err.to_string().contains("unchanged"), "{err}");
    assert_eq!(snapshot(&t).len(), before.len() - 1);
}

#[test]
fn the_last_leave_removes_the_group() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.leave(&s, &g, pid(1, 1)).unwrap();
    assert_eq!(t.which_groups("s").count(), 1);
    t.leave(&s, &g, pid(1, 1)).unwrap();
    assert_eq!(t.which_groups("s").count(), 0);
    assert_eq!(t.members("s", "g").len(), 0);
    assert_eq!(t.group_count(), 0);
    assert_eq!(t.membership_count(), 0);
    // The scope stays, empty; the remote node's slot is gone.
    assert_eq!(t.scopes().count(), 1);
    assert_eq!(t.node_index.len(), 1);
}

#[test]
fn over_cap_metadata_is_refused_and_changes_nothing() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(0, 1), &[7; DEFAULT_META_CAP_BYTES])
        .unwrap();
    t.drain_events();
    let before = snapshot(&t);
    let err = t
        .join(&s, &g, pid(0, 2), &[7; DEFAULT_META_CAP_BYTES + 1])
        .unwrap_err();
    assert_eq!(err, GroupError::MetaTooLarge { len: 513, cap: 512 });
    assert!(err.to_string().contains("512-byte cap"), "{err}");
    assert_eq!(snapshot(&t), before);
    assert!(t.pending_events().is_empty());
    // Not even the scope of a refused join is created.
    assert!(t.join(&scope("new"), &g, pid(0, 2), &[0; 600]).is_err());
    assert_eq!(t.scopes().count(), 1);
}

#[test]
fn the_metadata_cap_is_configurable() {
    let config = GroupTableConfig { meta_cap_bytes: 4 };
    let mut t = GroupTable::with_config(node(0), config);
    assert_eq!(t.meta_cap_bytes(), 4);
    t.join(&scope("s"), &group("g"), pid(0, 1), b"four")
        .unwrap();
    assert!(
        t.join(&scope("s"), &group("g"), pid(0, 1), b"five!")
            .is_err()
    );
}

#[test]
fn names_over_255_bytes_are_refused() {
    let long = "x".repeat(NAME_MAX_BYTES + 1);
    assert_eq!(
        GroupName::new(&long).unwrap_err(),
        GroupError::NameTooLong {
            kind: NameKind::Group,
            len: 256,
            max: 255
        }
    );
    let err = ScopeName::try_from(long.as_str()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("scope name is 256 bytes, over the 255-byte limit")
    );
    assert!(GroupName::new(&long[..255]).is_ok());
    // A read with an over-long name just finds nothing.
    assert_eq!(table().members("s", &long).len(), 0);
}

#[test]
fn names_decode_only_within_the_limit() {
    let ok: GroupName = serde_json_like("\"abc\"").unwrap();
    assert_eq!(ok.as_str(), "abc");
    let long = format!("\"{}\"", "y".repeat(300));
    assert!(serde_json_like::<ScopeName>(&long).is_err());
}

/// A minimal string-only deserializer, so the name decoding is tested without a format crate.
fn serde_json_like<T: for<'de> serde::Deserialize<'de>>(text: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error, StrDeserializer};
    let inner = text.trim_matches('"');
    let de: StrDeserializer<'_, Error> = inner.into_deserializer();
    T::deserialize(de).map_err(|e| e.to_string())
}

#[test]
fn remove_pid_leaves_every_group_with_one_left_per_occurrence() {
    let mut t = table();
    let (a, b) = (scope("a"), scope("b"));
    let (g, h) = (group("g"), group("h"));
    t.join(&a, &g, pid(0, 1), b"1").unwrap();
    t.join(&a, &g, pid(0, 1), b"2").unwrap();
    t.join(&b, &h, pid(0, 1), b"").unwrap();
    t.join(&a, &g, pid(0, 2), b"").unwrap();
    t.drain_events();
    let removed = t.remove_pid(pid(0, 1));
    // Newest join first.
    assert_eq!(
        removed,
        [
            membership("b", "h", pid(0, 1), b""),
            membership("a", "g", pid(0, 1), b"2"),
            membership("a", "g", pid(0, 1), b"1"),
        ]
    );
    let events = t.drain_events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.kind == EventKind::Left));
    let from_events: Vec<Membership> = events.into_iter().map(|e| e.membership).collect();
    assert_eq!(from_events, removed);
    assert_eq!(pids(t.members("a", "g")), [pid(0, 2)]);
    assert_eq!(t.which_groups("b").count(), 0);
    assert!(t.remove_pid(pid(0, 1)).is_empty());
    assert!(t.remove_pid(pid(9, 1)).is_empty());
}

#[test]
fn remove_node_drops_every_membership_of_that_node_only() {
    let mut t = table();
    let (s, g, h) = (scope("s"), group("g"), group("h"));
    t.join(&s, &g, pid(1, 1), b"m").unwrap();
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.join(&s, &h, pid(1, 2), b"").unwrap();
    t.join(&s, &g, pid(2, 1), b"").unwrap();
    t.join(&s, &g, pid(0, 1), b"").unwrap();
    t.drain_events();
    let removed = t.remove_node(node(1));
    assert_eq!(removed.len(), 3);
    let events = t.drain_events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.kind == EventKind::Left));
    assert_eq!(pids(t.members("s", "g")), [pid(0, 1), pid(2, 1)]);
    assert_eq!(t.which_groups("s").collect::<Vec<_>>(), [&g]);
    assert_eq!(t.memberships_of_node(node(1)).len(), 0);
    assert!(!t.is_member("s", "g", pid(1, 1)));
    // The node may come back (as a new generation in practice) and join again.
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    assert_eq!(t.occurrences("s", "g", pid(1, 1)), 1);
    // The owner's own memberships can be dropped too; the owner stays the owner.
    assert_eq!(t.remove_node(node(0)).len(), 1);
    assert_eq!(t.local_members("s", "g").len(), 0);
    t.join(&s, &g, pid(0, 5), b"").unwrap();
    assert_eq!(pids(t.local_members("s", "g")), [pid(0, 5)]);
}

#[test]
fn local_members_lists_only_pids_of_the_owner() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(0, 1), b"").unwrap();
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.join(&s, &g, pid(0, 2), b"x").unwrap();
    t.join(&s, &g, pid(0, 2), b"").unwrap();
    assert_eq!(
        pids(t.local_members("s", "g")),
        [pid(0, 1), pid(0, 2), pid(0, 2)]
    );
    assert_eq!(t.members("s", "g").len(), 4);
    t.leave(&s, &g, pid(0, 1)).unwrap();
    assert_eq!(pids(t.local_members("s", "g")), [pid(0, 2), pid(0, 2)]);
    assert_eq!(t.local_members("s", "nope").len(), 0);
}

#[test]
fn which_groups_lists_the_groups_of_a_scope_and_of_a_pid() {
    let mut t = table();
    let (a, b) = (scope("a"), scope("b"));
    t.join(&a, &group("g1"), pid(0, 1), b"").unwrap();
    t.join(&a, &group("g2"), pid(0, 1), b"").unwrap();
    t.join(&a, &group("g2"), pid(0, 1), b"").unwrap();
    t.join(&a, &group("g3"), pid(1, 1), b"").unwrap();
    t.join(&b, &group("g1"), pid(0, 1), b"").unwrap();
    let mut in_a: Vec<&str> = t.which_groups("a").map(GroupName::as_str).collect();
    in_a.sort();
    assert_eq!(in_a, ["g1", "g2", "g3"]);
    // Newest join first, one per occurrence, this scope only.
    let of_pid: Vec<&str> = t
        .which_groups_of("a", pid(0, 1))
        .map(|g| g.as_str())
        .collect();
    assert_eq!(of_pid, ["g2", "g2", "g1"]);
    assert_eq!(t.which_groups_of("b", pid(0, 1)).count(), 1);
    assert_eq!(t.which_groups_of("c", pid(0, 1)).count(), 0);
    assert_eq!(t.which_groups_of("a", pid(0, 9)).count(), 0);
    // All scopes, newest first, one item per occurrence.
    let all: Vec<(&str, &str)> = t
        .memberships_of_pid(pid(0, 1))
        .map(|m| (m.scope.as_str(), m.group.as_str()))
        .collect();
    assert_eq!(all, [("b", "g1"), ("a", "g2"), ("a", "g2"), ("a", "g1")]);
    assert_eq!(t.memberships_of_pid(pid(0, 9)).count(), 0);
}

#[test]
fn scopes_are_independent_namespaces() {
    let mut t = table();
    t.join(&scope("a"), &group("g"), pid(0, 1), b"").unwrap();
    t.join(&scope("b"), &group("g"), pid(0, 2), b"").unwrap();
    assert_eq!(pids(t.members("a", "g")), [pid(0, 1)]);
    assert_eq!(pids(t.members("b", "g")), [pid(0, 2)]);
    assert!(t.leave(&scope("b"), &group("g"), pid(0, 1)).is_err());
}

#[test]
fn events_report_every_change_in_order() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(0, 1), b"a").unwrap();
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.leave(&s, &g, pid(0, 1)).unwrap();
    t.remove_node(node(1));
    assert_eq!(
        t.drain_events(),
        [
            event(EventKind::Joined, "s", "g", pid(0, 1), b"a"),
            event(EventKind::Joined, "s", "g", pid(1, 1), b""),
            event(EventKind::Left, "s", "g", pid(0, 1), b"a"),
            event(EventKind::Left, "s", "g", pid(1, 1), b""),
        ]
    );
    assert!(t.drain_events().is_empty());
}

#[test]
fn replace_node_changes_only_the_difference() {
    let mut t = table();
    let (s, g, h) = (scope("s"), group("g"), group("h"));
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.join(&s, &g, pid(1, 1), b"").unwrap();
    t.join(&s, &h, pid(1, 2), b"m").unwrap();
    t.join(&s, &g, pid(2, 1), b"").unwrap();
    t.drain_events();
    let wanted = vec![
        membership("s", "g", pid(1, 1), b""),
        membership("s", "h", pid(1, 2), b"changed"),
        membership("s", "k", pid(1, 3), b""),
    ];
    let replaced = t.replace_node(node(1), wanted.clone()).unwrap();
    assert_eq!(replaced, Replaced { left: 2, joined: 2 });
    let mut events = t.drain_events();
    events.sort();
    assert_eq!(
        events,
        [
            event(EventKind::Joined, "s", "h", pid(1, 2), b"changed"),
            event(EventKind::Joined, "s", "k", pid(1, 3), b""),
            event(EventKind::Left, "s", "g", pid(1, 1), b""),
            event(EventKind::Left, "s", "h", pid(1, 2), b"m"),
        ]
    );
    let mut now: Vec<Membership> = t
        .memberships_of_node(node(1))
        .map(|m| membership(m.scope.as_str(), m.group.as_str(), m.pid, m.meta))
        .collect();
    now.sort();
    let mut expected = wanted.clone();
    expected.sort();
    assert_eq!(now, expected);
    assert_eq!(pids(t.members("s", "g")), [pid(1, 1), pid(2, 1)]);
    // The same set again changes nothing; the empty set removes the node.
    assert_eq!(
        t.replace_node(node(1), wanted).unwrap(),
        Replaced::default()
    );
    assert_eq!(t.replace_node(node(1), Vec::new()).unwrap().left, 3);
    assert_eq!(t.memberships_of_node(node(1)).len(), 0);
    assert_eq!(t.which_groups("s").collect::<Vec<_>>(), [&g]);
}

#[test]
fn replace_node_refuses_a_pid_of_another_node_and_changes_nothing() {
    let mut t = table();
    t.join(&scope("s"), &group("g"), pid(1, 1), b"").unwrap();
    t.drain_events();
    let before = snapshot(&t);
    let foreign = vec![
        membership("s", "g", pid(1, 5), b""),
        membership("s", "g", pid(2, 1), b""),
    ];
    assert_eq!(
        t.replace_node(node(1), foreign).unwrap_err(),
        GroupError::ForeignPid {
            pid: pid(2, 1),
            node: node(1)
        }
    );
    let too_big = vec![membership("s", "g", pid(1, 5), &[0; 513])];
    assert!(matches!(
        t.replace_node(node(1), too_big),
        Err(GroupError::MetaTooLarge { len: 513, .. })
    ));
    assert_eq!(snapshot(&t), before);
    assert!(t.pending_events().is_empty());
}

#[test]
fn memberships_of_node_enumerates_that_owner_only() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(1, 1), b"x").unwrap();
    t.join(&s, &g, pid(2, 1), b"").unwrap();
    t.join(&scope("z"), &g, pid(1, 2), b"").unwrap();
    let of_1: Vec<MembershipRef<'_>> = t.memberships_of_node(node(1)).collect();
    assert_eq!(of_1.len(), 2);
    assert_eq!((of_1[0].scope.as_str(), of_1[0].meta), ("s", &b"x"[..]));
    assert_eq!((of_1[1].scope.as_str(), of_1[1].pid), ("z", pid(1, 2)));
    assert_eq!(t.memberships_of_node(node(7)).len(), 0);
}

#[test]
fn the_same_operations_give_the_same_member_order_on_every_node() {
    let mut tables = [GroupTable::new(node(0)), GroupTable::new(node(3))];
    let (s, g) = (scope("s"), group("g"));
    for t in &mut tables {
        for i in 0..40 {
            t.join(&s, &g, pid(i % 4, u64::from(i)), b"").unwrap();
        }
        for i in (0..40).step_by(3) {
            t.leave(&s, &g, pid(i % 4, u64::from(i))).unwrap();
        }
        t.remove_pid(pid(1, 5));
        t.remove_node(node(2));
    }
    let order = |t: &GroupTable| t.members("s", "g").map(|m| m.pid).collect::<Vec<_>>();
    assert_eq!(order(&tables[0]), order(&tables[1]));
    assert_ne!(
        pids(tables[0].local_members("s", "g")),
        pids(tables[1].local_members("s", "g"))
    );
}

#[test]
fn one_group_takes_ten_thousand_joins_then_ten_thousand_leaves() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    for i in 0..10_000u32 {
        t.join(&s, &g, pid(i % 3, u64::from(i)), b"").unwrap();
    }
    assert_eq!(t.members("s", "g").len(), 10_000);
    assert_eq!(t.local_members("s", "g").len(), 3_334);
    t.drain_events();
    let full = t.heap_bytes();
    for i in 0..10_000u32 {
        t.leave(&s, &g, pid(i % 3, u64::from(i))).unwrap();
    }
    assert_eq!(t.drain_events().len(), 10_000);
    assert_eq!(t.group_count(), 0);
    assert_eq!(t.membership_count(), 0);
    // Everything went back to the allocator but an empty table's own slots and the scope.
    assert!(full > 300_000, "{full}");
    assert!(t.heap_bytes() < 2_000, "{}", t.heap_bytes());
}

#[test]
fn an_empty_scope_costs_a_few_hundred_bytes() {
    let mut t = table();
    let g = group("g");
    let empty = t.heap_bytes();
    for i in 0..200 {
        let s = scope(&format!("scope-{i}"));
        t.join(&s, &g, pid(0, 1), b"").unwrap();
        t.leave(&s, &g, pid(0, 1)).unwrap();
    }
    t.drain_events();
    let per_scope = (t.heap_bytes() - empty) / 200;
    assert!(per_scope < 250, "{per_scope} bytes per empty scope");
    assert_eq!(t.scopes().count(), 200);
    assert_eq!(t.which_groups("scope-7").count(), 0);
}

#[test]
fn replace_node_keeps_the_newest_of_equal_occurrences() {
    let mut t = table();
    let (s, g) = (scope("s"), group("g"));
    t.join(&s, &g, pid(1, 1), b"x").unwrap();
    t.join(&s, &g, pid(1, 1), b"y").unwrap();
    t.join(&s, &g, pid(1, 1), b"x").unwrap();
    let wanted = vec![
        membership("s", "g", pid(1, 1), b"y"),
        membership("s", "g", pid(1, 1), b"x"),
    ];
    assert_eq!(
        t.replace_node(node(1), wanted).unwrap(),
        Replaced { left: 1, joined: 0 }
    );
    // The newest "x" was kept, so it is still the newest occurrence and leaves first.
    t.drain_events();
    t.leave(&s, &g, pid(1, 1)).unwrap();
    assert_eq!(t.drain_events()[0].membership.meta[..], b"x"[..]);
}

#[test]
fn many_groups_of_short_and_long_names_are_found_while_the_index_grows_and_shrinks() {
    let mut t = table();
    let s = scope("s");
    // Names around the inline limit (23 bytes), and long ones sharing a 30-byte prefix.
    let name = |i: usize| match i % 3 {
        0 => format!("g{i}"),
        1 => format!("{i:0>23}"),
        _ => format!("{}{i}", "p".repeat(30)),
    };
    for i in 0..600 {
        t.join(&s, &group(&name(i)), pid(0, i as u64), &[]).unwrap();
    }
    for i in 0..600 {
        assert_eq!(
            pids(t.members("s", name(i))),
            [pid(0, i as u64)],
            "{}",
            name(i)
        );
    }
    assert_eq!(t.members("s", format!("{:0>24}", 1)).len(), 0);
    assert_eq!(t.members("s", "p".repeat(30)).len(), 0);
    // Leaving most groups shrinks the index; the rest stay found.
    for i in 0..560 {
        t.leave(&s, &group(&name(i)), pid(0, i as u64)).unwrap();
    }
    for i in 0..600 {
        let expected = if i < 560 {
            vec![]
        } else {
            vec![pid(0, i as u64)]
        };
        assert_eq!(pids(t.members("s", name(i))), expected, "{}", name(i));
    }
    assert_eq!(t.group_count(), 40);
    for i in 560..600 {
        t.leave(&s, &group(&name(i)), pid(0, i as u64)).unwrap();
    }
    assert_eq!(t.group_count(), 0);
}

#[test]
fn name_keys_hold_the_length_then_the_bytes_of_short_names_only() {
    for len in 0..=30 {
        let name: String = (0..len).map(|i| char::from(b'a' + i as u8)).collect();
        let key = super::layout::NameKey::of(&name);
        let mut expected = [0u8; 24];
        if len <= 23 {
            expected[0] = len as u8;
            expected[1..=len].copy_from_slice(name.as_bytes());
        } else {
            expected[0] = u8::MAX;
        }
        let words: Vec<u8> = key.0.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(words, expected, "length {len}");
        assert_eq!(key.is_long(), len > 23);
    }
}

/// Heap bytes per membership of a table holding `memberships` joins spread over `nodes` nodes
/// (serials fresh per join, so each join is a new pid), `groups` groups and `scopes` scopes,
/// no metadata. Node 0 is the owner, so `nodes == 1` is the one-node shape.
fn bytes_per_membership(nodes: u32, memberships: u32, scopes: u32, groups: u32) -> f64 {
    let scope_names: Vec<ScopeName> = (0..scopes).map(|i| scope(&format!("s{i}"))).collect();
    let group_names: Vec<GroupName> = (0..groups).map(|i| group(&format!("g{i}"))).collect();
    // Remote nodes are 1..=nodes unless the table's owner holds everything.
    let first = u32::from(nodes > 1);
    let mut t = table();
    for i in 0..memberships {
        let node = first + i % nodes;
        let p = pid(node, u64::from(i / nodes));
        let s = &scope_names[(i % scopes) as usize];
        let g = &group_names[(i % groups) as usize];
        t.join(s, g, p, b"").unwrap();
    }
    t.drain_events();
    assert_eq!(t.membership_count(), memberships as usize);
    t.heap_bytes() as f64 / memberships as f64
}

/// The replica shapes of the gossip simulation and the one-node shape, in heap bytes per
/// membership (`--nocapture` prints them). The 10,000-node shape (each remote node owns two
/// memberships) is what a 10,000-node simulation holds in every one of its tables.
#[test]
fn bytes_per_membership_of_replica_and_local_shapes() {
    let replica_10k = bytes_per_membership(10_000, 20_000, 10, 100);
    let replica_1k = bytes_per_membership(1_000, 20_000, 10, 100);
    let local = bytes_per_membership(1, 100_000, 1, 10_000);
    println!(
        "bytes/membership: 10k nodes x 2: {replica_10k:.1}, 1k nodes x 20: {replica_1k:.1}, \
         1 node x 100k over 10k groups: {local:.1}"
    );
}

/// Whether node `n`'s records are indexed (else a list).
fn is_indexed(t: &GroupTable, n: u32) -> bool {
    let slot = t.node_of(node(n)).expect("a node with records");
    matches!(
        table::live(&t.nodes, slot).records,
        layout::NodeRecords::Indexed(_)
    )
}

/// A node's records cross `LIST_MAX` (indexed) and fall to `LIST_AGAIN` (a list again): the
/// pid chains, which occurrence a leave removes, and the node's listing stay right through both
/// changes, on a remote node and on the owner.
#[test]
fn a_node_is_indexed_past_the_list_threshold_and_a_list_again_below_half() {
    for n in [1, 0] {
        let mut t = table();
        let s = scope("s");
        let groups = [group("g"), group("h")];
        // (join number = metadata, serial, group) of every occurrence held.
        let mut held: Vec<(u8, u64, usize)> = Vec::new();
        let joins = LIST_MAX as u8 + 4;
        for i in 0..joins {
            let (serial, g) = (u64::from(i % 3), usize::from(i % 2));
            t.join(&s, &groups[g], pid(n, serial), &[i]).unwrap();
            held.push((i, serial, g));
            prop_tests::assert_invariants(&t);
            assert_eq!(
                is_indexed(&t, n),
                u32::from(i) + 1 > LIST_MAX,
                "after join {i}"
            );
        }
        let listed: Vec<u8> = t.memberships_of_node(node(n)).map(|m| m.meta[0]).collect();
        assert_eq!(
            listed,
            (0..joins).collect::<Vec<_>>(),
            "join order before removals"
        );
        // Leaves, each of the newest occurrence of its pid in its group, down to one.
        let mut k = 0;
        while held.len() > 1 {
            k = (k + 5) % held.len();
            let (_, serial, g) = held[k];
            let newest = held
                .iter()
                .filter(|&&(_, s, h)| (s, h) == (serial, g))
                .map(|&(i, ..)| i)
                .max()
                .unwrap();
            held.retain(|&(i, ..)| i != newest);
            t.drain_events();
            t.leave(&s, &groups[g], pid(n, serial)).unwrap();
            assert_eq!(t.drain_events()[0].membership.meta[..], [newest]);
            prop_tests::assert_invariants(&t);
            let left = held.len() as u32;
            if left <= LIST_AGAIN {
                assert!(!is_indexed(&t, n), "{left} records left");
            } else if left > LIST_MAX {
                assert!(is_indexed(&t, n), "{left} records left");
            }
            let mut listed: Vec<u8> = t.memberships_of_node(node(n)).map(|m| m.meta[0]).collect();
            listed.sort_unstable();
            let mut expected: Vec<u8> = held.iter().map(|&(i, ..)| i).collect();
            expected.sort_unstable();
            assert_eq!(listed, expected);
        }
        // Grown again past the threshold, then a process exit and the node's removal.
        for i in 0..joins {
            t.join(&s, &groups[0], pid(n, 7), &[100 + i]).unwrap();
        }
        assert!(is_indexed(&t, n));
        let exited: Vec<u8> = t.remove_pid(pid(n, 7)).iter().map(|m| m.meta[0]).collect();
        assert_eq!(
            exited,
            (100..100 + joins).rev().collect::<Vec<_>>(),
            "newest first"
        );
        assert!(!is_indexed(&t, n));
        prop_tests::assert_invariants(&t);
        for i in 0..joins {
            t.join(&s, &groups[1], pid(n, 8), &[i]).unwrap();
        }
        assert_eq!(t.remove_node(node(n)).len(), usize::from(joins) + 1);
        prop_tests::assert_invariants(&t);
        assert_eq!(t.membership_count(), 0);
        t.drain_events();
        assert_eq!(t.node_index.len(), 1, "only the owner's slot is left");
        assert!(t.heap_bytes() < 2_000, "{}", t.heap_bytes());
    }
}
