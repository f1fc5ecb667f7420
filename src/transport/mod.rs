//! The node runtime's transport: authenticated UDP datagrams and framed, authenticated TCP links,
//! all on one listen address that is the node's identity on the wire.
//!
//! [`Transport::bind`] returns the [`Transport`] handle and the receiver of [`TransportEvent`]s
//! (datagrams, frames and link changes) that the node feeds to its sans-IO cores. Important types:
//! - [`TransportConfig`]: addresses, secret, bounds and timers.
//! - [`Faults`]: run-time fault injection (delay, loss, partitions) for tests and demos.
//! - [`TransportStats`]: counters; every drop is counted somewhere.
//!
//! Inside: `link.rs` keeps the per-peer link table and its rules (one link per pair, simultaneous
//! connects), `writer.rs` and `reader.rs` are the tasks of a link, `udp.rs` the datagram side,
//! `handshake.rs`, `frame.rs`, `datagram.rs` and `replay.rs` the wire.
//!
//! Architecture Invariant: nothing a peer sends can panic the transport or make it allocate more
//! than the configured caps; a peer that fails the handshake changes no state and causes no event.

mod config;
mod connect;
mod datagram;
mod error;
mod faults;
mod frame;
mod handshake;
mod keys;
mod link;
mod reader;
mod replay;
mod stats;
mod udp;
mod writer;

#[cfg(test)]
mod fuzz_tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshreg_membership::LinkEvent;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

pub use config::{FRAME_SLACK, MIN_SECRET_LEN, TransportConfig};
pub use error::{SendError, TransportError};
pub use faults::{Faults, PeerFaults};
pub use stats::TransportStats;

use datagram::DatagramSealer;
use keys::Keys;
use link::Links;
use stats::Stats;

/// What the transport reports to the node, in order per link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// An authenticated datagram from the node listening at `from`.
    Datagram {
        /// The sender's listen address.
        from: SocketAddrV4,
        /// The payload (an enveloped core message).
        payload: Vec<u8>,
    },
    /// A frame from the peer listening at `from`. Frames of one link arrive in the order sent.
    Frame {
        /// The sender's listen address.
        from: SocketAddrV4,
        /// The payload (an enveloped core message).
        payload: Vec<u8>,
    },
    /// A link came up, went down, or a connect failed.
    Link(LinkEvent),
}

/// How long `shutdown` waits for queued frames to be flushed.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Peers whose handshake failures we remember having logged (beyond it we stop logging).
const WARNED_CAP: usize = 4096;
/// Handshakes in a row a peer may abandon after its hello before we warn about it. Why not
/// at once: a node that stops while it dials, or that is killed with its redials in flight,
/// abandons one or two, and every survivor would warn about it; a node with another secret
/// redials and abandons forever.
const ABANDONS_BEFORE_WARNING: u32 = 3;

/// State shared by the handle and every task.
pub(crate) struct Shared {
    cfg: TransportConfig,
    local: SocketAddrV4,
    keys: Keys,
    sealer: DatagramSealer,
    /// The sending clone of the UDP socket (plain non-blocking std socket: a send never waits
    /// for the reactor). `None` once shut down, so the port is released while handles live on.
    udp: RwLock<Option<Arc<std::net::UdpSocket>>>,
    /// Base of the millisecond clocks of link activity.
    epoch: tokio::time::Instant,
    events: mpsc::Sender<TransportEvent>,
    links: Mutex<Links>,
    tasks: Mutex<JoinSet<()>>,
    runtime: tokio::runtime::Handle,
    closed: AtomicBool,
    stats: Stats,
    faults: Faults,
    warned: Mutex<HashSet<SocketAddrV4>>,
    /// Handshakes abandoned after the hello, in a row, per peer (at most `WARNED_CAP` peers).
    abandons: Mutex<HashMap<SocketAddrV4, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that can panic, so a
    // poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Spawns a task owned by the transport (aborted at shutdown or drop). `None` once closed.
    fn spawn<F>(&self, fut: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        // Reap finished tasks so the set stays as large as the live tasks.
        while tasks.try_join_next().is_some() {}
        Some(tasks.spawn_on(fut, &self.runtime))
    }

