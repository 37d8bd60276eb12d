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
        "plugin {plugin} was built against legsync:policy@{found}, but this host loads legsync:policy@{expected}; rebuild it against this host's wit/policy.wit: Rust with legsync-plugin-sdk (plugins/sdk), Python with componentize-py and plugins/python/legsync_plugin.py, JavaScript with jco componentize and plugins/js/legsync.js (docs/plugin-guide.md)"
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
    #[error("{} is {bytes} bytes; a rules file may hold at most {max} (MAX_RULES_BYTES)", path.display())]
    RulesTooLarge { path: PathBuf, bytes: u64, max: u64 },
    #[error("plugin {plugin} failed in init: {failure}")]
    InitFailed {
        plugin: String,
        failure: PluginFailure,
    },
    #[error(
        "plugin {plugin} asked for dataset {dataset} in init, which its config does not grant ([policy.plugins.{plugin}] datasets = [...])"
    )]
    DatasetNotGranted { plugin: String, dataset: String },
    #[error(transparent)]
    Dataset(#[from] super::datasets::DatasetError),
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
    /// The resync's time for decisions ran out: the plugin was not called,
    /// its failure policy decided.
    ResyncBudget,
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
            FailureKind::ResyncBudget => "resync-budget",
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
    /// A failure; its detail (a plugin's own words, a trap's backtrace) is
    /// cut to `MAX_DETAIL` (1 KiB): a log line, not a dump.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        PluginFailure {
            kind,
            detail: clip(detail.into()),
        }
    }
}

/// The longest text from a plugin kept in a log line or an error.
pub const MAX_DETAIL: usize = 1024;

/// `text`, cut at a character boundary to [`MAX_DETAIL`] bytes, saying how
/// much was cut.
pub fn clip(mut text: String) -> String {
    if text.len() <= MAX_DETAIL {
        return text;
    }
    let cut = text.len();
    let mut end = MAX_DETAIL;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("... ({} more bytes)", cut - end));
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_texts_are_clipped_at_a_character_boundary() {
        assert_eq!(super::clip("short".into()), "short");
        let long = "ł".repeat(3_000);
        let clipped = super::clip(long);
        assert!(clipped.len() < 1_100, "{}", clipped.len());
        assert!(
            clipped.ends_with("... (4976 more bytes)"),
            "{}",
            &clipped[1000..]
        );
    }
}
