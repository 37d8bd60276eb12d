//! The host's audit trail: one event per callback and state change.
//!
//! Every event goes to subscribers in the process (the demo, tests) and, with
//! `--events FILE`, to a JSON-lines file flushed as written, so anyone can
//! audit what the host decided and why.

use crate::json_line::JsonLine;
use crate::model::{Decision, JoinRole, LegId, LinkId, MixerId, PluginName, TerminationReason};
use crate::policy::FailureKind;
mod log;

use anyhow::Context;
use log::EventLog;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HostEvent {
    /// `OnCallLegSync`: an unknown leg was decided.
    CallLegSync {
        leg: LegId,
        decision: Decision,
        plugin: PluginName,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure: Option<FailureKind>,
        /// Why, in the plugin's words (`explain`), when it said.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "reason_text"
        )]
        reason: Option<crate::model::Reason>,
        /// The versions of the datasets the deciding plugin consults
        /// (`name@version,...`), when it has any.
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "data_text")]
        datasets: Option<crate::model::DataVersions>,
    },
    /// `OnLinkSync`: an unknown link was decided.
    LinkSync {
        link: LinkId,
        legs: [LegId; 2],
        decision: Decision,
        plugin: PluginName,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure: Option<FailureKind>,
    },
    /// A link the engine offered was dropped because one of its legs was refused.
    LinkDropped { link: LinkId, legs: [LegId; 2] },
    /// An unknown mixer was decided (rebuilt with `legs` joined, or
    /// refused: freed at the engine).
    MixerSync {
        mixer: MixerId,
        legs: u32,
        decision: Decision,
        plugin: PluginName,
        #[serde(skip_serializing_if = "Option::is_none")]
        failure: Option<FailureKind>,
        /// Why, in the plugin's words (`explain`), when it said.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "reason_text"
        )]
        reason: Option<crate::model::Reason>,
    },
    /// A mixer the host held ended (its legs live on, each on its own).
    MixerTerminated {
        mixer: MixerId,
        reason: TerminationReason,
    },
    /// A leg joined a mixer the host holds (live).
    LegJoined {
        leg: LegId,
        mixer: MixerId,
        role: JoinRole,
    },
    /// A leg left a mixer (live; a leg that ends leaves its mixers
    /// without a line of its own).
    LegUnjoined { leg: LegId, mixer: MixerId },
    /// `OnCallLegTerminated`.
    CallLegTerminated {
        leg: LegId,
        reason: TerminationReason,
    },
    /// The engine link changed state.
    Link {
        state: LinkState,
        /// A string: boot ids are random 64-bit numbers, which jq and
        /// JavaScript would round as JSON numbers.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "crate::json_line::u64_as_string"
        )]
        boot_id: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The host's role in its pair changed: `active` (the engine accepted
    /// it as controller, under `epoch`) or `standby` (the engine has
    /// another controller, named in `detail`).
    Role {
        role: Role,
        #[serde(skip_serializing_if = "Option::is_none")]
        engine: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A resync finished.
    ResyncDone(Box<ResyncSummary>),
    /// A plugin set was loaded (or failed to load).
    Reload(Box<ReloadReport>),
    /// An operator enforced the working set on the calls held.
    Enforced(Box<Enforced>),
    /// How the shadow plugin set's verdicts differed from the live ones
    /// since the last such line (after each resync).
    Shadow(Box<crate::policy::shadow::ShadowSummary>),
}

/// The engine link's state, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Connected, resync in progress.
    Resyncing,
    /// Connected and in sync; live events flow.
    Connected,
    /// The link is down; the grace timer runs.
    Disconnected,
    /// The grace timer expired: every context was destroyed.
    Purged,
}

/// A host's role in its pair (a lone host is active once connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The engine has accepted no connection of this host yet (or it lost
    /// its link and has not heard from the engine since).
    Connecting,
    /// The engine's controller.
    Active,
    /// The engine has another controller; this host asks for the slot at
    /// `link.standby_retry_ms` and takes over when it frees.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connecting => "connecting",
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Resyncing => "resyncing",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Purged => "purged",
        }
    }

    pub const ALL: [&'static str; 5] = [
        "connecting",
        "resyncing",
        "connected",
        "disconnected",
        "purged",
    ];
}

