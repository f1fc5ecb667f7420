//! Sans-IO registries for meshreg: process groups and the session manager.
//!
//! - [`Pid`]: a process (node + serial).
//! - [`groups`]: the group table both discovery backends build on ([`groups::GroupTable`]):
//!   scopes, groups, multi-join members with metadata, O(1) borrowed reads, ordered events.
//! - [`core`](mod@crate::core): what the discovery backends share with their drivers
//!   ([`RegistryOutput`], [`CallError`], [`MessageError`], [`RegistryCore`]).
//! - [`crdt`]: the gossip backend ([`crdt::GossipGroups`]); [`coordinated`]: the boss-node
//!   backend ([`coordinated::CoordinatedGroups`]); [`session`]: the session-manager shard.
//! - [`stack`]: one node's membership core and backend run together ([`stack::Stack`]), as
//!   both drivers run them; [`session_stack`]: the same plus the session manager
//!   ([`session::manager::SessionManager`]).

pub mod coordinated;
pub mod core;
pub mod crdt;
pub mod groups;
pub mod session;
pub mod session_stack;
pub mod stack;

pub use crate::core::{CallError, MessageError, RegistryCore, RegistryOutput, RequestId};

use meshreg_membership::NodeId;
use serde::{Deserialize, Serialize};

/// A process: its node plus a serial local to that node. Totally ordered, `Copy`, cheap to hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid {
    /// The node (with generation) the process lives on.
    pub node: NodeId,
    /// Serial of the process on its node, never reused within a generation.
    pub serial: u64,
}
