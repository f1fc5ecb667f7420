//! Messages of the gossip backend, postcard inside a [`Kind::Groups`] envelope.
//!
//! | message | channel | purpose |
//! |---|---|---|
//! | [`GroupsMsg::Deltas`] | datagram | periodic gossip: recent owner deltas, at most one datagram |
//! | [`GroupsMsg::Digest`] | datagram | anti-entropy step 1: owner count + summary hash |
//! | [`GroupsMsg::Buckets`] | datagram | step 2, summaries differ: the 64 bucket digests |
//! | [`GroupsMsg::Versions`] | stream | step 3: the sender's owner versions in the differing buckets (all buckets: a full sync) |
//! | [`GroupsMsg::States`] | stream | step 4: full states of owners the peer is behind on, plus the owners wanted back |
//! | [`GroupsMsg::Pull`] | stream | gap repair / new peer: "send me these owners' full states" |
//!
//! Architecture Invariant: decoding is bounded by the input (postcard takes a slice of the
//! declared length before copying it, serde pre-allocates cautiously) and every count is checked
//! against a cap right after decoding, before anything is applied; hostile bytes give an error,
//! never a panic.

use crdts::Dot;
use meshreg_membership::NodeId;
use meshreg_membership::swim::digest::{BUCKETS, Bucket};
use meshreg_membership::wire::{self, Kind};
use serde::{Deserialize, Serialize};

use crate::groups::{GroupName, ScopeName};

/// Most owners one [`GroupsMsg::Versions`], [`GroupsMsg::States`] or [`GroupsMsg::Pull`] may
/// name (a 10x margin over the largest cluster we size for, like SWIM's push cap).
pub const MAX_OWNERS_PER_MSG: usize = 200_000;
/// Most memberships one owner state may carry.
pub const MAX_ENTRIES_PER_OWNER: usize = 1_000_000;
/// Most deltas in one [`GroupsMsg::Deltas`] (a datagram cannot hold more anyway).
pub const MAX_DELTAS_PER_MSG: usize = 1_400;

/// One change of an owner's memberships. The owner is the [`Delta::dot`]'s actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// One occurrence of pid `serial` joined.
    Join {
        /// Scope of the group.
        scope: ScopeName,
        /// The group.
        group: GroupName,
        /// The pid's serial on the owner node.
        serial: u64,
        /// The occurrence's metadata (empty for none).
        meta: Box<[u8]>,
    },
    /// One occurrence of pid `serial` left; `meta` names which one (occurrences of one pid in one
    /// group may differ by metadata only).
    Leave {
        /// Scope of the group.
        scope: ScopeName,
        /// The group.
        group: GroupName,
        /// The pid's serial on the owner node.
        serial: u64,
        /// The metadata of the occurrence removed.
        meta: Box<[u8]>,
    },
    /// Pid `serial` ended: every occurrence of it left.
    Exit {
        /// The pid's serial on the owner node.
        serial: u64,
    },
}

/// A stamped change: `dot.actor` is the owner (with generation), `dot.counter` the owner's
/// version after the change. A replica applies it iff it holds exactly `counter - 1` of that
/// owner generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Owner and version.
    pub dot: Dot<NodeId>,
    /// The change.
    pub op: Op,
}

/// One membership of an owner (the pid's node is the owner).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Scope of the group.
    pub scope: ScopeName,
    /// The group.
    pub group: GroupName,
    /// The pid's serial on the owner node.
    pub serial: u64,
    /// Metadata (empty for none).
    pub meta: Box<[u8]>,
}

impl Entry {
    /// The entry an op names.
    pub fn of(scope: &ScopeName, group: &GroupName, serial: u64, meta: &[u8]) -> Self {
        Self {
            scope: scope.clone(),
            group: group.clone(),
            serial,
            meta: meta.into(),
        }
    }
}

/// The full membership set of one owner at one version (anti-entropy unit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerState {
    /// The owner, with generation.
    pub owner: NodeId,
    /// Its version.
    pub version: u64,
    /// Every membership it holds, as a multiset.
    pub entries: Vec<Entry>,
}

