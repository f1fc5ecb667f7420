//! [`Shard`]: one replica of one shard — roles, epochs, replication and fencing around the
//! deterministic [`ShardState`].
//!
//! # Replication
//!
//! The primary applies a mutating request at once (so later requests see it: writes are
//! linearizable in arrival order), appends it to its log as entry `seq`, and emits
//! [`Output::Replicate`]. Its reply, and any [`Replaced`] notice, are **held** until the standby
//! acknowledges `seq` ([`Shard::handle_replica_ack`]). Reads are held too until every entry
//! applied before them is acknowledged, so no client observes a write that a failover could
//! take back. Without a standby (after [`Shard::detach_standby`], or before the first
//! [`Shard::attach_standby`]) entries commit as they are applied; the write then survives a
//! crash of this node only through re-assertion by its owner.
//!
//! # Epochs and fencing
//!
//! A primary serves one epoch. It fences itself (stops serving, answers `NotPrimary`) when it
//! learns of a higher epoch: from [`Shard::fence`], or from a [`ReplicaAck`] carrying one (a
//! promoted standby acknowledges a stale primary's `Replicate` with its own, higher epoch).
//! Held replies of a fenced primary are answered `NotPrimary`: the client retries with the same
//! request id at the new primary, which either remembers the outcome (the entry had reached
//! the standby) or applies the request for the first time (it had not) — a definite answer
//! either way, applied once.

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;

use meshreg_membership::NodeId;
use serde::{Deserialize, Serialize};

use super::dedupe::{ClientWindow, Seen};
use super::key::{Limits, SessionKey};
use super::message::{
    Body, Epoch, LogOp, Output, Replaced, ReplicaAck, Replicate, Reply, Request, Seq, Session,
    SessionError, ShardId,
};
use super::state::{Notice, ShardState, TOUCH_AHEAD};
use crate::Pid;

/// What a replica does in its shard's current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves requests and replicates to its standby.
    Primary,
    /// Applies the primary's log; refuses client requests with `NotPrimary`.
    Standby,
    /// Learned of a newer epoch: serves nothing, and its state may hold unacknowledged writes,
    /// so it can only be replaced by a replica filled from a [`Snapshot`].
    Fenced,
}

/// Why a role change was refused (the caller's fault — the driver or placement); nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleError {
    /// Promotion must raise the epoch.
    EpochNotNewer {
        /// The replica's epoch.
        current: Epoch,
    },
    /// Only a primary can do this.
    NotPrimary,
    /// A fenced replica cannot be promoted (it may hold writes no one acknowledged).
    Fenced,
}

impl std::fmt::Display for RoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EpochNotNewer { current } => {
                write!(f, "promotion must raise the epoch (replica at {current})")
            }
            Self::NotPrimary => write!(f, "only a primary can do this"),
            Self::Fenced => write!(f, "a fenced replica cannot be promoted"),
        }
    }
}

impl std::error::Error for RoleError {}

/// How a replica is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardConfig {
    /// Size limits and bounds.
    pub limits: Limits,
    /// Seed of the shard's hash maps (injected randomness: pick it at random per replica so
    /// clients cannot aim keys at one bucket).
    pub hash_seed: u64,
}

/// A shard's state at one log position: what a new standby is filled from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The shard.
    pub shard: ShardId,
    /// The primary's epoch.
    pub epoch: Epoch,
    /// The last entry reflected.
    pub seq: Seq,
    /// Every session, sorted by key.
    pub sessions: Vec<(SessionKey, Session)>,
    /// Retry windows, so a retry after a later failover still gets its original answer.
    windows: Vec<(NodeId, ClientWindow)>,
}

