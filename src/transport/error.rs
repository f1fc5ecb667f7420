//! The transport's error types: [`TransportError`] for setting a transport up, [`SendError`] for
//! handing it a frame.

use std::fmt;
use std::net::SocketAddrV4;

/// Why a transport could not start. Always the caller's (configuration) or the host's (socket)
/// fault; nothing was left running.
#[derive(Debug)]
pub enum TransportError {
    /// A setting of [`TransportConfig`](super::TransportConfig) is invalid.
    InvalidConfig {
        /// The name of the offending setting, as spelled in the struct.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Binding a socket failed (address in use, not a local address, ...).
    Bind {
        /// The address we tried to bind.
        addr: SocketAddrV4,
        /// `"tcp"` or `"udp"`.
        protocol: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig { setting, reason } => {
                write!(f, "invalid transport setting `{setting}`: {reason}")
            }
            Self::Bind {
                addr,
                protocol,
                source,
            } => write!(f, "cannot bind {protocol} socket to {addr}: {source}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
            Self::InvalidConfig { .. } => None,
        }
    }
}

/// Why a frame was not queued. Nothing was sent and no state changed; the caller decides whether
/// to retry, drop or back off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The peer's bounded send queue is full (counted in `queue_full`).
    QueueFull,
    /// No link can carry it: the transport is shut down, or the destination is this node.
    Closed,
    /// The payload is larger than the frame cap (a caller bug).
    TooLarge {
        /// Payload length.
        len: usize,
        /// The cap ([`TransportConfig::max_frame`](super::TransportConfig::max_frame)).
        max: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => write!(f, "the peer's send queue is full"),
            Self::Closed => write!(f, "no link can carry the frame (shut down, or to self)"),
            Self::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte cap")
            }
        }
    }
}

impl std::error::Error for SendError {}
