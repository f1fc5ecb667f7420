//! The server side of a [`SessionManager`]: the shards this node is primary or standby of.
//!
//! Transitions (driven by `reconcile`, run for every shard whose rank 0 or rank 1 changed, and
//! by the tick for shards still out of place):
//! - rank 0, serving: keep serving; attach the new rank 1 as standby (`Fill`), or detach it.
//! - rank 0, not serving (standby, nothing, fenced): recovery round, then the next term above
//!   every epoch reported: promote the standby replica, or start empty; drop sessions of nodes
//!   no longer live; fill rank 1; announce the term.
//! - not rank 0 but serving: step down (held replies answered `NotPrimary`).
//! - neither rank: drop the replica.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::SocketAddrV4;

use meshreg_membership::{NodeId, Time};

use super::node::SessionManager;
use super::wire::ManagerMessage;
use super::{Out, SessionOutput};
use crate::session::state::TOUCH_AHEAD;
use crate::session::{
    Body, Epoch, ReplicaAck, Replicate, Reply, Request, Role, Seq, SessionError, SessionKey, Shard,
    ShardId, Snapshot,
};

/// Requests a recovering shard keeps for when it serves; more are refused `NotPrimary`.
const RECOVERY_QUEUE_MAX: usize = 65_536;

/// The next term's epoch for `me` above `seen`.
pub(super) fn next_epoch(seen: Epoch, me: NodeId) -> Epoch {
    let term = (seen >> 48).saturating_add(1).min(0xFFFF);
    (term << 48) | (me.addr_key() & 0xFFFF_FFFF_FFFF)
}

/// A replica this node holds.
pub(crate) struct Replica {
    pub(super) shard: Shard,
    /// Primary: the snapshot position its standby has not acknowledged yet.
    pub(super) fill_seq: Option<Seq>,
    /// Primary: committed position at the last tick (no progress: retransmit).
    pub(super) last_committed: Seq,
}

/// A recovery round for one shard.
pub(crate) struct Recovery {
    round: u64,
    waiting: BTreeSet<SocketAddrV4>,
    max: Epoch,
    queued: Vec<Request>,
}

impl SessionManager {
    /// Brings this node's role for `shard` in line with the placement.
    pub(super) fn reconcile(&mut self, now: Time, shard: ShardId, out: &mut Out) {
        let (primary, standby) = (self.placement.primary(shard), self.placement.standby(shard));
        if primary == Some(self.me) {
            match self.replicas.get_mut(&shard) {
                Some(r) if r.shard.role() == Role::Primary => {
                    if r.shard.standby_node() != standby {
                        self.attach(shard, standby, out);
                    }
                }
                _ => self.start_recovery(now, shard, out),
            }
            return;
        }
        self.cancel_recovery(shard);
        let Some(r) = self.replicas.get_mut(&shard) else {
            return;
        };
        match r.shard.role() {
            Role::Primary => {
                // Step down: a fence above its own epoch answers every held reply NotPrimary.
                let e = r.shard.epoch() + 1;
                r.shard.fence(e, &mut self.sout);
                self.sout
                    .retain(|o| !matches!(o, crate::session::Output::Fenced { .. }));
                self.replicas.remove(&shard);
                self.route_shard_outputs(out);
            }
            Role::Standby if standby == Some(self.me) => {}
            Role::Standby | Role::Fenced => {
                self.replicas.remove(&shard);
            }
        }
    }

    /// Primary: make `standby` the standby (filled from a snapshot), or run without one.
    fn attach(&mut self, shard: ShardId, standby: Option<NodeId>, out: &mut Out) {
        let Some(r) = self.replicas.get_mut(&shard) else {
            return;
        };
        match standby {
            Some(node) => {
                if let Ok(snap) = r.shard.attach_standby(node) {
                    r.fill_seq = Some(snap.seq);
                    self.send(node.addr(), &ManagerMessage::Fill(snap), out);
                }
            }
            None => {
                r.fill_seq = None;
                r.shard.detach_standby(&mut self.sout);
                self.route_shard_outputs(out);
            }
        }
    }

