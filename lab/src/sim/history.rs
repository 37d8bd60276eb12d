//! The engine's own record of what happened to answered calls
//! (`engine-sim --history FILE`): the ground truth tests bill the host's
//! ledger against. One JSON line per answer, release, and, at each start,
//! per answered call the media units brought back.
//!
//! Each line is written straight to the file (no user-space buffer), so a
//! `kill -9` of the simulator loses none of it.

use legsync::model::{CallLeg, now_ms};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryKind {
    /// The call was answered.
    Answer,
    /// The call started releasing. If the engine restarts before the
    /// release, the call is gone with no `release` line: it ended between
    /// the two.
    Terminate,
    /// The call was released (by the control port or a host's drop).
    Release,
    /// The engine (re)started with the call up.
    Up,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    pub time_ms: u64,
    pub event: HistoryKind,
    pub leg: u64,
    pub session: u64,
    pub offered_time_ms: u64,
    pub answer_time_ms: u64,
    pub nap: String,
    pub calling: String,
    pub called: String,
}

impl HistoryLine {
    /// The call this line is about, as the ledger names it.
    pub fn key(&self) -> legsync::model::CallKey {
        legsync::model::CallKey {
            leg: self.leg,
            session: self.session,
            offered_time_ms: self.offered_time_ms,
            answer_time_ms: self.answer_time_ms,
        }
    }
}

/// The open history file.
#[derive(Debug)]
pub struct History(std::fs::File);

impl History {
    pub fn open(path: &Path) -> anyhow::Result<History> {
        use anyhow::Context;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the history file {}", path.display()))?;
        Ok(History(file))
    }

    /// Records `event` for an answered leg (others are not billable).
    pub fn record(&mut self, event: HistoryKind, leg: &CallLeg) {
        let Some(answer_time_ms) = leg.answered_at_ms else {
            return;
        };
        let line = HistoryLine {
            time_ms: now_ms(),
            event,
            leg: leg.id,
            session: leg.session_id,
            offered_time_ms: leg.offered_at_ms,
            answer_time_ms,
            nap: leg.nap.to_string(),
            calling: leg.calling.to_string(),
            called: leg.called.to_string(),
        };
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        if let Err(e) = self.0.write_all(&text) {
            tracing::error!(error = %e, "cannot write the history file");
        }
    }

    /// Reads a history file (for tests).
    pub fn read(path: &Path) -> anyhow::Result<Vec<HistoryLine>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .map(|line| Ok(serde_json::from_str(line)?))
            .collect()
    }
}
