//! Everything that crosses the shard boundary: requests, replies, replication messages,
//! notices, and the closed [`Output`] enum.

use std::fmt;
use std::net::SocketAddrV4;

use meshreg_membership::NodeId;
use serde::{Deserialize, Serialize};

use super::key::SessionKey;
use crate::Pid;

/// Fencing number of a shard term. A primary serves exactly one epoch; promotion raises it.
pub type Epoch = u64;

/// Position in a shard's replication log. Every mutating request, node drop and pid drop is one
/// log entry; a session's `version` is the `Seq` of the entry that last wrote it.
pub type Seq = u64;

/// Which slice of the key space a shard serves (placement maps keys to shards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u32);

/// Who sent a request and which one it is: the idempotency key. It is the crate's
/// [`RequestId`](crate::RequestId) (a call number local to a node) qualified by that node, since
/// a shard serves many client nodes.
///
/// Ids are chosen by the client node and must increase over its requests (gaps are fine, e.g.
/// one counter shared by all shards). A retry reuses the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The client node (its generation included: a restarted node is a new client).
    pub client: NodeId,
    /// The request's number at that client.
    pub id: crate::RequestId,
}

/// What `register` does when another process holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Keep the holder; answer [`Answer::Taken`].
    Reject,
    /// Take the key; answer [`Answer::Replaced`] and send [`Replaced`] to the old holder's node.
    Replace,
}

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Make `pid` the holder of `key`. Re-registering by the holder updates the metadata.
    Register {
        /// The key.
        key: SessionKey,
        /// The process to register.
        pid: Pid,
        /// Opaque metadata read back with the session; empty means none.
        metadata: Box<[u8]>,
        /// What to do if another process holds the key.
        policy: Policy,
    },
    /// Remove `key` if and only if `pid` holds it.
    Unregister {
        /// The key.
        key: SessionKey,
        /// The process that believes it holds the key.
        pid: Pid,
    },
    /// Read `key`.
    Lookup {
        /// The key.
        key: SessionKey,
    },
}

impl Call {
    /// The key this call is about.
    pub fn key(&self) -> &SessionKey {
        match self {
            Self::Register { key, .. } | Self::Unregister { key, .. } | Self::Lookup { key } => key,
        }
    }

    /// Whether the call may change state (and so goes through the log and the dedupe window).
    pub fn is_write(&self) -> bool {
        !matches!(self, Self::Lookup { .. })
    }

    fn metadata_len(&self) -> usize {
        match self {
            Self::Register { metadata, .. } => metadata.len(),
            Self::Unregister { .. } | Self::Lookup { .. } => 0,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.key().heap_bytes() + self.metadata_len()
    }
}

/// One session a node re-asserts after a failover (see [`Body::Reassert`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassertion {
    /// The key.
    pub key: SessionKey,
    /// The holder, a process of the re-asserting node.
    pub pid: Pid,
    /// Its metadata.
    pub metadata: Box<[u8]>,
}

/// The body of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// One call, answered by [`Outcome::One`].
    One(Call),
    /// Several calls applied in order as one atomic log entry, answered by [`Outcome::Many`] in
    /// the same order. `lookup_many` is a batch of lookups.
    Batch(Vec<Call>),
    /// After a failover, the client node re-asserts sessions it owns: each entry is registered
    /// with [`Policy::Reject`] (a holder already in the shard wins: it is at least as new as
    /// anything acknowledged, since the standby had every acknowledged write), answered per
    /// entry by [`Answer::Registered`] or [`Answer::Taken`]. Every pid must belong to the client
    /// node. Additive: entries not listed are left alone (a node's own unacknowledged unregisters
    /// are retried as such, so nothing stale remains once every retry is definite).
    Reassert(Vec<Reassertion>),
}

impl Body {
    /// A batch of lookups.
    pub fn lookup_many(keys: impl IntoIterator<Item = SessionKey>) -> Self {
        Self::Batch(keys.into_iter().map(|key| Call::Lookup { key }).collect())
    }

    /// Whether the body may change state.
    pub fn is_write(&self) -> bool {
        match self {
            Self::One(call) => call.is_write(),
            Self::Batch(calls) => calls.iter().any(Call::is_write),
            Self::Reassert(_) => true,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::One(call) => call.heap_bytes(),
            Self::Batch(calls) => {
                calls.capacity() * size_of::<Call>()
                    + calls.iter().map(Call::heap_bytes).sum::<usize>()
            }
            Self::Reassert(r) => {
                r.capacity() * size_of::<Reassertion>()
                    + r.iter()
                        .map(|r| r.key.heap_bytes() + r.metadata.len())
                        .sum::<usize>()
            }
        }
    }
}

