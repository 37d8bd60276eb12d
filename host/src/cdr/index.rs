//! What the ledger says about each call, kept in memory so the host writes
//! every record once: a START when a call becomes billable, exactly one END
//! that closes it, a RESUME when an ended call is found alive again.
//!
//! Keyed by leg id, one entry per id: the latest call that used it. A new
//! call on a reused id only starts once the host has ended the old one (the
//! supervisor's identity rule), so an entry never hides an open call.

use super::record::{CallKey, CdrRecord, RecordKind, StartReason};
use crate::ids::DenseMap;
use crate::model::{CallLeg, LegId, TerminationReason};
use compact_str::CompactString;

/// The ledger's state of one call (56 bytes: with its id and its bucket in
/// the [`DenseMap`], a million calls cost ~100 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallState {
    session: u64,
    offered_time_ms: u64,
    answer_time_ms: u64,
    /// The call's latest END.
    last_end: Option<u64>,
    /// A START or RESUME stands after `last_end`: the call is up.
    open: bool,
    /// The last record written about it: the call was up then.
    seen_ms: u64,
}

impl CallState {
    fn key(&self, leg: LegId) -> CallKey {
        CallKey {
            leg,
            session: self.session,
            offered_time_ms: self.offered_time_ms,
            answer_time_ms: self.answer_time_ms,
        }
    }
}

/// Who writes the ledger's records, and under which engine epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub host: CompactString,
    pub engine: CompactString,
    pub epoch: u64,
}

/// How long the index remembers a call the engine released, after its END:
/// long enough to RESUME it should an engine that lost its own release (a
/// crash before it saved) bring it back, short enough that a host ending
/// thousands of calls a second does not grow without bound (every call
/// ever seen, ~50 bytes each, was ~5 GB an hour at 25,000 releases a
/// second). Calls ended by the host itself (grace, refusal, loss) are
/// remembered for good: they are the ones that come back.
pub const RELEASED_KEPT_MS: u64 = 10 * 60 * 1000;

/// The per-call index, rebuilt from the ledger at start.
#[derive(Debug, Default)]
pub struct LedgerIndex {
    calls: DenseMap<CallState>,
    /// How many of `calls` are open, kept as records come: what a CARRY
    /// says, without a pass over a million calls at every resync.
    open_count: u64,
    /// Released calls' ENDs, oldest first: (written at, leg, END record).
    released: std::collections::VecDeque<(u64, LegId, u64)>,
    next_record: u64,
    /// Stamped on every new record. The engine and epoch are those of the
    /// latest record until the host connects (records written before that
    /// hold knowledge from that epoch).
    stamp: Stamp,
    /// The highest epoch the ledger has seen of each engine: an engine
    /// offering a lower one went back in time (see
    /// [`LedgerIndex::check_epoch`]).
    epochs: std::collections::BTreeMap<CompactString, u64>,
}

/// An engine offered a controller epoch below one this ledger already
/// holds records under: records written under it would be taken as older
/// knowledge than they are, and calls ended under it never billed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "engine `{engine}` offers controller epoch {offered}, but this ledger already has records under epoch {seen}: \
     its epochs must only grow (it lost its epoch store, or it is not the engine it claims to be)"
)]
pub struct EpochWentBack {
    pub engine: String,
    pub offered: u64,
    pub seen: u64,
}

