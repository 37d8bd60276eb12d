//! The disk cache of compiled plugins.
//!
//! Compiling a component takes 25–50 ms for a Rust plugin and several seconds
//! for a Python or JavaScript one; the cache makes restarts and hot reloads
//! cheap. An entry is keyed by the SHA-256 of the component and by the
//! engine's compatibility hash (wasmtime version and every setting that
//! changes the code), and carries a SHA-256 of its own payload: a stale,
//! truncated or corrupt entry is detected, ignored and rebuilt, never loaded.
//!
//! The cache is bounded (`policy.cache_max_mb`, default 512 MB): each entry's
//! modification time is its last use (set when written and at every hit),
//! and after each new entry the least recently used ones are deleted until
//! the cache fits. A day of plugin builds once left 657 MB behind.

use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"LSYNCC01";

/// What the cache did for one load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid entry.
    Hit,
    /// No entry: compiled, and stored.
    Miss,
    /// An entry existed but could not be trusted: compiled and replaced.
    Rebuilt { reason: String },
    /// No cache configured: compiled.
    Disabled,
}

/// The default size bound of the cache, in MB.
pub const DEFAULT_MAX_MB: u64 = 512;

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl CompileCache {
    /// The cache in `dir`, bounded to `DEFAULT_MAX_MB`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_MB << 20,
        }
    }

    /// The same cache bounded to `mb` MB.
    pub fn with_max_mb(self, mb: u64) -> Self {
        self.with_max_bytes(mb.saturating_mul(1 << 20))
    }

    /// The same cache bounded to `bytes`.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The entry for a component's bytes under this engine.
    pub fn entry_path(&self, engine: &wasmtime::Engine, wasm: &[u8]) -> PathBuf {
        let mut compat = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            hex(&Sha256::digest(wasm)),
            compat.finish()
        ))
    }

    /// Loads the compiled form of `wasm`, from the cache when a valid entry
    /// exists, compiling (and storing) it otherwise.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, wasm);
        let outcome = match std::fs::read(&path) {
            Ok(entry) => match deserialize_entry(engine, &entry) {
                Ok(component) => {
                    mark_used(&path);
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(reason) => {
                    tracing::warn!(entry = %path.display(), %reason, "ignoring a bad compile-cache entry");
                    CacheOutcome::Rebuilt { reason }
                }
            },
            Err(_) => CacheOutcome::Miss,
        };
        let component = Component::new(engine, wasm)?;
        match self.store(&path, &component) {
            Ok(()) => self.evict(&path),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache")
            }
        }
        Ok((component, outcome))
    }

    /// Deletes the least recently used entries until the cache fits its
    /// bound; never `keep`, the entry just written.
    fn evict(&self, keep: &Path) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort();
        let (mut removed, mut freed) = (0, 0);
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed += 1;
                freed += len;
            }
        }
        tracing::info!(dir = %self.dir.display(), removed, freed_mb = freed >> 20, max_mb = self.max_bytes >> 20, "compile cache trimmed: least recently used entries deleted");
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize()?;
        let mut entry = Vec::with_capacity(payload.len() + 40);
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        std::fs::create_dir_all(&self.dir)?;
        // Write beside, then rename: a reader never sees half an entry.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &entry)?;
        std::fs::rename(&tmp, path)?;
        mark_used(path);
        Ok(())
    }
}

/// Records a use of an entry: its modification time, to the nanosecond
/// (the file system's own stamps can be a few milliseconds coarse).
fn mark_used(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn deserialize_entry(engine: &wasmtime::Engine, entry: &[u8]) -> Result<Component, String> {
    let body = entry
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a legsync cache entry (bad magic)")?;
    if body.len() < 32 {
        return Err("truncated entry".into());
    }
    let (digest, payload) = body.split_at(32);
    if Sha256::digest(payload).as_slice() != digest {
        return Err("checksum mismatch (corrupt entry)".into());
    }
    // SAFETY: the payload is byte-for-byte what `Component::serialize` wrote
    // for this engine configuration (its checksum matches and the file name
    // carries the engine's compatibility hash); wasmtime checks its own
    // header and version on top of that.
    unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("{e:#}"))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(crate::BUILT_PLUGINS_DIR).join(format!("{name}.wasm"))).unwrap()
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn the_least_recently_used_entries_go_when_the_cache_is_full() {
        let engine = crate::policy::PolicyRuntime::new(None)
            .unwrap()
            .engine()
            .clone();
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (built("accept_all"), built("rules"), built("nap_cap"));
        // Unbounded first, to learn each entry's size.
        let open = CompileCache::new(dir.path()).with_max_bytes(u64::MAX);
        let size = |wasm: &[u8]| {
            std::fs::metadata(open.entry_path(&engine, wasm))
                .unwrap()
                .len()
        };
        for wasm in [&a, &b, &c] {
            open.load(&engine, wasm).unwrap();
        }
        let (sa, sb, sc) = (size(&a), size(&b), size(&c));
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        // Room for all three but one byte: the least recently used goes.
        let cache = CompileCache::new(dir.path()).with_max_bytes(sa + sb + sc - 1);
        assert_eq!(cache.load(&engine, &a).unwrap().1, CacheOutcome::Miss);
        assert_eq!(cache.load(&engine, &b).unwrap().1, CacheOutcome::Miss);
        assert_eq!(
            cache.load(&engine, &a).unwrap().1,
            CacheOutcome::Hit,
            "a used again"
        );
        assert_eq!(cache.load(&engine, &c).unwrap().1, CacheOutcome::Miss);
        assert_eq!(entries(dir.path()), 2);
        assert!(
            !cache.entry_path(&engine, &b).exists(),
            "b was used least recently"
        );
        assert_eq!(cache.load(&engine, &a).unwrap().1, CacheOutcome::Hit);
        assert_eq!(cache.load(&engine, &b).unwrap().1, CacheOutcome::Miss);
        assert!(!cache.entry_path(&engine, &c).exists(), "c was, then");
        // A bound below one entry keeps only the entry just written.
        let tiny = CompileCache::new(dir.path()).with_max_bytes(1);
        assert_eq!(tiny.load(&engine, &a).unwrap().1, CacheOutcome::Hit);
        tiny.load(&engine, &built("fixture_panic")).unwrap();
        assert_eq!(entries(dir.path()), 1);
    }
}
