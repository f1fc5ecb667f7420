//! Authenticated datagrams: [`DatagramSealer`] and [`open`].
//!
//! Layout: `payload | session u64 BE | seq u64 BE | tag[16]`, where the tag is HMAC-SHA256 (keyed
//! by the datagram key) over `from | to | session | seq | payload`, truncated to 16 bytes. Binding
//! both addresses stops a datagram captured between two nodes from being reflected to a third.
//! Replays are refused by the receiver's [`ReplayWindow`](super::replay::ReplayWindow), after the
//! tag verified (so nobody without the key can create or move receiver state).

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::Mac;
use meshreg_membership::wire::MAX_DATAGRAM_PAYLOAD;

use super::keys::{HmacSha256, mac, update_addr};

/// Length of the truncated tag.
pub const TAG_LEN: usize = 16;
/// Bytes added after the payload.
pub const TRAILER_LEN: usize = 8 + 8 + TAG_LEN;
/// Largest datagram on the wire.
pub const MAX_DATAGRAM: usize = MAX_DATAGRAM_PAYLOAD + TRAILER_LEN;

/// Why a datagram was refused (the sender, or whoever forged it, is at fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramError {
    /// Too short to hold the trailer.
    Truncated,
    /// Larger than [`MAX_DATAGRAM`].
    TooLarge,
    /// The tag did not verify.
    BadTag,
}

/// An opened datagram: who sent it in which session, and its payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The sender's session (its start time in unix ms).
    pub session: u64,
    /// The sender's sequence number.
    pub seq: u64,
    /// The authenticated payload.
    pub payload: &'a [u8],
}

/// Seals this transport's outbound datagrams.
pub struct DatagramSealer {
    key: [u8; 32],
    local: SocketAddrV4,
    session: u64,
    next_seq: AtomicU64,
}

impl DatagramSealer {
    /// A sealer for datagrams from `local`, in `session`.
    pub fn new(key: [u8; 32], local: SocketAddrV4, session: u64) -> Self {
        Self {
            key,
            local,
            session,
            next_seq: AtomicU64::new(0),
        }
    }

    /// Seals `payload` for `to`, taking the next sequence number. The caller checked the length.
    pub fn seal(&self, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(payload.len() + TRAILER_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        let m = tag_mac(&self.key, self.local, to, self.session, seq, payload);
        out.extend_from_slice(&m.finalize().into_bytes()[..TAG_LEN]);
        out
    }
}

fn tag_mac(
    key: &[u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    session: u64,
    seq: u64,
    payload: &[u8],
) -> HmacSha256 {
    let mut m = mac(key);
    update_addr(&mut m, from);
    update_addr(&mut m, to);
    m.update(&session.to_be_bytes());
    m.update(&seq.to_be_bytes());
    m.update(payload);
    m
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Verifies a datagram `from` -> `to` and returns its contents. Never allocates, never panics.
pub fn open<'a>(
    key: &[u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    bytes: &'a [u8],
) -> Result<Opened<'a>, DatagramError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge);
    }
    let Some(body_len) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err(DatagramError::Truncated);
    };
    let (payload, trailer) = bytes.split_at(body_len);
    let session = be_u64(&trailer[0..8]);
    let seq = be_u64(&trailer[8..16]);
    let m = tag_mac(key, from, to, session, seq, payload);
    // Constant-time comparison of the leftmost TAG_LEN bytes.
    m.verify_truncated_left(&trailer[16..])
        .map_err(|_| DatagramError::BadTag)?;
    Ok(Opened {
        session,
        seq,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::replay::{Replay, ReplayWindow};
    use std::net::Ipv4Addr;

    const KEY: [u8; 32] = [9; 32];

    fn a() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 1000)
    }
    fn b() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 2000)
    }

    #[test]
    fn sealed_datagram_opens_to_its_payload() {
        let s = DatagramSealer::new(KEY, a(), 77);
        let d = s.seal(b(), b"hello");
        let o = open(&KEY, a(), b(), &d).unwrap();
        assert_eq!((o.session, o.seq, o.payload), (77, 0, &b"hello"[..]));
        assert_eq!(open(&KEY, a(), b(), &s.seal(b(), b"")).unwrap().seq, 1);
    }

    #[test]
    fn tampering_with_any_byte_is_refused() {
        let s = DatagramSealer::new(KEY, a(), 1);
        let d = s.seal(b(), b"payload bytes");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            assert_eq!(open(&KEY, a(), b(), &t), Err(DatagramError::BadTag), "{i}");
        }
    }

    #[test]
    fn wrong_key_addresses_or_direction_are_refused() {
        let d = DatagramSealer::new(KEY, a(), 1).seal(b(), b"x");
        assert_eq!(open(&[8; 32], a(), b(), &d), Err(DatagramError::BadTag));
        assert_eq!(open(&KEY, b(), a(), &d), Err(DatagramError::BadTag));
        let c = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 2000);
        assert_eq!(open(&KEY, a(), c, &d), Err(DatagramError::BadTag));
    }

    #[test]
    fn truncated_and_oversized_are_refused() {
        let d = DatagramSealer::new(KEY, a(), 1).seal(b(), b"");
        assert_eq!(
            open(&KEY, a(), b(), &d[..TRAILER_LEN - 1]),
            Err(DatagramError::Truncated)
        );
        let big = vec![0; MAX_DATAGRAM + 1];
        assert_eq!(open(&KEY, a(), b(), &big), Err(DatagramError::TooLarge));
        let max = DatagramSealer::new(KEY, a(), 1).seal(b(), &[5; MAX_DATAGRAM_PAYLOAD]);
        assert!(open(&KEY, a(), b(), &max).is_ok());
    }

    #[test]
    fn replayed_datagram_is_refused_and_a_restarted_sender_is_accepted() {
        let first = DatagramSealer::new(KEY, a(), 1_000);
        let d0 = first.seal(b(), b"0");
        let o = open(&KEY, a(), b(), &d0).unwrap();
        let mut w = ReplayWindow::new(o.session, o.seq);
        let again = open(&KEY, a(), b(), &d0).unwrap();
        assert_eq!(
            w.check_and_record(again.session, again.seq),
            Err(Replay::Duplicate)
        );
        let old_next = first.seal(b(), b"1");
        let restarted = DatagramSealer::new(KEY, a(), 2_000);
        let sealed = restarted.seal(b(), b"r");
        let r = open(&KEY, a(), b(), &sealed).unwrap();
        assert_eq!(w.check_and_record(r.session, r.seq), Ok(()));
        let o = open(&KEY, a(), b(), &old_next).unwrap();
        assert_eq!(
            w.check_and_record(o.session, o.seq),
            Err(Replay::OldSession)
        );
    }
}
