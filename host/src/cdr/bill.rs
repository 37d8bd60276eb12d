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

/// Why a file given to the billing tools is not read as a ledger piece.
#[derive(Debug, thiserror::Error)]
pub enum LedgerFileError {
    #[error("cannot read {file}: {source}")]
    Unreadable {
        file: String,
        source: std::io::Error,
    },
    /// The checkpoint, the `.alive` file or a temporary file beside the
    /// ledger: the host's own bookkeeping, not records to bill.
    #[error(
        "{file} is the ledger's {what}, not a ledger piece: leave it out (a glob like `cdr.jsonl*` takes it in; name the pieces, e.g. `cdr.jsonl.[0-9]* cdr.jsonl`)"
    )]
    Sidecar { file: String, what: &'static str },
    #[error("{file} is not a ledger: line {line} is not a CDR record ({reason})")]
    NotALedger {
        file: String,
        line: usize,
        reason: String,
    },
}

/// What a ledger's sidecar files are, by their suffix.
const SIDECARS: [(&str, &str); 5] = [
    (".checkpoint", "checkpoint"),
    (".alive", "`.alive` file (its last moment in sync)"),
    (".shipped", "shipping cursor"),
    (".tmp", "temporary file"),
    (".checkpoint.tmp", "temporary checkpoint"),
];

/// What the file named `name` is beside its ledger, if it is one of the
/// host's own bookkeeping files rather than a ledger piece.
pub(crate) fn sidecar(name: &str) -> Option<&'static str> {
    SIDECARS
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map(|&(_, what)| what)
}

/// Reads the records of `files` (rotated pieces in any order). A torn last
/// line (a crash mid-write: never reported durable) is kept as torn,
/// whatever bytes it holds. A sidecar, or a file whose first line is not a
/// record, is refused with its name.
pub fn read_ledgers(
    files: &[impl AsRef<Path>],
) -> Result<Vec<(String, Vec<Line>)>, LedgerFileError> {
    files
        .iter()
        .map(|file| {
            let file = file.as_ref();
            let name = file.display().to_string();
            if let Some(what) = sidecar(&name) {
                return Err(LedgerFileError::Sidecar { file: name, what });
            }
            let bytes = std::fs::read(file).map_err(|source| LedgerFileError::Unreadable {
                file: name.clone(),
                source,
            })?;
            let lines = parse_lines(&bytes);
            if let Some(Err(reason)) = lines.first().filter(|l| !l.torn).map(|l| &l.record) {
                return Err(LedgerFileError::NotALedger {
                    file: name,
                    line: 1,
                    reason: reason.clone(),
                });
            }
            Ok((name, lines))
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

fn parse_lines(bytes: &[u8]) -> Vec<Line> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| {
            let torn = raw.last() != Some(&b'\n');
            let record = if torn {
                // Cut mid-write, perhaps inside a character: never read.
                Err("torn".to_string())
            } else {
                serde_json::from_slice(raw.trim_ascii_end()).map_err(|e| e.to_string())
            };
            Line {
                number: i + 1,
                record,
                torn,
            }
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

/// Records missing from a host's ledger: numbers are consecutive from 1
/// per host, so a gap is a piece left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub host: String,
    pub first: u64,
    pub last: u64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records {} to {} of host `{}` are missing (a rotated piece left out, or messages lost from the stream?)",
            self.first, self.last, self.host
        )
    }
}

/// Where each host's record numbers must begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// At 1: the whole ledger is given (files).
    FromOne,
    /// At the first record read of the host: a stream read from a time on,
    /// or one whose retention dropped its oldest records.
    FromFirstRead,
}

/// The gaps in `records` (each host's in its record order, as [`records`]
/// returns them).
pub fn gaps(records: &[CdrRecord]) -> Vec<Gap> {
    gaps_numbered(records, Numbering::FromOne)
}