/// One replica of one shard. See the [module docs](super) for the semantics and invariants.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    epoch: Epoch,
    role: Role,
    state: ShardState,
    /// Primary: where entries go.
    standby: Option<NodeId>,
    /// Primary: highest entry the standby acknowledged (or applied, without a standby).
    /// Invariant: `committed <= state.applied`.
    committed: Seq,
    /// Primary: entries sent to the standby and not yet acknowledged, in seq order.
    unacked: VecDeque<(Seq, LogOp)>,
    /// Primary: outputs waiting for `committed >= seq`, in nondecreasing seq order.
    held: VecDeque<(Seq, Held)>,
    /// Standby: the primary it follows.
    primary: Option<NodeId>,
    /// Standby: entries that arrived ahead of a gap (at most `limits.replica_buffer_max`).
    early: BTreeMap<Seq, LogOp>,
    /// Scratch for `apply`.
    notices: Vec<Notice>,
    /// Scratch for `handle_requests` (empty between calls).
    pipeline: Vec<Request>,
}

impl Shard {
    /// A primary of `epoch` with no sessions and no standby yet.
    pub fn primary(id: ShardId, epoch: Epoch, config: ShardConfig) -> Self {
        Self {
            id,
            epoch,
            role: Role::Primary,
            state: ShardState::new(config.limits, config.hash_seed),
            standby: None,
            committed: 0,
            unacked: VecDeque::new(),
            held: VecDeque::new(),
            primary: None,
            early: BTreeMap::new(),
            notices: Vec::new(),
            pipeline: Vec::new(),
        }
    }

    /// A standby of `primary`, filled from `snapshot` (from [`Shard::attach_standby`]). Emits an
    /// acknowledgement of the snapshot's position, which commits what the snapshot contains.
    pub fn standby(
        snapshot: Snapshot,
        primary: NodeId,
        config: ShardConfig,
        out: &mut Vec<Output>,
    ) -> Self {
        let mut shard = Self::primary(snapshot.shard, snapshot.epoch, config);
        shard.role = Role::Standby;
        shard.primary = Some(primary);
        for (key, s) in &snapshot.sessions {
            let _ = shard
                .state
                .table
                .upsert(key, s.pid, &s.metadata, s.version, |_| true);
        }
        shard.state.dedupe.restore(snapshot.windows);
        shard.state.applied = snapshot.seq;
        shard.committed = snapshot.seq;
        shard.ack(primary, out);
        shard
    }

