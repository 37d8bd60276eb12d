//! Hot reload of the plugin set: watch the plugin directory and the config
//! file (debounced), and SIGHUP.
//!
//! A new set is built off to the side (compiled through the disk cache,
//! instantiated, `init`-ed with its rules) while the old one keeps deciding.
//! Only a set that loads completely replaces the old one, in one swap of the
//! [`PolicyHandle`]; a resync in progress keeps the decider it started with,
//! so it finishes on the old set and the next one uses the new. A set that
//! fails is reported (file and reason) and the old one stays.
//!
//! A file being copied shows up as a burst of events: the debounce waits for
//! the directory to be quiet, and a failed attempt is retried once after a
//! pause, so a half-written `.wasm` costs one retry, not a storm of failures.

use crate::config::HostConfig;
use crate::events::{Events, HostEvent, ReloadOutcome, ReloadReport};
use crate::policy::blast::{BlastRadius, blast_radius};
use crate::policy::{Decider, PolicyChain, PolicyConfig, PolicyHandle, PolicyRuntime, loader};
use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Pause before the one retry of a failed reload.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where the policy settings come from at each reload.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// The host config file, re-read at each reload (its `[policy]` section).
    pub config_file: Option<PathBuf>,
    /// `--plugin-dir`, which overrides the file.
    pub plugin_dir_override: Option<PathBuf>,
    /// The settings when there is no config file.
    pub fallback: PolicyConfig,
    /// The whole config the host started with: a reload applies `[policy]`
    /// only, and names any other setting that changed (a restart applies it).
    pub started: Option<HostConfig>,
}

impl PolicySource {
    /// The policy settings as they are now.
    pub fn load(&self) -> anyhow::Result<PolicyConfig> {
        Ok(self.load_with_restart_only()?.0)
    }

    /// The policy settings as they are now, and the settings outside
    /// `[policy]` that differ from those the host started with.
    pub fn load_with_restart_only(&self) -> anyhow::Result<(PolicyConfig, Vec<&'static str>)> {
        let (mut policy, restart_only) = match &self.config_file {
            Some(path) => {
                let now = HostConfig::load(path)?;
                let changed = self
                    .started
                    .as_ref()
                    .map(|started| restart_only_changes(started, &now))
                    .unwrap_or_default();
                (now.policy, changed)
            }
            None => (self.fallback.clone(), Vec::new()),
        };
        if let Some(dir) = &self.plugin_dir_override {
            policy.plugin_dir = Some(dir.clone());
        }
        Ok((policy, restart_only))
    }

    fn plugin_dir(&self) -> Option<PathBuf> {
        self.load()
            .ok()
            .and_then(|p| p.plugin_dir)
            .or_else(|| self.plugin_dir_override.clone())
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir))
    }
}

/// The settings read at start only that differ between two configs: all
/// outside `[policy]`, and the compile cache's.
fn restart_only_changes(started: &HostConfig, now: &HostConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    check("engine", started.engine == now.engine);
    check("name", started.name == now.name);
    check("grace_secs", started.grace_secs == now.grace_secs);
    check("cdr", started.cdr == now.cdr);
    check("events", started.events == now.events);
    check(
        "events_required",
        started.events_required == now.events_required,
    );
    check("admin", started.admin == now.admin);
    check("admin_token", started.admin_token == now.admin_token);
    check("metrics", started.metrics == now.metrics);
    check("link", started.link == now.link);
    check("tls", started.tls == now.tls);
    check(
        "policy.cache_dir",
        started.policy.cache_dir == now.policy.cache_dir,
    );
    check(
        "policy.cache_max_mb",
        started.policy.cache_max_mb == now.policy.cache_max_mb,
    );
    changed
}

/// A set built by a reload attempt, and whether it may go live.
enum Built {
    /// Within the guard.
    Within(PolicyChain),
    /// Over the guard, accepted by its hash.
    Accepted(PolicyChain),
    /// Over the guard: why.
    HeldBack(String),
}

