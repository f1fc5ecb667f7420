//! What a group workload did and what every node's table did, on one virtual timeline, and the
//! invariants checked against it afterwards.
//!
//! [`History`] holds the driver's calls and their completions, every table event of every node
//! (with the time the node logged it) and every membership fact the simulator recorded (events,
//! renewals, starts, crashes). The checkers sweep it in time order; records of one instant keep
//! the order they were recorded in, and a node's own records keep its order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use meshreg_membership::{MemberEvent, NodeId};
use meshreg_registry::Pid;
use meshreg_registry::groups::{GroupName, ScopeName};

use crate::sim::{MemberFact, MemberRecord};

/// A membership: scope, group, pid.
pub type Key = (ScopeName, GroupName, Pid);

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (coordinated: on every node live in the boss's view).
    Ok,
    /// Refused for the caller's mistake (`NotJoined`, foreign pid): nothing changed.
    Refused,
    /// `Unavailable`: nothing known; the op may still be applied later.
    Unavailable,
}

/// One fact of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The driver called `join` (`join: true`) or `leave` on `node`.
    Call {
        /// Request id.
        req: u64,
        /// The calling node (the pid's owner).
        node: u32,
        /// The membership.
        key: Key,
        /// Join or leave.
        join: bool,
    },
    /// A call completed.
    Done {
        /// Request id.
        req: u64,
        /// Its outcome.
        outcome: Outcome,
    },
    /// Process `pid` on `node` ended (no completion: it leaves every group by itself).
    Exit {
        /// The owner.
        node: u32,
        /// The process.
        pid: Pid,
    },
    /// `node`'s table gained (`joined`) or lost one occurrence of `key`.
    Table {
        /// The node.
        node: u32,
        /// The membership.
        key: Key,
        /// Joined or left.
        joined: bool,
    },
    /// A membership fact of `node` (see [`MemberFact`]).
    Member {
        /// The reporting node.
        node: u32,
        /// The fact.
        fact: MemberFact,
    },
}

/// Every record with its virtual time (ns), in recording order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// `(t_ns, record)`.
    pub records: Vec<(u64, Record)>,
    /// Longest one-way delay of a stream frame in the run (frames are FIFO per link, each
    /// delivered within this of its sending): a remote boss sent the `Done` a requester
    /// completes on at most this long before the completion.
    pub answer_delay_ns: u64,
}

/// An invariant broken at a point of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// Virtual ms.
    pub at_ms: f64,
    /// What happened.
    pub what: String,
}

impl History {
    /// Appends a record.
    pub fn push(&mut self, t_ns: u64, r: Record) {
        self.records.push((t_ns, r));
    }

    /// Appends the simulator's membership records.
    pub fn members(&mut self, log: Vec<MemberRecord>) {
        for m in log {
            self.push(
                m.t_ns,
                Record::Member {
                    node: m.node,
                    fact: m.what,
                },
            );
        }
    }

    /// The records sorted by time (stable: one instant keeps recording order).
    pub fn timeline(&self) -> Vec<&(u64, Record)> {
        let mut v: Vec<&(u64, Record)> = self.records.iter().collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }
}

/// A leave completed Ok, and what the nodes may list of its membership afterwards.
struct Bound {
    /// Occurrences the reference model holds after the leave.
    max: u32,
    at_ns: u64,
    /// Nodes the boss may have completed the leave without (see [`stale_reads_after_leave`]).
    exempt: BTreeSet<u32>,
}

/// State of the sweep shared by the checkers.
#[derive(Default)]
struct Sweep {
    /// Per call: (node, key, join, issued ns).
    calls: HashMap<u64, (u32, Key, bool, u64)>,
    /// Calls not completed yet, per key: how many joins.
    joins_open: HashMap<Key, u32>,
    /// Keys a join of which ended `Unavailable` (it may still apply at any time).
    join_unknown: HashSet<Key>,
    /// Exited pids.
    exited: HashSet<Pid>,
    /// The reference model: completed joins minus completed leaves.
    model: HashMap<Key, u32>,
    /// Per node and key: occurrences in that node's table.
    table: HashMap<(u32, Key), i64>,
    /// Identity of each node now.
    current: BTreeMap<u32, NodeId>,
    /// Per node instance (node, start count), the identities it holds Up (reported Up, not Down
    /// since); a crashed instance keeps its last view (its `Done`s may still be in flight).
    live_at: HashMap<(u32, u32), HashSet<NodeId>>,
    /// Starts per node: the current instance of node `n` is `(n, starts[n])`.
    starts: HashMap<u32, u32>,
    /// The instance each identity belongs to.
    instance_of: HashMap<NodeId, (u32, u32)>,
    /// Open leaves: identities each node had while the leave was in flight.
    window: HashMap<u64, BTreeMap<u32, BTreeSet<NodeId>>>,
    /// When each identity last came Up or went Down at each node instance (ns).
    flipped_ns: HashMap<((u32, u32), NodeId), u64>,
}

