//! The private storage of [`GroupTable`](super::GroupTable): each group lists its occurrences
//! inline (pid and metadata handle), so a read walks one contiguous list; a `Record` per
//! occurrence is its stable handle for the pid chains and the node lists.
//!
//! ```text
//! scope_index: ScopeName -> scope (Vec index; scopes are never removed)
//!   Scope.groups: GroupName -> group handle        (lookup only)
//!   Scope.list:   [group handle]                   (which_groups order)
//! Group.members:  [Entry]  every occurrence, cluster-wide: serial, node, meta, record handle
//! Group.local:    [position in Group.members]      occurrences of the owner node's pids
//! node_index: NodeId -> node handle
//!   NodeSlot.records, by the node's number of records:
//!     List { len, head }: its few records, linked oldest first by Record.node_link
//!     Indexed -> IndexedNode.records: [record handle]   (memberships_of_node, remove_node)
//!                IndexedNode.pids:    serial -> newest record of that pid
//! Record: group, where its occurrence is in each list above (O(1) swap_remove), and the next
//!   older record of its pid (the pid chain)
//! ```
//!
//! Architecture Invariant (positions): for every live record `r` of handle `id`,
//! `group.members[r.pos_in_group].record == id`; if that entry's node is the owner slot,
//! `group.local[r.pos_in_local] == r.pos_in_group`; if that node is indexed,
//! `indexed.records[r.node_link] == id`, and if it is a list, `id` is on its list. Every
//! removal from a group or an indexed node's list is a `swap_remove` that rewrites the
//! positions of the one entry it moved; a list node unlinks the record (at most `LIST_MAX`
//! hops).
//!
//! Architecture Invariant (chains): the records of one pid form one chain through
//! `Record.next_of_pid`, newest join first. Its head is `IndexedNode.pids[serial]` on an
//! indexed node (a pid has a map entry iff it has a record), and the pid's last record on the
//! list of a list node (a list holds each pid's records oldest first, its chain reversed:
//! joins append, removals keep the order, and a node turned back into a list lays out each
//! chain in one piece). A list node holds at most `LIST_MAX` records, an indexed one more than
//! `LIST_AGAIN`. A group exists iff it has a record; a node slot (other than the owner's, slot
//! 0) exists iff it has a record.
//!
//! Why entries are inline: a read of a group of `k` members used to follow `k` handles into a
//! slab where the records of one group lie far apart (they are allocated in join order), one
//! cache miss each; the group's own list is one or two cache lines. The record keeps only what
//! the chains and removals need, so an occurrence costs the same bytes as before.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use meshreg_membership::NodeId;

use super::name::{GroupName, ScopeName};
use super::slab::{NIL, Slab};

/// The owner node's slot: created with the table and never freed, so "is this record local" is
/// one integer comparison.
pub(super) const OWNER_SLOT: u32 = 0;

/// One scope: a lookup map and an ordered list of its groups. An empty scope costs this struct
/// plus its name and its index entry (about 150 bytes): hundreds of scopes are cheap.
pub(super) struct Scope {
    pub(super) name: ScopeName,
    pub(super) groups: NameIndex,
    pub(super) list: Vec<u32>,
}

/// Longest name whose bytes a group keeps inline for the index's comparisons.
const INLINE_NAME: usize = 23;

/// The length byte of a [`NameKey`] of a longer name.
const LONG: u8 = u8::MAX;

/// A group's name as the name index compares it, kept in the group itself. A name of up to
/// [`INLINE_NAME`] bytes (nearly all) is its length, then its bytes, zero-padded, as three
/// little-endian words: it compares as three words, without following a pointer (keyed by the
/// shared `Arc<str>`, every read of a large table paid a cache miss on the name's own
/// allocation just to confirm the hash hit). A longer name is marked [`LONG`] and compared
/// through the shared name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct NameKey(pub(super) [u64; 3]);

/// The bytes of `b` (at most 8) as a little-endian word, zero-padded. Built from fixed-size
/// loads (overlapping when the length is not their size) in registers: a key copied into
/// memory byte-wise and read back as words stalled every lookup on store forwarding.
fn word(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n <= 8);
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | (u64::from(hi) << (8 * (n - 4)))
    } else if n > 0 {
        u64::from(b[0])
            | (u64::from(b[n / 2]) << (8 * (n / 2)))
            | (u64::from(b[n - 1]) << (8 * (n - 1)))
    } else {
        0
    }
}

