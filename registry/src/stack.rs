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
use meshreg_membership::{
    Channel, Error, LinkEvent, MemberEvent, MembershipCore, NodeId, Output, Time,
};

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

/// Output buffers are kept between calls to save an allocation per message, but not after a
/// burst: a preseed or a healed partition pushes one event per member, and at 10,000 nodes a
/// kept buffer of that size in every node was gigabytes of the simulated cluster.
fn reuse<T>(v: Vec<T>) -> Vec<T> {
    debug_assert!(v.is_empty());
    if v.capacity() > 256 { Vec::new() } else { v }
}

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
        self.rout = reuse(rout);
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
        let log = &mut self.log;
        self.registry.drain_events_with(&mut |e| log.push((now, e)));
    }

    /// Carries the membership core's outputs out, feeding its events to the backend.
    ///
    /// A `Down(old)` reported together with the `Up(new)` of a newer generation at the same
    /// address (it renewed or restarted, and said Hello) reaches the backend after that `Up`:
    /// both backends retire `old` on the first evidence of `new` (a later `Down(old)` changes
    /// nothing), and so know, when they retire it, who replaces it. The coordinated boss then
    /// waits for `new` where it waited for `old`, rather than completing an op the renewed node,
    /// which keeps its table, has not applied.
    fn route_membership(&mut self, now: Time, out: &mut Out<M, R>) {
        let mut mout = std::mem::take(&mut self.mout);
        let mut rout = std::mem::take(&mut self.rout);
        let mut outputs = mout.drain(..).peekable();
        while let Some(o) = outputs.next() {
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
                Output::Event(MemberEvent::Down(old)) => {
                    let next = outputs.next_if(|n| {
                        matches!(n, Output::Event(MemberEvent::Up(new))
                            if new.addr() == old.addr() && new.generation() > old.generation())
                    });
                    if let Some(Output::Event(up)) = next {
                        // Backend order: Up first; the driver sees the membership core's.
                        self.registry.member_event(now, up, &mut rout);
                        self.registry
                            .member_event(now, MemberEvent::Down(old), &mut rout);
                        out.push(Output::Event(MemberEvent::Down(old)));
                        out.push(Output::Event(up));
                    } else {
                        self.registry
                            .member_event(now, MemberEvent::Down(old), &mut rout);
                        out.push(Output::Event(MemberEvent::Down(old)));
                    }
                }
                Output::Event(e) => {
                    self.registry.member_event(now, e, &mut rout);
                    out.push(Output::Event(e));
                }
            }
        }
        drop(outputs);
        self.mout = reuse(mout);
        self.route_registry(now, &mut rout, out);
        self.rout = reuse(rout);
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
            self.rout = reuse(rout);
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

    fn suspect(&mut self, now: Time, id: NodeId, out: &mut Vec<Output<Self::Timer>>) {
        self.membership.suspect(now, id, &mut self.mout);
        self.route_membership(now, out);
    }

    fn num_members(&self) -> usize {
        self.membership.num_members()
    }

    fn members(&self) -> Vec<NodeId> {
        self.membership.members()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;
    use std::time::Duration;

    use meshreg_membership::{
        Channel, Error, LinkEvent, MemberEvent, MembershipCore, NodeId, Output, Time, loopback_addr,
    };

    use super::Stack;
    use crate::groups::{GroupEvent, GroupName, GroupTable, ScopeName};
    use crate::{MessageError, Pid, RegistryCore, RegistryOutput, RequestId};

    /// Emits the events it is given on its next timer.
    struct Script {
        id: NodeId,
        next: Vec<MemberEvent>,
    }

    impl MembershipCore for Script {
        type Timer = ();
        fn id(&self) -> NodeId {
            self.id
        }
        fn start(&mut self, _: Time, _: &[SocketAddrV4], _: &mut Vec<Output<()>>) {}
        fn handle_datagram(
            &mut self,
            _: Time,
            _: SocketAddrV4,
            _: &[u8],
            _: &mut Vec<Output<()>>,
        ) -> Result<(), Error> {
            Ok(())
        }
        fn handle_stream(
            &mut self,
            _: Time,
            _: SocketAddrV4,
            _: &[u8],
            _: &mut Vec<Output<()>>,
        ) -> Result<(), Error> {
            Ok(())
        }
        fn handle_link(&mut self, _: Time, _: LinkEvent, _: &mut Vec<Output<()>>) {}
        fn handle_timer(&mut self, _: Time, (): (), out: &mut Vec<Output<()>>) {
            out.extend(self.next.drain(..).map(Output::Event));
        }
        fn leave(&mut self, _: Time, _: &mut Vec<Output<()>>) {}
        fn num_members(&self) -> usize {
            0
        }
        fn members(&self) -> Vec<NodeId> {
            Vec::new()
        }
    }

    /// Records the membership events it is fed.
    struct Recorder {
        table: GroupTable,
        seen: Vec<MemberEvent>,
    }

    impl RegistryCore for Recorder {
        type Timer = ();
        fn table(&self) -> &GroupTable {
            &self.table
        }
        fn drain_events(&mut self) -> Vec<GroupEvent> {
            Vec::new()
        }
        fn start(&mut self, _: Time, _: &mut Vec<RegistryOutput<()>>) {}
        fn member_event(&mut self, _: Time, e: MemberEvent, _: &mut Vec<RegistryOutput<()>>) {
            self.seen.push(e);
        }
        fn join(
            &mut self,
            _: Time,
            _: RequestId,
            _: &ScopeName,
            _: &GroupName,
            _: Pid,
            _: &[u8],
            _: &mut Vec<RegistryOutput<()>>,
        ) {
        }
        fn leave(
            &mut self,
            _: Time,
            _: RequestId,
            _: &ScopeName,
            _: &GroupName,
            _: Pid,
            _: &mut Vec<RegistryOutput<()>>,
        ) {
        }
        fn process_exit(&mut self, _: Time, _: Pid, _: &mut Vec<RegistryOutput<()>>) {}
        fn handle_message(
            &mut self,
            _: Time,
            _: SocketAddrV4,
            _: Channel,
            _: &[u8],
            _: &mut Vec<RegistryOutput<()>>,
        ) -> Result<(), MessageError> {
            Ok(())
        }
        fn handle_timer(&mut self, _: Time, (): (), _: &mut Vec<RegistryOutput<()>>) {}
    }

    #[test]
    fn a_down_replaced_by_a_newer_generation_reaches_the_backend_after_its_up() {
        let me = NodeId::new(loopback_addr(0, 7000), 1 << 16);
        let other = NodeId::new(loopback_addr(1, 7000), 1 << 16);
        let third = NodeId::new(loopback_addr(2, 7000), 1 << 16);
        let (old, new) = (other, other.next_generation());
        let script = vec![
            MemberEvent::Down(third),
            MemberEvent::Down(old),
            MemberEvent::Up(new),
            MemberEvent::Up(third.next_creation()),
        ];
        let mut stack = Stack::new(
            Script {
                id: me,
                next: script.clone(),
            },
            Recorder {
                table: GroupTable::new(me),
                seen: Vec::new(),
            },
        );
        let mut out = Vec::new();
        stack.handle_timer(Duration::ZERO, super::StackTimer::Membership(()), &mut out);
        let reported: Vec<MemberEvent> = out
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(*e),
                _ => None,
            })
            .collect();
        assert_eq!(
            reported, script,
            "the driver sees the membership core's order"
        );
        assert_eq!(
            stack.registry.seen,
            vec![
                MemberEvent::Down(third),
                MemberEvent::Up(new),
                MemberEvent::Down(old),
                MemberEvent::Up(third.next_creation()),
            ]
        );
    }
}
