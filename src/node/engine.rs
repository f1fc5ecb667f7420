//! The node's protocol stack behind one object-safe interface, with its timers.
//!
//! The two backends are different types (`Stack<Swim, GossipGroups>` and
//! `Stack<Mesh, CoordinatedGroups>`) with different timer payloads. [`Engine`] erases both: it
//! keeps the stack's timers in its own queue and turns every output into a non-generic
//! [`Action`] the runtime carries out. The runtime never sees a timer payload; it only asks for
//! the next deadline and fires what is due.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use meshreg_membership::Time;
use meshreg_membership::{Channel, Error, LinkEvent, MemberEvent, MembershipCore, NodeId, Output};
use meshreg_registry::groups::{GroupEvent, GroupName, GroupTable, ScopeName};
use meshreg_registry::session::manager::{
    CallId, ManagerStats, SessionCallError, SessionManager, SessionOutput,
};
use meshreg_registry::session::{Outcome, SessionKey};
use meshreg_registry::session_stack::{SessionStack, SessionStackTimer};
use meshreg_registry::{CallError, Pid, RegistryCore, RequestId};

/// What the stack asks the runtime to do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send enveloped bytes.
    Send {
        to: SocketAddrV4,
        channel: Channel,
        payload: Vec<u8>,
    },
    /// Open a link (full mesh).
    Connect(SocketAddrV4),
    /// Close a link.
    Disconnect(SocketAddrV4),
    /// Cluster membership changed.
    Member(MemberEvent),
    /// This node renewed its identity.
    Renewed(NodeId),
    /// A member said farewell (its Down follows).
    Left(NodeId),
    /// A local `join`/`leave` finished.
    Completed(RequestId, Result<(), CallError>),
    /// The group table changed.
    Group(GroupEvent),
    /// A local session call finished.
    SessionCompleted(CallId, Result<Outcome, SessionCallError>),
    /// A local process lost its session (replaced, or found taken on re-assertion).
    SessionLost(SessionKey, Pid),
}

/// A session-manager call run by [`Engine::session`].
pub(crate) type SessionCall<'a> = &'a mut dyn FnMut(&mut SessionManager, &mut Vec<SessionOutput>);

/// One node's membership core plus discovery backend, with timers kept inside.
pub(crate) trait Engine: Send {
    /// This node's current identity.
    fn id(&self) -> NodeId;
    /// Joins the cluster through `seeds`.
    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Action>);
    /// A datagram or frame of a membership or backend kind arrived.
    fn deliver(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Error>;
    /// The transport's link state changed.
    fn link(&mut self, now: Time, event: LinkEvent, out: &mut Vec<Action>);
    /// The earliest armed timer, if any.
    fn next_deadline(&self) -> Option<Time>;
    /// Fires every timer due at `now`.
    fn fire_due(&mut self, now: Time, out: &mut Vec<Action>);
    /// The discovery backend and the session manager hold their frames until
    /// [`Engine::release`] (see `RegistryCore::hold`, `SessionManager::hold`): brackets a
    /// burst of inputs handled under one lock.
    fn hold(&mut self, now: Time);
    /// Sends what the backend held since [`Engine::hold`].
    fn release(&mut self, now: Time, out: &mut Vec<Action>);
    /// Starts a join call.
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors RegistryCore::join plus the action sink"
    )]
    fn join(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<Action>,
    );
    /// Starts a join nobody waits for (`RegistryCore::join_detached`): a settings error now,
    /// else `Ok` and no completion.
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors RegistryCore::join_detached plus the action sink"
    )]
    fn join_detached(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), CallError>;
    /// Starts a leave call.
    fn leave(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        out: &mut Vec<Action>,
    );
    /// A local process ended.
    fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Vec<Action>);
    /// Runs a session-manager call (register, lookup, the session-role set).
    fn session(&mut self, now: Time, f: SessionCall<'_>, out: &mut Vec<Action>);
    /// The session manager's counters, the sessions held by this node's replicas and their
    /// heap bytes.
    fn session_stats(&self) -> (ManagerStats, usize, usize);
    /// Leaves the cluster cleanly.
    fn leave_cluster(&mut self, now: Time, out: &mut Vec<Action>);
    /// What this node knows of the groups.
    fn table(&self) -> &GroupTable;
    /// Heap bytes of the backend.
    fn heap_bytes(&self) -> usize;
    /// Live members, this node excluded.
    fn members(&self) -> Vec<NodeId>;
}

