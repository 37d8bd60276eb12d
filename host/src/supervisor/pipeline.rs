//! Live batches in flight: handed to the ledger, reported once durable.
//!
//! The live loop does not wait for a batch's fsync before it reads the
//! next one. The ledger's writer commits whatever is waiting with one fsync
//! (group commit), so a burst of releases costs a few fsyncs instead of one
//! per batch, and a slow fsync no longer holds up reading. What the host
//! reports about a batch (its terminations in the event log, the plugins'
//! notice) still waits for the batch's records, and batches are reported in
//! the order they were read: a record is durable before anything says so.

use super::Host;
use crate::cdr::Pending;
use crate::model::{EndedLeg, TerminationReason};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// Batches in flight before the live loop waits for the oldest: enough for
/// the writer to group many batches into one fsync, few enough to bound
/// memory and the latency of what is reported.
const MAX_IN_FLIGHT: usize = 64;

type Durable = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + Sync>>;

/// A batch whose records are with the writer.
struct InFlight {
    durable: Durable,
    /// Released legs, reported once their ENDs are durable.
    released: Vec<EndedLeg>,
    /// The batch's last record: the ledger's durable mark must have reached
    /// it before anything is reported.
    last_record: u64,
    /// When the batch's first message was read.
    read_at: Instant,
}

/// The batches in flight, oldest first.
#[derive(Default)]
pub(super) struct Pipeline {
    batches: VecDeque<InFlight>,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Waits until the oldest batch's records are durable (pending forever
    /// if there is none, so it can sit in a `select!`).
    pub async fn oldest_durable(&mut self) -> anyhow::Result<()> {
        match self.batches.front_mut() {
            Some(oldest) => oldest.durable.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

impl Host {
    /// Hands a batch's records to the ledger: the STARTs already handed
    /// over (`starts`), and the ENDs of `released`, written now.
    pub(super) async fn submit_batch(
        &mut self,
        starts: Vec<Pending>,
        released: Vec<EndedLeg>,
        read_at: Instant,
    ) -> anyhow::Result<()> {
        // The status first: whoever sees an ending then sees the table
        // without the leg.
        self.publish(None, None);
        if starts.is_empty() && released.is_empty() {
            return Ok(());
        }
        let now = crate::model::now_ms();
        let ended: Vec<(EndedLeg, u64)> = released.into_iter().map(|leg| (leg, now)).collect();
        let ends = self.write_ends(&ended, TerminationReason::Released);
        let last_record = starts
            .iter()
            .map(Pending::last_record)
            .fold(ends.last_record(), u64::max);
        let durable = Box::pin(async move {
            for start in starts {
                start.durable().await?;
            }
            ends.durable().await.map(|_| ())
        });
        self.pipeline.batches.push_back(InFlight {
            durable,
            released: ended.into_iter().map(|(leg, _)| leg).collect(),
            last_record,
            read_at,
        });
        while self.pipeline.batches.len() > MAX_IN_FLIGHT {
            self.pipeline.oldest_durable().await?;
            self.report_oldest();
        }
        Ok(())
    }

    /// The oldest batch is durable: its endings are reported.
    pub(super) fn report_oldest(&mut self) {
        let Some(batch) = self.pipeline.batches.pop_front() else {
            return;
        };
        // The rule of the ledger, checked where it could break: nothing is
        // reported before its records are durable.
        debug_assert!(
            self.cdr.durable_marks().borrow().record >= batch.last_record,
            "a live batch reported before its record {} was durable",
            batch.last_record
        );
        crate::metrics::observe(
            crate::metrics::LIVE_DURABLE_SECONDS,
            batch.read_at.elapsed(),
        );
        if !batch.released.is_empty() {
            let decider = self.policy.current();
            self.report_ended(batch.released, TerminationReason::Released, &decider);
        }
    }

    /// Waits until every batch in flight is durable and reported: before
    /// anything that must follow them (a decision, the end of the live
    /// phase).
    pub(super) async fn settle_batches(&mut self) -> anyhow::Result<()> {
        while !self.pipeline.is_empty() {
            self.pipeline.oldest_durable().await?;
            self.report_oldest();
        }
        Ok(())
    }
}
