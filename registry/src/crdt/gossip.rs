//! [`GossipGroups`]: construction, local calls, membership events, timers, dissemination.
//! Incoming messages and anti-entropy are in `sync.rs`.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::wire::MAX_DATAGRAM_PAYLOAD;
use meshreg_membership::{Channel, MemberEvent, NodeId, Profile, Time};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::digest::VersionDigest;
use super::merge::{OwnerSet, ReplicaState};
use super::peers::PeerBook;
use super::queue::{BroadcastQueue, max_transmissions};
use super::wire::{Delta, Entry, GroupsMsg, Op, OwnerState};
use crate::groups::heap::map_bytes;
use crate::groups::{GroupError, GroupEvent, GroupName, GroupTable, GroupTableConfig, ScopeName};
use crate::{CallError, MessageError, Pid, RegistryCore, RegistryOutput, RequestId};

/// Peers each gossip round goes to.
pub const FANOUT: usize = 3;

/// Most datagrams one gossip round sends (each to [`FANOUT`] peers) while deltas are queued.
pub const MAX_DATAGRAMS_PER_ROUND: usize = 16;

/// After this many Up events in one anti-entropy period, a node stops pulling each new peer's
/// own state and runs one full sync instead (a healed partition brings thousands of Ups; one
/// full sync with one of them carries the same states in one frame).
pub const PULL_ON_UP_MAX: u32 = 8;

/// An eager push follows the previous one by at least this much; deltas made or learnt in
/// between wait for [`GossipTimer::Push`] and leave together. A lone change is pushed at once;
/// a burst (a process joining thousands of groups, a peer's burst arriving) fills datagrams
/// instead of sending one datagram per delta to [`FANOUT`] peers from every node that learns it.
pub const PUSH_COALESCE: Duration = Duration::from_millis(1);

/// Envelope header, enum tag, sender and length prefix: room kept in a gossip datagram.
const DELTAS_OVERHEAD: usize = 40;

/// Timers of the gossip backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GossipTimer {
    /// One gossip round: recent deltas to [`FANOUT`] random peers.
    Gossip,
    /// One anti-entropy round: the version digest to one random peer.
    AntiEntropy,
    /// The deltas made or learnt since the last eager push (see [`PUSH_COALESCE`]).
    Push,
}

/// Period of the gossip rounds: 200 ms on `lan` (the dissemination bound of GUIDE §5 assumes
/// it), 1 s on `wan` (5x, like SWIM's probe period), 50 ms on `test` (SWIM test gossip).
pub const fn gossip_period(profile: Profile) -> Duration {
    match profile {
        Profile::Lan => Duration::from_millis(200),
        Profile::Wan => Duration::from_secs(1),
        Profile::Test => Duration::from_millis(50),
    }
}

/// Period of the anti-entropy rounds: the membership's (1 s `lan`, 5 s `wan`, 250 ms `test`).
pub const fn anti_entropy_period(profile: Profile) -> Duration {
    profile.anti_entropy_period()
}

/// What this node refused or repaired, for diagnostics and the simulator. Every dropped
/// message or delta is counted here (GUIDE §4 rule 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Messages with a bad envelope.
    pub wire_errors: u64,
    /// Messages that did not decode or broke a cap (and owner states the table refused).
    pub malformed: u64,
    /// Messages from addresses not Up in this node's view.
    pub not_a_member: u64,
    /// Messages from an older generation of a live address, or about a dead generation.
    pub stale_generation: u64,
    /// Deltas or states about a dead or superseded owner generation (dropped).
    pub stale_items: u64,
    /// Deltas or states about owners not Up here (dropped; pulled when they come Up).
    pub unknown_owner: u64,
    /// Deltas already held.
    pub duplicate_deltas: u64,
    /// Deltas applied.
    pub deltas_applied: u64,
    /// Deltas that showed a gap (or did not apply): the owner's state was pulled.
    pub gaps: u64,
    /// Owner states applied with `replace_node`.
    pub states_applied: u64,
    /// Pull requests sent.
    pub pulls_sent: u64,
    /// Full syncs started (a whole version list sent).
    pub full_syncs: u64,
    /// Deltas dropped from the retransmit queue (full, or too large for a datagram).
    pub deltas_dropped: u64,
}

