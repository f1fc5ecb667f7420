//! What the discovery backends share with their drivers: outputs, request ids, errors.
//!
//! A backend core (`crdt::GossipGroups`, `coordinated::CoordinatedGroups`) is sans-IO like the
//! membership cores: the driver feeds `(now, input)` and carries out the [`RegistryOutput`]s.
//! Membership is an input: the driver forwards every [`MemberEvent`] its membership core emits,
//! so a backend never guesses liveness itself.
//!
//! [`MemberEvent`]: meshreg_membership::MemberEvent

use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::wire::WireError;
use meshreg_membership::{Channel, MemberEvent, NodeId, Time};

use crate::Pid;
use crate::groups::{GroupError, GroupEvent, GroupName, GroupTable, ScopeName};

/// Identifies one `join`/`leave` call of the local node until it completes.
pub type RequestId = u64;

/// What a registry core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryOutput<T> {
    /// Send enveloped bytes to the node at `to`.
    Send {
        /// Destination address.
        to: SocketAddrV4,
        /// Datagram or stream.
        channel: Channel,
        /// Enveloped bytes ([`Kind::Groups`] or [`Kind::Boss`]).
        ///
        /// [`Kind::Groups`]: meshreg_membership::wire::Kind::Groups
        /// [`Kind::Boss`]: meshreg_membership::wire::Kind::Boss
        payload: Vec<u8>,
    },
    /// Call `handle_timer(timer)` after `after`. Every timer must be delivered.
    SetTimer {
        /// Delay from the `now` of the call that produced it.
        after: Duration,
        /// The timer to hand back.
        timer: T,
    },
    /// The local call `req` finished. Coordinated: applied on every live node. Gossip: applied
    /// locally (other nodes follow by gossip).
    Completed {
        /// The request.
        req: RequestId,
        /// Its result.
        result: Result<(), CallError>,
    },
}

/// Why a `join`/`leave` call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The caller's mistake (remote pid, over-cap metadata, not joined): nothing changed.
    Group(GroupError),
    /// The cluster could not order the call now (boss unreachable, fenced, changing): nothing
    /// changed; retrying is safe.
    Unavailable(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Group(e) => write!(f, "{e}"),
            Self::Unavailable(why) => write!(f, "unavailable, nothing changed, retry: {why}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A message a backend refused. The peer is at fault; it was dropped, counted, and changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Envelope problem.
    Wire(WireError),
    /// The payload did not decode.
    Malformed(String),
    /// From a node that is not a live member in this node's view.
    NotAMember(SocketAddrV4),
    /// About an owner generation older than one known (or declared Down).
    StaleGeneration,
    /// A coordinated message of an older boss epoch.
    StaleEpoch,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(e) => write!(f, "dropped: {e}"),
            Self::Malformed(e) => write!(f, "dropped: malformed message: {e}"),
            Self::NotAMember(a) => write!(f, "dropped: message from non-member {a}"),
            Self::StaleGeneration => write!(f, "dropped: message about an old generation"),
            Self::StaleEpoch => write!(f, "dropped: message of an old boss epoch"),
        }
    }
}

impl std::error::Error for MessageError {}

impl From<WireError> for MessageError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

/// A discovery backend: the group table plus the protocol that keeps it in step across nodes.
/// Implemented by the gossip and the coordinated backends; driven by the node runtime and the
/// simulator alike.
pub trait RegistryCore {
    /// The backend's timer payload.
    type Timer: Clone + fmt::Debug;

    /// What this node knows: local reads go here.
    fn table(&self) -> &GroupTable;

    /// Heap bytes this backend holds (table plus protocol bookkeeping).
    fn heap_bytes(&self) -> usize {
        self.table().heap_bytes()
    }

    /// Table changes since the last drain, in order (for monitors).
    fn drain_events(&mut self) -> Vec<GroupEvent>;

    /// Hands the same events as [`drain_events`](Self::drain_events) to `f`, oldest first. The
    /// backends override it to keep their buffer: a driver drains after every input, and a
    /// fresh `Vec` per input was an allocation per call.
    fn drain_events_with(&mut self, f: &mut dyn FnMut(GroupEvent)) {
        self.drain_events().into_iter().for_each(f);
    }

    /// Arms periodic timers.
    fn start(&mut self, now: Time, out: &mut Vec<RegistryOutput<Self::Timer>>);

    /// A membership change reported by this node's membership core.
    fn member_event(
        &mut self,
        now: Time,
        event: MemberEvent,
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    );

    /// This node was declared Down by the cluster and renewed its identity to `new` (same root,
    /// higher generation) while its processes kept running. The backend must bring its
    /// memberships back under the new identity. The default does nothing: a backend that keeps
    /// it loses its memberships on the other nodes until they are joined again.
    fn renewed(&mut self, now: Time, new: NodeId, out: &mut Vec<RegistryOutput<Self::Timer>>) {
        let _ = (now, new, out);
    }

    /// Joins local `pid` to `group` in `scope`; completes with [`RegistryOutput::Completed`].
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat call mirroring the public API"
    )]
    fn join(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    );

    /// Starts a join of local `pid` that no caller waits for (Erlang `pg:join` semantics: the
    /// call returns before the other nodes have it). Nothing completes: a settings error is
    /// returned at once, and a backend that gives calls up (the coordinated one, after
    /// `max_attempts`) never gives this one up; it ends only with its process, which leaves
    /// again if it ended meanwhile. `req` is a fresh id the caller will not wait on.
    ///
    /// The default runs [`Self::join`] and takes its completion out of `out`: right for a
    /// backend whose join completes within the call (gossip applies it locally at once).
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat call mirroring the public API"
    )]
    fn join_detached(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    ) -> Result<(), CallError> {
        let from = out.len();
        self.join(now, req, scope, group, pid, meta, out);
        let at = out[from..]
            .iter()
            .position(|o| matches!(o, RegistryOutput::Completed { req: r, .. } if *r == req));
        match at.map(|i| out.remove(from + i)) {
            Some(RegistryOutput::Completed { result, .. }) => result,
            _ => Ok(()),
        }
    }

    /// Removes one occurrence of local `pid` from `group`; completes like `join`.
    fn leave(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    );

    /// Local `pid` ended: it leaves every group.
    fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Vec<RegistryOutput<Self::Timer>>);

    /// A backend message arrived (envelope kind `Groups` or `Boss`).
    fn handle_message(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    ) -> Result<(), MessageError>;

    /// From now until [`RegistryCore::release`], the backend may hold the stream frames it
    /// would send and send them at `release`, per destination in order, several messages to one
    /// peer as one frame. A driver that handles a burst of inputs under one lock brackets the
    /// burst with these: fewer frames, and cumulative acknowledgements said once. A driver that
    /// never calls them gets every frame at once (the default: nothing is held).
    fn hold(&mut self) {}

    /// Sends whatever [`RegistryCore::hold`] held and stops holding.
    fn release(&mut self, _now: Time, _out: &mut Vec<RegistryOutput<Self::Timer>>) {}

    /// A timer set earlier fired.
    fn handle_timer(
        &mut self,
        now: Time,
        timer: Self::Timer,
        out: &mut Vec<RegistryOutput<Self::Timer>>,
    );
}