impl LedgerIndex {
    /// Takes a record read back from the ledger into account.
    pub fn replay(&mut self, record: &CdrRecord) {
        self.next_record = self.next_record.max(record.record + 1);
        // Records stamped as the index stamps them (every record this host
        // writes now) change neither the stamp nor the epochs seen: the
        // look-up is kept for records read back at start.
        if record.epoch != self.stamp.epoch || record.engine != self.stamp.engine {
            self.saw_epoch(&record.engine, record.epoch);
            if record.epoch >= self.stamp.epoch {
                self.stamp.engine.clone_from(&record.engine);
                self.stamp.epoch = record.epoch;
            }
        }
        if record.kind == RecordKind::Carry {
            return;
        }
        let key = record.key();
        let fresh = CallState {
            session: key.session,
            offered_time_ms: key.offered_time_ms,
            answer_time_ms: key.answer_time_ms,
            last_end: None,
            open: false,
            seen_ms: record.time_ms,
        };
        let state = self.calls.get_or_insert(record.leg, fresh);
        let was_open = state.open;
        // Another call on this id: its history starts afresh.
        if state.key(record.leg) != key {
            *state = fresh;
        }
        state.seen_ms = state.seen_ms.max(record.time_ms);
        match record.kind {
            RecordKind::Start | RecordKind::Resume => state.open = true,
            RecordKind::End => {
                state.last_end = Some(record.record);
                state.open = false;
                if record.end_reason == Some(TerminationReason::Released) {
                    self.released
                        .push_back((record.time_ms, record.leg, record.record));
                }
            }
            RecordKind::Carry => unreachable!("a CARRY returns above"),
        }
        match (was_open, state.open) {
            (false, true) => self.open_count += 1,
            (true, false) => self.open_count -= 1,
            _ => {}
        }
        self.forget_released(record.time_ms);
    }

    /// Forgets the released calls whose END is older than
    /// [`RELEASED_KEPT_MS`] at `now_ms`, unless the call came back since.
    fn forget_released(&mut self, now_ms: u64) {
        while let Some(&(at, leg, end)) = self.released.front() {
            if at.saturating_add(RELEASED_KEPT_MS) >= now_ms {
                return;
            }
            self.released.pop_front();
            if self
                .calls
                .get(&leg)
                .is_some_and(|s| !s.open && s.last_end == Some(end))
            {
                self.calls.remove(&leg);
            }
        }
    }

