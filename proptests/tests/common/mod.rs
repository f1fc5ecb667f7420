//! Helpers shared by the property suites.

use meshreg_membership::MembershipCore;
use meshreg_proptests::faults::Fault;
use meshreg_proptests::scenario::seeds_for;
use meshreg_proptests::sim::{Factory, NetConfig, Sim};
use proptest::prelude::*;

pub const SEC: u64 = 1_000_000_000;

/// A cluster of `n` nodes that all join within the first second through the seeds.
pub fn booted<C: MembershipCore>(n: u32, seed: u64, factory: Factory<C>) -> Sim<C> {
    let mut sim = Sim::new(n, seed, NetConfig::default(), factory);
    for i in 0..n {
        sim.start_at(i, u64::from(i) * SEC / u64::from(n), &seeds_for(i));
    }
    sim
}

/// Random fault steps (at most a few seconds of virtual time each).
pub fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        3 => (50u32..2_000).prop_map(|ms| Fault::Wait { ms }),
        1 => (2u32..5, any::<bool>()).prop_map(|(modulus, one_way)| Fault::Partition { modulus, one_way }),
        1 => Just(Fault::Heal),
        1 => (0u16..300).prop_map(|permille| Fault::Loss { permille }),
        1 => any::<u32>().prop_map(|node| Fault::Crash { node }),
        1 => any::<u32>().prop_map(|node| Fault::Restart { node }),
        1 => (any::<u32>(), 100u32..3_000).prop_map(|(node, ms)| Fault::Pause { node, ms }),
    ]
}
