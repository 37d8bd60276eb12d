//! One resync: the snapshot streams in; each chunk is diffed against the
//! table and its unknown legs decided and adopted at once (so a million
//! unknown legs are never all held twice, and decoding the next chunk
//! overlaps deciding this one); then links are decided, refusals go back to
//! the engine as drop commands (links first), and absent legs end. Plugin
//! calls run on blocking threads while the link's own tasks keep the
//! heartbeats going.
//!
//! The ledger follows the table: every answered call adopted gets its START
//! (or RESUME), every refused or absent one its END, and the calls the
//! ledger had open at start that the engine no longer has end too. Records
//! are handed to the ledger's writer as chunks are adopted (it commits them
//! in groups while the snapshot streams) and are all durable before the
//! per-leg events are logged, before any drop command leaves, and before
//! the resync is reported done.

use super::{Host, ResyncError};
use crate::cdr::Pending;
use crate::cdr::record::{StartReason, same_call};
use crate::engine::{Connection, LimitExceeded, LinkError, Place};
use crate::events::{HostEvent, LinkState, ResyncSummary};
use crate::model::IdSet as HashSet;
use crate::model::{
    CallLeg, Custody, Decision, EndedLeg, Join, LegId, Link, Mixer, TerminationReason,
};
use crate::policy::{Decider, Verdict};
use crate::protocol::{Command, CommandResult, EngineMessage};
use crate::resync::SnapshotDiff;
use std::time::Instant;

/// A chunk being decided: its legs, their verdicts, and the microseconds
/// the decision took.
type Deciding = tokio::task::JoinHandle<(Vec<CallLeg>, Vec<Verdict>, u64)>;

/// What one resync accumulates.
#[derive(Default)]
struct Run {
    summary: ResyncSummary,
    /// Microseconds the snapshot loop waited for decisions to finish.
    waited: u64,
    refused: Vec<EndedLeg>,
    /// Commands sent, not yet acknowledged.
    pending: HashSet<u64>,
    /// Staged ledger records handed to the writer, not yet known written
    /// (all are committed, durable, before the resync reports anything).
    records: std::collections::VecDeque<Pending>,
    /// Per-leg sync events, logged once their records are durable.
    sync_events: Vec<HostEvent>,
    /// Past this, the plugins are not called: their failure policies decide
    /// (`link.decision_budget_ms`).
    decisions_until: Option<Instant>,
}

/// Batches of ledger records a resync lets the writer fall behind by: enough
/// to keep it busy (it commits whatever is waiting in one go), few enough
/// that a million records are never all held in memory at once.
const RECORDS_IN_FLIGHT: usize = 32;

impl Run {
    /// Hands a batch of staged records over; waits for the oldest batches
    /// to be written if too many are in flight.
    async fn hand_over(&mut self, pending: Pending) -> Result<(), ResyncError> {
        self.records.push_back(pending);
        while self.records.len() > RECORDS_IN_FLIGHT {
            let oldest = self.records.pop_front().expect("more than the bound");
            oldest.durable().await.map_err(ResyncError::Fatal)?;
        }
        Ok(())
    }

    /// Waits until every record handed to the ledger is durable, then logs
    /// the events that depended on them.
    async fn report(&mut self, host: &Host) -> Result<(), ResyncError> {
        for pending in self.records.drain(..) {
            pending.durable().await.map_err(ResyncError::Fatal)?;
        }
        host.cdr
            .commit()
            .durable()
            .await
            .map_err(ResyncError::Fatal)?;
        host.events.emit_all(self.sync_events.drain(..));
        Ok(())
    }
}

