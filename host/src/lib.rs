//! legsync: a call-leg resynchronization host.
//!
//! A call-control application keeps a context for every call leg and link a
//! media gateway's engine carries. When the two lose each other, legsync
//! re-synchronizes from the engine and asks sandboxed WebAssembly policy
//! plugins what to do with every leg it did not know.
//!
//! - [`model`]: legs, links, decisions, termination reasons.
//! - [`policy`]: the wasmtime plugin runtime: load, limits, chain, failures.

pub mod admin;
pub mod app;
pub mod bench;
pub mod cdr;
pub mod cli;
pub mod config;
pub mod demo;
pub mod embedded;
pub mod engine;
pub mod events;
pub mod ids;
mod json_line;
pub mod legs;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod reload;
mod repeated;
pub mod resync;
pub mod sim;
pub mod supervisor;
pub mod tls;

/// Where `host/build.rs` put the plugins built from `plugins/` (one
/// `NAME.wasm` per crate, `-` in crate names turned into `_`). Used by the
/// demo, the tests and the benchmarks.
pub const BUILT_PLUGINS_DIR: &str = env!("LEGSYNC_BUILT_PLUGINS");
