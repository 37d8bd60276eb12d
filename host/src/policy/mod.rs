//! The policy runtime: WebAssembly plugins that decide every resync.
//!
//! - `runtime`: the one wasmtime engine, its linker and compile cache.
//! - [`plugin`]: one plugin: compiled once, instantiated from an
//!   `InstancePre`, run under its `limits`, re-instantiated after a failure,
//!   `quarantine`d when it keeps failing.
//! - `chain`: plugins in order; first refusal wins; verdicts name the plugin.
//! - [`loader`]: a plugin set from a drop-in directory, with `*.rules` sidecars.
//! - `sandbox`: what a plugin can reach: nothing but a capped log and a clock.
//! - [`contract`]: the contract version check; [`imports`]: what a plugin
//!   imports and what it gets; `cache`: the compile cache.
//! - `export`: the exports the host calls, each with its own health and
//!   `call_cost` (the model that sizes a plugin's batches).
//! - [`sample`]: what a plugin set is tried on before it is trusted;
//!   `blast`: what it would refuse of the calls held, and the guard.
//! - `shadow`: a second set that sees every decision, compared, never
//!   enforced.
//! - [`held`]: the host's held legs as plugins page through them
//!   (`held-legs`); `counters`: a plugin's own counters (`count`).
//! - [`datasets`]: reference data built once and shared with the plugins
//!   granted it (`datasets`).
//! - `lower`: legs written straight into a plugin's memory (the hot path).
//!
//! The modules without a link are private; what callers need of them is
//! re-exported below.

mod bindings;
pub(crate) mod blast;
pub(crate) mod cache;
pub(crate) mod call_cost;
pub(crate) mod chain;
pub mod config;
pub mod contract;
pub(crate) mod counters;
pub mod datasets;
pub(crate) mod decider;
pub(crate) mod error;
pub(crate) mod export;
pub mod held;
pub mod imports;
pub(crate) mod limits;
pub mod loader;
mod lower;
pub mod native;
pub mod plugin;
pub(crate) mod quarantine;
pub(crate) mod runtime;
pub mod sample;
pub(crate) mod sandbox;
pub(crate) mod shadow;

pub use blast::{BlastRadius, Guard, RefusalGroup};
pub use cache::{CacheOutcome, CompileCache};
pub use chain::{NO_MIXER_POLICY, NO_PLUGIN, PolicyChain, Verdict};
pub use config::{FailurePolicy, MAX_INSTANCES, PluginSettings, PolicyConfig};
pub use decider::{Decider, PluginInfo, PolicyHandle};
pub use error::{FailureKind, PluginFailure, PolicyError};
pub use export::Export;
pub use limits::{Limits, LimitsConfig};
pub use plugin::{Plugin, PluginStats};
pub use quarantine::QuarantinePolicy;
pub use runtime::PolicyRuntime;
pub use shadow::{Difference, DifferenceCount, Shadow, ShadowSummary};
