//! The deterministic part of a shard: validation, reads, and applying log entries.
//!
//! Primary and standby run the same [`ShardState::apply`] on the same [`LogOp`]s in the same
//! order, so they hold the same sessions and the same retry windows (Architecture Invariant:
//! `apply` depends on nothing but the state and the entry: no time, no randomness, no role).

use std::hint::black_box;

use meshreg_membership::NodeId;

use super::dedupe::Dedupe;
use super::hash::SeededState;
use super::key::{Limits, SessionKey};
use super::message::{Answer, Body, Call, LogOp, Outcome, Policy, Seq, SessionError};
use super::table::SessionTable;
use crate::Pid;

/// How many keys are read ahead of the one being processed (batches and pipelines): enough
/// misses in flight to hide DRAM latency, few enough to stay in L1.
pub(crate) const TOUCH_AHEAD: usize = 32;

/// A `Replace` that took a key from a live process: its node must be told (once durable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) key: SessionKey,
    pub(crate) old: Pid,
    pub(crate) new: Pid,
    pub(crate) version: Seq,
}

/// Sessions, retry windows and the log position they reflect.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub(crate) table: SessionTable,
    pub(crate) dedupe: Dedupe,
    /// Highest log entry applied (0: none).
    pub(crate) applied: Seq,
    pub(crate) limits: Limits,
}

impl ShardState {
    pub(crate) fn new(limits: Limits, hash_seed: u64) -> Self {
        Self {
            table: SessionTable::new(hash_seed),
            dedupe: Dedupe::new(
                limits.dedupe_window,
                SeededState::new(hash_seed.rotate_left(17)),
            ),
            applied: 0,
            limits,
        }
    }