/// [`Engine`] over a [`SessionStack`] (membership, discovery backend, session manager).
pub(crate) struct StackEngine<M: MembershipCore, R: RegistryCore> {
    stack: SessionStack<M, R>,
    /// Armed timers by (deadline, arming order): fired in that order, as the simulator does.
    timers: BTreeMap<(Time, u64), SessionStackTimer<M::Timer, R::Timer>>,
    armed: u64,
    out: Vec<Output<SessionStackTimer<M::Timer, R::Timer>>>,
}

impl<M, R> StackEngine<M, R>
where
    M: MembershipCore,
    R: RegistryCore,
{
    pub(crate) fn new(stack: SessionStack<M, R>) -> Self {
        Self {
            stack,
            timers: BTreeMap::new(),
            armed: 0,
            out: Vec::new(),
        }
    }

    /// Turns the stack's outputs (and its logged completions and table events) into actions.
    fn flush(&mut self, now: Time, out: &mut Vec<Action>) {
        for o in self.out.drain(..) {
            match o {
                Output::Send {
                    to,
                    channel,
                    payload,
                } => out.push(Action::Send {
                    to,
                    channel,
                    payload,
                }),
                Output::SetTimer { after, timer } => {
                    self.armed += 1;
                    self.timers.insert((now + after, self.armed), timer);
                }
                Output::Connect { to } => out.push(Action::Connect(to)),
                Output::Disconnect { to } => out.push(Action::Disconnect(to)),
                Output::Event(e) => out.push(Action::Member(e)),
                Output::Renewed(id) => out.push(Action::Renewed(id)),
                Output::Left(id) => out.push(Action::Left(id)),
            }
        }
        let inner = &mut self.stack.inner;
        out.extend(
            inner
                .completed
                .drain(..)
                .map(|(_, req, result)| Action::Completed(req, result)),
        );
        out.extend(inner.log.drain(..).map(|(_, e)| Action::Group(e)));
        out.extend(
            self.stack
                .completed
                .drain(..)
                .map(|(_, req, result)| Action::SessionCompleted(req, result)),
        );
        out.extend(
            self.stack
                .lost
                .drain(..)
                .map(|(_, key, pid)| Action::SessionLost(key, pid)),
        );
    }
}

