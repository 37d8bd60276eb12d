//! `legsync bench --mode live`: the path a host spends its life on.
//!
//! engine-sim is preloaded with `--legs` answered calls; a host with the
//! policy resyncs them, then engine-sim generates call events (see
//! `sim/traffic.rs`): for each rate of `--rates`, `--seconds` of answers and
//! releases alternating at that rate, then `--burst` releases at once. Each
//! event is logged by the engine with the time it was meant to be sent; the
//! host's ledger writer publishes a mark after every fsync (the last record
//! durable and when). Joined, they give every event's latency from the
//! engine to its durable START or END, the only moment the host may act on
//! it. engine-sim also reports the longest gap between the host's
//! heartbeats during each phase.
//!
//! The host runs in this process (its ledger marks are read directly);
//! engine-sim is its own process on loopback, as in every bench.

use super::BenchArgs;
use crate::demo::harness::RunningHost;
use crate::sim::process::SimProcess;
use crate::sim::traffic::{TrafficKind, TrafficLine, read_log};
use anyhow::Context;
use legsync::cdr::DurableMark;
use legsync::cdr::record::{CdrRecord, RecordKind, StartReason};
use legsync::model::IdMap;
use serde::Serialize;
use std::fmt;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub mode: &'static str,
    pub policy: String,
    /// Calls up when the traffic started (and, steady traffic keeping the
    /// count level, throughout).
    pub held: u64,
    /// The host's heartbeat interval: no gap should exceed it.
    pub heartbeat_ms: u64,
    pub phases: Vec<LivePhase>,
    /// With `--ship`: for every durable mark of the traffic phases, the
    /// time until the stream acknowledged its record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ship_lag_ms: Option<Latency>,
    /// Peak resident memory of this process (the host and the bench).
    pub peak_rss_bytes: u64,
}

/// One phase: steady traffic at one rate, or one burst.
#[derive(Debug, Clone, Serialize)]
pub struct LivePhase {
    /// `steady` or `burst`.
    pub phase: &'static str,
    /// Events per second offered (steady phases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_second: Option<u64>,
    pub answers: u64,
    pub releases: u64,
    /// From the first event's intended time to the last record durable.
    pub seconds: f64,
    /// Events made durable per second over `seconds`.
    pub durable_per_second: f64,
    /// From each event's intended time to its record durable.
    pub latency_ms: Latency,
    /// When the slowest event was meant to be sent, in seconds from the
    /// phase's first event (a stall at the start, at the end, periodic?).
    pub slowest_at_seconds: f64,
    /// The longest gap between two heartbeats of the host, as the engine
    /// saw them arrive (none in a phase shorter than the interval).
    pub heartbeat_longest_gap_ms: Option<u64>,
    /// The same, as the host sent them.
    pub host_heartbeat_longest_gap_ms: Option<u64>,
    /// How far the generator fell behind its schedule (engine-sim and the
    /// host share the machine); included in the latencies.
    pub generator_late_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut micros: Vec<u64>) -> Latency {
        micros.sort_unstable();
        let at = |q: usize| {
            let i = (micros.len() * q / 100).min(micros.len().saturating_sub(1));
            micros.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
        };
        Latency {
            p50: at(50),
            p99: at(99),
            max: micros.last().map_or(0.0, |&us| us as f64 / 1000.0),
        }
    }
}

/// engine-sim's extra arguments for this mode.
pub fn sim_args(traffic_log: &Path) -> Vec<String> {
    vec![
        "--heartbeat-timeout-ms".into(),
        "600000".into(),
        "--traffic-log".into(),
        traffic_log.display().to_string(),
    ]
}

/// Where engine-sim logs the traffic, in the bench's directory.
pub fn traffic_log(dir: &Path) -> PathBuf {
    dir.join("traffic.log")
}

