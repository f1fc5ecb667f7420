//! The link handshake: a versioned hello and a mutual challenge-response proof of the cluster
//! secret, before any frame.
//!
//! ```text
//! connector -> acceptor  Hello     { magic, version, cluster, connector listen addr, nonce_c }
//! acceptor  -> connector Challenge { acceptor listen addr, nonce_a, proof_a }
//! connector -> acceptor  Proof     { proof_c }
//! proof_x = HMAC-SHA256(link key, role_x | version | nonce_c | nonce_a | connector | acceptor)
//! ```
//!
//! Each side proves knowledge of the key over a nonce the other side just drew, so recorded
//! handshakes cannot be replayed; the roles and both listen addresses are inside the MAC, so a
//! proof can neither be reflected back nor relayed to another node. The connector checks the
//! acceptor's proof before it proves anything itself.
//!
//! Architecture Invariant: every message has a fixed size read with `read_exact` (the hello's
//! first byte is read apart, to tell a connection that never spoke from a cut hello), and a refused
//! handshake changes no transport state and emits no event (the caller only counts and logs).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use hmac::Mac;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::keys::{MAC_LEN, mac, random_bytes, update_addr};

/// First bytes of a transport hello ("MeshReg Transport Link").
pub const MAGIC: [u8; 4] = *b"MRTL";
/// The handshake and framing version this build speaks. 2: links end with a `CLOSE` control
/// header when closed on purpose, and coordinated frames may carry a `Batch`; a version-1 peer
/// would read either as a broken stream, so it is refused at the hello instead.
pub const TRANSPORT_VERSION: u8 = 2;
/// Nonce length.
pub const NONCE_LEN: usize = 16;
/// Encoded [`Hello`] length.
pub const HELLO_LEN: usize = 4 + 1 + 4 + 6 + NONCE_LEN;
/// Encoded [`Challenge`] length.
pub const CHALLENGE_LEN: usize = 1 + 6 + NONCE_LEN + MAC_LEN;
/// Encoded [`Proof`] length.
pub const PROOF_LEN: usize = 1 + MAC_LEN;

const CHALLENGE_TAG: u8 = b'C';
const PROOF_TAG: u8 = b'P';

/// Why a handshake was refused or cut short.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not a meshreg transport hello.
    BadMagic,
    /// A transport version this build does not speak.
    UnsupportedVersion(u8),
    /// A node of another cluster.
    WrongCluster(u32),
    /// A message that does not parse (wrong tag, address 0.0.0.0, our own address).
    Malformed(&'static str),
    /// The acceptor is not the node we dialled.
    WrongPeer {
        /// The address we dialled.
        dialled: SocketAddrV4,
        /// The listen address it announced.
        answered: SocketAddrV4,
    },
    /// The peer's proof of the secret did not verify.
    AuthFailed,
    /// The acceptor refused to go on (fault injection); the connector sees [`Self::Io`].
    Refused,
    /// The socket failed or closed mid-handshake.
    Io(io::Error),
    /// The connector hung up before sending a byte (a port probe, or a dial its node gave up):
    /// no input at all, so nothing to refuse.
    Silent(io::Error),
    /// The connector hung up after a valid hello, without proving the secret: it found our
    /// proof wrong (its secret differs from ours) or it gave up.
    Abandoned {
        /// The listen address its hello announced.
        peer: SocketAddrV4,
        /// How the connection ended.
        source: io::Error,
    },
}

