//! The media units' view: the answered legs and the links between two of
//! them. It is all that survives an engine restart, all that a host's
//! snapshot carries and all that the state file holds.
//!
//! The live state keeps this view in maps shared copy-on-write, so a host's
//! snapshot or a save of the state file takes two reference counts under the
//! engine's lock and walks the maps outside it: at a million legs the lock is
//! held for nanoseconds instead of the ~100 ms a walk takes. A change while a
//! view is out copies the changed map once (as costly as the walk it spared).

use legsync::model::{CallLeg, Join, JoinRole, LegId, Link, LinkId, Mixer, MixerId};
// FxHash, as the host's table: the snapshot then streams in the order of
// the host's own buckets, which makes the host's inserts cache-friendly.
// A real engine's order is its own: benches/README.md measures the
// difference (a resync ~0.6 s slower at a million legs in a neutral order).
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub type LegMap = HashMap<LegId, CallLeg>;
pub type LinkMap = HashMap<LinkId, Link>;
pub type MixerMap = HashMap<MixerId, Mixer>;
/// Joins by mixer then leg: a mixer's legs are one range.
pub type JoinMap = std::collections::BTreeMap<(MixerId, LegId), JoinRole>;

/// An answered leg and its wire encoding, made when the leg changes: a
/// snapshot then copies bytes instead of encoding a million legs, as an
/// engine keeping its table ready to stream would (and the host's share of
/// a machine the bench runs both on is not spent encoding).
#[derive(Debug, Clone)]
pub struct StoredLeg {
    pub leg: CallLeg,
    pub wire: Box<[u8]>,
}

impl StoredLeg {
    pub fn new(leg: CallLeg) -> Self {
        StoredLeg {
            wire: legsync::protocol::codec::encode_leg(&leg),
            leg,
        }
    }
}

impl Serialize for StoredLeg {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.leg.serialize(serializer)
    }
}

/// The media units at one instant, shared with the live state.
#[derive(Debug, Clone, Default)]
pub struct MediaView {
    /// Answered legs, in table order (stable from one view to the next, as
    /// a real engine walks its own table).
    pub legs: Arc<HashMap<LegId, StoredLeg>>,
    /// Links whose two legs are answered.
    pub links: Arc<LinkMap>,
    /// Every mixer (a media unit's resource: it survives a restart).
    pub mixers: Arc<MixerMap>,
    /// Every join; a snapshot carries those of answered legs.
    pub joins: Arc<JoinMap>,
    pub next_leg: u64,
    pub next_link: u64,
    pub next_mixer: u64,
}

impl MediaView {
    /// The view sorted by id, as the state file stores it.
    pub fn to_units(&self) -> MediaUnits {
        let mut legs: Vec<CallLeg> = self.legs.values().map(|s| s.leg.clone()).collect();
        legs.sort_unstable_by_key(|l| l.id);
        let mut links: Vec<Link> = self.links.values().copied().collect();
        links.sort_unstable_by_key(|l| l.id);
        let mut mixers: Vec<Mixer> = self.mixers.values().cloned().collect();
        mixers.sort_unstable_by_key(|m| m.id);
        MediaUnits {
            legs,
            links,
            mixers,
            joins: self.answered_joins().collect(),
            next_leg: self.next_leg,
            next_link: self.next_link,
            next_mixer: self.next_mixer,
        }
    }

    /// The joins of answered legs (what survives a restart and what a
    /// snapshot carries), by mixer then leg.
    pub fn answered_joins(&self) -> impl Iterator<Item = Join> + '_ {
        self.joins
            .iter()
            .filter(|((_, leg), _)| self.legs.contains_key(leg))
            .map(|(&(mixer, leg), &role)| Join { mixer, leg, role })
    }
}

/// Saved as [`MediaUnits`] without copying or sorting a leg: the state
/// file holds the legs in table order.
impl Serialize for MediaView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Values<'a, T>(&'a HashMap<u64, T>);
        impl<T: Serialize> Serialize for Values<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.values())
            }
        }
        struct Joins<'a>(&'a MediaView);
        impl Serialize for Joins<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // The state file's format needs the length first.
                let joins: Vec<Join> = self.0.answered_joins().collect();
                s.collect_seq(joins)
            }
        }
        let mut units = serializer.serialize_struct("MediaUnits", 7)?;
        units.serialize_field("legs", &Values(&self.legs))?;
        units.serialize_field("links", &Values(&self.links))?;
        units.serialize_field("mixers", &Values(&self.mixers))?;
        units.serialize_field("joins", &Joins(self))?;
        units.serialize_field("next_leg", &self.next_leg)?;
        units.serialize_field("next_link", &self.next_link)?;
        units.serialize_field("next_mixer", &self.next_mixer)?;
        units.end()
    }
}

/// The media units as the state file stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUnits {
    /// In the order the engine's table held them.
    pub legs: Vec<CallLeg>,
    pub links: Vec<Link>,
    /// Absent from a state file written before mixers.
    #[serde(default)]
    pub mixers: Vec<Mixer>,
    #[serde(default)]
    pub joins: Vec<Join>,
    pub next_leg: u64,
    pub next_link: u64,
    #[serde(default)]
    pub next_mixer: u64,
}
