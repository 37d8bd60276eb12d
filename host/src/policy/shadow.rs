//! Shadow plugins: a second plugin set (`policy.shadow_dir`) that sees every
//! decision the live set sees (resync legs, links and mixers, answers of
//! unknown legs), whose verdicts are compared with the live ones and never
//! enforced.
//!
//! The shadow set decides on its own thread, from a bounded queue: the live
//! path only copies the items and their live verdicts into the queue (or,
//! when the shadow is behind, counts them as skipped), so a shadow plugin's
//! traps, loops, slowness or memory never change or delay a live decision.
//! What differs is counted by plugin and NAP: in metrics, in a summary
//! event after each resync (never a line per leg), and in `legsync shadow`
//! (`GET /shadow`). Promoting the shadow set means copying its files into
//! the live plugin directory: the normal reload, blast radius and guard.

use super::chain::{PolicyChain, Verdict};
use crate::mixers::HeldMixer;
use crate::model::{CallLeg, Decision, Link};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

/// Batches waiting for the shadow set: past this, batches are skipped.
const QUEUE: usize = 64;

/// Work for the shadow thread.
enum Job {
    Legs(Vec<CallLeg>, Vec<Verdict>),
    Links(Vec<Link>, Vec<Verdict>),
    Mixers(Vec<HeldMixer>, Vec<Verdict>),
    /// Report the differences since the last summary to `report`.
    Summary(Box<dyn FnOnce(ShadowSummary) + Send>),
}

/// Which way a shadow verdict differs from the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Difference {
    /// The live set rebuilt it; the shadow set would refuse it.
    ShadowRefuses,
    /// The live set refused it; the shadow set would rebuild it.
    ShadowRebuilds,
}

impl Difference {
    pub fn as_str(self) -> &'static str {
        match self {
            Difference::ShadowRefuses => "shadow-refuses",
            Difference::ShadowRebuilds => "shadow-rebuilds",
        }
    }
}

/// Differences of one kind, item, plugin (the one that refused, live or
/// shadow) and NAP (`-` for links and mixers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DifferenceCount {
    pub kind: Difference,
    pub item: &'static str,
    pub plugin: String,
    pub nap: String,
    pub count: u64,
}

/// What the shadow set did, cumulative (`legsync shadow`) or since the last
/// summary (the event after a resync).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShadowSummary {
    /// `name@sha256-prefix` of the shadow plugins.
    pub plugins: Vec<String>,
    pub compared_legs: u64,
    pub compared_links: u64,
    pub compared_mixers: u64,
    /// Items not compared: the shadow set was behind (its queue full).
    pub skipped: u64,
    /// Shadow verdicts given by a shadow plugin's failure policy.
    pub shadow_failures: u64,
    pub shadow_refuses: u64,
    pub shadow_rebuilds: u64,
    /// The differences, largest first.
    pub differences: Vec<DifferenceCount>,
}

type Key = (Difference, &'static str, String, String);

#[derive(Debug, Default)]
struct Tally {
    compared_legs: u64,
    compared_links: u64,
    compared_mixers: u64,
    skipped: u64,
    shadow_failures: u64,
    differences: BTreeMap<Key, u64>,
}

impl Tally {
    fn summary(&self, plugins: Vec<String>) -> ShadowSummary {
        let mut differences: Vec<DifferenceCount> = self
            .differences
            .iter()
            .map(|((kind, item, plugin, nap), count)| DifferenceCount {
                kind: *kind,
                item,
                plugin: plugin.clone(),
                nap: nap.clone(),
                count: *count,
            })
            .collect();
        differences.sort_by_key(|d| std::cmp::Reverse(d.count));
        let total = |kind| {
            self.differences
                .iter()
                .filter(|((k, ..), _)| *k == kind)
                .map(|(_, n)| n)
                .sum()
        };
        ShadowSummary {
            plugins,
            compared_legs: self.compared_legs,
            compared_links: self.compared_links,
            compared_mixers: self.compared_mixers,
            skipped: self.skipped,
            shadow_failures: self.shadow_failures,
            shadow_refuses: total(Difference::ShadowRefuses),
            shadow_rebuilds: total(Difference::ShadowRebuilds),
            differences,
        }
    }

    fn add(&mut self, other: &Tally) {
        self.compared_legs += other.compared_legs;
        self.compared_links += other.compared_links;
        self.compared_mixers += other.compared_mixers;
        self.skipped += other.skipped;
        self.shadow_failures += other.shadow_failures;
        for (key, n) in &other.differences {
            *self.differences.entry(key.clone()).or_default() += n;
        }
    }
}

/// The shadow set and its thread.
pub struct Shadow {
    chain: Arc<RwLock<Arc<PolicyChain>>>,
    jobs: Option<SyncSender<Job>>,
    /// Since the start (for `legsync shadow`) and since the last summary.
    totals: Arc<Mutex<(Tally, Tally)>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shadow")
    }
}

