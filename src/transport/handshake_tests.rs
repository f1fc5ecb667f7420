use super::*;
use std::net::Ipv4Addr;

const KEY: [u8; 32] = [3; 32];

fn addr(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), port)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs both sides over an in-memory pipe; returns (connector result, acceptor result).
fn run(
    key_c: [u8; 32],
    key_a: [u8; 32],
    cluster_c: u32,
    cluster_a: u32,
    dialled: SocketAddrV4,
) -> (
    Result<(), HandshakeError>,
    Result<SocketAddrV4, HandshakeError>,
) {
    rt().block_on(async move {
        let (mut c, mut a) = tokio::io::duplex(256);
        let acceptor = tokio::spawn(async move {
            let r = accept(&mut a, &key_a, cluster_a, addr(2, 20), |_| true).await;
            drop(a);
            r
        });
        let rc = connect(&mut c, &key_c, cluster_c, addr(1, 10), dialled).await;
        drop(c);
        (rc, acceptor.await.unwrap())
    })
}

#[test]
fn messages_round_trip_at_their_fixed_sizes() {
    let h = Hello {
        cluster: 9,
        listen: addr(1, 10),
        nonce: [4; NONCE_LEN],
    };
    let e: [u8; HELLO_LEN] = h.encode().try_into().unwrap();
    assert_eq!(Hello::decode(&e, 9).unwrap(), h);
    let c = Challenge {
        listen: addr(2, 20),
        nonce: [5; NONCE_LEN],
        proof: [6; MAC_LEN],
    };
    let e: [u8; CHALLENGE_LEN] = c.encode().try_into().unwrap();
    assert_eq!(Challenge::decode(&e).unwrap(), c);
    let p = Proof {
        proof: [7; MAC_LEN],
    };
    let e: [u8; PROOF_LEN] = p.encode().try_into().unwrap();
    assert_eq!(Proof::decode(&e).unwrap(), p);
}

#[test]
fn hello_defects_each_get_their_error() {
    let h = Hello {
        cluster: 9,
        listen: addr(1, 10),
        nonce: [4; NONCE_LEN],
    };
    let good: [u8; HELLO_LEN] = h.encode().try_into().unwrap();
    assert!(matches!(
        Hello::decode(&good, 8),
        Err(HandshakeError::WrongCluster(9))
    ));
    let mut bad = good;
    bad[0] = b'X';
    assert!(matches!(
        Hello::decode(&bad, 9),
        Err(HandshakeError::BadMagic)
    ));
    // A newer peer and a version-1 peer (no close marker, no batches) are both refused.
    for v in [TRANSPORT_VERSION + 1, 1] {
        let mut bad = good;
        bad[4] = v;
        assert!(matches!(
            Hello::decode(&bad, 9),
            Err(HandshakeError::UnsupportedVersion(got)) if got == v
        ));
    }
    let mut bad = good;
    bad[9..15].fill(0);
    assert!(matches!(
        Hello::decode(&bad, 9),
        Err(HandshakeError::Malformed(_))
    ));
}

#[test]
fn same_secret_and_cluster_complete_and_name_the_connector() {
    let (c, a) = run(KEY, KEY, 1, 1, addr(2, 20));
    c.unwrap();
    assert_eq!(a.unwrap(), addr(1, 10));
}

#[test]
fn a_wrong_secret_is_caught_by_the_connector_before_it_proves_anything() {
    let (c, a) = run([8; 32], KEY, 1, 1, addr(2, 20));
    assert!(c.unwrap_err().is_auth_failure());
    // The acceptor never got a proof: the connector hung up after its hello, named by it.
    assert!(
        matches!(a, Err(HandshakeError::Abandoned { peer, .. }) if peer == addr(1, 10)),
        "{a:?}"
    );
}

/// Runs the acceptor against a connector that writes `bytes` and hangs up.
fn accept_after(bytes: Vec<u8>) -> Result<SocketAddrV4, HandshakeError> {
    rt().block_on(async move {
        let (mut c, mut a) = tokio::io::duplex(256);
        c.write_all(&bytes).await.unwrap();
        drop(c);
        accept(&mut a, &KEY, 1, addr(2, 20), |_| true).await
    })
}

#[test]
fn a_connection_closed_before_any_byte_is_silent_not_bad_input() {
    assert!(matches!(
        accept_after(Vec::new()),
        Err(HandshakeError::Silent(_))
    ));
}

#[test]
fn a_cut_hello_is_an_error_not_silence() {
    let hello = Hello {
        cluster: 1,
        listen: addr(1, 10),
        nonce: [7; NONCE_LEN],
    }
    .encode();
    let cut = hello[..HELLO_LEN - 1].to_vec();
    assert!(matches!(accept_after(cut), Err(HandshakeError::Io(_))));
    assert!(matches!(
        accept_after(vec![0xAB]),
        Err(HandshakeError::Io(_))
    ));
}

#[test]
fn a_wrong_cluster_is_refused_by_the_acceptor() {
    let (c, a) = run(KEY, KEY, 2, 1, addr(2, 20));
    assert!(matches!(a, Err(HandshakeError::WrongCluster(2))));
    assert!(matches!(c, Err(HandshakeError::Io(_))));
}

#[test]
fn an_acceptor_other_than_the_dialled_one_is_refused() {
    let (c, _) = run(KEY, KEY, 1, 1, addr(3, 30));
    assert!(matches!(c, Err(HandshakeError::WrongPeer { .. })));
}

#[test]
fn proofs_are_bound_to_role_and_transcript() {
    let t = Transcript {
        nonce_c: [1; NONCE_LEN],
        nonce_a: [2; NONCE_LEN],
        connector: addr(1, 10),
        acceptor: addr(2, 20),
    };
    let p = prove(&KEY, Role::Acceptor, &t);
    assert!(verify(&KEY, Role::Acceptor, &t, &p).is_ok());
    assert!(verify(&KEY, Role::Connector, &t, &p).is_err(), "reflected");
    let mut other = t;
    other.acceptor = addr(3, 20);
    assert!(verify(&KEY, Role::Acceptor, &other, &p).is_err(), "relayed");
    let mut other = t;
    other.nonce_a[0] ^= 1;
    assert!(
        verify(&KEY, Role::Acceptor, &other, &p).is_err(),
        "replayed"
    );
}

#[test]
fn an_acceptor_can_refuse_a_connector_by_address() {
    rt().block_on(async {
        let (mut c, mut a) = tokio::io::duplex(256);
        let acc = tokio::spawn(async move {
            accept(&mut a, &KEY, 1, addr(2, 20), |from| from != addr(1, 10)).await
        });
        let rc = connect(&mut c, &KEY, 1, addr(1, 10), addr(2, 20)).await;
        assert!(matches!(acc.await.unwrap(), Err(HandshakeError::Refused)));
        assert!(matches!(rc, Err(HandshakeError::Io(_))));
    });
}
