//! Every way a context ends goes through here: the ledger END for answered
//! calls (durable first), then the `OnCallLegTerminated` event, then the
//! plugins' notification.

use super::Host;
use crate::events::{HostEvent, LinkState};
use crate::mixers::HeldMixer;
use crate::model::{Custody, EndedLeg, TerminationReason, now_ms};
use crate::policy::Decider;

impl Host {
    /// Ends `legs` (already out of the table) for `reason`, now.
    pub(super) async fn end_legs(
        &mut self,
        legs: Vec<EndedLeg>,
        reason: TerminationReason,
        decider: &Decider,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        self.end_legs_at(
            legs.into_iter().map(|l| (l, now)).collect(),
            reason,
            decider,
        )
        .await
    }

    /// Ends `legs`, each at its own time. The END records are durable
    /// before the event log says so or a plugin hears of it.
    pub(super) async fn end_legs_at(
        &mut self,
        legs: Vec<(EndedLeg, u64)>,
        reason: TerminationReason,
        decider: &Decider,
    ) -> anyhow::Result<()> {
        if legs.is_empty() {
            return Ok(());
        }
        self.write_ends(&legs, reason).durable().await?;
        let ended = legs.into_iter().map(|(leg, _)| leg).collect();
        self.report_ended(ended, reason, decider);
        Ok(())
    }

    /// Hands the END records of `legs` to the ledger (durable once
    /// awaited). The calls go on in the engine when the host stops: the
    /// next host adopts them from the ledger, so nothing is written then.
    pub(super) fn write_ends(
        &self,
        legs: &[(EndedLeg, u64)],
        reason: TerminationReason,
    ) -> crate::cdr::Pending {
        let legs = legs
            .iter()
            .filter(|_| reason != TerminationReason::HostShutdown);
        self.cdr
            .close_calls(legs.map(|(ended, at)| (&ended.leg, *at)), reason)
    }

    /// Once their ENDs are durable: the `OnCallLegTerminated` events, then
    /// the plugins' notice.
    pub(super) fn report_ended(
        &mut self,
        ended: Vec<EndedLeg>,
        reason: TerminationReason,
        decider: &Decider,
    ) {
        // An ended leg leaves every mixer it was in.
        if !self.mixers.is_empty() {
            for ended in &ended {
                self.mixers.leave_all(ended.leg.id);
            }
        }
        self.events
            .emit_all(ended.iter().map(|ended| HostEvent::CallLegTerminated {
                leg: ended.leg.id,
                reason,
            }));
        let decider = decider.clone();
        self.notice(move || decider.notify_terminated(&ended, reason));
    }

    /// Tells the plugins of endings off the async threads (plugin calls
    /// block). Not awaited: a slow plugin never holds up a purge, the grace
    /// timer or the live path. The next decision waits for them
    /// ([`Host::settle_notices`]), so each plugin hears of endings before
    /// it decides again.
    fn notice(&mut self, notify: impl FnOnce() + Send + 'static) {
        self.notices.retain(|h| !h.is_finished());
        self.notices.push(tokio::task::spawn_blocking(notify));
    }

    /// Ends mixers the host held (already out of the table) for `reason`.
    /// Their legs live on, each on its own.
    pub(super) fn end_mixers(&mut self, mixers: Vec<HeldMixer>, reason: TerminationReason) {
        if mixers.is_empty() {
            return;
        }
        metrics::counter!(crate::metrics::MIXERS_TERMINATED, "reason" => reason.as_str())
            .increment(mixers.len() as u64);
        self.events
            .emit_all(mixers.iter().map(|held| HostEvent::MixerTerminated {
                mixer: held.mixer.id,
                reason,
            }));
        let decider = self.policy.current();
        self.notice(move || decider.notify_mixers_terminated(&mixers, reason));
    }

    /// Waits until the plugins have heard of every ending so far.
    pub(super) async fn settle_notices(&mut self) {
        for handle in std::mem::take(&mut self.notices) {
            if let Err(e) = self.serving(handle).await {
                tracing::error!(error = %e, "termination notification task failed");
            }
        }
    }