/// The identity of a plugin set: every plugin's name, code, rules and
/// settings, in chain order (hex SHA-256). What an operator accepts.
pub fn set_hash(chain: &PolicyChain) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for plugin in chain.plugins() {
        hasher.update(format!(
            "{}\n{}\n{}\n{:?}\n",
            plugin.name(),
            plugin.hash(),
            plugin.rules_hash().unwrap_or_default(),
            plugin.settings()
        ));
        // A dataset's new version is a new set, with its own blast radius.
        hasher.update(plugin.datasets().versions());
    }
    crate::policy::cache::hex(&hasher.finalize())[..16].to_string()
}

/// Reloads the plugin set into a [`PolicyHandle`].
pub struct Reloader {
    runtime: PolicyRuntime,
    source: PolicySource,
    policy: PolicyHandle,
    events: Events,
}

impl Reloader {
    pub fn new(
        runtime: PolicyRuntime,
        source: PolicySource,
        policy: PolicyHandle,
        events: Events,
    ) -> Self {
        Reloader {
            runtime,
            source,
            policy,
            events,
        }
    }

    /// One reload attempt: build, and swap if the whole set loaded, passed
    /// its sample check and stays within the guard. Blocks (compiling,
    /// deciding the held calls); run it off the async threads.
    pub fn reload(&self, trigger: &str, will_retry: bool) -> ReloadReport {
        self.try_set(trigger, will_retry, None)
    }

    /// A reload that applies the set on disk even over the guard, if its
    /// hash is `set_hash` (the one a held-back reload named): a set changed
    /// since cannot slip through on an acceptance given for another.
    pub fn accept(&self, set_hash: &str) -> ReloadReport {
        self.try_set("accept", false, Some(set_hash))
    }

    fn try_set(&self, trigger: &str, will_retry: bool, accepted: Option<&str>) -> ReloadReport {
        let started = Instant::now();
        let mut restart_only = Vec::new();
        let mut radius = None;
        let mut hash = None;
        let built = self
            .source
            .load_with_restart_only()
            .and_then(|(config, changed)| {
                restart_only = changed;
                self.reload_shadow(&config);
                let dir = config
                    .plugin_dir
                    .clone()
                    .context("no plugin directory configured")?;
                let chain = loader::load_dir(&self.runtime, &dir, &config)?;
                let this = set_hash(&chain);
                hash = Some(this.clone());
                // An acceptance names one set: another is refused before
                // any of its calls are decided.
                if let Some(accepted) = accepted
                    && accepted != this
                {
                    anyhow::bail!(
                        "the set on disk is {this}, not the set {accepted} that was accepted (it changed since)"
                    );
                }
                // Tried on a throwaway copy (its own instances: the new
                // set's state never sees the sample or the held calls): a
                // plugin that loads but fails when called would fail every
                // live decision.
                let probe = chain.fork()?;
                crate::policy::sample::try_chain(&probe)?;
                let held = self
                    .runtime
                    .held_legs()
                    .snapshot()
                    .context("cannot list the held calls for the blast radius")?;
                let blast = blast_radius(&probe, &held);
                metrics::gauge!(crate::metrics::RELOAD_BLAST_RADIUS).set(blast.refused_legs as f64);
                let over = config.guard.exceeded_by(&blast);
                radius = Some(blast);
                Ok(match (over, accepted) {
                    (None, _) => Built::Within(chain),
                    (Some(_), Some(_)) => Built::Accepted(chain),
                    (Some(why), None) => Built::HeldBack(why),
                })
            });
        let build_micros = started.elapsed().as_micros() as u64;
        let report = |outcome, plugins, error, swap_micros, needs_restart| ReloadReport {
            trigger: trigger.into(),
            outcome,
            plugins,
            error,
            build_micros,
            swap_micros,
            needs_restart,
            set_hash: hash.clone(),
            blast_radius: radius.clone(),
            datasets: self.policy.current().datasets(),
        };
        let blast = radius
            .as_ref()
            .map_or_else(String::new, BlastRadius::summary);
        let report = match built {
            Ok(Built::Within(chain) | Built::Accepted(chain)) => {
                let decider = Decider::Chain(Arc::new(chain));
                let plugins = decider.describe();
                let swap_started = Instant::now();
                let old = self.policy.swap(decider);
                let swap_micros = swap_started.elapsed().as_micros() as u64;
                drop(old);
                tracing::info!(
                    trigger,
                    plugins = %plugins.join(", "),
                    build_micros,
                    swap_micros,
                    blast_radius = %blast,
                    "plugin set reloaded"
                );
                if !restart_only.is_empty() {
                    tracing::warn!(
                        settings = restart_only.join(", "),
                        "the plugin set was reloaded, but these settings changed and apply only at a restart"
                    );
                }
                let needs_restart = restart_only.iter().map(|s| s.to_string()).collect();
                report(
                    ReloadOutcome::Applied,
                    plugins,
                    None,
                    swap_micros,
                    needs_restart,
                )
            }
            Ok(Built::HeldBack(why)) => {
                let set = hash.clone().unwrap_or_default();
                tracing::error!(
                    trigger,
                    set_hash = %set,
                    blast_radius = %blast,
                    "new plugin set held back: {why}; the current set stays (to apply it anyway: legsync reload --accept {set})"
                );
                let plugins = self.policy.current().describe();
                report(ReloadOutcome::HeldBack, plugins, Some(why), 0, Vec::new())
            }
            Err(error) => {
                let error = format!("{error:#}");
                let outcome = if will_retry {
                    ReloadOutcome::RejectedWillRetry
                } else {
                    ReloadOutcome::Rejected
                };
                // One line in the log, whatever the rules parser wrote.
                let line = error.replace('\n', " ");
                if will_retry {
                    tracing::warn!(trigger, error = %line, "new plugin set rejected; the current set stays; retrying once");
                } else {
                    tracing::error!(trigger, error = %line, "new plugin set rejected; the current set stays");
                }
                let plugins = self.policy.current().describe();
                report(outcome, plugins, Some(error), 0, Vec::new())
            }
        };
        metrics::counter!(crate::metrics::RELOADS, "outcome" => report.outcome.as_str())
            .increment(1);
        self.events
            .emit(HostEvent::Reload(Box::new(report.clone())));
        report
    }

