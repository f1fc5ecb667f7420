//! The node runtime's errors. Each says who is at fault and whether anything changed.

use std::fmt;

use meshreg_registry::groups::GroupError;
use meshreg_registry::session::manager::SessionCallError;
use meshreg_registry::{CallError, Pid};

use crate::transport::TransportError;

/// Why a node call failed.
#[derive(Debug)]
pub enum NodeError {
    /// A setting is invalid (the caller's mistake); nothing was started.
    Config {
        /// The setting at fault, as named in [`NodeConfig`](super::NodeConfig).
        setting: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The transport could not start (address in use, permission).
    Transport(TransportError),
    /// A group call was refused (the caller's mistake: remote pid, over-cap metadata, not
    /// joined, bad name) or the cluster could not order it now (`Unavailable`, safe to retry).
    /// Either way nothing changed.
    Group(CallError),
    /// A session call failed: refused (oversized key or metadata, with the limit named; a pid
    /// of another node), or no primary answered before the deadline.
    Session(SessionCallError),
    /// `register` with [`Policy::Reject`](super::Policy::Reject): another live process
    /// holds the key; nothing changed.
    Taken {
        /// The holder.
        holder: Pid,
    },
    /// `unregister` by a process that does not hold the key: nothing changed.
    NotHolder {
        /// The actual holder, if any.
        holder: Option<Pid>,
    },
    /// The scope is reserved for the node itself ([`ROLES_SCOPE`](super::ROLES_SCOPE)):
    /// readable, but processes cannot join or leave it.
    ReservedScope(String),
    /// The destination process does not exist on this node.
    NoProcess(Pid),
    /// The message could not be encoded (the caller's type failed to serialise).
    Encode(String),
    /// The link to the destination node is closed or its queue refused the frame.
    Send(String),
    /// The node is shutting down or has shut down.
    Stopped,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { setting, why } => write!(f, "invalid setting `{setting}`: {why}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Group(e) => write!(f, "group call: {e}"),
            Self::Session(e) => write!(f, "session call: {e}"),
            Self::Taken { holder } => write!(f, "taken by {holder:?}, nothing changed"),
            Self::NotHolder { holder: Some(h) } => {
                write!(f, "not the holder, nothing changed (held by {h:?})")
            }
            Self::NotHolder { holder: None } => {
                write!(f, "not the holder, nothing changed (the key is free)")
            }
            Self::ReservedScope(s) => write!(f, "scope {s:?} is reserved for the node itself"),
            Self::NoProcess(pid) => write!(f, "no process {pid:?} on this node"),
            Self::Encode(e) => write!(f, "message could not be encoded: {e}"),
            Self::Send(e) => write!(f, "send failed: {e}"),
            Self::Stopped => write!(f, "the node has shut down"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<CallError> for NodeError {
    fn from(e: CallError) -> Self {
        Self::Group(e)
    }
}

impl From<GroupError> for NodeError {
    fn from(e: GroupError) -> Self {
        Self::Group(CallError::Group(e))
    }
}

impl From<SessionCallError> for NodeError {
    fn from(e: SessionCallError) -> Self {
        Self::Session(e)
    }
}

impl From<TransportError> for NodeError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}
