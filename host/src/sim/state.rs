//! The simulated engine's call state: legs in their states and links, with
//! the transitions a real engine makes. Pure (no I/O): the server feeds it
//! commands and forwards the events it emits to the attached host.

use crate::model::{CallLeg, Direction, LegId, LegState, Link, LinkId, Protocol};
use crate::protocol::{CommandResult, EngineEvent};
use serde::{Deserialize, Serialize};
// Leg and link ids come from the engine, a trusted peer: a fast
// non-keyed hash is safe here and twice as fast as SipHash.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// A control or host command the state refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

/// What survives an engine restart: the active legs and their links, as the
/// media units hold them. Saved in the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUnits {
    pub legs: Vec<CallLeg>,
    pub links: Vec<Link>,
    pub next_leg: u64,
    pub next_link: u64,
}

/// Every leg and link of the engine.
#[derive(Debug)]
pub struct EngineState {
    /// Shared so that a host's snapshot is a million reference counts, not
    /// a million copies (a change after the snapshot copies that one leg).
    legs: HashMap<LegId, Arc<CallLeg>>,
    links: HashMap<LinkId, Link>,
    /// The link of each linked leg (so a release finds it without a scan).
    link_of: HashMap<LegId, LinkId>,
    next_leg: u64,
    next_link: u64,
    /// Events go to the attached host, if any.
    host: Option<UnboundedSender<EngineEvent>>,
    /// The media-unit view changed since it was last saved.
    pub dirty: bool,
}

