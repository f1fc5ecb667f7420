//! [`SessionManager`]: one node's session-manager core — placement, the shards this node
//! serves, and the client side of every session call made on this node.
//!
//! Sans-IO like every meshreg core: the driver feeds `(now, input)` (a call, a membership
//! event, the set of session-role nodes, a message, a timer) and carries out the
//! [`SessionOutput`]s; nothing here reads a clock or opens a socket.
//!
//! - `placement.rs` ([`Placement`]): key -> shard by a stable hash; per shard, live session
//!   nodes ranked by rendezvous weight: rank 0 primary, rank 1 standby.
//! - `node.rs`: the state, the membership view and input dispatch.
//! - `server.rs`: the [`Shard`](crate::session::Shard)s this node is primary or standby of:
//!   epoch recovery rounds, promotion, filling standbys, fencing, dropping Down nodes.
//! - `client.rs`: routing calls to primaries (batched per destination and instant), retries
//!   with the same request id until a definite answer or the deadline, ownership of local
//!   sessions and their re-assertion after a failover.
//! - `wire.rs` ([`ManagerMessage`]): postcard in a `Kind::Session` envelope, on streams.
//! - `shard_map.rs`: per-shard state (replicas, epochs, ownership) found by indexing on the
//!   shard number, iterated in shard order.
//!
//! # Protocol
//!
//! **Epochs.** An epoch is `term << 48 | address` (the 48-bit IPv4 address and port of the
//! node that starts the term). Epochs are totally ordered, and two nodes never pick the same
//! one since their low bits differ; a node picks `term` above every epoch it learned. A shard
//! can go through 65,535 terms.
//!
//! **Becoming primary.** A node that finds itself rank 0 of a shard it does not serve first
//! asks every live session node for the highest epoch it has seen for that shard (a recovery
//! round, re-asked every tick until each answered or went Down), then takes the next term.
//! If it was the standby it promotes its replica (which holds every acknowledged write);
//! otherwise it serves an empty shard and the owners re-assert. It then fills rank 1 as its
//! standby (a [`Snapshot`](crate::session::Snapshot) in `Fill`) and announces the term
//! (`Terms`) to every live node. Requests arriving during the round wait for it.
//!
//! **Stepping down.** A primary that is no longer rank 0 in its view stops serving (held
//! replies are answered `NotPrimary`, clients retry at the new primary). A primary that learns
//! of a newer epoch from its standby is fenced by the shard itself. Graceful handoff to a newly
//! joined higher-ranked node is not implemented: the new node serves empty and re-assertion
//! refills it (reads in between may miss, counted as stale reads by the simulator).
//!
//! **Ownership.** A node remembers every session of its local processes that a primary
//! acknowledged. When a new term of a shard is announced (or a request learns of a newer
//! epoch), it re-asserts them there (`Body::Reassert`, 1024 per request, reject semantics); a
//! `Taken` answer, or a `Replaced` notice, reports [`SessionOutput::Lost`]. An acknowledgement
//! from an older term than the last re-asserted one is re-asserted at once (it may have missed
//! the re-assertion).
//!
//! Architecture Invariants:
//! - one writer per epoch: only the node whose address is in an epoch's low bits serves it;
//! - a call completes exactly once: `Completed` with the shard's definite answer (retries use
//!   the same request id, so the shard answers the original outcome), a refusal that changed
//!   nothing, or `Unavailable` once [`ManagerConfig::call_deadline`] passed;
//! - iteration is in key order (`BTreeMap`s, shard-indexed maps; requests in flight are kept
//!   by id and acted on in id order): outputs depend only on the inputs.

mod client;
mod node;
mod placement;
mod server;
mod shard_map;
pub mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::{Channel, NodeId};

pub use node::{ManagerStats, SessionManager};
pub use placement::{DEFAULT_SHARDS, Placement, shard_of, weight};
pub use wire::ManagerMessage;

use crate::Pid;
use crate::session::{Outcome, SessionError, SessionKey, ShardConfig};

/// Identifies one call of the local node until it completes (chosen by the caller).
pub type CallId = u64;

/// Timers of a [`SessionManager`]. Stale ones are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionTimer {
    /// Send the requests queued in this instant (armed with a zero delay, so every call made at
    /// one `now` travels in one message per primary).
    Flush,
    /// Periodic upkeep: retransmissions to standbys, recovery re-asks, role checks.
    Tick,
    /// A request that found no primary, or was refused for routing, is due again: re-send it
    /// (if `arming` is still current). Overdue replies are swept by `Tick` instead.
    Retry {
        /// The request's wire id.
        id: u64,
        /// Which arming this is.
        arming: u32,
    },
}

