//! Postcard encoding of the messages replicas and clients exchange.
//!
//! The node runtime puts these bytes inside meshreg's versioned envelope
//! (`meshreg_membership::wire`). Architecture Invariant: [`decode`] never panics and refuses
//! input over [`MAX_MESSAGE_BYTES`] before parsing; lengths inside are bounded by the input
//! (postcard fails on a length longer than the bytes left, and serde pre-allocates at most
//! 1 MiB per sequence whatever length is claimed). Limits on keys, metadata and calls are the
//! shard's ([`Limits`](super::Limits)): a decoded request over them is refused by name.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::message::{Replaced, ReplicaAck, Replicate, Reply, Request};

/// Largest encoded message accepted: a full batch (4096 calls of a 256-byte key and 256-byte
/// metadata) with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Every message of the session protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMessage {
    /// Client to primary.
    Request(Request),
    /// Primary (or any replica refusing) to client.
    Reply(Reply),
    /// Primary to standby.
    Replicate(Replicate),
    /// Standby to primary.
    Ack(ReplicaAck),
    /// Primary to the node of a replaced process.
    Replaced(Replaced),
}

/// Why bytes were refused: the sender (peer) is at fault; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Over [`MAX_MESSAGE_BYTES`].
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not a well-formed message.
    Malformed(String),
    /// A well-formed message followed by extra bytes.
    TrailingBytes {
        /// How many.
        len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "session message of {len} bytes exceeds {max}")
            }
            Self::Malformed(e) => write!(f, "malformed session message: {e}"),
            Self::TrailingBytes { len } => write!(f, "{len} bytes after a session message"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encode `msg`. The result may exceed [`MAX_MESSAGE_BYTES`] only if the request broke the
/// shard's limits, which a sender checks first.
pub fn encode(msg: &SessionMessage) -> Vec<u8> {
    // Serialising these types into a growable Vec has no failure mode (no maps with non-string
    // keys, no unsized sequences); an empty vector would be refused by `decode`.
    postcard::to_allocvec(msg).unwrap_or_default()
}

/// Decode one message occupying all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<SessionMessage, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<SessionMessage>(bytes)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { len: rest.len() });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pid;
    use crate::session::{Body, Call, LogOp, Policy, RequestId, SessionKey, ShardId};
    use meshreg_membership::{NodeId, loopback_addr};
    use proptest::prelude::*;

    fn node(i: u32, generation: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), generation)
    }

    fn arb_key() -> impl Strategy<Value = SessionKey> {
        prop_oneof![
            any::<u64>().prop_map(SessionKey::U64),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| SessionKey::Bytes(v.into_boxed_slice())),
        ]
    }

    fn arb_call() -> impl Strategy<Value = Call> {
        let pid = (0u32..5, 0u32..3, any::<u64>()).prop_map(|(n, g, serial)| Pid {
            node: node(n, g),
            serial,
        });
        prop_oneof![
            (
                arb_key(),
                pid.clone(),
                proptest::collection::vec(any::<u8>(), 0..20),
                any::<bool>()
            )
                .prop_map(|(key, pid, m, replace)| Call::Register {
                    key,
                    pid,
                    metadata: m.into_boxed_slice(),
                    policy: if replace {
                        Policy::Replace
                    } else {
                        Policy::Reject
                    },
                }),
            (arb_key(), pid).prop_map(|(key, pid)| Call::Unregister { key, pid }),
            arb_key().prop_map(|key| Call::Lookup { key }),
        ]
    }

    fn arb_message() -> impl Strategy<Value = SessionMessage> {
        let id = (0u32..5, any::<u64>()).prop_map(|(n, id)| RequestId {
            client: node(n, 1),
            id,
        });
        prop_oneof![
            (
                id.clone(),
                proptest::collection::vec(arb_call(), 0..5),
                any::<u64>()
            )
                .prop_map(|(id, calls, epoch)| SessionMessage::Request(Request {
                    shard: ShardId(3),
                    epoch,
                    id,
                    answered_below: id.id / 2,
                    body: Body::Batch(calls),
                })),
            (id, arb_call(), any::<u64>()).prop_map(|(id, call, seq)| {
                SessionMessage::Replicate(Replicate {
                    shard: ShardId(1),
                    epoch: 2,
                    seq,
                    op: LogOp::Request {
                        id,
                        answered_below: 0,
                        body: Body::One(call),
                    },
                })
            }),
            any::<u64>().prop_map(|seq| SessionMessage::Ack(ReplicaAck {
                shard: ShardId(9),
                epoch: 4,
                seq,
            })),
        ]
    }

    proptest! {
        #[test]
        fn prop_decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn prop_encoded_messages_round_trip(msg in arb_message()) {
            prop_assert_eq!(decode(&encode(&msg)), Ok(msg));
        }

        #[test]
        fn prop_mutated_encodings_never_panic(msg in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            // Valid structure with a few corrupted bytes reaches deeper decoder paths than
            // random bytes do.
            let mut bytes = encode(&msg);
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= b;
                }
            }
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::TooLarge {
                len: MAX_MESSAGE_BYTES + 1,
                max: MAX_MESSAGE_BYTES
            })
        );
    }

    #[test]
    fn a_huge_claimed_length_fails_without_allocating_it() {
        // Request variant, then a shard id, epoch, request id... and a batch claiming 2^60 calls.
        let mut bytes = encode(&SessionMessage::Request(Request {
            shard: ShardId(0),
            epoch: 0,
            id: RequestId {
                client: node(0, 0),
                id: 0,
            },
            answered_below: 0,
            body: Body::Batch(Vec::new()),
        }));
        bytes.pop(); // the empty batch's length
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }
}
