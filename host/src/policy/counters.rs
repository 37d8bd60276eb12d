//! A plugin's own counters (`count`, contract 0.4.0), exported as the
//! metric `legsync_plugin_counter_total{plugin, counter}`.
//!
//! Bounded: a plugin names at most [`MAX_COUNTERS`] counters, each 1 to 64
//! of `a-z`, `0-9` and `_`, so a plugin cannot blow up the metrics' label
//! space (a counter per leg id would). A name past the bound, or a bad one,
//! is dropped and logged once per plugin set.

use crate::model::PluginName;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The most counters one plugin may have.
pub const MAX_COUNTERS: usize = 32;
const MAX_NAME: usize = 64;

/// The counters of one plugin, shared by its instances.
#[derive(Debug)]
pub struct PluginCounters {
    plugin: PluginName,
    state: Mutex<State>,
    /// Whether the values go to the metrics (not for a throwaway copy).
    exported: bool,
}

#[derive(Debug, Default)]
struct State {
    values: BTreeMap<String, u64>,
    /// Whether a dropped name was logged already.
    warned: bool,
}

impl PluginCounters {
    pub fn new(plugin: PluginName) -> Self {
        PluginCounters {
            plugin,
            state: Mutex::default(),
            exported: true,
        }
    }

    /// Counters kept but not exported: a throwaway copy's.
    pub fn detached(plugin: PluginName) -> Self {
        PluginCounters {
            exported: false,
            ..PluginCounters::new(plugin)
        }
    }

    /// Adds `delta` to `name`, if the name is valid and fits the bound.
    pub fn add(&self, name: &str, delta: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fits = state.values.contains_key(name) || state.values.len() < MAX_COUNTERS;
        if !valid(name) || !fits {
            if !std::mem::replace(&mut state.warned, true) {
                let why = if valid(name) {
                    "the plugin has 32 counters already"
                } else {
                    "a counter name is 1 to 64 of a-z, 0-9 and _"
                };
                tracing::warn!(plugin = %self.plugin, counter = name, "plugin counter dropped: {why} (said once)");
            }
            return;
        }
        *state.values.entry(name.to_string()).or_default() += delta;
        if !self.exported {
            return;
        }
        metrics::counter!(
            crate::metrics::PLUGIN_COUNTER,
            "plugin" => self.plugin.as_str(),
            "counter" => name.to_string()
        )
        .increment(delta);
    }

    /// Every counter and its value, by name.
    pub fn values(&self) -> BTreeMap<String, u64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .clone()
    }
}

fn valid(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_bounded_in_number_and_name() {
        let counters = PluginCounters::new("t".into());
        counters.add("refused_over_cap", 2);
        counters.add("refused_over_cap", 3);
        counters.add("Bad-Name", 1);
        counters.add("", 1);
        counters.add(&"x".repeat(65), 1);
        for i in 0..40 {
            counters.add(&format!("c{i}"), 1);
        }
        let values = counters.values();
        assert_eq!(values.len(), MAX_COUNTERS);
        assert_eq!(values["refused_over_cap"], 5);
        assert!(!values.contains_key("Bad-Name"));
        // Counting on an existing counter still works past the bound.
        counters.add("refused_over_cap", 1);
        assert_eq!(counters.values()["refused_over_cap"], 6);
    }
}
