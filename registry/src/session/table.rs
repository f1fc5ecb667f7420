//! The compact session table: key -> (pid, metadata, version).
//!
//! Memory is the design driver (issue 5: <= 64 bytes per session at 10 M u64-keyed sessions).
//! A `Pid` is 24 bytes in memory (12-byte `NodeId`, 4 bytes padding, 8-byte serial), and a
//! naive `HashMap<u64, (Pid, Vec<u8>, u64)>` entry is 64 bytes before the table's slack. Here:
//!
//! - the node of every pid is **interned** to a `u32` index ([`NodeInterner`]): a shard sees
//!   few nodes and many sessions per node;
//! - metadata lives **out of line** in a slab, referenced by a `u32` (none: no allocation);
//! - so a [`Slot`] is 24 bytes and a u64-keyed bucket 32 bytes ([`IntMap`], open addressing,
//!   at most 70% full), in segments (two at first) that double up to 2 MiB and then split
//!   ([`SEGMENT_BUCKETS_MAX`]). At 10 M sessions the buckets are 256 segments x 2^16 x 32
//!   bytes: 53.7 bytes per session. The figure moves with the growth cycle: ~46 bytes right
//!   before the segments split (11.7 M sessions), ~92 right after.
//!
//! Byte-string keys use std's `HashMap` (not the fast path).
//!
//! [`SessionTable::heap_bytes`] is exact (it mirrors hashbrown's and Vec's allocation sizes); the
//! integration test `tests/session_memory.rs` checks it against a counting allocator.

use std::collections::HashMap;
use std::hash::BuildHasher;

use meshreg_membership::NodeId;

use super::hash::{NodeKey, SeededState, recent_slot};
use super::int_map::{EMPTY, IntMap, Probe};
use super::key::SessionKey;
use super::message::{Seq, Session};
use crate::Pid;

/// Number of maps the u64 keys are split into at first: two (a directory of depth 1, so
/// the segment index is one shift of the hash). A segment doubles only up to
/// [`SEGMENT_BUCKETS_MAX`] and then splits, so no rehash is ever larger than 2 MiB whatever
/// the start. Why not more: a session node serves about a thousand shards, most holding a few
/// hundred to a few thousand keys, and 64 segments each (as before) meant 64 small tables per
/// shard, allocated and regrown one by one, where two serve until they reach 2 MiB. A large
/// shard ends the same either way: segments split in step, so at a given size they are the
/// same number of full-size segments (53.7 bytes per session at 10 M either way).
const SEGMENTS: usize = 2;

/// A segment doubles up to this many buckets (2 MiB), then **splits** instead (extendible
/// hashing: a new segment of the same size takes the keys with the next hash bit set). Why:
/// doubling allocates a fresh table twice the size and frees the old one, so every page of
/// every generation is faulted in once (about twice the final table in page faults, 16% of a
/// fill from empty to 10 M) and unmapped again; a split keeps the old buckets, moves half the
/// entries in place and faults in only the new segment. Memory per session is unchanged: the
/// segments still all fill at the same rate and split at about the same time.
const SEGMENT_BUCKETS_MAX: usize = 1 << 16;

/// Deepest split (directory of at most 2^24 entries). 10 M sessions need 8 bits; a shard
/// reaches 24 only when 2^40 keys' worth of segments have been filled, or keys collide.
const MAX_DEPTH: u32 = 24;

/// Marks a slot without metadata.
const NO_META: u32 = u32::MAX;

/// One session, compactly. Invariant: `node` is a live index of the table's interner whose
/// count includes this slot; `meta` is `NO_META` or a live slab index owned by this slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) serial: u64,
    pub(crate) version: Seq,
    /// Interned node; [`EMPTY`] marks a vacant [`IntMap`] bucket.
    pub(crate) node: u32,
    pub(crate) meta: u32,
}

impl Slot {
    /// The content of a vacant bucket.
    pub(crate) const VACANT: Slot = Slot {
        serial: 0,
        version: 0,
        node: EMPTY,
        meta: NO_META,
    };
}

