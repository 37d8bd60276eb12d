//! The generated bindings for `wit/policy.wit`, kept private to the policy
//! runtime, and the conversions between the host's model and the WIT types.

use super::contract::Contract;
use super::sandbox::PluginState;
use crate::model;
use wasmtime::component::{HasSelf, Linker};

wasmtime::component::bindgen!({
    world: "policy-plugin",
    path: "../wit",
    // A page the host cannot produce in time traps the plugin's call with
    // the reason, rather than passing for an empty table.
    // A look-up with a handle `open` never gave traps (a plugin bug).
    imports: {
        "legsync:policy/host.held-legs": trappable,
        "legsync:policy/datasets.contains": trappable,
        "legsync:policy/datasets.get": trappable,
        "legsync:policy/datasets.longest-prefix": trappable,
    },
});

pub use self::legsync::policy::host::Level;
pub use self::legsync::policy::types as wit;

/// Links the `host` interface for every contract version the host loads:
/// the generated bindings link the current one; an older one is its first
/// two functions under its own name (`log` and `now-ms`, whose types have
/// not changed).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use self::legsync::policy::host::Host;
    PolicyPlugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    for older in Contract::OLDER {
        let mut host = linker.instance(&older.host_import())?;
        host.func_wrap("log", |mut cx, (level, message): (Level, String)| {
            Host::log(cx.data_mut(), level, message);
            Ok(())
        })?;
        host.func_wrap("now-ms", |mut cx, (): ()| {
            Ok((Host::now_ms(cx.data_mut()),))
        })?;
    }
    Ok(())
}

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

impl From<model::JoinRole> for wit::JoinRole {
    fn from(role: model::JoinRole) -> Self {
        match role {
            model::JoinRole::Speaker => wit::JoinRole::Speaker,
            model::JoinRole::Listener => wit::JoinRole::Listener,
            model::JoinRole::Both => wit::JoinRole::Both,
        }
    }
}

impl From<&crate::mixers::HeldMixer> for wit::Mixer {
    fn from(held: &crate::mixers::HeldMixer) -> Self {
        wit::Mixer {
            id: held.mixer.id,
            created_at_ms: held.mixer.created_at_ms,
            name: held.mixer.name.to_string(),
            joins: held
                .joins
                .iter()
                .map(|&(leg, role)| wit::MixerJoin {
                    leg,
                    role: role.into(),
                })
                .collect(),
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
            // To a plugin, a handover is the host letting go of calls that
            // go on under another controller, as at a stop.
            model::TerminationReason::HostShutdown | model::TerminationReason::HandedOver => {
                wit::TerminationReason::HostShutdown
            }
            // The contract has no words for these: to a plugin, the engine
            // no longer has the call it knew.
            model::TerminationReason::Replaced | model::TerminationReason::HostLost => {
                wit::TerminationReason::AbsentAfterResync
            }
        }
    }
}
