//! `Shard::heap_bytes` against a counting global allocator: the accounting the benchmark's
//! `mem.bytes_per_session` and operators rely on must be exact (checked within ±10%).

use std::alloc::System;

use cap::Cap;
use meshreg_membership::{NodeId, loopback_addr};
use meshreg_registry::Pid;
use meshreg_registry::session::{
    Body, Call, Output, Policy, Request, RequestId, SessionKey, Shard, ShardConfig, ShardId,
};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn register(id: u64, key: SessionKey, node: u32, metadata: &[u8]) -> Request {
    let client = NodeId::new(loopback_addr(1000, 7000), 1);
    Request {
        shard: ShardId(0),
        epoch: 1,
        id: RequestId { client, id },
        answered_below: id,
        body: Body::One(Call::Register {
            key,
            pid: Pid {
                node: NodeId::new(loopback_addr(node, 7000), 1),
                serial: id,
            },
            metadata: metadata.into(),
            policy: Policy::Reject,
        }),
    }
}

/// Bytes allocated since `before` (an earlier `ALLOCATOR.allocated()`).
fn live_bytes(before: usize) -> isize {
    ALLOCATOR.allocated() as isize - before as isize
}

fn assert_within_ten_percent(what: &str, reported: usize, measured: isize) {
    let ratio = reported as f64 / measured as f64;
    println!("{what}: heap_bytes {reported} B, allocator {measured} B, ratio {ratio:.4}");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: heap_bytes {reported} vs allocator {measured}"
    );
}

#[test]
fn heap_bytes_matches_the_allocator_within_ten_percent() {
    // One test in this binary, so nothing else allocates concurrently.
    let mut out: Vec<Output> = Vec::with_capacity(8);

    // 1 M u64-keyed sessions without metadata from 100 nodes: the fast path.
    let before = ALLOCATOR.allocated();
    let mut shard = Shard::primary(ShardId(0), 1, ShardConfig::default());
    let n = 1_000_000u64;
    for k in 0..n {
        let key = SessionKey::U64(447_700_000_000 + k * 7919);
        shard.handle_request(register(k + 1, key, (k % 100) as u32, b""), &mut out);
        out.clear();
    }
    assert_eq!(shard.len(), n as usize);
    let measured = live_bytes(before);
    assert_within_ten_percent("1 M u64 sessions", shard.heap_bytes(), measured);
    println!(
        "bytes per session at 1 M: {:.1}",
        measured as f64 / n as f64
    );
    drop(shard);

    // 100 k byte-string keys, half with metadata: the general path, metadata out of line.
    let before = ALLOCATOR.allocated();
    let mut shard = Shard::primary(ShardId(0), 1, ShardConfig::default());
    for k in 0..100_000u64 {
        let key = SessionKey::Bytes(format!("user:{k}").into_bytes().into());
        let meta = if k % 2 == 0 {
            &b"region=eu-west;v=2"[..]
        } else {
            b""
        };
        shard.handle_request(register(k + 1, key, (k % 10) as u32, meta), &mut out);
        out.clear();
    }
    assert_within_ten_percent(
        "100 k byte sessions",
        shard.heap_bytes(),
        live_bytes(before),
    );
}
