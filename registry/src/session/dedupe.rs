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

use super::hash::{NodeKey, SeededState, recent_slot};
use super::message::{Outcome, RequestId};
use super::table::hash_table_bytes;

/// What a shard knows about a request id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Never applied: apply it, then record its outcome with [`Dedupe::record_in`].
    New(Window),
    /// Applied with this outcome: answer it again.
    Done(Outcome),
    /// Below the floor: the outcome is forgotten.
    Expired {
        /// The client's floor.
        floor: u64,
    },
}

/// Where [`Dedupe::check`] found the client's window (`None`: it has none yet), so that
/// recording the outcome does not look the client up again. Valid until the windows change:
/// use it for the request just checked, before anything else is recorded or forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window(Option<usize>);

/// One client's window, serialisable for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientWindow {
    floor: u64,
    /// Sorted by id, ids >= floor.
    answers: VecDeque<(u64, Outcome)>,
}

/// The retry windows of every client node.
///
/// Windows live in rows found through a hashed index, with a direct-mapped hint of recent
/// clients in front: a request is checked, then recorded, and a primary interleaves many
/// clients, so the hint saves two hashed lookups per write. Invariants: `index` maps each
/// row's client to that row and nothing else; a hint is only a row number, checked against
/// the row's client before use.
#[derive(Debug)]
pub(crate) struct Dedupe {
    rows: Vec<(NodeId, ClientWindow)>,
    index: HashMap<NodeKey, u32, SeededState>,
    recent: [u32; RECENT],
    window_max: usize,
}

/// Entries of [`Dedupe::recent`].
const RECENT: usize = 16;

impl Dedupe {
    pub(crate) fn new(window_max: usize, state: SeededState) -> Self {
        Self {
            rows: Vec::new(),
            index: HashMap::with_hasher(state),
            recent: [u32::MAX; RECENT],
            // A zero window would make every retry expire before it is answered.
            window_max: window_max.max(1),
        }
    }

    /// The row of `client`'s window, if it has one (the hint first).
    #[inline]
    fn row(&self, client: &NodeId) -> Option<usize> {
        let hint = self.recent[recent_slot(client, RECENT)] as usize;
        if self.rows.get(hint).is_some_and(|(n, _)| n == client) {
            return Some(hint);
        }
        self.index.get(&NodeKey(*client)).map(|&i| i as usize)
    }

    /// [`Self::row`], remembering the answer in the hint.
    #[inline]
    fn row_hinted(&mut self, client: &NodeId) -> Option<usize> {
        let i = self.row(client)?;
        self.recent[recent_slot(client, RECENT)] = i as u32;
        Some(i)
    }

    /// Prune by the client's `answered_below`, then classify `id`.
    pub(crate) fn check(&mut self, id: RequestId, answered_below: u64) -> Seen {
        let row = self.row_hinted(&id.client);
        let Some(w) = row.map(|i| &mut self.rows[i].1) else {
            return if id.id < answered_below {
                Seen::Expired {
                    floor: answered_below,
                }
            } else {
                Seen::New(Window(None))
            };
        };
        w.raise_floor(answered_below);
        if id.id < w.floor {
            return Seen::Expired { floor: w.floor };
        }
        match w.answers.binary_search_by_key(&id.id, |(i, _)| *i) {
            Ok(at) => Seen::Done(w.answers[at].1.clone()),
            Err(_) => Seen::New(Window(row)),
        }
    }

    /// Loads the oldest remembered id of `client`'s window (the first thing `check` and
    /// `record` read), for read-ahead; the result only feeds a `black_box`.
    pub(crate) fn touch(&self, client: NodeId) -> u64 {
        self.row(&client)
            .and_then(|i| self.rows[i].1.answers.front())
            .map_or(0, |(id, _)| *id)
    }

    /// Remember the outcome of the applied request `id`.
    pub(crate) fn record(&mut self, id: RequestId, answered_below: u64, outcome: Outcome) {
        let window = Window(self.row_hinted(&id.client));
        self.record_in(window, id, answered_below, outcome);
    }

