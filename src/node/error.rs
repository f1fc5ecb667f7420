//! The node runtime's errors. Each says who is at fault and whether anything changed.

use std::fmt;

use meshreg_registry::groups::GroupError;
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

impl From<TransportError> for NodeError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}
