//! `held-legs` (contract 0.4.0): the calls the host holds, as a plugin asks
//! for them to rebuild its state (a counter after a reload, a recycle, a
//! failure).
//!
//! The table belongs to the supervisor, which the policy runtime must not
//! reach into: the runtime holds a [`HeldSlot`] that the wiring fills with
//! the supervisor's answerer once the host exists (`app::build_host`).
//! Until then, and in tools without a host (`plugin check`, `plugin eval`),
//! the host holds nothing; `plugin test` serves the legs its test file says
//! are held ([`FixedHeld`]).

use crate::model::{CallLeg, LegId, PluginName};
use std::sync::{Arc, RwLock};

/// The most legs one `held-legs` page carries.
pub const MAX_HELD_PAGE: usize = 10_000;

/// One page of held legs, by ascending id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldLegsPage {
    /// Each leg with who adopted it (`live` for a leg followed from its
    /// setup).
    pub legs: Vec<(CallLeg, PluginName)>,
    /// The `after` of the next page; none when this page is the last.
    pub next_after: Option<LegId>,
}

/// Why a page could not be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeldLegsError {
    /// The supervisor did not answer in time (it is busy with a snapshot,
    /// or stopping).
    #[error("the host did not list its held legs within {0} s")]
    Unanswered(u64),
}

/// Everything the host holds, at about one moment: what a reload's blast
/// radius decides again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldSnapshot {
    pub legs: Vec<(CallLeg, PluginName)>,
    pub links: Vec<crate::model::Link>,
}

/// Where pages of held legs come from.
pub trait HeldLegs: Send + Sync {
    /// Up to `max` held legs with an id above `after`, by ascending id.
    /// Called from a plugin call, on a blocking thread.
    fn page(&self, after: LegId, max: usize) -> Result<HeldLegsPage, HeldLegsError>;

    /// Every held leg and link, in no order (a leg at most once). By
    /// default from [`HeldLegs::page`] (no links).
    fn snapshot(&self) -> Result<HeldSnapshot, HeldLegsError> {
        let mut snapshot = HeldSnapshot::default();
        let mut after = 0;
        loop {
            let page = self.page(after, MAX_HELD_PAGE)?;
            snapshot.legs.extend(page.legs);
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(snapshot),
            }
        }
    }
}

/// A host that holds nothing (no host running).
#[derive(Debug, Default)]
pub struct NothingHeld;

impl HeldLegs for NothingHeld {
    fn page(&self, _after: LegId, _max: usize) -> Result<HeldLegsPage, HeldLegsError> {
        Ok(HeldLegsPage::default())
    }
}

/// A fixed set of held legs (`plugin test`'s `held`).
#[derive(Debug, Default)]
pub struct FixedHeld {
    legs: Vec<(CallLeg, PluginName)>,
}

impl FixedHeld {
    pub fn new(mut legs: Vec<(CallLeg, PluginName)>) -> Self {
        legs.sort_by_key(|(leg, _)| leg.id);
        legs.dedup_by_key(|(leg, _)| leg.id);
        FixedHeld { legs }
    }
}

impl HeldLegs for FixedHeld {
    fn page(&self, after: LegId, max: usize) -> Result<HeldLegsPage, HeldLegsError> {
        let max = max.clamp(1, MAX_HELD_PAGE);
        let start = self.legs.partition_point(|(leg, _)| leg.id <= after);
        let legs: Vec<_> = self.legs[start..].iter().take(max).cloned().collect();
        let more = start + legs.len() < self.legs.len();
        let next_after = more.then(|| legs.last().map(|(leg, _)| leg.id)).flatten();
        Ok(HeldLegsPage { legs, next_after })
    }
}

/// The source a runtime's plugins read, replaceable once the host exists.
#[derive(Clone)]
pub struct HeldSlot(Arc<RwLock<Arc<dyn HeldLegs>>>);

impl Default for HeldSlot {
    fn default() -> Self {
        HeldSlot(Arc::new(RwLock::new(Arc::new(NothingHeld))))
    }
}

impl std::fmt::Debug for HeldSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldSlot")
    }
}

impl HeldSlot {
    /// Serves `source` to every plugin instance created from now on, and to
    /// the live ones at their next `held-legs`.
    pub fn serve(&self, source: Arc<dyn HeldLegs>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    pub fn page(&self, after: LegId, max: usize) -> Result<HeldLegsPage, HeldLegsError> {
        self.source().page(after, max)
    }

    pub fn snapshot(&self) -> Result<HeldSnapshot, HeldLegsError> {
        self.source().snapshot()
    }

    fn source(&self) -> Arc<dyn HeldLegs> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_pages_walk_every_leg_once_by_id() {
        let live = PluginName::new(crate::model::LIVE);
        let held = FixedHeld::new(
            [5, 1, 3, 4, 2]
                .into_iter()
                .map(|id| (crate::model::test_leg(id, 2), live))
                .collect(),
        );
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = held.page(after, 2).unwrap();
            seen.extend(page.legs.iter().map(|(leg, _)| leg.id));
            match page.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(held.page(5, 2).unwrap(), HeldLegsPage::default());
    }
}
