//! [`CoordinatedGroups`]: the node-level state machine, its inputs and the membership view.
//!
//! The three roles of a node live in sibling files as `impl` blocks on the same type:
//! `requester.rs` (local calls until their `Done`), `boss.rs` (terms of the partitions this
//! node bosses: recovery, ordering, acks) and `replica.rs` (applying a partition's ops in
//! order). This file holds the state they share and the input dispatch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::{Channel, MemberEvent, NodeId, Time};

use super::boss::Term;
use super::message::{
    self, BATCH_BYTES, MAX_BATCH_MESSAGES, Message, NackReason, Op, Refused, Ticket,
};
use super::partition_map::PartitionMap;
use super::placement;
use super::replica::Replica;
use super::requester::Pending;
use super::stats::BossStats;
use crate::groups::{GroupError, GroupEvent, GroupName, GroupTable, GroupTableConfig, ScopeName};
use crate::{CallError, MessageError, Pid, RegistryCore, RegistryOutput, RequestId};

/// Default number of partitions per scope.
pub const DEFAULT_PARTITIONS_PER_SCOPE: u16 = 256;

/// Index of `batch` in [`BossStats::sent`].
const BATCH_KIND: usize = 11;

/// A partition: its scope and index.
pub(super) type Key = (ScopeName, u16);

/// Outputs of this backend.
pub(super) type Out = Vec<RegistryOutput<BossTimer>>;

/// Timers of the coordinated backend. Stale ones (a finished call, a past term) are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BossTimer {
    /// The request of `ticket` got no `Done` within [`CoordinatedConfig::request_timeout`]
    /// of its `attempt`-th sending: re-send it, or give up after
    /// [`CoordinatedConfig::max_attempts`].
    Retry {
        /// The local call (or exit leave).
        ticket: Ticket,
        /// Which sending it guards (1-based).
        attempt: u32,
    },
    /// Memberships of identities neither Up nor Down here were taken on another node's word:
    /// watch those still in that state at their sources (see `watch.rs`).
    Watch,
    /// A boss term has work left (nodes to hear from, nodes that refused): re-send.
    Term {
        /// Scope of the partition.
        scope: ScopeName,
        /// The partition.
        partition: u16,
        /// The term.
        epoch: u64,
    },
}

/// Settings of a [`CoordinatedGroups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatedConfig {
    /// Partitions per scope ([`DEFAULT_PARTITIONS_PER_SCOPE`]); every node must agree.
    pub partitions_per_scope: u16,
    /// How long a requester waits for `Done` before re-sending.
    pub request_timeout: Duration,
    /// Sendings of one request before it completes with [`CallError::Unavailable`] (a driver
    /// call; internal requests are never given up).
    pub max_attempts: u32,
    /// Requests of this node on the wire at once (sent, not yet answered); later ones wait
    /// here, in order, without a retry timer. Bounds the Applies a burst of calls (a process
    /// with many memberships ending, a renewal's re-joins) puts on the links at once.
    pub max_in_flight: usize,
    /// How often a boss re-sends to nodes it still waits for or that refused it.
    pub resend_interval: Duration,
    /// Origins of applied ops remembered per partition (the replicated dedupe window).
    pub dedupe_per_partition: usize,
    /// Start the terms of every partition this node bosses as soon as their scope is in use
    /// here and at every view change (see `warm_scope`), rather than on a partition's first
    /// request. On by default: otherwise the first write of each partition waits one more
    /// round trip, for the recovery.
    pub warm_terms: bool,
    /// The group table's settings (metadata cap).
    pub table: GroupTableConfig,
}

impl Default for CoordinatedConfig {
    fn default() -> Self {
        Self {
            partitions_per_scope: DEFAULT_PARTITIONS_PER_SCOPE,
            request_timeout: Duration::from_millis(500),
            max_attempts: 8,
            max_in_flight: 128,
            resend_interval: Duration::from_millis(200),
            dedupe_per_partition: 256,
            warm_terms: true,
            table: GroupTableConfig::default(),
        }
    }
}

