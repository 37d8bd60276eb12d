//! A policy written in Rust and compiled into the embedding program,
//! instead of loaded as a plugin: [`Decider::Native`](super::Decider).
//!
//! For an embedder that decides in its own code, and for `legsync bench
//! --policy native` (`legsync-lab`'s `NativeRules`: the `rules` plugin's
//! engine called directly), which measures the cost of the WebAssembly
//! boundary against an otherwise identical path. It has no limits, no
//! failure policy and no termination notices: it is trusted code.

use crate::model::{CallLeg, Decision};

/// Decisions taken in Rust: one per leg, and one for every link.
pub trait NativePolicy: Send + Sync + std::fmt::Debug {
    /// One decision per leg, in order.
    fn decide_legs(&self, legs: &[CallLeg]) -> Vec<Decision>;
    /// The decision for every link whose two legs were rebuilt.
    fn link_decision(&self) -> Decision;
}
