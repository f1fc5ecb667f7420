//! Simulate a 200-node SWIM cluster in virtual time, crash a node and watch every other node
//! notice: the same protocol cores a real node runs, on a deterministic modelled network.
//!
//! `cargo run --release --example simulate`

use meshreg_membership::Profile;
use meshreg_proptests::scenario::{seeds_for, swim_factory};
use meshreg_proptests::sim::{NetConfig, Sim};

const SEC: u64 = 1_000_000_000;

fn main() {
    let n = 200;
    let net = NetConfig {
        loss: 0.01,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(n, 7, net, swim_factory(Profile::Lan, n));
    for i in 0..n {
        // Everyone joins within the first second through nodes 0, 1 and 2.
        sim.start_at(i, u64::from(i) * SEC / u64::from(n), &seeds_for(i));
    }
    let joined = sim.run_until_or(30 * SEC, |s| {
        s.observer().live_count() == n && s.observer().converged()
    });
    println!(
        "all {n} nodes see each other: {joined} at {:.2} s (virtual)",
        sim.now() as f64 / 1e9
    );

    let victim = 42;
    sim.crash(victim);
    let crashed_at = sim.now();
    let detected = sim.run_until_or(crashed_at + 60 * SEC, |s| {
        s.observer().listers(victim as usize) == 0
    });
    println!(
        "node {victim} crashed; every live node marked it down: {detected}, after {:.2} s",
        (sim.now() - crashed_at) as f64 / 1e9
    );
    let st = sim.stats();
    println!(
        "traffic: {:.1} msgs and {:.0} bytes per node per second; false downs: {}",
        st.msgs as f64 / f64::from(n) / (sim.now() as f64 / 1e9),
        st.bytes as f64 / f64::from(n) / (sim.now() as f64 / 1e9),
        sim.observer().false_down
    );
}
