//! The requester role: a local call travels to its partition's boss until a `Done` comes back.
//!
//! Invariants:
//! - A ticket is pending from `submit` until exactly one of: a `Done` (then `Completed` with
//!   its result), or, for a driver call, `max_attempts` sendings without one (then
//!   `Unavailable`). Internal requests (exit leaves, re-joins, detached joins) are never given
//!   up: nobody is told of their failure, so giving one up would leave an ended process listed
//!   on every node (or a live one missing) for good.
//! - At most `max_in_flight` tickets are sent and unanswered at once (`in_flight`); the others
//!   wait in `backlog`, in submission order, unsent and without a retry timer. A burst (a
//!   process with thousands of memberships ending, a renewal's re-joins) thus puts O(window)
//!   requests, Applies and retry timers on the wire, never O(burst): per-peer send queues are
//!   bounded and drop on overflow, and a burst of retries would re-send work the bosses have
//!   not reached yet.
//! - Re-sending is always safe: bosses recognise `(requester, ticket)` in the partition's
//!   replicated dedupe window, so an op a dead boss already applied is not applied twice.
//! - A pid that exited while one of its joins was pending leaves again once that join is
//!   done, so a late join cannot outlive its process.
//! - After a renewal every request is the new identity's: the local memberships are re-joined
//!   (internal tickets, never given up), and calls still pending are re-issued under fresh
//!   tickets (or, if already applied here, answered with the re-join that carries them), so a
//!   late `Done` meant for the old identity cannot complete anything.

use meshreg_membership::{NodeId, Time};

use super::groups::{BossTimer, CoordinatedGroups, Out};
use super::message::{Message, Op, Refusal, Ticket};
use crate::groups::GroupError;
use crate::{CallError, Pid, RegistryOutput, RequestId};

/// One request waiting for its `Done`.
pub(crate) struct Pending {
    op: Op,
    /// Sendings so far (1 after the first).
    attempts: u32,
    /// The boss it was last sent to.
    boss: NodeId,
    /// The pid exited meanwhile: leave again after this join.
    exit_after: bool,
    /// The driver call this request answers (`None`: an internal one).
    call: Option<RequestId>,
    /// A re-join after renewal (whose loss would drop a live membership on the other nodes for
    /// good): never given up, even when it carries a driver call. Internal requests without a
    /// call (exit leaves) are never given up either; this flag marks the re-joins, which a
    /// renewal may pick to carry an interrupted call.
    persistent: bool,
    /// A leave already applied under an older identity, ordered again under the current one
    /// only to complete its call once the other nodes dropped the old memberships: answered
    /// `Ok` whatever the boss says (it finds nothing to remove).
    applied_before: bool,
}

impl Pending {
    /// Sent at least once (counted in `in_flight`), rather than waiting in the backlog.
    fn sent(&self) -> bool {
        self.attempts > 0
    }
}

impl CoordinatedGroups {
    /// Registers `op` under `ticket` and sends it to its boss once the window has room.
    /// `ticket` is fresh: no boss has seen it (see [`Self::serve_alone`]).
    pub(super) fn submit(&mut self, now: Time, ticket: Ticket, mut op: Op, out: &mut Out) {
        self.note_scope(now, op.scope_mut(), out);
        if self.serve_alone(ticket, &op, out) {
            return;
        }
        let call = match ticket {
            Ticket::Call(req) => Some(req),
            Ticket::Exit(_) => None,
        };
        let pending = Pending {
            op,
            attempts: 0,
            boss: self.me,
            exit_after: false,
            call,
            persistent: false,
            applied_before: false,
        };
        self.insert_pending(ticket, pending);
        self.backlog.push_back(ticket);
        self.pump(now, out);
    }

