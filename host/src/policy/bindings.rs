//! The generated bindings for `wit/policy.wit`, kept private to the policy
//! runtime, and the conversions between the host's model and the WIT types.

use crate::model;

wasmtime::component::bindgen!({
    world: "policy-plugin",
    path: "../wit",
});

pub use self::legsync::policy::host::Level;
pub use self::legsync::policy::types as wit;

impl From<model::Direction> for wit::Direction {
    fn from(direction: model::Direction) -> Self {
        match direction {
            model::Direction::Inbound => wit::Direction::Inbound,
            model::Direction::Outbound => wit::Direction::Outbound,
        }
    }
}

impl From<model::Protocol> for wit::Protocol {
    fn from(protocol: model::Protocol) -> Self {
        match protocol {
            model::Protocol::Sip => wit::Protocol::Sip,
            model::Protocol::Isdn => wit::Protocol::Isdn,
            model::Protocol::Ss7 => wit::Protocol::Ss7,
            model::Protocol::Cas => wit::Protocol::Cas,
            model::Protocol::MediaOnly => wit::Protocol::MediaOnly,
        }
    }
}

impl From<&model::CallLeg> for wit::CallLeg {
    fn from(leg: &model::CallLeg) -> Self {
        wit::CallLeg {
            id: leg.id,
            session_id: leg.session_id,
            direction: leg.direction.into(),
            protocol: leg.protocol.into(),
            nap: leg.nap.to_string(),
            calling: leg.calling.to_string(),
            called: leg.called.to_string(),
            offered_at_ms: leg.offered_at_ms,
            answered_at_ms: leg.answered_at_ms,
            linked_to: leg.linked_to,
        }
    }
}

impl From<wit::Decision> for model::Decision {
    fn from(decision: wit::Decision) -> Self {
        match decision {
            wit::Decision::Rebuild => model::Decision::Rebuild,
            wit::Decision::Refuse => model::Decision::Refuse,
        }
    }
}

impl From<model::TerminationReason> for wit::TerminationReason {
    fn from(reason: model::TerminationReason) -> Self {
        match reason {
            model::TerminationReason::Released => wit::TerminationReason::Released,
            model::TerminationReason::AbsentAfterResync => {
                wit::TerminationReason::AbsentAfterResync
            }
            model::TerminationReason::GraceExpired => wit::TerminationReason::GraceExpired,
            model::TerminationReason::RefusedByPolicy => wit::TerminationReason::RefusedByPolicy,
            model::TerminationReason::HostShutdown => wit::TerminationReason::HostShutdown,
            // Contract 0.2.0 has no words for these: to a plugin, the engine
            // no longer has the call it knew.
            model::TerminationReason::Replaced | model::TerminationReason::HostLost => {
                wit::TerminationReason::AbsentAfterResync
            }
        }
    }
}
