//! The diff of a resync: the engine's snapshot against the host's table.
//!
//! Fed chunk by chunk as the snapshot streams in, it sorts every leg into
//! known (stays valid, no callback), unknown (to be decided) and, at the end,
//! absent (known to the host, gone from the engine). Links follow the same
//! rule once the legs are settled. Pure: the supervisor does the I/O.

use crate::ids::IdIndex;
use crate::legs::{LegTable, PREFETCH_BATCH, Sighting, SlotHint};
use crate::model::IdSet as HashSet;
use crate::model::{CallLeg, EndedLeg, LegId, Link, LinkId};

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
    pub replaced: Vec<EndedLeg>,
    /// The host knew nothing when the resync began (a cold start): every
    /// snapshot leg and link is unknown, without a look-up each (a million
    /// look-ups that cannot hit are a tenth of a cold resync's own work).
    cold: bool,
    /// Ids of the legs to be decided so far (as a set: positions unused): a
    /// second listing of one is an anomaly, not a second call.
    offered: IdIndex,
    /// What the snapshot got wrong, counted (logged once per resync).
    pub anomalies: Anomalies,
    /// The snapshot's mixers and joins (protocol 4), diffed once the legs
    /// are settled ([`crate::mixers::MixerTable::diff`]).
    pub mixers: Vec<crate::model::Mixer>,
    pub joins: Vec<crate::model::Join>,
}

/// Snapshot content with a defined outcome other than the obvious one: each
/// is counted, and logged once per resync as a summary (docs/protocol.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anomalies {
    /// A leg listed again: the first listing counts, later ones are ignored.
    pub duplicate_legs: u64,
    /// A link from a leg to itself: ignored.
    pub self_links: u64,
    /// A link naming a leg already in another link: the first link counts,
    /// this one is ignored.
    pub legs_in_two_links: u64,
    /// A link naming a leg the snapshot did not list: ignored.
    pub links_to_unlisted_legs: u64,
}

impl Anomalies {
    pub fn any(&self) -> bool {
        *self != Anomalies::default()
    }
}

/// What the links of a snapshot come to, once the legs are decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    /// Unknown links whose two legs the host now has: offered to `OnLinkSync`.
    pub offer: Vec<Link>,
    /// Where each offered link's legs were found ([`LinkSides::side`]), for
    /// [`LegTable::insert_link_at`].
    pub offer_at: Vec<[SlotHint; 2]>,
    /// Unknown links with a refused leg: dropped at the engine.
    pub drop: Vec<Link>,
    /// Links the host knew that the engine no longer has.
    pub gone: Vec<LinkId>,
    /// Unknown links to a leg neither held nor refused.
    pub ignored: Vec<Link>,
    /// Links from a leg to itself (ignored).
    pub self_links: Vec<Link>,
    /// Links naming a leg already linked (ignored).
    pub doubly_linked: Vec<Link>,
}

impl SnapshotDiff {
    /// Starts a resync against `table`, of a snapshot announcing `legs`
    /// (a hint, already capped by the caller).
    pub fn begin(table: &mut LegTable, legs: usize) -> Self {
        table.begin_generation();
        let cold = table.is_empty() && table.links_len() == 0;
        let mut offered = IdIndex::default();
        if cold {
            // Every leg is offered: sized once, no rehash of a million ids.
            offered.reserve(legs);
        }
        SnapshotDiff {
            cold,
            offered,
            ..SnapshotDiff::default()
        }
    }

    /// Makes room for `total` offered legs in a cold resync (the snapshot
    /// grew past its reservation).
    pub fn reserve_offered(&mut self, total: usize) {
        if self.cold {
            self.offered
                .reserve(total.saturating_sub(self.offered.len()));
        }
    }

