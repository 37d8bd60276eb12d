//! `nap-cap`: caps how many calls are held per NAP (trunk group).
//!
//! After a long outage a gateway may come back with more calls on a NAP than
//! the application is licensed or dimensioned for; this policy rebuilds up to
//! the cap and refuses the rest. What it counts, per NAP: the legs it voted
//! to rebuild, and the legs a decision adopted that the host held when this
//! instance started (`for_each_held_leg` in `init`: a reload, a recycled or
//! failed instance starts from the host's table, not from zero). Legs the
//! host followed live from their setup were never decided and do not count.
//! Every leg that ends is announced to every plugin (legs refused by this
//! plugin or a later one, legs it never saw): only a leg it counted frees a
//! slot, so the cap holds across resyncs. State is per instance: run it with
//! `instances = 1` (docs/plugin-guide.md, "State, terminations and
//! Unicode").
//!
//! Rules text (TOML):
//!
//! ```toml
//! default_max = 1000        # cap for NAPs not listed (absent: no cap)
//! [max]
//! SIP_CARRIER_A = 200
//! ISDN_SPAN_3 = 30
//! ```

use legsync_plugin_sdk::{
    CallLeg, Decision, Policy, Termination, count, export_policy, for_each_held_leg, log,
};
use std::collections::HashMap;

struct NapCap {
    default_max: Option<u32>,
    max: HashMap<String, u32>,
    /// The NAPs seen, each once; legs refer to them by index.
    naps: Vec<String>,
    nap_index: HashMap<String, u32>,
    /// Legs counted, per NAP index, still up.
    active: Vec<u32>,
    /// The NAP index of every leg counted in `active`, by leg id.
    counted: HashMap<u64, u32>,
}

impl NapCap {
    fn parse(rules: &str) -> Result<Self, String> {
        let mut policy = NapCap {
            default_max: None,
            max: HashMap::new(),
            naps: Vec::new(),
            nap_index: HashMap::new(),
            active: Vec::new(),
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

    fn nap(&mut self, nap: &str) -> u32 {
        if let Some(&index) = self.nap_index.get(nap) {
            return index;
        }
        let index = self.naps.len() as u32;
        self.naps.push(nap.to_string());
        self.nap_index.insert(nap.to_string(), index);
        self.active.push(0);
        index
    }

    fn count(&mut self, leg: &CallLeg) {
        let nap = self.nap(leg.nap);
        if self.counted.insert(leg.id, nap).is_none() {
            self.active[nap as usize] += 1;
        }
    }
}

impl Policy for NapCap {
    fn init(rules: &str) -> Result<Self, String> {
        let mut policy = NapCap::parse(rules)?;
        for_each_held_leg(|leg, adopted_by| {
            if adopted_by.is_some() {
                policy.count(leg);
            }
        });
        if !policy.counted.is_empty() {
            log::debug(&format!(
                "counting {} held calls adopted at earlier resyncs",
                policy.counted.len()
            ));
        }
        Ok(policy)
    }

    fn on_call_leg_sync_batch(&mut self, legs: &[CallLeg<'_>]) -> Vec<Decision> {
        let mut refused = 0;
        let decisions = legs
            .iter()
            .map(|leg| {
                if self.counted.contains_key(&leg.id) {
                    // Already counted (offered again): it holds its slot.
                    return Decision::Rebuild;
                }
                let cap = self.max.get(leg.nap).copied().or(self.default_max);
                let nap = self.nap(leg.nap);
                match cap {
                    Some(cap) if self.active[nap as usize] >= cap => {
                        refused += 1;
                        Decision::Refuse
                    }
                    _ => {
                        self.count(leg);
                        Decision::Rebuild
                    }
                }
            })
            .collect();
        if refused > 0 {
            count("refused_over_cap", refused);
            log::debug(&format!("{refused} legs refused: their NAP at its cap"));
        }
        decisions
    }

    fn on_call_leg_terminated(&mut self, ended: &Termination<'_>) {
        // Only a leg this instance counted frees a slot (a refused one, this
        // plugin's or another's, was never counted, or is no longer).
        if let Some(nap) = self.counted.remove(&ended.leg.id) {
            let active = &mut self.active[nap as usize];
            *active = active.saturating_sub(1);
        }
    }
}

export_policy!(NapCap);
