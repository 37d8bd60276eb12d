//! The blast radius of a plugin set: what it would refuse of the calls the
//! host holds now, decided exactly as a cold resync would decide them.
//!
//! A rules change is harmless until the next engine blip or restart, when
//! the resync decides again and drops at the engine every call it refuses.
//! A reload computes this before the set goes live (off the live path, on a
//! throwaway copy of the set, so no plugin's state sees it), reports it,
//! and holds back a set above its guard ([`Guard`]).

use super::chain::PolicyChain;
use super::held::HeldSnapshot;
use crate::model::{Decision, LegId, Link, PluginName, Reason};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// Refusal groups reported (the largest); the rest are counted.
const GROUPS: usize = 20;

/// What a set would refuse of the calls held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlastRadius {
    pub held_legs: u64,
    pub refused_legs: u64,
    /// Of the refused legs, the answered ones: calls that would be billed
    /// up to then and dropped.
    pub refused_answered: u64,
    pub held_links: u64,
    /// Links the set would refuse, or that go with a refused leg.
    pub refused_links: u64,
    /// The refused legs by plugin, NAP and failure, largest first.
    pub groups: Vec<RefusalGroup>,
    /// Groups beyond the first 20, left out of `groups`.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_groups: usize,
    /// How long deciding took, in microseconds.
    pub micros: u64,
    /// The refused legs and who refused each, for an enforcement of
    /// exactly these.
    #[serde(skip)]
    pub refused: Vec<(LegId, PluginName, Option<Reason>)>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Refused legs that share a plugin, a NAP and (for a failure policy's
/// refusal) a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalGroup {
    pub plugin: String,
    pub nap: String,
    /// Set when the plugin's failure policy refused (it trapped, overran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<&'static str>,
    /// Why, in the plugin's words (a rule's name), when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub legs: u64,
    pub answered: u64,
}

impl BlastRadius {
    /// The radius as one line for people: "would refuse 1,024 of 10,000
    /// held legs (1,000 answered) and 12 of 4,000 links".
    pub fn summary(&self) -> String {
        let mut line = format!(
            "would refuse {} of {} held legs ({} answered) and {} of {} links",
            self.refused_legs,
            self.held_legs,
            self.refused_answered,
            self.refused_links,
            self.held_links
        );
        for group in self.groups.iter().take(3) {
            line.push_str(&format!(
                "; {} by {} on {}",
                group.legs, group.plugin, group.nap
            ));
            if let Some(why) = group.reason.or(group.failure) {
                line.push_str(&format!(" ({why})"));
            }
        }
        line
    }
}

/// Decides every held leg and link with `chain`, as a cold resync would:
/// legs first, then the links whose two legs it rebuilt.
pub fn blast_radius(chain: &PolicyChain, held: &HeldSnapshot) -> BlastRadius {
    let started = Instant::now();
    let legs: Vec<_> = held.legs.iter().map(|(leg, _)| leg.clone()).collect();
    let verdicts = chain.decide_legs(&legs);
    let mut radius = BlastRadius {
        held_legs: legs.len() as u64,
        held_links: held.links.len() as u64,
        ..BlastRadius::default()
    };
    type Key<'a> = (&'a str, &'a str, Option<&'static str>, Option<&'static str>);
    let mut groups: HashMap<Key, (u64, u64)> = HashMap::new();
    for (leg, verdict) in legs.iter().zip(&verdicts) {
        if verdict.decision == Decision::Refuse {
            let answered = u64::from(leg.answered_at_ms.is_some());
            radius.refused_legs += 1;
            radius.refused_answered += answered;
            radius
                .refused
                .push((leg.id, verdict.plugin, verdict.reason));
            let key = (
                verdict.plugin.as_str(),
                leg.nap.as_str(),
                verdict.failure.map(|f| f.as_str()),
                verdict.reason.map(|r| r.as_str()),
            );
            let group = groups.entry(key).or_default();
            group.0 += 1;
            group.1 += answered;
        }
    }
    let refused: crate::model::IdSet<LegId> = radius.refused.iter().map(|r| r.0).collect();
    radius.refused_links = links_refused(chain, &held.links, &refused);
    let mut groups: Vec<RefusalGroup> = groups
        .into_iter()
        .map(
            |((plugin, nap, failure, reason), (legs, answered))| RefusalGroup {
                plugin: plugin.to_string(),
                nap: nap.to_string(),
                failure,
                reason,
                legs,
                answered,
            },
        )
        .collect();
    groups.sort_by(|a, b| {
        (b.legs, &a.plugin, &a.nap, a.failure, a.reason)
            .cmp(&(a.legs, &b.plugin, &b.nap, b.failure, b.reason))
    });
    radius.more_groups = groups.len().saturating_sub(GROUPS);
    groups.truncate(GROUPS);
    radius.groups = groups;
    radius.micros = started.elapsed().as_micros() as u64;
    radius
}

