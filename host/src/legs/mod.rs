//! The host's table of call legs and links: the application's contexts.
//!
//! One entry per leg the host knows, with the plugin that adopted it (for
//! audit), and a resync generation stamp: a resync marks every leg it sees
//! with the new generation, so the legs absent from the engine are found in
//! one pass without a million-entry "seen" set.

use crate::ids::{DenseMap, IdIndex, prefault};
use crate::model::same_call;
use crate::model::{CallLeg, Custody, EndedLeg, LegId, Link, LinkId, PluginName};

/// Items of a batch (links, here and in the link plan) prefetched together:
/// enough misses to overlap, few enough that the first are still cached
/// when the batch is processed.
pub const PREFETCH_BATCH: usize = 256;

/// What a snapshot leg is to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// The host holds this call: it stays valid, no callback.
    Known,
    /// The host holds this call, and learns only now that it was answered
    /// (while the link was down): it becomes billable.
    NowAnswered,
    /// The host holds nothing under this id.
    Unknown,
    /// The host held another call under this id (taken out of the table
    /// and returned): that call is over; this one is unknown.
    Replaced(EndedLeg),
    /// The host holds this call and this resync has seen it already: the
    /// engine listed it twice (an anomaly, counted; nothing changes).
    Again,
}

/// One known leg.
#[derive(Debug, Clone)]
pub struct LegEntry {
    pub leg: CallLeg,
    /// Who adopted it: a plugin name for a leg rebuilt at resync, `live` for
    /// a leg the host saw being set up.
    pub adopted_by: PluginName,
    /// The link this leg is part of (an index, so removal is O(1)).
    link: Option<LinkId>,
    generation: u32,
    /// The resync (generation) whose link plan gave this leg a link: a
    /// second link naming it in the same snapshot is an anomaly.
    claimed: u32,
}

impl LegEntry {
    /// The leg as it leaves the table: held until now.
    fn ended(self) -> EndedLeg {
        EndedLeg {
            leg: self.leg,
            custody: Custody::Held {
                adopted_by: self.adopted_by,
            },
        }
    }
}

/// Where a leg sat in the table when a link plan looked it up
/// ([`LegTable::link_side`]): the link is then inserted there without
/// looking its legs up again (two cache misses each in a table of
/// millions). Only the table reads it; a hint that no longer holds the leg
/// (a removal moved it) is looked up again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotHint(u32);

/// The contexts.
///
/// Entries live in one vector (a slab) with a small id-to-slot index beside
/// it: at a million legs a `HashMap<LegId, LegEntry>` would spend about
/// twice the entry size per leg on its buckets; this layout spends the entry
/// plus a 16-byte index slot (at most 3/4 full: `IdIndex`).
#[derive(Debug, Default)]
pub struct LegTable {
    slots: Vec<LegEntry>,
    index: IdIndex,
    /// Each link with the generation of the last resync that saw it.
    links: DenseMap<(Link, u32)>,
    generation: u32,
    /// Where the last `mark_seen` found its leg, plus one. An engine streams
    /// its snapshot in a stable order and the table keeps the order it
    /// adopted legs in, so the next leg is usually in the next slot: a warm
    /// resync then walks the slots instead of hashing a million ids.
    cursor: usize,
    /// Bumped whenever a leg comes, goes or moves to another slot: what a
    /// reader of slots (a paged listing) checks its view against.
    version: u64,
}

