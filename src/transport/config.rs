//! [`TransportConfig`]: what a node's transport needs to know, with checked defaults.

use std::net::SocketAddrV4;
use std::time::Duration;

use meshreg_membership::wire;

use super::TransportError;

/// Smallest accepted cluster secret: 128 bits, so guessing it is out of reach.
pub const MIN_SECRET_LEN: usize = 16;

/// Room on top of [`wire::MAX_FRAME_PAYLOAD`] for the envelope and future framing.
pub const FRAME_SLACK: usize = 64;

/// Settings of one [`Transport`](super::Transport).
#[derive(Clone)]
pub struct TransportConfig {
    /// The address both the TCP listener and the UDP socket bind to. It is this node's identity
    /// on the wire, so it must be a concrete address (not `0.0.0.0`); port 0 picks a free port.
    pub listen: SocketAddrV4,
    /// The cluster secret every node shares; at least [`MIN_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// The cluster id; nodes of another cluster are refused at the handshake.
    pub cluster: u32,
    /// Largest frame payload accepted or sent; checked before any buffer is allocated.
    pub max_frame: usize,
    /// Bound of each peer's send queue, in frames.
    pub queue_frames: usize,
    /// Bound of the event channel to the node, in events. When full, readers wait (TCP
    /// back-pressure) and datagrams wait in the socket buffer.
    pub event_queue: usize,
    /// How long a dial plus handshake (or an accepted handshake) may take.
    pub connect_timeout: Duration,
    /// A heartbeat is sent after this much write silence on a link; a link is declared broken
    /// after three times this without any frame received.
    pub heartbeat: Duration,
    /// Links with no frame sent or received for this long are closed (on-demand links of the
    /// gossip backend). `None` keeps links until a caller or a failure closes them (full mesh).
    pub idle_close: Option<Duration>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches logs.
        f.debug_struct("TransportConfig")
            .field("listen", &self.listen)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("cluster", &self.cluster)
            .field("max_frame", &self.max_frame)
            .field("queue_frames", &self.queue_frames)
            .field("event_queue", &self.event_queue)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("idle_close", &self.idle_close)
            .finish()
    }
}

impl TransportConfig {
    /// A configuration with the defaults: full-mesh links (no idle close), 1 s heartbeats, 5 s
    /// connect timeout, 4096-frame peer queues.
    pub fn new(listen: SocketAddrV4, secret: impl Into<Vec<u8>>, cluster: u32) -> Self {
        Self {
            listen,
            secret: secret.into(),
            cluster,
            max_frame: wire::MAX_FRAME_PAYLOAD + FRAME_SLACK,
            queue_frames: 4096,
            event_queue: 65_536,
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            idle_close: None,
        }
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |setting, reason: &str| {
            Err(TransportError::InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.listen.ip().is_unspecified() {
            return bad(
                "listen",
                "must be a concrete address: it is the node's identity on the wire",
            );
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return bad("secret", "must be at least 16 bytes");
        }
        if self.max_frame == 0 || self.max_frame > super::frame::MAX_LEN {
            return bad("max_frame", "must be between 1 and 2^31 - 1");
        }
        if self.queue_frames == 0 {
            return bad("queue_frames", "must be at least 1");
        }
        if self.event_queue == 0 {
            return bad("event_queue", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be positive");
        }
        if self.heartbeat.is_zero() {
            return bad("heartbeat", "must be positive");
        }
        if self.idle_close.is_some_and(|d| d.is_zero()) {
            return bad("idle_close", "must be positive (or None)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> TransportConfig {
        TransportConfig::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), vec![7; 16], 1)
    }

    #[test]
    fn defaults_are_valid() {
        assert!(cfg().validate().is_ok());
    }

    #[test]
    fn short_secret_is_refused_naming_the_setting() {
        let mut c = cfg();
        c.secret = vec![1; 15];
        let e = c.validate().unwrap_err();
        assert!(matches!(
            e,
            TransportError::InvalidConfig {
                setting: "secret",
                ..
            }
        ));
        assert!(e.to_string().contains("`secret`"));
    }

    #[test]
    fn unspecified_listen_address_is_refused() {
        let mut c = cfg();
        c.listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1);
        assert!(matches!(
            c.validate(),
            Err(TransportError::InvalidConfig {
                setting: "listen",
                ..
            })
        ));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = format!("{:?}", cfg());
        assert!(s.contains("<16 bytes>"));
        assert!(!s.contains("[7, 7"));
    }
}
