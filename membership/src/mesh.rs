//! Full-mesh membership (placeholder until the core lands).

use std::net::SocketAddrV4;

use crate::{Error, LinkEvent, MembershipCore, NodeId, Output, Profile, Time};

/// Full-mesh membership core.
pub struct Mesh {
    id: NodeId,
}

/// Timers of the mesh core.
#[derive(Clone, Debug)]
pub enum MeshTimer {
    /// Periodic heartbeat/timeout check.
    Tick,
}

impl Mesh {
    /// A new mesh core.
    pub fn new(id: NodeId, _cluster: u32, _profile: Profile, _seed: u64) -> Self {
        Self { id }
    }
}

impl MembershipCore for Mesh {
    type Timer = MeshTimer;
    fn id(&self) -> NodeId {
        self.id
    }
    fn start(&mut self, _now: Time, _seeds: &[SocketAddrV4], _out: &mut Vec<Output<MeshTimer>>) {}
    fn handle_datagram(
        &mut self,
        _now: Time,
        _from: SocketAddrV4,
        _bytes: &[u8],
        _out: &mut Vec<Output<MeshTimer>>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn handle_stream(
        &mut self,
        _now: Time,
        _from: SocketAddrV4,
        _bytes: &[u8],
        _out: &mut Vec<Output<MeshTimer>>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn handle_link(&mut self, _now: Time, _event: LinkEvent, _out: &mut Vec<Output<MeshTimer>>) {}
    fn handle_timer(&mut self, _now: Time, _timer: MeshTimer, _out: &mut Vec<Output<MeshTimer>>) {}
    fn leave(&mut self, _now: Time, _out: &mut Vec<Output<MeshTimer>>) {}
    fn num_members(&self) -> usize {
        0
    }
    fn members(&self) -> Vec<NodeId> {
        Vec::new()
    }
}
