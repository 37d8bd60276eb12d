//! The billing rule and the ledger's consistency checks, as `legsync cdr
//! bill` and `legsync cdr check` apply them (and the tests, which bill what
//! the host wrote against what the engine did).
//!
//! **The rule.** Records are grouped by call (leg id, session, offer time,
//! answer time). A call's parties come from its START. Its billable END is
//! its latest END that no other END supersedes; a call whose last record is
//! a START or a RESUME is still up (open). Each call is billed once.

use super::record::{CallKey, CdrRecord, RecordKind};
use anyhow::Context;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Whether a call is over for billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallState {
    Open,
    Closed,
}

/// One answered call, as billing sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BilledCall {
    pub leg: u64,
    pub session: u64,
    pub nap: String,
    pub calling: String,
    pub called: String,
    pub offered_time_ms: u64,
    pub answer_time_ms: u64,
    /// `None` while the call is open.
    pub end_time_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The END record billed.
    pub end_record: Option<u64>,
    pub state: CallState,
}

impl BilledCall {
    pub fn key(&self) -> CallKey {
        CallKey {
            leg: self.leg,
            session: self.session,
            offered_time_ms: self.offered_time_ms,
            answer_time_ms: self.answer_time_ms,
        }
    }
}

/// Reads the records of `files`, in order (rotated pieces oldest first). A
/// torn last line (a crash mid-write: never reported durable) is skipped.
pub fn read_ledgers(files: &[impl AsRef<Path>]) -> anyhow::Result<Vec<(String, Vec<Line>)>> {
    files
        .iter()
        .map(|file| {
            let file = file.as_ref();
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Ok((file.display().to_string(), parse_lines(&text)))
        })
        .collect()
}

/// One line of a ledger file, parsed or not.
#[derive(Debug)]
pub struct Line {
    pub number: usize,
    pub record: Result<CdrRecord, String>,
    /// Not ended by a newline.
    pub torn: bool,
}

fn parse_lines(text: &str) -> Vec<Line> {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, raw)| Line {
            number: i + 1,
            record: serde_json::from_str(raw.trim_end()).map_err(|e| e.to_string()),
            torn: !raw.ends_with('\n'),
        })
        .collect()
}

/// The whole records of `ledgers`, in record order.
pub fn records(ledgers: &[(String, Vec<Line>)]) -> Vec<CdrRecord> {
    let mut records: Vec<CdrRecord> = ledgers
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .filter(|line| !line.torn)
        .filter_map(|line| line.record.as_ref().ok().cloned())
        .collect();
    records.sort_by_key(|r| r.record);
    records
}

/// Applies the billing rule: one row per answered call, by answer time.
pub fn bill(records: &[CdrRecord]) -> Vec<BilledCall> {
    let superseded: HashSet<u64> = records.iter().filter_map(|r| r.supersedes).collect();
    let mut calls: BTreeMap<(u64, CallKey), BilledCall> = BTreeMap::new();
    let mut first_seen: HashMap<CallKey, u64> = HashMap::new();
    for record in records {
        let key = record.key();
        let order = *first_seen.entry(key).or_insert(record.answer_time_ms);
        let call = calls.entry((order, key)).or_insert_with(|| BilledCall {
            leg: record.leg,
            session: record.session,
            nap: record.nap.to_string(),
            calling: record.calling.to_string(),
            called: record.called.to_string(),
            offered_time_ms: record.offered_time_ms,
            answer_time_ms: record.answer_time_ms,
            end_time_ms: None,
            duration_ms: None,
            end_record: None,
            state: CallState::Open,
        });
        if record.kind == RecordKind::Start {
            (call.nap, call.calling, call.called) = (
                record.nap.to_string(),
                record.calling.to_string(),
                record.called.to_string(),
            );
        }
        match record.kind {
            RecordKind::Start | RecordKind::Resume => call.state = CallState::Open,
            RecordKind::End => {
                call.state = CallState::Closed;
                if !superseded.contains(&record.record) {
                    call.end_time_ms = record.end_time_ms;
                    call.duration_ms = record.duration_ms;
                    call.end_record = Some(record.record);
                }
            }
        }
    }
    calls
        .into_values()
        .map(|mut call| {
            if call.state == CallState::Open {
                (call.end_time_ms, call.duration_ms, call.end_record) = (None, None, None);
            }
            call
        })
        .collect()
}

