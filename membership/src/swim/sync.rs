//! Anti-entropy messages exchanged between two SWIM nodes.
//!
//! One round, initiated by A towards a random peer B:
//!
//! 1. A → B `Digest` (datagram): A's active-member count and summary hash.
//! 2. If B's summary differs: B → A `Buckets` (datagram): B's 64 bucket digests.
//! 3. A → B `Push` (stream): A's members in the differing buckets, `want` = those buckets,
//!    and the size of A's live set.
//! 4. B applies them and answers `Push` with its own members in `want`, `want` = 0.
//!
//! A joining node sends `Push { members: [itself], want: ALL }` to a seed: a full pull.
//! In steady state a round is one ~25-byte datagram each way at most.

use serde::{Deserialize, Serialize};

use super::digest::{BUCKETS, Bucket};
use crate::NodeId;
use crate::wire::{self, Kind, WireError};

/// Most members one `Push` may carry (a 10x margin over the largest cluster we size for).
pub const MAX_PUSH_MEMBERS: usize = 200_000;

/// An anti-entropy message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// "My view summarises to this": sent each round to one random peer.
    Digest {
        /// Sender.
        from: NodeId,
        /// Active members in the sender's view.
        count: u32,
        /// Summary hash of the sender's view.
        hash: u64,
    },
    /// The responder's per-bucket digests, when the summaries differ.
    Buckets {
        /// Sender.
        from: NodeId,
        /// Exactly [`BUCKETS`] entries.
        buckets: Vec<Bucket>,
    },
    /// Member states (active and Down) of the sender in some buckets.
    Push {
        /// Sender.
        from: NodeId,
        /// Active members in the sender's view, itself included: a receiver that holds the
        /// sender Down trusts its Down records only if this is at least its own count.
        live: u32,
        /// Buckets whose members the sender wants back (0: none).
        want: u64,
        /// The sender's members in the buckets it pushes, itself included.
        members: Vec<foca::Member<NodeId>>,
    },
}

impl SyncMsg {
    /// The sender.
    pub fn from(&self) -> NodeId {
        match self {
            Self::Digest { from, .. } | Self::Buckets { from, .. } | Self::Push { from, .. } => {
                *from
            }
        }
    }

    /// Enveloped bytes for `cluster`.
    pub fn encode(&self, cluster: u32) -> Vec<u8> {
        let mut buf = wire::begin(Kind::AntiEntropy, cluster, 32);
        // Serialising plain data into a Vec cannot fail; an empty payload would be refused by
        // the receiver rather than misread.
        if let Ok(b) = postcard::to_extend(self, buf) {
            buf = b;
        } else {
            buf = wire::begin(Kind::AntiEntropy, cluster, 0);
        }
        buf
    }

    /// Decodes a payload (envelope already removed), checking sizes.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let msg: Self =
            postcard::from_bytes(payload).map_err(|_| WireError::Malformed("anti-entropy"))?;
        match &msg {
            Self::Buckets { buckets, .. } if buckets.len() != BUCKETS => {
                Err(WireError::Malformed("anti-entropy bucket list"))
            }
            Self::Push { members, .. } if members.len() > MAX_PUSH_MEMBERS => {
                Err(WireError::Malformed("anti-entropy push (too many members)"))
            }
            _ => Ok(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback_addr;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let from = NodeId::new(loopback_addr(1, 7000), 3);
        for msg in [
            SyncMsg::Digest {
                from,
                count: 10,
                hash: 99,
            },
            SyncMsg::Buckets {
                from,
                buckets: vec![Bucket::default(); BUCKETS],
            },
            SyncMsg::Push {
                from,
                live: 4,
                want: 5,
                members: vec![foca::Member::alive(from)],
            },
        ] {
            let bytes = msg.encode(7);
            let (kind, payload) = wire::open(&bytes, 7, wire::MAX_FRAME_PAYLOAD).expect("envelope");
            assert_eq!(kind, Kind::AntiEntropy);
            assert_eq!(SyncMsg::decode(payload), Ok(msg));
        }
    }

    #[test]
    fn digest_datagram_is_small() {
        let from = NodeId::new(loopback_addr(9_999, 7000), u32::MAX);
        let bytes = SyncMsg::Digest {
            from,
            count: 10_000,
            hash: u64::MAX,
        }
        .encode(1);
        assert!(bytes.len() <= 40, "{} bytes", bytes.len());
    }

    #[test]
    fn a_bucket_list_of_the_wrong_length_is_refused() {
        let from = NodeId::new(loopback_addr(1, 7000), 3);
        let bytes = SyncMsg::Buckets {
            from,
            buckets: vec![Bucket::default(); 3],
        }
        .encode(7);
        assert!(SyncMsg::decode(&bytes[wire::HEADER_LEN..]).is_err());
    }

    proptest! {
        #[test]
        fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SyncMsg::decode(&bytes);
        }
    }
}
