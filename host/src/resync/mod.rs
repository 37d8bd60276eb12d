//! The diff of a resync: the engine's snapshot against the host's table.
//!
//! Fed chunk by chunk as the snapshot streams in, it sorts every leg into
//! known (stays valid, no callback), unknown (to be decided) and, at the end,
//! absent (known to the host, gone from the engine). Links follow the same
//! rule once the legs are settled. Pure: the supervisor does the I/O.

use crate::legs::{LegTable, Sighting};
use crate::model::{CallLeg, LegId, Link, LinkId};
use rustc_hash::FxHashSet as HashSet;

/// The diff in progress.
#[derive(Debug, Default)]
pub struct SnapshotDiff {
    /// The snapshot's links the host did not know.
    pub unknown_links: Vec<Link>,
    /// How many snapshot legs the host already knew.
    pub known: u64,
    /// Held legs the engine now reports answered (become billable).
    pub now_answered: Vec<CallLeg>,
    /// Held calls whose id the snapshot gives to another call (over; taken
    /// out of the table).
    pub replaced: Vec<CallLeg>,
    /// The host knew nothing when the resync began (a cold start): every
    /// snapshot leg and link is unknown, without a look-up each (a million
    /// look-ups that cannot hit are a tenth of a cold resync's own work).
    cold: bool,
}

/// What the links of a snapshot come to, once the legs are decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    /// Unknown links whose two legs the host now has: offered to `OnLinkSync`.
    pub offer: Vec<Link>,
    /// Unknown links with a refused leg: dropped at the engine.
    pub drop: Vec<Link>,
    /// Links the host knew that the engine no longer has.
    pub gone: Vec<LinkId>,
    /// Unknown links to a leg neither held nor refused.
    pub ignored: Vec<Link>,
}

impl SnapshotDiff {
    /// Starts a resync against `table`.
    pub fn begin(table: &mut LegTable) -> Self {
        table.begin_generation();
        SnapshotDiff {
            cold: table.is_empty() && table.links_len() == 0,
            ..SnapshotDiff::default()
        }
    }

    /// Takes in a chunk of snapshot legs; returns those the host does not
    /// know, to be decided now (a million unknown legs are never all held
    /// at once).
    ///
    /// In a cold resync an engine that lists a leg twice gets both copies
    /// decided, and the second replaces the first in the table (see
    /// [`LegTable::insert`]); with a table to diff against, the second copy
    /// counts as known.
    pub fn legs(&mut self, table: &mut LegTable, chunk: Vec<CallLeg>) -> Vec<CallLeg> {
        if self.cold {
            return chunk;
        }
        let mut unknown = Vec::new();
        for leg in chunk {
            match table.mark_seen(&leg) {
                Sighting::Known => self.known += 1,
                Sighting::NowAnswered => {
                    self.known += 1;
                    self.now_answered.push(leg);
                }
                Sighting::Unknown => unknown.push(leg),
                Sighting::Replaced(held) => {
                    self.replaced.push(held);
                    unknown.push(leg);
                }
            }
        }
        unknown
    }

    /// Takes in a chunk of snapshot links: known ones are marked seen as
    /// they stream in, unknown ones wait for their legs to be decided.
    pub fn links(&mut self, table: &mut LegTable, chunk: Vec<Link>) {
        if self.cold {
            self.unknown_links.extend(chunk);
            return;
        }
        self.unknown_links
            .extend(chunk.into_iter().filter(|l| !table.mark_link_seen(l.id)));
    }

    /// The known legs the snapshot did not contain.
    pub fn absent(table: &LegTable) -> Vec<LegId> {
        table.unseen()
    }

    /// Sorts the snapshot's links once the unknown legs are decided (rebuilt
    /// legs are in `table`, refused ones in `refused`).
    pub fn plan_links(&self, table: &LegTable, refused: &HashSet<LegId>) -> LinkPlan {
        let mut plan = sort_links(self.unknown_links.iter().copied(), refused, |leg| {
            table.contains(leg)
        });
        for link in &plan.ignored {
            tracing::warn!(
                link = link.id,
                "the snapshot links a leg it did not list; ignored"
            );
        }
        plan.gone = table.unseen_links();
        plan
    }
}

