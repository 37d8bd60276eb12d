//! What the supervisor asks for decisions: the plugin chain, or the same
//! rules compiled natively (for `--policy native` benchmarks), behind one
//! swappable handle.
//!
//! A resync takes the current decider once and keeps it to the end, so a hot
//! reload in the middle never splits a resync across two plugin sets.

use super::chain::{PolicyChain, Verdict};
use super::native::NativePolicy;
use crate::model::{CallLeg, EndedLeg, Link, PluginName, TerminationReason};
use std::sync::{Arc, RwLock};

/// The name recorded for decisions of the native rules.
pub const NATIVE: &str = "native-rules";

/// A set of rules that decides.
#[derive(Debug, Clone)]
pub enum Decider {
    Chain(Arc<PolicyChain>),
    /// A policy in Rust (see [`super::native`]).
    Native(Arc<dyn NativePolicy>),
}

impl Decider {
    /// Verdicts without calling any plugin, as their failure policies
    /// decide: refused by the first fail-closed plugin of the chain, else
    /// rebuilt (a resync past its time for decisions).
    pub fn decide_by_failure_policy(&self, count: usize) -> Vec<Verdict> {
        let verdict = match self {
            Decider::Chain(chain) => {
                let closed = chain
                    .plugins()
                    .iter()
                    .find(|p| p.settings().failure == crate::policy::FailurePolicy::FailClosed);
                match (closed, chain.plugins().last()) {
                    (Some(plugin), _) => (crate::model::Decision::Refuse, plugin.name()),
                    (None, Some(plugin)) => (crate::model::Decision::Rebuild, plugin.name()),
                    (None, None) => (
                        crate::model::Decision::Rebuild,
                        PluginName::new(super::chain::NO_PLUGIN),
                    ),
                }
            }
            Decider::Native(_) => (crate::model::Decision::Rebuild, PluginName::new(NATIVE)),
        };
        let failure = matches!(self, Decider::Chain(c) if !c.plugins().is_empty())
            .then_some(crate::policy::FailureKind::ResyncBudget);
        vec![
            Verdict {
                decision: verdict.0,
                plugin: verdict.1,
                failure,
                reason: None,
                data: None,
            };
            count
        ]
    }

    pub fn decide_legs(&self, legs: &[CallLeg]) -> Vec<Verdict> {
        self.decide_legs_until(legs, None)
    }

    /// [`Decider::decide_legs`] within a resync's time for decisions: see
    /// [`PolicyChain::decide_legs_until`].
    pub fn decide_legs_until(
        &self,
        legs: &[CallLeg],
        until: Option<std::time::Instant>,
    ) -> Vec<Verdict> {
        match self {
            Decider::Chain(chain) => chain.decide_legs_until(legs, until),
            Decider::Native(rules) => {
                let name = PluginName::new(NATIVE);
                rules
                    .decide_legs(legs)
                    .into_iter()
                    .map(|decision| Verdict {
                        decision,
                        plugin: name,
                        failure: None,
                        reason: None,
                        data: None,
                    })
                    .collect()
            }
        }
    }

    pub fn decide_links(&self, links: &[Link]) -> Vec<Verdict> {
        match self {
            Decider::Chain(chain) => chain.decide_links(links),
            Decider::Native(rules) => {
                let name = PluginName::new(NATIVE);
                let decision = rules.link_decision();
                links
                    .iter()
                    .map(|_| Verdict {
                        decision,
                        plugin: name,
                        failure: None,
                        reason: None,
                        data: None,
                    })
                    .collect()
            }
        }
    }

    /// The mixer decision for unknown mixers (see
    /// [`PolicyChain::decide_mixers`]). Native rules have none: every
    /// unknown mixer is rebuilt, named `no-mixer-policy`.
    pub fn decide_mixers(&self, mixers: &[crate::mixers::HeldMixer]) -> Vec<Verdict> {
        match self {
            Decider::Chain(chain) => chain.decide_mixers(mixers),
            Decider::Native(_) => {
                let name = PluginName::new(super::chain::NO_MIXER_POLICY);
                mixers
                    .iter()
                    .map(|_| Verdict {
                        decision: crate::model::Decision::Rebuild,
                        plugin: name,
                        failure: None,
                        reason: None,
                        data: None,
                    })
                    .collect()
            }
        }
    }

