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
