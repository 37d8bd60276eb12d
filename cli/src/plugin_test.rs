//! `legsync plugin test PLUGIN.wasm TESTS.json...`: a plugin's decisions
//! against what its author expects, on the built component.
//!
//! A test file (JSON), paths relative to it:
//!
//! ```json
//! {
//!   "rules": "rules.json",
//!   "legs": "legs.json",
//!   "expect": { "1": "rebuild", "2": "refuse" },
//!   "links": [ { "id": 9, "leg_a": 1, "leg_b": 3 } ],
//!   "expect_links": { "9": "rebuild" },
//!   "mixers": [ { "id": 4, "name": "sales", "joins": [ { "leg": 1 } ] } ],
//!   "expect_mixers": { "4": "rebuild" },
//!   "held": "held.json"
//! }
//! ```
//!
//! Mixers are decided after the legs, with their joins to rebuilt legs
//! only, as the host offers them; `expect_mixers` takes `rebuild`,
//! `refuse` or `abstain` (the plugin does not decide mixers).
//!
//! `rules` is the plugin's rules file (absent: none). `legs` is a file or an
//! inline array of legs as `plugin eval` takes them, or a page of `legsync
//! legs --json` (a running host's legs). The legs are decided in one batch
//! in the order given, on a fresh instance per test file; links as the host
//! would (those whose two legs were rebuilt). Every expectation is checked;
//! a leg without one is decided but not judged.
//!
//! `held` (optional) is what the host holds when the plugin starts, as
//! `held-legs` serves it: legs in the same formats, each with the plugin
//! that adopted it (`adopted_by`; `live` for a leg followed from its setup;
//! absent: adopted by a decision of `plugin-test`). A page of `legsync legs
//! --json` keeps its own `adopted_by`: a running host's table, replayed.

use anyhow::Context;
use clap::Args;
use legsync::mixers::{HeldMixer, MixerTable};
use legsync::model::{CallLeg, Decision, IdSet, Join, JoinRole, Link, Mixer, PluginName};
use legsync::policy::Verdict;
use legsync::policy::held::FixedHeld;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The component (`.wasm`).
    plugin: PathBuf,
    /// Test files (JSON; see docs/plugin-guide.md, "Testing a plugin").
    #[arg(required = true)]
    tests: Vec<PathBuf>,
    #[command(flatten)]
    cache: super::plugin::CacheArgs,
}

/// One test file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rules: Option<PathBuf>,
    legs: Items,
    #[serde(default)]
    expect: BTreeMap<u64, Decision>,
    #[serde(default)]
    links: Option<Items>,
    #[serde(default)]
    expect_links: BTreeMap<u64, Decision>,
    #[serde(default)]
    mixers: Option<Items>,
    #[serde(default)]
    expect_mixers: BTreeMap<u64, MixerExpectation>,
    #[serde(default)]
    held: Option<Items>,
    /// A dataset directory (relative to the test file): every dataset in it
    /// is granted to the plugin.
    #[serde(default)]
    datasets: Option<PathBuf>,
}

/// What a test expects of a mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MixerExpectation {
    Rebuild,
    Refuse,
    /// The plugin does not decide mixers (it abstains).
    Abstain,
}

/// A mixer as a test file or `plugin eval --mixers` writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenMixer {
    id: u64,
    #[serde(default)]
    created_at_ms: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    joins: Vec<WrittenJoin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenJoin {
    leg: u64,
    #[serde(default)]
    role: JoinRole,
}

/// Mixers from a JSON array (each with its joins), as the wire carries
/// them: mixers, and joins.
pub fn mixers_from(
    value: serde_json::Value,
    origin: &str,
) -> anyhow::Result<(Vec<Mixer>, Vec<Join>)> {
    let written: Vec<WrittenMixer> =
        serde_json::from_value(value).with_context(|| format!("{origin}: mixers"))?;
    let mut joins = Vec::new();
    let mixers = written
        .into_iter()
        .map(|m| {
            joins.extend(m.joins.iter().map(|j| Join {
                mixer: m.id,
                leg: j.leg,
                role: j.role,
            }));
            Mixer {
                id: m.id,
                created_at_ms: m.created_at_ms,
                name: m.name.into(),
            }
        })
        .collect();
    Ok((mixers, joins))
}

