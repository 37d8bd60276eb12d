//! The simulated engine's call state: legs in their states and links, with
//! the transitions a real engine makes. Pure (no I/O): the server feeds it
//! commands and forwards the events it emits to the attached host.
//!
//! Answered legs and the links between them live in the media view (see
//! [`super::media`]), shared copy-on-write with snapshots and saves; the
//! other legs and links live in signalling maps, lost at a restart.

mod conference;

use super::history::{History, HistoryKind};
use super::media::{LegMap, LinkMap, MediaUnits, MediaView, StoredLeg};
use legsync::model::{CallLeg, Direction, LegId, LegState, Link, LinkId, Protocol};
use legsync::protocol::{CommandResult, EngineEvent};
// As the media view's maps (see `media`).
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// The `j`-th of a family of leg ids that FxHash (rustc-hash 2, 64-bit)
/// sends to the same bucket of any table up to 2^32 entries, with the same
/// control byte: FxHash multiplies by an odd constant and rotates, so it can
/// be inverted. `j` from 1 to 2^25.
pub fn fx_colliding_id(j: u64) -> u64 {
    const K: u64 = 0xf1357aea2e62a9c5;
    // K's inverse modulo 2^64 (Newton's iteration doubles the bits each step).
    let mut inverse = K;
    for _ in 0..6 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(K.wrapping_mul(inverse)));
    }
    let hash = (j << 32).rotate_right(26);
    hash.wrapping_mul(inverse)
}

/// A control or host command the state refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

/// Every leg and link of the engine.
#[derive(Debug)]
pub struct EngineState {
    /// Answered legs and the links between two of them (`next_leg` and
    /// `next_link` are kept here too).
    media: MediaView,
    /// Offered, ringing and terminating legs.
    signalling: LegMap,
    /// Links with at least one leg in `signalling`.
    signalling_links: LinkMap,
    /// The link of each linked leg (so a release finds it without a scan).
    link_of: HashMap<LegId, LinkId>,
    /// The mixers of each joined leg (so a release unjoins without a scan).
    mixers_of: HashMap<LegId, Vec<legsync::model::MixerId>>,
    /// Events go to the attached host, if any.
    host: Option<UnboundedSender<EngineEvent>>,
    /// Changes so far, so a saver can tell a quiet moment from a burst.
    changes: u64,
    /// `changes` when the view was last taken for saving.
    saved: u64,
    /// The record of answers and releases (`--history`), for tests.
    history: Option<History>,
}

/// Counts by state, for the `counts` control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub legs: usize,
    pub answered: usize,
    pub transient: usize,
    pub terminating: usize,
    pub links: usize,
    pub mixers: usize,
    pub joins: usize,
}

const NAPS: [(&str, Protocol); 6] = [
    ("SIP_CARRIER_A", Protocol::Sip),
    ("SIP_CARRIER_B", Protocol::Sip),
    ("SIP_ENTERPRISE", Protocol::Sip),
    ("ISDN_SPAN_1", Protocol::Isdn),
    ("SS7_LINKSET_2", Protocol::Ss7),
    ("CAS_R2_3", Protocol::Cas),
];

impl Default for EngineState {
    /// An engine with no calls; ids start at 1.
    fn default() -> Self {
        EngineState::from_media_units(MediaUnits::default())
    }
}

impl EngineState {
    /// The state after an engine (re)start: only the media units' legs.
    pub fn from_media_units(units: MediaUnits) -> Self {
        let next_leg = units
            .next_leg
            .max(units.legs.iter().map(|l| l.id + 1).max().unwrap_or(1));
        let next_link = units
            .next_link
            .max(units.links.iter().map(|l| l.id + 1).max().unwrap_or(1));
        let next_mixer = units
            .next_mixer
            .max(units.mixers.iter().map(|m| m.id + 1).max().unwrap_or(1));
        let mut state = EngineState {
            media: MediaView {
                next_leg,
                next_link,
                next_mixer,
                ..MediaView::default()
            },
            signalling: LegMap::default(),
            signalling_links: LinkMap::default(),
            link_of: HashMap::default(),
            mixers_of: HashMap::default(),
            host: None,
            changes: 0,
            saved: 0,
            history: None,
        };
        for leg in units.legs {
            state.put_leg(leg);
        }
        for link in units.links {
            state.link_of.insert(link.leg_a, link.id);
            state.link_of.insert(link.leg_b, link.id);
            state.put_link(link);
        }
        state.restore_conferences(units.mixers, units.joins);
        state
    }

