//! Sans-IO cluster membership for meshreg.
//!
//! Two cores implement [`MembershipCore`], and both report [`MemberEvent::Up`] /
//! [`MemberEvent::Down`]:
//!
//! - [`Swim`]: SWIM failure detection and dissemination by `foca`, plus meshreg's own
//!   anti-entropy (full pull from a seed on join, periodic bucketed digest exchange with a random
//!   peer, re-announce when alone). The gossip backend's membership; scales to 10,000+ nodes with
//!   flat per-node traffic.
//! - [`Mesh`]: every node links to every other; up/down from link state and heartbeat timeouts.
//!   The coordinated backend's membership; hundreds of nodes.
//!
//! Supporting types: [`NodeId`] (address + generation), [`Profile`] (timer sets), and the
//! versioned packet envelope in [`wire`].
//!
//! Nothing here reads a clock, opens a socket or spawns a thread: drivers feed `now` and carry out
//! the [`Output`]s.

mod core;
mod id;
pub mod mesh;
mod profile;
pub mod swim;
pub mod wire;

pub use crate::core::{Channel, Error, LinkEvent, MemberEvent, MembershipCore, Output, Time};
pub use id::{NodeId, loopback_addr, loopback_index, mix64};
pub use mesh::Mesh;
pub use profile::{Profile, UnknownProfile};
pub use swim::Swim;
