//! The boss role: a [`Term`] per partition this node bosses, from recovery to ordering.
//!
//! Epoch rule: a node starting a term for a partition proposes `epoch = promised + 1`, where
//! `promised` is the highest epoch it has promised or seen for that partition. Replicas promise
//! (see `replica.rs`) only to the boss of their own view and only increasing epochs, so a term
//! is fenced as soon as a replica promised a newer one: its next message there is answered
//! `StaleEpoch { known }`, and the boss drops the term (and, if it is still the boss in its own
//! view, starts a new one above `known`). A node that is no longer the boss in its own view
//! drops its terms at once and hands written partitions off to the new boss.
//!
//! Recovery (before a term accepts writes): `Recover(epoch)` to every live node; each answers
//! `State` with `(written_epoch, seq, dedupe window, memberships)`. When every node live in the
//! boss's view answered (nodes going Down are not waited for; refusals are re-asked every
//! `resend_interval`), the boss adopts the state of highest `(written_epoch, seq)`, sends it as
//! `Sync` to every node that reported another, and only then serves. Requests arriving during
//! recovery are queued in arrival order (not nacked), so a requester sees only latency.
//!
//! Ordering: a request becomes `Apply(epoch, seq + 1)` to every other live node and is applied
//! locally at once; `Done` goes back when every node that was live (or came Up since, and was
//! sent a `Sync`) acknowledged that seq. A request whose `(requester, ticket)` is in the
//! replicated dedupe window is not applied again: it is answered once every live node is known
//! to hold the current state.
//!
//! Loss repair: the node runtime drops a frame when a peer's send queue is full, so any Apply,
//! Ack or Sync may be lost while the link stays up, and nothing else would ever re-send it
//! (requester retries of an op in flight are answered by its acks, which never come). While
//! acks are awaited the term's timer runs; a node that some op waits for and whose ack did not
//! advance since the previous tick is *stalled*, and is sent what it misses from its last ack:
//! the in-flight Applies after it if they cover every seq up to the current one (a replica
//! takes them in order and re-acks duplicates), else a `Sync` (it missed one: it came Up or
//! was re-synced meanwhile). A node that acks slowly but steadily is never re-sent to, and a
//! stalled one is re-sent to after 1, 2, 4, .. up to [`MAX_BACKOFF_TICKS`] silent ticks, so a
//! starved node is not buried under copies. Applies rather than a `Sync` on the common path:
//! a `Sync` that does not name the receiver leaves its own memberships as they are (see
//! `install_state`), so a node that missed the Apply of its own leave would keep the ended
//! membership.
//!
//! A node that comes Up during a serving term is sent a `Sync`, which it takes only if it holds
//! no written state of the partition (a new node). One that does hold some (it was live in
//! another history: the other side of a healed partition, seen here for the first time)
//! answers `Nack { Unrecovered }`, and the term is restarted so that recovery merges its state
//! (`merge_own`) instead of the `Sync` overwriting it.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use meshreg_membership::{NodeId, Time};

use super::groups::{BossTimer, CoordinatedGroups, Key, Out};
use super::message::{
    Entry, Message, NackReason, Op, Origin, PartitionState, Refusal, Refused, Ticket,
};
use crate::RegistryOutput;
use crate::groups::ScopeName;

/// Most resend ticks between two re-sends to a stalled node (3.2 s at the default 200 ms).
const MAX_BACKOFF_TICKS: u32 = 16;

/// One boss term of one partition.
pub(crate) struct Term {
    pub(crate) epoch: u64,
    /// `Some` until every live node reported.
    recovery: Option<Recovery>,
    /// Requests that arrived during recovery, in arrival order.
    queued: VecDeque<(NodeId, Ticket, Op)>,
    /// Ops (and dedupe answers) waiting for acknowledgements, seq non-decreasing.
    inflight: Vec<InFlight>,
    /// The origins in `inflight` (one entry each: a retry of one is not ordered again).
    origins: HashSet<Origin>,
    /// Highest seq each other node is known to hold in this term.
    acked: BTreeMap<NodeId, u64>,
    /// Nodes that refused an Apply or Sync (their view lags): re-synced on the timer.
    laggards: BTreeSet<NodeId>,
    /// Per node awaited by an in-flight entry: its ack at the last resend tick, and the ticks
    /// since without progress (loss repair, see the module docs).
    progress: BTreeMap<NodeId, (u64, u32)>,
    timer_armed: bool,
}

