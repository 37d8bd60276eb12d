//! `rules`: a configurable rule engine. Operators write rules in the plugin's
//! `NAME.rules` sidecar (TOML or JSON, see the `legsync-rules` crate docs and
//! `docs/plugin-guide.md`) and change them without compiling anything.

use legsync_plugin_sdk::{CallLeg, Decision, Direction, Link, Policy, Protocol, export_policy};
use legsync_rules::{Action, LegView, RuleSet};

struct Rules {
    set: RuleSet,
    /// Each rule's name, the reason given for its refusals.
    names: Vec<String>,
    /// The clock, read once per batch: every leg of a batch is judged at the
    /// same instant, and a host call per leg would double the cost.
    now_ms: u64,
}

impl Policy for Rules {
    fn init(rules: &str) -> Result<Self, String> {
        let set = RuleSet::parse(rules).map_err(|e| e.to_string())?;
        legsync_plugin_sdk::log::info(&format!("loaded {} rule(s)", set.rules.len()));
        let names = (0..set.rules.len()).map(|i| set.rule_name(i)).collect();
        Ok(Rules {
            set,
            names,
            now_ms: 0,
        })
    }

    fn on_call_leg_sync_batch(&mut self, legs: &[CallLeg]) -> Vec<Decision> {
        self.now_ms = legsync_plugin_sdk::now_ms();
        legs.iter()
            .enumerate()
            .map(|(index, leg)| {
                let (decision, rule) = self.decide(leg);
                if let (Decision::Refuse, Some(rule)) = (decision, rule) {
                    legsync_plugin_sdk::because_at(index, &self.names[rule]);
                }
                decision
            })
            .collect()
    }

    fn on_call_leg_sync(&mut self, leg: &CallLeg) -> Decision {
        self.decide(leg).0
    }

    fn on_link_sync(&mut self, _link: &Link) -> Decision {
        to_decision(self.set.links)
    }
}

impl Rules {
    /// The decision for `leg`, and the rule that made it (none: the
    /// default).
    fn decide(&self, leg: &CallLeg) -> (Decision, Option<usize>) {
        let view = LegView {
            direction: match leg.direction {
                Direction::Inbound => legsync_rules::Direction::Inbound,
                Direction::Outbound => legsync_rules::Direction::Outbound,
            },
            protocol: match leg.protocol {
                Protocol::Sip => legsync_rules::Protocol::Sip,
                Protocol::Isdn => legsync_rules::Protocol::Isdn,
                Protocol::Ss7 => legsync_rules::Protocol::Ss7,
                Protocol::Cas => legsync_rules::Protocol::Cas,
                Protocol::MediaOnly => legsync_rules::Protocol::MediaOnly,
            },
            nap: leg.nap,
            calling: leg.calling,
            called: leg.called,
            answered_at_ms: leg.answered_at_ms,
        };
        match self.set.matching_rule(&view, self.now_ms) {
            Some(rule) => (to_decision(self.set.rules[rule].action), Some(rule)),
            None => (to_decision(self.set.default), None),
        }
    }
}

fn to_decision(action: Action) -> Decision {
    match action {
        Action::Rebuild => Decision::Rebuild,
        Action::Refuse => Decision::Refuse,
    }
}

export_policy!(Rules);
