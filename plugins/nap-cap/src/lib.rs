//! `nap-cap`: caps how many calls are rebuilt per NAP (trunk group).
//!
//! After a long outage a gateway may come back with more calls on a NAP than
//! the application is licensed or dimensioned for; this policy rebuilds up to
//! the cap and refuses the rest. It counts calls it rebuilt and forgets them
//! when they end, so the cap holds across resyncs. The host announces the
//! end of every leg to every plugin (refused ones, another plugin's, legs
//! this one never saw): only a leg this instance counted frees a slot.
//! State is per instance (run it with `instances = 1`) and starts empty
//! after a reload or a replaced instance (docs/plugin-guide.md, "State,
//! terminations and Unicode").
//!
//! Rules text (TOML):
//!
//! ```toml
//! default_max = 1000        # cap for NAPs not listed (absent: no cap)
//! [max]
//! SIP_CARRIER_A = 200
//! ISDN_SPAN_3 = 30
//! ```

use legsync_plugin_sdk::{CallLeg, Decision, Policy, TerminationReason, export_policy, log};
use std::collections::HashMap;

struct NapCap {
    default_max: Option<u32>,
    max: HashMap<String, u32>,
    /// Legs this instance rebuilt, per NAP, still up.
    active: HashMap<String, u32>,
    /// The NAP of every leg counted in `active`, by leg id.
    counted: HashMap<u64, String>,
}

impl Policy for NapCap {
    fn init(rules: &str) -> Result<Self, String> {
        let mut policy = NapCap {
            default_max: None,
            max: HashMap::new(),
            active: HashMap::new(),
            counted: HashMap::new(),
        };
        let mut in_max_table = false;
        for (number, raw) in rules.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                in_max_table = line == "[max]";
                if !in_max_table {
                    return Err(format!(
                        "line {}: unknown table {line}; only [max] exists",
                        number + 1
                    ));
                }
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected `key = number`", number + 1))?;
            let key = key.trim().trim_matches('"');
            let value: u32 = value.trim().parse().map_err(|_| {
                format!(
                    "line {}: `{}` is not a whole number",
                    number + 1,
                    value.trim()
                )
            })?;
            match (in_max_table, key) {
                (true, nap) => {
                    policy.max.insert(nap.to_string(), value);
                }
                (false, "default_max") => policy.default_max = Some(value),
                (false, other) => {
                    return Err(format!("line {}: unknown key `{other}`", number + 1));
                }
            }
        }
        Ok(policy)
    }

    fn on_call_leg_sync(&mut self, leg: &CallLeg) -> Decision {
        if self.counted.contains_key(&leg.id) {
            // Already counted (offered again): it holds its slot.
            return Decision::Rebuild;
        }
        let cap = self.max.get(leg.nap).copied().or(self.default_max);
        let count = self.active.entry(leg.nap.to_string()).or_insert(0);
        match cap {
            Some(cap) if *count >= cap => {
                log::debug(&format!(
                    "leg {} refused: NAP {} at its cap of {cap}",
                    leg.id, leg.nap
                ));
                Decision::Refuse
            }
            _ => {
                *count += 1;
                self.counted.insert(leg.id, leg.nap.to_string());
                Decision::Rebuild
            }
        }
    }

    fn on_call_leg_terminated(&mut self, leg: &CallLeg, _reason: TerminationReason) {
        // Only a leg this instance counted frees a slot (and a refused one,
        // this plugin's or another's, was never counted, or is no longer).
        if let Some(nap) = self.counted.remove(&leg.id)
            && let Some(count) = self.active.get_mut(&nap)
        {
            *count = count.saturating_sub(1);
        }
    }
}

export_policy!(NapCap);
