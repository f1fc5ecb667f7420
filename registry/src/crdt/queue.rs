//! The retransmit queue of gossiped deltas: each delta goes out a bounded number of times,
//! least-sent first, packed into one datagram per round (SWIM/memberlist's broadcast queue).

use std::net::SocketAddrV4;

use super::wire::{Delta, encoded_len};

/// Deltas held for retransmission at most; beyond it the most-sent one is dropped (counted:
/// anti-entropy repairs whatever a peer then misses).
pub const QUEUE_CAP: usize = 4_096;

struct Pending {
    delta: Delta,
    /// Encoded size in postcard, computed once, when first needed (0: not yet; no delta encodes
    /// to nothing). A node without peers never sends, so never pays for it.
    len: usize,
    /// Datagrams that carried it so far.
    sent: u32,
}

/// Deltas waiting to be (re)transmitted. Order of the items is the order of `push` and of
/// `retain` only, so a round's content is a function of the inputs (determinism).
#[derive(Default)]
pub struct BroadcastQueue {
    items: Vec<Pending>,
    /// Items sent at least once. While none was, the drop victim of a full queue (the
    /// most-sent, latest-pushed on ties) is the last item: found without a scan, so a node
    /// without peers (nothing ever sent) pays O(1) per local change, not O(QUEUE_CAP).
    sent_items: usize,
}

/// Number of transmissions of each delta: `4 * ceil(log10(n + 1))` for a cluster of `n` nodes
/// (memberlist's retransmit multiplier; foca uses the same shape), i.e. 4 per decimal digit.
pub fn max_transmissions(n: usize) -> u32 {
    let digits = n.max(1).ilog10() + 1;
    4 * digits
}

impl BroadcastQueue {
    /// Queues `delta` for dissemination. Returns how many deltas were dropped for room (0 or 1).
    pub fn push(&mut self, delta: Delta) -> u64 {
        let mut dropped = 0;
        if self.items.len() >= QUEUE_CAP {
            // The most-sent delta has reached the most peers already.
            let victim = if self.sent_items == 0 {
                self.items.len().checked_sub(1)
            } else {
                (0..self.items.len()).max_by_key(|&i| (self.items[i].sent, i))
            };
            if let Some(at) = victim {
                if self.items.remove(at).sent > 0 {
                    self.sent_items -= 1;
                }
                dropped = 1;
            }
        }
        self.items.push(Pending {
            delta,
            len: 0,
            sent: 0,
        });
        dropped
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a queued delta was never sent.
    pub fn has_unsent(&self) -> bool {
        self.items.iter().any(|item| item.sent == 0)
    }

    /// Number of deltas waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The deltas of one round: least-sent first while they fit in `budget` bytes; each taken
    /// delta counts `copies` transmissions and leaves the queue after `max_tx`. A delta larger
    /// than `budget` alone can never be gossiped: it leaves at once (second value: how many),
    /// and anti-entropy carries it instead.
    pub fn take_round(&mut self, budget: usize, copies: u32, max_tx: u32) -> (Vec<Delta>, u64) {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| self.items[i].sent);
        let mut used = 0;
        let mut taken = Vec::new();
        let mut too_large = 0;
        for i in order {
            let item = &mut self.items[i];
            if item.len == 0 {
                item.len = encoded_len(&item.delta);
            }
            if item.len > budget {
                item.sent = u32::MAX;
                too_large += 1;
                continue;
            }
            if used + item.len > budget {
                continue;
            }
            used += item.len;
            if item.sent == 0 && copies > 0 {
                self.sent_items += 1;
            }
            item.sent = item.sent.saturating_add(copies);
            taken.push(item.delta.clone());
        }
        self.items.retain(|item| item.sent < max_tx);
        self.count_sent();
        (taken, too_large)
    }

    /// Drops the deltas of every generation up to `generation` of the owner at `addr` (it went
    /// Down: peers would refuse them anyway).
    pub fn purge(&mut self, addr: SocketAddrV4, generation: u32) {
        self.items.retain(|item| {
            let owner = item.delta.dot.actor;
            owner.addr() != addr || owner.generation() > generation
        });
        self.count_sent();
    }

