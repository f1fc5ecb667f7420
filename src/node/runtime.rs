//! The tokio driver: runs the node's [`Engine`] against the transport and the clock.
//!
//! One task (the driver loop) feeds transport events and due timers to the engine. API calls
//! (join, leave, process exits, monitors) drive the engine directly from the caller's task.
//! Both take the one state lock, so the engine sees one input at a time, in the order the lock
//! was taken; whoever holds it carries out the resulting [`Action`]s before releasing it, so
//! events reach subscribers in the order the table changed.
//!
//! Architecture Invariant: nothing awaits while holding the state lock (transport sends are
//! non-blocking there: a full per-peer queue is a counted drop the protocols repair), so the
//! lock is held for one input's worth of work.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use meshreg_membership::wire::{HEADER_LEN, Kind};
use meshreg_membership::{Channel, MemberEvent, NodeId, Time};
use meshreg_registry::groups::{GroupEvent, GroupName, ScopeName};
use meshreg_registry::session::Outcome;
use meshreg_registry::session::manager::SessionCallError;
use meshreg_registry::{CallError, Pid, RequestId};
use tokio::sync::{Notify, mpsc, oneshot};

use super::builder::NodeConfig;
use super::engine::{Action, Engine};
use super::monitor::{DownReason, Monitors};
use super::process::Message;
use super::proto::{self, ProcMsg};
use super::sessions::{ROLES_SCOPE, SESSION_ROLE, SessionLost};
use super::stats::Counters;
use super::subscribe::Subscribers;
use crate::transport::{Transport, TransportEvent};

/// Everything behind the state lock.
pub(crate) struct State {
    pub(crate) engine: Box<dyn Engine>,
    /// Group calls (join, leave) in flight.
    pub(crate) pending: Calls<Result<(), CallError>>,
    pub(crate) scope_subs: HashMap<ScopeName, Subscribers<GroupEvent>>,
    pub(crate) group_subs: HashMap<(ScopeName, GroupName), Subscribers<GroupEvent>>,
    pub(crate) member_subs: Subscribers<MemberEvent>,
    /// Session calls in flight.
    pub(crate) session_pending: Calls<Result<Outcome, SessionCallError>>,
    /// Subscribers of lost sessions of local processes.
    pub(crate) session_subs: Subscribers<SessionLost>,
    /// The session-role group changed: the session manager must get the new set before the
    /// lock is released.
    roles_dirty: bool,
    pub(crate) monitors: Monitors,
    /// Live members by root (a node's processes outlive its renewals): root -> identity.
    pub(crate) live: HashMap<NodeId, NodeId>,
    /// Set by shutdown: later calls fail with `Stopped`.
    pub(crate) stopped: bool,
    /// The deadline the driver loop sleeps until (`None`: no timer armed). A call wakes the
    /// loop only when it armed an earlier timer.
    sleeping_until: Option<Time>,
    actions: Vec<Action>,
    /// The next call's request id. Under the lock rather than an atomic of its own: every
    /// call takes the lock anyway, and a shared counter was one more cache line bouncing
    /// between the threads of a busy node per call.
    next_req: RequestId,
}

impl State {
    /// A fresh request id for a call started under this lock.
    pub(crate) fn next_request(&mut self) -> RequestId {
        let req = self.next_req;
        self.next_req += 1;
        req
    }
}

/// Hashes the request ids of [`Calls`]: one SplitMix64 mix per id instead of SipHash.
///
/// Why: every call not answered within its own input inserts and removes its id here, under
/// the state lock (SipHash was ~1% of a node's CPU per session call under load). The ids are
/// drawn from this node's own counter, never chosen by a peer, so flooding one bucket is not a
/// concern and no seed is needed.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        meshreg_membership::mix64(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` ids are hashed; this keeps the hasher total for any other key.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 ^= id;
    }
}

/// The engine calls of one kind in flight, by request id (group and session calls draw their
/// ids from one counter, so an id names one call of either kind).
pub(crate) struct Calls<T> {
    /// Where the answer of each call started and not yet answered goes.
    waiting: HashMap<u64, oneshot::Sender<T>, BuildHasherDefault<IdHasher>>,
    /// The call being started under the lock right now, and its answer if the engine gave it
    /// before returning (a lone coordinated node, every gossip join): that call then returns
    /// without a channel or a map entry.
    inline: Option<(u64, Option<T>)>,
}

impl<T> Default for Calls<T> {
    fn default() -> Self {
        Self {
            waiting: HashMap::default(),
            inline: None,
        }
    }
}

