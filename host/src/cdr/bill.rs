//! The billing rule and the ledger's consistency checks, as `legsync cdr
//! bill` and `legsync cdr check` apply them (and the tests, which bill what
//! the host wrote against what the engine did).
//!
//! **The rule.** Records are grouped by call (engine, leg id, session,
//! offer time, answer time), across the ledgers of every host of a pair. A
//! call's parties come from its START. Of its records, those of the latest
//! controller epoch decide (the engine gives each accepted controller
//! connection a larger epoch, so they are the newest knowledge of the
//! call, and one host wrote them): if the last of them is an END, that END
//! is billed; if it is a START or a RESUME, the call is still up (open). An
//! END written under an earlier epoch (a deposed active's grace timer
//! ending calls that its successor re-adopted) is superseded. Each call is
//! billed once.

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

/// The whole records of `ledgers`, each host's in its record order.
pub fn records(ledgers: &[(String, Vec<Line>)]) -> Vec<CdrRecord> {
    let mut records: Vec<CdrRecord> = ledgers
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .filter(|line| !line.torn)
        .filter_map(|line| line.record.as_ref().ok().cloned())
        .collect();
    records.sort_by(|a, b| (&a.host, a.record).cmp(&(&b.host, b.record)));
    records
}

/// A call across every ledger given: its engine and identity.
type CallId = (String, CallKey);

