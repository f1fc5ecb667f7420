//! The deterministic discrete-event simulator.
//!
//! One thread, virtual time in nanoseconds, one seeded RNG for the network: given the same seed
//! and the same schedule of faults, a run replays exactly (checked through [`Sim::trace_hash`]).
//! It drives the very cores the node runtime drives, through [`MembershipCore`], and carries the
//! bytes they produce (envelope included), so traffic figures are the wire's.
//!
//! Lean by construction, so 10,000 nodes fit on a 2-core machine: nodes are indices, views are
//! bit rows in the [`Observer`], per-link state exists only for stream FIFO order and mesh links.
//!
//! Links keep the promise the cores rely on: a stream frame never vanishes from a link that stays
//! up. One that cannot be delivered (across a cut, or on a link whose other end is gone) resets
//! the link instead, as the node runtime's transport does (see `Sim::resets_link`).
//!
//! A crash is a process dying on a live host: its links reset ([`LinkEvent::Reset`]), and a
//! connect to its address, or a stream frame to it (the transport dials on demand), is refused
//! one round trip later ([`LinkEvent::Refused`]). A paused node or one behind a cut refuses
//! nothing: dials time out and frames vanish, as silence.

mod net;
mod observer;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::{
    Channel, LinkEvent, MemberEvent, MembershipCore, NodeId, Output, loopback_addr, loopback_index,
    mix64,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

pub use net::{LatencyModel, NetConfig, Partition};
pub use observer::Observer;

/// Port every simulated node listens on (addresses differ by IP, all in 127.0.0.0/8).
pub const SIM_PORT: u16 = 7946;

/// How long a connect to an unreachable (partitioned) peer takes to fail.
const CONNECT_TIMEOUT_NS: u64 = 1_000_000_000;

/// The simulator index of a node identity (its address), if it is a simulated address.
pub fn index_of_node(id: &NodeId) -> Option<u32> {
    loopback_index(id.addr()).filter(|_| id.addr().port() == SIM_PORT)
}

/// Builds the core of node `id`; `seed` is that instance's own seed.
pub type Factory<C> = Box<dyn Fn(NodeId, u64) -> C + Sync>;

enum What<T> {
    Start {
        node: u32,
        seeds: Box<[SocketAddrV4]>,
    },
    Deliver {
        to: u32,
        from: u32,
        channel: Channel,
        payload: Box<[u8]>,
    },
    Timer {
        node: u32,
        life: u32,
        timer: T,
    },
    Link {
        node: u32,
        life: u32,
        event: LinkEvent,
    },
}

struct Ev<T> {
    time: u64,
    seq: u64,
    what: What<T>,
}

impl<T> PartialEq for Ev<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl<T> Eq for Ev<T> {}
impl<T> PartialOrd for Ev<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Ev<T> {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest (time, seq) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

struct Slot<C> {
    core: Option<C>,
    /// Bumped on crash and restart: timers and link events of an older instance are dropped.
    life: u32,
    generation: u32,
    paused_until: u64,
}

/// Traffic and activity counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Messages handed to the network.
    pub msgs: u64,
    /// Bytes handed to the network (envelope + payload; UDP/IP/TCP headers not counted).
    pub bytes: u64,
    /// Bytes sent per node.
    pub bytes_by_node: Vec<u64>,
    /// Messages lost to loss, partitions or dead receivers.
    pub dropped: u64,
    /// Inputs a core refused as malformed (should stay 0 between honest cores).
    pub refused: u64,
    /// Events processed by the loop.
    pub events: u64,
    /// Messages sent per envelope kind (index = the kind byte; 0 = no envelope).
    pub msgs_by_kind: [u64; 8],
    /// Bytes sent per envelope kind.
    pub bytes_by_kind: [u64; 8],
}

/// The simulator over cores of type `C`.
pub struct Sim<C: MembershipCore> {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Ev<C::Timer>>,
    slots: Vec<Slot<C>>,
    net: NetConfig,
    partition: Partition,
    rng: SmallRng,
    seed: u64,
    factory: Factory<C>,
    observer: Observer,
    stats: Stats,
    stream_last: HashMap<(u32, u32), u64>,
    links: Vec<BTreeSet<u32>>,
    /// `(holder, peer)`: a link whose `peer` end is gone (reset across a cut, closed or crashed
    /// while the news could not cross) but whose `holder` was not told and still counts it up.
    /// The holder learns by silence, or by its next frame on it (see [`Sim::send`]).
    half_open: BTreeSet<(u32, u32)>,
    trace: u64,
    out: Vec<Output<C::Timer>>,
    /// `Some` while membership events are recorded (see [`Sim::record_members`]).
    member_log: Option<Vec<MemberRecord>>,
}

/// A membership fact a node reported, with its virtual time (see [`Sim::record_members`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// Virtual ns.
    pub t_ns: u64,
    /// The reporting node.
    pub node: u32,
    /// What it reported.
    pub what: MemberFact,
}