    /// Starts recording answers and releases in `history`; every answered
    /// call up now is recorded as `up`.
    pub fn set_history(&mut self, mut history: History) {
        for stored in self.media.legs.values() {
            history.record(HistoryKind::Up, &stored.leg);
        }
        self.history = Some(history);
    }

    /// Test-only (`--reuse-ids`): new legs take ids from just past the
    /// highest answered leg, so the ids of transient legs a restart dropped
    /// come again, as a buggy or wrapping engine would give them.
    pub fn reuse_ids(&mut self) {
        self.media.next_leg = self.media.legs.keys().max().map_or(1, |id| id + 1);
    }

    fn record(&mut self, event: HistoryKind, leg: &CallLeg) {
        if let Some(history) = &mut self.history {
            history.record(event, leg);
        }
    }

    /// `count` answered legs joined in `count / 2` links, with realistic
    /// NAPs and numbers; 1 % of the calls go to `1900` premium numbers.
    pub fn preload(&mut self, count: u64, now_ms: u64) {
        self.preload_with(count, now_ms, false);
    }

    /// [`EngineState::preload`], with `crafted` ids chosen to collide under
    /// FxHash (a hostile engine's ids, for the hash-flooding measurement).
    pub fn preload_with(&mut self, count: u64, now_ms: u64, crafted: bool) {
        Arc::make_mut(&mut self.media.legs).reserve(count as usize);
        Arc::make_mut(&mut self.media.links).reserve(count as usize / 2);
        let mut previous = 0;
        for i in 0..count {
            let id = if crafted {
                fx_colliding_id(i + 1)
            } else {
                let id = self.media.next_leg;
                self.media.next_leg += 1;
                id
            };
            let call = i / 2;
            let (nap, protocol) = NAPS[(i % NAPS.len() as u64) as usize];
            let called = if call % 100 == 7 {
                compact_str::format_compact!("1900555{:04}", call % 10_000)
            } else {
                compact_str::format_compact!("1514{:07}", (call * 7919) % 10_000_000)
            };
            self.put_leg(CallLeg {
                id,
                session_id: call + 1,
                direction: if i % 2 == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                protocol,
                nap: nap.into(),
                calling: compact_str::format_compact!("1438{:07}", (call * 104_729) % 10_000_000),
                called,
                offered_at_ms: now_ms - 60_000 - (call % 3_600) * 1000,
                answered_at_ms: Some(now_ms - 55_000 - (call % 3_600) * 1000),
                linked_to: None,
                state: LegState::Answered,
            });
            if i % 2 == 1 {
                self.link(previous, id).expect("fresh legs link");
            }
            previous = id;
        }
        self.touch();
    }

    /// Releases `release` answered legs (spread over the id range) and adds
    /// `add` answered legs in linked pairs: the churn of a short outage.
    pub fn churn(&mut self, release: usize, add: u64, now_ms: u64) {
        let answered = self.answered_ids();
        let step = (answered.len() / release.max(1)).max(1);
        for id in answered.into_iter().step_by(step).take(release) {
            let _ = self.release(id);
        }
        self.preload(add, now_ms);
    }

    /// `count` new calls, each offered and answered at once, with events
    /// (the live path's answers: `calls N`).
    pub fn calls(&mut self, count: u64, now_ms: u64) {
        for i in 0..count {
            self.numbered_call(i, now_ms);
        }
    }

    /// The `i`-th of a family of ordinary (never premium) calls, offered
    /// and answered at once; returns its leg id.
    pub fn numbered_call(&mut self, i: u64, now_ms: u64) -> LegId {
        let (nap, protocol) = NAPS[(i % NAPS.len() as u64) as usize];
        let calling = compact_str::format_compact!("1438{:07}", (i * 104_729) % 10_000_000);
        let called = compact_str::format_compact!("1514{:07}", (i * 7919) % 10_000_000);
        self.call(nap, &calling, &called, Direction::Inbound, protocol, now_ms)
    }