impl Host {
    pub(super) async fn resync(&mut self, connection: &mut Connection) -> Result<(), ResyncError> {
        let started = Instant::now();
        let boot_id = connection.boot_id;
        let engine_restarted = self.last_boot.is_some_and(|b| b != boot_id);
        self.last_boot = Some(boot_id);
        // Drops asked on an earlier connection are settled by this snapshot.
        self.dropped.clear();
        // The plugins hear of every ending (a purge's, say) before they
        // decide again.
        self.settle_notices().await;
        // One decider for the whole resync, even if a reload swaps it.
        let decider = self.policy.current();
        tracing::info!(
            boot_id,
            engine_restarted,
            known = self.table.len(),
            "engine connected; resyncing"
        );
        self.publish(Some(LinkState::Resyncing), Some(boot_id));
        self.events.emit(HostEvent::Link {
            state: LinkState::Resyncing,
            boot_id: Some(boot_id),
            detail: None,
        });

        if let Some(recorder) = &mut self.recorder {
            let header = crate::recording::Header {
                format: crate::recording::FORMAT,
                host: self.options.link.host_name.clone(),
                boot_id,
                started_ms: crate::model::now_ms(),
                plugins: decider.describe(),
            };
            let (legs, links) = self.table.page_from(0, usize::MAX);
            recorder.begin(header, legs, links);
        }
        let mut run = Run {
            decisions_until: Some(started + self.options.decision_budget),
            ..Run::default()
        };
        run.summary.engine_restarted = engine_restarted;
        let mut diff = self
            .receive_snapshot(connection, &decider, &mut run)
            .await?;
        let phases = &mut run.summary.phases;
        // Decisions overlap the snapshot: count only the time spent waiting.
        phases.snapshot = micros(started).saturating_sub(run.waited + phases.adopt);
        run.summary.known = diff.known;
        let phase = Instant::now();
        run.report(self).await?;
        run.summary.phases.durable_and_events = micros(phase);

        // Refused legs: their END first (an answered call that was refused
        // still ran and is billed), then their links are dropped, then the
        // legs.
        let phase = Instant::now();
        let refused = std::mem::take(&mut run.refused);
        let refused_ids: HashSet<LegId> = refused.iter().map(|l| l.leg.id).collect();
        self.end_legs(refused, TerminationReason::RefusedByPolicy, &decider)
            .await
            .map_err(ResyncError::Fatal)?;
        // Calls the ledger had open at start that the engine did not list.
        self.end_recovered(TerminationReason::HostLost, &decider)
            .await
            .map_err(ResyncError::Fatal)?;
        let plan = diff.plan_links(&mut self.table, &refused_ids);
        report_anomalies(&diff.anomalies);
        if run.summary.decided_by_budget > 0 {
            tracing::warn!(
                legs = run.summary.decided_by_budget,
                budget_secs = self.options.decision_budget.as_secs_f64(),
                decision_secs = run.summary.phases.decisions as f64 / 1e6,
                "the plugin chain ran past the resync's time for decisions: the remaining legs were decided by the plugins' failure policies"
            );
        }
        run.summary.anomalies = diff.anomalies;
        for id in &plan.gone {
            self.table.remove_link(*id);
        }
        for link in &plan.drop {
            run.pending
                .insert(connection.send(Command::DropLink(link.id)));
        }
        self.events
            .emit_all(plan.drop.iter().map(|l| HostEvent::LinkDropped {
                link: l.id,
                legs: [l.leg_a, l.leg_b],
            }));
        for id in &refused_ids {
            self.dropped.insert(*id);
            run.pending.insert(connection.send(Command::DropLeg(*id)));
        }
        self.decide_links(connection, &decider, plan.offer, plan.offer_at, &mut run)
            .await?;
        run.summary.phases.link_decisions = micros(phase);

        let phase = Instant::now();
        let absent: Vec<EndedLeg> = SnapshotDiff::absent(&self.table)
            .into_iter()
            .filter_map(|id| self.table.remove(id))
            .collect();
        run.summary.absent = absent.len() as u64;
        self.end_legs(absent, TerminationReason::AbsentAfterResync, &decider)
            .await
            .map_err(ResyncError::Fatal)?;
        // Every call the ledger still has open is one the engine listed and
        // this host holds: the CARRY puts them all under this epoch, so an
        // older epoch's END (a deposed peer's grace timer) cannot close them.
        self.cdr
            .carry()
            .durable()
            .await
            .map_err(ResyncError::Fatal)?;
        run.summary.phases.absent = micros(phase);

        if connection.protocol >= 4 {
            let phase = Instant::now();
            let mixers = std::mem::take(&mut diff.mixers);
            let joins = std::mem::take(&mut diff.joins);
            self.resync_mixers(connection, &decider, mixers, joins, &refused_ids, &mut run)
                .await?;
            run.summary.phases.mixers = micros(phase);
        }

        let phase = Instant::now();
        self.await_acks(connection, std::mem::take(&mut run.pending))
            .await?;
        run.summary.phases.drop_acks = micros(phase);
        self.cdr.mark_alive();
        let summary = ResyncSummary {
            millis: started.elapsed().as_millis() as u64,
            ..run.summary
        };
        tracing::info!(
            millis = summary.millis,
            known = summary.known,
            rebuilt = summary.rebuilt,
            refused = summary.refused,
            absent = summary.absent,
            links_rebuilt = summary.links_rebuilt,
            links_refused = summary.links_refused,
            "resync done: {} legs held, in {:.3} s",
            group_thousands(self.table.len() as u64),
            summary.millis as f64 / 1000.0
        );
        metrics::counter!(crate::metrics::RESYNCS).increment(1);
        crate::metrics::observe(crate::metrics::RESYNC_SECONDS, started.elapsed());
        // The status first: whoever sees the event then sees the new state.
        self.status.send_modify(|s| s.resyncs += 1);
        self.publish(Some(LinkState::Connected), Some(boot_id));
        if let Some(shadow) = self.policy.shadow() {
            // Once the shadow set has caught up: one line for this resync.
            let events = self.events.clone();
            shadow.summarize(move |summary| events.emit(HostEvent::Shadow(Box::new(summary))));
        }
        self.events.emit_all([
            HostEvent::ResyncDone(Box::new(summary)),
            HostEvent::Link {
                state: LinkState::Connected,
                boot_id: Some(boot_id),
                detail: None,
            },
        ]);
        Ok(())
    }

