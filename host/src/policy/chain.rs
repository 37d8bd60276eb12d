//! The plugin chain: plugins in order, first refusal wins, every decision
//! records the plugin that made it.

use super::bindings::wit;
use super::error::{FailureKind, PluginFailure};
use super::export::Export;
use super::lower::{LegBatch, LinkRecord};
use super::plugin::{Decided, Plugin, TerminationNotice};
use crate::mixers::HeldMixer;
use crate::model::{
    CallLeg, DataVersions, Decision, EndedLeg, Link, PluginName, Reason, TerminationReason,
};
use std::time::Instant;

/// The name recorded when no plugin is loaded and the host rebuilds by default.
pub const NO_PLUGIN: &str = "(no plugins)";

/// The name recorded for a mixer rebuilt because no plugin voted on it
/// (each abstained, or was built for a contract without mixers).
pub const NO_MIXER_POLICY: &str = "no-mixer-policy";

/// One decision and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The plugin that refused, or for a rebuild the last plugin that agreed.
    pub plugin: PluginName,
    /// Set when the decision is the plugin's failure policy, not its answer.
    pub failure: Option<FailureKind>,
    /// Why, in the deciding plugin's words, when it said (`explain`).
    pub reason: Option<Reason>,
    /// The versions of the datasets the deciding plugin may consult, when
    /// it has any and answered (not its failure policy).
    pub data: Option<DataVersions>,
}

/// An ordered set of loaded plugins.
#[derive(Debug)]
pub struct PolicyChain {
    plugins: Vec<Plugin>,
    batch_size: usize,
    default_name: PluginName,
    /// Whether its decisions count in the metrics (not a throwaway copy's).
    counted: bool,
}

impl PolicyChain {
    pub fn new(plugins: Vec<Plugin>, batch_size: usize) -> Self {
        PolicyChain {
            plugins,
            batch_size: batch_size.max(1),
            default_name: NO_PLUGIN.into(),
            counted: true,
        }
    }

    /// A throwaway copy of the chain ([`Plugin::fork`] of each plugin):
    /// the same decisions, none of the live set's state, no metrics.
    pub fn fork(&self) -> Result<PolicyChain, super::PolicyError> {
        Ok(PolicyChain {
            plugins: self
                .plugins
                .iter()
                .map(Plugin::fork)
                .collect::<Result<_, _>>()?,
            batch_size: self.batch_size,
            default_name: self.default_name,
            counted: false,
        })
    }

    /// The most items of one plugin call.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// The datasets its plugins consult, each once (by name), with its
    /// version.
    pub fn datasets(&self) -> Vec<super::datasets::DatasetInfo> {
        let mut infos: Vec<super::datasets::DatasetInfo> = self
            .plugins
            .iter()
            .flat_map(|plugin| plugin.datasets().infos())
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos.dedup_by(|a, b| a.name == b.name);
        infos
    }

    /// `OnCallLegSync` for legs the host did not know: one verdict per leg.
    /// Each chunk is packed once; a later plugin in the chain gets the legs
    /// still rebuilt, pointing into the same text.
    pub fn decide_legs(&self, legs: &[CallLeg]) -> Vec<Verdict> {
        self.decide_legs_until(legs, None)
    }

    /// `OnCallLegSync` as [`PolicyChain::decide_legs`], within a time
    /// budget: from `until` on, no plugin is called, and each plugin's
    /// failure policy decides the legs it has not seen (failure
    /// `resync-budget`). Checked before every call, so a slow plugin holds
    /// a resync at most one call past its budget.
    pub fn decide_legs_until(&self, legs: &[CallLeg], until: Option<Instant>) -> Vec<Verdict> {
        legs.chunks(self.batch_size)
            .flat_map(|chunk| {
                let batch = LegBatch::new(chunk);
                self.decide_batch(
                    Export::LegSync,
                    batch.legs(),
                    until,
                    self.default_name,
                    &|plugin, offered| plugin.sync_legs(batch.with_legs(offered)).map(Some),
                )
            })
            .collect()
    }

    /// `OnLinkSync` for links whose two legs were rebuilt.
    pub fn decide_links(&self, links: &[Link]) -> Vec<Verdict> {
        links
            .chunks(self.batch_size)
            .flat_map(|chunk| {
                let batch: Vec<LinkRecord> = chunk.iter().map(LinkRecord::from).collect();
                self.decide_batch(
                    Export::LinkSync,
                    &batch,
                    None,
                    self.default_name,
                    &|plugin, links| plugin.sync_links(links).map(Some),
                )
            })
            .collect()
    }

    /// The mixer decision for mixers the host did not know (their legs
    /// already decided). A plugin that abstains, or was built for a
    /// contract without mixers, does not vote; a mixer no plugin voted on
    /// is rebuilt, named [`NO_MIXER_POLICY`].
    pub fn decide_mixers(&self, mixers: &[HeldMixer]) -> Vec<Verdict> {
        mixers
            .chunks(self.batch_size)
            .flat_map(|chunk| {
                let batch: Vec<wit::Mixer> = chunk.iter().map(wit::Mixer::from).collect();
                self.decide_batch(
                    Export::MixerSync,
                    &batch,
                    None,
                    PluginName::new(NO_MIXER_POLICY),
                    &Plugin::sync_mixers,
                )
            })
            .collect()
    }

