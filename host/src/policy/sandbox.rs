//! The per-instance store state: a WASI context with no capabilities, the
//! memory cap, and the plugin's log, stdout and stderr routed to the host log
//! with caps, so a chatty plugin can neither flood the log nor the memory.

use super::bindings::{Level, legsync, wit};
use super::counters::PluginCounters;
use super::held::HeldSlot;
use super::limits::MemoryCap;
use crate::model::PluginName;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// How many `log` lines a plugin may write per call; the rest are counted.
pub const LOG_LINES_PER_CALL: u32 = 64;
/// How many bytes of stdout + stderr a plugin may write per call.
pub const OUTPUT_BYTES_PER_CALL: usize = 16 * 1024;
/// Longest log message forwarded; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 1024;

/// What one store holds for its plugin instance.
pub struct PluginState {
    plugin: PluginName,
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    output: CapturedOutput,
    log_lines: u32,
    /// Log lines and output bytes dropped by the caps during the current call.
    pub dropped_log_lines: u32,
    /// Where `held-legs` reads the host's table.
    held: HeldSlot,
    /// The plugin's own counters (`count`), shared by its instances.
    counters: std::sync::Arc<PluginCounters>,
    /// The time it sees: 0 for the wall clock (see `PolicyRuntime::fix_clock`).
    clock: Arc<std::sync::atomic::AtomicU64>,
    /// What the current call explained (`explain`): item, reason.
    explained: Vec<(u32, String)>,
    /// The datasets the plugin may open (`datasets`).
    datasets: crate::policy::datasets::Granted,
    /// The first dataset it asked for and was not granted: asked in
    /// `init`, it rejects the plugin.
    refused_dataset: Option<String>,
    /// Time the current call spent waiting for the host in `held-legs`: not
    /// the plugin's, so its deadline is moved by as much (see `plugin`).
    pub host_time: Duration,
}

impl PluginState {
    pub fn new(
        plugin: PluginName,
        memory_cap: usize,
        held: HeldSlot,
        counters: std::sync::Arc<PluginCounters>,
        clock: Arc<std::sync::atomic::AtomicU64>,
        datasets: crate::policy::datasets::Granted,
    ) -> Self {
        let output = CapturedOutput::default();
        // `WasiCtxBuilder::new` grants nothing: no preopened directories, no
        // environment, no arguments, stdin closed, every socket address denied,
        // name lookup off. Only stdout/stderr are set, to our capped capture.
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .build();
        PluginState {
            plugin,
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap::new(memory_cap),
            output,
            log_lines: 0,
            dropped_log_lines: 0,
            held,
            counters,
            clock,
            explained: Vec::new(),
            datasets,
            refused_dataset: None,
            host_time: Duration::ZERO,
        }
    }

    pub fn plugin(&self) -> PluginName {
        self.plugin
    }

    pub fn datasets(&self) -> &crate::policy::datasets::Granted {
        &self.datasets
    }

    /// Remembers the first dataset asked for and not granted.
    pub fn refuse_dataset(&mut self, name: String) {
        self.refused_dataset.get_or_insert(name);
    }

    /// The dataset asked for and not granted, if any, taken.
    pub fn take_refused_dataset(&mut self) -> Option<String> {
        self.refused_dataset.take()
    }

    /// What the current call explained, taken.
    pub fn take_explained(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.explained)
    }

    /// Resets the per-call budgets and forwards what the last call printed.
    /// Returns what the caps dropped: (log lines, output bytes).
    pub fn end_call(&mut self) -> (u32, usize) {
        let (text, dropped_bytes) = self.output.take();
        for line in String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::info!(target: "legsync::plugin", plugin = %self.plugin, stream = "stdout", "{line}");
        }
        if self.dropped_log_lines > 0 || dropped_bytes > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                dropped_log_lines = self.dropped_log_lines,
                dropped_output_bytes = dropped_bytes,
                "plugin output over its per-call cap was dropped"
            );
        }
        self.log_lines = 0;
        self.host_time = Duration::ZERO;
        self.explained.clear();
        (std::mem::take(&mut self.dropped_log_lines), dropped_bytes)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl legsync::policy::types::Host for PluginState {}