    async fn receive_snapshot(
        &mut self,
        connection: &mut Connection,
        decider: &Decider,
        run: &mut Run,
    ) -> Result<SnapshotDiff, ResyncError> {
        let announced = match connection.next().await? {
            EngineMessage::SnapshotBegin { legs, links } => {
                let (max_legs, max_links) = (self.options.max_legs, self.options.max_links);
                if legs > max_legs as u64 || links > max_links as u64 {
                    return Err(LinkError::from(LimitExceeded::SnapshotAnnounced {
                        legs,
                        links,
                        max_legs,
                        max_links,
                    })
                    .into());
                }
                self.status.send_modify(|s| {
                    s.snapshot_expected = legs;
                    s.snapshot_received = 0;
                });
                legs as usize
            }
            other => {
                return Err(LinkError::Unexpected {
                    message: other.name(),
                    place: Place::InsteadOfSnapshot,
                }
                .into());
            }
        };
        // The announced count is a hint: memory is reserved ahead of what
        // arrives (doubling), never for what is only announced.
        let mut reservation = Reservation::new(announced);
        self.table.reserve_total(reservation.reserved);
        self.cdr.reserve_total(reservation.reserved);
        let mut diff = SnapshotDiff::begin(&mut self.table, reservation.reserved);
        // One chunk is decided on a blocking thread while the previous one is
        // adopted and the next one received and diffed.
        let mut deciding: Option<Deciding> = None;
        loop {
            match connection.next().await? {
                EngineMessage::SnapshotLegs(chunk) => {
                    let received = chunk.len() as u64;
                    let so_far = self.status.borrow().snapshot_received + received;
                    if so_far > self.options.max_legs as u64 {
                        return Err(LinkError::from(LimitExceeded::SnapshotLegs {
                            max: self.options.max_legs,
                        })
                        .into());
                    }
                    if let Some(total) = reservation.grow_for(so_far as usize) {
                        self.table.reserve_total(total);
                        self.cdr.reserve_total(total);
                        diff.reserve_offered(total);
                    }
                    if let Some(recorder) = &mut self.recorder {
                        recorder.legs(&chunk);
                    }
                    let diffing = Instant::now();
                    let unknown = diff.legs(&mut self.table, chunk);
                    run.summary.phases.diff += micros(diffing);
                    self.settle_sightings(&mut diff, decider, run).await?;
                    if !unknown.is_empty() {
                        let next = spawn_decision(decider, unknown, run.decisions_until);
                        if let Some(previous) = deciding.replace(next) {
                            self.adopt(previous, decider, run).await?;
                        }
                    }
                    self.status.send_modify(|s| s.snapshot_received += received);
                }
                EngineMessage::SnapshotLinks(chunk) => {
                    if diff.unknown_links.len() + chunk.len() > self.options.max_links {
                        return Err(LinkError::from(LimitExceeded::SnapshotLinks {
                            max: self.options.max_links,
                        })
                        .into());
                    }
                    if let Some(recorder) = &mut self.recorder {
                        recorder.links(&chunk);
                    }
                    let diffing = Instant::now();
                    diff.links(&mut self.table, chunk);
                    run.summary.phases.diff += micros(diffing);
                }
                EngineMessage::SnapshotMixers(chunk) => {
                    if diff.mixers.len() + chunk.len() > self.options.max_mixers {
                        return Err(LinkError::from(LimitExceeded::SnapshotMixers {
                            max: self.options.max_mixers,
                        })
                        .into());
                    }
                    diff.mixers.extend(chunk);
                }
                EngineMessage::SnapshotJoins(chunk) => {
                    if diff.joins.len() + chunk.len() > self.options.max_joins {
                        return Err(LinkError::from(LimitExceeded::SnapshotJoins {
                            max: self.options.max_joins,
                        })
                        .into());
                    }
                    diff.joins.extend(chunk);
                }
                EngineMessage::SnapshotEnd => {
                    if let Some(last) = deciding.take() {
                        self.adopt(last, decider, run).await?;
                    }
                    diff.legs_done();
                    return Ok(diff);
                }
                other => {
                    return Err(LinkError::Unexpected {
                        message: other.name(),
                        place: Place::InsideSnapshot,
                    }
                    .into());
                }
            }
        }
    }