/// The gossip discovery backend of one node: a [`GroupTable`] kept in step with the other
/// nodes by owner-authoritative deltas, gossip and anti-entropy. See the
/// [module docs](super).
///
/// Invariants:
/// - the table holds memberships of this node and of owners Up in this node's view only, each
///   owner at the generation Up here;
/// - `held[addr] = (generation, version)` for every such owner with a version, and the version
///   digest is exactly the (owner, version) pairs of `held` plus this node's own pair;
/// - a generation at or below `dead[addr]` is never applied again.
pub struct GossipGroups {
    pub(super) me: NodeId,
    pub(super) cluster: u32,
    pub(super) profile: Profile,
    pub(super) rng: SmallRng,
    pub(super) table: GroupTable,
    /// This node's own version: the number of local changes in this generation.
    pub(super) version: u64,
    /// Per other address: live generation, held `(generation, version)`, tombstone.
    pub(super) book: PeerBook,
    pub(super) digest: VersionDigest,
    /// Owners whose full state was requested, and when (one request per anti-entropy period).
    pub(super) pulling: HashMap<SocketAddrV4, Time>,
    pub(super) queue: BroadcastQueue,
    /// Whether a full sync was ever started (the first Up peer gets one).
    pub(super) synced: bool,
    pub(super) ups_this_round: u32,
    pub(super) stats: GossipStats,
    /// The driver holds eager pushes until `release` (`RegistryCore::hold`).
    pub(super) holding: bool,
    /// An eager push is owed (deltas made or learnt since the last one).
    pub(super) push_owed: bool,
    /// A [`GossipTimer::Push`] is set.
    pub(super) push_armed: bool,
    /// When the last eager push went out.
    pub(super) last_push: Option<Time>,
}

impl GossipGroups {
    /// The backend of node `me` in cluster `cluster`, with `profile`'s periods; `seed` drives
    /// all its randomness (peer choice, jitter).
    pub fn new(me: NodeId, cluster: u32, profile: Profile, seed: u64) -> Self {
        Self {
            me,
            cluster,
            profile,
            rng: SmallRng::seed_from_u64(seed ^ 0x4752_4F55_5053_4753),
            // Pids name their node by its root: they survive renewals of `me`.
            table: GroupTable::new(me.root()),
            version: 0,
            book: PeerBook::default(),
            digest: VersionDigest::default(),
            pulling: HashMap::new(),
            queue: BroadcastQueue::default(),
            synced: false,
            ups_this_round: 0,
            stats: GossipStats::default(),
            holding: false,
            push_owed: false,
            push_armed: false,
            last_push: None,
        }
    }

    /// Like [`Self::new`], with explicit group-table settings (the metadata cap).
    pub fn with_table_config(
        me: NodeId,
        cluster: u32,
        profile: Profile,
        seed: u64,
        table: GroupTableConfig,
    ) -> Self {
        let mut g = Self::new(me, cluster, profile, seed);
        g.table = GroupTable::with_config(me.root(), table);
        g
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Counters of refused and repaired messages.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Live peers in this node's view.
    pub fn peers(&self) -> Vec<NodeId> {
        (0..self.book.live_len())
            .map(|i| self.book.live_at(i))
            .collect()
    }

    /// Deltas waiting for (re)transmission.
    pub fn pending_deltas(&self) -> usize {
        self.queue.len()
    }

    /// The version held of `owner` (this node's own included); 0 when none.
    pub fn version_of(&self, owner: NodeId) -> u64 {
        if owner == self.me {
            return self.version;
        }
        match self.book.held(owner.addr()) {
            Some((generation, version)) if generation == owner.generation() => version,
            _ => 0,
        }
    }

    /// Heap bytes: the table plus the per-owner bookkeeping (versions, live peers,
    /// tombstones, pulls in flight) and the retransmit queue. O(scopes + groups + nodes).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
            + self.book.heap_bytes()
            + map_bytes(&self.pulling)
            + self.queue.heap_bytes()
    }

