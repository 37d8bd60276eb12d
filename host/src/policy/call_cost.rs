//! What one call of a plugin's sync export costs, learnt from its calls,
//! and the batch size that follows from it ([`CallCost::batch_limit`]).
//!
//! A call costs `fixed + per_item × items`. A plugin that works per leg
//! (most: a Python or JavaScript one at tens of microseconds a leg) has a
//! small `fixed`: it gets batches that fill half its deadline. A plugin
//! that pays a large cost per call whatever the batch (a look-up it
//! repeats, a slow allocator) has a large `fixed`: shrinking its batches
//! does not make its calls faster, only more numerous (at 85 ms a call and
//! one leg a call, a million legs take a day), so it gets full batches.
//! The two are told apart by the time of calls of different sizes: until
//! calls of two sizes have been seen, the next call's size is at most
//! half or at least twice the last. A call that overran its deadline says only that its
//! size was too large: later calls carry at most half of it.

use std::sync::Mutex;
use std::time::Duration;

/// Items in the first call, which measures.
pub const PROBE_ITEMS: usize = 64;

/// The model, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Model {
    fixed: f64,
    per_item: f64,
    /// The last call that answered: items and nanoseconds.
    last: Option<(usize, f64)>,
    /// Whether calls of two sizes have been seen (`fixed` is known).
    slope_known: bool,
    /// The most items a call may carry, since a call overran (0: no cap).
    cap: usize,
}

/// One export's cost model.
#[derive(Debug, Default)]
pub struct CallCost(Mutex<Model>);

impl CallCost {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds in one call of `items` that answered in `took`.
    pub fn measured(&self, items: usize, took: Duration) {
        let items = items.max(1);
        let took = took.as_nanos() as f64;
        let mut model = self.model();
        if let Some((n0, _)) = model.last
            && items.abs_diff(n0) * 4 >= items.max(n0)
        {
            model.slope_known = true;
        }
        match model.last {
            None => {
                model.per_item = took / items as f64;
                model.fixed = 0.0;
            }
            // Sizes far enough apart to tell the fixed part from the rest
            // (close ones would turn timing noise into a slope).
            Some((n0, t0)) if items.abs_diff(n0) * 4 >= items.max(n0) => {
                // A negative slope (the smaller call was the slower) is a
                // cost that does not grow with the size, plus noise.
                let slope = ((took - t0) / (items as f64 - n0 as f64)).max(0.0);
                model.per_item = slope;
                model.fixed = (took - slope * items as f64).max(0.0);
            }
            Some(_) => {
                let sample = ((took - model.fixed) / items as f64).max(0.0);
                model.per_item = (model.per_item + sample) / 2.0;
            }
        }
        model.last = Some((items, took));
    }

    /// A call of `items` overran its deadline: its time says nothing but
    /// "too many", so later calls carry at most half as many.
    pub fn overran(&self, items: usize, deadline: Duration) {
        let mut model = self.model();
        let half = (items / 2).max(1);
        model.cap = if model.cap == 0 {
            half
        } else {
            model.cap.min(half)
        };
        if model.last.is_none() {
            // A first estimate, a lower bound: all of it per item.
            model.per_item = deadline.as_nanos() as f64 / items.max(1) as f64;
        }
    }

    /// How many items the next call should carry, within `1..=batch_size`:
    /// as many as fill half of `deadline`; when the fixed part alone takes
    /// that much, as many as fit in nine tenths of it (fewer, larger calls:
    /// smaller ones would not be faster). Before any call, [`PROBE_ITEMS`].
    pub fn batch_limit(&self, deadline: Duration, batch_size: usize) -> usize {
        let batch_size = batch_size.max(1);
        let model = *self.model();
        let cap = if model.cap == 0 {
            batch_size
        } else {
            model.cap.min(batch_size)
        };
        let Some((last_items, _)) = model.last else {
            return PROBE_ITEMS.min(cap);
        };
        let deadline = deadline.as_nanos() as f64;
        let room = if model.fixed < deadline / 2.0 {
            deadline / 2.0 - model.fixed
        } else {
            (deadline * 0.9 - model.fixed).max(0.0)
        };
        let fits = if model.per_item <= 0.0 {
            batch_size
        } else {
            (room / model.per_item) as usize
        };
        // One size seen: the fixed part is unknown; try a size far enough
        // from the last (half or double, the way the model leans) to tell.
        let fits = if model.slope_known {
            fits
        } else if fits >= last_items || last_items == 1 {
            fits.max(last_items * 2)
        } else {
            fits.min(last_items / 2)
        };
        fits.clamp(1, cap)
    }