    /// [`Self::record`] into the window [`Self::check`] just found for `id` (a primary checks
    /// every write before applying it: this saves the second lookup of the client).
    pub(crate) fn record_in(
        &mut self,
        window: Window,
        id: RequestId,
        answered_below: u64,
        outcome: Outcome,
    ) {
        let i = match window.0 {
            Some(i) => i,
            None => self.add(id.client, ClientWindow::default()),
        };
        debug_assert_eq!(self.rows[i].0, id.client, "a stale Window");
        let w = &mut self.rows[i].1;
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

    /// A row for `client`, which has none; returns it.
    fn add(&mut self, client: NodeId, window: ClientWindow) -> usize {
        let i = self.rows.len();
        // Fewer than 4 G client nodes; u32::MAX is never a row (an empty hint).
        let row = u32::try_from(i).expect("client rows fit in u32");
        self.rows.push((client, window));
        self.index.insert(NodeKey(client), row);
        self.recent[recent_slot(&client, RECENT)] = row;
        i
    }

    /// Forget a client (its node went down; a restart is a new `NodeId`).
    pub(crate) fn forget(&mut self, client: &NodeId) {
        let Some(i) = self.index.remove(&NodeKey(*client)) else {
            return;
        };
        self.rows.swap_remove(i as usize);
        // The last row moved into the hole: re-point its index entry (hints check the row).
        if let Some((moved, _)) = self.rows.get(i as usize) {
            self.index.insert(NodeKey(*moved), i);
        }
    }

    /// Every window, sorted by client (snapshots).
    pub(crate) fn windows(&self) -> Vec<(NodeId, ClientWindow)> {
        let mut all = self.rows.clone();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }

    /// Restore windows from a snapshot (a client's window replaces the one it had).
    pub(crate) fn restore(&mut self, windows: Vec<(NodeId, ClientWindow)>) {
        for (client, window) in windows {
            match self.row(&client) {
                Some(i) => self.rows[i].1 = window,
                None => {
                    self.add(client, window);
                }
            }
        }
    }

    /// Exact heap bytes owned by the windows.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.rows.capacity() * size_of::<(NodeId, ClientWindow)>()
            + hash_table_bytes::<(NodeKey, u32)>(self.index.capacity())
            + self
                .rows
                .iter()
                .map(|(_, w)| {
                    w.answers.capacity() * size_of::<(u64, Outcome)>()
                        + w.answers.iter().map(|(_, o)| o.heap_bytes()).sum::<usize>()
                })
                .sum::<usize>()
    }
}

impl ClientWindow {
    // Always: called twice per write (check, then record), and left out of line by the
    // compiler's choice at `#[inline]` (cachegrind: -1.2% instructions in the shard bench).
    #[inline(always)]
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
        // No window yet: the outcome goes into a new one.
        let Seen::New(window) = d.check(rid(5), 0) else {
            panic!("id 5 is new");
        };
        d.record_in(window, rid(5), 0, out(1));
        assert_eq!(d.check(rid(5), 5), Seen::Done(out(1)));
        // The client's window, found by the check, takes the next outcome.
        let Seen::New(window) = d.check(rid(6), 6) else {
            panic!("id 6 is new");
        };
        d.record_in(window, rid(6), 6, out(2));
        assert_eq!(d.check(rid(6), 6), Seen::Done(out(2)));
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
    fn forgetting_clients_keeps_every_other_window_and_snapshots_round_trip() {
        let client = |n: u32| NodeId::new(loopback_addr(n, 1), 1);
        let rid = |n: u32, id: u64| RequestId {
            client: client(n),
            id,
        };
        let mut d = Dedupe::new(8, SeededState::new(0));
        for n in 0..40 {
            d.record(rid(n, 1), 0, out(u64::from(n)));
        }
        // Rows move on every forget (the last row fills the hole); hints go stale.
        for n in [3, 39, 0, 17, 38] {
            d.forget(&client(n));
        }
        let gone = |n: u32| [3, 39, 0, 17, 38].contains(&n);
        for n in 0..40 {
            let want = if gone(n) {
                Seen::New(Window(None))
            } else {
                Seen::Done(out(u64::from(n)))
            };
            assert_eq!(d.check(rid(n, 1), 0), want, "client {n}");
        }
        let mut copy = Dedupe::new(8, SeededState::new(9));
        copy.restore(d.windows());
        assert_eq!(copy.windows(), d.windows());
        assert_eq!(copy.windows().len(), 35);
        d.record(rid(3, 2), 0, out(99));
        assert_eq!(d.check(rid(3, 2), 0), Seen::Done(out(99)));
    }

    #[test]
    fn unknown_client_below_its_own_answered_below_is_expired() {
        let mut d = Dedupe::new(2, SeededState::new(0));
        assert_eq!(d.check(rid(3), 4), Seen::Expired { floor: 4 });
    }
}