    /// Stops everything at once: no new task, every task aborted, the UDP socket released.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.tasks).abort_all();
        *self
            .udp
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Waits for every task to end after [`Self::close`] (aborted tasks end at their next
    /// await point; their sockets are dropped with them). No task is added once closed.
    async fn join_tasks(&self) {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        while tasks.join_next().await.is_some() {}
    }

    /// The sending UDP socket, unless shut down.
    fn udp(&self) -> Option<Arc<std::net::UdpSocket>> {
        self.udp
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Milliseconds since the transport started (link activity clock).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long a closing connection may take to flush and half-close.
    fn linger(&self) -> Duration {
        (self.cfg.heartbeat * 3).max(Duration::from_secs(1))
    }

    /// Logs a refused handshake once per peer address (a misconfigured peer retries forever).
    fn warn_once(&self, peer: SocketAddrV4, what: &str, err: &dyn std::fmt::Display) {
        let mut warned = lock(&self.warned);
        if warned.len() < WARNED_CAP && warned.insert(peer) {
            tracing::warn!(%peer, "{what}: {err} (further failures of this peer are only counted)");
        }
    }

    /// Notes that `peer` abandoned an inbound handshake after its hello; warns (once) when it
    /// has done so [`ABANDONS_BEFORE_WARNING`] times in a row.
    fn abandoned(&self, peer: SocketAddrV4, err: &dyn std::fmt::Display) {
        let mut abandons = lock(&self.abandons);
        if abandons.len() >= WARNED_CAP && !abandons.contains_key(&peer) {
            return;
        }
        let n = abandons.entry(peer).or_insert(0);
        *n += 1;
        if *n == ABANDONS_BEFORE_WARNING {
            let n = *n;
            drop(abandons);
            let what = format!("inbound handshakes abandoned {n} times in a row");
            self.warn_once(peer, &what, err);
        } else {
            tracing::debug!(%peer, "inbound handshake abandoned: {err}");
        }
    }

    /// A handshake with `peer` completed: its abandons no longer run in a row.
    fn handshake_done(&self, peer: SocketAddrV4) {
        lock(&self.abandons).remove(&peer);
    }
}

/// Aborts every task when the last [`Transport`] handle is dropped, closing every socket.
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// One node's transport. Cheap to clone; the clones share the sockets. Dropping the last clone
/// closes everything abruptly (peers see their links go down); [`Transport::shutdown`] first
/// flushes queued frames.
///
/// Methods never block; they must be called inside the Tokio runtime `bind` ran on, or from
/// threads of it.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

/// Binds TCP first (so port 0 picks a port), then UDP on the same port; retries with another
/// port when UDP's is taken and the caller let us choose.
async fn bind_sockets(
    listen: SocketAddrV4,
) -> Result<(TcpListener, std::net::UdpSocket), TransportError> {
    let bind_err = |protocol, source| TransportError::Bind {
        addr: listen,
        protocol,
        source,
    };
    let mut attempts = 0;
    loop {
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|e| bind_err("tcp", e))?;
        let port = tcp.local_addr().map_err(|e| bind_err("tcp", e))?.port();
        match std::net::UdpSocket::bind(SocketAddrV4::new(*listen.ip(), port)) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(_) if listen.port() == 0 && attempts < 8 => attempts += 1,
            Err(e) => return Err(bind_err("udp", e)),
        }
    }
}

