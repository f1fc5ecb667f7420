//! [`Links`]: the per-peer link table and the rules that keep exactly one link per pair.
//!
//! A **slot** is the transport's link to one peer (keyed by the peer's listen address). It owns
//! the peer's bounded frame queue and its writer task from the moment a frame or a connect asks
//! for the peer, so frames queued while dialling are sent after the handshake. A slot has at most
//! one **current** connection; the writer writes on it and its end is the end of the link.
//!
//! **Simultaneous connects.** When a second authenticated connection to the same peer appears,
//! both sides apply the same rule:
//! - initiated by different sides (both dialled at once): keep the one initiated by the smaller
//!   listen address; a pending local dial counts, so the larger side adopts the smaller side's
//!   connection even before its own dial finishes;
//! - initiated by the same side (the peer redialled: it no longer uses the old one, e.g. it
//!   restarted): keep the newer, and report `Down` then `Up`.
//!
//! The losing connection is **retired**: its writer writes the [`RETIRE`](super::frame::RETIRE)
//! marker after what it already wrote and half-closes; its reader goes on to end of stream, so
//! nothing already written is lost. A peer that reads `RETIRE` on its current connection keeps
//! the link up without a connection for up to `connect_timeout`, waiting for the winner (which is
//! already on its way); if none comes the link goes `Down`. No `Up`/`Down` is reported for a swap.
//!
//! **Reordering window.** Frames written on the loser before the swap and frames written on the
//! winner after it travel on two connections read by two tasks, so around a swap (only at
//! simultaneous connect) a frame sent before the swap can be delivered after one sent after it.
//! Per-peer FIFO holds on every link once established.
//!
//! Architecture Invariant: link events are sent to the node while the table lock is held, with
//! channel permits reserved beforehand, so their order is the order of table changes; a reader
//! starts forwarding frames only after the `Up` of its connection was sent.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshreg_membership::LinkEvent;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::stats::Stats;
use super::{SendError, Shared, TransportEvent, connect, lock, reader, writer};

/// Who dialled a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Initiator {
    /// We did, for the slot with this id.
    Local(u64),
    /// The peer did.
    Remote,
}

impl Initiator {
    fn is_local(self) -> bool {
        matches!(self, Self::Local(_))
    }
}

/// A frame waiting in a peer queue, with the time it was queued (for injected delay).
pub(crate) struct Queued {
    pub(crate) at: Instant,
    pub(crate) payload: Vec<u8>,
}

/// Commands from the table to a slot's writer.
pub(crate) enum Ctl {
    /// Write on this connection from now on; retire the previous one.
    Attach { conn: u64, w: OwnedWriteHalf },
    /// The peer retired this connection: half-close our side of it.
    Detach { conn: u64 },
    /// Flush the queue on the current connection, half-close and stop. The writer holds the
    /// kill switch while it flushes.
    Close(oneshot::Sender<()>),
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer retired it (it keeps the link on another connection).
    Retired,
    /// The peer closed the link on purpose: end of stream after its `CLOSE` marker.
    Closed,
    /// End of stream without a goodbye, error or heartbeat timeout, seen by the reader.
    Broken,
    /// The writer could not write.
    WriteFailed,
}

struct Conn {
    id: u64,
    initiator: Initiator,
    reader: Option<AbortHandle>,
}

/// The link to one peer.
struct Slot {
    id: u64,
    frames: mpsc::Sender<Queued>,
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Dropping it stops the writer at once (the slot is gone).
    kill: Option<oneshot::Sender<()>>,
    /// `Up` was reported and no `Down` since.
    up: bool,
    /// A local dial for this slot is in flight.
    dialling: bool,
    current: Option<Conn>,
    activity: Arc<Activity>,
}

/// What the reader and the writer of a slot tell each other about its traffic.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Last frame sent or received, in `Shared::now_ms` (idle close).
    last_ms: AtomicU64,
    /// Successful writes to the socket (frames or heartbeats), counted after each flush.
    writes: AtomicU64,
}

impl Activity {
    fn new(now_ms: u64) -> Self {
        Self {
            last_ms: AtomicU64::new(now_ms),
            writes: AtomicU64::new(0),
        }
    }

