//! [`Writer`]: the task that owns a peer's send queue and the write half of its current
//! connection.
//!
//! It writes queued frames in FIFO order (batched, one flush per batch), a heartbeat after
//! `heartbeat` of write silence, applies injected delay and partitions, and closes idle on-demand
//! links. It lives as long as the peer's slot: dropping the slot's kill switch stops it at once,
//! even in the middle of a write to a peer that stopped reading.
//!
//! Invariant: frames are written in the order they were queued, whatever the injected delay
//! (each frame waits until its own queue time plus the delay, in queue order).

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Shared;
use super::frame::{CLOSE, RETIRE, write_frame};
use super::link::{self, Activity, Ctl, End, Queued};
use super::stats::Stats;

/// Frames written between two flushes at most.
const BATCH: usize = 64;

type Sink = BufWriter<OwnedWriteHalf>;

/// The writer task of one peer slot.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    peer: SocketAddrV4,
    slot_id: u64,
    frames: mpsc::Receiver<Queued>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    kill: oneshot::Receiver<()>,
    activity: Arc<Activity>,
    /// Held while running: shutdown waits for every writer to let go.
    _running: Arc<()>,
    /// The current connection's id and write half.
    conn: Option<(u64, Sink)>,
    last_write: Instant,
}

impl Writer {
    /// A writer for slot `slot_id` of `peer`; run it with [`Writer::run`].
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor wiring a task's channels"
    )]
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: SocketAddrV4,
        slot_id: u64,
        frames: mpsc::Receiver<Queued>,
        ctl: mpsc::UnboundedReceiver<Ctl>,
        kill: oneshot::Receiver<()>,
        activity: Arc<Activity>,
        running: Arc<()>,
    ) -> Self {
        Self {
            shared,
            peer,
            slot_id,
            frames,
            ctl,
            kill,
            activity,
            _running: running,
            conn: None,
            last_write: Instant::now(),
        }
    }

    /// Runs until the slot goes away or the link is closed.
    pub(crate) async fn run(mut self) {
        let heartbeat = self.shared.cfg.heartbeat;
        loop {
            let beat_at = self.last_write + heartbeat;
            let idle_at = self.idle_deadline();
            let linked = self.conn.is_some();
            tokio::select! {
                biased;
                _ = &mut self.kill => break,
                ctl = self.ctl.recv() => match ctl {
                    None => break,
                    Some(Ctl::Close(_keep)) => {
                        // `_keep` holds the kill switch: nothing interrupts the bounded flush.
                        let linger = self.shared.linger();
                        let _ = tokio::time::timeout(linger, self.flush_and_close()).await;
                        break;
                    }
                    Some(ctl) => self.control(ctl),
                },
                q = self.frames.recv(), if linked => match q {
                    None => break,
                    Some(q) => {
                        let kill = &mut self.kill;
                        let ok = tokio::select! {
                            biased;
                            _ = kill => break,
                            ok = Self::write_batch(&self.shared, self.peer, &mut self.frames,
                                    &mut self.conn, &self.activity, q) => ok,
                        };
                        self.last_write = Instant::now();
                        if !ok {
                            self.write_failed().await;
                        }
                    }
                },
                () = tokio::time::sleep_until(beat_at), if linked => self.heartbeat().await,
                () = sleep_until_opt(idle_at), if linked && idle_at.is_some() => self.check_idle().await,
            }
        }
        // Whatever is still queued will never be written.
        self.frames.close();
        let mut dropped = 0;
        while self.frames.try_recv().is_ok() {
            dropped += 1;
        }
        Stats::add(&self.shared.stats.frames_dropped_no_link, dropped);
    }

    fn control(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Attach { conn, w } => {
                if let Some((_, old)) = self.conn.replace((conn, BufWriter::new(w))) {
                    retire_sink(&self.shared, old);
                }
                self.last_write = Instant::now();
            }
            Ctl::Detach { conn } => {
                if self.conn.as_ref().is_some_and(|(id, _)| *id == conn)
                    && let Some((_, sink)) = self.conn.take()
                {
                    close_sink(&self.shared, sink);
                }
            }
            Ctl::Close(_) => {}
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes. `false` if the
    /// connection failed.
    async fn write_batch(
        shared: &Shared,
        peer: SocketAddrV4,
        frames: &mut mpsc::Receiver<Queued>,
        conn: &mut Option<(u64, Sink)>,
        activity: &Activity,
        first: Queued,
    ) -> bool {
        let Some((_, sink)) = conn.as_mut() else {
            return true;
        };
        let mut next = Some(first);
        let mut n = 0;
        while let Some(q) = next.take() {
            let delay = shared.faults.delay(peer);
            if !delay.is_zero() && q.at + delay > Instant::now() {
                if sink.flush().await.is_err() {
                    return false;
                }
                tokio::time::sleep_until(q.at + delay).await;
            }
            if shared.faults.is_partitioned(peer) {
                // A frame never vanishes from a link that stays up: the cores rely on a link
                // delivering in order or being reported down. So a send across the cut resets
                // the link (as TCP would after its retransmissions give up).
                Stats::bump(&shared.stats.injected_drops);
                return false;
            }
            if write_frame(sink, &q.payload).await.is_err() {
                return false;
            }
            Stats::bump(&shared.stats.frames_sent);
            Stats::add(&shared.stats.bytes_sent, q.payload.len() as u64);
            activity.touch(shared.now_ms());
            n += 1;
            if n < BATCH {
                next = frames.try_recv().ok();
            }
        }
        let flushed = sink.flush().await.is_ok();
        if flushed {
            activity.wrote();
        }
        flushed
    }

    async fn heartbeat(&mut self) {
        self.last_write = Instant::now();
        if self.shared.faults.is_partitioned(self.peer) {
            // Across a partition heartbeats are lost too: the link dies by timeout.
            return;
        }
        let Some((_, sink)) = self.conn.as_mut() else {
            return;
        };
        let kill = &mut self.kill;
        let ok = tokio::select! {
            biased;
            _ = kill => return,
            r = async { write_frame(sink, &[]).await?; sink.flush().await } => r.is_ok(),
        };
        if ok {
            self.activity.wrote();
        } else {
            self.write_failed().await;
        }
    }

    async fn write_failed(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            link::conn_ended(&self.shared, self.peer, conn, End::WriteFailed).await;
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.shared.cfg.idle_close?;
        let last = Duration::from_millis(self.activity.last_ms());
        Some(self.shared.epoch + last + idle)
    }

    async fn check_idle(&mut self) {
        // Activity may have moved since the deadline was computed (the reader updates it).
        if self.idle_deadline().is_some_and(|at| at <= Instant::now()) {
            link::idle(&self.shared, self.peer, self.slot_id).await;
        }
    }

    /// Writes everything queued on the current connection, then half-closes it.
    async fn flush_and_close(&mut self) {
        self.frames.close();
        if self.conn.is_none() {
            // Never linked: the exit path counts what stays queued.
            return;
        }
        while let Ok(q) = self.frames.try_recv() {
            let ok = Self::write_batch(
                &self.shared,
                self.peer,
                &mut self.frames,
                &mut self.conn,
                &self.activity,
                q,
            )
            .await;
            if !ok || self.conn.is_none() {
                break;
            }
        }
        if let Some((_, mut sink)) = self.conn.take() {
            // The goodbye tells the peer this end is on purpose, not a crash (`frame::CLOSE`).
            let _ = sink.write_all(&CLOSE).await;
            let _ = sink.shutdown().await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Half-closes `sink` in the background (the peer retired its connection).
fn close_sink(shared: &Shared, mut sink: Sink) {
    let linger = shared.linger();
    shared.spawn(async move {
        let _ = tokio::time::timeout(linger, sink.shutdown()).await;
    });
}

/// Retires a connection we wrote on: flush, the `RETIRE` marker, half-close (background).
fn retire_sink(shared: &Shared, mut sink: Sink) {
    let linger = shared.linger();
    shared.spawn(async move {
        let _ = tokio::time::timeout(linger, async {
            sink.write_all(&RETIRE).await?;
            sink.shutdown().await
        })
        .await;
    });
}

/// Retires a connection nobody wrote on yet (it lost to another one at adoption).
pub(crate) fn retire(shared: &Shared, w: OwnedWriteHalf) {
    retire_sink(shared, BufWriter::new(w));
}
