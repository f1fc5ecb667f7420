//! [`SessionManager`]: the state both sides share, the membership view, input dispatch, and
//! the end-of-input flush (local deliveries, batched sends).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::{Channel, MemberEvent, NodeId, Time};

use super::client::{CallState, OwnedKeys, PendingMap};
use super::placement::Placement;
use super::server::{Recovery, Replica};
use super::shard_map::ShardMap;
use super::wire::{self, ManagerMessage};
use super::{ManagerConfig, Out, SessionOutput, SessionTimer};
use crate::MessageError;
use crate::session::hash::SeededState;
use crate::session::state::TOUCH_AHEAD;
use crate::session::{
    Body, Epoch, LogOp, Output, ReplicaAck, Replicate, Reply, Request, SessionKey, ShardId,
};

/// Counters of one node's session manager.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    /// Terms this node started as primary.
    pub terms_started: u64,
    /// Sessions sent in re-assertions.
    pub reasserted: u64,
    /// Sessions reported lost to local processes.
    pub lost: u64,
    /// Requests sent again (timeouts, refusals, primary changes).
    pub resent: u64,
    /// Messages refused (malformed, from a non-member).
    pub refused: u64,
    /// Suspicions raised: a primary left a request unanswered past `request_timeout`, or a
    /// standby stalled replication for as long ([`SessionOutput::Suspect`]).
    pub suspected: u64,
}

/// One node's session manager. See the [module docs](super) for the protocol.
pub struct SessionManager {
    pub(super) me: NodeId,
    pub(super) cluster: u32,
    pub(super) config: ManagerConfig,
    /// Live members by address, this node included.
    pub(super) live: BTreeMap<SocketAddrV4, NodeId>,
    /// Addresses with the session role (the driver knows roles).
    pub(super) session_addrs: BTreeSet<SocketAddrV4>,
    pub(super) placement: Placement,
    /// Server: the highest epoch seen per shard (reported in recovery rounds).
    pub(super) seen: ShardMap<Epoch>,
    /// Server: replicas of the shards this node is primary or standby of.
    pub(super) replicas: ShardMap<Replica>,
    /// Server: shards this node is becoming primary of.
    pub(super) recovering: BTreeMap<ShardId, Recovery>,
    pub(super) next_round: u64,
    /// Server: terms started, for the driver (`drain_terms`).
    pub(super) terms_log: Vec<(ShardId, Epoch)>,
    /// Server: terms to announce at the end of this input.
    pub(super) announce: Vec<(ShardId, Epoch)>,
    /// Client: the epoch believed per shard (sent with requests).
    pub(super) believed: ShardMap<Epoch>,
    /// Client: per shard, the newest epoch that answered a re-assertion of this node.
    pub(super) asserted: ShardMap<Epoch>,
    pub(super) next_id: u64,
    pub(super) calls: BTreeMap<u64, CallState>,
    pub(super) pending: PendingMap,
    /// Client: acknowledged sessions of local processes, per shard (an insert per acknowledged
    /// registration: hashed, not ordered; see [`OwnedKeys`]).
    pub(super) owned: ShardMap<OwnedKeys>,
    /// Client: ended processes with registrations still in flight (undone on completion).
    pub(super) exiting: BTreeSet<crate::Pid>,
    /// Client: requests to send at the next flush, per primary.
    pub(super) outbox: BTreeMap<SocketAddrV4, Vec<Request>>,
    pub(super) flush_armed: bool,
    /// Requests to this node's own shards and replies to its own calls, delivered at the end
    /// of the input (never recursively).
    pub(super) local_requests: Vec<Request>,
    pub(super) local_replies: Vec<Reply>,
    /// Replies released in this input, per client node.
    pub(super) replies: BTreeMap<SocketAddrV4, Vec<Reply>>,
    /// Replication entries to send at the end of this input, per standby node.
    pub(super) replicate_out: BTreeMap<SocketAddrV4, Vec<Replicate>>,
    /// Acknowledgements to send at the end of this input, per primary node: at most one per
    /// shard (see `ack_at`), in the order the shards were first acknowledged.
    pub(super) ack_out: BTreeMap<SocketAddrV4, Vec<ReplicaAck>>,
    /// Where the acknowledgement batched for each (primary, shard) is in `ack_out`: a later
    /// one raises it in place. Why not a map per primary: a standby acknowledges a different
    /// shard at nearly every entry, and an ordered map built and freed per message cost a
    /// search and node allocations per entry; this one keeps its capacity.
    pub(super) ack_at: HashMap<(SocketAddrV4, ShardId), usize, SeededState>,
    /// Scratch for shard outputs.
    pub(super) sout: Vec<Output>,
    /// Emptied batch buffers kept for the next batches (see [`Spare`]).
    pub(super) spare: Spare,
    pub(super) stats: ManagerStats,
    pub(super) ticking: bool,
    /// Between [`SessionManager::hold`] and [`SessionManager::release`]: replies, replication
    /// entries and acknowledgements collected by the inputs stay batched per destination (one
    /// message each at the release, not one per input).
    pub(super) held: bool,
    /// Last time a message arrived from each member (for the silence watch).
    pub(super) heard: HashMap<SocketAddrV4, Time>,
    /// Last time a message left for each member (keepalives go only to quiet links).
    pub(super) sent: HashMap<SocketAddrV4, Time>,
    /// The `now` of the input being handled (stamps `sent`).
    pub(super) now: Time,
}