struct Recovery {
    waiting: BTreeSet<NodeId>,
    best: PartitionState,
    /// Per reporting node (by root): its identity and its own memberships of the partition,
    /// as it reported them. A node is the authority on its own memberships when the best state
    /// comes from a history that never saw its current identity (see `merge_own`).
    own: BTreeMap<NodeId, Own>,
    /// `(written_epoch, seq)` and content digest each node reported.
    reports: BTreeMap<NodeId, Report>,
}

struct InFlight {
    seq: u64,
    origin: Origin,
    /// The op ordered at `seq`, for re-sending its Apply; `None` for the answer to a duplicate
    /// (it waits for acks of a seq another entry or the past ordered).
    op: Option<Op>,
    /// The op was a leave of a non-member: answered `NotJoined`.
    refused: bool,
    waiting: BTreeSet<NodeId>,
}

impl Term {
    /// No recovery, no queue, nothing in flight, no laggard.
    pub(crate) fn is_idle(&self) -> bool {
        self.recovery.is_none()
            && self.queued.is_empty()
            && self.inflight.is_empty()
            && self.laggards.is_empty()
    }

    /// The requests queued during recovery, which nobody will serve if the term is dropped.
    pub(crate) fn dropped_requests(self) -> VecDeque<(NodeId, Ticket, Op)> {
        self.queued
    }

    /// Recovered, with nothing queued and nothing awaiting acks: a new request is ordered and,
    /// with no other live node, answered at once.
    pub(crate) fn is_serving_idle(&self) -> bool {
        self.recovery.is_none() && self.queued.is_empty() && self.inflight.is_empty()
    }

    fn has_resend_work(&self) -> bool {
        self.recovery.is_some() || !self.laggards.is_empty() || !self.inflight.is_empty()
    }
}

impl CoordinatedGroups {
    /// Starts a term for `key` (no-op if one runs), carrying `queued` requests over.
    fn start_term(
        &mut self,
        now: Time,
        key: &Key,
        queued: VecDeque<(NodeId, Ticket, Op)>,
        out: &mut Out,
    ) {
        if self.terms.contains_key(key) {
            return;
        }
        let me = self.me;
        let r = self.replica(key);
        let epoch = r.epoch + 1;
        r.epoch = epoch;
        r.boss = Some(me);
        let best = self.partition_state(key);
        let mut own = BTreeMap::new();
        own_entries(&mut own, me, &best);
        let waiting: BTreeSet<NodeId> = self.others().into_iter().collect();
        for &n in &waiting {
            let msg = Message::Recover {
                scope: key.0.clone(),
                partition: key.1,
                epoch,
            };
            self.send(n, &msg, out);
        }
        let term = Term {
            epoch,
            recovery: Some(Recovery {
                waiting,
                best,
                own,
                reports: BTreeMap::new(),
            }),
            queued,
            inflight: Vec::new(),
            origins: HashSet::new(),
            acked: BTreeMap::new(),
            laggards: BTreeSet::new(),
            progress: BTreeMap::new(),
            timer_armed: false,
        };
        self.terms.insert(key.clone(), term);
        self.maybe_finish_recovery(now, key, out);
        self.arm(key, out);
    }

    fn arm(&mut self, key: &Key, out: &mut Out) {
        let after = self.config.resend_interval;
        let Some(term) = self.terms.get_mut(key) else {
            return;
        };
        if term.timer_armed || !term.has_resend_work() {
            return;
        }
        term.timer_armed = true;
        out.push(RegistryOutput::SetTimer {
            after,
            timer: BossTimer::Term {
                scope: key.0.clone(),
                partition: key.1,
                epoch: term.epoch,
            },
        });
    }

