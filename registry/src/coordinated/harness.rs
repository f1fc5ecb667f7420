//! An in-test cluster of [`CoordinatedGroups`] with instant delivery through one global FIFO
//! queue (so every link is FIFO), virtual time for timers, crashes, and a hook to hold
//! messages. Every `Completed` is recorded with what each live node's table showed at that
//! moment, so tests can check read-your-write exactly when it is promised.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use meshreg_membership::{Channel, MemberEvent, NodeId, Time, loopback_addr, loopback_index};

use super::message::{self, Message};
use super::{BossTimer, CoordinatedGroups};
use crate::groups::{GroupName, ScopeName};
use crate::{CallError, Pid, RegistryCore, RegistryOutput, RequestId};

pub(super) const CLUSTER: u32 = 7;

/// What a call was about, to check it at completion.
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub scope: ScopeName,
    pub group: GroupName,
    pub pid: Pid,
}

/// One `Completed`, with `occurrences` of the call's `(scope, group, pid)` on every live node
/// (by index) at that moment.
#[derive(Clone, Debug)]
pub(super) struct Completion {
    pub node: usize,
    pub req: RequestId,
    pub result: Result<(), CallError>,
    pub occurrences: BTreeMap<usize, usize>,
}

pub(super) type HoldFn = Box<dyn FnMut(usize, usize, &Message) -> bool>;

pub(super) struct Cluster {
    pub nodes: Vec<CoordinatedGroups>,
    pub alive: Vec<bool>,
    pub now: Time,
    queue: VecDeque<(usize, usize, Vec<u8>)>,
    pub held: Vec<(usize, usize, Vec<u8>)>,
    timers: Vec<(Time, u64, usize, BossTimer)>,
    timer_serial: u64,
    pub calls: BTreeMap<(usize, RequestId), Call>,
    pub completions: Vec<Completion>,
    pub hold: Option<HoldFn>,
    pub delivered: u64,
    next_req: RequestId,
}

pub(super) fn node_id(i: usize, generation: u32) -> NodeId {
    NodeId::new(loopback_addr(u32::try_from(i).unwrap(), 7000), generation)
}

pub(super) fn scope(s: &str) -> ScopeName {
    ScopeName::new(s).unwrap()
}

pub(super) fn group(g: &str) -> GroupName {
    GroupName::new(g).unwrap()
}

impl Cluster {
    /// `n` nodes that all see each other Up, with `partitions` per scope.
    pub fn new(n: usize, partitions: u16) -> Self {
        let config = super::CoordinatedConfig {
            partitions_per_scope: partitions,
            ..super::CoordinatedConfig::default()
        };
        Self::with_config(n, config)
    }

    /// Like [`Self::new`], but bosses start a term only on a partition's first request
    /// (`warm_terms` off): for tests that hold messages across a cut while views disagree,
    /// where every term recovering across it re-asks forever and `settle` would never end.
    pub fn cold(n: usize, partitions: u16) -> Self {
        let config = super::CoordinatedConfig {
            partitions_per_scope: partitions,
            warm_terms: false,
            ..super::CoordinatedConfig::default()
        };
        Self::with_config(n, config)
    }

