//! One line of the ledger, and what names a call.
//!
//! The ledger is RADIUS accounting's shape (Start / Stop, with our RESUME
//! for the grace-timer trap): START when a call is answered or first found
//! answered at a resync, END when it ends for the host, RESUME when an ended
//! call is found alive again. Every call record repeats the call's identity
//! and parties, so a line read alone says which call it is about.
//!
//! One record is about the host's whole set of open calls instead of one
//! call (it carries no call fields): CARRY, written at the end of every
//! resync, says that this host carries every call its ledger has open under
//! the connection's epoch, so that this epoch's knowledge covers the calls
//! the host wrote nothing new about (a restart that finds its own calls).

use crate::json_line::JsonLine;
use crate::model::{CallLeg, Direction, LegId, LegState, Protocol, TerminationReason};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// The call is answered and billable from `answer_time_ms`.
    Start,
    /// The call ended (for the host; see `end_reason`).
    End,
    /// A call that had an END was found alive again: it is still up.
    Resume,
    /// Every call open in this host's ledger for `engine` is carried under
    /// `epoch` (written at the end of each resync; `calls` says how many).
    Carry,
}

/// How the host learned that a call was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartReason {
    /// The engine's live `LegAnswered` event.
    Answered,
    /// The call was already answered when the host first saw it (in a
    /// snapshot, or in an event about a leg the host did not hold).
    Found,
}

// The call identity rule is the model's: the ledger bills by it, the table
// and engine-sim match legs by it.
pub use crate::model::{CallKey, same_call};

/// One line of the ledger. Field by field in `docs/operations.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrRecord {
    /// Unique, increasing within the ledger (across rotated files too).
    pub record: u64,
    pub kind: RecordKind,
    /// When the record was written (Unix ms).
    pub time_ms: u64,
    /// The host that wrote it (its `name`), unique within a host pair:
    /// record numbers, `resumes` and `supersedes` are this host's own.
    #[serde(default)]
    pub host: CompactString,
    /// The engine the call is on (its name in its hello).
    #[serde(default)]
    pub engine: CompactString,
    /// The controller epoch of the engine whose knowledge the record holds:
    /// the epoch of the host's latest connection to it. Across the hosts of
    /// a pair, a later epoch's records about a call supersede an earlier
    /// one's (see `bill`).
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub leg: LegId,
    #[serde(default)]
    pub session: u64,
    /// Inline up to 24 bytes (every real NAP and number), as in [`CallLeg`]:
    /// a resync builds a million records without a heap allocation each.
    #[serde(default)]
    pub nap: CompactString,
    #[serde(default)]
    pub calling: CompactString,
    #[serde(default)]
    pub called: CompactString,
    /// When the call was offered (Unix ms): part of its identity.
    #[serde(default)]
    pub offered_time_ms: u64,
    /// The call's original answer time (Unix ms).
    #[serde(default)]
    pub answer_time_ms: u64,
    /// START only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_reason: Option<StartReason>,
    /// END only: when it ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_ms: Option<u64>,
    /// END only: end minus answer, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// END only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<TerminationReason>,
    /// RESUME only: the END record this call resumes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<u64>,
    /// END only: the earlier END of the same call that this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<u64>,
    /// CARRY only: how many calls the host's ledger had open for the
    /// engine (`legsync cdr check` counts them again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Start => "start",
            RecordKind::End => "end",
            RecordKind::Resume => "resume",
            RecordKind::Carry => "carry",
        }
    }

    /// START, END and RESUME are about one call; CARRY about every call
    /// the host has open.
    pub fn is_call(self) -> bool {
        self != RecordKind::Carry
    }
}

impl StartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StartReason::Answered => "answered",
            StartReason::Found => "found",
        }
    }
}

