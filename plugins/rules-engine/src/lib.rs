//! The rule engine behind the `rules` policy plugin.
//!
//! It is a plain library so that the very same code runs in two places: inside
//! the `rules` WebAssembly plugin, and natively in the host (`--policy
//! native`), which makes the cost of the WASM boundary measurable with nothing
//! else changing.
//!
//! A rule set is TOML or JSON text (JSON when it starts with `{`):
//!
//! ```toml
//! default = "rebuild"          # when no rule matches (the default)
//! links = "rebuild"            # decision for links whose legs were rebuilt
//!
//! [[rule]]
//! name = "no premium numbers"
//! action = "refuse"
//! called_prefix = ["1900", "1976"]
//!
//! [[rule]]
//! action = "refuse"
//! nap = ["SIP_TEST"]
//! protocol = ["sip"]
//! direction = "inbound"
//! min_age_secs = 14400         # answered more than 4 hours ago
//!
//! [[rule]]                     # reference data (datasets granted to the plugin)
//! name = "blocked numbers"
//! action = "refuse"
//! called_in = ["blocked"]      # the called number is a key of `blocked`
//!
//! [[rule]]
//! name = "premium destinations"
//! action = "refuse"
//! called_value = { dataset = "rates", one_of = ["premium"] }
//! ```
//!
//! Conference mixers have rules of their own, tried in order for each mixer
//! the host did not know (a set without them does not decide mixers):
//!
//! ```toml
//! [[mixer_rule]]
//! name = "no test conferences"
//! action = "refuse"
//! name_prefix = ["test-"]
//!
//! [[mixer_rule]]
//! action = "refuse"
//! more_legs_than = 100         # no conference above 100 legs
//! ```
//!
//! Rules are tried in order; the first whose every condition holds decides.
//! Within one condition, a list means "any of these".
//!
//! Dataset conditions (`called_in`, `calling_in`, `called_prefix_in`,
//! `calling_prefix_in`, `called_value`, `calling_value`) are answered by
//! look-ups the caller makes for a whole batch ([`RuleSet::lookups`]), one
//! per dataset and number, and hands to [`RuleSet::matching_rule_with`].

mod mixer;

pub use mixer::{MixerRule, MixerView};
use serde::Deserialize;
use std::fmt;

/// Which way a leg was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The signalling protocol of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Sip,
    Isdn,
    Ss7,
    Cas,
    MediaOnly,
}

/// What a rule (or the default) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Rebuild,
    Refuse,
}

/// The fields of a call leg a rule can look at, borrowed from whatever type
/// the caller holds (the WIT record in the plugin, the leg table in the host).
#[derive(Debug, Clone, Copy)]
pub struct LegView<'a> {
    pub direction: Direction,
    pub protocol: Protocol,
    pub nap: &'a str,
    pub calling: &'a str,
    pub called: &'a str,
    /// Unix milliseconds; `None` for a leg that never answered.
    pub answered_at_ms: Option<u64>,
}

/// A rule set that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError(String);

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RulesError {}

/// One rule: an action and the conditions under which it applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in logs and audit records; defaults to `rule N` (1-based).
    #[serde(default)]
    pub name: Option<String>,
    pub action: Action,
    #[serde(default)]
    pub called_prefix: Vec<String>,
    #[serde(default)]
    pub calling_prefix: Vec<String>,
    #[serde(default)]
    pub nap: Vec<String>,
    #[serde(default)]
    pub protocol: Vec<Protocol>,
    #[serde(default)]
    pub direction: Option<Direction>,
    /// Matches legs answered at least this many seconds ago.
    #[serde(default)]
    pub min_age_secs: Option<u64>,
    /// Matches legs answered at most this many seconds ago.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// The called number is a key of one of these datasets (exactly).
    #[serde(default)]
    pub called_in: Vec<String>,
    /// The calling number is a key of one of these datasets (exactly).
    #[serde(default)]
    pub calling_in: Vec<String>,
    /// A prefix of the called number is a key of one of these datasets.
    #[serde(default)]
    pub called_prefix_in: Vec<String>,
    /// A prefix of the calling number is a key of one of these datasets.
    #[serde(default)]
    pub calling_prefix_in: Vec<String>,
    /// The dataset's value for the called number is one of a list: the
    /// value of its longest prefix in a prefix table, of the number itself
    /// in a map.
    #[serde(default)]
    pub called_value: Option<ValueCondition>,
    /// As `called_value`, for the calling number.
    #[serde(default)]
    pub calling_value: Option<ValueCondition>,
    /// A rule without any condition matches every call; it must say so.
    #[serde(default)]
    pub match_all: bool,
    /// The dataset conditions, as indexes into the set's look-ups.
    #[serde(skip)]
    data: Vec<DataCondition>,
}