    /// `n` nodes with `config` that all see each other Up.
    pub fn with_config(n: usize, config: super::CoordinatedConfig) -> Self {
        let nodes = (0..n)
            .map(|i| CoordinatedGroups::with_config(node_id(i, 1), CLUSTER, config))
            .collect();
        let mut c = Self {
            nodes,
            alive: vec![true; n],
            now: Duration::ZERO,
            queue: VecDeque::new(),
            held: Vec::new(),
            timers: Vec::new(),
            timer_serial: 0,
            calls: BTreeMap::new(),
            completions: Vec::new(),
            hold: None,
            delivered: 0,
            next_req: 1,
        };
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let id = c.nodes[j].me();
                    c.member_event(i, MemberEvent::Up(id));
                }
            }
        }
        c.settle();
        c
    }

    pub fn pid(&self, i: usize, serial: u64) -> Pid {
        Pid {
            node: self.nodes[i].me().root(),
            serial,
        }
    }

    fn index_of(addr: std::net::SocketAddrV4) -> usize {
        loopback_index(addr).unwrap() as usize
    }

    fn route(&mut self, i: usize, out: Vec<RegistryOutput<BossTimer>>) {
        for o in out {
            match o {
                RegistryOutput::Send {
                    to,
                    channel,
                    payload,
                } => {
                    assert_eq!(channel, Channel::Stream);
                    self.queue.push_back((i, Self::index_of(to), payload));
                }
                RegistryOutput::SetTimer { after, timer } => {
                    self.timer_serial += 1;
                    self.timers
                        .push((self.now + after, self.timer_serial, i, timer));
                }
                RegistryOutput::Completed { req, result } => self.record(i, req, result),
            }
        }
    }

    fn record(&mut self, i: usize, req: RequestId, result: Result<(), CallError>) {
        let mut occurrences = BTreeMap::new();
        if let Some(call) = self.calls.get(&(i, req)) {
            for (j, n) in self.nodes.iter().enumerate() {
                if self.alive[j] {
                    let k = n.table().occurrences(&call.scope, &call.group, call.pid);
                    occurrences.insert(j, k);
                }
            }
        }
        self.completions.push(Completion {
            node: i,
            req,
            result,
            occurrences,
        });
    }

    pub fn member_event(&mut self, i: usize, e: MemberEvent) {
        let mut out = Vec::new();
        self.nodes[i].member_event(self.now, e, &mut out);
        self.route(i, out);
    }

    /// Starts a join on node `i` of its pid `serial`; returns the request id.
    pub fn join(&mut self, i: usize, s: &str, g: &str, serial: u64, meta: &[u8]) -> RequestId {
        let req = self.next_req;
        self.next_req += 1;
        let pid = self.pid(i, serial);
        let call = Call {
            scope: scope(s),
            group: group(g),
            pid,
        };
        self.calls.insert((i, req), call.clone());
        let mut out = Vec::new();
        self.nodes[i].join(self.now, req, &call.scope, &call.group, pid, meta, &mut out);
        self.route(i, out);
        req
    }

    /// A detached join on node `i` (no completion to wait for): the call's own result.
    pub fn join_detached(
        &mut self,
        i: usize,
        s: &str,
        g: &str,
        serial: u64,
    ) -> Result<(), crate::CallError> {
        let req = self.next_req;
        self.next_req += 1;
        let pid = self.pid(i, serial);
        let mut out = Vec::new();
        let r =
            self.nodes[i].join_detached(self.now, req, &scope(s), &group(g), pid, b"", &mut out);
        self.route(i, out);
        r
    }

    pub fn leave(&mut self, i: usize, s: &str, g: &str, serial: u64) -> RequestId {
        let req = self.next_req;
        self.next_req += 1;
        let pid = self.pid(i, serial);
        let call = Call {
            scope: scope(s),
            group: group(g),
            pid,
        };
        self.calls.insert((i, req), call.clone());
        let mut out = Vec::new();
        self.nodes[i].leave(self.now, req, &call.scope, &call.group, pid, &mut out);
        self.route(i, out);
        req
    }

    pub fn exit(&mut self, i: usize, serial: u64) {
        let pid = self.pid(i, serial);
        let mut out = Vec::new();
        self.nodes[i].process_exit(self.now, pid, &mut out);
        self.route(i, out);
    }

    /// Node `i` was declared Down but kept running: it renews to its next generation (same
    /// root). Nobody else is told: send the `Down(old)`/`Up(new)`s with `member_event`.
    /// Returns the new identity.
    pub fn renew(&mut self, i: usize) -> NodeId {
        let new = self.nodes[i].me().next_generation();
        let mut out = Vec::new();
        self.nodes[i].renewed(self.now, new, &mut out);
        self.route(i, out);
        new
    }

    /// Delivers one queued message; `false` if the queue was empty.
    pub fn step(&mut self) -> bool {
        let Some((from, to, bytes)) = self.queue.pop_front() else {
            return false;
        };
        if !self.alive[from] || !self.alive[to] {
            return true;
        }
        if let Some(hold) = self.hold.as_mut() {
            let msg = message::decode(&bytes, CLUSTER, usize::MAX).unwrap();
            if hold(from, to, &msg) {
                self.held.push((from, to, bytes));
                return true;
            }
        }
        self.deliver(from, to, &bytes);
        true
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &[u8]) {
        self.delivered += 1;
        if std::env::var("TRACE").is_ok() {
            let msg = message::decode(bytes, CLUSTER, usize::MAX).unwrap();
            eprintln!("{from}->{to}: {msg:?}");
        }
        let addr = self.nodes[from].me().addr();
        let mut out = Vec::new();
        // Refusals (a message from a node the receiver already sees Down) are expected.
        let _ = self.nodes[to].handle_message(self.now, addr, Channel::Stream, bytes, &mut out);
        self.route(to, out);
    }

    /// Delivers everything queued as one burst, every live node holding its frames over the
    /// burst (as the node runtime does over a batch of transport events); what they send
    /// meanwhile is queued at the end, one frame per destination and node. The `hold` hook is
    /// not consulted.
    pub fn burst(&mut self) {
        for n in &mut self.nodes {
            n.hold();
        }
        let burst: Vec<_> = self.queue.drain(..).collect();
        for (from, to, bytes) in burst {
            if self.alive[from] && self.alive[to] {
                self.deliver(from, to, &bytes);
            }
        }
        for i in 0..self.nodes.len() {
            let mut out = Vec::new();
            self.nodes[i].release(self.now, &mut out);
            if self.alive[i] {
                self.route(i, out);
            }
        }
    }

    /// Bursts until the queue is empty (no timer fires).
    pub fn run_bursts(&mut self) {
        let mut rounds = 0;
        while !self.queue.is_empty() {
            rounds += 1;
            assert!(rounds < 100_000, "message storm");
            self.burst();
        }
    }

    /// Delivers until the queue is empty (no timer fires).
    pub fn run(&mut self) {
        let mut n = 0;
        while self.step() {
            n += 1;
            assert!(n < 1_000_000, "message storm");
        }
    }

    /// Fires the earliest timer (advancing time); `false` if none.
    pub fn fire_next_timer(&mut self) -> bool {
        let Some(pos) =
            (0..self.timers.len()).min_by_key(|&k| (self.timers[k].0, self.timers[k].1))
        else {
            return false;
        };
        let (at, _, i, timer) = self.timers.swap_remove(pos);
        self.now = self.now.max(at);
        if self.alive[i] {
            let mut out = Vec::new();
            self.nodes[i].handle_timer(self.now, timer, &mut out);
            self.route(i, out);
        }
        true
    }

    /// Runs messages and timers until nothing is left.
    pub fn settle(&mut self) {
        let mut n = 0;
        loop {
            self.run();
            if !self.fire_next_timer() {
                break;
            }
            n += 1;
            assert!(n < 100_000, "timer storm");
        }
    }

    /// Node `i` crashes: its queued messages vanish, everyone else sees it Down.
    pub fn crash(&mut self, i: usize) {
        let id = self.crash_silently(i);
        for j in 0..self.nodes.len() {
            if self.alive[j] {
                self.member_event(j, MemberEvent::Down(id));
            }
        }
    }

    /// Node `i` crashes, but nobody has noticed yet (send the `Down`s with `member_event`):
    /// views disagree meanwhile. Returns the dead identity.
    pub fn crash_silently(&mut self, i: usize) -> NodeId {
        if std::env::var("TRACE").is_ok() {
            eprintln!("CRASH {i}");
        }
        self.alive[i] = false;
        self.queue.retain(|(from, to, _)| *from != i && *to != i);
        self.nodes[i].me()
    }

    /// Node `i` restarts as its next creation (a new root), empty, and every live node sees it
    /// Up.
    pub fn restart(&mut self, i: usize) {
        let peers = self.live();
        self.restart_among(i, &peers);
    }

    /// Node `i` restarts as its next creation (a new root), empty; only `peers` (the live ones
    /// among them) see it Up, and it sees only them (the others are cut off). Returns its
    /// identity.
    pub fn restart_among(&mut self, i: usize, peers: &[usize]) -> NodeId {
        let id = self.nodes[i].me().next_creation();
        let config = *self.nodes[i].config();
        self.nodes[i] = CoordinatedGroups::with_config(id, CLUSTER, config);
        self.alive[i] = true;
        for &j in peers {
            if j != i && self.alive[j] {
                let other = self.nodes[j].me();
                self.member_event(j, MemberEvent::Up(id));
                self.member_event(i, MemberEvent::Up(other));
            }
        }
        id
    }

    /// Sorted `(scope, group, pid, meta)` of node `i`'s whole table.
    pub fn view(&self, i: usize) -> Vec<(String, String, Pid, Vec<u8>)> {
        let t = self.nodes[i].table();
        let mut all = Vec::new();
        for s in t.scopes() {
            for g in t.which_groups(s) {
                for m in t.members(s, g) {
                    all.push((s.to_string(), g.to_string(), m.pid, m.meta.to_vec()));
                }
            }
        }
        all.sort();
        all
    }

    /// The live node indices.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.alive[i]).collect()
    }

    /// Asserts all live nodes hold the same table, and returns it.
    pub fn assert_converged(&self) -> Vec<(String, String, Pid, Vec<u8>)> {
        let live = self.live();
        for &i in &live {
            self.nodes[i].check_partition_index();
        }
        let first = self.view(live[0]);
        for &i in &live[1..] {
            assert_eq!(
                self.view(i),
                first,
                "node {i} differs from node {}",
                live[0]
            );
        }
        first
    }

    /// The completion of request `req` of node `i`.
    pub fn completion(&self, i: usize, req: RequestId) -> Option<&Completion> {
        self.completions
            .iter()
            .find(|c| c.node == i && c.req == req)
    }

    /// Index of the boss of `(s, g)` in node `i`'s view.
    pub fn boss_index(&self, i: usize, s: &str, g: &str) -> usize {
        let n = &self.nodes[i];
        let p = n.partition_of(s, g);
        Self::index_of(n.boss_of(s, p).addr())
    }
}

impl Cluster {
    /// Puts every held message back at the front of the queue, in the order it was held.
    pub fn release(&mut self) {
        for m in self.held.drain(..).rev() {
            self.queue.push_front(m);
        }
    }
}
