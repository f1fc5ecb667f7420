//! The session manager's CPU per call, sans-IO, one core: `cargo bench -p meshreg-registry
//! --bench session_calls`.
//!
//! Three `SessionManager`s in this process: node 0 only calls, nodes 1 and 2 have the session
//! role (each the primary of about half of the 1,024 shards and the other's standby). Frames are
//! handed over through one FIFO queue, each delivered between `hold` and `release` as the tokio
//! driver does for a frame read alone; a zero-delay `Flush` runs once the frames queued before
//! it were delivered. No other timer fires and nothing is lost, so no call is ever re-sent.
//!
//! - `register/256`: one iteration is 256 `register` calls of new u64 keys on node 0 at one
//!   instant (as 256 concurrent callers), run until each completed: client batching, the wire
//!   encode and decode, the primary's shard, replication to the standby, its ack, the reply,
//!   and the client recording its owned sessions. This is the sans-IO share of the
//!   end-to-end `meshreg bench sessions` registration.
//! - `lookup/256`: 256 `lookup` calls of keys registered before, the same way.
//!
//! `MESHREG_BENCH_ITERATIONS=N` runs N iterations of each without criterion and exits: a fixed
//! amount of work for instruction counts (`valgrind --tool=cachegrind`), which, unlike times,
//! do not move with the host's load.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddrV4;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use meshreg_membership::{Channel, MemberEvent, NodeId, Time, loopback_addr, loopback_index};
use meshreg_registry::Pid;
use meshreg_registry::session::manager::{
    ManagerConfig, SessionManager, SessionOutput, SessionTimer,
};
use meshreg_registry::session::{Policy, SessionKey};

const CLUSTER: u32 = 11;
const CALLS: u64 = 256;
const PORT: u16 = 7000;

/// What waits to be delivered, in order.
enum Input {
    Frame {
        from: SocketAddrV4,
        to: usize,
        bytes: Vec<u8>,
    },
    Flush(usize),
}

/// Three managers wired by one FIFO queue.
struct Wired {
    nodes: Vec<SessionManager>,
    queue: VecDeque<Input>,
    out: Vec<SessionOutput>,
    now: Time,
    next_call: u64,
    next_key: u64,
    completed: u64,
    pid: Pid,
}

impl Wired {
    fn new() -> Self {
        let ids: Vec<NodeId> = (0..3)
            .map(|i| NodeId::new(loopback_addr(i, PORT), 1))
            .collect();
        let mut w = Self {
            nodes: (0u64..)
                .zip(&ids)
                .map(|(i, &id)| {
                    // A hash seed of its own per node, as `Node` gives each.
                    let mut config = ManagerConfig::default();
                    config.shard.hash_seed = meshreg_membership::mix64(i ^ 0x5e55);
                    SessionManager::new(id, CLUSTER, config)
                })
                .collect(),
            queue: VecDeque::new(),
            out: Vec::new(),
            now: Time::ZERO,
            next_call: 1,
            next_key: 0,
            completed: 0,
            pid: Pid {
                node: ids[0],
                serial: 1,
            },
        };
        let roles = [ids[1].addr(), ids[2].addr()];
        for i in 0..ids.len() {
            let mut out = std::mem::take(&mut w.out);
            for &peer in ids.iter().filter(|&&p| p != ids[i]) {
                w.nodes[i].member_event(w.now, MemberEvent::Up(peer), &mut out);
            }
            w.nodes[i].set_session_nodes(w.now, roles, &mut out);
            w.route(i, out);
        }
        w.run();
        // The epoch rounds and fills are answered by now: one upkeep tick on each session
        // node takes every term it ranks first in.
        for i in 1..ids.len() {
            let mut out = std::mem::take(&mut w.out);
            w.nodes[i].handle_timer(w.now, SessionTimer::Tick, &mut out);
            w.route(i, out);
        }
        w.run();
        w.completed = 0;
        w
    }

    /// Queues what node `from` asked for; counts completed calls (each must succeed).
    fn route(&mut self, from: usize, mut out: Vec<SessionOutput>) {
        let addr = self.nodes[from].me().addr();
        for o in out.drain(..) {
            match o {
                SessionOutput::Send { to, payload, .. } => {
                    let to = loopback_index(to).expect("a bench node") as usize;
                    self.queue.push_back(Input::Frame {
                        from: addr,
                        to,
                        bytes: payload,
                    });
                }
                SessionOutput::SetTimer {
                    after: Duration::ZERO,
                    timer: SessionTimer::Flush,
                } => self.queue.push_back(Input::Flush(from)),
                SessionOutput::Completed { result, .. } => {
                    assert!(result.is_ok(), "a call failed: {result:?}");
                    self.completed += 1;
                }
                // Upkeep and retry timers never fire here (nothing is lost or late).
                _ => {}
            }
        }
        self.out = out;
    }

    /// Delivers until nothing is queued.
    fn run(&mut self) {
        while let Some(input) = self.queue.pop_front() {
            let mut out = std::mem::take(&mut self.out);
            let at = match input {
                Input::Frame { from, to, bytes } => {
                    let node = &mut self.nodes[to];
                    node.hold();
                    node.handle_message(self.now, from, Channel::Stream, &bytes, &mut out)
                        .expect("a bench frame is accepted");
                    node.release(self.now, &mut out);
                    to
                }
                Input::Flush(at) => {
                    self.nodes[at].handle_timer(self.now, SessionTimer::Flush, &mut out);
                    at
                }
            };
            self.route(at, out);
        }
    }

    /// `CALLS` registrations of new keys on node 0, run to completion.
    fn register_batch(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        for _ in 0..CALLS {
            let key = SessionKey::U64(self.next_key);
            self.next_key += 1;
            self.next_call += 1;
            self.nodes[0].register(
                self.now,
                self.next_call,
                key,
                self.pid,
                &[],
                Policy::Reject,
                &mut out,
            );
        }
        self.route(0, out);
        self.run();
    }

    /// `CALLS` lookups of registered keys on node 0, run to completion.
    fn lookup_batch(&mut self, round: u64) {
        let mut out = std::mem::take(&mut self.out);
        for i in 0..CALLS {
            let key = meshreg_membership::mix64(round * CALLS + i) % self.next_key.max(1);
            self.next_call += 1;
            self.nodes[0].lookup(self.now, self.next_call, SessionKey::U64(key), &mut out);
        }
        self.route(0, out);
        self.run();
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_calls");
    g.throughput(Throughput::Elements(CALLS));
    let mut w = Wired::new();
    g.bench_function("register/256", |b| {
        b.iter(|| {
            w.register_batch();
            black_box(w.completed)
        });
    });
    let mut round = 0;
    g.bench_function("lookup/256", |b| {
        b.iter(|| {
            round += 1;
            w.lookup_batch(round);
            black_box(w.completed)
        });
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("MESHREG_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let mut w = Wired::new();
        for _ in 0..n {
            w.register_batch();
        }
        for round in 0..n {
            w.lookup_batch(round);
        }
        assert_eq!(w.completed, 2 * n * CALLS, "every call completed");
        println!("{} calls completed", w.completed);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
