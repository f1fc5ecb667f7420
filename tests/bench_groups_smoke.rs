//! Smoke test of `meshreg bench groups`: every unit runs at 1% of its size, all nodes in one
//! process, coordinated backend, and reports every key it promises with a sensible value.
//! Speed is never asserted here: targets live in the benchmarks' output, not in tests.

mod common;

use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn bench_groups_at_one_percent_reports_every_key() {
    let json = coordinated_at_one_percent(&[]);
    assert_eq!(json["backend"], "coordinated");
    assert_eq!(json["processes"], false);
    let mut keys: Vec<String> = [
        "single.join_seq.1g_100",
        "single.leave_seq.1g_100",
        "single.join_batch.1g_100",
        "single.join_seq.10kg_1k",
        "single.leave_seq.10kg_1k",
        "single.get_members.10kg_1k",
        "single.get_members_vec.10kg_1k",
        "single.mem_node_total.10kg_1k",
        "single.exit_cleanup.10kg_1k",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    for k in [2, 4, 8] {
        for op in ["join", "leave"] {
            for q in [
                "all_nodes.p50",
                "all_nodes.p99",
                "one_node.p50",
                "one_node.p99",
            ] {
                keys.push(format!("prop.k{k}.{op}.{q}"));
            }
        }
        keys.push(format!("bulk.10kg_1k.k{k}.converge"));
        keys.push(format!("bulk.10kg_1k.k{k}.verified"));
        keys.push(format!("nodedown.sigkill.100m.k{k}.median"));
        keys.push(format!("nodedown.sigkill.100m.k{k}.max"));
    }
    for key in &keys {
        let v = json[key.as_str()]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing from {json}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    // Resident-set growth of a thousand memberships may round to zero pages: present and finite.
    let rss = json["single.mem_rss.10kg_1k"].as_f64();
    assert!(
        rss.is_some_and(f64::is_finite),
        "single.mem_rss.10kg_1k = {rss:?}"
    );
}

/// Runs `meshreg bench groups --backend coordinated --scale 0.01 --json` plus `args`.
fn coordinated_at_one_percent(args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "bench",
        "groups",
        "--backend",
        "coordinated",
        "--scale",
        "0.01",
        "--json",
    ];
    all.extend_from_slice(args);
    let out = common::run_meshreg(&all, LIMIT);
    serde_json::from_str(out.trim()).expect("one JSON object")
}

#[test]
fn bulk_with_concurrent_callers_lists_every_membership() {
    let json = coordinated_at_one_percent(&["--only", "bulk.k2", "--bulk-callers", "16"]);
    assert_eq!(json["bulk_callers"], "16");
    assert_eq!(
        json["bulk.10kg_1k.k2.verified"].as_f64(),
        Some(1.0),
        "{json}"
    );
}

#[test]
fn bulk_with_detached_joins_in_worker_processes_lists_every_membership() {
    let json = coordinated_at_one_percent(&["--only", "bulk.k2", "--bulk-detached", "--processes"]);
    assert_eq!(json["bulk_detached"], "true");
    assert_eq!(
        json["bulk.10kg_1k.k2.verified"].as_f64(),
        Some(1.0),
        "{json}"
    );
}

#[test]
fn worker_processes_on_a_current_thread_runtime_report_propagation() {
    let json =
        coordinated_at_one_percent(&["--only", "prop.k2", "--processes", "--worker-threads", "0"]);
    assert_eq!(json["processes"], true);
    assert_eq!(json["worker_threads"], "0");
    let p50 = json["prop.k2.join.all_nodes.p50"].as_f64();
    assert!(p50.is_some_and(|v| v > 0.0), "{json}");
}

#[test]
fn worker_threads_out_of_range_is_refused_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshreg"))
        .args([
            "bench",
            "groups",
            "--backend",
            "gossip",
            "--worker-threads",
            "65",
        ])
        .output()
        .expect("run meshreg");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads"), "{err}");
}
