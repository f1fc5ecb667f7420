//! What coordinated-backend nodes say to each other: postcard inside a [`Kind::Boss`] envelope,
//! always on [`Channel::Stream`](meshreg_membership::Channel::Stream) (reliable FIFO per peer).
//!
//! Decoding is bounded: the envelope caps the frame at [`MAX_FRAME_PAYLOAD`], names are capped
//! by their own deserialisers, serde preallocates at most a cautious size hint, and
//! [`decode`] then checks the counts and metadata sizes before anything reaches the table.

use meshreg_membership::NodeId;
use meshreg_membership::wire::{self, Kind, MAX_FRAME_PAYLOAD};
use serde::{Deserialize, Serialize};

use crate::groups::{GroupName, ScopeName};
use crate::{MessageError, Pid, RequestId};

/// Most memberships one `State`/`Sync` message may carry.
pub const MAX_STATE_ENTRIES: usize = 1_000_000;
/// Most dedupe entries one `State`/`Sync` message may carry.
pub const MAX_DEDUPE_ENTRIES: usize = 65_536;
/// Most identities one `Watch`/`Gone` message may carry.
pub const MAX_WATCH_NODES: usize = 65_536;
/// Most messages one `Batch` may carry.
pub const MAX_BATCH_MESSAGES: usize = 65_536;
/// Encoded bytes a sender packs into one `Batch` at most (a larger message travels alone): a
/// frame stays far below [`MAX_FRAME_PAYLOAD`] and a peer's queue holds many.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Who asked for an op: a call of the driver, or a leave this node issued itself because a
/// process ended. Requesters number both kinds independently, so the kind is part of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Ticket {
    /// A driver call (`join`/`leave`) with the driver's request id.
    Call(RequestId),
    /// An internal request, numbered by the requester: a leave issued by `process_exit`, a
    /// detached join (`join_detached`), or a re-join (or a re-issued call) after the node
    /// renewed its identity.
    Exit(u64),
}

/// The idempotence key of an op: `(requester identity with generation, ticket)`.
pub type Origin = (NodeId, Ticket);

/// One group change, as ordered by a boss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Add one occurrence of `pid` with `meta`.
    Join {
        /// Scope of the group.
        scope: ScopeName,
        /// The group.
        group: GroupName,
        /// The member (lives on the requester).
        pid: Pid,
        /// Metadata, at most the table's cap.
        meta: Box<[u8]>,
    },
    /// Remove one occurrence of `pid`.
    Leave {
        /// Scope of the group.
        scope: ScopeName,
        /// The group.
        group: GroupName,
        /// The member (lives on the requester).
        pid: Pid,
    },
}

impl Op {
    /// The scope the op is about.
    pub fn scope(&self) -> &ScopeName {
        match self {
            Self::Join { scope, .. } | Self::Leave { scope, .. } => scope,
        }
    }

    /// The group the op is about.
    pub fn group(&self) -> &GroupName {
        match self {
            Self::Join { group, .. } | Self::Leave { group, .. } => group,
        }
    }

    /// The scope, to swap in another handle of the same name (see
    /// `CoordinatedGroups::intern_scope`).
    pub(crate) fn scope_mut(&mut self) -> &mut ScopeName {
        match self {
            Self::Join { scope, .. } | Self::Leave { scope, .. } => scope,
        }
    }

    /// The member the op is about.
    pub fn pid(&self) -> Pid {
        match self {
            Self::Join { pid, .. } | Self::Leave { pid, .. } => *pid,
        }
    }
}

/// One membership of a partition in a state transfer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// The group (the scope is the message's).
    pub group: GroupName,
    /// The member.
    pub pid: Pid,
    /// Its metadata.
    pub meta: Box<[u8]>,
}

/// Everything a replica holds about one partition: what recovery collects and `Sync` pushes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Epoch of the boss term that wrote the last applied op (0: never written).
    pub written_epoch: u64,
    /// Last applied sequence number (0: nothing applied).
    pub seq: u64,
    /// Origins of the most recently applied ops, oldest first, each with whether it was
    /// refused (a leave of a non-member): the replicated dedupe window. Refusals are ordered
    /// and remembered too, so a late duplicate of a refused leave cannot apply after the
    /// requester was told `NotJoined`.
    pub recent: Vec<(Origin, bool)>,
    /// The partition's memberships.
    pub entries: Vec<Entry>,
    /// For every pid root in `entries`, the newest identity of that root the sender knew. A
    /// node removes a root's memberships when it first learns of a newer generation, so every
    /// entry of a root dates from exactly this identity: a receiver that knows it Down (or
    /// knows a newer one) drops those entries, and one that knows only an older identity
    /// learns of this one (see `CoordinatedGroups::observe`).
    pub owners: Vec<NodeId>,
}

