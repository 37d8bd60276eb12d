//! `reference-data`: decisions from the operator's reference data. Refuses
//! calls to numbers on the `blocked` list (a set) and to destinations whose
//! rate class in `rates` (a prefix table: the longest prefix of the called
//! number decides) is `premium`. The host builds both datasets once from
//! the files in `datasets/` and shares them; the plugin's config grants
//! them (`[policy.plugins.NAME] datasets = ["blocked", "rates"]`).
//!
//! The Python and JavaScript twins (`plugins/python/reference-data`,
//! `plugins/js/reference-data`) decide the same, from the same
//! `tests.json`.

use legsync_plugin_sdk::{CallLeg, Dataset, Decision, Policy, because_at, export_policy};

struct ReferenceData {
    blocked: Dataset,
    rates: Dataset,
}

impl Policy for ReferenceData {
    fn init(_rules: &str) -> Result<Self, String> {
        Ok(ReferenceData {
            blocked: Dataset::open("blocked")?,
            rates: Dataset::open("rates")?,
        })
    }

    /// Two host calls for the whole batch: one per dataset.
    fn on_call_leg_sync_batch(&mut self, legs: &[CallLeg<'_>]) -> Vec<Decision> {
        let called = || legs.iter().map(|leg| leg.called);
        let blocked = self.blocked.contains(called());
        let rates = self.rates.longest_prefix(called());
        (0..legs.len())
            .map(|index| {
                if blocked[index] {
                    because_at(index, "blocked number");
                    Decision::Refuse
                } else if rates.value(index) == Some("premium") {
                    because_at(index, "premium destination");
                    Decision::Refuse
                } else {
                    Decision::Rebuild
                }
            })
            .collect()
    }
}

export_policy!(ReferenceData);