/// A gossip-backend message. Every message names its sender with generation, so a message
/// from an older incarnation of an address is recognised and refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupsMsg {
    /// Recent deltas (of any owner), gossiped each round to a few random peers.
    Deltas {
        /// Sender.
        from: NodeId,
        /// Deltas, in no particular order.
        deltas: Vec<Delta>,
    },
    /// The sender's version-digest summary.
    Digest {
        /// Sender.
        from: NodeId,
        /// Owners with a version in the sender's view.
        count: u32,
        /// Summary hash over (owner, version).
        hash: u64,
    },
    /// The responder's per-bucket version digests, when the summaries differ.
    Buckets {
        /// Sender.
        from: NodeId,
        /// Exactly [`BUCKETS`] entries.
        buckets: Vec<Bucket>,
    },
    /// The sender's owner versions in the buckets of `mask`.
    Versions {
        /// Sender.
        from: NodeId,
        /// Buckets covered (`u64::MAX`: all, a full sync).
        mask: u64,
        /// (owner, version) of every owner the sender holds in those buckets.
        versions: Vec<Dot<NodeId>>,
    },
    /// Full states, and owners whose states the sender wants back.
    States {
        /// Sender.
        from: NodeId,
        /// Owner states the receiver is behind on (or asked for).
        states: Vec<OwnerState>,
        /// Owners on which the sender is behind the receiver.
        want: Vec<NodeId>,
    },
    /// "Send me the full states of these owners."
    Pull {
        /// Sender.
        from: NodeId,
        /// Owners wanted.
        owners: Vec<NodeId>,
    },
}

impl GroupsMsg {
    /// The sender.
    pub fn from(&self) -> NodeId {
        match self {
            Self::Deltas { from, .. }
            | Self::Digest { from, .. }
            | Self::Buckets { from, .. }
            | Self::Versions { from, .. }
            | Self::States { from, .. }
            | Self::Pull { from, .. } => *from,
        }
    }

    /// Enveloped bytes for `cluster`.
    pub fn encode(&self, cluster: u32) -> Vec<u8> {
        let buf = wire::begin(Kind::Groups, cluster, 64);
        // Serialising plain data into a Vec cannot fail; if it ever did, the empty payload is
        // refused by the receiver as malformed rather than misread.
        postcard::to_extend(self, buf).unwrap_or_else(|_| wire::begin(Kind::Groups, cluster, 0))
    }

    /// Decodes a payload (envelope removed) and checks every count against its cap.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        let msg: Self = postcard::from_bytes(payload).map_err(|e| format!("groups: {e}"))?;
        let within = |len: usize, cap: usize, what: &str| {
            if len > cap {
                Err(format!("groups: {len} {what}, over the cap of {cap}"))
            } else {
                Ok(())
            }
        };
        match &msg {
            Self::Deltas { deltas, .. } => within(deltas.len(), MAX_DELTAS_PER_MSG, "deltas")?,
            Self::Digest { .. } => {}
            Self::Buckets { buckets, .. } => {
                if buckets.len() != BUCKETS {
                    return Err(format!("groups: {} buckets, not {BUCKETS}", buckets.len()));
                }
            }
            Self::Versions { versions, .. } => {
                within(versions.len(), MAX_OWNERS_PER_MSG, "owner versions")?;
            }
            Self::States { states, want, .. } => {
                within(states.len(), MAX_OWNERS_PER_MSG, "owner states")?;
                within(want.len(), MAX_OWNERS_PER_MSG, "wanted owners")?;
                for s in states {
                    within(s.entries.len(), MAX_ENTRIES_PER_OWNER, "entries")?;
                }
            }
            Self::Pull { owners, .. } => within(owners.len(), MAX_OWNERS_PER_MSG, "owners")?,
        }
        Ok(msg)
    }
}

/// An [`Op`] that borrows its names and metadata from the received bytes. Same encoding:
/// postcard writes a name as length and bytes either way, and `Box<[u8]>` as a length and
/// one byte per element, which is how `&[u8]` is read.
#[derive(Debug, Deserialize)]
pub(crate) enum OpRef<'a> {
    Join {
        #[serde(borrow)]
        scope: &'a str,
        #[serde(borrow)]
        group: &'a str,
        serial: u64,
        #[serde(borrow)]
        meta: &'a [u8],
    },
    Leave {
        #[serde(borrow)]
        scope: &'a str,
        #[serde(borrow)]
        group: &'a str,
        serial: u64,
        #[serde(borrow)]
        meta: &'a [u8],
    },
    Exit {
        serial: u64,
    },
}

/// A [`Delta`] borrowing from the received bytes. A node receives each delta about
/// `max_transmissions` times and applies it once: duplicates are recognised by their dot
/// alone, without allocating the two names an owned [`Delta`] holds.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaRef<'a> {
    pub(crate) dot: Dot<NodeId>,
    #[serde(borrow)]
    pub(crate) op: OpRef<'a>,
}