    /// Recounts `sent_items` after items left (O(n), as the removal itself).
    fn count_sent(&mut self) {
        self.sent_items = self.items.iter().filter(|item| item.sent > 0).count();
    }

    /// Heap bytes: the buffer, each delta's metadata, and the names no other holder shares
    /// (a local call's group name is its own copy; names shared with the table are the
    /// table's to count, and a copy shared by two deltas only is not counted).
    pub fn heap_bytes(&self) -> usize {
        let metas: usize = self
            .items
            .iter()
            .map(|item| match &item.delta.op {
                super::wire::Op::Join {
                    scope, group, meta, ..
                }
                | super::wire::Op::Leave {
                    scope, group, meta, ..
                } => meta.len() + scope.unshared_heap_bytes() + group.unshared_heap_bytes(),
                super::wire::Op::Exit { .. } => 0,
            })
            .sum();
        self.items.capacity() * std::mem::size_of::<Pending>() + metas
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::wire::Op;
    use crdts::Dot;
    use meshreg_membership::{NodeId, loopback_addr};

    fn delta(version: u64) -> Delta {
        Delta {
            dot: Dot::new(NodeId::new(loopback_addr(1, 7000), 1), version),
            op: Op::Exit { serial: version },
        }
    }

    #[test]
    fn transmissions_grow_with_the_digits_of_the_cluster_size() {
        assert_eq!(max_transmissions(5), 4);
        assert_eq!(max_transmissions(10), 8);
        assert_eq!(max_transmissions(1_000), 16);
        assert_eq!(max_transmissions(10_000), 20);
    }

    #[test]
    fn each_delta_leaves_after_max_tx_copies_least_sent_first() {
        let mut q = BroadcastQueue::default();
        q.push(delta(1));
        let (round, _) = q.take_round(1_000, 3, 4);
        assert_eq!(round, vec![delta(1)]);
        q.push(delta(2));
        // delta(2) was never sent: it goes first.
        let (round, _) = q.take_round(1_000, 3, 4);
        assert_eq!(round, vec![delta(2), delta(1)]);
        assert_eq!(q.len(), 1, "delta(1) reached 6 >= 4 copies");
        let (round, _) = q.take_round(1_000, 3, 4);
        assert_eq!(round, vec![delta(2)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_drops_the_most_sent_delta_else_the_newest() {
        let mut q = BroadcastQueue::default();
        for v in 0..QUEUE_CAP as u64 {
            q.push(delta(v));
        }
        // Nothing sent yet: the newest delta makes room.
        assert_eq!(q.push(delta(9_000)), 1);
        assert_eq!(q.len(), QUEUE_CAP);
        assert_eq!(q.items[QUEUE_CAP - 2].delta, delta(QUEUE_CAP as u64 - 2));
        assert_eq!(q.items[QUEUE_CAP - 1].delta, delta(9_000));
        // One round sends the least-sent deltas that fit; the next push drops one of them.
        let one = encoded_len(&delta(1));
        let (round, _) = q.take_round(2 * one, 1, 4);
        assert_eq!(round.len(), 2);
        assert_eq!(q.push(delta(9_001)), 1);
        assert_eq!(q.len(), QUEUE_CAP);
        let dropped = round
            .iter()
            .filter(|d| !q.items.iter().any(|i| &i.delta == *d));
        assert_eq!(dropped.count(), 1, "a sent delta made room");
        assert_eq!(q.items.last().map(|i| &i.delta), Some(&delta(9_001)));
    }

    #[test]
    fn a_round_fills_one_budget_and_the_rest_waits() {
        let mut q = BroadcastQueue::default();
        for v in 1..=10 {
            q.push(delta(v));
        }
        let one = encoded_len(&delta(1));
        let (round, too_large) = q.take_round(3 * one, 1, 4);
        assert_eq!(round.len(), 3);
        assert_eq!(too_large, 0);
        assert_eq!(q.len(), 10);
        let (_, too_large) = q.take_round(one - 1, 1, 4);
        assert_eq!(too_large, 10);
        assert!(q.is_empty());
    }
}