    /// The time to decide `items` in calls of at most `batch_size`, as the
    /// model predicts once it has settled (what `plugin check` compares
    /// with the decision budget).
    pub fn predict(&self, items: usize, deadline: Duration, batch_size: usize) -> Duration {
        let model = *self.model();
        let per_call = self.batch_limit(deadline, batch_size).max(1);
        let calls = items.div_ceil(per_call);
        let nanos = calls as f64 * model.fixed + items as f64 * model.per_item;
        Duration::from_nanos(nanos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_millis(100);
    const MS: Duration = Duration::from_millis(1);

    /// Calls a simulated plugin (`fixed` + `per_item` × n) until its batch
    /// size settles; returns it.
    fn settle(fixed: Duration, per_item: Duration, batch_size: usize) -> (CallCost, usize) {
        settle_from(CallCost::default(), fixed, per_item, batch_size)
    }

    /// [`settle`] from a model that has already seen calls.
    fn settle_from(
        cost: CallCost,
        fixed: Duration,
        per_item: Duration,
        batch_size: usize,
    ) -> (CallCost, usize) {
        let mut limit = cost.batch_limit(DEADLINE, batch_size);
        for _ in 0..10 {
            let took = fixed + per_item * limit as u32;
            if took > DEADLINE {
                cost.overran(limit, DEADLINE);
            } else {
                cost.measured(limit, took);
            }
            limit = cost.batch_limit(DEADLINE, batch_size);
        }
        (cost, limit)
    }

    #[test]
    fn a_per_leg_plugin_gets_batches_of_half_its_deadline() {
        let (_, limit) = settle(Duration::ZERO, MS, 1024);
        assert!((45..=55).contains(&limit), "{limit}");
        let (_, limit) = settle(Duration::ZERO, Duration::from_micros(1), 1024);
        assert_eq!(limit, 1024);
    }

    #[test]
    fn a_plugin_slow_per_call_gets_full_batches_not_one_leg() {
        // 85 ms a call whatever its size: smaller calls only make more.
        let (cost, limit) = settle(85 * MS, Duration::from_nanos(100), 1024);
        assert_eq!(limit, 1024);
        // A million legs: ~977 calls of 85 ms, not a million.
        let predicted = cost.predict(1_000_000, DEADLINE, 1024);
        assert!((80..=90).contains(&predicted.as_secs()), "{predicted:?}");
    }

    #[test]
    fn a_first_call_of_one_leg_does_not_pin_the_size() {
        // The host's first call may carry one leg (an answer of an unknown
        // leg): 60 ms for it says nothing of the next 1,023.
        for (fixed, per_item, settled) in [
            (60 * MS, Duration::ZERO, 1024..=1024),
            (Duration::ZERO, MS, 45..=55),
            // 60 ms a leg: one leg a call is all it can do.
            (Duration::ZERO, 60 * MS, 1..=1),
        ] {
            let cost = CallCost::default();
            cost.measured(1, fixed + per_item);
            let (_, limit) = settle_from(cost, fixed, per_item, 1024);
            assert!(
                settled.contains(&limit),
                "{fixed:?} + {per_item:?}/leg: {limit}"
            );
        }
    }

    #[test]
    fn a_mixed_plugin_gets_what_fits() {
        // 20 ms a call and 0.5 ms a leg: (50 - 20) / 0.5 = 60 legs a call.
        let (_, limit) = settle(20 * MS, Duration::from_micros(500), 1024);
        assert!((55..=65).contains(&limit), "{limit}");
    }
}