/// Why a node refused a boss message or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// The sender is not the boss of the partition in this node's view (or, for a request, the
    /// receiver is not).
    NotBoss,
    /// The message's epoch is older than the epoch this node promised.
    StaleEpoch {
        /// The epoch this node knows.
        known: u64,
    },
    /// A `Sync` or `Apply` of a term whose recovery did not collect this node's state, while
    /// this node holds written state of the partition (from a history the boss did not see:
    /// the other side of a healed partition). Installing it would undo what completed there;
    /// the boss recovers again, with this node's report.
    Unrecovered,
}

/// Why a boss refused an op (the caller's fault; nothing changed). The requester rebuilds the
/// full [`GroupError`](crate::groups::GroupError) from its own copy of the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// A leave of a pid that is not in the group.
    NotJoined,
    /// The pid does not live on the requester.
    ForeignPid,
}

/// What a `Nack` refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refused {
    /// A `Request` with this ticket.
    Request(Ticket),
    /// An `Apply` of this epoch and sequence number.
    Apply {
        /// Its epoch.
        epoch: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A `Recover` (or `Sync`) of this epoch.
    Recover {
        /// Its epoch.
        epoch: u64,
    },
}

/// A coordinated-backend message. `scope`/`partition` name the partition concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Requester -> boss: order `op` (idempotent per `(requester, ticket)`).
    Request {
        /// The requester's identity with its generation. The transport names senders by
        /// address only, so this is what tells a renewed requester from its old identity: a
        /// boss orders a request only from the identity its view holds live at that address.
        from: NodeId,
        /// The requester's key for the call.
        ticket: Ticket,
        /// The change.
        op: Op,
    },
    /// Boss -> every live node: apply `op` as number `seq` of the partition in term `epoch`.
    Apply {
        /// The boss term.
        epoch: u64,
        /// Position in the partition's order (the previous op is `seq - 1`).
        seq: u64,
        /// Who asked, for the replicated dedupe window.
        origin: Origin,
        /// The change (its scope and group give the partition).
        op: Op,
    },
    /// Node -> boss: everything up to `seq` is applied (cumulative).
    Ack {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// The boss term acknowledged.
        epoch: u64,
        /// Highest applied sequence number.
        seq: u64,
    },
    /// Boss -> requester: the op of `ticket` is applied on every live node (or refused).
    Done {
        /// The requester's key.
        ticket: Ticket,
        /// `None` if applied; the refusal otherwise (state unchanged).
        refused: Option<Refusal>,
    },
    /// Refusal of a request or of a boss message.
    Nack {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// What is refused.
        what: Refused,
        /// Why.
        reason: NackReason,
    },
    /// New boss -> every live node: promise term `epoch` and report the partition's state.
    Recover {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// The proposed term.
        epoch: u64,
    },
    /// Node -> recovering boss: the promise, with this node's state of the partition.
    State {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// The term promised.
        epoch: u64,
        /// The state.
        state: PartitionState,
    },
    /// Boss -> a node that is behind or new: make the partition exactly `state`, in term
    /// `epoch`. Answered by an `Ack`.
    Sync {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// The boss term.
        epoch: u64,
        /// The state to adopt.
        state: PartitionState,
    },
    /// Replica -> the new boss of a written partition (its boss changed in the replica's
    /// view): recover this partition now; it holds state.
    Handoff {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
    },
    /// Node -> a node it got memberships of `nodes` from, none of which it has seen Up: say
    /// `Gone` when you see any of them Down (at once if you already have).
    Watch {
        /// The identities whose memberships the sender holds on the receiver's word.
        nodes: Vec<NodeId>,
    },
    /// Answer to `Watch`: these identities are Down in the sender's view. A receiver that does
    /// not see one of them Up itself drops its memberships, as its own `Down` would have.
    Gone {
        /// The identities declared Down.
        nodes: Vec<NodeId>,
    },
    /// Several messages to one node, handled in order as if each came in its own frame: what
    /// a node held for that peer over a burst of inputs (see
    /// [`RegistryCore::hold`](crate::RegistryCore::hold)). Each body is one postcard-encoded
    /// message other than a `Batch`; kept as bytes so decoding never recurses.
    Batch {
        /// The encoded messages, in sending order.
        bodies: Vec<Box<[u8]>>,
    },
}

