//! The requester role: a local call travels to its partition's boss until a `Done` comes back.
//!
//! Invariants:
//! - A ticket is pending from `submit` until exactly one of: a `Done` (then `Completed` with
//!   its result), or `max_attempts` sendings without one (then `Unavailable`).
//! - Re-sending is always safe: bosses recognise `(requester, ticket)` in the partition's
//!   replicated dedupe window, so an op a dead boss already applied is not applied twice.
//! - A pid that exited while one of its joins was pending leaves again once that join is
//!   done, so a late join cannot outlive its process.

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
}

impl CoordinatedGroups {
    /// Registers `op` under `ticket` and sends it to its boss.
    pub(super) fn submit(&mut self, now: Time, ticket: Ticket, op: Op, out: &mut Out) {
        let pending = Pending {
            op,
            attempts: 0,
            boss: self.me,
            exit_after: false,
        };
        self.pending.insert(ticket, pending);
        self.dispatch(now, ticket, out);
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
            self.send(boss, &Message::Request { ticket, op }, out);
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
        if p.attempts >= self.config.max_attempts {
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
        let moved: Vec<Ticket> = self
            .pending
            .iter()
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
            Some(Refusal::ForeignPid) => Err(GroupError::ForeignPid { pid, node: self.me }),
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
        let Some(p) = self.pending.remove(&ticket) else {
            return;
        };
        if p.exit_after
            && let Op::Join {
                scope, group, pid, ..
            } = p.op
        {
            self.exit_leave(now, Op::Leave { scope, group, pid }, out);
        }
        if let Ticket::Call(req) = ticket {
            self.complete_call(req, result, out);
        }
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
        if pid.node != self.me {
            return;
        }
        let leaves: Vec<Op> = self
            .table
            .memberships_of_node(self.me)
            .filter(|m| m.pid == pid)
            .map(|m| Op::Leave {
                scope: m.scope.clone(),
                group: m.group.clone(),
                pid,
            })
            .collect();
        for p in self.pending.values_mut() {
            if matches!(p.op, Op::Join { pid: q, .. } if q == pid) {
                p.exit_after = true;
            }
        }
        for op in leaves {
            self.exit_leave(now, op, out);
        }
    }

    fn exit_leave(&mut self, now: Time, op: Op, out: &mut Out) {
        let ticket = Ticket::Exit(self.next_exit);
        self.next_exit += 1;
        self.submit(now, ticket, op, out);
    }
}
