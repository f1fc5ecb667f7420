//! [`SessionStack`]: a node's [`Stack`] (membership core and discovery backend) plus its
//! [`SessionManager`], itself a [`MembershipCore`] so the simulator (and the node runtime)
//! drive it unchanged.
//!
//! Frames of envelope kind `Session` go to the session manager, everything else to the inner
//! stack; every membership event and renewal the membership core reports is fed to the
//! session manager too (after the backend). Completed session calls and lost sessions are
//! logged with their time until the driver drains them.

use std::net::SocketAddrV4;

use meshreg_membership::wire::{HEADER_LEN, Kind};
use meshreg_membership::{Channel, Error, LinkEvent, MembershipCore, NodeId, Output, Time};

use crate::session::manager::{
    CallId, SessionCallError, SessionManager, SessionOutput, SessionTimer,
};
use crate::session::{Outcome, SessionKey};
use crate::stack::{Stack, StackTimer};
use crate::{Pid, RegistryCore};

/// Timers of a [`SessionStack`].
#[derive(Clone, Debug)]
pub enum SessionStackTimer<A, B> {
    /// The inner stack's.
    Inner(StackTimer<A, B>),
    /// The session manager's.
    Session(SessionTimer),
}

type InnerTimer<M, R> = StackTimer<<M as MembershipCore>::Timer, <R as RegistryCore>::Timer>;
type Out<M, R> =
    Vec<Output<SessionStackTimer<<M as MembershipCore>::Timer, <R as RegistryCore>::Timer>>>;

/// A node's membership core, discovery backend and session manager.
pub struct SessionStack<M: MembershipCore, R: RegistryCore> {
    /// Membership and groups.
    pub inner: Stack<M, R>,
    /// The session manager.
    pub sessions: SessionManager,
    /// Completed session calls with their time, until drained.
    pub completed: Vec<(Time, CallId, Result<Outcome, SessionCallError>)>,
    /// Sessions of local processes lost, with their time, until drained.
    pub lost: Vec<(Time, SessionKey, Pid)>,
    /// Session messages refused (malformed, from a non-member).
    pub refused: u64,
    iout: Vec<Output<InnerTimer<M, R>>>,
    sout: Vec<SessionOutput>,
}

impl<M: MembershipCore, R: RegistryCore> SessionStack<M, R> {
    /// Wraps `inner` with `sessions`.
    pub fn new(inner: Stack<M, R>, sessions: SessionManager) -> Self {
        Self {
            inner,
            sessions,
            completed: Vec::new(),
            lost: Vec::new(),
            refused: 0,
            iout: Vec::new(),
            sout: Vec::new(),
        }
    }

    /// Runs a session-manager call at `now` (register, lookup, process exit, the role set),
    /// routing its outputs.
    pub fn call(
        &mut self,
        now: Time,
        out: &mut Out<M, R>,
        f: impl FnOnce(&mut SessionManager, &mut Vec<SessionOutput>),
    ) {
        let mut sout = std::mem::take(&mut self.sout);
        f(&mut self.sessions, &mut sout);
        self.route_sessions(now, &mut sout, out);
        self.sout = sout;
    }

    /// Runs a discovery-backend call at `now` (join, leave, process exit), routing its outputs.
    pub fn group_call(
        &mut self,
        now: Time,
        out: &mut Out<M, R>,
        f: impl FnOnce(&mut R, &mut Vec<crate::RegistryOutput<R::Timer>>),
    ) {
        let mut iout = std::mem::take(&mut self.iout);
        self.inner.call(now, &mut iout, f);
        self.iout = iout;
        self.route_inner(now, out);
    }

    fn route_sessions(&mut self, now: Time, sout: &mut Vec<SessionOutput>, out: &mut Out<M, R>) {
        let mut suspects = Vec::new();
        for o in sout.drain(..) {
            match o {
                SessionOutput::Send {
                    to,
                    channel,
                    payload,
                } => out.push(Output::Send {
                    to,
                    channel,
                    payload,
                }),
                SessionOutput::SetTimer { after, timer } => out.push(Output::SetTimer {
                    after,
                    timer: SessionStackTimer::Session(timer),
                }),
                SessionOutput::Completed { req, result } => {
                    self.completed.push((now, req, result));
                }
                SessionOutput::Lost { key, pid } => self.lost.push((now, key, pid)),
                SessionOutput::Suspect(id) => suspects.push(id),
            }
        }
        // After the loop: suspecting routes the membership core's outputs, which may come
        // back here (never with another suspicion, so this ends).
        for id in suspects {
            self.inner.suspect(now, id, &mut self.iout);
            self.route_inner(now, out);
        }
    }

