//! The transport over real loopback sockets: datagrams, frames, links and fault injection.
//!
//! Every test binds port 0 on 127.0.0.1 and runs under a timeout; timers are short (50 ms
//! heartbeats) so failures are detected in a fraction of a second.

mod common;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use meshreg::membership::LinkEvent;
use meshreg::transport::{SendError, Transport, TransportConfig, TransportEvent};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Receiver;

const SECRET: &[u8] = b"0123456789abcdef-test-secret";
const HEARTBEAT: Duration = Duration::from_millis(50);

fn config(secret: &[u8]) -> TransportConfig {
    let mut cfg = TransportConfig::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), secret, 7);
    cfg.heartbeat = HEARTBEAT;
    cfg.connect_timeout = Duration::from_millis(500);
    cfg
}

async fn node_with(cfg: TransportConfig) -> (Transport, Receiver<TransportEvent>) {
    Transport::bind(cfg).await.expect("bind on loopback")
}

async fn node() -> (Transport, Receiver<TransportEvent>) {
    node_with(config(SECRET)).await
}

/// Runs a test body under a hard time limit.
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), body)
        .await
        .expect("test exceeded its time limit");
}

/// The next event, waiting at most `within`.
async fn next(rx: &mut Receiver<TransportEvent>, within: Duration) -> Option<TransportEvent> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// The next link event, skipping frames and datagrams.
async fn next_link(rx: &mut Receiver<TransportEvent>, within: Duration) -> Option<LinkEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(rx, left).await? {
            TransportEvent::Link(e) => return Some(e),
            _ => continue,
        }
    }
}

/// Every link event within `window`.
async fn links_within(rx: &mut Receiver<TransportEvent>, window: Duration) -> Vec<LinkEvent> {
    let deadline = tokio::time::Instant::now() + window;
    let mut out = vec![];
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_link(rx, left).await {
            Some(e) => out.push(e),
            None => return out,
        }
    }
}

/// Links `a` to `b` and waits for both `Up`s.
async fn link(
    a: &Transport,
    ra: &mut Receiver<TransportEvent>,
    b: &Transport,
    rb: &mut Receiver<TransportEvent>,
) {
    a.connect(b.local_addr());
    let second = Duration::from_secs(2);
    assert_eq!(
        next_link(ra, second).await,
        Some(LinkEvent::Up(b.local_addr()))
    );
    assert_eq!(
        next_link(rb, second).await,
        Some(LinkEvent::Up(a.local_addr()))
    );
}

async fn expect_frame(rx: &mut Receiver<TransportEvent>, from: SocketAddrV4, payload: &[u8]) {
    loop {
        match next(rx, Duration::from_secs(2)).await {
            Some(TransportEvent::Frame {
                from: f,
                payload: p,
            }) => {
                assert_eq!((f, p.as_slice()), (from, payload));
                return;
            }
            Some(TransportEvent::Link(_)) => continue,
            other => panic!("expected a frame from {from}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn datagrams_and_frames_flow_both_ways() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        a.send_datagram(b.local_addr(), b"ping".to_vec());
        assert_eq!(
            next(&mut rb, Duration::from_secs(2)).await,
            Some(TransportEvent::Datagram {
                from: a.local_addr(),
                payload: b"ping".to_vec()
            })
        );
        b.send_datagram(a.local_addr(), b"pong".to_vec());
        assert_eq!(
            next(&mut ra, Duration::from_secs(2)).await,
            Some(TransportEvent::Datagram {
                from: b.local_addr(),
                payload: b"pong".to_vec()
            })
        );
        // An on-demand link: the first frame dials.
        a.send_frame(b.local_addr(), b"hello b".to_vec()).unwrap();
        expect_frame(&mut rb, a.local_addr(), b"hello b").await;
        b.send_frame(a.local_addr(), b"hello a".to_vec()).unwrap();
        expect_frame(&mut ra, b.local_addr(), b"hello a").await;
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.datagrams_sent, sb.datagrams_received), (1, 1));
        assert_eq!((sa.frames_sent, sb.frames_received), (1, 1));
        assert_eq!((sa.links_up, sb.links_up), (1, 1));
    })
    .await;
}