/// Session storage for one shard. Knows nothing of roles or requests.
#[derive(Debug)]
pub(crate) struct SessionTable {
    /// u64 keys, split into segments by the top hash bits (a map indexes by the low bits, so
    /// the two are independent).
    ints: Vec<IntMap>,
    /// Extendible-hashing directory: entry `j` names the segment of the keys whose hash's top
    /// `depth` bits are `j`. Invariant: a segment of local depth `d` (`depths`) is named by
    /// exactly the `2^(depth - d)` consecutive entries sharing its top `d` bits.
    dir: Vec<u32>,
    depth: u32,
    /// Local depth of each segment.
    depths: Vec<u32>,
    /// [`SEGMENT_BUCKETS_MAX`], smaller in tests so they reach splits.
    segment_max: usize,
    state: SeededState,
    bytes: HashMap<Box<[u8]>, Slot, SeededState>,
    meta: MetaSlab,
    nodes: NodeInterner,
}

impl SessionTable {
    pub(crate) fn new(hash_seed: u64) -> Self {
        Self::with_segment_max(hash_seed, SEGMENT_BUCKETS_MAX)
    }

    fn with_segment_max(hash_seed: u64, segment_max: usize) -> Self {
        let state = SeededState::new(hash_seed);
        Self {
            ints: (0..SEGMENTS).map(|_| IntMap::new(state)).collect(),
            dir: (0..SEGMENTS as u32).collect(),
            depth: SEGMENTS.trailing_zeros(),
            depths: vec![SEGMENTS.trailing_zeros(); SEGMENTS],
            segment_max,
            state,
            bytes: HashMap::with_hasher(state),
            meta: MetaSlab::default(),
            nodes: NodeInterner::new(state),
        }
    }

    /// Number of sessions.
    pub(crate) fn len(&self) -> usize {
        self.ints.iter().map(IntMap::len).sum::<usize>() + self.bytes.len()
    }

    fn slot(&self, key: &SessionKey) -> Option<&Slot> {
        match key {
            SessionKey::U64(k) => self.ints[self.segment(*k)].get(*k),
            SessionKey::Bytes(b) => self.bytes.get(&**b),
        }
    }

    #[inline]
    fn segment(&self, k: u64) -> usize {
        self.segment_of_hash(self.state.hash_one(k))
    }

    /// The segment of a u64 key from its hash: the directory entry its top bits name.
    #[inline]
    fn segment_of_hash(&self, hash: u64) -> usize {
        self.dir[(hash >> (64 - self.depth)) as usize] as usize
    }

    /// Insert a u64 key known to be absent (`probe`: its probe in segment `seg`, taken before
    /// anything changed), growing or splitting its segment first when full.
    fn insert_u64(&mut self, mut seg: usize, k: u64, mut probe: Option<Probe>, slot: Slot) {
        while self.must_split(seg) {
            self.split(seg);
            seg = self.segment(k);
            probe = None; // stale
        }
        let map = &mut self.ints[seg];
        let at = match probe {
            // The guard makes room; the index holds unless that rebuilt the map.
            Some(Probe::Vacant(i)) if !map.reserve_one() => i,
            _ => {
                map.reserve_one(); // the empty map, or a no-op after a rebuild
                probe_index(map.probe(k).expect("a reserved map has a vacancy"))
            }
        };
        map.insert_at(at, k, slot);
    }

    /// A full segment at the size cap splits rather than doubles. Past `MAX_DEPTH` hash bits
    /// it doubles anyway: only keys crafted to collide in that many bits get there, and the
    /// directory must stay small.
    fn must_split(&self, seg: usize) -> bool {
        let map = &self.ints[seg];
        map.is_full() && map.bucket_count() >= self.segment_max && self.depths[seg] < MAX_DEPTH
    }

    /// Split segment `seg` in two: a new segment of the same size takes the keys whose next
    /// hash bit (below the `local depth` bits the segment is named by) is set.
    fn split(&mut self, seg: usize) {
        let local = self.depths[seg];
        if local == self.depth {
            // Double the directory: entry j becomes entries 2j and 2j + 1.
            self.dir = self.dir.iter().flat_map(|&s| [s, s]).collect();
            self.depth += 1;
        }
        let bit = 63 - local;
        let mut other = IntMap::with_buckets(self.state, self.ints[seg].bucket_count());
        self.ints[seg].split_into(&mut other, |h| (h >> bit) & 1 == 1);
        // Fewer than 2^32 segments: each holds at least one key per 2^16 buckets' worth.
        let new = u32::try_from(self.ints.len()).expect("segment count fits in u32");
        self.ints.push(other);
        self.depths[seg] = local + 1;
        self.depths.push(local + 1);
        // The same bit, counted in directory indices (whose top bit is the hash's bit 63).
        let shift = self.depth - 1 - local;
        for (j, e) in self.dir.iter_mut().enumerate() {
            if *e as usize == seg && (j >> shift) & 1 == 1 {
                *e = new;
            }
        }
    }

