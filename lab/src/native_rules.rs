//! The `rules` policy compiled in: the same `legsync-rules` crate the
//! `rules` plugin runs, called directly, as a [`NativePolicy`]. It exists
//! so the cost of the WASM boundary can be measured against an otherwise
//! identical path (`legsync bench --policy native`, the criterion benches).

use legsync::model::{CallLeg, Decision, Direction, Protocol};
use legsync::policy::native::NativePolicy;
use legsync_rules::{Action, LegView, RuleSet};

/// The rule engine's view of one of our legs (borrowed, no copies).
pub fn leg_view(leg: &CallLeg) -> LegView<'_> {
    LegView {
        direction: match leg.direction {
            Direction::Inbound => legsync_rules::Direction::Inbound,
            Direction::Outbound => legsync_rules::Direction::Outbound,
        },
        protocol: match leg.protocol {
            Protocol::Sip => legsync_rules::Protocol::Sip,
            Protocol::Isdn => legsync_rules::Protocol::Isdn,
            Protocol::Ss7 => legsync_rules::Protocol::Ss7,
            Protocol::Cas => legsync_rules::Protocol::Cas,
            Protocol::MediaOnly => legsync_rules::Protocol::MediaOnly,
        },
        nap: &leg.nap,
        calling: &leg.calling,
        called: &leg.called,
        answered_at_ms: leg.answered_at_ms,
    }
}

pub fn decision(action: Action) -> Decision {
    match action {
        Action::Rebuild => Decision::Rebuild,
        Action::Refuse => Decision::Refuse,
    }
}

/// A native rule-set policy.
#[derive(Debug, Clone)]
pub struct NativeRules {
    set: RuleSet,
}

impl NativeRules {
    pub fn new(set: RuleSet) -> Self {
        NativeRules { set }
    }
}

impl NativePolicy for NativeRules {
    /// One decision per leg, judged at one instant like the plugin does.
    fn decide_legs(&self, legs: &[CallLeg]) -> Vec<Decision> {
        let now = legsync::model::now_ms();
        legs.iter()
            .map(|leg| decision(self.set.decide(&leg_view(leg), now)))
            .collect()
    }

    fn link_decision(&self) -> Decision {
        decision(self.set.links)
    }
}
