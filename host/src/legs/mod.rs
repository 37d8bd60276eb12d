//! The host's table of call legs and links: the application's contexts.
//!
//! One entry per leg the host knows, with the plugin that adopted it (for
//! audit), and a resync generation stamp: a resync marks every leg it sees
//! with the new generation, so the legs absent from the engine are found in
//! one pass without a million-entry "seen" set.

use crate::model::{CallLeg, LegId, Link, LinkId};
use std::collections::HashMap;
use std::sync::Arc;

/// One known leg.
#[derive(Debug, Clone)]
pub struct LegEntry {
    pub leg: CallLeg,
    /// Who adopted it: a plugin name for a leg rebuilt at resync, `live` for
    /// a leg the host saw being set up.
    pub adopted_by: Arc<str>,
    /// The link this leg is part of (an index, so removal is O(1)).
    link: Option<LinkId>,
    generation: u32,
}

/// The contexts.
#[derive(Debug, Default)]
pub struct LegTable {
    legs: HashMap<LegId, LegEntry>,
    links: HashMap<LinkId, Link>,
    generation: u32,
}

impl LegTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.legs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    pub fn links_len(&self) -> usize {
        self.links.len()
    }

    pub fn reserve(&mut self, legs: usize) {
        self.legs.reserve(legs);
        self.links.reserve(legs / 2);
    }

    pub fn get(&self, id: LegId) -> Option<&LegEntry> {
        self.legs.get(&id)
    }

    pub fn get_mut(&mut self, id: LegId) -> Option<&mut CallLeg> {
        self.legs.get_mut(&id).map(|e| &mut e.leg)
    }

    pub fn contains(&self, id: LegId) -> bool {
        self.legs.contains_key(&id)
    }

    pub fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(&id)
    }

    pub fn legs(&self) -> impl Iterator<Item = &LegEntry> {
        self.legs.values()
    }

    /// Adds (or replaces) a leg, marked as seen by the current resync.
    pub fn insert(&mut self, leg: CallLeg, adopted_by: Arc<str>) {
        let generation = self.generation;
        let link = self.legs.get(&leg.id).and_then(|e| e.link);
        self.legs.insert(
            leg.id,
            LegEntry {
                leg,
                adopted_by,
                link,
                generation,
            },
        );
    }

    /// Removes a leg and any link it was part of; returns the leg.
    pub fn remove(&mut self, id: LegId) -> Option<CallLeg> {
        let link = self.legs.get(&id)?.link;
        if let Some(link) = link {
            self.remove_link(link);
        }
        self.legs.remove(&id).map(|entry| entry.leg)
    }

    /// Adds a link between two known legs; false if either is unknown.
    pub fn insert_link(&mut self, link: Link) -> bool {
        if !(self.legs.contains_key(&link.leg_a) && self.legs.contains_key(&link.leg_b)) {
            return false;
        }
        for (leg, other) in [(link.leg_a, link.leg_b), (link.leg_b, link.leg_a)] {
            if let Some(entry) = self.legs.get_mut(&leg) {
                entry.leg.linked_to = Some(other);
                entry.link = Some(link.id);
            }
        }
        self.links.insert(link.id, link);
        true
    }

    pub fn remove_link(&mut self, id: LinkId) -> Option<Link> {
        let link = self.links.remove(&id)?;
        for leg in [link.leg_a, link.leg_b] {
            if let Some(entry) = self.legs.get_mut(&leg) {
                entry.leg.linked_to = None;
                entry.link = None;
            }
        }
        Some(link)
    }

    /// Starts a resync: from now on, legs not marked are absent.
    pub fn begin_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Marks a leg as seen by the current resync, refreshing what the engine
    /// reports about it. Returns false if the host does not know the leg.
    pub fn mark_seen(&mut self, leg: &CallLeg) -> bool {
        match self.legs.get_mut(&leg.id) {
            Some(entry) => {
                entry.generation = self.generation;
                entry.leg.state = leg.state;
                if leg.answered_at_ms.is_some() {
                    entry.leg.answered_at_ms = leg.answered_at_ms;
                }
                true
            }
            None => false,
        }
    }

    /// The legs the current resync did not see.
    pub fn unseen(&self) -> Vec<LegId> {
        self.legs
            .values()
            .filter(|e| e.generation != self.generation)
            .map(|e| e.leg.id)
            .collect()
    }

    /// The links whose id the host does not know, among `links`; known links
    /// are kept.
    pub fn unknown_links(&self, links: &[Link]) -> Vec<Link> {
        links
            .iter()
            .filter(|l| !self.links.contains_key(&l.id))
            .copied()
            .collect()
    }

    /// Known links not in `present`: the engine no longer has them.
    pub fn links_not_in(&self, present: &std::collections::HashSet<LinkId>) -> Vec<LinkId> {
        self.links
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect()
    }

    /// Empties the table, returning every leg (the grace timer expired).
    pub fn drain(&mut self) -> Vec<CallLeg> {
        self.links.clear();
        self.legs.drain().map(|(_, e)| e.leg).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LegState;

    fn leg(id: LegId) -> CallLeg {
        CallLeg {
            id,
            session_id: 1,
            direction: Default::default(),
            protocol: Default::default(),
            nap: "N".into(),
            calling: "1".into(),
            called: "2".into(),
            offered_at_ms: 1,
            answered_at_ms: Some(2),
            linked_to: None,
            state: LegState::Answered,
        }
    }

    #[test]
    fn a_generation_finds_the_legs_it_did_not_see() {
        let mut table = LegTable::new();
        for id in 1..=4 {
            table.insert(leg(id), "live".into());
        }
        table.begin_generation();
        assert!(table.mark_seen(&leg(1)));
        assert!(table.mark_seen(&leg(3)));
        assert!(!table.mark_seen(&leg(9)), "unknown legs are reported");
        let mut unseen = table.unseen();
        unseen.sort();
        assert_eq!(unseen, [2, 4]);
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
