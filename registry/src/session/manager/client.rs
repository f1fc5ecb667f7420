//! The client side of a [`SessionManager`]: calls made on this node, until they complete.
//!
//! A call becomes one request per shard it touches (one, except `lookup_many`), routed to the
//! shard's primary in this node's view with the epoch this node believes. Requests queued in
//! one instant for one primary leave as one message (the `Flush` timer). A request is sent
//! again — same id, so the shard answers the original outcome — when its reply is late, when a
//! replica refuses it for routing (`StaleEpoch`: at once with the epoch learned; `NotPrimary`,
//! `UnknownShard`: after a backoff), or when the primary changes in this node's view; past the
//! deadline it completes `Unavailable`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use meshreg_membership::{NodeId, Time};

use super::node::SessionManager;
use super::{CallId, Out, SessionCallError, SessionOutput, SessionTimer};
use crate::Pid;
use crate::session::hash::SeededState;
use crate::session::state::TOUCH_AHEAD;
use crate::session::{
    Answer, Body, Call, Epoch, Outcome, Policy, Reassertion, Replaced, Reply, Request, RequestId,
    SessionError, SessionKey, ShardId,
};

/// An acknowledged session of a local process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    pub(super) pid: Pid,
    pub(super) meta: Box<[u8]>,
    /// The newest epoch known to hold it (acknowledged or re-asserted there).
    pub(super) epoch: Epoch,
}

/// One shard's acknowledged sessions of local processes.
///
/// Why hashed: every acknowledged registration inserts here, and with ~1000 keys per shard an
/// ordered map's insert walks several nodes of key comparisons (measured ~6% of a node's CPU
/// under load). Keys come from local processes; the seed is the node's shard hash seed, so
/// iteration is deterministic for a given input (the simulator replays it).
pub(crate) type OwnedKeys = HashMap<SessionKey, Owned, SeededState>;

/// Why a request was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The whole of the local call `call` (it touches one shard): its outcome is the call's.
    One { call: CallId },
    /// Part `part` of the local call `call` (`lookup_many` over several shards).
    Call { call: CallId, part: usize },
    /// Re-assertion of owned sessions.
    Reassert,
    /// Removal of an ended process's sessions.
    Exit,
}

/// A request waiting for its definite answer.
pub(crate) struct Pending {
    purpose: Purpose,
    shard: ShardId,
    body: Body,
    /// The epoch it was last sent with.
    sent_epoch: Epoch,
    /// Where it was last sent.
    target: Option<NodeId>,
    attempt: u32,
    /// Only the retry timer of the current arming counts.
    arming: u32,
    /// Sent to a primary and waiting: re-sent by the upkeep tick once this passes. (Not a
    /// timer per request: at hundreds of thousands of calls per second, arming and discarding
    /// one timer per call cost as much as the call.)
    resend_at: Option<Time>,
    deadline: Time,
}

/// The requests waiting for their definite answer, by wire id.
///
/// Why not an ordered map: every call inserts and removes one entry here, and a B-tree keeps
/// its entries (about 160 bytes) inline in its nodes, so each removal shifted the rest of a node
/// (measured ~2% of a node's CPU under load, most of it `memmove`). A hash map moves an entry
/// once each way; the oldest id still waiting (`answered_below`) comes from the ids in issue
/// order, and scans that act on requests sort the ids first, so outputs keep the id order an
/// ordered map gave them.
///
/// Invariant: `order` holds every id in `by_id`, increasing (ids are issued in increasing
/// order), plus answered ids not dropped yet; an insert that finds it holding more than twice
/// the waiting ids (plus 64) compacts it, so it never outgrows that bound as of the last
/// insert (amortised O(1) per request).
pub(crate) struct PendingMap {
    by_id: HashMap<u64, Pending, SeededState>,
    order: VecDeque<u64>,
    /// `order`'s front is known to be waiting (checked once, not once per request sent).
    front_waiting: bool,
}

