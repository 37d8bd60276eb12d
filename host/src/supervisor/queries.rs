//! Questions the admin endpoint asks the supervisor, answered between two
//! batches of work: the table is the supervisor's alone, so a page of held
//! legs is read where it lives, never behind a lock the hot path would take.

use super::Host;
use crate::model::{CallLeg, LegId, MixerId};
use crate::policy::held::{HeldLegs, HeldLegsError, HeldLegsPage, HeldSnapshot, MAX_HELD_PAGE};
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
    /// Ends and drops these legs, each refused by its plugin (an operator
    /// enforcing the working set: [`super::enforce`]). Only the live loop
    /// can (it holds the connection); elsewhere it is refused.
    Enforce {
        /// The set enforced: its hash and plugins, for the report.
        set: (String, Vec<String>),
        legs: Vec<(
            LegId,
            crate::model::PluginName,
            Option<crate::model::Reason>,
        )>,
        reply: oneshot::Sender<Result<crate::events::Enforced, super::enforce::EnforceRefused>>,
    },
    /// A page of held mixers with their joins, by id, after `after`.
    Mixers {
        after: MixerId,
        limit: usize,
        reply: oneshot::Sender<MixersPage>,
    },
    /// Legs and links from a position of the table's storage (a walk of
    /// the whole table for a reload's blast radius), and the table's size.
    Slots {
        from: usize,
        limit: usize,
        reply: std::sync::mpsc::SyncSender<SlotsPage>,
    },
}

/// One page of [`AdminQuery::Slots`].
#[derive(Debug, Default)]
pub struct SlotsPage {
    legs: Vec<(CallLeg, crate::model::PluginName)>,
    links: Vec<crate::model::Link>,
    /// Legs and links held when the page was taken (the walk's end).
    held_legs: usize,
    held_links: usize,
}

/// The held legs' ids, sorted, each with its slot, and the table version
/// they were read at.
pub(super) type HeldOrder = (u64, Vec<(LegId, usize)>);

/// One page of held mixers.
#[derive(Debug, Clone, Serialize)]
pub struct MixersPage {
    /// Mixers held in all.
    pub held: usize,
    pub mixers: Vec<HeldMixerView>,
    /// The `after` of the next page, if there is one.
    pub next_after: Option<MixerId>,
}

/// A held mixer and the legs joined to it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldMixerView {
    #[serde(flatten)]
    pub mixer: crate::model::Mixer,
    pub joins: Vec<JoinView>,
}

/// A leg of a mixer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct JoinView {
    pub leg: LegId,
    pub role: crate::model::JoinRole,
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
            AdminQuery::Mixers {
                after,
                limit,
                reply,
            } => {
                let limit = limit.clamp(1, MAX_PAGE);
                let all = self.mixers.list();
                let mut mixers: Vec<HeldMixerView> = all
                    .iter()
                    .filter(|held| held.mixer.id > after)
                    .take(limit + 1)
                    .map(|held| HeldMixerView {
                        mixer: held.mixer.clone(),
                        joins: held
                            .joins
                            .iter()
                            .map(|&(leg, role)| JoinView { leg, role })
                            .collect(),
                    })
                    .collect();
                let next_after = (mixers.len() > limit).then(|| {
                    mixers.truncate(limit);
                    mixers.last().map_or(after, |m| m.mixer.id)
                });
                let _ = reply.send(MixersPage {
                    held: all.len(),
                    mixers,
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
            AdminQuery::Enforce { reply, .. } => {
                let _ = reply.send(Err(super::enforce::EnforceRefused::NotLive));
            }
            AdminQuery::Slots { from, limit, reply } => {
                let (legs, links) = self.table.page_from(from, limit);
                let _ = reply.try_send(SlotsPage {
                    legs,
                    links,
                    held_legs: self.table.len(),
                    held_links: self.table.links_len(),
                });
            }
        }
    }

    /// The slots of up to `limit` held legs with an id above `after` (of
    /// one NAP, if given), by ascending id; how many legs match in all, and
    /// the `after` of the next page.
    ///
    /// Without a NAP, the table's ids are sorted once and kept until the
    /// table changes (`LegTable::version`): a plugin paging through a
    /// million held legs from `init` (while the supervisor waits for it, so
    /// nothing changes) costs one sort, not a walk of the table per page.
    fn page(
        &self,
        nap: Option<&str>,
        after: LegId,
        limit: usize,
    ) -> (usize, Vec<usize>, Option<LegId>) {
        if nap.is_none() {
            let mut cached = self.held_order.lock().unwrap_or_else(|e| e.into_inner());
            let version = self.table.version();
            if cached.as_ref().is_none_or(|(v, _)| *v != version) {
                let mut order: Vec<(LegId, usize)> = self
                    .table
                    .legs()
                    .enumerate()
                    .map(|(slot, entry)| (entry.leg.id, slot))
                    .collect();
                order.sort_unstable();
                *cached = Some((version, order));
            }
            let order = &cached.as_ref().expect("filled above").1;
            let start = order.partition_point(|&(id, _)| id <= after);
            let page = &order[start..order.len().min(start + limit)];
            let more = start + page.len() < order.len();
            let next_after = more.then(|| page.last().map(|&(id, _)| id)).flatten();
            return (
                order.len(),
                page.iter().map(|&(_, slot)| slot).collect(),
                next_after,
            );
        }
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

    /// Asks the supervisor `query`, whose answer comes on `answer`; `None`
    /// when the host has stopped (it holds nothing).
    fn ask<T>(
        &self,
        mut query: AdminQuery,
        answer: std::sync::mpsc::Receiver<T>,
    ) -> Result<Option<T>, HeldLegsError> {
        let unanswered = || HeldLegsError::Unanswered(HELD_LEGS_WAIT.as_secs());
        let deadline = Instant::now() + HELD_LEGS_WAIT;
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
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(None),
            }
        }
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(page) => Ok(Some(page)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(unanswered()),
        }
    }
}

/// Legs a blast radius walk asks for at once: a page costs the supervisor
/// about a millisecond, so the live path never waits long for it.
const SLOTS_PAGE: usize = 16_384;

impl HeldLegs for HeldFromTable {
    fn page(&self, after: LegId, max: usize) -> Result<HeldLegsPage, HeldLegsError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let query = AdminQuery::Held {
            after,
            limit: max,
            reply,
        };
        Ok(self.ask(query, answer)?.unwrap_or_default())
    }

    fn snapshot(&self) -> Result<HeldSnapshot, HeldLegsError> {
        let mut snapshot = HeldSnapshot::default();
        let mut seen = crate::model::IdSet::default();
        let mut from = 0;
        loop {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let query = AdminQuery::Slots {
                from,
                limit: SLOTS_PAGE,
                reply,
            };
            let Some(page) = self.ask(query, answer)? else {
                return Ok(HeldSnapshot::default());
            };
            // The table may change between pages: a leg moved by a removal
            // can be met twice.
            snapshot
                .legs
                .extend(page.legs.into_iter().filter(|(leg, _)| seen.insert(leg.id)));
            snapshot.links.extend(page.links);
            from += SLOTS_PAGE;
            if from >= page.held_legs.max(page.held_links) {
                snapshot.links.sort_unstable_by_key(|link| link.id);
                snapshot.links.dedup_by_key(|link| link.id);
                return Ok(snapshot);
            }
        }
    }
}
