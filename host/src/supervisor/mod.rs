//! The supervisor: the host's state machine around one engine link.
//!
//! ```text
//!            connect ok                 snapshot done
//! Disconnected ──────────▶ Resyncing ───────────────▶ Connected
//!   ▲   │  (grace timer runs)   │ link lost                │ link lost
//!   │   │ timer expires         ▼                          │
//!   │   └──────────▶ Purged ◀── (arm timer) ◀──────────────┘
//!   └───────────────────┘ (keep connecting, with backoff)
//! ```
//!
//! - [`grace`]: the grace timer (armed at a loss, disarmed by a completed
//!   resync; at expiry every context ends and answered calls get a CDR END).
//! - `resync`: snapshot in, decisions out, drops sent and acknowledged.
//! - `live`: engine events between resyncs, through the same table.
//! - `endings`: every termination: event, CDR, plugin notification.

mod endings;
pub mod enforce;
pub mod grace;
mod live;
mod pipeline;
pub mod queries;
mod released;
mod resync;

pub use resync::group_thousands;

use crate::cdr::{CdrWriter, RecoveredCall};
use crate::engine::{Backoff, Connection, LinkError, LinkOptions, Stall};
use crate::events::{Events, HostEvent, LinkState, Role};
use crate::legs::LegTable;
use crate::model::LegId;
use crate::policy::PolicyHandle;
use grace::GraceTimer;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Host settings (see `docs/operations.md`).
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub link: LinkOptions,
    /// How long contexts stay valid while the engine is away (default 10 s).
    pub grace: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often a standby asks the engine for the controller slot.
    pub standby_retry: Duration,
    /// The most legs and links the host holds: a snapshot announcing or
    /// carrying more is refused (the engine's counts are hints, never
    /// trusted with memory).
    pub max_legs: usize,
    pub max_links: usize,
    /// The most mixers, and joins, a snapshot may carry.
    pub max_mixers: usize,
    pub max_joins: usize,
    /// The longest a resync may take before the engine is cut off.
    pub resync_budget: Duration,
    /// The plugins' time for decisions in one resync; past it their
    /// failure policies decide the rest.
    pub decision_budget: Duration,
}

/// What the host looks like from outside, updated as it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// `None` until the first connection.
    pub link: Option<LinkState>,
    /// Active, standby, or still connecting.
    pub role: Role,
    /// The controller epoch of the latest accepted connection.
    pub epoch: Option<u64>,
    pub boot_id: Option<u64>,
    pub legs: usize,
    pub links: usize,
    /// Conference mixers held, and the legs joined to them (protocol 4).
    pub mixers: usize,
    pub joins: usize,
    /// Completed resyncs.
    pub resyncs: u64,
    /// Legs received so far in the current (or last) snapshot.
    pub snapshot_received: u64,
    /// Legs the current (or last) snapshot announced.
    pub snapshot_expected: u64,
    /// Calls the ledger had open at start, not yet matched with the engine.
    pub recovered: usize,
    /// Live events about legs the host did not hold (each logged).
    pub unknown_leg_events: u64,
}

impl Default for HostStatus {
    fn default() -> Self {
        HostStatus {
            link: None,
            role: Role::Connecting,
            epoch: None,
            boot_id: None,
            legs: 0,
            links: 0,
            mixers: 0,
            joins: 0,
            resyncs: 0,
            snapshot_received: 0,
            snapshot_expected: 0,
            recovered: 0,
            unknown_leg_events: 0,
        }
    }
}

/// How the live phase ended.
enum Exit {
    Shutdown,
    Lost(LinkError),
}