    /// Fills every standby again (after this node renewed its identity).
    pub(super) fn refill_all(&mut self, out: &mut Out) {
        let serving: Vec<ShardId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.shard.role() == Role::Primary && r.shard.standby_node().is_some())
            .map(|(s, _)| *s)
            .collect();
        for s in serving {
            let standby = self.placement.standby(s);
            self.attach(s, standby, out);
        }
    }

    fn start_recovery(&mut self, now: Time, shard: ShardId, out: &mut Out) {
        if self.recovering.contains_key(&shard) {
            return;
        }
        self.next_round += 1;
        let round = self.next_round;
        let waiting: BTreeSet<SocketAddrV4> = self
            .placement
            .nodes()
            .iter()
            .map(|n| n.addr())
            .filter(|a| *a != self.me.addr())
            .collect();
        for &to in &waiting {
            let msg = ManagerMessage::EpochQuery {
                round,
                shards: vec![shard],
            };
            self.send(to, &msg, out);
        }
        let max = self.local_epoch(shard);
        let rec = Recovery {
            round,
            waiting,
            max,
            queued: Vec::new(),
        };
        self.recovering.insert(shard, rec);
        self.maybe_finish_recovery(now, shard, out);
    }

    fn cancel_recovery(&mut self, shard: ShardId) {
        if let Some(rec) = self.recovering.remove(&shard) {
            for r in rec.queued {
                self.refuse(r, SessionError::NotPrimary { epoch: 0 });
            }
        }
    }

    /// Highest epoch this node knows for `shard`, from any source.
    fn local_epoch(&self, shard: ShardId) -> Epoch {
        let seen = self.seen.get(&shard).copied().unwrap_or(0);
        let replica = self.replicas.get(&shard).map_or(0, |r| r.shard.epoch());
        let believed = self.believed.get(&shard).copied().unwrap_or(0);
        seen.max(replica).max(believed)
    }

    /// Drops nodes that left the view from every round; rounds left with nobody to wait for
    /// finish.
    pub(super) fn recoveries_on_view(&mut self, now: Time, out: &mut Out) {
        let live: BTreeSet<SocketAddrV4> = self.live.keys().copied().collect();
        let mut done = Vec::new();
        for (s, rec) in &mut self.recovering {
            rec.waiting.retain(|a| live.contains(a));
            if rec.waiting.is_empty() {
                done.push(*s);
            }
        }
        for s in done {
            self.maybe_finish_recovery(now, s, out);
        }
    }

    pub(super) fn on_epoch_query(
        &mut self,
        from: NodeId,
        round: u64,
        shards: &[ShardId],
        out: &mut Out,
    ) {
        let epochs = shards.iter().map(|&s| (s, self.local_epoch(s))).collect();
        self.send(
            from.addr(),
            &ManagerMessage::EpochReport { round, epochs },
            out,
        );
    }

    pub(super) fn on_epoch_report(
        &mut self,
        now: Time,
        from: NodeId,
        round: u64,
        epochs: &[(ShardId, Epoch)],
        out: &mut Out,
    ) {
        for &(s, e) in epochs {
            self.note_epoch(s, e);
            let Some(rec) = self.recovering.get_mut(&s) else {
                continue;
            };
            if rec.round == round && rec.waiting.remove(&from.addr()) {
                rec.max = rec.max.max(e);
                self.maybe_finish_recovery(now, s, out);
            }
        }
    }

    /// Ends a round once nobody is left to hear from: take the next term, promote or start
    /// empty, drop sessions of nodes gone meanwhile, fill the standby, announce.
    fn maybe_finish_recovery(&mut self, now: Time, shard: ShardId, out: &mut Out) {
        if !self
            .recovering
            .get(&shard)
            .is_some_and(|r| r.waiting.is_empty())
        {
            return;
        }
        let Some(rec) = self.recovering.remove(&shard) else {
            return;
        };
        let epoch = next_epoch(rec.max.max(self.local_epoch(shard)), self.me);
        let promoted = match self.replicas.remove(&shard) {
            Some(mut r) if r.shard.role() == Role::Standby => {
                r.shard.promote(epoch).map(|()| r.shard).ok()
            }
            _ => None,
        };
        let shard_state =
            promoted.unwrap_or_else(|| Shard::primary(shard, epoch, self.config.shard));
        self.note_epoch(shard, epoch);
        self.replicas.insert(
            shard,
            Replica {
                shard: shard_state,
                fill_seq: None,
                last_committed: 0,
            },
        );
        self.drop_dead_holders(shard);
        let standby = self.placement.standby(shard);
        if standby.is_some() {
            self.attach(shard, standby, out);
        }
        self.stats.terms_started += 1;
        self.terms_log.push((shard, epoch));
        self.announce.push((shard, epoch));
        for r in rec.queued {
            self.serve_request(now, r, out);
        }
        self.route_shard_outputs(out);
    }

    /// A promoted replica may hold sessions of nodes that went Down while it was a standby
    /// (only primaries act on Downs): drop them now, through the log.
    fn drop_dead_holders(&mut self, shard: ShardId) {
        let Some(r) = self.replicas.get_mut(&shard) else {
            return;
        };
        if r.shard.is_empty() {
            return;
        }
        let mut holders: BTreeSet<NodeId> = BTreeSet::new();
        for (_, s) in r.shard.sessions() {
            holders.insert(s.pid.node);
        }
        for node in holders {
            let alive = self
                .live
                .get(&node.addr())
                .is_some_and(|l| l.root() == node.root());
            if !alive {
                let _ = r.shard.drop_node(node, &mut self.sout);
            }
        }
    }

    /// A node went Down (or was replaced by a newer generation): every shard this node serves
    /// drops its sessions and retry window, replicated like any write. Pids may name the
    /// node's root identity, so the root is dropped too unless a newer generation of it is live.
    pub(super) fn drop_node_everywhere(&mut self, node: NodeId, out: &mut Out) {
        let root = node.root();
        let renewed_live = self
            .live
            .get(&node.addr())
            .is_some_and(|l| l.root() == root && *l != node);
        let mut dropped = Vec::new();
        for (s, r) in self.replicas.iter_mut() {
            if r.shard.role() != Role::Primary {
                continue;
            }
            let mut n = r.shard.drop_node(node, &mut self.sout).unwrap_or(0);
            if root != node && !renewed_live {
                n += r.shard.drop_node(root, &mut self.sout).unwrap_or(0);
            }
            if n > 0 {
                dropped.push(*s);
            }
        }
        self.route_shard_outputs(out);
        // The Down may be older than a renewal whose re-assertion already arrived here: the
        // node (if it runs on) re-asserts once more.
        if !dropped.is_empty() {
            self.send(node.addr(), &ManagerMessage::Dropped(dropped), out);
        }
    }

    /// Client requests, in order: served in windows, each read ahead first (see
    /// [`Self::read_ahead`]). Leaves `reqs` empty, its buffer kept for reuse.
    pub(super) fn serve_requests(&mut self, now: Time, reqs: &mut Vec<Request>, out: &mut Out) {
        let mut reqs = reqs.drain(..);
        while reqs.len() > 0 {
            self.read_ahead(reqs.as_slice().iter().filter_map(|r| match &r.body {
                Body::One(call) => {
                    Some((r.shard, call.key(), call.is_write().then_some(r.id.client)))
                }
                Body::Batch(_) | Body::Reassert(_) => None, // they read ahead themselves
            }));
            for r in reqs.by_ref().take(TOUCH_AHEAD) {
                self.serve_request(now, r, out);
            }
        }
    }

    /// A client request reached this node.
    pub(super) fn serve_request(&mut self, _now: Time, req: Request, out: &mut Out) {
        let shard = req.shard;
        if let Some(rec) = self.recovering.get_mut(&shard) {
            if rec.queued.len() < RECOVERY_QUEUE_MAX {
                rec.queued.push(req);
            } else {
                self.refuse(req, SessionError::NotPrimary { epoch: 0 });
            }
            return;
        }
        match self.replicas.get_mut(&shard) {
            Some(r) => r.shard.handle_request(req, &mut self.sout),
            None => self.refuse(req, SessionError::UnknownShard { shard }),
        }
        self.route_shard_outputs(out);
    }

    /// Reads ahead the memory the next inputs of a batch will touch in this node's replicas:
    /// per `(shard, key, client)`, the table buckets of `key`, the shard's node rows and the
    /// retry window of `client`.
    ///
    /// Why: a node serves hundreds of shards, so a batch of requests or log entries hits a
    /// different shard's table at nearly every step, and each step was a chain of DRAM misses
    /// paid one after another (the table probe alone measured ~10% of a node's CPU under
    /// load). A load holds up retirement until it completes, so the CPU overlaps only the
    /// misses within its reorder window: each pass does little work per item (find the
    /// replicas; load their segment headers; load buckets, rows and windows), so the misses of
    /// a whole window of items overlap. Reads only: nothing observable changes.
    pub(super) fn read_ahead<'a>(
        &self,
        items: impl Iterator<Item = (ShardId, &'a SessionKey, Option<NodeId>)>,
    ) {
        let mut ahead: [Option<(&Shard, &SessionKey, Option<NodeId>)>; TOUCH_AHEAD] =
            [None; TOUCH_AHEAD];
        for (slot, (shard, key, client)) in ahead.iter_mut().zip(items) {
            *slot = self.replicas.get(&shard).map(|r| (&r.shard, key, client));
        }
        let mut at = [None; TOUCH_AHEAD];
        for (a, item) in at.iter_mut().zip(&ahead) {
            if let Some((shard, key, _)) = item {
                *a = shard.locate(key);
            }
        }
        let mut acc = 0u64;
        for (a, item) in at.iter().zip(&ahead) {
            if let Some((shard, _, client)) = item {
                acc ^= shard.touch_ahead(*a, *client);
            }
        }
        black_box(acc);
    }

    fn refuse(&mut self, req: Request, e: SessionError) {
        self.sout.push(crate::session::Output::Reply(Reply {
            to: req.id,
            result: Err(e),
        }));
    }

    pub(super) fn on_replicate(&mut self, from: NodeId, msg: Replicate, out: &mut Out) {
        let shard = msg.shard;
        match self.replicas.get_mut(&shard) {
            Some(r) => r.shard.handle_replicate(from, msg, &mut self.sout),
            None => {
                // No replica here: if a newer term is known, tell the sender (it fences).
                let known = self.local_epoch(shard);
                if known > msg.epoch {
                    self.sout.push(crate::session::Output::Ack {
                        to: from,
                        msg: ReplicaAck {
                            shard,
                            epoch: known,
                            seq: 0,
                        },
                    });
                }
            }
        }
        self.route_shard_outputs(out);
    }

    /// A standby's acknowledgements, in order: in windows, each read ahead first (each ack is
    /// for another shard, whose log buffers are cold; see [`Self::read_ahead`]).
    pub(super) fn on_acks(&mut self, from: NodeId, acks: &[ReplicaAck], out: &mut Out) {
        for window in acks.chunks(TOUCH_AHEAD) {
            let mut ahead: [Option<&Shard>; TOUCH_AHEAD] = [None; TOUCH_AHEAD];
            for (slot, a) in ahead.iter_mut().zip(window) {
                *slot = self.replicas.get(&a.shard).map(|r| &r.shard);
            }
            let acc = ahead.iter().flatten().fold(0, |acc, s| acc ^ s.touch_log());
            black_box(acc);
            for a in window {
                self.on_ack(from, *a, out);
            }
        }
    }

    pub(super) fn on_ack(&mut self, from: NodeId, ack: ReplicaAck, out: &mut Out) {
        self.note_epoch(ack.shard, ack.epoch);
        if let Some(r) = self.replicas.get_mut(&ack.shard) {
            if r.fill_seq.is_some_and(|s| {
                ack.epoch == r.shard.epoch() && ack.seq >= s && r.shard.standby_node() == Some(from)
            }) {
                r.fill_seq = None;
            }
            r.shard.handle_replica_ack(from, ack, &mut self.sout);
        }
        self.route_shard_outputs(out);
    }

    /// A primary fills this node as its standby. Accepted without a replica here, or replacing
    /// one held from the primary of this view or of an epoch no newer; otherwise the sender
    /// learns the newer epoch (and is fenced).
    pub(super) fn on_fill(&mut self, _now: Time, from: NodeId, snap: Snapshot, out: &mut Out) {
        let shard = snap.shard;
        self.note_epoch(shard, snap.epoch);
        let from_primary = self.placement.primary(shard) == Some(from);
        let held = self
            .replicas
            .get(&shard)
            .map(|r| (r.shard.role(), r.shard.epoch()));
        let accept = match held {
            // Views differ for a while after a change (SWIM disseminates Downs by gossip):
            // a node not yet rank 1 in its own view still follows the primary that chose it.
            None => true,
            Some((Role::Primary, e)) => snap.epoch > e,
            Some((_, e)) => from_primary || snap.epoch >= e,
        };
        if !accept {
            let known = self.local_epoch(shard);
            self.sout.push(crate::session::Output::Ack {
                to: from,
                msg: ReplicaAck {
                    shard,
                    epoch: known,
                    seq: 0,
                },
            });
            self.route_shard_outputs(out);
            return;
        }
        if let Some(mut old) = self.replicas.remove(&shard)
            && old.shard.role() == Role::Primary
        {
            old.shard.fence(snap.epoch, &mut self.sout);
            self.sout
                .retain(|o| !matches!(o, crate::session::Output::Fenced { .. }));
        }
        let shard_state = Shard::standby(snap, from, self.config.shard, &mut self.sout);
        self.replicas.insert(
            shard,
            Replica {
                shard: shard_state,
                fill_seq: None,
                last_committed: 0,
            },
        );
        self.route_shard_outputs(out);
    }

    /// The silence watch between replication partners. Every session node sends every other
    /// live session node a keepalive (an empty `Replicate`) on each tick it sent it nothing
    /// else, so a partner (the primary of a shard this node is standby of, or the standby of
    /// a shard it serves) heard from for none of `suspect_silent_after` is paused, cut off or
    /// dead, and is reported ([`SessionOutput::Suspect`]). Keepalives go to every session
    /// node, not only to partners in this node's view, because views differ for a while after
    /// a change and a partner in one view must not be silent for lack of it in the other.
    /// Clients do not watch: a client cannot tell a silent primary from one whose replies wait
    /// on a silent standby.
    fn watch_partners(&mut self, now: Time, out: &mut Out) {
        let Some(patience) = self.config.suspect_silent_after else {
            return;
        };
        if !self.session_addrs.contains(&self.me.addr()) {
            return;
        }
        let quiet_since = now.saturating_sub(self.config.tick);
        let quiet: Vec<SocketAddrV4> = self
            .session_addrs
            .iter()
            .filter(|a| **a != self.me.addr() && self.live.contains_key(*a))
            .filter(|a| self.sent.get(*a).is_none_or(|&t| t <= quiet_since))
            .copied()
            .collect();
        for addr in quiet {
            self.send(addr, &ManagerMessage::Replicate(Vec::new()), out);
        }
        let mut partners = BTreeSet::new();
        for (s, r) in self.replicas.iter() {
            match r.shard.role() {
                Role::Primary => partners.extend(r.shard.standby_node()),
                Role::Standby => partners.extend(self.placement.primary(*s)),
                Role::Fenced => {}
            }
        }
        for node in partners {
            if node == self.me || self.live.get(&node.addr()) != Some(&node) {
                continue;
            }
            // The clock starts at the first tick that finds the partnership.
            let heard = *self.heard.entry(node.addr()).or_insert(now);
            if now.saturating_sub(heard) >= patience {
                self.stats.suspected += 1;
                out.push(SessionOutput::Suspect(node));
            }
        }
    }

    /// Upkeep: re-ask recovery rounds, re-fill standbys that did not acknowledge, retransmit
    /// to standbys that made no progress, and take up shards this node should serve.
    pub(super) fn server_tick(&mut self, now: Time, out: &mut Out) {
        let asks: Vec<(SocketAddrV4, u64, ShardId)> = self
            .recovering
            .iter()
            .flat_map(|(s, r)| r.waiting.iter().map(move |a| (*a, r.round, *s)))
            .collect();
        for (to, round, shard) in asks {
            let msg = ManagerMessage::EpochQuery {
                round,
                shards: vec![shard],
            };
            self.send(to, &msg, out);
        }
        let mut refill = Vec::new();
        for (s, r) in self.replicas.iter_mut() {
            if r.shard.role() != Role::Primary {
                continue;
            }
            if r.fill_seq.is_some() {
                refill.push(*s);
            } else if r.shard.committed_seq() == r.last_committed
                && r.shard.committed_seq() < r.shard.applied_seq()
            {
                r.shard.retransmit(&mut self.sout);
            }
            r.last_committed = r.shard.committed_seq();
        }
        for s in refill {
            let standby = self.placement.standby(s);
            self.attach(s, standby, out);
        }
        self.route_shard_outputs(out);
        self.watch_partners(now, out);
        for s in 0..self.placement.shards() {
            let shard = ShardId(s);
            let mine = self.placement.primary(shard) == Some(self.me);
            let serving = self
                .replicas
                .get(&shard)
                .is_some_and(|r| r.shard.role() == Role::Primary);
            let stray = !mine && (serving || self.recovering.contains_key(&shard));
            if (mine && !serving) || stray {
                self.reconcile(now, shard, out);
            }
        }
    }
}
