//! Full-mesh membership: the coordinated backend's view of the cluster.
//!
//! Every node keeps one stream link to every other, as Erlang's `global` does, and [`Mesh`] turns
//! link state plus a handful of messages into [`MemberEvent`]s:
//!
//! - A peer is **Up** once its `Hello` arrives on a link. A `Hello` lists the sender's members
//!   (once per identity), and whoever hears of a node it does not know dials it. A new peer is
//!   introduced (`Peers`) only to the Up peers that list could not name (those Up since it was
//!   sent), so nodes joining at once through different seeds still end up fully meshed, at a
//!   cost linear in concurrent joiners.
//! - [`MembershipCore::preseed`] loads a converged view at once, to start in steady state.
//! - A peer is **Down** when its link breaks, when it says `Leave`, when it stays silent for
//!   [`Profile::mesh_heartbeat_timeout`], or when a newer generation at its address says Hello.
//!   Lost peers are redialled with jittered exponential backoff
//!   ([`Profile::mesh_reconnect_backoff`]) and forgotten after [`FORGET_AFTER_TIMEOUTS`] heartbeat
//!   timeouts (seeds excepted), so crashed nodes do not pile up.
//! - **Down is final for an identity**, as in SWIM. A node that is in fact alive but was declared
//!   Down (a link flap, a long pause) is told so (`Down`) when it next says Hello, renews itself
//!   into its next generation ([`Output::Renewed`]) and says Hello again, which every node accepts
//!   as a new identity. Consumers can therefore tombstone state by generation.
//!
//! Invariants (the tests in `mesh/tests.rs` check them on single cores and on a small cluster):
//! - Per identity, `Event(Up)` is emitted at most once, and `Event(Down)` only after its `Up`, at
//!   most once. Every generation this node declared Down stays recorded, in the peer entry and,
//!   once the entry is forgotten, in a grave of one generation number per address, so it can never
//!   come back Up.
//! - [`MembershipCore::members`] and [`MembershipCore::num_members`] are exactly the identities
//!   whose `Up` was emitted and whose `Down` was not, this node excluded.
//! - Outputs depend only on the seed and the sequence of inputs: state that is iterated lives in
//!   `BTreeMap`s keyed by address, and backoff jitter comes from a seeded `SmallRng`.
//! - An input the core refuses with `Err` changed no state and produced no output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::wire::{self, Kind, MAX_FRAME_PAYLOAD};
use crate::{
    Channel, Error, LinkEvent, MemberEvent, MembershipCore, NodeId, Output, Profile, Time,
};

#[cfg(test)]
mod tests;

/// A peer that stays unreachable (or that left) for this many
/// [`Profile::mesh_heartbeat_timeout`]s is forgotten: no more redials, no peer entry. That is
/// 100 s on `lan`, 10 min on `wan`, 10 s on `test`: long enough to ride out a restart or a short
/// partition, short enough that crashed nodes do not accumulate. Seeds are never forgotten while
/// unreachable (only once they left): they are few, and redialling them at the backoff cap is
/// what heals a partition that outlasted the window.
pub const FORGET_AFTER_TIMEOUTS: u32 = 20;

/// Most node ids one `Hello` or `Peers` message may carry; longer lists are refused while
/// decoding, before they can cause a storm of dials. The mesh targets hundreds of nodes; this is
/// meshreg's overall scale target.
pub const MAX_PEERS_PER_MESSAGE: usize = 10_000;

/// Timers of the mesh core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshTimer {
    /// Every [`Profile::mesh_heartbeat`] while running: heartbeats, silence checks, forgetting.
    Tick,
    /// Redial `peer`. Stale (ignored) unless the peer still waits for this very `attempt`, so
    /// timers of an entry that reconnected meanwhile, or was forgotten and re-created, do nothing.
    Reconnect {
        /// The peer's listen address.
        peer: SocketAddrV4,
        /// Which redial of the core's life this is (unique per core).
        attempt: u64,
    },
}

