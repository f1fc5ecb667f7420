//! The group table: scopes, groups and members with Erlang `pg` semantics, shared by both
//! discovery backends (the coordinated tables and the CRDT gossip tables build on it).
//!
//! [`GroupTable`] is sans-IO and single-node: it holds what one node knows (its own
//! memberships and the replicated ones of other nodes), applies changes, and reports each
//! change as an ordered [`GroupEvent`] for monitor streams.
//!
//! - Names: [`ScopeName`], [`GroupName`] (at most [`NAME_MAX_BYTES`], shared `Arc<str>`).
//! - Members are [`Pid`](crate::Pid)s with a count (a pid joined `k` times is listed `k` times)
//!   and per-occurrence metadata (capped by [`GroupTableConfig::meta_cap_bytes`]).
//! - A group with no member does not exist; a scope exists from its first join on.
//! - Reads ([`Members`], [`Groups`], [`GroupsOf`], [`NodeMemberships`]) borrow denormalised
//!   lists: the cluster-wide and the local members of a group are both materialised.
//! - Every refusal is a [`GroupError`] and leaves the table unchanged.
//! - [`GroupTable::heap_bytes`] accounts the table's memory exactly.
//!
//! The layout (each group's occurrences inline in one list of 20-byte entries, a 20-byte record
//! per occurrence as its stable handle, positions for O(1) `swap_remove`) and its invariants are
//! described in `layout.rs`.

mod error;
mod event;
pub(crate) mod heap;
mod layout;
mod name;
mod reads;
mod replace;
mod slab;
mod table;

pub use error::{GroupError, NameKind};
pub use event::{EventKind, GroupEvent, Membership};
pub use name::{GroupName, NAME_MAX_BYTES, ScopeName};
pub use reads::{
    Groups, GroupsOf, Member, Members, MembershipRef, NodeMemberships, PidMemberships,
};
pub use replace::Replaced;
pub use table::{DEFAULT_META_CAP_BYTES, GroupTable, GroupTableConfig};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prop_tests;