/// What a [`SessionManager`] asks its driver to do. Closed: tests compare exact outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// Send enveloped bytes (`Kind::Session`) to the node at `to`.
    Send {
        /// Destination.
        to: SocketAddrV4,
        /// Always `Stream`.
        channel: Channel,
        /// Enveloped bytes.
        payload: Vec<u8>,
    },
    /// Call `handle_timer(timer)` after `after`.
    SetTimer {
        /// Delay from the `now` of the call that produced it.
        after: Duration,
        /// The timer.
        timer: SessionTimer,
    },
    /// The local call `req` finished.
    Completed {
        /// The call.
        req: CallId,
        /// The shard's answer (shaped like the call: `One`, or `Many` for `lookup_many`).
        result: Result<Outcome, SessionCallError>,
    },
    /// Node `0`, a replication partner of this node, was silent for
    /// [`ManagerConfig::suspect_silent_after`]: as a primary it sent nothing (not even the
    /// per-tick keepalive) to this standby, or as a standby it acknowledged none of the
    /// replication this primary waits for. The driver hands it to the membership core, which
    /// may suspect it at once (SWIM) instead of waiting for its probe to come round, so a
    /// silent primary fails over after the suspicion time rather than probe period plus
    /// suspicion time. A live node refutes the suspicion as after any other.
    Suspect(NodeId),
    /// A local process lost its session: another registration replaced it, or a re-assertion
    /// found the key taken.
    Lost {
        /// The key.
        key: SessionKey,
        /// The local process that held it.
        pid: Pid,
    },
}

/// Why a session call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCallError {
    /// The caller's mistake or a shard's refusal (oversized key or metadata, with the limit
    /// named; a retry too old to be answered): nothing changed.
    Refused(SessionError),
    /// The pid is not a process of this node: nothing was sent.
    ForeignPid(Pid),
    /// No primary gave a definite answer before the deadline. The call may have been applied
    /// only if a primary acknowledged it to a link that then broke: read the key to know.
    Unavailable(String),
}

impl fmt::Display for SessionCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "refused, nothing changed: {e}"),
            Self::ForeignPid(p) => write!(f, "{p:?} is not a process of this node"),
            Self::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl std::error::Error for SessionCallError {}

/// Settings of a [`SessionManager`]; every node must agree on `shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Number of shards ([`DEFAULT_SHARDS`]).
    pub shards: u32,
    /// Limits and hash seed of the shards this node serves.
    pub shard: ShardConfig,
    /// Period of the upkeep timer.
    pub tick: Duration,
    /// How long a request waits for its reply before it is sent again (checked every `tick`,
    /// so a re-send happens between this and this plus `tick`).
    pub request_timeout: Duration,
    /// Longest wait between retries after a routing refusal (doubling from 10 ms).
    pub backoff_max: Duration,
    /// A call not answered within this completes `Unavailable`. Must outlast failure detection
    /// plus a failover, so that calls end definite in every single failure.
    pub call_deadline: Duration,
    /// Sessions per re-assertion request.
    pub reassert_chunk: usize,
    /// A replication partner silent this long is reported as a suspect
    /// ([`SessionOutput::Suspect`]); `None` never reports. Primaries send a keepalive to each
    /// standby every `tick` they sent it nothing else, so silence means a paused, cut off or
    /// dead partner (or one starved for this long).
    pub suspect_silent_after: Option<Duration>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            shards: DEFAULT_SHARDS,
            shard: ShardConfig::default(),
            tick: Duration::from_millis(100),
            request_timeout: Duration::from_millis(300),
            backoff_max: Duration::from_millis(100),
            call_deadline: Duration::from_secs(60),
            reassert_chunk: 1024,
            suspect_silent_after: Some(Duration::from_millis(500)),
        }
    }
}

impl ManagerConfig {
    /// Settings for a timer profile with `shards` shards: the call deadline outlasts the
    /// profile's failure detection plus a failover, so every call of a single failure ends
    /// definite.
    pub fn for_profile(profile: meshreg_membership::Profile, shards: u32) -> Self {
        use meshreg_membership::Profile;
        let call_deadline = match profile {
            Profile::Lan => Duration::from_secs(60),
            Profile::Wan => Duration::from_secs(300),
            Profile::Test => Duration::from_secs(20),
        };
        Self {
            shards,
            call_deadline,
            ..Self::default()
        }
    }
}

pub(crate) type Out = Vec<SessionOutput>;
