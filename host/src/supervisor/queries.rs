//! Questions the admin endpoint asks the supervisor, answered between two
//! batches of work: the table is the supervisor's alone, so a page of held
//! legs is read where it lives, never behind a lock the hot path would take.

use super::Host;
use crate::model::{CallLeg, LegId};
use serde::Serialize;
use tokio::sync::oneshot;

/// A question for the supervisor.
#[derive(Debug)]
pub enum AdminQuery {
    /// Answered as soon as the supervisor turns: its loop is alive.
    Ping(oneshot::Sender<()>),
    /// A page of held legs, by id, after `after`, optionally of one NAP.
    Legs {
        nap: Option<String>,
        after: LegId,
        limit: usize,
        reply: oneshot::Sender<LegsPage>,
    },
}

/// One page of held legs.
#[derive(Debug, Clone, Serialize)]
pub struct LegsPage {
    /// Legs held in all.
    pub held: usize,
    /// Legs matching the filter, in all.
    pub matched: usize,
    pub legs: Vec<HeldLeg>,
    /// The `after` of the next page, if there is one.
    pub next_after: Option<LegId>,
}

/// A held leg and who adopted it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldLeg {
    #[serde(flatten)]
    pub leg: CallLeg,
    pub adopted_by: &'static str,
}

/// The largest page served.
pub const MAX_PAGE: usize = 10_000;

impl Host {
    /// Answers one question (a page walks the table once: ~10 ms a million).
    pub(super) fn answer(&self, query: AdminQuery) {
        match query {
            AdminQuery::Ping(reply) => {
                let _ = reply.send(());
            }
            AdminQuery::Legs {
                nap,
                after,
                limit,
                reply,
            } => {
                let limit = limit.clamp(1, MAX_PAGE);
                let mut matched = 0;
                let mut page: Vec<(LegId, usize)> = Vec::new();
                let legs: Vec<_> = self.table.legs().collect();
                for (slot, entry) in legs.iter().enumerate() {
                    if nap.as_deref().is_some_and(|n| entry.leg.nap != n) {
                        continue;
                    }
                    matched += 1;
                    if entry.leg.id > after {
                        page.push((entry.leg.id, slot));
                    }
                }
                let more = page.len() > limit;
                if more {
                    page.select_nth_unstable(limit);
                    page.truncate(limit);
                }
                page.sort_unstable();
                let legs: Vec<HeldLeg> = page
                    .iter()
                    .map(|&(_, slot)| HeldLeg {
                        leg: legs[slot].leg.clone(),
                        adopted_by: legs[slot].adopted_by.as_str(),
                    })
                    .collect();
                let next_after = more.then(|| legs.last().map(|l| l.leg.id)).flatten();
                let _ = reply.send(LegsPage {
                    held: self.table.len(),
                    matched,
                    legs,
                    next_after,
                });
            }
        }
    }
}