/// [`gaps`], each host's numbers beginning as `numbering` says.
pub fn gaps_numbered(records: &[CdrRecord], numbering: Numbering) -> Vec<Gap> {
    let mut gaps = Vec::new();
    let mut last: Option<(&str, u64)> = None;
    for record in records {
        let expected = match last {
            Some((host, number)) if host == record.host => number + 1,
            _ if numbering == Numbering::FromFirstRead => record.record,
            _ => 1,
        };
        if record.record > expected {
            gaps.push(Gap {
                host: record.host.to_string(),
                first: expected,
                last: record.record - 1,
            });
        }
        last = Some((&record.host, record.record));
    }
    gaps
}

/// The first damaged line (not a record, and not a torn last line) of
/// `ledgers`, named: billing around it could miss an END.
pub fn damaged_line(ledgers: &[(String, Vec<Line>)]) -> Option<String> {
    ledgers.iter().find_map(|(file, lines)| {
        lines.iter().find_map(|line| match &line.record {
            Err(reason) if !line.torn => Some(format!(
                "{file} line {} is not a CDR record ({reason})",
                line.number
            )),
            _ => None,
        })
    })
}

/// A call across every ledger given: its engine and identity.
type CallId = (String, CallKey);

/// What a ledger says of one call under one epoch: a call record, or a
/// CARRY's word that the call (open in that host's ledger) is still up.
struct Observation<'a> {
    /// The call's engine and identity, taken once.
    id: CallId,
    /// The call record itself, or (for a CARRY) the call's latest START or
    /// RESUME in that host's ledger.
    record: &'a CdrRecord,
    epoch: u64,
    kind: RecordKind,
}

/// The observations of `records` (each host's in its record order): call
/// records as they are; a CARRY as a RESUME-like observation, under its
/// epoch, of every call its host has open for the engine.
///
/// A host's epochs only grow (`check` verifies it), so of the CARRYs that
/// cover an open call only the last can decide it: one observation per
/// call is made, where the call's open stretch ends (its END, another START
/// or RESUME, or the end of the host's records), not one per CARRY (a long
/// ledger has many CARRYs over a million open calls).
fn observations(records: &[CdrRecord]) -> Vec<Observation<'_>> {
    /// The current host's open calls, by their latest START or RESUME,
    /// and its latest CARRY of each engine: (record number, epoch).
    #[derive(Default)]
    struct HostState<'a> {
        open: HashMap<CallId, &'a CdrRecord>,
        carried: HashMap<&'a str, (u64, u64)>,
    }
    impl<'a> HostState<'a> {
        /// The observation a CARRY makes of the call opened by `opened`, if
        /// one came after it.
        fn carried(&self, id: &CallId, opened: &'a CdrRecord) -> Option<Observation<'a>> {
            let &(at, epoch) = self.carried.get(opened.engine.as_str())?;
            (at > opened.record).then(|| Observation {
                id: id.clone(),
                record: opened,
                epoch,
                kind: RecordKind::Resume,
            })
        }
        /// The host's records are over: what its CARRYs say of the calls
        /// still open.
        fn finish(&mut self, out: &mut Vec<Observation<'a>>) {
            let open = std::mem::take(&mut self.open);
            out.extend(
                open.iter()
                    .filter_map(|(id, opened)| self.carried(id, opened)),
            );
            self.carried.clear();
        }
    }
    let mut out = Vec::with_capacity(records.len());
    let mut host: Option<&str> = None;
    let mut state = HostState::default();
    for record in records {
        if host != Some(record.host.as_str()) {
            state.finish(&mut out);
            host = Some(record.host.as_str());
        }
        if record.kind == RecordKind::Carry {
            state
                .carried
                .insert(record.engine.as_str(), (record.record, record.epoch));
            continue;
        }
        let id = call_id(record);
        let closed = match record.kind {
            RecordKind::End => state.open.remove(&id),
            _ => state.open.insert(id.clone(), record),
        };
        if let Some(seen) = closed.and_then(|opened| state.carried(&id, opened)) {
            out.push(seen);
        }
        out.push(Observation {
            id,
            record,
            epoch: record.epoch,
            kind: record.kind,
        });
    }
    state.finish(&mut out);
    out
}