    /// This node's state as a pure [`ReplicaState`] (owner sets and tombstones): what two
    /// converged nodes agree on. O(memberships held); for tests and the simulator.
    pub fn snapshot(&self) -> ReplicaState {
        let mut state = ReplicaState::new();
        for dead in self.book.dead_iter() {
            state.tombstone(dead);
        }
        if self.version > 0 {
            state.insert_owner(OwnerSet::from_state(
                &self.owner_state(self.me, self.version),
            ));
        }
        for (owner, version) in self.book.held_iter() {
            state.insert_owner(OwnerSet::from_state(&self.owner_state(owner, version)));
        }
        state
    }

    /// The full state of `owner` as held here, at `version`.
    pub(super) fn owner_state(&self, owner: NodeId, version: u64) -> OwnerState {
        let entries = self
            .table
            .memberships_of_node(owner.root())
            .map(|m| Entry {
                scope: m.scope.clone(),
                group: m.group.clone(),
                serial: m.pid.serial,
                meta: m.meta.into(),
            })
            .collect();
        OwnerState {
            owner,
            version,
            entries,
        }
    }

    pub(super) fn is_dead(&self, node: NodeId) -> bool {
        self.book
            .dead_generation(node.addr())
            .is_some_and(|g| node.generation() <= g)
    }

    /// Sets the held version of `owner` (not this node), keeping the digest exact.
    pub(super) fn set_held(&mut self, owner: NodeId, version: u64) {
        if let Some((generation, old)) = self.book.set_held(owner, version) {
            self.digest
                .remove(&NodeId::new(owner.addr(), generation), old);
        }
        self.digest.add(&owner, version);
    }

    /// A local change happened: bump our version, keep the digest exact, queue the delta.
    fn record_local(&mut self, op: Op) {
        if self.version > 0 {
            self.digest.remove(&self.me, self.version);
        }
        self.version += 1;
        self.digest.add(&self.me, self.version);
        let delta = Delta {
            dot: crdts::Dot::new(self.me, self.version),
            op,
        };
        self.stats.deltas_dropped += self.queue.push(delta);
    }

    pub(super) fn send(
        &self,
        to: SocketAddrV4,
        channel: Channel,
        msg: &GroupsMsg,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        out.push(RegistryOutput::Send {
            to,
            channel,
            payload: msg.encode(self.cluster),
        });
    }

    fn arm(&mut self, timer: GossipTimer, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        let period = match timer {
            GossipTimer::Gossip => gossip_period(self.profile),
            GossipTimer::AntiEntropy => anti_entropy_period(self.profile),
            GossipTimer::Push => return,
        };
        // ±25% jitter keeps the rounds of different nodes from lining up.
        let ms = period.as_millis() as u64;
        let jitter = self.rng.random_range(0..=ms / 2);
        out.push(RegistryOutput::SetTimer {
            after: Duration::from_millis(ms - ms / 4 + jitter),
            timer,
        });
    }

    /// Up to `k` distinct random live peers, in the order drawn.
    pub(super) fn random_peers(&mut self, k: usize) -> Vec<NodeId> {
        let n = self.book.live_len();
        let k = k.min(n);
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let i = self.rng.random_range(0..n);
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        chosen.into_iter().map(|i| self.book.live_at(i)).collect()
    }

