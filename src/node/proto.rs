//! Messages between node runtimes about processes (envelope kind `Process`): a message for a
//! process, a monitor request, and the notice that a monitored process ended.
//!
//! Carried on the per-peer TCP link, so a process's messages to another process arrive in the
//! order they were sent. Postcard inside the versioned envelope; decoding hostile bytes returns
//! an error and never allocates more than the input length.

use meshreg_membership::wire::{self, Kind, MAX_FRAME_PAYLOAD};
use meshreg_registry::Pid;
use serde::{Deserialize, Serialize};

use super::monitor::DownReason;

/// One runtime-to-runtime message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ProcMsg {
    /// A message for process `to`.
    Send {
        to: Pid,
        from: Option<Pid>,
        body: Vec<u8>,
    },
    /// The sending node wants to hear when `target` (a process of the receiver) ends.
    Monitor { target: Pid },
    /// `pid` (a process of the sender) ended, or never existed there.
    Down { pid: Pid, reason: DownReason },
}

/// Why a `Process` frame was refused. The peer is at fault; nothing changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProtoError {
    Wire(wire::WireError),
    Malformed(String),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wire(e) => write!(f, "{e}"),
            Self::Malformed(e) => write!(f, "malformed process message: {e}"),
        }
    }
}

/// Envelopes `msg` for `cluster`.
pub(crate) fn encode(cluster: u32, msg: &ProcMsg) -> Vec<u8> {
    // Postcard into a Vec cannot fail for these types (no maps with non-string keys, no
    // unsized sequences): an error here is a bug, reported as an empty payload the peer drops.
    let body = postcard::to_allocvec(msg).unwrap_or_default();
    wire::seal(Kind::Process, cluster, &body)
}

/// Opens a `Process` frame of `cluster`.
pub(crate) fn decode(cluster: u32, bytes: &[u8]) -> Result<ProcMsg, ProtoError> {
    let (kind, payload) =
        wire::open(bytes, cluster, MAX_FRAME_PAYLOAD).map_err(ProtoError::Wire)?;
    if kind != Kind::Process {
        return Err(ProtoError::Malformed(format!("kind {kind:?}")));
    }
    postcard::from_bytes(payload).map_err(|e| ProtoError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::NodeId;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn pid(serial: u64) -> Pid {
        Pid {
            node: NodeId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9), 1 << 16),
            serial,
        }
    }

    #[test]
    fn every_message_round_trips() {
        for m in [
            ProcMsg::Send {
                to: pid(1),
                from: Some(pid(2)),
                body: b"hi".to_vec(),
            },
            ProcMsg::Monitor { target: pid(3) },
            ProcMsg::Down {
                pid: pid(4),
                reason: DownReason::NoProcess,
            },
        ] {
            assert_eq!(decode(7, &encode(7, &m)), Ok(m));
        }
    }

    #[test]
    fn a_frame_of_another_cluster_is_refused() {
        let m = ProcMsg::Monitor { target: pid(3) };
        assert!(matches!(
            decode(8, &encode(7, &m)),
            Err(ProtoError::Wire(_))
        ));
    }

    proptest! {
        #[test]
        fn prop_decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(7, &bytes);
            let mut framed = wire::seal(Kind::Process, 7, &bytes);
            let _ = decode(7, &framed);
            framed.truncate(framed.len() / 2);
            let _ = decode(7, &framed);
        }
    }
}
