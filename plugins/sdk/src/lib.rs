//! Write a legsync policy plugin in Rust.
//!
//! Implement [`Policy`] for your type (every method but `init` has a default
//! that rebuilds everything), then call [`export_policy!`] once:
//!
//! ```ignore
//! use legsync_plugin_sdk::{export_policy, CallLeg, Decision, Policy};
//!
//! struct NoPremium;
//!
//! impl Policy for NoPremium {
//!     fn init(_rules: &str) -> Result<Self, String> {
//!         Ok(NoPremium)
//!     }
//!     fn on_call_leg_sync(&mut self, leg: &CallLeg) -> Decision {
//!         if leg.called.starts_with("1900") { Decision::Refuse } else { Decision::Rebuild }
//!     }
//! }
//!
//! export_policy!(NoPremium);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the `.wasm` in
//! `target/wasm32-wasip2/release/` is a component ready for `legsync plugin
//! check`. The host batches legs into lists; the SDK turns each list into
//! per-item calls so that a plugin author never sees the raw bindings.

use __private::bindings;

#[cfg(target_arch = "wasm32")]
mod arena;

/// Export arguments live in an arena reset after each call (see the `arena`
/// module); a plugin built with the SDK must not set its own global allocator.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: arena::ArenaAwareAllocator = arena::ArenaAwareAllocator;

use bindings::legsync::policy::types as wit;
pub use bindings::legsync::policy::types::{
    Decision, Direction, JoinRole, Link, Mixer, MixerJoin, Protocol, TerminationReason,
};

/// The contract version this SDK builds plugins for.
pub const CONTRACT_VERSION: &str = "0.4.0";

/// A call leg as the engine reports it. Its strings are borrowed from the
/// batch the host sent (one buffer for the whole batch): copy what you keep
/// beyond the call (`leg.nap.to_string()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLeg<'a> {
    /// The engine's id of the leg; stable across engine restarts for
    /// answered legs.
    pub id: u64,
    /// The call session the leg belongs to (both legs of a call share it).
    pub session_id: u64,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The Network Access Point (trunk group), e.g. `SIP_CARRIER_A`.
    pub nap: &'a str,
    /// The calling party number (A number).
    pub calling: &'a str,
    /// The called party number (B number).
    pub called: &'a str,
    /// Unix milliseconds.
    pub offered_at_ms: u64,
    /// Unix milliseconds; none for a leg that never answered.
    pub answered_at_ms: Option<u64>,
    /// The leg this one is linked to, if any.
    pub linked_to: Option<u64>,
}

impl<'a> CallLeg<'a> {
    /// A leg of a `leg-batch`, its spans read from the batch's text (see
    /// [`__private::batch_text`]).
    fn packed(text: &'a str, leg: &wit::PackedLeg) -> Self {
        // The host always sends whole strings; a span that is not one
        // reads as empty rather than trapping the plugin.
        let span = |span: wit::TextSpan| {
            let start = span.start as usize;
            text.get(start..start + span.len as usize).unwrap_or("")
        };
        CallLeg {
            id: leg.id,
            session_id: leg.session_id,
            direction: leg.direction,
            protocol: leg.protocol,
            nap: span(leg.nap),
            calling: span(leg.calling),
            called: span(leg.called),
            offered_at_ms: leg.offered_at_ms,
            answered_at_ms: leg.answered_at_ms,
            linked_to: leg.linked_to,
        }
    }

    /// A leg of a termination notice.
    fn unpacked(leg: &'a wit::CallLeg) -> Self {
        CallLeg {
            id: leg.id,
            session_id: leg.session_id,
            direction: leg.direction,
            protocol: leg.protocol,
            nap: &leg.nap,
            calling: &leg.calling,
            called: &leg.called,
            offered_at_ms: leg.offered_at_ms,
            answered_at_ms: leg.answered_at_ms,
            linked_to: leg.linked_to,
        }
    }
}

