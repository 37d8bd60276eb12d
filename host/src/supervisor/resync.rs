//! One resync: the snapshot streams in, the diff sorts it, the decider
//! decides the unknown legs then links, refusals go back to the engine as
//! drop commands, absent legs end. Decisions run on blocking threads (plugin
//! calls block) while the link's own tasks keep the heartbeats going.

use super::{Host, ResyncError};
use crate::engine::{Connection, LinkError};
use crate::events::{HostEvent, LinkState, ResyncSummary};
use crate::model::{CallLeg, Decision, LegId, Link, TerminationReason};
use crate::policy::{Decider, Verdict};
use crate::protocol::{Command, EngineMessage};
use crate::resync::SnapshotDiff;
use std::collections::HashSet;
use std::time::Instant;

impl Host {
    pub(super) async fn resync(&mut self, connection: &mut Connection) -> Result<(), ResyncError> {
        let started = Instant::now();
        let boot_id = connection.boot_id;
        let engine_restarted = self.last_boot.is_some_and(|b| b != boot_id);
        self.last_boot = Some(boot_id);
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

        let mut diff = self.receive_snapshot(connection).await?;
        let mut summary = ResyncSummary {
            engine_restarted,
            known: diff.known,
            ..ResyncSummary::default()
        };
        summary.phases.snapshot = micros(started);
        let mut pending = HashSet::new();

        let unknown = std::mem::take(&mut diff.unknown);
        let refused = self.decide_legs(&decider, unknown, &mut summary).await?;
        let plan = diff.plan_links(&self.table, &refused);
        for id in &plan.gone {
            self.table.remove_link(*id);
        }
        for link in &plan.drop {
            pending.insert(connection.send(Command::DropLink(link.id)));
        }
        self.events
            .emit_all(plan.drop.iter().map(|l| HostEvent::LinkDropped {
                link: l.id,
                legs: [l.leg_a, l.leg_b],
            }));
        for id in &refused {
            pending.insert(connection.send(Command::DropLeg(*id)));
        }
        let phase = Instant::now();
        self.decide_links(connection, &decider, plan.offer, &mut summary, &mut pending)
            .await?;
        summary.phases.link_decisions = micros(phase);
        let phase = Instant::now();

        let absent: Vec<CallLeg> = SnapshotDiff::absent(&self.table)
            .into_iter()
            .filter_map(|id| self.table.remove(id))
            .collect();
        summary.absent = absent.len() as u64;
        self.end_legs(absent, TerminationReason::AbsentAfterResync, &decider)
            .await
            .map_err(ResyncError::Fatal)?;

        summary.phases.absent = micros(phase);
        let phase = Instant::now();
        self.await_acks(connection, pending).await?;
        summary.phases.drop_acks = micros(phase);
        summary.millis = started.elapsed().as_millis() as u64;
        tracing::info!(?summary, "resync done");
        // The status first: whoever sees the event then sees the new state.
        self.status.send_modify(|s| s.resyncs += 1);
        self.publish(Some(LinkState::Connected), Some(boot_id));
        self.events.emit_all([
            HostEvent::ResyncDone(summary),
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
    ) -> Result<SnapshotDiff, LinkError> {
        match connection.next().await? {
            EngineMessage::SnapshotBegin { legs, .. } => {
                self.table.reserve(legs as usize);
                self.status.send_modify(|s| {
                    s.snapshot_expected = legs;
                    s.snapshot_received = 0;
                });
            }
            other => {
                return Err(LinkError::Unexpected(format!(
                    "{other:?} instead of a snapshot"
                )));
            }
        }
        let mut diff = SnapshotDiff::begin(&mut self.table);
        loop {
            match connection.next().await? {
                EngineMessage::SnapshotLegs(chunk) => {
                    let received = chunk.len() as u64;
                    diff.legs(&mut self.table, chunk);
                    self.status.send_modify(|s| s.snapshot_received += received);
                }
                EngineMessage::SnapshotLinks(chunk) => diff.links(chunk),
                EngineMessage::SnapshotEnd => return Ok(diff),
                other => {
                    return Err(LinkError::Unexpected(format!(
                        "{other:?} inside a snapshot"
                    )));
                }
            }
        }
    }

    /// `OnCallLegSync` for the unknown legs; returns the refused ids.
    async fn decide_legs(
        &mut self,
        decider: &Decider,
        unknown: Vec<CallLeg>,
        summary: &mut ResyncSummary,
    ) -> Result<HashSet<LegId>, ResyncError> {
        let phase = Instant::now();
        let (unknown, verdicts) =
            decide_blocking(decider, unknown, |d, legs| d.decide_legs(legs)).await?;
        summary.phases.decisions = micros(phase);
        let phase = Instant::now();
        self.events.emit_all(
            unknown
                .iter()
                .zip(&verdicts)
                .map(|(leg, v)| sync_event(leg.id, v)),
        );
        // A call ended at a grace deadline and adopted again gets a RESUME.
        let rebuilt = unknown
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.decision == Decision::Rebuild)
            .map(|(leg, _)| leg);
        self.cdr.resume(rebuilt).await.map_err(ResyncError::Fatal)?;
        let mut refused = HashSet::new();
        let mut refused_legs = Vec::new();
        for (mut leg, verdict) in unknown.into_iter().zip(verdicts) {
            match verdict.decision {
                Decision::Rebuild => {
                    leg.linked_to = None;
                    self.table.insert(leg, verdict.plugin);
                    summary.rebuilt += 1;
                }
                Decision::Refuse => {
                    refused.insert(leg.id);
                    refused_legs.push(leg);
                }
            }
        }
        summary.refused = refused.len() as u64;
        self.end_legs(refused_legs, TerminationReason::RefusedByPolicy, decider)
            .await
            .map_err(ResyncError::Fatal)?;
        summary.phases.adopt = micros(phase);
        Ok(refused)
    }

    /// `OnLinkSync` for unknown links whose legs the host now holds.
    async fn decide_links(
        &mut self,
        connection: &mut Connection,
        decider: &Decider,
        offer: Vec<Link>,
        summary: &mut ResyncSummary,
        pending: &mut HashSet<u64>,
    ) -> Result<(), ResyncError> {
        let (offer, verdicts) =
            decide_blocking(decider, offer, |d, links| d.decide_links(links)).await?;
        let mut events = Vec::with_capacity(offer.len());
        for (link, verdict) in offer.into_iter().zip(verdicts) {
            match verdict.decision {
                Decision::Rebuild => {
                    self.table.insert_link(link);
                    summary.links_rebuilt += 1;
                }
                Decision::Refuse => {
                    pending.insert(connection.send(Command::DropLink(link.id)));
                    summary.links_refused += 1;
                }
            }
            events.push(HostEvent::LinkSync {
                link: link.id,
                legs: [link.leg_a, link.leg_b],
                decision: verdict.decision,
                plugin: verdict.plugin,
                failure: verdict.failure,
            });
        }
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
                EngineMessage::Ack { command, result } => {
                    pending.remove(&command);
                    tracing::debug!(command, ?result, "drop acknowledged");
                }
                other => {
                    if let Err(e) = self.handle(other).await.map_err(ResyncError::Fatal)? {
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
        plugin: verdict.plugin.clone(),
        failure: verdict.failure,
    }
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