/// The host: the leg table, its engine link, its policy, its CDRs.
pub struct Host {
    options: HostOptions,
    table: LegTable,
    /// Conference mixers and their joins (protocol 4).
    mixers: crate::mixers::MixerTable,
    policy: PolicyHandle,
    cdr: CdrWriter,
    events: Events,
    status: watch::Sender<HostStatus>,
    grace: GraceTimer,
    last_boot: Option<u64>,
    /// Calls the ledger had open when the host started. The first complete
    /// resync matches them with the engine: found and adopted, they carry
    /// on; refused or gone, they get their END. If the engine stays away
    /// past the grace time, they end like every other context.
    recovered: crate::model::IdMap<LegId, RecoveredCall>,
    /// Questions from the admin endpoint (see [`queries`]).
    queries: tokio::sync::mpsc::Receiver<queries::AdminQuery>,
    /// Kept so that `queries` never closes.
    queries_tx: tokio::sync::mpsc::Sender<queries::AdminQuery>,
    /// Termination notices still running (see `endings`).
    notices: Vec<tokio::task::JoinHandle<()>>,
    /// Live batches whose records are with the ledger's writer.
    pipeline: pipeline::Pipeline,
    /// Legs refused because the table was full (logged once per interval).
    table_full_refusals: crate::repeated::Repeated,
    /// The controller named by the engine's latest answer, when that answer
    /// was `Busy`: if the grace time runs out then, the calls are handed
    /// over to it instead of ended (see `endings`).
    slot_holder: Option<String>,
    /// Legs the engine released lately (an answer after the release is
    /// ignored, not billed).
    released: released::RecentlyReleased,
    /// Legs this host told the engine to drop on this connection: their
    /// release is expected, not an event about an unknown leg.
    dropped: crate::model::IdSet<LegId>,
    /// Events about legs the host does not hold (one WARN per interval,
    /// not one per event).
    unknown_legs: crate::repeated::Repeated,
    /// Every engine connection's reader and writer: awaited when the host
    /// stops (a connection's drop cancels its two).
    link_tasks: TaskTracker,
    /// Records each resync for `legsync replay`, if enabled.
    recorder: Option<crate::recording::Recorder>,
    /// The held legs' ids, sorted, with their slots, for paged listings,
    /// and the table version they were read at (see `queries`).
    held_order: std::sync::Mutex<Option<queries::HeldOrder>>,
}

impl Host {
    /// A host with `cdr`, the ledger, and the calls it had open
    /// (`recovered`, from [`CdrWriter::open`]).
    pub fn new(
        options: HostOptions,
        policy: PolicyHandle,
        (cdr, recovered): (CdrWriter, Vec<RecoveredCall>),
        events: Events,
    ) -> Self {
        let mut grace = GraceTimer::default();
        if !recovered.is_empty() {
            tracing::info!(
                calls = recovered.len(),
                "the ledger has calls open from the previous run; they are matched with the engine at the first resync"
            );
            // Contexts held while the engine is away: the grace timer runs.
            grace.arm(options.grace);
        }
        let (queries_tx, queries) = tokio::sync::mpsc::channel(16);
        let (status, _) = watch::channel(HostStatus {
            recovered: recovered.len(),
            ..HostStatus::default()
        });
        Host {
            options,
            table: LegTable::new(),
            mixers: Default::default(),
            policy,
            cdr,
            events,
            status,
            grace,
            last_boot: None,
            recovered: recovered.into_iter().map(|c| (c.leg.id, c)).collect(),
            queries,
            queries_tx,
            notices: Vec::new(),
            pipeline: pipeline::Pipeline::default(),
            table_full_refusals: crate::repeated::Repeated::default(),
            slot_holder: None,
            released: released::RecentlyReleased::default(),
            dropped: Default::default(),
            unknown_legs: crate::repeated::Repeated::default(),
            link_tasks: TaskTracker::new(),
            recorder: None,
            held_order: Default::default(),
        }
    }

    /// Records every resync from now on with `recorder`.
    pub fn record_resyncs(&mut self, recorder: crate::recording::Recorder) {
        self.recorder = Some(recorder);
    }

    /// The longest gap between the heartbeats this host sends, since last
    /// taken.
    pub fn heartbeat_gaps(&self) -> crate::engine::HeartbeatGaps {
        self.options.link.heartbeat_gaps.clone()
    }

    /// The ledger's writer (for `reopen` after a rotation).
    pub fn cdr_writer(&self) -> CdrWriter {
        self.cdr.clone()
    }

