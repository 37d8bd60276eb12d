//! `legsync engine-sim`: a stand-in for the media gateway's engine.
//!
//! - [`state`]: legs, links and their transitions (pure).
//! - [`media`]: the media units' view (answered legs and their links),
//!   shared copy-on-write with snapshots and saves.
//! - [`history`]: the record of answers and releases tests bill against.
//! - [`persist`]: the state file, the media units' view of active calls.
//! - [`control`]: the line-based control port for scripts and tests.
//! - [`controller`]: the controller slot: who controls the engine, under
//!   which epoch (the arbiter of a host pair).
//! - [`server`]: the engine port (one host at a time) and the control port.
//! - [`process`]: runs the simulator as a child process (demo, tests, bench).
//!
//! Restarting the process is an engine restart: the boot id changes, and only
//! the answered legs and their links come back, with the same ids.

pub mod control;
pub mod controller;
pub mod history;
pub mod media;
pub mod persist;
pub mod process;
pub mod server;
pub mod state;
pub mod traffic;

use anyhow::Context;
use server::Shared;
use state::EngineState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    pub control: Option<SocketAddr>,
    pub state_file: PathBuf,
    /// Start with this many answered legs (in pairs, linked) if the state
    /// file holds none.
    pub preload: Option<u64>,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub max_frame: usize,
    /// Record answers and releases here (the tests' ground truth).
    pub history: Option<PathBuf>,
    /// Test-only: give new legs the ids of legs a restart dropped.
    pub reuse_ids: bool,
    /// Bench-only: with `preload`, this many mixers of 5 joined legs each.
    pub preload_mixers: Option<u64>,
    /// Bench-only: preload legs whose ids collide under FxHash.
    pub crafted_ids: bool,
    /// Stream snapshots in ascending leg id order (a neutral order).
    pub ascending: bool,
    /// The newest protocol version spoken (3: no mixers).
    pub protocol: u8,
    /// The engine's name (hello, ledger records).
    pub name: String,
    /// Log generated traffic here (`traffic`, `burst`; see [`traffic`]).
    pub traffic_log: Option<PathBuf>,
    /// Serve hosts over TLS, asking each for a certificate of `tls.ca`.
    pub tls: Option<legsync::tls::TlsFiles>,
}

/// How often the state file is considered for saving.
const FLUSH_TICK: Duration = Duration::from_millis(200);
/// A change is saved at most this many ticks after it was made.
const FLUSH_WITHIN_TICKS: u32 = 5;

/// The line the simulator prints on stdout once it listens; parents parse it.
pub const READY_PREFIX: &str = "engine-sim ready";

/// Runs until `shutdown`; saves the state file on the way out.
pub async fn run(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let units = persist::load(&options.state_file)?;
    let mut state = EngineState::from_media_units(units);
    if let Some(count) = options.preload
        && state.counts().legs == 0
    {
        state.preload_with(count, legsync::model::now_ms(), options.crafted_ids);
        if let Some(mixers) = options.preload_mixers {
            state.preload_mixers(mixers, legsync::model::now_ms());
        }
    }
    if options.reuse_ids {
        state.reuse_ids();
    }
    if let Some(path) = &options.history {
        state.set_history(history::History::open(path)?);
    }
    let boot_id = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        boot_id,
        state_file: options.state_file.clone(),
        heartbeat: options.heartbeat,
        heartbeat_timeout: options.heartbeat_timeout,
        max_frame: options.max_frame,
        ascending: options.ascending,
        protocol: options.protocol,
        persist_lock: tokio::sync::Mutex::new(()),
        partitioned_until: Mutex::new(None),
        controller: controller::ControllerSlot::open(&options.state_file)?,
        name: options.name.clone(),
        traffic: Mutex::new(traffic::Traffic::new(options.traffic_log.as_deref())?),
        heartbeat_gaps: Mutex::default(),
        generating: Default::default(),
        tls: match &options.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                legsync::tls::server_config(files)?,
            )),
            None => None,
        },
    });
    shared.persist_if_dirty().await?;

    let engine = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let control = match options.control {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the control port is open beyond this machine: whoever reaches it can end calls, partition and restart the engine");
            }
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            )
        }
        None => None,
    };
    let control_addr = control.as_ref().map(|l| l.local_addr()).transpose()?;
    let counts = shared.lock().counts();
    let line = format!(
        "{READY_PREFIX} listen={} control={} boot={boot_id} legs={} links={}\n",
        engine.local_addr()?,
        control_addr.map_or("-".to_string(), |a| a.to_string()),
        counts.legs,
        counts.links,
    );
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;

    let tasks = TaskTracker::new();
    tasks.spawn(server::accept_hosts(
        shared.clone(),
        engine,
        shutdown.clone(),
    ));
    if let Some(control) = control {
        tasks.spawn(server::accept_control(
            shared.clone(),
            control,
            shutdown.clone(),
        ));
    }
    // Host commands (drops) are saved once a burst of them is over (one
    // quiet tick), and at most a second after the first: saving in the
    // middle of a resync's drops would copy a million-leg view at the next
    // drop (see `media`).
    let flusher = shared.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_TICK);
        let mut previous: Option<u64> = None;
        let mut dirty_ticks = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let (dirty, changes) = {
                        let state = flusher.lock();
                        (state.unsaved(), state.changes())
                    };
                    if flusher.generating.load(std::sync::atomic::Ordering::Relaxed) {
                        continue; // saved when the traffic ends
                    }
                    dirty_ticks = if dirty { dirty_ticks + 1 } else { 0 };
                    let quiet = previous == Some(changes);
                    previous = Some(changes);
                    if !dirty || !(quiet || dirty_ticks >= FLUSH_WITHIN_TICKS) {
                        continue;
                    }
                    dirty_ticks = 0;
                    if let Err(e) = flusher.persist_if_dirty().await {
                        tracing::error!(error = format!("{e:#}"), "cannot save the state file");
                    }
                }
            }
        }
    });
    tasks.close();
    shutdown.cancelled().await;
    tasks.wait().await;
    shared.persist_if_dirty().await
}
