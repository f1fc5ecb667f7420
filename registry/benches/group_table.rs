//! Local group-table operations, one core: `cargo bench -p meshreg-registry --bench group_table`.
//!
//! - `join_leave/1g_10k`: one join plus one leave of a fresh local pid on a group that holds
//!   10,000 members, counted as two operations (target: >= 1,000,000 ops/s).
//! - `members/1g_10k`: borrow the 10,000-member list (no copy) and walk every member.
//! - `join/10kg_100k`: 100,000 joins spread over 10,000 groups into an empty table (the Erlang
//!   `pg` anchor is 80k joins/s on this machine).
//! - `members_by_name/10kg_100k`: read 10,000 groups of 10 members each by name and walk the
//!   members (the table's share of `single.get_members.10kg_100k`).
//! - `replica_join_leave/10kn_20k`: 20,000 joins of remote pids (10,000 nodes, two each, 100
//!   groups in 10 scopes) into an empty table, then 20,000 leaves: a gossip replica's shape.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meshreg_membership::{NodeId, loopback_addr};
use meshreg_registry::Pid;
use meshreg_registry::groups::{GroupName, GroupTable, ScopeName};

fn me() -> NodeId {
    NodeId::new(loopback_addr(0, 7000), 1)
}

fn pid(serial: u64) -> Pid {
    Pid { node: me(), serial }
}

fn table_with(scope: &ScopeName, group: &GroupName, members: u64) -> GroupTable {
    let mut t = GroupTable::new(me());
    for s in 0..members {
        t.join(scope, group, pid(s), &[]).expect("valid join");
    }
    t.drain_events();
    t
}

fn bench(c: &mut Criterion) {
    let scope = ScopeName::new("services").expect("name");
    let group = GroupName::new("svc").expect("name");

    let mut g = c.benchmark_group("join_leave");
    g.throughput(Throughput::Elements(2));
    let mut t = table_with(&scope, &group, 10_000);
    let mut serial = 1_000_000u64;
    g.bench_function("1g_10k", |b| {
        b.iter(|| {
            serial += 1;
            t.join(&scope, &group, pid(serial), &[])
                .expect("valid join");
            t.leave(&scope, &group, pid(serial)).expect("joined");
            // Monitor events are drained by the backend in real use; keep the queue bounded.
            if serial.is_multiple_of(1024) {
                t.drain_events();
            }
        });
    });
    g.finish();

    let mut g = c.benchmark_group("members");
    g.throughput(Throughput::Elements(10_000));
    let t = table_with(&scope, &group, 10_000);
    g.bench_function("1g_10k", |b| {
        b.iter(|| {
            let m = t.members(black_box("services"), black_box("svc"));
            black_box(m.map(|x| x.pid.serial).sum::<u64>())
        });
    });
    g.finish();

    let mut g = c.benchmark_group("join");
    g.throughput(Throughput::Elements(100_000));
    g.sample_size(10);
    let groups: Vec<GroupName> = (0..10_000)
        .map(|i| GroupName::new(&format!("g{i}")).expect("name"))
        .collect();
    g.bench_function("10kg_100k", |b| {
        b.iter_batched(
            || GroupTable::new(me()),
            |mut t| {
                for i in 0..100_000u64 {
                    t.join(&scope, &groups[(i % 10_000) as usize], pid(i), &[])
                        .expect("valid join");
                }
                t
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();

    // The read of `meshreg bench groups`' single.get_members.10kg_100k, without the node:
    // 10,000 groups of 10 members, one group per read, by name.
    let mut g = c.benchmark_group("members_by_name");
    let mut t = GroupTable::new(me());
    for i in 0..100_000u64 {
        t.join(&scope, &groups[(i % 10_000) as usize], pid(i), &[])
            .expect("valid join");
    }
    t.drain_events();
    let names: Vec<String> = (0..10_000).map(|i| format!("g{i}")).collect();
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("10kg_100k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for n in &names {
                sum += t
                    .members("services", n.as_str())
                    .map(|x| x.pid.serial)
                    .fold(0, u64::wrapping_add);
            }
            black_box(sum)
        });
    });
    g.finish();

    // A gossip replica's share of a 10,000-node cluster: 20,000 memberships of remote pids, two
    // per node, over 100 groups in 10 scopes, joined into an empty table, then left.
    let mut g = c.benchmark_group("replica_join_leave");
    g.throughput(Throughput::Elements(40_000));
    g.sample_size(10);
    let scopes: Vec<ScopeName> = (0..10)
        .map(|i| ScopeName::new(&format!("s{i}")).expect("name"))
        .collect();
    let remote = |i: u32| Pid {
        node: NodeId::new(loopback_addr(1 + i % 10_000, 7000), 1),
        serial: u64::from(i / 10_000),
    };
    g.bench_function("10kn_20k", |b| {
        b.iter_batched(
            || GroupTable::new(me()),
            |mut t| {
                for i in 0..20_000u32 {
                    let (s, grp) = (&scopes[(i % 10) as usize], &groups[(i % 100) as usize]);
                    t.join(s, grp, remote(i), &[]).expect("valid join");
                }
                for i in 0..20_000u32 {
                    let (s, grp) = (&scopes[(i % 10) as usize], &groups[(i % 100) as usize]);
                    t.leave(s, grp, remote(i)).expect("joined");
                }
                t
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
