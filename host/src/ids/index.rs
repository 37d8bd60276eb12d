//! An index from engine ids to positions (slots in a vector): the hash
//! table under the leg table, the ledger index and a resync's set of offered
//! legs, each holding millions of ids.
//!
//! Why not a `HashMap<u64, u32>`: at millions of ids every operation is a
//! cache miss (and a TLB miss) on memory no cache holds, and a SwissTable
//! pays two of them (its control bytes, then its bucket). Here an id and
//! its position share one 16-byte slot, so an operation touches one line,
//! and [`IdIndex::prefetch`] lets a caller with a batch of ids in hand (a
//! snapshot chunk) start all their misses at once instead of waiting for
//! each in turn: the cost per id then stays flat as the table grows past
//! the caches (benches/README.md, "the resync at 4,000,000 legs").
//!
//! Open addressing with linear probing, at most 3/4 full; removal shifts
//! the following entries back (no tombstones, so a table that churns calls
//! for months does not slow down). Ids are hashed with the keyed hash of
//! every map of engine ids ([`IdHasher`]): an engine cannot craft ids that
//! pile up in one run of slots.

use super::prefault;
use crate::model::IdHasher;
use std::hash::BuildHasher;

/// One slot: `[id, position + 1]`; a zero second word is an empty slot, so
/// freshly zeroed memory (which the kernel hands out without writing it) is
/// an empty table.
type Slot = [u64; 2];

/// Positions are `u32`: a table never holds 4 billion legs.
#[derive(Debug, Default)]
pub struct IdIndex {
    slots: Vec<Slot>,
    len: usize,
    hasher: IdHasher,
}

impl IdIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot where the probe for `id` starts.
    fn home(&self, id: u64) -> usize {
        self.hasher.hash_one(id) as usize & (self.slots.len() - 1)
    }

    /// The slot holding `id`, or the empty slot that ends its probe.
    fn find(&self, id: u64) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(id);
        loop {
            let [held, position] = self.slots[at];
            if position == 0 {
                return (at, false);
            }
            if held == id {
                return (at, true);
            }
            at = (at + 1) & mask;
        }
    }

    pub fn get(&self, id: u64) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        match self.find(id) {
            (at, true) => Some((self.slots[at][1] - 1) as u32),
            _ => None,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Sets `id`'s position; returns the one it replaces.
    pub fn insert(&mut self, id: u64, position: u32) -> Option<u32> {
        self.reserve(1);
        let (at, found) = self.find(id);
        let previous = found.then(|| (self.slots[at][1] - 1) as u32);
        if !found {
            self.len += 1;
        }
        self.slots[at] = [id, u64::from(position) + 1];
        previous
    }

    /// `id`'s position if it has one; else gives it `position` and returns
    /// `None` (one probe where a look-up then an insert would take two).
    pub fn get_or_insert(&mut self, id: u64, position: u32) -> Option<u32> {
        self.reserve(1);
        let (at, found) = self.find(id);
        if found {
            return Some((self.slots[at][1] - 1) as u32);
        }
        self.len += 1;
        self.slots[at] = [id, u64::from(position) + 1];
        None
    }

    /// Removes `id`; returns its position.
    pub fn remove(&mut self, id: u64) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let (mut hole, found) = self.find(id);
        if !found {
            return None;
        }
        let position = (self.slots[hole][1] - 1) as u32;
        // Entries after the hole whose probe passes through it move back
        // into it, so every probe still finds its id before an empty slot.
        let mask = self.slots.len() - 1;
        let mut next = (hole + 1) & mask;
        while self.slots[next][1] != 0 {
            let home = self.home(self.slots[next][0]);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = [0, 0];
        self.len -= 1;
        Some(position)
    }

    /// Starts loading the slot where `id`'s probe begins into the cache: a
    /// caller about to look up a batch of ids prefetches them all first,
    /// and the misses overlap.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        if self.slots.is_empty() {
            return;
        }
        super::prefetch(&self.slots[self.home(id)]);
    }

    /// Room for `more` ids beyond those held without growing. A large new
    /// table's pages are populated in the background ([`prefault`]).
    pub fn reserve(&mut self, more: usize) {
        let needed = self.len + more;
        if needed * 4 <= self.slots.len() * 3 {
            return;
        }
        let capacity = (needed * 4 / 3 + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, vec![[0, 0]; capacity]);
        prefault::populate_in_background(&self.slots);
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s[1] != 0) {
            let mut at = self.home(slot[0]);
            while self.slots[at][1] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }

    /// Forgets every id; keeps the memory.
    pub fn clear(&mut self) {
        self.slots.fill([0, 0]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, look-ups and removals over a small id range (long
    /// probe runs, removals in their middle) agree with a plain HashMap.
    #[test]
    fn behaves_like_a_hash_map() {
        let mut index = IdIndex::default();
        let mut plain = HashMap::new();
        let mut random = crate::ids::tests::xorshift(0x2545_f491_4f6c_dd1d);
        for step in 0..200_000u32 {
            let seed = random();
            // Ids at both ends of the range: 0 and u64::MAX are ids too.
            let id = (seed % 3000).wrapping_sub(1000);
            match seed >> 61 {
                0..=2 => assert_eq!(index.insert(id, step), plain.insert(id, step)),
                3 => {
                    let held = plain.get(&id).copied();
                    assert_eq!(index.get_or_insert(id, step), held);
                    plain.entry(id).or_insert(step);
                }
                4..=5 => assert_eq!(index.remove(id), plain.remove(&id)),
                _ => assert_eq!(index.get(id), plain.get(&id).copied()),
            }
            assert_eq!(index.len(), plain.len());
        }
        for (id, position) in &plain {
            assert_eq!(index.get(*id), Some(*position));
        }
        index.clear();
        assert!(index.len() == 0 && index.get(*plain.keys().next().unwrap()).is_none());
    }

    /// A reserved table takes its ids without moving them again, and never
    /// fills past 3/4.
    #[test]
    fn reserve_sizes_once() {
        let mut index = IdIndex::default();
        index.reserve(1000);
        let capacity = index.slots.len();
        assert!(capacity * 3 >= 1000 * 4);
        for id in 0..1000 {
            index.insert(id * 7919, id as u32);
        }
        assert_eq!(index.slots.len(), capacity);
        assert!((0..1000).all(|id| index.get(id * 7919) == Some(id as u32)));
    }
}
