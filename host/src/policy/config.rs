//! The `[policy]` section of the host config: where plugins come from, and
//! per-plugin limits and failure policy.
//!
//! ```toml
//! [policy]
//! plugin_dir = "/etc/legsync/plugins.d"
//! cache_dir = "/var/cache/legsync"
//! cache_max_mb = 512
//! batch_size = 1024
//!
//! [policy.defaults]          # every plugin
//! failure = "fail-open"
//! memory_mb = 64
//! deadline_ms = 100
//!
//! [policy.plugins.20-rules]  # one plugin, by file stem
//! failure = "fail-closed"
//! deadline_ms = 20
//! instances = 2              # stateless: decide two batches at once
//! max_calls_per_instance = 100000  # a fresh instance after this many calls
//! datasets = ["blocked", "rates"]  # granted: plugins/datasets/blocked.set...
//! ```

use super::limits::{Limits, LimitsConfig};
use super::quarantine::QuarantinePolicy;
use crate::model::Decision;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What the host decides for the items of a plugin that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Rebuild: a broken plugin never drops answered calls. The default.
    #[default]
    FailOpen,
    /// Refuse: a broken plugin never lets an unchecked call through.
    FailClosed,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail-open",
            FailurePolicy::FailClosed => "fail-closed",
        }
    }

    pub fn decision(self) -> Decision {
        match self {
            FailurePolicy::FailOpen => Decision::Rebuild,
            FailurePolicy::FailClosed => Decision::Refuse,
        }
    }
}

/// Settings of one plugin, as written in the config (everything optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub failure: Option<FailurePolicy>,
    #[serde(flatten)]
    pub limits: LimitsConfig,
    /// Consecutive failures before quarantine (default 3).
    pub quarantine_after: Option<u32>,
    /// First quarantine length in milliseconds (default 1000; doubles).
    pub quarantine_base_ms: Option<u64>,
    /// Instances that may decide at once (default 1). Each has its own
    /// memory and state, so more than one suits only plugins that keep no
    /// state across calls (rules, not counters such as a cap per NAP).
    pub instances: Option<u32>,
    /// Calls after which an instance is replaced by a fresh one (none: only
    /// near its memory cap or after a failure). Bounds what a slow leak in
    /// a plugin can grow to; a plugin that keeps state rebuilds it in
    /// `init` (`held-legs`).
    pub max_calls_per_instance: Option<u64>,
    /// The datasets the plugin may open, by name (a file `NAME.set`,
    /// `NAME.map` or `NAME.prefix` in the dataset directory). Per plugin
    /// only: nothing is granted by default.
    pub datasets: Option<Vec<String>>,
}

impl PluginConfig {
    /// `self` over `base`.
    fn over(&self, base: &PluginConfig) -> PluginConfig {
        PluginConfig {
            failure: self.failure.or(base.failure),
            limits: LimitsConfig {
                memory_mb: self.limits.memory_mb.or(base.limits.memory_mb),
                deadline_ms: self.limits.deadline_ms.or(base.limits.deadline_ms),
            },
            quarantine_after: self.quarantine_after.or(base.quarantine_after),
            quarantine_base_ms: self.quarantine_base_ms.or(base.quarantine_base_ms),
            instances: self.instances.or(base.instances),
            max_calls_per_instance: self.max_calls_per_instance.or(base.max_calls_per_instance),
            datasets: self.datasets.clone(),
        }
    }
}

/// The resolved settings of one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginSettings {
    pub limits: Limits,
    pub failure: FailurePolicy,
    pub quarantine: QuarantinePolicy,
    /// At least 1.
    pub instances: u32,
    /// Calls after which an instance is replaced (none: no such bound).
    pub max_calls_per_instance: Option<u64>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            limits: Limits::default(),
            failure: FailurePolicy::default(),
            quarantine: QuarantinePolicy::default(),
            instances: 1,
            max_calls_per_instance: None,
        }
    }
}

/// Most instances one plugin may run (the host has few cores to give).
pub const MAX_INSTANCES: u32 = 16;

/// The `[policy]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The drop-in directory of `*.wasm` plugins (and `*.rules` sidecars).
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// Where compiled plugins are cached; none disables the cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The compile cache's size bound, in MB (default 512): past it, the
    /// entries used least recently are deleted.
    #[serde(default = "default_cache_max_mb")]
    pub cache_max_mb: u64,
    /// Legs per plugin call (default 1024). Bigger batches amortize the call,
    /// smaller ones bound the work lost to one failure.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub defaults: PluginConfig,
    /// Per-plugin overrides, by file stem (`20-rules` for `20-rules.wasm`).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// What a reloaded set may refuse of the calls held (`[policy.guard]`).
    #[serde(default)]
    pub guard: super::blast::Guard,
    /// A second plugin directory whose set decides alongside the live one,
    /// compared and never enforced (operations guide, "Shadow plugins").
    /// Its plugins take their settings from `defaults` and `plugins` as
    /// live ones do.
    #[serde(default)]
    pub shadow_dir: Option<PathBuf>,
    /// Where the datasets are (default: `datasets/` in the plugin
    /// directory). See [`super::datasets`].
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
}

fn default_batch_size() -> usize {
    1024
}

fn default_cache_max_mb() -> u64 {
    super::cache::DEFAULT_MAX_MB
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            plugin_dir: None,
            cache_dir: None,
            cache_max_mb: default_cache_max_mb(),
            batch_size: default_batch_size(),
            defaults: PluginConfig::default(),
            plugins: BTreeMap::new(),
            guard: Default::default(),
            shadow_dir: None,
            dataset_dir: None,
        }
    }
}