    /// Where the admin endpoint sends its questions.
    /// What plugins' `held-legs` reads: this host's table, through its
    /// questions (see [`queries`]).
    pub fn held_legs(&self) -> std::sync::Arc<dyn crate::policy::held::HeldLegs> {
        std::sync::Arc::new(queries::HeldFromTable::new(self.queries_tx.clone()))
    }

    pub fn admin_queries(&self) -> tokio::sync::mpsc::Sender<queries::AdminQuery> {
        self.queries_tx.clone()
    }

    /// Follows the host's state.
    pub fn status(&self) -> watch::Receiver<HostStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` is cancelled. Returns an error only for what the
    /// host cannot go on without (the CDR file failing).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let events = self.events.clone();
        let link_tasks = self.link_tasks.clone();
        let result = self.serve(shutdown).await;
        // The last connection was dropped with the host: its reader and
        // writer are cancelled; wait for them to end.
        link_tasks.close();
        link_tasks.wait().await;
        // The event log is written by its own thread: everything the host
        // emitted (its shutdown's endings too) is in the file when it stops.
        events.flush().await;
        result
    }

    async fn serve(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        let mut retry_at = Instant::now();
        loop {
            let link = self.options.link.clone();
            let tasks = self.link_tasks.clone();
            let attempt = async move {
                sleep_until(retry_at).await;
                Connection::open(&link, &tasks).await
            };
            let deadline = self.grace.deadline();
            tokio::pin!(attempt);
            // Admin questions are answered while waiting, without restarting
            // a connection attempt in flight.
            let attempted = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return self.shut_down().await,
                    _ = until(deadline) => break None,
                    Some(query) = self.queries.recv() => self.answer(query),
                    result = &mut attempt => break Some(result),
                }
            };
            let mut connection = match attempted {
                None => {
                    match self.slot_holder.clone() {
                        Some(controller) => self.hand_over(controller).await?,
                        None => self.purge().await?,
                    }
                    continue;
                }
                Some(result) => match result {
                    Ok(connection) => connection,
                    Err(LinkError::Busy(controller)) => {
                        metrics::counter!(crate::metrics::BUSY).increment(1);
                        self.slot_holder = Some(controller.clone());
                        // Another host controls the engine: stand by, and ask
                        // again soon (a Busy costs the engine one frame).
                        self.set_role(Role::Standby, None, Some(controller));
                        retry_at = Instant::now() + self.options.standby_retry;
                        continue;
                    }
                    Err(e) => {
                        self.slot_holder = None;
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "engine unreachable");
                        retry_at = Instant::now() + delay;
                        continue;
                    }
                },
            };
            self.slot_holder = None;
            // An engine whose epoch went back would have this host's records
            // taken for older knowledge than they are: not trusted.
            if let Err(e) = self.cdr.check_epoch(&connection.engine, connection.epoch) {
                metrics::counter!(crate::metrics::EPOCH_REFUSALS).increment(1);
                drop(connection);
                self.lost(e.into());
                retry_at = Instant::now() + backoff.next_delay();
                continue;
            }
            metrics::counter!(crate::metrics::CONNECTS).increment(1);
            // Every record from here on holds what this connection showed.
            self.cdr.set_epoch(&connection.engine, connection.epoch);
            let engine = connection.engine.clone();
            self.set_role(Role::Active, Some((engine, connection.epoch)), None);
            // A resync has a time budget, and never outlives the grace
            // deadline or a stop: an engine that stalls mid-snapshot or
            // never acknowledges a drop is cut off, and the timers hold.
            let budget_end = Instant::now() + self.options.resync_budget;
            let grace_end = self.grace.deadline();
            let by_grace = grace_end.is_some_and(|grace| grace <= budget_end);
            let limit = grace_end.map_or(budget_end, |grace| grace.min(budget_end));
            let outcome = tokio::select! {
                outcome = self.resync(&mut connection) => Some(outcome),
                _ = sleep_until(limit) => None,
                _ = shutdown.cancelled() => None,
            };
            if shutdown.is_cancelled() {
                return self.shut_down().await;
            }
            let outcome = outcome.unwrap_or_else(|| {
                Err(ResyncError::Link(LinkError::Stalled(if by_grace {
                    Stall::AtGraceDeadline
                } else {
                    Stall::PastBudget {
                        secs: self.options.resync_budget.as_secs(),
                    }
                })))
            });
            if let Some(recorder) = &mut self.recorder {
                match outcome {
                    Ok(()) => recorder.finish(),
                    Err(_) => recorder.abandon(),
                }
            }
            match outcome {
                Ok(()) => {
                    self.grace.disarm();
                    backoff.reset();
                }
                Err(ResyncError::Link(e)) => {
                    self.lost(e);
                    retry_at = Instant::now() + backoff.next_delay();
                    continue;
                }
                Err(ResyncError::Fatal(e)) => return Err(e),
            }
            match self.live(&mut connection, &shutdown).await? {
                Exit::Shutdown => return self.shut_down().await,
                Exit::Lost(e) => {
                    self.lost(e);
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
        }
    }

    /// Logs and publishes a change of role (a standby's repeated `Busy`
    /// answers are one change, logged once).
    fn set_role(&mut self, role: Role, engine: Option<(String, u64)>, detail: Option<String>) {
        let previous = self.status.borrow().role;
        let epoch = engine.as_ref().map(|(_, epoch)| *epoch);
        self.status.send_modify(|status| {
            status.role = role;
            if epoch.is_some() {
                status.epoch = epoch;
            }
        });
        if previous == role && role != Role::Active {
            return;
        }
        match (&engine, &detail) {
            (Some((name, epoch)), _) => {
                tracing::info!(role = role.as_str(), engine = %name, epoch, "the engine accepted this host as its controller")
            }
            (None, Some(detail)) => {
                tracing::info!(role = role.as_str(), controller = %detail, "standby: the engine has another controller; taking over when it frees")
            }
            (None, None) => tracing::info!(role = role.as_str(), "role changed"),
        }
        let (engine, epoch) = engine.unzip();
        self.events.emit(HostEvent::Role {
            role,
            engine,
            epoch,
            detail,
        });
    }

    /// The link went down: contexts stay valid for the grace time.
    fn lost(&mut self, error: LinkError) {
        metrics::counter!(crate::metrics::DISCONNECTS, "reason" => error.reason()).increment(1);
        let held = self.table.len() + self.recovered.len();
        if held > 0 {
            self.grace.arm(self.options.grace);
        }
        // What an on-call engineer needs: how many contexts are at stake,
        // and until when they stay valid.
        let grace_secs = self.options.grace.as_secs_f64();
        if let LinkError::Stalled(_) = error {
            tracing::error!(error = %error, legs_held = held, grace_secs, "engine link cut off; contexts stay valid for the grace time");
        } else if error.is_peer_fault() {
            tracing::error!(error = %error, legs_held = held, grace_secs, "the engine sent something invalid; dropping the link to resync; contexts stay valid for the grace time");
        } else {
            tracing::warn!(error = %error, legs_held = held, grace_secs, "engine link lost; contexts stay valid for the grace time");
        }
        self.status
            .send_modify(|status| status.role = Role::Connecting);
        self.publish(Some(LinkState::Disconnected), None);
        self.events.emit(HostEvent::Link {
            state: LinkState::Disconnected,
            boot_id: None,
            detail: Some(error.to_string()),
        });
    }

    fn publish(&self, link: Option<LinkState>, boot_id: Option<u64>) {
        let (legs, links) = (self.table.len(), self.table.links_len());
        let (mixers, joins) = (self.mixers.len(), self.mixers.joins_len());
        let recovered = self.recovered.len();
        self.status.send_modify(|status| {
            status.recovered = recovered;
            if link.is_some() {
                status.link = link;
            }
            if boot_id.is_some() {
                status.boot_id = boot_id;
            }
            status.legs = legs;
            status.links = links;
            status.mixers = mixers;
            status.joins = joins;
        });
    }
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Why a resync stopped.
enum ResyncError {
    /// The link failed: reconnect and resync again.
    Link(LinkError),
    /// Something the host cannot go on without.
    Fatal(anyhow::Error),
}

impl From<LinkError> for ResyncError {
    fn from(e: LinkError) -> Self {
        ResyncError::Link(e)
    }
}
