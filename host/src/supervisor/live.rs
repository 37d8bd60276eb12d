//! Between resyncs: engine events keep the table current, through the same
//! table, the same decisions and the same endings as a resync.
//!
//! An event never overwrites another call: a leg id names a call only with
//! its session, offer and answer times (see [`crate::cdr::record`]). An
//! event that contradicts the held call ends it (`replaced`), and the new
//! call is handled like any unknown leg. An event about a leg the host does
//! not hold is never dropped silently: an answer brings the leg in through
//! `OnCallLegSync`, anything else is logged and counted.

use super::{Exit, Host};
use crate::cdr::Pending;
use crate::cdr::record::{StartReason, same_call};
use crate::engine::{Connection, LinkError};
use crate::events::HostEvent;
use crate::model::{CallLeg, Custody, Decision, EndedLeg, LegId, LegState, TerminationReason};
use crate::policy::Verdict;
use crate::protocol::{Command, CommandResult, EngineEvent, EngineMessage};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the host records that it is in sync (the end time the ledger
/// can prove for calls lost while no host was watching).
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// The plugin name the event log gives a leg refused because the table is
/// full (see [`Host::refused_for_space`]).
const TABLE_FULL: &str = "max_legs";

/// How often a full table is logged while it refuses legs.
/// A live event about a leg, as logs name it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LegEvent {
    Ringing,
    Terminating,
    Released,
}

impl LegEvent {
    fn as_str(self) -> &'static str {
        match self {
            LegEvent::Ringing => "ringing",
            LegEvent::Terminating => "terminating",
            LegEvent::Released => "released",
        }
    }
}

/// Most messages handled as one batch (see [`LiveBatch`]).
const LIVE_BATCH: usize = 1024;

/// Releases and answers that arrive together are handled together: their
/// ledger records go to the writer at once, the ended legs' events and
/// plugin notice go out once, when the records are durable (see
/// [`super::pipeline`]).
struct LiveBatch {
    released: Vec<EndedLeg>,
    starts: Vec<Pending>,
    /// When its first message was taken (the durable-latency metric).
    read_at: Instant,
}

impl LiveBatch {
    fn new() -> LiveBatch {
        LiveBatch {
            released: Vec::new(),
            starts: Vec::new(),
            read_at: Instant::now(),
        }
    }
}