impl NameKey {
    pub(super) fn of(name: &str) -> Self {
        let b = name.as_bytes();
        let n = b.len();
        if n > INLINE_NAME {
            return Self([u64::from(LONG), 0, 0]);
        }
        // Byte 0 is the length; name byte i is key byte i + 1.
        let w0 = n as u64 | (word(&b[..n.min(7)]) << 8);
        let w1 = if n > 7 { word(&b[7..n.min(15)]) } else { 0 };
        let w2 = if n > 15 { word(&b[15..]) } else { 0 };
        Self([w0, w1, w2])
    }

    pub(super) fn is_long(&self) -> bool {
        self.0[0] == u64::from(LONG)
    }

    /// The words holding the length and the name: len / 8 + 1 of them.
    fn used(&self) -> &[u64] {
        &self.0[..(self.0[0] & 0xff) as usize / 8 + 1]
    }
}

/// Group name -> group handle, for one scope. The table holds only the 4-byte handles; a probe
/// compares against the [`NameKey`] in the group, which a read goes on to use anyway. Keyed by
/// the names themselves (24-byte buckets), the index of 10,000 groups was half a megabyte, and
/// a read paid a cache miss on its bucket; this one is about a sixth of that size.
///
/// Invariant: every handle in the table is a live group of this scope, and each is found by
/// its name's hash (so a group is removed from the index while it is still live).
#[derive(Default)]
pub(super) struct NameIndex {
    table: HashTable<u32>,
    hash: NameHash,
}

impl NameIndex {
    /// The hash of a name: its key's words in use when short, its bytes when long.
    fn hash_of(hash: &NameHash, key: &NameKey, name: &str) -> u64 {
        let mut h = hash.build_hasher();
        if key.is_long() {
            h.write(name.as_bytes());
        } else {
            for &w in key.used() {
                h.write_u64(w);
            }
        }
        h.finish()
    }

    fn rehash(hash: &NameHash, groups: &Slab<Option<Group>>, g: u32) -> u64 {
        let group = live_group(groups, g);
        Self::hash_of(hash, &group.key, group.name.as_str())
    }

    /// The handle of the group called `name`, if this scope has it.
    pub(super) fn get(&self, name: &str, groups: &Slab<Option<Group>>) -> Option<u32> {
        let key = NameKey::of(name);
        let hash = Self::hash_of(&self.hash, &key, name);
        let found = if key.is_long() {
            self.table.find(hash, |&g| {
                let group = live_group(groups, g);
                group.key.is_long() && group.name.as_str() == name
            })
        } else {
            self.table.find(hash, |&g| live_group(groups, g).key == key)
        };
        found.copied()
    }

    /// Adds live group `g`, whose name the index does not hold yet.
    pub(super) fn insert(&mut self, g: u32, groups: &Slab<Option<Group>>) {
        let hash = Self::rehash(&self.hash, groups, g);
        let seed = &self.hash;
        self.table
            .insert_unique(hash, g, |&h| Self::rehash(seed, groups, h));
    }

    /// Removes group `g`, still live; gives memory back as [`shrink_map`] does.
    pub(super) fn remove(&mut self, g: u32, groups: &Slab<Option<Group>>) {
        let hash = Self::rehash(&self.hash, groups, g);
        let seed = &self.hash;
        remove_handle(&mut self.table, hash, g, |&h| Self::rehash(seed, groups, h));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        super::heap::table_bytes::<u32>(self.table.capacity())
    }
}

/// Node id -> node handle. Like [`NameIndex`], the table holds only 4-byte handles and a probe
/// compares against the id kept in the node's slot: a replica of a large cluster holds a slot
/// for nearly every node, and a `HashMap<NodeId, u32>` bucket (16 bytes, SipHash) cost twice as
/// much per node as this one.
///
/// Invariant: every handle in the table is a live node slot, found by its id's hash; the
/// owner's slot is in it too.
#[derive(Default)]
pub(super) struct NodeIndex {
    table: HashTable<u32>,
    hash: NameHash,
}

impl NodeIndex {
    /// The hash of a node id: its address and its generation, two words.
    fn hash_of(hash: &NameHash, id: &NodeId) -> u64 {
        let mut h = hash.build_hasher();
        h.write_u64(id.addr_key());
        h.write_u64(u64::from(id.generation()));
        h.finish()
    }

