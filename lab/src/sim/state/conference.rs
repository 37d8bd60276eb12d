//! Conference mixers in the simulated engine: created empty, legs joined
//! and unjoined, freed (unjoining its legs first). A mixer is a media
//! unit's resource, so it survives an engine restart, with the joins of the
//! legs that survive it (answered ones).

use super::{EngineState, SimError};
use legsync::model::{Join, JoinRole, LegId, Mixer, MixerId};
use legsync::protocol::{CommandResult, EngineEvent};
use std::sync::Arc;

impl EngineState {
    /// Puts back a restart's mixers and the joins of the legs that came back.
    pub(super) fn restore_conferences(&mut self, mixers: Vec<Mixer>, joins: Vec<Join>) {
        let map = Arc::make_mut(&mut self.media.mixers);
        for mixer in mixers {
            map.insert(mixer.id, mixer);
        }
        for join in joins {
            if self.media.mixers.contains_key(&join.mixer)
                && self.media.legs.contains_key(&join.leg)
            {
                Arc::make_mut(&mut self.media.joins).insert((join.mixer, join.leg), join.role);
                self.mixers_of.entry(join.leg).or_default().push(join.mixer);
            }
        }
    }

    /// A new, empty mixer named `name`.
    pub fn create_mixer(&mut self, name: &str, now_ms: u64) -> MixerId {
        let id = self.media.next_mixer;
        self.media.next_mixer += 1;
        let mixer = Mixer {
            id,
            created_at_ms: now_ms,
            name: name.into(),
        };
        Arc::make_mut(&mut self.media.mixers).insert(id, mixer.clone());
        self.touch();
        self.emit(EngineEvent::MixerCreated(mixer));
        id
    }

    /// Joins `leg` to `mixer` as `role`.
    pub fn join(&mut self, leg: LegId, mixer: MixerId, role: JoinRole) -> Result<(), SimError> {
        self.leg(leg)?;
        if !self.media.mixers.contains_key(&mixer) {
            return Err(SimError(format!("no mixer {mixer}")));
        }
        if self.media.joins.contains_key(&(mixer, leg)) {
            return Err(SimError(format!("leg {leg} is already in mixer {mixer}")));
        }
        Arc::make_mut(&mut self.media.joins).insert((mixer, leg), role);
        self.mixers_of.entry(leg).or_default().push(mixer);
        self.touch();
        self.emit(EngineEvent::LegJoined(Join { mixer, leg, role }));
        Ok(())
    }

    /// Takes `leg` out of `mixer`.
    pub fn unjoin(&mut self, leg: LegId, mixer: MixerId) -> Result<(), SimError> {
        if Arc::make_mut(&mut self.media.joins)
            .remove(&(mixer, leg))
            .is_none()
        {
            return Err(SimError(format!("leg {leg} is not in mixer {mixer}")));
        }
        if let Some(mixers) = self.mixers_of.get_mut(&leg) {
            mixers.retain(|&m| m != mixer);
            if mixers.is_empty() {
                self.mixers_of.remove(&leg);
            }
        }
        self.touch();
        self.emit(EngineEvent::LegUnjoined { mixer, leg });
        Ok(())
    }

    /// Takes `leg` out of every mixer it is in (before its release).
    pub(super) fn unjoin_all(&mut self, leg: LegId) {
        for mixer in self.mixers_of.get(&leg).cloned().unwrap_or_default() {
            let _ = self.unjoin(leg, mixer);
        }
    }

    /// Frees a mixer, unjoining its legs first (they live on).
    pub fn free_mixer(&mut self, mixer: MixerId) -> Result<(), SimError> {
        if !self.media.mixers.contains_key(&mixer) {
            return Err(SimError(format!("no mixer {mixer}")));
        }
        let legs: Vec<LegId> = self
            .media
            .joins
            .range((mixer, 0)..=(mixer, LegId::MAX))
            .map(|(&(_, leg), _)| leg)
            .collect();
        for leg in legs {
            self.unjoin(leg, mixer)?;
        }
        Arc::make_mut(&mut self.media.mixers).remove(&mixer);
        self.touch();
        self.emit(EngineEvent::MixerFreed(mixer));
        Ok(())
    }