    /// A frame went out or came in at `now_ms`.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Last frame sent or received, in `Shared::now_ms`.
    pub(crate) fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// The writer put bytes on the socket (which carry any ACK the kernel held).
    pub(crate) fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes so far; compare two readings to learn whether the writer wrote in between.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// The link table of a transport.
#[derive(Default)]
pub(crate) struct Links {
    slots: HashMap<SocketAddrV4, Slot>,
    next_id: u64,
    /// No new slot once shutting down.
    closed: bool,
    /// One clone per running writer: shutdown waits for them to flush.
    writers: Arc<()>,
}

type Events = Vec<LinkEvent>;

/// Runs `f` on the table and sends the link events it returns, in table order (see the module's
/// invariant). At most two events per call.
pub(crate) async fn with_events<R>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Links) -> (R, Events),
) -> R {
    // If the node dropped its receiver, changes still apply; events go nowhere.
    let permits = shared.events.reserve_many(2).await.ok();
    let mut links = lock(&shared.links);
    let (r, events) = f(&mut links);
    if let Some(mut permits) = permits {
        for e in events {
            if let Some(p) = permits.next() {
                p.send(TransportEvent::Link(e));
            }
        }
    }
    r
}

impl Links {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Creates the slot of `peer` with its writer task, dialling it if `dial`.
    fn create(&mut self, shared: &Arc<Shared>, peer: SocketAddrV4, dial: bool) -> Option<u64> {
        if self.closed {
            return None;
        }
        let id = self.next_id();
        let (frames, frames_rx) = mpsc::channel(shared.cfg.queue_frames);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (kill, kill_rx) = oneshot::channel();
        let activity = Arc::new(Activity::new(shared.now_ms()));
        let task = writer::Writer::new(
            shared.clone(),
            peer,
            id,
            frames_rx,
            ctl_rx,
            kill_rx,
            activity.clone(),
            self.writers.clone(),
        );
        shared.spawn(task.run())?;
        if dial {
            shared.spawn(connect::dial(shared.clone(), peer, id))?;
        }
        self.slots.insert(
            peer,
            Slot {
                id,
                frames,
                ctl,
                kill: Some(kill),
                up: false,
                dialling: dial,
                current: None,
                activity,
            },
        );
        Some(id)
    }

    /// Removes `peer`'s slot; its writer stops at once, counting the frames it drops.
    fn remove(&mut self, shared: &Shared, peer: SocketAddrV4) -> Option<Slot> {
        let slot = self.slots.remove(&peer)?;
        if slot.up {
            Stats::drop_one(&shared.stats.links_up);
        }
        Some(slot)
    }
}

fn check_frame(shared: &Shared, to: SocketAddrV4, payload: &[u8]) -> Result<(), SendError> {
    let max = shared.cfg.max_frame;
    if payload.len() > max {
        return Err(SendError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    if to == shared.local {
        return Err(SendError::Closed);
    }
    Ok(())
}

/// The queue of `to`, creating the slot (and dialling) if needed.
fn queue_of(shared: &Arc<Shared>, to: SocketAddrV4) -> Result<mpsc::Sender<Queued>, SendError> {
    let mut links = lock(&shared.links);
    if !links.slots.contains_key(&to) {
        links.create(shared, to, true).ok_or(SendError::Closed)?;
    }
    links
        .slots
        .get(&to)
        .map(|s| s.frames.clone())
        .ok_or(SendError::Closed)
}

/// See [`Transport::send_frame`](super::Transport::send_frame).
pub(crate) fn send_frame(
    shared: &Arc<Shared>,
    to: SocketAddrV4,
    payload: Vec<u8>,
) -> Result<(), SendError> {
    match try_queue(shared, to, payload)? {
        None => Ok(()),
        Some(_) => {
            Stats::bump(&shared.stats.queue_full);
            Err(SendError::QueueFull)
        }
    }
}

/// See [`Transport::send_frame_or_defer`](super::Transport::send_frame_or_defer).
pub(crate) fn send_frame_or_defer(
    shared: &Arc<Shared>,
    to: SocketAddrV4,
    payload: Vec<u8>,
) -> Result<(), SendError> {
    let Some((q, queue)) = try_queue(shared, to, payload)? else {
        return Ok(());
    };
    Stats::bump(&shared.stats.frames_deferred);
    let s = shared.clone();
    // The task ends when the frame is queued or the peer's writer is gone (the slot went away
    // with its link): the wait is bounded by the link's own life.
    shared
        .spawn(async move {
            if queue.send(q).await.is_err() {
                Stats::bump(&s.stats.frames_dropped_no_link);
            }
        })
        .map(|_| ())
        .ok_or(SendError::Closed)
}

/// Queues a frame to `to` without waiting, creating its slot (and dialling) if needed. A full
/// queue hands the frame back with a sender to wait on.
fn try_queue(
    shared: &Arc<Shared>,
    to: SocketAddrV4,
    payload: Vec<u8>,
) -> Result<Option<(Queued, mpsc::Sender<Queued>)>, SendError> {
    check_frame(shared, to, &payload)?;
    let q = Queued {
        at: Instant::now(),
        payload,
    };
    let mut links = lock(&shared.links);
    if !links.slots.contains_key(&to) {
        links.create(shared, to, true).ok_or(SendError::Closed)?;
    }
    let slot = links.slots.get(&to).ok_or(SendError::Closed)?;
    match slot.frames.try_send(q) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Full(q)) => Ok(Some((q, slot.frames.clone()))),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
    }
}

