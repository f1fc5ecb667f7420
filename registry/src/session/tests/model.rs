//! A deliberately naive reference model of one shard's semantics: a `BTreeMap`, a counter, and
//! the policy rules written out plainly. No dedupe, no replication: callers feed each request
//! once, in the order the shard's lineage applied it.

use std::collections::BTreeMap;

use crate::Pid;
use crate::session::{Answer, Body, Call, Outcome, Policy, Seq, Session, SessionKey};

#[derive(Debug, Default)]
pub(super) struct Model {
    pub(super) map: BTreeMap<SessionKey, Session>,
    /// Writes applied so far (each write request is one log entry).
    pub(super) seq: Seq,
}

impl Model {
    pub(super) fn apply(&mut self, body: &Body) -> Outcome {
        if body.is_write() {
            self.seq += 1;
        }
        match body {
            Body::One(call) => Outcome::One(self.call(call)),
            Body::Batch(calls) => Outcome::Many(calls.iter().map(|c| self.call(c)).collect()),
            Body::Reassert(all) => Outcome::Many(
                all.iter()
                    .map(|r| self.register(&r.key, r.pid, &r.metadata, Policy::Reject))
                    .collect(),
            ),
        }
    }

    pub(super) fn drop_pids(&mut self, gone: impl Fn(Pid) -> bool) {
        self.seq += 1;
        self.map.retain(|_, s| !gone(s.pid));
    }

    fn call(&mut self, call: &Call) -> Answer {
        match call {
            Call::Register {
                key,
                pid,
                metadata,
                policy,
            } => self.register(key, *pid, metadata, *policy),
            Call::Unregister { key, pid } => match self.map.get(key) {
                Some(s) if s.pid == *pid => {
                    self.map.remove(key);
                    Answer::Unregistered
                }
                other => Answer::NotHolder {
                    holder: other.map(|s| s.pid),
                },
            },
            Call::Lookup { key } => Answer::Found(self.map.get(key).cloned()),
        }
    }

    fn register(&mut self, key: &SessionKey, pid: Pid, metadata: &[u8], policy: Policy) -> Answer {
        let version = self.seq;
        let session = Session {
            pid,
            metadata: metadata.into(),
            version,
        };
        let holder = self.map.get(key).map(|s| s.pid);
        let dead = |h: Pid| {
            h.node.addr() == pid.node.addr() && h.node.generation() < pid.node.generation()
        };
        match holder {
            None => {
                self.map.insert(key.clone(), session);
                Answer::Registered { version }
            }
            Some(h) if h == pid || dead(h) => {
                self.map.insert(key.clone(), session);
                Answer::Registered { version }
            }
            Some(h) if policy == Policy::Replace => {
                self.map.insert(key.clone(), session);
                Answer::Replaced { old: h, version }
            }
            Some(h) => Answer::Taken { holder: h },
        }
    }

    pub(super) fn sessions(&self) -> Vec<(SessionKey, Session)> {
        self.map
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }
}