impl Message {
    /// The scope a message shows to be in use, for the messages that can be a node's first
    /// word of one (a request, an op, a boss's recovery, sync or a handoff); `None` for
    /// answers to what this node sent, and for the rest.
    pub fn scope(&self) -> Option<&ScopeName> {
        match self {
            Self::Request { op, .. } | Self::Apply { op, .. } => Some(op.scope()),
            Self::Recover { scope, .. }
            | Self::Sync { scope, .. }
            | Self::Handoff { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// The scope of every message that names one (unlike [`Message::scope`], answers too).
    pub(crate) fn scope_mut(&mut self) -> Option<&mut ScopeName> {
        match self {
            Self::Request { op, .. } | Self::Apply { op, .. } => Some(op.scope_mut()),
            Self::Ack { scope, .. }
            | Self::Nack { scope, .. }
            | Self::Recover { scope, .. }
            | Self::State { scope, .. }
            | Self::Sync { scope, .. }
            | Self::Handoff { scope, .. } => Some(scope),
            Self::Done { .. } | Self::Watch { .. } | Self::Gone { .. } | Self::Batch { .. } => None,
        }
    }

    /// Index of the message's kind in [`BossStats::sent`](super::BossStats::sent).
    pub fn kind_index(&self) -> usize {
        match self {
            Self::Request { .. } => 0,
            Self::Apply { .. } => 1,
            Self::Ack { .. } => 2,
            Self::Done { .. } => 3,
            Self::Nack { .. } => 4,
            Self::Recover { .. } => 5,
            Self::State { .. } => 6,
            Self::Sync { .. } => 7,
            Self::Handoff { .. } => 8,
            Self::Watch { .. } => 9,
            Self::Gone { .. } => 10,
            Self::Batch { .. } => 11,
        }
    }
}

/// Names of the message kinds, in [`Message::kind_index`] order.
pub const KIND_NAMES: [&str; 12] = [
    "request", "apply", "ack", "done", "nack", "recover", "state", "sync", "handoff", "watch",
    "gone", "batch",
];

/// Envelopes `msg` for `cluster`.
pub fn encode(msg: &Message, cluster: u32) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).expect("in-memory postcard encoding cannot fail");
    wire::seal(Kind::Boss, cluster, &body)
}

/// Envelopes `bodies` (each a [`body`] of a message other than a `Batch`) as one frame: the
/// single message itself when there is one, else a `Batch`.
pub fn encode_bodies(mut bodies: Vec<Box<[u8]>>, cluster: u32) -> Vec<u8> {
    let body = if bodies.len() == 1 {
        bodies.pop().expect("one body").into_vec()
    } else {
        postcard::to_allocvec(&Message::Batch { bodies })
            .expect("in-memory postcard encoding cannot fail")
    };
    wire::seal(Kind::Boss, cluster, &body)
}

/// The postcard encoding of `msg` without an envelope: one entry of a `Batch`.
pub fn body(msg: &Message) -> Box<[u8]> {
    postcard::to_allocvec(msg)
        .expect("in-memory postcard encoding cannot fail")
        .into_boxed_slice()
}

/// Opens and decodes one frame, refusing anything over the caps (`meta_cap_bytes` is the
/// table's metadata cap). A `Batch` is returned as is; see [`decode_frame`].
pub fn decode(bytes: &[u8], cluster: u32, meta_cap_bytes: usize) -> Result<Message, MessageError> {
    let (kind, body) = wire::open(bytes, cluster, MAX_FRAME_PAYLOAD)?;
    if kind != Kind::Boss {
        return Err(MessageError::Malformed(format!(
            "{kind:?} frame given to the boss backend"
        )));
    }
    decode_body(body, meta_cap_bytes)
}

/// Opens one frame and returns its messages in order: one, or every message of a `Batch`.
/// All or nothing: one bad entry (malformed, over a cap, a nested `Batch`) refuses the frame.
pub fn decode_frame(
    bytes: &[u8],
    cluster: u32,
    meta_cap_bytes: usize,
) -> Result<Vec<Message>, MessageError> {
    match decode(bytes, cluster, meta_cap_bytes)? {
        Message::Batch { bodies } => bodies
            .iter()
            .map(|b| match decode_body(b, meta_cap_bytes)? {
                Message::Batch { .. } => Err(MessageError::Malformed("nested batch".into())),
                msg => Ok(msg),
            })
            .collect(),
        msg => Ok(vec![msg]),
    }
}

fn decode_body(body: &[u8], meta_cap_bytes: usize) -> Result<Message, MessageError> {
    let msg: Message =
        postcard::from_bytes(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let too_big = |len: usize| len > meta_cap_bytes;
    let bad = match &msg {
        Message::Request {
            op: Op::Join { meta, .. },
            ..
        }
        | Message::Apply {
            op: Op::Join { meta, .. },
            ..
        } => too_big(meta.len()),
        Message::State { state, .. } | Message::Sync { state, .. } => {
            state.entries.len() > MAX_STATE_ENTRIES
                || state.owners.len() > MAX_STATE_ENTRIES
                || state.recent.len() > MAX_DEDUPE_ENTRIES
                || state.entries.iter().any(|e| too_big(e.meta.len()))
        }
        Message::Watch { nodes } | Message::Gone { nodes } => nodes.len() > MAX_WATCH_NODES,
        Message::Batch { bodies } => bodies.len() > MAX_BATCH_MESSAGES,
        _ => false,
    };
    if bad {
        return Err(MessageError::Malformed("over a cap".into()));
    }
    Ok(msg)
}