    /// Carries the inner stack's outputs out, feeding membership facts to the sessions.
    fn route_inner(&mut self, now: Time, out: &mut Out<M, R>) {
        let mut iout = std::mem::take(&mut self.iout);
        let mut sout = std::mem::take(&mut self.sout);
        for o in iout.drain(..) {
            match o {
                Output::Send {
                    to,
                    channel,
                    payload,
                } => out.push(Output::Send {
                    to,
                    channel,
                    payload,
                }),
                Output::SetTimer { after, timer } => out.push(Output::SetTimer {
                    after,
                    timer: SessionStackTimer::Inner(timer),
                }),
                Output::Connect { to } => out.push(Output::Connect { to }),
                Output::Disconnect { to } => out.push(Output::Disconnect { to }),
                Output::Renewed(id) => {
                    self.sessions.renewed(now, id, &mut sout);
                    out.push(Output::Renewed(id));
                }
                Output::Left(id) => out.push(Output::Left(id)),
                Output::Event(e) => {
                    self.sessions.member_event(now, e, &mut sout);
                    out.push(Output::Event(e));
                }
            }
        }
        self.iout = iout;
        self.route_sessions(now, &mut sout, out);
        self.sout = sout;
    }

    fn is_session(bytes: &[u8]) -> bool {
        bytes.len() >= HEADER_LEN && bytes[3] == Kind::Session as u8
    }

    fn deliver(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Out<M, R>,
    ) -> Result<(), Error> {
        if Self::is_session(bytes) {
            let mut sout = std::mem::take(&mut self.sout);
            let r = self
                .sessions
                .handle_message(now, from, channel, bytes, &mut sout);
            self.route_sessions(now, &mut sout, out);
            self.sout = sout;
            return r.map_err(|e| {
                self.refused += 1;
                Error::Protocol(e.to_string())
            });
        }
        let mut iout = std::mem::take(&mut self.iout);
        let r = match channel {
            Channel::Datagram => self.inner.handle_datagram(now, from, bytes, &mut iout),
            Channel::Stream => self.inner.handle_stream(now, from, bytes, &mut iout),
        };
        self.iout = iout;
        self.route_inner(now, out);
        r
    }
}

impl<M: MembershipCore, R: RegistryCore> MembershipCore for SessionStack<M, R> {
    type Timer = SessionStackTimer<M::Timer, R::Timer>;

    fn id(&self) -> NodeId {
        self.inner.id()
    }

    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Output<Self::Timer>>) {
        self.call(now, out, |s, o| s.start(now, o));
        self.inner.start(now, seeds, &mut self.iout);
        self.route_inner(now, out);
    }

    fn preseed(&mut self, now: Time, members: &[NodeId], out: &mut Vec<Output<Self::Timer>>) {
        self.call(now, out, |s, o| s.start(now, o));
        self.inner.preseed(now, members, &mut self.iout);
        self.route_inner(now, out);
    }

    fn handle_datagram(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<Self::Timer>>,
    ) -> Result<(), Error> {
        self.deliver(now, from, Channel::Datagram, bytes, out)
    }

    fn handle_stream(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<Self::Timer>>,
    ) -> Result<(), Error> {
        self.deliver(now, from, Channel::Stream, bytes, out)
    }

    fn handle_link(&mut self, now: Time, event: LinkEvent, out: &mut Vec<Output<Self::Timer>>) {
        self.inner.handle_link(now, event, &mut self.iout);
        self.route_inner(now, out);
    }

    fn handle_timer(&mut self, now: Time, timer: Self::Timer, out: &mut Vec<Output<Self::Timer>>) {
        match timer {
            SessionStackTimer::Inner(t) => {
                self.inner.handle_timer(now, t, &mut self.iout);
                self.route_inner(now, out);
            }
            SessionStackTimer::Session(t) => self.call(now, out, |s, o| s.handle_timer(now, t, o)),
        }
    }

    fn leave(&mut self, now: Time, out: &mut Vec<Output<Self::Timer>>) {
        self.inner.leave(now, &mut self.iout);
        self.route_inner(now, out);
    }

    fn suspect(&mut self, now: Time, id: NodeId, out: &mut Vec<Output<Self::Timer>>) {
        self.inner.suspect(now, id, &mut self.iout);
        self.route_inner(now, out);
    }

    fn num_members(&self) -> usize {
        self.inner.num_members()
    }

    fn members(&self) -> Vec<NodeId> {
        self.inner.members()
    }
}