/// Applies the billing rule: one row per answered call, by answer time.
///
/// `records` may come from every host of a pair (each host's in its
/// record order, as [`records`] returns them). A call's records of its
/// latest epoch decide it; within them (one host's), the last record says
/// whether it is up or over, and the last END is the billed one.
pub fn bill(records: &[CdrRecord]) -> Vec<BilledCall> {
    let mut latest: HashMap<CallId, u64> = HashMap::new();
    for record in records {
        let epoch = latest.entry(call_id(record)).or_insert(record.epoch);
        *epoch = (*epoch).max(record.epoch);
    }
    let mut calls: BTreeMap<(u64, CallId), BilledCall> = BTreeMap::new();
    for record in records {
        let id = call_id(record);
        let deciding = latest[&id] == record.epoch;
        let call = calls
            .entry((record.answer_time_ms, id))
            .or_insert_with(|| BilledCall {
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
        if !deciding {
            // Older knowledge: a later epoch's host has seen the call since.
            continue;
        }
        match record.kind {
            RecordKind::Start | RecordKind::Resume => call.state = CallState::Open,
            RecordKind::End => {
                call.state = CallState::Closed;
                call.end_time_ms = record.end_time_ms;
                call.duration_ms = record.duration_ms;
                call.end_record = Some(record.record);
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

fn call_id(record: &CdrRecord) -> CallId {
    (record.engine.to_string(), record.key())
}

/// One host's ledger, as the checks follow it.
#[derive(Default)]
struct HostLedger {
    last_record: Option<u64>,
    /// The latest epoch of each engine in this ledger.
    epochs: HashMap<String, u64>,
    by_number: HashMap<u64, CdrRecord>,
    /// Per call: open (a START or RESUME after the last END).
    open: HashMap<CallKey, bool>,
    ends: HashMap<CallKey, Vec<u64>>,
}

/// Checks the ledgers' rules; returns every violation, each naming its
/// file and line or record. `ledgers` may hold the files of several hosts
/// (each host's rotated pieces oldest first): each host's ledger is checked
/// on its own, then the pair: no epoch of an engine written by two hosts.
pub fn check(ledgers: &[(String, Vec<Line>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut hosts: BTreeMap<String, HostLedger> = BTreeMap::new();
    // Which host wrote each (engine, epoch), and where first.
    let mut writers: HashMap<(String, u64), (String, String)> = HashMap::new();
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
            let writer = (record.engine.to_string(), record.epoch);
            match writers.get(&writer) {
                Some((host, first)) if *host != record.host => problems.push(format!(
                    "{at}: epoch {} of engine `{}` has records from host `{}` and from host `{host}` ({first}): two hosts controlled the engine under one epoch",
                    record.epoch, record.engine, record.host
                )),
                Some(_) => {}
                None => {
                    writers.insert(writer, (record.host.to_string(), at.clone()));
                }
            }
            let ledger = hosts.entry(record.host.to_string()).or_default();
            check_record(ledger, record, &at, &mut problems);
        }
    }
    for (host, ledger) in &hosts {
        let superseded: HashSet<u64> = ledger
            .by_number
            .values()
            .filter_map(|r| r.supersedes)
            .collect();
        for (key, ends) in &ledger.ends {
            let billable: Vec<u64> = ends
                .iter()
                .copied()
                .filter(|e| !superseded.contains(e))
                .collect();
            if billable.len() > 1 {
                let by = if host.is_empty() {
                    String::new()
                } else {
                    format!(" by host `{host}`")
                };
                problems.push(format!(
                    "leg {} (session {}, answered at {}): {} billable ENDs{by} (records {:?}); one call must be billed once",
                    key.leg, key.session, key.answer_time_ms, billable.len(), billable
                ));
            }
        }
    }
    problems
}

/// The rules of one host's ledger, for its next record.
fn check_record(ledger: &mut HostLedger, record: &CdrRecord, at: &str, problems: &mut Vec<String>) {
    if let Some(last) = ledger.last_record.filter(|&last| record.record <= last) {
        problems.push(format!(
            "{at}: record numbers must increase (after record {last})"
        ));
    }
    ledger.last_record = Some(record.record);
    let epoch = ledger
        .epochs
        .entry(record.engine.to_string())
        .or_insert(record.epoch);
    if record.epoch < *epoch {
        problems.push(format!(
            "{at}: epoch {} after epoch {} of the same engine (a host's epochs only grow)",
            record.epoch, epoch
        ));
    }
    *epoch = (*epoch).max(record.epoch);
    let key = record.key();
    let is_open = ledger.open.get(&key).copied();
    let by_number = &ledger.by_number;
    let points_at = |field: &str, target: Option<u64>, problems: &mut Vec<String>| {
        let Some(target) = target else {
            return problems.push(format!("{at}: a {field} is missing"));
        };
        match by_number.get(&target) {
            None => problems.push(format!("{at}: {field} {target} names no earlier record")),
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
            ledger.open.insert(key, true);
        }
        RecordKind::Resume => {
            if is_open != Some(false) {
                problems.push(format!(
                    "{at}: RESUME of a call that has no END to resume after"
                ));
            }
            points_at("resumes", record.resumes, problems);
            ledger.open.insert(key, true);
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
                points_at("supersedes", record.supersedes, problems);
            }
            if record.end_time_ms.is_none() || record.duration_ms.is_none() {
                problems.push(format!("{at}: END without end_time_ms or duration_ms"));
            }
            ledger.open.insert(key, false);
            ledger.ends.entry(key).or_default().push(record.record);
        }
    }
    ledger.by_number.insert(record.record, record.clone());
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

    /// The split brain of docs/operations.md: the active (A) is cut off
    /// but alive, the standby (B) takes over and re-adopts the calls, and
    /// at its grace deadline A writes ENDs for calls still up under B.
    #[test]
    fn a_pair_is_billed_once_across_a_split_brain() {
        let (x, y, z) = (test_leg(1, 1_000), test_leg(2, 1_000), test_leg(3, 1_000));
        let mut a = LedgerIndex::default();
        a.set_host("a");
        a.set_epoch("gw", 1);
        let mut b = LedgerIndex::default();
        b.set_host("b");
        let mut records = Vec::new();
        for call in [&x, &y, &z] {
            records.extend(a.open(call, StartReason::Answered, 1_000));
        }
        // A is cut off; Z is released unseen; B takes over under epoch 2.
        b.set_epoch("gw", 2);
        records.extend(b.open(&x, StartReason::Found, 15_000));
        records.extend(b.open(&y, StartReason::Found, 15_000));
        records.extend(b.close(&y, TerminationReason::Released, 50_000, 50_000));
        // A's grace timer: ENDs under the epoch it knew.
        for call in [&x, &y, &z] {
            records.extend(a.close(call, TerminationReason::GraceExpired, 20_000, 21_000));
        }
        let mut ledgers = ledger(&records);
        let merged = |ledgers: &Vec<(String, Vec<Line>)>| {
            let mut records = super::records(ledgers);
            // The order the files come in does not matter.
            records.reverse();
            records.sort_by(|a, b| (&a.host, a.record).cmp(&(&b.host, b.record)));
            bill(&records)
        };
        assert!(check(&ledgers).is_empty(), "{:?}", check(&ledgers));
        let billed = merged(&ledgers);
        let row = |leg: u64| billed.iter().find(|c| c.leg == leg).unwrap().clone();
        assert_eq!(billed.len(), 3, "each call once");
        assert_eq!((row(1).state, row(1).end_time_ms), (CallState::Open, None));
        assert_eq!(row(2).end_time_ms, Some(50_000), "B's END, not A's");
        assert_eq!(row(3).end_time_ms, Some(20_000), "only A saw Z");

        // B dies; A takes over under epoch 3 and finds X alive.
        a.set_epoch("gw", 3);
        let mut later = Vec::new();
        later.extend(a.open(&x, StartReason::Found, 60_000));
        later.extend(b.close(&x, TerminationReason::GraceExpired, 58_000, 70_000));
        later.extend(a.close(&x, TerminationReason::Released, 90_000, 90_000));
        assert_eq!(later[0].kind, RecordKind::Resume);
        records.extend(later);
        ledgers = ledger(&records);
        assert!(check(&ledgers).is_empty(), "{:?}", check(&ledgers));
        let billed = merged(&ledgers);
        let x_row = billed.iter().find(|c| c.leg == 1).unwrap();
        assert_eq!(
            x_row.end_time_ms,
            Some(90_000),
            "epoch 3 supersedes B's grace END"
        );

        // A host writing under an epoch another host had breaks fencing.
        b.set_epoch("gw", 3);
        records.extend(b.open(&test_leg(9, 100), StartReason::Found, 95_000));
        let problems = check(&ledger(&records)).join("\n");
        assert!(
            problems.contains("epoch 3 of engine `gw` has records from host `b` and from host `a`"),
            "{problems}"
        );
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