/// See [`Transport::send_frame_wait`](super::Transport::send_frame_wait).
pub(crate) async fn send_frame_wait(
    shared: &Arc<Shared>,
    to: SocketAddrV4,
    payload: Vec<u8>,
) -> Result<(), SendError> {
    check_frame(shared, to, &payload)?;
    let queue = queue_of(shared, to)?;
    let q = Queued {
        at: Instant::now(),
        payload,
    };
    queue.send(q).await.map_err(|_| SendError::Closed)
}

/// See [`Transport::connect`](super::Transport::connect).
pub(crate) fn connect(shared: &Arc<Shared>, to: SocketAddrV4) {
    let mut links = lock(&shared.links);
    if links.closed {
        return;
    }
    let up_slot = match links.slots.get(&to) {
        // Dialling: the dial's outcome answers this connect too.
        Some(slot) if !slot.up => return,
        Some(slot) => Some(slot.id),
        None if to == shared.local => None,
        None => {
            links.create(shared, to, true);
            return;
        }
    };
    drop(links);
    // Already linked (or to ourselves): answer through the ordered event path.
    let s = shared.clone();
    shared.spawn(async move {
        let event = match up_slot {
            Some(_) => LinkEvent::Up(to),
            None => LinkEvent::ConnectFailed(to),
        };
        with_events(&s, |links| {
            let still = links.slots.get(&to).map(|slot| (slot.id, slot.up));
            let ok = up_slot.is_none() || still == up_slot.map(|id| (id, true));
            ((), if ok { vec![event] } else { vec![] })
        })
        .await;
    });
}

/// See [`Transport::disconnect`](super::Transport::disconnect).
pub(crate) fn disconnect(shared: &Arc<Shared>, to: SocketAddrV4) {
    let mut links = lock(&shared.links);
    if let Some(slot) = links.remove(shared, to) {
        close_slot(slot);
    }
}

/// Hands the slot's kill switch to its writer with a `Close`: it flushes, half-closes, stops.
fn close_slot(mut slot: Slot) {
    if let Some(kill) = slot.kill.take() {
        // A writer that already stopped has nothing to flush.
        let _ = slot.ctl.send(Ctl::Close(kill));
    }
}

/// Starts closing every link gracefully (shutdown) and refuses new ones.
pub(crate) fn close_all(shared: &Arc<Shared>) {
    let mut links = lock(&shared.links);
    links.closed = true;
    let peers: Vec<SocketAddrV4> = links.slots.keys().copied().collect();
    for peer in peers {
        if let Some(slot) = links.remove(shared, peer) {
            close_slot(slot);
        }
    }
}

/// Whether some writer is still flushing.
pub(crate) fn writers_running(shared: &Shared) -> bool {
    Arc::strong_count(&lock(&shared.links).writers) > 1
}

/// A connection to `peer` passed the handshake: keep it or retire it (module docs).
pub(crate) async fn adopt(
    shared: &Arc<Shared>,
    peer: SocketAddrV4,
    stream: TcpStream,
    initiator: Initiator,
) {
    let (r, w) = stream.into_split();
    with_events(shared, |links| {
        if links.closed {
            return ((), vec![]);
        }
        if let Initiator::Local(slot_id) = initiator {
            match links.slots.get_mut(&peer) {
                Some(slot) if slot.id == slot_id => slot.dialling = false,
                // The slot was disconnected or replaced while we dialled: drop the connection.
                _ => return ((), vec![]),
            }
        } else if !links.slots.contains_key(&peer) && links.create(shared, peer, false).is_none() {
            return ((), vec![]);
        }
        let conn = links.next_id();
        let Some(slot) = links.slots.get_mut(&peer) else {
            return ((), vec![]);
        };
        let local_wins = shared.local < peer;
        let keep = match &slot.current {
            None => initiator.is_local() || !(slot.dialling && local_wins),
            Some(old) if old.initiator.is_local() != initiator.is_local() => {
                initiator.is_local() == local_wins
            }
            Some(_) => true,
        };
        let activity = slot.activity.clone();
        if !keep {
            writer::retire(shared, w);
            reader::spawn(shared, peer, conn, r, activity);
            return ((), vec![]);
        }
        let reader = reader::spawn(shared, peer, conn, r, activity);
        let old = slot.current.replace(Conn {
            id: conn,
            initiator,
            reader,
        });
        let _ = slot.ctl.send(Ctl::Attach { conn, w });
        let events = match old {
            None if slot.up => vec![],
            None => {
                slot.up = true;
                Stats::bump(&shared.stats.links_up);
                vec![LinkEvent::Up(peer)]
            }
            // The peer redialled over its own older connection: that link ended.
            Some(old) if old.initiator.is_local() == initiator.is_local() => {
                vec![LinkEvent::Down(peer), LinkEvent::Up(peer)]
            }
            // A swap at simultaneous connect: the link goes on.
            Some(_) => vec![],
        };
        ((), events)
    })
    .await;
}

