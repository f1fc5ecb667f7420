//! The reader task of one connection: decodes frames, forwards them to the node, and detects
//! the connection's end (end of stream, error, oversized frame, heartbeat timeout).
//!
//! Readers await room in the node's event channel: a slow node slows its peers down through TCP
//! flow control instead of losing frames. Across an injected partition a heartbeat is discarded
//! (no sign of life) and a frame resets the link: a link never loses a frame and stays up.
//!
//! **Held ACKs.** Linux acknowledges a small segment late (delayed ACK), hoping to send the ACK
//! with the answer. When no answer comes (the last message of an exchange: a boss's `Done`, a
//! replica's ack), the ACK stays held until the peer's next segment arrives, and reading that
//! segment then sends it from inside the `recv` call, on the new message's path: on a small VM
//! that is one more wake-up of the peer, measured at +6 µs on the first read of the next
//! exchange (the ping-pong of `meshreg bench groups --only prop`, where each sample's origin is
//! the previous sample's target). So once a read has drained the socket, the reader lets the
//! node answer first (one yield); if nothing was written back on this connection meanwhile, it
//! sends the held ACK itself while the link is quiet (`TCP_QUICKACK` on, then off again to stay
//! in delayed-ACK mode for the next exchange). Linux only; elsewhere the kernel's timing stands.

use std::net::SocketAddrV4;
use std::sync::Arc;

use tokio::io::BufReader;
use tokio::net::tcp::OwnedReadHalf;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::frame::{FrameError, Incoming, read_frame};
use super::link::{self, Activity, End};
use super::stats::Stats;
use super::{Shared, TransportEvent, lock};

/// Starts the reader of connection `conn` to `peer`. Call it with the link table locked: the
/// reader waits for that lock before forwarding anything, so the connection's `Up` goes first.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    peer: SocketAddrV4,
    conn: u64,
    r: OwnedReadHalf,
    activity: Arc<Activity>,
) -> Option<AbortHandle> {
    shared.spawn(run(shared.clone(), peer, conn, r, activity))
}

async fn run(
    shared: Arc<Shared>,
    peer: SocketAddrV4,
    conn: u64,
    r: OwnedReadHalf,
    activity: Arc<Activity>,
) {
    drop(lock(&shared.links));
    let end = read_until_end(&shared, peer, r, &activity).await;
    link::conn_ended(&shared, peer, conn, end).await;
}

async fn read_until_end(
    shared: &Shared,
    peer: SocketAddrV4,
    r: OwnedReadHalf,
    activity: &Activity,
) -> End {
    let mut r = BufReader::new(r);
    let silence = shared.cfg.heartbeat * 3;
    let mut deadline = Instant::now() + silence;
    let mut retired = false;
    let mut closing = false;
    loop {
        let item = match tokio::time::timeout_at(deadline, read_frame(&mut r, shared.cfg.max_frame))
            .await
        {
            Err(_) => {
                tracing::debug!(%peer, "link silent for three heartbeats");
                return End::Broken;
            }
            Ok(Err(e)) => {
                if let FrameError::TooLarge { .. } = e {
                    Stats::bump(&shared.stats.oversized);
                    tracing::warn!(%peer, "closing link: {e}");
                } else {
                    tracing::debug!(%peer, "link closed: {e}");
                }
                return End::Broken;
            }
            Ok(Ok(item)) => item,
        };
        let payload = match item {
            Incoming::End if retired => return End::Retired,
            Incoming::End if closing => return End::Closed,
            Incoming::End => return End::Broken,
            Incoming::Retire => {
                retired = true;
                continue;
            }
            Incoming::Close => {
                closing = true;
                continue;
            }
            Incoming::Frame(payload) => payload,
        };
        if shared.faults.is_partitioned(peer) {
            if payload.is_empty() {
                continue; // a lost heartbeat: the link dies by silence
            }
            // A frame is never lost from a link that stays up (see the writer): reset it.
            Stats::bump(&shared.stats.injected_drops);
            return End::Broken;
        }
        deadline = Instant::now() + silence;
        if payload.is_empty() {
            continue; // heartbeat
        }
        Stats::bump(&shared.stats.frames_received);
        Stats::add(&shared.stats.bytes_received, payload.len() as u64);
        activity.touch(shared.now_ms());
        let event = TransportEvent::Frame {
            from: peer,
            payload,
        };
        if shared.events.send(event).await.is_err() {
            // The node is gone; nobody will read anything again.
            return End::Broken;
        }
        if r.buffer().is_empty() {
            ack_if_unanswered(shared, r.get_ref(), activity).await;
        }
    }
}

/// Sends the ACK the kernel holds for what was just read, unless this node writes on the
/// connection first (see the module docs). Best effort: a failed call changes nothing else.
#[cfg(target_os = "linux")]
async fn ack_if_unanswered(shared: &Shared, conn: &OwnedReadHalf, activity: &Activity) {
    let writes = activity.writes();
    // Runs after the tasks this read woke: the node handles the frames and its writer sends
    // any answer (which carries the ACK) before this task resumes.
    tokio::task::yield_now().await;
    if activity.writes() != writes {
        return;
    }
    let stream: &tokio::net::TcpStream = conn.as_ref();
    // On: sends the held ACK now. Off: back to delayed ACKs, so the next exchange's ACK can
    // ride on its answer again.
    if stream.set_quickack(true).is_ok() && stream.set_quickack(false).is_ok() {
        Stats::bump(&shared.stats.acks_flushed);
    }
}

#[cfg(not(target_os = "linux"))]
async fn ack_if_unanswered(_: &Shared, _: &OwnedReadHalf, _: &Activity) {}
