//! Counters of one coordinated-backend node, for the simulator's `msgs_per_join`.

use super::message::KIND_NAMES;

/// What one node did, since it was created. Plain counters: cheap to keep, summed by drivers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BossStats {
    /// Messages sent, per kind, indexed like [`KIND_NAMES`] (`request`, `apply`, `ack`,
    /// `done`, `nack`, `recover`, `state`, `sync`, `handoff`, `watch`, `gone`; `batch` counts
    /// the frames that carried several of them).
    pub sent: [u64; KIND_NAMES.len()],
    /// Bytes sent (envelopes included).
    pub bytes_sent: u64,
    /// Frames sent (a `Batch` counts once).
    pub frames_sent: u64,
    /// Acks not sent because a later ack of the same partition and term to the same boss,
    /// held in the same burst, says more (acks are cumulative).
    pub acks_coalesced: u64,
    /// Local calls completed with `Ok`.
    pub completed_ok: u64,
    /// Local calls completed with an error (refused or unavailable).
    pub completed_err: u64,
    /// Requests re-sent (timer, or the boss changed in this node's view).
    pub retries: u64,
    /// Nacks received.
    pub nacks_received: u64,
    /// Messages refused by `handle_message` (malformed, non-member).
    pub refused: u64,
    /// Recoveries this node ran as a new boss (completed).
    pub recoveries: u64,
    /// Boss terms this node lost because a node reported a newer epoch.
    pub fenced: u64,
    /// Re-sends to a node whose acks stalled while ops waited for it (lost Applies, Acks or
    /// Syncs repaired, or a node too slow to answer within a resend interval).
    pub resends: u64,
}

impl BossStats {
    /// All messages sent (the messages inside a `Batch`, not the batch frames).
    pub fn messages_sent(&self) -> u64 {
        let batches = KIND_NAMES.iter().position(|k| *k == "batch");
        self.sent
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != batches)
            .map(|(_, n)| n)
            .sum()
    }

    /// Messages sent of the kind named `kind` (see [`KIND_NAMES`]); 0 for an unknown name.
    pub fn sent_of(&self, kind: &str) -> u64 {
        KIND_NAMES
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.sent[i])
    }
}
