//! One loaded plugin: compiled once, instantiated from a pre-linked
//! `InstancePre`, run in its own store under its limits, re-instantiated after
//! any failure and quarantined when it keeps failing. A plugin configured
//! with `instances = N` keeps up to N instances, so N batches (from the
//! resync's overlapping decisions) are decided at once.

use super::bindings::wit;
use super::cache::{CacheOutcome, hex};
use super::call_cost::CallCost;
use super::config::PluginSettings;
use super::contract::{self, Contract, ContractInfo};
use super::counters::PluginCounters;
use super::datasets::Granted;
use super::error::{FailureKind, PluginFailure, PolicyError};
use super::export::{Export, PerExport};
use super::imports::{self, Grant};
use super::limits::deadline_ticks;
use super::lower::{LegBatchRef, LegBatchV0_2, LinkRecord, TerminatedLegV0_3};
use super::quarantine::Health;
use super::runtime::PolicyRuntime;
use super::sandbox::PluginState;
use crate::model::{Decision, PluginName};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use wasmtime::component::{ComponentNamedList, ComponentType, Func, InstancePre, Lift, Lower};
use wasmtime::{Store, UpdateDeadline};

/// A live instance: its store, its typed exports and how many calls it
/// has answered (for `max_calls_per_instance`).
struct Live {
    store: Store<PluginState>,
    exports: Exports,
    calls: u64,
}

/// The instance's exports, as raw functions typed at each call: the sync
/// exports' batches are lowered by `lower` (no string copies, one pass over
/// guest memory), and one set of Rust types serves every contract version
/// the host loads (their types differ only in `leg-batch.text`).
struct Exports {
    init: Func,
    leg_sync: Func,
    link_sync: Func,
    terminated: Func,
    /// The mixer exports: a plugin built for 0.4.0 has them; an older one
    /// does not, and never votes on mixers.
    mixers: Option<MixerExports>,
}

struct MixerExports {
    sync: Func,
    terminated: Func,
}

type Decisions = (Vec<wit::Decision>,);
/// A mixer decision's answer: none when the plugin abstains.
type MixerDecisions = (Option<Vec<wit::Decision>>,);

/// What a sync export returns: its decisions, or none when the export may
/// abstain (`on-mixer-sync`) and did.
trait Answer: ComponentNamedList + Lift + Send + Sync + 'static {
    fn decisions(self) -> Option<Vec<wit::Decision>>;
}

impl Answer for Decisions {
    fn decisions(self) -> Option<Vec<wit::Decision>> {
        Some(self.0)
    }
}

impl Answer for MixerDecisions {
    fn decisions(self) -> Option<Vec<wit::Decision>> {
        self.0
    }
}

/// The answer of an export that cannot abstain (legs, links).
fn always(decided: Option<Decided>) -> Decided {
    decided.expect("on-call-leg-sync and on-link-sync answer every item")
}

/// A call's answer: one decision per item, and the reasons the plugin gave
/// for some of them (`explain`), by position in the call's items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    pub decisions: Vec<Decision>,
    pub reasons: Vec<(u32, crate::model::Reason)>,
}

/// Distinct reasons one plugin may give; past this, a new one reads
/// `other` (a reason per leg would blow up every report that groups them).
pub const MAX_REASONS: usize = 64;
/// The longest reason kept, in bytes.
const MAX_REASON: usize = 64;