impl Shadow {
    /// Starts the shadow thread for `chain`.
    pub fn start(chain: PolicyChain) -> std::io::Result<Shadow> {
        let chain = Arc::new(RwLock::new(Arc::new(chain)));
        let totals = Arc::new(Mutex::new((Tally::default(), Tally::default())));
        let (jobs, queue) = std::sync::mpsc::sync_channel(QUEUE);
        let worker = {
            let (chain, totals) = (chain.clone(), totals.clone());
            std::thread::Builder::new()
                .name("legsync-shadow".into())
                .spawn(move || work(queue, chain, totals))?
        };
        Ok(Shadow {
            chain,
            jobs: Some(jobs),
            totals,
            worker: Some(worker),
        })
    }

    /// Replaces the shadow set (a reload); the counts go on.
    pub fn replace(&self, chain: PolicyChain) {
        *self.chain.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(chain);
    }

    pub fn plugins(&self) -> Vec<String> {
        super::Decider::Chain(self.chain.read().unwrap_or_else(|e| e.into_inner()).clone())
            .describe()
    }

    /// The live set decided `legs` so: the shadow set decides them too,
    /// later, on its thread (copies; never waits).
    pub fn observe_legs(&self, legs: &[CallLeg], live: &[Verdict]) {
        if !legs.is_empty() {
            self.send(legs.len(), Job::Legs(legs.to_vec(), live.to_vec()));
        }
    }

    /// As [`Shadow::observe_legs`], for links.
    pub fn observe_links(&self, links: &[Link], live: &[Verdict]) {
        if !links.is_empty() {
            self.send(links.len(), Job::Links(links.to_vec(), live.to_vec()));
        }
    }

    /// As [`Shadow::observe_legs`], for mixers.
    pub fn observe_mixers(&self, mixers: &[HeldMixer], live: &[Verdict]) {
        if !mixers.is_empty() {
            self.send(mixers.len(), Job::Mixers(mixers.to_vec(), live.to_vec()));
        }
    }

    /// Once the shadow set has caught up with what was observed so far,
    /// `report` gets the differences since the last summary.
    pub fn summarize(&self, report: impl FnOnce(ShadowSummary) + Send + 'static) {
        self.send(0, Job::Summary(Box::new(report)));
    }

    /// Everything since the start.
    pub fn report(&self) -> ShadowSummary {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = Tally::default();
        all.add(&totals.0);
        all.add(&totals.1);
        all.summary(self.plugins())
    }

    fn send(&self, items: usize, job: Job) {
        let Some(jobs) = &self.jobs else { return };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
                totals.1.skipped += items as u64;
                metrics::counter!(crate::metrics::SHADOW_SKIPPED).increment(items as u64);
            }
        }
    }
}

impl Drop for Shadow {
    /// Closes the queue and waits for the thread to finish what it holds.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The shadow thread: decides each job with the current shadow set and
/// tallies the differences.
fn work(
    queue: Receiver<Job>,
    chain: Arc<RwLock<Arc<PolicyChain>>>,
    totals: Arc<Mutex<(Tally, Tally)>>,
) {
    for job in queue {
        let chain = chain.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut tally = Tally::default();
        match job {
            Job::Legs(legs, live) => {
                let shadow = chain.decide_legs(&legs);
                tally.compared_legs = legs.len() as u64;
                for ((leg, live), shadow) in legs.iter().zip(&live).zip(&shadow) {
                    compare(&mut tally, "leg", &leg.nap, live, shadow);
                }
            }
            Job::Links(links, live) => {
                let shadow = chain.decide_links(&links);
                tally.compared_links = links.len() as u64;
                for (live, shadow) in live.iter().zip(&shadow) {
                    compare(&mut tally, "link", "-", live, shadow);
                }
            }
            Job::Mixers(mixers, live) => {
                let shadow = chain.decide_mixers(&mixers);
                tally.compared_mixers = mixers.len() as u64;
                for (live, shadow) in live.iter().zip(&shadow) {
                    compare(&mut tally, "mixer", "-", live, shadow);
                }
            }
            Job::Summary(report) => {
                let since = {
                    let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
                    let since = std::mem::take(&mut totals.1);
                    totals.0.add(&since);
                    since
                };
                report(since.summary(super::Decider::Chain(chain).describe()));
                continue;
            }
        }
        for ((kind, item, plugin, nap), n) in &tally.differences {
            metrics::counter!(
                crate::metrics::SHADOW_DIFFERENCES,
                "kind" => kind.as_str(),
                "item" => *item,
                "plugin" => plugin.clone(),
                "nap" => nap.clone()
            )
            .increment(*n);
        }
        metrics::counter!(crate::metrics::SHADOW_COMPARED)
            .increment(tally.compared_legs + tally.compared_links + tally.compared_mixers);
        totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .add(&tally);
    }
}

fn compare(tally: &mut Tally, item: &'static str, nap: &str, live: &Verdict, shadow: &Verdict) {
    if shadow.failure.is_some() {
        tally.shadow_failures += 1;
    }
    let (kind, by) = match (live.decision, shadow.decision) {
        (Decision::Rebuild, Decision::Refuse) => (Difference::ShadowRefuses, shadow.plugin),
        (Decision::Refuse, Decision::Rebuild) => (Difference::ShadowRebuilds, live.plugin),
        _ => return,
    };
    *tally
        .differences
        .entry((kind, item, by.as_str().to_string(), nap.to_string()))
        .or_default() += 1;
}