    /// Check a request body against the limits, before anything is applied.
    pub(crate) fn validate(&self, body: &Body, client: NodeId) -> Result<(), SessionError> {
        let max = self.limits.calls_per_request_max;
        match body {
            Body::One(call) => self.check_call(0, call),
            Body::Batch(calls) => {
                if calls.len() > max {
                    return Err(SessionError::TooManyCalls {
                        len: calls.len(),
                        max,
                    });
                }
                calls
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, c)| self.check_call(i, c))
            }
            Body::Reassert(all) => {
                if all.len() > max {
                    return Err(SessionError::TooManyCalls {
                        len: all.len(),
                        max,
                    });
                }
                all.iter().enumerate().try_for_each(|(i, r)| {
                    self.check_sizes(i, &r.key, &r.metadata)?;
                    if r.pid.node != client {
                        return Err(SessionError::ForeignPid {
                            call: i,
                            pid: r.pid,
                        });
                    }
                    Ok(())
                })
            }
        }
    }

    fn check_call(&self, i: usize, call: &Call) -> Result<(), SessionError> {
        match call {
            Call::Register { key, metadata, .. } => self.check_sizes(i, key, metadata),
            Call::Unregister { key, .. } | Call::Lookup { key } => self.check_sizes(i, key, &[]),
        }
    }

    fn check_sizes(
        &self,
        call: usize,
        key: &SessionKey,
        metadata: &[u8],
    ) -> Result<(), SessionError> {
        let (len, max) = (key.len_bytes(), self.limits.key_bytes_max);
        if len > max {
            return Err(SessionError::KeyTooLarge { call, len, max });
        }
        let (len, max) = (metadata.len(), self.limits.metadata_bytes_max);
        if len > max {
            return Err(SessionError::MetadataTooLarge { call, len, max });
        }
        Ok(())
    }

    /// In a batch, before item `i`: every [`TOUCH_AHEAD`] items, read the table memory of the
    /// next [`TOUCH_AHEAD`] keys, so their cache misses overlap.
    #[inline]
    fn read_ahead<T>(&self, items: &[T], i: usize, key: impl Fn(&T) -> &SessionKey) {
        if i.is_multiple_of(TOUCH_AHEAD) {
            let ahead = items[i..].iter().take(TOUCH_AHEAD);
            black_box(self.table.touch_all(ahead.map(key)));
        }
    }

    /// Answer a body without writes (every call a lookup).
    pub(crate) fn read(&self, body: &Body) -> Outcome {
        let lookup = |call: &Call| Answer::Found(self.table.get(call.key()));
        match body {
            Body::One(call) => Outcome::One(lookup(call)),
            Body::Batch(calls) => {
                let mut answers = Vec::with_capacity(calls.len());
                for (i, c) in calls.iter().enumerate() {
                    self.read_ahead(calls, i, Call::key);
                    answers.push(lookup(c));
                }
                Outcome::Many(answers)
            }
            Body::Reassert(_) => Outcome::Many(Vec::new()), // a write: never routed here
        }
    }

    /// Apply the next log entry (it becomes entry `applied + 1`). Returns the outcome of a
    /// client request; pushes a [`Notice`] per key taken from a live process.
    pub(crate) fn apply(&mut self, op: &LogOp, notices: &mut Vec<Notice>) -> Option<Outcome> {
        match op {
            LogOp::Request {
                id,
                answered_below,
                body,
            } => {
                let outcome = self.apply_body(body, notices);
                self.dedupe.record(*id, *answered_below, outcome.clone());
                Some(outcome)
            }
            LogOp::DropNode(node) => {
                self.applied += 1;
                self.table.remove_node(node, None);
                self.dedupe.forget(node);
                None
            }
            LogOp::DropPid(pid) => {
                self.applied += 1;
                self.table.remove_node(&pid.node, Some(pid.serial));
                None
            }
        }
    }

    /// [`Self::apply`] of a `LogOp::Request` with this body, except recording its outcome in
    /// the retry window, which is the caller's. Why apart: a primary applies a request straight
    /// from its body (it builds the log entry only for a standby) and records the outcome in
    /// the window its dedupe check found.
    pub(crate) fn apply_body(&mut self, body: &Body, notices: &mut Vec<Notice>) -> Outcome {
        self.applied += 1;
        let seq = self.applied;
        match body {
            Body::One(call) => Outcome::One(self.call(call, seq, notices)),
            Body::Batch(calls) => {
                let mut answers = Vec::with_capacity(calls.len());
                for (i, c) in calls.iter().enumerate() {
                    self.read_ahead(calls, i, Call::key);
                    answers.push(self.call(c, seq, notices));
                }
                Outcome::Many(answers)
            }
            Body::Reassert(all) => {
                let mut answers = Vec::with_capacity(all.len());
                for (i, r) in all.iter().enumerate() {
                    self.read_ahead(all, i, |r| &r.key);
                    let (key, meta) = (&r.key, &r.metadata);
                    answers.push(self.register(key, r.pid, meta, Policy::Reject, seq, notices));
                }
                Outcome::Many(answers)
            }
        }
    }

    fn call(&mut self, call: &Call, seq: Seq, notices: &mut Vec<Notice>) -> Answer {
        match call {
            Call::Register {
                key,
                pid,
                metadata,
                policy,
            } => self.register(key, *pid, metadata, *policy, seq, notices),
            Call::Unregister { key, pid } => match self.table.holder(key) {
                Some(h) if h == *pid => {
                    self.table.remove(key);
                    Answer::Unregistered
                }
                holder => Answer::NotHolder { holder },
            },
            Call::Lookup { key } => Answer::Found(self.table.get(key)),
        }
    }

    fn register(
        &mut self,
        key: &SessionKey,
        pid: Pid,
        metadata: &[u8],
        policy: Policy,
        version: Seq,
        notices: &mut Vec<Notice>,
    ) -> Answer {
        // One probe for the common cases (free key, or re-registration by the holder).
        let old = self.table.upsert(key, pid, metadata, version, |holder| {
            holder == pid || policy == Policy::Replace || is_dead_generation(holder, pid)
        });
        match old {
            Ok(None) => Answer::Registered { version },
            Ok(Some(old)) if old == pid || is_dead_generation(old, pid) => {
                Answer::Registered { version }
            }
            Ok(Some(old)) => {
                notices.push(Notice {
                    key: key.clone(),
                    old,
                    new: pid,
                    version,
                });
                Answer::Replaced { old, version }
            }
            Err(holder) => Answer::Taken { holder },
        }
    }
}

/// A holder on an older generation of the registering process's node is dead: that node
/// restarted (GUIDE: a new generation is a new identity). Its key is free, whatever the policy,
/// and no notice is due.
fn is_dead_generation(holder: Pid, pid: Pid) -> bool {
    holder.node.addr() == pid.node.addr() && holder.node.generation() < pid.node.generation()
}