impl DeltaRef<'_> {
    /// The owned delta. Infallible for a delta from [`decode_deltas`], which checked the names.
    pub(crate) fn to_owned(&self) -> Result<Delta, crate::groups::GroupError> {
        let op = match self.op {
            OpRef::Exit { serial } => Op::Exit { serial },
            OpRef::Join {
                scope,
                group,
                serial,
                meta,
            }
            | OpRef::Leave {
                scope,
                group,
                serial,
                meta,
            } => {
                let (scope, group) = (ScopeName::new(scope)?, GroupName::new(group)?);
                let meta = meta.into();
                if matches!(self.op, OpRef::Join { .. }) {
                    Op::Join {
                        scope,
                        group,
                        serial,
                        meta,
                    }
                } else {
                    Op::Leave {
                        scope,
                        group,
                        serial,
                        meta,
                    }
                }
            }
        };
        Ok(Delta { dot: self.dot, op })
    }
}

/// The postcard variant index of [`GroupsMsg::Deltas`] (its first variant): one byte.
const DELTAS_TAG: u8 = 0;

/// Decodes `payload` as a [`GroupsMsg::Deltas`] borrowing from it: `None` if it is another
/// message (decode it with [`GroupsMsg::decode`]), else the sender and the deltas, with the
/// same checks as `decode` (count cap, name lengths).
pub(crate) fn decode_deltas(payload: &[u8]) -> Option<Result<(NodeId, Vec<DeltaRef<'_>>), String>> {
    let (&tag, body) = payload.split_first()?;
    if tag != DELTAS_TAG {
        return None;
    }
    // A struct variant's fields are encoded as a tuple after the tag.
    let decoded: Result<(NodeId, Vec<DeltaRef<'_>>), _> = postcard::from_bytes(body);
    Some(
        decoded
            .map_err(|e| format!("groups: {e}"))
            .and_then(|(from, deltas)| {
                if deltas.len() > MAX_DELTAS_PER_MSG {
                    return Err(format!(
                        "groups: {} deltas, over the cap of {MAX_DELTAS_PER_MSG}",
                        deltas.len()
                    ));
                }
                for d in &deltas {
                    if let OpRef::Join { scope, group, .. } | OpRef::Leave { scope, group, .. } =
                        d.op
                    {
                        let long = scope.len().max(group.len());
                        if long > crate::groups::NAME_MAX_BYTES {
                            return Err(format!(
                                "groups: a name of {long} bytes, over the cap of {}",
                                crate::groups::NAME_MAX_BYTES
                            ));
                        }
                    }
                }
                Ok((from, deltas))
            }),
    )
}

/// Encoded size of `value` in postcard, for packing datagrams (0 if it cannot be encoded).
pub(crate) fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_allocvec(value).map_or(0, |v| v.len())
}