    /// The lone-node fast path: when this node is the only live one, the partition's term is
    /// serving with nothing queued or in flight, and no request of this node waits for the
    /// window, `submit` would send the ticket at once to this node as boss, which would order
    /// it, wait for no ack and answer it within the same call. This does exactly that (same
    /// seq, dedupe window, table change, events and result, in the same order) without the
    /// bookkeeping of a request that could outlive the call: no `pending` entry, no backlog
    /// slot, no retry timer (it would fire on a finished ticket and do nothing), no op copies.
    /// The dedupe checks are skipped because `ticket` is fresh: a ticket never sent cannot be
    /// in any window or in flight. Returns whether it served the ticket.
    fn serve_alone(&mut self, ticket: Ticket, op: &Op, out: &mut Out) -> bool {
        if self.live.len() != 1
            || self.pumping
            || !self.backlog.is_empty()
            || self.in_flight >= self.config.max_in_flight.max(1)
            || op.pid().node != self.me.root()
        {
            return false;
        }
        let key = self.key_of(op);
        let Some(term) = self.terms.get(&key) else {
            return false; // no term yet: the first write recovers the partition
        };
        if !term.is_serving_idle() {
            return false;
        }
        debug_assert_eq!(
            placement_boss(self, &key),
            self.me,
            "alone: boss of everything"
        );
        let epoch = term.epoch;
        let refused = self.apply_next(&key, epoch, (self.me, ticket), op);
        if let Ticket::Call(req) = ticket {
            let result = if refused {
                Err(CallError::Group(GroupError::NotJoined {
                    scope: op.scope().clone(),
                    group: op.group().clone(),
                    pid: op.pid(),
                }))
            } else {
                Ok(())
            };
            self.complete_call(req, result, out);
        }
        true
    }

    /// Adds `p` to `pending` and, for a join, to the index of pending joins by pid.
    fn insert_pending(&mut self, ticket: Ticket, p: Pending) {
        if let Op::Join { pid, .. } = p.op {
            self.pending_joins.entry(pid).or_default().push(ticket);
        }
        self.pending.insert(ticket, p);
    }

    /// Removes `ticket` from `pending` and from the index of pending joins.
    fn remove_pending(&mut self, ticket: Ticket) -> Option<Pending> {
        let p = self.pending.remove(&ticket)?;
        if let Op::Join { pid, .. } = p.op
            && let Some(ts) = self.pending_joins.get_mut(&pid)
        {
            ts.retain(|t| *t != ticket);
            if ts.is_empty() {
                self.pending_joins.remove(&pid);
            }
        }
        Some(p)
    }

    /// Sends backlogged requests while the window has room. Re-entrant calls (a request this
    /// node bosses can complete inside `dispatch`, and its completion pumps again) return at
    /// once: the outer loop sees the freed room, so a burst served locally iterates instead of
    /// recursing once per request.
    fn pump(&mut self, now: Time, out: &mut Out) {
        if self.pumping {
            return;
        }
        self.pumping = true;
        while self.in_flight < self.config.max_in_flight.max(1) {
            let Some(ticket) = self.backlog.pop_front() else {
                break;
            };
            if self.pending.get(&ticket).is_some_and(|p| !p.sent()) {
                self.in_flight += 1;
                self.dispatch(now, ticket, out);
            }
        }
        self.pumping = false;
    }

    /// (Re-)sends the pending request `ticket` to the boss in the current view.
    fn dispatch(&mut self, now: Time, ticket: Ticket, out: &mut Out) {
        let Some(p) = self.pending.get_mut(&ticket) else {
            return;
        };
        let op = p.op.clone();
        let partition = super::placement::partition_of(
            op.scope().as_str(),
            op.group().as_str(),
            self.config.partitions_per_scope,
        );
        let boss =
            super::placement::boss_of(op.scope().as_str(), partition, self.live.values().copied())
                .unwrap_or(self.me);
        p.attempts += 1;
        p.boss = boss;
        let attempt = p.attempts;
        out.push(RegistryOutput::SetTimer {
            after: self.config.request_timeout,
            timer: BossTimer::Retry { ticket, attempt },
        });
        if boss == self.me {
            let me = self.me;
            self.boss_request(now, me, ticket, op, out);
        } else {
            let from = self.me;
            self.send(boss, &Message::Request { from, ticket, op }, out);
        }
    }

    /// The retry timer of `attempt` fired: re-send, or give up after the bound.
    pub(super) fn retry_timer(&mut self, now: Time, ticket: Ticket, attempt: u32, out: &mut Out) {
        let Some(p) = self.pending.get(&ticket) else {
            return;
        };
        if p.attempts != attempt {
            return;
        }
        // Only a driver call is given up: an internal request has nobody to tell.
        if p.attempts >= self.config.max_attempts && !p.persistent && p.call.is_some() {
            let why = format!(
                "no boss answered after {} attempts (the op may still be applied if a boss \
                 ordered it before failing)",
                p.attempts
            );
            self.finish(now, ticket, Err(CallError::Unavailable(why)), out);
            return;
        }
        self.stats.retries += 1;
        self.dispatch(now, ticket, out);
    }

