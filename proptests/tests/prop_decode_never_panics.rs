//! Invariant: no bytes from the network make a membership core panic. Arbitrary bytes, and
//! arbitrary payloads inside a valid envelope of every kind, are refused with an error or
//! ignored.

use meshreg_membership::wire::{self, Kind};
use meshreg_membership::{MembershipCore, NodeId, Profile, loopback_addr};
use meshreg_proptests::scenario::{SIM_CLUSTER, mesh_factory, swim_factory};
use proptest::prelude::*;
use std::time::Duration;

fn feed<C: MembershipCore>(core: &mut C, bytes: &[u8]) {
    let from = loopback_addr(9, 7946);
    let mut out = Vec::new();
    let _ = core.handle_datagram(Duration::ZERO, from, bytes, &mut out);
    let _ = core.handle_stream(Duration::ZERO, from, bytes, &mut out);
    for kind in [Kind::Swim, Kind::AntiEntropy, Kind::Mesh] {
        let framed = wire::seal(kind, SIM_CLUSTER, bytes);
        let _ = core.handle_datagram(Duration::ZERO, from, &framed, &mut out);
        let _ = core.handle_stream(Duration::ZERO, from, &framed, &mut out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meshreg_proptests::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_cores_never_panic_on_hostile_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let me = NodeId::new(loopback_addr(0, 7946), 1);
        let members: Vec<NodeId> = (0..4).map(|i| NodeId::new(loopback_addr(i, 7946), 1)).collect();
        let mut swim = swim_factory(Profile::Test, 4)(me, 1);
        swim.preseed(Duration::ZERO, &members, &mut Vec::new());
        feed(&mut swim, &bytes);
        let mut mesh = mesh_factory(Profile::Test)(me, 1);
        mesh.preseed(Duration::ZERO, &members, &mut Vec::new());
        feed(&mut mesh, &bytes);
    }
}