/// The mixers as the host would offer them once `rebuilt` and `refused`
/// legs are decided: the host's own diff, so joins of refused or unknown
/// legs are left out as they would be.
pub fn offered_mixers(
    mixers: Vec<Mixer>,
    joins: Vec<Join>,
    rebuilt: &IdSet<u64>,
    refused: &IdSet<u64>,
) -> Vec<HeldMixer> {
    MixerTable::default()
        .diff(mixers, joins, |leg| rebuilt.contains(&leg), refused)
        .unknown
}

/// Items inline, or in a file beside the test file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Items {
    File(PathBuf),
    Inline(serde_json::Value),
}

impl Items {
    fn value(&self, base: &Path) -> anyhow::Result<serde_json::Value> {
        match self {
            Items::Inline(value) => Ok(value.clone()),
            Items::File(path) => {
                let path = base.join(path);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))
            }
        }
    }
}

/// Legs from a JSON array, or from a page of `legsync legs --json` (whose
/// legs carry the host's own `adopted_by`).
pub fn legs_from(value: serde_json::Value, origin: &str) -> anyhow::Result<Vec<CallLeg>> {
    Ok(held_from(value, origin)?
        .into_iter()
        .map(|(leg, _)| leg)
        .collect())
}

/// The adopter of a held leg whose test file names none.
const TEST_ADOPTER: &str = "plugin-test";

