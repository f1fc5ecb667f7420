//! Random fault schedules for property tests: a fault phase, then a heal phase that must
//! converge.

use meshreg_membership::{MembershipCore, NodeId};

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
    /// Set datagram duplication (permille).
    Duplicate {
        /// Duplication in 1/1000.
        permille: u16,
    },
    /// Set datagram reordering (permille; a reordered datagram is held back up to 3x the
    /// maximum latency).
    Reorder {
        /// Reordering in 1/1000.
        permille: u16,
    },
    /// Freeze a node.
    Pause {
        /// Node.
        node: u32,
        /// Milliseconds.
        ms: u32,
    },
}

/// `steps` as Rust source (`vec![(346, Fault::Partition { .. }), ..]`): a failing property prints
/// it so that the case can be pasted into a regression `#[test]` (a run is a pure function of its
/// parameters and schedule).
pub fn rust_schedule(steps: &[(u32, Fault)]) -> String {
    let items: Vec<String> = steps
        .iter()
        .map(|(ms, f)| format!("({ms}, Fault::{f:?})"))
        .collect();
    format!("vec![{}]", items.join(", "))
}

/// [`rust_schedule`] for a schedule without times (applied with [`apply`]).
pub fn rust_steps(steps: &[Fault]) -> String {
    let items: Vec<String> = steps.iter().map(|f| format!("Fault::{f:?}")).collect();
    format!("vec![{}]", items.join(", "))
}

fn victim(node: u32, n: u32) -> Option<u32> {
    (n > 3).then(|| 3 + node % (n - 3))
}

/// Applies `schedule` to a running simulation.
pub fn apply<C: MembershipCore>(sim: &mut Sim<C>, schedule: &[Fault]) {
    for f in schedule {
        match *f {
            Fault::Wait { ms } => sim.run_until(sim.now() + u64::from(ms) * MS),
            _ => {
                apply_step(sim, f);
            }
        }
    }
}

/// Applies one step now (`Wait` does nothing here: the caller owns the clock). Returns the node
/// the step crashed and the identity it had, if it was running (its processes are gone).
pub fn apply_step<C: MembershipCore>(sim: &mut Sim<C>, f: &Fault) -> Option<(u32, NodeId)> {
    let n = sim.len() as u32;
    let running = |sim: &Sim<C>, v: u32| sim.core(v).is_some().then(|| (v, sim.id(v)));
    match *f {
        Fault::Wait { .. } => None,
        Fault::Partition { modulus, one_way } => {
            let m = modulus.max(2);
            let sides = (0..n).map(|i| u8::from(i % m == 0)).collect();
            let blocked = if one_way {
                vec![(1, 0)]
            } else {
                vec![(0, 1), (1, 0)]
            };
            sim.partition(sides, blocked);
            None
        }
        Fault::Heal => {
            sim.heal();
            None
        }
        Fault::Loss { permille } => {
            sim.net_mut().loss = f64::from(permille.min(1000)) / 1000.0;
            None
        }
        Fault::Duplicate { permille } => {
            sim.net_mut().duplicate = f64::from(permille.min(1000)) / 1000.0;
            None
        }
        Fault::Reorder { permille } => {
            sim.net_mut().reorder = f64::from(permille.min(1000)) / 1000.0;
            None
        }
        Fault::Crash { node } => {
            let v = victim(node, n)?;
            let was = running(sim, v);
            sim.crash(v);
            was
        }
        Fault::Restart { node } => {
            let v = victim(node, n)?;
            let was = running(sim, v);
            sim.restart(v, &[0, 1, 2]);
            was
        }
        Fault::Pause { node, ms } => {
            if let Some(v) = victim(node, n) {
                sim.pause(v, u64::from(ms) * MS);
            }
            None
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
