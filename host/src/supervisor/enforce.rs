//! Enforcing the working plugin set on the calls held now, on purpose.
//!
//! A reload decides only what the host does not hold yet; calls already up
//! stay under the rules they were adopted with. To cut off a destination
//! now, an operator enforces the working set: the admin endpoint computes
//! its blast radius on a throwaway copy (`policy::blast`), shows it, and on
//! confirmation by the set's hash hands the refused legs here. They end
//! through the normal path, as a resync's refusals do: the END of each
//! answered call durable first, then the audit (`call-leg-sync` refused,
//! naming the plugin), the `OnCallLegTerminated` events and the plugins'
//! notice, then the drop at the engine.

use super::Host;
use crate::engine::Connection;
use crate::events::{Enforced, HostEvent};
use crate::model::{Custody, Decision, LegId, PluginName, Reason, TerminationReason};
use crate::protocol::Command;

/// Why nothing was enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnforceRefused {
    /// The engine is away, or the host is resyncing: drops could not be
    /// sent now, and a resync decides everything anyway.
    #[error(
        "the host is not in live contact with the engine (away, or resyncing): nothing was enforced"
    )]
    NotLive,
}

impl Host {
    /// Ends and drops `legs`, each refused by its plugin (see the module).
    pub(super) async fn enforce(
        &mut self,
        connection: &mut Connection,
        set: (String, Vec<String>),
        legs: Vec<(LegId, PluginName, Option<Reason>)>,
    ) -> anyhow::Result<Enforced> {
        // What was read before is reported first.
        self.settle_batches().await?;
        let decider = self.policy.current();
        let asked = legs.len() as u64;
        let mut ended = Vec::with_capacity(legs.len());
        let mut reasons = crate::model::IdMap::default();
        // The links of refused legs go with them, as at a resync.
        let mut dropped_links: Vec<crate::model::Link> = Vec::new();
        let mut seen_links = crate::model::IdSet::default();
        for (id, by, reason) in legs {
            reasons.insert(id, reason);
            if let Some(link) = self.table.link_of(id)
                && seen_links.insert(link.id)
            {
                dropped_links.push(link);
            }
            if let Some(mut leg) = self.table.remove(id) {
                leg.custody = Custody::Withdrawn { by };
                ended.push(leg);
            }
        }
        let done = Enforced {
            set_hash: set.0,
            plugins: set.1,
            ended_legs: ended.len() as u64,
            ended_answered: ended
                .iter()
                .filter(|e| e.leg.answered_at_ms.is_some())
                .count() as u64,
            gone_meanwhile: asked - ended.len() as u64,
        };
        let ids: Vec<LegId> = ended.iter().map(|e| e.leg.id).collect();
        self.events
            .emit_all(ended.iter().filter_map(|e| match e.custody {
                Custody::Withdrawn { by } => Some(HostEvent::CallLegSync {
                    leg: e.leg.id,
                    decision: Decision::Refuse,
                    plugin: by,
                    failure: None,
                    reason: reasons.get(&e.leg.id).copied().flatten(),
                    datasets: None,
                }),
                _ => None,
            }));
        self.events
            .emit_all(dropped_links.iter().map(|l| HostEvent::LinkDropped {
                link: l.id,
                legs: [l.leg_a, l.leg_b],
            }));
        self.end_legs(ended, TerminationReason::RefusedByPolicy, &decider)
            .await?;
        for id in ids {
            self.dropped.insert(id);
            connection.send(Command::DropLeg(id));
        }
        self.publish(None, None);
        self.events
            .emit(HostEvent::Enforced(Box::new(done.clone())));
        tracing::warn!(
            legs = done.ended_legs,
            answered = done.ended_answered,
            "the working plugin set was enforced on the held calls: {} legs refused, ended and dropped",
            done.ended_legs
        );
        Ok(done)
    }
}
