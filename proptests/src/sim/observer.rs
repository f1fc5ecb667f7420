//! Ground truth about every node's membership view, kept incrementally from the cores' events.
//!
//! The simulator knows which nodes are really live and which identity (generation) each one runs
//! under; the observer compares every node's reported view against that truth in O(1) per event,
//! so "is the whole cluster converged?" is a counter check even at 10,000 nodes.

use meshreg_membership::{MemberEvent, NodeId, loopback_index};

/// A row of bits, one per node index.
#[derive(Clone, Debug, Default)]
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
        }
    }
    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }
    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// Per-node view bookkeeping and cluster-wide convergence.
///
/// Invariants, for every live node `n`:
/// - `view[n]` has bit `i` set iff `n` reported `Up` for the *current* identity of node `i` and no
///   `Down` since;
/// - `count[n]` = ones in `view[n]`; `dead_listed[n]` = ones whose node is crashed;
/// - `stale[n]` = identities of older generations `n` still lists;
/// - `n` is *good* iff `stale == 0`, `dead_listed == 0` and `count == live - 1`;
/// - `bad` = live nodes that are not good. Converged iff `bad == 0`.
#[derive(Debug)]
pub struct Observer {
    view: Vec<Bits>,
    count: Vec<u32>,
    dead_listed: Vec<u32>,
    stale: Vec<u32>,
    listers: Vec<u32>,
    generation: Vec<u32>,
    live: Vec<bool>,
    faulted: Vec<bool>,
    good: Vec<bool>,
    live_count: u32,
    bad: u32,
    /// Down events about nodes that were never crashed, paused, partitioned or restarted.
    pub false_down: u64,
    /// Up events seen.
    pub ups: u64,
    /// Down events seen.
    pub downs: u64,
}

impl Observer {
    /// `n` nodes, none of them started yet (all counted as crashed until [`Observer::started`]).
    pub fn new(n: usize) -> Self {
        Self {
            view: (0..n).map(|_| Bits::new(n)).collect(),
            count: vec![0; n],
            dead_listed: vec![0; n],
            stale: vec![0; n],
            listers: vec![0; n],
            generation: vec![0; n],
            live: vec![false; n],
            faulted: vec![false; n],
            good: vec![false; n],
            live_count: 0,
            bad: 0,
            false_down: 0,
            ups: 0,
            downs: 0,
        }
    }

    /// True iff every live node lists exactly every other live node, in its current identity.
    pub fn converged(&self) -> bool {
        self.bad == 0 && self.live_count > 0
    }

    /// Live nodes whose view is not yet exact.
    pub fn unconverged_nodes(&self) -> u32 {
        self.bad
    }

    /// How many live nodes list node `i` (its current identity) as up.
    pub fn listers(&self, i: usize) -> u32 {
        self.listers[i]
    }

    /// Whether node `i` runs (it may be paused or partitioned).
    pub fn is_live(&self, i: usize) -> bool {
        self.live[i]
    }

    /// Number of live nodes.
    pub fn live_count(&self) -> u32 {
        self.live_count
    }

    /// Marks node `i` as hit by a fault, so Down events about it are not false.
    pub fn mark_faulted(&mut self, i: usize) {
        self.faulted[i] = true;
    }

    /// Whether node `i` was ever faulted.
    pub fn is_faulted(&self, i: usize) -> bool {
        self.faulted[i]
    }

    fn index(id: &NodeId) -> Option<usize> {
        loopback_index(id.addr()).map(|i| i as usize)
    }

    fn refresh(&mut self, n: usize) {
        let good = self.live[n]
            && self.stale[n] == 0
            && self.dead_listed[n] == 0
            && self.count[n] + 1 == self.live_count;
        if self.live[n] && good != self.good[n] {
            if good {
                self.bad -= 1;
            } else {
                self.bad += 1;
            }
        }
        self.good[n] = good;
    }

    fn refresh_all(&mut self) {
        self.bad = 0;
        for n in 0..self.live.len() {
            self.good[n] = false;
            if self.live[n] {
                self.bad += 1;
            }
            self.refresh(n);
        }
    }

    /// Forgets every listing of node `i`'s current identity: they become stale listings.
    fn retire_identity(&mut self, i: usize) {
        for n in 0..self.view.len() {
            if self.live[n] && self.view[n].get(i) {
                self.view[n].set(i, false);
                self.count[n] -= 1;
                if !self.live[i] {
                    self.dead_listed[n] -= 1;
                }
                self.stale[n] += 1;
            }
        }
        self.listers[i] = 0;
    }