impl HandshakeError {
    /// Whether this is a wrong secret rather than garbage or a broken socket.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Self::AuthFailed)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => write!(f, "not a meshreg transport hello"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "transport version {v} (this build speaks {TRANSPORT_VERSION})"
            ),
            Self::WrongCluster(c) => write!(f, "a node of cluster {c:#010x}"),
            Self::Malformed(what) => write!(f, "malformed handshake: {what}"),
            Self::WrongPeer { dialled, answered } => {
                write!(f, "dialled {dialled} but {answered} answered")
            }
            Self::AuthFailed => write!(f, "wrong proof of the cluster secret"),
            Self::Refused => write!(f, "refused by fault injection"),
            Self::Io(e) => write!(f, "connection failed mid-handshake: {e}"),
            Self::Silent(e) => write!(f, "connection closed before a hello: {e}"),
            Self::Abandoned { peer, source } => write!(
                f,
                "{peer} hung up after its hello without proving the cluster secret \
                 (it was stopping, or it holds another secret): {source}"
            ),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The connector's opening message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The connector's cluster id.
    pub cluster: u32,
    /// The connector's listen address (its identity).
    pub listen: SocketAddrV4,
    /// The connector's fresh nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// The acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The acceptor's listen address.
    pub listen: SocketAddrV4,
    /// The acceptor's fresh nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The acceptor's proof.
    pub proof: [u8; MAC_LEN],
}

/// The connector's proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The connector's proof.
    pub proof: [u8; MAC_LEN],
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddrV4) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Result<SocketAddrV4, HandshakeError> {
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let a = SocketAddrV4::new(ip, u16::from_be_bytes([b[4], b[5]]));
    if ip.is_unspecified() || a.port() == 0 {
        return Err(HandshakeError::Malformed("unspecified listen address"));
    }
    Ok(a)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

impl Hello {
    /// Encodes to exactly [`HELLO_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(TRANSPORT_VERSION);
        out.extend_from_slice(&self.cluster.to_be_bytes());
        put_addr(&mut out, self.listen);
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Decodes and checks magic, version and `cluster`.
    pub fn decode(b: &[u8; HELLO_LEN], cluster: u32) -> Result<Self, HandshakeError> {
        if b[0..4] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if b[4] != TRANSPORT_VERSION {
            return Err(HandshakeError::UnsupportedVersion(b[4]));
        }
        let theirs = u32::from_be_bytes(array(&b[5..9]));
        if theirs != cluster {
            return Err(HandshakeError::WrongCluster(theirs));
        }
        Ok(Self {
            cluster: theirs,
            listen: get_addr(&b[9..15])?,
            nonce: array(&b[15..]),
        })
    }
}

impl Challenge {
    /// Encodes to exactly [`CHALLENGE_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.push(CHALLENGE_TAG);
        put_addr(&mut out, self.listen);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.proof);
        out
    }

    /// Decodes (the proof is checked by [`verify`]).
    pub fn decode(b: &[u8; CHALLENGE_LEN]) -> Result<Self, HandshakeError> {
        if b[0] != CHALLENGE_TAG {
            return Err(HandshakeError::Malformed("expected a challenge"));
        }
        Ok(Self {
            listen: get_addr(&b[1..7])?,
            nonce: array(&b[7..7 + NONCE_LEN]),
            proof: array(&b[7 + NONCE_LEN..]),
        })
    }
}

impl Proof {
    /// Encodes to exactly [`PROOF_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROOF_LEN);
        out.push(PROOF_TAG);
        out.extend_from_slice(&self.proof);
        out
    }

    /// Decodes (the proof is checked by [`verify`]).
    pub fn decode(b: &[u8; PROOF_LEN]) -> Result<Self, HandshakeError> {
        if b[0] != PROOF_TAG {
            return Err(HandshakeError::Malformed("expected a proof"));
        }
        Ok(Self {
            proof: array(&b[1..]),
        })
    }
}

/// Which side a proof speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled.
    Connector,
    /// The side that accepted.
    Acceptor,
}

/// What both proofs cover.
#[derive(Clone, Copy, Debug)]
pub struct Transcript {
    /// Connector's nonce.
    pub nonce_c: [u8; NONCE_LEN],
    /// Acceptor's nonce.
    pub nonce_a: [u8; NONCE_LEN],
    /// Connector's listen address.
    pub connector: SocketAddrV4,
    /// Acceptor's listen address.
    pub acceptor: SocketAddrV4,
}

