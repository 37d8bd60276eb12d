//! A host running in this process against a simulator process, with its
//! events and status observable. The demo narrates with it; the integration
//! tests assert with it.

use anyhow::{Context, bail};
use legsync::app;
use legsync::config::HostConfig;
use legsync::events::{Events, HostEvent, LinkState};
use legsync::policy::{Decider, PolicyHandle};
use legsync::supervisor::HostStatus;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running host.
pub struct RunningHost {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    events: broadcast::Receiver<HostEvent>,
    status: watch::Receiver<HostStatus>,
    pub policy: PolicyHandle,
    /// The host's event sink (a reloader reports into it).
    pub sink: Events,
    /// The host's ledger writer.
    pub ledger: legsync::cdr::CdrWriter,
    /// The longest gap between the heartbeats it sends.
    pub heartbeat_gaps: legsync::engine::HeartbeatGaps,
}

impl RunningHost {
    /// Starts a host with `config` and `decider`, observing every event.
    pub fn start(config: &HostConfig, decider: Decider) -> anyhow::Result<RunningHost> {
        Self::start_with(config, decider, Events::subscribe)
    }

    /// Starts a host observing only state changes, resync summaries and
    /// reloads (for runs with very many legs).
    pub fn start_summaries(config: &HostConfig, decider: Decider) -> anyhow::Result<RunningHost> {
        Self::start_with(config, decider, Events::subscribe_summaries)
    }

    fn start_with(
        config: &HostConfig,
        decider: Decider,
        subscribe: fn(&Events) -> broadcast::Receiver<HostEvent>,
    ) -> anyhow::Result<RunningHost> {
        let sink = match &config.events {
            Some(path) => Events::with_file(path)?,
            None => Events::new(),
        };
        let events = subscribe(&sink);
        let (host, policy) = app::build_host(config, decider, sink.clone())?;
        let status = host.status();
        let ledger = host.cdr_writer();
        let heartbeat_gaps = host.heartbeat_gaps();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(host.run(shutdown.clone()));
        Ok(RunningHost {
            shutdown,
            task,
            events,
            status,
            policy,
            sink,
            ledger,
            heartbeat_gaps,
        })
    }

    /// Stops the host and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await.context("host task panicked")?
    }

    /// A receiver of status changes.
    pub fn status_receiver(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `ready`.
    pub async fn wait_status(
        &mut self,
        within: Duration,
        ready: impl Fn(&HostStatus) -> bool,
    ) -> anyhow::Result<HostStatus> {
        let mut status = self.status.clone();
        let reached = tokio::time::timeout(within, status.wait_for(|s| ready(s))).await;
        match reached {
            Ok(Ok(status)) => Ok(status.clone()),
            Ok(Err(_)) => bail!("host stopped"),
            Err(_) => bail!(
                "status not reached within {within:?}; last: {:?}",
                self.status.borrow()
            ),
        }
    }

    /// Collects events up to and including the first that satisfies `last`.
    pub async fn events_until(
        &mut self,
        within: Duration,
        last: impl Fn(&HostEvent) -> bool,
    ) -> anyhow::Result<Vec<HostEvent>> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("event not seen within {within:?}; saw {seen:#?}"),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    bail!("{n} events were lost (subscriber too slow)")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    bail!("host stopped; saw {seen:#?}")
                }
                Ok(Ok(event)) => {
                    let done = last(&event);
                    seen.push(event);
                    if done {
                        return Ok(seen);
                    }
                }
            }
        }
    }

    /// Events up to the moment the host loses the engine.
    pub async fn wait_disconnected(&mut self, within: Duration) -> anyhow::Result<Vec<HostEvent>> {
        self.wait_link(within, LinkState::Disconnected).await
    }

    /// Events up to the grace timer's purge of every context.
    pub async fn wait_purged(&mut self, within: Duration) -> anyhow::Result<Vec<HostEvent>> {
        self.wait_link(within, LinkState::Purged).await
    }

    /// Events up to the link's next change to `state`.
    async fn wait_link(
        &mut self,
        within: Duration,
        state: LinkState,
    ) -> anyhow::Result<Vec<HostEvent>> {
        self.events_until(
            within,
            |e| matches!(e, HostEvent::Link { state: s, .. } if *s == state),
        )
        .await
    }

    /// Events up to the end of the next resync.
    pub async fn next_resync(&mut self, within: Duration) -> anyhow::Result<Vec<HostEvent>> {
        self.events_until(within, |e| matches!(e, HostEvent::ResyncDone(_)))
            .await
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `(leg, decision)` of every `OnCallLegSync` among `events`, sorted.
pub fn synced(events: &[HostEvent]) -> Vec<(u64, legsync::model::Decision)> {
    sorted(events.iter().filter_map(|e| match e {
        HostEvent::CallLegSync { leg, decision, .. } => Some((*leg, *decision)),
        _ => None,
    }))
}

/// `(leg, reason)` of every `OnCallLegTerminated` among `events`, sorted.
pub fn terminated(events: &[HostEvent]) -> Vec<(u64, legsync::model::TerminationReason)> {
    sorted(events.iter().filter_map(|e| match e {
        HostEvent::CallLegTerminated { leg, reason } => Some((*leg, *reason)),
        _ => None,
    }))
}

/// `(link, decision)` of every `OnLinkSync` among `events`, sorted.
pub fn links_synced(events: &[HostEvent]) -> Vec<(u64, legsync::model::Decision)> {
    sorted(events.iter().filter_map(|e| match e {
        HostEvent::LinkSync { link, decision, .. } => Some((*link, *decision)),
        _ => None,
    }))
}

/// `(mixer, legs joined, decision)` of every mixer decision among
/// `events`, sorted.
pub fn mixers_synced(events: &[HostEvent]) -> Vec<(u64, u32, legsync::model::Decision)> {
    sorted(events.iter().filter_map(|e| match e {
        HostEvent::MixerSync {
            mixer,
            legs,
            decision,
            ..
        } => Some((*mixer, *legs, *decision)),
        _ => None,
    }))
}

/// `(mixer, reason)` of every mixer that ended among `events`, sorted.
pub fn mixers_terminated(events: &[HostEvent]) -> Vec<(u64, legsync::model::TerminationReason)> {
    sorted(events.iter().filter_map(|e| match e {
        HostEvent::MixerTerminated { mixer, reason } => Some((*mixer, *reason)),
        _ => None,
    }))
}

/// The summary of the resync among `events`.
pub fn resync_summary(events: &[HostEvent]) -> Option<legsync::events::ResyncSummary> {
    events.iter().find_map(|e| match e {
        HostEvent::ResyncDone(summary) => Some(**summary),
        _ => None,
    })
}

fn sorted<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort();
    items
}