/// The rule for unknown links once their legs are decided, shared by the
/// host and `legsync plugin eval`: a link with a refused leg is dropped; a
/// link whose two legs are held is offered to `OnLinkSync`; a link to a leg
/// that is neither is ignored.
pub fn sort_links(
    links: impl IntoIterator<Item = Link>,
    refused: &HashSet<LegId>,
    held: impl Fn(LegId) -> bool,
) -> LinkPlan {
    let mut plan = LinkPlan::default();
    for link in links {
        if refused.contains(&link.leg_a) || refused.contains(&link.leg_b) {
            plan.drop.push(link);
        } else if held(link.leg_a) && held(link.leg_b) {
            plan.offer.push(link);
        } else {
            plan.ignored.push(link);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(id: LegId) -> CallLeg {
        crate::model::test_leg(id, 2)
    }

    #[test]
    fn known_unknown_and_absent_legs() {
        let mut table = LegTable::new();
        for id in [1, 2, 3] {
            table.insert(leg(id), "live".into());
        }
        let mut diff = SnapshotDiff::begin(&mut table);
        let mut unknown = diff.legs(&mut table, vec![leg(1), leg(4)]);
        unknown.extend(diff.legs(&mut table, vec![leg(3), leg(5)]));
        assert_eq!(diff.known, 2);
        assert_eq!(unknown.iter().map(|l| l.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(SnapshotDiff::absent(&table), [2]);
    }

    #[test]
    fn against_an_empty_table_everything_is_unknown_and_nothing_absent() {
        let mut table = LegTable::new();
        let mut diff = SnapshotDiff::begin(&mut table);
        let unknown = diff.legs(&mut table, vec![leg(1), leg(2)]);
        assert_eq!(unknown.len(), 2);
        for leg in unknown {
            table.insert(leg, "p".into());
        }
        let unknown = diff.legs(&mut table, vec![leg(3)]);
        assert_eq!(unknown.iter().map(|l| l.id).collect::<Vec<_>>(), [3]);
        table.insert(leg(3), "p".into());
        let link = Link {
            id: 9,
            leg_a: 1,
            leg_b: 2,
        };
        diff.links(&mut table, vec![link]);
        assert_eq!(diff.known, 0);
        assert_eq!(diff.unknown_links, [link]);
        assert!(SnapshotDiff::absent(&table).is_empty());
        let plan = diff.plan_links(&table, &HashSet::default());
        assert_eq!((plan.offer, plan.gone), (vec![link], vec![]));
    }

    #[test]
    fn links_are_offered_dropped_kept_or_gone() {
        let mut table = LegTable::new();
        for id in [1, 2, 3, 4] {
            table.insert(leg(id), "live".into());
        }
        table.insert_link(Link {
            id: 10,
            leg_a: 1,
            leg_b: 2,
        });
        table.insert_link(Link {
            id: 11,
            leg_a: 3,
            leg_b: 4,
        });
        let mut diff = SnapshotDiff::begin(&mut table);
        diff.links(
            &mut table,
            vec![
                Link {
                    id: 10,
                    leg_a: 1,
                    leg_b: 2,
                },
                Link {
                    id: 12,
                    leg_a: 5,
                    leg_b: 6,
                },
                Link {
                    id: 13,
                    leg_a: 7,
                    leg_b: 8,
                },
            ],
        );
        // 5 and 6 were rebuilt; 7 was refused.
        table.insert(leg(5), "p".into());
        table.insert(leg(6), "p".into());
        table.insert(leg(8), "p".into());
        let plan = diff.plan_links(&table, &HashSet::from_iter([7]));
        assert_eq!(
            plan.offer,
            [Link {
                id: 12,
                leg_a: 5,
                leg_b: 6
            }]
        );
        assert_eq!(
            plan.drop,
            [Link {
                id: 13,
                leg_a: 7,
                leg_b: 8
            }]
        );
        assert_eq!(plan.gone, [11]);
    }
}
