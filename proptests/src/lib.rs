//! The meshreg deterministic simulator, scenarios and property-suite support.
//!
//! - [`sim`]: the discrete-event simulator ([`sim::Sim`]) with its network model and the
//!   [`sim::Observer`] that tracks ground truth and convergence.
//! - [`stack`]: re-export of `meshreg_registry::stack` (a node's membership core and backend).
//! - [`groups`]: process-group workloads and their measurements, for both backends.
//! - [`history`]: a run's calls, table events and membership facts on one timeline, and the
//!   invariants checked against it.
//! - [`sessions`]: session-manager workloads (failover scenarios) and their checks.
//! - [`faults`]: random fault schedules for the property suites.
//! - [`scenario`]: boots a cluster, injects a fault scenario, measures and reports; shared by the
//!   `meshreg sim` CLI and the property suites in `tests/`.

pub mod faults;
pub mod groups;
pub mod history;
pub mod scenario;
pub mod sessions;
pub mod sim;
pub use meshreg_registry::stack;

/// Case count of a property suite: `PROPTEST_CASES` when set (as for proptest's own default
/// config, so the README's `PROPTEST_CASES=20000 cargo test ...` runs longer searches), else the
/// suite's committed count. Why a function: a literal `cases` in `ProptestConfig` overrides the
/// environment, and each suite's committed count is chosen to keep CI within its budget.
pub fn cases(committed: u32) -> u32 {
    cases_from(std::env::var("PROPTEST_CASES").ok().as_deref(), committed)
}

fn cases_from(env: Option<&str>, committed: u32) -> u32 {
    match env.map(str::trim) {
        Some(v) => v.parse().unwrap_or_else(|_| {
            panic!("PROPTEST_CASES must be a whole number of cases, got {v:?}")
        }),
        None => committed,
    }
}

#[cfg(test)]
mod tests {
    use super::cases_from;

    #[test]
    fn the_environment_overrides_the_committed_case_count() {
        assert_eq!(cases_from(None, 12), 12);
        assert_eq!(cases_from(Some("20000"), 12), 20_000);
        assert_eq!(cases_from(Some(" 7 "), 12), 7);
    }

    #[test]
    #[should_panic(expected = "PROPTEST_CASES must be a whole number")]
    fn a_malformed_case_count_is_refused_by_name() {
        cases_from(Some("lots"), 12);
    }
}