impl PendingMap {
    pub(crate) fn new(state: SeededState) -> Self {
        Self {
            by_id: HashMap::with_hasher(state),
            order: VecDeque::new(),
            front_waiting: false,
        }
    }

    /// Adds request `id`, above every id added before.
    fn insert(&mut self, id: u64, p: Pending) {
        debug_assert!(self.order.back().is_none_or(|last| *last < id));
        self.by_id.insert(id, p);
        self.order.push_back(id);
        if self.order.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
            self.front_waiting = !self.order.is_empty();
        }
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&Pending> {
        self.by_id.get(id)
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Pending> {
        self.by_id.get_mut(id)
    }

    fn remove(&mut self, id: &u64) -> Option<Pending> {
        if self.order.front() == Some(id) {
            self.front_waiting = false;
        }
        self.by_id.remove(id)
    }

    /// The oldest id still waiting.
    fn oldest(&mut self) -> Option<u64> {
        while let Some(&id) = self.order.front() {
            if self.front_waiting || self.by_id.contains_key(&id) {
                self.front_waiting = true;
                return Some(id);
            }
            self.order.pop_front();
        }
        None
    }

    /// Every waiting request, in no particular order.
    fn values(&self) -> impl Iterator<Item = &Pending> {
        self.by_id.values()
    }

    /// The ids of the waiting requests `f` selects, increasing.
    fn ids_where(&self, mut f: impl FnMut(&Pending) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// A local call split over shards (a call touching one shard has none: see [`Purpose::One`]).
pub(crate) struct CallState {
    /// `lookup_many`: per part, the positions of its answers in the call's order.
    positions: Vec<Vec<usize>>,
    answers: Vec<Option<Answer>>,
    left: usize,
}

impl SessionManager {
    /// Makes local `pid` the holder of `key` with `meta`, under `policy`. Completes with
    /// `Outcome::One(Registered | Replaced | Taken)` once the primary's standby has it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat call mirroring the public API"
    )]
    pub fn register(
        &mut self,
        now: Time,
        req: CallId,
        key: SessionKey,
        pid: Pid,
        meta: &[u8],
        policy: Policy,
        out: &mut Out,
    ) {
        let call = Call::Register {
            key,
            pid,
            metadata: meta.into(),
            policy,
        };
        self.submit_one(now, req, Some(pid), call, out);
        self.finish_call(now, out);
    }

    /// Removes `key` if local `pid` holds it (`Unregistered`), else `NotHolder` and nothing
    /// changes.
    pub fn unregister(&mut self, now: Time, req: CallId, key: SessionKey, pid: Pid, out: &mut Out) {
        // Forgotten at once: a re-assertion sent from now on must not bring it back.
        let shard = self.placement.shard_of(&key);
        if let Some(keys) = self.owned.get_mut(&shard)
            && keys.get(&key).is_some_and(|o| o.pid == pid)
        {
            keys.remove(&key);
        }
        self.submit_one(now, req, Some(pid), Call::Unregister { key, pid }, out);
        self.finish_call(now, out);
    }

    /// Reads `key` at its primary: `Outcome::One(Found(..))`.
    pub fn lookup(&mut self, now: Time, req: CallId, key: SessionKey, out: &mut Out) {
        self.submit_one(now, req, None, Call::Lookup { key }, out);
        self.finish_call(now, out);
    }

    /// Reads `keys` (one request per shard touched): `Outcome::Many` in the order of `keys`.
    pub fn lookup_many(&mut self, now: Time, req: CallId, keys: Vec<SessionKey>, out: &mut Out) {
        let limits = self.config.shard.limits;
        if keys.len() > limits.calls_per_request_max {
            let e = SessionError::TooManyCalls {
                len: keys.len(),
                max: limits.calls_per_request_max,
            };
            self.complete(req, Err(SessionCallError::Refused(e)), out);
            return;
        }
        for (i, k) in keys.iter().enumerate() {
            if let Err(e) = check_sizes(i, k, &[], &limits) {
                self.complete(req, Err(SessionCallError::Refused(e)), out);
                return;
            }
        }
        if keys.is_empty() {
            self.complete(req, Ok(Outcome::Many(Vec::new())), out);
            return;
        }
        let mut by_shard: BTreeMap<ShardId, (Vec<usize>, Vec<Call>)> = BTreeMap::new();
        let n = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            let e = by_shard.entry(self.placement.shard_of(&key)).or_default();
            e.0.push(i);
            e.1.push(Call::Lookup { key });
        }
        let mut positions = Vec::new();
        let parts: Vec<(ShardId, Vec<Call>)> = by_shard
            .into_iter()
            .map(|(s, (pos, calls))| {
                positions.push(pos);
                (s, calls)
            })
            .collect();
        let state = CallState {
            left: parts.len(),
            positions,
            answers: vec![None; n],
        };
        self.calls.insert(req, state);
        for (part, (shard, calls)) in parts.into_iter().enumerate() {
            let purpose = Purpose::Call { call: req, part };
            self.submit(now, purpose, shard, Body::Batch(calls), out);
        }
        self.finish_call(now, out);
    }