/// What peers say to each other: postcard inside a [`Kind::Mesh`] envelope, on streams only.
///
/// The variant order is the wire format: append new variants, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Msg {
    /// First frame on every link, from both ends: who I am and whom I consider Up.
    Hello {
        id: NodeId,
        #[serde(deserialize_with = "peer_list")]
        peers: Vec<NodeId>,
    },
    /// Nodes that just came Up in the sender's view: dial the ones you do not know.
    Peers {
        #[serde(deserialize_with = "peer_list")]
        peers: Vec<NodeId>,
    },
    /// Keeps an idle link's peer from timing out.
    Heartbeat,
    /// `id` leaves the cluster for good: Down, and do not redial it.
    Leave { id: NodeId },
    /// "You, `id`, are Down in my view, which holds `view` live nodes (the sender included)":
    /// the receiver renews itself to come back, unless it sees more of the cluster (then the
    /// sender's view is the broken one, see `Mesh::on_down_notice`).
    Down { id: NodeId, view: u32 },
}

/// Decodes a peer list, refusing one longer than [`MAX_PEERS_PER_MESSAGE`] before allocating
/// for it (postcard reports the announced length as the size hint).
fn peer_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    struct Capped;
    impl<'de> Visitor<'de> for Capped {
        type Value = Vec<NodeId>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_PEERS_PER_MESSAGE} node ids")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if let Some(len) = seq.size_hint().filter(|len| *len > MAX_PEERS_PER_MESSAGE) {
                return Err(de::Error::invalid_length(len, &self));
            }
            // No capacity from the hint: decoding must not allocate more than the input holds.
            let mut ids = Vec::new();
            while let Some(id) = seq.next_element()? {
                if ids.len() == MAX_PEERS_PER_MESSAGE {
                    return Err(de::Error::invalid_length(ids.len() + 1, &self));
                }
                ids.push(id);
            }
            Ok(ids)
        }
    }
    d.deserialize_seq(Capped)
}

/// Envelopes `msg` for `cluster`.
fn frame(cluster: u32, msg: &Msg) -> Vec<u8> {
    #[expect(
        clippy::unwrap_used,
        reason = "postcard only fails on maps or sequences of unknown length and on full buffers; \
                  Msg has none of these and the buffer grows"
    )]
    let payload = postcard::to_allocvec(msg).unwrap();
    wire::seal(Kind::Mesh, cluster, &payload)
}

