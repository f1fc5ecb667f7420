//! Transport counters: [`Stats`] (live atomics shared by the tasks) and [`TransportStats`] (a
//! plain snapshot for callers).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A snapshot of a transport's counters. All are totals since bind, except `links_up`,
        /// which is the number of links up at the time of the snapshot.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        /// The live counters; relaxed atomics, as each counter is read alone.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $( pub(crate) $name: AtomicU64, )*
        }

        impl Stats {
            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Datagrams handed to the socket.
    datagrams_sent,
    /// Datagrams authenticated and delivered.
    datagrams_received,
    /// Frames written to a link (heartbeats excluded).
    frames_sent,
    /// Frames read from a link and delivered (heartbeats excluded).
    frames_received,
    /// Times a reader sent the kernel's held ACK itself because this node wrote nothing back
    /// on that connection after a read (see `reader.rs`). Linux only.
    acks_flushed,
    /// Payload bytes of sent datagrams and frames.
    bytes_sent,
    /// Payload bytes of delivered datagrams and frames.
    bytes_received,
    /// Handshakes whose proof of the secret was wrong.
    auth_failures,
    /// Handshakes refused for garbage, a wrong magic, version or cluster, or cut short (a
    /// connector that hangs up after its hello may hold another secret).
    bad_handshakes,
    /// Inbound connections closed before sending a byte (port probes, dials their node gave
    /// up): no input, so not bad handshakes.
    silent_connections,
    /// Datagrams refused because they were too short to carry a session, sequence and tag.
    bad_datagrams_truncated,
    /// Datagrams refused because their tag did not verify (wrong key, tampered, foreign).
    bad_datagrams_tag,
    /// Datagrams refused as replays (seen sequence, older than the window, or older session).
    replays,
    /// Oversized datagrams or frames received (a frame closes its connection).
    oversized,
    /// Datagrams larger than the payload cap that callers tried to send (a caller bug).
    datagrams_too_large,
    /// Datagrams dropped because the socket buffer was full or the send failed.
    datagrams_dropped,
    /// `send_frame` calls refused with `QueueFull`.
    queue_full,
    /// `send_frame_or_defer` frames that found the queue full and waited for room.
    frames_deferred,
    /// Queued frames dropped because their link never came up or broke before they were written.
    frames_dropped_no_link,
    /// Datagrams and frames dropped by fault injection (loss, partitions).
    injected_drops,
    /// Outbound connects that failed or timed out.
    connect_failures,
    /// Links currently up.
    links_up,
}

impl Stats {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes one from `counter` (a gauge).
    pub(crate) fn drop_one(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
