//! Fixtures shared by the criterion benches in `benches/`: realistic legs
//! (the engine simulator's preload) and plugin sets built from `plugins/`.

use legsync::model::{CallLeg, Link};
use legsync::policy::{PolicyChain, PolicyConfig, PolicyRuntime, loader};
use legsync_lab::sim::state::EngineState;
use std::path::Path;

/// The rules the `rules` plugin and the native path both run.
pub const RULES: &str = legsync_lab::bench::BENCH_RULES;

/// `n` answered legs in `n / 2` links, as engine-sim preloads them.
pub fn legs(n: u64) -> (Vec<CallLeg>, Vec<Link>) {
    let mut state = EngineState::default();
    state.preload(n, legsync::model::now_ms());
    state.snapshot()
}

/// A plugin directory with `(stem, built plugin file, rules)` entries.
pub fn plugin_dir(entries: &[(&str, &str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (stem, file, rules) in entries {
        let source = Path::new(legsync::BUILT_PLUGINS_DIR).join(format!("{file}.wasm"));
        std::fs::copy(&source, dir.path().join(format!("{stem}.wasm"))).expect("built plugin");
        if let Some(rules) = rules {
            std::fs::write(dir.path().join(format!("{stem}.rules")), rules).expect("rules");
        }
    }
    dir
}

/// Loads a chain from `dir` with `batch_size` items per plugin call.
pub fn chain(runtime: &PolicyRuntime, dir: &Path, batch_size: usize) -> PolicyChain {
    let config = PolicyConfig {
        batch_size,
        ..PolicyConfig::default()
    };
    loader::load_dir(runtime, dir, &config).expect("plugin set loads")
}