/// Opens and decodes one stream frame; refuses anything but exactly one mesh message.
fn decode(bytes: &[u8], cluster: u32) -> Result<Msg, Error> {
    let (kind, payload) = wire::open(bytes, cluster, MAX_FRAME_PAYLOAD)?;
    if kind != Kind::Mesh {
        return Err(Error::Protocol(format!(
            "a {kind:?} payload on a mesh stream"
        )));
    }
    let (msg, rest) = postcard::take_from_bytes::<Msg>(payload)
        .map_err(|e| Error::Protocol(format!("undecodable mesh message: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Protocol(format!(
            "{} bytes after a mesh message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Where one peer address stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Dialling it, or linked and waiting for its Hello, since `since`.
    Joining { since: Time },
    /// `id` said Hello and is a member, since the [`Mesh::clock`] stamp `since`.
    Up { id: NodeId, since: u64 },
    /// Unreachable: the [`MeshTimer::Reconnect`] with this `attempt` redials it.
    Retrying { attempt: u64 },
    /// The generation in `dead` left: never redialled, forgotten after the window.
    Left,
}

/// One row of the peer table.
#[derive(Clone, Debug)]
struct Peer {
    status: Status,
    /// Newest generation heard of at this address (Hello, Leave or a peer list). A Hello from an
    /// older one is stale, and a list naming one no newer is not news. Never below `dead`.
    newest: Option<u32>,
    /// Newest generation declared Down here (or that left): no generation up to it is ever Up
    /// again in this node's view.
    dead: Option<u32>,
    /// The driver reported the link up, and not down since.
    link_up: bool,
    /// Given to `start`: kept and redialled for ever while unreachable.
    seed: bool,
    /// The identity there has our member list: our Hellos to it carry none. Cleared when the
    /// link breaks (the next may reach a new process) or a newer generation shows up.
    told: bool,
    /// [`Mesh::clock`] stamp of our last list sent on the current link (see `introduce`).
    listed: Option<u64>,
    last_heard: Time,
    last_sent: Time,
    /// When it was last lost (or first heard of, if never Up): the forgetting window starts here.
    lost_since: Time,
    /// Next redial delay before jitter; back to the profile's first delay on every Hello.
    backoff: Duration,
}

impl Peer {
    fn new(now: Time, backoff: Duration, dead: Option<u32>) -> Self {
        Self {
            status: Status::Joining { since: now },
            newest: dead,
            dead,
            link_up: false,
            seed: false,
            told: false,
            listed: None,
            last_heard: now,
            last_sent: now,
            lost_since: now,
            backoff,
        }
    }

    /// Whether a list naming `id` at this address tells us nothing new.
    fn knows(&self, id: NodeId) -> bool {
        self.newest.is_some_and(|g| g >= id.generation())
    }

    /// Records that `id`, Up until now, is Down; returns the event to emit.
    fn lose(&mut self, now: Time, id: NodeId) -> Output<MeshTimer> {
        self.dead = self.dead.max(Some(id.generation()));
        self.lost_since = now;
        Output::Event(MemberEvent::Down(id))
    }

    /// The link is gone: whoever answers the next one may be a new process without our list.
    fn unlink(&mut self) {
        self.link_up = false;
        self.told = false;
        self.listed = None;
    }

    fn up_id(&self) -> Option<NodeId> {
        match self.status {
            Status::Up { id, .. } => Some(id),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Created, `start` not called yet: inputs are handled, but nothing ticks.
    Idle,
    Running,
    /// `leave` was called: final.
    Left,
}

/// Full-mesh membership core: every node links to every other; up/down from link state,
/// heartbeats and a small handshake. See the [module docs](self) for protocol and invariants.
#[derive(Clone, Debug)]
pub struct Mesh {
    id: NodeId,
    cluster: u32,
    profile: Profile,
    rng: SmallRng,
    phase: Phase,
    peers: BTreeMap<SocketAddrV4, Peer>,
    /// Forgotten addresses and the newest generation declared Down there: what keeps "Up at most
    /// once per identity" true after the entry is gone (one number per address, not per node).
    graves: BTreeMap<SocketAddrV4, u32>,
    /// Source of [`MeshTimer::Reconnect`] attempt numbers.
    next_attempt: u64,
    /// Logical clock stamping Ups and lists sent, so [`Mesh::introduce`] orders them exactly,
    /// even within one instant.
    clock: u64,
}

impl Mesh {
    /// A new mesh core for the node `id` of `cluster`; `seed` drives backoff jitter.
    pub fn new(id: NodeId, cluster: u32, profile: Profile, seed: u64) -> Self {
        Self {
            id,
            cluster,
            profile,
            rng: SmallRng::seed_from_u64(seed),
            phase: Phase::Idle,
            peers: BTreeMap::new(),
            graves: BTreeMap::new(),
            next_attempt: 0,
            clock: 0,
        }
    }

    /// The next [`Mesh::clock`] stamp.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Enters `Running` (once) and arms the periodic tick.
    fn run(&mut self, out: &mut Vec<Output<MeshTimer>>) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Running;
            out.push(Output::SetTimer {
                after: self.profile.mesh_heartbeat(),
                timer: MeshTimer::Tick,
            });
        }
    }

    fn first_backoff(&self) -> Duration {
        self.profile.mesh_reconnect_backoff().0
    }

    fn forget_after(&self) -> Duration {
        self.profile
            .mesh_heartbeat_timeout()
            .saturating_mul(FORGET_AFTER_TIMEOUTS)
    }

    fn send(to: SocketAddrV4, payload: Vec<u8>) -> Output<MeshTimer> {
        Output::Send {
            to,
            channel: Channel::Stream,
            payload,
        }
    }

    /// The entry for `addr`, created (Joining, remembering any grave) if missing.
    fn peer_mut(&mut self, now: Time, addr: SocketAddrV4) -> &mut Peer {
        let first = self.first_backoff();
        let graves = &mut self.graves;
        self.peers
            .entry(addr)
            .or_insert_with(|| Peer::new(now, first, graves.remove(&addr)))
    }

    /// Our Hello to the known peer `addr`: it names our members unless the identity there was
    /// already told them, and a list sent is stamped for [`Mesh::introduce`].
    fn hello_to(&mut self, now: Time, addr: SocketAddrV4) -> Output<MeshTimer> {
        let told = self.peers.get(&addr).is_some_and(|p| p.told);
        let peers = if told { Vec::new() } else { self.members() };
        let stamp = self.tick();
        if let Some(peer) = self.peers.get_mut(&addr) {
            peer.last_sent = now;
            peer.listed = if told { peer.listed } else { Some(stamp) };
            peer.told = true;
        }
        let hello = frame(self.cluster, &Msg::Hello { id: self.id, peers });
        Self::send(addr, hello)
    }

    /// Schedules the next redial of `addr` with jittered exponential backoff: the delay is drawn
    /// from [backoff/2, backoff] so peers that lost each other at once do not redial in lockstep.
    fn retry(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<MeshTimer>>) {
        let (_, cap) = self.profile.mesh_reconnect_backoff();
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let half = peer.backoff / 2;
        let half_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let after = half + Duration::from_nanos(self.rng.random_range(0..=half_ns));
        peer.backoff = peer.backoff.saturating_mul(2).min(cap);
        peer.status = Status::Retrying { attempt };
        out.push(Output::SetTimer {
            after,
            timer: MeshTimer::Reconnect {
                peer: addr,
                attempt,
            },
        });
    }

    /// The link to `addr` is gone (or useless, and then we `close` it): an Up peer goes Down;
    /// either way, redial later.
    fn lost(
        &mut self,
        now: Time,
        addr: SocketAddrV4,
        close: bool,
        out: &mut Vec<Output<MeshTimer>>,
    ) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        if let Some(id) = peer.up_id() {
            out.push(peer.lose(now, id));
        }
        if close {
            peer.unlink();
            out.push(Output::Disconnect { to: addr });
        }
        self.retry(addr, out);
    }

    /// Drops the entry of `addr`, keeping only its grave.
    fn forget(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<MeshTimer>>) {
        let Some(peer) = self.peers.remove(&addr) else {
            return;
        };
        if peer.link_up {
            out.push(Output::Disconnect { to: addr });
        }
        if let Some(dead) = peer.dead {
            self.graves.insert(addr, dead);
        }
    }

    /// Peers we have a link to or consider Up: the ones to greet or say goodbye to.
    fn linked(&self) -> Vec<SocketAddrV4> {
        (self.peers.iter())
            .filter(|(_, p)| p.link_up || matches!(p.status, Status::Up { .. }))
            .map(|(addr, _)| *addr)
            .collect()
    }

    /// Refuses frames that cannot be right whatever our state, before anything changes.
    fn check(&self, from: SocketAddrV4, msg: &Msg) -> Result<(), Error> {
        let me = self.id.addr();
        if from == me {
            return Err(Error::Protocol("a mesh frame from our own address".into()));
        }
        match msg {
            Msg::Hello { id, .. } | Msg::Leave { id } if id.addr() != from => Err(Error::Protocol(
                format!("{id} speaks for another address than its link's {from}"),
            )),
            Msg::Down { id, .. } if id.addr() != me => Err(Error::Protocol(format!(
                "a Down notice about {id}, not about us"
            ))),
            _ => Ok(()),
        }
    }

    fn on_link_up(&mut self, now: Time, addr: SocketAddrV4, out: &mut Vec<Output<MeshTimer>>) {
        if addr == self.id.addr() {
            return;
        }
        if self.phase == Phase::Left {
            // A dial from before we left, or a peer redialling us: say goodbye rather than Hello,
            // so it stops redialling.
            out.push(Self::send(
                addr,
                frame(self.cluster, &Msg::Leave { id: self.id }),
            ));
            out.push(Output::Disconnect { to: addr });
            return;
        }
        let peer = self.peer_mut(now, addr);
        peer.link_up = true;
        if let Status::Joining { .. } | Status::Retrying { .. } = peer.status {
            // Its Hello is due within a heartbeat timeout from now.
            peer.status = Status::Joining { since: now };
        }
        // Also on a repeated Up of a live link (both ends dialled): a second Hello is harmless,
        // and without a list once the peer has ours.
        out.push(self.hello_to(now, addr));
    }

    fn on_link_down(&mut self, now: Time, addr: SocketAddrV4, out: &mut Vec<Output<MeshTimer>>) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        peer.unlink();
        match peer.status {
            Status::Up { .. } | Status::Joining { .. } => self.lost(now, addr, false, out),
            // Already lost (we closed it ourselves) or gone for good.
            Status::Retrying { .. } | Status::Left => {}
        }
    }

    fn on_connect_failed(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<MeshTimer>>) {
        let Some(peer) = self.peers.get(&addr) else {
            return;
        };
        // Only a dial in progress can fail; a late failure after the link came up is noise.
        if matches!(peer.status, Status::Joining { .. }) && !peer.link_up {
            self.retry(addr, out);
        }
    }

    fn on_hello(
        &mut self,
        now: Time,
        x: NodeId,
        peers: &[NodeId],
        out: &mut Vec<Output<MeshTimer>>,
    ) {
        let first = self.first_backoff();
        let cluster = self.cluster;
        let since = self.tick();
        let peer = self.peer_mut(now, x.addr());
        if peer.newest.is_some_and(|g| x.generation() < g) {
            // A newer generation lives at this address: this one is a zombie, it will time out.
            return;
        }
        if peer.dead.is_some_and(|g| x.generation() <= g) {
            // Declared Down (or left) in our view, so never Up again: tell it, so it renews.
            peer.last_sent = now;
            let view = self.view_size();
            out.push(Self::send(
                x.addr(),
                frame(cluster, &Msg::Down { id: x, view }),
            ));
            return;
        }
        if peer.newest.is_some_and(|g| x.generation() > g) {
            // A new identity there has not had our list (the one we may have sent on this link
            // went to an older generation we held Down): answer with it.
            peer.told = false;
        }
        peer.newest = Some(x.generation());
        peer.link_up = true;
        peer.last_heard = now;
        match peer.up_id() {
            // Already a member (a repeated Hello): nothing new to report or introduce.
            Some(id) if id == x => {}
            old => {
                if let Some(old) = old {
                    out.push(peer.lose(now, old));
                    // No link break seen: `old` renewed (and has our list) or restarted (and has
                    // not). Our list again is right either way, and one message.
                    peer.told = false;
                }
                peer.status = Status::Up { id: x, since };
                peer.backoff = first;
                out.push(Output::Event(MemberEvent::Up(x)));
                match peer.listed.filter(|_| peer.told) {
                    Some(listed) => self.introduce(now, x, listed, out),
                    // Its Hello overtook our link report, or a new generation: our list, naming
                    // every peer Up here, is one message where introductions would be many.
                    None => out.push(self.hello_to(now, x.addr())),
                }
            }
        }
        self.learn(now, peers, out);
    }

    /// Tells the Up peers that may not know `x` about it: `x` just came Up, and our list went
    /// to it (over its current link) at stamp `listed`.
    ///
    /// Invariant: of any two peers Up here, the one that came Up later was either named to the
    /// other in our list or introduced to it, so they end up linked (each dials what it hears
    /// of). Why: a peer Up (as this identity) since before `listed` was in that list, and `x`
    /// dials it itself; only the ones Up since need `Peers { [x] }`. A peer that comes Up
    /// without our list gets it instead; peers coming Up after `x` get their own turn.
    fn introduce(&mut self, now: Time, x: NodeId, listed: u64, out: &mut Vec<Output<MeshTimer>>) {
        let intro = frame(self.cluster, &Msg::Peers { peers: vec![x] });
        for (addr, peer) in &mut self.peers {
            let Status::Up { since, .. } = peer.status else {
                continue;
            };
            if *addr != x.addr() && since > listed {
                peer.last_sent = now;
                out.push(Self::send(*addr, intro.clone()));
            }
        }
    }

    /// Dials every node of `ids` we do not know: an unknown address, or a newer generation than
    /// any we heard of at a known one. Never ourselves, never a generation we declared Down.
    fn learn(&mut self, now: Time, ids: &[NodeId], out: &mut Vec<Output<MeshTimer>>) {
        for &y in ids {
            if y.addr() == self.id.addr() {
                continue;
            }
            if let Some(peer) = self.peers.get_mut(&y.addr()) {
                if peer.knows(y) {
                    continue;
                }
                peer.newest = Some(y.generation());
                // The newer identity has not had our list (nor our Hello: one we sent on this
                // link went to an older identity, which may since have renewed and forgotten
                // what it did with it), so its Hello gets ours in answer.
                peer.told = false;
                match peer.status {
                    // A dial or a Hello is already under way.
                    Status::Joining { .. } => continue,
                    // Our link may lead to a dead incarnation; redialling a live link only
                    // re-sends Hello, with our list for the newer one.
                    Status::Up { .. } => {}
                    Status::Retrying { .. } | Status::Left => {
                        peer.status = Status::Joining { since: now };
                    }
                }
            } else if self
                .graves
                .get(&y.addr())
                .is_some_and(|g| *g >= y.generation())
            {
                continue;
            } else {
                self.peer_mut(now, y.addr()).newest = Some(y.generation());
            }
            out.push(Output::Connect { to: y.addr() });
        }
    }

    fn on_leave(&mut self, now: Time, x: NodeId, out: &mut Vec<Output<MeshTimer>>) {
        let Some(peer) = self.peers.get_mut(&x.addr()) else {
            return;
        };
        if peer.newest.is_some_and(|g| x.generation() < g) {
            return;
        }
        if let Some(id) = peer.up_id() {
            out.push(Output::Left(id));
            out.push(peer.lose(now, id));
        }
        peer.newest = peer.newest.max(Some(x.generation()));
        peer.dead = peer.dead.max(Some(x.generation()));
        peer.lost_since = now;
        peer.status = Status::Left;
    }

    /// Live nodes in our view, ourselves included (what a `Down` notice carries).
    fn view_size(&self) -> u32 {
        u32::try_from(self.num_members() + 1).unwrap_or(u32::MAX)
    }

    /// The node at `from`, whose view holds `view` live nodes, holds us Down. The side that sees
    /// less of the cluster renews: after a cut heals, only the cut-off node (or minority) does,
    /// as in SWIM, instead of every node the cut-off one held Down. Equal views both renew (two
    /// halves, or a flapping link between two nodes). When we see more, the sender's view is the
    /// broken one: it is Down here too (if it was not already), and told so with our view, so
    /// it renews.
    fn on_down_notice(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        view: u32,
        out: &mut Vec<Output<MeshTimer>>,
    ) {
        let mine = self.view_size();
        if view >= mine {
            self.renew(now, out);
            return;
        }
        let Some(sender) = self.peers.get(&from).and_then(Peer::up_id) else {
            // Already Down here: our answer to its Hello told it so.
            return;
        };
        self.lost(now, from, false, out);
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.last_sent = now;
        }
        let notice = frame(
            self.cluster,
            &Msg::Down {
                id: sender,
                view: mine,
            },
        );
        out.push(Self::send(from, notice));
    }

    /// We are Down in a view at least as large as ours: come back as our next generation with a
    /// fresh view (no Down records: the nodes we held Down are the ones we were cut off from,
    /// and each comes back Up when it says Hello), and say Hello on every link.
    fn renew(&mut self, now: Time, out: &mut Vec<Output<MeshTimer>>) {
        self.id = self.id.next_generation();
        out.push(Output::Renewed(self.id));
        for peer in self.peers.values_mut() {
            peer.dead = None;
        }
        self.graves.clear();
        let linked = self.linked();
        // Our list is the same as before: peers told it under our old identity still have it.
        for addr in linked {
            out.push(self.hello_to(now, addr));
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Output<MeshTimer>>) {
        let heartbeat = self.profile.mesh_heartbeat();
        let timeout = self.profile.mesh_heartbeat_timeout();
        let forget_after = self.forget_after();
        out.push(Output::SetTimer {
            after: heartbeat,
            timer: MeshTimer::Tick,
        });
        let beat = frame(self.cluster, &Msg::Heartbeat);
        let (mut lost, mut forgotten) = (Vec::new(), Vec::new());
        for (addr, peer) in &mut self.peers {
            let silent = now.saturating_sub(peer.last_heard) >= timeout;
            let gone_long = now.saturating_sub(peer.lost_since) >= forget_after;
            match peer.status {
                Status::Up { .. } if silent => lost.push((*addr, true)),
                // Any frame counts as a heartbeat: skip peers we sent to within the period.
                Status::Up { .. } if now.saturating_sub(peer.last_sent) >= heartbeat => {
                    peer.last_sent = now;
                    out.push(Self::send(*addr, beat.clone()));
                }
                // A link that never said Hello is closed. A dial the driver never answered is
                // left to the driver's connect timeout and redialled later, not closed: the
                // peer may be opening a link to us right now (after a heal, both ends redial),
                // and closing would tear down that link too before we heard of it, and a link
                // lost is a member Down at the other end.
                Status::Joining { since } if now.saturating_sub(since) >= timeout => {
                    lost.push((*addr, peer.link_up));
                }
                Status::Retrying { .. } if gone_long && !peer.seed => forgotten.push(*addr),
                Status::Left if gone_long => forgotten.push(*addr),
                _ => {}
            }
        }
        for (addr, close) in lost {
            self.lost(now, addr, close, out);
        }
        for addr in forgotten {
            self.forget(addr, out);
        }
    }

    fn on_reconnect(
        &mut self,
        now: Time,
        addr: SocketAddrV4,
        attempt: u64,
        out: &mut Vec<Output<MeshTimer>>,
    ) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        if peer.status == (Status::Retrying { attempt }) {
            peer.status = Status::Joining { since: now };
            out.push(Output::Connect { to: addr });
        }
    }
}

