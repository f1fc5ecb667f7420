//! Session shard benchmark: one core, in process, u64 keys (issue 5 item 5, the single-core
//! part). Prints one JSON object.
//!
//! ```text
//! cargo run --release -p meshreg-registry --example bench_session_shard [-- SESSIONS]
//! ```
//!
//! - `shard.register_ops_per_s`: single-call `Register` requests (policy `Reject`, distinct
//!   keys) into an empty primary **without a standby** until it holds SESSIONS (default 10 M)
//!   sessions. Requests are handed over 64 at a time with `Shard::handle_requests`, as the node
//!   runtime will hand over what it decoded from one read of a pipelined link; each is still
//!   one request with its own dedupe record and reply. Request construction, table growth and
//!   the reply outputs are inside the timing.
//! - `shard.lookup_ops_per_s`: single-call `Lookup` requests of every key in a scattered order
//!   against the full shard, handed over the same way (median of 3 passes).
//! - `context.*_one_at_a_time_ops_per_s`: the same requests through `Shard::handle_request`, one
//!   call each (no read-ahead: every request waits for its own DRAM misses).
//! - `context.reregister_full_shard_ops_per_s`: every holder registers its key again (a login
//!   refresh) on the full shard, pipelined: the steady state, without table growth.
//! - `mem.bytes_per_session`: live heap bytes of the full shard per session, measured by a
//!   counting global allocator (`mem.heap_bytes_per_session` is `Shard::heap_bytes`).
//! - Context (not targets): 64-call batches, and registration with a standby where the
//!   replicate/ack loop runs inline on the same core (both replicas' work is timed).
//!
//! Targets: >= 5 M registrations/s, >= 10 M lookups/s, <= 64 B/session at 10 M sessions.

use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

use cap::Cap;
use meshreg_membership::{NodeId, loopback_addr};
use meshreg_registry::Pid;
use meshreg_registry::session::{
    Body, Call, Output, Policy, Request, RequestId, SessionKey, Shard, ShardConfig, ShardId,
};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const SHARD: ShardId = ShardId(0);
const PHONE_BASE: u64 = 447_000_000_000;
/// Outputs are drained every this many requests, as a driver flushing its send buffers would.
const DRAIN_EVERY: usize = 1024;
/// Requests per `handle_requests` call (one read of a pipelined link).
const PIPELINE: u64 = 64;

fn client() -> NodeId {
    NodeId::new(loopback_addr(1000, 7000), 1)
}

fn key_of(i: u64) -> u64 {
    PHONE_BASE + i * 7919
}

fn request(id: u64, body: Body) -> Request {
    Request {
        shard: SHARD,
        epoch: 1,
        id: RequestId {
            client: client(),
            id,
        },
        answered_below: id,
        body,
    }
}

fn register_call(i: u64, nodes: &[NodeId]) -> Call {
    Call::Register {
        key: SessionKey::U64(key_of(i)),
        pid: Pid {
            node: nodes[(i % nodes.len() as u64) as usize],
            serial: i,
        },
        metadata: Box::default(),
        policy: Policy::Reject,
    }
}

/// A scattered visiting order of 0..n: a multiplicative permutation (the multiplier is coprime
/// with any n whose prime factors are 2 and 5).
fn scattered(i: u64, n: u64) -> u64 {
    (i.wrapping_mul(2_654_435_761)) % n
}

