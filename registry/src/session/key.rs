//! Session keys and the size limits every request is checked against.

use serde::{Deserialize, Serialize};

/// The key of a session.
///
/// `U64` is the fast path (phone numbers, user ids): stored inline in an 8-byte map key. `Bytes`
/// is anything else. The two are distinct namespaces: `U64(5)` and `Bytes([5, 0, 0, 0, 0, 0, 0,
/// 0])` are different keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SessionKey {
    /// An integer key.
    U64(u64),
    /// An opaque byte-string key of at most [`Limits::key_bytes_max`] bytes.
    Bytes(Box<[u8]>),
}

impl SessionKey {
    /// The key's size as counted against [`Limits::key_bytes_max`] (8 for `U64`).
    pub fn len_bytes(&self) -> usize {
        match self {
            Self::U64(_) => 8,
            Self::Bytes(b) => b.len(),
        }
    }

    /// Heap bytes owned by the key.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::U64(_) => 0,
            Self::Bytes(b) => b.len(),
        }
    }
}

impl From<u64> for SessionKey {
    fn from(k: u64) -> Self {
        Self::U64(k)
    }
}

impl From<&[u8]> for SessionKey {
    fn from(k: &[u8]) -> Self {
        Self::Bytes(k.into())
    }
}

impl From<&str> for SessionKey {
    fn from(k: &str) -> Self {
        Self::Bytes(k.as_bytes().into())
    }
}

/// Size limits of a shard. A request over any of them is refused whole, naming the limit, and
/// changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes (default 256).
    pub key_bytes_max: usize,
    /// Largest metadata value in bytes (default 256).
    pub metadata_bytes_max: usize,
    /// Most calls (or re-assertions) in one request (default 4096): bounds the work and the
    /// reply size of one request.
    pub calls_per_request_max: usize,
    /// Answers remembered per client node for retries (default 256).
    ///
    /// Bound: a client's window holds the outcomes of its requests whose ids are at or above the
    /// `answered_below` it last sent, at most this many. Past the bound the oldest outcome is
    /// forgotten and a retry of it is refused with [`SessionError::RetryExpired`]: the client
    /// must then read the key to learn the outcome. A client that keeps at most this many
    /// requests in flight per shard never sees that error. Memory is at most
    /// `live client nodes x dedupe_window` outcomes; a client's window goes when its node goes
    /// down ([`Shard::drop_node`](crate::session::Shard::drop_node)).
    ///
    /// [`SessionError::RetryExpired`]: crate::session::SessionError::RetryExpired
    pub dedupe_window: usize,
    /// Replication messages a standby buffers ahead of a gap (default 65,536); later ones are
    /// dropped and come back through [`Shard::retransmit`](crate::session::Shard::retransmit).
    pub replica_buffer_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            key_bytes_max: 256,
            metadata_bytes_max: 256,
            calls_per_request_max: 4096,
            dedupe_window: 256,
            replica_buffer_max: 65_536,
        }
    }
}
