//! Exact heap accounting: what the table asked the allocator for, computed from capacities.
//!
//! The simulator reports `memory_bytes_per_membership` from this, and
//! `registry/tests/group_table_memory.rs` checks it against a counting global allocator.

use std::collections::HashMap;
use std::mem::{align_of, size_of};

use super::layout::{Group, IndexedNode, Scope};
use super::table::GroupTable;

/// Control-byte group width of std's SwissTable: 16 with SSE2, 8 otherwise.
const CTRL_GROUP_WIDTH: usize = if cfg!(all(
    any(target_arch = "x86", target_arch = "x86_64"),
    target_feature = "sse2"
)) {
    16
} else {
    8
};

/// Heap bytes of a `Vec`'s buffer.
pub(crate) fn vec_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// Heap bytes of a std `HashMap`'s table (see [`table_bytes`]).
pub(crate) fn map_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    table_bytes::<(K, V)>(map.capacity())
}

/// Heap bytes of a SwissTable (std's `HashMap`, hashbrown's `HashTable`) of `T` with
/// `capacity`: buckets of `T`, then one control byte per bucket plus one trailing control
/// group. The bucket count is recovered from the capacity (7/8 load factor, power-of-two
/// buckets); tombstones can hide up to a few buckets of capacity, which only ever makes this
/// an under-estimate by a few percent of one table.
pub(crate) fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    let ctrl_align = align_of::<T>().max(CTRL_GROUP_WIDTH);
    let ctrl_offset = (buckets * size_of::<T>()).next_multiple_of(ctrl_align);
    ctrl_offset + buckets + CTRL_GROUP_WIDTH
}

/// Heap bytes of an `Arc<str>` of `len` bytes: two counters, the text, padded to `usize`.
pub(super) fn arc_str_bytes(len: usize) -> usize {
    (2 * size_of::<usize>() + len).next_multiple_of(align_of::<usize>())
}

impl Scope {
    fn heap_bytes(&self) -> usize {
        // The name's allocation is shared with the scope index key: counted here once.
        self.name.heap_bytes() + self.groups.heap_bytes() + vec_bytes(&self.list)
    }
}

impl Group {
    fn heap_bytes(&self) -> usize {
        // The name's allocation is shared with the scope's map key: counted here once.
        self.name.heap_bytes() + vec_bytes(&self.members) + vec_bytes(&self.local)
    }
}

impl IndexedNode {
    fn heap_bytes(&self) -> usize {
        vec_bytes(&self.records) + self.pids.heap_bytes()
    }
}

impl GroupTable {
    /// Heap bytes held by the table, computed from the capacities of everything it owns: what
    /// the allocator was asked for (within a few percent; checked against a counting allocator).
    ///
    /// Pending events count with their buffer and metadata; their names are shared with the
    /// table and not counted twice (a name kept alive only by an undrained event is not
    /// counted). O(scopes + groups + nodes + metadata slots): a diagnostic, not a hot path.
    pub fn heap_bytes(&self) -> usize {
        let scopes: usize = self.scopes.iter().map(Scope::heap_bytes).sum();
        let groups: usize = self.groups.slots().flatten().map(Group::heap_bytes).sum();
        // Node slots own nothing.
        let indexed: usize = self.indexed.iter().map(IndexedNode::heap_bytes).sum();
        let metas: usize = self.metas.slots().map(|meta| meta.len()).sum();
        let events: usize = self.events.iter().map(|e| e.membership.meta.len()).sum();
        map_bytes(&self.scope_index)
            + vec_bytes(&self.scopes)
            + scopes
            + self.groups.heap_bytes()
            + groups
            + self.records.heap_bytes()
            + self.metas.heap_bytes()
            + metas
            + self.node_index.heap_bytes()
            + self.nodes.heap_bytes()
            + vec_bytes(&self.indexed)
            + indexed
            + vec_bytes(&self.events)
            + events
    }
}