impl Role {
    pub const ALL: [&'static str; 3] = ["connecting", "active", "standby"];
}

/// The counts of one resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResyncSummary {
    pub engine_restarted: bool,
    pub known: u64,
    pub rebuilt: u64,
    pub refused: u64,
    pub absent: u64,
    pub links_rebuilt: u64,
    pub links_refused: u64,
    pub millis: u64,
    pub phases: ResyncPhases,
    /// What the snapshot got wrong (each ignored).
    #[serde(default)]
    pub anomalies: crate::resync::Anomalies,
    /// Legs decided by the plugins' failure policies because the resync's
    /// time for decisions ran out.
    #[serde(default)]
    pub decided_by_budget: u64,
    /// Mixers (protocol 4): listed and held, decided, held but not listed.
    #[serde(default)]
    pub mixers_known: u64,
    #[serde(default)]
    pub mixers_rebuilt: u64,
    #[serde(default)]
    pub mixers_refused: u64,
    #[serde(default)]
    pub mixers_absent: u64,
}

/// Where the time of one resync went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResyncPhases {
    /// Hello to the end of the snapshot, with the diff done as chunks arrive.
    pub snapshot: u64,
    /// Of which diffing the chunks against the table (legs and links).
    pub diff: u64,
    /// `OnCallLegSync` for the unknown legs.
    pub decisions: u64,
    /// Adopting rebuilt legs, RESUME records, refused-leg notices.
    pub adopt: u64,
    /// `OnLinkSync`.
    pub link_decisions: u64,
    /// Absent legs: events, CDR ENDs, notices.
    pub absent: u64,
    /// Waiting for the engine to acknowledge the drops.
    pub drop_acks: u64,
    /// Waiting for the adopted calls' STARTs to be durable, and writing
    /// their `call-leg-sync` events (which wait for those STARTs).
    #[serde(default)]
    pub durable_and_events: u64,
    /// Mixers: the diff, decisions, endings.
    #[serde(default)]
    pub mixers: u64,
}

impl ResyncPhases {
    /// All phases, in microseconds.
    pub fn total(&self) -> u64 {
        self.snapshot
            + self.decisions
            + self.adopt
            + self.link_decisions
            + self.absent
            + self.drop_acks
            + self.durable_and_events
            + self.mixers
    }
}

/// What an enforcement did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Enforced {
    /// The set enforced (its hash, as `legsync reload` shows it).
    pub set_hash: String,
    /// `name@sha256-prefix` of its plugins.
    pub plugins: Vec<String>,
    /// Legs ended and dropped (those of the blast radius still held).
    pub ended_legs: u64,
    /// Of them, answered calls: each got its END.
    pub ended_answered: u64,
    /// Legs of the blast radius that had ended meanwhile.
    pub gone_meanwhile: u64,
}

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// What asked for it: `watch`, `SIGHUP`, `retry`, `api`.
    pub trigger: String,
    pub outcome: ReloadOutcome,
    /// `name@sha256-prefix` of every plugin of the set now deciding.
    pub plugins: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Building the new set (compile, instantiate, init), off to the side.
    pub build_micros: u64,
    /// The swap itself: the only time decisions could wait.
    pub swap_micros: u64,
    /// Settings outside `[policy]` that changed in the config file: not
    /// applied (a restart applies them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
    /// The new set's identity (what `legsync reload --accept` names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_hash: Option<String>,
    /// What the new set would refuse of the calls held when it was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<crate::policy::blast::BlastRadius>,
    /// The datasets of the set now deciding, each with its version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<crate::policy::datasets::DatasetInfo>,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::HeldBack => "held-back",
            ReloadOutcome::RejectedWillRetry => "rejected-will-retry",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

/// The outcome of a reload attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadOutcome {
    /// The new set replaced the old one.
    Applied,
    /// The new set loaded, but would refuse more of the calls held than
    /// the guard allows: the old one stays until the set is accepted.
    HeldBack,
    /// The new set failed; the old one stays; another attempt follows.
    RejectedWillRetry,
    /// The new set failed; the old one stays.
    Rejected,
}

