//! The datagram side: sealing and sending (never blocking), and the receive loop that opens,
//! de-duplicates and forwards datagrams.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use meshreg_membership::wire::MAX_DATAGRAM_PAYLOAD;
use tokio::net::UdpSocket;

use super::datagram::{self, DatagramError, MAX_DATAGRAM};
use super::replay::{Replay, ReplayWindow};
use super::stats::Stats;
use super::{Shared, TransportEvent};

/// See [`Transport::send_datagram`](super::Transport::send_datagram).
pub(crate) fn send(shared: &Arc<Shared>, to: SocketAddrV4, payload: Vec<u8>) {
    let stats = &shared.stats;
    if payload.len() > MAX_DATAGRAM_PAYLOAD {
        Stats::bump(&stats.datagrams_too_large);
        tracing::warn!(%to, len = payload.len(), "datagram over the payload cap dropped");
        return;
    }
    let Some(delay) = shared.faults.outbound_datagram(to) else {
        Stats::bump(&stats.injected_drops);
        return;
    };
    let sealed = shared.sealer.seal(to, &payload);
    if delay.is_zero() {
        transmit(shared, to, &sealed, payload.len());
        return;
    }
    let s = shared.clone();
    let len = payload.len();
    let spawned = shared.spawn(async move {
        tokio::time::sleep(delay).await;
        transmit(&s, to, &sealed, len);
    });
    if spawned.is_none() {
        Stats::bump(&stats.datagrams_dropped);
    }
}

fn transmit(shared: &Shared, to: SocketAddrV4, sealed: &[u8], payload_len: usize) {
    let stats = &shared.stats;
    let sent = shared
        .udp()
        .is_some_and(|udp| udp.send_to(sealed, to).is_ok());
    if sent {
        Stats::bump(&stats.datagrams_sent);
        Stats::add(&stats.bytes_sent, payload_len as u64);
    } else {
        Stats::bump(&stats.datagrams_dropped);
    }
}

/// Receives datagrams for the life of the transport.
pub(crate) async fn receive_loop(shared: Arc<Shared>, udp: UdpSocket) {
    // One byte more than the largest valid datagram, to tell "too large" from "exactly max".
    let mut buf = vec![0; MAX_DATAGRAM + 1];
    // Replay state per sender; only authenticated senders get an entry.
    let mut windows: HashMap<SocketAddrV4, ReplayWindow> = HashMap::new();
    let stats = &shared.stats;
    loop {
        let (n, from) = match udp.recv_from(&mut buf).await {
            Ok((n, SocketAddr::V4(from))) => (n, from),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!("datagram receive failed: {e}");
                continue;
            }
        };
        if shared.faults.is_partitioned(from) {
            Stats::bump(&stats.injected_drops);
            continue;
        }
        let opened = match datagram::open(&shared.keys.datagram, from, shared.local, &buf[..n]) {
            Ok(o) => o,
            Err(DatagramError::TooLarge) => {
                Stats::bump(&stats.oversized);
                continue;
            }
            Err(DatagramError::Truncated) => {
                Stats::bump(&stats.bad_datagrams_truncated);
                continue;
            }
            Err(DatagramError::BadTag) => {
                Stats::bump(&stats.bad_datagrams_tag);
                continue;
            }
        };
        let fresh = match windows.get_mut(&from) {
            Some(w) => w.check_and_record(opened.session, opened.seq),
            None => {
                windows.insert(from, ReplayWindow::new(opened.session, opened.seq));
                Ok(())
            }
        };
        if let Err(why) = fresh {
            Stats::bump(&stats.replays);
            if why == Replay::OldSession {
                tracing::debug!(%from, "datagram of an older session of its sender refused");
            }
            continue;
        }
        Stats::bump(&stats.datagrams_received);
        Stats::add(&stats.bytes_received, opened.payload.len() as u64);
        let event = TransportEvent::Datagram {
            from,
            payload: opened.payload.to_vec(),
        };
        if shared.events.send(event).await.is_err() {
            return;
        }
    }
}
