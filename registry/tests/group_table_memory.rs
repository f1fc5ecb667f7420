//! `GroupTable::heap_bytes` against a counting global allocator: the accounting the simulator
//! reports as `memory_bytes_per_membership` must be what the allocator really handed out
//! (within 10%).
//!
//! One `#[test]` only: the allocator counts the whole process, so no other test may allocate
//! concurrently. Run with `--nocapture` to see the figures.

use std::alloc::System;

use cap::Cap;
use meshreg_membership::{NodeId, loopback_addr};
use meshreg_registry::Pid;
use meshreg_registry::groups::{GroupName, GroupTable, ScopeName};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn node(index: u32) -> NodeId {
    NodeId::new(loopback_addr(index, 7000), 1)
}

struct Shape {
    name: &'static str,
    groups: u32,
    memberships: u32,
    nodes: u32,
    meta: &'static [u8],
}

/// Builds the table inside the measured window (names included: the table keeps them) and
/// returns (allocator bytes, accounted bytes) of the table alone.
fn measure(shape: &Shape, leave_every: u32) -> (usize, usize, usize) {
    let before = ALLOCATOR.allocated();
    let mut table = GroupTable::new(node(0));
    let scope = ScopeName::new("services").expect("short name");
    let groups: Vec<GroupName> = (0..shape.groups)
        .map(|g| GroupName::new(&format!("group-{g:05}")).expect("short name"))
        .collect();
    let pid = |i: u32| Pid {
        node: node(i % shape.nodes),
        serial: u64::from(i),
    };
    for i in 0..shape.memberships {
        let group = &groups[(i % shape.groups) as usize];
        table
            .join(&scope, group, pid(i), shape.meta)
            .expect("metadata under the cap");
    }
    if leave_every > 0 {
        for i in (0..shape.memberships).step_by(leave_every as usize) {
            let group = &groups[(i % shape.groups) as usize];
            table.leave(&scope, group, pid(i)).expect("joined above");
        }
    }
    drop(table.drain_events());
    drop(groups);
    drop(scope);
    let allocated = ALLOCATOR.allocated() - before;
    let accounted = table.heap_bytes();
    let memberships = table.membership_count();
    drop(table);
    (allocated, accounted, memberships)
}

#[test]
fn heap_bytes_matches_a_counting_allocator_within_ten_percent() {
    let shapes = [
        Shape {
            name: "10k groups x 100k members (10 per group), 1,000 nodes",
            groups: 10_000,
            memberships: 100_000,
            nodes: 1_000,
            meta: b"",
        },
        Shape {
            name: "100 groups x 20k members, 10,000 nodes (2 each)",
            groups: 100,
            memberships: 20_000,
            nodes: 10_000,
            meta: b"",
        },
        Shape {
            name: "1 group x 10k members, 100 nodes",
            groups: 1,
            memberships: 10_000,
            nodes: 100,
            meta: b"",
        },
        Shape {
            name: "1k groups x 20k members, 20 nodes, 32-byte metadata",
            groups: 1_000,
            memberships: 20_000,
            nodes: 20,
            meta: &[7; 32],
        },
    ];
    for shape in &shapes {
        for leave_every in [0, 3] {
            let (allocated, accounted, memberships) = measure(shape, leave_every);
            let after = if leave_every > 0 {
                ", a third left"
            } else {
                ""
            };
            println!(
                "{}{after}: allocator {allocated} B, heap_bytes {accounted} B, \
                 {:.1} B/membership (accounted {:.1})",
                shape.name,
                allocated as f64 / memberships as f64,
                accounted as f64 / memberships as f64,
            );
            let error = (accounted as f64 - allocated as f64).abs() / allocated as f64;
            assert!(
                error <= 0.10,
                "{}: heap_bytes {accounted} is {:.1}% off the allocator's {allocated}",
                shape.name,
                error * 100.0
            );
        }
    }
}
