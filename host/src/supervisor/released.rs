//! Legs the engine released lately: an answer it reports for one of them
//! after the release (events out of order) is not a new call, and billing
//! it would open a ghost call that only the next resync would end.

use crate::model::{CallLeg, IdMap, LegId};
use std::collections::VecDeque;

/// How many released legs are remembered (24 bytes each, twice: ~3 MB). At
/// 25,000 releases a second that is the last 2.6 s, far more than any
/// reordering of events within one engine connection.
const KEPT: usize = 65_536;

/// The session and offer time of a released leg: what makes it one call.
type Call = (u64, u64);

#[derive(Default)]
pub(super) struct RecentlyReleased {
    /// Oldest first.
    order: VecDeque<(LegId, Call)>,
    calls: IdMap<LegId, Call>,
}

impl RecentlyReleased {
    pub(super) fn remember(&mut self, leg: &CallLeg) {
        let call = (leg.session_id, leg.offered_at_ms);
        if self.order.len() == KEPT
            && let Some((old, old_call)) = self.order.pop_front()
            && self.calls.get(&old) == Some(&old_call)
        {
            self.calls.remove(&old);
        }
        self.order.push_back((leg.id, call));
        self.calls.insert(leg.id, call);
    }

    /// Whether `leg` is a call the engine released lately.
    pub(super) fn was_released(&self, leg: &CallLeg) -> bool {
        self.calls.get(&leg.id) == Some(&(leg.session_id, leg.offered_at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_call_is_recognised_and_the_oldest_forgotten() {
        let mut released = RecentlyReleased::default();
        let call = crate::model::test_leg(7, 1_000);
        released.remember(&call);
        assert!(released.was_released(&call));
        let mut other = call.clone();
        other.session_id += 1;
        assert!(!released.was_released(&other), "another call on the id");
        for id in 100..100 + KEPT as u64 {
            released.remember(&crate::model::test_leg(id, 1_000));
        }
        assert!(!released.was_released(&call), "forgotten past the bound");
        assert_eq!(released.calls.len(), KEPT);
    }
}