    /// Tells the plugins that `mixers` ended for `reason`.
    pub fn notify_mixers_terminated(
        &self,
        mixers: &[crate::mixers::HeldMixer],
        reason: TerminationReason,
    ) {
        if let Decider::Chain(chain) = self {
            chain.notify_mixers_terminated(mixers, reason);
        }
    }

    /// The datasets its plugins consult, each once, with its version.
    pub fn datasets(&self) -> Vec<super::datasets::DatasetInfo> {
        match self {
            Decider::Chain(chain) => chain.datasets(),
            Decider::Native(_) => Vec::new(),
        }
    }

    pub fn notify_terminated(&self, ended: &[EndedLeg], reason: TerminationReason) {
        if let Decider::Chain(chain) = self {
            chain.notify_terminated(ended, reason);
        }
    }

    /// Serves `source` to the plugins' `held-legs` (in every runtime the
    /// chain's plugins run in).
    pub fn serve_held_legs(&self, source: Arc<dyn super::held::HeldLegs>) {
        if let Decider::Chain(chain) = self {
            for plugin in chain.plugins() {
                plugin.runtime().held_legs().serve(source.clone());
            }
        }
    }

    /// What the admin endpoint shows of every plugin, in chain order.
    pub fn plugins_info(&self) -> Vec<PluginInfo> {
        match self {
            Decider::Chain(chain) => chain
                .plugins()
                .iter()
                .map(|p| PluginInfo {
                    name: p.name().as_str().to_string(),
                    hash: p.hash().to_string(),
                    rules_hash: p.rules_hash(),
                    failure: p.settings().failure.as_str(),
                    quarantined: p.is_quarantined(),
                    calls: p.stats().calls,
                    failures: p.stats().failures,
                })
                .collect(),
            Decider::Native(_) => vec![PluginInfo {
                name: NATIVE.to_string(),
                hash: String::new(),
                rules_hash: None,
                failure: "fail-open",
                quarantined: false,
                calls: 0,
                failures: 0,
            }],
        }
    }

    /// `name@hash` of every plugin (and `rules@hash` of its rules), in
    /// chain order, for logs and audits.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Decider::Chain(chain) => chain
                .plugins()
                .iter()
                .map(|p| match p.rules_hash() {
                    Some(rules) => {
                        format!("{}@{} rules@{}", p.name(), &p.hash()[..12], &rules[..12])
                    }
                    None => format!("{}@{}", p.name(), &p.hash()[..12]),
                })
                .collect(),
            Decider::Native(_) => vec![NATIVE.to_string()],
        }
    }
}

/// The current decider; swapped whole by a reload.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Decider>>,
    /// The shadow set, if one is configured (see [`super::shadow`]).
    shadow: Arc<RwLock<Option<Arc<super::shadow::Shadow>>>>,
}

impl PolicyHandle {
    pub fn new(decider: Decider) -> Self {
        PolicyHandle {
            current: Arc::new(RwLock::new(decider)),
            shadow: Default::default(),
        }
    }

    /// The shadow set, if any.
    pub fn shadow(&self) -> Option<Arc<super::shadow::Shadow>> {
        self.shadow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets (or, with `None`, removes) the shadow set.
    pub fn set_shadow(&self, shadow: Option<super::shadow::Shadow>) {
        *self.shadow.write().unwrap_or_else(|e| e.into_inner()) = shadow.map(Arc::new);
    }

    /// The decider to use for one resync or one batch.
    pub fn current(&self) -> Decider {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the decider atomically; returns the old one.
    pub fn swap(&self, decider: Decider) -> Decider {
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            decider,
        )
    }
}

/// One plugin of the live set, for `/status` and `legsync status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// SHA-256 of the `.wasm` (hex).
    pub hash: String,
    /// SHA-256 of the rules text its `init` got (hex), if any.
    pub rules_hash: Option<String>,
    /// `fail-open` or `fail-closed`.
    pub failure: &'static str,
    pub quarantined: bool,
    pub calls: u64,
    pub failures: u64,
}
