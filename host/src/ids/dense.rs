//! A map from engine id to a value, for the ledger index: the hash table
//! holds only the id and a position ([`IdIndex`], 16 bytes a slot), the
//! values live in one dense vector.
//!
//! Why: filling the index is a cold resync's costliest step after the
//! plugin. With the values in the buckets (64 bytes each, 2M buckets for a
//! million calls: 128 MB written at random), each insert was a cache and
//! TLB miss on a fresh page; here the random writes cover a quarter of that
//! and the values are appended in order. The leg table is laid out the
//! same way.

use super::IdIndex;

#[derive(Debug)]
pub struct DenseMap<V> {
    positions: IdIndex,
    entries: Vec<(u64, V)>,
}

impl<V> Default for DenseMap<V> {
    fn default() -> Self {
        DenseMap {
            positions: IdIndex::default(),
            entries: Vec::new(),
        }
    }
}

impl<V> DenseMap<V> {
    pub fn get(&self, id: &u64) -> Option<&V> {
        self.positions
            .get(*id)
            .map(|at| &self.entries[at as usize].1)
    }

    /// Where `id`'s value is; else `value` is appended for it (`Err` gives
    /// it back if `id` had one).
    fn position_or_push(&mut self, id: u64, value: V) -> Result<usize, (usize, V)> {
        let next = self.entries.len();
        match self.positions.get_or_insert(id, next as u32) {
            Some(at) => Err((at as usize, value)),
            None => {
                self.entries.push((id, value));
                Ok(next)
            }
        }
    }

    /// The value of `id`, inserting `fresh` if there is none.
    pub fn get_or_insert(&mut self, id: u64, fresh: V) -> &mut V {
        let (Ok(at) | Err((at, _))) = self.position_or_push(id, fresh);
        &mut self.entries[at].1
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        let at = self.positions.get(*id)? as usize;
        Some(&mut self.entries[at].1)
    }

    /// Sets `id`'s value; returns the one it replaces.
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        match self.position_or_push(id, value) {
            Ok(_) => None,
            Err((at, value)) => Some(std::mem::replace(&mut self.entries[at].1, value)),
        }
    }

    /// Removes `id`; the last value takes its place (the vector stays dense).
    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let at = self.positions.remove(*id)? as usize;
        let (_, value) = self.entries.swap_remove(at);
        if let Some(&(moved, _)) = self.entries.get(at) {
            self.positions.insert(moved, at as u32);
        }
        Some(value)
    }

    /// Starts loading where `id` would be (see [`IdIndex::prefetch`]).
    pub fn prefetch(&self, id: u64) {
        self.positions.prefetch(id);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `more` entries beyond those held. The new memory's pages
    /// are populated in the background ([`super::prefault`]).
    pub fn reserve(&mut self, more: usize) {
        self.positions.reserve(more);
        self.entries.reserve(more);
        super::prefault::populate_in_background(self.entries.spare_capacity_mut());
    }

    /// Forgets every entry; keeps the memory.
    pub fn clear(&mut self) {
        self.positions.clear();
        self.entries.clear();
    }

    /// Every entry, in no particular order.
    /// Up to `limit` entries from position `from`, in storage order (for
    /// walking the map in pages between which it may change).
    pub fn page(&self, from: usize, limit: usize) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.entries
            .iter()
            .skip(from)
            .take(limit)
            .map(|(id, value)| (*id, value))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.entries.iter().map(|(id, value)| (*id, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, updates and removals agree with a plain HashMap.
    #[test]
    fn behaves_like_a_hash_map() {
        let mut dense = DenseMap::default();
        let mut plain = HashMap::new();
        let mut random = crate::ids::tests::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let seed = random();
            let id = seed % 512;
            match seed >> 60 {
                0..=5 => {
                    *dense.get_or_insert(id, 0) += 1;
                    *plain.entry(id).or_insert(0) += 1;
                }
                6..=9 => assert_eq!(dense.remove(&id), plain.remove(&id)),
                _ => assert_eq!(dense.get(&id), plain.get(&id)),
            }
            assert_eq!(dense.len(), plain.len());
        }
        let mut all: Vec<_> = dense.iter().map(|(id, v)| (id, *v)).collect();
        all.sort_unstable();
        let mut expected: Vec<_> = plain.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(all, expected);
    }
}
