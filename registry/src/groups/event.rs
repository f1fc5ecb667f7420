//! What the table reports: memberships and the ordered change events for monitor streams.

use super::name::{GroupName, ScopeName};
use crate::Pid;

/// One membership, owned: `pid` is in `group` of `scope` once, with `meta`.
///
/// Names are shared (`Arc`), so building one costs two reference-count bumps plus a copy of the
/// metadata (none when empty).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Membership {
    /// The scope of the group.
    pub scope: ScopeName,
    /// The group.
    pub group: GroupName,
    /// The member.
    pub pid: Pid,
    /// The membership's metadata; empty means none.
    pub meta: Box<[u8]>,
}

/// Whether a membership appeared or disappeared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// One occurrence was added.
    Joined,
    /// One occurrence was removed (by `leave`, a process exit, a node down or a replacement).
    Left,
}

/// One change of the table, in the order the table applied it. Every occurrence added or
/// removed produces exactly one event, so replaying the events onto the previous state gives
/// the current state (the monitor-stream contract).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupEvent {
    /// Joined or Left.
    pub kind: EventKind,
    /// The occurrence concerned, with its metadata.
    pub membership: Membership,
}
