//! `rules`: a configurable rule engine. Operators write rules in the plugin's
//! `NAME.rules` sidecar (TOML or JSON, see the `legsync-rules` crate docs and
//! `docs/plugin-guide.md`) and change them without compiling anything.

use legsync_plugin_sdk::datasets::{Dataset, Found, Kind};
use legsync_plugin_sdk::{
    CallLeg, Decision, Direction, Link, Mixer, Policy, Protocol, export_policy,
};
use legsync_rules::{Action, LegView, MixerView, Mode, RuleSet};

struct Rules {
    set: RuleSet,
    /// The datasets the rules read, by look-up (`set.lookups()`), opened
    /// in `init`.
    lookups: Vec<Dataset>,
    /// Each rule's name, the reason given for its refusals.
    names: Vec<String>,
    /// The clock, read once per batch: every leg of a batch is judged at the
    /// same instant, and a host call per leg would double the cost.
    now_ms: u64,
}

impl Policy for Rules {
    fn init(rules: &str) -> Result<Self, String> {
        let set = RuleSet::parse(rules).map_err(|e| e.to_string())?;
        let mut opened: Vec<Dataset> = Vec::new();
        for name in set.datasets() {
            opened.push(Dataset::open(name)?);
        }
        let lookups = set
            .lookups()
            .iter()
            .map(|lookup| {
                opened
                    .iter()
                    .find(|d| d.name() == lookup.dataset)
                    .cloned()
                    .expect("every dataset of a look-up was opened")
            })
            .collect();
        legsync_plugin_sdk::log::info(&format!(
            "loaded {} rule(s) reading {} dataset(s)",
            set.rules.len(),
            opened.len()
        ));
        let names = (0..set.rules.len()).map(|i| set.rule_name(i)).collect();
        Ok(Rules {
            set,
            lookups,
            names,
            now_ms: 0,
        })
    }

    fn on_call_leg_sync_batch(&mut self, legs: &[CallLeg]) -> Vec<Decision> {
        self.now_ms = legsync_plugin_sdk::now_ms();
        let views: Vec<LegView> = legs.iter().map(view).collect();
        // One host call per look-up for the whole batch.
        let answers: Vec<Answers> = self
            .set
            .lookups()
            .iter()
            .zip(&self.lookups)
            .map(|(lookup, dataset)| {
                let numbers = views.iter().map(|leg| lookup.field.of(leg));
                match (lookup.mode, dataset.kind()) {
                    (Mode::Exact, _) => Answers::Found(dataset.contains(numbers)),
                    (Mode::Prefix, _) | (Mode::Value, Kind::PrefixTable) => {
                        Answers::Values(dataset.longest_prefix(numbers))
                    }
                    (Mode::Value, _) => Answers::Values(dataset.get(numbers)),
                }
            })
            .collect();
        views
            .iter()
            .enumerate()
            .map(|(index, leg)| {
                let (decision, rule) = self.decide_with(leg, |lookup| answers[lookup].at(index));
                if let (Decision::Refuse, Some(rule)) = (decision, rule) {
                    legsync_plugin_sdk::because_at(index, &self.names[rule]);
                }
                decision
            })
            .collect()
    }

    fn on_call_leg_sync(&mut self, leg: &CallLeg) -> Decision {
        self.on_call_leg_sync_batch(std::slice::from_ref(leg))[0]
    }

    fn on_link_sync(&mut self, _link: &Link) -> Decision {
        to_decision(self.set.links)
    }

    /// Only with `[[mixer_rule]]`s: otherwise the plugin does not vote.
    fn decides_mixers(&self) -> bool {
        self.set.decides_mixers()
    }

    fn on_mixer_sync(&mut self, mixer: &Mixer) -> Decision {
        let view = MixerView {
            name: &mixer.name,
            legs: mixer.joins.len(),
        };
        let rule = self.set.matching_mixer_rule(&view);
        let decision = to_decision(self.set.decide_mixer(&view));
        if let (Decision::Refuse, Some(rule)) = (decision, rule) {
            legsync_plugin_sdk::because(&self.set.mixer_rule_name(rule));
        }
        decision
    }
}

/// One look-up's answers for a batch.
enum Answers {
    /// Whether each number was found.
    Found(Vec<bool>),
    /// The value found for each number, if any.
    Values(Found),
}

impl Answers {
    /// The answer for leg `index`, as the rule set reads it.
    fn at(&self, index: usize) -> Option<&str> {
        match self {
            Answers::Found(found) => found[index].then_some(""),
            Answers::Values(values) => values.value(index),
        }
    }
}

fn view<'a>(leg: &CallLeg<'a>) -> LegView<'a> {
    LegView {
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
    }
}

impl Rules {
    /// The decision for `leg`, and the rule that made it (none: the
    /// default); `answer` gives the leg's look-up answers.
    fn decide_with<'v>(
        &self,
        leg: &LegView<'_>,
        answer: impl Fn(usize) -> Option<&'v str>,
    ) -> (Decision, Option<usize>) {
        match self.set.matching_rule_with(leg, self.now_ms, answer) {
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
