//! Heap accounting of the backend's bookkeeping, computed from capacities like the group
//! table's (`groups/heap.rs`, whose helpers are private to that module; the formula is the same).

use std::collections::HashMap;
use std::mem::{align_of, size_of};

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
pub(super) fn vec_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// Heap bytes of a std `HashMap`'s table: buckets of `(K, V)`, control bytes, one trailing
/// control group (bucket count recovered from `capacity()`: 7/8 load, powers of two).
pub(super) fn map_bytes<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    let capacity = map.capacity();
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    let ctrl_align = align_of::<(K, V)>().max(CTRL_GROUP_WIDTH);
    let ctrl_offset = (buckets * size_of::<(K, V)>()).next_multiple_of(ctrl_align);
    ctrl_offset + buckets + CTRL_GROUP_WIDTH
}
