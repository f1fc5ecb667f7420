//! Counters of one node runtime (the transport keeps its own).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A monotonically increasing counter, cheap to bump from any task.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) refused_messages: Counter,
    pub(crate) protocol_frames_dropped: Counter,
    pub(crate) messages_to_dead_processes: Counter,
    pub(crate) renewals: Counter,
    pub(crate) peers_left: Counter,
}

/// A snapshot of a node's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeStats {
    /// Membership, group and process messages refused (malformed, from a non-member, stale).
    pub refused_messages: u64,
    /// Protocol frames not queued because the peer's queue was full (repaired by the
    /// protocols' retries and anti-entropy).
    pub protocol_frames_dropped: u64,
    /// Messages that arrived for a process that no longer exists.
    pub messages_to_dead_processes: u64,
    /// Times this node was declared down while running and renewed its identity.
    pub renewals: u64,
    /// Members that said farewell to this node before going (clean shutdowns it saw as such).
    pub peers_left: u64,
    /// Live processes on this node.
    pub processes: u64,
    /// Group memberships this node knows (all nodes').
    pub memberships: u64,
    /// Heap bytes of the group backend.
    pub backend_heap_bytes: u64,
    /// Sessions held by this node's shard replicas (primaries and standbys).
    pub sessions_held: u64,
    /// Heap bytes of those replicas.
    pub sessions_heap_bytes: u64,
    /// Session terms this node started as a primary.
    pub session_terms_started: u64,
    /// Sessions this node re-asserted at new primaries after a failover.
    pub sessions_reasserted: u64,
    /// Session requests sent again (timeouts, refusals, primary changes).
    pub session_requests_resent: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NodeStats {
        NodeStats {
            refused_messages: self.refused_messages.get(),
            protocol_frames_dropped: self.protocol_frames_dropped.get(),
            messages_to_dead_processes: self.messages_to_dead_processes.get(),
            renewals: self.renewals.get(),
            peers_left: self.peers_left.get(),
            ..NodeStats::default()
        }
    }
}
