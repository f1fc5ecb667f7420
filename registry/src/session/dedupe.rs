//! Retry windows: the outcomes of recent mutating requests, per client node.
//!
//! A request id is *remembered* while it is at or above the client's `floor`. The floor rises
//! when the client says every request below some id was answered (`answered_below`), and when
//! the window overflows [`Limits::dedupe_window`](super::Limits::dedupe_window) (the oldest
//! outcome is forgotten). Invariant: every applied request with id >= floor has its outcome in
//! the window, so an id >= floor that is not in the window was never applied.

use std::collections::{HashMap, VecDeque};

use meshreg_membership::NodeId;
use serde::{Deserialize, Serialize};

use super::hash::{NodeKey, SeededState};
use super::message::{Outcome, RequestId};
use super::table::hash_table_bytes;

/// What a shard knows about a request id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Never applied: apply it.
    New,
    /// Applied with this outcome: answer it again.
    Done(Outcome),
    /// Below the floor: the outcome is forgotten.
    Expired {
        /// The client's floor.
        floor: u64,
    },
}

/// One client's window, serialisable for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientWindow {
    floor: u64,
    /// Sorted by id, ids >= floor.
    answers: VecDeque<(u64, Outcome)>,
}

/// The retry windows of every client node.
#[derive(Debug)]
pub(crate) struct Dedupe {
    clients: HashMap<NodeKey, ClientWindow, SeededState>,
    window_max: usize,
}

impl Dedupe {
    pub(crate) fn new(window_max: usize, state: SeededState) -> Self {
        Self {
            clients: HashMap::with_hasher(state),
            // A zero window would make every retry expire before it is answered.
            window_max: window_max.max(1),
        }
    }

    /// Prune by the client's `answered_below`, then classify `id`.
    pub(crate) fn check(&mut self, id: RequestId, answered_below: u64) -> Seen {
        let Some(w) = self.clients.get_mut(&NodeKey(id.client)) else {
            return if id.id < answered_below {
                Seen::Expired {
                    floor: answered_below,
                }
            } else {
                Seen::New
            };
        };
        w.raise_floor(answered_below);
        if id.id < w.floor {
            return Seen::Expired { floor: w.floor };
        }
        match w.answers.binary_search_by_key(&id.id, |(i, _)| *i) {
            Ok(at) => Seen::Done(w.answers[at].1.clone()),
            Err(_) => Seen::New,
        }
    }

    /// Loads the oldest remembered id of `client`'s window (the first thing `check` and
    /// `record` read), for read-ahead; the result only feeds a `black_box`.
    pub(crate) fn touch(&self, client: NodeId) -> u64 {
        self.clients
            .get(&NodeKey(client))
            .and_then(|w| w.answers.front())
            .map_or(0, |(id, _)| *id)
    }

    /// Remember the outcome of the applied request `id`.
    pub(crate) fn record(&mut self, id: RequestId, answered_below: u64, outcome: Outcome) {
        let w = self.clients.entry(NodeKey(id.client)).or_default();
        w.raise_floor(answered_below);
        // Ids mostly arrive in order: push at the back; otherwise insert in place.
        match w.answers.back() {
            Some((last, _)) if *last >= id.id => {
                if let Err(at) = w.answers.binary_search_by_key(&id.id, |(i, _)| *i) {
                    w.answers.insert(at, (id.id, outcome));
                }
            }
            _ => w.answers.push_back((id.id, outcome)),
        }
        while w.answers.len() > self.window_max {
            if let Some((oldest, _)) = w.answers.pop_front() {
                w.floor = oldest + 1;
            }
        }
    }

    /// Forget a client (its node went down; a restart is a new `NodeId`).
    pub(crate) fn forget(&mut self, client: &NodeId) {
        self.clients.remove(&NodeKey(*client));
    }

    /// Every window, sorted by client (snapshots).
    pub(crate) fn windows(&self) -> Vec<(NodeId, ClientWindow)> {
        let mut all: Vec<_> = self.clients.iter().map(|(n, w)| (n.0, w.clone())).collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }

    /// Restore windows from a snapshot.
    pub(crate) fn restore(&mut self, windows: Vec<(NodeId, ClientWindow)>) {
        self.clients
            .extend(windows.into_iter().map(|(n, w)| (NodeKey(n), w)));
    }

    /// Exact heap bytes owned by the windows.
    pub(crate) fn heap_bytes(&self) -> usize {
        hash_table_bytes::<(NodeKey, ClientWindow)>(self.clients.capacity())
            + self
                .clients
                .values()
                .map(|w| {
                    w.answers.capacity() * size_of::<(u64, Outcome)>()
                        + w.answers.iter().map(|(_, o)| o.heap_bytes()).sum::<usize>()
                })
                .sum::<usize>()
    }
}

impl ClientWindow {
    fn raise_floor(&mut self, answered_below: u64) {
        if answered_below > self.floor {
            self.floor = answered_below;
            while self
                .answers
                .front()
                .is_some_and(|(i, _)| *i < answered_below)
            {
                self.answers.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::message::Answer;
    use meshreg_membership::loopback_addr;

    fn rid(id: u64) -> RequestId {
        RequestId {
            client: NodeId::new(loopback_addr(1, 1), 1),
            id,
        }
    }

    fn out(v: u64) -> Outcome {
        Outcome::One(Answer::Registered { version: v })
    }

    #[test]
    fn recorded_outcome_is_returned_until_answered_below_passes_it() {
        let mut d = Dedupe::new(8, SeededState::new(0));
        assert_eq!(d.check(rid(5), 0), Seen::New);
        d.record(rid(5), 0, out(1));
        assert_eq!(d.check(rid(5), 5), Seen::Done(out(1)));
        assert_eq!(d.check(rid(6), 6), Seen::New);
        assert_eq!(d.check(rid(5), 6), Seen::Expired { floor: 6 });
    }

    #[test]
    fn overflowing_the_window_forgets_the_oldest_and_raises_the_floor() {
        let mut d = Dedupe::new(2, SeededState::new(0));
        for i in [1, 3, 2] {
            d.record(rid(i), 0, out(i));
        }
        assert_eq!(d.check(rid(1), 0), Seen::Expired { floor: 2 });
        assert_eq!(d.check(rid(2), 0), Seen::Done(out(2)));
        assert_eq!(d.check(rid(3), 0), Seen::Done(out(3)));
    }

    #[test]
    fn unknown_client_below_its_own_answered_below_is_expired() {
        let mut d = Dedupe::new(2, SeededState::new(0));
        assert_eq!(d.check(rid(3), 4), Seen::Expired { floor: 4 });
    }
}
