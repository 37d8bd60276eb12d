//! Why a plugin could not be loaded, and why a call into one failed.

use serde::Serialize;
use std::path::PathBuf;

/// A plugin (or a plugin set) that cannot be loaded. Loading never replaces a
/// working set with a failed one, so these are reported, not fatal.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    // The cause in the message only (as a `source` too, `{:#}` would
    // print it twice).
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a valid WebAssembly component: {reason}", path.display())]
    NotAComponent { path: PathBuf, reason: String },
    #[error(
        "plugin {plugin} was built against legsync:policy@{found}, but this host speaks legsync:policy@{expected}; rebuild it with the SDK for {expected}"
    )]
    IncompatibleContract {
        plugin: String,
        found: String,
        expected: String,
    },
    #[error(
        "plugin {plugin} does not export legsync:policy/policy@{expected} (it exports: {exports})"
    )]
    MissingExport {
        plugin: String,
        expected: String,
        exports: String,
    },
    #[error("plugin {plugin} cannot be instantiated: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error("plugin {plugin} rejected its rules: {message}")]
    InitRejected { plugin: String, message: String },
    #[error("plugin {plugin} failed in init: {failure}")]
    InitFailed {
        plugin: String,
        failure: PluginFailure,
    },
    #[error("invalid policy configuration: {0}")]
    Config(String),
}

/// How a call into a plugin failed. Each kind gets the plugin's failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The guest trapped (a Rust panic, `unreachable`, out of bounds...).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    MemoryCap,
    /// The guest answered, but not with one decision per item.
    Malformed,
    /// A fresh instance could not be created or initialised.
    Instantiate,
    /// The plugin kept failing and is benched for a while; it was not called.
    Quarantined,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::MemoryCap => "memory-cap",
            FailureKind::Malformed => "malformed",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

/// One failed call, with the detail for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct PluginFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl PluginFailure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        PluginFailure {
            kind,
            detail: detail.into(),
        }
    }
}