    /// Node `i` (re)starts as `id` with an empty view.
    pub fn started(&mut self, i: usize, id: NodeId) {
        if self.live[i] {
            self.crashed(i);
        }
        if id.generation() != self.generation[i] {
            self.retire_identity(i);
            self.generation[i] = id.generation();
        }
        self.live[i] = true;
        self.live_count += 1;
        // Listings of `i` by live nodes are no longer listings of a dead node.
        for n in 0..self.view.len() {
            if self.live[n] && n != i && self.view[n].get(i) {
                self.dead_listed[n] -= 1;
            }
        }
        self.refresh_all();
    }

    /// Node `i` runs under a new identity without restarting (it renewed itself after a Down
    /// verdict): everyone's listing of the old identity is now stale.
    pub fn renewed(&mut self, i: usize, id: NodeId) {
        self.retire_identity(i);
        self.generation[i] = id.generation();
        for n in 0..self.view.len() {
            self.refresh(n);
        }
    }

    /// Node `i` crashed: its view is gone and listings of it now list a dead node.
    pub fn crashed(&mut self, i: usize) {
        if !self.live[i] {
            return;
        }
        let mine: Vec<usize> = self.view[i].ones().collect();
        for j in mine {
            self.listers[j] -= 1;
        }
        self.view[i].clear();
        self.count[i] = 0;
        self.dead_listed[i] = 0;
        self.stale[i] = 0;
        self.live[i] = false;
        self.live_count -= 1;
        for n in 0..self.view.len() {
            if self.live[n] && self.view[n].get(i) {
                self.dead_listed[n] += 1;
            }
        }
        self.refresh_all();
    }

    /// Node `n` reported `event`.
    pub fn event(&mut self, n: usize, event: MemberEvent) {
        let (id, up) = match event {
            MemberEvent::Up(id) => (id, true),
            MemberEvent::Down(id) => (id, false),
        };
        if up {
            self.ups += 1;
        } else {
            self.downs += 1;
        }
        let Some(i) = Self::index(&id).filter(|i| *i < self.view.len()) else {
            return;
        };
        if !up && !self.faulted[i] {
            self.false_down += 1;
        }
        if !self.live[n] {
            return;
        }
        if id.generation() == self.generation[i] {
            if self.view[n].get(i) == up {
                return;
            }
            self.view[n].set(i, up);
            let d = if up { 1 } else { u32::MAX }; // wrapping +1 / -1
            self.count[n] = self.count[n].wrapping_add(d);
            self.listers[i] = self.listers[i].wrapping_add(d);
            if !self.live[i] {
                self.dead_listed[n] = self.dead_listed[n].wrapping_add(d);
            }
        } else if id.generation() < self.generation[i] {
            self.stale[n] = if up {
                self.stale[n] + 1
            } else {
                self.stale[n].saturating_sub(1)
            };
        }
        self.refresh(n);
    }

    /// Bulk form of a node having `Up` for each node in `ups` (used by parallel preseed).
    pub fn load_view(&mut self, n: usize, ups: &[NodeId]) {
        for id in ups {
            self.event(n, MemberEvent::Up(*id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;

    fn id(i: u32, g: u32) -> NodeId {
        NodeId::new(loopback_addr(i, 1), g)
    }

    #[test]
    fn three_nodes_converge_when_each_lists_the_other_two() {
        let mut o = Observer::new(3);
        for i in 0..3 {
            o.started(i, id(i as u32, 1));
        }
        assert!(!o.converged());
        for n in 0..3 {
            for i in 0..3u32 {
                if i as usize != n {
                    o.event(n, MemberEvent::Up(id(i, 1)));
                }
            }
        }
        assert!(o.converged());
        o.crashed(2);
        assert!(!o.converged(), "0 and 1 still list the dead node");
        o.event(0, MemberEvent::Down(id(2, 1)));
        o.event(1, MemberEvent::Down(id(2, 1)));
        assert!(o.converged());
        assert_eq!(o.false_down, 2, "node 2 was never marked faulted");
    }

    #[test]
    fn a_restarted_node_is_a_new_identity() {
        let mut o = Observer::new(2);
        o.started(0, id(0, 1));
        o.started(1, id(1, 1));
        o.event(0, MemberEvent::Up(id(1, 1)));
        o.event(1, MemberEvent::Up(id(0, 1)));
        assert!(o.converged());
        o.mark_faulted(1);
        o.crashed(1);
        o.started(1, id(1, 2));
        assert!(!o.converged());
        o.event(0, MemberEvent::Up(id(1, 2)));
        o.event(1, MemberEvent::Up(id(0, 1)));
        assert!(!o.converged(), "node 0 still lists generation 1");
        o.event(0, MemberEvent::Down(id(1, 1)));
        assert!(o.converged());
        assert_eq!(o.false_down, 0);
        assert_eq!(o.listers(1), 1);
    }
}