    /// `count` mixers (`conference-N`) with 5 answered legs joined to each,
    /// the legs in id order (a bench's preload: no host is attached).
    pub fn preload_mixers(&mut self, count: u64, now_ms: u64) {
        const JOINS: usize = 5;
        let legs = self.answered_ids();
        let mut chunks = legs.chunks(JOINS);
        for i in 0..count {
            let mixer = self.create_mixer(&format!("conference-{i}"), now_ms);
            for &leg in chunks.next().unwrap_or_default() {
                let role = if leg % 5 == 0 {
                    JoinRole::Listener
                } else {
                    JoinRole::Both
                };
                self.join(leg, mixer, role).expect("a fresh join");
            }
        }
    }

    /// A host's `FreeMixer` command.
    pub fn free_mixer_command(&mut self, mixer: MixerId) -> CommandResult {
        match self.free_mixer(mixer) {
            Ok(()) => CommandResult::Done,
            Err(_) => CommandResult::NotFound,
        }
    }

    /// A host's `UnjoinLeg` command.
    pub fn unjoin_command(&mut self, leg: LegId, mixer: MixerId) -> CommandResult {
        match self.unjoin(leg, mixer) {
            Ok(()) => CommandResult::Done,
            Err(_) => CommandResult::NotFound,
        }
    }

    /// Every mixer and join, sorted (for `list`).
    pub fn conferences(&self) -> (Vec<Mixer>, Vec<Join>) {
        let mut mixers: Vec<Mixer> = self.media.mixers.values().cloned().collect();
        mixers.sort_unstable_by_key(|m| m.id);
        let joins = self
            .media
            .joins
            .iter()
            .map(|(&(mixer, leg), &role)| Join { mixer, leg, role })
            .collect();
        (mixers, joins)
    }
}

#[cfg(test)]
mod tests {
    use super::super::EngineState;
    use legsync::model::{Direction, JoinRole, Protocol};
    use legsync::protocol::EngineEvent;

    #[test]
    fn a_released_leg_leaves_its_mixers_and_a_freed_mixer_unjoins_its_legs() {
        let mut state = EngineState::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        state.attach_host(tx);
        let call =
            |s: &mut EngineState| s.call("N", "1", "2", Direction::Inbound, Protocol::Sip, 10);
        let (a, b) = (call(&mut state), call(&mut state));
        let m1 = state.create_mixer("conf-1", 20);
        let m2 = state.create_mixer("conf-2", 20);
        state.join(a, m1, JoinRole::Both).unwrap();
        state.join(a, m2, JoinRole::Listener).unwrap();
        state.join(b, m1, JoinRole::Speaker).unwrap();
        assert!(state.join(b, m1, JoinRole::Both).is_err(), "joined twice");
        while rx.try_recv().is_ok() {}
        state.release(a).unwrap();
        let events: Vec<EngineEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            events,
            vec![
                EngineEvent::LegUnjoined { mixer: m1, leg: a },
                EngineEvent::LegUnjoined { mixer: m2, leg: a },
                EngineEvent::LegReleased(a),
            ]
        );
        state.free_mixer(m1).unwrap();
        let events: Vec<EngineEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            events,
            vec![
                EngineEvent::LegUnjoined { mixer: m1, leg: b },
                EngineEvent::MixerFreed(m1),
            ]
        );
        let (mixers, joins) = state.conferences();
        assert_eq!(mixers.len(), 1);
        assert!(joins.is_empty());
    }

    #[test]
    fn mixers_and_answered_legs_joins_survive_a_restart() {
        let mut state = EngineState::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        state.attach_host(tx);
        let answered = state.call("N", "1", "2", Direction::Inbound, Protocol::Sip, 10);
        let ringing = state
            .ring("N", "1", "3", Direction::Inbound, Protocol::Sip, 10)
            .unwrap();
        let mixer = state.create_mixer("conf", 20);
        state.join(answered, mixer, JoinRole::Both).unwrap();
        state.join(ringing, mixer, JoinRole::Both).unwrap();
        let restarted = EngineState::from_media_units(state.media_units());
        let (mixers, joins) = restarted.conferences();
        assert_eq!(mixers.len(), 1);
        assert_eq!(joins.len(), 1, "only the answered leg's join survives");
        assert_eq!(joins[0].leg, answered);
        let mut restarted = restarted;
        assert!(
            restarted.create_mixer("next", 30) > mixer,
            "ids never reused"
        );
    }
}
