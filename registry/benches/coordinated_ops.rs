//! The coordinated backend's CPU per op, one core: `cargo bench -p meshreg-registry --bench
//! coordinated_ops`.
//!
//! - `join_leave/k3`: three `CoordinatedGroups` cores in this process, frames handed over
//!   through one FIFO queue at once (no I/O, no timers fire: nothing is lost). Each iteration
//!   is one join and then one leave of a node-0 pid, each run until every frame it caused was
//!   delivered (request, order, apply on every node, acks, done), so it counts the work of the
//!   requester, of the partition's boss (any of the three) and of every replica. Groups rotate over 1,000 names, so ops land on every
//!   partition, and the partitions' dedupe windows are full (a steady state: a window keeps
//!   the last 256 ops of its partition).

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddrV4;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshreg_membership::{Channel, MemberEvent, NodeId, Time, loopback_addr, loopback_index};
use meshreg_registry::coordinated::{BossTimer, CoordinatedGroups, DEFAULT_PARTITIONS_PER_SCOPE};
use meshreg_registry::groups::{GroupName, ScopeName};
use meshreg_registry::{Pid, RegistryCore, RegistryOutput, RequestId};

const CLUSTER: u32 = 7;

/// Cores wired by one FIFO queue; timers are dropped (nothing here is ever lost or late).
struct Wired {
    nodes: Vec<CoordinatedGroups>,
    queue: VecDeque<(usize, SocketAddrV4, Vec<u8>)>,
    out: Vec<RegistryOutput<BossTimer>>,
    now: Time,
    next_req: RequestId,
}

impl Wired {
    fn new(n: u32) -> Self {
        let ids: Vec<NodeId> = (0..n)
            .map(|i| NodeId::new(loopback_addr(i, 7000), 1))
            .collect();
        let mut w = Self {
            nodes: ids
                .iter()
                .map(|&id| CoordinatedGroups::new(id, CLUSTER, DEFAULT_PARTITIONS_PER_SCOPE))
                .collect(),
            queue: VecDeque::new(),
            out: Vec::new(),
            now: Time::ZERO,
            next_req: 1,
        };
        for i in 0..ids.len() {
            let mut out = std::mem::take(&mut w.out);
            w.nodes[i].start(w.now, &mut out);
            for &peer in ids.iter().filter(|&&p| p != ids[i]) {
                w.nodes[i].member_event(w.now, MemberEvent::Up(peer), &mut out);
            }
            w.route(i, out);
        }
        w.run();
        w
    }

    fn route(&mut self, from: usize, mut out: Vec<RegistryOutput<BossTimer>>) {
        for o in out.drain(..) {
            if let RegistryOutput::Send { to, payload, .. } = o {
                self.queue.push_back((from, to, payload));
            }
        }
        self.out = out;
    }

    /// Delivers frames until none is left.
    fn run(&mut self) {
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            let from_addr = self.nodes[from].me().addr();
            let i = loopback_index(to).expect("a loopback peer") as usize;
            let mut out = std::mem::take(&mut self.out);
            self.nodes[i]
                .handle_message(self.now, from_addr, Channel::Stream, &bytes, &mut out)
                .expect("a well-formed frame from a live peer");
            self.route(i, out);
        }
    }

    fn call(&mut self, join: bool, scope: &ScopeName, group: &GroupName, pid: Pid) {
        let req = self.next_req;
        self.next_req += 1;
        let mut out = std::mem::take(&mut self.out);
        if join {
            self.nodes[0].join(self.now, req, scope, group, pid, &[], &mut out);
        } else {
            self.nodes[0].leave(self.now, req, scope, group, pid, &mut out);
        }
        self.route(0, out);
        self.run();
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("join_leave");
    g.throughput(Throughput::Elements(2));
    let scope = ScopeName::new("bench").expect("name");
    let groups: Vec<GroupName> = (0..1_000)
        .map(|i| GroupName::new(&format!("g{i}")).expect("name"))
        .collect();
    let mut w = Wired::new(3);
    let pid = |serial: u64| Pid {
        node: w.nodes[0].me().root(),
        serial,
    };
    let pids: Vec<Pid> = (0..1_000).map(pid).collect();
    // Fill every partition's dedupe window first (1,000 groups over 256 partitions: ~8 ops
    // per partition and round, 40 rounds; a window keeps 256).
    for round in 0..40 {
        for (i, grp) in groups.iter().enumerate() {
            let p = pids[(i + round) % pids.len()];
            w.call(true, &scope, grp, p);
            w.call(false, &scope, grp, p);
        }
    }
    // The wiring does the work it claims: a join is on every node when the call returns.
    w.call(true, &scope, &groups[0], pids[0]);
    for n in &w.nodes {
        assert_eq!(n.table().occurrences(&scope, &groups[0], pids[0]), 1);
    }
    w.call(false, &scope, &groups[0], pids[0]);
    let mut i = 0usize;
    g.bench_function("k3", |b| {
        b.iter(|| {
            let (grp, p) = (&groups[i % groups.len()], pids[i % pids.len()]);
            i += 1;
            w.call(true, &scope, grp, p);
            w.call(false, &scope, grp, p);
            black_box(w.nodes[2].table().group_count());
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
