//! Rules for conference mixers (`[[mixer_rule]]`): refuse conferences by
//! name or above a size. A rule set without mixer rules does not decide
//! mixers (the `rules` plugin abstains from the mixer decision).

use crate::{Action, RulesError};
use serde::Deserialize;

/// What a mixer rule sees of a mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixerView<'a> {
    /// The conference's name, as the application named it.
    pub name: &'a str,
    /// The legs joined to it that the host holds.
    pub legs: usize,
}

/// One mixer rule: an action and the conditions under which it applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixerRule {
    /// Shown in logs and audit records; defaults to `mixer rule N`.
    #[serde(default)]
    pub name: Option<String>,
    pub action: Action,
    /// The mixer's name starts with one of these.
    #[serde(default)]
    pub name_prefix: Vec<String>,
    /// The mixer has more legs joined than this.
    #[serde(default)]
    pub more_legs_than: Option<usize>,
    /// A rule without any condition matches every mixer; it must say so.
    #[serde(default)]
    pub match_all: bool,
}

impl MixerRule {
    pub(crate) fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("mixer rule {}", index + 1))
    }

    pub(crate) fn matches(&self, mixer: &MixerView<'_>) -> bool {
        (self.name_prefix.is_empty() || self.name_prefix.iter().any(|p| mixer.name.starts_with(p)))
            && self.more_legs_than.is_none_or(|most| mixer.legs > most)
    }

    pub(crate) fn validate(&self, index: usize) -> Result<(), RulesError> {
        let name = self.display_name(index);
        let conditions = !self.name_prefix.is_empty() || self.more_legs_than.is_some();
        if !conditions && !self.match_all {
            return Err(RulesError(format!(
                "{name}: a mixer rule without conditions matches every mixer; add a condition, or write `match_all = true` if that is what you mean"
            )));
        }
        if conditions && self.match_all {
            return Err(RulesError(format!(
                "{name}: `match_all = true` and conditions contradict each other; keep one"
            )));
        }
        if self.name_prefix.iter().any(String::is_empty) {
            return Err(RulesError(format!(
                "{name}: an empty name prefix matches every mixer; remove the condition instead"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Action, MixerView, RuleSet};

    const RULES: &str = r#"
[[mixer_rule]]
name = "no test conferences"
action = "refuse"
name_prefix = ["test-"]

[[mixer_rule]]
action = "refuse"
more_legs_than = 3
"#;

    #[test]
    fn mixers_are_refused_by_name_prefix_or_above_a_size() {
        let set = RuleSet::parse(RULES).unwrap();
        assert!(set.decides_mixers());
        let decide = |name, legs| set.decide_mixer(&MixerView { name, legs });
        assert_eq!(decide("test-room", 0), Action::Refuse);
        assert_eq!(decide("sales", 3), Action::Rebuild);
        assert_eq!(decide("sales", 4), Action::Refuse);
        assert_eq!(
            set.matching_mixer_rule(&MixerView {
                name: "sales",
                legs: 9
            })
            .map(|i| set.mixer_rule_name(i)),
            Some("mixer rule 2".to_string())
        );
    }

    #[test]
    fn a_set_without_mixer_rules_does_not_decide_mixers() {
        let set = RuleSet::parse("[[rule]]\naction = \"refuse\"\nnap = [\"X\"]\n").unwrap();
        assert!(!set.decides_mixers());
    }

    #[test]
    fn a_mixer_rule_without_conditions_or_with_an_empty_prefix_is_refused() {
        let bare = RuleSet::parse("[[mixer_rule]]\naction = \"refuse\"\n").unwrap_err();
        assert!(
            bare.to_string()
                .contains("mixer rule 1: a mixer rule without conditions")
        );
        let empty = RuleSet::parse("[[mixer_rule]]\naction = \"refuse\"\nname_prefix = [\"\"]\n")
            .unwrap_err();
        assert!(empty.to_string().contains("empty name prefix"));
        assert!(RuleSet::parse("[[mixer_rule]]\naction = \"refuse\"\nmatch_all = true\n").is_ok());
    }
}