    /// Re-asks the nodes recovery waits for, re-syncs laggards.
    pub(super) fn term_timer(&mut self, _now: Time, key: Key, epoch: u64, out: &mut Out) {
        let Some(term) = self.terms.get_mut(&key).filter(|t| t.epoch == epoch) else {
            return;
        };
        term.timer_armed = false;
        if let Some(rec) = &term.recovery {
            for n in rec.waiting.clone() {
                let msg = Message::Recover {
                    scope: key.0.clone(),
                    partition: key.1,
                    epoch,
                };
                self.send(n, &msg, out);
            }
        } else {
            for n in term.laggards.clone() {
                self.send_sync(n, &key, epoch, out);
            }
            self.resend_stalled(&key, epoch, out);
        }
        self.arm(&key, out);
    }

    /// Re-sends what each stalled node misses (see the module docs: loss repair).
    fn resend_stalled(&mut self, key: &Key, epoch: u64, out: &mut Out) {
        let current = self.replicas.get(key).map_or(0, |r| r.seq);
        let Some(term) = self.terms.get_mut(key) else {
            return;
        };
        let awaited: BTreeSet<NodeId> = term
            .inflight
            .iter()
            .flat_map(|f| f.waiting.iter().copied())
            .collect();
        term.progress.retain(|n, _| awaited.contains(n));
        let mut stalled = Vec::new();
        for &n in &awaited {
            let acked = term.acked.get(&n).copied().unwrap_or(0);
            let p = term.progress.entry(n).or_insert((acked, 0));
            if p.0 != acked {
                *p = (acked, 0);
                continue;
            }
            p.1 += 1;
            let due = p.1.is_power_of_two() || p.1 % MAX_BACKOFF_TICKS == 0;
            // Laggards are re-synced above on every tick.
            if due && !term.laggards.contains(&n) {
                stalled.push((n, acked));
            }
        }
        for (n, acked) in stalled {
            let term = self.terms.get(key).expect("present");
            // Applies are ordered by seq in `inflight`; one entry per seq carries the op.
            let missing: Vec<Message> = term
                .inflight
                .iter()
                .filter(|f| f.seq > acked && f.waiting.contains(&n))
                .filter_map(|f| {
                    f.op.as_ref().map(|op| Message::Apply {
                        epoch,
                        seq: f.seq,
                        origin: f.origin,
                        op: op.clone(),
                    })
                })
                .collect();
            let seqs = missing.iter().map(|m| match m {
                Message::Apply { seq, .. } => *seq,
                _ => 0,
            });
            let covered = seqs.eq(acked + 1..=current);
            self.stats.resends += 1;
            if covered {
                for m in &missing {
                    self.send(n, m, out);
                }
            } else {
                self.send_sync(n, key, epoch, out);
            }
        }
    }

    fn send_sync(&mut self, to: NodeId, key: &Key, epoch: u64, out: &mut Out) {
        let state = self.partition_state(key);
        let msg = Message::Sync {
            scope: key.0.clone(),
            partition: key.1,
            epoch,
            state,
        };
        self.send(to, &msg, out);
    }

    /// A request for the partition of `op`, from `from` (possibly this node).
    pub(super) fn boss_request(
        &mut self,
        now: Time,
        from: NodeId,
        ticket: Ticket,
        op: Op,
        out: &mut Out,
    ) {
        if op.pid().node != from.root() {
            self.reply_done(now, (from, ticket), Some(Refusal::ForeignPid), out);
            return;
        }
        let key = self.key_of(&op);
        if self.boss_of(&key.0, key.1) != self.me {
            // Only a remote requester can disagree about the boss (views differ).
            if from != self.me {
                let nack = Message::Nack {
                    scope: key.0.clone(),
                    partition: key.1,
                    what: Refused::Request(ticket),
                    reason: NackReason::NotBoss,
                };
                self.send(from, &nack, out);
            }
            return;
        }
        if !self.terms.contains_key(&key) {
            // Lazy recovery: the first write to a partition this node never bossed.
            self.start_term(now, &key, VecDeque::new(), out);
        }
        let term = self.terms.get_mut(&key).expect("started above");
        if term.recovery.is_some() {
            term.queued.push_back((from, ticket, op));
            return;
        }
        self.serve(now, &key, (from, ticket), op, out);
    }

