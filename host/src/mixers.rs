//! The host's conference mixers (protocol 4): each held mixer with the legs
//! joined to it, and the diff of a snapshot's mixers against them.
//!
//! Mixers are few next to legs (a conference carries several legs), so a
//! plain map does; the leg table stays the hot structure. Mixers are not
//! billed: their legs are, each on its own. A mixer with no legs left is
//! still a mixer: the engine keeps an empty conference until it frees it
//! (a room waiting for its participants), and so does the host.

use crate::model::{IdMap, IdSet, Join, JoinRole, LegId, Mixer, MixerId, same_mixer};

/// A mixer the host holds, with its joins (leg, role), in join order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMixer {
    pub mixer: Mixer,
    pub joins: Vec<(LegId, JoinRole)>,
}

/// Every held mixer, and the mixers of each joined leg.
#[derive(Debug, Default)]
pub struct MixerTable {
    mixers: IdMap<MixerId, HeldMixer>,
    of_leg: IdMap<LegId, Vec<MixerId>>,
    /// Joins held over every mixer, kept as they change: the host's
    /// status reads it after every live event.
    joins: usize,
}

/// Why a live join was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("no mixer {0} is held")]
    UnknownMixer(MixerId),
    #[error("leg {leg} is already in mixer {mixer}")]
    AlreadyJoined { mixer: MixerId, leg: LegId },
}

impl MixerTable {
    pub fn len(&self) -> usize {
        self.mixers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mixers.is_empty()
    }

    /// Joins held, over every mixer.
    pub fn joins_len(&self) -> usize {
        self.joins
    }

    pub fn get(&self, id: MixerId) -> Option<&HeldMixer> {
        self.mixers.get(&id)
    }

    /// Every held mixer, by id.
    pub fn list(&self) -> Vec<&HeldMixer> {
        let mut all: Vec<&HeldMixer> = self.mixers.values().collect();
        all.sort_unstable_by_key(|m| m.mixer.id);
        all
    }

    /// Holds `mixer` with `joins`; returns the mixer that had its id, if
    /// any (another mixer: the caller ends it).
    pub fn insert(&mut self, mixer: Mixer, joins: Vec<(LegId, JoinRole)>) -> Option<HeldMixer> {
        let previous = self.remove(mixer.id);
        for &(leg, _) in &joins {
            self.of_leg.entry(leg).or_default().push(mixer.id);
        }
        self.joins += joins.len();
        self.mixers.insert(mixer.id, HeldMixer { mixer, joins });
        previous
    }

    /// Lets go of a mixer and its joins.
    pub fn remove(&mut self, id: MixerId) -> Option<HeldMixer> {
        let held = self.mixers.remove(&id)?;
        for &(leg, _) in &held.joins {
            self.forget_membership(leg, id);
        }
        self.joins -= held.joins.len();
        Some(held)
    }

    /// Every mixer, taken out (the grace timer's purge).
    pub fn drain(&mut self) -> Vec<HeldMixer> {
        self.of_leg.clear();
        self.joins = 0;
        let mut all: Vec<HeldMixer> = self.mixers.drain().map(|(_, m)| m).collect();
        all.sort_unstable_by_key(|m| m.mixer.id);
        all
    }

    /// A live join.
    pub fn join(&mut self, join: Join) -> Result<(), JoinRefused> {
        let held = self
            .mixers
            .get_mut(&join.mixer)
            .ok_or(JoinRefused::UnknownMixer(join.mixer))?;
        if held.joins.iter().any(|&(leg, _)| leg == join.leg) {
            return Err(JoinRefused::AlreadyJoined {
                mixer: join.mixer,
                leg: join.leg,
            });
        }
        held.joins.push((join.leg, join.role));
        self.of_leg.entry(join.leg).or_default().push(join.mixer);
        self.joins += 1;
        Ok(())
    }

    /// A leg leaves a mixer; false if it was not in it.
    pub fn unjoin(&mut self, mixer: MixerId, leg: LegId) -> bool {
        let Some(held) = self.mixers.get_mut(&mixer) else {
            return false;
        };
        let before = held.joins.len();
        held.joins.retain(|&(l, _)| l != leg);
        let left = held.joins.len() < before;
        if left {
            self.joins -= 1;
            self.forget_membership(leg, mixer);
        }
        left
    }

