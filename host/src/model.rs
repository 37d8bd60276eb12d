//! The call model shared by every layer: legs, links, decisions and reasons.
//!
//! These are the host's own types. The wire protocol serializes them, the leg
//! table stores them, and the policy runtime converts them to the WIT types at
//! the plugin boundary, so no layer depends on another's encoding.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// The engine's id of a call leg. Stable across engine restarts for answered
/// legs (the engine rebuilds them from its media units).
pub type LegId = u64;
/// The engine's id of a link (two joined legs).
pub type LinkId = u64;
/// The engine's id of a conference mixer.
pub type MixerId = u64;

/// Which way a leg was set up, seen from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
}

/// The signalling protocol of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    #[default]
    Sip,
    Isdn,
    Ss7,
    Cas,
    MediaOnly,
}

/// Where a leg is in its life, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LegState {
    /// Offered to the peer, not yet ringing (transient).
    Offered,
    /// Ringing (transient).
    Ringing,
    /// Answered: the only state that survives an engine restart.
    #[default]
    Answered,
    /// Being released (transient).
    Terminating,
}

impl LegState {
    /// Transient and terminating legs are dropped when the engine restarts.
    pub fn survives_engine_restart(self) -> bool {
        self == LegState::Answered
    }
}

/// One side of a call towards one peer over one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLeg {
    pub id: LegId,
    #[serde(default)]
    pub session_id: u64,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub protocol: Protocol,
    /// Network Access Point (trunk group) name. Strings up to 24 bytes (every
    /// real NAP name and number) are stored inline: a million legs decode and
    /// sit in the table without three heap allocations each.
    #[serde(default)]
    pub nap: CompactString,
    /// Calling party (A) number.
    #[serde(default)]
    pub calling: CompactString,
    /// Called party (B) number.
    #[serde(default)]
    pub called: CompactString,
    /// Unix milliseconds.
    #[serde(default)]
    pub offered_at_ms: u64,
    /// Unix milliseconds; `None` until answered.
    #[serde(default)]
    pub answered_at_ms: Option<u64>,
    /// The leg this one is linked to, if any.
    #[serde(default)]
    pub linked_to: Option<LegId>,
    #[serde(default)]
    pub state: LegState,
}

/// Two legs joined together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub id: LinkId,
    pub leg_a: LegId,
    pub leg_b: LegId,
}

/// A conference mixer: legs joined to it hear and are heard by each other
/// (as their roles say). Mixers are not billed; their legs are.
///
/// As with legs, an id names a mixer only while it lives: a mixer is the
/// same one only if its id and `created_at_ms` match ([`same_mixer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mixer {
    pub id: MixerId,
    /// Unix milliseconds: with the id, who the mixer is.
    pub created_at_ms: u64,
    /// The conference it carries, as the application named it (a
    /// conference id, a room): what a policy decides on.
    #[serde(default)]
    pub name: CompactString,
}

/// Whether two views of a mixer are the same mixer.
pub fn same_mixer(a: &Mixer, b: &Mixer) -> bool {
    a.id == b.id && a.created_at_ms == b.created_at_ms
}

/// How a leg takes part in a mixer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum JoinRole {
    /// Heard by the others, hears nothing.
    Speaker,
    /// Hears the others, is not heard.
    Listener,
    /// Both: a conference participant.
    #[default]
    Both,
}

impl JoinRole {
    /// The role as the event log and the control port spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Speaker => "speaker",
            JoinRole::Listener => "listener",
            JoinRole::Both => "both",
        }
    }
}

impl std::str::FromStr for JoinRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "speaker" => Ok(JoinRole::Speaker),
            "listener" => Ok(JoinRole::Listener),
            "both" => Ok(JoinRole::Both),
            other => Err(format!("unknown role {other:?}: speaker, listener or both")),
        }
    }
}

/// A leg joined to a mixer. A leg may be joined to several mixers, and to
/// one mixer once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub mixer: MixerId,
    pub leg: LegId,
    pub role: JoinRole,
}

/// What to do with a leg or link the host did not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Rebuild,
    Refuse,
}

impl Decision {
    /// The decision as the event log spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Rebuild => "rebuild",
            Decision::Refuse => "refuse",
        }
    }
}

/// Why a leg ended in the host (`OnCallLegTerminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationReason {
    Released,
    AbsentAfterResync,
    GraceExpired,
    RefusedByPolicy,
    HostShutdown,
    /// The engine reported another call under this leg's id (a restart, a
    /// bug or a wrapped counter): this call is over, the other one is new.
    Replaced,
    /// The ledger had the call open when the host started, and the engine
    /// no longer has it: it ended while no host was watching.
    HostLost,
    /// The grace time ran out while another controller held the engine:
    /// the host gave its contexts up to it without ending the calls.
    HandedOver,
}

impl TerminationReason {
    /// The reason as the ledger, the event log and the logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Released => "released",
            TerminationReason::AbsentAfterResync => "absent-after-resync",
            TerminationReason::GraceExpired => "grace-expired",
            TerminationReason::RefusedByPolicy => "refused-by-policy",
            TerminationReason::HostShutdown => "host-shutdown",
            TerminationReason::Replaced => "replaced",
            TerminationReason::HostLost => "host-lost",
            TerminationReason::HandedOver => "handed-over",
        }
    }
}

