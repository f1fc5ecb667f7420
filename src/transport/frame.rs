//! The link framing: each frame is a `u32` big-endian payload length, then the payload. A
//! zero-length frame is a heartbeat. A header with the top bit set is a control marker with no
//! payload:
//! - [`RETIRE`]: "this connection is being replaced by another one between us; its end is not
//!   the end of the link" (see `link.rs`, simultaneous connects);
//! - [`CLOSE`]: "I close this link on purpose" (disconnect, idle close, shutdown), written last
//!   before the half-close. A link that ends without it broke (`LinkEvent::Reset`): the peer
//!   process may be gone, which the membership core checks by redialling.
//!
//! Architecture Invariant: the length is checked against the cap before a buffer is allocated,
//! so a peer cannot make us allocate more than `max_frame` bytes per frame.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;
/// Largest payload length the header can announce (the top bit marks control headers).
pub const MAX_LEN: usize = 0x7fff_ffff;
/// The control header announcing that the sender retires this connection.
pub const RETIRE: [u8; HEADER_LEN] = 0x8000_0001u32.to_be_bytes();
/// The control header announcing that the sender closes the link on purpose.
pub const CLOSE: [u8; HEADER_LEN] = 0x8000_0002u32.to_be_bytes();
const CONTROL_BIT: u32 = 0x8000_0000;

/// One item read from a link.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A frame; empty for a heartbeat.
    Frame(Vec<u8>),
    /// The peer retires this connection (it keeps the link on another one).
    Retire,
    /// The peer closes the link on purpose (nothing follows but the end of stream).
    Close,
    /// Clean end of stream at a frame boundary.
    End,
}

/// What a header announces.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// A payload of this many bytes follows.
    Frame(usize),
    /// The [`RETIRE`] marker.
    Retire,
    /// The [`CLOSE`] marker.
    Close,
}

/// Why reading a frame failed. Each ends the connection.
#[derive(Debug)]
pub enum FrameError {
    /// The header announced more than the cap; nothing was allocated.
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    Truncated,
    /// A control header this build does not know.
    UnknownControl(u32),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes announced, the cap is {max}")
            }
            Self::Truncated => write!(f, "stream ended inside a frame"),
            Self::UnknownControl(h) => write!(f, "unknown control header {h:#010x}"),
            Self::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(e)
        }
    }
}

/// The header of a frame of `len` bytes.
pub fn encode_header(len: usize) -> [u8; HEADER_LEN] {
    // Callers check `len <= max_frame <= u32::MAX` (TransportConfig::validate); saturate anyway
    // so a bug yields a refused frame on the other side, not a desynchronised stream.
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// What a header announces; a payload length is checked against `max`.
pub fn decode_header(header: [u8; HEADER_LEN], max: usize) -> Result<Header, FrameError> {
    let raw = u32::from_be_bytes(header);
    if raw & CONTROL_BIT != 0 {
        return if header == RETIRE {
            Ok(Header::Retire)
        } else if header == CLOSE {
            Ok(Header::Close)
        } else {
            Err(FrameError::UnknownControl(raw))
        };
    }
    let len = usize::try_from(raw).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Header::Frame(len))
}

/// Reads one item. An empty frame is a heartbeat. Not cancel-safe: a cancelled read leaves the
/// stream mid-frame, so callers only cancel it when they drop the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Incoming, FrameError> {
    let mut header = [0; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(Incoming::End)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = match decode_header(header, max)? {
        Header::Retire => return Ok(Incoming::Retire),
        Header::Close => return Ok(Incoming::Close),
        Header::Frame(len) => len,
    };
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok(Incoming::Frame(payload))
}

/// Writes one frame (no flush: callers flush when their queue runs dry).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode_header(payload.len())).await?;
    w.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn length_over_the_cap_is_refused_from_the_header_alone() {
        assert!(matches!(
            decode_header(encode_header(11), 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        assert_eq!(
            decode_header(encode_header(10), 10).unwrap(),
            Header::Frame(10)
        );
        assert!(matches!(
            decode_header([0x7f, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_header([0xff; 4], usize::MAX),
            Err(FrameError::UnknownControl(_))
        ));
        assert_eq!(decode_header(RETIRE, 0).unwrap(), Header::Retire);
        assert_eq!(decode_header(CLOSE, 0).unwrap(), Header::Close);
    }

    #[test]
    fn oversized_header_is_refused_without_waiting_for_the_payload() {
        rt().block_on(async {
            // Only the header is there; a reader that allocated and waited would hang.
            let bytes = encode_header(1 << 30);
            let mut r = &bytes[..];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::TooLarge { .. })
            ));
        });
    }

    #[test]
    fn frames_survive_one_byte_partial_reads() {
        rt().block_on(async {
            // A 1-byte duplex pipe forces every read to return a single byte.
            let (mut w, mut r) = tokio::io::duplex(1);
            let writer = tokio::spawn(async move {
                for p in [&b"first"[..], b"", b"third frame"] {
                    write_frame(&mut w, p).await.unwrap();
                }
                w.write_all(&RETIRE).await.unwrap();
                w.write_all(&CLOSE).await.unwrap();
            });
            let frame = |b: &[u8]| Incoming::Frame(b.to_vec());
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), frame(b"first"));
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), frame(b""));
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), frame(b"third frame"));
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), Incoming::Retire);
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), Incoming::Close);
            writer.await.unwrap();
            assert_eq!(read_frame(&mut r, 64).await.unwrap(), Incoming::End);
        });
    }

    #[test]
    fn eof_inside_a_header_or_payload_is_truncation() {
        rt().block_on(async {
            let mut r = &[0u8, 0][..];
            assert!(matches!(
                read_frame(&mut r, 64).await,
                Err(FrameError::Truncated)
            ));
            let mut bytes = encode_header(5).to_vec();
            bytes.extend_from_slice(b"abc");
            let mut r = &bytes[..];
            assert!(matches!(
                read_frame(&mut r, 64).await,
                Err(FrameError::Truncated)
            ));
        });
    }
}