    /// Orders `op` in a serving term (or answers a duplicate).
    fn serve(&mut self, now: Time, key: &Key, origin: Origin, op: Op, out: &mut Out) {
        let others = self.others();
        // An op still awaiting acks is answered when they are in. Checked apart from the
        // dedupe window: a hot partition may order more ops than the window holds while one
        // waits for a slow node's acks, and the retry of an evicted op would apply it twice.
        if self
            .terms
            .get(key)
            .is_some_and(|t| t.origins.contains(&origin))
        {
            return;
        }
        let r = self.replica(key);
        let seq = r.seq;
        if let Some(refused) = r.recent.get(&origin) {
            let term = self.terms.get_mut(key).expect("serving term");
            let waiting: BTreeSet<NodeId> = others
                .into_iter()
                .filter(|n| term.acked.get(n).is_none_or(|&a| a < seq))
                .collect();
            self.await_acks(now, key, (seq, refused), (origin, None), waiting, out);
            return;
        }
        // A leave of a non-member is ordered like any op (a no-op everywhere) so that its
        // refusal is remembered in the dedupe window: a late duplicate then gets the same
        // answer instead of applying after the requester was told `NotJoined`.
        let epoch = self.terms.get(key).expect("serving term").epoch;
        let seq = seq + 1;
        let refused = self.apply_next(key, epoch, origin, &op);
        let apply = Message::Apply {
            epoch,
            seq,
            origin,
            op: op.clone(),
        };
        // The requester last: its completion waits for every node's ack anyway, while each
        // other node's view waits only for its own Apply, which leaves in this order.
        let rest = others.iter().filter(|&&n| n != origin.0);
        for &n in rest.chain(others.iter().filter(|&&n| n == origin.0)) {
            self.send(n, &apply, out);
        }
        let waiting = others.into_iter().collect();
        self.await_acks(now, key, (seq, refused), (origin, Some(op)), waiting, out);
    }

    /// Answers `origin` once every node in `waiting` holds `seq` (`refused`: `NotJoined`);
    /// `op` is the op ordered at `seq` (`None`: answering a duplicate).
    fn await_acks(
        &mut self,
        now: Time,
        key: &Key,
        (seq, refused): (u64, bool),
        (origin, op): (Origin, Option<Op>),
        waiting: BTreeSet<NodeId>,
        out: &mut Out,
    ) {
        if waiting.is_empty() {
            self.reply_done(now, origin, refused.then_some(Refusal::NotJoined), out);
            return;
        }
        let term = self.terms.get_mut(key).expect("serving term");
        term.origins.insert(origin);
        term.inflight.push(InFlight {
            seq,
            origin,
            op,
            refused,
            waiting,
        });
        self.arm(key, out);
    }

    fn reply_done(&mut self, now: Time, origin: Origin, refused: Option<Refusal>, out: &mut Out) {
        let (node, ticket) = origin;
        if node == self.me {
            self.requester_done(now, ticket, refused, out);
        } else if self.live.get(&node.addr()) == Some(&node) {
            self.send(node, &Message::Done { ticket, refused }, out);
        }
    }

    /// `from` holds everything up to `seq` of term `epoch`.
    pub(super) fn boss_ack(
        &mut self,
        now: Time,
        from: NodeId,
        key: Key,
        epoch: u64,
        seq: u64,
        out: &mut Out,
    ) {
        let current = self.replicas.get(&key).map_or(0, |r| r.seq);
        let Some(term) = self.terms.get_mut(&key).filter(|t| t.epoch == epoch) else {
            return;
        };
        let acked = term.acked.entry(from).or_insert(0);
        *acked = (*acked).max(seq);
        if seq >= current {
            term.laggards.remove(&from);
        }
        for f in term.inflight.iter_mut().filter(|f| f.seq <= seq) {
            f.waiting.remove(&from);
        }
        self.complete_ready(now, &key, out);
    }

    /// Answers every in-flight entry no longer waiting for anyone.
    fn complete_ready(&mut self, now: Time, key: &Key, out: &mut Out) {
        let Some(term) = self.terms.get_mut(key) else {
            return;
        };
        let (done, rest): (Vec<InFlight>, Vec<InFlight>) =
            term.inflight.drain(..).partition(|f| f.waiting.is_empty());
        term.inflight = rest;
        for f in &done {
            term.origins.remove(&f.origin);
        }
        for f in done {
            let refused = f.refused.then_some(Refusal::NotJoined);
            self.reply_done(now, f.origin, refused, out);
        }
    }

