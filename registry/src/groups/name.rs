//! Bounded, cheaply cloned names for scopes and groups.
//!
//! Names are validated once, at construction, so the table never sees an over-long one and every
//! later clone (into events, errors, replies) is a reference-count bump rather than a copy.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{GroupError, NameKind};

/// The longest scope or group name accepted, in bytes of UTF-8 (Erlang atoms stop at 255
/// characters; bytes keep the bound independent of the text).
pub const NAME_MAX_BYTES: usize = 255;

/// Defines one name newtype over `Arc<str>`: the two kinds share code but not a type, so a
/// scope can never be passed where a group is expected.
macro_rules! bounded_name {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Eq)]
        pub struct $name(Arc<str>);

        // As `str`'s, so maps keyed by names can be searched with a plain `&str`.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }

        // The text decides, as for `str`; two handles of one allocation (a name interned
        // from the table) are equal without reading it.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    self.0.cmp(&other.0)
                }
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Validates `name` (at most [`NAME_MAX_BYTES`] bytes) and copies it once.
            pub fn new(name: &str) -> Result<Self, GroupError> {
                if name.len() > NAME_MAX_BYTES {
                    return Err(GroupError::NameTooLong {
                        kind: $kind,
                        len: name.len(),
                        max: NAME_MAX_BYTES,
                    });
                }
                Ok(Self(Arc::from(name)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Heap bytes of the one shared allocation behind this name (counted once by the
            /// table however many clones exist).
            pub(super) fn heap_bytes(&self) -> usize {
                super::heap::arc_str_bytes(self.0.len())
            }

            /// Heap bytes of the allocation behind this name if this handle is its only one
            /// (a copy no table shares), else 0: what a holder of many handles counts as its
            /// own.
            pub(crate) fn unshared_heap_bytes(&self) -> usize {
                if Arc::strong_count(&self.0) == 1 {
                    self.heap_bytes()
                } else {
                    0
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = GroupError;
            fn try_from(name: &str) -> Result<Self, GroupError> {
                Self::new(name)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq of `Arc<str>` are those of `str`, so maps keyed by names can be searched
        // with a plain `&str` (no allocation on reads).
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct NameVisitor;
                impl Visitor<'_> for NameVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a string of at most {NAME_MAX_BYTES} bytes")
                    }
                    // The length is checked before the one allocation (GUIDE §4 rule 7).
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(NameVisitor)
            }
        }
    };
}

bounded_name!(
    /// The name of a scope: an independent namespace of groups (pg's scope process).
    ScopeName,
    NameKind::Scope
);

bounded_name!(
    /// The name of a group inside a scope.
    GroupName,
    NameKind::Group
);