    /// One gossip round: the least-sent queued deltas, one datagram's worth at a time, each to
    /// [`FANOUT`] random peers, for up to [`MAX_DATAGRAMS_PER_ROUND`] datagrams. A burst of joins
    /// thus widens the round instead of queueing behind one 1,400-byte packet (measured: with one
    /// datagram per round, 500 joins/s on 100 nodes saturated gossip and left the rest to
    /// anti-entropy, p50 visibility 2.2 s). Deltas that still do not fit wait for the next round.
    fn gossip_round(&mut self, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.send_deltas(MAX_DATAGRAMS_PER_ROUND, out);
    }

    /// Eager push: right after this node learns (or makes) new deltas, datagrams of the
    /// least-sent ones (the new ones) go to [`FANOUT`] peers instead of waiting for the next
    /// round. Each hop then costs one network latency rather than half a round (100 ms on
    /// `lan`); the total number of transmissions per delta is unchanged (the queue counts
    /// them). Pushes are at least [`PUSH_COALESCE`] apart, and held while the driver holds
    /// (`hold`): what comes in between leaves together.
    pub(super) fn push_fresh(&mut self, now: Time, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.push_owed = true;
        if self.holding {
            return;
        }
        if let Some(at) = self.last_push.map(|t| t + PUSH_COALESCE)
            && now < at
        {
            if !self.push_armed {
                self.push_armed = true;
                out.push(RegistryOutput::SetTimer {
                    after: at - now,
                    timer: GossipTimer::Push,
                });
            }
            return;
        }
        self.push_now(now, out);
    }

    /// Sends every never-sent delta (up to [`MAX_DATAGRAMS_PER_ROUND`] datagrams; the rest go
    /// with the rounds).
    fn push_now(&mut self, now: Time, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.push_owed = false;
        self.last_push = Some(now);
        for _ in 0..MAX_DATAGRAMS_PER_ROUND {
            if !self.queue.has_unsent() {
                break;
            }
            self.send_deltas(1, out);
        }
    }

    /// Sends up to `datagrams` datagrams of the least-sent queued deltas, each to [`FANOUT`]
    /// random peers.
    fn send_deltas(&mut self, datagrams: usize, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        let max_tx = max_transmissions(self.book.live_len() + 1);
        let budget = MAX_DATAGRAM_PAYLOAD - DELTAS_OVERHEAD;
        for _ in 0..datagrams {
            if self.queue.is_empty() || self.book.live_len() == 0 {
                return;
            }
            let targets = self.random_peers(FANOUT);
            let copies = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            let (deltas, too_large) = self.queue.take_round(budget, copies, max_tx);
            self.stats.deltas_dropped += too_large;
            if deltas.is_empty() {
                return;
            }
            let msg = GroupsMsg::Deltas {
                from: self.me,
                deltas,
            };
            let payload = msg.encode(self.cluster);
            for to in targets {
                out.push(RegistryOutput::Send {
                    to: to.addr(),
                    channel: Channel::Datagram,
                    payload: payload.clone(),
                });
            }
        }
    }

    /// One anti-entropy round: our version-digest summary to one random peer.
    fn anti_entropy_round(&mut self, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.ups_this_round = 0;
        let Some(&peer) = self.random_peers(1).first() else {
            return;
        };
        let (count, hash) = self.digest.summary();
        let msg = GroupsMsg::Digest {
            from: self.me,
            count,
            hash,
        };
        self.send(peer.addr(), Channel::Datagram, &msg, out);
    }

    fn member_up(&mut self, now: Time, x: NodeId, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        if x.addr() == self.me.addr() || self.is_dead(x) {
            return;
        }
        match self.book.live_generation(x.addr()) {
            Some(generation) if generation >= x.generation() => return,
            // A newer generation without a Down first: the old one is gone all the same.
            Some(generation) => self.member_down(NodeId::new(x.addr(), generation)),
            None => {}
        }
        self.book.add_live(x);
        // Catch up without waiting for random rounds: a fresh node syncs everything with its
        // first peer; afterwards each new peer's own state is pulled from it, and a burst of
        // Ups (a healed partition) turns into one full sync.
        if !self.synced || self.ups_this_round == PULL_ON_UP_MAX {
            self.synced = true;
            self.full_sync(x, out);
        } else if self.ups_this_round < PULL_ON_UP_MAX {
            self.pull(now, x.addr(), vec![x], out);
        }
        self.ups_this_round = self.ups_this_round.saturating_add(1);
    }

