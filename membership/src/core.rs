//! The contract between a sans-IO membership core and the driver that runs it.
//!
//! A driver (the tokio node runtime or the deterministic simulator) owns sockets and clocks; a
//! core owns protocol state. The driver feeds inputs (`start`, a datagram, a stream frame, a link
//! event, a timer) together with `now`, and the core appends [`Output`]s to a vector the driver
//! then carries out. Nothing else crosses the boundary.

use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::NodeId;
use crate::wire::WireError;

/// Time as seen by a core: elapsed since an epoch the driver picks (virtual time in the
/// simulator). Cores only compare and subtract instants; they never read a clock.
pub type Time = Duration;

/// How bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// An unreliable, unordered datagram of at most
    /// [`MAX_DATAGRAM_PAYLOAD`](crate::wire::MAX_DATAGRAM_PAYLOAD) bytes of payload (UDP).
    Datagram,
    /// A frame on a reliable per-peer FIFO link (TCP). The driver opens a connection on demand
    /// when none exists; frames to an unreachable peer are lost, which cores tolerate.
    Stream,
}

/// Cluster membership change, as seen by one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberEvent {
    /// The node is a live member of the cluster in this node's view.
    Up(NodeId),
    /// The node left, failed, or was replaced by a newer generation.
    Down(NodeId),
}

/// Transport-level link state reported by the driver.
///
/// The full mesh lives on links. SWIM does not need them, but it takes the strong evidence
/// they give of a dead process: a link that broke without the peer closing it, then a
/// [`LinkEvent::Refused`] dial (see [`Swim`](crate::Swim)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkEvent {
    /// A link to `peer` is established (after an outbound connect or an inbound accept).
    Up(SocketAddrV4),
    /// The link to `peer` was closed on purpose, by either end (a disconnect, an idle close, a
    /// shutdown: the peer's transport said goodbye).
    Down(SocketAddrV4),
    /// The link to `peer` broke without a goodbye: end of stream or an error with no close
    /// marker, or silence. The peer may have crashed, or the network between us may have failed;
    /// the link is gone either way (as after [`LinkEvent::Down`]).
    Reset(SocketAddrV4),
    /// An outbound connect to `peer` failed or timed out (nothing answered, or the handshake
    /// failed).
    ConnectFailed(SocketAddrV4),
    /// An outbound connect to `peer` was refused: its host answered, but nothing listens on
    /// the port. The process that had this address is gone (the evidence Erlang distribution
    /// acts on). Reported instead of [`LinkEvent::ConnectFailed`].
    Refused(SocketAddrV4),
}

/// What a core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<T> {
    /// Send `payload` (already enveloped, see [`wire`](crate::wire)) to the node at `to`.
    Send {
        /// Destination address.
        to: SocketAddrV4,
        /// Datagram or stream.
        channel: Channel,
        /// Enveloped bytes.
        payload: Vec<u8>,
    },
    /// Call [`MembershipCore::handle_timer`] with `timer` after `after` has elapsed. Every timer
    /// must be delivered, even stale ones: cores filter them.
    SetTimer {
        /// Delay from the `now` of the call that produced it.
        after: Duration,
        /// The timer to hand back.
        timer: T,
    },
    /// Open a stream link to `to` (full mesh). Answered by [`LinkEvent::Up`] or
    /// [`LinkEvent::ConnectFailed`].
    Connect {
        /// Address to connect to.
        to: SocketAddrV4,
    },
    /// Close the stream link to `to`.
    Disconnect {
        /// Address of the peer.
        to: SocketAddrV4,
    },
    /// A membership change in this node's view.
    Event(MemberEvent),
    /// This node now runs under a new identity (it was declared Down and renewed itself).
    /// A renewed SWIM node's view starts anew: members its old identity held Down may be
    /// reported `Up` again under the same identity (its verdicts made while cut off are
    /// withdrawn), so consumers forget their own Down verdicts (tombstones) here.
    Renewed(NodeId),
    /// The member said itself that it is leaving (a clean shutdown, not a failure). Reported
    /// just before its `Event(Down)`. Only nodes that heard the farewell directly report it
    /// (SWIM: the members the leaver told; others learn a plain `Down` by gossip).
    Left(NodeId),
}

/// Why a core refused an input. Always the peer's fault (bad bytes) and never changes state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Envelope-level problem.
    Wire(WireError),
    /// The envelope was fine, the protocol payload was not (foca refused it, or a message did not
    /// decode).
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(e) => write!(f, "peer sent a bad packet: {e}"),
            Self::Protocol(e) => write!(f, "peer sent a bad protocol message: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

/// A sans-IO membership protocol. Implemented by [`Swim`](crate::Swim) and
/// [`Mesh`](crate::Mesh); driven identically by the node runtime and the simulator.
pub trait MembershipCore {
    /// The core's timer payload, handed back through [`MembershipCore::handle_timer`].
    type Timer: Clone + fmt::Debug;

    /// This node's current identity.
    fn id(&self) -> NodeId;

    /// Start: contact `seeds` (addresses of existing members; may be empty for the first node)
    /// and arm periodic timers.
    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Output<Self::Timer>>);

    /// Start as a member of an already converged cluster of `members` (as if restored from a
    /// snapshot), to study steady state without a join storm. The default dials every member
    /// as a seed; cores that can load a view directly override it.
    fn preseed(&mut self, now: Time, members: &[NodeId], out: &mut Vec<Output<Self::Timer>>) {
        let me = self.id().addr();
        let seeds: Vec<SocketAddrV4> = members
            .iter()
            .map(|m| m.addr())
            .filter(|a| *a != me)
            .collect();
        self.start(now, &seeds, out);
    }

    /// A datagram arrived from `from`.
    fn handle_datagram(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<Self::Timer>>,
    ) -> Result<(), Error>;

    /// A stream frame arrived from `from`.
    fn handle_stream(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<Self::Timer>>,
    ) -> Result<(), Error>;

    /// The driver's link state changed.
    fn handle_link(&mut self, now: Time, event: LinkEvent, out: &mut Vec<Output<Self::Timer>>);

    /// A timer set earlier fired.
    fn handle_timer(&mut self, now: Time, timer: Self::Timer, out: &mut Vec<Output<Self::Timer>>);

    /// Leave the cluster cleanly: peers see a leave, not a failure.
    fn leave(&mut self, now: Time, out: &mut Vec<Output<Self::Timer>>);

    /// First-hand evidence that member `id` stopped answering (a layer above saw requests to
    /// it go unanswered). A core with refutable suspicion (SWIM) suspects it at once instead
    /// of waiting for its probe to come round; a live member refutes as after any false
    /// suspicion. The default ignores it (the mesh's heartbeat timeout already watches every
    /// link). Never about this node itself.
    fn suspect(&mut self, now: Time, id: NodeId, out: &mut Vec<Output<Self::Timer>>) {
        let _ = (now, id, out);
    }

    /// Number of live members in this node's view, itself excluded.
    fn num_members(&self) -> usize;

    /// Live members in this node's view, itself excluded.
    fn members(&self) -> Vec<NodeId>;
}