/// Checks the ledger's rules; returns every violation, each naming its
/// file and line or record.
pub fn check(ledgers: &[(String, Vec<Line>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last_record: Option<u64> = None;
    let mut by_number: HashMap<u64, CdrRecord> = HashMap::new();
    // Per call: open (a START or RESUME after the last END), and its ENDs.
    let mut open: HashMap<CallKey, bool> = HashMap::new();
    let mut ends: HashMap<CallKey, Vec<u64>> = HashMap::new();
    for (file, lines) in ledgers {
        let count = lines.len();
        for line in lines {
            let at = format!("{file} line {}", line.number);
            if line.torn {
                if line.number == count {
                    problems.push(format!("{at}: torn last line (a crash mid-write; it was never durable, and the host cuts it off at its next start)"));
                } else {
                    problems.push(format!("{at}: a line without its newline"));
                }
                continue;
            }
            let record = match &line.record {
                Ok(record) => record,
                Err(e) => {
                    problems.push(format!("{at}: not a CDR record ({e})"));
                    continue;
                }
            };
            let at = format!("{at} (record {})", record.record);
            if let Some(last) = last_record.filter(|&last| record.record <= last) {
                problems.push(format!(
                    "{at}: record numbers must increase (after record {last})"
                ));
            }
            last_record = Some(record.record);
            let key = record.key();
            let is_open = open.get(&key).copied();
            let points_at = |field: &str, target: Option<u64>, problems: &mut Vec<String>| {
                let Some(target) = target else {
                    return problems.push(format!("{at}: a {field} is missing"));
                };
                match by_number.get(&target) {
                    None => {
                        problems.push(format!("{at}: {field} {target} names no earlier record"))
                    }
                    Some(t) if t.key() != key => problems.push(format!(
                        "{at}: {field} {target} is a record of another call (leg {})",
                        t.leg
                    )),
                    Some(t) if t.kind != RecordKind::End => {
                        problems.push(format!("{at}: {field} {target} is not an END"))
                    }
                    Some(_) => {}
                }
            };
            match record.kind {
                RecordKind::Start => {
                    if is_open == Some(true) {
                        problems.push(format!("{at}: START of a call already open"));
                    } else if is_open == Some(false) {
                        problems.push(format!(
                            "{at}: START of a call that already ended (a RESUME was due)"
                        ));
                    }
                    open.insert(key, true);
                }
                RecordKind::Resume => {
                    if is_open != Some(false) {
                        problems.push(format!(
                            "{at}: RESUME of a call that has no END to resume after"
                        ));
                    }
                    points_at("resumes", record.resumes, &mut problems);
                    open.insert(key, true);
                }
                RecordKind::End => {
                    match is_open {
                        None => problems.push(format!("{at}: END of a call with no START")),
                        Some(false) => {
                            problems.push(format!("{at}: a second END for a call already ended"))
                        }
                        Some(true) => {}
                    }
                    if record.supersedes.is_some() {
                        points_at("supersedes", record.supersedes, &mut problems);
                    }
                    if record.end_time_ms.is_none() || record.duration_ms.is_none() {
                        problems.push(format!("{at}: END without end_time_ms or duration_ms"));
                    }
                    open.insert(key, false);
                    ends.entry(key).or_default().push(record.record);
                }
            }
            by_number.insert(record.record, record.clone());
        }
    }
    let superseded: HashSet<u64> = by_number.values().filter_map(|r| r.supersedes).collect();
    for (key, ends) in &ends {
        let billable: Vec<u64> = ends
            .iter()
            .copied()
            .filter(|e| !superseded.contains(e))
            .collect();
        if billable.len() > 1 {
            problems.push(format!(
                "leg {} (session {}, answered at {}): {} billable ENDs (records {:?}); one call must be billed once",
                key.leg, key.session, key.answer_time_ms, billable.len(), billable
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::index::LedgerIndex;
    use crate::cdr::record::StartReason;
    use crate::model::{TerminationReason, test_leg};

    fn ledger(records: &[CdrRecord]) -> Vec<(String, Vec<Line>)> {
        let text: String = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        vec![("cdr.jsonl".to_string(), parse_lines(&text))]
    }

    #[test]
    fn the_trap_is_billed_once_from_the_latest_end() {
        let mut index = LedgerIndex::default();
        let call = test_leg(7, 1_000);
        let up = test_leg(8, 2_000);
        let mut records = Vec::new();
        records.extend(index.open(&call, StartReason::Answered, 1_000));
        records.extend(index.open(&up, StartReason::Answered, 2_000));
        records.extend(index.close(&call, TerminationReason::GraceExpired, 11_000, 11_000));
        records.extend(index.open(&call, StartReason::Found, 30_000));
        records.extend(index.close(&call, TerminationReason::Released, 61_000, 61_000));
        assert!(check(&ledger(&records)).is_empty());
        let billed = bill(&records);
        assert_eq!(billed.len(), 2);
        assert_eq!(
            (billed[0].leg, billed[0].duration_ms, billed[0].state),
            (7, Some(60_000), CallState::Closed)
        );
        assert_eq!((billed[1].leg, billed[1].state), (8, CallState::Open));
        assert_eq!(billed[1].end_time_ms, None);
    }

    #[test]
    fn check_names_every_violation() {
        let mut index = LedgerIndex::default();
        let call = test_leg(7, 1_000);
        let mut records = Vec::new();
        records.extend(index.close(&call, TerminationReason::Released, 5_000, 5_000));
        // A second END that supersedes nothing: two billable ENDs.
        let mut twice = records[1].clone();
        twice.record = 3;
        // An END of a call that never started.
        let mut orphan = CdrRecord::about(4, RecordKind::End, &test_leg(9, 10), 20);
        orphan.end_time_ms = Some(20);
        orphan.duration_ms = Some(10);
        // A RESUME pointing at a record of another call.
        let mut stray = CdrRecord::about(5, RecordKind::Resume, &test_leg(9, 10), 30);
        stray.resumes = Some(2);
        // Numbers going back.
        let mut back = CdrRecord::about(1, RecordKind::Start, &test_leg(11, 10), 40);
        back.start_reason = Some(StartReason::Answered);
        records.extend([twice, orphan, stray, back]);
        let problems = check(&ledger(&records));
        let text = problems.join("\n");
        for expected in [
            "record 3): a second END for a call already ended",
            "record 4): END of a call with no START",
            "record 5): resumes 2 is a record of another call",
            "record 1): record numbers must increase",
            "2 billable ENDs (records [2, 3])",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        let torn = parse_lines("{\"record\":1");
        assert!(check(&[("f".into(), torn)])[0].contains("torn last line"));
    }
}