    /// Local `pid` ended: its acknowledged sessions are unregistered (one batch per shard), and
    /// registrations still in flight are undone when they complete.
    pub fn process_exit(&mut self, now: Time, pid: Pid, out: &mut Out) {
        let mut removals: Vec<(ShardId, Vec<Call>)> = Vec::new();
        for (shard, keys) in self.owned.iter_mut() {
            let mine: Vec<SessionKey> = keys
                .iter()
                .filter(|(_, o)| o.pid == pid)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &mine {
                keys.remove(k);
            }
            if !mine.is_empty() {
                let calls = mine
                    .into_iter()
                    .map(|key| Call::Unregister { key, pid })
                    .collect();
                removals.push((*shard, calls));
            }
        }
        let chunk = self.config.shard.limits.calls_per_request_max.max(1);
        for (shard, calls) in removals {
            for c in calls.chunks(chunk) {
                self.submit(now, Purpose::Exit, shard, Body::Batch(c.to_vec()), out);
            }
        }
        let registering = self.pending.values().any(|p| {
            matches!(p.purpose, Purpose::One { .. } | Purpose::Call { .. })
                && matches!(&p.body, Body::One(Call::Register { pid: p2, .. }) if *p2 == pid)
        });
        if registering {
            self.exiting.insert(pid);
        }
        self.finish_call(now, out);
    }

    fn submit_one(&mut self, now: Time, req: CallId, pid: Option<Pid>, call: Call, out: &mut Out) {
        if let Some(pid) = pid
            && pid.node != self.me.root()
            && pid.node != self.me
        {
            self.complete(req, Err(SessionCallError::ForeignPid(pid)), out);
            return;
        }
        let meta: &[u8] = match &call {
            Call::Register { metadata, .. } => metadata,
            _ => &[],
        };
        if let Err(e) = check_sizes(0, call.key(), meta, &self.config.shard.limits) {
            self.complete(req, Err(SessionCallError::Refused(e)), out);
            return;
        }
        let shard = self.placement.shard_of(call.key());
        // One request is the whole call: no call state to keep (a map insert and removal per
        // call on the hot path otherwise).
        self.submit(now, Purpose::One { call: req }, shard, Body::One(call), out);
    }