/// A frame the receiver never answers leaves the kernel holding its ACK; the reader sends it
/// while the link is quiet, so the sender's next frame is not the one that pays for it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_frame_nobody_answers_has_its_ack_sent_by_the_reader() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        let before = b.stats().acks_flushed;
        a.send_frame(b.local_addr(), b"no answer".to_vec()).unwrap();
        expect_frame(&mut rb, a.local_addr(), b"no answer").await;
        common::until(
            Duration::from_secs(2),
            "the reader sent the held ACK",
            || b.stats().acks_flushed > before,
        )
        .await;
        // The link is unchanged by it: frames still flow both ways.
        b.send_frame(a.local_addr(), b"late answer".to_vec())
            .unwrap();
        expect_frame(&mut ra, b.local_addr(), b"late answer").await;
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_frames_to_one_peer_arrive_in_order() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        let n: u32 = 10_000;
        let to = b.local_addr();
        let sender = tokio::spawn(async move {
            for i in 0..n {
                a.send_frame_wait(to, i.to_be_bytes().to_vec())
                    .await
                    .unwrap();
            }
            a
        });
        let mut expected = 0u32;
        while expected < n {
            match next(&mut rb, Duration::from_secs(5)).await {
                Some(TransportEvent::Frame { payload, .. }) => {
                    assert_eq!(payload, expected.to_be_bytes(), "frame out of order");
                    expected += 1;
                }
                Some(TransportEvent::Link(e)) => panic!("unexpected link event {e:?}"),
                other => panic!("stream stalled at {expected}: {other:?}"),
            }
        }
        let a = sender.await.unwrap();
        assert_eq!(a.stats().frames_sent, u64::from(n));
    })
    .await;
}

#[tokio::test]
async fn a_peer_with_the_wrong_secret_is_refused_on_both_sides() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (bad, mut rbad) = node_with(config(b"another secret, 16+ bytes")).await;
        bad.connect(a.local_addr());
        assert_eq!(
            next_link(&mut rbad, Duration::from_secs(2)).await,
            Some(LinkEvent::ConnectFailed(a.local_addr()))
        );
        a.connect(bad.local_addr());
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(2)).await,
            Some(LinkEvent::ConnectFailed(bad.local_addr()))
        );
        // Its datagrams are refused too.
        bad.send_datagram(a.local_addr(), b"forged".to_vec());
        assert!(
            links_within(&mut ra, Duration::from_millis(200))
                .await
                .is_empty()
        );
        assert!(
            links_within(&mut rbad, Duration::from_millis(50))
                .await
                .is_empty()
        );
        let (sa, sbad) = (a.stats(), bad.stats());
        assert!(
            sa.auth_failures >= 1 && sbad.auth_failures >= 1,
            "{sa:?} {sbad:?}"
        );
        assert_eq!((sa.links_up, sbad.links_up), (0, 0));
        assert_eq!(sa.bad_datagrams_tag, 1);
        assert_eq!(sa.datagrams_received, 0);
    })
    .await;
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_counted_and_changes_nothing() {
    bounded(async {
        let (a, mut ra) = node().await;
        let mut s = tokio::net::TcpStream::connect(a.local_addr())
            .await
            .unwrap();
        s.write_all(&[0xAB; 64]).await.unwrap();
        let mut buf = [0; 8];
        // The transport hangs up on us.
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(
            links_within(&mut ra, Duration::from_millis(100))
                .await
                .is_empty()
        );
        assert_eq!(a.stats().bad_handshakes, 1);
        assert_eq!(a.stats().links_up, 0);
    })
    .await;
}

#[tokio::test]
async fn a_connection_closed_before_a_byte_is_counted_as_silent_not_bad() {
    bounded(async {
        let (a, mut ra) = node().await;
        let s = tokio::net::TcpStream::connect(a.local_addr())
            .await
            .unwrap();
        drop(s);
        assert!(
            links_within(&mut ra, Duration::from_millis(100))
                .await
                .is_empty()
        );
        let st = a.stats();
        assert_eq!((st.silent_connections, st.bad_handshakes), (1, 0), "{st:?}");
        assert_eq!(st.links_up, 0);
    })
    .await;
}

