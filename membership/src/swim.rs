//! SWIM membership (placeholder).

use std::net::SocketAddrV4;

use crate::{Error, LinkEvent, MembershipCore, NodeId, Output, Profile, Time};

/// SWIM membership core.
pub struct Swim {
    id: NodeId,
}

/// Timers of the swim core.
#[derive(Clone, Debug)]
pub enum SwimTimer {
    /// Periodic heartbeat/timeout check.
    Tick,
}

impl Swim {
    /// A new swim core.
    pub fn new(id: NodeId, _cluster: u32, _profile: Profile, _seed: u64) -> Self {
        Self { id }
    }
}

impl MembershipCore for Swim {
    type Timer = SwimTimer;
    fn id(&self) -> NodeId {
        self.id
    }
    fn start(&mut self, _now: Time, _seeds: &[SocketAddrV4], _out: &mut Vec<Output<SwimTimer>>) {}
    fn handle_datagram(&mut self, _now: Time, _from: SocketAddrV4, _bytes: &[u8], _out: &mut Vec<Output<SwimTimer>>) -> Result<(), Error> {
        Ok(())
    }
    fn handle_stream(&mut self, _now: Time, _from: SocketAddrV4, _bytes: &[u8], _out: &mut Vec<Output<SwimTimer>>) -> Result<(), Error> {
        Ok(())
    }
    fn handle_link(&mut self, _now: Time, _event: LinkEvent, _out: &mut Vec<Output<SwimTimer>>) {}
    fn handle_timer(&mut self, _now: Time, _timer: SwimTimer, _out: &mut Vec<Output<SwimTimer>>) {}
    fn leave(&mut self, _now: Time, _out: &mut Vec<Output<SwimTimer>>) {}
    fn num_members(&self) -> usize {
        0
    }
    fn members(&self) -> Vec<NodeId> {
        Vec::new()
    }
}