    /// Waits for a chunk's `OnCallLegSync` verdicts: rebuilt legs join the
    /// table at once; refused ones are kept for the drops.
    async fn adopt(
        &mut self,
        deciding: Deciding,
        decider: &Decider,
        run: &mut Run,
    ) -> Result<(), ResyncError> {
        let waited = Instant::now();
        let (unknown, verdicts, took) = self
            .serving(deciding)
            .await
            .map_err(|e| ResyncError::Fatal(anyhow::anyhow!("decision task failed: {e}")))?;
        run.summary.phases.decisions += took;
        run.waited += micros(waited);
        let phase = Instant::now();
        if let Some(shadow) = self.policy.shadow() {
            shadow.observe_legs(&unknown, &verdicts);
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.decided(&unknown, &verdicts);
        }
        self.match_recovered(&unknown, decider).await?;
        if self.events.wants_items() {
            run.sync_events.extend(
                unknown
                    .iter()
                    .zip(&verdicts)
                    .map(|(leg, v)| sync_event(leg.id, v)),
            );
        }
        // START for calls new to the ledger, RESUME for calls it had ended
        // (a grace deadline), nothing for calls it has open (a restart).
        let rebuilt = unknown
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.decision == Decision::Rebuild)
            .map(|(leg, _)| leg);
        run.hand_over(self.cdr.stage_open_calls(rebuilt, StartReason::Found))
            .await?;
        let mut adopted = Vec::with_capacity(unknown.len());
        for (mut leg, verdict) in unknown.into_iter().zip(verdicts) {
            if verdict.failure == Some(crate::policy::FailureKind::ResyncBudget) {
                run.summary.decided_by_budget += 1;
            }
            match verdict.decision {
                Decision::Rebuild => {
                    leg.linked_to = None;
                    adopted.push((leg, verdict.plugin));
                    run.summary.rebuilt += 1;
                }
                Decision::Refuse => {
                    run.summary.refused += 1;
                    run.refused.push(EndedLeg {
                        leg,
                        custody: Custody::Refused { by: verdict.plugin },
                    });
                }
            }
        }
        self.table.insert_all(adopted);
        run.summary.phases.adopt += micros(phase);
        Ok(())
    }

    /// What the diff of a chunk found besides unknown legs: held calls whose
    /// id the engine gave to another call end now (before the new call's
    /// START is written); held legs answered while the link was down become
    /// billable.
    async fn settle_sightings(
        &mut self,
        diff: &mut SnapshotDiff,
        decider: &Decider,
        run: &mut Run,
    ) -> Result<(), ResyncError> {
        if !diff.replaced.is_empty() {
            let replaced = std::mem::take(&mut diff.replaced);
            tracing::warn!(
                legs = replaced.len(),
                "the snapshot gives the ids of held calls to other calls: the held calls end, the new ones are decided"
            );
            self.end_legs(replaced, TerminationReason::Replaced, decider)
                .await
                .map_err(ResyncError::Fatal)?;
        }
        if !diff.now_answered.is_empty() {
            let answered = std::mem::take(&mut diff.now_answered);
            run.hand_over(self.cdr.stage_open_calls(&answered, StartReason::Found))
                .await?;
        }
        Ok(())
    }

    /// Matches unknown snapshot legs with the calls the ledger had open at
    /// start: the same call carries on (its ledger entry stays open); a
    /// different call under the same id means the recovered one is gone.
    async fn match_recovered(
        &mut self,
        unknown: &[CallLeg],
        decider: &Decider,
    ) -> Result<(), ResyncError> {
        if self.recovered.is_empty() {
            return Ok(());
        }
        let mut lost = Vec::new();
        for leg in unknown {
            if let Some(call) = self.recovered.remove(&leg.id)
                && !same_call(&call.leg, leg)
            {
                lost.push((
                    EndedLeg {
                        leg: call.leg,
                        custody: Custody::Previous,
                    },
                    call.proven_up_ms,
                ));
            }
        }
        self.end_legs_at(lost, TerminationReason::HostLost, decider)
            .await
            .map_err(ResyncError::Fatal)
    }

    /// The snapshot's mixers against the held ones, once the legs are
    /// settled: known ones stay (with the engine's joins), gone and replaced
    /// ones end, unknown ones are decided: rebuilt with their joins to held
    /// legs, or refused and freed at the engine (their legs live on).
    async fn resync_mixers(
        &mut self,
        connection: &mut Connection,
        decider: &Decider,
        mixers: Vec<Mixer>,
        joins: Vec<Join>,
        refused: &HashSet<LegId>,
        run: &mut Run,
    ) -> Result<(), ResyncError> {
        let table = &self.table;
        let plan = self
            .mixers
            .diff(mixers, joins, |leg| table.contains(leg), refused);
        report_mixer_anomalies(&plan.anomalies);
        run.summary.mixers_known = plan.known;
        run.summary.mixers_absent = plan.gone.len() as u64;
        self.end_mixers(plan.replaced, TerminationReason::Replaced);
        self.end_mixers(plan.gone, TerminationReason::AbsentAfterResync);
        // Plugin calls block: off the async threads, as for legs and links.
        let (unknown, verdicts) = self
            .serving(decide_blocking(decider, plan.unknown, |d, mixers| {
                d.decide_mixers(mixers)
            }))
            .await?;
        if let Some(shadow) = self.policy.shadow() {
            shadow.observe_mixers(&unknown, &verdicts);
        }
        let mut events = Vec::with_capacity(unknown.len());
        for (held, verdict) in unknown.into_iter().zip(verdicts) {
            metrics::counter!(crate::metrics::MIXER_DECISIONS, "decision" => verdict.decision.as_str())
                .increment(1);
            events.push(HostEvent::MixerSync {
                mixer: held.mixer.id,
                legs: held.joins.len() as u32,
                decision: verdict.decision,
                plugin: verdict.plugin,
                failure: verdict.failure,
                reason: verdict.reason,
            });
            match verdict.decision {
                Decision::Rebuild => {
                    run.summary.mixers_rebuilt += 1;
                    // The event log names each leg of a rebuilt conference,
                    // as it does a live join: what billing groups by.
                    events.extend(held.joins.iter().map(|&(leg, role)| HostEvent::LegJoined {
                        leg,
                        mixer: held.mixer.id,
                        role,
                    }));
                    self.mixers.insert(held.mixer, held.joins);
                }
                Decision::Refuse => {
                    run.summary.mixers_refused += 1;
                    run.pending
                        .insert(connection.send(Command::FreeMixer(held.mixer.id)));
                }
            }
        }
        self.events.emit_all(events);
        self.publish(None, None);
        Ok(())
    }

    /// `OnLinkSync` for unknown links whose legs the host now holds.
    async fn decide_links(
        &mut self,
        connection: &mut Connection,
        decider: &Decider,
        offer: Vec<Link>,
        mut offer_at: Vec<[crate::legs::SlotHint; 2]>,
        run: &mut Run,
    ) -> Result<(), ResyncError> {
        let (mut offer, verdicts) = self
            .serving(decide_blocking(decider, offer, |d, links| {
                d.decide_links(links)
            }))
            .await?;
        if let Some(shadow) = self.policy.shadow() {
            shadow.observe_links(&offer, &verdicts);
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.decided_links(&offer, &verdicts);
        }
        let wanted = self.events.wants_items();
        let mut events = Vec::with_capacity(if wanted { offer.len() } else { 0 });
        // The rebuilt links are packed at the front of `offer` (no second
        // vector of millions), then inserted together.
        let mut rebuilt = 0;
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let link = offer[i];
            match verdict.decision {
                Decision::Rebuild => {
                    offer[rebuilt] = link;
                    offer_at[rebuilt] = offer_at[i];
                    rebuilt += 1;
                    run.summary.links_rebuilt += 1;
                }
                Decision::Refuse => {
                    run.pending
                        .insert(connection.send(Command::DropLink(link.id)));
                    run.summary.links_refused += 1;
                }
            }
            if !wanted {
                continue;
            }
            events.push(HostEvent::LinkSync {
                link: link.id,
                legs: [link.leg_a, link.leg_b],
                decision: verdict.decision,
                plugin: verdict.plugin,
                failure: verdict.failure,
            });
        }
        self.table
            .insert_links_at(&offer[..rebuilt], &offer_at[..rebuilt]);
        self.events.emit_all(events);
        Ok(())
    }

    /// Waits until the engine acknowledged every drop, applying live events
    /// that arrive meanwhile.
    async fn await_acks(
        &mut self,
        connection: &mut Connection,
        mut pending: HashSet<u64>,
    ) -> Result<(), ResyncError> {
        while !pending.is_empty() {
            match connection.next().await? {
                EngineMessage::Ack {
                    result: CommandResult::Fenced,
                    ..
                } => return Err(LinkError::Fenced.into()),
                EngineMessage::Ack { command, result } => {
                    pending.remove(&command);
                    tracing::debug!(command, ?result, "drop acknowledged");
                }
                other => {
                    if let Err(e) = self
                        .handle(connection, other)
                        .await
                        .map_err(ResyncError::Fatal)?
                    {
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

fn sync_event(leg: LegId, verdict: &Verdict) -> HostEvent {
    HostEvent::CallLegSync {
        leg,
        decision: verdict.decision,
        plugin: verdict.plugin,
        failure: verdict.failure,
        reason: verdict.reason,
        datasets: verdict.data,
    }
}

/// Starts deciding a chunk of legs on a blocking thread; past `budget`,
/// the plugins are not called and their failure policies decide.
fn spawn_decision(decider: &Decider, legs: Vec<CallLeg>, budget: Option<Instant>) -> Deciding {
    let decider = decider.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let verdicts = if budget.is_some_and(|budget| started >= budget) {
            decider.decide_by_failure_policy(legs.len())
        } else {
            decider.decide_legs_until(&legs, budget)
        };
        (legs, verdicts, micros(started))
    })
}

/// Runs a decision on a blocking thread; gives the items back with verdicts.
async fn decide_blocking<T: Send + 'static>(
    decider: &Decider,
    items: Vec<T>,
    decide: fn(&Decider, &[T]) -> Vec<Verdict>,
) -> Result<(Vec<T>, Vec<Verdict>), ResyncError> {
    if items.is_empty() {
        return Ok((items, Vec::new()));
    }
    let decider = decider.clone();
    tokio::task::spawn_blocking(move || {
        let verdicts = decide(&decider, &items);
        (items, verdicts)
    })
    .await
    .map_err(|e| ResyncError::Fatal(anyhow::anyhow!("decision task failed: {e}")))
}

/// One log line for what a snapshot got wrong (never one per item: an
/// engine can send fifty thousand bad links), and the counters.
fn report_anomalies(anomalies: &crate::resync::Anomalies) {
    let kinds = [
        ("duplicate-leg", anomalies.duplicate_legs),
        ("self-link", anomalies.self_links),
        ("leg-in-two-links", anomalies.legs_in_two_links),
        ("link-to-unlisted-leg", anomalies.links_to_unlisted_legs),
    ];
    for (kind, n) in kinds {
        crate::metrics::count(crate::metrics::SNAPSHOT_ANOMALIES, "kind", kind, n);
    }
    if anomalies.any() {
        tracing::warn!(
            duplicate_legs = anomalies.duplicate_legs,
            self_links = anomalies.self_links,
            legs_in_two_links = anomalies.legs_in_two_links,
            links_to_unlisted_legs = anomalies.links_to_unlisted_legs,
            "the engine's snapshot had anomalies; each was ignored as docs/protocol.md says"
        );
    }
}

/// One log line for what a snapshot's mixers got wrong, and the counters.
fn report_mixer_anomalies(anomalies: &crate::mixers::MixerAnomalies) {
    let kinds = [
        ("duplicate-mixer", anomalies.duplicate_mixers),
        ("duplicate-join", anomalies.duplicate_joins),
        ("join-to-unlisted-mixer", anomalies.joins_to_unlisted_mixers),
        ("join-to-unheld-leg", anomalies.joins_to_unheld_legs),
    ];
    for (kind, n) in kinds {
        crate::metrics::count(crate::metrics::SNAPSHOT_ANOMALIES, "kind", kind, n);
    }
    if anomalies.any() {
        tracing::warn!(
            duplicate_mixers = anomalies.duplicate_mixers,
            duplicate_joins = anomalies.duplicate_joins,
            joins_to_unlisted_mixers = anomalies.joins_to_unlisted_mixers,
            joins_to_unheld_legs = anomalies.joins_to_unheld_legs,
            "the engine's snapshot had mixer anomalies; each was ignored as docs/protocol.md says"
        );
    }
}

/// `1234567` as `1,234,567`, for people.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_000_000, "1,000,000"),
        ];
        for (n, text) in cases {
            assert_eq!(super::group_thousands(n), text);
        }
    }
}

