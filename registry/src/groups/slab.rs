//! `Slab`: stable `u32` handles into chunked storage, so records can point at each other with
//! 4-byte indices and the table's memory never holds more than one chunk of growth slack.

use std::mem;

/// The handle that means "none" in every `u32` link of the table.
pub(super) const NIL: u32 = u32::MAX;

/// Slots per chunk. Full chunks are exactly this long, so only the last chunk has slack.
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: u32 = (1 << CHUNK_BITS) - 1;

/// Storage with stable handles. A removed slot is reset to `T::default()` (which releases what
/// it owned) and its handle is reused, last freed first, by the next insert; the slots
/// themselves are kept (high-water mark) until the slab is empty again, when all its memory is
/// released.
///
/// Invariant: every chunk but the last holds exactly `CHUNK` slots; a handle is live from the
/// `insert` that returned it until the `remove` of it. Using a handle outside that window is a bug
/// in the table: it reads a reset slot or panics on an index out of range, never undefined
/// behaviour.
pub(super) struct Slab<T> {
    chunks: Vec<Vec<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T: Default> Slab<T> {
    pub(super) const fn new() -> Self {
        Self {
            chunks: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `value` and returns its handle: O(1) amortised.
    pub(super) fn insert(&mut self, value: T) -> u32 {
        self.live += 1;
        if let Some(id) = self.free.pop() {
            *self.get_mut(id) = value;
            return id;
        }
        if self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.chunks.push(Vec::new());
        }
        let full_chunks = self.chunks.len() - 1;
        let last = self.chunks.last_mut().expect("a chunk was just ensured");
        if last.len() == last.capacity() {
            // Double up to exactly CHUNK, so a full chunk carries no slack.
            let grow = last.capacity().max(4).min(CHUNK - last.capacity());
            last.reserve_exact(grow);
        }
        let id = full_chunks * CHUNK + last.len();
        last.push(value);
        // 2^32 - 1 slots of the smallest slot type would be > 100 GiB: unreachable.
        let id = u32::try_from(id).expect("fewer than 2^32 slots");
        assert_ne!(id, NIL, "slab handle space exhausted");
        id
    }

    /// Resets the slot of `id`, makes `id` reusable and returns what the slot held.
    pub(super) fn remove(&mut self, id: u32) -> T {
        let value = mem::take(self.get_mut(id));
        self.live -= 1;
        if self.live == 0 {
            // Handles restart from 0; nothing live can refer to the old ones.
            self.chunks = Vec::new();
            self.free = Vec::new();
        } else {
            self.free.push(id);
        }
        value
    }

    pub(super) fn get(&self, id: u32) -> &T {
        &self.chunks[(id >> CHUNK_BITS) as usize][(id & CHUNK_MASK) as usize]
    }

    pub(super) fn get_mut(&mut self, id: u32) -> &mut T {
        &mut self.chunks[(id >> CHUNK_BITS) as usize][(id & CHUNK_MASK) as usize]
    }

    /// Every slot, live or free (free ones hold `T::default()`), in handle order.
    pub(super) fn slots(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Heap bytes of the slots and the free list (not of what the slots own).
    pub(super) fn heap_bytes(&self) -> usize {
        let slots: usize = self.chunks.iter().map(super::heap::vec_bytes).sum();
        slots + super::heap::vec_bytes(&self.chunks) + super::heap::vec_bytes(&self.free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_reused_last_freed_first() {
        let mut slab = Slab::<u64>::new();
        let _keep = slab.insert(0);
        let a = slab.insert(1);
        let b = slab.insert(2);
        slab.remove(a);
        slab.remove(b);
        assert_eq!(slab.insert(3), b);
        assert_eq!(slab.insert(4), a);
        assert_eq!(*slab.get(a), 4);
    }

    #[test]
    fn an_emptied_slab_releases_its_memory() {
        let mut slab = Slab::<u64>::new();
        let ids: Vec<u32> = (0..3000).map(|i| slab.insert(i)).collect();
        for id in ids {
            slab.remove(id);
        }
        assert_eq!(slab.heap_bytes(), 0);
        assert_eq!(slab.insert(9), 0);
    }

    #[test]
    fn full_chunks_carry_no_slack() {
        let mut slab = Slab::<u32>::new();
        for i in 0..(2 * CHUNK as u32 + 1) {
            assert_eq!(slab.insert(i), i);
        }
        assert_eq!(slab.chunks[0].capacity(), CHUNK);
        assert_eq!(slab.chunks[1].capacity(), CHUNK);
        assert_eq!(*slab.get(CHUNK as u32 + 7), CHUNK as u32 + 7);
    }
}