// Two worker threads, so both dials and both accepts really race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_yield_exactly_one_up_per_side() {
    bounded(async {
        for round in 0..10 {
            let (a, mut ra) = node().await;
            let (b, mut rb) = node().await;
            a.connect(b.local_addr());
            b.connect(a.local_addr());
            // Frames queued during the race are delivered whichever connection wins.
            a.send_frame(b.local_addr(), b"early a".to_vec()).unwrap();
            b.send_frame(a.local_addr(), b"early b".to_vec()).unwrap();
            // The first event on each side is the Up (however long a loaded machine takes to
            // get there); then nothing more comes: the race leaves exactly one link.
            let limit = Duration::from_secs(5);
            let (ua, ub) = tokio::join!(next_link(&mut ra, limit), next_link(&mut rb, limit));
            assert_eq!(ua, Some(LinkEvent::Up(b.local_addr())), "round {round}");
            assert_eq!(ub, Some(LinkEvent::Up(a.local_addr())), "round {round}");
            let window = Duration::from_millis(300);
            let (ea, eb) =
                tokio::join!(links_within(&mut ra, window), links_within(&mut rb, window));
            assert_eq!(ea, vec![], "round {round}");
            assert_eq!(eb, vec![], "round {round}");
            a.send_frame(b.local_addr(), b"after a".to_vec()).unwrap();
            b.send_frame(a.local_addr(), b"after b".to_vec()).unwrap();
            expect_frame(&mut rb, a.local_addr(), b"after a").await;
            expect_frame(&mut ra, b.local_addr(), b"after b").await;
            let (sa, sb) = (a.stats(), b.stats());
            assert_eq!((sa.links_up, sb.links_up), (1, 1), "round {round}");
            assert_eq!(sa.frames_received + sb.frames_received, 4, "round {round}");
            assert_eq!(sa.frames_dropped_no_link + sb.frames_dropped_no_link, 0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_link_stays_up_across_heartbeats_and_connect_again_reports_up() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        // Ten heartbeat periods of silence: heartbeats keep it alive.
        assert!(links_within(&mut rb, HEARTBEAT * 10).await.is_empty());
        a.connect(b.local_addr());
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(1)).await,
            Some(LinkEvent::Up(b.local_addr()))
        );
        assert!(
            links_within(&mut rb, Duration::from_millis(100))
                .await
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn disconnect_flushes_then_the_peer_sees_down() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        a.send_frame(b.local_addr(), b"last words".to_vec())
            .unwrap();
        a.disconnect(b.local_addr());
        expect_frame(&mut rb, a.local_addr(), b"last words").await;
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(1)).await,
            Some(LinkEvent::Down(a.local_addr()))
        );
        assert!(
            links_within(&mut ra, Duration::from_millis(100))
                .await
                .is_empty()
        );
        assert_eq!((a.stats().links_up, b.stats().links_up), (0, 0));
        // The pair can link again.
        link(&b, &mut rb, &a, &mut ra).await;
    })
    .await;
}

#[tokio::test]
async fn a_shut_down_transport_goes_down_and_a_dropped_one_resets_then_refuses() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        let (c, mut rc) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        link(&c, &mut rc, &b, &mut rb).await;
        a.send_frame(b.local_addr(), b"flushed".to_vec()).unwrap();
        a.shutdown().await;
        expect_frame(&mut rb, a.local_addr(), b"flushed").await;
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(1)).await,
            Some(LinkEvent::Down(a.local_addr()))
        );
        assert_eq!(
            a.send_frame(b.local_addr(), vec![1]),
            Err(SendError::Closed)
        );
        let c_addr = c.local_addr();
        drop(c);
        drop(rc);
        // No goodbye: what the peers of a killed process see.
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(1)).await,
            Some(LinkEvent::Reset(c_addr))
        );
        // Nothing listens there any more: a redial is refused, not merely failed.
        b.connect(c_addr);
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(1)).await,
            Some(LinkEvent::Refused(c_addr))
        );
    })
    .await;
}

