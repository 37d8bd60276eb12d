//! Between resyncs: engine events keep the table current, through the same
//! table and the same endings as a resync.

use super::{Exit, Host};
use crate::engine::{Connection, LinkError};
use crate::model::{LegState, TerminationReason};
use crate::protocol::{EngineEvent, EngineMessage};
use tokio_util::sync::CancellationToken;

impl Host {
    pub(super) async fn live(
        &mut self,
        connection: &mut Connection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Exit> {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Exit::Shutdown),
                message = connection.next() => message,
            };
            match message {
                Ok(message) => {
                    if let Err(e) = self.handle(message).await? {
                        return Ok(Exit::Lost(e));
                    }
                }
                Err(e) => return Ok(Exit::Lost(e)),
            }
        }
    }

    /// Handles one message outside a snapshot. The outer error is fatal; the
    /// inner one drops the link.
    pub(super) async fn handle(
        &mut self,
        message: EngineMessage,
    ) -> anyhow::Result<Result<(), LinkError>> {
        match message {
            EngineMessage::Event(event) => self.apply(event).await?,
            EngineMessage::Ack { command, result } => {
                tracing::debug!(command, ?result, "command acknowledged late");
            }
            other => {
                return Ok(Err(LinkError::Unexpected(format!(
                    "{other:?} outside a snapshot"
                ))));
            }
        }
        Ok(Ok(()))
    }

    async fn apply(&mut self, event: EngineEvent) -> anyhow::Result<()> {
        match event {
            EngineEvent::LegOffered(mut leg) => {
                leg.linked_to = None;
                self.table.insert(leg, "live".into());
            }
            EngineEvent::LegRinging(id) => self.set_state(id, LegState::Ringing, None),
            EngineEvent::LegAnswered { leg, at_ms } => {
                self.set_state(leg, LegState::Answered, Some(at_ms))
            }
            EngineEvent::LegTerminating(id) => self.set_state(id, LegState::Terminating, None),
            EngineEvent::LegReleased(id) => {
                if let Some(leg) = self.table.remove(id) {
                    self.publish(None, None);
                    let decider = self.policy.current();
                    self.end_legs(vec![leg], TerminationReason::Released, &decider)
                        .await?;
                }
            }
            EngineEvent::LinkCreated(link) => {
                if !self.table.insert_link(link) {
                    tracing::debug!(link = link.id, "link between legs this host does not hold");
                }
            }
            EngineEvent::LinkRemoved(id) => {
                self.table.remove_link(id);
            }
        }
        self.publish(None, None);
        Ok(())
    }

    fn set_state(&mut self, id: u64, state: LegState, answered_at_ms: Option<u64>) {
        match self.table.get_mut(id) {
            Some(leg) => {
                leg.state = state;
                if answered_at_ms.is_some() {
                    leg.answered_at_ms = answered_at_ms;
                }
            }
            None => tracing::debug!(leg = id, ?state, "event for a leg this host does not hold"),
        }
    }
}