    fn rehash(hash: &NameHash, nodes: &Slab<Option<NodeSlot>>, n: u32) -> u64 {
        Self::hash_of(hash, &live_node(nodes, n).id)
    }

    /// The handle of node `id`'s slot, if it has one.
    pub(super) fn get(&self, id: &NodeId, nodes: &Slab<Option<NodeSlot>>) -> Option<u32> {
        let hash = Self::hash_of(&self.hash, id);
        self.table
            .find(hash, |&n| live_node(nodes, n).id == *id)
            .copied()
    }

    /// Adds live slot `n`, whose id the index does not hold yet.
    pub(super) fn insert(&mut self, n: u32, nodes: &Slab<Option<NodeSlot>>) {
        let hash = Self::rehash(&self.hash, nodes, n);
        let seed = &self.hash;
        self.table
            .insert_unique(hash, n, |&m| Self::rehash(seed, nodes, m));
    }

    /// Removes slot `n`, still live; gives memory back as [`shrink_map`] does.
    pub(super) fn remove(&mut self, n: u32, nodes: &Slab<Option<NodeSlot>>) {
        let hash = Self::rehash(&self.hash, nodes, n);
        let seed = &self.hash;
        remove_handle(&mut self.table, hash, n, |&m| Self::rehash(seed, nodes, m));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Every slot handle held, in no particular order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().copied()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        super::heap::table_bytes::<u32>(self.table.capacity())
    }
}

/// The live node slot behind a handle; a dead handle here is a bug in the table.
fn live_node(nodes: &Slab<Option<NodeSlot>>, n: u32) -> &NodeSlot {
    nodes.get(n).as_ref().expect("handle of a live node")
}

/// Removes handle `h` (found under `hash`) from a handle index and gives memory back as
/// [`shrink_map`] does: dropped when empty, halved below a quarter full.
fn remove_handle(table: &mut HashTable<u32>, hash: u64, h: u32, rehash: impl Fn(&u32) -> u64) {
    if let Ok(entry) = table.find_entry(hash, |&x| x == h) {
        entry.remove();
    }
    if table.is_empty() {
        *table = HashTable::new();
    } else if table.capacity() >= 32 && table.len() < table.capacity() / 4 {
        let half = table.capacity() / 2;
        table.shrink_to(half, rehash);
    }
}

/// The live group behind a handle; a dead handle here is a bug in the table.
fn live_group(groups: &Slab<Option<Group>>, g: u32) -> &Group {
    groups.get(g).as_ref().expect("handle of a live group")
}

/// The name index's hasher (also the per-node serial maps'): a multiply-fold over 8-byte words
/// from a per-map random seed.
/// Every read and write hashes one name; SipHash cost more than the rest of a lookup in a
/// warm index. Keyed, so which names collide is not known outside the process.
#[derive(Clone)]
pub(super) struct NameHash {
    seed: u64,
}

impl Default for NameHash {
    fn default() -> Self {
        // The seed comes from std's per-process random keys, as every `HashMap::new` does.
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64);
        Self { seed }
    }
}

impl std::hash::BuildHasher for NameHash {
    type Hasher = NameHasher;

    fn build_hasher(&self) -> NameHasher {
        NameHasher { h: self.seed }
    }
}

/// See [`NameHash`].
pub(super) struct NameHasher {
    h: u64,
}

/// Odd multiplier of the fold (the 64-bit golden ratio).
const FOLD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The high and low halves of the 128-bit product, xored: every input bit reaches the output.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.h = fold(self.h ^ u64::from_le_bytes(w), FOLD);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The tail's length goes in too: "a" and "a\0" differ.
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.h = fold(self.h ^ u64::from_le_bytes(w), FOLD ^ rest.len() as u64);
        }
    }

    // A serial is one word: one fold, as `write` would do with its 8 bytes, without the loop.
    fn write_u64(&mut self, n: u64) {
        self.h = fold(self.h ^ n, FOLD);
    }

    fn finish(&self) -> u64 {
        // One more round so the last word's bits reach the top bits the map's probes use.
        fold(self.h, FOLD)
    }
}