/// How much room a snapshot's tables have, grown ahead of what arrives: an
/// engine announcing four million legs in a 12-byte frame gets room for a
/// quarter of a million until they come (a full snapshot pays a few
/// doublings, not the hint's whole size up front).
struct Reservation {
    announced: usize,
    reserved: usize,
}

/// The room reserved before any leg arrives.
const FIRST_RESERVATION: usize = 262_144;

impl Reservation {
    fn new(announced: usize) -> Reservation {
        Reservation {
            announced,
            reserved: announced.min(FIRST_RESERVATION),
        }
    }

    /// The new total to reserve once `arrived` legs are in (with the chunk
    /// at hand), if the room is short: twice the room, up to the announced
    /// count (or what arrived, if the engine sends more than it said).
    fn grow_for(&mut self, arrived: usize) -> Option<usize> {
        if arrived <= self.reserved {
            return None;
        }
        self.reserved = (self.reserved * 2).min(self.announced).max(arrived);
        Some(self.reserved)
    }
}

#[cfg(test)]
mod reservation_tests {
    use super::*;

    #[test]
    fn room_follows_what_arrives_not_what_is_announced() {
        let mut room = Reservation::new(4_000_000);
        assert_eq!(room.reserved, FIRST_RESERVATION);
        assert_eq!(room.grow_for(1_000), None);
        assert_eq!(
            room.grow_for(FIRST_RESERVATION + 1),
            Some(2 * FIRST_RESERVATION)
        );
        let mut small = Reservation::new(1_000);
        assert_eq!(small.reserved, 1_000);
        // An engine that sends more than it announced.
        assert_eq!(small.grow_for(1_500), Some(1_500));
        let mut full = Reservation::new(1_000_000);
        let mut grown = 0;
        for arrived in (1_000..=1_000_000).step_by(1_000) {
            grown += usize::from(full.grow_for(arrived).is_some());
        }
        assert_eq!((full.reserved, grown), (1_000_000, 2), "a few doublings");
    }
}