impl CoordinatedConfig {
    /// Defaults whose retry window outlasts the membership's failure detection under
    /// `profile`: a requester keeps re-sending for at least three heartbeat timeouts. A boss
    /// waits for the acks of every node live in its view, so a join made while a peer is
    /// silently unreachable completes only once that peer is declared Down; giving up earlier
    /// would report `Unavailable` for an op the boss then applies (measured on `lan` timers:
    /// 4 s of retries against a 5 s heartbeat timeout left the tables apart from what callers
    /// were told).
    pub fn for_profile(profile: meshreg_membership::Profile) -> Self {
        let base = Self::default();
        let window = profile.mesh_heartbeat_timeout() * 3;
        let per_attempt = base.request_timeout.as_millis().max(1);
        let attempts = u32::try_from(window.as_millis().div_ceil(per_attempt)).unwrap_or(u32::MAX);
        Self {
            max_attempts: attempts.max(base.max_attempts),
            ..base
        }
    }
}

/// The coordinated discovery backend of one node (see the module docs for the protocol).
pub struct CoordinatedGroups {
    pub(super) me: NodeId,
    pub(super) cluster: u32,
    pub(super) config: CoordinatedConfig,
    pub(super) table: GroupTable,
    /// Live nodes in this node's view, itself included, by address (one generation each).
    pub(super) live: BTreeMap<SocketAddrV4, NodeId>,
    /// Highest generation declared Down per address (or implied Down by a newer one): ops whose
    /// origin is such a generation, and state entries owned by one, are not applied (no
    /// resurrection after `remove_node`).
    pub(super) down_gen: HashMap<SocketAddrV4, u32>,
    /// The newest identity known per other address (from an Up, a Down, an op's origin or a
    /// state's owners), live or not. Invariant: every membership of a pid at that address in
    /// the table dates from this identity, because learning of a newer one removes the
    /// memberships of the older first (see [`Self::observe`]).
    pub(super) known: HashMap<SocketAddrV4, NodeId>,
    /// Replica state of every partition this node has heard of.
    pub(super) replicas: PartitionMap<Replica>,
    /// The groups of each partition, so a partition's state is read in O(its groups) rather
    /// than O(the scope's). Invariant: every group of the table with members is listed under
    /// its partition (groups are added wherever the backend joins: `apply_next` when the join
    /// created the group, `install_state`); groups left empty are dropped lazily when the
    /// partition is read.
    pub(super) part_groups: HashMap<Key, HashSet<GroupName>>,
    /// Terms of the partitions this node is (or is becoming) the boss of.
    pub(super) terms: PartitionMap<Term>,
    /// Every scope this node has called or heard of. Invariant: after every input, each
    /// partition of these scopes that this node bosses in its view has a term (see
    /// `warm_scope`).
    pub(super) scopes: BTreeSet<ScopeName>,
    /// Local calls and exit leaves waiting for their `Done` (sent or backlogged).
    pub(super) pending: BTreeMap<Ticket, Pending>,
    /// The tickets of pending joins, per pid (so a process exit finds its joins at once).
    /// Invariant: exactly the `Op::Join` entries of `pending`.
    pub(super) pending_joins: HashMap<Pid, Vec<Ticket>>,
    /// Pending tickets not sent yet, in submission order (see `requester.rs`).
    pub(super) backlog: VecDeque<Ticket>,
    /// Pending tickets sent and not answered: at most `max_in_flight`.
    pub(super) in_flight: usize,
    /// `pump` is running (re-entrant calls return at once).
    pub(super) pumping: bool,
    /// Identities neither Up nor Down here whose memberships this node took on the word of
    /// the nodes listed (a `Sync`, a recovery report, an `Apply`): watched there once
    /// [`BossTimer::Watch`] fires, unless they came Up or went Down meanwhile (`watch.rs`).
    pub(super) unseen: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// A [`BossTimer::Watch`] is set.
    pub(super) unseen_armed: bool,
    /// Per identity, the nodes that hold its memberships on this node's word: told `Gone`
    /// when it goes Down here.
    pub(super) watchers: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Identities neither Up nor Down here that a node this one took their memberships from
    /// declared Down (`Gone`): their memberships and ops are kept out of the table, as a dead
    /// identity's, until they come Up here (see `watch.rs`). Each with the partitions where
    /// something of it was kept out (removed on `Gone`, refused from a state or an `Apply`):
    /// if it comes Up here, those partitions are recovered again to bring it back.
    pub(super) gone: BTreeMap<NodeId, BTreeSet<Key>>,
    pub(super) next_exit: u64,
    pub(super) stats: BossStats,
    /// `Some` while the driver holds this node's frames (`RegistryCore::hold`).
    pub(super) outbox: Option<Outbox>,
}