    /// The shard this replica serves.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The replica's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The replica's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.state.table.len()
    }

    /// Whether the shard holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Highest log entry applied.
    pub fn applied_seq(&self) -> Seq {
        self.state.applied
    }

    /// Highest log entry acknowledged by the standby (primary), or applied (standby).
    pub fn committed_seq(&self) -> Seq {
        self.committed
    }

    /// The primary's current standby.
    pub fn standby_node(&self) -> Option<NodeId> {
        self.standby
    }

    /// The session under `key` in this replica's state, whatever its role. A local diagnostic
    /// read: it may show writes not yet acknowledged; clients use [`Request`]s.
    pub fn peek(&self, key: &SessionKey) -> Option<Session> {
        self.state.table.get(key)
    }

    /// Every session, sorted by key.
    pub fn sessions(&self) -> Vec<(SessionKey, Session)> {
        self.state.table.sessions()
    }

    /// Sessions held by processes of `node`.
    pub fn node_sessions(&self, node: &NodeId) -> usize {
        self.state.table.node_sessions(node) as usize
    }

    /// Exact heap bytes owned by this replica: the session table, retry windows, and the
    /// replication buffers (unacknowledged entries, held outputs, early entries).
    pub fn heap_bytes(&self) -> usize {
        let early_node = 3 * size_of::<usize>(); // approximate: BTreeMap nodes are private
        self.state.table.heap_bytes()
            + self.state.dedupe.heap_bytes()
            + self.unacked.capacity() * size_of::<(Seq, LogOp)>()
            + self
                .unacked
                .iter()
                .map(|(_, op)| op.heap_bytes())
                .sum::<usize>()
            + self.held.capacity() * size_of::<(Seq, Held)>()
            + self.held.iter().map(|(_, h)| h.heap_bytes()).sum::<usize>()
            + self
                .early
                .values()
                .map(|op| size_of::<(Seq, LogOp)>() + early_node + op.heap_bytes())
                .sum::<usize>()
            + self.notices.capacity() * size_of::<Notice>()
            + self.pipeline.capacity() * size_of::<Request>()
    }

    /// A client request. Every request gets exactly one [`Output::Reply`], now or once the
    /// entries it depends on are acknowledged.
    pub fn handle_request(&mut self, req: Request, out: &mut Vec<Output>) {
        if let Err(e) = self.admit(&req) {
            out.push(Output::Reply(Reply {
                to: req.id,
                result: Err(e),
            }));
            return;
        }
        let applied = self.state.applied;
        if !req.body.is_write() {
            let outcome = self.state.read(&req.body);
            self.reply_after(applied, req.id, outcome, out);
            drop_body(req.body);
            return;
        }
        match self.state.dedupe.check(req.id, req.answered_below) {
            Seen::Done(outcome) => self.reply_after(applied, req.id, outcome, out),
            Seen::Expired { floor } => out.push(Output::Reply(Reply {
                to: req.id,
                result: Err(SessionError::RetryExpired {
                    id: req.id.id,
                    floor,
                }),
            })),
            Seen::New(window) => {
                let (id, answered_below) = (req.id, req.answered_below);
                let outcome = self.state.apply_body(&req.body, &mut self.notices);
                let record = outcome.clone();
                self.state
                    .dedupe
                    .record_in(window, id, answered_below, record);
                let seq = self.state.applied;
                // The log entry is built only for a standby to copy; without one the write is
                // committed as applied (as `log` does), and the body is never moved.
                if self.standby.is_some() {
                    let body = req.body;
                    let op = LogOp::Request {
                        id,
                        answered_below,
                        body,
                    };
                    self.log(seq, op, out);
                } else {
                    self.committed = seq;
                    drop_body(req.body);
                }
                self.reply_after(seq, id, outcome, out);
                if !self.notices.is_empty() {
                    self.release_notices(seq, out);
                }
            }
        }
    }

    /// Several requests in arrival order, e.g. every request decoded from one read of a link.
    /// Equivalent to calling [`Shard::handle_request`] on each, but the table memory of the
    /// next 32 requests' keys is read first, so their cache misses overlap instead
    /// of queueing (several times faster once the table outgrows the caches).
    pub fn handle_requests(
        &mut self,
        requests: impl IntoIterator<Item = Request>,
        out: &mut Vec<Output>,
    ) {
        let mut requests = requests.into_iter();
        let mut window = std::mem::take(&mut self.pipeline);
        loop {
            window.extend(requests.by_ref().take(TOUCH_AHEAD));
            if window.is_empty() {
                break;
            }
            if self.role == Role::Primary {
                let keys = window.iter().filter_map(|r| match &r.body {
                    Body::One(call) => Some(call.key()),
                    Body::Batch(_) | Body::Reassert(_) => None, // they read ahead themselves
                });
                black_box(self.state.table.touch_all(keys));
            }
            for r in window.drain(..) {
                self.handle_request(r, out);
            }
        }
        self.pipeline = window;
    }

    /// Second pass of a read-ahead across replicas (the manager hands a batch of requests or
    /// log entries for many shards over one by one; see `SessionManager::read_ahead`): loads
    /// the segment header of `key` and returns where its probe starts, for
    /// [`Shard::touch_ahead`]. Reads only.
    pub(crate) fn locate(&self, key: &SessionKey) -> Option<(usize, usize)> {
        self.state.table.locate(key)
    }

    /// Last pass of a read-ahead: loads the table buckets at `at` (from [`Shard::locate`]), the
    /// node rows, and the retry window of `client` when given. Reads only; the result feeds a
    /// `black_box`.
    pub(crate) fn touch_ahead(&self, at: Option<(usize, usize)>, client: Option<NodeId>) -> u64 {
        let table = at.map_or(0, |at| self.state.table.touch_located(at));
        let window = client.map_or(0, |c| self.state.dedupe.touch(c));
        table ^ window ^ self.state.table.touch_nodes()
    }

    /// Loads what an acknowledgement reads first (the oldest unacknowledged entry and held
    /// output), for read-ahead over a batch of acknowledgements. Reads only; the result feeds
    /// a `black_box`.
    pub(crate) fn touch_log(&self) -> u64 {
        let unacked = self.unacked.front().map_or(0, |(s, _)| *s);
        let held = self.held.front().map_or(0, |(s, _)| *s);
        unacked ^ held ^ self.committed
    }

    /// Shard, role, epoch and limits checks: the typed refusals that change nothing.
    fn admit(&self, req: &Request) -> Result<(), SessionError> {
        if req.shard != self.id {
            return Err(SessionError::UnknownShard { shard: req.shard });
        }
        if self.role != Role::Primary {
            return Err(SessionError::NotPrimary { epoch: self.epoch });
        }
        if req.epoch < self.epoch {
            return Err(SessionError::StaleEpoch {
                current: self.epoch,
            });
        }
        if req.epoch > self.epoch {
            // The client knows a newer term. Not proof enough to fence (clients are not
            // authorities on terms), but this replica must not serve it.
            return Err(SessionError::NotPrimary { epoch: self.epoch });
        }
        self.state.validate(&req.body, req.id.client)
    }

    /// A node went down: remove its sessions and its retry window. Primary only (placement's
    /// membership events drive the primary; the standby follows through the log). Returns the
    /// number of sessions removed.
    pub fn drop_node(
        &mut self,
        node: NodeId,
        out: &mut Vec<Output>,
    ) -> Result<usize, SessionError> {
        self.require_primary()?;
        let before = self.len();
        // Logged even without sessions here: the retry window must go on the standby too.
        self.apply_and_log(LogOp::DropNode(node), out);
        Ok(before - self.len())
    }

    /// A process ended: remove its sessions. Primary only. Returns the number removed.
    ///
    /// Free when the process's node holds nothing here; otherwise a scan of the shard (see
    /// `SessionTable::remove_node`). A node that knows its process's keys may send
    /// `Unregister`s instead.
    pub fn drop_pid(&mut self, pid: Pid, out: &mut Vec<Output>) -> Result<usize, SessionError> {
        self.require_primary()?;
        if self.state.table.node_sessions(&pid.node) == 0 {
            return Ok(0);
        }
        let before = self.len();
        self.apply_and_log(LogOp::DropPid(pid), out);
        Ok(before - self.len())
    }

    fn require_primary(&self) -> Result<(), SessionError> {
        if self.role == Role::Primary {
            Ok(())
        } else {
            Err(SessionError::NotPrimary { epoch: self.epoch })
        }
    }

    fn apply_and_log(&mut self, op: LogOp, out: &mut Vec<Output>) {
        let _ = self.state.apply(&op, &mut self.notices);
        self.notices.clear(); // drops notify no one: the process or node is gone
        let seq = self.state.applied;
        self.log(seq, op, out);
    }

    /// After applying entry `seq`: send it to the standby, or commit it when there is none.
    fn log(&mut self, seq: Seq, op: LogOp, out: &mut Vec<Output>) {
        match self.standby {
            Some(to) => {
                out.push(Output::Replicate {
                    to: to.addr(),
                    msg: Replicate {
                        shard: self.id,
                        epoch: self.epoch,
                        seq,
                        op: op.clone(),
                    },
                });
                self.unacked.push_back((seq, op));
            }
            None => self.committed = seq,
        }
    }

    fn release_notices(&mut self, seq: Seq, out: &mut Vec<Output>) {
        let notices = std::mem::take(&mut self.notices);
        for n in &notices {
            let notify = Replaced {
                shard: self.id,
                epoch: self.epoch,
                key: n.key.clone(),
                old: n.old,
                new: n.new,
                version: n.version,
            };
            self.release_after(seq, Held::Notify(Box::new((n.old.node, notify))), out);
        }
        self.notices = notices;
        self.notices.clear();
    }

    /// Emit `output` now if entry `seq` is committed, else hold it until it is.
    /// [`Self::release_after`] for a reply, built in place: every request passes here, and a
    /// committed reply (every read, every write without a standby) goes straight out.
    #[inline]
    fn reply_after(
        &mut self,
        seq: Seq,
        to: super::RequestId,
        outcome: super::Outcome,
        out: &mut Vec<Output>,
    ) {
        let reply = Reply {
            to,
            result: Ok(outcome),
        };
        if seq <= self.committed {
            out.push(Output::Reply(reply));
        } else {
            self.held.push_back((seq, Held::Reply(reply)));
        }
    }

    fn release_after(&mut self, seq: Seq, output: Held, out: &mut Vec<Output>) {
        if seq <= self.committed {
            out.push(output.into_output());
        } else {
            self.held.push_back((seq, output));
        }
    }

    /// Standby: a log entry from the primary `from`. Applies entries in seq order (buffering
    /// those ahead of a gap) and acknowledges cumulatively. Any replica answers an entry of an
    /// older epoch with an acknowledgement carrying its own epoch, which fences the sender.
    pub fn handle_replicate(&mut self, from: NodeId, msg: Replicate, out: &mut Vec<Output>) {
        if msg.shard != self.id {
            return;
        }
        if msg.epoch < self.epoch {
            self.ack(from, out);
            return;
        }
        match self.role {
            Role::Primary | Role::Fenced => {
                if msg.epoch > self.epoch {
                    self.fence(msg.epoch, out);
                }
                return;
            }
            Role::Standby => {}
        }
        if self.primary != Some(from) {
            return; // only the primary we were filled from may extend our log
        }
        // Same primary, raised epoch: it was re-promoted and its log continues.
        self.epoch = msg.epoch;
        let next = self.state.applied + 1;
        if msg.seq == next {
            self.apply_replica(&msg.op);
            while let Some(op) = self.early.remove(&(self.state.applied + 1)) {
                self.apply_replica(&op);
            }
        } else if msg.seq > next && self.early.len() < self.state.limits.replica_buffer_max {
            self.early.insert(msg.seq, msg.op);
        }
        self.ack(from, out);
    }

    fn apply_replica(&mut self, op: &LogOp) {
        let _ = self.state.apply(op, &mut self.notices);
        self.notices.clear(); // the primary notifies
        self.committed = self.state.applied;
    }

    fn ack(&self, to: NodeId, out: &mut Vec<Output>) {
        out.push(Output::Ack {
            to,
            msg: ReplicaAck {
                shard: self.id,
                epoch: self.epoch,
                seq: self.state.applied,
            },
        });
    }

    /// Primary: the standby `from` acknowledged. Commits up to `ack.seq` and releases what was
    /// held for it; an ack of a higher epoch fences this replica.
    pub fn handle_replica_ack(&mut self, from: NodeId, ack: ReplicaAck, out: &mut Vec<Output>) {
        if ack.shard != self.id {
            return;
        }
        if ack.epoch > self.epoch {
            self.fence(ack.epoch, out);
            return;
        }
        if self.role != Role::Primary || ack.epoch < self.epoch || self.standby != Some(from) {
            return;
        }
        let seq = ack.seq.min(self.state.applied);
        if seq <= self.committed {
            return;
        }
        self.committed = seq;
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
        while self.held.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, h)) = self.held.pop_front() {
                out.push(h.into_output());
            }
        }
    }

    /// Learn that `epoch` exists. If it is above this replica's, stop serving: held replies are
    /// answered `NotPrimary` (their clients retry at the new primary), held notices are dropped
    /// (the new primary holds the truth), and [`Output::Fenced`] is emitted. Returns whether
    /// the replica was fenced.
    pub fn fence(&mut self, epoch: Epoch, out: &mut Vec<Output>) -> bool {
        if epoch <= self.epoch {
            return false;
        }
        self.epoch = epoch;
        self.role = Role::Fenced;
        for (_, h) in self.held.drain(..) {
            if let Held::Reply(r) = h {
                out.push(Output::Reply(Reply {
                    to: r.to,
                    result: Err(SessionError::NotPrimary { epoch }),
                }));
            }
        }
        self.unacked.clear();
        self.early.clear();
        self.standby = None;
        self.primary = None;
        out.push(Output::Fenced {
            shard: self.id,
            epoch,
        });
        true
    }

    /// Become (or stay) primary, of the higher `new_epoch`. A standby's applied entries become
    /// committed: they are exactly what the old primary may have acknowledged, and more. The
    /// new primary has no standby until [`Shard::attach_standby`]; a re-promoted primary keeps
    /// its standby (which follows the raised epoch).
    pub fn promote(&mut self, new_epoch: Epoch) -> Result<(), RoleError> {
        if self.role == Role::Fenced {
            return Err(RoleError::Fenced);
        }
        if new_epoch <= self.epoch {
            return Err(RoleError::EpochNotNewer {
                current: self.epoch,
            });
        }
        if self.role == Role::Standby {
            self.role = Role::Primary;
            self.primary = None;
            self.early.clear();
            self.committed = self.state.applied;
        }
        self.epoch = new_epoch;
        Ok(())
    }

    /// Primary: make `node` the standby and return the snapshot to fill it with
    /// ([`Shard::standby`]). Entries not acknowledged by a previous standby stay held until the
    /// new standby acknowledges the snapshot's position, which includes them.
    pub fn attach_standby(&mut self, node: NodeId) -> Result<Snapshot, RoleError> {
        if self.role != Role::Primary {
            return Err(RoleError::NotPrimary);
        }
        self.standby = Some(node);
        self.unacked.clear();
        Ok(Snapshot {
            shard: self.id,
            epoch: self.epoch,
            seq: self.state.applied,
            sessions: self.state.table.sessions(),
            windows: self.state.dedupe.windows(),
        })
    }

    /// Primary: the standby is gone (its node went down). Everything applied commits now and
    /// held outputs are released: until a new standby is attached, a crash of this node loses
    /// the unreplicated writes, which their owners re-assert.
    pub fn detach_standby(&mut self, out: &mut Vec<Output>) {
        if self.role != Role::Primary {
            return;
        }
        self.standby = None;
        self.unacked.clear();
        self.committed = self.state.applied;
        out.extend(self.held.drain(..).map(|(_, h)| h.into_output()));
    }

    /// Primary: send every unacknowledged entry again (after the link to the standby was
    /// re-established; the standby ignores entries it already applied).
    pub fn retransmit(&self, out: &mut Vec<Output>) {
        let Some(to) = self.standby else { return };
        for (seq, op) in &self.unacked {
            out.push(Output::Replicate {
                to: to.addr(),
                msg: Replicate {
                    shard: self.id,
                    epoch: self.epoch,
                    seq: *seq,
                    op: op.clone(),
                },
            });
        }
    }
}