    /// `x` is Down: drop its memberships at once and tombstone its generation (and every
    /// older one of its address).
    fn member_down(&mut self, x: NodeId) {
        if x.addr() == self.me.addr() {
            return;
        }
        let addr = x.addr();
        self.book.bury(x);
        if self
            .book
            .live_generation(addr)
            .is_some_and(|generation| generation <= x.generation())
        {
            self.book.remove_live(addr);
        }
        if let Some((generation, version)) = self.book.held(addr)
            && generation <= x.generation()
        {
            // The version applied is kept: should this generation come Up here again (our
            // renewal lifts its tombstone), only news newer than it, or the owner's own word,
            // may list its memberships again (see `sync.rs`, `admit_held`).
            self.book.retire_held(addr);
            let owner = NodeId::new(addr, generation);
            self.digest.remove(&owner, version);
            self.table.remove_node(owner.root());
        }
        self.pulling.remove(&addr);
        self.queue.purge(addr, x.generation());
    }

    /// Asks `to` for the full states of `owners`, skipping owners asked for within the last
    /// anti-entropy period (the answer is in flight, or the next round repairs it).
    pub(super) fn pull(
        &mut self,
        now: Time,
        to: SocketAddrV4,
        owners: Vec<NodeId>,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        let period = anti_entropy_period(self.profile);
        let owners: Vec<NodeId> = owners
            .into_iter()
            .filter(|o| {
                self.pulling
                    .get(&o.addr())
                    .is_none_or(|&at| now.saturating_sub(at) >= period)
            })
            .collect();
        if owners.is_empty() {
            return;
        }
        for o in &owners {
            self.pulling.insert(o.addr(), now);
        }
        self.stats.pulls_sent += 1;
        let msg = GroupsMsg::Pull {
            from: self.me,
            owners,
        };
        self.send(to, Channel::Stream, &msg, out);
    }

    /// Sends `to` every (owner, version) we hold: it answers with what we lack and asks for
    /// what it lacks.
    fn full_sync(&mut self, to: NodeId, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.stats.full_syncs += 1;
        let msg = GroupsMsg::Versions {
            from: self.me,
            mask: u64::MAX,
            versions: self.versions_in(u64::MAX),
        };
        self.send(to.addr(), Channel::Stream, &msg, out);
    }

    fn complete(
        req: RequestId,
        result: Result<(), GroupError>,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        out.push(RegistryOutput::Completed {
            req,
            result: result.map_err(CallError::Group),
        });
    }
}

impl RegistryCore for GossipGroups {
    type Timer = GossipTimer;

    fn table(&self) -> &GroupTable {
        &self.table
    }

    fn drain_events(&mut self) -> Vec<GroupEvent> {
        self.table.drain_events()
    }

    fn drain_events_with(&mut self, f: &mut dyn FnMut(GroupEvent)) {
        self.table.drain_events_with(f);
    }

    fn start(&mut self, _now: Time, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.arm(GossipTimer::Gossip, out);
        self.arm(GossipTimer::AntiEntropy, out);
    }