impl<T> Calls<T> {
    /// Call `req` is answered `result`; a call nobody waits for any more (the node stopped)
    /// is dropped.
    fn complete(&mut self, req: u64, result: T) {
        if let Some((id, slot)) = &mut self.inline
            && *id == req
        {
            *slot = Some(result);
        } else if let Some(tx) = self.waiting.remove(&req) {
            let _ = tx.send(result);
        }
    }

    /// Waits for the answer of call `req` through a channel.
    pub(crate) fn wait(&mut self, req: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(req, tx);
        rx
    }

    /// Forgets every call: their callers see the node stopped.
    pub(crate) fn clear(&mut self) {
        self.waiting.clear();
        self.inline = None;
    }
}

/// State shared by the node handle, its processes and the driver loop.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) cluster: u32,
    /// The root identity: what this node's pids name.
    pub(crate) root: NodeId,
    pub(crate) transport: Transport,
    pub(crate) counters: Counters,
    /// Wakes the driver loop: a call may have armed a timer earlier than it sleeps for.
    pub(crate) wake: Notify,
    started: Instant,
    next_serial: AtomicU64,
    /// Mailboxes of live local processes, by serial. Its own lock so local and incoming sends
    /// never wait for the engine.
    pub(crate) procs: RwLock<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(
        config: NodeConfig,
        root: NodeId,
        engine: Box<dyn Engine>,
        transport: Transport,
    ) -> Self {
        let cluster = config.cluster_id();
        Self {
            config,
            cluster,
            root,
            transport,
            counters: Counters::default(),
            wake: Notify::new(),
            started: Instant::now(),
            next_serial: AtomicU64::new(1),
            procs: RwLock::new(HashMap::new()),
            state: Mutex::new(State {
                engine,
                pending: Calls::default(),
                scope_subs: HashMap::new(),
                group_subs: HashMap::new(),
                member_subs: Subscribers::default(),
                session_pending: Calls::default(),
                session_subs: Subscribers::default(),
                roles_dirty: false,
                monitors: Monitors::default(),
                live: HashMap::new(),
                stopped: false,
                sleeping_until: None,
                actions: Vec::new(),
                next_req: 1,
            }),
        }
    }

    /// Time since the node started: the engine's clock.
    pub(crate) fn now(&self) -> Time {
        self.started.elapsed()
    }

    /// The state lock. A panic while holding it is a bug that already aborted a call; the state
    /// itself stays consistent per input, so later callers go on.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn next_pid(&self) -> Pid {
        Pid {
            node: self.root,
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Starts one engine call under a fresh request id whose answer arrives through the calls
    /// `pending` selects, and waits for it. `None`: the node stopped (before or during the call).
    /// A call the engine answers while starting it returns at once: no channel, no map entry.
    pub(crate) async fn call<T>(
        &self,
        pending: impl Fn(&mut State) -> &mut Calls<T>,
        f: impl FnOnce(&mut dyn Engine, Time, u64, &mut Vec<Action>),
    ) -> Option<T> {
        let rx = {
            let mut st = self.lock();
            if st.stopped {
                return None;
            }
            let req = st.next_request();
            pending(&mut st).inline = Some((req, None));
            self.drive(&mut st, |e, now, out| f(e, now, req, out));
            self.wake_if_earlier(&st);
            match pending(&mut st).inline.take() {
                Some((_, Some(result))) => return Some(result),
                // Not answered yet: the answer arrives through a channel, registered before the
                // lock is released (only a holder of the lock can complete the call).
                _ => pending(&mut st).wait(req),
            }
        };
        rx.await.ok()
    }

    /// Runs `f` on the engine at `now` and carries out what it asked for, under the lock.
    pub(crate) fn drive(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut dyn Engine, Time, &mut Vec<Action>),
    ) {
        let now = self.now();
        let mut actions = std::mem::take(&mut st.actions);
        f(st.engine.as_mut(), now, &mut actions);
        for a in actions.drain(..) {
            self.apply(st, a);
        }
        // The session-role set follows the reserved group: fed to the session manager within
        // the same input, so placement never lags the table it is derived from. Bounded: the
        // session manager's outputs never change the group table.
        while std::mem::take(&mut st.roles_dirty) {
            let nodes: Vec<SocketAddrV4> = st
                .engine
                .table()
                .members(ROLES_SCOPE, SESSION_ROLE)
                .map(|m| m.pid.node.addr())
                .collect();
            st.engine.session(
                now,
                &mut |m, o| m.set_session_nodes(now, nodes.iter().copied(), o),
                &mut actions,
            );
            for a in actions.drain(..) {
                self.apply(st, a);
            }
        }
        st.actions = actions;
    }

    fn apply(&self, st: &mut State, action: Action) {
        match action {
            Action::Send {
                to,
                channel: Channel::Datagram,
                payload,
            } => self.transport.send_datagram(to, payload),
            Action::Send {
                to,
                channel: Channel::Stream,
                payload,
            } => {
                if self.transport.send_frame(to, payload).is_err() {
                    // The protocols repair lost frames (anti-entropy, retries); counted so an
                    // operator sees a saturated link.
                    self.counters.protocol_frames_dropped.bump();
                }
            }
            Action::Connect(to) => self.transport.connect(to),
            Action::Disconnect(to) => self.transport.disconnect(to),
            Action::Member(e) => self.member_event(st, e),
            Action::Renewed(id) => {
                tracing::warn!(node = %self.config.name, new = ?id, "declared down by the cluster: renewed identity");
                self.counters.renewals.bump();
            }
            Action::Left(id) => {
                tracing::info!(node = %self.config.name, left = ?id, "a member left the cluster");
                self.counters.peers_left.bump();
            }
            Action::Completed(req, result) => st.pending.complete(req, result),
            Action::Group(e) => {
                let m = &e.membership;
                if m.scope.as_str() == ROLES_SCOPE && m.group.as_str() == SESSION_ROLE {
                    st.roles_dirty = true;
                }
                publish_group_event(st, &e);
            }
            Action::SessionCompleted(req, result) => st.session_pending.complete(req, result),
            Action::SessionLost(key, pid) => {
                st.session_subs.publish(&SessionLost { key, pid });
            }
        }
    }

    fn member_event(&self, st: &mut State, e: MemberEvent) {
        match e {
            MemberEvent::Up(id) => {
                st.live.insert(id.root(), id);
            }
            MemberEvent::Down(id) => {
                if st.live.get(&id.root()) == Some(&id) {
                    st.live.remove(&id.root());
                    st.monitors.node_down(id.root());
                }
            }
        }
        st.member_subs.publish(&e);
    }

    /// A local process ended: it leaves its groups, its monitors fire, watching nodes are told.
    pub(crate) fn process_exit(&self, serial: u64) {
        let removed = self
            .procs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&serial);
        if removed.is_none() {
            return;
        }
        let pid = Pid {
            node: self.root,
            serial,
        };
        let mut st = self.lock();
        if st.stopped {
            return;
        }
        self.drive(&mut st, |e, now, out| e.process_exit(now, pid, out));
        let watchers = st.monitors.local_exit(serial);
        self.wake_if_earlier(&st);
        drop(st);
        let down = proto::encode(
            self.cluster,
            &ProcMsg::Down {
                pid,
                reason: DownReason::Exited,
            },
        );
        // No protocol repairs a lost notice, so a full queue defers it rather than dropping it.
        for w in watchers {
            let _ = self.transport.send_frame_or_defer(w, down.clone());
        }
    }

    /// Handles a batch of transport events under one lock. The backend holds its frames over
    /// the batch, so what it says to one peer leaves as one frame (an ack per partition, not
    /// per op) when the lock is released.
    pub(crate) fn handle_events(&self, batch: &mut Vec<TransportEvent>) {
        let mut st = self.lock();
        let now = self.now();
        st.engine.hold(now);
        for ev in batch.drain(..) {
            match ev {
                TransportEvent::Datagram { from, payload } => {
                    self.deliver(&mut st, from, Channel::Datagram, &payload)
                }
                TransportEvent::Frame { from, payload } => {
                    if payload.len() >= HEADER_LEN && payload[3] == Kind::Process as u8 {
                        self.process_message(&mut st, from, &payload);
                    } else {
                        self.deliver(&mut st, from, Channel::Stream, &payload);
                    }
                }
                TransportEvent::Link(event) => self.drive(&mut st, |e, now, out| {
                    e.link(now, event, out);
                }),
            }
        }
        self.drive(&mut st, |e, now, out| e.release(now, out));
    }

    fn deliver(&self, st: &mut State, from: SocketAddrV4, channel: Channel, bytes: &[u8]) {
        let mut refused = None;
        self.drive(st, |e, now, out| {
            refused = e.deliver(now, from, channel, bytes, out).err();
        });
        if let Some(err) = refused {
            self.counters.refused_messages.bump();
            tracing::debug!(%from, %err, "dropped a message");
        }
    }

    fn process_message(&self, st: &mut State, from: SocketAddrV4, bytes: &[u8]) {
        let msg = match proto::decode(self.cluster, bytes) {
            Ok(m) => m,
            Err(err) => {
                self.counters.refused_messages.bump();
                tracing::debug!(%from, %err, "dropped a process message");
                return;
            }
        };
        match msg {
            ProcMsg::Send { to, from, body } => {
                if self.deliver_local(to, Message { from, body }).is_err() {
                    self.counters.messages_to_dead_processes.bump();
                }
            }
            ProcMsg::Monitor { target } => {
                // Checked under the state lock, after which an exit reports to the watchers: an
                // exit either happened before (NoProcess now) or will report (see process_exit).
                if self.is_alive(target) {
                    st.monitors.add_watcher(target.serial, from);
                } else {
                    let reply = ProcMsg::Down {
                        pid: target,
                        reason: DownReason::NoProcess,
                    };
                    let _ = self
                        .transport
                        .send_frame_or_defer(from, proto::encode(self.cluster, &reply));
                }
            }
            ProcMsg::Down { pid, reason } => st.monitors.remote_down(pid, reason),
        }
    }

    /// Whether `pid` is a live process of this node.
    pub(crate) fn is_alive(&self, pid: Pid) -> bool {
        pid.node == self.root
            && self
                .procs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&pid.serial)
    }

    /// Puts `msg` in local process `pid`'s mailbox.
    pub(crate) fn deliver_local(&self, pid: Pid, msg: Message) -> Result<(), Message> {
        if pid.node != self.root {
            return Err(msg);
        }
        let procs = self.procs.read().unwrap_or_else(|p| p.into_inner());
        match procs.get(&pid.serial) {
            Some(tx) => tx.send(msg).map_err(|e| e.0),
            None => Err(msg),
        }
    }

    /// Fires due timers; returns the next deadline (which the loop then sleeps until).
    pub(crate) fn fire_timers(&self) -> Option<Time> {
        let mut st = self.lock();
        let now = self.now();
        st.engine.hold(now);
        self.drive(&mut st, |e, now, out| e.fire_due(now, out));
        self.drive(&mut st, |e, now, out| e.release(now, out));
        st.sleeping_until = st.engine.next_deadline();
        st.sleeping_until
    }

    /// The next deadline, recorded as what the loop sleeps until.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        let mut st = self.lock();
        st.sleeping_until = st.engine.next_deadline();
        st.sleeping_until
    }

    /// After a call drove the engine: wake the loop if the call armed a timer earlier than the
    /// one it sleeps until (most calls arm none, or a later one: no wake-up, no contention).
    pub(crate) fn wake_if_earlier(&self, st: &State) {
        if let Some(d) = st.engine.next_deadline()
            && st.sleeping_until.is_none_or(|s| d < s)
        {
            self.wake.notify_one();
        }
    }

    /// When the loop wakes for a timer due at `t`: rounded up to the next whole millisecond,
    /// so timers armed by a burst of calls fire together under one lock instead of one wake-up
    /// each (a coordinated join arms a retry timer per call). No profile needs finer timers.
    pub(crate) fn deadline_instant(&self, t: Time) -> tokio::time::Instant {
        let ms = t.as_nanos().div_ceil(1_000_000);
        let rounded = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
        tokio::time::Instant::from_std(self.started + rounded)
    }
}

