//! What the supervisor asks for decisions: the plugin chain, or the same
//! rules compiled natively (for `--policy native` benchmarks), behind one
//! swappable handle.
//!
//! A resync takes the current decider once and keeps it to the end, so a hot
//! reload in the middle never splits a resync across two plugin sets.

use super::chain::{PolicyChain, Verdict};
use super::native::NativeRules;
use crate::model::{CallLeg, Link, PluginName, TerminationReason};
use std::sync::{Arc, RwLock};

/// The name recorded for decisions of the native rules.
pub const NATIVE: &str = "native-rules";

/// A set of rules that decides.
#[derive(Debug, Clone)]
pub enum Decider {
    Chain(Arc<PolicyChain>),
    Native(Arc<NativeRules>),
}

impl Decider {
    pub fn decide_legs(&self, legs: &[CallLeg]) -> Vec<Verdict> {
        match self {
            Decider::Chain(chain) => chain.decide_legs(legs),
            Decider::Native(rules) => {
                let name = PluginName::new(NATIVE);
                rules
                    .decide_legs(legs)
                    .into_iter()
                    .map(|decision| Verdict {
                        decision,
                        plugin: name,
                        failure: None,
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
                    })
                    .collect()
            }
        }
    }

    pub fn notify_terminated(&self, ended: &[CallLeg], reason: TerminationReason) {
        if let Decider::Chain(chain) = self {
            chain.notify_terminated(ended, reason);
        }
    }

    /// `name@hash` of every plugin, in chain order, for logs and audits.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Decider::Chain(chain) => chain
                .plugins()
                .iter()
                .map(|p| format!("{}@{}", p.name(), &p.hash()[..12]))
                .collect(),
            Decider::Native(_) => vec![NATIVE.to_string()],
        }
    }
}

/// The current decider; swapped whole by a reload.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Decider>>,
}

impl PolicyHandle {
    pub fn new(decider: Decider) -> Self {
        PolicyHandle {
            current: Arc::new(RwLock::new(decider)),
        }
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