    /// [`LedgerIndex::open`] for a batch of legs (a snapshot chunk's): each
    /// look-up is a miss in an index of millions, so they are all started
    /// together first (`IdIndex::prefetch`).
    pub fn open_all<'a>(
        &mut self,
        legs: impl IntoIterator<Item = &'a CallLeg, IntoIter: Clone>,
        reason: StartReason,
        now_ms: u64,
    ) -> Vec<CdrRecord> {
        let legs = legs.into_iter();
        for leg in legs.clone() {
            self.calls.prefetch(leg.id);
        }
        // Sized for every leg up front: records are 248 bytes, and a
        // growing vector copied a chunk's records several times over (8 %
        // of a standby's time in a takeover).
        let mut records = Vec::with_capacity(legs.size_hint().1.unwrap_or(0));
        records.extend(legs.filter_map(|leg| self.open(leg, reason, now_ms)));
        records
    }

    /// How many calls the index remembers.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Records are written by `host` from now on.
    pub fn set_host(&mut self, host: &str) {
        self.stamp.host = host.into();
    }

    /// Records hold what `engine` said under `epoch` from now on.
    pub fn set_epoch(&mut self, engine: &str, epoch: u64) {
        self.stamp.engine = engine.into();
        self.stamp.epoch = epoch;
        self.saw_epoch(engine, epoch);
    }

    fn saw_epoch(&mut self, engine: &str, epoch: u64) {
        if self.epochs.get(engine).is_none_or(|&seen| seen < epoch) {
            self.epochs.insert(engine.into(), epoch);
        }
    }

    /// Whether `engine` may give this host `epoch`: not below any epoch of
    /// it that the ledger has seen (the same epoch again is a reconnection
    /// the engine did not count, harmless).
    pub fn check_epoch(&self, engine: &str, epoch: u64) -> Result<(), EpochWentBack> {
        match self.epochs.get(engine) {
            Some(&seen) if epoch < seen => Err(EpochWentBack {
                engine: engine.to_string(),
                offered: epoch,
                seen,
            }),
            _ => Ok(()),
        }
    }

    /// The CARRY record: every call the ledger has open is carried under
    /// the current epoch.
    pub fn carry(&mut self, now_ms: u64) -> CdrRecord {
        let calls = self.open_count;
        let number = self.next_record.max(1);
        self.next_record = number + 1;
        let record = CdrRecord {
            host: self.stamp.host.clone(),
            engine: self.stamp.engine.clone(),
            epoch: self.stamp.epoch,
            ..CdrRecord::carry(number, calls, now_ms)
        };
        self.replay(&record);
        record
    }

    /// The number the next record gets.
    pub fn next_record(&self) -> u64 {
        self.next_record.max(1)
    }

    /// Who writes, and under which epoch.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// Makes room for `calls` calls in all (a snapshot announces its size):
    /// the map does not rehash a million entries as it grows.
    pub fn reserve_total(&mut self, calls: usize) {
        self.calls.reserve(calls.saturating_sub(self.calls.len()));
    }

    /// Whether the ledger has `key` open (a START or RESUME and no END since).
    pub fn is_open(&self, key: &CallKey) -> bool {
        self.calls
            .get(&key.leg)
            .is_some_and(|s| s.open && s.key(key.leg) == *key)
    }

    /// The open calls and the last time the ledger saw each of them up.
    pub fn open_calls(&self) -> impl Iterator<Item = (CallKey, u64)> + '_ {
        self.calls
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(leg, s)| (s.key(leg), s.seen_ms))
    }

    /// The record that makes the answered `leg` billable: a START if the
    /// ledger never had the call, a RESUME if it had ended, nothing if it
    /// is open already (a host restart re-adopting its own calls).
    pub fn open(&mut self, leg: &CallLeg, reason: StartReason, now_ms: u64) -> Option<CdrRecord> {
        let key = CallKey::of(leg)?;
        let record = match self.calls.get(&leg.id) {
            Some(s) if s.key(leg.id) == key && s.open => return None,
            Some(s) if s.key(leg.id) == key => CdrRecord {
                resumes: s.last_end,
                ..self.record(RecordKind::Resume, leg, now_ms)
            },
            other => {
                self.warn_if_replacing_open(other, leg);
                CdrRecord {
                    start_reason: Some(reason),
                    ..self.record(RecordKind::Start, leg, now_ms)
                }
            }
        };
        self.replay(&record);
        Some(record)
    }

    /// The records that close the call of `leg`, ended at `end_ms`: its END
    /// (superseding the END a RESUME reopened), preceded by a START if the
    /// ledger never had it (an answered call refused at its first resync
    /// still ran, and is billed). Nothing for an unanswered leg, or for a
    /// call whose END already stands (a second END would double-bill).
    pub fn close(
        &mut self,
        leg: &CallLeg,
        reason: TerminationReason,
        end_ms: u64,
        now_ms: u64,
    ) -> Vec<CdrRecord> {
        let Some(key) = CallKey::of(leg) else {
            return Vec::new();
        };
        let mut records = Vec::with_capacity(1);
        let supersedes = match self.calls.get(&leg.id) {
            Some(s) if s.key(leg.id) == key && !s.open => return records,
            Some(s) if s.key(leg.id) == key => s.last_end,
            other => {
                self.warn_if_replacing_open(other, leg);
                let start = CdrRecord {
                    start_reason: Some(StartReason::Found),
                    ..self.record(RecordKind::Start, leg, now_ms)
                };
                self.replay(&start);
                records.push(start);
                None
            }
        };
        // A call cannot end before its answer, nor before the ledger last
        // saw it up.
        let end_ms = end_ms.max(key.answer_time_ms);
        let end = CdrRecord {
            end_time_ms: Some(end_ms),
            duration_ms: Some(end_ms - key.answer_time_ms),
            end_reason: Some(reason),
            supersedes,
            ..self.record(RecordKind::End, leg, now_ms)
        };
        self.replay(&end);
        records.push(end);
        records
    }

    fn record(&mut self, kind: RecordKind, leg: &CallLeg, now_ms: u64) -> CdrRecord {
        let number = self.next_record.max(1);
        self.next_record = number + 1;
        CdrRecord {
            host: self.stamp.host.clone(),
            engine: self.stamp.engine.clone(),
            epoch: self.stamp.epoch,
            ..CdrRecord::about(number, kind, leg, now_ms)
        }
    }

    /// The supervisor ends a call before another takes its id; if one is
    /// still open here, that rule was broken, and the ledger says so (the
    /// old call stays open, visible to `legsync cdr bill`, never merged).
    fn warn_if_replacing_open(&self, previous: Option<&CallState>, leg: &CallLeg) {
        if let Some(s) = previous.filter(|s| s.open) {
            tracing::error!(
                leg = leg.id,
                open_session = s.session,
                new_session = leg.session_id,
                "a new call takes the id of a call the ledger still has open; the old one stays open"
            );
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
    fn released_calls_are_forgotten_after_a_while_and_host_ended_ones_never() {
        let mut index = LedgerIndex::default();
        let mut records = Vec::new();
        let (released, purged, late) = (answered(1, 1_000), answered(2, 1_000), answered(3, 1_000));
        for call in [&released, &purged, &late] {
            records.extend(index.open(call, StartReason::Answered, 1_000));
        }
        records.extend(index.close(&released, TerminationReason::Released, 2_000, 2_000));
        records.extend(index.close(&purged, TerminationReason::GraceExpired, 2_000, 2_000));
        // Within the time kept, a released call that comes back resumes.
        let soon = 2_000 + RELEASED_KEPT_MS;
        let back = index.open(&released, StartReason::Found, soon).unwrap();
        assert_eq!(back.kind, RecordKind::Resume);
        records.push(back);
        records.extend(index.close(&released, TerminationReason::Released, soon, soon));
        assert_eq!(index.len(), 3);
        // Past it, the released call is forgotten; the purged one is not.
        let later = soon + RELEASED_KEPT_MS + 1;
        records.extend(index.close(&late, TerminationReason::Released, later, later));
        let remembered = |index: &LedgerIndex| {
            let mut legs: Vec<LegId> = index.calls.iter().map(|(leg, _)| leg).collect();
            legs.sort_unstable();
            legs
        };
        assert_eq!(
            remembered(&index),
            [2, 3],
            "2 ended by the host, 3 just released"
        );
        // Rebuilt from its records at a restart, the index forgets the same.
        let mut replayed = LedgerIndex::default();
        for record in &records {
            replayed.replay(record);
        }
        assert_eq!(remembered(&replayed), [2, 3]);
    }

    #[test]
    fn start_end_once_and_the_billing_trap_is_unambiguous() {
        let mut index = LedgerIndex::default();
        let call = answered(7, 1_000);
        let start = index.open(&call, StartReason::Answered, 1_000).unwrap();
        assert_eq!((start.record, start.kind), (1, RecordKind::Start));
        assert_eq!(index.open(&call, StartReason::Found, 1_500), None);
        let first = index
            .close(&call, TerminationReason::GraceExpired, 11_000, 11_000)
            .pop()
            .unwrap();
        assert_eq!(
            (first.record, first.duration_ms, first.supersedes),
            (2, Some(10_000), None)
        );
        assert!(
            index
                .close(&call, TerminationReason::Released, 12_000, 12_000)
                .is_empty(),
            "no second END"
        );
        let resume = index.open(&call, StartReason::Found, 20_000).unwrap();
        assert_eq!(
            (resume.kind, resume.resumes, resume.answer_time_ms),
            (RecordKind::Resume, Some(2), 1_000)
        );
        let last = index
            .close(&call, TerminationReason::Released, 61_000, 61_000)
            .pop()
            .unwrap();
        assert_eq!(last.supersedes, Some(2));
        assert_eq!(last.duration_ms, Some(60_000), "from the original answer");
    }

    #[test]
    fn a_call_the_ledger_never_had_gets_a_start_before_its_end() {
        let mut index = LedgerIndex::default();
        let refused = answered(3, 1_000);
        let records = index.close(&refused, TerminationReason::RefusedByPolicy, 5_000, 5_000);
        let kinds: Vec<_> = records.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [RecordKind::Start, RecordKind::End]);
        assert_eq!(records[0].start_reason, Some(StartReason::Found));
        let mut ringing = answered(4, 10);
        ringing.answered_at_ms = None;
        assert!(
            index
                .close(&ringing, TerminationReason::Released, 20, 20)
                .is_empty()
        );
        assert_eq!(index.open(&ringing, StartReason::Answered, 20), None);
    }

    #[test]
    fn replaying_restores_open_calls_and_their_last_sign_of_life() {
        let mut writer = LedgerIndex::default();
        let up = answered(1, 1_000);
        let gone = answered(2, 1_000);
        let records: Vec<CdrRecord> = [
            writer.open(&up, StartReason::Answered, 1_000),
            writer.open(&gone, StartReason::Answered, 1_000),
        ]
        .into_iter()
        .flatten()
        .chain(writer.close(&gone, TerminationReason::Released, 3_000, 3_000))
        .collect();
        let mut restarted = LedgerIndex::default();
        records.iter().for_each(|r| restarted.replay(r));
        let open: Vec<_> = restarted.open_calls().collect();
        assert_eq!(open, [(CallKey::of(&up).unwrap(), 1_000)]);
        assert_eq!(restarted.open(&up, StartReason::Found, 9_000), None);
        let next = restarted
            .close(&up, TerminationReason::HostLost, 2_000, 9_000)
            .pop()
            .unwrap();
        assert_eq!(next.record, 4, "numbering continues");
    }

    /// The CARRY's count is kept as records come: it equals the open calls
    /// through opens, ends, resumes, a new call on an open call's id, and
    /// released calls forgotten.
    #[test]
    fn the_carry_counts_the_open_calls() {
        let mut index = LedgerIndex::default();
        let carried = |index: &mut LedgerIndex| {
            let claimed = index.carry(1_000).calls.unwrap();
            assert_eq!(claimed, index.open_calls().count() as u64);
            claimed
        };
        for id in 1..=5 {
            index.open(&answered(id, 1_000), StartReason::Answered, 1_000);
        }
        assert_eq!(carried(&mut index), 5);
        index.close(
            &answered(1, 1_000),
            TerminationReason::Released,
            2_000,
            2_000,
        );
        index.close(
            &answered(2, 1_000),
            TerminationReason::GraceExpired,
            2_000,
            2_000,
        );
        assert_eq!(carried(&mut index), 3);
        index.open(&answered(2, 1_000), StartReason::Found, 3_000);
        // Another call on leg 3's id, while 3 is open (a broken rule, kept
        // visible): the index follows the new one.
        index.open(&answered(3, 5_000), StartReason::Answered, 5_000);
        assert_eq!(carried(&mut index), 4);
        let later = 10_000 + 2 * RELEASED_KEPT_MS;
        index.close(
            &answered(4, 1_000),
            TerminationReason::Released,
            later,
            later,
        );
        assert_eq!(carried(&mut index), 3);
    }

    #[test]
    fn another_answer_time_is_another_call() {
        let mut index = LedgerIndex::default();
        index
            .close(&answered(2, 10), TerminationReason::Released, 20, 20)
            .pop()
            .unwrap();
        let other_call = index.close(&answered(2, 50), TerminationReason::Released, 90, 90);
        assert_eq!(other_call.len(), 2, "its own START and END");
        assert_eq!(other_call[1].supersedes, None);
    }
}
