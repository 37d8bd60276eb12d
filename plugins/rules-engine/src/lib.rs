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
//! ```
//!
//! Rules are tried in order; the first whose every condition holds decides.
//! Within one condition, a list means "any of these".

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
    /// A rule without any condition matches every call; it must say so.
    #[serde(default)]
    pub match_all: bool,
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
}

impl RuleSet {
    /// Parses a rule set from TOML, or JSON when the text starts with `{`.
    /// Empty text is the empty rule set: rebuild everything.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let trimmed = text.trim_start();
        let set: RuleSet = if trimmed.starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| RulesError(format!("invalid JSON rules: {e}")))?
        } else {
            toml::from_str(text).map_err(|e| RulesError(format!("invalid TOML rules: {e}")))?
        };
        set.validate()?;
        Ok(set)
    }

    fn validate(&self) -> Result<(), RulesError> {
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
                || rule.max_age_secs.is_some();
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
    /// the age conditions.
    pub fn decide(&self, leg: &LegView<'_>, now_ms: u64) -> Action {
        self.matching_rule(leg, now_ms)
            .map_or(self.default, |index| self.rules[index].action)
    }

    /// The index of the first rule that matches, if any.
    pub fn matching_rule(&self, leg: &LegView<'_>, now_ms: u64) -> Option<usize> {
        self.rules.iter().position(|rule| rule.matches(leg, now_ms))
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