    /// A leg ended: it leaves every mixer it was in; returns them.
    pub fn leave_all(&mut self, leg: LegId) -> Vec<MixerId> {
        let mixers = self.of_leg.remove(&leg).unwrap_or_default();
        for &mixer in &mixers {
            if let Some(held) = self.mixers.get_mut(&mixer) {
                let before = held.joins.len();
                held.joins.retain(|&(l, _)| l != leg);
                self.joins -= before - held.joins.len();
            }
        }
        mixers
    }

    fn forget_membership(&mut self, leg: LegId, mixer: MixerId) {
        if let Some(mixers) = self.of_leg.get_mut(&leg) {
            mixers.retain(|&m| m != mixer);
            if mixers.is_empty() {
                self.of_leg.remove(&leg);
            }
        }
    }

    /// The diff of a snapshot's mixers and joins against the held ones,
    /// once the snapshot's legs are settled: `held_leg` says whether the
    /// host holds a leg now, `refused` which snapshot legs it refused.
    /// Known mixers take the snapshot's joins at once (the engine's truth:
    /// a join or unjoin missed while away); the rest is for the caller.
    pub fn diff(
        &mut self,
        mixers: Vec<Mixer>,
        joins: Vec<Join>,
        held_leg: impl Fn(LegId) -> bool,
        refused: &IdSet<LegId>,
    ) -> MixerPlan {
        let mut plan = MixerPlan::default();
        let mut listed: IdMap<MixerId, Vec<(LegId, JoinRole)>> = IdMap::default();
        let mut order = Vec::with_capacity(mixers.len());
        for mixer in mixers {
            if listed.contains_key(&mixer.id) {
                plan.anomalies.duplicate_mixers += 1;
                continue;
            }
            listed.insert(mixer.id, Vec::new());
            order.push(mixer);
        }
        for join in joins {
            let Some(members) = listed.get_mut(&join.mixer) else {
                plan.anomalies.joins_to_unlisted_mixers += 1;
                continue;
            };
            if refused.contains(&join.leg) {
                // Its DropLeg takes it out of the mixer at the engine.
                continue;
            }
            if !held_leg(join.leg) {
                plan.anomalies.joins_to_unheld_legs += 1;
                continue;
            }
            if members.iter().any(|&(leg, _)| leg == join.leg) {
                plan.anomalies.duplicate_joins += 1;
                continue;
            }
            members.push((join.leg, join.role));
        }
        let gone: Vec<MixerId> = self
            .mixers
            .keys()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            plan.gone.extend(self.remove(id));
        }
        for mixer in order {
            let joins = listed.remove(&mixer.id).unwrap_or_default();
            match self.mixers.get(&mixer.id) {
                Some(held) if same_mixer(&held.mixer, &mixer) => {
                    plan.known += 1;
                    self.insert(mixer, joins);
                }
                Some(_) => {
                    plan.replaced.extend(self.remove(mixer.id));
                    plan.unknown.push(HeldMixer { mixer, joins });
                }
                None => plan.unknown.push(HeldMixer { mixer, joins }),
            }
        }
        plan.gone.sort_unstable_by_key(|m| m.mixer.id);
        plan
    }
}

/// What a snapshot's mixers come to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MixerPlan {
    /// Listed and held (same identity): kept, with the snapshot's joins.
    pub known: u64,
    /// Listed, not held: to be decided, with their joins to held legs.
    pub unknown: Vec<HeldMixer>,
    /// Held, not listed: ended (taken out of the table).
    pub gone: Vec<HeldMixer>,
    /// Held under an id the snapshot gives another mixer: ended.
    pub replaced: Vec<HeldMixer>,
    pub anomalies: MixerAnomalies,
}

/// Snapshot mixer content with a defined outcome other than the obvious
/// one (docs/protocol.md): counted, logged once per resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MixerAnomalies {
    /// A mixer listed again: the first listing counts.
    pub duplicate_mixers: u64,
    /// A join listed again (same mixer and leg): the first counts.
    pub duplicate_joins: u64,
    /// A join naming a mixer the snapshot did not list: ignored.
    pub joins_to_unlisted_mixers: u64,
    /// A join naming a leg the host neither holds nor refused (not
    /// listed): ignored.
    pub joins_to_unheld_legs: u64,
}