impl Exports {
    /// Type-checks every export against the Rust types the host calls it
    /// with, so a plugin whose signatures do not match fails at load, not at
    /// its first call during a resync.
    fn check_types(&self, store: &Store<PluginState>, contract: Contract) -> wasmtime::Result<()> {
        self.init.typed::<(&str,), (Result<(), String>,)>(store)?;
        match contract {
            Contract::V0_4 | Contract::V0_3 => drop(
                self.leg_sync
                    .typed::<(LegBatchRef<'_>,), Decisions>(store)?,
            ),
            Contract::V0_2 => drop(
                self.leg_sync
                    .typed::<(LegBatchV0_2<'_>,), Decisions>(store)?,
            ),
        }
        self.link_sync.typed::<(&[LinkRecord],), Decisions>(store)?;
        if let Some(mixers) = &self.mixers {
            mixers
                .sync
                .typed::<(&[wit::Mixer],), MixerDecisions>(store)?;
            mixers
                .terminated
                .typed::<(&[wit::TerminatedMixer],), ()>(store)?;
        }
        match contract {
            Contract::V0_4 => drop(
                self.terminated
                    .typed::<(&[wit::TerminatedLeg],), ()>(store)?,
            ),
            Contract::V0_3 | Contract::V0_2 => drop(
                self.terminated
                    .typed::<(&[TerminatedLegV0_3],), ()>(store)?,
            ),
        }
        Ok(())
    }
}

/// Counters of one plugin, for metrics and tests.
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    instantiations: AtomicU64,
    failures: AtomicU64,
    quarantined_skips: AtomicU64,
    dropped_log_lines: AtomicU64,
    dropped_output_bytes: AtomicU64,
    recycled: AtomicU64,
    /// The largest memory any instance reached, in bytes.
    peak_memory: AtomicU64,
}

/// A snapshot of a plugin's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PluginStats {
    /// Calls that reached the guest (including failed ones).
    pub calls: u64,
    /// Instances created (the first, then one after each failure).
    pub instantiations: u64,
    /// Calls that failed (trap, deadline, memory, malformed answer).
    pub failures: u64,
    /// Calls not made because the plugin was quarantined.
    pub quarantined_skips: u64,
    /// Log lines over the per-call cap, dropped.
    pub dropped_log_lines: u64,
    /// stdout/stderr bytes over the per-call cap, dropped.
    pub dropped_output_bytes: u64,
    /// Instances replaced after a call left them near their memory cap.
    pub recycled: u64,
    /// The largest memory any instance reached, in bytes.
    pub peak_memory_bytes: u64,
}

/// A plugin ready to decide.
pub struct Plugin {
    name: PluginName,
    /// SHA-256 of the `.wasm`, hex: the plugin's version in logs and audits.
    hash: String,
    contract: ContractInfo,
    cache: CacheOutcome,
    rules: String,
    settings: PluginSettings,
    pre: InstancePre<PluginState>,
    runtime: PolicyRuntime,
    /// One slot per configured instance; the first is filled at load, the
    /// others when first needed.
    live: Vec<Mutex<Option<Live>>>,
    /// Which slot to wait for when all are busy (round robin).
    next_wait: AtomicUsize,
    /// Measured cost of each export's calls: see [`Plugin::batch_limit`].
    cost: PerExport<CallCost>,
    /// Health per export (leg sync, link sync, termination notices): a
    /// notification handler that keeps failing is quarantined on its own,
    /// and never makes the plugin's healthy decisions refused.
    health: PerExport<Mutex<Health>>,
    counters: Counters,
    /// The plugin's own counters (`count`), shared by its instances.
    own_counters: Arc<PluginCounters>,
    /// A throwaway copy ([`Plugin::fork`]): its calls show in no metric.
    quiet: bool,
    /// The reasons it gave so far, each once ([`MAX_REASONS`] at most).
    reasons: Mutex<std::collections::HashMap<String, crate::model::Reason>>,
    /// The datasets it may open, one version each for its whole life.
    datasets: Granted,
    /// Their `name@version`s, as its verdicts name them (none: no dataset).
    data_versions: Option<crate::model::DataVersions>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish()
    }
}

