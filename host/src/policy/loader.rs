//! Loading a plugin set from a drop-in directory, `conf.d` style.
//!
//! Every `*.wasm` in the directory is a plugin, named by its file stem; the
//! chain runs them in file-name order (`10-allow.wasm` before
//! `20-rules.wasm`). A sidecar `NAME.rules` holds the plugin's rules text,
//! passed verbatim to its `init`. Any plugin that fails to load fails the
//! whole set: a partial chain would decide differently from what the operator
//! wrote.

use super::chain::PolicyChain;
use super::config::PolicyConfig;
use super::error::PolicyError;
use super::plugin::Plugin;
use super::runtime::PolicyRuntime;
use std::path::{Path, PathBuf};

/// The largest rules file handed to a plugin's `init` (it is copied into
/// the plugin's memory, which has a cap).
pub const MAX_RULES_BYTES: u64 = 16 << 20;

/// One plugin found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFile {
    pub name: String,
    pub wasm: PathBuf,
    /// The `NAME.rules` sidecar, when present.
    pub rules: Option<PathBuf>,
}

/// Lists the plugins of `dir` in chain order.
pub fn scan(dir: &Path) -> Result<Vec<PluginFile>, PolicyError> {
    let read_error = |error| PolicyError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_none_or(|e| e != "wasm") || !path.is_file() {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let rules = path.with_extension("rules");
        files.push(PluginFile {
            name,
            rules: rules.is_file().then_some(rules),
            wasm: path,
        });
    }
    files.sort_by(|a, b| a.wasm.file_name().cmp(&b.wasm.file_name()));
    Ok(files)
}

/// Loads one plugin file with its sidecar, configured settings and the
/// datasets granted to it (from `dataset_dir`).
pub fn load_plugin(
    runtime: &PolicyRuntime,
    file: &PluginFile,
    config: &PolicyConfig,
    dataset_dir: &Path,
) -> Result<Plugin, PolicyError> {
    let wasm = std::fs::read(&file.wasm).map_err(|error| PolicyError::Read {
        path: file.wasm.clone(),
        error,
    })?;
    let rules = match &file.rules {
        Some(path) if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_RULES_BYTES) => {
            return Err(PolicyError::RulesTooLarge {
                path: path.clone(),
                bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
                max: MAX_RULES_BYTES,
            });
        }
        Some(path) => std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: path.clone(),
            error,
        })?,
        None => String::new(),
    };
    let datasets =
        runtime
            .datasets()
            .grant(dataset_dir, &file.name, config.datasets_for(&file.name))?;
    Plugin::load(
        runtime,
        &file.name,
        &wasm,
        rules,
        config.settings_for(&file.name),
        datasets,
    )
    .map_err(|e| match e {
        PolicyError::NotAComponent { reason, .. } => PolicyError::NotAComponent {
            path: file.wasm.clone(),
            reason,
        },
        other => other,
    })
}

/// Loads every plugin of `dir` into a chain; fails if any plugin fails.
pub fn load_dir(
    runtime: &PolicyRuntime,
    dir: &Path,
    config: &PolicyConfig,
) -> Result<PolicyChain, PolicyError> {
    config.validate().map_err(PolicyError::Config)?;
    let files = scan(dir)?;
    for configured in config.plugins.keys() {
        if !files.iter().any(|f| &f.name == configured) {
            tracing::warn!(plugin = %configured, dir = %dir.display(), "the config has settings for a plugin that is not in the plugin directory");
        }
    }
    let dataset_dir = config.dataset_dir(dir);
    let plugins = files
        .iter()
        .map(|file| load_plugin(runtime, file, config, &dataset_dir))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PolicyChain::new(plugins, config.batch_size))
}