impl Host {
    pub(super) async fn live(
        &mut self,
        connection: &mut Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Exit> {
        let mut alive = tokio::time::interval(ALIVE_EVERY);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.settle_batches().await?;
                    return Ok(Exit::Shutdown);
                }
                durable = self.pipeline.oldest_durable() => {
                    durable?;
                    self.report_oldest();
                    continue;
                }
                _ = alive.tick() => {
                    self.cdr.mark_alive();
                    continue;
                }
                Some(query) = self.queries.recv() => {
                    match query {
                        super::queries::AdminQuery::Enforce { set, legs, reply } => {
                            let done = self.enforce(connection, set, legs).await?;
                            let _ = reply.send(Ok(done));
                        }
                        other => self.answer(other),
                    }
                    continue;
                }
                message = connection.next() => message,
            };
            // This message and whatever else is already waiting, as a batch.
            let mut batch = LiveBatch::new();
            let mut next = Some(first);
            let mut taken = 0;
            let mut lost = None;
            while let Some(message) = next.take() {
                let outcome = match message {
                    Ok(message) => self.handle_batched(connection, message, &mut batch).await?,
                    Err(e) => Err(e),
                };
                if let Err(e) = outcome {
                    lost = Some(e);
                    break;
                }
                taken += 1;
                if taken < LIVE_BATCH {
                    next = connection.try_next();
                }
            }
            self.finish_batch(batch).await?;
            if let Some(e) = lost {
                self.settle_batches().await?;
                return Ok(Exit::Lost(e));
            }
        }
    }

    /// Handles one message outside a snapshot (a batch of one: the resync
    /// applies events that arrive while it waits for drop acks). The outer
    /// error is fatal; the inner one drops the link.
    pub(super) async fn handle(
        &mut self,
        connection: &mut Connection,
        message: EngineMessage,
    ) -> anyhow::Result<Result<(), LinkError>> {
        let mut batch = LiveBatch::new();
        let outcome = self.handle_batched(connection, message, &mut batch).await?;
        self.finish_batch(batch).await?;
        self.settle_batches().await?;
        Ok(outcome)
    }

    /// Handles one message of a batch.
    async fn handle_batched(
        &mut self,
        connection: &mut Connection,
        message: EngineMessage,
        batch: &mut LiveBatch,
    ) -> anyhow::Result<Result<(), LinkError>> {
        match message {
            EngineMessage::Event(event) => self.apply(connection, event, batch).await?,
            EngineMessage::Ack {
                result: CommandResult::Fenced,
                ..
            } => return Ok(Err(LinkError::Fenced)),
            EngineMessage::Ack { command, result } => {
                tracing::debug!(command, ?result, "command acknowledged late");
            }
            other => {
                return Ok(Err(LinkError::Unexpected {
                    message: other.name(),
                    place: crate::engine::Place::OutsideSnapshot,
                }));
            }
        }
        Ok(Ok(()))
    }

    /// Hands a batch's records to the ledger; its endings are reported
    /// once they are durable.
    async fn finish_batch(&mut self, batch: LiveBatch) -> anyhow::Result<()> {
        self.submit_batch(batch.starts, batch.released, batch.read_at)
            .await
    }

    /// Settles what the batch holds so far and every batch before it, for
    /// an event that ends or decides a call (the event log keeps the
    /// engine's order). The rest of the batch keeps its read time.
    async fn settle(&mut self, batch: &mut LiveBatch) -> anyhow::Result<()> {
        let read_at = batch.read_at;
        let so_far = std::mem::replace(
            batch,
            LiveBatch {
                read_at,
                ..LiveBatch::new()
            },
        );
        self.finish_batch(so_far).await?;
        self.settle_batches().await
    }

    /// One event. Releases and answers of held legs join the batch; link
    /// and state changes, which log and bill nothing, apply at once; what
    /// ends or decides a call settles the batch first, so the event log
    /// keeps the engine's order.
    async fn apply(
        &mut self,
        connection: &mut Connection,
        event: EngineEvent,
        batch: &mut LiveBatch,
    ) -> anyhow::Result<()> {
        match event {
            EngineEvent::LegOffered(mut leg) => {
                leg.linked_to = None;
                self.end_contradicted(&leg, "offered again as another call", batch)
                    .await?;
                if self.table.contains(leg.id) {
                    tracing::debug!(
                        leg = leg.id,
                        "the engine offered a leg it had offered already"
                    );
                } else if self.refused_for_space() {
                    // Not answered: nothing to bill; the engine drops it.
                    self.dropped.insert(leg.id);
                    connection.send(Command::DropLeg(leg.id));
                } else {
                    self.table.insert(leg, crate::model::LIVE.into());
                }
            }
            EngineEvent::LegRinging(id) => self.set_state(id, LegState::Ringing),
            EngineEvent::LegAnswered(leg) => self.answered(connection, leg, batch).await?,
            EngineEvent::LegTerminating(id) => self.set_state(id, LegState::Terminating),
            EngineEvent::LegReleased(id) => match self.table.remove(id) {
                Some(ended) => {
                    self.released.remember(&ended.leg);
                    batch.released.push(ended);
                }
                None => self.unknown_leg(id, LegEvent::Released),
            },
            EngineEvent::LinkCreated(link) => {
                if !self.table.insert_link(link) {
                    tracing::debug!(link = link.id, "link between legs this host does not hold");
                }
            }
            EngineEvent::LinkRemoved(id) => {
                self.table.remove_link(id);
            }
            EngineEvent::MixerCreated(mixer) => {
                // Live: the host was in sync, so the mixer is its own.
                let id = mixer.id;
                if let Some(previous) = self.mixers.insert(mixer, Vec::new()) {
                    tracing::warn!(
                        mixer = id,
                        "the engine created a mixer under the id of one held: the held one ends (replaced)"
                    );
                    self.end_mixers(vec![previous], TerminationReason::Replaced);
                }
                self.publish(None, None);
            }
            EngineEvent::MixerFreed(id) => match self.mixers.remove(id) {
                Some(held) => {
                    self.end_mixers(vec![held], TerminationReason::Released);
                    self.publish(None, None);
                }
                None => tracing::debug!(
                    mixer = id,
                    "the engine freed a mixer this host does not hold"
                ),
            },
            EngineEvent::LegJoined(join) => {
                if !self.table.contains(join.leg) {
                    tracing::debug!(
                        leg = join.leg,
                        mixer = join.mixer,
                        "a leg this host does not hold joined a mixer"
                    );
                } else if let Err(refused) = self.mixers.join(join) {
                    tracing::debug!(reason = %refused, "a join the host cannot take");
                } else {
                    self.events.emit(HostEvent::LegJoined {
                        leg: join.leg,
                        mixer: join.mixer,
                        role: join.role,
                    });
                }
            }
            EngineEvent::LegUnjoined { mixer, leg } => {
                if self.mixers.unjoin(mixer, leg) {
                    self.events.emit(HostEvent::LegUnjoined { leg, mixer });
                }
            }
        }
        Ok(())
    }

    /// `LegAnswered`: the held call becomes billable (its START joins the
    /// batch, durable before the batch is reported); a leg the host did not
    /// hold, or another call under a held id, is decided like an unknown
    /// leg at a resync.
    async fn answered(
        &mut self,
        connection: &mut Connection,
        leg: CallLeg,
        batch: &mut LiveBatch,
    ) -> anyhow::Result<()> {
        if leg.answered_at_ms.is_none() {
            tracing::warn!(
                leg = leg.id,
                "the engine reported an answer without an answer time; ignored"
            );
            return Ok(());
        }
        self.end_contradicted(&leg, "answered with another identity or answer time", batch)
            .await?;
        match self.table.get_mut(leg.id) {
            Some(held) if held.answered_at_ms.is_some() => {
                tracing::debug!(
                    leg = leg.id,
                    "a repeated answer for a call already answered"
                );
            }
            Some(held) => {
                held.state = LegState::Answered;
                held.answered_at_ms = leg.answered_at_ms;
                batch
                    .starts
                    .push(self.cdr.open_calls([&leg], StartReason::Answered));
            }
            None if self.released.was_released(&leg) => {
                // Out of order: the call is over; an answer now would bill
                // a ghost until the next resync.
                tracing::debug!(
                    leg = leg.id,
                    "the engine reported an answer after releasing the leg; ignored"
                );
            }
            None => {
                self.settle(batch).await?;
                self.adopt_live(connection, leg).await?;
            }
        }
        Ok(())
    }

    /// `OnCallLegSync` for one answered leg met live: rebuilt, it joins the
    /// table with a START; refused, it gets its START and END (it was
    /// answered, it is billed) and is dropped at the engine.
    async fn adopt_live(
        &mut self,
        connection: &mut Connection,
        mut leg: CallLeg,
    ) -> anyhow::Result<()> {
        tracing::info!(
            leg = leg.id,
            "answer for a leg this host did not hold; deciding it"
        );
        // The plugins hear of every ending before they decide again.
        self.settle_notices().await;
        let decider = self.policy.current();
        let verdict = if self.refused_for_space() {
            // Refused like a plugin's refusal (it ran: START and END), by
            // the host's own bound, named in the event log.
            Verdict {
                decision: Decision::Refuse,
                plugin: TABLE_FULL.into(),
                failure: None,
                reason: None,
                data: None,
            }
        } else {
            let (legs, verdicts) = {
                let decider = decider.clone();
                self.serving(tokio::task::spawn_blocking(move || {
                    let legs = vec![leg];
                    let verdicts = decider.decide_legs(&legs);
                    (legs, verdicts)
                }))
                .await?
            };
            if let Some(shadow) = self.policy.shadow() {
                shadow.observe_legs(&legs, &verdicts);
            }
            leg = legs.into_iter().next().expect("one leg in, one out");
            verdicts
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("the plugin chain gave no verdict"))?
        };
        let event = HostEvent::CallLegSync {
            leg: leg.id,
            decision: verdict.decision,
            plugin: verdict.plugin,
            failure: verdict.failure,
            reason: verdict.reason,
            datasets: verdict.data,
        };
        match verdict.decision {
            Decision::Rebuild => {
                self.cdr
                    .open_calls([&leg], StartReason::Found)
                    .durable()
                    .await?;
                self.events.emit(event);
                leg.linked_to = None;
                self.table.insert(leg, verdict.plugin);
            }
            Decision::Refuse => {
                let id = leg.id;
                self.events.emit(event);
                let refused = EndedLeg {
                    leg,
                    custody: Custody::Refused { by: verdict.plugin },
                };
                self.end_legs(vec![refused], TerminationReason::RefusedByPolicy, &decider)
                    .await?;
                self.dropped.insert(id);
                connection.send(Command::DropLeg(id));
            }
        }
        Ok(())
    }

    /// If the host holds another call under `leg`'s id, that call is over:
    /// it ends (`replaced`, END if answered), and is logged with `why`.
    async fn end_contradicted(
        &mut self,
        leg: &CallLeg,
        why: &str,
        batch: &mut LiveBatch,
    ) -> anyhow::Result<()> {
        let contradicted = self
            .table
            .get(leg.id)
            .is_some_and(|held| !same_call(&held.leg, leg));
        if !contradicted {
            return Ok(());
        }
        self.settle(batch).await?;
        let ended = self.table.remove(leg.id).expect("just seen");
        let held = &ended.leg;
        // The same call answered at another time (the engine corrected it):
        // the held row ends where the new one begins, so that the two bill
        // the time the call was up once, with no overlap.
        let answer_changed = held.session_id == leg.session_id
            && held.offered_at_ms == leg.offered_at_ms
            && held.answered_at_ms.is_some();
        let end_ms = match leg.answered_at_ms {
            Some(answer) if answer_changed => answer.min(crate::model::now_ms()),
            _ => crate::model::now_ms(),
        };
        tracing::warn!(
            leg = leg.id,
            held_session = held.session_id,
            new_session = leg.session_id,
            "the engine reported leg {} {why}: the held call ends and the new one is handled on its own",
            leg.id
        );
        let decider = self.policy.current();
        self.end_legs_at(vec![(ended, end_ms)], TerminationReason::Replaced, &decider)
            .await
    }

    fn set_state(&mut self, id: LegId, state: LegState) {
        match self.table.get_mut(id) {
            Some(leg) => leg.state = state,
            None => self.unknown_leg(
                id,
                if state == LegState::Ringing {
                    LegEvent::Ringing
                } else {
                    LegEvent::Terminating
                },
            ),
        }
    }

    /// Whether a new leg from a live event must be refused because the
    /// table holds `link.max_legs` legs (so that no engine, whatever it
    /// sends, grows the table past its bound). A refusal is counted here,
    /// and logged at most once per [`crate::repeated::REPEAT_LOG_EVERY`]: call it once
    /// per leg that would be added.
    fn refused_for_space(&mut self) -> bool {
        if self.table.len() < self.options.max_legs {
            return false;
        }
        metrics::counter!(crate::metrics::TABLE_FULL).increment(1);
        if let Some((_, refused)) = self.table_full_refusals.count() {
            tracing::error!(
                max_legs = self.options.max_legs,
                refused,
                "the table is full (link.max_legs): new legs from the engine are refused and dropped"
            );
        }
        true
    }

    /// An event about a leg the host does not hold: counted, and logged
    /// once per interval with the count. The release of a leg this host
    /// dropped itself (a refusal) is expected: not counted.
    fn unknown_leg(&mut self, id: LegId, event: LegEvent) {
        let what = event.as_str();
        let dropped = match event {
            LegEvent::Released => self.dropped.remove(&id),
            LegEvent::Ringing | LegEvent::Terminating => self.dropped.contains(&id),
        };
        if dropped {
            tracing::debug!(
                leg = id,
                "the engine reports leg {id} {what}, as this host asked"
            );
            return;
        }
        self.status.send_modify(|s| s.unknown_leg_events += 1);
        metrics::counter!(crate::metrics::UNKNOWN_LEG_EVENTS).increment(1);
        if let Some((since, _)) = self.unknown_legs.count() {
            tracing::warn!(
                events = since,
                latest_leg = id,
                "the engine reported {since} event(s) about legs this host does not hold since the last report (the latest: leg {id} {what}); counted in legsync_unknown_leg_events_total"
            );
        }
    }
}
