//! The one error type of the group table.

use std::fmt;

use meshreg_membership::NodeId;

use super::name::{GroupName, ScopeName};
use crate::Pid;

/// Which kind of name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A scope name.
    Scope,
    /// A group name.
    Group,
}

/// Everything the group table can refuse. Every variant is the caller's fault (bad input or a
/// request that does not match the table) and every one leaves the table exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupError {
    /// A scope or group name is longer than the limit; no name was created.
    NameTooLong {
        /// Scope or group.
        kind: NameKind,
        /// Length of the refused name, in bytes.
        len: usize,
        /// The limit, [`NAME_MAX_BYTES`](super::NAME_MAX_BYTES).
        max: usize,
    },
    /// Membership metadata is larger than the table's configured cap; nothing was joined.
    MetaTooLarge {
        /// Length of the refused metadata, in bytes.
        len: usize,
        /// The cap, [`GroupTableConfig::meta_cap_bytes`](super::GroupTableConfig::meta_cap_bytes).
        cap: usize,
    },
    /// `leave` found no occurrence of `pid` in the group (or no such group); nothing was removed.
    NotJoined {
        /// The scope named in the request.
        scope: ScopeName,
        /// The group named in the request.
        group: GroupName,
        /// The pid that is not a member.
        pid: Pid,
    },
    /// `replace_node` was given a membership of a pid that does not live on the node being
    /// replaced; nothing was replaced.
    ForeignPid {
        /// The offending pid.
        pid: Pid,
        /// The node whose memberships were being replaced.
        node: NodeId,
    },
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTooLong { kind, len, max } => {
                let kind = match kind {
                    NameKind::Scope => "scope",
                    NameKind::Group => "group",
                };
                write!(f, "{kind} name is {len} bytes, over the {max}-byte limit")?;
            }
            Self::MetaTooLarge { len, cap } => write!(
                f,
                "membership metadata is {len} bytes, over the table's {cap}-byte cap \
                 (meta_cap_bytes)"
            )?,
            Self::NotJoined { scope, group, pid } => write!(
                f,
                "{}/{} is not a member of group {group:?} in scope {scope:?}",
                pid.node, pid.serial
            )?,
            Self::ForeignPid { pid, node } => write!(
                f,
                "membership of pid {}/{} given to replace the memberships of node {node}",
                pid.node, pid.serial
            )?,
        }
        f.write_str(" (caller error; the group table is unchanged)")
    }
}

impl std::error::Error for GroupError {}
