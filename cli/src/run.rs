//! `legsync run`.

use clap::Args;
use legsync::admin::token::AdminToken;
use legsync::app;
use legsync::config::HostConfig;
use legsync::events::Events;
use legsync::reload::{PolicySource, Reloader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The engine's address, host:port (overrides `engine` in the config).
    #[arg(long)]
    engine: Option<String>,
    /// The config file (TOML; see docs/operations.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The plugin directory (overrides `policy.plugin_dir`).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// The CDR file, the ledger (overrides `cdr`; default ./cdr.jsonl).
    #[arg(long)]
    cdr: Option<PathBuf>,
    /// The event log, one JSON line per callback (overrides `events`;
    /// default none).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Grace time in seconds (overrides `grace_secs`; default 10).
    #[arg(long)]
    grace: Option<f64>,
    /// This host's name, unique within its pair (overrides `name`).
    #[arg(long)]
    name: Option<String>,
    /// The admin endpoint's address, or `off` (overrides `admin`; default
    /// 127.0.0.1:9464).
    #[arg(long)]
    admin: Option<String>,
}

impl RunArgs {
    /// `config` (the file's) with the command-line flags applied on top.
    fn with_flags(&self, mut config: HostConfig) -> anyhow::Result<HostConfig> {
        if let Some(engine) = &self.engine {
            config.engine = Some(engine.clone());
        }
        if let Some(dir) = &self.plugin_dir {
            config.policy.plugin_dir = Some(dir.clone());
        }
        if let Some(cdr) = &self.cdr {
            config.cdr = cdr.clone();
        }
        if let Some(events) = &self.events {
            config.events = Some(events.clone());
        }
        if let Some(grace) = self.grace {
            config.grace_secs = grace;
        }
        if let Some(name) = &self.name {
            config.name = name.clone();
        }
        if let Some(admin) = &self.admin {
            config.admin = admin.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // First: a stop while the plugins compile is a clean stop, not a kill.
    let shutdown = super::stop_signals();
    // The file as read, apart: a reload compares the file with it, so a
    // flag (`--name`) is not taken for a change of the file.
    let file = match &args.config {
        Some(path) => Some(HostConfig::load(path)?),
        None => None,
    };
    let config = args.with_flags(file.clone().unwrap_or_default())?;
    let events = match &config.events {
        Some(path) => Events::with_file(path)?,
        None => Events::new(),
    };
    events.set_required(config.events_required);
    // Off the runtime's threads: a plugin's `init` may make WASI calls that
    // block on tokio (a socket), which panics on a runtime thread.
    let (runtime, decider) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || app::load_policy(&config)).await??
    };
    if shutdown.is_cancelled() {
        tracing::info!("stopped while starting");
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(plugins = %decider.describe().join(", "), "active plugin set");
    let (host, policy) = app::build_host(&config, decider, events.clone())?;
    // Sets loaded by a reload run in `runtime` too, whatever the first held.
    runtime.held_legs().serve(host.held_legs());
    policy.set_shadow({
        let (config, runtime) = (config.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || app::load_shadow(&config, &runtime)).await??
    });
    // The command's own tasks: each ends at the stop, and is waited for.
    let tasks = TaskTracker::new();
    // A required audit trail that fails stops the host.
    let audit = events.audit_failed();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = audit.cancelled() => {
                tracing::error!("the event log cannot be written and `events_required` is set: stopping");
                stop.cancel();
            }
            _ = stop.cancelled() => {}
        }
    });
    // Absolute: the watcher reports absolute paths, and a relative
    // `--config` would never match them.
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let source = PolicySource {
        config_file: args.config.as_ref().map(absolute),
        plugin_dir_override: args.plugin_dir.as_ref().map(absolute),
        fallback: config.policy.clone(),
        started: file,
    };
    let reloader = Arc::new(Reloader::new(
        runtime,
        source,
        policy.clone(),
        events.clone(),
    ));
    let watching = reloader.clone().spawn(shutdown.clone())?;
    let files = (host.cdr_writer(), events.clone());
    let mut rotated =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let (cdr, log) = files.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                signal = rotated.recv() => if signal.is_none() { return },
            }
            if let Err(e) = legsync::admin::reopen_files(&cdr, &log).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot reopen the files after SIGUSR1"
                );
            }
        }
    });
    // The fleet stream: its own task, reading what the ledger made durable.
    let shipping = match &config.ship {
        Some(ship) => {
            let shipper = legsync::ship::shipper::Shipper::new(
                ship.clone(),
                &config.cdr,
                &config.name,
                host.cdr_writer().durable_marks(),
            )?
            .yield_to_resyncs(host.status());
            let status = shipper.status();
            tasks.spawn(shipper.run(shutdown.clone()));
            Some(status)
        }
        None => None,
    };
    let mut served = Vec::new();
    let (admin_addr, metrics_addr) = (config.admin_addr()?, config.metrics_addr()?);
    if admin_addr.is_some() || metrics_addr.is_some() {
        let admin = legsync::admin::Admin::new(
            config.name.clone(),
            host.status(),
            host.admin_queries(),
            policy,
            Some(reloader),
            Some(files),
        );
        if let Some(status) = shipping {
            admin.show_shipping(status);
        }
        served.push(legsync::admin::follow(&admin, &events, shutdown.clone()));
        if let Some(addr) = admin_addr {
            let token = AdminToken::load_or_create(&config.admin_token_path())?;
            let surface = legsync::admin::Surface::Admin(token);
            let (_, task) =
                legsync::admin::serve(addr, surface, admin.clone(), shutdown.clone()).await?;
            served.push(task);
        }
        if let Some(addr) = metrics_addr {
            let surface = legsync::admin::Surface::Monitoring;
            let (_, task) = legsync::admin::serve(addr, surface, admin, shutdown.clone()).await?;
            served.push(task);
        }
    }
    // Everything a start can fail on is behind: the service is up (a
    // standby is as ready as an active host).
    super::notify::notify("READY=1");
    let stopping = shutdown.clone();
    tasks.spawn(async move {
        stopping.cancelled().await;
        super::notify::notify("STOPPING=1");
    });
    let ran = host.run(shutdown.clone()).await;
    shutdown.cancel();
    let watched = watching.await;
    for task in served {
        let _ = task.await;
    }
    tasks.close();
    tasks.wait().await;
    ran?;
    watched??;
    if events.audit_failed().is_cancelled() {
        anyhow::bail!(
            "stopped: the event log {} could not be written, and `events_required` is set (the ledger is intact; the host stops rather than run without its audit trail)",
            config
                .events
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