#[tokio::test]
async fn a_partition_kills_the_link_within_heartbeats_and_blocks_reconnects_until_healed() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        a.faults().set_partitioned(b.local_addr(), true);
        // Three heartbeats of silence, plus scheduling slack.
        let within = HEARTBEAT * 3 + Duration::from_millis(500);
        assert_eq!(
            next_link(&mut ra, within).await,
            Some(LinkEvent::Reset(b.local_addr()))
        );
        assert_eq!(
            next_link(&mut rb, within).await,
            Some(LinkEvent::Reset(a.local_addr()))
        );
        a.connect(b.local_addr());
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(2)).await,
            Some(LinkEvent::ConnectFailed(b.local_addr()))
        );
        b.connect(a.local_addr());
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(2)).await,
            Some(LinkEvent::ConnectFailed(a.local_addr()))
        );
        assert!(a.stats().injected_drops >= 2);
        a.faults().clear();
        link(&a, &mut ra, &b, &mut rb).await;
        a.send_frame(b.local_addr(), b"healed".to_vec()).unwrap();
        expect_frame(&mut rb, a.local_addr(), b"healed").await;
    })
    .await;
}

#[tokio::test]
async fn datagram_loss_injection_drops_about_the_configured_share() {
    bounded(async {
        let (a, _ra) = node().await;
        let (b, mut rb) = node().await;
        a.faults().set_loss(b.local_addr(), 0.5);
        let n = 2_000;
        for i in 0..n {
            a.send_datagram(b.local_addr(), vec![(i % 256) as u8; 8]);
            if i % 100 == 99 {
                // Let the receiver drain so the socket buffer never overflows.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut received = 0;
        while next(&mut rb, Duration::from_millis(300)).await.is_some() {
            received += 1;
        }
        let injected = a.stats().injected_drops;
        assert!(
            (600..1_400).contains(&received),
            "received {received} of {n}"
        );
        assert!((600..1_400).contains(&injected), "injected {injected}");
        // Loopback may still refuse a few when its buffer is full: counted, never silent.
        let s = a.stats();
        assert_eq!(s.datagrams_sent + injected + s.datagrams_dropped, n);
    })
    .await;
}

/// `a` linked to `b`, with a 4-frame queue to `b` and 100 ms of injected delay: frames sit in
/// the queue for a while (less than three heartbeats, so the link lives).
async fn slow_pair_with_small_queue() -> (Transport, Transport, Receiver<TransportEvent>) {
    let (b, mut rb) = node().await;
    let mut cfg = config(SECRET);
    cfg.queue_frames = 4;
    let (a, mut ra) = node_with(cfg).await;
    link(&a, &mut ra, &b, &mut rb).await;
    a.faults()
        .set_delay(b.local_addr(), Duration::from_millis(100));
    (a, b, rb)
}

#[tokio::test]
async fn a_full_peer_queue_returns_queue_full_instead_of_blocking() {
    bounded(async {
        let (a, b, mut rb) = slow_pair_with_small_queue().await;
        // The sixth send cannot fit.
        let results: Vec<_> = (0..6u8)
            .map(|i| a.send_frame(b.local_addr(), vec![i]))
            .collect();
        assert!(results.contains(&Err(SendError::QueueFull)), "{results:?}");
        assert!(a.stats().queue_full >= 1);
        // What was accepted arrives, in order.
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        for i in 0..accepted {
            expect_frame(&mut rb, a.local_addr(), &[i as u8]).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_deferred_frame_waits_for_room_instead_of_being_refused() {
    bounded(async {
        let (a, b, mut rb) = slow_pair_with_small_queue().await;
        for i in 0..8u8 {
            a.send_frame_or_defer(b.local_addr(), vec![i]).unwrap();
        }
        let s = a.stats();
        assert!(s.frames_deferred >= 1, "{s:?}");
        assert_eq!(s.queue_full, 0, "nothing refused: {s:?}");
        // Every frame arrives; the deferred ones after those that found room.
        let mut got = Vec::new();
        while got.len() < 8 {
            match rb.recv().await {
                Some(TransportEvent::Frame { from, payload }) => {
                    assert_eq!(from, a.local_addr());
                    got.push(payload[0]);
                }
                Some(_) => {}
                None => panic!("events ended after {got:?}"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..8).collect::<Vec<u8>>());
    })
    .await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_and_is_counted() {
    bounded(async {
        let mut small = config(SECRET);
        small.max_frame = 1024;
        let (b, mut rb) = node_with(small).await;
        let (a, mut ra) = node().await;
        link(&a, &mut ra, &b, &mut rb).await;
        a.send_frame(b.local_addr(), vec![0; 2048]).unwrap();
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(1)).await,
            Some(LinkEvent::Reset(a.local_addr()))
        );
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(1)).await,
            Some(LinkEvent::Reset(b.local_addr()))
        );
        assert_eq!(b.stats().oversized, 1);
        assert_eq!(b.stats().frames_received, 0);
        assert_eq!(
            b.send_frame(a.local_addr(), vec![0; 1025]),
            Err(SendError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
    })
    .await;
}

#[tokio::test]
async fn frames_to_an_unreachable_peer_are_dropped_counted_and_reported() {
    bounded(async {
        let (a, mut ra) = node().await;
        // A port nobody listens on: bind and drop a listener to find one.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            match l.local_addr().unwrap() {
                std::net::SocketAddr::V4(v4) => v4,
                std::net::SocketAddr::V6(_) => unreachable!(),
            }
        };
        for i in 0..3u8 {
            a.send_frame(dead, vec![i]).unwrap();
        }
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(2)).await,
            Some(LinkEvent::Refused(dead))
        );
        // The writer counts its queue as it stops.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.stats().frames_dropped_no_link, 3);
        assert_eq!(a.stats().connect_failures, 1);
    })
    .await;
}

#[tokio::test]
async fn idle_on_demand_links_close_on_both_sides() {
    bounded(async {
        let mut cfg = config(SECRET);
        cfg.idle_close = Some(Duration::from_millis(200));
        let (a, mut ra) = node_with(cfg).await;
        let (b, mut rb) = node().await;
        a.send_frame(b.local_addr(), b"once".to_vec()).unwrap();
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(1)).await,
            Some(LinkEvent::Up(b.local_addr()))
        );
        expect_frame(&mut rb, a.local_addr(), b"once").await;
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(2)).await,
            Some(LinkEvent::Down(b.local_addr()))
        );
        assert_eq!(
            next_link(&mut rb, Duration::from_secs(2)).await,
            Some(LinkEvent::Down(a.local_addr()))
        );
    })
    .await;
}

