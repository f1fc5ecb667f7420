//! Helpers shared by the integration tests: time bounds, polling, running the `meshreg`
//! binary. Each test file uses a subset.
#![allow(dead_code, reason = "each test crate uses a different subset")]

use std::future::Future;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The secret of every test cluster (loopback only).
pub const SECRET: &[u8] = b"integration-test-cluster-secret";

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .expect("test exceeded its time bound");
}

/// Polls `cond` every 10 ms until it holds, failing the test after `limit`.
pub async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let mut waited = Duration::ZERO;
    while !cond() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
        assert!(waited < limit, "timed out waiting until {what}");
    }
}

/// Runs the `meshreg` binary with `args`; kills it and fails after `limit`. Asserts it
/// succeeded and returns its standard output.
pub fn run_meshreg(args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshreg"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting meshreg");
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for meshreg") {
            break status;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshreg {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    assert!(
        status.success(),
        "meshreg {args:?}: exit {status}; stderr:\n{err}\nstdout:\n{out}"
    );
    out
}
