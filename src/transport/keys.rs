//! [`Keys`]: the MAC keys a transport derives from the cluster secret.
//!
//! Links and datagrams use separate keys (domain separation), both bound to the cluster id, so a
//! tag made for one purpose or cluster never verifies for another.

use std::net::SocketAddrV4;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// HMAC-SHA256, the one MAC of the transport.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Length of a full HMAC-SHA256 output.
pub(crate) const MAC_LEN: usize = 32;

/// The derived keys of one transport.
#[derive(Clone)]
pub(crate) struct Keys {
    /// Keys the link handshake proofs.
    pub(crate) link: [u8; MAC_LEN],
    /// Keys the datagram tags.
    pub(crate) datagram: [u8; MAC_LEN],
}

impl Keys {
    /// Derives both keys from `secret` and `cluster`.
    pub(crate) fn derive(secret: &[u8], cluster: u32) -> Self {
        let one = |label: &[u8]| {
            let mut m = mac(secret);
            m.update(b"meshreg transport v1 ");
            m.update(label);
            m.update(&cluster.to_be_bytes());
            let mut key = [0; MAC_LEN];
            key.copy_from_slice(&m.finalize().into_bytes());
            key
        };
        Self {
            link: one(b"link"),
            datagram: one(b"datagram"),
        }
    }
}

/// A fresh HMAC-SHA256 keyed with `key`.
pub(crate) fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this never fails.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// Feeds an address into a MAC in a fixed 6-byte form.
pub(crate) fn update_addr(m: &mut HmacSha256, addr: SocketAddrV4) {
    m.update(&addr.ip().octets());
    m.update(&addr.port().to_be_bytes());
}

/// Cryptographically random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0; N];
    if let Err(e) = getrandom::fill(&mut b) {
        // Without an OS RNG nonces would repeat and the handshake would be replayable: there is
        // no safe way on, and this host is broken.
        panic!("the operating system's random number generator failed: {e}");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_purpose_secret_and_cluster() {
        let a = Keys::derive(&[1; 16], 7);
        assert_ne!(a.link, a.datagram);
        assert_ne!(a.link, Keys::derive(&[2; 16], 7).link);
        assert_ne!(a.link, Keys::derive(&[1; 16], 8).link);
        assert_eq!(a.datagram, Keys::derive(&[1; 16], 7).datagram);
    }
}