fn drain(out: &mut Vec<Output>) {
    if out.len() >= DRAIN_EVERY {
        black_box(&out);
        out.clear();
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let nodes: Vec<NodeId> = (0..64)
        .map(|i| NodeId::new(loopback_addr(i, 7000), 1))
        .collect();
    let config = ShardConfig {
        hash_seed: 0x5eed,
        ..ShardConfig::default()
    };
    let mut out: Vec<Output> = Vec::with_capacity(2 * DRAIN_EVERY);

    // Registrations, one call per request, no standby, pipelined.
    let before = ALLOCATOR.allocated();
    let mut shard = Shard::primary(SHARD, 1, config);
    let start = Instant::now();
    for first in (0..n).step_by(PIPELINE as usize) {
        let batch = first..(first + PIPELINE).min(n);
        let requests = batch.map(|i| request(i + 1, Body::One(register_call(i, &nodes))));
        shard.handle_requests(requests, &mut out);
        drain(&mut out);
    }
    let register_s = start.elapsed().as_secs_f64();
    out.clear();
    assert_eq!(shard.len() as u64, n, "every key registered");
    let live = ALLOCATOR.allocated() as f64 - before as f64;
    let heap = shard.heap_bytes() as f64;

    // Lookups, one call per request, scattered order, pipelined: median of 3 passes.
    let lookup = |i: u64| {
        Body::One(Call::Lookup {
            key: SessionKey::U64(key_of(scattered(i, n))),
        })
    };
    let mut passes = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        for first in (0..n).step_by(PIPELINE as usize) {
            let batch = first..(first + PIPELINE).min(n);
            shard.handle_requests(batch.map(|i| request(n + i + 1, lookup(i))), &mut out);
            drain(&mut out);
        }
        passes.push(start.elapsed().as_secs_f64());
        out.clear();
    }
    passes.sort_by(f64::total_cmp);
    let lookup_s = passes[1];

    // Context: every holder re-registers its key (a login refresh on a full shard), pipelined.
    let start = Instant::now();
    for first in (0..n).step_by(PIPELINE as usize) {
        let batch = first..(first + PIPELINE).min(n);
        let requests = batch.map(|j| {
            let i = scattered(j, n);
            request(4 * n + j + 1, Body::One(register_call(i, &nodes)))
        });
        shard.handle_requests(requests, &mut out);
        drain(&mut out);
    }
    let reregister_s = start.elapsed().as_secs_f64();
    out.clear();

    // Context: lookups one at a time.
    let start = Instant::now();
    for i in 0..n {
        shard.handle_request(request(n + i + 1, lookup(i)), &mut out);
        drain(&mut out);
    }
    let lookup_single_s = start.elapsed().as_secs_f64();
    out.clear();

    // Context: lookup_many of 64 keys per request.
    let batches = n / 64;
    let start = Instant::now();
    for b in 0..batches {
        let keys = (0..64).map(|j| SessionKey::U64(key_of(scattered(b * 64 + j, n))));
        shard.handle_request(request(2 * n + b + 1, Body::lookup_many(keys)), &mut out);
        drain(&mut out);
    }
    let lookup_many_s = start.elapsed().as_secs_f64();
    out.clear();
    drop(shard);

    // Context: registrations one at a time into a fresh shard.
    let mut shard = Shard::primary(SHARD, 1, config);
    let start = Instant::now();
    for i in 0..n {
        shard.handle_request(
            request(i + 1, Body::One(register_call(i, &nodes))),
            &mut out,
        );
        drain(&mut out);
    }
    let register_single_s = start.elapsed().as_secs_f64();
    out.clear();
    drop(shard);

    // Context: 64-call register batches into a fresh shard (n sessions).
    let mut shard = Shard::primary(SHARD, 1, config);
    let start = Instant::now();
    for b in 0..batches {
        let calls = (0..64).map(|j| register_call(b * 64 + j, &nodes)).collect();
        shard.handle_request(request(b + 1, Body::Batch(calls)), &mut out);
        drain(&mut out);
    }
    let batch_s = start.elapsed().as_secs_f64();
    out.clear();
    drop(shard);

    // Context: with a standby, replicate/ack inline on this core (1/10 of n sessions).
    let m = (n / 10).max(1);
    let replicated_s = replicated(m, &nodes, config);

    let rate = |ops: u64, s: f64| (ops as f64 / s).round();
    println!("{{");
    println!("  \"shard.sessions\": {n},");
    println!(
        "  \"shard.mode\": \"primary without standby, single-call requests handed over {PIPELINE} per handle_requests, one core\","
    );
    println!("  \"shard.register_ops_per_s\": {},", rate(n, register_s));
    println!("  \"shard.lookup_ops_per_s\": {},", rate(n, lookup_s));
    println!("  \"mem.bytes_per_session\": {:.1},", live / n as f64);
    println!("  \"mem.heap_bytes_per_session\": {:.1},", heap / n as f64);
    println!(
        "  \"context.reregister_full_shard_ops_per_s\": {},",
        rate(n, reregister_s)
    );
    println!(
        "  \"context.register_one_at_a_time_ops_per_s\": {},",
        rate(n, register_single_s)
    );
    println!(
        "  \"context.lookup_one_at_a_time_ops_per_s\": {},",
        rate(n, lookup_single_s)
    );
    println!(
        "  \"context.register_batch64_ops_per_s\": {},",
        rate(batches * 64, batch_s)
    );
    println!(
        "  \"context.lookup_many64_ops_per_s\": {},",
        rate(batches * 64, lookup_many_s)
    );
    println!("  \"context.replicated_sessions\": {m},");
    println!(
        "  \"context.register_replicated_inline_ops_per_s\": {}",
        rate(m, replicated_s)
    );
    println!("}}");
}

/// Primary and standby in one thread: every Replicate is applied by the standby and its ack
/// handed back before the next request, so each registration costs both replicas' work
/// (one request at a time).
fn replicated(m: u64, nodes: &[NodeId], config: ShardConfig) -> f64 {
    let (p_node, s_node) = (nodes[0], nodes[1]);
    let mut primary = Shard::primary(SHARD, 1, config);
    let mut boot = Vec::new();
    let snapshot = primary.attach_standby(s_node).expect("a primary attaches");
    let mut standby = Shard::standby(snapshot, p_node, config, &mut boot);
    let mut out = Vec::with_capacity(4);
    let mut acks = Vec::with_capacity(4);
    let mut replies = 0u64;
    let start = Instant::now();
    for i in 0..m {
        primary.handle_request(request(i + 1, Body::One(register_call(i, nodes))), &mut out);
        for o in out.drain(..) {
            match o {
                Output::Replicate { msg, .. } => standby.handle_replicate(p_node, msg, &mut acks),
                Output::Reply(_) => replies += 1,
                _ => {}
            }
        }
        for a in acks.drain(..) {
            if let Output::Ack { msg, .. } = a {
                primary.handle_replica_ack(s_node, msg, &mut out);
            }
        }
        replies += out
            .drain(..)
            .filter(|o| matches!(o, Output::Reply(_)))
            .count() as u64;
    }
    let s = start.elapsed().as_secs_f64();
    assert_eq!(replies, m, "every registration answered");
    assert_eq!(standby.len(), primary.len());
    s
}