/// `called_value` / `calling_value`: a dataset and the values that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueCondition {
    pub dataset: String,
    pub one_of: Vec<String>,
}

/// Which number of a leg a look-up reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Called,
    Calling,
}

/// How a look-up reads its dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Whether the number is a key.
    Exact,
    /// Whether a prefix of the number is a key.
    Prefix,
    /// The number's value: its longest prefix's in a prefix table, its
    /// own in a map.
    Value,
}

/// One look-up the rules need for every leg: the caller answers it for a
/// whole batch at once (one host call per look-up and batch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    pub dataset: String,
    pub field: Field,
    pub mode: Mode,
}

impl Field {
    /// The number this field names in `leg`.
    pub fn of<'a>(self, leg: &LegView<'a>) -> &'a str {
        match self {
            Field::Called => leg.called,
            Field::Calling => leg.calling,
        }
    }
}

/// A rule's dataset condition: any of `lookups` found, and (when `one_of`
/// is not empty) with one of these values.
#[derive(Debug, Clone)]
struct DataCondition {
    lookups: Vec<usize>,
    one_of: Vec<String>,
}

/// A parsed, validated rule set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The decision when no rule matches.
    #[serde(default)]
    pub default: Action,
    /// The decision for links whose two legs were rebuilt.
    #[serde(default)]
    pub links: Action,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Rules for conference mixers (`[[mixer_rule]]`).
    #[serde(default, rename = "mixer_rule")]
    pub mixer_rules: Vec<MixerRule>,
    /// Every look-up the rules' dataset conditions need, each once.
    #[serde(skip)]
    lookups: Vec<Lookup>,
}