/// What the host did with a leg before it ended: the plugins' termination
/// notice says it (contract 0.4.0), so a plugin that counts the calls it
/// let in frees a slot only for a leg it counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Custody {
    /// The host held the leg's context: adopted at a resync (`adopted_by`
    /// the plugin), or followed live from its setup ([`LIVE`]).
    Held { adopted_by: PluginName },
    /// Refused when it was decided (by this plugin, or its failure policy):
    /// the host never held it.
    Refused { by: PluginName },
    /// Held, then refused by this plugin when an operator enforced the
    /// working set on the calls held (`legsync enforce`).
    Withdrawn { by: PluginName },
    /// A call the ledger had open from a previous run, which this run never
    /// held (it ends at its last proven moment).
    Previous,
}

impl Custody {
    /// Whether the host held the leg's context until it ended.
    pub fn held(self) -> bool {
        matches!(self, Custody::Held { .. } | Custody::Withdrawn { .. })
    }

    /// Who decided the leg, if a decision did: the adopting or refusing
    /// plugin; none for a leg followed live or a previous run's call.
    pub fn decided_by(self) -> Option<PluginName> {
        match self {
            Custody::Held { adopted_by } if adopted_by.as_str() == LIVE => None,
            Custody::Held { adopted_by } => Some(adopted_by),
            Custody::Refused { by } | Custody::Withdrawn { by } => Some(by),
            Custody::Previous => None,
        }
    }
}

/// A leg that ends, and what the host did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedLeg {
    pub leg: CallLeg,
    pub custody: Custody,
}

/// The `adopted_by` of a leg the host followed live from its setup.
pub const LIVE: &str = "live";

/// Who adopted a leg or decided a link: a plugin's name, or `live` /
/// `native-rules`.
///
/// Interned: copying one copies a pointer. A resync hands one to each of a
/// million verdicts and table entries; with a reference-counted string every
/// copy was an atomic operation on one counter shared by the deciding and
/// the adopting threads. Each distinct name is kept for the life of the
/// process: there are a handful of plugins, and a few more per renaming
/// reload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginName(&'static str);

impl PluginName {
    pub fn new(name: &str) -> Self {
        use std::collections::HashSet;
        use std::sync::{Mutex, OnceLock};
        static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match names.get(name) {
            Some(known) => PluginName(known),
            None => {
                let leaked: &'static str = Box::leak(name.into());
                names.insert(leaked);
                PluginName(leaked)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Why a plugin refused an item, in its own words (the contract's
/// `explain`: a rule's name, say). Interned as plugin names are; a plugin
/// may give a bounded number of distinct reasons (see `policy::plugin`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason(&'static str);

impl Reason {
    pub fn new(reason: &str) -> Self {
        Reason(PluginName::new(reason).as_str())
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// The datasets a decision consulted, as `name@version,...` (the versions
/// of the deciding plugin's datasets: one per dataset for a whole plugin
/// set). Interned as plugin names are: one per plugin set loaded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataVersions(&'static str);

impl DataVersions {
    pub fn new(versions: &str) -> Self {
        DataVersions(PluginName::new(versions).as_str())
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Debug for DataVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Debug for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&str> for PluginName {
    fn from(name: &str) -> Self {
        PluginName::new(name)
    }
}

impl std::ops::Deref for PluginName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl std::fmt::Display for PluginName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Debug for PluginName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, f)
    }
}

impl Serialize for PluginName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

/// Wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An answered leg with placeholder fields, for unit tests.
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

#[cfg(test)]
pub(crate) fn test_leg(id: LegId, answered_at_ms: u64) -> CallLeg {
    CallLeg {
        id,
        session_id: id,
        direction: Direction::Inbound,
        protocol: Protocol::Sip,
        nap: "N".into(),
        calling: "1".into(),
        called: "2".into(),
        offered_at_ms: answered_at_ms.saturating_sub(5),
        answered_at_ms: Some(answered_at_ms),
        linked_to: None,
        state: LegState::Answered,
    }
}

/// How ids the engine chooses (legs, links) are hashed: foldhash, keyed
/// with a random seed per map. An engine cannot craft ids that collide in
/// the host's tables (with an unkeyed hash, FxHash, 50,000 crafted ids took
/// 15 s to resync instead of 0.03 s), and the tables' order is no engine's
/// order (see benches/README.md on what FxHash's order was worth).
pub type IdHasher = foldhash::fast::RandomState;
/// A map keyed by ids the engine chooses.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdHasher>;
/// A set of ids the engine chooses.
pub type IdSet<K> = std::collections::HashSet<K, IdHasher>;

#[cfg(test)]
mod tests {
    use super::PluginName;

    #[test]
    fn a_plugin_name_is_interned_once() {
        let a = PluginName::new("10-interned");
        let b = PluginName::new(&String::from("10-interned"));
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(&*a, "10-interned");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"10-interned\"");
    }
}