impl MembershipCore for Mesh {
    type Timer = MeshTimer;

    fn id(&self) -> NodeId {
        self.id
    }

    /// Dials every seed but ourselves and arms the tick. Calling it again only adds seeds;
    /// after `leave` it does nothing (leaving is final).
    fn start(&mut self, now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Output<MeshTimer>>) {
        if self.phase == Phase::Left {
            return;
        }
        for &seed in seeds {
            if seed == self.id.addr() {
                continue;
            }
            let fresh = !self.peers.contains_key(&seed);
            self.peer_mut(now, seed).seed = true;
            if fresh {
                out.push(Output::Connect { to: seed });
            }
        }
        self.run(out);
    }

    /// Loads `members` (but ourselves, known addresses and generations declared Down) as a
    /// converged view: each is Up at once, in address order, and already has our list. Then
    /// dials each (both ends dial, so a link may be reported twice) and arms the tick like
    /// `start`. Members are not seeds: they are forgotten like any peer. No-op after `leave`.
    fn preseed(&mut self, now: Time, members: &[NodeId], out: &mut Vec<Output<MeshTimer>>) {
        if self.phase == Phase::Left {
            return;
        }
        let mut view: BTreeMap<SocketAddrV4, NodeId> = BTreeMap::new();
        for &m in members {
            let addr = m.addr();
            let dead = self.graves.get(&addr).is_some_and(|g| *g >= m.generation());
            let newer = view
                .get(&addr)
                .is_none_or(|id| id.generation() < m.generation());
            if addr != self.id.addr() && !dead && !self.peers.contains_key(&addr) && newer {
                view.insert(addr, m);
            }
        }
        // Listed after every member came Up: no introductions among them (see `introduce`).
        let (since, listed) = (self.tick(), self.tick());
        for &id in view.values() {
            let peer = self.peer_mut(now, id.addr());
            peer.status = Status::Up { id, since };
            peer.newest = Some(id.generation());
            peer.told = true;
            peer.listed = Some(listed);
            out.push(Output::Event(MemberEvent::Up(id)));
        }
        out.extend(view.keys().map(|&to| Output::Connect { to }));
        self.run(out);
    }