    /// The ids of the answered legs, ascending.
    pub fn answered_ids(&self) -> Vec<LegId> {
        let mut ids: Vec<LegId> = self.media.legs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The host went away: nothing can answer transient legs, so they are
    /// dropped, and terminating legs finish releasing.
    pub fn detach_host(&mut self) {
        self.host = None;
        self.drop_transient();
    }

    /// Detaches the host that was given `events`, if it is still the one
    /// attached (a newer host may have attached since).
    pub fn detach_host_if(&mut self, events: &UnboundedSender<EngineEvent>) {
        if self.host.as_ref().is_some_and(|h| h.same_channel(events)) {
            self.detach_host();
        }
    }

    fn drop_transient(&mut self) {
        let gone: Vec<LegId> = self.signalling.keys().copied().collect();
        for id in gone {
            let _ = self.release(id);
        }
    }

    pub fn host_attached(&self) -> bool {
        self.host.is_some()
    }

    /// The active legs and the links between them, sorted by id.
    pub fn snapshot(&self) -> (Vec<CallLeg>, Vec<Link>) {
        let units = self.media_units();
        (units.legs, units.links)
    }

    /// Attaches a host and returns the snapshot it must receive, taken
    /// atomically with the attach: every later change reaches the host as
    /// an event. Only reference counts are taken under the lock; the legs
    /// are walked and encoded while streaming.
    pub fn attach_host(&mut self, events: UnboundedSender<EngineEvent>) -> MediaView {
        self.host = Some(events);
        self.media.clone()
    }

    /// What the media units hold right now, shared: cheap under a lock.
    pub fn media_view(&self) -> MediaView {
        self.media.clone()
    }

    /// What the media units hold right now, sorted by id.
    pub fn media_units(&self) -> MediaUnits {
        self.media.to_units()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts {
            legs: self.media.legs.len() + self.signalling.len(),
            answered: self.media.legs.len(),
            links: self.media.links.len() + self.signalling_links.len(),
            mixers: self.media.mixers.len(),
            joins: self.media.joins.len(),
            ..Counts::default()
        };
        for leg in self.signalling.values() {
            match leg.state {
                LegState::Terminating => counts.terminating += 1,
                LegState::Offered | LegState::Ringing => counts.transient += 1,
                LegState::Answered => unreachable!("answered legs live in the media view"),
            }
        }
        counts
    }

    pub fn legs(&self) -> impl Iterator<Item = &CallLeg> {
        self.media
            .legs
            .values()
            .map(|stored| &stored.leg)
            .chain(self.signalling.values())
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.media
            .links
            .values()
            .chain(self.signalling_links.values())
    }

    /// A new ringing leg.
    pub fn ring(
        &mut self,
        nap: &str,
        calling: &str,
        called: &str,
        direction: Direction,
        protocol: Protocol,
        now_ms: u64,
    ) -> Result<LegId, SimError> {
        // With no controlling host nobody can answer the call: the engine
        // refuses it (as it drops transient legs when its host goes away).
        if self.host.is_none() {
            return Err(SimError(
                "no host is connected: the engine refuses new calls (`call` makes an answered one)"
                    .into(),
            ));
        }
        Ok(self.offer(nap, calling, called, direction, protocol, now_ms))
    }

    /// A call answered at once (`call`): what the engine carries when a
    /// call is set up without its host, by the media units' own logic.
    pub fn call(
        &mut self,
        nap: &str,
        calling: &str,
        called: &str,
        direction: Direction,
        protocol: Protocol,
        now_ms: u64,
    ) -> LegId {
        let id = self.offer(nap, calling, called, direction, protocol, now_ms);
        self.answer(id, now_ms).expect("a fresh leg rings");
        id
    }

    fn offer(
        &mut self,
        nap: &str,
        calling: &str,
        called: &str,
        direction: Direction,
        protocol: Protocol,
        now_ms: u64,
    ) -> LegId {
        let id = self.media.next_leg;
        self.media.next_leg += 1;
        let leg = CallLeg {
            id,
            session_id: id,
            direction,
            protocol,
            nap: nap.into(),
            calling: calling.into(),
            called: called.into(),
            offered_at_ms: now_ms,
            answered_at_ms: None,
            linked_to: None,
            state: LegState::Ringing,
        };
        self.put_leg(leg.clone());
        // Saved like any change: a restart never hands this id out again.
        self.touch();
        self.emit(EngineEvent::LegOffered(leg));
        id
    }

    pub fn answer(&mut self, id: LegId, now_ms: u64) -> Result<(), SimError> {
        let leg = self.leg(id)?;
        if !matches!(leg.state, LegState::Offered | LegState::Ringing) {
            return Err(SimError(format!(
                "leg {id} is {:?}, not ringing",
                leg.state
            )));
        }
        let mut leg = self.take_leg(id).expect("leg exists");
        leg.state = LegState::Answered;
        leg.answered_at_ms = Some(now_ms);
        self.put_leg(leg.clone());
        self.touch();
        self.record(HistoryKind::Answer, &leg);
        self.emit(EngineEvent::LegAnswered(leg));
        Ok(())
    }

    pub fn terminate(&mut self, id: LegId) -> Result<(), SimError> {
        if self.leg(id)?.state == LegState::Terminating {
            return Err(SimError(format!("leg {id} is already terminating")));
        }
        let mut leg = self.take_leg(id).expect("leg exists");
        leg.state = LegState::Terminating;
        self.record(HistoryKind::Terminate, &leg);
        self.put_leg(leg);
        self.touch();
        self.emit(EngineEvent::LegTerminating(id));
        Ok(())
    }

    /// Releases a leg, undoing its link and its joins first.
    pub fn release(&mut self, id: LegId) -> Result<(), SimError> {
        self.leg(id)?;
        if let Some(link) = self.link_of.get(&id).copied() {
            self.unlink(link)?;
        }
        self.unjoin_all(id);
        if let Some(leg) = self.take_leg(id) {
            self.record(HistoryKind::Release, &leg);
        }
        self.touch();
        self.emit(EngineEvent::LegReleased(id));
        Ok(())
    }

    pub fn link(&mut self, a: LegId, b: LegId) -> Result<LinkId, SimError> {
        if a == b {
            return Err(SimError("a leg cannot be linked to itself".into()));
        }
        for id in [a, b] {
            if let Some(other) = self.leg(id)?.linked_to {
                return Err(SimError(format!("leg {id} is already linked to {other}")));
            }
        }
        let id = self.media.next_link;
        self.media.next_link += 1;
        self.set_linked_to(a, Some(b));
        self.set_linked_to(b, Some(a));
        self.link_of.insert(a, id);
        self.link_of.insert(b, id);
        let link = Link {
            id,
            leg_a: a,
            leg_b: b,
        };
        self.put_link(link);
        self.touch();
        self.emit(EngineEvent::LinkCreated(link));
        Ok(id)
    }

    pub fn unlink(&mut self, id: LinkId) -> Result<(), SimError> {
        let link = self
            .take_link(id)
            .ok_or_else(|| SimError(format!("no link {id}")))?;
        for leg in [link.leg_a, link.leg_b] {
            self.link_of.remove(&leg);
            self.set_linked_to(leg, None);
        }
        self.touch();
        self.emit(EngineEvent::LinkRemoved(id));
        Ok(())
    }

    /// A host's `DropLeg` command.
    pub fn drop_leg(&mut self, id: LegId) -> CommandResult {
        match self.release(id) {
            Ok(()) => CommandResult::Done,
            Err(_) => CommandResult::NotFound,
        }
    }

    /// A host's `DropLink` command.
    pub fn drop_link(&mut self, id: LinkId) -> CommandResult {
        match self.unlink(id) {
            Ok(()) => CommandResult::Done,
            Err(_) => CommandResult::NotFound,
        }
    }

    fn leg(&self, id: LegId) -> Result<&CallLeg, SimError> {
        self.media
            .legs
            .get(&id)
            .map(|stored| &stored.leg)
            .or_else(|| self.signalling.get(&id))
            .ok_or_else(|| SimError(format!("no leg {id}")))
    }

    /// Sets a leg's link peer (re-encoding it if answered); no-op for an
    /// unknown leg.
    fn set_linked_to(&mut self, id: LegId, peer: Option<LegId>) {
        if self.media.legs.contains_key(&id) {
            let legs = Arc::make_mut(&mut self.media.legs);
            if let Some(stored) = legs.get_mut(&id) {
                let mut leg = stored.leg.clone();
                leg.linked_to = peer;
                *stored = StoredLeg::new(leg);
            }
        } else if let Some(leg) = self.signalling.get_mut(&id) {
            leg.linked_to = peer;
        }
    }

    /// Puts a leg in the map its state belongs to, and moves its link to
    /// the media view when both of its legs are answered.
    fn put_leg(&mut self, leg: CallLeg) {
        let id = leg.id;
        if leg.state == LegState::Answered {
            Arc::make_mut(&mut self.media.legs).insert(id, StoredLeg::new(leg));
        } else {
            self.signalling.insert(id, leg);
        }
        if let Some(link) = self
            .link_of
            .get(&id)
            .copied()
            .and_then(|l| self.take_link(l))
        {
            self.put_link(link);
        }
    }

    /// Takes a leg out of its map, and its link out of the media view.
    fn take_leg(&mut self, id: LegId) -> Option<CallLeg> {
        let leg = if self.media.legs.contains_key(&id) {
            Arc::make_mut(&mut self.media.legs)
                .remove(&id)
                .map(|stored| stored.leg)
        } else {
            self.signalling.remove(&id)
        };
        if let Some(link) = self
            .link_of
            .get(&id)
            .copied()
            .and_then(|l| self.take_link(l))
        {
            self.signalling_links.insert(link.id, link);
        }
        leg
    }

    /// Puts a link in the media view if both of its legs are answered.
    fn put_link(&mut self, link: Link) {
        let answered = |id| self.media.legs.contains_key(&id);
        if answered(link.leg_a) && answered(link.leg_b) {
            Arc::make_mut(&mut self.media.links).insert(link.id, link);
        } else {
            self.signalling_links.insert(link.id, link);
        }
    }

    fn take_link(&mut self, id: LinkId) -> Option<Link> {
        if self.media.links.contains_key(&id) {
            Arc::make_mut(&mut self.media.links).remove(&id)
        } else {
            self.signalling_links.remove(&id)
        }
    }

    /// Changes made so far (any change, saved or not).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Something changed since the view was last taken for saving.
    pub fn unsaved(&self) -> bool {
        self.changes != self.saved
    }

    /// The view to save; later changes count as unsaved.
    pub fn view_to_save(&mut self) -> MediaView {
        self.saved = self.changes;
        self.media_view()
    }

    fn touch(&mut self) {
        self.changes += 1;
    }

    fn emit(&mut self, event: EngineEvent) {
        if let Some(host) = &self.host
            && host.send(event).is_err()
        {
            self.host = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine with a host attached (it takes new calls only then).
    fn hosted() -> (
        EngineState,
        tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    ) {
        let mut state = EngineState::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        state.attach_host(tx);
        (state, rx)
    }

    #[test]
    fn a_restart_keeps_only_answered_legs_and_their_links() {
        let (mut state, _events) = hosted();
        let a = state
            .ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        let b = state
            .ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        let c = state
            .ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        let d = state
            .ring("SIP_A", "1", "2", Direction::Outbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(b, 2).unwrap();
        state.terminate(b).unwrap();
        state.answer(c, 2).unwrap();
        state.answer(d, 2).unwrap();
        let link = state.link(c, d).unwrap();

        let restarted = EngineState::from_media_units(state.media_units());
        let (legs, links) = restarted.snapshot();
        assert_eq!(legs.iter().map(|l| l.id).collect::<Vec<_>>(), [c, d]);
        assert_eq!(
            links,
            [Link {
                id: link,
                leg_a: c,
                leg_b: d
            }]
        );
        assert!(restarted.legs().all(|l| l.id != a));
        assert!(restarted.media.next_leg > d, "new ids never reuse old ones");
    }

    #[test]
    fn detaching_the_host_drops_transient_and_terminating_legs() {
        let (mut state, _events) = hosted();
        let ringing = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        let up = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(up, 2).unwrap();
        state.detach_host();
        assert_eq!(
            state.counts(),
            Counts {
                legs: 1,
                answered: 1,
                ..Counts::default()
            }
        );
        assert!(state.drop_leg(ringing) == CommandResult::NotFound);
    }

    #[test]
    fn releasing_a_linked_leg_removes_its_link_and_events_follow() {
        let mut state = EngineState::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        state.preload(4, 100_000_000);
        let (legs, links) = state.snapshot();
        let sent = state.attach_host(tx);
        assert_eq!((sent.legs.len(), sent.links.len()), (4, 2));
        state.release(legs[0].id).unwrap();
        // The snapshot being streamed is the state at attach: later changes
        // reach the host as events only.
        assert_eq!(sent.legs[&legs[0].id].leg.state, LegState::Answered);
        assert_eq!(sent.legs[&legs[1].id].leg.linked_to, Some(legs[0].id));
        assert_eq!(sent.links.len(), 2);
        assert_eq!(
            rx.try_recv().unwrap(),
            EngineEvent::LinkRemoved(links[0].id)
        );
        assert_eq!(rx.try_recv().unwrap(), EngineEvent::LegReleased(legs[0].id));
        assert_eq!(state.counts().links, 1);
        assert_eq!(
            state.legs().find(|l| l.id == legs[1].id).unwrap().linked_to,
            None
        );
    }

    #[test]
    fn a_link_is_in_the_snapshot_only_while_both_legs_are_answered() {
        let (mut state, _events) = hosted();
        let a = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        let b = state
            .ring("N", "1", "2", Direction::Outbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(a, 2).unwrap();
        let link = state.link(a, b).unwrap();
        let in_snapshot = |state: &EngineState| {
            let (legs, links) = state.snapshot();
            (legs.len(), links.iter().any(|l| l.id == link))
        };
        assert_eq!(in_snapshot(&state), (1, false));
        state.answer(b, 3).unwrap();
        assert_eq!(in_snapshot(&state), (2, true));
        state.terminate(a).unwrap();
        assert_eq!(in_snapshot(&state), (1, false));
        assert_eq!(state.counts().links, 1, "the link lives on in signalling");
        state.release(a).unwrap();
        assert_eq!(state.counts().links, 0);
        assert_eq!(state.leg(b).unwrap().linked_to, None);
    }

    #[test]
    fn the_history_records_answers_releases_and_calls_up_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let (mut state, _events) = hosted();
        let up = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(up, 2).unwrap();
        state.set_history(History::open(&path).unwrap());
        let a = state
            .ring("N", "3", "4", Direction::Inbound, Protocol::Sip, 5)
            .unwrap();
        let ringing = state
            .ring("N", "5", "6", Direction::Inbound, Protocol::Sip, 5)
            .unwrap();
        state.answer(a, 7).unwrap();
        state.release(a).unwrap();
        state.release(ringing).unwrap();
        let lines = History::read(&path).unwrap();
        let seen: Vec<_> = lines
            .iter()
            .map(|l| (l.event, l.leg, l.answer_time_ms))
            .collect();
        assert_eq!(
            seen,
            [
                (HistoryKind::Up, up, 2),
                (HistoryKind::Answer, a, 7),
                (HistoryKind::Release, a, 7)
            ],
            "unanswered legs are not billable: not recorded"
        );
    }

    #[test]
    fn crafted_ids_really_collide_under_fxhash() {
        use std::hash::BuildHasher;
        let fx = rustc_hash::FxBuildHasher;
        let hashes: Vec<u64> = (1..=1000)
            .map(|j| fx.hash_one(fx_colliding_id(j)))
            .collect();
        assert!(hashes.iter().all(|h| h & 0xffff_ffff == 0 && h >> 57 == 0));
        let mut ids: Vec<u64> = (1..=1000).map(fx_colliding_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1000, "distinct ids");
    }

    #[test]
    fn ids_are_never_reused_unless_asked() {
        let (mut state, _events) = hosted();
        let up = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(up, 2).unwrap();
        let dropped = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 3)
            .unwrap();
        let mut restarted = EngineState::from_media_units(state.media_units());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        restarted.attach_host(tx);
        let next = restarted
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 4)
            .unwrap();
        assert!(next > dropped);
        restarted.reuse_ids();
        let reused = restarted
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 5)
            .unwrap();
        assert_eq!(reused, dropped, "--reuse-ids gives the dropped id again");
    }

    #[test]
    fn invalid_transitions_are_refused() {
        let (mut state, _events) = hosted();
        let a = state
            .ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1)
            .unwrap();
        state.answer(a, 2).unwrap();
        assert!(state.answer(a, 3).is_err());
        assert!(state.link(a, a).is_err());
        assert!(state.link(a, 999).is_err());
        assert!(state.unlink(5).is_err());
    }
}