/// Counts by state, for the `counts` control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub legs: usize,
    pub answered: usize,
    pub transient: usize,
    pub terminating: usize,
    pub links: usize,
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
        let link_of = units
            .links
            .iter()
            .flat_map(|l| [(l.leg_a, l.id), (l.leg_b, l.id)])
            .collect();
        EngineState {
            legs: units
                .legs
                .into_iter()
                .map(|l| (l.id, Arc::new(l)))
                .collect(),
            links: units.links.into_iter().map(|l| (l.id, l)).collect(),
            link_of,
            next_leg,
            next_link,
            host: None,
            dirty: false,
        }
    }

    /// `count` answered legs joined in `count / 2` links, with realistic
    /// NAPs and numbers; 1 % of the calls go to `1900` premium numbers.
    pub fn preload(&mut self, count: u64, now_ms: u64) {
        self.legs.reserve(count as usize);
        self.links.reserve(count as usize / 2);
        for i in 0..count {
            let id = self.next_leg;
            self.next_leg += 1;
            let call = i / 2;
            let (nap, protocol) = NAPS[(i % NAPS.len() as u64) as usize];
            let called = if call % 100 == 7 {
                compact_str::format_compact!("1900555{:04}", call % 10_000)
            } else {
                compact_str::format_compact!("1514{:07}", (call * 7919) % 10_000_000)
            };
            let leg = CallLeg {
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
            };
            self.legs.insert(id, Arc::new(leg));
            if i % 2 == 1 {
                self.link(id - 1, id).expect("fresh legs link");
            }
        }
        self.dirty = true;
    }

    /// Releases `release` answered legs (spread over the id range) and adds
    /// `add` answered legs in linked pairs: the churn of a short outage.
    pub fn churn(&mut self, release: usize, add: u64, now_ms: u64) {
        let mut answered: Vec<LegId> = self
            .legs
            .values()
            .filter(|l| l.state == LegState::Answered)
            .map(|l| l.id)
            .collect();
        answered.sort_unstable();
        let step = (answered.len() / release.max(1)).max(1);
        for id in answered.into_iter().step_by(step).take(release) {
            let _ = self.release(id);
        }
        self.preload(add, now_ms);
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
        let gone: Vec<LegId> = self
            .legs
            .values()
            .filter(|l| !l.state.survives_engine_restart())
            .map(|l| l.id)
            .collect();
        for id in gone {
            let _ = self.release(id);
        }
    }

    pub fn host_attached(&self) -> bool {
        self.host.is_some()
    }

    /// The active legs and the links between them, sorted by id.
    pub fn snapshot(&self) -> (Vec<CallLeg>, Vec<Link>) {
        let (shared, mut links) = self.snapshot_in_table_order();
        let mut legs: Vec<CallLeg> = shared.iter().map(|l| (**l).clone()).collect();
        legs.sort_unstable_by_key(|l| l.id);
        links.sort_unstable_by_key(|l| l.id);
        (legs, links)
    }

    /// The active legs in table order (stable from one snapshot to the next,
    /// as a real engine walks its own table) and the links between them.
    fn snapshot_in_table_order(&self) -> (Vec<Arc<CallLeg>>, Vec<Link>) {
        let legs = self
            .legs
            .values()
            .filter(|l| l.state == LegState::Answered)
            .cloned()
            .collect();
        let answered = |id: &LegId| {
            self.legs
                .get(id)
                .is_some_and(|l| l.state == LegState::Answered)
        };
        let links = self
            .links
            .values()
            .filter(|l| answered(&l.leg_a) && answered(&l.leg_b))
            .copied()
            .collect();
        (legs, links)
    }

    /// Attaches a host and returns the snapshot it must receive, taken
    /// atomically with the attach: every later change reaches the host as
    /// an event. Sharing the legs is all that happens under the lock; they
    /// are encoded while streaming.
    pub fn attach_host(
        &mut self,
        events: UnboundedSender<EngineEvent>,
    ) -> (Vec<Arc<CallLeg>>, Vec<Link>) {
        let snapshot = self.snapshot_in_table_order();
        self.host = Some(events);
        snapshot
    }

    /// What the media units hold right now.
    pub fn media_units(&self) -> MediaUnits {
        let (legs, links) = self.snapshot();
        MediaUnits {
            legs,
            links,
            next_leg: self.next_leg,
            next_link: self.next_link,
        }
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts {
            legs: self.legs.len(),
            links: self.links.len(),
            ..Counts::default()
        };
        for leg in self.legs.values() {
            match leg.state {
                LegState::Answered => counts.answered += 1,
                LegState::Terminating => counts.terminating += 1,
                LegState::Offered | LegState::Ringing => counts.transient += 1,
            }
        }
        counts
    }

    pub fn legs(&self) -> impl Iterator<Item = &CallLeg> {
        self.legs.values().map(|leg| &**leg)
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
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
    ) -> LegId {
        let id = self.next_leg;
        self.next_leg += 1;
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
        self.legs.insert(id, Arc::new(leg.clone()));
        self.emit(EngineEvent::LegOffered(leg));
        id
    }

    pub fn answer(&mut self, id: LegId, now_ms: u64) -> Result<(), SimError> {
        let leg = self.leg_mut(id)?;
        if !matches!(leg.state, LegState::Offered | LegState::Ringing) {
            return Err(SimError(format!(
                "leg {id} is {:?}, not ringing",
                leg.state
            )));
        }
        leg.state = LegState::Answered;
        leg.answered_at_ms = Some(now_ms);
        self.dirty = true;
        self.emit(EngineEvent::LegAnswered {
            leg: id,
            at_ms: now_ms,
        });
        Ok(())
    }

    pub fn terminate(&mut self, id: LegId) -> Result<(), SimError> {
        let leg = self.leg_mut(id)?;
        if leg.state == LegState::Terminating {
            return Err(SimError(format!("leg {id} is already terminating")));
        }
        leg.state = LegState::Terminating;
        self.dirty = true;
        self.emit(EngineEvent::LegTerminating(id));
        Ok(())
    }

    /// Releases a leg, undoing its link first.
    pub fn release(&mut self, id: LegId) -> Result<(), SimError> {
        self.leg_mut(id)?;
        if let Some(link) = self.link_of.get(&id).copied() {
            self.unlink(link)?;
        }
        self.legs.remove(&id);
        self.dirty = true;
        self.emit(EngineEvent::LegReleased(id));
        Ok(())
    }

    pub fn link(&mut self, a: LegId, b: LegId) -> Result<LinkId, SimError> {
        if a == b {
            return Err(SimError("a leg cannot be linked to itself".into()));
        }
        for id in [a, b] {
            if let Some(other) = self.leg_mut(id)?.linked_to {
                return Err(SimError(format!("leg {id} is already linked to {other}")));
            }
        }
        let id = self.next_link;
        self.next_link += 1;
        self.leg_mut(a)?.linked_to = Some(b);
        self.leg_mut(b)?.linked_to = Some(a);
        let link = Link {
            id,
            leg_a: a,
            leg_b: b,
        };
        self.links.insert(id, link);
        self.link_of.insert(a, id);
        self.link_of.insert(b, id);
        self.dirty = true;
        self.emit(EngineEvent::LinkCreated(link));
        Ok(id)
    }

    pub fn unlink(&mut self, id: LinkId) -> Result<(), SimError> {
        let link = self
            .links
            .remove(&id)
            .ok_or_else(|| SimError(format!("no link {id}")))?;
        for leg in [link.leg_a, link.leg_b] {
            self.link_of.remove(&leg);
            if let Some(leg) = self.legs.get_mut(&leg) {
                Arc::make_mut(leg).linked_to = None;
            }
        }
        self.dirty = true;
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

    fn leg_mut(&mut self, id: LegId) -> Result<&mut CallLeg, SimError> {
        self.legs
            .get_mut(&id)
            .map(Arc::make_mut)
            .ok_or_else(|| SimError(format!("no leg {id}")))
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

    #[test]
    fn a_restart_keeps_only_answered_legs_and_their_links() {
        let mut state = EngineState::default();
        let a = state.ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1);
        let b = state.ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1);
        let c = state.ring("SIP_A", "1", "2", Direction::Inbound, Protocol::Sip, 1);
        let d = state.ring("SIP_A", "1", "2", Direction::Outbound, Protocol::Sip, 1);
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
        assert!(restarted.next_leg > d, "new ids never reuse old ones");
    }

    #[test]
    fn detaching_the_host_drops_transient_and_terminating_legs() {
        let mut state = EngineState::default();
        let ringing = state.ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1);
        let up = state.ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1);
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
        let (sent_legs, sent_links) = state.attach_host(tx);
        assert_eq!((sent_legs.len(), sent_links.len()), (4, 2));
        state.release(legs[0].id).unwrap();
        // The snapshot being streamed is the state at attach: later changes
        // reach the host as events only.
        let sent = |id| sent_legs.iter().find(|l| l.id == id).unwrap();
        assert_eq!(sent(legs[0].id).state, LegState::Answered);
        assert_eq!(sent(legs[1].id).linked_to, Some(legs[0].id));
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
    fn invalid_transitions_are_refused() {
        let mut state = EngineState::default();
        let a = state.ring("N", "1", "2", Direction::Inbound, Protocol::Sip, 1);
        state.answer(a, 2).unwrap();
        assert!(state.answer(a, 3).is_err());
        assert!(state.link(a, a).is_err());
        assert!(state.link(a, 999).is_err());
        assert!(state.unlink(5).is_err());
    }
}