impl PolicyConfig {
    /// The settings of the plugin named `name`.
    pub fn settings_for(&self, name: &str) -> PluginSettings {
        let cfg = self
            .plugins
            .get(name)
            .map_or_else(|| self.defaults.clone(), |p| p.over(&self.defaults));
        let default_quarantine = QuarantinePolicy::default();
        PluginSettings {
            limits: cfg.limits.apply(Limits::default()),
            failure: cfg.failure.unwrap_or_default(),
            quarantine: QuarantinePolicy {
                threshold: cfg
                    .quarantine_after
                    .unwrap_or(default_quarantine.threshold)
                    .max(1),
                base: cfg
                    .quarantine_base_ms
                    .map_or(default_quarantine.base, Duration::from_millis),
                max: default_quarantine.max,
            },
            instances: cfg.instances.unwrap_or(1),
            max_calls_per_instance: cfg.max_calls_per_instance,
        }
    }

    /// The datasets granted to the plugin named `name`.
    pub fn datasets_for(&self, name: &str) -> &[String] {
        self.plugins
            .get(name)
            .and_then(|p| p.datasets.as_deref())
            .unwrap_or_default()
    }

    /// Where the datasets of the plugins in `plugin_dir` are.
    pub fn dataset_dir(&self, plugin_dir: &std::path::Path) -> PathBuf {
        self.dataset_dir
            .clone()
            .unwrap_or_else(|| plugin_dir.join("datasets"))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        self.guard.validate()?;
        if self.defaults.datasets.is_some() {
            return Err("policy.defaults.datasets: datasets are granted per plugin ([policy.plugins.NAME] datasets = [...]), never to every plugin".into());
        }
        for (plugin, cfg) in &self.plugins {
            for name in cfg.datasets.iter().flatten() {
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !valid {
                    return Err(format!(
                        "policy.plugins.{plugin}.datasets: {name:?} is not a dataset name (1 to 64 of a-z, 0-9, _ and -)"
                    ));
                }
            }
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(format!(
                "policy.batch_size must be between 1 and 65536 (it is {})",
                self.batch_size
            ));
        }
        if !(1..=1_048_576).contains(&self.cache_max_mb) {
            return Err(format!(
                "policy.cache_max_mb must be between 1 and 1048576 (it is {})",
                self.cache_max_mb
            ));
        }
        for (name, cfg) in std::iter::once(("defaults", &self.defaults))
            .chain(self.plugins.iter().map(|(n, c)| (n.as_str(), c)))
        {
            let within =
                |key: &str, value: Option<u64>, range: std::ops::RangeInclusive<u64>| match value {
                    Some(v) if !range.contains(&v) => Err(format!(
                        "policy.{name}.{key} must be between {} and {} (it is {v})",
                        range.start(),
                        range.end()
                    )),
                    _ => Ok(()),
                };
            within(
                "memory_mb",
                cfg.limits.memory_mb.map(|m| m as u64),
                1..=65_536,
            )?;
            within("deadline_ms", cfg.limits.deadline_ms, 1..=600_000)?;
            within("quarantine_base_ms", cfg.quarantine_base_ms, 1..=3_600_000)?;
            within(
                "quarantine_after",
                cfg.quarantine_after.map(u64::from),
                1..=1_000_000,
            )?;
            within(
                "max_calls_per_instance",
                cfg.max_calls_per_instance,
                1..=u64::MAX,
            )?;
            if let Some(n) = cfg.instances
                && !(1..=MAX_INSTANCES).contains(&n)
            {
                return Err(format!(
                    "policy.{name}.instances must be between 1 and {MAX_INSTANCES}, not {n}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_plugin_settings_override_the_defaults() {
        let cfg: PolicyConfig = toml::from_str(
            "[defaults]\nmemory_mb = 32\nfailure = \"fail-closed\"\n[plugins.20-rules]\ndeadline_ms = 7\n",
        )
        .unwrap();
        let rules = cfg.settings_for("20-rules");
        assert_eq!(rules.limits.memory_bytes, 32 << 20);
        assert_eq!(rules.limits.call_deadline, Duration::from_millis(7));
        assert_eq!(rules.failure, FailurePolicy::FailClosed);
        assert_eq!(rules.instances, 1);
        let other = cfg.settings_for("10-other");
        assert_eq!(other.limits.call_deadline, Limits::default().call_deadline);
        let cfg: PolicyConfig =
            toml::from_str("[defaults]\ninstances = 2\n[plugins.30-cap]\ninstances = 1\n").unwrap();
        assert_eq!(cfg.settings_for("20-rules").instances, 2);
        assert_eq!(cfg.settings_for("30-cap").instances, 1);
    }

    #[test]
    fn unknown_keys_and_zero_limits_are_rejected() {
        assert!(toml::from_str::<PolicyConfig>("[defaults]\nmemroy_mb = 1\n").is_err());
        let cfg: PolicyConfig = toml::from_str("[defaults]\nmemory_mb = 0\n").unwrap();
        assert!(cfg.validate().unwrap_err().contains("memory_mb"));
        for bad in [0, MAX_INSTANCES + 1] {
            let cfg: PolicyConfig =
                toml::from_str(&format!("[plugins.20-rules]\ninstances = {bad}\n")).unwrap();
            let err = cfg.validate().unwrap_err();
            assert!(
                err.contains("policy.20-rules.instances must be between 1 and 16"),
                "{err}"
            );
        }
    }
}
