//! Every way a context ends goes through here: the `OnCallLegTerminated`
//! event, the CDR END for answered calls, and the plugins' notification.

use super::Host;
use crate::events::{HostEvent, LinkState};
use crate::model::{CallLeg, TerminationReason, now_ms};
use crate::policy::Decider;

impl Host {
    /// Ends `legs` (already removed from the table) for `reason`.
    pub(super) async fn end_legs(
        &mut self,
        legs: Vec<CallLeg>,
        reason: TerminationReason,
        decider: &Decider,
    ) -> anyhow::Result<()> {
        if legs.is_empty() {
            return Ok(());
        }
        self.events
            .emit_all(legs.iter().map(|leg| HostEvent::CallLegTerminated {
                leg: leg.id,
                reason,
            }));
        if reason != TerminationReason::HostShutdown && reason != TerminationReason::RefusedByPolicy
        {
            self.cdr.end(&legs, reason, now_ms()).await?;
        }
        notify(decider, legs, reason).await;
        Ok(())
    }

    /// The grace timer expired: every context is destroyed locally.
    pub(super) async fn purge(&mut self) -> anyhow::Result<()> {
        self.grace.disarm();
        let legs = self.table.drain();
        tracing::warn!(
            legs = legs.len(),
            "grace timer expired: destroying every context"
        );
        self.publish(Some(LinkState::Purged), None);
        let decider = self.policy.current();
        self.end_legs(legs, TerminationReason::GraceExpired, &decider)
            .await?;
        self.events.emit(HostEvent::Link {
            state: LinkState::Purged,
            boot_id: None,
            detail: None,
        });
        Ok(())
    }

    /// The host stops: plugins hear of it; no CDR is written, since the
    /// calls go on in the engine and the next host re-adopts them.
    pub(super) async fn shut_down(mut self) -> anyhow::Result<()> {
        let legs = self.table.drain();
        tracing::info!(legs = legs.len(), "host shutting down");
        let decider = self.policy.current();
        self.end_legs(legs, TerminationReason::HostShutdown, &decider)
            .await
    }
}

/// Tells the plugins, off the async threads (plugin calls block).
pub(super) async fn notify(decider: &Decider, ended: Vec<CallLeg>, reason: TerminationReason) {
    let decider = decider.clone();
    if let Err(e) =
        tokio::task::spawn_blocking(move || decider.notify_terminated(&ended, reason)).await
    {
        tracing::error!(error = %e, "termination notification task failed");
    }
}
