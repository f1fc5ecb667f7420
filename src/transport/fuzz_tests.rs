//! Properties of every decoder fed hostile bytes: no panic, no allocation past the caps, and
//! nothing accepted without the key.

use std::net::{Ipv4Addr, SocketAddrV4};

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

use super::datagram::{self, DatagramSealer};
use super::frame::{self, Header, Incoming};
use super::handshake::{self, CHALLENGE_LEN, HELLO_LEN, PROOF_LEN, Role, Transcript};

const KEY: [u8; 32] = [0x5a; 32];

fn a() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 4000)
}
fn b() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 5000)
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_frame_header_never_announces_more_than_the_cap(h in any::<[u8; 4]>(), max in 0usize..1 << 20) {
        if let Ok(Header::Frame(len)) = frame::decode_header(h, max) {
            prop_assert!(len <= max);
        }
    }

    #[test]
    fn prop_reading_arbitrary_streams_never_panics_or_exceeds_the_cap(input in bytes(300)) {
        block_on(async {
            let mut r = &input[..];
            for _ in 0..input.len() + 1 {
                match frame::read_frame(&mut r, 64).await {
                    Ok(Incoming::Frame(p)) => assert!(p.len() <= 64),
                    Ok(Incoming::Retire | Incoming::Close) => {}
                    Ok(Incoming::End) | Err(_) => break,
                }
            }
        });
    }

    #[test]
    fn prop_handshake_messages_decode_without_panic(
        hello in any::<[u8; HELLO_LEN]>(),
        challenge in proptest::collection::vec(any::<u8>(), CHALLENGE_LEN),
        proof in any::<[u8; PROOF_LEN]>(),
    ) {
        let _ = handshake::Hello::decode(&hello, 7);
        let challenge: [u8; CHALLENGE_LEN] = challenge.try_into().unwrap();
        if let Ok(c) = handshake::Challenge::decode(&challenge) {
            let t = Transcript { nonce_c: [1; 16], nonce_a: c.nonce, connector: a(), acceptor: c.listen };
            prop_assert!(handshake::verify(&KEY, Role::Acceptor, &t, &c.proof).is_err());
        }
        if let Ok(p) = handshake::Proof::decode(&proof) {
            let t = Transcript { nonce_c: [1; 16], nonce_a: [2; 16], connector: a(), acceptor: b() };
            prop_assert!(handshake::verify(&KEY, Role::Connector, &t, &p.proof).is_err());
        }
    }

    #[test]
    fn prop_an_acceptor_never_accepts_arbitrary_bytes(input in bytes(160), valid_hello in any::<bool>()) {
        let result = block_on(async {
            let (mut c, mut s) = tokio::io::duplex(512);
            let mut wire = Vec::new();
            if valid_hello {
                // A well-formed hello, then garbage where the proof goes.
                let h = handshake::Hello { cluster: 7, listen: a(), nonce: [9; 16] };
                wire.extend_from_slice(&h.encode());
            }
            wire.extend_from_slice(&input);
            c.write_all(&wire).await.unwrap();
            drop(c);
            handshake::accept(&mut s, &KEY, 7, b(), |_| true).await
        });
        prop_assert!(result.is_err());
    }

    #[test]
    fn prop_a_connector_never_accepts_arbitrary_answers(input in bytes(160)) {
        let result = block_on(async {
            let (mut c, mut s) = tokio::io::duplex(512);
            s.write_all(&input).await.unwrap();
            drop(s);
            handshake::connect(&mut c, &KEY, 7, a(), b()).await
        });
        prop_assert!(result.is_err());
    }

    #[test]
    fn prop_arbitrary_datagrams_are_refused(input in bytes(1500)) {
        prop_assert!(datagram::open(&KEY, a(), b(), &input).is_err());
    }

    #[test]
    fn prop_any_single_byte_change_to_a_datagram_is_refused(
        payload in bytes(200), at in any::<prop::sample::Index>(), flip in 1u8..=255,
    ) {
        let mut d = DatagramSealer::new(KEY, a(), 42).seal(b(), &payload);
        let i = at.index(d.len());
        d[i] ^= flip;
        prop_assert!(datagram::open(&KEY, a(), b(), &d).is_err());
    }
}