// A resync holds a million events at once (until their STARTs are durable,
// then in the log's queue): the big, rare variants are boxed so that each
// event costs 72 bytes, not 168.
const _: () = assert!(std::mem::size_of::<HostEvent>() <= 72);

impl HostEvent {
    /// Per-leg and per-link events, as opposed to state changes.
    pub fn is_per_item(&self) -> bool {
        matches!(
            self,
            HostEvent::CallLegSync { .. }
                | HostEvent::LinkSync { .. }
                | HostEvent::LinkDropped { .. }
                | HostEvent::CallLegTerminated { .. }
                | HostEvent::MixerSync { .. }
                | HostEvent::MixerTerminated { .. }
                | HostEvent::LegJoined { .. }
                | HostEvent::LegUnjoined { .. }
        )
    }

    /// Appends a per-item event's line to the event log's buffer as
    /// [`Line`] serializes it, by hand ([`JsonLine`]): a cold resync writes
    /// a million of them, and serde's flattened enum was most of the cost
    /// of a takeover's link phase. Any other event: `false`, nothing
    /// written.
    fn write_item_line(&self, time_ms: u64, out: &mut Vec<u8>) -> bool {
        let mut line = JsonLine::new(out);
        line.num("time_ms", time_ms);
        let mut why = None;
        let mut data = None;
        let (decision, plugin, failure) = match self {
            HostEvent::CallLegSync {
                leg,
                decision,
                plugin,
                failure,
                reason,
                datasets,
            } => {
                line.text("kind", "call-leg-sync").num("leg", *leg);
                why = *reason;
                data = *datasets;
                (decision, plugin, failure)
            }
            HostEvent::LinkSync {
                link,
                legs,
                decision,
                plugin,
                failure,
            } => {
                line.text("kind", "link-sync")
                    .num("link", *link)
                    .nums("legs", legs);
                (decision, plugin, failure)
            }
            HostEvent::LinkDropped { link, legs } => {
                line.text("kind", "link-dropped")
                    .num("link", *link)
                    .nums("legs", legs)
                    .end();
                return true;
            }
            HostEvent::CallLegTerminated { leg, reason } => {
                line.text("kind", "call-leg-terminated")
                    .num("leg", *leg)
                    .text("reason", reason.as_str())
                    .end();
                return true;
            }
            _ => return false,
        };
        line.text("decision", decision.as_str())
            .text("plugin", plugin.as_str());
        if let Some(failure) = failure {
            line.text("failure", failure.as_str());
        }
        if let Some(why) = why {
            line.text("reason", why.as_str());
        }
        if let Some(data) = data {
            line.text("datasets", data.as_str());
        }
        line.end();
        true
    }
}

fn data_text<S: serde::Serializer>(
    data: &Option<crate::model::DataVersions>,
    out: S,
) -> Result<S::Ok, S::Error> {
    match data {
        Some(data) => out.serialize_str(data.as_str()),
        None => out.serialize_none(),
    }
}