fn proof_mac(key: &[u8], role: Role, t: &Transcript) -> super::keys::HmacSha256 {
    let mut m = mac(key);
    m.update(match role {
        Role::Connector => b"connector",
        Role::Acceptor => b"acceptor\0",
    });
    m.update(&[TRANSPORT_VERSION]);
    m.update(&t.nonce_c);
    m.update(&t.nonce_a);
    update_addr(&mut m, t.connector);
    update_addr(&mut m, t.acceptor);
    m
}

/// The proof `role` sends for transcript `t`.
pub fn prove(key: &[u8], role: Role, t: &Transcript) -> [u8; MAC_LEN] {
    array(&proof_mac(key, role, t).finalize().into_bytes())
}

/// Checks, in constant time, the proof `role` sent for `t`.
pub fn verify(key: &[u8], role: Role, t: &Transcript, proof: &[u8]) -> Result<(), HandshakeError> {
    proof_mac(key, role, t)
        .verify_slice(proof)
        .map_err(|_| HandshakeError::AuthFailed)
}

/// Runs the connector side over `io`: we (`local`) dialled `dialled`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &[u8],
    cluster: u32,
    local: SocketAddrV4,
    dialled: SocketAddrV4,
) -> Result<(), HandshakeError> {
    let hello = Hello {
        cluster,
        listen: local,
        nonce: random_bytes(),
    };
    io.write_all(&hello.encode()).await?;
    let mut buf = [0; CHALLENGE_LEN];
    io.read_exact(&mut buf).await?;
    let ch = Challenge::decode(&buf)?;
    if ch.listen != dialled {
        return Err(HandshakeError::WrongPeer {
            dialled,
            answered: ch.listen,
        });
    }
    let t = Transcript {
        nonce_c: hello.nonce,
        nonce_a: ch.nonce,
        connector: local,
        acceptor: dialled,
    };
    verify(key, Role::Acceptor, &t, &ch.proof)?;
    let proof = Proof {
        proof: prove(key, Role::Connector, &t),
    };
    io.write_all(&proof.encode()).await?;
    io.flush().await?;
    Ok(())
}

/// Runs the acceptor side over `io`; `admit` may refuse the connector by its announced listen
/// address before we answer. Returns the connector's listen address.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &[u8],
    cluster: u32,
    local: SocketAddrV4,
    admit: impl FnOnce(SocketAddrV4) -> bool,
) -> Result<SocketAddrV4, HandshakeError> {
    let mut buf = [0; HELLO_LEN];
    // The first byte apart: a connection that ends before it sent anything is no hello at all.
    match io.read(&mut buf[..1]).await {
        Ok(1) => {}
        Ok(_) => return Err(HandshakeError::Silent(io::ErrorKind::UnexpectedEof.into())),
        Err(e) => return Err(HandshakeError::Silent(e)),
    }
    io.read_exact(&mut buf[1..]).await?;
    let hello = Hello::decode(&buf, cluster)?;
    if hello.listen == local {
        return Err(HandshakeError::Malformed("a hello from our own address"));
    }
    if !admit(hello.listen) {
        return Err(HandshakeError::Refused);
    }
    let t = Transcript {
        nonce_c: hello.nonce,
        nonce_a: random_bytes(),
        connector: hello.listen,
        acceptor: local,
    };
    let ch = Challenge {
        listen: local,
        nonce: t.nonce_a,
        proof: prove(key, Role::Acceptor, &t),
    };
    io.write_all(&ch.encode()).await?;
    io.flush().await?;
    let mut buf = [0; PROOF_LEN];
    if let Err(source) = io.read_exact(&mut buf).await {
        return Err(HandshakeError::Abandoned {
            peer: hello.listen,
            source,
        });
    }
    let proof = Proof::decode(&buf)?;
    verify(key, Role::Connector, &t, &proof.proof)?;
    Ok(hello.listen)
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