    /// Re-keys this node's own owner state to `new`: peers dropped the old identity when they saw
    /// it Down, and pull the new one when they see it Up (its version is news to them), so the
    /// memberships come back. Pids keep their root, so nothing changes in the local table.
    ///
    /// The tombstones go too: a renewed membership core starts a fresh view (SWIM drops the
    /// verdicts of the old identity, which, cut off, held every member Down) and reports Up
    /// again the members it finds alive under the same identity; they must be admitted. Dead
    /// generations stay out all the same: the core reports no Up for them (it learns them
    /// Down from its peers), and without an Up nothing of an owner is applied (`admit`).
    fn renewed(&mut self, _now: Time, new: NodeId, _out: &mut Vec<RegistryOutput<GossipTimer>>) {
        let old = self.me;
        if new.root() != old.root() || new.generation() <= old.generation() {
            return;
        }
        self.book.clear_dead();
        if self.version > 0 {
            self.digest.remove(&old, self.version);
            self.digest.add(&new, self.version);
        }
        // Deltas stamped with the old identity are refused by peers now; the new owner's state
        // is pulled whole instead.
        self.queue.purge(old.addr(), old.generation());
        self.me = new;
    }

    fn member_event(
        &mut self,
        now: Time,
        event: MemberEvent,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        match event {
            MemberEvent::Up(x) => self.member_up(now, x, out),
            MemberEvent::Down(x) => self.member_down(x),
        }
    }

    /// Applies locally and completes at once; peers follow by gossip. Only local pids.
    fn join(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        meta: &[u8],
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        if pid.node != self.me.root() {
            let error = GroupError::ForeignPid {
                pid,
                node: self.me.root(),
            };
            return Self::complete(req, Err(error), out);
        }
        let result = self.table.join(scope, group, pid, meta);
        if result.is_ok() {
            self.record_local(Op::Join {
                scope: scope.clone(),
                group: group.clone(),
                serial: pid.serial,
                meta: meta.into(),
            });
            self.push_fresh(now, out);
        }
        Self::complete(req, result, out);
    }

    /// Removes one occurrence locally and completes at once; the delta names the occurrence's
    /// metadata so replicas remove the same one.
    fn leave(
        &mut self,
        now: Time,
        req: RequestId,
        scope: &ScopeName,
        group: &GroupName,
        pid: Pid,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        if pid.node != self.me.root() {
            let error = GroupError::ForeignPid {
                pid,
                node: self.me.root(),
            };
            return Self::complete(req, Err(error), out);
        }
        let result = self.table.leave(scope, group, pid);
        if result.is_ok() {
            let meta = self
                .table
                .pending_events()
                .last()
                .map(|e| e.membership.meta.clone())
                .unwrap_or_default();
            self.record_local(Op::Leave {
                scope: scope.clone(),
                group: group.clone(),
                serial: pid.serial,
                meta,
            });
            self.push_fresh(now, out);
        }
        Self::complete(req, result, out);
    }

    /// A local process ended: one delta removes all its memberships everywhere. Remote pids
    /// are their owner's business and are ignored.
    fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        if pid.node == self.me.root() && !self.table.remove_pid(pid).is_empty() {
            self.record_local(Op::Exit { serial: pid.serial });
            self.push_fresh(now, out);
        }
    }

    fn handle_message(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        channel: Channel,
        bytes: &[u8],
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) -> Result<(), MessageError> {
        self.receive(now, from, channel, bytes, out)
    }

    fn hold(&mut self) {
        self.holding = true;
    }

    fn release(&mut self, now: Time, out: &mut Vec<RegistryOutput<GossipTimer>>) {
        self.holding = false;
        if self.push_owed {
            self.push_fresh(now, out);
        }
    }

    fn handle_timer(
        &mut self,
        now: Time,
        timer: GossipTimer,
        out: &mut Vec<RegistryOutput<GossipTimer>>,
    ) {
        match timer {
            GossipTimer::Gossip => self.gossip_round(out),
            GossipTimer::AntiEntropy => self.anti_entropy_round(out),
            GossipTimer::Push => {
                self.push_armed = false;
                if self.push_owed {
                    self.push_fresh(now, out);
                }
                return;
            }
        }
        self.arm(timer, out);
    }
}