    /// A recovery report.
    pub(super) fn boss_state(
        &mut self,
        now: Time,
        from: NodeId,
        key: Key,
        epoch: u64,
        state: PartitionState,
        out: &mut Out,
    ) {
        self.observe_owners(now, &state, out);
        let Some(term) = self.terms.get_mut(&key).filter(|t| t.epoch == epoch) else {
            return;
        };
        let Some(rec) = term.recovery.as_mut() else {
            return;
        };
        if !rec.waiting.remove(&from) {
            return;
        }
        let owners = state.owners.clone();
        let rank = (state.written_epoch, state.seq);
        rec.reports.insert(from, (rank, state_digest(&state)));
        own_entries(&mut rec.own, from, &state);
        if rank > (rec.best.written_epoch, rec.best.seq) {
            rec.best = state;
        }
        for owner in owners {
            self.took_word_of(owner, from, out);
        }
        self.maybe_finish_recovery(now, &key, out);
    }

    /// Once every live node reported: adopt the best state, sync the others, serve the queue.
    fn maybe_finish_recovery(&mut self, now: Time, key: &Key, out: &mut Out) {
        let Some(term) = self.terms.get_mut(key) else {
            return;
        };
        if term.recovery.as_ref().is_none_or(|r| !r.waiting.is_empty()) {
            return;
        }
        let rec = term.recovery.take().expect("checked above");
        let epoch = term.epoch;
        let queued = std::mem::take(&mut term.queued);
        let best_rank = (rec.best.written_epoch, rec.best.seq);
        let mut best = rec.best;
        let merged = merge_own(&mut best, rec.own, self.config.dedupe_per_partition);
        if merged || best_rank > self.replica(key).rank() {
            self.install_state(now, key, best, out);
        }
        // Nodes holding exactly the adopted state are caught up; every other one is synced.
        // The content decides, not the rank: the two sides of a healed partition may have
        // written the same epoch and seq differently.
        let adopted = self.partition_state(key);
        let adopted = ((adopted.written_epoch, adopted.seq), state_digest(&adopted));
        for (n, report) in rec.reports {
            let term = self.terms.get_mut(key).expect("term");
            if report == adopted {
                term.acked.insert(n, adopted.0.1);
            } else {
                term.acked.insert(n, 0);
                self.send_sync(n, key, epoch, out);
            }
        }
        self.stats.recoveries += 1;
        for (from, ticket, op) in queued {
            if from == self.me || self.live.get(&from.addr()) == Some(&from) {
                self.serve(now, key, (from, ticket), op, out);
            }
        }
    }

    /// A refusal of one of this node's boss messages (requests go to the requester role).
    pub(super) fn on_nack(
        &mut self,
        now: Time,
        from: NodeId,
        key: Key,
        what: Refused,
        reason: NackReason,
        out: &mut Out,
    ) {
        if let Refused::Request(_) = what {
            self.requester_nack();
            return;
        }
        self.stats.nacks_received += 1;
        let Some(term) = self.terms.get_mut(&key) else {
            return;
        };
        match reason {
            NackReason::StaleEpoch { known } if known >= term.epoch => {
                // Fenced: a replica promised a term at least as new. Stop; restart above it
                // if this node is still the boss in its own view.
                self.stats.fenced += 1;
                let term = self.terms.remove(&key).expect("present");
                let r = self.replica(&key);
                r.epoch = r.epoch.max(known);
                if self.boss_of(&key.0, key.1) == self.me {
                    self.start_term(now, &key, term.queued, out);
                }
            }
            NackReason::StaleEpoch { .. } => {}
            NackReason::Unrecovered => {
                // `from` came Up with written state this term's recovery never collected (a
                // history of the other side of a healed partition): recover again, so that it
                // is merged rather than overwritten. Once per term: later refusals of the same
                // Syncs and Applies name the dropped epoch.
                let epoch = match what {
                    Refused::Apply { epoch, .. } | Refused::Recover { epoch } => epoch,
                    Refused::Request(_) => return,
                };
                if epoch == term.epoch && term.recovery.is_none() {
                    let term = self.terms.remove(&key).expect("present");
                    if self.boss_of(&key.0, key.1) == self.me {
                        self.start_term(now, &key, term.queued, out);
                    }
                }
            }
            NackReason::NotBoss => {
                if term.recovery.is_none() {
                    term.laggards.insert(from);
                }
                self.arm(&key, out);
            }
        }
    }