/// A client's request to a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The shard the client routed to.
    pub shard: ShardId,
    /// The epoch the client believes the shard's primary serves.
    pub epoch: Epoch,
    /// Idempotency key; also what the reply is addressed to.
    pub id: RequestId,
    /// Every request of this client with an id below this has been answered (the client will
    /// not retry it), so the shard may forget those outcomes. 0 when unknown.
    pub answered_below: u64,
    /// What to do.
    pub body: Body,
}

/// A session as read back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The holder.
    pub pid: Pid,
    /// Its metadata (empty: none).
    pub metadata: Box<[u8]>,
    /// The [`Seq`] of the write that last set this session.
    pub version: Seq,
}

/// The answer to one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Answer {
    /// `pid` now holds the key (newly, or again with updated metadata, or because the previous
    /// holder belonged to an older generation of the same node and is therefore dead).
    Registered {
        /// The session's new version.
        version: Seq,
    },
    /// `pid` took the key from `old`, whose node is sent [`Replaced`].
    Replaced {
        /// The previous holder.
        old: Pid,
        /// The session's new version.
        version: Seq,
    },
    /// Another process holds the key (policy `Reject`); nothing changed.
    Taken {
        /// The holder.
        holder: Pid,
    },
    /// The key was removed.
    Unregistered,
    /// The caller does not hold the key; nothing changed.
    NotHolder {
        /// The actual holder, if any.
        holder: Option<Pid>,
    },
    /// The result of a lookup.
    Found(Option<Session>),
}

impl Answer {
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::Found(Some(s)) => s.metadata.len(),
            _ => 0,
        }
    }
}

/// The answers to a request, shaped like its [`Body`].
#[derive(Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// For [`Body::One`].
    One(Answer),
    /// For [`Body::Batch`] and [`Body::Reassert`], in request order.
    Many(Vec<Answer>),
}

// By hand, always inlined: every applied write clones its outcome into the retry window, and
// the derived clone was an out-of-line call (about 36 instructions) for what is usually a
// `Registered` answer, which owns no heap memory and is copied here field by field.
impl Clone for Outcome {
    #[inline(always)]
    fn clone(&self) -> Self {
        match self {
            Self::One(Answer::Registered { version }) => {
                Self::One(Answer::Registered { version: *version })
            }
            Self::One(a) => Self::One(a.clone()),
            Self::Many(v) => Self::Many(v.clone()),
        }
    }
}

impl Outcome {
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::One(a) => a.heap_bytes(),
            Self::Many(v) => {
                v.capacity() * size_of::<Answer>() + v.iter().map(Answer::heap_bytes).sum::<usize>()
            }
        }
    }
}

/// Why a request was refused. In every case **no state changed**; retrying the same request
/// (same id) is always safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionError {
    /// Routing: this node holds no such shard. Retryable after refreshing the shard map.
    UnknownShard {
        /// The shard asked for.
        shard: ShardId,
    },
    /// Routing: the client's epoch is older than the shard's. Retryable after refreshing.
    StaleEpoch {
        /// The shard's epoch.
        current: Epoch,
    },
    /// Routing: this replica is not the primary of the client's epoch (a standby, a fenced
    /// former primary, or a primary not yet promoted to the client's newer epoch). Retryable.
    NotPrimary {
        /// This replica's epoch.
        epoch: Epoch,
    },
    /// Caller: a key over [`Limits::key_bytes_max`](super::Limits::key_bytes_max).
    KeyTooLarge {
        /// Index of the offending call (or re-assertion) in the request.
        call: usize,
        /// Its key length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Caller: metadata over [`Limits::metadata_bytes_max`](super::Limits::metadata_bytes_max).
    MetadataTooLarge {
        /// Index of the offending call (or re-assertion) in the request.
        call: usize,
        /// Its metadata length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Caller: more calls than
    /// [`Limits::calls_per_request_max`](super::Limits::calls_per_request_max).
    TooManyCalls {
        /// Calls in the request.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Caller: a re-assertion names a pid of another node than the client.
    ForeignPid {
        /// Index of the offending re-assertion.
        call: usize,
        /// The pid.
        pid: Pid,
    },
    /// Caller: a retry of a request whose outcome the shard no longer remembers (its id is
    /// below the client's `answered_below`, or fell out of the dedupe window). The request may
    /// or may not have been applied: read the key to find out.
    RetryExpired {
        /// The request id.
        id: u64,
        /// The lowest id the shard still remembers for this client.
        floor: u64,
    },
}

impl SessionError {
    /// Whether the client should route the same request again (after refreshing its shard map).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::UnknownShard { .. } | Self::StaleEpoch { .. } | Self::NotPrimary { .. }
        )
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownShard { shard } => write!(f, "no such shard here: {}", shard.0),
            Self::StaleEpoch { current } => {
                write!(f, "stale epoch: the shard is at epoch {current}")
            }
            Self::NotPrimary { epoch } => write!(f, "not the primary (replica at epoch {epoch})"),
            Self::KeyTooLarge { call, len, max } => {
                write!(
                    f,
                    "call {call}: key of {len} bytes exceeds key_bytes_max = {max}"
                )
            }
            Self::MetadataTooLarge { call, len, max } => write!(
                f,
                "call {call}: metadata of {len} bytes exceeds metadata_bytes_max = {max}"
            ),
            Self::TooManyCalls { len, max } => {
                write!(f, "{len} calls exceed calls_per_request_max = {max}")
            }
            Self::ForeignPid { call, pid } => {
                write!(
                    f,
                    "re-assertion {call}: {pid:?} is not a process of the client node"
                )
            }
            Self::RetryExpired { id, floor } => write!(
                f,
                "request {id} is older than the retry window (remembered from {floor}): look the key up"
            ),
        }
    }
}