    /// Builds the shadow set of `config` (if any) and puts it in place of
    /// the running one; a shadow set that fails to load is logged and the
    /// running one stays (it decides nothing live).
    fn reload_shadow(&self, config: &PolicyConfig) {
        let Some(dir) = &config.shadow_dir else {
            if self.policy.shadow().is_some() {
                tracing::info!("policy.shadow_dir removed: the shadow set stops");
                self.policy.set_shadow(None);
            }
            return;
        };
        let chain = match loader::load_dir(&self.runtime, dir, config) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %format!("{e:#}").replace('\n', " "), "new shadow plugin set rejected; the running shadow set stays");
                return;
            }
        };
        match self.policy.shadow() {
            Some(shadow) => shadow.replace(chain),
            None => match crate::policy::shadow::Shadow::start(chain) {
                Ok(shadow) => self.policy.set_shadow(Some(shadow)),
                Err(e) => tracing::error!(error = %e, "cannot start the shadow plugins' thread"),
            },
        }
        if let Some(shadow) = self.policy.shadow() {
            tracing::info!(plugins = %shadow.plugins().join(", "), "shadow plugin set reloaded");
        }
    }

    /// Starts watching the files and SIGHUP until `shutdown`. The watcher
    /// and the signal handler are in place when this returns, so no change
    /// made afterwards is missed.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let (changes, changed) = mpsc::unbounded_channel();
        let watcher = self.watch(changes)?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        Ok(tokio::spawn(self.run(watcher, changed, hangup, shutdown)))
    }

    async fn run(
        self: Arc<Self>,
        _watcher: notify::RecommendedWatcher,
        mut changed: mpsc::UnboundedReceiver<()>,
        mut hangup: tokio::signal::unix::Signal,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = hangup.recv() => "SIGHUP",
                Some(()) = changed.recv() => {
                    quiet(&mut changed, DEBOUNCE).await;
                    "watch"
                }
            };
            let report = self.attempt(trigger, true).await?;
            if report.outcome == ReloadOutcome::RejectedWillRetry {
                // New changes during the pause restart the debounce; either
                // way one more attempt follows, and it is the last.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    Some(()) = changed.recv() => quiet(&mut changed, DEBOUNCE).await,
                }
                self.attempt("retry", false).await?;
            }
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        trigger: &'static str,
        will_retry: bool,
    ) -> anyhow::Result<ReloadReport> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload(trigger, will_retry))
            .await
            .context("reload task failed")
    }

    /// Starts the file watcher; relevant changes are sent to `changes`.
    fn watch(
        &self,
        changes: mpsc::UnboundedSender<()>,
    ) -> anyhow::Result<notify::RecommendedWatcher> {
        let plugin_dir = self.source.plugin_dir();
        let config_file = self.source.config_file.clone();
        if let Some(config) = &self.source.started {
            let watched: Vec<&Path> = plugin_dir
                .as_deref()
                .into_iter()
                .chain(config_file.as_deref().and_then(Path::parent))
                .collect();
            warn_busy_files_in(&watched, config);
        }
        // The shadow set's directory, as the host started with it: a change
        // there reloads too (the live set is rebuilt alongside, unchanged).
        let shadow_dir = self
            .source
            .started
            .as_ref()
            .and_then(|config| config.policy.shadow_dir.clone());
        // The datasets' directory, as the host started with it: a data
        // file replaced there reloads, and the new set gets its version.
        let dataset_dir = plugin_dir.as_deref().and_then(|dir| {
            let policy = self.source.load().ok()?;
            let data = policy.dataset_dir(dir);
            let data = std::path::absolute(&data).unwrap_or(data);
            data.is_dir().then_some(data)
        });
        let filter_dir = plugin_dir.clone();
        let filter_shadow = shadow_dir.clone();
        let filter_data = dataset_dir.clone();
        let filter_config = config_file.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if matches!(event.kind, EventKind::Access(_)) {
                    return; // our own reads of the files
                }
                let relevant = event.paths.iter().any(|path| {
                    let in_a_plugin_dir = filter_dir.as_deref() == path.parent()
                        || (filter_shadow.is_some() && filter_shadow.as_deref() == path.parent());
                    let in_the_dataset_dir =
                        filter_data.is_some() && filter_data.as_deref() == path.parent();
                    filter_config.as_deref() == Some(path.as_path())
                        || (in_a_plugin_dir && is_plugin_file(path))
                        || (in_the_dataset_dir && is_dataset_file(path))
                });
                if relevant {
                    let _ = changes.send(());
                }
            })
            .context("cannot start the file watcher")?;
        if let Some(dir) = &plugin_dir {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", dir.display()))?;
        }
        if let Some(dir) = &dataset_dir {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", dir.display()))?;
        }
        if let Some(dir) = &shadow_dir {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", dir.display()))?;
        }
        if let Some(parent) = config_file.as_deref().and_then(Path::parent) {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            watcher
                .watch(parent, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", parent.display()))?;
        }
        Ok(watcher)
    }
}

/// Warns when the ledger or the event log lives in a directory the watcher
/// watches: every write to them wakes the watcher (inotify reports each
/// one), a million times in a resync. `legsync init` keeps them apart.
fn warn_busy_files_in(watched: &[&Path], config: &HostConfig) {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let watched: Vec<PathBuf> = watched.iter().map(|dir| absolute(dir)).collect();
    let files = [
        ("ledger", Some(&config.cdr)),
        ("event log", config.events.as_ref()),
    ];
    for (what, file) in files {
        let Some(file) = file else { continue };
        let file = absolute(file);
        if let Some(dir) = file.parent().filter(|dir| watched.iter().any(|w| w == dir)) {
            tracing::warn!(
                file = %file.display(),
                dir = %dir.display(),
                "the {what} is in a directory watched for config and plugin changes: each of its writes wakes the watcher; move it to a directory of its own"
            );
        }
    }
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "wasm" || e == "rules")
}

fn is_dataset_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(crate::policy::datasets::DatasetKind::from_extension)
        .is_some()
}

/// Returns once no change arrived for `quiet_for`.
async fn quiet(changed: &mut mpsc::UnboundedReceiver<()>, quiet_for: Duration) {
    loop {
        match tokio::time::timeout(quiet_for, changed.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}