impl RuleSet {
    /// Parses a rule set from TOML, or JSON when the text starts with `{`.
    /// Empty text is the empty rule set: rebuild everything.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let trimmed = text.trim_start();
        let mut set: RuleSet = if trimmed.starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| RulesError(format!("invalid JSON rules: {e}")))?
        } else {
            toml::from_str(text).map_err(|e| RulesError(format!("invalid TOML rules: {e}")))?
        };
        set.validate()?;
        set.compile_lookups();
        Ok(set)
    }

    /// The look-ups the rules need for each leg, in the order
    /// [`RuleSet::matching_rule_with`] asks for them; empty when no rule
    /// reads a dataset.
    pub fn lookups(&self) -> &[Lookup] {
        &self.lookups
    }

    /// The datasets the rules read, each once, in order of first use.
    pub fn datasets(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for lookup in &self.lookups {
            if !names.contains(&lookup.dataset.as_str()) {
                names.push(&lookup.dataset);
            }
        }
        names
    }

    fn compile_lookups(&mut self) {
        let mut lookups = Vec::new();
        let mut index_of = |dataset: &str, field: Field, mode: Mode| {
            let lookup = Lookup {
                dataset: dataset.to_string(),
                field,
                mode,
            };
            match lookups.iter().position(|l| *l == lookup) {
                Some(index) => index,
                None => {
                    lookups.push(lookup);
                    lookups.len() - 1
                }
            }
        };
        for rule in &mut self.rules {
            let mut data = Vec::new();
            for (datasets, field, mode) in [
                (&rule.called_in, Field::Called, Mode::Exact),
                (&rule.calling_in, Field::Calling, Mode::Exact),
                (&rule.called_prefix_in, Field::Called, Mode::Prefix),
                (&rule.calling_prefix_in, Field::Calling, Mode::Prefix),
            ] {
                if !datasets.is_empty() {
                    data.push(DataCondition {
                        lookups: datasets.iter().map(|d| index_of(d, field, mode)).collect(),
                        one_of: Vec::new(),
                    });
                }
            }
            for (condition, field) in [
                (&rule.called_value, Field::Called),
                (&rule.calling_value, Field::Calling),
            ] {
                if let Some(condition) = condition {
                    data.push(DataCondition {
                        lookups: vec![index_of(&condition.dataset, field, Mode::Value)],
                        one_of: condition.one_of.clone(),
                    });
                }
            }
            rule.data = data;
        }
        self.lookups = lookups;
    }

    fn validate(&self) -> Result<(), RulesError> {
        for (index, rule) in self.mixer_rules.iter().enumerate() {
            rule.validate(index)?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let name = rule_name(rule, index);
            if let (Some(min), Some(max)) = (rule.min_age_secs, rule.max_age_secs)
                && min > max
            {
                return Err(RulesError(format!(
                    "{name}: min_age_secs ({min}) is greater than max_age_secs ({max})"
                )));
            }
            let conditions = !rule.called_prefix.is_empty()
                || !rule.calling_prefix.is_empty()
                || !rule.nap.is_empty()
                || !rule.protocol.is_empty()
                || rule.direction.is_some()
                || rule.min_age_secs.is_some()
                || rule.max_age_secs.is_some()
                || rule.reads_data();
            if !conditions && !rule.match_all {
                return Err(RulesError(format!(
                    "{name}: a rule without conditions matches every call; add a condition, or write `match_all = true` if that is what you mean"
                )));
            }
            if conditions && rule.match_all {
                return Err(RulesError(format!(
                    "{name}: `match_all = true` and conditions contradict each other; keep one"
                )));
            }
            for condition in [&rule.called_value, &rule.calling_value]
                .into_iter()
                .flatten()
            {
                if condition.one_of.is_empty() {
                    return Err(RulesError(format!(
                        "{name}: a value condition on dataset {} lists no value (`one_of`); to match any number the dataset has, use called_in or called_prefix_in",
                        condition.dataset
                    )));
                }
            }
            let prefixes = rule.called_prefix.iter().chain(&rule.calling_prefix);
            if prefixes.clone().any(|p| p.is_empty()) {
                return Err(RulesError(format!(
                    "{name}: an empty number prefix matches every call; remove the condition instead"
                )));
            }
        }
        Ok(())
    }

    /// Decides one leg. `now_ms` is the wall clock in Unix milliseconds, for
    /// the age conditions. Dataset conditions find nothing: see
    /// [`RuleSet::matching_rule_with`].
    pub fn decide(&self, leg: &LegView<'_>, now_ms: u64) -> Action {
        self.matching_rule(leg, now_ms)
            .map_or(self.default, |index| self.rules[index].action)
    }

    /// The index of the first rule that matches, if any (dataset
    /// conditions find nothing).
    pub fn matching_rule(&self, leg: &LegView<'_>, now_ms: u64) -> Option<usize> {
        self.matching_rule_with(leg, now_ms, |_| None)
    }

    /// The index of the first rule that matches, if any. `answer(i)` is
    /// the answer of look-up `i` of [`RuleSet::lookups`] for this leg:
    /// none when the dataset has nothing for it, else the value found
    /// (`""` for a key of a set, and for `Exact` / `Prefix` look-ups).
    pub fn matching_rule_with<'v>(
        &self,
        leg: &LegView<'_>,
        now_ms: u64,
        answer: impl Fn(usize) -> Option<&'v str>,
    ) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.matches(leg, now_ms) && rule.data_matches(&answer))
    }

    /// Whether the set decides mixers: it has mixer rules.
    pub fn decides_mixers(&self) -> bool {
        !self.mixer_rules.is_empty()
    }

    /// The index of the first mixer rule that matches, if any (none: the
    /// mixer is rebuilt).
    pub fn matching_mixer_rule(&self, mixer: &MixerView<'_>) -> Option<usize> {
        self.mixer_rules.iter().position(|rule| rule.matches(mixer))
    }

    /// Decides one mixer: the first matching mixer rule's action, else
    /// rebuild.
    pub fn decide_mixer(&self, mixer: &MixerView<'_>) -> Action {
        self.matching_mixer_rule(mixer)
            .map_or(Action::Rebuild, |index| self.mixer_rules[index].action)
    }

    /// The display name of mixer rule `index`.
    pub fn mixer_rule_name(&self, index: usize) -> String {
        self.mixer_rules[index].display_name(index)
    }

    /// The display name of rule `index`.
    pub fn rule_name(&self, index: usize) -> String {
        rule_name(&self.rules[index], index)
    }
}

