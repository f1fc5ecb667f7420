//! The coordinated discovery backend: group writes serialised per partition by a boss node and
//! applied on every live node before the call returns (the Erlang `global` shape, one lock
//! holder per partition), over the full-mesh membership.
//!
//! [`CoordinatedGroups`] is sans-IO: the driver feeds `(now, input)` and carries out the
//! [`RegistryOutput`](crate::RegistryOutput)s; every message is a [`Message`] (postcard in a
//! `Kind::Boss` envelope, on streams).
//!
//! - Placement (`placement.rs`): `(scope, group)` -> partition by a stable hash; the boss of
//!   a partition is the live node with the highest rendezvous weight.
//! - Requester (`requester.rs`): a local `join`/`leave` goes to the boss as `Request`, is
//!   retried on a timer or when the boss changes, and completes on `Done`; at most
//!   `max_in_flight` requests per node are on the wire, the rest wait in order.
//! - Boss (`boss.rs`): per partition a [`term`](BossTimer::Term) with an epoch; recovers the
//!   partition from every live node before serving, orders ops by `seq`, sends `Apply` to
//!   every live node and answers `Done` once all acknowledged; re-sends to a node whose acks
//!   stall (the runtime drops frames on full peer queues).
//! - Replica (`replica.rs`): applies a partition's ops strictly in seq order, accepts boss
//!   messages only from its view's boss with a current epoch, reports/replaces state.
//! - Watch (`watch.rs`): memberships of an identity never seen Up here are dropped when the
//!   node they came from sees that identity Down.
//!
//! Architecture Invariants:
//! - Read-your-write: when `Completed(Ok)` is emitted, every node that was live in the boss's
//!   view (and every node that came Up meanwhile) has applied the op. A completed `leave` is
//!   therefore never undone: any later recovery adopts a state at least as new.
//! - Each op is applied at most once per partition history: `(requester, ticket)` is kept in a
//!   replicated dedupe window, so retries after a boss failure are safe, and a boss knows the
//!   origins it still awaits acks for apart from the window. Limit: a retry that arrives after
//!   its op completed and the partition ordered more ops than the window holds is ordered again
//!   (it takes a lost `Done`; see `loss_tests.rs`).
//! - A Down node's memberships are removed by every node on its Down (or on the first sign of
//!   a newer generation at its address, whichever comes first: a later Down of a tombstoned
//!   generation removes nothing), and ops whose origin is a generation declared Down never
//!   reach the table again. A node that holds memberships of an identity it never saw Up
//!   removes them when the node it got them from declares that identity Down (`Watch`/`Gone`,
//!   `watch.rs`), unless it sees it Up itself by then.
//! - Pids name their node by its root (`NodeId::root`). A node that renews its identity (it
//!   was declared Down but kept running) re-joins every local membership through the bosses
//!   under the new identity; after a partition heals, a boss's recovery takes each reporting
//!   node's own memberships from that node's report, so re-joins ordered on either side
//!   survive the merge.
//! - Iteration order of all state is `BTreeMap` order: outputs depend only on the inputs.

mod boss;
mod groups;
pub mod message;
mod partition_map;
mod placement;
mod replica;
mod requester;
mod stats;
mod watch;

pub use groups::{BossTimer, CoordinatedConfig, CoordinatedGroups, DEFAULT_PARTITIONS_PER_SCOPE};
pub use message::{Message, NackReason, Op, PartitionState, Refusal, Refused, Ticket};
pub use placement::{boss_of, partition_of};
pub use stats::BossStats;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod loss_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