impl MixerAnomalies {
    pub fn any(&self) -> bool {
        *self != MixerAnomalies::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixer(id: MixerId, created_at_ms: u64) -> Mixer {
        Mixer {
            id,
            created_at_ms,
            name: format!("conf-{id}").into(),
        }
    }

    fn join(mixer: MixerId, leg: LegId) -> Join {
        Join {
            mixer,
            leg,
            role: JoinRole::Both,
        }
    }

    #[test]
    fn a_snapshot_keeps_known_mixers_offers_new_ones_and_ends_the_rest() {
        let mut table = MixerTable::default();
        table.insert(mixer(1, 10), vec![(100, JoinRole::Both)]);
        table.insert(mixer(2, 10), vec![]);
        table.insert(mixer(3, 10), vec![(101, JoinRole::Speaker)]);
        let refused: IdSet<LegId> = [102].into_iter().collect();
        let plan = table.diff(
            vec![mixer(1, 10), mixer(3, 99), mixer(4, 10), mixer(4, 10)],
            vec![
                join(1, 100),
                join(1, 101),
                join(1, 101),
                join(4, 102),
                join(4, 103),
                join(9, 100),
            ],
            |leg| leg == 100 || leg == 101,
            &refused,
        );
        assert_eq!(plan.known, 1);
        assert_eq!(
            table.get(1).unwrap().joins,
            vec![(100, JoinRole::Both), (101, JoinRole::Both)],
            "a known mixer takes the snapshot's joins"
        );
        let ids = |m: &[HeldMixer]| m.iter().map(|m| m.mixer.id).collect::<Vec<_>>();
        assert_eq!(ids(&plan.gone), vec![2]);
        assert_eq!(ids(&plan.replaced), vec![3]);
        assert_eq!(ids(&plan.unknown), vec![3, 4]);
        assert!(
            plan.unknown[1].joins.is_empty(),
            "refused and unlisted legs"
        );
        assert_eq!(
            plan.anomalies,
            MixerAnomalies {
                duplicate_mixers: 1,
                duplicate_joins: 1,
                joins_to_unlisted_mixers: 1,
                joins_to_unheld_legs: 1,
            }
        );
        assert_eq!(table.len(), 1, "only the known mixer is held until decided");
    }

    #[test]
    fn an_ended_leg_leaves_every_mixer_and_a_removed_mixer_forgets_its_legs() {
        let mut table = MixerTable::default();
        table.insert(mixer(1, 1), vec![]);
        table.insert(mixer(2, 1), vec![]);
        table.join(join(1, 7)).unwrap();
        table.join(join(2, 7)).unwrap();
        assert_eq!(
            table.join(join(2, 7)),
            Err(JoinRefused::AlreadyJoined { mixer: 2, leg: 7 })
        );
        assert_eq!(table.join(join(3, 7)), Err(JoinRefused::UnknownMixer(3)));
        assert_eq!(table.joins_len(), 2);
        let mut left = table.leave_all(7);
        left.sort_unstable();
        assert_eq!(left, vec![1, 2]);
        assert_eq!(table.joins_len(), 0);
        assert_eq!(table.len(), 2, "empty mixers stay");
        table.join(join(1, 8)).unwrap();
        assert!(table.unjoin(1, 8));
        assert!(!table.unjoin(1, 8));
        table.join(join(1, 9)).unwrap();
        table.remove(1);
        assert!(table.leave_all(9).is_empty());
        let counted: usize = table.list().iter().map(|m| m.joins.len()).sum();
        assert_eq!(table.joins_len(), counted, "the running count follows");
        table.insert(mixer(5, 1), vec![(1, JoinRole::Both), (2, JoinRole::Both)]);
        table.insert(mixer(5, 2), vec![(3, JoinRole::Both)]);
        assert_eq!(table.joins_len(), 1, "a replaced mixer's joins go with it");
        table.drain();
        assert_eq!(table.joins_len(), 0);
    }
}
