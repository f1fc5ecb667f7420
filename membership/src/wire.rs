//! The versioned envelope every meshreg datagram and stream frame starts with.
//!
//! Layout (8 bytes, then the payload):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"MR"` |
//! | 2 | protocol version ([`PROTOCOL_VERSION`]) |
//! | 3 | payload kind ([`Kind`]) |
//! | 4..8 | cluster id, little endian: packets of another cluster are refused |
//!
//! Authentication (a MAC over the whole packet, keyed from the cluster secret) is added by the
//! transport in the node runtime; the simulator counts the bytes of this envelope and payload.
//!
//! Architecture Invariant: decoding never allocates more than the input length and never panics;
//! every length is checked against a cap before it is trusted.

use std::fmt;

/// Magic bytes at the start of every packet.
pub const MAGIC: [u8; 2] = *b"MR";
/// The wire protocol version this build speaks. 2: SWIM's anti-entropy `Push` carries the
/// size of its sender's live set (a version-1 peer could not decode it: refused by version,
/// with a message saying so, rather than as malformed). 3: the mesh's `Down` notice carries the
/// size of its sender's view, so only the side that saw less of the cluster renews.
pub const PROTOCOL_VERSION: u8 = 3;
/// Envelope header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest datagram payload (foca packets stay at or below this, the UDP-safe size).
pub const MAX_DATAGRAM_PAYLOAD: usize = 1400;
/// Largest stream frame payload; checked before any buffer is allocated.
pub const MAX_FRAME_PAYLOAD: usize = 16 * 1024 * 1024;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A foca SWIM packet.
    Swim = 1,
    /// A SWIM anti-entropy message (digest, bucket digests, member push).
    AntiEntropy = 2,
    /// A full-mesh membership message (hello, heartbeat, peer list).
    Mesh = 3,
    /// A gossip-backend group message (deltas, digests, owner state).
    Groups = 4,
    /// A coordinated-backend group message (boss requests, applies, acks, recovery).
    Boss = 5,
    /// A node-runtime message between processes (sends, monitors, exit notices).
    Process = 6,
    /// A session-manager message (shard requests, replication, re-assertion).
    Session = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Swim),
            2 => Some(Self::AntiEntropy),
            3 => Some(Self::Mesh),
            4 => Some(Self::Groups),
            5 => Some(Self::Boss),
            6 => Some(Self::Process),
            7 => Some(Self::Session),
            _ => None,
        }
    }
}

/// Why a packet was refused. The sender (peer) is at fault; no state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Not a meshreg packet.
    BadMagic,
    /// A protocol version this build does not speak.
    UnsupportedVersion {
        /// The version in the packet.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// An unknown payload kind.
    UnknownKind(u8),
    /// A packet of another cluster (or a wrong cluster secret).
    WrongCluster {
        /// The cluster id in the packet.
        got: u32,
    },
    /// Over the size cap.
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The payload did not decode.
    Malformed(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(
                f,
                "packet of {len} bytes is shorter than the {HEADER_LEN}-byte header"
            ),
            Self::BadMagic => write!(f, "not a meshreg packet (bad magic)"),
            Self::UnsupportedVersion { got, supported } => {
                write!(
                    f,
                    "unsupported protocol version {got} (this build speaks {supported})"
                )
            }
            Self::UnknownKind(k) => write!(f, "unknown payload kind {k}"),
            Self::WrongCluster { got } => write!(f, "packet of another cluster (id {got:#010x})"),
            Self::TooLarge { len, max } => {
                write!(f, "packet of {len} bytes exceeds the {max}-byte cap")
            }
            Self::Malformed(what) => write!(f, "malformed {what} payload"),
        }
    }
}

impl std::error::Error for WireError {}

/// Writes the header for `kind` into the start of a new buffer with room for `payload_len`.
pub fn begin(kind: Kind, cluster: u32, payload_len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload_len);
    buf.extend_from_slice(&MAGIC);
    buf.push(PROTOCOL_VERSION);
    buf.push(kind as u8);
    buf.extend_from_slice(&cluster.to_le_bytes());
    buf
}

/// Envelope `payload` as `kind` for `cluster`.
pub fn seal(kind: Kind, cluster: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = begin(kind, cluster, payload.len());
    buf.extend_from_slice(payload);
    buf
}

/// Checks the envelope and returns the kind and payload. `max_payload` is the cap for the
/// channel the bytes came from ([`MAX_DATAGRAM_PAYLOAD`] or [`MAX_FRAME_PAYLOAD`]).
pub fn open(bytes: &[u8], cluster: u32, max_payload: usize) -> Result<(Kind, &[u8]), WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: bytes.len() });
    }
    let max = max_payload.saturating_add(HEADER_LEN);
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes[0..2] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            got: bytes[2],
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = Kind::from_u8(bytes[3]).ok_or(WireError::UnknownKind(bytes[3]))?;
    let got = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if got != cluster {
        return Err(WireError::WrongCluster { got });
    }
    Ok((kind, &bytes[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sealed_packet_opens_to_the_same_payload() {
        let p = seal(Kind::Mesh, 42, b"hello");
        assert_eq!(p.len(), HEADER_LEN + 5);
        assert_eq!(open(&p, 42, 100), Ok((Kind::Mesh, &b"hello"[..])));
    }

    #[test]
    fn each_defect_gets_its_own_error() {
        let good = seal(Kind::Swim, 7, b"x");
        assert_eq!(
            open(&good[..3], 7, 100),
            Err(WireError::Truncated { len: 3 })
        );
        assert_eq!(open(&good, 8, 100), Err(WireError::WrongCluster { got: 7 }));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(open(&bad, 7, 100), Err(WireError::BadMagic));
        for old_or_new in [1, 9] {
            let mut bad = good.clone();
            bad[2] = old_or_new;
            assert_eq!(
                open(&bad, 7, 100),
                Err(WireError::UnsupportedVersion {
                    got: old_or_new,
                    supported: PROTOCOL_VERSION
                })
            );
        }
        let mut bad = good.clone();
        bad[3] = 200;
        assert_eq!(open(&bad, 7, 100), Err(WireError::UnknownKind(200)));
        assert_eq!(
            open(&good, 7, 0),
            Err(WireError::TooLarge { len: 9, max: 8 })
        );
    }

    proptest! {
        #[test]
        fn prop_open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = open(&bytes, 1, 32);
        }
    }
}
