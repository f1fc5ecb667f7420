//! The simulated network: latency, loss, duplication, reordering and partitions.

use meshreg_membership::mix64;
use rand::RngExt;
use rand::rngs::SmallRng;

/// How one-way latency is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LatencyModel {
    /// Every message draws uniformly from `[min, max]`.
    Uniform,
    /// Every directed link has a fixed latency in `[min, max]` (derived from a hash of the pair
    /// and the seed, so it costs no memory), plus up to 10% jitter per message.
    PerLink,
}

/// Network parameters. Times in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Smallest one-way latency.
    pub latency_min_ns: u64,
    /// Largest one-way latency.
    pub latency_max_ns: u64,
    /// How latency is drawn.
    pub latency_model: LatencyModel,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a message is held back by up to 3x `latency_max_ns` (datagrams only: stream
    /// frames stay FIFO).
    pub reorder: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            latency_min_ns: 200_000,
            latency_max_ns: 2_000_000,
            latency_model: LatencyModel::Uniform,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// Reachability between nodes: each node sits on a numbered side; a set of blocked
/// (from side, to side) pairs says which directions are cut.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    side: Vec<u8>,
    blocked: Vec<(u8, u8)>,
}

impl Partition {
    /// Everyone on side 0, nothing blocked.
    pub fn new(n: usize) -> Self {
        Self {
            side: vec![0; n],
            blocked: Vec::new(),
        }
    }

    /// Whether a message from `a` can reach `b`.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.blocked.is_empty() || !self.blocked.contains(&(self.side[a], self.side[b]))
    }

    /// Puts each node on the given side and cuts the listed directions.
    pub fn set(&mut self, sides: Vec<u8>, blocked: Vec<(u8, u8)>) {
        self.side = sides;
        self.blocked = blocked;
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any cut is in force.
    pub fn active(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// The side of node `i`.
    pub fn side(&self, i: usize) -> u8 {
        self.side[i]
    }
}

impl NetConfig {
    /// One-way latency for a message from `a` to `b`.
    pub fn latency(&self, rng: &mut SmallRng, seed: u64, a: u32, b: u32) -> u64 {
        let (lo, hi) = (
            self.latency_min_ns,
            self.latency_max_ns.max(self.latency_min_ns),
        );
        match self.latency_model {
            LatencyModel::Uniform => rng.random_range(lo..=hi),
            LatencyModel::PerLink => {
                let h = mix64(seed ^ (u64::from(a) << 32 | u64::from(b)));
                let base = lo + h % (hi - lo + 1);
                base + rng.random_range(0..=base / 10)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn asymmetric_cut_blocks_one_direction_only() {
        let mut p = Partition::new(4);
        p.set(vec![0, 0, 1, 1], vec![(0, 1)]);
        assert!(!p.reachable(0, 2));
        assert!(p.reachable(2, 0));
        assert!(p.reachable(0, 1));
        p.heal();
        assert!(p.reachable(0, 2));
    }

    #[test]
    fn latency_stays_in_range() {
        let mut rng = SmallRng::seed_from_u64(1);
        for model in [LatencyModel::Uniform, LatencyModel::PerLink] {
            let c = NetConfig {
                latency_model: model,
                ..NetConfig::default()
            };
            for i in 0..1000 {
                let l = c.latency(&mut rng, 9, i, i + 1);
                assert!((200_000..=2_200_000).contains(&l), "{l}");
            }
        }
    }
}