impl std::error::Error for SessionError {}

/// The reply to a request, addressed to `to.client`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request answered.
    pub to: RequestId,
    /// Its outcome, or why it was refused.
    pub result: Result<Outcome, SessionError>,
}

/// One entry of a shard's replication log: what the standby replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogOp {
    /// A mutating client request, replayed whole so the standby records the same outcome for
    /// retries.
    Request {
        /// Its idempotency key.
        id: RequestId,
        /// The client's `answered_below` (the standby prunes its dedupe window the same way).
        answered_below: u64,
        /// The request body.
        body: Body,
    },
    /// A node went down: remove its sessions and forget its retry window.
    DropNode(NodeId),
    /// A process ended: remove its sessions.
    DropPid(Pid),
}

impl LogOp {
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::Request { body, .. } => body.heap_bytes(),
            Self::DropNode(_) | Self::DropPid(_) => 0,
        }
    }
}

/// Primary to standby: apply `op` as log entry `seq` of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicate {
    /// The shard.
    pub shard: ShardId,
    /// The primary's epoch.
    pub epoch: Epoch,
    /// The entry's position; the standby applies entries in `seq` order, without gaps.
    pub seq: Seq,
    /// The entry.
    pub op: LogOp,
}

/// Standby to primary: "at `epoch`, I have applied every entry up to `seq`" (cumulative). An
/// `epoch` above the primary's tells it a newer term exists: the primary fences itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAck {
    /// The shard.
    pub shard: ShardId,
    /// The replica's epoch.
    pub epoch: Epoch,
    /// Highest entry applied.
    pub seq: Seq,
}

/// Notice to the node of a process that lost its key to a `Replace` registration. Sent once the
/// replacement is acknowledged (durable), never for an unacknowledged one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// The shard.
    pub shard: ShardId,
    /// The epoch of the write.
    pub epoch: Epoch,
    /// The key.
    pub key: SessionKey,
    /// The process that lost it.
    pub old: Pid,
    /// The process that took it.
    pub new: Pid,
    /// The session's new version.
    pub version: Seq,
}

// Every request pushes an `Output`; up to 128 bytes the push is an inline copy, past that a
// `memcpy` call (at 136 bytes that call was 4-5% of the samples of a shard filling up).
const _: () = assert!(size_of::<Output>() <= 128);

/// What a shard asks its driver to do. Closed: tests compare exact output vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a reply to `reply.to.client`.
    Reply(Reply),
    /// Send a log entry to the standby.
    Replicate {
        /// The standby's address. An address, not a `NodeId`: the entry goes to whatever
        /// listens there (a restarted node holds no replica of the shard and drops it), and
        /// so this output, the most frequent after a reply, fits in 128 bytes, which keeps
        /// every push of an `Output` an inline copy rather than a `memcpy` call.
        to: SocketAddrV4,
        /// The entry.
        msg: Replicate,
    },
    /// Send an acknowledgement to the primary (or to a stale primary, to fence it).
    Ack {
        /// The primary.
        to: NodeId,
        /// The acknowledgement.
        msg: ReplicaAck,
    },
    /// Tell a node one of its processes lost a key.
    Notify {
        /// The old holder's node.
        to: NodeId,
        /// The notice.
        msg: Replaced,
    },
    /// This replica learned of a newer epoch and stopped serving (event for the driver, which
    /// refreshes its shard map; a fenced replica is only revived from a [`Snapshot`]).
    ///
    /// [`Snapshot`]: super::Snapshot
    Fenced {
        /// The shard.
        shard: ShardId,
        /// The newer epoch.
        epoch: Epoch,
    },
}