    fn pid_of(&self, slot: &Slot) -> Pid {
        Pid {
            node: self.nodes.id(slot.node),
            serial: slot.serial,
        }
    }

    /// The holder of `key`.
    pub(crate) fn holder(&self, key: &SessionKey) -> Option<Pid> {
        self.slot(key).map(|s| self.pid_of(s))
    }

    /// The session under `key`.
    pub(crate) fn get(&self, key: &SessionKey) -> Option<Session> {
        self.slot(key).map(|s| Session {
            pid: self.pid_of(s),
            metadata: self.meta.get(s.meta).into(),
            version: s.version,
        })
    }

    /// Make `pid` the holder of `key` with `metadata` at `version`, unless another process
    /// holds it and `may_take(holder)` says no. Returns the previous holder (`Ok(None)`: the key
    /// was free) or `Err(holder)` when refused, with nothing changed. One hash probe for u64
    /// keys.
    pub(crate) fn upsert(
        &mut self,
        key: &SessionKey,
        pid: Pid,
        metadata: &[u8],
        version: Seq,
        may_take: impl FnOnce(Pid) -> bool,
    ) -> Result<Option<Pid>, Pid> {
        // One hash of a u64 key picks both its segment and its home bucket.
        let (seg, hash) = match key {
            SessionKey::U64(k) => {
                let hash = self.state.hash_one(*k);
                (self.segment_of_hash(hash), hash)
            }
            SessionKey::Bytes(_) => (0, 0),
        };
        let (nodes, meta) = (&mut self.nodes, &mut self.meta);
        let existing = match key {
            SessionKey::U64(k) => {
                let map = &mut self.ints[seg];
                match map.probe_hashed(*k, hash) {
                    Some(Probe::Found(i)) => Some(map.at_mut(i)),
                    probe => {
                        let slot = new_slot(nodes, meta, pid, metadata, version);
                        self.insert_u64(seg, *k, probe, slot);
                        return Ok(None);
                    }
                }
            }
            SessionKey::Bytes(b) => self.bytes.get_mut(&**b),
        };
        if let Some(slot) = existing {
            let old = Pid {
                node: nodes.id(slot.node),
                serial: slot.serial,
            };
            if old != pid && !may_take(old) {
                return Err(old);
            }
            if old.node != pid.node {
                nodes.release(slot.node);
                slot.node = nodes.acquire(pid.node);
            }
            slot.serial = pid.serial;
            slot.version = version;
            // Both empty is the common case: skip the slice comparison (a libc call).
            if !(slot.meta == NO_META && metadata.is_empty()) && meta.get(slot.meta) != metadata {
                meta.remove(slot.meta);
                slot.meta = meta.insert(metadata);
            }
            return Ok(Some(old));
        }
        if let SessionKey::Bytes(b) = key {
            let slot = new_slot(nodes, meta, pid, metadata, version);
            self.bytes.insert(b.clone(), slot);
        }
        Ok(None)
    }

    /// Remove `key`; returns its holder.
    pub(crate) fn remove(&mut self, key: &SessionKey) -> Option<Pid> {
        let slot = match key {
            SessionKey::U64(k) => {
                let seg = self.segment(*k);
                self.ints[seg].remove(*k)
            }
            SessionKey::Bytes(b) => self.bytes.remove(&**b),
        }?;
        let pid = self.pid_of(&slot);
        self.meta.remove(slot.meta);
        self.nodes.release(slot.node);
        Some(pid)
    }