/// Links that would go: with a refused leg, or refused themselves.
fn links_refused(chain: &PolicyChain, links: &[Link], refused: &crate::model::IdSet<LegId>) -> u64 {
    let (with_refused_leg, offered): (Vec<Link>, Vec<Link>) = links
        .iter()
        .partition(|link| refused.contains(&link.leg_a) || refused.contains(&link.leg_b));
    let refused_links = chain
        .decide_links(&offered)
        .iter()
        .filter(|v| v.decision == Decision::Refuse)
        .count();
    (with_refused_leg.len() + refused_links) as u64
}

/// The ceiling on what a reloaded set may refuse of the calls held
/// (`[policy.guard]`). A set over it is held back until an operator
/// accepts it by its hash.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guard {
    /// The share of held legs (0 to 1) a new set may refuse.
    pub refused_share: f64,
    /// The number of held legs a new set may refuse, whatever the share.
    pub refused_calls: u64,
}

impl Default for Guard {
    /// 1 % and 100 calls: a set is held back only when it would refuse
    /// more than both. A rule meant to stop a few fraudulent destinations
    /// refuses far less than 1 % of a busy host; a typo that matches
    /// everything refuses far more; and on a quiet host (a few hundred
    /// calls) a handful of refusals is not worth a hold.
    fn default() -> Self {
        Guard {
            refused_share: 0.01,
            refused_calls: 100,
        }
    }
}

impl Guard {
    /// Why `radius` is over the guard, if it is.
    pub fn exceeded_by(&self, radius: &BlastRadius) -> Option<String> {
        let share = if radius.held_legs == 0 {
            0.0
        } else {
            radius.refused_legs as f64 / radius.held_legs as f64
        };
        (share > self.refused_share && radius.refused_legs > self.refused_calls).then(|| {
            format!(
                "it would refuse {} of {} held legs ({:.1} %), over the guard of {:.1} % and {} legs",
                radius.refused_legs,
                radius.held_legs,
                share * 100.0,
                self.refused_share * 100.0,
                self.refused_calls
            )
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.refused_share) {
            return Err(format!(
                "policy.guard.refused_share must be between 0 and 1 (it is {})",
                self.refused_share
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radius(held: u64, refused: u64) -> BlastRadius {
        BlastRadius {
            held_legs: held,
            refused_legs: refused,
            ..BlastRadius::default()
        }
    }

    #[test]
    fn the_guard_trips_only_past_both_the_share_and_the_count() {
        let guard = Guard::default();
        assert!(guard.exceeded_by(&radius(1_000_000, 5_000)).is_none());
        assert!(guard.exceeded_by(&radius(1_000_000, 10_001)).is_some());
        assert!(guard.exceeded_by(&radius(200, 150)).is_some());
        assert!(guard.exceeded_by(&radius(200, 100)).is_none(), "100 calls");
        assert!(guard.exceeded_by(&radius(0, 0)).is_none());
        let why = guard.exceeded_by(&radius(1000, 500)).unwrap();
        assert!(why.contains("500 of 1000 held legs (50.0 %)"), "{why}");
    }
}
