//! Sandbox limits: a memory cap per plugin instance and a deadline per call.
//!
//! The deadline uses wasmtime's epoch interruption: one background thread
//! bumps the engine's epoch every [`EPOCH_TICK`], and each call is given a
//! number of ticks. That costs a load and compare at loop heads, far less
//! than fuel metering, and it stops any guest, however it loops.

use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Per-plugin sandbox limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory one instance may have, in bytes.
    /// Default 64 MiB: the `rules` plugin needs about 2 MiB for a batch.
    pub memory_bytes: usize,
    /// The longest one call (one batch) may run. Default 100 ms: a batch of
    /// 1,024 legs through the `rules` plugin takes well under 1 ms.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_millis(100),
        }
    }
}

/// Optional overrides of [`Limits`], as written in the config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub memory_mb: Option<usize>,
    pub deadline_ms: Option<u64>,
}

impl LimitsConfig {
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_mb.map_or(base.memory_bytes, |mb| mb << 20),
            call_deadline: self
                .deadline_ms
                .map_or(base.call_deadline, Duration::from_millis),
        }
    }
}

/// Epoch ticks for a deadline, rounded up, plus one because the current tick
/// may already be partly gone.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
}

/// The store's resource limiter: refuses memory growth past the cap and
/// remembers that it did, so a trap can be reported as a memory-cap failure.
#[derive(Debug)]
pub struct MemoryCap {
    cap: usize,
    pub exceeded: bool,
    /// The size of the instance's largest memory, in bytes (linear memory
    /// never shrinks).
    pub largest: usize,
}

impl MemoryCap {
    pub fn new(cap: usize) -> Self {
        MemoryCap {
            cap,
            exceeded: false,
            largest: 0,
        }
    }

    /// Whether the instance has used most of its cap: a plugin whose heap
    /// only grows (componentize-js) would otherwise fail a batch on the cap
    /// sooner or later, and that batch would get the failure policy.
    pub fn nearly_full(&self) -> bool {
        self.largest > self.cap / 4 * 3
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!(
                "memory cap of {} bytes exceeded (wanted {desired})",
                self.cap
            );
        }
        self.largest = self.largest.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The thread that advances the engine's epoch. Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: wasmtime::Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("legsync-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("cannot start the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_adds_a_tick() {
        assert_eq!(deadline_ticks(Duration::ZERO), 2);
        assert_eq!(deadline_ticks(EPOCH_TICK), 2);
        assert_eq!(
            deadline_ticks(EPOCH_TICK * 10 + Duration::from_nanos(1)),
            12
        );
    }

    #[test]
    fn config_overrides_only_what_it_sets() {
        let base = Limits::default();
        let cfg = LimitsConfig {
            memory_mb: Some(8),
            deadline_ms: None,
        };
        assert_eq!(cfg.apply(base).memory_bytes, 8 << 20);
        assert_eq!(cfg.apply(base).call_deadline, base.call_deadline);
    }
}
