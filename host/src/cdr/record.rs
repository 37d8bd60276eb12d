//! CDR records and the per-call index that keeps them unambiguous.
//!
//! Billing reads END records. The trap: a call ended at the grace deadline
//! (END written), re-adopted when the engine returns, ends again later. So:
//! - re-adopting a call that has an END writes a RESUME record that names
//!   that END and carries the original answer time;
//! - the call's next END names, in `supersedes`, the END it replaces, and
//!   its duration runs from the original answer.
//!
//! Billing charges each call once, from its latest END (ignoring any END
//! another END supersedes). A call is identified by leg id and answer time.

use crate::model::{CallLeg, LegId, TerminationReason};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// The call ended (for the host; see `end_reason`).
    End,
    /// A call that had an END was re-adopted: it is still up.
    Resume,
}

/// One line of the CDR file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdrRecord {
    /// Unique, increasing within the file.
    pub record: u64,
    pub kind: RecordKind,
    pub leg: LegId,
    pub session: u64,
    pub nap: String,
    pub calling: String,
    pub called: String,
    /// The call's original answer time (Unix ms).
    pub answer_time_ms: u64,
    /// END only: when it ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_ms: Option<u64>,
    /// END only: end minus answer, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<TerminationReason>,
    /// RESUME only: the END record this call resumes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<u64>,
    /// END only: the earlier END of the same call that this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<u64>,
}

/// What the file says about one call so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallHistory {
    answer_time_ms: u64,
    /// The latest END of the call.
    last_end: Option<u64>,
    /// Set while the call is resumed after `last_end`.
    resumed: bool,
}

/// Per-call history, rebuilt from the file at start, so that a restarted
/// host neither writes an END twice nor forgets a RESUME.
#[derive(Debug, Default)]
pub struct CdrIndex {
    calls: HashMap<LegId, CallHistory>,
    next_record: u64,
}

impl CdrIndex {
    /// Takes a record read back from the file into account.
    pub fn replay(&mut self, record: &CdrRecord) {
        self.next_record = self.next_record.max(record.record + 1);
        let history = self.calls.entry(record.leg).or_insert(CallHistory {
            answer_time_ms: record.answer_time_ms,
            last_end: None,
            resumed: false,
        });
        if history.answer_time_ms != record.answer_time_ms {
            *history = CallHistory {
                answer_time_ms: record.answer_time_ms,
                last_end: None,
                resumed: false,
            };
        }
        match record.kind {
            RecordKind::End => {
                history.last_end = Some(record.record);
                history.resumed = false;
            }
            RecordKind::Resume => history.resumed = true,
        }
    }

    /// The END record for `leg`, or `None` if the call already has an END
    /// that nothing resumed (writing another would double-bill).
    pub fn end(
        &mut self,
        leg: &CallLeg,
        reason: TerminationReason,
        end_ms: u64,
    ) -> Option<CdrRecord> {
        let answer = leg.answered_at_ms?;
        let supersedes = match self.calls.get(&leg.id) {
            Some(h) if h.answer_time_ms == answer && h.last_end.is_some() && !h.resumed => {
                return None;
            }
            Some(h) if h.answer_time_ms == answer && h.resumed => h.last_end,
            _ => None,
        };
        let record = self.record(leg, RecordKind::End, answer);
        let record = CdrRecord {
            end_time_ms: Some(end_ms),
            duration_ms: Some(end_ms.saturating_sub(answer)),
            end_reason: Some(reason),
            supersedes,
            ..record
        };
        self.replay(&record);
        Some(record)
    }

    /// The RESUME record for a re-adopted `leg`, if the call had an END.
    pub fn resume(&mut self, leg: &CallLeg) -> Option<CdrRecord> {
        let answer = leg.answered_at_ms?;
        let history = self.calls.get(&leg.id)?;
        if history.answer_time_ms != answer || history.resumed {
            return None;
        }
        let ended = history.last_end?;
        let record = CdrRecord {
            resumes: Some(ended),
            ..self.record(leg, RecordKind::Resume, answer)
        };
        self.replay(&record);
        Some(record)
    }

    fn record(&mut self, leg: &CallLeg, kind: RecordKind, answer_time_ms: u64) -> CdrRecord {
        let record = self.next_record.max(1);
        self.next_record = record + 1;
        CdrRecord {
            record,
            kind,
            leg: leg.id,
            session: leg.session_id,
            nap: leg.nap.to_string(),
            calling: leg.calling.to_string(),
            called: leg.called.to_string(),
            answer_time_ms,
            end_time_ms: None,
            duration_ms: None,
            end_reason: None,
            resumes: None,
            supersedes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(id: LegId, at: u64) -> CallLeg {
        crate::model::test_leg(id, at)
    }

    #[test]
    fn the_billing_trap_is_unambiguous() {
        let mut index = CdrIndex::default();
        let call = answered(7, 1_000);
        let first = index
            .end(&call, TerminationReason::GraceExpired, 11_000)
            .unwrap();
        assert_eq!(
            (first.record, first.duration_ms, first.supersedes),
            (1, Some(10_000), None)
        );
        assert_eq!(
            index.end(&call, TerminationReason::Released, 12_000),
            None,
            "no second END"
        );

        let resume = index.resume(&call).unwrap();
        assert_eq!(
            (resume.kind, resume.resumes, resume.answer_time_ms),
            (RecordKind::Resume, Some(1), 1_000)
        );
        assert_eq!(index.resume(&call), None, "resumed once");

        let last = index
            .end(&call, TerminationReason::Released, 61_000)
            .unwrap();
        assert_eq!(last.supersedes, Some(1));
        assert_eq!(
            last.duration_ms,
            Some(60_000),
            "billed from the original answer"
        );
    }

    #[test]
    fn replaying_the_file_restores_the_history() {
        let mut writer = CdrIndex::default();
        let call = answered(7, 1_000);
        let end = writer
            .end(&call, TerminationReason::GraceExpired, 2_000)
            .unwrap();
        let mut restarted = CdrIndex::default();
        restarted.replay(&end);
        assert_eq!(
            restarted.end(&call, TerminationReason::Released, 3_000),
            None
        );
        let resume = restarted.resume(&call).unwrap();
        assert_eq!((resume.record, resume.resumes), (2, Some(1)));
    }

    #[test]
    fn unanswered_legs_and_new_calls_on_a_reused_id() {
        let mut index = CdrIndex::default();
        let mut ringing = answered(1, 10);
        ringing.answered_at_ms = None;
        assert_eq!(index.end(&ringing, TerminationReason::Released, 20), None);
        assert_eq!(index.resume(&ringing), None);
        index
            .end(&answered(2, 10), TerminationReason::Released, 20)
            .unwrap();
        let other_call = index
            .end(&answered(2, 50), TerminationReason::Released, 90)
            .unwrap();
        assert_eq!(
            other_call.supersedes, None,
            "another answer time is another call"
        );
    }
}