    /// A replica says `key` was written and this node is its boss: recover it now (or, if
    /// this node's view does not agree yet, when it wins the partition).
    pub(super) fn boss_handoff(&mut self, now: Time, key: Key, out: &mut Out) {
        let r = self.replica(&key);
        r.hinted = true;
        if self.boss_of(&key.0, key.1) == self.me {
            self.start_term(now, &key, VecDeque::new(), out);
        }
    }

    /// This node's copy of partition `key` misses memberships its boss may hold (see
    /// `recover_kept_out`): have the partition recovered again, as for a node holding another
    /// history. This node's own term restarts (unless it is recovering already); another boss
    /// is sent the refusal that restarts its term (`Nack { Unrecovered }` for the term this
    /// node promised). A boss whose term this node has not promised yet is recovering, and
    /// syncs this node when its report differs from the state adopted.
    pub(super) fn recover_again(&mut self, now: Time, key: &Key, out: &mut Out) {
        let boss = self.boss_of(&key.0, key.1);
        if boss != self.me {
            let epoch = self.replica(key).epoch;
            let nack = Message::Nack {
                scope: key.0.clone(),
                partition: key.1,
                what: Refused::Recover { epoch },
                reason: NackReason::Unrecovered,
            };
            self.send(boss, &nack, out);
            return;
        }
        let queued = match self.terms.get(key) {
            Some(term) if term.recovery.is_some() => return,
            Some(_) => self.terms.remove(key).expect("present").queued,
            None => VecDeque::new(),
        };
        self.start_term(now, key, queued, out);
    }

    /// `node` came Up: it must hear from every term this node keeps.
    ///
    /// A renewed identity (not its root) may hold memberships of its own that it re-joined
    /// in another history (the other side of a healed partition): a serving term is then
    /// restarted, so that its recovery merges them (see `merge_own`) instead of a `Sync`
    /// overwriting them. Any other node is sent a `Sync`, which it refuses (`Unrecovered`,
    /// see `on_nack`) if it, too, holds written state of another history.
    pub(super) fn bosses_on_up(&mut self, now: Time, node: NodeId, out: &mut Out) {
        let keys: Vec<Key> = self.terms.keys().cloned().collect();
        let renewed = node != node.root();
        for key in keys {
            if self.boss_of(&key.0, key.1) != self.me {
                continue; // lost to `node`: dropped by `terms_on_view_change`
            }
            let term = self.terms.get_mut(&key).expect("listed");
            let epoch = term.epoch;
            if renewed && term.recovery.is_none() {
                let term = self.terms.remove(&key).expect("listed");
                self.start_term(now, &key, term.queued, out);
                continue;
            }
            if let Some(rec) = term.recovery.as_mut() {
                rec.waiting.insert(node);
                let msg = Message::Recover {
                    scope: key.0.clone(),
                    partition: key.1,
                    epoch,
                };
                self.send(node, &msg, out);
            } else {
                term.acked.insert(node, 0);
                for f in &mut term.inflight {
                    f.waiting.insert(node);
                }
                self.send_sync(node, &key, epoch, out);
            }
        }
    }

    /// `node` went Down: nothing more is awaited from it. If it was retired by a newer
    /// identity at its address (it renewed or restarted, see `observe`), ops in flight await
    /// that one instead: a renewed node keeps its table, so the old identity's missing ack
    /// means the new one may still list what the op removed. It acks, or goes Down, or (renewed)
    /// comes Up and restarts the term, whose recovery answers the requester's retry.
    pub(super) fn bosses_on_down(&mut self, now: Time, node: NodeId, out: &mut Out) {
        let successor = self
            .known
            .get(&node.addr())
            .copied()
            .filter(|k| k.generation() > node.generation() && !self.is_dead(*k));
        let keys: Vec<Key> = self.terms.keys().cloned().collect();
        for key in keys {
            let term = self.terms.get_mut(&key).expect("listed");
            term.laggards.remove(&node);
            term.acked.remove(&node);
            term.queued.retain(|(from, _, _)| *from != node);
            if let Some(rec) = term.recovery.as_mut() {
                rec.waiting.remove(&node);
                rec.reports.remove(&node);
            }
            for f in &mut term.inflight {
                if f.waiting.remove(&node)
                    && let Some(next) = successor
                {
                    f.waiting.insert(next);
                }
            }
            self.maybe_finish_recovery(now, &key, out);
            self.complete_ready(now, &key, out);
        }
    }

