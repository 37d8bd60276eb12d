//! The one wasmtime engine of the host, its linker and its compile cache.

use super::cache::{CacheOutcome, CompileCache};
use super::held::HeldSlot;
use super::limits::EpochTicker;
use super::sandbox::PluginState;
use std::sync::Arc;
use wasmtime::component::{Component, Linker};

/// Shared by every plugin of every set: compiled code is only compatible with
/// the engine that compiled it, and one epoch thread serves all stores.
#[derive(Clone)]
pub struct PolicyRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<PluginState>,
    cache: Option<CompileCache>,
    held: HeldSlot,
    datasets: super::datasets::DatasetStore,
    /// The time plugins see (`now-ms`): 0 for the wall clock, else fixed
    /// (a replay gives the recorded time, so replays are deterministic).
    clock: Arc<std::sync::atomic::AtomicU64>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PolicyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRuntime")
            .field("cache", &self.inner.cache)
            .finish()
    }
}

impl PolicyRuntime {
    /// Builds the engine. `cache` is the compile-cache directory, if any.
    pub fn new(cache: Option<CompileCache>) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Components built by other toolchains import WASI even when they do
        // no I/O; link it, with a context that grants nothing (see sandbox).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::bindings::add_to_linker(&mut linker)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(PolicyRuntime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                held: HeldSlot::default(),
                datasets: Default::default(),
                clock: Default::default(),
                _ticker: ticker,
            }),
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// What `held-legs` serves to this runtime's plugins: nothing until
    /// the host's table is wired in ([`HeldSlot::serve`]).
    pub fn held_legs(&self) -> &HeldSlot {
        &self.inner.held
    }

    /// The datasets built for this runtime's plugin sets.
    pub fn datasets(&self) -> &super::datasets::DatasetStore {
        &self.inner.datasets
    }

    /// From now on, plugins of this runtime see `ms` as the time.
    pub fn fix_clock(&self, ms: u64) {
        self.inner
            .clock
            .store(ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn clock(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.clock.clone()
    }

    pub(crate) fn linker(&self) -> &Linker<PluginState> {
        &self.inner.linker
    }

    /// Compiles a component, through the cache when there is one.
    pub fn compile(&self, wasm: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        match &self.inner.cache {
            Some(cache) => cache.load(&self.inner.engine, wasm),
            None => Ok((
                Component::new(&self.inner.engine, wasm)?,
                CacheOutcome::Disabled,
            )),
        }
    }
}
