//! Random fault schedules for property tests: a fault phase, then a heal phase that must
//! converge.

use meshreg_membership::MembershipCore;

use crate::sim::Sim;

const MS: u64 = 1_000_000;

/// One step of a fault schedule. Node numbers are taken modulo the cluster size; seeds (nodes
/// 0..3) are never crashed so restarted nodes always have someone to join through.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Let virtual time pass.
    Wait {
        /// Milliseconds.
        ms: u32,
    },
    /// Cut the cluster in two: nodes with `node % modulus == 0` on one side. `one_way` cuts only
    /// the direction from that side to the other.
    Partition {
        /// Side selector.
        modulus: u32,
        /// Asymmetric cut.
        one_way: bool,
    },
    /// Remove every cut.
    Heal,
    /// Set datagram loss (permille).
    Loss {
        /// Loss in 1/1000.
        permille: u16,
    },
    /// Crash a node (it stays down until a `Restart` of the same node).
    Crash {
        /// Node.
        node: u32,
    },
    /// Restart a node as its next generation (crashing it first if it runs).
    Restart {
        /// Node.
        node: u32,
    },
    /// Freeze a node.
    Pause {
        /// Node.
        node: u32,
        /// Milliseconds.
        ms: u32,
    },
}

fn victim(node: u32, n: u32) -> Option<u32> {
    (n > 3).then(|| 3 + node % (n - 3))
}

/// Applies `schedule` to a running simulation.
pub fn apply<C: MembershipCore>(sim: &mut Sim<C>, schedule: &[Fault]) {
    let n = sim.len() as u32;
    for f in schedule {
        match *f {
            Fault::Wait { ms } => sim.run_until(sim.now() + u64::from(ms) * MS),
            Fault::Partition { modulus, one_way } => {
                let m = modulus.max(2);
                let sides = (0..n).map(|i| u8::from(i % m == 0)).collect();
                let blocked = if one_way {
                    vec![(1, 0)]
                } else {
                    vec![(0, 1), (1, 0)]
                };
                sim.partition(sides, blocked);
            }
            Fault::Heal => sim.heal(),
            Fault::Loss { permille } => sim.net_mut().loss = f64::from(permille.min(1000)) / 1000.0,
            Fault::Crash { node } => {
                if let Some(v) = victim(node, n) {
                    sim.crash(v);
                }
            }
            Fault::Restart { node } => {
                if let Some(v) = victim(node, n) {
                    sim.restart(v, &[0, 1, 2]);
                }
            }
            Fault::Pause { node, ms } => {
                if let Some(v) = victim(node, n) {
                    sim.pause(v, u64::from(ms) * MS);
                }
            }
        }
    }
}

/// Ends every fault: heals, clears loss, restarts crashed nodes.
pub fn heal_all<C: MembershipCore>(sim: &mut Sim<C>) {
    sim.heal();
    sim.net_mut().loss = 0.0;
    for i in 0..sim.len() as u32 {
        if !sim.observer().is_live(i as usize) {
            sim.restart(i, &[0, 1, 2]);
        }
    }
}