/// A leg that ended (`OnCallLegTerminated`). Every plugin hears of every
/// leg that ends, including legs refused at a resync (by this plugin or
/// another), which the host never held: a counter frees a slot only for a
/// leg it counted (see `nap-cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination<'a> {
    /// The leg as the host last knew it.
    pub leg: CallLeg<'a>,
    /// Why it ended.
    pub reason: TerminationReason,
    /// Whether the host held the leg's context until now; false for a leg
    /// refused at a resync and for a previous run's call.
    pub held: bool,
    /// The plugin that decided the leg at its last resync (refused it, or
    /// was the last to agree); none for a leg followed live from its setup.
    pub decided_by: Option<&'a str>,
}

/// A policy: the decisions of one plugin. One value lives per plugin instance,
/// created by `init` and kept until the host discards the instance.
pub trait Policy: Sized + 'static {
    /// Builds the policy from its rules text (the plugin's `NAME.rules`
    /// sidecar, or empty). An error rejects the plugin with that message.
    fn init(rules: &str) -> Result<Self, String>;

    /// `OnCallLegSync` for one leg the host did not know.
    fn on_call_leg_sync(&mut self, _leg: &CallLeg<'_>) -> Decision {
        Decision::Rebuild
    }

    /// `OnLinkSync` for one link whose two legs were rebuilt.
    fn on_link_sync(&mut self, _link: &Link) -> Decision {
        Decision::Rebuild
    }

    /// `OnCallLegTerminated` for one leg that ended.
    fn on_call_leg_terminated(&mut self, _ended: &Termination<'_>) {}

    /// A whole batch of legs; override only to share work across a batch.
    /// Must return exactly one decision per leg, in order.
    fn on_call_leg_sync_batch(&mut self, legs: &[CallLeg<'_>]) -> Vec<Decision> {
        legs.iter()
            .enumerate()
            .map(|(index, leg)| {
                __private::deciding(index);
                self.on_call_leg_sync(leg)
            })
            .collect()
    }

    /// A whole batch of links; must return exactly one decision per link.
    fn on_link_sync_batch(&mut self, links: &[Link]) -> Vec<Decision> {
        links
            .iter()
            .enumerate()
            .map(|(index, link)| {
                __private::deciding(index);
                self.on_link_sync(link)
            })
            .collect()
    }

    /// Whether this policy decides conference mixers. False (the default):
    /// it abstains, and does not vote on mixers at all; true: the host asks
    /// `on_mixer_sync` for every mixer it did not know.
    fn decides_mixers(&self) -> bool {
        false
    }

    /// The mixer decision for one mixer the host did not know (asked only
    /// when [`Policy::decides_mixers`]). Its legs are already decided: a
    /// refused leg is not among `mixer.joins`. A refused mixer is freed at
    /// the engine; its legs live on.
    fn on_mixer_sync(&mut self, _mixer: &Mixer) -> Decision {
        Decision::Rebuild
    }

    /// A mixer the host held ended (freed, absent at a resync, destroyed at
    /// the grace timer). Its legs live on, each on its own.
    fn on_mixer_terminated(&mut self, _mixer: &Mixer, _reason: TerminationReason) {}

    /// A whole batch of mixers; must return exactly one decision per mixer.
    fn on_mixer_sync_batch(&mut self, mixers: &[Mixer]) -> Vec<Decision> {
        mixers
            .iter()
            .enumerate()
            .map(|(index, mixer)| {
                __private::deciding(index);
                self.on_mixer_sync(mixer)
            })
            .collect()
    }
}

/// Structured logging to the host log, tagged with the plugin's name. The
/// host caps the number of lines per call.
pub mod log {
    use crate::bindings::legsync::policy::host::{self, Level};

    pub fn trace(message: &str) {
        host::log(Level::Trace, message);
    }
    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

/// The host's wall clock in Unix milliseconds (compare with
/// `CallLeg::answered_at_ms` for call ages).
pub fn now_ms() -> u64 {
    bindings::legsync::policy::host::now_ms()
}

/// Calls `f` with every leg the host holds now, by ascending id, and the
/// plugin that adopted it (none for a leg the host followed live from its
/// setup). Call it from `init` to rebuild what the policy counts: a fresh
/// instance (after a reload, a recycle, a failure) starts empty. Pages of
/// 10,000 legs; the wait for the host does not count against the deadline.
pub fn for_each_held_leg(mut f: impl FnMut(&CallLeg<'_>, Option<&str>)) {
    let mut after = 0;
    loop {
        let page = bindings::legsync::policy::host::held_legs(after, HELD_PAGE);
        let text = __private::batch_text(&page.batch.text);
        for (leg, adopted_by) in page.batch.legs.iter().zip(&page.adopted_by) {
            let adopted_by = text
                .get(adopted_by.start as usize..(adopted_by.start + adopted_by.len) as usize)
                .filter(|name| !name.is_empty());
            f(&CallLeg::packed(text, leg), adopted_by);
        }
        match page.next_after {
            Some(next) => after = next,
            None => return,
        }
    }
}

/// Says why the leg (or link) being decided gets its decision: a rule's
/// name, say. Call it from `on_call_leg_sync` / `on_link_sync`, typically
/// for a refusal; the host shows it in the audit, a reload's blast radius
/// and `legsync enforce`. At most 64 bytes are kept, and 64 distinct
/// reasons per plugin. From a batch override, use [`because_at`].
pub fn because(reason: &str) {
    __private::explain(__private::current(), reason);
}

/// [`because`] for the item at `index` of the batch (from
/// `on_call_leg_sync_batch` or `on_link_sync_batch`).
pub fn because_at(index: usize, reason: &str) {
    __private::explain(index, reason);
}

/// The legs asked for per page by [`for_each_held_leg`] (the host's most).
const HELD_PAGE: u32 = 10_000;

/// Adds `delta` to the plugin's counter `name`, exported by the host as the
/// metric `legsync_plugin_counter_total{plugin, counter}`. Names are 1 to 64
/// of `a-z`, `0-9` and `_`; at most 32 per plugin (the rest are dropped,
/// and the host says so once).
pub fn count(name: &str, delta: u64) {
    bindings::legsync::policy::host::count(name, delta);
}

/// Reference data the host builds from the operator's files and shares
/// with the plugins granted it (`[policy.plugins.NAME] datasets = [...]`):
/// block lists, ported numbers, rate tables. Open each dataset once in
/// `init` and keep it; look keys up a batch at a time (one host call per
/// batch, whatever its size):
///
/// ```ignore
/// let blocked = Dataset::open("blocked")?;
/// let hits = blocked.contains(legs.iter().map(|leg| leg.called));
/// ```
///
/// Every decision of one plugin set sees one version of each dataset; a
/// new version comes with a reload, to a fresh instance (`init` again).
pub mod datasets {
    use crate::bindings::legsync::policy::datasets as host;
    use crate::bindings::legsync::policy::types::TextSpan;

    pub use host::DatasetKind as Kind;

    /// An open dataset.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Dataset {
        handle: u32,
        name: String,
        kind: Kind,
        version: String,
        entries: u64,
    }

    impl Dataset {
        /// Opens the dataset `name`. One the plugin's config does not
        /// grant is an error; asked for in `init`, the host rejects the
        /// plugin and names the dataset.
        pub fn open(name: &str) -> Result<Dataset, String> {
            let info = host::open(name)?;
            Ok(Dataset {
                handle: info.handle,
                name: name.to_string(),
                kind: info.kind,
                version: info.version,
                entries: info.entries,
            })
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        /// A set (keys only), a map or a prefix table.
        pub fn kind(&self) -> Kind {
            self.kind
        }

        /// The version (the first 16 hex digits of the file's SHA-256), as
        /// the host's audit names it.
        pub fn version(&self) -> &str {
            &self.version
        }

        /// Distinct keys.
        pub fn entries(&self) -> u64 {
            self.entries
        }

        /// For each key: whether the dataset has it, exactly.
        pub fn contains<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<bool> {
            host::contains(self.handle, &key_batch(keys))
        }

        /// For each key: its value, when the dataset has it exactly (`""`
        /// for a key of a set).
        pub fn get<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Found {
            Found(host::get(self.handle, &key_batch(keys)))
        }

        /// For each key: the longest of the dataset's keys that is a
        /// prefix of it, and its value (a rate class by destination).
        pub fn longest_prefix<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Found {
            Found(host::longest_prefix(self.handle, &key_batch(keys)))
        }
    }

    fn key_batch<'k>(keys: impl IntoIterator<Item = &'k str>) -> host::KeyBatch {
        let keys = keys.into_iter();
        let mut batch = host::KeyBatch {
            text: Vec::with_capacity(keys.size_hint().0 * 12),
            keys: Vec::with_capacity(keys.size_hint().0),
        };
        for key in keys {
            batch.keys.push(TextSpan {
                start: batch.text.len() as u32,
                len: key.len() as u32,
            });
            batch.text.extend_from_slice(key.as_bytes());
        }
        batch
    }

    /// The answers of [`Dataset::get`] or [`Dataset::longest_prefix`], one
    /// per key, in order.
    #[derive(Debug)]
    pub struct Found(host::Found);

    impl Found {
        pub fn len(&self) -> usize {
            self.0.hits.len()
        }

        pub fn is_empty(&self) -> bool {
            self.0.hits.is_empty()
        }

        /// The value found for key `index`, if any.
        pub fn value(&self, index: usize) -> Option<&str> {
            let hit = self.0.hits.get(index)?.as_ref()?;
            let start = hit.value.start as usize;
            let bytes = self.0.text.get(start..start + hit.value.len as usize)?;
            core::str::from_utf8(bytes).ok()
        }

        /// How many bytes of key `index` matched (the prefix's length for
        /// `longest_prefix`), if it was found.
        pub fn matched(&self, index: usize) -> Option<usize> {
            Some(self.0.hits.get(index)?.as_ref()?.matched as usize)
        }

        /// The values, one per key.
        pub fn values(&self) -> impl Iterator<Item = Option<&str>> {
            (0..self.len()).map(|index| self.value(index))
        }
    }
}

pub use datasets::Dataset;

/// Used by [`export_policy!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    /// The raw bindings generated from `wit/`.
    pub mod bindings {
        wit_bindgen::generate!({
            world: "policy-plugin",
            path: "../../wit",
            pub_export_macro: true,
            default_bindings_module: "legsync_plugin_sdk::__private::bindings",
        });
    }
    use crate::CallLeg;
    pub use crate::bindings::exports::legsync::policy::policy::Guest;
    pub use crate::bindings::legsync::policy::types::{LegBatch, TerminatedLeg, TerminatedMixer};

    /// The views of a batch's legs, for `on_call_leg_sync_batch`.
    pub fn batch_legs(batch: &LegBatch) -> Vec<CallLeg<'_>> {
        let text = batch_text(&batch.text);
        batch
            .legs
            .iter()
            .map(|leg| CallLeg::packed(text, leg))
            .collect()
    }

    /// The batch's text (bytes since contract 0.3.0) as a `str`, checked
    /// once for the whole batch. The host only sends UTF-8; should it not,
    /// the text is cut at the first bad byte, so later spans read as empty
    /// instead of trapping the plugin.
    pub fn batch_text(bytes: &[u8]) -> &str {
        match core::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The view of a terminated leg.
    pub fn termination(ended: &TerminatedLeg) -> crate::Termination<'_> {
        crate::Termination {
            leg: CallLeg::unpacked(&ended.leg),
            reason: ended.reason,
            held: ended.held,
            decided_by: ended.decided_by.as_deref(),
        }
    }

    use std::cell::{Cell, RefCell};

    std::thread_local! {
        /// The item being decided, for [`crate::because`].
        static CURRENT: Cell<usize> = const { Cell::new(0) };
        /// The reasons given during the current call.
        static REASONS: RefCell<Vec<crate::bindings::legsync::policy::types::Explained>> =
            const { RefCell::new(Vec::new()) };
    }

    pub fn deciding(index: usize) {
        CURRENT.with(|c| c.set(index));
    }

    pub fn current() -> usize {
        CURRENT.with(Cell::get)
    }

    pub fn explain(index: usize, reason: &str) {
        REASONS.with(|r| {
            r.borrow_mut()
                .push(crate::bindings::legsync::policy::types::Explained {
                    index: index as u32,
                    reason: reason.to_string(),
                })
        });
    }

    /// Runs a sync export's body, then hands the host the reasons it gave.
    pub fn explaining<R>(body: impl FnOnce() -> R) -> R {
        REASONS.with(|r| r.borrow_mut().clear());
        CURRENT.with(|c| c.set(0));
        let result = body();
        let reasons = REASONS.with(|r| std::mem::take(&mut *r.borrow_mut()));
        if !reasons.is_empty() {
            crate::bindings::legsync::policy::host::explain(&reasons);
        }
        result
    }

    /// Runs one export: its arguments (lowered into the arena) are dropped
    /// before the arena is reused for the next call.
    pub fn export_call<A, R>(args: A, body: impl FnOnce(&A) -> R) -> R {
        #[cfg(target_arch = "wasm32")]
        crate::arena::begin_export();
        let result = body(&args);
        drop(args);
        #[cfg(target_arch = "wasm32")]
        crate::arena::end_export();
        result
    }

    pub fn with_policy<P, R>(slot: &mut Option<P>, f: impl FnOnce(&mut P) -> R) -> R {
        f(slot
            .as_mut()
            .expect("legsync: a policy export was called before init"))
    }
}