pub async fn run(
    sim: &SimProcess,
    args: &BenchArgs,
    rules: &str,
    dir: &Path,
) -> anyhow::Result<LiveReport> {
    let config = super::host_config(sim, args, dir);
    let (decider, policy) = super::decider(args, rules, dir).await?;
    let cluster = match args.ship {
        true => Some(super::ship::cluster(args).await?),
        false => None,
    };
    let mut host = RunningHost::start_summaries(&config, decider)?;
    let mut shipping =
        super::ship::ShipProbe::for_host(cluster.as_ref(), args.ship_linger_ms, &host, &config)?;
    let summary = super::next_summary(&mut host).await?;
    let held = summary.known + summary.rebuilt;
    if let Some(shipping) = &mut shipping {
        // The resync's STARTs in the stream first: the lag measured is
        // the live traffic's.
        let resynced = host.ledger.durable_marks().borrow().record;
        shipping.wait_shipped(resynced).await?;
    }
    let mut probe = Probe::start(&host, &config.cdr, &traffic_log(dir))?;
    let first_mark = probe.seen.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut phases = Vec::new();
    for &rate in &args.rates {
        eprintln!("{rate} events per second for {} s...", args.seconds);
        let command = format!("traffic {rate} {}", args.seconds * 1000);
        let within = Duration::from_secs(args.seconds * 3 + 30);
        let mut phase = probe.phase(sim, &command, within).await?;
        phase.phase = "steady";
        phase.offered_per_second = Some(rate);
        phases.push(phase);
    }
    if args.burst > 0 {
        eprintln!("a burst of {} releases...", args.burst);
        let command = format!("burst {}", args.burst);
        let mut phase = probe.phase(sim, &command, Duration::from_secs(30)).await?;
        phase.phase = "burst";
        phases.push(phase);
    }
    let ship_lag_ms = match &mut shipping {
        Some(shipping) => {
            let last = host.ledger.durable_marks().borrow().record;
            shipping.wait_shipped(last).await?;
            let marks = probe.seen.lock().unwrap_or_else(|e| e.into_inner())[first_mark..].to_vec();
            Some(shipping.lag(&marks))
        }
        None => None,
    };
    let report = LiveReport {
        mode: "live",
        policy,
        held,
        heartbeat_ms: config.link.heartbeat_ms,
        phases,
        ship_lag_ms,
        peak_rss_bytes: super::report::peak_rss_bytes(),
    };
    host.stop().await?;
    if let Some(shipping) = shipping {
        shipping.stop().await;
    }
    Ok(report)
}

/// What the bench watches: the ledger, its durable marks, the traffic log.
struct Probe {
    marks: tokio::sync::watch::Receiver<DurableMark>,
    /// Every mark seen, in order (a slow observer misses some: a record is
    /// then taken as durable at the next mark, later than it was).
    seen: Arc<Mutex<Vec<DurableMark>>>,
    ledger: std::io::BufReader<std::fs::File>,
    traffic_log: PathBuf,
    /// Traffic log lines already accounted for.
    traffic_seen: usize,
    heartbeat_gaps: legsync::engine::HeartbeatGaps,
}

impl Probe {
    fn start(host: &RunningHost, ledger: &Path, traffic_log: &Path) -> anyhow::Result<Probe> {
        let mut marks = host.ledger.durable_marks();
        let seen = Arc::new(Mutex::new(vec![*marks.borrow_and_update()]));
        let collect = seen.clone();
        let mut follow = marks.clone();
        tokio::spawn(async move {
            while follow.changed().await.is_ok() {
                let mark = *follow.borrow_and_update();
                collect.lock().unwrap_or_else(|e| e.into_inner()).push(mark);
            }
        });
        let mut file = std::fs::File::open(ledger)
            .with_context(|| format!("cannot open {}", ledger.display()))?;
        file.seek(std::io::SeekFrom::End(0))?;
        Ok(Probe {
            marks,
            seen,
            ledger: std::io::BufReader::new(file),
            traffic_log: traffic_log.to_path_buf(),
            traffic_seen: 0,
            heartbeat_gaps: host.heartbeat_gaps.clone(),
        })
    }