/// One non-empty group.
pub(super) struct Group {
    /// The name as the scope's index compares it.
    pub(super) key: NameKey,
    pub(super) name: GroupName,
    pub(super) scope: u32,
    pub(super) pos_in_scope: u32,
    pub(super) members: Vec<Entry>,
    /// Positions in `members` of the owner node's occurrences.
    pub(super) local: Vec<u32>,
}

/// Records a node may hold as a list (without a pid index) before it is indexed.
pub(super) const LIST_MAX: u32 = 8;

/// An indexed node whose records fall to this many is a list again: half of [`LIST_MAX`], so
/// a node hovering around the threshold does not rebuild its index on every join and leave
/// (a conversion is paid for by the `LIST_MAX / 2` changes since the previous one).
pub(super) const LIST_AGAIN: u32 = LIST_MAX / 2;

/// Everything the table holds about one node's pids: 20 bytes, in place in the node slab.
pub(super) struct NodeSlot {
    pub(super) id: NodeId,
    pub(super) records: NodeRecords,
}

impl NodeSlot {
    pub(super) fn new(id: NodeId) -> Self {
        Self {
            id,
            records: NodeRecords::EMPTY,
        }
    }
}

/// How a node finds its records and the heads of its pids' chains.
///
/// A replica of a large cluster holds a slot for nearly every node, and most own a couple of
/// memberships: a list and a pid map per node (about 160 heap bytes with the slot) cost more
/// than the memberships themselves. So a node with few records (at most [`LIST_MAX`]) links
/// them through the records and finds a pid's chain by walking them; past that it is indexed
/// (O(1) per pid, however many records it has).
#[derive(Clone, Copy)]
pub(super) enum NodeRecords {
    /// `len` records linked from `head` through [`Record::node_link`] (`NIL` ends the list),
    /// oldest join first: `memberships_of_node` lists a node's memberships in join order, as
    /// the gossip backend sends an owner's full state, and the receiver's `replace_node`
    /// joins them in that order. Invariant: the records of one pid appear oldest first (its
    /// chain reversed), so the head of a pid's chain is its last record on the list.
    List { len: u8, head: u32 },
    /// Position of the node's [`IndexedNode`] in the table's list of them.
    Indexed(u32),
}

impl NodeRecords {
    pub(super) const EMPTY: Self = Self::List { len: 0, head: NIL };
}

// A list's length is a byte (the tag's neighbour), so a slot is 20 bytes, and a free one costs
// no more (the tag's spare values mark `None`).
const _: () = assert!(size_of::<Option<NodeSlot>>() == 20);
const _: () = assert!(LIST_MAX < u8::MAX as u32);

/// The records of a node with many of them: a list for enumeration and O(1) `swap_remove`
/// (each record knows its position, [`Record::node_link`]) and the heads of its pids' chains.
/// The table keeps them in one list, not a slab: a join or leave of an indexed node's pid
/// reaches it several times, and a list is one load closer than a slab's chunks.
///
/// Invariant: `indexed[x].node == n` iff node slot `n` is `NodeRecords::Indexed(x)`.
#[derive(Default)]
pub(super) struct IndexedNode {
    /// The node slot whose records these are (to update it when this moves in the list).
    pub(super) node: u32,
    pub(super) records: Vec<u32>,
    pub(super) pids: PidIndex,
}

/// A serial as a map key of two 4-byte halves: a `(u64, u32)` bucket is padded to 16 bytes,
/// this one's `([u32; 2], u32)` is 12, and the map holds one bucket per pid with memberships.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SerialKey([u32; 2]);

impl SerialKey {
    fn new(serial: u64) -> Self {
        Self([serial as u32, (serial >> 32) as u32])
    }

    fn get(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
}

impl std::hash::Hash for SerialKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.get());
    }
}

/// Serial -> newest record of that pid. Keyed by the name index's hasher too: every join,
/// leave and exit hashes one serial, and SipHash was the largest single cost of a join into a
/// large table.
#[derive(Default)]
pub(super) struct PidIndex(HashMap<SerialKey, u32, NameHash>);

impl PidIndex {
    pub(super) fn get(&self, serial: u64) -> Option<u32> {
        self.0.get(&SerialKey::new(serial)).copied()
    }

    /// Sets the head of `serial`'s chain, returning the previous one.
    pub(super) fn insert(&mut self, serial: u64, id: u32) -> Option<u32> {
        self.0.insert(SerialKey::new(serial), id)
    }