impl Sweep {
    fn on_member(&mut self, t: u64, node: u32, fact: MemberFact) {
        match fact {
            MemberFact::Started(id) | MemberFact::Renewed(id) => {
                if matches!(fact, MemberFact::Started(_)) {
                    *self.starts.entry(node).or_default() += 1;
                }
                self.instance_of.insert(id, self.instance(node));
                self.current.insert(node, id);
                for w in self.window.values_mut() {
                    w.entry(node).or_default().insert(id);
                }
            }
            MemberFact::Crashed => {
                self.current.remove(&node);
                self.table.retain(|(n, _), _| *n != node);
            }
            MemberFact::Event(MemberEvent::Down(id)) => {
                let at = self.instance(node);
                if let Some(live) = self.live_at.get_mut(&at) {
                    live.remove(&id);
                }
                self.flipped_ns.insert((at, id), t);
            }
            MemberFact::Event(MemberEvent::Up(id)) => {
                let at = self.instance(node);
                self.live_at.entry(at).or_default().insert(id);
                self.flipped_ns.insert((at, id), t);
            }
        }
    }

    fn instance(&self, node: u32) -> (u32, u32) {
        (node, self.starts.get(&node).copied().unwrap_or(0))
    }

    fn open_window(&mut self, req: u64) {
        let w = self
            .current
            .iter()
            .map(|(n, id)| (*n, BTreeSet::from([*id])))
            .collect();
        self.window.insert(req, w);
    }

    /// The nodes exempt from the bound of `req` (called on `requester`, completed at `t`):
    /// those with an identity during its window that, when the boss answered, may not have
    /// been live at some node instance that may have been the boss (the boss answered the
    /// requester, so it is the requester or an identity the requester holds live, with the view
    /// it had last: it may have crashed since it sent its `Done`). The requester as boss
    /// answered at `t`; another boss's `Done` left up to `delay` ns earlier, so an identity that
    /// came Up there since may have been outside its view when it answered. Never the requester
    /// itself: the boss waits for it.
    fn exempt(&mut self, req: u64, requester: u32, t: u64, delay: u64) -> BTreeSet<u32> {
        let w = self.window.remove(&req).unwrap_or_default();
        let empty = HashSet::new();
        let at = self.instance(requester);
        let live_at = |i: &(u32, u32)| self.live_at.get(i).unwrap_or(&empty);
        let mut bosses: Vec<(u32, u32)> = live_at(&at)
            .iter()
            .filter_map(|id| self.instance_of.get(id).copied())
            .collect();
        bosses.push(at);
        w.into_iter()
            .filter(|(n, ids)| {
                *n != requester
                    && ids.iter().any(|id| {
                        bosses.iter().any(|b| {
                            let changed_since_answer = *b != at
                                && self
                                    .flipped_ns
                                    .get(&(*b, *id))
                                    .is_some_and(|&f| f.saturating_add(delay) >= t);
                            b.0 != *n && (!live_at(b).contains(id) || changed_since_answer)
                        })
                    })
            })
            .map(|(n, _)| n)
            .collect()
    }
}