    /// `on-mixer-terminated`, to every plugin that has it.
    pub fn notify_mixers_terminated(&self, mixers: &[HeldMixer], reason: TerminationReason) {
        for chunk in mixers.chunks(self.batch_size) {
            let notice: Vec<wit::TerminatedMixer> = chunk
                .iter()
                .map(|held| wit::TerminatedMixer {
                    mixer: held.into(),
                    reason: reason.into(),
                })
                .collect();
            for plugin in self.plugins.iter().filter(|p| p.has_mixer_exports()) {
                // The failure is already logged and counted by the plugin.
                let _ = plugin.notify_mixers_terminated(&notice);
            }
        }
    }

    /// `OnCallLegTerminated`, to every plugin: every leg that ended, held
    /// or refused (the notice says which, and who decided). Failures are
    /// logged (and count towards quarantine) but decide nothing.
    pub fn notify_terminated(&self, ended: &[EndedLeg], reason: TerminationReason) {
        if self.plugins.is_empty() {
            return;
        }
        for chunk in ended.chunks(self.batch_size) {
            let notice = TerminationNotice::new(chunk, reason);
            for plugin in &self.plugins {
                // The failure is already logged and counted by the plugin.
                let _ = plugin.notify_terminated(&notice);
            }
        }
    }

    /// One batch through the chain; an item no plugin voted on is rebuilt,
    /// named `unvoted`.
    fn decide_batch<W: Clone>(
        &self,
        export: Export,
        batch: &[W],
        until: Option<Instant>,
        unvoted: PluginName,
        call: &impl Fn(&Plugin, &[W]) -> Result<Option<Decided>, PluginFailure>,
    ) -> Vec<Verdict> {
        // Plain copies while deciding; each verdict takes its plugin's name
        // once at the end.
        let mut slots = vec![Slot::default(); batch.len()];
        // Indices still rebuilt so far: the only ones later plugins see.
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        for (index, plugin) in self.plugins.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let subset: Vec<W>;
            let offered: &[W] = if pending.len() == batch.len() {
                batch
            } else {
                subset = pending.iter().map(|&i| batch[i].clone()).collect();
                &subset
            };
            // In calls the plugin can answer within its deadline.
            let failed = plugin.settings().failure.decision();
            let mut answers = Vec::with_capacity(offered.len());
            // Reasons the plugin gave, by position in `offered`.
            let mut reasons: Vec<(usize, Reason)> = Vec::new();
            let mut rest = offered;
            // A plugin that abstains (none) does not vote on this batch.
            let mut abstained = false;
            while !rest.is_empty() {
                if until.is_some_and(|until| Instant::now() >= until) {
                    answers.extend(std::iter::repeat_n(
                        (failed, Some(FailureKind::ResyncBudget)),
                        rest.len(),
                    ));
                    break;
                }
                // Sized again after each call: the first one measures.
                let limit = plugin.batch_limit(export, rest.len());
                let (part, after) = rest.split_at(limit);
                rest = after;
                let base = answers.len();
                match call(plugin, part) {
                    Ok(None) => {
                        abstained = true;
                        break;
                    }
                    Ok(Some(decided)) => {
                        answers.extend(decided.decisions.into_iter().map(|d| (d, None)));
                        reasons.extend(
                            decided
                                .reasons
                                .into_iter()
                                .map(|(at, reason)| (base + at as usize, reason)),
                        );
                    }
                    Err(failure) => answers.extend(std::iter::repeat_n(
                        (failed, Some(failure.kind)),
                        part.len(),
                    )),
                }
            }
            if abstained {
                continue;
            }
            for (&i, (decision, failure)) in pending.iter().zip(answers) {
                slots[i] = Slot {
                    decision,
                    by: Some(index),
                    failure,
                    reason: None,
                };
            }
            for (at, reason) in reasons {
                if let Some(&i) = pending.get(at) {
                    slots[i].reason = Some(reason);
                }
            }
            pending.retain(|&i| slots[i].decision == Decision::Rebuild);
        }
        if self.counted {
            count_decisions(&self.plugins, export, &slots);
        }
        slots
            .into_iter()
            .map(|slot| Verdict {
                decision: slot.decision,
                plugin: match slot.by {
                    Some(index) => self.plugins[index].name(),
                    None => unvoted,
                },
                failure: slot.failure,
                reason: slot.reason,
                data: match (slot.by, slot.failure) {
                    (Some(index), None) => self.plugins[index].data_versions(),
                    _ => None,
                },
            })
            .collect()
    }
}

/// Counts a batch's verdicts, per plugin and decision (one increment per
/// pair, not per item).
fn count_decisions(plugins: &[Plugin], export: Export, slots: &[Slot]) {
    let item = export.item();
    let mut counts = vec![[0u64; 2]; plugins.len() + 1];
    for slot in slots {
        let by = slot.by.unwrap_or(plugins.len());
        counts[by][usize::from(slot.decision == Decision::Refuse)] += 1;
    }
    for (index, [rebuilt, refused]) in counts.into_iter().enumerate() {
        let plugin = plugins.get(index).map_or(NO_PLUGIN, |p| p.name().as_str());
        for (decision, n) in [("rebuild", rebuilt), ("refuse", refused)] {
            if n > 0 {
                metrics::counter!(
                    crate::metrics::DECISIONS,
                    "plugin" => plugin,
                    "item" => item,
                    "decision" => decision
                )
                .increment(n);
            }
        }
    }
}

/// A verdict while the chain decides: who decided, by index.
#[derive(Debug, Clone, Copy)]
struct Slot {
    decision: Decision,
    by: Option<usize>,
    failure: Option<FailureKind>,
    reason: Option<Reason>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            decision: Decision::Rebuild,
            by: None,
            failure: None,
            reason: None,
        }
    }
}