    /// Read the table memory lookups of `keys` probe first, so that later operations on them
    /// hit the cache. Returns a value that depends on the reads (fold it into a `black_box`).
    ///
    /// Why: at millions of sessions the table is far larger than the caches and every probe is
    /// a DRAM miss (~100+ ns). Probing the next keys of a pipeline back to back lets the CPU
    /// overlap their misses instead of paying them one after another.
    ///
    /// Loads, unlike prefetch instructions (which safe Rust cannot emit), hold up retirement
    /// until they complete, so the CPU overlaps only the misses that fit in its reorder window
    /// together. Hence two passes: hash every key first, then issue the bare loads back to
    /// back, so up to `MAX_TOUCH` misses are in flight at once.
    pub(crate) fn touch_all<'a>(&self, keys: impl Iterator<Item = &'a SessionKey>) -> u64 {
        let mut at = [(0usize, 0usize); MAX_TOUCH];
        let mut n = 0;
        let mut acc = 0;
        for key in keys.take(MAX_TOUCH) {
            match key {
                SessionKey::U64(k) => {
                    let hash = self.state.hash_one(*k);
                    let seg = self.segment_of_hash(hash);
                    if let Some(i) = self.ints[seg].home_of_hash(hash) {
                        at[n] = (seg, i);
                        n += 1;
                    }
                }
                SessionKey::Bytes(b) => acc ^= self.bytes.get(&**b).map_or(1, |s| s.version),
            }
        }
        for &(seg, i) in &at[..n] {
            acc ^= self.ints[seg].touch_at(i);
        }
        acc
    }

    /// First pass of [`Self::touch_all`] for one key, for callers that read ahead across
    /// several tables: reads the key's segment header and returns where its probe starts
    /// (`None`: a byte-string key, or an empty segment). Pass it to [`Self::touch_located`].
    pub(crate) fn locate(&self, key: &SessionKey) -> Option<(usize, usize)> {
        let SessionKey::U64(k) = key else {
            return None;
        };
        let hash = self.state.hash_one(*k);
        let seg = self.segment_of_hash(hash);
        self.ints[seg].home_of_hash(hash).map(|i| (seg, i))
    }

    /// Second pass: loads the buckets a probe from `at` (from [`Self::locate`]) walks first.
    pub(crate) fn touch_located(&self, at: (usize, usize)) -> u64 {
        self.ints[at.0].touch_at(at.1)
    }

    /// Loads the first node row (a shard sees few nodes: usually all of them), for read-ahead.
    pub(crate) fn touch_nodes(&self) -> u64 {
        self.nodes.rows.first().map_or(0, |r| u64::from(r.sessions))
    }

    /// Sessions held by processes of `node`.
    pub(crate) fn node_sessions(&self, node: &NodeId) -> u32 {
        self.nodes.sessions(node)
    }

    /// Remove every session of `node` (`serial: None`) or of one process; returns how many.
    ///
    /// Cost: O(1) when the node holds nothing here (the interner counts sessions per node),
    /// else a scan of the table. Shards hold ~sessions/1024 entries, so a scan is short; a node
    /// that knows its process's keys sends `Unregister`s instead.
    pub(crate) fn remove_node(&mut self, node: &NodeId, serial: Option<u64>) -> usize {
        let Some(idx) = self.nodes.index_of(node) else {
            return 0;
        };
        let before = self.len();
        let (meta, nodes) = (&mut self.meta, &mut self.nodes);
        let mut keep = |slot: &mut Slot| {
            let gone = slot.node == idx && serial.is_none_or(|s| s == slot.serial);
            if gone {
                meta.remove(slot.meta);
                nodes.release(slot.node);
            }
            !gone
        };
        for seg in &mut self.ints {
            seg.retain(&mut keep);
        }
        self.bytes.retain(|_, slot| keep(slot));
        before - self.len()
    }

    /// Every session, sorted by key (snapshots and tests need a deterministic order).
    pub(crate) fn sessions(&self) -> Vec<(SessionKey, Session)> {
        let mut all: Vec<(SessionKey, Session)> = Vec::with_capacity(self.len());
        for (k, _) in self.ints.iter().flat_map(IntMap::iter) {
            let key = SessionKey::U64(k);
            if let Some(s) = self.get(&key) {
                all.push((key, s));
            }
        }
        for k in self.bytes.keys() {
            let key = SessionKey::Bytes(k.clone());
            if let Some(s) = self.get(&key) {
                all.push((key, s));
            }
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Exact heap bytes owned by the table.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.ints.capacity() * size_of::<IntMap>()
            + self.ints.iter().map(IntMap::heap_bytes).sum::<usize>()
            + (self.dir.capacity() + self.depths.capacity()) * size_of::<u32>()
            + hash_table_bytes::<(Box<[u8]>, Slot)>(self.bytes.capacity())
            + self.bytes.keys().map(|k| k.len()).sum::<usize>()
            + self.meta.heap_bytes()
            + self.nodes.heap_bytes()
    }
}