    /// The mesh speaks on streams only.
    fn handle_datagram(
        &mut self,
        _now: Time,
        from: SocketAddrV4,
        _bytes: &[u8],
        _out: &mut Vec<Output<MeshTimer>>,
    ) -> Result<(), Error> {
        Err(Error::Protocol(format!(
            "a datagram from {from}: the full mesh uses streams only"
        )))
    }

    fn handle_stream(
        &mut self,
        now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<MeshTimer>>,
    ) -> Result<(), Error> {
        let msg = decode(bytes, self.cluster)?;
        self.check(from, &msg)?;
        if self.phase == Phase::Left {
            return Ok(());
        }
        // Any frame proves the peer alive; a stale Hello is filtered before it counts.
        if !matches!(msg, Msg::Hello { .. })
            && let Some(peer) = self.peers.get_mut(&from)
        {
            peer.last_heard = now;
        }
        match msg {
            Msg::Hello { id, peers } => self.on_hello(now, id, &peers, out),
            Msg::Peers { peers } => self.learn(now, &peers, out),
            Msg::Heartbeat => {}
            Msg::Leave { id } => self.on_leave(now, id, out),
            Msg::Down { id, view } if id == self.id => self.on_down_notice(now, from, view, out),
            // About an identity we already renewed away from.
            Msg::Down { .. } => {}
        }
        Ok(())
    }