/// Messages held until `RegistryCore::release`, in sending order.
#[derive(Default)]
pub(super) struct Outbox {
    msgs: Vec<(NodeId, Message)>,
    /// Position in `msgs` of the held ack per (boss, partition, term): a later ack raises its
    /// seq in place (acks are cumulative, and every held message is sent only at release, when
    /// the raised seq is applied).
    acks: HashMap<(NodeId, Key, u64), usize>,
}

impl CoordinatedGroups {
    /// A node `me` of `cluster` with `partitions_per_scope` partitions (256 by default) and the
    /// default settings otherwise. It starts alone: the driver forwards `Up`s as they come.
    pub fn new(me: NodeId, cluster: u32, partitions_per_scope: u16) -> Self {
        let config = CoordinatedConfig {
            partitions_per_scope,
            ..CoordinatedConfig::default()
        };
        Self::with_config(me, cluster, config)
    }

    /// A node with explicit settings.
    pub fn with_config(me: NodeId, cluster: u32, config: CoordinatedConfig) -> Self {
        let mut live = BTreeMap::new();
        live.insert(me.addr(), me);
        Self {
            me,
            cluster,
            config,
            // Pids name their node by its root, so the table's "local" pids are the root's.
            table: GroupTable::with_config(me.root(), config.table),
            live,
            down_gen: HashMap::new(),
            known: HashMap::new(),
            replicas: PartitionMap::new(),
            part_groups: HashMap::new(),
            terms: PartitionMap::new(),
            scopes: BTreeSet::new(),
            pending: BTreeMap::new(),
            pending_joins: HashMap::new(),
            backlog: VecDeque::new(),
            in_flight: 0,
            pumping: false,
            unseen: BTreeMap::new(),
            unseen_armed: false,
            watchers: BTreeMap::new(),
            gone: BTreeMap::new(),
            next_exit: 0,
            stats: BossStats::default(),
            outbox: None,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatedConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &BossStats {
        &self.stats
    }

    /// The partition of `group` in `scope`.
    pub fn partition_of(&self, scope: impl AsRef<str>, group: impl AsRef<str>) -> u16 {
        placement::partition_of(
            scope.as_ref(),
            group.as_ref(),
            self.config.partitions_per_scope,
        )
    }

    /// The boss of `(scope, partition)` in this node's view.
    pub fn boss_of(&self, scope: impl AsRef<str>, partition: u16) -> NodeId {
        placement::boss_of(scope.as_ref(), partition, self.live.values().copied())
            .unwrap_or(self.me)
    }

    /// The last sequence number this node applied in `(scope, partition)` (0: none).
    pub fn applied_seq(&self, scope: &str, partition: u16) -> u64 {
        self.replicas
            .iter()
            .find(|((s, p), _)| s.as_str() == scope && *p == partition)
            .map_or(0, |(_, r)| r.seq)
    }

    /// The epoch this node promised for `(scope, partition)` (0: none yet).
    pub fn epoch_of(&self, scope: &str, partition: u16) -> u64 {
        self.replicas
            .iter()
            .find(|((s, p), _)| s.as_str() == scope && *p == partition)
            .map_or(0, |(_, r)| r.epoch)
    }

    /// Whether this node has nothing in flight: no pending call, no term recovering or waiting,
    /// no watch to send.
    pub fn is_quiet(&self) -> bool {
        debug_assert!(!self.pending.is_empty() || self.pending_joins.is_empty());
        self.pending.is_empty() && self.terms.values().all(Term::is_idle) && self.unseen.is_empty()
    }

    /// The partition key of `op`.
    pub(super) fn key_of(&self, op: &Op) -> Key {
        let p = self.partition_of(op.scope(), op.group());
        (op.scope().clone(), p)
    }

    /// Whether identity `node` is dead: a generation declared Down at its address (or older,
    /// or older than one known to exist there).
    pub(super) fn is_dead(&self, node: NodeId) -> bool {
        self.down_gen
            .get(&node.addr())
            .is_some_and(|&g| node.generation() <= g)
    }

    /// Whether memberships and ops of identity `node` stay out of the table: it is dead here,
    /// or a node this one took its memberships from said it is gone (`watch.rs`).
    pub(super) fn is_out(&self, node: NodeId) -> bool {
        self.is_dead(node) || self.gone.contains_key(&node)
    }

    /// Sends `msg` to `to` (never this node: local deliveries are direct calls).
    pub(super) fn send(&mut self, to: NodeId, msg: &Message, out: &mut Out) {
        debug_assert_ne!(to, self.me, "local deliveries are direct calls");
        if let Some(outbox) = &mut self.outbox {
            if let Message::Ack {
                scope,
                partition,
                epoch,
                seq,
            } = msg
            {
                let at = (to, (scope.clone(), *partition), *epoch);
                if let Some(&i) = outbox.acks.get(&at) {
                    if let (_, Message::Ack { seq: held, .. }) = &mut outbox.msgs[i] {
                        *held = (*held).max(*seq);
                    }
                    self.stats.acks_coalesced += 1;
                    return;
                }
                outbox.acks.insert(at, outbox.msgs.len());
            }
            self.stats.sent[msg.kind_index()] += 1;
            outbox.msgs.push((to, msg.clone()));
            return;
        }
        let payload = message::encode(msg, self.cluster);
        self.stats.sent[msg.kind_index()] += 1;
        self.emit(to, payload, out);
    }

    fn emit(&mut self, to: NodeId, payload: Vec<u8>, out: &mut Out) {
        self.stats.bytes_sent += payload.len() as u64;
        self.stats.frames_sent += 1;
        out.push(RegistryOutput::Send {
            to: to.addr(),
            channel: Channel::Stream,
            payload,
        });
    }

    /// Sends what the outbox holds: per destination in sending order, packed into frames of
    /// at most [`BATCH_BYTES`] of messages (a larger message travels alone).
    fn release_outbox(&mut self, out: &mut Out) {
        let Some(outbox) = self.outbox.take() else {
            return;
        };
        let mut per_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for (to, msg) in outbox.msgs {
            per_peer.entry(to).or_default().push(msg);
        }
        for (to, msgs) in per_peer {
            let mut bodies = Vec::new();
            let mut bytes = 0;
            for msg in &msgs {
                let body = message::body(msg);
                if !bodies.is_empty()
                    && (bytes + body.len() > BATCH_BYTES || bodies.len() == MAX_BATCH_MESSAGES)
                {
                    self.emit_bodies(to, std::mem::take(&mut bodies), out);
                    bytes = 0;
                }
                bytes += body.len();
                bodies.push(body);
            }
            if !bodies.is_empty() {
                self.emit_bodies(to, bodies, out);
            }
        }
    }

    fn emit_bodies(&mut self, to: NodeId, bodies: Vec<Box<[u8]>>, out: &mut Out) {
        if bodies.len() > 1 {
            self.stats.sent[BATCH_KIND] += 1;
        }
        let payload = message::encode_bodies(bodies, self.cluster);
        self.emit(to, payload, out);
    }

    /// Live nodes other than this one, in address order.
    pub(super) fn others(&self) -> Vec<NodeId> {
        self.live
            .values()
            .copied()
            .filter(|&n| n != self.me)
            .collect()
    }

    fn on_up(&mut self, now: Time, node: NodeId, out: &mut Out) {
        if node.addr() == self.me.addr() {
            return;
        }
        // A newer generation of a live identity (it renewed) takes its place in the view
        // before the old one is retired, never after: retiring it ends recoveries waiting on
        // it and moves its partitions, and a view holding neither would let a term serve and
        // complete an op without the renewed node, which keeps its table (seen: a leave
        // completed while the renewed node still listed the membership).
        let renewed_live = !self.is_dead(node)
            && self
                .live
                .get(&node.addr())
                .is_some_and(|l| l.generation() < node.generation());
        if renewed_live {
            self.live.insert(node.addr(), node);
        }
        // A newer generation at a known address replaces the old one: the old is Down.
        self.observe(now, node, out);
        if self.is_dead(node) || (!renewed_live && self.live.get(&node.addr()) == Some(&node)) {
            return;
        }
        let kept_out = self.settle_unseen(node);
        self.live.insert(node.addr(), node);
        self.bosses_on_up(now, node, out);
        // A node coming Up can only take partitions from this one, never give it any.
        self.view_changed(now, false, out);
        self.recover_kept_out(now, kept_out, out);
    }

    /// `node` is Down. A Down about a generation already tombstoned (declared Down before, or
    /// older than one this node already learned of) removes nothing: the memberships of that
    /// root in the table may be the re-joins of its newer generation.
    fn on_down(&mut self, now: Time, node: NodeId, out: &mut Out) {
        if node.addr() == self.me.addr() {
            return;
        }
        self.observe(now, node, out);
        if !self.is_dead(node) {
            self.tombstone(now, node, out);
        }
    }

    /// Evidence that identity `node` exists (an Up or Down event, an op's origin, a state's
    /// owner). The first evidence of a newer generation at an address means every older one
    /// is gone (it renewed or restarted): the newest one known before is tombstoned at once,
    /// with its memberships, so that a later `Down` of it finds it tombstoned and cannot remove
    /// what the newer generation re-joins meanwhile.
    pub(super) fn observe(&mut self, now: Time, node: NodeId, out: &mut Out) {
        if node.addr() == self.me.addr() {
            return; // this node knows its own identity
        }
        let prev = self.known.get(&node.addr()).copied();
        if prev.is_some_and(|k| k.generation() >= node.generation()) {
            return;
        }
        // A previous identity already tombstoned has no memberships left to remove.
        let prev = prev.filter(|&p| !self.is_dead(p));
        self.known.insert(node.addr(), node);
        if let Some(older) = node.generation().checked_sub(1) {
            let gen_down = self.down_gen.entry(node.addr()).or_insert(0);
            *gen_down = (*gen_down).max(older);
        }
        if let Some(prev) = prev {
            self.tombstone(now, prev, out);
        }
    }

    /// Makes `node` Down here: its generation (and every older one) dead, out of the live
    /// set, its root's memberships removed. Called once per identity: by `on_down`, or by
    /// `observe` when a newer generation shows up first.
    fn tombstone(&mut self, now: Time, node: NodeId, out: &mut Out) {
        let gen_down = self.down_gen.entry(node.addr()).or_insert(0);
        *gen_down = (*gen_down).max(node.generation());
        if self.live.get(&node.addr()) == Some(&node) {
            self.live.remove(&node.addr());
        }
        self.settle_unseen(node);
        self.tell_watchers(node, out);
        // Every node sees the Down and removes the memberships itself: no message needed, and
        // `is_dead` keeps in-flight Applies and states from re-adding them. By the invariant
        // of `known`, the root's memberships are all of this identity (or older).
        self.table.remove_node(node.root());
        self.bosses_on_down(now, node, out);
        self.view_changed(now, true, out);
    }

    /// This node renewed: it was declared Down by a view that saw at least as much of the
    /// cluster as its own, so the identities it declared Down itself are most likely the nodes
    /// it was cut off from, still running. The membership layer forgets those verdicts and
    /// reports each of them Up again, same generation, when its link comes back; so the
    /// tombstones of the newest identity known at each address are lifted here too (older
    /// generations stay dead), and such an identity is neither Up nor Down here until then.
    /// Its memberships were removed at its Down; they come back with the bosses' `Sync`s to
    /// the new identity and their recoveries, which take each node's own memberships from its
    /// own report. One that really died stays out: it never comes Up again, and memberships
    /// of it taken on another node's word are watched there (`watch.rs`).
    fn revive_on_renewal(&mut self, me: SocketAddrV4) {
        for (addr, node) in &self.known {
            if *addr == me {
                continue;
            }
            if let Some(g) = self.down_gen.get_mut(addr)
                && *g == node.generation()
            {
                match node.generation().checked_sub(1) {
                    Some(older) => *g = older,
                    None => {
                        self.down_gen.remove(addr);
                    }
                }
            }
        }
    }

    /// After any change of the live set: drop terms lost to another node, start terms won
    /// (`may_win`: the change can have made this node a boss, so the unwritten partitions of
    /// known scopes are checked too; see `warm_scope`), re-send local requests whose boss
    /// changed.
    fn view_changed(&mut self, now: Time, may_win: bool, out: &mut Out) {
        self.terms_on_view_change(now, may_win, out);
        self.redispatch_moved(now, out);
    }

    /// Validates a local call: a local pid and (for joins) metadata under the cap.
    fn check_call(&self, pid: Pid, meta_len: usize) -> Result<(), CallError> {
        if pid.node != self.me.root() {
            return Err(CallError::Group(GroupError::ForeignPid {
                pid,
                node: self.me.root(),
            }));
        }
        let cap = self.table.meta_cap_bytes();
        if meta_len > cap {
            return Err(CallError::Group(GroupError::MetaTooLarge {
                len: meta_len,
                cap,
            }));
        }
        Ok(())
    }

    fn dispatch_message(&mut self, now: Time, from: NodeId, mut msg: Message, out: &mut Out) {
        // Messages that can be a node's first word of a scope note it; every other scope
        // (answers) is only pointed at the stored handle.
        let first_word = msg.scope().is_some();
        if let Some(scope) = msg.scope_mut() {
            if first_word {
                self.note_scope(now, scope, out);
            } else {
                self.intern_scope(scope);
            }
        }
        match msg {
            Message::Request {
                from: sender,
                ticket,
                op,
            } => {
                // A direct message counts only from the identity this node holds live at the
                // address: a renewed requester not yet Up here (or an old one) is dropped, and
                // its retry timer re-sends once the views agree.
                if sender == from {
                    self.boss_request(now, from, ticket, op, out);
                } else {
                    self.stats.refused += 1;
                }
            }
            Message::Apply {
                epoch,
                seq,
                origin,
                op,
            } => self.replica_apply(now, from, epoch, seq, origin, op, out),
            Message::Ack {
                scope,
                partition,
                epoch,
                seq,
            } => self.boss_ack(now, from, (scope, partition), epoch, seq, out),
            Message::Done { ticket, refused } => self.requester_done(now, ticket, refused, out),
            Message::Nack {
                scope,
                partition,
                what,
                reason,
            } => self.on_nack(now, from, (scope, partition), what, reason, out),
            Message::Recover {
                scope,
                partition,
                epoch,
            } => self.replica_recover(from, (scope, partition), epoch, out),
            Message::State {
                scope,
                partition,
                epoch,
                state,
            } => self.boss_state(now, from, (scope, partition), epoch, state, out),
            Message::Sync {
                scope,
                partition,
                epoch,
                state,
            } => self.replica_sync(now, from, (scope, partition), epoch, state, out),
            Message::Handoff { scope, partition } => {
                self.boss_handoff(now, (scope, partition), out);
            }
            Message::Watch { nodes } => self.on_watch(from, nodes, out),
            Message::Gone { nodes } => self.on_gone(nodes, out),
            // `decode_frame` unpacks batches and refuses nested ones.
            Message::Batch { .. } => self.stats.refused += 1,
        }
    }
}

impl RegistryCore for CoordinatedGroups {
    type Timer = BossTimer;

    fn table(&self) -> &GroupTable {
        &self.table
    }

    /// The table plus the partitions' replica bookkeeping (dedupe windows dominate: up to
    /// `dedupe_per_partition` origins per partition in use) and the per-partition group index
    /// (one name handle and a control byte per slot; the names are the table's). Map nodes
    /// and pending requests are not counted (bounded by the partitions and calls in flight).
    fn heap_bytes(&self) -> usize {
        let per_replica = std::mem::size_of::<(Key, Replica)>();
        let slots = self.replicas.slot_bytes();
        let per_group_slot = std::mem::size_of::<GroupName>() + 1;
        self.table.heap_bytes()
            + slots
            + self
                .replicas
                .values()
                .map(|r| per_replica + r.recent.heap_bytes())
                .sum::<usize>()
            + self
                .part_groups
                .values()
                .map(|g| {
                    std::mem::size_of::<(Key, HashSet<GroupName>)>() + g.capacity() * per_group_slot
                })
                .sum::<usize>()
    }

    fn drain_events(&mut self) -> Vec<GroupEvent> {
        self.table.drain_events()
    }

    fn drain_events_with(&mut self, f: &mut dyn FnMut(GroupEvent)) {
        self.table.drain_events_with(f);
    }

    /// Nothing periodic: timers are armed by work (a request, a term with laggards).
    fn start(&mut self, _now: Time, _out: &mut Out) {}

    fn member_event(&mut self, now: Time, event: MemberEvent, out: &mut Out) {
        match event {
            MemberEvent::Up(node) => self.on_up(now, node, out),
            MemberEvent::Down(node) => self.on_down(now, node, out),
        }
    }

    /// Re-joins every local membership under the new identity (see `renew_requests`).
    fn renewed(&mut self, now: Time, new: NodeId, out: &mut Out) {
        let old = self.me;
        if new.root() != old.root() || new.generation() <= old.generation() {
            return;
        }
        self.me = new;
        self.live.remove(&old.addr());
        self.live.insert(new.addr(), new);
        // Ops of the old identity still in flight are not applied here any more: the other
        // nodes drop them too (they tombstone `old` on its Down, or on the first sign of
        // `new`), and whatever of them is already in this table is re-joined below.
        let gen_down = self.down_gen.entry(old.addr()).or_insert(0);
        *gen_down = (*gen_down).max(old.generation());
        self.revive_on_renewal(old.addr());
        // Terms of the old identity: replicas answer its messages as the new one's, but the
        // other nodes drop the old identity's boss role with its Down anyway. Queued
        // requesters are told to retry; in-flight ones retry on their own and are answered
        // from the dedupe window by the next boss.
        let terms = std::mem::take(&mut self.terms);
        for (key, term) in terms {
            for (from, ticket, _) in term.dropped_requests() {
                if from != old {
                    let nack = Message::Nack {
                        scope: key.0.clone(),
                        partition: key.1,
                        what: Refused::Request(ticket),
                        reason: NackReason::NotBoss,
                    };
                    self.send(from, &nack, out);
                }
            }
        }
        for r in self.replicas.values_mut() {
            if r.boss == Some(old) {
                r.boss = None;
            }
        }
        self.renew_requests(now, old, out);
        // A new identity has new rendezvous weights: it may win any partition.
        self.view_changed(now, true, out);
    }

    fn join(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Out,
    ) {
        if let Err(e) = self.check_call(pid, meta.len()) {
            self.complete_call(req, Err(e), out);
            return;
        }
        let op = Op::Join {
            scope: scope.clone(),
            group: group.clone(),
            pid,
            meta: meta.into(),
        };
        self.submit(now, Ticket::Call(req), op, out);
    }

    /// An internal request (no driver call), so never given up; see the trait.
    fn join_detached(
        &mut self,
        now: Time,
        _req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Out,
    ) -> Result<(), CallError> {
        self.check_call(pid, meta.len())?;
        let op = Op::Join {
            scope: scope.clone(),
            group: group.clone(),
            pid,
            meta: meta.into(),
        };
        let ticket = self.internal_ticket();
        self.submit(now, ticket, op, out);
        Ok(())
    }

    fn leave(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        out: &mut Out,
    ) {
        if let Err(e) = self.check_call(pid, 0) {
            self.complete_call(req, Err(e), out);
            return;
        }
        let op = Op::Leave {
            scope: scope.clone(),
            group: group.clone(),
            pid,
        };
        self.submit(now, Ticket::Call(req), op, out);
    }

    fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Out) {
        self.exit_pid(now, pid, out);
    }

    fn handle_message(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Out,
    ) -> Result<(), MessageError> {
        let decoded = if channel == Channel::Stream {
            message::decode_frame(bytes, self.cluster, self.table.meta_cap_bytes())
        } else {
            Err(MessageError::Malformed(
                "boss messages travel on streams".into(),
            ))
        };
        let checked = decoded.and_then(|msg| match self.live.get(&from) {
            Some(&node) if node != self.me => Ok((node, msg)),
            _ => Err(MessageError::NotAMember(from)),
        });
        match checked {
            Ok((node, msgs)) => {
                for msg in msgs {
                    self.dispatch_message(now, node, msg, out);
                }
                Ok(())
            }
            Err(e) => {
                self.stats.refused += 1;
                Err(e)
            }
        }
    }

    fn hold(&mut self) {
        if self.outbox.is_none() {
            self.outbox = Some(Outbox::default());
        }
    }

    fn release(&mut self, _now: Time, out: &mut Out) {
        self.release_outbox(out);
    }

    fn handle_timer(&mut self, now: Time, timer: BossTimer, out: &mut Out) {
        match timer {
            BossTimer::Retry { ticket, attempt } => self.retry_timer(now, ticket, attempt, out),
            BossTimer::Watch => self.watch_timer(out),
            BossTimer::Term {
                scope,
                partition,
                epoch,
            } => self.term_timer(now, (scope, partition), epoch, out),
        }
    }
}
