//! Opening connections: the accept loop and outbound dials, each bounded by `connect_timeout`
//! and authenticated by the [handshake](super::handshake) before the link table sees them.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::Shared;
use super::handshake::{self, HandshakeError};
use super::link::{self, Initiator};
use super::stats::Stats;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Inbound handshakes in progress at most: connections beyond it are closed at once, so a flood
/// of unauthenticated connections costs bounded memory and tasks.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Accepts connections for the life of the transport; each gets its own handshake task.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    Stats::bump(&shared.stats.bad_handshakes);
                    continue;
                };
                let s = shared.clone();
                shared.spawn(async move {
                    accept(s, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Runs the acceptor side of the handshake, then hands the connection to the link table.
async fn accept(shared: Arc<Shared>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let source = match stream.peer_addr() {
        Ok(SocketAddr::V4(a)) => SocketAddrV4::new(*a.ip(), 0),
        _ => return,
    };
    let cfg = &shared.cfg;
    // A partitioned peer is refused before we answer, so its dial fails as in a real partition.
    let faults = shared.faults.clone();
    let hs = handshake::accept(
        &mut stream,
        &shared.keys.link,
        cfg.cluster,
        shared.local,
        |peer| !faults.is_partitioned(peer),
    );
    match tokio::time::timeout(cfg.connect_timeout, hs).await {
        Ok(Ok(peer)) => {
            shared.handshake_done(peer);
            link::adopt(&shared, peer, stream, Initiator::Remote).await;
        }
        Ok(Err(HandshakeError::Refused)) => Stats::bump(&shared.stats.injected_drops),
        Ok(Err(HandshakeError::Silent(e))) => {
            Stats::bump(&shared.stats.silent_connections);
            tracing::debug!(%source, "inbound connection closed before a hello: {e}");
        }
        // Counted at once; logged by the peer its hello named, as a warning only if it goes on.
        Ok(Err(e @ HandshakeError::Abandoned { peer, .. })) => {
            Stats::bump(&shared.stats.bad_handshakes);
            shared.abandoned(peer, &e);
        }
        Ok(Err(e)) if e.is_auth_failure() => {
            Stats::bump(&shared.stats.auth_failures);
            shared.warn_once(source, "inbound handshake refused", &e);
        }
        Ok(Err(e)) => refused(&shared, source, "inbound handshake refused", &e),
        Err(_) => refused(&shared, source, "inbound handshake", &"timed out"),
    }
}

/// Counts and logs (once per peer) a failed handshake.
fn refused(shared: &Shared, peer: SocketAddrV4, what: &str, e: &dyn std::fmt::Display) {
    Stats::bump(&shared.stats.bad_handshakes);
    shared.warn_once(peer, what, e);
}

/// Dials `peer` for slot `slot_id` and reports the outcome to the link table.
pub(crate) async fn dial(shared: Arc<Shared>, peer: SocketAddrV4, slot_id: u64) {
    let timeout = shared.cfg.connect_timeout;
    // `Err(true)`: refused (the host answered, nothing listens on the port).
    let outcome = if shared.faults.is_partitioned(peer) {
        // Nothing answers across a partition: the dial times out.
        Stats::bump(&shared.stats.injected_drops);
        tokio::time::sleep(timeout).await;
        Err(false)
    } else {
        match tokio::time::timeout(timeout, open(&shared, peer)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(HandshakeError::Io(io))) if io.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::debug!(%peer, "dial refused: nothing listens there");
                Err(true)
            }
            Ok(Err(e)) => {
                if e.is_auth_failure() {
                    Stats::bump(&shared.stats.auth_failures);
                    shared.warn_once(peer, "outbound handshake refused", &e);
                } else if let HandshakeError::Io(io) = &e {
                    tracing::debug!(%peer, "dial failed: {io}");
                } else {
                    refused(&shared, peer, "outbound handshake refused", &e);
                }
                Err(false)
            }
            Err(_) => {
                tracing::debug!(%peer, "dial timed out");
                Err(false)
            }
        }
    };
    match outcome {
        Ok(stream) => link::adopt(&shared, peer, stream, Initiator::Local(slot_id)).await,
        Err(refused) => link::dial_failed(&shared, peer, slot_id, refused).await,
    }
}

/// Connects from our listen IP (so the peer sees the address it knows) and authenticates.
async fn open(shared: &Shared, peer: SocketAddrV4) -> Result<TcpStream, HandshakeError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddrV4::new(*shared.local.ip(), 0).into())?;
    let mut stream = socket.connect(peer.into()).await?;
    stream.set_nodelay(true)?;
    handshake::connect(
        &mut stream,
        &shared.keys.link,
        shared.cfg.cluster,
        shared.local,
        peer,
    )
    .await?;
    Ok(stream)
}