/// What a [`MemberRecord`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberFact {
    /// The node's membership core reported this event.
    Event(MemberEvent),
    /// The node renewed its identity to this one.
    Renewed(NodeId),
    /// The node (re)started as this identity.
    Started(NodeId),
    /// The node crashed.
    Crashed,
}

/// Folds `v` into the running hash `h`.
fn mix(h: u64, v: u64) -> u64 {
    mix64(h ^ v)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: MembershipCore> Sim<C> {
    /// A network of `nodes` nodes, none started yet.
    pub fn new(nodes: u32, seed: u64, net: NetConfig, factory: Factory<C>) -> Self {
        let n = nodes as usize;
        Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slots: (0..n)
                .map(|_| Slot {
                    core: None,
                    life: 0,
                    generation: 0,
                    paused_until: 0,
                })
                .collect(),
            net,
            partition: Partition::new(n),
            rng: SmallRng::seed_from_u64(seed),
            seed,
            factory,
            observer: Observer::new(n),
            stats: Stats {
                bytes_by_node: vec![0; n],
                ..Stats::default()
            },
            stream_last: HashMap::new(),
            links: vec![BTreeSet::new(); n],
            half_open: BTreeSet::new(),
            trace: seed,
            out: Vec::new(),
            member_log: None,
        }
    }

    /// Virtual time now, in nanoseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of nodes (started or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The address of node `i`.
    pub fn addr(i: u32) -> SocketAddrV4 {
        loopback_addr(i, SIM_PORT)
    }

    /// The current identity of node `i`.
    pub fn id(&self, i: u32) -> NodeId {
        NodeId::new(Self::addr(i), self.slots[i as usize].generation)
    }

    /// Ground truth and convergence.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// Traffic counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The core of node `i`, if it runs.
    pub fn core(&self, i: u32) -> Option<&C> {
        self.slots[i as usize].core.as_ref()
    }

    /// The core of node `i`, mutably (to drain logs a core keeps; to call it, use
    /// [`Sim::invoke`] so its outputs are carried out).
    pub fn core_mut(&mut self, i: u32) -> Option<&mut C> {
        self.slots[i as usize].core.as_mut()
    }

    /// Calls into node `i`'s core at the current virtual time (a local API call such as a group
    /// join) and carries out the outputs. False if the node is not running or is paused.
    pub fn invoke(
        &mut self,
        i: u32,
        f: impl FnOnce(&mut C, Duration, &mut Vec<Output<C::Timer>>),
    ) -> bool {
        let idx = i as usize;
        if self.slots[idx].paused_until > self.now {
            return false;
        }
        let now = Duration::from_nanos(self.now);
        let mut out = std::mem::take(&mut self.out);
        let Some(core) = self.slots[idx].core.as_mut() else {
            self.out = out;
            return false;
        };
        f(core, now, &mut out);
        self.trace = mix(self.trace, 0x1F ^ u64::from(i) ^ self.now << 8);
        self.apply_outputs_from(i, &mut out, 0);
        self.out = out;
        true
    }

    /// A hash of everything that happened so far: same seed and schedule, same hash.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Starts recording every membership event, renewal, start and crash with its time (off by
    /// default: a large run would keep them all). Recording changes nothing else.
    pub fn record_members(&mut self) {
        self.member_log.get_or_insert_with(Vec::new);
    }

    /// The records since the last drain, in the order they happened.
    pub fn drain_members(&mut self) -> Vec<MemberRecord> {
        self.member_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note(&mut self, node: u32, what: MemberFact) {
        if let Some(log) = self.member_log.as_mut() {
            log.push(MemberRecord {
                t_ns: self.now,
                node,
                what,
            });
        }
    }

    /// The network model now.
    pub fn net(&self) -> &NetConfig {
        &self.net
    }

    /// The network parameters (loss can be changed during a run).
    pub fn net_mut(&mut self) -> &mut NetConfig {
        &mut self.net
    }

    fn push(&mut self, time: u64, what: What<C::Timer>) {
        self.seq += 1;
        self.queue.push(Ev {
            time,
            seq: self.seq,
            what,
        });
    }

    fn instance_seed(&self, i: u32, generation: u32) -> u64 {
        mix(self.seed, u64::from(i) | u64::from(generation) << 32)
    }

    fn create(&mut self, i: u32) -> NodeId {
        let slot = &mut self.slots[i as usize];
        // A (re)start is a new creation: renewals of the previous process do not carry over.
        let id = NodeId::new(Self::addr(i), slot.generation).next_creation();
        slot.generation = id.generation();
        slot.life += 1;
        let seed = self.instance_seed(i, id.generation());
        self.slots[i as usize].core = Some((self.factory)(id, seed));
        self.observer.started(i as usize, id);
        self.note(i, MemberFact::Started(id));
        id
    }

    /// Starts node `i` at virtual time `at` (>= now), joining through `seeds`.
    pub fn start_at(&mut self, i: u32, at: u64, seeds: &[u32]) {
        let seeds: Box<[SocketAddrV4]> = seeds.iter().map(|s| Self::addr(*s)).collect();
        self.push(at.max(self.now), What::Start { node: i, seeds });
    }

    /// Starts every node as a member of an already converged cluster (as if restored from a
    /// snapshot), each node's timers offset uniformly in `[0, offset_max_ns)`. Node cores are
    /// built on `threads` threads (each is independent and seeded, so the result is the same
    /// whatever the thread count); everything after runs on this thread.
    pub fn preseed_all(&mut self, offset_max_ns: u64, threads: usize)
    where
        C: Send,
        C::Timer: Send,
    {
        let n = self.slots.len() as u32;
        let members: Vec<NodeId> = (0..n)
            .map(|i| NodeId::new(Self::addr(i), 0).next_creation())
            .collect();
        // Everyone is live before any view is loaded, so each Up lands on a live identity.
        for (i, id) in members.iter().enumerate() {
            self.observer.started(i, *id);
            self.note(i as u32, MemberFact::Started(*id));
        }
        let batch = threads.max(1) * 8;
        let mut outs = Vec::with_capacity(n as usize);
        let mut start = 0u32;
        while start < n {
            let end = (start + batch as u32).min(n);
            let seeds: Vec<(u32, u64)> = (start..end)
                .map(|i| (i, self.instance_seed(i, 1)))
                .collect();
            let factory = &self.factory;
            let members = &members;
            let built: Vec<(C, Vec<Output<C::Timer>>)> = std::thread::scope(|s| {
                let chunk = seeds.len().div_ceil(threads.max(1));
                let handles: Vec<_> = seeds
                    .chunks(chunk.max(1))
                    .map(|part| {
                        s.spawn(move || {
                            part.iter()
                                .map(|&(i, seed)| {
                                    let mut core = factory(members[i as usize], seed);
                                    let mut out = Vec::new();
                                    core.preseed(Duration::ZERO, members, &mut out);
                                    (core, out)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            for (k, (core, mut out)) in built.into_iter().enumerate() {
                let i = start + k as u32;
                let slot = &mut self.slots[i as usize];
                slot.generation = members[i as usize].generation();
                slot.life += 1;
                slot.core = Some(core);
                // Events (one Up per member) concern this node alone: observed now, not
                // held with the sends, which at 10,000 nodes were 10^8 held outputs.
                out.retain(|o| match o {
                    Output::Event(e) => {
                        self.observer.event(i as usize, *e);
                        if let Some(log) = self.member_log.as_mut() {
                            log.push(MemberRecord {
                                t_ns: self.now,
                                node: i,
                                what: MemberFact::Event(*e),
                            });
                        }
                        false
                    }
                    _ => true,
                });
                out.shrink_to_fit();
                outs.push(out);
            }
            start = end;
        }
        // Outputs only once every core exists: a stream frame sent during preseed (a registry's
        // first sync) to a node of a later batch would otherwise be refused as if nothing
        // listened there, and the refusal taken for a dead process.
        for (i, out) in outs.into_iter().enumerate() {
            let offset = if offset_max_ns > 0 {
                self.rng.random_range(0..offset_max_ns)
            } else {
                0
            };
            self.apply_outputs(i as u32, out, offset);
        }
    }

    /// Crashes node `i`: its state is gone, its links reset, messages to it are dropped.
    pub fn crash(&mut self, i: u32) {
        let idx = i as usize;
        if self.slots[idx].core.take().is_none() {
            return;
        }
        self.slots[idx].life += 1;
        self.observer.mark_faulted(idx);
        self.observer.crashed(idx);
        self.note(i, MemberFact::Crashed);
        self.trace = mix(self.trace, 0xC0 ^ u64::from(i) ^ self.now << 8);
        if !self.links.is_empty() {
            // Its own ends of links died with it.
            self.half_open.retain(|&(holder, _)| holder != i);
            // The process died but its host lives: peers see their connections reset, unless the
            // reset cannot cross a cut (then their ends stay half-open).
            let peers: Vec<u32> = std::mem::take(&mut self.links[idx]).into_iter().collect();
            for p in peers {
                self.links[p as usize].remove(&i);
                if self.partition.reachable(idx, p as usize) {
                    let lat = self.net.latency(&mut self.rng, self.seed, i, p);
                    self.link_down(p, i, self.now + lat, true);
                } else {
                    self.half_open.insert((p, i));
                }
            }
        }
    }

    /// Restarts node `i` (crashing it first if it runs) as its next generation, joining through
    /// `seeds`.
    pub fn restart(&mut self, i: u32, seeds: &[u32]) {
        self.crash(i);
        self.observer.mark_faulted(i as usize);
        self.start_at(i, self.now, seeds);
    }

    /// Freezes node `i` for `dur_ns`: nothing it receives or schedules is processed until then,
    /// after which it all arrives at once (a GC pause, a stopped VM).
    pub fn pause(&mut self, i: u32, dur_ns: u64) {
        self.observer.mark_faulted(i as usize);
        self.slots[i as usize].paused_until = self.now + dur_ns;
    }

    /// Puts node `k` on side `sides[k]` and cuts the directions in `blocked`; every node on a
    /// side involved in a cut is marked faulted.
    pub fn partition(&mut self, sides: Vec<u8>, blocked: Vec<(u8, u8)>) {
        for (k, s) in sides.iter().enumerate() {
            if blocked.iter().any(|(a, b)| a == s || b == s) {
                self.observer.mark_faulted(k);
            }
        }
        self.partition.set(sides, blocked);
        self.trace = mix(self.trace, 0xAA ^ self.now);
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.partition.heal();
        self.trace = mix(self.trace, 0xBB ^ self.now);
    }

    /// Runs every event up to and including virtual time `t`.
    pub fn run_until(&mut self, t: u64) {
        while self.queue.peek().is_some_and(|e| e.time <= t) {
            if let Some(ev) = self.queue.pop() {
                self.now = ev.time;
                self.dispatch(ev.what);
            }
        }
        self.now = self.now.max(t);
    }

    /// Runs until `pred` holds (checked after each event) or virtual time `t`; returns whether
    /// it held.
    pub fn run_until_or(&mut self, t: u64, mut pred: impl FnMut(&Self) -> bool) -> bool {
        if pred(self) {
            return true;
        }
        while self.queue.peek().is_some_and(|e| e.time <= t) {
            if let Some(ev) = self.queue.pop() {
                self.now = ev.time;
                self.dispatch(ev.what);
                if pred(self) {
                    return true;
                }
            }
        }
        self.now = self.now.max(t);
        pred(self)
    }

    fn target(what: &What<C::Timer>) -> u32 {
        match what {
            What::Start { node, .. } | What::Timer { node, .. } | What::Link { node, .. } => *node,
            What::Deliver { to, .. } => *to,
        }
    }

    fn dispatch(&mut self, what: What<C::Timer>) {
        self.stats.events += 1;
        let i = Self::target(&what);
        let idx = i as usize;
        if self.slots[idx].paused_until > self.now {
            let until = self.slots[idx].paused_until;
            self.push(until, what);
            return;
        }
        let now = Duration::from_nanos(self.now);
        let mut out = std::mem::take(&mut self.out);
        let life = self.slots[idx].life;
        match what {
            What::Start { seeds, .. } => {
                self.create(i);
                if let Some(core) = self.slots[idx].core.as_mut() {
                    core.start(now, &seeds, &mut out);
                }
                self.trace = mix(self.trace, 0x57 ^ u64::from(i) ^ self.now << 8);
            }
            What::Deliver {
                from,
                channel,
                payload,
                ..
            } => {
                let Some(core) = self.slots[idx].core.as_mut() else {
                    self.stats.dropped += 1;
                    self.out = out;
                    return;
                };
                let from_addr = Self::addr(from);
                let r = match channel {
                    Channel::Datagram => core.handle_datagram(now, from_addr, &payload, &mut out),
                    Channel::Stream => core.handle_stream(now, from_addr, &payload, &mut out),
                };
                if r.is_err() {
                    self.stats.refused += 1;
                }
                self.trace = mix(
                    self.trace,
                    self.now ^ u64::from(i) << 40 ^ (payload.len() as u64) << 20 ^ u64::from(from),
                );
            }
            What::Timer { life: l, timer, .. } => {
                if l != life {
                    self.out = out;
                    return;
                }
                if let Some(core) = self.slots[idx].core.as_mut() {
                    core.handle_timer(now, timer, &mut out);
                }
            }
            What::Link { life: l, event, .. } => {
                // A Down about a connection that was since replaced by a new one (the peer
                // restarted and redialled before the reset arrived) belongs to the old
                // connection: a real transport reports it against that connection, not the peer.
                let superseded = matches!(event, LinkEvent::Down(a) | LinkEvent::Reset(a)
                    if self.index_of(a).is_some_and(|j| self.links[idx].contains(&j)));
                if l != life || superseded {
                    self.out = out;
                    return;
                }
                if let Some(core) = self.slots[idx].core.as_mut() {
                    core.handle_link(now, event, &mut out);
                }
                self.trace = mix(self.trace, 0x11 ^ u64::from(i) ^ self.now << 8);
            }
        }
        self.apply_outputs_from(i, &mut out, 0);
        self.out = out;
    }

    fn apply_outputs(&mut self, i: u32, mut out: Vec<Output<C::Timer>>, offset: u64) {
        self.apply_outputs_from(i, &mut out, offset);
    }

    /// Carries out a core's outputs; `offset` delays its timers (preseed staggering).
    fn apply_outputs_from(&mut self, i: u32, out: &mut Vec<Output<C::Timer>>, offset: u64) {
        let idx = i as usize;
        for o in out.drain(..) {
            match o {
                Output::Send {
                    to,
                    channel,
                    payload,
                } => self.send(i, to, channel, payload),
                Output::SetTimer { after, timer } => {
                    let life = self.slots[idx].life;
                    self.push(
                        self.now + offset + ns(after),
                        What::Timer {
                            node: i,
                            life,
                            timer,
                        },
                    );
                }
                Output::Event(e) => {
                    self.observer.event(idx, e);
                    self.note(i, MemberFact::Event(e));
                }
                Output::Renewed(id) => {
                    self.slots[idx].generation = id.generation();
                    self.observer.renewed(idx, id);
                    self.note(i, MemberFact::Renewed(id));
                }
                Output::Connect { to } => self.connect(i, to),
                Output::Disconnect { to } => self.disconnect(i, to),
                // A farewell is followed by its Down, which the observer counts.
                Output::Left(_) => {}
            }
        }
    }

    fn index_of(&self, addr: SocketAddrV4) -> Option<u32> {
        loopback_index(addr).filter(|j| (*j as usize) < self.slots.len() && addr.port() == SIM_PORT)
    }

    fn send(&mut self, i: u32, to: SocketAddrV4, channel: Channel, payload: Vec<u8>) {
        self.stats.msgs += 1;
        self.stats.bytes += payload.len() as u64;
        self.stats.bytes_by_node[i as usize] += payload.len() as u64;
        let kind = payload.get(3).map_or(0, |k| usize::from(*k).min(7));
        self.stats.msgs_by_kind[kind] += 1;
        self.stats.bytes_by_kind[kind] += payload.len() as u64;
        let Some(j) = self.index_of(to).filter(|j| *j != i) else {
            self.stats.dropped += 1;
            return;
        };
        if channel == Channel::Stream && (self.resets_link(i, j) || self.refuses_frame(i, j)) {
            self.stats.dropped += 1;
            return;
        }
        if !self.partition.reachable(i as usize, j as usize) {
            self.stats.dropped += 1;
            return;
        }
        let lat = self.net.latency(&mut self.rng, self.seed, i, j);
        let payload: Box<[u8]> = payload.into_boxed_slice();
        match channel {
            Channel::Datagram => {
                if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss.min(1.0)) {
                    self.stats.dropped += 1;
                    return;
                }
                let mut at = self.now + lat;
                if self.net.reorder > 0.0 && self.rng.random_bool(self.net.reorder.min(1.0)) {
                    at += self.rng.random_range(0..=3 * self.net.latency_max_ns);
                }
                if self.net.duplicate > 0.0 && self.rng.random_bool(self.net.duplicate.min(1.0)) {
                    let again = at + self.net.latency(&mut self.rng, self.seed, i, j);
                    self.push(
                        again,
                        What::Deliver {
                            to: j,
                            from: i,
                            channel,
                            payload: payload.clone(),
                        },
                    );
                }
                self.push(
                    at,
                    What::Deliver {
                        to: j,
                        from: i,
                        channel,
                        payload,
                    },
                );
            }
            Channel::Stream => {
                // A reliable FIFO link: never lost while it stays up (TCP retransmits; a frame
                // that cannot get through resets the link, see `resets_link`) and never
                // overtaken.
                let last = self.stream_last.entry((i, j)).or_insert(0);
                let at = (self.now + lat).max(*last + 1);
                *last = at;
                self.push(
                    at,
                    What::Deliver {
                        to: j,
                        from: i,
                        channel,
                        payload,
                    },
                );
            }
        }
    }

    fn connect(&mut self, i: u32, to: SocketAddrV4) {
        let Some(j) = self.index_of(to).filter(|j| *j != i) else {
            return;
        };
        let (a, b) = (i as usize, j as usize);
        if self.links.is_empty() {
            return;
        }
        let lat = self.net.latency(&mut self.rng, self.seed, i, j);
        let life_i = self.slots[a].life;
        if self.links[a].contains(&j) {
            self.push(
                self.now + 1,
                What::Link {
                    node: i,
                    life: life_i,
                    event: LinkEvent::Up(to),
                },
            );
            return;
        }
        let both_ways = self.partition.reachable(a, b) && self.partition.reachable(b, a);
        if !both_ways {
            self.push(
                self.now + CONNECT_TIMEOUT_NS,
                What::Link {
                    node: i,
                    life: life_i,
                    event: LinkEvent::ConnectFailed(to),
                },
            );
        } else if self.slots[b].core.is_none() || self.slots[b].paused_until > self.now {
            // Nobody accepts: refused (dead process) or never answered (paused).
            let (wait, event) = if self.slots[b].core.is_none() {
                (2 * lat, LinkEvent::Refused(to))
            } else {
                (CONNECT_TIMEOUT_NS, LinkEvent::ConnectFailed(to))
            };
            self.push(
                self.now + wait,
                What::Link {
                    node: i,
                    life: life_i,
                    event,
                },
            );
        } else {
            // A new connection: whatever either end held of an older one is replaced.
            self.half_open.remove(&(i, j));
            self.half_open.remove(&(j, i));
            self.links[a].insert(j);
            self.links[b].insert(i);
            let life_j = self.slots[b].life;
            self.push(
                self.now + lat,
                What::Link {
                    node: j,
                    life: life_j,
                    event: LinkEvent::Up(Self::addr(i)),
                },
            );
            self.push(
                self.now + 2 * lat,
                What::Link {
                    node: i,
                    life: life_i,
                    event: LinkEvent::Up(to),
                },
            );
        }
    }

    fn disconnect(&mut self, i: u32, to: SocketAddrV4) {
        let Some(j) = self.index_of(to) else { return };
        if self.links.is_empty() {
            return;
        }
        if !self.links[i as usize].remove(&j) {
            // Closing our end of a half-open link: nobody else is told.
            self.half_open.remove(&(i, j));
            return;
        }
        self.links[j as usize].remove(&i);
        if self.partition.reachable(i as usize, j as usize) {
            let lat = self.net.latency(&mut self.rng, self.seed, i, j);
            self.link_down(j, i, self.now + lat, false);
        } else {
            // The close cannot cross the cut: `j` learns by silence or by its next frame.
            self.half_open.insert((j, i));
        }
    }

    /// Reports at `at` to `node` (its current instance) that its link to `peer` went down:
    /// broke without a goodbye if `reset`, closed on purpose if not.
    fn link_down(&mut self, node: u32, peer: u32, at: u64, reset: bool) {
        let life = self.slots[node as usize].life;
        let addr = Self::addr(peer);
        let event = if reset {
            LinkEvent::Reset(addr)
        } else {
            LinkEvent::Down(addr)
        };
        self.push(at, What::Link { node, life, event });
    }

    /// Whether the stream frame `i` is about to send to `j`, with no link between them, meets a
    /// crashed process on a reachable host: the transport's on-demand dial is refused, reported
    /// to `i` one round trip later, and the frame is dropped. (Frames between nodes that hold no
    /// link otherwise follow the datagram rules, see [`Sim::resets_link`].)
    fn refuses_frame(&mut self, i: u32, j: u32) -> bool {
        let (a, b) = (i as usize, j as usize);
        if self.slots[b].core.is_some()
            || self.links[a].contains(&j)
            || !(self.partition.reachable(a, b) && self.partition.reachable(b, a))
        {
            return false;
        }
        let at = self.now + 2 * self.net.latency(&mut self.rng, self.seed, i, j);
        let life = self.slots[a].life;
        self.push(
            at,
            What::Link {
                node: i,
                life,
                event: LinkEvent::Refused(Self::addr(j)),
            },
        );
        true
    }

    /// Whether the stream frame `i` is about to send to `j` breaks `i`'s link to `j` instead of
    /// arriving. A link never loses a frame while it stays up (the cores rely on it, and the
    /// node runtime's transport keeps to it, `src/transport/writer.rs`), so a frame that cannot
    /// be delivered resets the link, as TCP does once its retransmissions give up (compressed
    /// to at once, like the transport's injected partitions):
    /// - across a cut, on a live link: both ends close; `i` hears it now, `j` only if the reset
    ///   can cross (it cannot: the direction `i -> j` is cut), else its end stays half-open;
    /// - on a half-open link (`j`'s end is gone): the frame is refused, and `i` hears of the
    ///   reset one round trip later if the frame and the answering reset can cross, now if not.
    ///
    /// A frame between nodes that hold no link (cores that never dial, such as SWIM's pushes) is
    /// left to the datagram rules of [`Sim::send`]: a cut drops it, as a failed connect would.
    fn resets_link(&mut self, i: u32, j: u32) -> bool {
        let (a, b) = (i as usize, j as usize);
        if self.links.is_empty() {
            return false;
        }
        if self.links[a].contains(&j) {
            if self.partition.reachable(a, b) {
                return false;
            }
            self.links[a].remove(&j);
            self.links[b].remove(&i);
            self.half_open.insert((j, i));
            self.link_down(i, j, self.now + 1, true);
            return true;
        }
        if !self.half_open.remove(&(i, j)) {
            return false;
        }
        let at = if self.partition.reachable(a, b) && self.partition.reachable(b, a) {
            self.now + 2 * self.net.latency(&mut self.rng, self.seed, i, j)
        } else {
            self.now + 1
        };
        self.link_down(i, j, at, true);
        true
    }
}
