//! Questions the admin endpoint asks the supervisor, answered between two
//! batches of work: the table is the supervisor's alone, so a page of held
//! legs is read where it lives, never behind a lock the hot path would take.

use super::Host;
use crate::model::{CallLeg, LegId};
use crate::policy::held::{HeldLegs, HeldLegsError, HeldLegsPage, MAX_HELD_PAGE};
use serde::Serialize;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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
    /// A page of held legs for a plugin (`held-legs`), answered to a
    /// blocking thread.
    Held {
        after: LegId,
        limit: usize,
        reply: std::sync::mpsc::SyncSender<HeldLegsPage>,
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
                let (matched, slots, next_after) =
                    self.page(nap.as_deref(), after, limit.clamp(1, MAX_PAGE));
                let legs = self.table.legs().collect::<Vec<_>>();
                let legs = slots
                    .iter()
                    .map(|&slot| HeldLeg {
                        leg: legs[slot].leg.clone(),
                        adopted_by: legs[slot].adopted_by.as_str(),
                    })
                    .collect();
                let _ = reply.send(LegsPage {
                    held: self.table.len(),
                    matched,
                    legs,
                    next_after,
                });
            }
            AdminQuery::Held {
                after,
                limit,
                reply,
            } => {
                let (_, slots, next_after) = self.page(None, after, limit.clamp(1, MAX_HELD_PAGE));
                let legs = self.table.legs().collect::<Vec<_>>();
                let legs = slots
                    .iter()
                    .map(|&slot| (legs[slot].leg.clone(), legs[slot].adopted_by))
                    .collect();
                let _ = reply.try_send(HeldLegsPage { legs, next_after });
            }
        }
    }

    /// The slots of up to `limit` held legs with an id above `after` (of
    /// one NAP, if given), by ascending id; how many legs match in all, and
    /// the `after` of the next page.
    fn page(
        &self,
        nap: Option<&str>,
        after: LegId,
        limit: usize,
    ) -> (usize, Vec<usize>, Option<LegId>) {
        let mut matched = 0;
        let mut page: Vec<(LegId, usize)> = Vec::new();
        for (slot, entry) in self.table.legs().enumerate() {
            if nap.is_some_and(|n| entry.leg.nap != n) {
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
        let next_after = more.then(|| page.last().map(|&(id, _)| id)).flatten();
        (
            matched,
            page.into_iter().map(|(_, slot)| slot).collect(),
            next_after,
        )
    }

    /// Awaits plugin work, answering questions meanwhile: a plugin may ask
    /// for the held legs (`held-legs`) from inside the very call awaited
    /// here, and would otherwise wait for a supervisor that waits for it.
    pub(super) async fn serving<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                Some(query) = self.queries.recv() => self.answer(query),
            }
        }
    }
}

/// How long a plugin's `held-legs` waits for the supervisor (which answers
/// between two batches of work, and while it waits for plugins) before the
/// call fails.
pub const HELD_LEGS_WAIT: Duration = Duration::from_secs(10);

/// `held-legs` served from the supervisor's table, through its questions.
#[derive(Debug, Clone)]
pub struct HeldFromTable {
    queries: mpsc::Sender<AdminQuery>,
}

impl HeldFromTable {
    pub fn new(queries: mpsc::Sender<AdminQuery>) -> Self {
        HeldFromTable { queries }
    }
}

impl HeldLegs for HeldFromTable {
    fn page(&self, after: LegId, max: usize) -> Result<HeldLegsPage, HeldLegsError> {
        let unanswered = || HeldLegsError::Unanswered(HELD_LEGS_WAIT.as_secs());
        let deadline = Instant::now() + HELD_LEGS_WAIT;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let mut query = AdminQuery::Held {
            after,
            limit: max,
            reply,
        };
        // Not `blocking_send`: the question queue is short, and a plugin
        // call must not wait on it past the deadline.
        loop {
            match self.queries.try_send(query) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(again)) if Instant::now() < deadline => {
                    query = again;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(unanswered()),
                // The host has stopped (a new one is starting with this
                // runtime): it holds nothing.
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(HeldLegsPage::default()),
            }
        }
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(page) => Ok(page),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(HeldLegsPage::default()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(unanswered()),
        }
    }
}
