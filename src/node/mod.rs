//! The node: what a service embeds to join a meshreg cluster.
//!
//! [`Node::builder`] configures and starts one; the node then runs the sans-IO membership core
//! and discovery backend of the chosen [`Backend`] (the same structs the simulator runs) under
//! tokio, over the authenticated [`transport`](crate::transport). Through it a service:
//! - creates [`Process`]es (a [`Pid`] plus a mailbox) and sends them messages, local or remote,
//!   typed (serde + postcard) or raw;
//! - monitors processes ([`Node::monitor`]): told once when one ends or its node goes down;
//! - joins processes to groups and reads them locally ([`Node::join`], [`Node::members`],
//!   [`Node::local_members`], [`Node::which_groups`]), or follows them ([`Node::monitor_scope`],
//!   [`Node::monitor_group`]);
//! - follows cluster membership ([`Node::cluster_members`], [`Node::monitor_cluster`]);
//! - leaves cleanly ([`Node::shutdown`]: peers see a leave, not a failure).
//!
//! Semantics are Erlang `pg`'s (GUIDE §3): only local pids join, a pid may join a group several
//! times, `leave` removes one occurrence, empty groups vanish, a process that ends leaves
//! everything, a node that goes down loses its memberships elsewhere.

mod builder;
mod engine;
mod error;
mod monitor;
mod process;
mod proto;
mod runtime;
mod sessions;
mod stats;
mod subscribe;

use std::future::Future;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshreg_membership::{MemberEvent, NodeId, mix64};
use meshreg_registry::groups::{
    GroupError, GroupEvent, GroupName, GroupTable, Members, NAME_MAX_BYTES, ScopeName,
};
use meshreg_registry::{CallError, Pid};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use builder::{Backend, MIN_SECRET_BYTES, NodeBuilder, NodeConfig};
pub use error::NodeError;
pub use monitor::{DownReason, ProcessMonitor};
pub use process::{Message, Process};
pub use sessions::{
    Policy, ROLES_SCOPE, Registered, SESSION_ROLE, Session, SessionKey, SessionLost, Sessions,
};
pub use stats::NodeStats;
pub use subscribe::{MemberInfo, Subscription};

use engine::{Engine, StackEngine};
use runtime::Shared;

use crate::transport::{Faults, Transport, TransportConfig, TransportStats};

/// A scope's groups with their members, as [`Node::monitor_scope`] starts from.
pub type ScopeSnapshot = Vec<(String, Vec<MemberInfo>)>;

/// A running node. Cheap to clone: clones share the node. The node stops when
/// [`Node::shutdown`] is called (a clean leave) or when the last clone is dropped (peers then
/// detect a failure).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.get_mut().ok().and_then(Option::take) {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.shared().config.name)
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

/// A creation number from the clock: a restart a few seconds later gets a higher one.
/// Wraps after about 36 hours of restarts-apart; deployments that restart rarely and keep
/// tombstones longer set [`NodeBuilder::creation`] from a persisted counter.
fn clock_creation() -> u16 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    ((secs / 2) % 0xFFFF) as u16 + 1
}

fn build_engine(config: &NodeConfig, id: NodeId, seed: u64) -> Result<Box<dyn Engine>, NodeError> {
    use meshreg_registry::session::manager::{ManagerConfig, SessionManager};
    use meshreg_registry::session_stack::SessionStack;
    let cluster = config.cluster_id();
    let mut mc = ManagerConfig::for_profile(config.profile, config.session_shards);
    mc.shard.hash_seed = mix64(seed ^ 0x5e55);
    let sessions = SessionManager::new(id, cluster, mc);
    let table = meshreg_registry::groups::GroupTableConfig {
        meta_cap_bytes: config.max_meta_bytes,
    };
    match config.backend {
        #[cfg(feature = "gossip")]
        Backend::Gossip => {
            use meshreg_membership::Swim;
            use meshreg_registry::crdt::GossipGroups;
            let swim = Swim::new(id, cluster, config.profile, config.expected_size, seed);
            let groups =
                GossipGroups::with_table_config(id, cluster, config.profile, mix64(seed), table);
            let stack = meshreg_registry::stack::Stack::new(swim, groups);
            Ok(Box::new(StackEngine::new(SessionStack::new(
                stack, sessions,
            ))))
        }
        #[cfg(feature = "coordinated")]
        Backend::Coordinated => {
            use meshreg_membership::Mesh;
            use meshreg_registry::coordinated::{CoordinatedConfig, CoordinatedGroups};
            let mesh = Mesh::new(id, cluster, config.profile, seed);
            let mut cc = CoordinatedConfig::for_profile(config.profile);
            cc.table = table;
            cc.warm_terms = config.warm_partitions;
            let groups = CoordinatedGroups::with_config(id, cluster, cc);
            let stack = meshreg_registry::stack::Stack::new(mesh, groups);
            Ok(Box::new(StackEngine::new(SessionStack::new(
                stack, sessions,
            ))))
        }
        #[expect(
            unreachable_patterns,
            reason = "reachable only when a backend feature is off"
        )]
        other => Err(NodeError::Config {
            setting: "backend",
            why: format!("{other} is not compiled into this build"),
        }),
    }
}