    /// Records `scope` as in use here; the first time, starts the terms of its partitions
    /// this node bosses. A known scope is pointed at the stored handle, as
    /// [`Self::intern_scope`] does: one set lookup either way.
    pub(super) fn note_scope(&mut self, now: Time, scope: &mut ScopeName, out: &mut Out) {
        match self.scopes.get(scope) {
            Some(known) => *scope = known.clone(),
            None => {
                self.scopes.insert(scope.clone());
                self.warm_scope(now, scope, out);
            }
        }
    }

    /// Points `scope` at this node's stored handle of the same name, when it knows the scope.
    ///
    /// Why: partition state is found through ordered maps of scope names (`PartitionMap`,
    /// `scopes`), and a name compares by pointer before reading its text. A name decoded from
    /// a frame (or built by a caller) is a fresh allocation, so every step of every search read
    /// and compared the scope's text (`memcmp`: 15.6% of the backend's CPU per op in
    /// `benches/coordinated_ops.rs` while partitions were keyed by `(scope, partition)` in
    /// B-trees); with the stored handle one search of the small scope set does that, and the
    /// rest compare pointers. Same text, same order: nothing observable changes.
    pub(super) fn intern_scope(&self, scope: &mut ScopeName) {
        if let Some(known) = self.scopes.get(scope) {
            *scope = known.clone();
        }
    }

    /// Starts a term for every partition of `scope` this node bosses in its view and has none
    /// for, written or not.
    ///
    /// Why eagerly: a term serves only after its recovery, a round trip to every live node.
    /// Started on a partition's first request instead, that round trip lands on the first
    /// write of every partition (with 256 partitions, about a quarter of the first thousand
    /// writes of a new scope). Cost: per scope and per node, about `partitions_per_scope`
    /// `Recover`s sent and answered in all, when the scope is first used and for the
    /// partitions that move at a view change. The first node to use a scope tells every other
    /// one (its requests, its bosses' recoveries), and each then warms its own share.
    fn warm_scope(&mut self, now: Time, scope: &ScopeName, out: &mut Out) {
        if !self.config.warm_terms {
            return;
        }
        let live: Vec<NodeId> = self.live.values().copied().collect();
        for p in 0..self.config.partitions_per_scope {
            let boss = super::placement::boss_of(scope.as_str(), p, live.iter().copied());
            if boss.is_some_and(|b| b != self.me) {
                continue;
            }
            let key = (scope.clone(), p);
            if !self.terms.contains_key(&key) {
                self.start_term(now, &key, VecDeque::new(), out);
            }
        }
    }

