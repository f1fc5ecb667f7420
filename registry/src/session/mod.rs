//! The session manager's shard: a sans-IO state machine mapping keys to processes.
//!
//! A session is `key -> (pid, metadata, version)`: for example a phone number to the process
//! holding that user's session. The key space is cut into shards; each shard has a **primary**
//! that serialises every write and a **standby** that holds a copy. This module is one shard,
//! driven like every meshreg core: the driver feeds inputs, the shard appends [`Output`]s to a
//! vector, nothing here reads a clock, opens a socket or spawns a thread.
//!
//! Important types:
//! - [`Shard`]: the state machine (roles, epochs, replication, fencing, re-assertion).
//! - [`Request`] / [`Body`] / [`Call`]: what a client asks; [`Reply`] / [`Outcome`] / [`Answer`]:
//!   what it gets back; [`SessionError`]: why a request was refused (state never changed).
//! - [`Replicate`] / [`ReplicaAck`]: primary-to-standby replication of [`LogOp`]s.
//! - [`Replaced`]: the notice sent to the node of a process whose key was taken by `Replace`.
//! - [`SessionKey`]: `U64` (the fast path, e.g. phone numbers) or `Bytes`; [`Limits`].
//! - [`Snapshot`]: the state a new standby is filled from.
//! - [`wire`]: postcard encoding of the messages above, with a decoder that never panics.
//!
//! # Semantics
//!
//! - Writes are linearizable per key: the primary applies requests one at a time in the order it
//!   receives them and numbers each mutating request with a sequence number (`seq`). A key's
//!   `version` is the `seq` of the write that last set it.
//! - A reply is released only once the standby has acknowledged every `seq` the reply may depend
//!   on (reads included), so a client never sees state that a failover could take back.
//! - Every mutating request carries `(client node, request id)`. A retry of an applied request
//!   returns the original outcome and applies nothing (see [`Limits::dedupe_window`] for the bound).
//! - Requests carry the epoch the client believes in. A shard only serves requests of its own
//!   epoch, and only as primary; anything else is a retryable [`SessionError`].
//!
//! # Performance and memory
//!
//! u64 keys live in a compact open-addressing table (32 bytes per bucket, node ids interned,
//! metadata out of line): 53.7 bytes per session at 10 M sessions, with [`Shard::heap_bytes`]
//! exact. At that size every probe is a DRAM miss, so [`Shard::handle_requests`] takes the
//! requests of one link read together and reads the table ahead for all of them, overlapping
//! their misses; batches ([`Body::Batch`]) do the same internally. The benchmark is
//! `meshreg bench sessions --only shard` (in the facade crate's CLI).
//!
//! # Invariants (tested in `shard/tests.rs` and `tests/props.rs`)
//!
//! - **One holder.** A shard holds at most one pid per key; a primary of epoch `e` is the only
//!   writer of epoch `e`, so there are never two holders of a key in one epoch.
//! - **Acknowledged writes survive a primary crash.** A reply leaves the primary only after the
//!   standby applied the write, and the standby's state equals the primary's acknowledged prefix
//!   (the standby replays the same [`LogOp`]s deterministically, dedupe records included), so a
//!   promoted standby answers a retry with the original outcome.
//! - **Refusals change nothing.** A refused request (any [`SessionError`]), an unregister by a
//!   non-holder and a `Reject` registration of a taken key leave sessions untouched.

mod dedupe;
mod hash;
mod int_map;
mod key;
pub mod manager;
mod message;
mod shard;
mod state;
mod table;
pub mod wire;

#[cfg(test)]
mod tests;

pub use key::{Limits, SessionKey};
pub use message::{
    Answer, Body, Call, Epoch, LogOp, Outcome, Output, Policy, Reassertion, Replaced, ReplicaAck,
    Replicate, Reply, Request, RequestId, Seq, Session, SessionError, ShardId,
};
pub use shard::{Role, RoleError, Shard, ShardConfig, Snapshot};