/// Coordinated read-after-leave: once a `leave` of `key` completed Ok at `t`, no node lists
/// more occurrences of `key` after `t` than the reference model held right after `t`, until a
/// later join of `key` is issued.
///
/// Where it legitimately does not apply (each is skipped, not weakened):
/// - a join of `key` was in flight when the leave completed, or one ever ended `Unavailable`
///   (it may be ordered after the leave), or the pid exited by then (its exit leaves complete
///   asynchronously, so the model's count is not an upper bound of anything yet);
/// - a node other than the requester with an identity, at any time between the leave's call and
///   its completion, that may not have been live at some node that may have been the boss when
///   it answered (the requester, or a node live in the requester's view: the boss's `Done` came
///   from one; not live there at the completion, or at a remote boss, came Up or went Down
///   there within one frame delay, `History::answer_delay_ns`, before it): the boss waits only
///   for the nodes live in its own view, so a node cut off from it may
///   keep the old count until it renews, or learns of the owner's next generation, and re-syncs.
///   That covers a node (re)started on the other side of a partition (it gets that side's state,
///   memberships of nodes it never sees included, until the node it got them from declares
///   those Down: it gets no `Down` of its own about a node it never saw `Up`), and the nodes a
///   boss restarted during a cut never saw.
///   The requester itself is always held to the bound (it applied the leave before its `Done`,
///   and nothing may bring it back there), and so are nodes restarted within the boss's view (a
///   fresh table must never learn stale state). A node declared Down only by the other side of
///   a cut is held to it too: the boss's side saw it live and waited for it.
pub fn stale_reads_after_leave(h: &History) -> Vec<Violation> {
    let mut s = Sweep::default();
    let mut bounds: HashMap<Key, Bound> = HashMap::new();
    let mut out = Vec::new();
    for (t, r) in h.timeline() {
        let t = *t;
        match r {
            Record::Member { node, fact } => s.on_member(t, *node, *fact),
            Record::Call {
                req,
                node,
                key,
                join,
            } => {
                s.calls.insert(*req, (*node, key.clone(), *join, t));
                if *join {
                    *s.joins_open.entry(key.clone()).or_default() += 1;
                    bounds.remove(key);
                } else {
                    s.open_window(*req);
                }
            }
            Record::Exit { pid, .. } => {
                s.exited.insert(*pid);
            }
            Record::Done { req, outcome } => {
                let Some((requester, key, join, _)) = s.calls.remove(req) else {
                    continue;
                };
                if join {
                    if let Some(c) = s.joins_open.get_mut(&key) {
                        *c -= 1;
                    }
                    match outcome {
                        Outcome::Ok => *s.model.entry(key).or_default() += 1,
                        Outcome::Unavailable => {
                            s.join_unknown.insert(key);
                        }
                        Outcome::Refused => {}
                    }
                    continue;
                }
                let exempt = s.exempt(*req, requester, t, h.answer_delay_ns);
                if *outcome != Outcome::Ok {
                    continue;
                }
                let m = s.model.entry(key.clone()).or_default();
                *m = m.saturating_sub(1);
                let max = *m;
                let concurrent = s.joins_open.get(&key).is_some_and(|c| *c > 0)
                    || s.join_unknown.contains(&key)
                    || s.exited.contains(&key.2);
                if concurrent {
                    bounds.remove(&key);
                    continue;
                }
                // Every node must already be within the bound when the call returns.
                for ((n, k), c) in &s.table {
                    if *k == key && *c > i64::from(max) && !exempt.contains(n) {
                        out.push(Violation {
                            at_ms: t as f64 / 1e6,
                            what: format!(
                                "leave of {key:?} completed but node {n} still lists it {c} times (model {max})"
                            ),
                        });
                    }
                }
                bounds.insert(
                    key,
                    Bound {
                        max,
                        at_ns: t,
                        exempt,
                    },
                );
            }
            Record::Table { node, key, joined } => {
                let c = s.table.entry((*node, key.clone())).or_default();
                *c += if *joined { 1 } else { -1 };
                let c = *c;
                if let Some(b) = bounds.get(key)
                    && *joined
                    && c > i64::from(b.max)
                    && !b.exempt.contains(node)
                {
                    out.push(Violation {
                        at_ms: t as f64 / 1e6,
                        what: format!(
                            "node {node} lists {key:?} {c} times, after a leave completed at {:.3} ms left {}",
                            b.at_ns as f64 / 1e6,
                            b.max
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The leaves of `keys` completed Ok inside `[from_ns, to_ns)` that left the reference model
/// without any occurrence, with their completion time.
pub fn emptied_by_leave(h: &History, from_ns: u64, to_ns: u64) -> Vec<(Key, u64)> {
    let mut calls: HashMap<u64, (Key, bool)> = HashMap::new();
    let mut model: HashMap<Key, u32> = HashMap::new();
    let mut out = Vec::new();
    for (t, r) in h.timeline() {
        match r {
            Record::Call { req, key, join, .. } => {
                calls.insert(*req, (key.clone(), *join));
            }
            Record::Done {
                req,
                outcome: Outcome::Ok,
            } => {
                let Some((key, join)) = calls.remove(req) else {
                    continue;
                };
                let m = model.entry(key.clone()).or_default();
                if join {
                    *m += 1;
                } else {
                    *m = m.saturating_sub(1);
                    if *m == 0 && (from_ns..to_ns).contains(t) {
                        out.push((key, *t));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Every `Joined` table event of a membership of `pid` (or of `key`, if given) after `after_ns`.
pub fn joined_after(h: &History, pid: Pid, key: Option<&Key>, after_ns: u64) -> Vec<Violation> {
    h.records
        .iter()
        .filter_map(|(t, r)| match r {
            Record::Table {
                node,
                key: k,
                joined: true,
            } if *t > after_ns && k.2 == pid && key.is_none_or(|key| key == k) => Some(Violation {
                at_ms: *t as f64 / 1e6,
                what: format!("node {node} listed {k:?} again"),
            }),
            _ => None,
        })
        .collect()
}
