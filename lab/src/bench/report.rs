//! What `legsync bench` prints.

use legsync::events::ResyncSummary;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// One run's figures. JSON keys are stable (scripts compare runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub mode: String,
    pub policy: String,
    pub legs: u64,
    pub wall_seconds: f64,
    pub legs_per_second: f64,
    /// Peak resident memory of this (the host's) process.
    pub peak_rss_bytes: u64,
    pub rss_bytes_per_leg: f64,
    /// Resident memory when the run ended (the table still held).
    pub final_rss_bytes: u64,
    pub phases_seconds: Phases,
    pub known: u64,
    pub rebuilt: u64,
    pub refused: u64,
    pub absent: u64,
    pub links_rebuilt: u64,
    pub links_refused: u64,
    /// Mixers decided (rebuilt), and the time the mixer phase took.
    #[serde(default)]
    pub mixers_rebuilt: u64,
    /// With `--ship`: when the stream had every record of the resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ship: Option<super::ship::ShipFigures>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Phases {
    pub snapshot_transfer_and_diff: f64,
    /// Diffing the chunks against the table: part of the snapshot phase
    /// (it overlaps the transfer), shown on its own.
    pub diff: f64,
    pub decisions: f64,
    pub adopt_and_cdr: f64,
    pub link_decisions: f64,
    pub absent_and_cdr_end: f64,
    pub drop_acks: f64,
    /// The adopted calls' STARTs durable, their events written.
    #[serde(default)]
    pub durable_and_events: f64,
    /// Mixers: the diff, the mixer decision, endings.
    #[serde(default)]
    pub mixers: f64,
}

fn secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

/// `VmHWM` of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// `VmRSS` of this process, in bytes.
pub fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> u64 {
    proc_status_file_bytes("/proc/self/status", field)
}

/// A `/proc/PID/status` memory figure (`VmHWM:`, `VmRSS:`) of another
/// process, in bytes.
pub fn proc_status_bytes_of(pid: u32, field: &str) -> u64 {
    proc_status_file_bytes(&format!("/proc/{pid}/status"), field)
}

fn proc_status_file_bytes(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

impl BenchReport {
    pub fn new(mode: &str, policy: &str, legs: u64, wall: Duration, s: ResyncSummary) -> Self {
        let peak = peak_rss_bytes();
        let p = s.phases;
        BenchReport {
            mode: mode.into(),
            policy: policy.into(),
            legs,
            wall_seconds: wall.as_secs_f64(),
            legs_per_second: legs as f64 / wall.as_secs_f64().max(1e-9),
            peak_rss_bytes: peak,
            rss_bytes_per_leg: peak as f64 / legs.max(1) as f64,
            final_rss_bytes: rss_bytes(),
            phases_seconds: Phases {
                snapshot_transfer_and_diff: if mode == "transfer" {
                    wall.as_secs_f64()
                } else {
                    secs(p.snapshot)
                },
                diff: secs(p.diff),
                decisions: secs(p.decisions),
                adopt_and_cdr: secs(p.adopt),
                link_decisions: secs(p.link_decisions),
                absent_and_cdr_end: secs(p.absent),
                drop_acks: secs(p.drop_acks),
                durable_and_events: secs(p.durable_and_events),
                mixers: secs(p.mixers),
            },
            known: s.known,
            rebuilt: s.rebuilt,
            refused: s.refused,
            absent: s.absent,
            links_rebuilt: s.links_rebuilt,
            links_refused: s.links_refused,
            mixers_rebuilt: s.mixers_rebuilt,
            ship: None,
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode {}, policy {}, {} legs",
            self.mode, self.policy, self.legs
        )?;
        writeln!(
            f,
            "wall {:.3} s, {:.0} legs/s",
            self.wall_seconds, self.legs_per_second
        )?;
        let p = &self.phases_seconds;
        for (name, value) in [
            ("snapshot transfer + diff", p.snapshot_transfer_and_diff),
            ("  of which diff", p.diff),
            ("decisions (OnCallLegSync)", p.decisions),
            ("adopt, CDR RESUME", p.adopt_and_cdr),
            ("link decisions (OnLinkSync)", p.link_decisions),
            ("absent legs, CDR END", p.absent_and_cdr_end),
            ("drop acknowledgements", p.drop_acks),
            ("STARTs durable, their events", p.durable_and_events),
            ("mixers (diff, decisions)", p.mixers),
        ] {
            writeln!(f, "  {name:<30} {value:>8.3} s")?;
        }
        writeln!(
            f,
            "known {}, rebuilt {}, refused {}, absent {}, links rebuilt {}, links refused {}",
            self.known,
            self.rebuilt,
            self.refused,
            self.absent,
            self.links_rebuilt,
            self.links_refused
        )?;
        if self.mixers_rebuilt > 0 {
            writeln!(f, "mixers rebuilt {}", self.mixers_rebuilt)?;
        }
        if let Some(ship) = &self.ship {
            writeln!(
                f,
                "shipped: {} records in the stream ({} nodes) {:.2} s after the host started, {:.2} s after the resync ({:.0} records/s)",
                ship.records,
                ship.nodes,
                ship.shipped_seconds,
                ship.after_resync_seconds,
                ship.records_per_second
            )?;
        }
        writeln!(
            f,
            "peak RSS {:.1} MB ({:.0} bytes per leg), {:.1} MB at the end",
            self.peak_rss_bytes as f64 / 1e6,
            self.rss_bytes_per_leg,
            self.final_rss_bytes as f64 / 1e6
        )
    }
}
