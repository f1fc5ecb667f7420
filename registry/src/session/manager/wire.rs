//! The session manager's messages between nodes: postcard inside a `Kind::Session` envelope,
//! always on `Channel::Stream` (per-peer FIFO).
//!
//! Architecture Invariant: [`decode`] never panics and refuses input over
//! [`MAX_MANAGER_MESSAGE_BYTES`] before parsing; every length inside is bounded by the input
//! (postcard fails on a length longer than the bytes left). Limits on keys, metadata and calls
//! are the shard's ([`Limits`](crate::session::Limits)): a decoded request over them is refused
//! by the shard, by name.

use meshreg_membership::wire::{self, Kind, MAX_FRAME_PAYLOAD};
use serde::{Deserialize, Serialize};

use crate::MessageError;
use crate::session::{Epoch, Replaced, ReplicaAck, Replicate, Reply, Request, ShardId, Snapshot};

/// Largest payload accepted: a snapshot of a large shard must fit one stream frame.
pub const MAX_MANAGER_MESSAGE_BYTES: usize = MAX_FRAME_PAYLOAD;

/// Every message between session managers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerMessage {
    /// Client to primary: requests queued in one instant for that node (a batch on the link).
    Requests(Vec<Request>),
    /// Primary (or a refusing replica) to client: the replies released in one input.
    Replies(Vec<Reply>),
    /// Primary to standby: the log entries of one input, in `seq` order per shard (one
    /// message per standby node however many entries and shards).
    Replicate(Vec<Replicate>),
    /// Standby to primary (or to a stale primary, to fence it): cumulative acknowledgements
    /// of one input, at most one per shard.
    Acks(Vec<ReplicaAck>),
    /// Primary to the node of a process whose key a `Replace` took.
    Replaced(Replaced),
    /// Primary to its new standby: the state to fill it from.
    Fill(Snapshot),
    /// A node about to become primary of these shards asks for the highest epoch seen.
    EpochQuery {
        /// Matches the answer to the asking round.
        round: u64,
        /// The shards.
        shards: Vec<ShardId>,
    },
    /// The answer: per shard, the highest epoch this node has seen (0: none).
    EpochReport {
        /// The round asked.
        round: u64,
        /// Highest epoch seen per shard asked.
        epochs: Vec<(ShardId, Epoch)>,
    },
    /// A primary started serving these terms: owners of sessions there re-assert them.
    Terms(Vec<(ShardId, Epoch)>),
    /// A primary removed the receiver's sessions from these shards because an identity of it
    /// went Down: if it still runs (as a renewed identity), it re-asserts them.
    Dropped(Vec<ShardId>),
}

/// Envelope `msg` for `cluster`.
pub fn encode(msg: &ManagerMessage, cluster: u32) -> Vec<u8> {
    // Serialised straight after the envelope header into a buffer sized for the usual entry:
    // one allocation and no copy per message (serialising into its own growing buffer and
    // then copying it behind the header reallocated a batch's buffer several times).
    let buf = wire::begin(Kind::Session, cluster, size_hint(msg));
    // Serialising these types into a growable Vec has no failure mode (no maps with non-string
    // keys, no unsized sequences); an empty payload would be refused by `decode`.
    postcard::to_extend(msg, buf).unwrap_or_else(|_| wire::begin(Kind::Session, cluster, 0))
}

/// Bytes `msg` usually takes: enough for a request, reply or log entry with a u64 key and no
/// metadata (larger ones grow the buffer, which stays correct).
fn size_hint(msg: &ManagerMessage) -> usize {
    const ENTRY: usize = 48;
    let entries = match msg {
        ManagerMessage::Requests(v) => v.len(),
        ManagerMessage::Replies(v) => v.len(),
        ManagerMessage::Replicate(v) => v.len(),
        ManagerMessage::Acks(v) => v.len(),
        _ => 1,
    };
    8 + ENTRY * entries
}

/// Open and decode one enveloped message.
pub fn decode(bytes: &[u8], cluster: u32) -> Result<ManagerMessage, MessageError> {
    let (kind, payload) = wire::open(bytes, cluster, MAX_MANAGER_MESSAGE_BYTES)?;
    if kind != Kind::Session {
        return Err(MessageError::Malformed(format!(
            "envelope kind {kind:?} is not a session message"
        )));
    }
    let (msg, rest) = postcard::take_from_bytes::<ManagerMessage>(payload)
        .map_err(|e| MessageError::Malformed(format!("session message: {e}")))?;
    if !rest.is_empty() {
        return Err(MessageError::Malformed(format!(
            "{} bytes after a session message",
            rest.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pid;
    use crate::session::{Body, Call, Policy, RequestId, SessionKey};
    use meshreg_membership::{NodeId, loopback_addr};
    use proptest::prelude::*;

    fn node(i: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), 1 << 16)
    }

    fn arb_message() -> impl Strategy<Value = ManagerMessage> {
        let req =
            (0u32..4, any::<u64>(), any::<u64>(), 0u32..1024).prop_map(|(n, id, k, s)| Request {
                shard: ShardId(s),
                epoch: id ^ k,
                id: RequestId {
                    client: node(n),
                    id,
                },
                answered_below: id / 2,
                body: Body::One(Call::Register {
                    key: SessionKey::U64(k),
                    pid: Pid {
                        node: node(n),
                        serial: k,
                    },
                    metadata: vec![1, 2, 3].into_boxed_slice(),
                    policy: Policy::Reject,
                }),
            });
        prop_oneof![
            proptest::collection::vec(req, 0..4).prop_map(ManagerMessage::Requests),
            (any::<u64>(), proptest::collection::vec(0u32..1024, 0..8)).prop_map(|(round, s)| {
                ManagerMessage::EpochQuery {
                    round,
                    shards: s.into_iter().map(ShardId).collect(),
                }
            }),
            proptest::collection::vec((0u32..1024, any::<u64>()), 0..8).prop_map(|v| {
                ManagerMessage::Terms(v.into_iter().map(|(s, e)| (ShardId(s), e)).collect())
            }),
        ]
    }

    proptest! {
        #[test]
        fn prop_hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 9);
            // Behind a valid envelope, the payload parser is reached too.
            let _ = decode(&wire::seal(Kind::Session, 9, &bytes), 9);
        }

        #[test]
        fn prop_messages_round_trip(msg in arb_message()) {
            prop_assert_eq!(decode(&encode(&msg, 5), 5), Ok(msg));
        }

        #[test]
        fn prop_mutated_messages_never_panic(msg in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&msg, 5);
            for (at, b) in flips {
                let i = 8 + at % (bytes.len() - 8).max(1);
                if i < bytes.len() {
                    bytes[i] ^= b;
                }
            }
            let _ = decode(&bytes, 5);
        }
    }

    #[test]
    fn another_kind_or_trailing_bytes_are_refused() {
        let other = wire::seal(Kind::Boss, 5, &[0]);
        assert!(matches!(decode(&other, 5), Err(MessageError::Malformed(_))));
        let mut bytes = encode(&ManagerMessage::Terms(Vec::new()), 5);
        bytes.push(0);
        assert!(matches!(decode(&bytes, 5), Err(MessageError::Malformed(_))));
    }
}