fn reason_text<S: serde::Serializer>(
    reason: &Option<crate::model::Reason>,
    out: S,
) -> Result<S::Ok, S::Error> {
    match reason {
        Some(reason) => out.serialize_str(reason.as_str()),
        None => out.serialize_none(),
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u64,
    #[serde(flatten)]
    event: &'a HostEvent,
}

/// Where events go.
#[derive(Clone)]
pub struct Events {
    subscribers: broadcast::Sender<HostEvent>,
    /// Only state changes, resync summaries and reloads: a subscriber that
    /// cannot keep up with a million per-leg events still sees these.
    summaries: broadcast::Sender<HostEvent>,
    /// The event log's thread, with `--events FILE`.
    log: Option<EventLog>,
    /// How writing the event log goes.
    audit: Arc<Audit>,
}

/// The event log's health: failures are counted, logged once per
/// [`AUDIT_LOG_EVERY`] with their count, shown by `/healthz`, and, when the
/// log is required, stop the host.
#[derive(Default)]
struct Audit {
    errors: std::sync::atomic::AtomicU64,
    last_error_ms: std::sync::atomic::AtomicU64,
    /// Failures since the last log line about them, and when that was.
    unlogged: Mutex<(u64, Option<std::time::Instant>)>,
    required: std::sync::atomic::AtomicBool,
    failed: tokio_util::sync::CancellationToken,
}

impl Audit {
    /// Counts a failed write of the event log at `path`; logs it (at most
    /// once per [`AUDIT_LOG_EVERY`]); stops the host if the log is required.
    fn error(&self, path: &Path, error: &std::io::Error) {
        use std::sync::atomic::Ordering;
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms
            .store(crate::model::now_ms(), Ordering::Relaxed);
        metrics::counter!(crate::metrics::EVENT_LOG_ERRORS).increment(1);
        if self.required.load(Ordering::Relaxed) {
            self.failed.cancel();
        }
        let mut unlogged = self.unlogged.lock().unwrap_or_else(|e| e.into_inner());
        unlogged.0 += 1;
        if unlogged.1.is_none_or(|at| at.elapsed() >= AUDIT_LOG_EVERY) {
            tracing::error!(
                error = %error,
                failed_writes = unlogged.0,
                file = %path.display(),
                "cannot write the event log: the audit trail is incomplete (one line per {} s)",
                AUDIT_LOG_EVERY.as_secs()
            );
            *unlogged = (0, Some(std::time::Instant::now()));
        }
    }
}

/// At most one log line about event-log failures this often.
pub const AUDIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("file", &self.log.is_some())
            .finish()
    }
}

impl Events {
    /// Events for subscribers only.
    pub fn new() -> Self {
        let (subscribers, _) = broadcast::channel(1 << 16);
        let (summaries, _) = broadcast::channel(1 << 10);
        Events {
            subscribers,
            summaries,
            log: None,
            audit: Arc::default(),
        }
    }

    /// With `required`, a failure to write the event log stops the host
    /// (see [`Events::audit_failed`]) instead of letting it run without
    /// its audit trail.
    pub fn set_required(&self, required: bool) {
        use std::sync::atomic::Ordering;
        self.audit.required.store(required, Ordering::Relaxed);
    }

    /// Cancelled at the first failure of a required event log.
    pub fn audit_failed(&self) -> tokio_util::sync::CancellationToken {
        self.audit.failed.clone()
    }