    /// Runs one traffic command and measures its events once every one of
    /// them is durable.
    async fn phase(
        &mut self,
        sim: &SimProcess,
        command: &str,
        within: Duration,
    ) -> anyhow::Result<LivePhase> {
        sim.ok("heartbeats").await?;
        self.heartbeat_gaps.take_longest();
        let before = self.marks.borrow().record;
        let reply = sim.ok_within(command, within).await?;
        let answers = reply_value(&reply, "answers").unwrap_or(0);
        let releases = reply_value(&reply, "releases").unwrap_or(0);
        let late_ms = reply_value(&reply, "late_ms").unwrap_or(0);
        // One START per answer, one END per release, nothing else.
        let target = before + answers + releases;
        let mut marks = self.marks.clone();
        tokio::time::timeout(within, marks.wait_for(|m| m.record >= target))
            .await
            .with_context(|| {
                format!(
                    "the ledger made {} of {} records durable within {} s",
                    self.marks.borrow().record - before,
                    target - before,
                    within.as_secs()
                )
            })?
            .context("the host's ledger writer stopped")?;
        let gaps = sim.ok("heartbeats").await?;
        let sent_gap = self.heartbeat_gaps.take_longest();
        let records = self.records_since()?;
        let lines = read_log(&self.traffic_log)?;
        let events = &lines[self.traffic_seen.min(lines.len())..];
        self.traffic_seen = lines.len();
        // Every record these events made is durable before they are timed
        // (the ledger may hold one the reply did not count yet).
        let needed = events
            .iter()
            .filter_map(|e| records.get(&(e.kind, e.leg)))
            .max()
            .copied()
            .unwrap_or(0);
        let mut marks = self.marks.clone();
        tokio::time::timeout(within, marks.wait_for(|m| m.record >= needed))
            .await
            .with_context(|| {
                format!(
                    "record {needed} was not durable within {} s",
                    within.as_secs()
                )
            })?
            .context("the host's ledger writer stopped")?;
        // The collecting task may not have run since the last mark: the
        // watch's own latest mark is as good a sighting.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let latest = *self.marks.borrow();
        if seen.last().is_none_or(|m| m.record < latest.record) {
            seen.push(latest);
        }
        let latencies = join(events, &records, &seen)?;
        let first = events.iter().map(|e| e.intended_us).min().unwrap_or(0);
        let last = latencies.last_durable_us;
        let seconds = last.saturating_sub(first) as f64 / 1e6;
        let count = events.len() as u64;
        Ok(LivePhase {
            phase: "",
            offered_per_second: None,
            answers,
            releases,
            seconds,
            durable_per_second: count as f64 / seconds.max(1e-9),
            latency_ms: Latency::of(latencies.micros),
            slowest_at_seconds: latencies.slowest_us.saturating_sub(first) as f64 / 1e6,
            heartbeat_longest_gap_ms: reply_value(&gaps, "longest_gap_ms")
                .filter(|_| reply_value(&gaps, "count").unwrap_or(0) > 0),
            host_heartbeat_longest_gap_ms: Some(sent_gap.as_millis() as u64)
                .filter(|_| !sent_gap.is_zero()),
            generator_late_ms: late_ms,
        })
    }

    /// The (kind, leg) -> record number of every START of an answer and
    /// every END appended since the last call.
    fn records_since(&mut self) -> anyhow::Result<IdMap<(TrafficKind, u64), u64>> {
        let mut records = IdMap::default();
        let mut line = String::new();
        loop {
            line.clear();
            if self.ledger.read_line(&mut line)? == 0 {
                return Ok(records);
            }
            let record: CdrRecord = serde_json::from_str(line.trim_end())
                .with_context(|| format!("a ledger line the bench cannot read: {line}"))?;
            let kind = match record.kind {
                RecordKind::End => TrafficKind::Release,
                RecordKind::Start if record.start_reason == Some(StartReason::Answered) => {
                    TrafficKind::Answer
                }
                _ => continue,
            };
            records.insert((kind, record.leg), record.record);
        }
    }
}

struct Joined {
    micros: Vec<u64>,
    last_durable_us: u64,
    /// The intended time of the slowest event.
    slowest_us: u64,
}

