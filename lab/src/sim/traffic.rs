//! Generated call traffic, for the live-path bench: answers and releases at
//! a steady rate (`traffic RATE MS`), or many releases at once (`burst N`),
//! each written to the traffic log (`engine-sim --traffic-log FILE`) with
//! the time the engine *meant* to send it.
//!
//! The intended time, not the time the event left: a generator that falls
//! behind (the engine or the machine busy) would otherwise hide its own lag
//! from the latency it measures (coordinated omission). The bench joins the
//! log with the host's ledger: latency is from the intended time to the
//! moment the record is durable.

use super::server::Shared;
use super::state::EngineState;
use anyhow::Context;
use legsync::model::{LegId, now_us};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// What happened to a call, as the traffic log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficKind {
    /// A new call, offered and answered at once (its START is due).
    Answer,
    /// An answered call released (its END is due).
    Release,
}

/// One line of the traffic log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficLine {
    pub kind: TrafficKind,
    pub leg: LegId,
    /// When the engine meant to send the event (Unix microseconds).
    pub intended_us: u64,
}

impl TrafficKind {
    pub fn name(self) -> &'static str {
        match self {
            TrafficKind::Answer => "answer",
            TrafficKind::Release => "release",
        }
    }
}

impl TrafficLine {
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} {} {}",
            self.kind.name(),
            self.leg,
            self.intended_us
        )
    }

    fn parse(line: &str) -> Option<TrafficLine> {
        let mut words = line.split(' ');
        let kind = match words.next()? {
            "answer" => TrafficKind::Answer,
            "release" => TrafficKind::Release,
            _ => return None,
        };
        Some(TrafficLine {
            kind,
            leg: words.next()?.parse().ok()?,
            intended_us: words.next()?.parse().ok()?,
        })
    }
}

/// Reads a traffic log.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<TrafficLine>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line?;
            TrafficLine::parse(&line)
                .with_context(|| format!("{} line {}: `{line}`", path.display(), i + 1))
        })
        .collect()
}

/// The generator's memory between commands.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Answered legs, oldest first: the next to be released. Filled from
    /// the engine's answered legs at the first command.
    answered: VecDeque<LegId>,
    seeded: bool,
    /// Numbers the generated calls.
    calls: u64,
    log: Option<std::io::BufWriter<std::fs::File>>,
}

impl Traffic {
    pub fn new(log: Option<&Path>) -> anyhow::Result<Traffic> {
        let log = match log {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the traffic log {}", path.display()))?,
            )),
            None => None,
        };
        Ok(Traffic {
            log,
            ..Traffic::default()
        })
    }

    fn seed(&mut self, state: &EngineState) {
        if !self.seeded {
            self.answered = state.answered_ids().into();
            self.seeded = true;
        }
    }

    fn answer(&mut self, state: &mut EngineState, intended_us: u64) -> std::io::Result<()> {
        let leg = state.numbered_call(self.calls, intended_us / 1000);
        self.calls += 1;
        self.answered.push_back(leg);
        self.record(TrafficKind::Answer, leg, intended_us)
    }

    /// Releases the oldest answered call still up; false if none is left.
    fn release(&mut self, state: &mut EngineState, intended_us: u64) -> std::io::Result<bool> {
        while let Some(leg) = self.answered.pop_front() {
            // Gone already (dropped by the host, released by hand): next.
            if state.release(leg).is_ok() {
                self.record(TrafficKind::Release, leg, intended_us)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn record(&mut self, kind: TrafficKind, leg: LegId, intended_us: u64) -> std::io::Result<()> {
        match &mut self.log {
            Some(log) => TrafficLine {
                kind,
                leg,
                intended_us,
            }
            .write(log),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.log.as_mut().map_or(Ok(()), |log| log.flush())
    }
}

/// `traffic RATE MS`: `rate` call events per second for `duration`,
/// answers and releases alternating (the number of calls up stays level).
/// Events due are sent every millisecond, each stamped with its intended
/// time `start + i / rate`. Returns the reply line.
pub async fn run(shared: &Shared, rate: u64, duration: Duration) -> String {
    if rate == 0 {
        return "ERR the rate must be at least 1 event per second".into();
    }
    let total = (rate as u128 * duration.as_micros() / 1_000_000) as u64;
    {
        // Before the clock starts: the first seeding sorts every call up.
        let state = shared.lock();
        shared.traffic().seed(&state);
    }
    let start = Instant::now();
    let start_us = now_us();
    let mut tick = interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut sent, mut answers, mut releases) = (0u64, 0u64, 0u64);
    let mut late = Duration::ZERO;
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_micros() * rate as u128 / 1_000_000) as u64).min(total);
        if due <= sent {
            continue;
        }
        late = late.max(
            start
                .elapsed()
                .saturating_sub(Duration::from_micros(sent * 1_000_000 / rate)),
        );
        let mut state = shared.lock();
        let mut traffic = shared.traffic();
        traffic.seed(&state);
        for i in sent..due {
            let intended_us = start_us + i * 1_000_000 / rate;
            let written = if i % 2 == 0 {
                answers += 1;
                traffic.answer(&mut state, intended_us)
            } else {
                match traffic.release(&mut state, intended_us) {
                    Ok(true) => {
                        releases += 1;
                        Ok(())
                    }
                    Ok(false) => return "ERR no answered call left to release".into(),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = written {
                return format!("ERR cannot write the traffic log: {e}");
            }
        }
        sent = due;
    }
    if let Err(e) = shared.traffic().flush() {
        return format!("ERR cannot write the traffic log: {e}");
    }
    format!(
        "OK events={sent} answers={answers} releases={releases} late_ms={}",
        late.as_millis()
    )
}

/// `burst N`: releases `count` answered calls at once (a trunk failing),
/// the oldest first, all stamped with the same intended time.
pub fn burst(shared: &Shared, count: u64) -> String {
    let mut state = shared.lock();
    let mut traffic = shared.traffic();
    traffic.seed(&state);
    let intended_us = now_us();
    for released in 0..count {
        match traffic.release(&mut state, intended_us) {
            Ok(true) => {}
            Ok(false) => return format!("ERR only {released} answered calls to release"),
            Err(e) => return format!("ERR cannot write the traffic log: {e}"),
        }
    }
    match traffic.flush() {
        Ok(()) => format!("OK releases={count}"),
        Err(e) => format!("ERR cannot write the traffic log: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_round_trip() {
        for kind in [TrafficKind::Answer, TrafficKind::Release] {
            let line = TrafficLine {
                kind,
                leg: 42,
                intended_us: 1_700_000_000_123_456,
            };
            let mut text = Vec::new();
            line.write(&mut text).unwrap();
            let text = String::from_utf8(text).unwrap();
            assert_eq!(TrafficLine::parse(text.trim_end()), Some(line));
        }
        assert_eq!(TrafficLine::parse("answer x 1"), None);
        assert_eq!(TrafficLine::parse("ring 1 1"), None);
    }

    #[test]
    fn releases_take_the_oldest_call_still_up() {
        let mut state = EngineState::default();
        state.preload(4, 10_000_000);
        let mut traffic = Traffic::default();
        traffic.seed(&state);
        state.release(1).unwrap();
        traffic.answer(&mut state, 20_000_000_000).unwrap();
        assert!(traffic.release(&mut state, 0).unwrap(), "leg 2");
        assert_eq!(state.answered_ids(), [3, 4, 5]);
        for _ in 0..3 {
            assert!(traffic.release(&mut state, 0).unwrap());
        }
        assert!(!traffic.release(&mut state, 0).unwrap(), "none left");
    }
}