/// Most keys [`SessionTable::touch_all`] reads ahead in one call.
pub(crate) const MAX_TOUCH: usize = 64;

fn probe_index(p: Probe) -> usize {
    match p {
        Probe::Found(i) | Probe::Vacant(i) => i,
    }
}

fn new_slot(
    nodes: &mut NodeInterner,
    meta: &mut MetaSlab,
    pid: Pid,
    metadata: &[u8],
    version: Seq,
) -> Slot {
    Slot {
        serial: pid.serial,
        version,
        node: nodes.acquire(pid.node),
        meta: meta.insert(metadata),
    }
}

/// Bytes hashbrown (std's `HashMap`) allocates for a table of `capacity` entries of type `T`:
/// `buckets` entries, padded to the control-byte alignment, then one control byte per bucket
/// plus one SIMD group of trailing control bytes. `capacity` is `HashMap::capacity()`, which is
/// `buckets - 1` below 8 buckets and `buckets / 8 * 7` from 8 on (hashbrown's max load factor).
pub(crate) fn hash_table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0; // the empty singleton, no allocation
    }
    let buckets = if capacity < 8 {
        capacity + 1
    } else {
        capacity / 7 * 8
    };
    let ctrl_align = align_of::<T>().max(GROUP_WIDTH);
    let ctrl_offset = (size_of::<T>() * buckets).next_multiple_of(ctrl_align);
    ctrl_offset + buckets + GROUP_WIDTH
}

/// hashbrown's control-byte group: SSE2 on x86, NEON on aarch64, a word elsewhere.
const GROUP_WIDTH: usize = if cfg!(all(
    any(target_arch = "x86", target_arch = "x86_64"),
    target_feature = "sse2"
)) {
    16
} else if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
    8
} else {
    size_of::<usize>()
};

/// Out-of-line metadata, indexed by `u32`. Empty metadata is never stored.
#[derive(Debug, Default)]
struct MetaSlab {
    values: Vec<Box<[u8]>>,
    free: Vec<u32>,
}

impl MetaSlab {
    fn insert(&mut self, metadata: &[u8]) -> u32 {
        if metadata.is_empty() {
            return NO_META;
        }
        if let Some(i) = self.free.pop() {
            self.values[i as usize] = metadata.into();
            return i;
        }
        // Fewer than u32::MAX values: each is at least one byte, and a shard holds far fewer
        // sessions than 4 G.
        let i = u32::try_from(self.values.len()).unwrap_or(NO_META - 1);
        self.values.push(metadata.into());
        i
    }

    fn get(&self, i: u32) -> &[u8] {
        if i == NO_META {
            return &[];
        }
        self.values.get(i as usize).map_or(&[], |v| v)
    }

    fn remove(&mut self, i: u32) {
        if i == NO_META {
            return;
        }
        if let Some(v) = self.values.get_mut(i as usize) {
            *v = Box::default();
            self.free.push(i);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.values.capacity() * size_of::<Box<[u8]>>()
            + self.values.iter().map(|v| v.len()).sum::<usize>()
            + self.free.capacity() * size_of::<u32>()
    }
}

/// Interners with at most this many rows find a node by scanning them (see
/// `NodeInterner::index_of`): 8 rows of 16 bytes are two cache lines.
const SCAN_ROWS: usize = 8;

/// One interned node and how many sessions of this table it holds.
#[derive(Clone, Copy, Debug)]
struct NodeRow {
    id: NodeId,
    sessions: u32,
}

/// NodeId <-> u32, with per-node session counts. An index is freed when its count reaches 0,
/// so the interner holds only nodes with sessions (node generations churn forever).
#[derive(Debug)]
struct NodeInterner {
    rows: Vec<NodeRow>,
    index: HashMap<NodeKey, u32, SeededState>,
    free: Vec<u32>,
    /// Recently acquired rows, direct-mapped by a cheap hash of the node ([`recent_slot`](super::hash::recent_slot)):
    /// a primary interleaves registrations from every client node, and this answers most of
    /// them without the hashed index (~4% of a registration on 64 nodes). An entry is only a
    /// hint (`EMPTY`, or a row that may since have been freed or reused), checked against the
    /// row before use.
    recent: [u32; RECENT],
}

/// Entries of [`NodeInterner::recent`].
const RECENT: usize = 64;

impl NodeInterner {
    fn new(state: SeededState) -> Self {
        Self {
            rows: Vec::new(),
            index: HashMap::with_hasher(state),
            free: Vec::new(),
            recent: [EMPTY; RECENT],
        }
    }

