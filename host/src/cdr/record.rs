//! One line of the ledger, and what names a call.
//!
//! The ledger is RADIUS accounting's shape (Start / Stop, with our RESUME
//! for the grace-timer trap): START when a call is answered or first found
//! answered at a resync, END when it ends for the host, RESUME when an ended
//! call is found alive again. Every record repeats the call's identity and
//! parties, so a line read alone says which call it is about.

use crate::model::{CallLeg, Direction, LegId, LegState, Protocol, TerminationReason};
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

/// Who a call is: an engine leg id names a leg only while it lives (an
/// engine restart, a bug or a wrapped counter can give the id to another
/// call), so the id goes with the session, the offer and the answer time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CallKey {
    pub leg: LegId,
    pub session: u64,
    pub offered_time_ms: u64,
    pub answer_time_ms: u64,
}

impl CallKey {
    /// The key of an answered leg; `None` before the answer (nothing to bill).
    pub fn of(leg: &CallLeg) -> Option<CallKey> {
        Some(CallKey {
            leg: leg.id,
            session: leg.session_id,
            offered_time_ms: leg.offered_at_ms,
            answer_time_ms: leg.answered_at_ms?,
        })
    }
}

/// Whether two views of a leg with the same id are the same call: same
/// session and offer, and the same answer time once both are answered.
pub fn same_call(a: &CallLeg, b: &CallLeg) -> bool {
    a.id == b.id
        && a.session_id == b.session_id
        && a.offered_at_ms == b.offered_at_ms
        && match (a.answered_at_ms, b.answered_at_ms) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// One line of the ledger. Field by field in `docs/operations.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrRecord {
    /// Unique, increasing within the ledger (across rotated files too).
    pub record: u64,
    pub kind: RecordKind,
    /// When the record was written (Unix ms).
    pub time_ms: u64,
    pub leg: LegId,
    pub session: u64,
    pub nap: String,
    pub calling: String,
    pub called: String,
    /// When the call was offered (Unix ms): part of its identity.
    pub offered_time_ms: u64,
    /// The call's original answer time (Unix ms).
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
}

impl CdrRecord {
    /// A record about `leg` (which must be answered), numbered `record`.
    pub fn about(record: u64, kind: RecordKind, leg: &CallLeg, time_ms: u64) -> CdrRecord {
        CdrRecord {
            record,
            kind,
            time_ms,
            leg: leg.id,
            session: leg.session_id,
            nap: leg.nap.to_string(),
            calling: leg.calling.to_string(),
            called: leg.called.to_string(),
            offered_time_ms: leg.offered_at_ms,
            answer_time_ms: leg.answered_at_ms.unwrap_or_default(),
            start_reason: None,
            end_time_ms: None,
            duration_ms: None,
            end_reason: None,
            resumes: None,
            supersedes: None,
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
            nap: self.nap.as_str().into(),
            calling: self.calling.as_str().into(),
            called: self.called.as_str().into(),
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
    fn a_record_reads_back_as_its_call() {
        let call = crate::model::test_leg(7, 1_000);
        let record = CdrRecord::about(1, RecordKind::Start, &call, 1_001);
        assert_eq!(record.key(), CallKey::of(&call).unwrap());
        assert!(same_call(&record.call_leg(), &call));
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.starts_with(r#"{"record":1,"kind":"start","time_ms":1001,"leg":7"#));
    }
}
