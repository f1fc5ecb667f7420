//! Smoke test of `meshreg bench sessions` at a small size: the shard part in this process, the
//! e2e part on 4 worker processes (2 with the session role); every promised key is reported
//! with a sensible value. Speed is never asserted here: targets live in the benchmark output.

mod common;

use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn bench_sessions_at_a_small_size_reports_every_key() {
    let out = common::run_meshreg(
        &[
            "bench",
            "sessions",
            "--sessions",
            "20000",
            "--registrations",
            "4000",
            "--concurrency",
            "16",
            "--lookup-ms",
            "300",
            "--json",
        ],
        LIMIT,
    );
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for key in [
        "shard.register_ops_per_s",
        "shard.lookup_ops_per_s",
        "e2e.k4.register_ops_per_s",
        "e2e.k4.lookup_p50_us",
        "e2e.k4.lookup_p99_us",
        "mem.bytes_per_session",
    ] {
        let v = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {json}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(json["shard.sessions"].as_f64(), Some(20000.0));
    assert_eq!(json["e2e.k4.registrations"].as_f64(), Some(4000.0));
    let p50 = json["e2e.k4.lookup_p50_us"].as_f64().unwrap_or(f64::NAN);
    let p99 = json["e2e.k4.lookup_p99_us"].as_f64().unwrap_or(f64::NAN);
    assert!(p50 <= p99, "p50 {p50} <= p99 {p99}");
    if cfg!(target_os = "linux") {
        // Worker CPU time is read from /proc: some was spent registering (10 ms ticks, so
        // zero is possible only if 4000 registrations took under a tick on every worker).
        let cpu = json["e2e.k4.cpu_us_per_register"]
            .as_f64()
            .unwrap_or_else(|| panic!("e2e.k4.cpu_us_per_register missing in {json}"));
        assert!(cpu.is_finite() && cpu >= 0.0, "cpu_us_per_register = {cpu}");
    }
    assert!(json.get("failed").is_none(), "{json}");
}