    /// Drops terms this node lost, then hands written partitions whose boss changed to their
    /// new boss (starting the terms this node won), and, if the change `may_win` this node
    /// partitions (a node left, or this one renewed), warms every known scope. An Up skips the
    /// warm-up: its O(scopes x partitions x nodes) placement work would otherwise run once per
    /// node joining the cluster.
    pub(super) fn terms_on_view_change(&mut self, now: Time, may_win: bool, out: &mut Out) {
        let lost: Vec<Key> = self
            .terms
            .keys()
            .filter(|k| self.boss_of(&k.0, k.1) != self.me)
            .cloned()
            .collect();
        for key in lost {
            let term = self.terms.remove(&key).expect("listed");
            for (from, ticket, _) in term.queued {
                if from != self.me {
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
        self.hand_off_moved(now, out);
        if !may_win {
            return;
        }
        let scopes: Vec<ScopeName> = self.scopes.iter().cloned().collect();
        for scope in &scopes {
            self.warm_scope(now, scope, out);
        }
    }

    /// Every written partition whose boss changed in this node's view: start the term if this
    /// node won it, else tell the new boss (`Handoff`) that it holds written state. Sent by
    /// every replica, not only the old boss, because the old boss may be the node that went
    /// Down, and a node that just came Up knows no partition at all.
    fn hand_off_moved(&mut self, now: Time, out: &mut Out) {
        let mut moved = Vec::new();
        let live: Vec<NodeId> = self.live.values().copied().collect();
        for (key, r) in self.replicas.iter_mut() {
            if !r.written() {
                continue;
            }
            let boss = super::placement::boss_of(key.0.as_str(), key.1, live.iter().copied())
                .unwrap_or(self.me);
            if r.view_boss != Some(boss) {
                r.view_boss = Some(boss);
                moved.push((key.clone(), boss));
            }
        }
        for (key, boss) in moved {
            if boss == self.me {
                self.start_term(now, &key, VecDeque::new(), out);
            } else {
                let msg = Message::Handoff {
                    scope: key.0.clone(),
                    partition: key.1,
                };
                self.send(boss, &msg, out);
            }
        }
    }
}

/// A recovery report: `(written_epoch, seq)` and [`state_digest`].
type Report = ((u64, u64), u64);

/// A digest of a state's content (memberships and dedupe window), to tell equal states apart
/// from states that only rank equal.
fn state_digest(state: &PartitionState) -> u64 {
    use std::hash::{Hash, Hasher};
    let bytes = postcard::to_allocvec(&(&state.entries, &state.recent))
        .expect("in-memory postcard encoding cannot fail");
    // SipHash with fixed keys: the same digest on every node and run.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What one node reported of itself: its identity, its own memberships of the partition and
/// the dedupe entries of its own ops.
type Own = (NodeId, Vec<Entry>, Vec<(Origin, bool)>);

/// Records `reporter`'s own part of its `state`, under its root. Its identity is the one the
/// state names for its root (every state names its sender: a renewed node may be attributed its
/// old identity by address), else `reporter` itself.
fn own_entries(own: &mut BTreeMap<NodeId, Own>, reporter: NodeId, state: &PartitionState) {
    let root = reporter.root();
    let owner = state
        .owners
        .iter()
        .copied()
        .find(|o| o.root() == root)
        .unwrap_or(reporter);
    let entries = state
        .entries
        .iter()
        .filter(|e| e.pid.node == root)
        .cloned()
        .collect();
    let recent = state
        .recent
        .iter()
        .copied()
        .filter(|((o, _), _)| *o == owner)
        .collect();
    own.insert(root, (owner, entries, recent));
}

/// Makes every reporting node the authority on its own memberships in `best`: its entries and
/// the dedupe entries of its current identity are taken from its own report. Returns whether
/// `best` changed; `cap` bounds the dedupe window.
///
/// Why: ops on a node's pids come only from that node, and its own report holds exactly the
/// ones it applied. After a partition heals, `best` comes from one side while both sides wrote
/// (a renewed node may have re-joined its memberships on the other side, completed): its own
/// report is then the only record of them. Within one history a node's own report differs from
/// `best` only by its ops not applied there yet; those are not complete (the node had not
/// acknowledged them), and dropping them from the dedupe window with their effect lets their
/// retry apply them exactly once.
fn merge_own(best: &mut PartitionState, own: BTreeMap<NodeId, Own>, cap: usize) -> bool {
    let mut changed = false;
    for (root, (owner, mut entries, recent)) in own {
        let mut have: Vec<Entry> = best
            .entries
            .iter()
            .filter(|e| e.pid.node == root)
            .cloned()
            .collect();
        have.sort();
        entries.sort();
        let have_recent: Vec<(Origin, bool)> = best
            .recent
            .iter()
            .copied()
            .filter(|((o, _), _)| *o == owner)
            .collect();
        let same_recent = recent.iter().all(|r| have_recent.contains(r))
            && have_recent.iter().all(|r| recent.contains(r));
        let owner_listed = best.owners.contains(&owner) || entries.is_empty();
        if have == entries && same_recent && owner_listed {
            continue;
        }
        changed = true;
        best.entries.retain(|e| e.pid.node != root);
        best.entries.extend(entries);
        best.owners.retain(|o| o.root() != root);
        best.owners.push(owner);
        best.recent.retain(|((o, _), _)| *o != owner);
        best.recent.extend(recent);
    }
    if changed {
        best.entries.sort();
        best.owners.sort();
        let excess = best.recent.len().saturating_sub(cap);
        best.recent.drain(..excess);
    }
    changed
}