/// Pre-links `component`. Imports the host does not grant (a toolchain's
/// defaults, see [`imports`]) are linked as traps, so only a call to one
/// fails; the shared linker serves every other plugin as it is.
fn link(
    runtime: &PolicyRuntime,
    name: &str,
    component: &wasmtime::component::Component,
    contract: &ContractInfo,
) -> wasmtime::Result<wasmtime::component::InstancePre<PluginState>> {
    let trapped: Vec<&str> = contract
        .imports
        .iter()
        .filter(|i| imports::classify(i) == Grant::Trap)
        .map(String::as_str)
        .collect();
    if trapped.is_empty() {
        return runtime.linker().instantiate_pre(component);
    }
    tracing::info!(
        plugin = name,
        imports = trapped.join(", "),
        "the plugin imports what the host does not grant: linked as traps (a call to one fails)"
    );
    let mut linker = runtime.linker().clone();
    imports::define_as_traps(&mut linker, component, runtime.engine())?;
    linker.instantiate_pre(component)
}

pub use super::call_cost::PROBE_ITEMS;

impl Plugin {
    /// Compiles, checks the contract version, pre-links and instantiates the
    /// component, then runs `init` with `rules`. Any failure rejects it.
    pub fn load(
        runtime: &PolicyRuntime,
        name: &str,
        wasm: &[u8],
        rules: String,
        settings: PluginSettings,
        datasets: Granted,
    ) -> Result<Plugin, PolicyError> {
        let (component, cache) = runtime
            .compile(wasm)
            .map_err(|e| PolicyError::NotAComponent {
                path: name.into(),
                reason: format!("{e:#}"),
            })?;
        let contract = contract::check(name, &component, runtime.engine())?;
        let instantiate_error = |e: wasmtime::Error| PolicyError::Instantiate {
            plugin: name.into(),
            reason: format!("{e:#}"),
        };
        let pre = link(runtime, name, &component, &contract).map_err(instantiate_error)?;
        let plugin = Plugin {
            name: name.into(),
            hash: hex(&Sha256::digest(wasm)),
            contract,
            cache,
            rules,
            settings,
            pre,
            runtime: runtime.clone(),
            live: (0..settings.instances.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next_wait: AtomicUsize::new(0),
            cost: Default::default(),
            health: Default::default(),
            counters: Counters::default(),
            own_counters: Arc::new(PluginCounters::new(name.into())),
            quiet: false,
            reasons: Default::default(),
            data_versions: (!datasets.is_empty())
                .then(|| crate::model::DataVersions::new(&datasets.versions())),
            datasets,
        };
        plugin.ready()
    }

    /// A throwaway copy: the same compiled code, rules and settings, with
    /// instances of its own (`init` run again) and no metrics: what a
    /// reload tries the sample legs and the held calls on, and what an
    /// enforcement's blast radius decides with, without the live set's
    /// state, health or counters seeing any of it.
    pub fn fork(&self) -> Result<Plugin, PolicyError> {
        Plugin {
            name: self.name,
            hash: self.hash.clone(),
            contract: self.contract.clone(),
            cache: self.cache.clone(),
            rules: self.rules.clone(),
            settings: self.settings,
            pre: self.pre.clone(),
            runtime: self.runtime.clone(),
            live: (0..self.live.len()).map(|_| Mutex::new(None)).collect(),
            next_wait: AtomicUsize::new(0),
            cost: Default::default(),
            health: Default::default(),
            counters: Counters::default(),
            own_counters: Arc::new(PluginCounters::detached(self.name)),
            quiet: true,
            reasons: Default::default(),
            datasets: self.datasets.clone(),
            data_versions: self.data_versions,
        }
        .ready()
    }

    /// The plugin with its first instance made and `init` run.
    fn ready(self) -> Result<Plugin, PolicyError> {
        let name = self.name.as_str();
        let live = self.instantiate().map_err(|not_ready| match not_ready {
            NotReady::RulesRefused(message) => PolicyError::InitRejected {
                plugin: name.into(),
                message: super::error::clip(message),
            },
            NotReady::Failed(failure) => PolicyError::InitFailed {
                plugin: name.into(),
                failure,
            },
            NotReady::DatasetNotGranted(dataset) => PolicyError::DatasetNotGranted {
                plugin: name.into(),
                dataset,
            },
        })?;
        *lock(&self.live[0]) = Some(live);
        Ok(self)
    }

    pub fn name(&self) -> PluginName {
        self.name
    }

    /// The SHA-256 of the rules text `init` got (hex), if it got any: which
    /// rules are live, next to [`Plugin::hash`] for the code.
    pub fn rules_hash(&self) -> Option<String> {
        (!self.rules.is_empty()).then(|| hex(&Sha256::digest(self.rules.as_bytes())))
    }

    /// The hex SHA-256 of the component: its version.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn contract(&self) -> &ContractInfo {
        &self.contract
    }