/// Connection `conn` of `peer` ended as `how`; if it was the link's current connection, the
/// link goes down (or waits for the replacement the peer announced by retiring it): `Down` if
/// the peer said goodbye, `Reset` if not.
pub(crate) async fn conn_ended(shared: &Arc<Shared>, peer: SocketAddrV4, conn: u64, how: End) {
    let s = shared.clone();
    with_events(shared, |links| {
        let Some(slot) = links.slots.get_mut(&peer) else {
            return ((), vec![]);
        };
        if slot.current.as_ref().map(|c| c.id) != Some(conn) {
            // A retired or replaced connection: its end changes nothing.
            return ((), vec![]);
        }
        if how == End::Retired {
            slot.current = None;
            let _ = slot.ctl.send(Ctl::Detach { conn });
            let slot_id = slot.id;
            let wait = shared.cfg.connect_timeout;
            shared.spawn(async move {
                tokio::time::sleep(wait).await;
                replacement_overdue(&s, peer, slot_id).await;
            });
            return ((), vec![]);
        }
        let Some(slot) = links.remove(shared, peer) else {
            return ((), vec![]);
        };
        if how == End::WriteFailed
            && let Some(reader) = slot.current.as_ref().and_then(|c| c.reader.as_ref())
        {
            reader.abort();
        }
        let event = if how == End::Closed {
            LinkEvent::Down(peer)
        } else {
            LinkEvent::Reset(peer)
        };
        ((), if slot.up { vec![event] } else { vec![] })
    })
    .await;
}

/// The peer retired our connection but its replacement never came: the link broke.
async fn replacement_overdue(shared: &Arc<Shared>, peer: SocketAddrV4, slot_id: u64) {
    with_events(shared, |links| {
        let overdue = links
            .slots
            .get(&peer)
            .is_some_and(|s| s.id == slot_id && s.current.is_none() && !s.dialling);
        if !overdue {
            return ((), vec![]);
        }
        let up = links.remove(shared, peer).is_some_and(|s| s.up);
        (
            (),
            if up {
                vec![LinkEvent::Reset(peer)]
            } else {
                vec![]
            },
        )
    })
    .await;
}

/// The dial of slot `slot_id` failed. Unless an inbound connection made the link meanwhile,
/// the slot goes (its queued frames are dropped and counted) and `Refused` (nothing listens at
/// the peer's address: `refused`) or `ConnectFailed` is reported.
pub(crate) async fn dial_failed(
    shared: &Arc<Shared>,
    peer: SocketAddrV4,
    slot_id: u64,
    refused: bool,
) {
    Stats::bump(&shared.stats.connect_failures);
    with_events(shared, |links| {
        let Some(slot) = links.slots.get_mut(&peer).filter(|s| s.id == slot_id) else {
            return ((), vec![]);
        };
        slot.dialling = false;
        if slot.current.is_some() || slot.up {
            return ((), vec![]);
        }
        links.remove(shared, peer);
        let event = if refused {
            LinkEvent::Refused(peer)
        } else {
            LinkEvent::ConnectFailed(peer)
        };
        ((), vec![event])
    })
    .await;
}

/// The writer of slot `slot_id` saw no frame either way for `idle_close`: close the link
/// gracefully; both sides see `Down`.
pub(crate) async fn idle(shared: &Arc<Shared>, peer: SocketAddrV4, slot_id: u64) {
    with_events(shared, |links| {
        if links.slots.get(&peer).is_none_or(|s| s.id != slot_id) {
            return ((), vec![]);
        }
        let Some(slot) = links.remove(shared, peer) else {
            return ((), vec![]);
        };
        let up = slot.up;
        close_slot(slot);
        (
            (),
            if up {
                vec![LinkEvent::Down(peer)]
            } else {
                vec![]
            },
        )
    })
    .await;
}
