//! [`Faults`]: fault injection switchable at run time (netem is not available everywhere, and
//! tests must not need root).
//!
//! Faults are local to one transport and keyed by the peer's listen address:
//! - `partitioned`: nothing goes to or comes from the peer. Datagrams both ways and frames both
//!   ways (heartbeats included) are discarded, so an existing link dies by heartbeat timeout as in
//!   a real partition, and new connects to or from the peer fail.
//! - `loss`: the share of outbound datagrams dropped (TCP is reliable, so frames are never lost).
//! - `delay`: added before an outbound datagram or frame leaves; frames keep per-peer FIFO order.
//!
//! Every injected drop is counted in `injected_drops`, never as an error.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshreg_membership::mix64;

/// The faults applied to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PeerFaults {
    /// Extra latency of everything sent to the peer.
    pub delay: Duration,
    /// Probability in `[0, 1]` that a datagram to the peer is dropped.
    pub loss: f64,
    /// Nothing flows either way.
    pub partitioned: bool,
}

#[derive(Debug, Default)]
struct State {
    peers: HashMap<SocketAddrV4, PeerFaults>,
    partition_all: bool,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// False while no fault is set: the hot paths then skip the lock.
    active: AtomicBool,
    /// Seed and counter of the loss dice (a SplitMix64 stream).
    seed: u64,
    rolls: AtomicU64,
}

/// Shared, run-time switchable fault injection of one transport. Cheap to clone; clones control
/// the same faults.
#[derive(Clone, Debug)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl Faults {
    /// No faults; `seed` drives the loss dice.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                active: AtomicBool::new(false),
                seed,
                rolls: AtomicU64::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts), so a
        // poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state();
        f(&mut s);
        s.peers.retain(|_, p| *p != PeerFaults::default());
        let active = s.partition_all || !s.peers.is_empty();
        self.inner.active.store(active, Ordering::Release);
    }

    /// Sets every fault of `peer` at once.
    pub fn set(&self, peer: SocketAddrV4, faults: PeerFaults) {
        self.update(|s| {
            s.peers.insert(peer, faults);
        });
    }

    /// The faults set for `peer` (not counting [`Faults::partition_all`]).
    pub fn get(&self, peer: SocketAddrV4) -> PeerFaults {
        self.state().peers.get(&peer).copied().unwrap_or_default()
    }

    /// Partitions `peer` away (`true`) or heals it (`false`).
    pub fn set_partitioned(&self, peer: SocketAddrV4, partitioned: bool) {
        self.update(|s| s.peers.entry(peer).or_default().partitioned = partitioned);
    }

    /// Drops the share `loss` (clamped to `[0, 1]`) of datagrams to `peer`.
    pub fn set_loss(&self, peer: SocketAddrV4, loss: f64) {
        let loss = if loss.is_nan() {
            0.0
        } else {
            loss.clamp(0.0, 1.0)
        };
        self.update(|s| s.peers.entry(peer).or_default().loss = loss);
    }

    /// Delays everything sent to `peer` by `delay`.
    pub fn set_delay(&self, peer: SocketAddrV4, delay: Duration) {
        self.update(|s| s.peers.entry(peer).or_default().delay = delay);
    }

    /// Partitions this node from every peer (`true`), or lifts that (`false`; per-peer
    /// partitions stay).
    pub fn partition_all(&self, on: bool) {
        self.update(|s| s.partition_all = on);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.update(|s| *s = State::default());
    }

    /// Whether traffic with `peer` is cut.
    pub(crate) fn is_partitioned(&self, peer: SocketAddrV4) -> bool {
        if !self.inner.active.load(Ordering::Acquire) {
            return false;
        }
        let s = self.state();
        s.partition_all || s.peers.get(&peer).is_some_and(|p| p.partitioned)
    }

    /// The delay to add to what is sent to `peer`.
    pub(crate) fn delay(&self, peer: SocketAddrV4) -> Duration {
        if !self.inner.active.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        self.state()
            .peers
            .get(&peer)
            .map_or(Duration::ZERO, |p| p.delay)
    }

    /// Decides the fate of one outbound datagram: `None` to drop it, else the delay to apply.
    pub(crate) fn outbound_datagram(&self, peer: SocketAddrV4) -> Option<Duration> {
        if !self.inner.active.load(Ordering::Acquire) {
            return Some(Duration::ZERO);
        }
        let (p, all) = {
            let s = self.state();
            (
                s.peers.get(&peer).copied().unwrap_or_default(),
                s.partition_all,
            )
        };
        if all || p.partitioned || (p.loss > 0.0 && self.roll() < p.loss) {
            return None;
        }
        Some(p.delay)
    }

    /// A uniform draw in `[0, 1)`.
    fn roll(&self) -> f64 {
        let n = self.inner.rolls.fetch_add(1, Ordering::Relaxed);
        let bits = mix64(self.inner.seed ^ mix64(n)) >> 11;
        // 53 random bits scaled into [0, 1).
        bits as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn no_fault_means_everything_passes_undelayed() {
        let f = Faults::new(1);
        assert!(!f.is_partitioned(peer(1)));
        assert_eq!(f.outbound_datagram(peer(1)), Some(Duration::ZERO));
    }

    #[test]
    fn partition_all_cuts_every_peer_and_clear_heals() {
        let f = Faults::new(1);
        f.partition_all(true);
        assert!(f.is_partitioned(peer(9)));
        assert_eq!(f.outbound_datagram(peer(9)), None);
        f.clear();
        assert!(!f.is_partitioned(peer(9)));
    }

    #[test]
    fn loss_drops_about_its_share() {
        let f = Faults::new(42);
        f.set_loss(peer(1), 0.3);
        let dropped = (0..10_000)
            .filter(|_| f.outbound_datagram(peer(1)).is_none())
            .count();
        assert!((2_500..3_500).contains(&dropped), "{dropped}");
        assert_eq!(f.outbound_datagram(peer(2)), Some(Duration::ZERO));
    }

    #[test]
    fn healing_the_last_fault_of_a_peer_forgets_it() {
        let f = Faults::new(1);
        f.set_partitioned(peer(1), true);
        f.set_partitioned(peer(1), false);
        assert!(!f.inner.active.load(Ordering::Acquire));
    }
}