    /// Failed event-log writes so far (a write carries one line or a
    /// buffer of many), and when the last failed (Unix ms; 0 for never).
    pub fn audit_errors(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.audit.errors.load(Ordering::Relaxed),
            self.audit.last_error_ms.load(Ordering::Relaxed),
        )
    }

    /// Events also appended to `path`, by the event log's thread
    /// (`log`): subscribers get each batch once it is in the file.
    pub fn with_file(path: &Path) -> anyhow::Result<Self> {
        let events = Self::new();
        let log = EventLog::open(path, events.audit.clone(), events.subscribers.clone())?;
        Ok(Events {
            log: Some(log),
            ..events
        })
    }

    /// After the event log was moved away (logrotate): writes what is
    /// queued to the old file and goes on in a new one at the same path.
    /// Nothing without a file.
    pub async fn reopen(&self) -> anyhow::Result<()> {
        match &self.log {
            Some(log) => Ok(log.reopen().await.context("cannot reopen the event log")?),
            None => Ok(()),
        }
    }

    /// Returns once every event emitted so far is in the file (at once
    /// without one). The host calls it when it stops.
    pub async fn flush(&self) {
        if let Some(log) = &self.log {
            log.flush().await;
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.subscribers.subscribe()
    }

    /// Every event but the per-leg and per-link ones.
    pub fn subscribe_summaries(&self) -> broadcast::Receiver<HostEvent> {
        self.summaries.subscribe()
    }

    /// Whether anyone takes per-leg events (a file or a full subscriber);
    /// when not, callers skip building them (a million per resync).
    pub fn wants_items(&self) -> bool {
        self.log.is_some() || self.subscribers.receiver_count() > 0
    }

    pub fn emit(&self, event: HostEvent) {
        self.emit_all(std::iter::once(event));
    }

    /// Emits a batch: summaries at once; with a file, one write and flush
    /// for the whole batch on the log's thread, which then passes it on to
    /// full subscribers.
    pub fn emit_all(&self, events: impl IntoIterator<Item = HostEvent>) {
        let time_ms = crate::model::now_ms();
        let listening = self.subscribers.receiver_count() > 0;
        let summarizing = self.summaries.receiver_count() > 0;
        if let Some(log) = &self.log {
            let events: Vec<HostEvent> = events.into_iter().collect();
            if summarizing {
                for event in events.iter().filter(|e| !e.is_per_item()) {
                    let _ = self.summaries.send(event.clone());
                }
            }
            log.write(time_ms, events);
            return;
        }
        if !listening && !summarizing {
            return; // nobody to tell: do not even build the events
        }
        for event in events {
            if summarizing && !event.is_per_item() {
                let _ = self.summaries.send(event.clone());
            }
            if listening {
                let _ = self.subscribers.send(event);
            }
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's thread writes a batch before passing it on: a subscriber
    /// that saw an event finds it (and all before it) in the file; and a
    /// flush waits for what is queued.
    #[tokio::test]
    async fn subscribers_see_an_event_only_once_it_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let events = Events::with_file(&path).unwrap();
        let mut seen = events.subscribe();
        let ended = (0..10_000).map(|leg| HostEvent::CallLegTerminated {
            leg,
            reason: TerminationReason::Released,
        });
        events.emit_all(ended);
        events.emit(HostEvent::Link {
            state: LinkState::Connected,
            boot_id: None,
            detail: None,
        });
        while !matches!(seen.recv().await.unwrap(), HostEvent::Link { .. }) {}
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 10_001);

        events.emit_all((0..1_000).map(|leg| HostEvent::CallLegTerminated {
            leg,
            reason: TerminationReason::HostShutdown,
        }));
        events.flush().await;
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 11_001);
    }

    /// The hand-written lines are serde_json's, byte for byte.
    #[test]
    fn a_boot_id_is_a_string_so_jq_reads_it_exactly() {
        let event = HostEvent::Link {
            state: LinkState::Connected,
            boot_id: Some(u64::MAX),
            detail: None,
        };
        let mut line = Vec::new();
        log::write_line(&mut line, &mut Vec::new(), 1, &event).unwrap();
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.contains(r#""boot_id":"18446744073709551615""#),
            "{line}"
        );
    }

    #[test]
    fn per_item_lines_are_what_serde_writes() {
        let plugin = PluginName::new("20-\"odd\" rules");
        let events = [
            HostEvent::CallLegSync {
                leg: 7,
                decision: Decision::Refuse,
                plugin,
                failure: None,
                reason: Some(crate::model::Reason::new("no \"premium\" calls")),
                datasets: Some(crate::model::DataVersions::new("blocked@0123456789abcdef")),
            },
            HostEvent::CallLegSync {
                leg: u64::MAX,
                decision: Decision::Rebuild,
                plugin,
                failure: Some(FailureKind::MemoryCap),
                reason: None,
                datasets: None,
            },
            HostEvent::LinkSync {
                link: 9,
                legs: [7, 8],
                decision: Decision::Rebuild,
                plugin,
                failure: Some(FailureKind::ResyncBudget),
            },
            HostEvent::LinkSync {
                link: 10,
                legs: [1, 2],
                decision: Decision::Refuse,
                plugin,
                failure: None,
            },
            HostEvent::LinkDropped {
                link: 11,
                legs: [3, 4],
            },
            HostEvent::CallLegTerminated {
                leg: 5,
                reason: TerminationReason::AbsentAfterResync,
            },
            HostEvent::Link {
                state: LinkState::Connected,
                boot_id: Some(3),
                detail: None,
            },
        ];
        for event in &events {
            let mut ours = Vec::new();
            log::write_line(&mut ours, &mut Vec::new(), 1_800_000_000_123, event).unwrap();
            let mut serde = serde_json::to_vec(&Line {
                time_ms: 1_800_000_000_123,
                event,
            })
            .unwrap();
            serde.push(b'\n');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }
}