fn rule_name(rule: &Rule, index: usize) -> String {
    rule.name
        .clone()
        .unwrap_or_else(|| format!("rule {}", index + 1))
}

impl Rule {
    fn reads_data(&self) -> bool {
        !self.called_in.is_empty()
            || !self.calling_in.is_empty()
            || !self.called_prefix_in.is_empty()
            || !self.calling_prefix_in.is_empty()
            || self.called_value.is_some()
            || self.calling_value.is_some()
    }

    fn data_matches<'v>(&self, answer: &impl Fn(usize) -> Option<&'v str>) -> bool {
        self.data.iter().all(|condition| {
            condition
                .lookups
                .iter()
                .any(|&lookup| match answer(lookup) {
                    None => false,
                    Some(value) => {
                        condition.one_of.is_empty() || condition.one_of.iter().any(|v| v == value)
                    }
                })
        })
    }

    fn matches(&self, leg: &LegView<'_>, now_ms: u64) -> bool {
        any_prefix(&self.called_prefix, leg.called)
            && any_prefix(&self.calling_prefix, leg.calling)
            && (self.nap.is_empty() || self.nap.iter().any(|n| n == leg.nap))
            && (self.protocol.is_empty() || self.protocol.contains(&leg.protocol))
            && self.direction.is_none_or(|d| d == leg.direction)
            && self.age_matches(leg.answered_at_ms, now_ms)
    }

    fn age_matches(&self, answered_at_ms: Option<u64>, now_ms: u64) -> bool {
        if self.min_age_secs.is_none() && self.max_age_secs.is_none() {
            return true;
        }
        // An age condition only applies to answered legs.
        let Some(answered) = answered_at_ms else {
            return false;
        };
        let age_secs = now_ms.saturating_sub(answered) / 1000;
        self.min_age_secs.is_none_or(|min| age_secs >= min)
            && self.max_age_secs.is_none_or(|max| age_secs <= max)
    }
}

