//! The disk cache of compiled plugins.
//!
//! Compiling a component takes 25–50 ms for a Rust plugin and several seconds
//! for a Python or JavaScript one; the cache makes restarts and hot reloads
//! cheap. An entry is keyed by the SHA-256 of the component and by the
//! engine's compatibility hash (wasmtime version and every setting that
//! changes the code), and carries a SHA-256 of its own payload: a stale,
//! truncated or corrupt entry is detected, ignored and rebuilt, never loaded.

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

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
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
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(reason) => {
                    tracing::warn!(entry = %path.display(), %reason, "ignoring a bad compile-cache entry");
                    CacheOutcome::Rebuilt { reason }
                }
            },
            Err(_) => CacheOutcome::Miss,
        };
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
        }
        Ok((component, outcome))
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
        Ok(())
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
