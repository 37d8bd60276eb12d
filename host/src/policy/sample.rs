//! Sample legs, a link and a mixer that a plugin set is tried on before it is
//! trusted: by `legsync plugin check`, and by a reload before the new set
//! replaces the working one. A reload tries a throwaway copy of the set
//! (instances of its own), so a plugin's state never counts sample legs.
//!
//! Half the legs carry non-ASCII text (a NAP in Polish, a full-width
//! number): a plugin that reads its batch's text wrong shows it here.

use super::chain::PolicyChain;
use super::error::FailureKind;
use super::export::Export;
use crate::mixers::HeldMixer;
use crate::model::{
    CallLeg, Custody, Decision, Direction, EndedLeg, JoinRole, LegState, Link, Mixer, Protocol,
    TerminationReason,
};

/// `count` answered legs, every other one with non-ASCII text.
pub fn legs(count: usize) -> Vec<CallLeg> {
    (1..=count as u64)
        .map(|id| {
            if id % 2 == 0 {
                leg(
                    id,
                    "ISDN_ŁÓDŹ",
                    Protocol::Isdn,
                    "+48 42 ☎ 555",
                    "１９００５５５０１００",
                )
            } else {
                leg(
                    id,
                    "SIP_CARRIER_A",
                    Protocol::Sip,
                    "15145550100",
                    "19005550100",
                )
            }
        })
        .collect()
}

/// One answered leg.
pub fn leg(id: u64, nap: &str, protocol: Protocol, calling: &str, called: &str) -> CallLeg {
    let now = crate::model::now_ms();
    CallLeg {
        id,
        session_id: id,
        direction: Direction::Inbound,
        protocol,
        nap: nap.into(),
        calling: calling.into(),
        called: called.into(),
        offered_at_ms: now - 60_000,
        answered_at_ms: Some(now - 50_000),
        linked_to: None,
        state: LegState::Answered,
    }
}

/// A conference with the two sample legs, one of them listening, named in
/// a language other than English.
pub fn mixer() -> HeldMixer {
    HeldMixer {
        mixer: Mixer {
            id: 1,
            created_at_ms: crate::model::now_ms() - 40_000,
            name: "conférence-équipe".into(),
        },
        joins: vec![(1, JoinRole::Both), (2, JoinRole::Listener)],
    }
}

/// A plugin export that failed on the sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} fails on a sample batch: {export} {}", match kind {
    Some(kind) => format!("ends in {}", kind.as_str()),
    None => "fails".to_string(),
})]
pub struct SampleFailure {
    pub plugin: String,
    pub export: Export,
    /// How a decision failed (a notice's failure is counted, not named).
    pub kind: Option<FailureKind>,
}

/// Calls every export of `chain` once with sample legs and a link; the
/// first failure, if any (what a reload refuses a set for).
pub fn try_chain(chain: &PolicyChain) -> Result<(), SampleFailure> {
    failures(chain).into_iter().next().map_or(Ok(()), Err)
}

/// Calls every export of `chain` once with sample legs and a link; every
/// export that failed (what `legsync plugin check` lists).
pub fn failures(chain: &PolicyChain) -> Vec<SampleFailure> {
    let legs = legs(2);
    let link = Link {
        id: 1,
        leg_a: 1,
        leg_b: 2,
    };
    let mut failed = Vec::new();
    let leg_verdicts = chain.decide_legs(&legs);
    // The notice that follows says of each leg what its verdict made of it.
    let ended: Vec<EndedLeg> = legs
        .iter()
        .zip(&leg_verdicts)
        .map(|(leg, verdict)| EndedLeg {
            leg: leg.clone(),
            custody: match verdict.decision {
                Decision::Rebuild => Custody::Held {
                    adopted_by: verdict.plugin,
                },
                Decision::Refuse => Custody::Refused { by: verdict.plugin },
            },
        })
        .collect();
    let mixers = [mixer()];
    for (export, verdicts) in [
        (Export::LegSync, leg_verdicts),
        (Export::LinkSync, chain.decide_links(&[link])),
        (Export::MixerSync, chain.decide_mixers(&mixers)),
    ] {
        if let Some(verdict) = verdicts.iter().find(|v| v.failure.is_some()) {
            failed.push(SampleFailure {
                plugin: verdict.plugin.as_str().to_string(),
                export,
                kind: verdict.failure,
            });
        }
    }
    failed.extend(notice_failures(chain, Export::Terminated, || {
        chain.notify_terminated(&ended, TerminationReason::Released)
    }));
    failed.extend(notice_failures(chain, Export::MixerTerminated, || {
        chain.notify_mixers_terminated(&mixers, TerminationReason::Released)
    }));
    failed
}

/// The plugins whose notice `export` failed while `notify` ran (a notice
/// decides nothing: its failures show only in the plugins' counts).
fn notice_failures(
    chain: &PolicyChain,
    export: Export,
    notify: impl FnOnce(),
) -> Vec<SampleFailure> {
    let before: Vec<u64> = chain.plugins().iter().map(|p| p.stats().failures).collect();
    notify();
    chain
        .plugins()
        .iter()
        .zip(before)
        .filter(|(plugin, before)| plugin.stats().failures > *before)
        .map(|(plugin, _)| SampleFailure {
            plugin: plugin.name().as_str().to_string(),
            export,
            kind: None,
        })
        .collect()
}