/// Legs as [`legs_from`] reads them, each with its `adopted_by`.
fn held_from(value: serde_json::Value, origin: &str) -> anyhow::Result<Vec<(CallLeg, PluginName)>> {
    let array = match value {
        serde_json::Value::Object(mut page) if page.contains_key("legs") => {
            page.remove("legs").unwrap_or_default()
        }
        other => other,
    };
    let serde_json::Value::Array(items) = array else {
        anyhow::bail!(
            "{origin}: expected a JSON array of legs, or a page of `legsync legs --json`"
        );
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let adopted_by = item
                .as_object_mut()
                .and_then(|fields| fields.remove("adopted_by"))
                .and_then(|by| by.as_str().map(PluginName::new))
                .unwrap_or_else(|| PluginName::new(TEST_ADOPTER));
            let leg =
                serde_json::from_value(item).with_context(|| format!("{origin}: leg {}", i + 1))?;
            Ok((leg, adopted_by))
        })
        .collect()
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let runtime = args.cache.runtime()?;
    let mut failed = 0;
    for path in &args.tests {
        let base = path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let test: TestFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a test file (docs/plugin-guide.md, \"Testing a plugin\")",
                path.display()
            )
        })?;
        let rules = test.rules.as_ref().map(|r| base.join(r));
        let origin = path.display().to_string();
        let held = match &test.held {
            Some(items) => held_from(items.value(base)?, &format!("{origin}: held"))?,
            None => Vec::new(),
        };
        runtime
            .held_legs()
            .serve(std::sync::Arc::new(FixedHeld::new(held)));
        let datasets = test.datasets.as_ref().map(|d| base.join(d));
        let chain = super::plugin::load(
            &runtime,
            &args.plugin,
            rules.as_deref(),
            datasets.as_deref(),
        )?;
        let legs = legs_from(test.legs.value(base)?, &origin)?;
        let links: Vec<Link> = match &test.links {
            Some(items) => serde_json::from_value(items.value(base)?)
                .with_context(|| format!("{origin}: links"))?,
            None => Vec::new(),
        };
        for id in test.expect.keys() {
            anyhow::ensure!(
                legs.iter().any(|leg| leg.id == *id),
                "{origin}: an expectation for leg {id}, which is not among its legs"
            );
        }
        let verdicts = chain.decide_legs(&legs);
        let mut problems = Vec::new();
        let mut judged = 0;
        for (leg, verdict) in legs.iter().zip(&verdicts) {
            if let Some(expected) = test.expect.get(&leg.id) {
                judged += 1;
                if let Some(problem) = judge(
                    &format!("leg {}", leg.id),
                    describe(leg),
                    *expected,
                    verdict,
                ) {
                    problems.push(problem);
                }
            }
        }
        let rebuilt: Vec<&Link> = links
            .iter()
            .filter(|link| {
                [link.leg_a, link.leg_b].iter().all(|side| {
                    legs.iter()
                        .zip(&verdicts)
                        .any(|(leg, v)| leg.id == *side && v.decision == Decision::Rebuild)
                })
            })
            .collect();
        let offered: Vec<Link> = rebuilt.iter().map(|link| **link).collect();
        let link_verdicts = chain.decide_links(&offered);
        for (id, expected) in &test.expect_links {
            judged += 1;
            let name = format!("link {id}");
            match offered.iter().position(|link| link.id == *id) {
                Some(i) => {
                    if let Some(problem) = judge(&name, String::new(), *expected, &link_verdicts[i]) {
                        problems.push(problem);
                    }
                }
                None => problems.push(format!(
                    "{name}: expected {}, but it was not offered (a leg of it was refused, or is not among the legs)",
                    expected.as_str()
                )),
            }
        }
        let (mixers, joins) = match &test.mixers {
            Some(items) => mixers_from(items.value(base)?, &origin)?,
            None => Default::default(),
        };
        let decided = |wanted: Decision| -> IdSet<u64> {
            legs.iter()
                .zip(&verdicts)
                .filter(|(_, v)| v.decision == wanted)
                .map(|(leg, _)| leg.id)
                .collect()
        };
        let offered_mixers = offered_mixers(
            mixers,
            joins,
            &decided(Decision::Rebuild),
            &decided(Decision::Refuse),
        );
        let mixer_verdicts = chain.decide_mixers(&offered_mixers);
        for (id, expected) in &test.expect_mixers {
            judged += 1;
            let name = format!("mixer {id}");
            let Some(i) = offered_mixers.iter().position(|m| m.mixer.id == *id) else {
                problems.push(format!(
                    "{name}: an expectation for a mixer not among its mixers"
                ));
                continue;
            };
            let verdict = &mixer_verdicts[i];
            let abstained = verdict.plugin.as_str() == legsync::policy::NO_MIXER_POLICY;
            let problem = match (expected, abstained) {
                (MixerExpectation::Abstain, true) => None,
                (MixerExpectation::Abstain, false) => Some(format!(
                    "{name}: expected the plugin to abstain, but it decided {}",
                    verdict.decision.as_str()
                )),
                (_, true) => Some(format!(
                    "{name}: expected a decision, but the plugin abstains (it does not decide mixers)"
                )),
                (MixerExpectation::Rebuild, false) => {
                    judge(&name, String::new(), Decision::Rebuild, verdict)
                }
                (MixerExpectation::Refuse, false) => {
                    judge(&name, String::new(), Decision::Refuse, verdict)
                }
            };
            problems.extend(problem);
        }
        if problems.is_empty() {
            println!("ok   {origin}: {judged} decisions as expected");
        } else {
            failed += 1;
            for problem in &problems {
                println!("FAIL {origin}: {problem}");
            }
            println!(
                "{} of {judged} decisions differ from what {origin} expects",
                problems.len()
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What is wrong with one verdict, if anything.
fn judge(name: &str, about: String, expected: Decision, verdict: &Verdict) -> Option<String> {
    let about = if about.is_empty() {
        String::new()
    } else {
        format!(" ({about})")
    };
    match verdict.failure {
        Some(kind) => Some(format!(
            "{name}{about}: expected {}, but the plugin failed ({}; its failure policy gave {})",
            expected.as_str(),
            kind.as_str(),
            verdict.decision.as_str()
        )),
        None if verdict.decision != expected => Some(format!(
            "{name}{about}: expected {}, got {}",
            expected.as_str(),
            verdict.decision.as_str()
        )),
        None => None,
    }
}

/// The fields a rule usually looks at, to read a failure without the file.
fn describe(leg: &CallLeg) -> String {
    format!(
        "nap {}, calling {}, called {}",
        leg.nap, leg.calling, leg.called
    )
}