    /// Takes in a chunk of snapshot legs; returns those the host does not
    /// know, to be decided now (a million unknown legs are never all held
    /// at once).
    ///
    /// An engine that lists a leg twice gets the second copy counted as a
    /// duplicate and otherwise ignored, cold or warm.
    pub fn legs(&mut self, table: &mut LegTable, mut chunk: Vec<CallLeg>) -> Vec<CallLeg> {
        // Every leg is looked up in a table of millions: the misses are
        // started together.
        if self.cold {
            for leg in &chunk {
                self.offered.prefetch(leg.id);
            }
            let before = chunk.len();
            chunk.retain(|leg| self.offered.insert(leg.id, 0).is_none());
            self.anomalies.duplicate_legs += (before - chunk.len()) as u64;
            return chunk;
        }
        for leg in &chunk {
            table.prefetch(leg.id);
        }
        let mut unknown = Vec::new();
        for leg in chunk {
            match table.mark_seen(&leg) {
                Sighting::Known => self.known += 1,
                Sighting::Again => self.anomalies.duplicate_legs += 1,
                Sighting::NowAnswered => {
                    self.known += 1;
                    self.now_answered.push(leg);
                }
                Sighting::Unknown | Sighting::Replaced(_)
                    if self.offered.insert(leg.id, 0).is_some() =>
                {
                    self.anomalies.duplicate_legs += 1;
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

    /// The snapshot is over: the set of offered ids (16 bytes a slot, 64 MB
    /// at 4 million legs) is no longer needed for the links' phase.
    pub fn legs_done(&mut self) {
        self.offered = IdIndex::default();
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
    pub fn plan_links(&mut self, table: &mut LegTable, refused: &HashSet<LegId>) -> LinkPlan {
        let mut plan = sort_links(&self.unknown_links, refused, table);
        self.anomalies.self_links += plan.self_links.len() as u64;
        self.anomalies.legs_in_two_links += plan.doubly_linked.len() as u64;
        self.anomalies.links_to_unlisted_legs += plan.ignored.len() as u64;
        plan.gone = table.unseen_links();
        plan
    }
}

/// What the link rule needs to know of the legs: whether each is held and
/// taken (linked, or claimed by an earlier link of the plan), and to claim
/// one. The host's table answers with one look-up per leg (claims are
/// marks in its entries); `legsync plugin eval` answers from sets.
pub trait LinkSides {
    /// `None` if the leg is not held; else whether it is taken, and where
    /// it is (a hint for inserting the link; the default where there is no
    /// table).
    fn side(&self, leg: LegId) -> Option<(bool, SlotHint)>;
    /// Marks a held leg as given a link by this plan.
    fn claim(&mut self, leg: LegId);
    /// Starts loading what `side` will read about the legs of `links`, a
    /// batch about to be sorted (nothing to do without a table of millions).
    fn prefetch_sides(&self, _links: &[Link]) {}
}

impl LinkSides for LegTable {
    fn prefetch_sides(&self, links: &[Link]) {
        LegTable::prefetch_sides(self, links);
    }
    fn side(&self, leg: LegId) -> Option<(bool, SlotHint)> {
        self.link_side(leg)
    }
    fn claim(&mut self, leg: LegId) {
        LegTable::claim(self, leg);
    }
}

/// The rule for unknown links once their legs are decided, shared by the
/// host and `legsync plugin eval`: a link from a leg to itself, or naming a
/// leg already linked (held, or earlier in this snapshot), is ignored
/// (counted); a link with a refused leg is dropped; a link whose two legs
/// are held is offered to `OnLinkSync`; a link to a leg that is neither is
/// ignored.
pub fn sort_links(
    links: &[Link],
    refused: &HashSet<LegId>,
    sides: &mut impl LinkSides,
) -> LinkPlan {
    let mut plan = LinkPlan::default();
    // Claims of legs not held (refused ones: few): held legs carry theirs.
    let mut claimed: HashSet<LegId> = HashSet::default();
    for batch in links.chunks(PREFETCH_BATCH) {
        sides.prefetch_sides(batch);
        for &link in batch {
            sort_link(link, refused, sides, &mut claimed, &mut plan);
        }
    }
    plan
}

/// [`sort_links`] for one link.
fn sort_link(
    link: Link,
    refused: &HashSet<LegId>,
    sides: &mut impl LinkSides,
    claimed: &mut HashSet<LegId>,
    plan: &mut LinkPlan,
) {
    if link.leg_a == link.leg_b {
        plan.self_links.push(link);
        return;
    }
    let (a, b) = (sides.side(link.leg_a), sides.side(link.leg_b));
    let taken = |side: Option<(bool, SlotHint)>, leg| {
        side.map_or_else(|| claimed.contains(&leg), |(t, _)| t)
    };
    if taken(a, link.leg_a) || taken(b, link.leg_b) {
        plan.doubly_linked.push(link);
        return;
    }
    if refused.contains(&link.leg_a) || refused.contains(&link.leg_b) {
        plan.drop.push(link);
    } else if let (Some((_, at_a)), Some((_, at_b))) = (a, b) {
        plan.offer.push(link);
        plan.offer_at.push([at_a, at_b]);
    } else {
        plan.ignored.push(link);
        return;
    }
    for (side, leg) in [(a, link.leg_a), (b, link.leg_b)] {
        if side.is_some() {
            sides.claim(leg);
        } else {
            claimed.insert(leg);
        }
    }
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
        let mut diff = SnapshotDiff::begin(&mut table, 0);
        let mut unknown = diff.legs(&mut table, vec![leg(1), leg(4)]);
        unknown.extend(diff.legs(&mut table, vec![leg(3), leg(5)]));
        assert_eq!(diff.known, 2);
        assert_eq!(unknown.iter().map(|l| l.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(SnapshotDiff::absent(&table), [2]);
    }

    #[test]
    fn against_an_empty_table_everything_is_unknown_and_nothing_absent() {
        let mut table = LegTable::new();
        let mut diff = SnapshotDiff::begin(&mut table, 0);
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
        let plan = diff.plan_links(&mut table, &HashSet::default());
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
        let mut diff = SnapshotDiff::begin(&mut table, 0);
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
        let plan = diff.plan_links(&mut table, &HashSet::from_iter([7]));
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