fn publish_group_event(st: &mut State, e: &GroupEvent) {
    let m = &e.membership;
    // Most nodes follow no scope: no name hashed per table change then.
    if !st.scope_subs.is_empty()
        && let Some(subs) = st.scope_subs.get_mut(&m.scope)
        && !subs.publish(e)
    {
        st.scope_subs.remove(&m.scope);
    }
    if st.group_subs.is_empty() {
        return;
    }
    let key = (m.scope.clone(), m.group.clone());
    if let Some(subs) = st.group_subs.get_mut(&key)
        && !subs.publish(e)
    {
        st.group_subs.remove(&key);
    }
}

/// The driver loop: transport events and timers until `stop` fires or the transport closes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<TransportEvent>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut deadline = shared.fire_timers();
    loop {
        let sleep_until = deadline.map_or_else(
            || tokio::time::Instant::now() + std::time::Duration::from_secs(3600),
            |t| shared.deadline_instant(t),
        );
        tokio::select! {
            biased;
            _ = &mut stop => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                batch.push(ev);
                while batch.len() < 256 {
                    match events.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
                shared.handle_events(&mut batch);
                deadline = shared.next_deadline();
                if deadline.is_some_and(|t| t <= shared.now()) {
                    deadline = shared.fire_timers();
                }
            }
            () = tokio::time::sleep_until(sleep_until) => deadline = shared.fire_timers(),
            () = shared.wake.notified() => {
                // A call armed an earlier timer; one already due (a session flush, armed with
                // zero delay) fires now rather than at the next whole millisecond. The loop
                // first lets every task already runnable go (callers woken by one reply frame
                // all queue their calls), so the flush sends them in one message per primary
                // rather than one each as the woken callers trickle in.
                tokio::task::yield_now().await;
                deadline = shared.next_deadline();
                if deadline.is_some_and(|t| t <= shared.now()) {
                    deadline = shared.fire_timers();
                }
            }
        }
    }
}