/// An upper bound of an owner state's encoded size, without encoding it (for splitting
/// frames): postcard spends at most 10 bytes on a u64 and 5 on a length.
pub(crate) fn state_len_bound(state: &OwnerState) -> usize {
    let entries: usize = state
        .entries
        .iter()
        .map(|e| e.scope.as_str().len() + e.group.as_str().len() + e.meta.len() + 25)
        .sum();
    entries + 40
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;
    use proptest::prelude::*;

    fn node(i: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 7000), 2)
    }

    fn entry(group: &str, serial: u64) -> Entry {
        Entry {
            scope: ScopeName::new("s").expect("short"),
            group: GroupName::new(group).expect("short"),
            serial,
            meta: Box::from(&b"m"[..]),
        }
    }

    #[test]
    fn every_message_round_trips_through_the_envelope() {
        let from = node(1);
        let op = Op::Join {
            scope: ScopeName::new("s").expect("short"),
            group: GroupName::new("g").expect("short"),
            serial: 7,
            meta: Box::default(),
        };
        for msg in [
            GroupsMsg::Deltas {
                from,
                deltas: vec![Delta {
                    dot: Dot::new(node(2), 3),
                    op,
                }],
            },
            GroupsMsg::Digest {
                from,
                count: 3,
                hash: 9,
            },
            GroupsMsg::Buckets {
                from,
                buckets: vec![Bucket::default(); BUCKETS],
            },
            GroupsMsg::Versions {
                from,
                mask: 5,
                versions: vec![Dot::new(node(3), 4)],
            },
            GroupsMsg::States {
                from,
                states: vec![OwnerState {
                    owner: node(3),
                    version: 4,
                    entries: vec![entry("g", 1)],
                }],
                want: vec![node(4)],
            },
            GroupsMsg::Pull {
                from,
                owners: vec![node(5)],
            },
        ] {
            let bytes = msg.encode(7);
            let (kind, payload) = wire::open(&bytes, 7, wire::MAX_FRAME_PAYLOAD).expect("envelope");
            assert_eq!(kind, Kind::Groups);
            assert_eq!(GroupsMsg::decode(payload), Ok(msg));
        }
    }

    #[test]
    fn a_bucket_list_of_the_wrong_length_is_refused() {
        let msg = GroupsMsg::Buckets {
            from: node(1),
            buckets: vec![Bucket::default(); 3],
        };
        let bytes = msg.encode(7);
        assert_eq!(
            GroupsMsg::decode(&bytes[wire::HEADER_LEN..]),
            Err("groups: 3 buckets, not 64".to_owned())
        );
    }

    #[test]
    fn the_state_size_bound_is_an_upper_bound() {
        let state = OwnerState {
            owner: NodeId::new(loopback_addr(9_999, 65_535), u32::MAX),
            version: u64::MAX,
            entries: (0..20)
                .map(|i| entry("a-group-name", u64::MAX - i))
                .collect(),
        };
        assert!(encoded_len(&state) <= state_len_bound(&state));
    }

    fn sample_deltas() -> GroupsMsg {
        let op = |i: u64| match i % 3 {
            0 => Op::Join {
                scope: ScopeName::new("scope").expect("short"),
                group: GroupName::new(&format!("group-{i}")).expect("short"),
                serial: u64::MAX - i,
                meta: Box::from(&b"meta"[..]),
            },
            1 => Op::Leave {
                scope: ScopeName::new("s").expect("short"),
                group: GroupName::new("").expect("short"),
                serial: i,
                meta: Box::default(),
            },
            _ => Op::Exit { serial: i },
        };
        GroupsMsg::Deltas {
            from: node(1),
            deltas: (0..9)
                .map(|i| Delta {
                    dot: Dot::new(node(i as u32), i + 1),
                    op: op(i),
                })
                .collect(),
        }
    }

    #[test]
    fn borrowed_deltas_decode_to_the_owned_ones() {
        let msg = sample_deltas();
        let bytes = msg.encode(7);
        let payload = &bytes[wire::HEADER_LEN..];
        let (from, refs) = decode_deltas(payload)
            .expect("a deltas message")
            .expect("decodes");
        let owned: Vec<Delta> = refs.iter().map(|d| d.to_owned().expect("valid")).collect();
        assert_eq!(
            GroupsMsg::Deltas {
                from,
                deltas: owned
            },
            msg
        );
    }

    #[test]
    fn other_messages_are_left_to_the_owned_decoder() {
        let msg = GroupsMsg::Pull {
            from: node(1),
            owners: vec![node(2)],
        };
        let bytes = msg.encode(7);
        assert!(decode_deltas(&bytes[wire::HEADER_LEN..]).is_none());
        assert!(decode_deltas(&[]).is_none());
    }

    #[test]
    fn a_borrowed_name_over_the_cap_is_refused() {
        // Encoded by hand: the owned types cannot hold such a name.
        let long = "x".repeat(crate::groups::NAME_MAX_BYTES + 1);
        let body = postcard::to_allocvec(&(
            node(1),
            vec![(
                Dot::new(node(2), 1),
                0u32,
                "s",
                long.as_str(),
                1u64,
                &b""[..],
            )],
        ))
        .expect("encodes");
        let mut payload = vec![DELTAS_TAG];
        payload.extend_from_slice(&body);
        let err = decode_deltas(&payload)
            .expect("deltas")
            .expect_err("refused");
        assert!(err.contains("over the cap"), "{err}");
        assert!(GroupsMsg::decode(&payload).is_err());
    }

    proptest! {
        #[test]
        fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = GroupsMsg::decode(&bytes);
            let _ = decode_deltas(&bytes);
        }

        /// The borrowed decoder accepts exactly what the owned one accepts as `Deltas`, with
        /// the same content, on corrupted encodings of a valid message.
        #[test]
        fn prop_both_decoders_agree(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
            let bytes = sample_deltas().encode(7);
            let mut payload = bytes[wire::HEADER_LEN..].to_vec();
            for (at, value) in flips {
                let n = payload.len();
                payload[at % n] = value;
            }
            let owned = GroupsMsg::decode(&payload);
            match decode_deltas(&payload) {
                None => {
                    let deltas = matches!(owned, Ok(GroupsMsg::Deltas { .. }));
                    prop_assert!(!deltas);
                }
                Some(Err(_)) => prop_assert!(owned.is_err()),
                Some(Ok((from, refs))) => {
                    let deltas: Vec<Delta> = refs.iter().map(|d| d.to_owned().expect("checked")).collect();
                    prop_assert_eq!(owned, Ok(GroupsMsg::Deltas { from, deltas }));
                }
            }
        }
    }
}