    fn id(&self, i: u32) -> NodeId {
        self.rows[i as usize].id
    }

    /// The live index of `node`. A shard usually sees a handful of nodes: up to
    /// [`SCAN_ROWS`] rows are scanned (one or two cache lines, already needed for the count)
    /// rather than hashed (a control group and a bucket, two more misses per write). A row is
    /// live exactly while its count is above zero (`acquire` counts a new row at once,
    /// `release` frees it at zero), so a freed row never matches.
    fn index_of(&self, node: &NodeId) -> Option<u32> {
        if self.rows.len() <= SCAN_ROWS {
            let i = self
                .rows
                .iter()
                .position(|r| r.sessions > 0 && r.id == *node)?;
            return u32::try_from(i).ok();
        }
        self.index.get(&NodeKey(*node)).copied()
    }

    fn sessions(&self, node: &NodeId) -> u32 {
        self.index_of(node)
            .map_or(0, |i| self.rows[i as usize].sessions)
    }

    /// Count one more session of `node`; returns its index.
    fn acquire(&mut self, node: NodeId) -> u32 {
        let slot = recent_slot(&node, RECENT);
        let hint = self.recent[slot];
        // A row is live exactly while its count is above zero, so a stale hint never matches.
        let i = match self.rows.get(hint as usize) {
            Some(r) if r.sessions > 0 && r.id == node => hint,
            _ => {
                let i = match self.index_of(&node) {
                    Some(i) => i,
                    None => self.intern(node),
                };
                self.recent[slot] = i;
                i
            }
        };
        self.rows[i as usize].sessions += 1;
        i
    }

    fn intern(&mut self, node: NodeId) -> u32 {
        let row = NodeRow {
            id: node,
            sessions: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.rows[i as usize] = row;
                i
            }
            None => {
                self.rows.push(row);
                // A shard cannot see 4 G distinct nodes at once; EMPTY is never an index.
                u32::try_from(self.rows.len() - 1).map_or(EMPTY - 1, |i| i.min(EMPTY - 1))
            }
        };
        self.index.insert(NodeKey(node), i);
        i
    }

