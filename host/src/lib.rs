//! legsync: a call-leg resynchronization host, as a library.
//!
//! A call-control application keeps a context for every call leg and link a
//! media gateway's engine carries. When the two lose each other, legsync
//! re-synchronizes from the engine, asks sandboxed WebAssembly policy
//! plugins what to do with every leg it did not know, and bills every
//! answered call exactly once in its ledger.
//!
//! This crate is the product: what `legsync run` runs, and what an embedder
//! needs. The `legsync` binary (crate `legsync-cli`) adds the command line;
//! the engine simulator, the demo and the bench harness live beside it in
//! `legsync-lab`, which depends on this crate and never the reverse.
//!
//! # Map
//!
//! From the wire up:
//!
//! - [`protocol`]: the wire protocol with the engine (frames, messages).
//! - [`engine`]: the link to the engine: connect, hello, heartbeats,
//!   reconnect backoff; [`tls`]: the link over mutual TLS.
//! - [`model`]: legs, links, decisions and termination reasons: the types
//!   every layer shares, and the rule that names a call.
//! - `ids` and `legs` (private): the host's tables of legs and links (the
//!   application's contexts), millions of them.
//! - `resync` (private): the diff of a snapshot against the table.
//! - [`mixers`]: the conference mixers the host holds (protocol 4), their
//!   joins, and the diff of a snapshot's mixers.
//! - [`policy`]: the WebAssembly plugin runtime: load, limits, chain,
//!   failures, batches sized to each plugin.
//! - [`cdr`]: the ledger (the CDR file): durable START / END records,
//!   checkpoints, rotation, billing and checking.
//! - [`supervisor`]: the state machine around one engine link: resync,
//!   live events, the grace timer, the pair's roles.
//! - [`events`]: the audit trail (the event log and in-process
//!   subscribers); [`metrics`]: the Prometheus metrics.
//! - [`config`]: the config file; [`app`]: from a config to a running
//!   host; [`reload`]: hot reload of the plugin set, its blast radius and
//!   guard.
//! - [`recording`]: resyncs recorded for `legsync replay`.
//! - [`admin`]: the admin endpoint (metrics, health, status, control) and
//!   its client.
//! - [`embedded`]: the example plugins carried in the binary.
//!
//! The public API is what the `legsync` binary and an embedder need: the
//! config, the app, the supervisor, the ledger, the admin client, the
//! policy runtime's entry points. The tables and the diff stay private;
//! `internals` (hidden) lends two of them to the benches and `plugin eval`
//! and is not API.

pub mod admin;
pub mod app;
pub mod cdr;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod events;
mod ids;
mod json_line;
mod legs;
pub mod metrics;
pub mod mixers;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod reload;
mod repeated;
mod resync;
pub mod ship;
pub mod supervisor;
pub mod tls;

/// What the criterion benches and `legsync plugin eval` reach below the
/// API: the host's leg table and its snapshot diff (the link rule `plugin
/// eval` shows). Not part of the API: it changes with the implementation.
#[doc(hidden)]
pub mod internals {
    pub use crate::legs::{LegTable, SlotHint};
    pub use crate::resync::{LinkSides, SnapshotDiff, sort_links};
}

/// Where `host/build.rs` put the plugins built from `plugins/` (one
/// `NAME.wasm` per crate, `-` in crate names turned into `_`). Used by the
/// demo, the tests and the benchmarks.
pub const BUILT_PLUGINS_DIR: &str = env!("LEGSYNC_BUILT_PLUGINS");

/// The commit this build comes from (`unknown` outside a git checkout),
/// and its date: `legsync --version` and the `legsync_build_info` metric.
pub const BUILD_COMMIT: &str = env!("LEGSYNC_COMMIT");
pub const BUILD_COMMIT_DATE: &str = env!("LEGSYNC_COMMIT_DATE");