/// Each event's latency: from its intended time to the first durable mark
/// covering its record.
fn join(
    events: &[TrafficLine],
    records: &IdMap<(TrafficKind, u64), u64>,
    marks: &[DurableMark],
) -> anyhow::Result<Joined> {
    let mut micros = Vec::with_capacity(events.len());
    let mut last_durable_us = 0;
    let mut slowest = (0, 0);
    for event in events {
        let record = records.get(&(event.kind, event.leg)).with_context(|| {
            format!(
                "the ledger has no record for the {} of leg {}",
                event.kind.name(),
                event.leg
            )
        })?;
        let i = marks.partition_point(|m| m.record < *record);
        let mark = marks
            .get(i)
            .with_context(|| format!("record {record} was never reported durable"))?;
        let latency = mark.at_us.saturating_sub(event.intended_us);
        micros.push(latency);
        slowest = slowest.max((latency, event.intended_us));
        last_durable_us = last_durable_us.max(mark.at_us);
    }
    Ok(Joined {
        micros,
        last_durable_us,
        slowest_us: slowest.1,
    })
}

fn gap(ms: Option<u64>) -> String {
    ms.map_or("(none: under two heartbeats)".into(), |ms| {
        format!("{ms} ms")
    })
}

/// `key=value` out of a control reply.
fn reply_value(reply: &str, key: &str) -> Option<u64> {
    reply
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

impl fmt::Display for LiveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode live, policy {}, {} calls up, heartbeat every {} ms",
            self.policy, self.held, self.heartbeat_ms
        )?;
        for p in &self.phases {
            let what = match p.offered_per_second {
                Some(rate) => format!("steady {rate}/s"),
                None => p.phase.to_string(),
            };
            writeln!(
                f,
                "  {what:<14} {} answers + {} releases durable in {:.3} s ({:.0}/s); \
                 event to durable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (at {:.1} s); \
                 longest heartbeat gap {} sent, {} received; generator late {} ms",
                p.answers,
                p.releases,
                p.seconds,
                p.durable_per_second,
                p.latency_ms.p50,
                p.latency_ms.p99,
                p.latency_ms.max,
                p.slowest_at_seconds,
                gap(p.host_heartbeat_longest_gap_ms),
                gap(p.heartbeat_longest_gap_ms),
                p.generator_late_ms
            )?;
        }
        if let Some(lag) = &self.ship_lag_ms {
            writeln!(
                f,
                "  stream lag (durable to acknowledged by the stream): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                lag.p50, lag.p99, lag.max
            )?;
        }
        writeln!(f, "peak RSS {:.1} MB", self.peak_rss_bytes as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_runs_from_the_intended_time_to_the_covering_mark() {
        let event = |kind, leg, intended_us| TrafficLine {
            kind,
            leg,
            intended_us,
        };
        let events = [
            event(TrafficKind::Answer, 7, 1_000),
            event(TrafficKind::Release, 3, 1_500),
        ];
        let mut records = IdMap::default();
        records.insert((TrafficKind::Answer, 7), 10);
        records.insert((TrafficKind::Release, 3), 12);
        let marks = [
            DurableMark {
                record: 9,
                at_us: 900,
            },
            DurableMark {
                record: 11,
                at_us: 3_000,
            },
            DurableMark {
                record: 12,
                at_us: 4_500,
            },
        ];
        let joined = join(&events, &records, &marks).unwrap();
        assert_eq!(joined.micros, [2_000, 3_000]);
        assert_eq!(joined.last_durable_us, 4_500);
        assert_eq!(joined.slowest_us, 1_500);
        records.remove(&(TrafficKind::Release, 3));
        assert!(join(&events, &records, &marks).is_err(), "a lost END");
    }

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=1000).map(|ms| ms * 1000).collect());
        assert_eq!((l.p50, l.p99, l.max), (501.0, 991.0, 1000.0));
        assert_eq!(reply_value("events=4 late_ms=12", "late_ms"), Some(12));
    }
}