impl Transport {
    /// Binds the sockets of `cfg.listen` and starts the accept and datagram tasks.
    pub async fn bind(
        cfg: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<TransportEvent>), TransportError> {
        cfg.validate()?;
        let (tcp, udp) = bind_sockets(cfg.listen).await?;
        let port = tcp
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                protocol: "tcp",
                source,
            })?
            .port();
        let local = SocketAddrV4::new(*cfg.listen.ip(), port);
        let udp_err = |source| TransportError::Bind {
            addr: local,
            protocol: "udp",
            source,
        };
        udp.set_nonblocking(true).map_err(udp_err)?;
        let receiver = UdpSocket::from_std(udp.try_clone().map_err(udp_err)?).map_err(udp_err)?;
        let keys = Keys::derive(&cfg.secret, cfg.cluster);
        // A restarted sender must present a later session: its start time in unix ms.
        let session = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (events, rx) = mpsc::channel(cfg.event_queue);
        let seed = u64::from_le_bytes(keys::random_bytes());
        let shared = Arc::new(Shared {
            sealer: DatagramSealer::new(keys.datagram, local, session),
            keys,
            local,
            udp: RwLock::new(Some(Arc::new(udp))),
            epoch: tokio::time::Instant::now(),
            events,
            links: Mutex::new(Links::default()),
            tasks: Mutex::new(JoinSet::new()),
            runtime: tokio::runtime::Handle::current(),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
            faults: Faults::new(seed),
            warned: Mutex::new(HashSet::new()),
            abandons: Mutex::new(HashMap::new()),
            cfg,
        });
        shared.spawn(connect::accept_loop(shared.clone(), tcp));
        shared.spawn(udp::receive_loop(shared.clone(), receiver));
        let guard = Arc::new(Guard(shared.clone()));
        Ok((
            Self {
                shared,
                _guard: guard,
            },
            rx,
        ))
    }

    /// This node's listen address (with the port the OS picked if it was 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.shared.local
    }

    /// Sends an authenticated datagram. Never blocks: a full socket buffer, fault injection or a
    /// payload over
    /// [`MAX_DATAGRAM_PAYLOAD`](meshreg_membership::wire::MAX_DATAGRAM_PAYLOAD) (a caller bug) is a counted drop.
    pub fn send_datagram(&self, to: SocketAddrV4, payload: Vec<u8>) {
        udp::send(&self.shared, to, payload);
    }

    /// Queues a frame to `to`, dialling it if no link exists (frames wait for the handshake; if
    /// the dial fails they are dropped and counted, and `Link(ConnectFailed(to))` is reported).
    /// Never blocks: a full peer queue is `Err(SendError::QueueFull)`, counted.
    pub fn send_frame(&self, to: SocketAddrV4, payload: Vec<u8>) -> Result<(), SendError> {
        link::send_frame(&self.shared, to, payload)
    }

    /// Like [`Transport::send_frame`], but a full peer queue defers the frame to a task that
    /// waits for room (counted in `frames_deferred`) instead of refusing it: for the few
    /// messages no protocol repairs and no caller can wait for, such as a process monitor's
    /// notice sent while a lock is held. A deferred frame may be overtaken by frames sent to
    /// the same peer after it; it is dropped (counted in `frames_dropped_no_link`) only if the
    /// link goes away first. Errors: `Closed`, `TooLarge`.
    pub fn send_frame_or_defer(&self, to: SocketAddrV4, payload: Vec<u8>) -> Result<(), SendError> {
        link::send_frame_or_defer(&self.shared, to, payload)
    }

    /// Like [`Transport::send_frame`], but waits for room in the peer's queue (back-pressure
    /// for user-level sends).
    pub async fn send_frame_wait(
        &self,
        to: SocketAddrV4,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        link::send_frame_wait(&self.shared, to, payload).await
    }

    /// Opens a link to `to`. Answered by `Link(Up(to))` (again, if a link already exists) or
    /// `Link(ConnectFailed(to))`.
    pub fn connect(&self, to: SocketAddrV4) {
        link::connect(&self.shared, to);
    }

    /// Closes the link to `to` after flushing its queued frames; the peer sees `Link(Down(me))`.
    /// No event is reported locally: the caller knows.
    pub fn disconnect(&self, to: SocketAddrV4) {
        link::disconnect(&self.shared, to);
    }

    /// Fault injection of this transport.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.stats.snapshot()
    }

    /// Closes every socket and stops every task at once, without flushing: what a killed
    /// process does (peers see their links reset). For failure tests and demos.
    /// Returns once every task has ended, so the ports are free again (a restarted node may
    /// bind the same address at once).
    pub async fn abort(&self) {
        self.shared.close();
        self.shared.join_tasks().await;
    }

    /// Flushes queued frames (waiting at most 1 s), closes every link and socket and stops every
    /// task. Peers see their links go down. Later sends are refused or dropped.
    pub async fn shutdown(&self) {
        link::close_all(&self.shared);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
        while link::writers_running(&self.shared) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.close();
        self.shared.join_tasks().await;
    }
}