impl legsync::policy::host::Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        // A line the log would not show (debug, at the default level) costs
        // nothing and does not count against the cap.
        let shown = match level {
            Level::Trace => tracing::enabled!(target: "legsync::plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "legsync::plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "legsync::plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "legsync::plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "legsync::plugin", tracing::Level::ERROR),
        };
        if !shown {
            return;
        }
        if self.log_lines >= LOG_LINES_PER_CALL {
            self.dropped_log_lines = self.dropped_log_lines.saturating_add(1);
            return;
        }
        self.log_lines += 1;
        let message = truncate(&message, MAX_LOG_MESSAGE);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "legsync::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "legsync::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "legsync::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "legsync::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "legsync::plugin", plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        match self.clock.load(std::sync::atomic::Ordering::Relaxed) {
            0 => crate::model::now_ms(),
            fixed => fixed,
        }
    }

    fn held_legs(&mut self, after: u64, max: u32) -> wasmtime::Result<wit::HeldPage> {
        let started = Instant::now();
        let page = self.held.page(after, max as usize);
        self.host_time += started.elapsed();
        let page = page.map_err(|e| wasmtime::format_err!("held-legs: {e}"))?;
        Ok(super::lower::held_page(&page))
    }

    fn count(&mut self, name: String, delta: u64) {
        self.counters.add(&name, delta);
    }

    fn explain(&mut self, reasons: Vec<wit::Explained>) {
        // A batch has at most 65,536 items; more explanations are noise.
        let room = 65_536usize.saturating_sub(self.explained.len());
        self.explained
            .extend(reasons.into_iter().take(room).map(|e| (e.index, e.reason)));
    }
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// stdout and stderr of a plugin: kept up to [`OUTPUT_BYTES_PER_CALL`], the
/// rest silently dropped and counted (a full pipe must not trap the guest).
#[derive(Clone, Default)]
struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    buffer: Vec<u8>,
    dropped: usize,
}

impl CapturedOutput {
    fn take(&self) -> (Vec<u8>, usize) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = std::mem::take(&mut inner.dropped);
        (std::mem::take(&mut inner.buffer), dropped)
    }

    fn write_capped(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_BYTES_PER_CALL.saturating_sub(inner.buffer.len());
        let kept = bytes.len().min(room);
        inner.buffer.extend_from_slice(&bytes[..kept]);
        inner.dropped += bytes.len() - kept;
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_capped(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_capped(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_the_rest_counted() {
        let out = CapturedOutput::default();
        out.write_capped(&vec![b'x'; OUTPUT_BYTES_PER_CALL - 1]);
        out.write_capped(b"abc");
        let (kept, dropped) = out.take();
        assert_eq!(kept.len(), OUTPUT_BYTES_PER_CALL);
        assert_eq!(dropped, 2);
        assert_eq!(out.take(), (Vec::new(), 0));
    }

    #[test]
    fn hidden_debug_lines_do_not_count_against_the_cap() {
        use legsync::policy::host::Host;
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let name = PluginName::new("test");
            let counters = std::sync::Arc::new(PluginCounters::new(name));
            let clock = Default::default();
            let mut state = PluginState::new(
                name,
                1 << 20,
                HeldSlot::default(),
                counters,
                clock,
                Default::default(),
            );
            for i in 0..1_000 {
                state.log(Level::Debug, format!("debug {i}"));
            }
            state.log(Level::Info, "shown".to_string());
            assert_eq!((state.log_lines, state.dropped_log_lines), (1, 0));
            for i in 0..LOG_LINES_PER_CALL + 5 {
                state.log(Level::Warn, format!("warn {i}"));
            }
            assert_eq!(state.dropped_log_lines, 6, "shown lines are capped");
        });
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