impl Node {
    /// Configures a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let mut tconfig = TransportConfig::new(
            config.listen_v4(),
            config.secret.clone(),
            config.cluster_id(),
        );
        tconfig.max_frame = config.max_frame_bytes;
        tconfig.queue_frames = config.queue_frames;
        tconfig.connect_timeout = config.heartbeat() * 10;
        tconfig.heartbeat = config.heartbeat();
        // Gossip opens links on demand (anti-entropy, process messages): idle ones close. The
        // full mesh keeps every link.
        tconfig.idle_close = match config.backend {
            Backend::Gossip => Some(Duration::from_secs(60)),
            Backend::Coordinated => None,
        };
        let (transport, events) = Transport::bind(tconfig).await?;
        let addr = transport.local_addr();
        let creation = config.creation.unwrap_or_else(clock_creation);
        let root = NodeId::new(addr, u32::from(creation) << 16);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64;
        let seed = mix64(nanos ^ root.stable_hash());
        let engine = build_engine(&config, root, seed)?;
        let seeds: Vec<SocketAddrV4> = config
            .seeds_v4()
            .into_iter()
            .filter(|s| *s != addr)
            .collect();
        let shared = Arc::new(Shared::new(config, root, engine, transport));
        {
            let mut st = shared.lock();
            shared.drive(&mut st, |e, now, out| e.start(now, &seeds, out));
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(runtime::run(shared.clone(), events, stop_rx));
        tracing::info!(node = %shared.config.name, %addr, backend = %shared.config.backend, "node started");
        let node = Node {
            inner: Arc::new(Inner {
                shared,
                stop: Mutex::new(Some(stop_tx)),
                task: Mutex::new(Some(task)),
            }),
        };
        node.announce_roles();
        Ok(node)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The settings the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.shared().config
    }

    /// The address the node listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddrV4 {
        self.shared().root.addr()
    }

    /// The node's identity as its pids name it (address and creation).
    pub fn id(&self) -> NodeId {
        self.shared().root
    }

    /// The node's current identity on the wire (a renewal raises the generation).
    pub fn current_id(&self) -> NodeId {
        self.shared().lock().engine.id()
    }

    // ---- processes ----

    /// A new process of this node. Dropping it ends the process.
    pub fn process(&self) -> Process {
        let shared = self.shared();
        let pid = shared.next_pid();
        let (tx, rx) = mpsc::unbounded_channel();
        shared
            .procs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid.serial, tx);
        Process::new(pid, rx, Arc::downgrade(shared))
    }

    /// Spawns a tokio task that owns a new process; the process ends when the task returns.
    pub fn spawn<F, Fut>(&self, f: F) -> Pid
    where
        F: FnOnce(Process) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let p = self.process();
        let pid = p.pid();
        tokio::spawn(f(p));
        pid
    }

    /// Sends `msg` (postcard-encoded) to `to`, anonymously. See [`Node::send_raw`].
    pub async fn send<T: Serialize + ?Sized>(&self, to: Pid, msg: &T) -> Result<(), NodeError> {
        let body = postcard::to_allocvec(msg).map_err(|e| NodeError::Encode(e.to_string()))?;
        self.send_raw_from(None, to, body).await
    }

    /// Sends `msg` to `to` on behalf of process `from` (the receiver sees `from`).
    pub async fn send_from<T: Serialize + ?Sized>(
        &self,
        from: Pid,
        to: Pid,
        msg: &T,
    ) -> Result<(), NodeError> {
        let body = postcard::to_allocvec(msg).map_err(|e| NodeError::Encode(e.to_string()))?;
        self.send_raw_from(Some(from), to, body).await
    }

    /// Sends raw bytes to `to`. A local process gets them at once ([`NodeError::NoProcess`]
    /// when it does not exist). A remote one: the call waits while the link's queue is full
    /// (back-pressure) and succeeds once queued; the message arrives in order after earlier
    /// ones to that node, or is lost with the link (use [`Node::monitor`] to learn of that).
    pub async fn send_raw(&self, to: Pid, body: Vec<u8>) -> Result<(), NodeError> {
        self.send_raw_from(None, to, body).await
    }

    async fn send_raw_from(
        &self,
        from: Option<Pid>,
        to: Pid,
        body: Vec<u8>,
    ) -> Result<(), NodeError> {
        let shared = self.shared();
        if to.node == shared.root {
            return shared
                .deliver_local(to, Message { from, body })
                .map_err(|_| NodeError::NoProcess(to));
        }
        let frame = proto::encode(shared.cluster, &proto::ProcMsg::Send { to, from, body });
        shared
            .transport
            .send_frame_wait(to.node.addr(), frame)
            .await
            .map_err(|e| NodeError::Send(e.to_string()))
    }

    /// Resolves once when `pid` ends, does not exist, or its node goes down.
    pub fn monitor(&self, pid: Pid) -> ProcessMonitor {
        let shared = self.shared();
        let (tx, rx) = oneshot::channel();
        let mut st = shared.lock();
        if st.stopped {
            let _ = tx.send(DownReason::Shutdown);
        } else if pid.node == shared.root {
            if shared.is_alive(pid) {
                st.monitors.watch_local(pid.serial, tx);
            } else {
                let _ = tx.send(DownReason::NoProcess);
            }
        } else if !st.live.contains_key(&pid.node) {
            let _ = tx.send(DownReason::NodeDown);
        } else if st.monitors.watch_remote(pid, tx) {
            let ask = proto::encode(shared.cluster, &proto::ProcMsg::Monitor { target: pid });
            if shared
                .transport
                .send_frame_or_defer(pid.node.addr(), ask)
                .is_err()
            {
                // Cannot ask: the transport is closed; the caller learns it at once.
                st.monitors.remote_down(pid, DownReason::NodeDown);
            }
        }
        ProcessMonitor::new(pid, rx)
    }

    // ---- groups ----

    /// Names for a join or leave: the reserved scope is refused.
    fn names(scope: &str, group: &str) -> Result<(ScopeName, GroupName), NodeError> {
        if scope == ROLES_SCOPE {
            return Err(NodeError::ReservedScope(scope.to_owned()));
        }
        Ok((ScopeName::new(scope)?, GroupName::new(group)?))
    }

    /// Checks names for a join or leave as [`Self::names`] does, without copying them: the
    /// call takes the table's scope handle under the lock ([`interned`]).
    fn check_names(scope: &str, group: &str) -> Result<(), NodeError> {
        if scope == ROLES_SCOPE || scope.len() > NAME_MAX_BYTES || group.len() > NAME_MAX_BYTES {
            Self::names(scope, group)?;
        }
        Ok(())
    }

    async fn call(
        &self,
        f: impl FnOnce(&mut dyn Engine, std::time::Duration, u64, &mut Vec<engine::Action>),
    ) -> Result<(), NodeError> {
        match self.shared().call(|st| &mut st.pending, f).await {
            Some(r) => r.map_err(NodeError::Group),
            None => Err(NodeError::Stopped),
        }
    }

    /// Joins local process `pid` to `group` in `scope` (no metadata). Coordinated backend:
    /// returns once every live node lists it. Gossip: once this node does; others follow
    /// within the measured propagation time.
    pub async fn join(&self, scope: &str, group: &str, pid: Pid) -> Result<(), NodeError> {
        self.join_with_meta(scope, group, pid, &[]).await
    }

    /// Joins with `meta` attached to this membership (at most
    /// [`NodeConfig::max_meta_bytes`]).
    pub async fn join_with_meta(
        &self,
        scope: &str,
        group: &str,
        pid: Pid,
        meta: &[u8],
    ) -> Result<(), NodeError> {
        Self::check_names(scope, group)?;
        // Made before the lock is taken (see `interned`).
        let g = GroupName::new(group)?;
        self.call(|e, now, req, out| match interned(e.table(), scope) {
            Ok(s) => e.join(now, req, &s, &g, pid, meta, out),
            Err(err) => out.push(engine::Action::Completed(req, Err(CallError::Group(err)))),
        })
        .await
    }

    /// Starts a join of local process `pid` to `group` and returns without waiting for the
    /// cluster, as Erlang's `pg:join` does: for loading many memberships from one caller (a
    /// service registering its workers at start). Errors in the call itself (names, a pid of
    /// another node, a stopped node) come back at once. After that the join is never given up:
    /// the coordinated backend retries it through boss changes until it is applied everywhere
    /// or its process ends (a process that ended meanwhile leaves again); the gossip backend
    /// has applied it here and spreads it as any join.
    ///
    /// Unlike [`Self::join`], a detached join on the coordinated backend is not listed even on
    /// this node when the call returns: the local table applies it with everyone else, in the
    /// boss's order. Watch the group (or [`Self::monitor_scope`]) to learn when it is there.
    pub fn join_detached(&self, scope: &str, group: &str, pid: Pid) -> Result<(), NodeError> {
        Self::check_names(scope, group)?;
        let g = GroupName::new(group)?;
        let shared = self.shared();
        let mut st = shared.lock();
        if st.stopped {
            return Err(NodeError::Stopped);
        }
        let req = st.next_request();
        let mut result = Ok(());
        shared.drive(&mut st, |e, now, out| {
            result = match interned(e.table(), scope) {
                Ok(s) => e.join_detached(now, req, &s, &g, pid, &[], out),
                Err(err) => Err(CallError::Group(err)),
            };
        });
        shared.wake_if_earlier(&st);
        result.map_err(NodeError::Group)
    }

    /// Joins every pid in `pids` (each independently, concurrently); the first error is
    /// returned after all calls finished, and the pids that succeeded stay joined.
    pub async fn join_many(&self, scope: &str, group: &str, pids: &[Pid]) -> Result<(), NodeError> {
        let (s, g) = Self::names(scope, group)?;
        let shared = self.shared();
        let mut waits = Vec::with_capacity(pids.len());
        {
            let mut st = shared.lock();
            if st.stopped {
                return Err(NodeError::Stopped);
            }
            for &pid in pids {
                let req = st.next_request();
                let rx = st.pending.wait(req);
                shared.drive(&mut st, |e, now, out| {
                    e.join(now, req, &s, &g, pid, &[], out)
                });
                waits.push(rx);
            }
            shared.wake_if_earlier(&st);
        }
        let mut first = Ok(());
        for rx in waits {
            let r = match rx.await {
                Ok(r) => r.map_err(NodeError::Group),
                Err(_) => Err(NodeError::Stopped),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Removes one occurrence of local `pid` from `group` (`NotJoined` when there is none).
    pub async fn leave(&self, scope: &str, group: &str, pid: Pid) -> Result<(), NodeError> {
        Self::check_names(scope, group)?;
        let g = GroupName::new(group)?;
        self.call(|e, now, req, out| match interned(e.table(), scope) {
            Ok(s) => e.leave(now, req, &s, &g, pid, out),
            Err(err) => out.push(engine::Action::Completed(req, Err(CallError::Group(err)))),
        })
        .await
    }

    /// Calls `f` with the members of `group` as this node knows them, borrowed: no copy, no
    /// message. Keep `f` short: the node's state lock is held while it runs.
    pub fn with_members<T>(&self, scope: &str, group: &str, f: impl FnOnce(Members<'_>) -> T) -> T {
        let st = self.shared().lock();
        f(st.engine.table().members(scope, group))
    }

    /// Members of `group` (all nodes'), in join order per node; a pid joined twice is listed
    /// twice. A local read.
    pub fn members(&self, scope: &str, group: &str) -> Vec<Pid> {
        self.with_members(scope, group, |m| m.map(|m| m.pid).collect())
    }

    /// Members with their metadata.
    pub fn members_with_meta(&self, scope: &str, group: &str) -> Vec<MemberInfo> {
        self.with_members(scope, group, |m| {
            m.map(|m| MemberInfo {
                pid: m.pid,
                meta: m.meta.to_vec(),
            })
            .collect()
        })
    }

    /// This node's own members of `group`. A local read.
    pub fn local_members(&self, scope: &str, group: &str) -> Vec<Pid> {
        let st = self.shared().lock();
        st.engine
            .table()
            .local_members(scope, group)
            .map(|m| m.pid)
            .collect()
    }

    /// Whether `pid` is a member of `group`.
    pub fn is_member(&self, scope: &str, group: &str, pid: Pid) -> bool {
        self.shared()
            .lock()
            .engine
            .table()
            .is_member(scope, group, pid)
    }

    /// The non-empty groups of `scope`. A local read.
    pub fn which_groups(&self, scope: &str) -> Vec<String> {
        let st = self.shared().lock();
        st.engine
            .table()
            .which_groups(scope)
            .map(|g| g.as_str().to_owned())
            .collect()
    }

    /// The current groups of `scope` with their members, and every later join and leave in
    /// `scope` (local and remote, including those a node-down causes), in order.
    pub fn monitor_scope(
        &self,
        scope: &str,
    ) -> Result<(ScopeSnapshot, Subscription<GroupEvent>), NodeError> {
        let s = ScopeName::new(scope)?;
        let mut st = self.shared().lock();
        let table = st.engine.table();
        let snapshot = table
            .which_groups(scope)
            .map(|g| {
                let members = table
                    .members(scope, g)
                    .map(|m| MemberInfo {
                        pid: m.pid,
                        meta: m.meta.to_vec(),
                    })
                    .collect();
                (g.as_str().to_owned(), members)
            })
            .collect();
        let sub = st.scope_subs.entry(s).or_default().subscribe();
        Ok((snapshot, sub))
    }

    /// The current members of one group and every later change to it, in order.
    pub fn monitor_group(
        &self,
        scope: &str,
        group: &str,
    ) -> Result<(Vec<MemberInfo>, Subscription<GroupEvent>), NodeError> {
        let key = Self::names(scope, group)?;
        let mut st = self.shared().lock();
        let snapshot = st
            .engine
            .table()
            .members(scope, group)
            .map(|m| MemberInfo {
                pid: m.pid,
                meta: m.meta.to_vec(),
            })
            .collect();
        let sub = st.group_subs.entry(key).or_default().subscribe();
        Ok((snapshot, sub))
    }

    // ---- cluster ----

    /// Live members of the cluster in this node's view, itself excluded.
    pub fn cluster_members(&self) -> Vec<NodeId> {
        let mut m = self.shared().lock().engine.members();
        m.sort();
        m
    }

    /// The current members and every later membership change, in order.
    pub fn monitor_cluster(&self) -> (Vec<NodeId>, Subscription<MemberEvent>) {
        let mut st = self.shared().lock();
        let mut members = st.engine.members();
        members.sort();
        (members, st.member_subs.subscribe())
    }

    /// Fault injection on this node's links (tests and demos): delay, loss, partition.
    pub fn faults(&self) -> &Faults {
        self.shared().transport.faults()
    }

    /// This node's counters.
    pub fn stats(&self) -> NodeStats {
        let shared = self.shared();
        let mut s = shared.counters.snapshot();
        s.processes = shared.procs.read().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let st = shared.lock();
        s.memberships = st.engine.table().membership_count() as u64;
        s.backend_heap_bytes = st.engine.heap_bytes() as u64;
        let (m, held, heap) = st.engine.session_stats();
        s.sessions_held = held as u64;
        s.sessions_heap_bytes = heap as u64;
        s.session_terms_started = m.terms_started;
        s.sessions_reasserted = m.reasserted;
        s.session_requests_resent = m.resent;
        s
    }

    /// The transport's counters (bytes, refused peers, drops).
    pub fn transport_stats(&self) -> TransportStats {
        self.shared().transport.stats()
    }

    /// Leaves the cluster cleanly (peers see a leave, not a failure), then stops: pending calls
    /// fail with [`NodeError::Stopped`], monitors fire with [`DownReason::Shutdown`], mailboxes
    /// close. Idempotent.
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    /// Stops at once without leaving, as a killed process would: peers detect a failure. For
    /// tests and demos of failure handling.
    pub async fn crash(&self) {
        self.stop(false).await;
    }

    async fn stop(&self, leave: bool) {
        let shared = self.shared();
        let Some(stop) = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        if leave {
            let mut st = shared.lock();
            shared.drive(&mut st, |e, now, out| e.leave_cluster(now, out));
        }
        shared.lock().stopped = true;
        let _ = stop.send(());
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if leave {
            shared.transport.shutdown().await;
        } else {
            shared.transport.abort().await;
        }
        let mut st = shared.lock();
        st.monitors.shutdown();
        st.pending.clear();
        st.session_pending.clear();
        st.session_subs = Default::default();
        st.scope_subs.clear();
        st.group_subs.clear();
        st.member_subs = Default::default();
        drop(st);
        shared
            .procs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        tracing::info!(node = %shared.config.name, leave, "node stopped");
    }
}

/// The scope name for a call: the table's own handle where it has one (no allocation; scopes
/// are few, so their handles stay hot, and the backends' keyed lookups compare them by
/// pointer), else a fresh one (checked by [`Node::check_names`] already, so an error here cannot
/// happen in practice). The group name is a fresh copy made before the lock: looking up the
/// table's handle cost more than the copy (a lookup the table repeats anyway, plus a
/// reference-count update on the name's own allocation, a cache miss in a large table).
fn interned(table: &GroupTable, scope: &str) -> Result<ScopeName, GroupError> {
    match table.scope_name(scope) {
        Some(s) => Ok(s.clone()),
        None => ScopeName::new(scope),
    }
}

/// Whether a call error means "retry later" (the cluster could not order it now).
pub fn is_retryable(e: &NodeError) -> bool {
    matches!(e, NodeError::Group(CallError::Unavailable(_)))
}