/// Exports a [`Policy`] type as the plugin's implementation of the contract.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            use $crate::__private::{
                batch_legs, explaining, export_call, termination, with_policy,
            };
            use $crate::Policy as _;

            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$policy>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct Export;

            impl $crate::__private::Guest for Export {
                fn init(config: String) -> Result<(), String> {
                    export_call(config, |config| {
                        let policy = <$policy as $crate::Policy>::init(config)?;
                        STATE.with(|s| *s.borrow_mut() = Some(policy));
                        Ok(())
                    })
                }
                fn on_call_leg_sync(batch: $crate::__private::LegBatch) -> Vec<$crate::Decision> {
                    export_call(batch, |batch| {
                        let legs = batch_legs(batch);
                        explaining(|| {
                            STATE.with(|s| {
                                with_policy(&mut s.borrow_mut(), |p| {
                                    p.on_call_leg_sync_batch(&legs)
                                })
                            })
                        })
                    })
                }
                fn on_link_sync(links: Vec<$crate::Link>) -> Vec<$crate::Decision> {
                    export_call(links, |links| {
                        explaining(|| {
                            STATE.with(|s| {
                                with_policy(&mut s.borrow_mut(), |p| p.on_link_sync_batch(links))
                            })
                        })
                    })
                }
                fn on_mixer_sync(mixers: Vec<$crate::Mixer>) -> Option<Vec<$crate::Decision>> {
                    export_call(mixers, |mixers| {
                        explaining(|| {
                            STATE.with(|s| {
                                with_policy(&mut s.borrow_mut(), |p| {
                                    p.decides_mixers().then(|| p.on_mixer_sync_batch(mixers))
                                })
                            })
                        })
                    })
                }
                fn on_mixer_terminated(mixers: Vec<$crate::__private::TerminatedMixer>) {
                    export_call(mixers, |mixers| {
                        STATE.with(|s| {
                            with_policy(&mut s.borrow_mut(), |p| {
                                for ended in mixers {
                                    p.on_mixer_terminated(&ended.mixer, ended.reason);
                                }
                            })
                        })
                    })
                }
                fn on_call_leg_terminated(legs: Vec<$crate::__private::TerminatedLeg>) {
                    export_call(legs, |legs| {
                        STATE.with(|s| {
                            with_policy(&mut s.borrow_mut(), |p| {
                                for ended in legs {
                                    p.on_call_leg_terminated(&termination(ended));
                                }
                            })
                        })
                    })
                }
            }

    $crate::__private::bindings::export!(Export with_types_in $crate::__private::bindings);
        };
    };
}