    /// What the compile cache did when this plugin was loaded.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// The datasets it may open.
    pub fn datasets(&self) -> &Granted {
        &self.datasets
    }

    /// Its datasets' `name@version`s, as its verdicts name them.
    pub fn data_versions(&self) -> Option<crate::model::DataVersions> {
        self.data_versions
    }

    /// The runtime the plugin runs in (its `held-legs` source, its engine).
    pub fn runtime(&self) -> &PolicyRuntime {
        &self.runtime
    }

    /// The plugin's own counters (`count`), by name.
    pub fn own_counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.own_counters.values()
    }

    pub fn stats(&self) -> PluginStats {
        let c = &self.counters;
        PluginStats {
            calls: c.calls.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            quarantined_skips: c.quarantined_skips.load(Ordering::Relaxed),
            dropped_log_lines: c.dropped_log_lines.load(Ordering::Relaxed),
            dropped_output_bytes: c.dropped_output_bytes.load(Ordering::Relaxed),
            recycled: c.recycled.load(Ordering::Relaxed),
            peak_memory_bytes: c.peak_memory.load(Ordering::Relaxed),
        }
    }

    /// Whether the plugin is benched right now.
    /// Whether any of the plugin's exports is quarantined now.
    pub fn is_quarantined(&self) -> bool {
        let now = Instant::now();
        self.health
            .iter()
            .any(|(_, health)| lock(health).quarantined_at(now))
    }

    /// `on-call-leg-sync` for one batch: one decision per leg, or a failure.
    /// A plugin built for contract 0.2.0 gets the batch's text as a string.
    pub fn sync_legs(&self, batch: LegBatchRef<'_>) -> Result<Decided, PluginFailure> {
        fn export(exports: &Exports) -> &Func {
            &exports.leg_sync
        }
        let count = batch.legs.len();
        let decided = match self.contract.contract {
            Contract::V0_4 | Contract::V0_3 => {
                self.decide::<_, Decisions>(Export::LegSync, export, batch, count)
            }
            Contract::V0_2 => {
                self.decide::<_, Decisions>(Export::LegSync, export, batch.as_v0_2(), count)
            }
        };
        decided.map(always)
    }

    /// `on-link-sync` for one batch.
    pub fn sync_links(&self, links: &[LinkRecord]) -> Result<Decided, PluginFailure> {
        self.decide::<_, Decisions>(
            Export::LinkSync,
            |exports| &exports.link_sync,
            links,
            links.len(),
        )
        .map(always)
    }

    /// `on-call-leg-terminated` for one batch (notification only), in the
    /// record of the plugin's contract version.
    pub fn notify_terminated(&self, notice: &TerminationNotice) -> Result<(), PluginFailure> {
        fn call<P: ComponentType + Lower>(
            exports: &Exports,
            store: &mut Store<PluginState>,
            legs: &[P],
        ) -> wasmtime::Result<()> {
            let func = exports.terminated.typed::<(&[P],), ()>(&*store)?;
            func.call(store, (legs,))
        }
        self.call_guest(Export::Terminated, |exports, store| {
            match self.contract.contract {
                Contract::V0_4 => call(exports, store, &notice.current),
                Contract::V0_3 | Contract::V0_2 => call(exports, store, notice.older()),
            }
        })
    }

    /// Whether the plugin has the mixer decision (built for 0.4.0); it may
    /// still abstain, call by call.
    pub fn has_mixer_exports(&self) -> bool {
        self.contract.contract == Contract::V0_4
    }

    /// `on-mixer-sync` for one batch: one decision per mixer, none when the
    /// plugin abstains (or was built for a contract without mixers, and is
    /// not called).
    pub fn sync_mixers(&self, mixers: &[wit::Mixer]) -> Result<Option<Decided>, PluginFailure> {
        if !self.has_mixer_exports() {
            return Ok(None);
        }
        self.decide::<_, MixerDecisions>(
            Export::MixerSync,
            |exports| {
                &exports
                    .mixers
                    .as_ref()
                    .expect("a 0.4.0 plugin's exports")
                    .sync
            },
            mixers,
            mixers.len(),
        )
    }

    /// `on-mixer-terminated` for one batch (notification only); nothing for
    /// a plugin built for a contract without mixers.
    pub fn notify_mixers_terminated(
        &self,
        mixers: &[wit::TerminatedMixer],
    ) -> Result<(), PluginFailure> {
        if !self.has_mixer_exports() {
            return Ok(());
        }
        self.call_guest(Export::MixerTerminated, |exports, store| {
            let export = exports.mixers.as_ref().expect("a 0.4.0 plugin's exports");
            let func = export
                .terminated
                .typed::<(&[wit::TerminatedMixer],), ()>(&*store)?;
            func.call(store, (mixers,))
        })
    }

    /// One sync export over a batch of `count` items: exactly one decision
    /// per item, or none when the export may abstain and did ([`Answer`]).
    fn decide<P: ComponentType + Lower, A: Answer>(
        &self,
        name: Export,
        export: fn(&Exports) -> &Func,
        batch: P,
        count: usize,
    ) -> Result<Option<Decided>, PluginFailure> {
        // The guest's own time: not the wait for a busy instance (another
        // chunk's call), which would make the plugin look slower per item.
        let mut took = Duration::ZERO;
        let result = self.call_guest(name, |exports, store| {
            let func = export(exports).typed::<(P,), A>(&*store)?;
            let started = Instant::now();
            let called = func.call(&mut *store, (batch,));
            took = started.elapsed();
            let Some(decisions) = called?.decisions() else {
                store.data_mut().take_explained();
                return Ok(None);
            };
            if decisions.len() != count {
                return Err(wasmtime::Error::new(Malformed(format!(
                    "returned {} decisions for {count} items",
                    decisions.len(),
                ))));
            }
            let explained = store.data_mut().take_explained();
            Ok(Some(Decided {
                decisions: decisions.into_iter().map(Decision::from).collect(),
                reasons: self.reasons_of(explained, count),
            }))
        });
        match &result {
            Ok(_) => self.cost[name].measured(count, took),
            Err(failure) if failure.kind == FailureKind::Deadline => {
                self.cost[name].overran(count, self.settings.limits.call_deadline)
            }
            Err(_) => {}
        }
        result
    }

    /// The reasons a call gave (`explain`), interned, for items it had.
    fn reasons_of(
        &self,
        explained: Vec<(u32, String)>,
        count: usize,
    ) -> Vec<(u32, crate::model::Reason)> {
        if explained.is_empty() {
            return Vec::new();
        }
        let mut known = lock(&self.reasons);
        explained
            .into_iter()
            .filter(|(at, _)| (*at as usize) < count)
            .map(|(at, reason)| {
                let reason = super::sandbox::truncate(&reason, MAX_REASON);
                let interned = match known.get(reason) {
                    Some(interned) => *interned,
                    None if known.len() < MAX_REASONS => {
                        let interned = crate::model::Reason::new(reason);
                        known.insert(reason.to_string(), interned);
                        interned
                    }
                    None => crate::model::Reason::new("other"),
                };
                (at, interned)
            })
            .collect()
    }

    /// How many items one call of the sync export `export` should carry,
    /// within `1..=batch_size`, from its calls so far (see
    /// `CallCost::batch_limit`): a correct but slow plugin gets batches
    /// it can answer in time, instead of overrunning on a full batch and
    /// having the whole batch decided by its failure policy; one slow per
    /// call gets full batches, not one leg a call.
    pub fn batch_limit(&self, export: Export, batch_size: usize) -> usize {
        self.cost[export].batch_limit(self.settings.limits.call_deadline, batch_size)
    }

    /// The time to decide `items` with `export` once its batches have
    /// settled, as its calls so far predict.
    pub fn predict(&self, export: Export, items: usize, batch_size: usize) -> Duration {
        self.cost[export].predict(items, self.settings.limits.call_deadline, batch_size)
    }

    /// Runs one guest call with the deadline armed; on any failure discards
    /// the instance and updates the health record.
    fn call_guest<R>(
        &self,
        export: Export,
        f: impl FnOnce(&Exports, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let slot = export;
        if self.lock_health(slot).quarantined_at(Instant::now()) {
            self.counters
                .quarantined_skips
                .fetch_add(1, Ordering::Relaxed);
            if !self.quiet {
                metrics::counter!(
                    crate::metrics::PLUGIN_FAILURES,
                    "plugin" => self.name.as_str(),
                    "kind" => FailureKind::Quarantined.as_str()
                )
                .increment(1);
            }
            return Err(PluginFailure::new(
                FailureKind::Quarantined,
                "plugin is quarantined",
            ));
        }
        let mut live = self.lock_live();
        if live.is_none() {
            match self.instantiate() {
                Ok(fresh) => *live = Some(fresh),
                Err(not_ready) => return Err(self.failed(slot, not_ready.into())),
            }
        }
        let instance = live.as_mut().expect("instantiated above");
        instance
            .store
            .set_epoch_deadline(deadline_ticks(self.settings.limits.call_deadline));
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = f(&instance.exports, &mut instance.store);
        if !self.quiet {
            metrics::histogram!(
                crate::metrics::PLUGIN_CALL_SECONDS,
                "plugin" => self.name.as_str(),
                "export" => export.name()
            )
            .record(started.elapsed().as_secs_f64());
        }
        self.count_dropped(instance.store.data_mut().end_call());
        let memory = &instance.store.data().memory;
        self.counters
            .peak_memory
            .fetch_max(memory.largest as u64, Ordering::Relaxed);
        instance.calls += 1;
        let used_up = self
            .settings
            .max_calls_per_instance
            .is_some_and(|max| instance.calls >= max);
        match result {
            Ok(value) => {
                self.lock_health(slot).record_success();
                if memory.nearly_full() || used_up {
                    self.recycle(&mut live, used_up);
                }
                Ok(value)
            }
            Err(error) => {
                let failure = classify(&error, instance.store.data().memory.exceeded);
                // Never reuse an instance whose state may be broken.
                *live = None;
                Err(self.failed(slot, failure))
            }
        }
    }

    /// Replaces an instance that a call left near its memory cap (or that
    /// used up its `max_calls_per_instance`) with a fresh one, at the next
    /// call: before a batch fails on the cap.
    fn recycle(&self, live: &mut Option<Live>, used_up: bool) {
        *live = None;
        self.counters.recycled.fetch_add(1, Ordering::Relaxed);
        if !self.quiet {
            metrics::counter!(crate::metrics::PLUGIN_RECYCLES, "plugin" => self.name.as_str())
                .increment(1);
        }
        if used_up {
            tracing::debug!(plugin = %self.name, calls = self.settings.max_calls_per_instance, "plugin instance used up its calls; replaced by a fresh one");
        } else {
            tracing::debug!(plugin = %self.name, memory_mb = self.settings.limits.memory_bytes >> 20, "plugin instance near its memory cap; replaced by a fresh one");
        }
    }

    fn failed(&self, slot: Export, failure: PluginFailure) -> PluginFailure {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if !self.quiet {
            metrics::counter!(
                crate::metrics::PLUGIN_FAILURES,
                "plugin" => self.name.as_str(),
                "kind" => failure.kind.as_str()
            )
            .increment(1);
        }
        let benched = self
            .lock_health(slot)
            .record_failure(Instant::now(), &self.settings.quarantine);
        tracing::warn!(plugin = %self.name, export = slot.name(), kind = failure.kind.as_str(), detail = %failure.detail, "plugin call failed; instance discarded");
        if let Some(length) = benched
            && !self.quiet
        {
            metrics::counter!(crate::metrics::QUARANTINES, "plugin" => self.name.as_str())
                .increment(1);
            tracing::error!(plugin = %self.name, export = slot.name(), seconds = length.as_secs_f64(), "plugin export keeps failing; quarantined");
        }
        failure
    }

    /// A fresh instance with `init` run, under the plugin's limits.
    fn instantiate(&self) -> Result<Live, NotReady> {
        self.counters.instantiations.fetch_add(1, Ordering::Relaxed);
        let limits = self.settings.limits;
        let mut store = Store::new(
            self.runtime.engine(),
            PluginState::new(
                self.name,
                limits.memory_bytes,
                self.runtime.held_legs().clone(),
                self.own_counters.clone(),
                self.runtime.clock(),
                self.datasets.clone(),
            ),
        );
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(deadline_ticks(limits.call_deadline));
        // At the deadline the call traps, unless it spent time waiting for
        // the host (`held-legs`): that time is not the plugin's, and the
        // deadline moves by as much.
        store.epoch_deadline_callback(|mut cx| {
            let owed = std::mem::take(&mut cx.data_mut().host_time);
            Ok(if owed.is_zero() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(deadline_ticks(owed))
            })
        });
        let to_failure = |store: &Store<PluginState>, e: wasmtime::Error| {
            let mut failure = classify(&e, store.data().memory.exceeded);
            if failure.kind == FailureKind::Trap {
                failure.kind = FailureKind::Instantiate;
            }
            failure
        };
        let exports = match self.instantiate_exports(&mut store) {
            Ok(exports) => exports,
            Err(e) => return Err(NotReady::Failed(to_failure(&store, e))),
        };
        let init = exports
            .init
            .typed::<(&str,), (Result<(), String>,)>(&store)
            .and_then(|init| init.call(&mut store, (&self.rules,)))
            .map(|(result,)| result);
        store.data_mut().end_call();
        if let Some(dataset) = store.data_mut().take_refused_dataset() {
            return Err(NotReady::DatasetNotGranted(dataset));
        }
        match init {
            Ok(Ok(())) => Ok(Live {
                store,
                exports,
                calls: 0,
            }),
            Ok(Err(message)) => Err(NotReady::RulesRefused(message)),
            Err(e) => Err(NotReady::Failed(to_failure(&store, e))),
        }
    }

    fn count_dropped(&self, (lines, bytes): (u32, usize)) {
        self.counters
            .dropped_log_lines
            .fetch_add(lines.into(), Ordering::Relaxed);
        self.counters
            .dropped_output_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn instantiate_exports(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Exports> {
        let instance = self.pre.instantiate(&mut *store)?;
        let policy = self.contract.contract.policy_export();
        let interface = instance
            .get_export_index(&mut *store, None, &policy)
            .ok_or_else(|| wasmtime::format_err!("no export {policy}"))?;
        let mut func = |name: &str| {
            instance
                .get_export_index(&mut *store, Some(&interface), name)
                .and_then(|index| instance.get_func(&mut *store, index))
                .ok_or_else(|| wasmtime::format_err!("no export {name}"))
        };
        let mixers = if self.contract.contract == Contract::V0_4 {
            Some(MixerExports {
                sync: func(Export::MixerSync.name())?,
                terminated: func(Export::MixerTerminated.name())?,
            })
        } else {
            None
        };
        let exports = Exports {
            init: func("init")?,
            leg_sync: func(Export::LegSync.name())?,
            link_sync: func(Export::LinkSync.name())?,
            terminated: func(Export::Terminated.name())?,
            mixers,
        };
        exports.check_types(&*store, self.contract.contract)?;
        Ok(exports)
    }

    /// A free instance slot, or (all busy) one to wait for.
    fn lock_live(&self) -> MutexGuard<'_, Option<Live>> {
        for slot in &self.live {
            match slot.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let next = self.next_wait.fetch_add(1, Ordering::Relaxed);
        lock(&self.live[next % self.live.len()])
    }

    fn lock_health(&self, slot: Export) -> MutexGuard<'_, Health> {
        lock(&self.health[slot])
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One batch of termination notices, in the 0.4.0 record; plugins built
/// for an older contract get it without `held` / `decided-by`.
pub struct TerminationNotice {
    current: Vec<wit::TerminatedLeg>,
    /// The older record, made once if an older plugin is in the chain.
    older: std::sync::OnceLock<Vec<TerminatedLegV0_3>>,
}

impl TerminationNotice {
    /// The notice of `ended`, which ended for `reason`.
    pub fn new(ended: &[crate::model::EndedLeg], reason: crate::model::TerminationReason) -> Self {
        let current = ended
            .iter()
            .map(|ended| wit::TerminatedLeg {
                leg: (&ended.leg).into(),
                reason: reason.into(),
                held: ended.custody.held(),
                decided_by: ended
                    .custody
                    .decided_by()
                    .filter(|name| name.as_str() != super::chain::NO_PLUGIN)
                    .map(|name| name.as_str().to_string()),
            })
            .collect();
        TerminationNotice {
            current,
            older: Default::default(),
        }
    }

    fn older(&self) -> &[TerminatedLegV0_3] {
        self.older.get_or_init(|| {
            self.current
                .iter()
                .map(|ended| TerminatedLegV0_3 {
                    leg: ended.leg.clone(),
                    reason: ended.reason,
                })
                .collect()
        })
    }
}

/// Why a fresh instance is not ready to decide.
enum NotReady {
    /// `init` answered `Err`: the plugin refused its rules, in its own
    /// words.
    RulesRefused(String),
    /// It could not be created, or `init` trapped or overran.
    Failed(PluginFailure),
    /// `init` asked for a dataset its config does not grant.
    DatasetNotGranted(String),
}

impl From<NotReady> for PluginFailure {
    /// For a call that had to re-create the instance: either way, the
    /// plugin could not be instantiated.
    fn from(not_ready: NotReady) -> Self {
        match not_ready {
            NotReady::RulesRefused(message) => PluginFailure::new(
                FailureKind::Instantiate,
                format!("init rejected the rules: {message}"),
            ),
            NotReady::Failed(failure) => failure,
            NotReady::DatasetNotGranted(dataset) => PluginFailure::new(
                FailureKind::Instantiate,
                format!("init asked for dataset {dataset}, which is not granted"),
            ),
        }
    }
}

/// A guest answer that does not fit the contract.
#[derive(Debug)]
struct Malformed(String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

fn classify(error: &wasmtime::Error, memory_exceeded: bool) -> PluginFailure {
    if memory_exceeded {
        return PluginFailure::new(FailureKind::MemoryCap, format!("{error:#}"));
    }
    if let Some(malformed) = error.downcast_ref::<Malformed>() {
        return PluginFailure::new(FailureKind::Malformed, malformed.0.clone());
    }
    if error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return PluginFailure::new(FailureKind::Deadline, "call deadline exceeded");
    }
    PluginFailure::new(FailureKind::Trap, format!("{error:#}"))
}