/// Applies the billing rule: one row per answered call, by answer time.
///
/// `records` may come from every host of a pair (each host's in its
/// record order, as [`records`] returns them). A call's records of its
/// latest epoch decide it, a CARRY counting as a record of every call its
/// host had open; within them (one host's), the last says whether it is
/// up or over, and the last END is the billed one.
pub fn bill(records: &[CdrRecord]) -> Vec<BilledCall> {
    let observations = observations(records);
    let mut latest: HashMap<&CallId, u64> = HashMap::new();
    for seen in &observations {
        let epoch = latest.entry(&seen.id).or_insert(seen.epoch);
        *epoch = (*epoch).max(seen.epoch);
    }
    let mut calls: BTreeMap<(u64, CallId), BilledCall> = BTreeMap::new();
    for seen in &observations {
        let record = seen.record;
        let deciding = latest[&seen.id] == seen.epoch;
        let call = calls
            .entry((record.answer_time_ms, seen.id.clone()))
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
        match seen.kind {
            RecordKind::Start | RecordKind::Resume => call.state = CallState::Open,
            RecordKind::End => {
                call.state = CallState::Closed;
                call.end_time_ms = record.end_time_ms;
                call.duration_ms = record.duration_ms;
                call.end_record = Some(record.record);
            }
            RecordKind::Carry => {}
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
    /// Where the last record was read (for a duplicate's report).
    last_at: String,
    /// Two hosts write under this name: its records are not checked further.
    shared: bool,
    /// The latest epoch of each engine in this ledger.
    epochs: HashMap<String, u64>,
    by_number: HashMap<u64, CdrRecord>,
    /// Per call: open (a START or RESUME after the last END).
    open: HashMap<CallId, bool>,
    /// How many calls are open, per engine (what a CARRY must say), kept
    /// as `open` changes: counting them at each CARRY would take the
    /// checks of a long ledger quadratic.
    open_count: HashMap<String, u64>,
    ends: HashMap<CallId, Vec<u64>>,
}

impl HostLedger {
    /// Records whether the call `id` is open now.
    fn set_open(&mut self, id: CallId, now: bool) {
        let was = self.open.get(&id) == Some(&true);
        if was != now {
            if !self.open_count.contains_key(&id.0) {
                self.open_count.insert(id.0.clone(), 0);
            }
            let count = self.open_count.get_mut(&id.0).expect("just ensured");
            *count = if now { *count + 1 } else { *count - 1 };
        }
        self.open.insert(id, now);
    }
}

/// A record and where it was read.
struct Located<'a> {
    record: &'a CdrRecord,
    file: &'a str,
    line: usize,
}

/// Checks the ledgers' rules; returns every violation, each naming its
/// file and line or record. `ledgers` may hold the files of several hosts,
/// in any order: records are taken by host and record number. Each host's
/// ledger is checked on its own (numbers consecutive from 1, so that a
/// missing piece is named by its range), then the pair: no epoch of an
/// engine written by two hosts.
pub fn check(ledgers: &[(String, Vec<Line>)]) -> Vec<String> {
    check_numbered(ledgers, Numbering::FromOne)
}

/// [`check`], each host's numbers beginning as `numbering` says.
pub fn check_numbered(ledgers: &[(String, Vec<Line>)], numbering: Numbering) -> Vec<String> {
    let mut problems = Vec::new();
    let mut located = Vec::new();
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
            match &line.record {
                Ok(record) => located.push(Located {
                    record,
                    file,
                    line: line.number,
                }),
                Err(e) => problems.push(format!("{at}: not a CDR record ({e})")),
            }
        }
    }
    located
        .sort_by(|a, b| (&a.record.host, a.record.record).cmp(&(&b.record.host, b.record.record)));
    let mut hosts: BTreeMap<String, HostLedger> = BTreeMap::new();
    // Which host wrote each (engine, epoch), and where first.
    let mut writers: HashMap<(String, u64), (String, String)> = HashMap::new();
    for Located { record, file, line } in located {
        let at = format!("{file} line {line} (record {})", record.record);
        let ledger = hosts.entry(record.host.to_string()).or_default();
        if ledger.shared {
            continue;
        }
        if ledger.last_record == Some(record.record) {
            let previous = &ledger.by_number[&record.record];
            if previous == record {
                problems.push(format!(
                    "{at}: the same record is also at {}: a piece given twice",
                    ledger.last_at
                ));
            } else {
                ledger.shared = true;
                problems.push(format!(
                    "two hosts share the name `{}`: {at} and {} are both record {} and differ. Each host of a pair needs its own `name`; the checks of `{}` stop here",
                    record.host, ledger.last_at, record.record, record.host
                ));
            }
            continue;
        }
        let expected = match (ledger.last_record, numbering) {
            (Some(last), _) => last + 1,
            (None, Numbering::FromOne) => 1,
            (None, Numbering::FromFirstRead) => record.record,
        };
        if record.record > expected {
            let gap = Gap {
                host: record.host.to_string(),
                first: expected,
                last: record.record - 1,
            };
            problems.push(format!("{at}: {gap}"));
        }
        ledger.last_record = Some(record.record);
        ledger.last_at = at.clone();
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
        check_record(ledger, record, &at, &mut problems);
    }
    for (host, ledger) in &hosts {
        let superseded: HashSet<u64> = ledger
            .by_number
            .values()
            .filter_map(|r| r.supersedes)
            .collect();
        for ((_, key), ends) in &ledger.ends {
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
    if record.kind == RecordKind::Carry {
        let engine = record.engine.as_str();
        let open = ledger.open_count.get(engine).copied().unwrap_or_default();
        let claimed = record.calls.unwrap_or_default();
        if claimed != open {
            problems.push(format!(
                "{at}: CARRY says {claimed} calls open, but the ledger has {open} open for engine `{engine}`"
            ));
        }
        ledger.by_number.insert(record.record, record.clone());
        return;
    }
    let key = record.key();
    let id = call_id(record);
    let is_open = ledger.open.get(&id).copied();
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
            ledger.set_open(id, true);
        }
        RecordKind::Resume => {
            if is_open != Some(false) {
                problems.push(format!(
                    "{at}: RESUME of a call that has no END to resume after"
                ));
            }
            points_at("resumes", record.resumes, problems);
            ledger.set_open(id, true);
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
            ledger.set_open(id.clone(), false);
            ledger.ends.entry(id).or_default().push(record.record);
        }
        RecordKind::Carry => unreachable!("a CARRY is handled above"),
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
        vec![("cdr.jsonl".to_string(), parse_lines(text.as_bytes()))]
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
        records.extend([twice, orphan, stray]);
        let problems = check(&ledger(&records));
        let text = problems.join("\n");
        for expected in [
            "record 3): a second END for a call already ended",
            "record 4): END of a call with no START",
            "record 5): resumes 2 is a record of another call",
            "2 billable ENDs (records [2, 3])",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        let torn = parse_lines(b"{\"record\":1");
        assert!(check(&[("f".into(), torn)])[0].contains("torn last line"));
    }

    fn text_of(records: &[CdrRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            record.write_line(&mut out);
        }
        out
    }

    /// A host's ledger in three pieces, as logrotate leaves them.
    fn pieces(host: &str) -> Vec<Vec<u8>> {
        let mut index = LedgerIndex::default();
        index.set_host(host);
        index.set_epoch("gw", 1);
        let mut records = Vec::new();
        for id in 1..=6 {
            records.extend(index.open(&test_leg(id, 1_000), StartReason::Answered, 1_000));
        }
        for id in 1..=6 {
            records.extend(index.close(
                &test_leg(id, 1_000),
                TerminationReason::Released,
                5_000,
                5_000,
            ));
        }
        records.chunks(4).map(text_of).collect()
    }

    #[test]
    fn check_does_not_depend_on_the_order_of_its_files_and_names_a_missing_piece() {
        let pieces = pieces("a");
        let named = |order: &[usize]| -> Vec<(String, Vec<Line>)> {
            order
                .iter()
                .map(|&i| (format!("cdr.jsonl.{i}"), parse_lines(&pieces[i])))
                .collect()
        };
        assert!(check(&named(&[0, 1, 2])).is_empty());
        assert!(
            check(&named(&[2, 1, 0])).is_empty(),
            "{:?}",
            check(&named(&[2, 1, 0]))
        );
        let problems = check(&named(&[2, 0])).join("\n");
        assert!(
            problems
                .contains("cdr.jsonl.2 line 1 (record 9): records 5 to 8 of host `a` are missing"),
            "{problems}"
        );
        let problems = check(&named(&[0, 1, 1, 2])).join("\n");
        assert!(problems.contains("a piece given twice"), "{problems}");
        assert!(!problems.contains("billable ENDs"), "{problems}");
    }

    #[test]
    fn two_hosts_under_one_name_are_named_once() {
        // Two hosts of a pair on one machine, both named after it.
        let (one, two) = (pieces("box").concat(), pieces("box").concat());
        let mut other = two.clone();
        // The second host's calls are other calls (other offers).
        other = String::from_utf8(other)
            .unwrap()
            .replace("\"offered_time_ms\":", "\"offered_time_ms\":1")
            .into_bytes();
        let ledgers = vec![
            ("pri/cdr.jsonl".to_string(), parse_lines(&one)),
            ("alt/cdr.jsonl".to_string(), parse_lines(&other)),
        ];
        let problems = check(&ledgers);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("two hosts share the name `box`"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_billing_tools_refuse_sidecars_and_files_that_are_not_ledgers() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("cdr.jsonl.alive"), "1700000000000 12\n").unwrap();
        std::fs::write(path("cdr.jsonl.checkpoint"), &pieces("a")[0]).unwrap();
        std::fs::write(path("cdr.jsonl.shipped"), "12 pri 3\n").unwrap();
        std::fs::write(path("hostname"), "gw-host-1\n").unwrap();
        for (file, expected) in [
            ("cdr.jsonl.alive", "is the ledger's `.alive` file"),
            ("cdr.jsonl.checkpoint", "is the ledger's checkpoint"),
            ("cdr.jsonl.shipped", "is the ledger's shipping cursor"),
            ("hostname", "is not a ledger: line 1 is not a CDR record"),
        ] {
            let err = read_ledgers(&[path(file)]).unwrap_err();
            assert!(err.to_string().contains(expected), "{file}: {err}");
        }
    }

    #[test]
    fn a_torn_line_cut_inside_a_character_is_torn_not_an_error() {
        let mut call = test_leg(7, 1_000);
        call.nap = "SIP_ŁÓDŹ".into();
        let mut index = LedgerIndex::default();
        let mut bytes = text_of(
            &index
                .open(&call, StartReason::Answered, 1_000)
                .into_iter()
                .collect::<Vec<_>>(),
        );
        let second = text_of(&index.close(&call, TerminationReason::Released, 2_000, 2_000));
        let cut = second.windows(2).position(|w| w == "Ł".as_bytes()).unwrap() + 1;
        bytes.extend_from_slice(&second[..cut]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cdr.jsonl");
        std::fs::write(&file, &bytes).unwrap();
        let ledgers = read_ledgers(&[&file]).unwrap();
        assert_eq!(ledgers[0].1.len(), 2);
        assert!(ledgers[0].1[1].torn);
        assert_eq!(records(&ledgers).len(), 1);
    }

    /// The F-a5 sequence of issue 28: the active (a) is killed, the standby
    /// (b) takes over under epoch 2, a comes back fast and takes the slot
    /// under epoch 3, finding its calls open in its own ledger (so no call
    /// record), and b's grace timer then ends them under epoch 2. a's
    /// CARRY under epoch 3 keeps them open in the merged bill.
    #[test]
    fn a_carry_keeps_the_calls_of_a_fast_restart_open_against_older_grace_ends() {
        let (x, y) = (test_leg(1, 1_000), test_leg(2, 1_000));
        let mut a = LedgerIndex::default();
        a.set_host("a");
        a.set_epoch("gw", 1);
        let mut b = LedgerIndex::default();
        b.set_host("b");
        let mut records = Vec::new();
        records.extend(a.open(&x, StartReason::Answered, 1_000));
        records.extend(a.open(&y, StartReason::Answered, 1_000));
        records.push(a.carry(1_000));
        b.set_epoch("gw", 2);
        records.extend(b.open_all([&x, &y], StartReason::Found, 5_000));
        records.push(b.carry(5_000));
        // a restarts, takes the slot: both calls are open in its ledger.
        a.set_epoch("gw", 3);
        records.push(a.carry(7_000));
        // b's grace timer, under the epoch it knew; y is released under a.
        for call in [&x, &y] {
            records.extend(b.close(call, TerminationReason::GraceExpired, 6_000, 16_000));
        }
        records.extend(a.close(&y, TerminationReason::Released, 20_000, 20_000));
        let ledgers = ledger(&records);
        assert!(check(&ledgers).is_empty(), "{:?}", check(&ledgers));
        let billed = bill(&super::records(&ledgers));
        let row = |leg: u64| billed.iter().find(|c| c.leg == leg).unwrap().clone();
        assert_eq!(billed.len(), 2);
        assert_eq!(row(1).state, CallState::Open, "x is up under a");
        assert_eq!(
            row(2).end_time_ms,
            Some(20_000),
            "a's release, not b's grace END"
        );
    }

    /// A host that lost the slot ends its calls as handed over; the
    /// controller that took them carries them under a later epoch, and its
    /// records decide; a call it never had keeps the handed-over END. A
    /// CARRY that miscounts is named.
    #[test]
    fn handed_over_ends_give_way_to_the_controller_that_carries_the_calls() {
        let (x, y) = (test_leg(1, 1_000), test_leg(2, 1_000));
        let mut a = LedgerIndex::default();
        a.set_host("a");
        a.set_epoch("gw", 1);
        let mut b = LedgerIndex::default();
        b.set_host("b");
        b.set_epoch("gw", 2);
        let mut records = Vec::new();
        records.extend(a.open(&x, StartReason::Answered, 1_000));
        records.extend(a.open(&y, StartReason::Answered, 1_000));
        // y ends before b takes over; b carries x only.
        records.extend(b.open(&x, StartReason::Found, 5_000));
        records.push(b.carry(5_000));
        for call in [&x, &y] {
            records.extend(a.close(call, TerminationReason::HandedOver, 12_000, 12_000));
        }
        let ledgers = ledger(&records);
        assert!(check(&ledgers).is_empty(), "{:?}", check(&ledgers));
        let billed = bill(&super::records(&ledgers));
        let row = |leg: u64| billed.iter().find(|c| c.leg == leg).unwrap().clone();
        assert_eq!(row(1).state, CallState::Open, "b holds x");
        assert_eq!(row(2).end_time_ms, Some(12_000), "nobody else had y");
        let mut wrong = records.clone();
        wrong[3].calls = Some(5);
        let problems = check(&ledger(&wrong)).join("\n");
        assert!(
            problems.contains("CARRY says 5 calls open, but the ledger has 1 open"),
            "{problems}"
        );
    }
}
