//! meshreg: a distributed process registry and service discovery for Rust services.
pub use meshreg_membership as membership;
pub use meshreg_registry as registry;

pub mod node;
pub mod transport;

pub use meshreg_membership::{MemberEvent, NodeId, Profile};
pub use meshreg_registry::Pid;
pub use node::{
    Backend, DownReason, Message, Node, NodeBuilder, NodeConfig, NodeError, Policy, Process,
    SessionKey, Sessions,
};
