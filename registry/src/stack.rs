//! One node's protocol stack: a membership core and a discovery backend run together.
//!
//! [`Stack`] implements [`MembershipCore`] so both drivers (the simulator and the node runtime)
//! drive it unchanged: packets are routed by envelope kind, every membership event the
//! membership core reports is also fed to the backend, and the backend's table events and call
//! completions are logged with the time they happened at until the driver drains them.

use std::net::SocketAddrV4;

use crate::groups::GroupEvent;
use crate::{CallError, RegistryCore, RegistryOutput, RequestId};
use meshreg_membership::wire::{HEADER_LEN, Kind};
use meshreg_membership::{Channel, Error, LinkEvent, MembershipCore, NodeId, Output, Time};

/// Timers of a [`Stack`]: the membership core's or the backend's.
#[derive(Clone, Debug)]
pub enum StackTimer<A, B> {
    /// Membership timer.
    Membership(A),
    /// Backend timer.
    Registry(B),
}

/// Membership core `M` plus backend `R` on one simulated node.
pub struct Stack<M: MembershipCore, R: RegistryCore> {
    /// The membership core.
    pub membership: M,
    /// The discovery backend.
    pub registry: R,
    /// Table events with the virtual time they happened at, until the scenario drains them.
    pub log: Vec<(Time, GroupEvent)>,
    /// Completed local calls with their virtual time, until the scenario drains them.
    pub completed: Vec<(Time, RequestId, Result<(), CallError>)>,
    /// Backend messages refused (malformed, non-member, stale).
    pub refused: u64,
    mout: Vec<Output<M::Timer>>,
    rout: Vec<RegistryOutput<R::Timer>>,
}

type Out<M, R> = Vec<Output<StackTimer<<M as MembershipCore>::Timer, <R as RegistryCore>::Timer>>>;

impl<M: MembershipCore, R: RegistryCore> Stack<M, R> {
    /// Both cores of one node.
    pub fn new(membership: M, registry: R) -> Self {
        Self {
            membership,
            registry,
            log: Vec::new(),
            completed: Vec::new(),
            refused: 0,
            mout: Vec::new(),
            rout: Vec::new(),
        }
    }

    /// Runs a backend call (join, leave, process exit) at `now`, routing its outputs.
    pub fn call(
        &mut self,
        now: Time,
        out: &mut Out<M, R>,
        f: impl FnOnce(&mut R, &mut Vec<RegistryOutput<R::Timer>>),
    ) {
        let mut rout = std::mem::take(&mut self.rout);
        f(&mut self.registry, &mut rout);
        self.route_registry(now, &mut rout, out);
        self.rout = rout;
    }

    fn route_registry(
        &mut self,
        now: Time,
        rout: &mut Vec<RegistryOutput<R::Timer>>,
        out: &mut Out<M, R>,
    ) {
        for o in rout.drain(..) {
            match o {
                RegistryOutput::Send {
                    to,
                    channel,
                    payload,
                } => out.push(Output::Send {
                    to,
                    channel,
                    payload,
                }),
                RegistryOutput::SetTimer { after, timer } => out.push(Output::SetTimer {
                    after,
                    timer: StackTimer::Registry(timer),
                }),
                RegistryOutput::Completed { req, result } => {
                    self.completed.push((now, req, result))
                }
            }
        }
        for e in self.registry.drain_events() {
            self.log.push((now, e));
        }
    }

    /// Carries the membership core's outputs out, feeding its events to the backend.
    fn route_membership(&mut self, now: Time, out: &mut Out<M, R>) {
        let mut mout = std::mem::take(&mut self.mout);
        let mut rout = std::mem::take(&mut self.rout);
        for o in mout.drain(..) {
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
                    timer: StackTimer::Membership(timer),
                }),
                Output::Connect { to } => out.push(Output::Connect { to }),
                Output::Disconnect { to } => out.push(Output::Disconnect { to }),
                Output::Renewed(id) => {
                    self.registry.renewed(now, id, &mut rout);
                    out.push(Output::Renewed(id));
                }
                Output::Left(id) => out.push(Output::Left(id)),
                Output::Event(e) => {
                    self.registry.member_event(now, e, &mut rout);
                    out.push(Output::Event(e));
                }
            }
        }
        self.mout = mout;
        self.route_registry(now, &mut rout, out);
        self.rout = rout;
    }

    fn is_registry(bytes: &[u8]) -> bool {
        bytes.len() >= HEADER_LEN
            && (bytes[3] == Kind::Groups as u8 || bytes[3] == Kind::Boss as u8)
    }

    fn deliver(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Out<M, R>,
    ) -> Result<(), Error> {
        if Self::is_registry(bytes) {
            let mut rout = std::mem::take(&mut self.rout);
            let r = self
                .registry
                .handle_message(now, from, channel, bytes, &mut rout);
            self.route_registry(now, &mut rout, out);
            self.rout = rout;
            return r.map_err(|e| {
                self.refused += 1;
                Error::Protocol(e.to_string())
            });
        }
        let mut mout = std::mem::take(&mut self.mout);
        let r = match channel {
            Channel::Datagram => self.membership.handle_datagram(now, from, bytes, &mut mout),
            Channel::Stream => self.membership.handle_stream(now, from, bytes, &mut mout),
        };
        self.mout = mout;
        self.route_membership(now, out);
        r
    }
}

impl<M: MembershipCore, R: RegistryCore> MembershipCore for Stack<M, R> {
    type Timer = StackTimer<M::Timer, R::Timer>;

    fn id(&self) -> NodeId {
        self.membership.id()
    }

    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Output<Self::Timer>>) {
        self.call(now, out, |r, o| r.start(now, o));
        self.membership.start(now, seeds, &mut self.mout);
        self.route_membership(now, out);
    }

    fn preseed(&mut self, now: Time, members: &[NodeId], out: &mut Vec<Output<Self::Timer>>) {
        self.call(now, out, |r, o| r.start(now, o));
        self.membership.preseed(now, members, &mut self.mout);
        self.route_membership(now, out);
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
        self.membership.handle_link(now, event, &mut self.mout);
        self.route_membership(now, out);
    }

    fn handle_timer(&mut self, now: Time, timer: Self::Timer, out: &mut Vec<Output<Self::Timer>>) {
        match timer {
            StackTimer::Membership(t) => {
                self.membership.handle_timer(now, t, &mut self.mout);
                self.route_membership(now, out);
            }
            StackTimer::Registry(t) => self.call(now, out, |r, o| r.handle_timer(now, t, o)),
        }
    }

    fn leave(&mut self, now: Time, out: &mut Vec<Output<Self::Timer>>) {
        self.membership.leave(now, &mut self.mout);
        self.route_membership(now, out);
    }

    fn num_members(&self) -> usize {
        self.membership.num_members()
    }

    fn members(&self) -> Vec<NodeId> {
        self.membership.members()
    }
}