    fn submit(&mut self, now: Time, purpose: Purpose, shard: ShardId, body: Body, out: &mut Out) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                purpose,
                shard,
                body,
                sent_epoch: 0,
                target: None,
                attempt: 0,
                arming: 0,
                resend_at: None,
                deadline: now + self.config.call_deadline,
            },
        );
        self.send_request(now, id, out);
    }

    /// Sends (or re-sends) request `id` to its shard's primary in this node's view.
    fn send_request(&mut self, now: Time, id: u64, out: &mut Out) {
        let answered_below = self.pending.oldest().unwrap_or(self.next_id);
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if now >= p.deadline {
            let why = format!("no definite answer from shard {} in time", p.shard.0);
            self.finish_request(now, id, Err(SessionCallError::Unavailable(why)), out);
            return;
        }
        if p.purpose == Purpose::Reassert && p.attempt > 0 {
            // Rebuilt from current ownership under a new id: a key unregistered since must
            // not come back with a late copy.
            let Some(p) = self.pending.remove(&id) else {
                return;
            };
            if let Body::Reassert(all) = p.body {
                let keys = all.into_iter().map(|r| r.key).collect();
                self.reassert_keys(now, p.shard, keys, out);
            }
            return;
        }
        if p.attempt > 0 {
            self.stats.resent += 1;
        }
        let target = self.placement.primary(p.shard);
        let epoch = self.believed.get(&p.shard).copied().unwrap_or(0);
        p.target = target;
        p.sent_epoch = epoch;
        p.attempt += 1;
        p.arming += 1;
        let arming = p.arming;
        p.resend_at = target.map(|_| now + self.config.request_timeout);
        if target.is_none() {
            // No primary in this view: try again soon (the view may change first).
            out.push(SessionOutput::SetTimer {
                after: self.config.backoff_max,
                timer: SessionTimer::Retry { id, arming },
            });
        }
        if let Some(to) = target {
            let req = Request {
                shard: p.shard,
                epoch,
                id: RequestId {
                    client: self.me.root(),
                    id,
                },
                answered_below,
                body: p.body.clone(),
            };
            self.enqueue(to, req, out);
        }
    }

    /// Upkeep: re-sends every request whose reply is overdue.
    pub(super) fn resend_overdue(&mut self, now: Time, out: &mut Out) {
        let due = self
            .pending
            .ids_where(|p| p.resend_at.is_some_and(|t| t <= now));
        for id in due {
            self.send_request(now, id, out);
        }
    }

    fn retry_later(&mut self, id: u64, out: &mut Out) {
        let max = self.config.backoff_max;
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        p.arming += 1;
        p.resend_at = None;
        let shift = p.attempt.min(16);
        let after = Duration::from_millis(10u64 << shift).min(max);
        out.push(SessionOutput::SetTimer {
            after,
            timer: SessionTimer::Retry {
                id,
                arming: p.arming,
            },
        });
    }

    pub(super) fn retry_timer(&mut self, now: Time, id: u64, arming: u32, out: &mut Out) {
        if self.pending.get(&id).is_some_and(|p| p.arming == arming) {
            self.send_request(now, id, out);
        }
    }

    /// The view changed: requests whose primary moved go to the new one now.
    pub(super) fn reroute(&mut self, now: Time, out: &mut Out) {
        let placement = &self.placement;
        let moved = self
            .pending
            .ids_where(|p| p.target != placement.primary(p.shard));
        for id in moved {
            self.send_request(now, id, out);
        }
    }

    /// Replies to this node's requests, in order, from the replica `from` (`None`: this node);
    /// leaves `replies` empty, its buffer kept for reuse.
    /// Handled in windows, each read ahead first: the pending request each one answers and the
    /// ownership map an acknowledged registration goes into are cold at this point (every reply
    /// is for another shard), and looking them up one after another paid their DRAM misses in
    /// series (the ownership insert measured ~5-6% of a node's CPU under load).
    pub(super) fn on_replies(
        &mut self,
        now: Time,
        from: Option<NodeId>,
        replies: &mut Vec<Reply>,
        out: &mut Out,
    ) {
        let mut replies = replies.drain(..);
        while replies.len() > 0 {
            let window = replies.as_slice().iter().take(TOUCH_AHEAD);
            let mut pending: [Option<&Pending>; TOUCH_AHEAD] = [None; TOUCH_AHEAD];
            for (slot, r) in pending.iter_mut().zip(window) {
                *slot = self.pending.get(&r.to.id);
            }
            let mut keys: [Option<(ShardId, &SessionKey)>; TOUCH_AHEAD] = [None; TOUCH_AHEAD];
            for (slot, p) in keys.iter_mut().zip(&pending) {
                if let Some(Pending {
                    shard,
                    body: Body::One(Call::Register { key, .. }),
                    ..
                }) = p
                {
                    *slot = Some((*shard, key));
                }
            }
            let mut acc = 0usize;
            for (shard, key) in keys.iter().flatten() {
                acc ^= self
                    .owned
                    .get(shard)
                    .map_or(0, |m| usize::from(m.contains_key(*key)));
            }
            black_box(acc);
            for r in replies.by_ref().take(TOUCH_AHEAD) {
                self.on_reply(now, from, r, out);
            }
        }
    }

    /// A reply to one of this node's requests; `from` is the replica that sent it (`None`:
    /// this node).
    pub(super) fn on_reply(&mut self, now: Time, from: Option<NodeId>, r: Reply, out: &mut Out) {
        if r.to.client.addr() != self.me.addr() {
            return;
        }
        let id = r.to.id;
        let Some(p) = self.pending.get(&id) else {
            return; // answered already (a duplicate or a late attempt)
        };
        let (shard, target) = (p.shard, p.target);
        match r.result {
            Ok(outcome) => self.finish_request(now, id, Ok(outcome), out),
            Err(e) if e.is_retryable() => {
                // A refusal counts only from where the request was last sent: an older
                // attempt's refusal says nothing about the current one.
                if from.unwrap_or(self.me) != target.unwrap_or(self.me) || target.is_none() {
                    return;
                }
                match e {
                    SessionError::StaleEpoch { current } => {
                        self.believed.insert(shard, current);
                        self.learned_epoch(now, shard, current, out);
                        self.send_request(now, id, out);
                    }
                    SessionError::NotPrimary { epoch } => {
                        if epoch > 0 {
                            self.believed.insert(shard, epoch);
                        }
                        self.retry_later(id, out);
                    }
                    _ => self.retry_later(id, out),
                }
            }
            Err(e) => self.finish_request(now, id, Err(SessionCallError::Refused(e)), out),
        }
    }

    /// Request `id` ended with a definite result.
    fn finish_request(
        &mut self,
        now: Time,
        id: u64,
        result: Result<Outcome, SessionCallError>,
        out: &mut Out,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if let Ok(outcome) = &result {
            self.apply_ownership(now, &p, outcome, out);
        }
        match p.purpose {
            Purpose::One { call } => self.complete(call, result, out),
            Purpose::Call { call, part } => self.finish_part(call, part, result, out),
            Purpose::Reassert | Purpose::Exit => {}
        }
        self.exiting.retain(|pid| {
            self.pending
                .values()
                .any(|q| matches!(&q.body, Body::One(Call::Register { pid: p2, .. }) if p2 == pid))
        });
    }

    fn finish_part(
        &mut self,
        call: CallId,
        part: usize,
        result: Result<Outcome, SessionCallError>,
        out: &mut Out,
    ) {
        let Some(state) = self.calls.get_mut(&call) else {
            return; // an earlier part already failed the call
        };
        if result.is_err() {
            self.calls.remove(&call);
            self.complete(call, result, out);
            return;
        }
        if let Ok(Outcome::Many(answers)) = result {
            for (pos, a) in state.positions[part].iter().zip(answers) {
                state.answers[*pos] = Some(a);
            }
        }
        state.left -= 1;
        if state.left == 0
            && let Some(state) = self.calls.remove(&call)
        {
            let answers = state
                .answers
                .into_iter()
                .map(|a| a.unwrap_or(Answer::Found(None)))
                .collect();
            self.complete(call, Ok(Outcome::Many(answers)), out);
        }
    }

    pub(super) fn complete(
        &mut self,
        req: CallId,
        result: Result<Outcome, SessionCallError>,
        out: &mut Out,
    ) {
        out.push(SessionOutput::Completed { req, result });
    }

    /// What an acknowledged answer means for the sessions this node owns.
    fn apply_ownership(&mut self, now: Time, p: &Pending, outcome: &Outcome, out: &mut Out) {
        match (&p.body, outcome) {
            (
                Body::One(Call::Register {
                    key, pid, metadata, ..
                }),
                Outcome::One(Answer::Registered { .. } | Answer::Replaced { .. }),
            ) => {
                if self.exiting.contains(pid) {
                    let call = Call::Unregister {
                        key: key.clone(),
                        pid: *pid,
                    };
                    self.submit(now, Purpose::Exit, p.shard, Body::One(call), out);
                    return;
                }
                let owned = Owned {
                    pid: *pid,
                    meta: metadata.clone(),
                    epoch: p.sent_epoch,
                };
                let state = SeededState::new(self.config.shard.hash_seed);
                let keys = self
                    .owned
                    .get_or_insert_with(p.shard, || HashMap::with_hasher(state));
                if let Some(prev) = keys.insert(key.clone(), owned)
                    && prev.pid != *pid
                {
                    // Replaced by another local process's registration.
                    self.stats.lost += 1;
                    out.push(SessionOutput::Lost {
                        key: key.clone(),
                        pid: prev.pid,
                    });
                }
                let asserted = self.asserted.get(&p.shard).copied().unwrap_or(0);
                if p.sent_epoch < asserted {
                    // Acknowledged by an older term than the one re-asserted to: it may have
                    // missed that re-assertion.
                    self.reassert_keys(now, p.shard, vec![key.clone()], out);
                }
            }
            (Body::Reassert(all), Outcome::Many(answers)) => {
                for (r, a) in all.iter().zip(answers) {
                    if let Answer::Taken { holder } = a
                        && *holder != r.pid
                    {
                        self.lose(p.shard, &r.key, r.pid, out);
                    }
                }
                let asserted = self.asserted.get_or_insert_with(p.shard, || 0);
                *asserted = (*asserted).max(p.sent_epoch);
                let believed = self.believed.get(&p.shard).copied().unwrap_or(0);
                if believed > p.sent_epoch {
                    // Answered by a term older than the one requests now go to: assert there.
                    self.reassert_shard(now, p.shard, out);
                    return;
                }
                // Sessions acknowledged after this re-assertion was built may have been
                // acknowledged by an older term: assert them here too.
                let Some(owned) = self.owned.get_mut(&p.shard) else {
                    return;
                };
                for r in all {
                    if let Some(o) = owned.get_mut(&r.key).filter(|o| o.pid == r.pid) {
                        o.epoch = o.epoch.max(p.sent_epoch);
                    }
                }
                let missing: Vec<SessionKey> = owned
                    .iter()
                    .filter(|(_, o)| o.epoch < p.sent_epoch)
                    .map(|(k, _)| k.clone())
                    .collect();
                if !missing.is_empty() {
                    self.reassert_keys(now, p.shard, missing, out);
                }
            }
            _ => {}
        }
    }

    fn lose(&mut self, shard: ShardId, key: &SessionKey, pid: Pid, out: &mut Out) {
        let Some(keys) = self.owned.get_mut(&shard) else {
            return;
        };
        if keys.get(key).is_some_and(|o| o.pid == pid) {
            keys.remove(key);
            self.stats.lost += 1;
            out.push(SessionOutput::Lost {
                key: key.clone(),
                pid,
            });
        }
    }

    /// A primary took a key from a local process (`Replace`).
    pub(super) fn on_replaced(&mut self, msg: Replaced, out: &mut Out) {
        self.lose(msg.shard, &msg.key, msg.old, out);
    }

    /// Primaries announced new terms: believe them, and re-assert owned sessions there.
    pub(super) fn on_terms(&mut self, now: Time, terms: &[(ShardId, Epoch)], out: &mut Out) {
        for &(shard, epoch) in terms {
            let b = self.believed.get_or_insert_with(shard, || 0);
            *b = (*b).max(epoch);
            self.learned_epoch(now, shard, epoch, out);
        }
    }

    /// `epoch` serves `shard`: if it is newer than the last term that answered a
    /// re-assertion, re-assert.
    fn learned_epoch(&mut self, now: Time, shard: ShardId, epoch: Epoch, out: &mut Out) {
        if epoch > self.asserted.get(&shard).copied().unwrap_or(0) {
            self.reassert_shard(now, shard, out);
        }
    }

    /// Re-asserts every session owned in `shard`, unless a re-assertion of it is in flight
    /// (it is sent again, rebuilt, to wherever the shard is served).
    pub(super) fn reassert_shard(&mut self, now: Time, shard: ShardId, out: &mut Out) {
        let in_flight = self
            .pending
            .values()
            .any(|p| p.purpose == Purpose::Reassert && p.shard == shard);
        if in_flight {
            return;
        }
        let keys: Vec<SessionKey> = self
            .owned
            .get(&shard)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if !keys.is_empty() {
            self.reassert_keys(now, shard, keys, out);
        }
    }

    /// Re-asserts those of `keys` this node still owns in `shard`.
    pub(super) fn reassert_keys(
        &mut self,
        now: Time,
        shard: ShardId,
        keys: Vec<SessionKey>,
        out: &mut Out,
    ) {
        let Some(owned) = self.owned.get(&shard) else {
            return;
        };
        let entries: Vec<Reassertion> = keys
            .into_iter()
            .filter_map(|key| {
                owned.get(&key).map(|o| Reassertion {
                    key,
                    pid: o.pid,
                    metadata: o.meta.clone(),
                })
            })
            .collect();
        let chunk = self.config.reassert_chunk.max(1);
        for c in entries.chunks(chunk) {
            self.stats.reasserted += c.len() as u64;
            self.submit(
                now,
                Purpose::Reassert,
                shard,
                Body::Reassert(c.to_vec()),
                out,
            );
        }
    }
}