    /// After a view change: requests whose boss changed go to the new boss now.
    pub(super) fn redispatch_moved(&mut self, now: Time, out: &mut Out) {
        // Backlogged requests have no boss yet: they go to the boss of their time when sent.
        let moved: Vec<Ticket> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent())
            .filter(|(_, p)| {
                let (scope, group) = (p.op.scope(), p.op.group());
                let part = self.partition_of(scope, group);
                self.boss_of(scope, part) != p.boss
            })
            .map(|(t, _)| *t)
            .collect();
        for ticket in moved {
            self.stats.retries += 1;
            self.dispatch(now, ticket, out);
        }
    }

    /// A boss answered `ticket` (from a message, or directly when this node is the boss).
    pub(super) fn requester_done(
        &mut self,
        now: Time,
        ticket: Ticket,
        refused: Option<Refusal>,
        out: &mut Out,
    ) {
        let Some(p) = self.pending.get(&ticket) else {
            return;
        };
        let pid = p.op.pid();
        let result = match refused {
            None => Ok(()),
            Some(Refusal::ForeignPid) => Err(GroupError::ForeignPid {
                pid,
                node: self.me.root(),
            }),
            Some(Refusal::NotJoined) => Err(GroupError::NotJoined {
                scope: p.op.scope().clone(),
                group: p.op.group().clone(),
                pid,
            }),
        };
        let result = result.map_err(CallError::Group);
        self.finish(now, ticket, result, out);
    }

    /// A boss refused `ticket` (its view differs): the retry timer re-sends it.
    pub(super) fn requester_nack(&mut self) {
        self.stats.nacks_received += 1;
    }

    fn finish(&mut self, now: Time, ticket: Ticket, result: Result<(), CallError>, out: &mut Out) {
        let Some(p) = self.remove_pending(ticket) else {
            return;
        };
        if p.sent() {
            debug_assert!(self.in_flight > 0, "a sent ticket is counted in flight");
            self.in_flight = self.in_flight.saturating_sub(1);
        } else {
            // No boss has seen an unsent ticket, so no `Done` names it; kept consistent anyway.
            self.backlog.retain(|t| *t != ticket);
        }
        let result = if p.applied_before { Ok(()) } else { result };
        if p.exit_after
            && let Op::Join {
                scope, group, pid, ..
            } = p.op
        {
            self.exit_leave(now, Op::Leave { scope, group, pid }, out);
        }
        if let Some(req) = p.call {
            self.complete_call(req, result, out);
        }
        self.pump(now, out);
    }

    /// Reports the end of a driver call.
    pub(super) fn complete_call(
        &mut self,
        req: RequestId,
        result: Result<(), CallError>,
        out: &mut Out,
    ) {
        if result.is_ok() {
            self.stats.completed_ok += 1;
        } else {
            self.stats.completed_err += 1;
        }
        out.push(RegistryOutput::Completed { req, result });
    }

    /// Local `pid` ended: one ordered leave per occurrence it holds, and pending joins of it
    /// leave again when done. A remote pid is its own node's business: ignored.
    pub(super) fn exit_pid(&mut self, now: Time, pid: Pid, out: &mut Out) {
        if pid.node != self.me.root() {
            return;
        }
        // The pid's own chain: O(its memberships), not O(the node's).
        let leaves: Vec<Op> = self
            .table
            .memberships_of_pid(pid)
            .map(|m| Op::Leave {
                scope: m.scope.clone(),
                group: m.group.clone(),
                pid,
            })
            .collect();
        // O(its pending joins) through the index, not O(pending): a burst of exits would be
        // quadratic, under the state lock.
        for t in self.pending_joins.get(&pid).into_iter().flatten() {
            if let Some(p) = self.pending.get_mut(t) {
                p.exit_after = true;
            }
        }
        for op in leaves {
            self.exit_leave(now, op, out);
        }
    }

    fn exit_leave(&mut self, now: Time, op: Op, out: &mut Out) {
        let ticket = self.internal_ticket();
        self.submit(now, ticket, op, out);
    }

    /// A fresh internal ticket. Numbers never repeat on a node (not even across renewals),
    /// so a late `Done` can only ever match the request it answers.
    pub(super) fn internal_ticket(&mut self) -> Ticket {
        let ticket = Ticket::Exit(self.next_exit);
        self.next_exit += 1;
        ticket
    }

    /// This node renewed from `old` to `self.me`. The other nodes remove the old identity's
    /// memberships on its Down (or on the first sign of the new one), and ignore its ops from
    /// then on. So every local membership is taken out of the table and re-joined through the
    /// bosses: the table then holds exactly what the bosses order, with each multiplicity.
    ///
    /// Requests pending under `old`: one this node already applied (its origin is in the
    /// partition's dedupe window) is in the memberships being re-joined, so a join completes
    /// with the re-join of the same membership; any other is re-issued under a fresh ticket (its
    /// effect under `old`, if any, is removed everywhere). An applied leave is not applied
    /// everywhere yet: the other nodes still list the old identity's memberships until they learn
    /// of the new one. It completes with a re-join (of the same membership if there is one), or,
    /// with none, once ordered again under the new identity (a no-op there): a node applying an
    /// op of the new identity has dropped every membership of `old` first (see `observe`).
    pub(super) fn renew_requests(&mut self, now: Time, old: NodeId, out: &mut Out) {
        let local = self.table.remove_node(self.me.root());
        let old_pending = std::mem::take(&mut self.pending);
        self.pending_joins.clear();
        // Every request is re-issued below (or answered): the window starts empty.
        self.backlog.clear();
        self.in_flight = 0;
        let mut fresh = Vec::new();
        for m in local {
            let ticket = self.internal_ticket();
            let op = Op::Join {
                scope: m.scope,
                group: m.group,
                pid: m.pid,
                meta: m.meta,
            };
            let pending = Pending {
                op,
                attempts: 0,
                boss: self.me,
                exit_after: false,
                call: None,
                persistent: true,
                applied_before: false,
            };
            self.insert_pending(ticket, pending);
            fresh.push(ticket);
        }
        for (ticket, p) in old_pending {
            let key = self.key_of(&p.op);
            let applied = self
                .replicas
                .get(&key)
                .and_then(|r| r.recent.get(&(old, ticket)));
            match (applied, &p.op) {
                (None, _) => {
                    let ticket = self.internal_ticket();
                    let pending = Pending {
                        attempts: 0,
                        boss: self.me,
                        ..p
                    };
                    self.insert_pending(ticket, pending);
                    fresh.push(ticket);
                }
                (Some(_), Op::Join { .. }) => {
                    let carrier = self.pending.values_mut().find(|q| {
                        q.persistent && q.call.is_none() && same_membership(&q.op, &p.op)
                    });
                    if let Some(q) = carrier {
                        q.call = p.call;
                        q.exit_after |= p.exit_after;
                    } else if let Some(req) = p.call {
                        // Applied, then left again by a later op: nothing to carry.
                        self.complete_call(req, Ok(()), out);
                    }
                }
                (Some(false), Op::Leave { .. }) => {
                    let free = |q: &Pending| q.persistent && q.call.is_none();
                    let pick = |same: bool| {
                        self.pending
                            .iter()
                            .find(|(_, q)| free(q) && (!same || same_membership(&q.op, &p.op)))
                            .map(|(t, _)| *t)
                    };
                    let carrier = pick(true).or_else(|| pick(false));
                    let touched = self.pending.values().any(|q| same_membership(&q.op, &p.op));
                    if let Some(q) = carrier.and_then(|t| self.pending.get_mut(&t)) {
                        q.call = p.call;
                    } else if p.call.is_some() && !touched {
                        // Nothing re-joined: order the leave again under the new identity. No
                        // node holds that membership under it, so it removes nothing; its
                        // answer says the others dropped the old identity's memberships.
                        let ticket = self.internal_ticket();
                        let again = Pending {
                            attempts: 0,
                            boss: self.me,
                            persistent: true,
                            applied_before: true,
                            ..p
                        };
                        self.insert_pending(ticket, again);
                        fresh.push(ticket);
                    } else if let Some(req) = p.call {
                        // A later op of the same membership is pending: it must not be undone,
                        // and the old identity's memberships go on the others' Down anyway.
                        self.complete_call(req, Ok(()), out);
                    }
                }
                (Some(refused), Op::Leave { pid, .. }) => {
                    if let Some(req) = p.call {
                        let result = if refused {
                            Err(CallError::Group(GroupError::NotJoined {
                                scope: p.op.scope().clone(),
                                group: p.op.group().clone(),
                                pid: *pid,
                            }))
                        } else {
                            Ok(())
                        };
                        self.complete_call(req, result, out);
                    }
                }
            }
        }
        self.backlog.extend(fresh);
        self.pump(now, out);
    }
}

/// The boss of `key` in `c`'s view (debug checks).
fn placement_boss(c: &CoordinatedGroups, key: &super::groups::Key) -> NodeId {
    c.boss_of(&key.0, key.1)
}

/// Whether two ops name the same `(scope, group, pid)`.
fn same_membership(a: &Op, b: &Op) -> bool {
    a.scope() == b.scope() && a.group() == b.group() && a.pid() == b.pid()
}