    /// Drops `serial`'s entry, giving memory back as [`shrink_map`] does.
    pub(super) fn remove(&mut self, serial: u64) -> Option<u32> {
        let head = self.0.remove(&SerialKey::new(serial));
        shrink_map(&mut self.0);
        head
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.0.iter().map(|(k, &v)| (k.get(), v))
    }

    pub(super) fn heap_bytes(&self) -> usize {
        super::heap::map_bytes(&self.0)
    }
}

/// One occurrence of a pid as its group lists it: what a read returns, inline. 20 bytes, all
/// 4-byte fields (the serial is split so the entry stays 4-aligned and unpadded).
#[derive(Clone, Copy)]
pub(super) struct Entry {
    serial: [u32; 2],
    pub(super) node: u32,
    /// Handle in the metadata slab, or `NIL` for no metadata.
    pub(super) meta: u32,
    /// The occurrence's record.
    pub(super) record: u32,
}

impl Entry {
    pub(super) fn new(serial: u64, node: u32, meta: u32, record: u32) -> Self {
        Self {
            serial: [serial as u32, (serial >> 32) as u32],
            node,
            meta,
            record,
        }
    }

    pub(super) fn serial(&self) -> u64 {
        u64::from(self.serial[0]) | (u64::from(self.serial[1]) << 32)
    }
}

/// The stable handle of one occurrence (its entry moves within its group's list): the group,
/// the positions of the occurrence in the lists that hold it, and the pid chain. 20 bytes.
#[derive(Clone, Copy, Default)]
pub(super) struct Record {
    pub(super) group: u32,
    pub(super) pos_in_group: u32,
    /// Meaningful only when the entry's node is `OWNER_SLOT`.
    pub(super) pos_in_local: u32,
    /// Of an indexed node: the position in its record list. Of a list node: the next record of
    /// that list, or `NIL`.
    pub(super) node_link: u32,
    /// The next older record of the same pid, or `NIL`.
    pub(super) next_of_pid: u32,
}

impl Record {
    pub(super) fn new(group: u32, pos_in_group: u32) -> Self {
        Self {
            group,
            pos_in_group,
            pos_in_local: NIL,
            node_link: NIL,
            next_of_pid: NIL,
        }
    }
}

/// `u32` view of a list length; lists hold record handles, so they are shorter than 2^32.
pub(super) fn pos_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a list of record handles is shorter than 2^32")
}

/// Appends record `id` to an indexed node's list and records where it went, O(1) amortised.
pub(super) fn push_in_node(list: &mut Vec<u32>, id: u32, records: &mut Slab<Record>) {
    records.get_mut(id).node_link = pos_u32(list.len());
    list.push(id);
}

/// Removes the entry at `at` of an indexed node's list by moving the last entry into it (O(1)),
/// rewrites the moved record's position, and gives memory back once the list is a quarter full.
pub(super) fn remove_in_node(list: &mut Vec<u32>, at: u32, records: &mut Slab<Record>) {
    let at = at as usize;
    list.swap_remove(at);
    if let Some(&moved) = list.get(at) {
        records.get_mut(moved).node_link = pos_u32(at);
    }
    shrink_vec(list);
}

/// Appends `entry` to a group's list, growing it by half rather than doubling: an entry is 20
/// bytes and most groups are small, so doubling would leave up to half the list unused. Still
/// geometric, so O(1) amortised.
pub(super) fn push_entry(list: &mut Vec<Entry>, entry: Entry) {
    if list.len() == list.capacity() {
        let cap = list.capacity();
        list.reserve_exact((cap / 2).max(4));
    }
    list.push(entry);
}

/// Halves a list's buffer when it is under a quarter full, and frees it when empty: a shrink
/// needs as many removals as it copies entries, so this stays O(1) amortised, and a group that
/// once held 10,000 members does not keep their memory.
pub(super) fn shrink_vec<T>(list: &mut Vec<T>) {
    if list.is_empty() {
        *list = Vec::new();
    } else if list.capacity() >= 16 && list.len() < list.capacity() / 4 {
        list.shrink_to(list.capacity() / 2);
    }
}

/// The same policy for lookup maps (std's maps never shrink by themselves).
pub(super) fn shrink_map<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher + Default>(
    map: &mut HashMap<K, V, S>,
) {
    if map.is_empty() {
        *map = HashMap::default();
    } else if map.capacity() >= 32 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.capacity() / 2);
    }
}