/// The shard's size checks, made before sending so an oversized call never travels.
fn check_sizes(
    call: usize,
    key: &SessionKey,
    meta: &[u8],
    limits: &crate::session::Limits,
) -> Result<(), SessionError> {
    let (len, max) = (key.len_bytes(), limits.key_bytes_max);
    if len > max {
        return Err(SessionError::KeyTooLarge { call, len, max });
    }
    let (len, max) = (meta.len(), limits.metadata_bytes_max);
    if len > max {
        return Err(SessionError::MetadataTooLarge { call, len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    fn pending() -> Pending {
        Pending {
            purpose: Purpose::Exit,
            shard: ShardId(0),
            body: Body::One(Call::Lookup {
                key: SessionKey::U64(1),
            }),
            sent_epoch: 0,
            target: None,
            attempt: 0,
            arming: 0,
            resend_at: None,
            deadline: Duration::ZERO,
        }
    }

    proptest! {
        /// The oldest waiting id and the selected ids match an ordered set of the waiting ids,
        /// and an insert leaves the issue order within twice the waiting ids (plus 64).
        #[test]
        fn prop_pending_map_tracks_the_oldest_waiting_id(ops in proptest::collection::vec((any::<bool>(), any::<u16>()), 0..400)) {
            let mut m = PendingMap::new(SeededState::new(7));
            let mut model = BTreeSet::new();
            let mut next = 1u64;
            for (add, pick) in ops {
                if add || model.is_empty() {
                    m.insert(next, pending());
                    model.insert(next);
                    next += 1;
                    prop_assert!(m.order.len() <= 2 * model.len() + 64);
                } else {
                    let id = *model.iter().nth(usize::from(pick) % model.len()).unwrap_or(&0);
                    prop_assert!(m.remove(&id).is_some());
                    model.remove(&id);
                }
                prop_assert_eq!(m.oldest(), model.first().copied());
                prop_assert_eq!(m.len(), model.len());
                let all: Vec<u64> = model.iter().copied().collect();
                prop_assert_eq!(m.ids_where(|_| true), all);
            }
        }
    }
}
