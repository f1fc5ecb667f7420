//! meshreg: a distributed process registry and service discovery for Rust services.
pub use meshreg_membership as membership;
pub use meshreg_registry as registry;
pub mod transport;