impl LegTable {
    /// Changes whenever the set of legs or their slots change.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn links_len(&self) -> usize {
        self.links.len()
    }

    /// Makes room for `legs` legs in all (and half as many links): a
    /// snapshot announces its size, most of which the host may already hold.
    /// The new slots' pages are populated in the background (see
    /// [`prefault`]).
    pub fn reserve_total(&mut self, legs: usize) {
        let more = legs.saturating_sub(self.slots.len());
        self.slots.reserve_exact(more);
        prefault::populate_in_background(self.slots.spare_capacity_mut());
        self.index.reserve(more);
        self.links
            .reserve((legs / 2).saturating_sub(self.links.len()));
    }

    fn slot(&self, id: LegId) -> Option<usize> {
        self.index.get(id).map(|slot| slot as usize)
    }

    pub fn get(&self, id: LegId) -> Option<&LegEntry> {
        self.slot(id).map(|slot| &self.slots[slot])
    }

    /// The link the leg `id` is part of, if any.
    pub fn link_of(&self, id: LegId) -> Option<Link> {
        let link = self.get(id)?.link?;
        self.links.get(&link).map(|(link, _)| *link)
    }

    pub fn get_mut(&mut self, id: LegId) -> Option<&mut CallLeg> {
        let slot = self.slot(id)?;
        Some(&mut self.slots[slot].leg)
    }

    pub fn contains(&self, id: LegId) -> bool {
        self.index.contains(id)
    }

    pub fn legs(&self) -> impl Iterator<Item = &LegEntry> {
        self.slots.iter()
    }

    /// Starts loading where `id` is indexed: a caller with a batch of ids
    /// (a snapshot chunk to diff) prefetches them all, then looks them up
    /// (see [`IdIndex::prefetch`]).
    pub fn prefetch(&self, id: LegId) {
        self.index.prefetch(id);
    }

    /// [`LegTable::insert`] for a batch of legs (a snapshot chunk's): their
    /// index slots are all prefetched first, so the misses overlap (see
    /// [`IdIndex::prefetch`]).
    pub fn insert_all(&mut self, legs: Vec<(CallLeg, PluginName)>) {
        for (leg, _) in &legs {
            self.index.prefetch(leg.id);
        }
        for (leg, adopted_by) in legs {
            self.insert(leg, adopted_by);
        }
    }

    /// [`LegTable::insert_link_at`] for a resync's links, with the hints of
    /// its plan: by batches whose entries and index slots are prefetched
    /// first. Returns how many were inserted.
    pub fn insert_links_at(&mut self, links: &[Link], hints: &[[SlotHint; 2]]) -> usize {
        let mut inserted = 0;
        for (links, hints) in links
            .chunks(PREFETCH_BATCH)
            .zip(hints.chunks(PREFETCH_BATCH))
        {
            self.prefetch_links(links, hints);
            for (&link, &hint) in links.iter().zip(hints) {
                inserted += usize::from(self.insert_link_at(link, hint));
            }
        }
        inserted
    }

    /// Starts loading what [`LegTable::link_side`] reads about the legs of
    /// `links` (a batch about to be planned): their index slots first, then
    /// their entries.
    pub fn prefetch_sides(&self, links: &[Link]) {
        for link in links {
            self.index.prefetch(link.leg_a);
            self.index.prefetch(link.leg_b);
        }
        for link in links {
            for id in [link.leg_a, link.leg_b] {
                if let Some(slot) = self.slot(id) {
                    crate::ids::prefetch(&self.slots[slot]);
                }
            }
        }
    }

    /// Starts loading what inserting `links` at `hints` touches: the
    /// entries at the hints, and where each link will be indexed.
    fn prefetch_links(&self, links: &[Link], hints: &[[SlotHint; 2]]) {
        for link in links {
            self.links.prefetch(link.id);
        }
        for &SlotHint(slot) in hints.iter().flatten() {
            if let Some(entry) = self.slots.get(slot as usize) {
                crate::ids::prefetch(entry);
            }
        }
    }

    /// Adds (or replaces) a leg, marked as seen by the current resync.
    pub fn insert(&mut self, leg: CallLeg, adopted_by: PluginName) {
        let generation = self.generation;
        match self.index.get_or_insert(leg.id, self.slots.len() as u32) {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                *entry = LegEntry {
                    leg,
                    adopted_by,
                    link: entry.link,
                    generation,
                    claimed: entry.claimed,
                };
            }
            None => {
                self.version += 1;
                self.slots.push(LegEntry {
                    leg,
                    adopted_by,
                    link: None,
                    generation,
                    claimed: 0,
                });
            }
        }
    }

    /// Removes a leg and any link it was part of; returns the leg, held
    /// (by whoever adopted it) until now.
    pub fn remove(&mut self, id: LegId) -> Option<EndedLeg> {
        let slot = self.slot(id)?;
        if let Some(link) = self.slots[slot].link {
            self.remove_link(link);
        }
        self.index.remove(id);
        self.version += 1;
        let entry = self.slots.swap_remove(slot);
        if let Some(moved) = self.slots.get(slot) {
            self.index.insert(moved.leg.id, slot as u32);
        }
        Some(entry.ended())
    }

    /// Adds a link between two known legs; false if either is unknown. A
    /// leg is in one link at most: a link it was in before is undone (an
    /// engine that links a leg again without unlinking it cannot grow the
    /// map of links past half the legs).
    pub fn insert_link(&mut self, link: Link) -> bool {
        let (Some(a), Some(b)) = (self.slot(link.leg_a), self.slot(link.leg_b)) else {
            return false;
        };
        self.link_slots(link, a, b);
        true
    }

    /// [`LegTable::insert_link`] with where its legs were found when the
    /// link was planned ([`LegTable::link_side`]): a resync's links skip two
    /// look-ups in the id index, each a cache miss in a table of millions.
    /// A hint that no longer holds the leg is looked up again.
    pub fn insert_link_at(&mut self, link: Link, hint: [SlotHint; 2]) -> bool {
        let at = |table: &Self, id: LegId, hint: SlotHint| match table.slots.get(hint.0 as usize) {
            Some(entry) if entry.leg.id == id => Some(hint.0 as usize),
            _ => table.slot(id),
        };
        let (Some(a), Some(b)) = (at(self, link.leg_a, hint[0]), at(self, link.leg_b, hint[1]))
        else {
            return false;
        };
        self.link_slots(link, a, b);
        true
    }

    /// Links the legs in slots `a` and `b`.
    fn link_slots(&mut self, link: Link, a: usize, b: usize) {
        for slot in [a, b] {
            if let Some(previous) = self.slots[slot].link
                && previous != link.id
            {
                self.remove_link(previous);
            }
        }
        for (slot, other) in [(a, link.leg_b), (b, link.leg_a)] {
            let entry = &mut self.slots[slot];
            entry.leg.linked_to = Some(other);
            entry.link = Some(link.id);
        }
        self.links.insert(link.id, (link, self.generation));
    }

    pub fn remove_link(&mut self, id: LinkId) -> Option<Link> {
        let (link, _) = self.links.remove(&id)?;
        for leg in [link.leg_a, link.leg_b] {
            if let Some(slot) = self.slot(leg) {
                let entry = &mut self.slots[slot];
                entry.leg.linked_to = None;
                entry.link = None;
            }
        }
        Some(link)
    }

    /// Starts a resync: from now on, legs not marked are absent.
    pub fn begin_generation(&mut self) {
        // Never 0, the mark of a leg no plan ever claimed.
        self.generation = self.generation.wrapping_add(1).max(1);
        self.cursor = 0;
    }

    /// Marks a leg as seen by the current resync, refreshing what the engine
    /// reports about it, and says what the sighting means.
    pub fn mark_seen(&mut self, leg: &CallLeg) -> Sighting {
        let next = self.cursor;
        let slot = match self.slots.get(next) {
            Some(entry) if entry.leg.id == leg.id => next,
            _ => match self.slot(leg.id) {
                Some(slot) => slot,
                None => return Sighting::Unknown,
            },
        };
        if !same_call(&self.slots[slot].leg, leg) {
            let held = self.remove(leg.id).expect("the slot was found");
            return Sighting::Replaced(held);
        }
        self.cursor = slot + 1;
        let entry = &mut self.slots[slot];
        if entry.generation == self.generation {
            return Sighting::Again;
        }
        entry.generation = self.generation;
        entry.leg.state = leg.state;
        if entry.leg.answered_at_ms.is_none() && leg.answered_at_ms.is_some() {
            entry.leg.answered_at_ms = leg.answered_at_ms;
            return Sighting::NowAnswered;
        }
        Sighting::Known
    }

    /// For the link plan: `None` if the host does not hold `id`; else
    /// whether the leg is taken: linked already, or claimed by an earlier
    /// link of the current resync's plan, and its slot (the hint for
    /// [`LegTable::insert_link_at`]). One look-up serves all three.
    pub fn link_side(&self, id: LegId) -> Option<(bool, SlotHint)> {
        let slot = self.slot(id)?;
        let entry = &self.slots[slot];
        let taken = entry.leg.linked_to.is_some() || entry.claimed == self.generation;
        Some((taken, SlotHint(slot as u32)))
    }

    /// Marks a held leg as given a link by the current resync's plan.
    pub fn claim(&mut self, id: LegId) {
        if let Some(slot) = self.slot(id) {
            self.slots[slot].claimed = self.generation;
        }
    }

    /// The legs the current resync did not see.
    pub fn unseen(&self) -> Vec<LegId> {
        self.slots
            .iter()
            .filter(|e| e.generation != self.generation)
            .map(|e| e.leg.id)
            .collect()
    }

    /// Marks a snapshot link as seen by the current resync. Returns false if
    /// the host does not know the link.
    pub fn mark_link_seen(&mut self, id: LinkId) -> bool {
        match self.links.get_mut(&id) {
            Some((_, generation)) => {
                *generation = self.generation;
                true
            }
            None => false,
        }
    }

    /// Known links the current resync did not see: the engine no longer has
    /// them.
    pub fn unseen_links(&self) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, (_, generation))| *generation != self.generation)
            .map(|(id, _)| id)
            .collect()
    }

    /// Up to `limit` legs and links from position `from` of their storage,
    /// for a walk of the whole table in short pages (a reload's blast
    /// radius): between two pages the table may change, so a walk may see
    /// a leg twice or miss one that moved.
    pub fn page_from(&self, from: usize, limit: usize) -> (Vec<(CallLeg, PluginName)>, Vec<Link>) {
        let legs = self
            .slots
            .iter()
            .skip(from)
            .take(limit)
            .map(|entry| (entry.leg.clone(), entry.adopted_by))
            .collect();
        let links = self
            .links
            .page(from, limit)
            .map(|(_, (link, _))| *link)
            .collect();
        (legs, links)
    }

    /// Empties the table, returning every leg (the grace timer expired).
    pub fn drain(&mut self) -> Vec<EndedLeg> {
        self.links.clear();
        self.index.clear();
        self.version += 1;
        std::mem::take(&mut self.slots)
            .into_iter()
            .map(LegEntry::ended)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(id: LegId) -> CallLeg {
        crate::model::test_leg(id, 2)
    }

    #[test]
    fn a_generation_finds_the_legs_it_did_not_see() {
        let mut table = LegTable::new();
        for id in 1..=4 {
            table.insert(leg(id), "live".into());
        }
        table.begin_generation();
        assert_eq!(table.mark_seen(&leg(1)), Sighting::Known);
        assert_eq!(table.mark_seen(&leg(3)), Sighting::Known);
        assert_eq!(table.mark_seen(&leg(3)), Sighting::Again, "listed twice");
        assert_eq!(
            table.mark_seen(&leg(9)),
            Sighting::Unknown,
            "unknown legs are reported"
        );
        let mut unseen = table.unseen();
        unseen.sort();
        assert_eq!(unseen, [2, 4]);
    }

    #[test]
    fn a_sighting_checks_identity_not_just_the_id() {
        let mut table = LegTable::new();
        let mut ringing = leg(1);
        ringing.answered_at_ms = None;
        table.insert(ringing, "live".into());
        table.insert(leg(2), "live".into());
        table.begin_generation();
        assert_eq!(table.mark_seen(&leg(1)), Sighting::NowAnswered);
        assert_eq!(table.get(1).unwrap().leg.answered_at_ms, Some(2));
        let mut other_call = leg(2);
        other_call.session_id += 100;
        assert_eq!(
            table.mark_seen(&other_call),
            Sighting::Replaced(EndedLeg {
                leg: leg(2),
                custody: Custody::Held {
                    adopted_by: "live".into()
                }
            })
        );
        assert!(table.get(2).is_none(), "the old call is out of the table");
    }

    /// A slot hint that went stale (a removal moved the leg) is looked up
    /// again: the link joins the right legs.
    #[test]
    fn a_link_inserted_at_stale_slots_joins_the_right_legs() {
        let mut table = LegTable::new();
        for id in 1..=4 {
            table.insert(leg(id), "live".into());
        }
        let (_, at_3) = table.link_side(3).unwrap();
        let (_, at_4) = table.link_side(4).unwrap();
        table.remove(1); // the last leg (4) moves into slot 0
        let link = Link {
            id: 7,
            leg_a: 3,
            leg_b: 4,
        };
        assert!(table.insert_link_at(link, [at_3, at_4]));
        assert_eq!(table.get(3).unwrap().leg.linked_to, Some(4));
        assert_eq!(table.get(4).unwrap().leg.linked_to, Some(3));
        assert_eq!(table.get(2).unwrap().leg.linked_to, None);
        assert!(!table.insert_link_at(
            Link {
                id: 8,
                leg_a: 1,
                leg_b: 2
            },
            [SlotHint(0), SlotHint(1)]
        ));
    }

    #[test]
    fn removal_keeps_the_index_right_for_the_moved_entry() {
        let mut table = LegTable::new();
        for id in 1..=3 {
            table.insert(leg(id), "live".into());
        }
        assert_eq!(table.remove(1).map(|l| l.leg.id), Some(1));
        assert_eq!(
            table.get(3).map(|e| e.leg.id),
            Some(3),
            "3 moved into 1's slot"
        );
        assert_eq!(table.remove(3).map(|l| l.leg.id), Some(3));
        assert_eq!(table.len(), 1);
        assert!(table.get(2).is_some() && table.get(1).is_none());
    }

    #[test]
    fn removing_a_leg_removes_its_link() {
        let mut table = LegTable::new();
        table.insert(leg(1), "live".into());
        table.insert(leg(2), "live".into());
        assert!(table.insert_link(Link {
            id: 7,
            leg_a: 1,
            leg_b: 2
        }));
        assert!(
            !table.insert_link(Link {
                id: 8,
                leg_a: 1,
                leg_b: 3
            }),
            "leg 3 is unknown"
        );
        assert_eq!(table.get(2).unwrap().leg.linked_to, Some(1));
        table.remove(1);
        assert_eq!(table.links_len(), 0);
        assert_eq!(table.get(2).unwrap().leg.linked_to, None);
    }
}