    fn handle_link(&mut self, now: Time, event: LinkEvent, out: &mut Vec<Output<MeshTimer>>) {
        match event {
            LinkEvent::Up(addr) => self.on_link_up(now, addr, out),
            // After leaving, broken links and failed dials need nothing more.
            _ if self.phase == Phase::Left => {}
            // The mesh declares a peer Down as soon as its link ends, however it ended.
            LinkEvent::Down(addr) | LinkEvent::Reset(addr) => self.on_link_down(now, addr, out),
            // A peer is Up only while linked, so a refusal (no process at the address) can only
            // answer a dial to a peer that is not Up: a failed dial like any other.
            LinkEvent::ConnectFailed(addr) | LinkEvent::Refused(addr) => {
                self.on_connect_failed(addr, out);
            }
        }
    }

    fn handle_timer(&mut self, now: Time, timer: MeshTimer, out: &mut Vec<Output<MeshTimer>>) {
        if self.phase == Phase::Left {
            return;
        }
        match timer {
            MeshTimer::Tick => self.on_tick(now, out),
            MeshTimer::Reconnect { peer, attempt } => self.on_reconnect(now, peer, attempt, out),
        }
    }

    /// Says `Leave` to every linked peer, then closes each link, then reports every member Down
    /// (our view empties, so `members()` stays equal to the replayed events). Final: no more
    /// ticks, redials or Hellos.
    fn leave(&mut self, now: Time, out: &mut Vec<Output<MeshTimer>>) {
        if self.phase == Phase::Left {
            return;
        }
        self.phase = Phase::Left;
        let bye = frame(self.cluster, &Msg::Leave { id: self.id });
        let linked = self.linked();
        out.extend(linked.iter().map(|addr| Self::send(*addr, bye.clone())));
        out.extend(linked.iter().map(|addr| Output::Disconnect { to: *addr }));
        for peer in self.peers.values_mut() {
            peer.unlink();
            if let Some(id) = peer.up_id() {
                out.push(peer.lose(now, id));
                peer.status = Status::Left;
            }
        }
    }

    fn num_members(&self) -> usize {
        self.peers
            .values()
            .filter(|p| matches!(p.status, Status::Up { .. }))
            .count()
    }

    fn members(&self) -> Vec<NodeId> {
        self.peers.values().filter_map(Peer::up_id).collect()
    }
}