/// Emptied batch buffers (requests per primary, replies per client, log entries per
/// standby), kept for the next batch instead of growing a new vector from nothing for every
/// message: a batch of a few hundred entries reallocated and moved its entries ~9 times.
/// At most [`Spare::KEEP`] buffers of each kind, of at most [`Spare::CAPACITY_MAX`] entries.
#[derive(Default)]
pub(crate) struct Spare {
    requests: Vec<Vec<Request>>,
    replies: Vec<Vec<Reply>>,
    replicate: Vec<Vec<Replicate>>,
    acks: Vec<Vec<ReplicaAck>>,
}

impl Spare {
    /// Buffers kept per kind: one per destination of a small cluster's session nodes.
    const KEEP: usize = 8;
    /// A buffer grown past this (a failover's burst) is freed rather than kept.
    const CAPACITY_MAX: usize = 4096;

    fn keep<T>(pool: &mut Vec<Vec<T>>, mut v: Vec<T>) {
        if pool.len() < Self::KEEP && v.capacity() <= Self::CAPACITY_MAX {
            v.clear();
            pool.push(v);
        }
    }
}

impl SessionManager {
    /// The manager of node `me` in `cluster`. It starts alone, with no session node known: the
    /// driver forwards membership events and the session-role set.
    pub fn new(me: NodeId, cluster: u32, config: ManagerConfig) -> Self {
        let mut live = BTreeMap::new();
        live.insert(me.addr(), me);
        Self {
            me,
            cluster,
            placement: Placement::new(config.shards),
            config,
            live,
            session_addrs: BTreeSet::new(),
            seen: ShardMap::new(config.shards),
            replicas: ShardMap::new(config.shards),
            recovering: BTreeMap::new(),
            next_round: 0,
            terms_log: Vec::new(),
            announce: Vec::new(),
            believed: ShardMap::new(config.shards),
            asserted: ShardMap::new(config.shards),
            next_id: 1,
            calls: BTreeMap::new(),
            pending: PendingMap::new(),
            owned: ShardMap::new(config.shards),
            exiting: BTreeSet::new(),
            outbox: BTreeMap::new(),
            flush_armed: false,
            local_requests: Vec::new(),
            local_replies: Vec::new(),
            replies: BTreeMap::new(),
            replicate_out: BTreeMap::new(),
            ack_out: BTreeMap::new(),
            ack_at: HashMap::with_hasher(SeededState::new(config.shard.hash_seed)),
            sout: Vec::new(),
            spare: Spare::default(),
            stats: ManagerStats::default(),
            ticking: false,
            held: false,
            heard: HashMap::new(),
            sent: HashMap::new(),
            now: Duration::ZERO,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ManagerStats {
        &self.stats
    }

    /// The shard map in this node's view.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The replica this node holds of `shard`, if any.
    pub fn replica(&self, shard: ShardId) -> Option<&crate::session::Shard> {
        self.replicas.get(&shard).map(|r| &r.shard)
    }

    /// Every replica this node holds.
    pub fn replicas(&self) -> impl Iterator<Item = &crate::session::Shard> {
        self.replicas.values().map(|r| &r.shard)
    }

    /// Sessions of local processes this node believes acknowledged, in shard and key order.
    pub fn owned(&self) -> impl Iterator<Item = (&SessionKey, crate::Pid)> {
        self.owned.values().flat_map(|m| {
            let mut keys: Vec<_> = m.iter().map(|(k, o)| (k, o.pid)).collect();
            keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
            keys
        })
    }

    /// Calls (and internal requests) not yet answered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Terms this node started since the last drain, `(shard, epoch)` in order (for checkers:
    /// an epoch must never be started by two nodes).
    pub fn drain_terms(&mut self) -> Vec<(ShardId, Epoch)> {
        std::mem::take(&mut self.terms_log)
    }

    /// Arms the upkeep timer.
    pub fn start(&mut self, _now: Time, out: &mut Out) {
        if !self.ticking {
            self.ticking = true;
            out.push(SessionOutput::SetTimer {
                after: self.config.tick,
                timer: SessionTimer::Tick,
            });
        }
    }

    /// A membership change reported by this node's membership core.
    pub fn member_event(&mut self, now: Time, event: MemberEvent, out: &mut Out) {
        match event {
            MemberEvent::Up(node) => {
                if node.addr() == self.me.addr() || self.live.get(&node.addr()) == Some(&node) {
                    return;
                }
                // A newer generation at an address replaces the older one.
                if let Some(old) = self.live.insert(node.addr(), node)
                    && old.generation() < node.generation()
                {
                    self.drop_node_everywhere(old, out);
                }
                // Term announcements went to the nodes live at the time: tell a newcomer the
                // terms this node serves, so its first call to each shard is not refused as
                // stale (one extra round trip per shard and client otherwise).
                let serving: Vec<(ShardId, Epoch)> = self
                    .replicas
                    .iter()
                    .filter(|(_, r)| r.shard.role() == crate::session::Role::Primary)
                    .map(|(s, r)| (*s, r.shard.epoch()))
                    .collect();
                if !serving.is_empty() {
                    self.send(node.addr(), &ManagerMessage::Terms(serving), out);
                }
            }
            MemberEvent::Down(node) => {
                if node.addr() == self.me.addr() || self.live.get(&node.addr()) != Some(&node) {
                    return;
                }
                self.live.remove(&node.addr());
                self.heard.remove(&node.addr());
                self.sent.remove(&node.addr());
                self.drop_node_everywhere(node, out);
            }
        }
        self.view_changed(now, out);
        self.finish(now, out);
    }

    /// The addresses of the nodes with the session role (this node included if it has it).
    pub fn set_session_nodes(
        &mut self,
        now: Time,
        nodes: impl IntoIterator<Item = SocketAddrV4>,
        out: &mut Out,
    ) {
        self.session_addrs = nodes.into_iter().collect();
        self.view_changed(now, out);
        self.finish(now, out);
    }

    /// This node was declared Down and renewed its identity to `new` while its processes kept
    /// running. The primaries dropped its sessions on the Down, so it re-asserts every owned
    /// session (pids and the client id name the root identity, which a renewal keeps).
    pub fn renewed(&mut self, now: Time, new: NodeId, out: &mut Out) {
        if new.addr() != self.me.addr() || new.generation() <= self.me.generation() {
            return;
        }
        self.live.remove(&self.me.addr());
        self.me = new;
        self.live.insert(new.addr(), new);
        self.view_changed(now, out);
        // Standbys follow the identity that filled them: fill them again from the new one.
        self.refill_all(out);
        let shards: Vec<ShardId> = self.owned.keys().copied().collect();
        for shard in shards {
            self.reassert_shard(now, shard, out);
        }
        self.finish(now, out);
    }

    /// The live session nodes, this node included if it has the role.
    fn session_nodes(&self) -> Vec<NodeId> {
        self.live
            .values()
            .copied()
            .filter(|n| self.session_addrs.contains(&n.addr()))
            .collect()
    }

    /// After any change of the live set or the roles: new placement, server transitions for
    /// the shards that moved, client re-routing.
    fn view_changed(&mut self, now: Time, out: &mut Out) {
        let before = self.placement.clone();
        let changed = self.placement.set_nodes(self.session_nodes());
        for &shard in &changed {
            self.reconcile(now, shard, out);
        }
        // A new primary may not have every owned session (it may start empty, or never
        // announce its term to this node): re-assert there.
        for shard in changed {
            if before.primary(shard) != self.placement.primary(shard) {
                self.reassert_shard(now, shard, out);
            }
        }
        self.recoveries_on_view(now, out);
        self.reroute(now, out);
    }

    /// Sends `msg` to `to` (never this node), after any replication batched for `to` so the
    /// link's order is the order things happened in.
    pub(super) fn send(&mut self, to: SocketAddrV4, msg: &ManagerMessage, out: &mut Out) {
        self.flush_batched(to, out);
        self.send_now(to, msg, out);
    }

    /// Sends the replication entries, acknowledgements and replies batched for `to`, in that
    /// order (a reply never overtakes the replication it waited for on the same link).
    fn flush_batched(&mut self, to: SocketAddrV4, out: &mut Out) {
        if let Some(entries) = self.replicate_out.remove(&to) {
            let msg = ManagerMessage::Replicate(entries);
            self.send_now(to, &msg, out);
            if let ManagerMessage::Replicate(v) = msg {
                Spare::keep(&mut self.spare.replicate, v);
            }
        }
        if let Some(acks) = self.ack_out.remove(&to) {
            for a in &acks {
                self.ack_at.remove(&(to, a.shard));
            }
            let msg = ManagerMessage::Acks(acks);
            self.send_now(to, &msg, out);
            if let ManagerMessage::Acks(v) = msg {
                Spare::keep(&mut self.spare.acks, v);
            }
        }
        if let Some(replies) = self.replies.remove(&to) {
            let msg = ManagerMessage::Replies(replies);
            self.send_now(to, &msg, out);
            if let ManagerMessage::Replies(v) = msg {
                Spare::keep(&mut self.spare.replies, v);
            }
        }
    }

    /// Holds replies, replication entries and acknowledgements from now until
    /// [`SessionManager::release`]: a driver that handles a burst of inputs at once (a batch
    /// of frames read together, a round of due timers) brackets it with these, so each peer
    /// gets one message of each kind for the whole burst instead of one per input. Nothing
    /// else changes: a reply is still released only once the standby acknowledged, and any
    /// other message to a peer first sends what is batched for it (link order is kept). A
    /// driver that never holds (the simulator) gets every message at the end of its input.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// Sends what was held since [`SessionManager::hold`] and stops holding.
    pub fn release(&mut self, now: Time, out: &mut Out) {
        self.held = false;
        self.finish(now, out);
    }

    fn send_now(&mut self, to: SocketAddrV4, msg: &ManagerMessage, out: &mut Out) {
        debug_assert_ne!(to, self.me.addr(), "local deliveries are direct");
        self.sent.insert(to, self.now);
        out.push(SessionOutput::Send {
            to,
            channel: Channel::Stream,
            payload: wire::encode(msg, self.cluster),
        });
    }

    /// A session message arrived.
    pub fn handle_message(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Out,
    ) -> Result<(), MessageError> {
        let decoded = if channel == Channel::Stream {
            wire::decode(bytes, self.cluster)
        } else {
            Err(MessageError::Malformed(
                "session messages travel on streams".into(),
            ))
        };
        let checked = decoded.and_then(|msg| match self.live.get(&from) {
            Some(&node) if node != self.me => Ok((node, msg)),
            _ => Err(MessageError::NotAMember(from)),
        });
        let (node, msg) = match checked {
            Ok(x) => x,
            Err(e) => {
                self.stats.refused += 1;
                return Err(e);
            }
        };
        self.now = now;
        self.heard.insert(from, now);
        // The decoded batches' emptied buffers join the spare ones (see [`Spare`]): the next
        // batch this node builds reuses them instead of allocating.
        match msg {
            ManagerMessage::Requests(mut reqs) => {
                self.serve_requests(now, &mut reqs, out);
                Spare::keep(&mut self.spare.requests, reqs);
            }
            ManagerMessage::Replies(mut replies) => {
                self.on_replies(now, Some(node), &mut replies, out);
                Spare::keep(&mut self.spare.replies, replies);
            }
            ManagerMessage::Replicate(mut batch) => {
                let mut entries = batch.drain(..);
                while entries.len() > 0 {
                    self.read_ahead(entries.as_slice().iter().filter_map(|m| match &m.op {
                        LogOp::Request {
                            id,
                            body: Body::One(call),
                            ..
                        } => Some((m.shard, call.key(), Some(id.client))),
                        _ => None,
                    }));
                    for m in entries.by_ref().take(TOUCH_AHEAD) {
                        self.on_replicate(node, m, out);
                    }
                }
                drop(entries);
                Spare::keep(&mut self.spare.replicate, batch);
            }
            ManagerMessage::Acks(acks) => self.on_acks(node, &acks, out),
            ManagerMessage::Replaced(r) => self.on_replaced(r, out),
            ManagerMessage::Fill(s) => self.on_fill(now, node, s, out),
            ManagerMessage::EpochQuery { round, shards } => {
                self.on_epoch_query(node, round, &shards, out);
            }
            ManagerMessage::EpochReport { round, epochs } => {
                self.on_epoch_report(now, node, round, &epochs, out);
            }
            ManagerMessage::Terms(terms) => self.on_terms(now, &terms, out),
            ManagerMessage::Dropped(shards) => {
                for shard in shards {
                    let keys: Vec<SessionKey> = self
                        .owned
                        .get(&shard)
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    self.reassert_keys(now, shard, keys, out);
                }
            }
        }
        self.finish(now, out);
        Ok(())
    }

    /// A timer set earlier fired.
    pub fn handle_timer(&mut self, now: Time, timer: SessionTimer, out: &mut Out) {
        match timer {
            SessionTimer::Flush => {
                self.flush_armed = false;
                self.flush_outbox(out);
            }
            SessionTimer::Tick => {
                self.now = now;
                self.server_tick(now, out);
                self.resend_overdue(now, out);
                out.push(SessionOutput::SetTimer {
                    after: self.config.tick,
                    timer: SessionTimer::Tick,
                });
            }
            SessionTimer::Retry { id, arming } => self.retry_timer(now, id, arming, out),
        }
        self.finish(now, out);
    }

    /// Queues `req` for `to` (this node: delivered at the end of the input).
    pub(super) fn enqueue(&mut self, to: NodeId, req: Request, out: &mut Out) {
        if to == self.me {
            self.local_requests.push(req);
            return;
        }
        let spare = &mut self.spare.requests;
        self.outbox
            .entry(to.addr())
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(req);
        self.arm_flush(out);
    }

    /// Arms the zero-delay `Flush` timer, once until it fires.
    fn arm_flush(&mut self, out: &mut Out) {
        if !self.flush_armed {
            self.flush_armed = true;
            out.push(SessionOutput::SetTimer {
                after: Duration::ZERO,
                timer: SessionTimer::Flush,
            });
        }
    }

    /// End of a local call (register, unregister, lookups, a process exit): as
    /// [`Self::finish`], except that the replication entries and replies it produced (a call
    /// to a shard this node serves) wait for the `Flush` timer with the requests queued for
    /// other nodes. A burst of calls then replicates in one message per standby, not one per
    /// call; the call still completes only once its standby acknowledged (a shard without a
    /// standby answers within the call, as before).
    pub(super) fn finish_call(&mut self, now: Time, out: &mut Out) {
        let held = std::mem::replace(&mut self.held, true);
        self.finish(now, out);
        self.held = held;
        let batched =
            !self.replicate_out.is_empty() || !self.ack_out.is_empty() || !self.replies.is_empty();
        if !held && batched {
            self.arm_flush(out);
        }
    }

    fn flush_outbox(&mut self, out: &mut Out) {
        // Popped rather than taken whole: the emptied map keeps its node for the next burst
        // instead of freeing it and allocating a fresh one per flush.
        while let Some((to, reqs)) = self.outbox.pop_first() {
            let msg = ManagerMessage::Requests(reqs);
            self.send(to, &msg, out);
            if let ManagerMessage::Requests(v) = msg {
                Spare::keep(&mut self.spare.requests, v);
            }
        }
    }

    /// Carries out the shard outputs collected in `sout`.
    pub(super) fn route_shard_outputs(&mut self, out: &mut Out) {
        let mut sout = std::mem::take(&mut self.sout);
        for o in sout.drain(..) {
            match o {
                Output::Reply(r) => {
                    if r.to.client.addr() == self.me.addr() {
                        self.local_replies.push(r);
                    } else {
                        let spare = &mut self.spare.replies;
                        self.replies
                            .entry(r.to.client.addr())
                            .or_insert_with(|| spare.pop().unwrap_or_default())
                            .push(r);
                    }
                }
                // Batched per destination until the end of the input (or until another
                // message to that node, which must not overtake them).
                Output::Replicate { to, msg } => {
                    let spare = &mut self.spare.replicate;
                    self.replicate_out
                        .entry(to)
                        .or_insert_with(|| spare.pop().unwrap_or_default())
                        .push(msg);
                }
                Output::Ack { to, msg } => {
                    let to = to.addr();
                    let spare = &mut self.spare.acks;
                    let acks = self
                        .ack_out
                        .entry(to)
                        .or_insert_with(|| spare.pop().unwrap_or_default());
                    match self.ack_at.entry((to, msg.shard)) {
                        Entry::Occupied(at) => {
                            let a = &mut acks[*at.get()];
                            // Cumulative: the newest (epoch, seq) says everything the older
                            // ones did.
                            if (msg.epoch, msg.seq) > (a.epoch, a.seq) {
                                *a = msg;
                            }
                        }
                        Entry::Vacant(at) => {
                            at.insert(acks.len());
                            acks.push(msg);
                        }
                    }
                }
                Output::Notify { to, msg } => {
                    if to.addr() == self.me.addr() {
                        self.on_replaced(msg, out);
                    } else {
                        self.send(to.addr(), &ManagerMessage::Replaced(msg), out);
                    }
                }
                Output::Fenced { shard, epoch } => {
                    self.note_epoch(shard, epoch);
                    // A fenced replica serves nothing and is revived only from a snapshot.
                    self.replicas.remove(&shard);
                }
            }
        }
        self.sout = sout;
    }

    /// End of every input: deliver local requests and replies until none is left, then send
    /// the replies and term announcements collected, one message per destination.
    pub(super) fn finish(&mut self, now: Time, out: &mut Out) {
        loop {
            // Each batch is taken out (serving it may queue more), and its emptied buffer is
            // put back when nothing new was queued meanwhile (and it is not oversized, see
            // `Spare`), so the next batch reuses it.
            if !self.local_requests.is_empty() {
                let mut reqs = std::mem::take(&mut self.local_requests);
                self.serve_requests(now, &mut reqs, out);
                if self.local_requests.is_empty() && reqs.capacity() <= Spare::CAPACITY_MAX {
                    self.local_requests = reqs;
                }
            } else if !self.local_replies.is_empty() {
                let mut replies = std::mem::take(&mut self.local_replies);
                self.on_replies(now, None, &mut replies, out);
                if self.local_replies.is_empty() && replies.capacity() <= Spare::CAPACITY_MAX {
                    self.local_replies = replies;
                }
            } else {
                break;
            }
        }
        if !self.held {
            let batched: BTreeSet<SocketAddrV4> = self
                .replicate_out
                .keys()
                .chain(self.ack_out.keys())
                .chain(self.replies.keys())
                .copied()
                .collect();
            for to in batched {
                self.flush_batched(to, out);
            }
        }
        if !self.announce.is_empty() {
            let terms = std::mem::take(&mut self.announce);
            let others: Vec<SocketAddrV4> = self
                .live
                .keys()
                .copied()
                .filter(|a| *a != self.me.addr())
                .collect();
            for to in others {
                self.send(to, &ManagerMessage::Terms(terms.clone()), out);
            }
            self.on_terms(now, &terms, out);
            // Re-assertions to this node's own shards are local requests.
            if !self.local_requests.is_empty() || !self.local_replies.is_empty() {
                self.finish(now, out);
            }
        }
    }

    /// Remembers that `epoch` exists for `shard`.
    pub(super) fn note_epoch(&mut self, shard: ShardId, epoch: Epoch) {
        let e = self.seen.get_or_insert_with(shard, || 0);
        *e = (*e).max(epoch);
    }
}