#[tokio::test]
async fn a_restarted_node_on_the_same_address_is_heard_again() {
    bounded(async {
        let (a, mut ra) = node().await;
        let (b, mut rb) = node().await;
        let b_addr = b.local_addr();
        link(&a, &mut ra, &b, &mut rb).await;
        b.send_datagram(a.local_addr(), b"first life".to_vec());
        assert!(matches!(
            next(&mut ra, Duration::from_secs(1)).await,
            Some(TransportEvent::Datagram { .. })
        ));
        b.shutdown().await;
        drop((b, rb));
        assert_eq!(
            next_link(&mut ra, Duration::from_secs(1)).await,
            Some(LinkEvent::Down(b_addr))
        );
        // Sessions are start times in ms: make sure the new life starts in a later one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut cfg = config(SECRET);
        cfg.listen = b_addr;
        let (b2, mut rb2) = node_with(cfg).await;
        b2.send_datagram(a.local_addr(), b"second life".to_vec());
        assert_eq!(
            next(&mut ra, Duration::from_secs(1)).await,
            Some(TransportEvent::Datagram {
                from: b_addr,
                payload: b"second life".to_vec()
            })
        );
        assert_eq!(a.stats().replays, 0);
        link(&b2, &mut rb2, &a, &mut ra).await;
    })
    .await;
}