impl CdrRecord {
    /// Appends the record as one JSON line, byte for byte what serde_json
    /// writes for it (`JsonLine`): the writer encodes a million STARTs in
    /// a cold resync.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let mut line = JsonLine::new(out);
        line.num("record", self.record)
            .text("kind", self.kind.as_str())
            .num("time_ms", self.time_ms)
            .text("host", &self.host)
            .text("engine", &self.engine)
            .num("epoch", self.epoch);
        if !self.kind.is_call() {
            // A CARRY: about every open call, no call fields.
            line.num("calls", self.calls.unwrap_or_default());
            line.end();
            return;
        }
        line.num("leg", self.leg)
            .num("session", self.session)
            .text("nap", &self.nap)
            .text("calling", &self.calling)
            .text("called", &self.called)
            .num("offered_time_ms", self.offered_time_ms)
            .num("answer_time_ms", self.answer_time_ms);
        if let Some(reason) = self.start_reason {
            line.text("start_reason", reason.as_str());
        }
        if let Some(end) = self.end_time_ms {
            line.num("end_time_ms", end);
        }
        if let Some(duration) = self.duration_ms {
            line.num("duration_ms", duration);
        }
        if let Some(reason) = self.end_reason {
            line.text("end_reason", reason.as_str());
        }
        if let Some(resumes) = self.resumes {
            line.num("resumes", resumes);
        }
        if let Some(supersedes) = self.supersedes {
            line.num("supersedes", supersedes);
        }
        line.end();
    }

    /// A record about `leg` (which must be answered), numbered `record`.
    pub fn about(record: u64, kind: RecordKind, leg: &CallLeg, time_ms: u64) -> CdrRecord {
        CdrRecord {
            leg: leg.id,
            session: leg.session_id,
            nap: leg.nap.clone(),
            calling: leg.calling.clone(),
            called: leg.called.clone(),
            offered_time_ms: leg.offered_at_ms,
            answer_time_ms: leg.answered_at_ms.unwrap_or_default(),
            ..CdrRecord::blank(record, kind, time_ms)
        }
    }

    /// A CARRY record, numbered `record`, about `calls` open calls.
    pub fn carry(record: u64, calls: u64, time_ms: u64) -> CdrRecord {
        CdrRecord {
            calls: Some(calls),
            ..CdrRecord::blank(record, RecordKind::Carry, time_ms)
        }
    }

    /// A record with nothing but its number, kind and time.
    fn blank(record: u64, kind: RecordKind, time_ms: u64) -> CdrRecord {
        CdrRecord {
            record,
            kind,
            time_ms,
            host: CompactString::default(),
            engine: CompactString::default(),
            epoch: 0,
            leg: 0,
            session: 0,
            nap: CompactString::default(),
            calling: CompactString::default(),
            called: CompactString::default(),
            offered_time_ms: 0,
            answer_time_ms: 0,
            start_reason: None,
            end_time_ms: None,
            duration_ms: None,
            end_reason: None,
            resumes: None,
            supersedes: None,
            calls: None,
        }
    }

    pub fn key(&self) -> CallKey {
        CallKey {
            leg: self.leg,
            session: self.session,
            offered_time_ms: self.offered_time_ms,
            answer_time_ms: self.answer_time_ms,
        }
    }

    /// The call as the record describes it (direction and protocol are not
    /// billed, so not recorded: they read as the defaults).
    pub fn call_leg(&self) -> CallLeg {
        CallLeg {
            id: self.leg,
            session_id: self.session,
            direction: Direction::default(),
            protocol: Protocol::default(),
            nap: self.nap.clone(),
            calling: self.calling.clone(),
            called: self.called.clone(),
            offered_at_ms: self.offered_time_ms,
            answered_at_ms: Some(self.answer_time_ms),
            linked_to: None,
            state: LegState::Answered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_more_than_the_id() {
        let call = crate::model::test_leg(7, 1_000);
        let mut ringing = call.clone();
        ringing.answered_at_ms = None;
        assert!(same_call(&call, &ringing), "the answer completes a call");
        let mut other_session = call.clone();
        other_session.session_id += 1;
        assert!(!same_call(&call, &other_session));
        let mut other_answer = call.clone();
        other_answer.answered_at_ms = Some(2_000);
        assert!(!same_call(&call, &other_answer));
        assert_eq!(CallKey::of(&ringing), None);
    }

    #[test]
    fn the_fast_line_is_what_serde_writes() {
        use crate::model::TerminationReason;
        let mut call = crate::model::test_leg(7, 1_000);
        call.nap = "ISDN_ŁÓDŹ".into();
        call.calling = "say \"hi\"\\\n".into();
        let mut start = CdrRecord::about(1, RecordKind::Start, &call, 1_001);
        start.start_reason = Some(StartReason::Found);
        (start.host, start.engine, start.epoch) = ("gw-1 \"a\"".into(), "engine-sim".into(), 9);
        let resume = CdrRecord {
            resumes: Some(2),
            ..CdrRecord::about(3, RecordKind::Resume, &call, 3_000)
        };
        let mut records = vec![start, resume];
        for reason in [
            TerminationReason::Released,
            TerminationReason::AbsentAfterResync,
            TerminationReason::GraceExpired,
            TerminationReason::RefusedByPolicy,
            TerminationReason::HostShutdown,
            TerminationReason::Replaced,
            TerminationReason::HostLost,
        ] {
            records.push(CdrRecord {
                end_time_ms: Some(u64::MAX),
                duration_ms: Some(0),
                end_reason: Some(reason),
                supersedes: Some(2),
                ..CdrRecord::about(4, RecordKind::End, &call, 4_000)
            });
        }
        for record in &records {
            let mut fast = Vec::new();
            record.write_line(&mut fast);
            let mut serde = serde_json::to_vec(record).unwrap();
            serde.push(b'\n');
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn a_claim_is_one_short_line_that_reads_back() {
        let mut carry = CdrRecord::carry(9, 1_234, 5_000);
        (carry.host, carry.engine, carry.epoch) = ("pri".into(), "gw-1".into(), 3);
        let mut line = Vec::new();
        carry.write_line(&mut line);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            "{\"record\":9,\"kind\":\"carry\",\"time_ms\":5000,\"host\":\"pri\",\"engine\":\"gw-1\",\"epoch\":3,\"calls\":1234}\n"
        );
        let back: CdrRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, carry);
    }

    #[test]
    fn a_record_reads_back_as_its_call() {
        let call = crate::model::test_leg(7, 1_000);
        let record = CdrRecord::about(1, RecordKind::Start, &call, 1_001);
        assert_eq!(record.key(), CallKey::of(&call).unwrap());
        assert!(same_call(&record.call_leg(), &call));
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.starts_with(
            r#"{"record":1,"kind":"start","time_ms":1001,"host":"","engine":"","epoch":0,"leg":7"#
        ));
    }
}