    /// Ends the calls the ledger had open at start that the engine has not
    /// shown again, at the last moment the host can prove they were up.
    pub(super) async fn end_recovered(
        &mut self,
        reason: TerminationReason,
        decider: &Decider,
    ) -> anyhow::Result<()> {
        if self.recovered.is_empty() {
            return Ok(());
        }
        let lost: Vec<(EndedLeg, u64)> = std::mem::take(&mut self.recovered)
            .into_values()
            .map(|call| {
                let ended = EndedLeg {
                    leg: call.leg,
                    custody: Custody::Previous,
                };
                (ended, call.proven_up_ms)
            })
            .collect();
        if reason != TerminationReason::HandedOver {
            tracing::warn!(
                calls = lost.len(),
                reason = reason.as_str(),
                "calls the ledger had open from the previous run are gone; ending them at their last proven moment"
            );
        }
        self.end_legs_at(lost, reason, decider).await?;
        self.publish(None, None);
        Ok(())
    }

    /// Every context destroyed locally (a grace expiry, a handover): each
    /// answered call gets its END for `reason`, durable when this returns.
    /// Returns how many legs were held and how many answered calls ended.
    async fn destroy_every_context(
        &mut self,
        reason: TerminationReason,
    ) -> anyhow::Result<(usize, usize)> {
        self.grace.disarm();
        let mixers = self.mixers.drain();
        self.end_mixers(mixers, reason);
        let legs = self.table.drain();
        let held = legs.len();
        let answered = legs
            .iter()
            .filter(|l| l.leg.answered_at_ms.is_some())
            .count()
            + self.recovered.len();
        self.publish(Some(LinkState::Purged), None);
        let decider = self.policy.current();
        self.end_legs(legs, reason, &decider).await?;
        self.end_recovered(reason, &decider).await?;
        Ok((held, answered))
    }

    /// The grace timer expired: every context is destroyed locally.
    pub(super) async fn purge(&mut self) -> anyhow::Result<()> {
        metrics::counter!(crate::metrics::GRACE_EXPIRIES).increment(1);
        let (held, answered) = self
            .destroy_every_context(TerminationReason::GraceExpired)
            .await?;
        // After the ENDs are durable: the line says what the ledger holds.
        tracing::error!(
            legs = held,
            ended_calls = answered,
            grace_secs = self.options.grace.as_secs_f64(),
            "grace timer expired: the engine stayed away {} s; every context destroyed, {answered} answered calls ended (grace-expired ENDs in the ledger)",
            self.options.grace.as_secs_f64()
        );
        self.events.emit(HostEvent::Link {
            state: LinkState::Purged,
            boot_id: None,
            detail: None,
        });
        Ok(())
    }

    /// The grace time ran out while `controller` holds the engine: the
    /// calls are not gone, another controller carries them. The contexts
    /// are given up locally and each answered call gets an END of reason
    /// `handed-over`: the host's last word on it, which the controller's
    /// records (a later epoch's) supersede; if that controller keeps no
    /// ledger, the END stands and the call is billed until now, and a
    /// RESUME follows should this host find the call again
    /// (docs/operations.md). Not a grace expiry: no alarm.
    pub(super) async fn hand_over(&mut self, controller: String) -> anyhow::Result<()> {
        self.slot_holder = None;
        metrics::counter!(crate::metrics::HANDOVERS).increment(1);
        let (held, answered) = self
            .destroy_every_context(TerminationReason::HandedOver)
            .await?;
        tracing::info!(
            legs = held,
            handed_over_calls = answered,
            controller = %controller,
            "grace time over while another controller holds the engine: its {answered} answered calls handed over to it (ENDs of reason handed-over, which its records supersede)"
        );
        self.events.emit(HostEvent::Link {
            state: LinkState::Purged,
            boot_id: None,
            detail: Some(format!("handed over to {controller}")),
        });
        Ok(())
    }

    /// The host stops: plugins hear of it; no CDR is written, since the
    /// calls go on in the engine and the next host re-adopts them.
    pub(super) async fn shut_down(mut self) -> anyhow::Result<()> {
        let mixers = self.mixers.drain();
        self.end_mixers(mixers, TerminationReason::HostShutdown);
        let legs = self.table.drain();
        tracing::info!(legs = legs.len(), "host shutting down");
        let decider = self.policy.current();
        self.end_legs(legs, TerminationReason::HostShutdown, &decider)
            .await?;
        // The plugins hear of the stop for at most this long: with the
        // runtime's own bound on what still runs (`cli::block_on`), the
        // process is gone within a second of SIGTERM.
        let _ = tokio::time::timeout(NOTICES_AT_STOP, self.settle_notices()).await;
        Ok(())
    }
}

/// How long a stop waits for the plugins' termination notices.
const NOTICES_AT_STOP: std::time::Duration = std::time::Duration::from_millis(800);