    /// Count one session less of the node at `i`, freeing the index at zero.
    fn release(&mut self, i: u32) {
        let row = &mut self.rows[i as usize];
        row.sessions -= 1;
        if row.sessions == 0 {
            let id = row.id;
            self.index.remove(&NodeKey(id));
            self.free.push(i);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.rows.capacity() * size_of::<NodeRow>()
            + hash_table_bytes::<(NodeKey, u32)>(self.index.capacity())
            + self.free.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshreg_membership::loopback_addr;

    fn pid(node: u32, serial: u64) -> Pid {
        Pid {
            node: NodeId::new(loopback_addr(node, 1), 1),
            serial,
        }
    }

    #[test]
    fn a_slot_is_24_bytes() {
        assert_eq!(size_of::<Slot>(), 24);
    }

    #[test]
    fn set_get_remove_round_trip_with_and_without_metadata() {
        let mut t = SessionTable::new(1);
        assert_eq!(
            t.upsert(&1u64.into(), pid(1, 1), b"", 1, |_| true),
            Ok(None)
        );
        assert_eq!(
            t.upsert(&"k".into(), pid(2, 2), b"meta", 2, |_| true),
            Ok(None)
        );
        assert_eq!(
            t.get(&"k".into()).map(|s| s.metadata),
            Some(b"meta"[..].into())
        );
        assert_eq!(
            t.upsert(&"k".into(), pid(3, 3), b"x", 3, |_| false),
            Err(pid(2, 2))
        );
        assert_eq!(
            t.upsert(&"k".into(), pid(3, 3), b"", 3, |_| true),
            Ok(Some(pid(2, 2)))
        );
        assert_eq!(
            t.get(&"k".into()),
            Some(Session {
                pid: pid(3, 3),
                metadata: Box::default(),
                version: 3
            })
        );
        assert_eq!(t.node_sessions(&pid(2, 0).node), 0);
        assert_eq!(t.remove(&1u64.into()), Some(pid(1, 1)));
        assert_eq!(t.len(), 1);
    }

    proptest::proptest! {
        /// With 16-bucket segments (splits after ~700 keys), against std's HashMap: upserts
        /// (moving keys between 20 nodes, so interned rows are freed and reused), removals and
        /// node drops, then every key and node count read back, and the directory invariant.
        #[test]
        fn prop_split_segments_behave_like_a_hash_map(
            seed in proptest::prelude::any::<u64>(),
            ops in proptest::collection::vec((0u8..8, 0u64..4000, 0u32..20), 1..3000),
        ) {
            let mut t = SessionTable::with_segment_max(seed, 16);
            let mut model: HashMap<u64, Pid> = HashMap::new();
            for (op, k, node) in ops {
                match op {
                    0 => {
                        proptest::prop_assert_eq!(t.remove(&k.into()), model.remove(&k));
                    }
                    1 if k % 50 == 0 => {
                        let node = pid(node, 0).node;
                        let want = model.values().filter(|p| p.node == node).count();
                        model.retain(|_, p| p.node != node);
                        proptest::prop_assert_eq!(t.remove_node(&node, None), want);
                    }
                    _ => {
                        let p = pid(node, k);
                        let old = t.upsert(&k.into(), p, b"", 1, |_| true);
                        proptest::prop_assert_eq!(old, Ok(model.insert(k, p)));
                    }
                }
            }
            proptest::prop_assert_eq!(t.len(), model.len());
            for k in 0..4000u64 {
                proptest::prop_assert_eq!(t.holder(&k.into()), model.get(&k).copied());
            }
            for n in 0..20 {
                let node = pid(n, 0).node;
                let want = model.values().filter(|p| p.node == node).count();
                proptest::prop_assert_eq!(t.node_sessions(&node) as usize, want);
            }
            // Each segment of local depth d is named by 2^(depth - d) consecutive entries.
            for (seg, &d) in t.depths.iter().enumerate() {
                let named: Vec<usize> = (0..t.dir.len()).filter(|&j| t.dir[j] as usize == seg).collect();
                proptest::prop_assert_eq!(named.len(), 1 << (t.depth - d));
                proptest::prop_assert_eq!(named[named.len() - 1] - named[0] + 1, named.len());
            }
            if model.len() > 1000 {
                proptest::prop_assert!(t.ints.len() > SEGMENTS, "no split at {} keys", model.len());
            }
        }
    }

    #[test]
    fn remove_node_drops_only_that_node_or_process() {
        let mut t = SessionTable::new(1);
        for k in 0..10u64 {
            let _ = t.upsert(&k.into(), pid((k % 2) as u32, k % 4), b"m", k, |_| true);
        }
        assert_eq!(t.remove_node(&pid(0, 0).node, Some(0)), 3); // keys 0, 4, 8
        assert_eq!(t.remove_node(&pid(0, 0).node, None), 2); // keys 2, 6
        assert_eq!(t.remove_node(&pid(0, 0).node, None), 0);
        assert_eq!(t.len(), 5);
        assert!(
            t.sessions()
                .iter()
                .all(|(_, s)| s.pid.node == pid(1, 0).node)
        );
    }

    #[test]
    fn hash_table_bytes_matches_known_hashbrown_sizes() {
        // 2^24 buckets of 32-byte entries: 512 MiB of entries + 16 Mi control bytes + a group.
        let cap = (1usize << 24) / 8 * 7;
        assert_eq!(
            hash_table_bytes::<(u64, Slot)>(cap),
            (1 << 24) * 33 + GROUP_WIDTH
        );
        assert_eq!(hash_table_bytes::<(u64, Slot)>(0), 0);
        let m: HashMap<u64, Slot, SeededState> =
            HashMap::with_capacity_and_hasher(1000, SeededState::new(0));
        assert_eq!(m.capacity(), 1792); // 2048 buckets
    }
}