fn any_prefix(prefixes: &[String], number: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| number.starts_with(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn leg(called: &str) -> LegView<'_> {
        LegView {
            direction: Direction::Inbound,
            protocol: Protocol::Sip,
            nap: "SIP_A",
            calling: "5145550100",
            called,
            answered_at_ms: Some(NOW - 60_000),
        }
    }

    #[test]
    fn empty_text_rebuilds_everything() {
        let set = RuleSet::parse("").unwrap();
        assert_eq!(set.decide(&leg("1900"), NOW), Action::Rebuild);
    }

    #[test]
    fn first_matching_rule_wins() {
        let set = RuleSet::parse(
            r#"
            [[rule]]
            action = "rebuild"
            called_prefix = ["19005"]
            [[rule]]
            action = "refuse"
            called_prefix = ["1900"]
            "#,
        )
        .unwrap();
        assert_eq!(set.decide(&leg("19005551234"), NOW), Action::Rebuild);
        assert_eq!(set.decide(&leg("19001234"), NOW), Action::Refuse);
        assert_eq!(set.decide(&leg("5145551234"), NOW), Action::Rebuild);
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let set = RuleSet::parse(
            r#"{"rule": [{"action": "refuse", "nap": ["SIP_A"], "protocol": ["isdn"]}]}"#,
        )
        .unwrap();
        assert_eq!(set.decide(&leg("1"), NOW), Action::Rebuild);
        let isdn = LegView {
            protocol: Protocol::Isdn,
            ..leg("1")
        };
        assert_eq!(set.decide(&isdn, NOW), Action::Refuse);
    }

    #[test]
    fn age_conditions_apply_to_answered_legs_only() {
        let set = RuleSet::parse("[[rule]]\naction = \"refuse\"\nmin_age_secs = 30\n").unwrap();
        assert_eq!(set.decide(&leg("1"), NOW), Action::Refuse);
        let young = LegView {
            answered_at_ms: Some(NOW - 10_000),
            ..leg("1")
        };
        assert_eq!(set.decide(&young, NOW), Action::Rebuild);
        let unanswered = LegView {
            answered_at_ms: None,
            ..leg("1")
        };
        assert_eq!(set.decide(&unanswered, NOW), Action::Rebuild);
    }

    #[test]
    fn direction_and_default_refuse() {
        let set = RuleSet::parse(
            "default = \"refuse\"\n[[rule]]\naction = \"rebuild\"\ndirection = \"outbound\"\n",
        )
        .unwrap();
        assert_eq!(set.decide(&leg("1"), NOW), Action::Refuse);
        let out = LegView {
            direction: Direction::Outbound,
            ..leg("1")
        };
        assert_eq!(set.decide(&out, NOW), Action::Rebuild);
    }

    #[test]
    fn bad_rules_are_rejected_with_the_reason() {
        let err = RuleSet::parse("[[rule]]\naction = \"explode\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid TOML rules"), "{err}");
        let err = RuleSet::parse("[[rule]]\naction = \"refuse\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err =
            RuleSet::parse("[[rule]]\naction = \"refuse\"\nmin_age_secs = 9\nmax_age_secs = 1\n")
                .unwrap_err();
        assert!(err.to_string().contains("rule 1: min_age_secs"), "{err}");
        let err = RuleSet::parse(r#"{"rule": [}"#).unwrap_err();
        assert!(err.to_string().contains("invalid JSON rules"), "{err}");
    }

    #[test]
    fn dataset_conditions_ask_each_lookup_once_and_use_its_answers() {
        let set = RuleSet::parse(
            r#"
            [[rule]]
            name = "blocked"
            action = "refuse"
            called_in = ["blocked", "fraud"]
            [[rule]]
            name = "premium"
            action = "refuse"
            called_value = { dataset = "rates", one_of = ["premium"] }
            nap = ["SIP_A"]
            [[rule]]
            name = "also blocked"
            action = "refuse"
            calling_prefix_in = ["ranges"]
            called_in = ["blocked"]
            "#,
        )
        .unwrap();
        let lookups = set.lookups();
        assert_eq!(lookups.len(), 4, "{lookups:?}");
        assert_eq!(set.datasets(), ["blocked", "fraud", "rates", "ranges"]);
        let at = |dataset: &str, mode: Mode| {
            lookups
                .iter()
                .position(|l| l.dataset == dataset && l.mode == mode)
                .unwrap()
        };
        let (fraud, rates) = (at("fraud", Mode::Exact), at("rates", Mode::Value));
        assert_eq!(lookups[rates].field, Field::Called);
        let leg = leg("19005550100");
        assert_eq!(set.matching_rule_with(&leg, NOW, |_| None), None);
        assert_eq!(
            set.matching_rule_with(&leg, NOW, |i| (i == fraud).then_some("")),
            Some(0)
        );
        assert_eq!(
            set.matching_rule_with(&leg, NOW, |i| (i == rates).then_some("premium")),
            Some(1)
        );
        assert_eq!(
            set.matching_rule_with(&leg, NOW, |i| (i == rates).then_some("standard")),
            None
        );
        let err = RuleSet::parse(
            "[[rule]]\naction = \"refuse\"\ncalled_value = { dataset = \"rates\", one_of = [] }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("lists no value"), "{err}");
    }

    #[test]
    fn a_rule_without_conditions_must_say_it_matches_all() {
        let err = RuleSet::parse("[[rule]]\nname = \"oops\"\naction = \"refuse\"\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("oops: a rule without conditions matches every call"),
            "{err}"
        );
        let all = RuleSet::parse("[[rule]]\naction = \"refuse\"\nmatch_all = true\n").unwrap();
        assert_eq!(all.decide(&leg("1"), NOW), Action::Refuse);
        let err =
            RuleSet::parse("[[rule]]\naction = \"refuse\"\nmatch_all = true\nnap = [\"SIP_A\"]\n")
                .unwrap_err();
        assert!(err.to_string().contains("contradict"), "{err}");
    }
}