impl<M, R> Engine for StackEngine<M, R>
where
    M: MembershipCore + Send,
    R: RegistryCore + Send,
    M::Timer: Send,
    R::Timer: Send,
{
    fn id(&self) -> NodeId {
        self.stack.id()
    }

    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Action>) {
        self.stack.start(now, seeds, &mut self.out);
        self.flush(now, out);
    }

    fn deliver(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let r = match channel {
            Channel::Datagram => self.stack.handle_datagram(now, from, bytes, &mut self.out),
            Channel::Stream => self.stack.handle_stream(now, from, bytes, &mut self.out),
        };
        self.flush(now, out);
        r
    }

    fn link(&mut self, now: Time, event: LinkEvent, out: &mut Vec<Action>) {
        self.stack.handle_link(now, event, &mut self.out);
        self.flush(now, out);
    }

    fn next_deadline(&self) -> Option<Time> {
        self.timers.first_key_value().map(|((t, _), _)| *t)
    }

    fn fire_due(&mut self, now: Time, out: &mut Vec<Action>) {
        // Timers armed while firing are due no earlier than `now`; a zero delay fires in this
        // same loop, so the loop is bounded only by the cores not arming zero-delay chains.
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.stack.handle_timer(now, timer, &mut self.out);
            self.flush(now, out);
        }
    }

    fn join(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<Action>,
    ) {
        self.stack.group_call(now, &mut self.out, |r, o| {
            r.join(now, req, scope, group, pid, meta, o)
        });
        self.flush(now, out);
    }

    fn join_detached(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), CallError> {
        let mut result = Ok(());
        self.stack.group_call(now, &mut self.out, |r, o| {
            result = r.join_detached(now, req, scope, group, pid, meta, o);
        });
        self.flush(now, out);
        result
    }

    fn leave(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        out: &mut Vec<Action>,
    ) {
        self.stack.group_call(now, &mut self.out, |r, o| {
            r.leave(now, req, scope, group, pid, o)
        });
        self.flush(now, out);
    }

    fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Vec<Action>) {
        self.stack
            .group_call(now, &mut self.out, |r, o| r.process_exit(now, pid, o));
        self.stack
            .call(now, &mut self.out, |s, o| s.process_exit(now, pid, o));
        self.flush(now, out);
    }

    fn session(&mut self, now: Time, f: SessionCall<'_>, out: &mut Vec<Action>) {
        self.stack.call(now, &mut self.out, f);
        self.flush(now, out);
    }

    fn session_stats(&self) -> (ManagerStats, usize, usize) {
        let m = &self.stack.sessions;
        let (mut n, mut heap) = (0, 0);
        for s in m.replicas() {
            n += s.len();
            heap += s.heap_bytes();
        }
        (m.stats().clone(), n, heap)
    }

    fn leave_cluster(&mut self, now: Time, out: &mut Vec<Action>) {
        self.stack.leave(now, &mut self.out);
        self.flush(now, out);
    }

    fn hold(&mut self, now: Time) {
        self.stack.group_call(now, &mut self.out, |r, _| r.hold());
        self.stack.sessions.hold();
    }

    fn release(&mut self, now: Time, out: &mut Vec<Action>) {
        self.stack
            .group_call(now, &mut self.out, |r, o| r.release(now, o));
        self.stack
            .call(now, &mut self.out, |s, o| s.release(now, o));
        self.flush(now, out);
    }

    fn table(&self) -> &GroupTable {
        self.stack.inner.registry.table()
    }

    fn heap_bytes(&self) -> usize {
        self.stack.inner.registry.heap_bytes()
    }

    fn members(&self) -> Vec<NodeId> {
        self.stack.members()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::{Mesh, Profile};
    use meshreg_registry::coordinated::{CoordinatedConfig, CoordinatedGroups};
    use meshreg_registry::session::manager::ManagerConfig;
    use meshreg_registry::stack::Stack;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn engine() -> StackEngine<Mesh, CoordinatedGroups> {
        let id = NodeId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000), 1 << 16);
        let stack = Stack::new(
            Mesh::new(id, 1, Profile::Test, 1),
            CoordinatedGroups::with_config(id, 1, CoordinatedConfig::for_profile(Profile::Test)),
        );
        let sessions = SessionManager::new(id, 1, ManagerConfig::for_profile(Profile::Test, 64));
        StackEngine::new(SessionStack::new(stack, sessions))
    }

    #[test]
    fn a_lone_node_arms_timers_and_completes_a_local_join() {
        let mut e = engine();
        let mut out = Vec::new();
        e.start(Duration::ZERO, &[], &mut out);
        assert!(e.next_deadline().is_some(), "periodic timers are armed");
        let pid = Pid {
            node: e.id().root(),
            serial: 1,
        };
        let scope = ScopeName::new("s").unwrap();
        let group = GroupName::new("g").unwrap();
        e.join(Duration::ZERO, 9, &scope, &group, pid, b"m", &mut out);
        let t = Duration::from_secs(1);
        e.fire_due(t, &mut out);
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Completed(9, Ok(())))),
            "{out:?}"
        );
        assert!(out.iter().any(|a| matches!(a, Action::Group(_))));
        assert_eq!(e.table().members("s", "g").len(), 1);
        assert!(e.next_deadline().unwrap() > t, "due timers were consumed");
    }
}
