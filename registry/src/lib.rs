//! Sans-IO registries for meshreg: process groups and the session manager.
//!
//! This crate grows with the process-groups and session-manager work; today it holds the
//! identifiers every registry shares.

pub mod core;
pub mod groups;

pub use crate::core::{CallError, MessageError, RegistryOutput, RequestId};

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