/// Drops a request body that was not moved into the log. Why: `Body`'s drop glue is one
/// out-of-line function that also walks batches and saves registers for it; a single call's
/// (the common body) is smaller.
#[inline]
fn drop_body(body: Body) {
    match body {
        Body::One(call) => drop(call),
        other => drop(other),
    }
}

/// An output a primary holds until its log entry commits: a reply (every write's reply
/// waits here) or a rare `Replaced` notice, boxed.
///
/// Why not [`Output`]: its log-entry variant makes it 136 bytes, and every held reply was
/// written into a cold per-shard queue and copied out again at that size; a held entry is
/// now 88 bytes.
#[derive(Debug)]
enum Held {
    Reply(Reply),
    /// To the old holder's node.
    Notify(Box<(NodeId, Replaced)>),
}

impl Held {
    fn into_output(self) -> Output {
        match self {
            Self::Reply(r) => Output::Reply(r),
            Self::Notify(n) => {
                let (to, msg) = *n;
                Output::Notify { to, msg }
            }
        }
    }

    /// Heap bytes it owns.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Reply(Reply {
                result: Ok(outcome),
                ..
            }) => outcome.heap_bytes(),
            Self::Reply(_) => 0,
            Self::Notify(n) => size_of::<(NodeId, Replaced)>() + n.1.key.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests;
