//! [`ReplayWindow`]: refuses replayed datagrams from one sender.
//!
//! A sender is identified by its address and a `session` (its transport's start time in unix
//! milliseconds) and numbers its datagrams with `seq`. The window keeps the highest `seq` seen in
//! the current session and a 64-bit bitmap of the 64 sequence numbers at and below it.
//!
//! Invariant: a `(session, seq)` pair is accepted at most once; a session older than the current
//! one is refused whole (a restarted sender always has a later session, and resets the window).

/// Width of the sliding window, in sequence numbers.
pub const WINDOW: u64 = 64;

/// Why a datagram was refused as a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Its session is older than the sender's current one.
    OldSession,
    /// Its sequence number was already accepted.
    Duplicate,
    /// Its sequence number fell out of the window (more than 64 behind the highest).
    TooOld,
}

/// The replay state of one sender.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    session: u64,
    /// Highest accepted sequence number of `session`.
    top: u64,
    /// Bit `i` set: `top - i` was accepted. Bit 0 is always set once anything was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// A window whose first accepted datagram is `(session, seq)`.
    pub fn new(session: u64, seq: u64) -> Self {
        Self {
            session,
            top: seq,
            seen: 1,
        }
    }

    /// Accepts `(session, seq)` and records it, or says why it is a replay. A refused datagram
    /// changes nothing.
    pub fn check_and_record(&mut self, session: u64, seq: u64) -> Result<(), Replay> {
        if session < self.session {
            return Err(Replay::OldSession);
        }
        if session > self.session {
            *self = Self::new(session, seq);
            return Ok(());
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= WINDOW {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.top = seq;
            return Ok(());
        }
        let back = self.top - seq;
        if back >= WINDOW {
            return Err(Replay::TooOld);
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            return Err(Replay::Duplicate);
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_sequence_is_accepted_once() {
        let mut w = ReplayWindow::new(5, 0);
        for seq in 1..200 {
            assert_eq!(w.check_and_record(5, seq), Ok(()));
            assert_eq!(w.check_and_record(5, seq), Err(Replay::Duplicate));
        }
        assert_eq!(w.check_and_record(5, 0), Err(Replay::TooOld));
    }

    #[test]
    fn reordered_within_the_window_is_accepted_once() {
        let mut w = ReplayWindow::new(1, 100);
        assert_eq!(w.check_and_record(1, 99), Ok(()));
        assert_eq!(w.check_and_record(1, 37), Ok(()), "63 behind is inside");
        assert_eq!(w.check_and_record(1, 36), Err(Replay::TooOld), "64 behind");
        assert_eq!(w.check_and_record(1, 37), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(1, 99), Err(Replay::Duplicate));
    }

    #[test]
    fn a_jump_beyond_the_window_forgets_the_old_bits() {
        let mut w = ReplayWindow::new(1, 10);
        assert_eq!(w.check_and_record(1, 10 + WINDOW), Ok(()));
        assert_eq!(w.check_and_record(1, 11), Ok(()), "63 behind, never seen");
        assert_eq!(w.check_and_record(1, 10), Err(Replay::TooOld));
        assert_eq!(w.check_and_record(1, u64::MAX), Ok(()));
        assert_eq!(w.check_and_record(1, u64::MAX), Err(Replay::Duplicate));
    }

    #[test]
    fn a_later_session_resets_and_an_older_one_is_refused() {
        let mut w = ReplayWindow::new(10, 500);
        assert_eq!(w.check_and_record(11, 0), Ok(()));
        assert_eq!(w.check_and_record(11, 0), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(11, 1), Ok(()));
        assert_eq!(w.check_and_record(10, 501), Err(Replay::OldSession));
    }

    #[test]
    fn a_refused_datagram_changes_nothing() {
        let mut w = ReplayWindow::new(3, 70);
        let before = w.clone();
        let _ = w.check_and_record(2, 1000);
        let _ = w.check_and_record(3, 70);
        let _ = w.check_and_record(3, 1);
        assert_eq!(
            (w.session, w.top, w.seen),
            (before.session, before.top, before.seen)
        );
    }
}
