//! Reading a recording back, and deciding its resync again with a plugin
//! set: what `legsync replay` does.
//!
//! The legs offered are found as the resync found them: snapshot legs the
//! host did not hold, or held as another call (another identity under the
//! same id), each once. The links offered are the snapshot's links the
//! host did not hold whose two legs it holds once the legs are decided, a
//! leg in one link at most. Plugins see the recorded start time as
//! `now-ms` (the caller fixes the runtime's clock), so two replays with the
//! same set give the same decisions.

use super::{FORMAT, Frame, Header};
use crate::model::{CallLeg, Decision, IdSet, LegId, Link, LinkId, same_call};
use crate::policy::PolicyChain;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A recording, read whole.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub header: Option<Header>,
    pub held: Vec<(CallLeg, String)>,
    pub held_links: Vec<Link>,
    pub legs: Vec<CallLeg>,
    pub links: Vec<Link>,
    /// The verdicts given then.
    pub then: Verdicts,
    /// Whether it has its end mark (a cut-short resync has not).
    pub complete: bool,
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a legsync resync recording: {reason}")]
    NotARecording { path: PathBuf, reason: String },
    #[error("{path} is a recording of format {found}; this host reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
}

/// Verdicts of a resync, legs and links: each with the plugin that gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub legs: Vec<(LegId, Decision, String)>,
    pub links: Vec<(LinkId, Decision, String)>,
}

/// One decision that differs between two sets of verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub item: &'static str,
    pub id: u64,
    /// The decision and plugin on each side (none: not offered there).
    pub before: Option<(Decision, String)>,
    pub after: Option<(Decision, String)>,
}

impl Verdicts {
    /// The items decided differently by `other` (or offered on one side
    /// only), by item and id.
    pub fn diff(&self, other: &Verdicts) -> Vec<Replayed> {
        let mut out = Vec::new();
        for (item, mine, theirs) in [
            ("leg", &self.legs, &other.legs),
            ("link", &self.links, &other.links),
        ] {
            let index = |list: &Vec<(u64, Decision, String)>| -> HashMap<u64, (Decision, String)> {
                list.iter()
                    .map(|(id, d, by)| (*id, (*d, by.clone())))
                    .collect()
            };
            let (before, after) = (index(mine), index(theirs));
            let mut ids: Vec<u64> = before.keys().chain(after.keys()).copied().collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let (b, a) = (before.get(&id), after.get(&id));
                if b.map(|v| v.0) != a.map(|v| v.0) {
                    out.push(Replayed {
                        item,
                        id,
                        before: b.cloned(),
                        after: a.cloned(),
                    });
                }
            }
        }
        out
    }

    /// How many items each decision got: (rebuilt, refused) for legs, then
    /// for links.
    pub fn counts(&self) -> [(usize, usize); 2] {
        let count = |list: &[(u64, Decision, String)]| {
            let refused = list.iter().filter(|v| v.1 == Decision::Refuse).count();
            (list.len() - refused, refused)
        };
        [count(&self.legs), count(&self.links)]
    }
}

impl Recording {
    /// Reads the recording at `path`.
    pub fn read(path: &Path) -> Result<Recording, RecordingError> {
        let io = |source| RecordingError::Io {
            path: path.into(),
            source,
        };
        let not = |reason: String| RecordingError::NotARecording {
            path: path.into(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let mut recording = Recording::default();
        let mut at = 0;
        while at < bytes.len() {
            let Some(len) = bytes.get(at..at + 4) else {
                // A frame cut in its length: the file ends there.
                break;
            };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let Some(body) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            let frame: Frame =
                postcard::from_bytes(body).map_err(|e| not(format!("frame at byte {at}: {e}")))?;
            at += 4 + len;
            match frame {
                Frame::Header(header) => {
                    if header.format != FORMAT {
                        return Err(RecordingError::Format {
                            path: path.into(),
                            found: header.format,
                        });
                    }
                    recording.header = Some(header);
                }
                _ if recording.header.is_none() => {
                    return Err(not("it does not begin with a header".into()));
                }
                Frame::Held { legs, links } => {
                    recording.held.extend(legs);
                    recording.held_links.extend(links);
                }
                Frame::Legs(legs) => recording.legs.extend(legs),
                Frame::Links(links) => recording.links.extend(links),
                Frame::Decided(decided) => recording.then.legs.extend(decided),
                Frame::DecidedLinks(decided) => recording.then.links.extend(decided),
                Frame::End => recording.complete = true,
            }
        }
        if recording.header.is_none() {
            return Err(not("it is empty".into()));
        }
        Ok(recording)
    }

    /// The legs the resync offered to the plugins, in the order they came.
    pub fn offered_legs(&self) -> Vec<CallLeg> {
        let held: HashMap<LegId, &CallLeg> =
            self.held.iter().map(|(leg, _)| (leg.id, leg)).collect();
        let mut seen = IdSet::default();
        self.legs
            .iter()
            .filter(|leg| seen.insert(leg.id))
            .filter(|leg| !held.get(&leg.id).is_some_and(|h| same_call(h, leg)))
            .cloned()
            .collect()
    }

    /// The links the resync offered, given the offered legs that were
    /// rebuilt.
    pub fn offered_links(&self, rebuilt: &IdSet<LegId>) -> Vec<Link> {
        let held_links: IdSet<LinkId> = self.held_links.iter().map(|l| l.id).collect();
        let listed: IdSet<LegId> = self.legs.iter().map(|l| l.id).collect();
        let known: IdSet<LegId> = self
            .held
            .iter()
            .map(|(leg, _)| leg.id)
            .filter(|id| listed.contains(id))
            .collect();
        let mut taken = IdSet::default();
        self.links
            .iter()
            .filter(|link| !held_links.contains(&link.id) && link.leg_a != link.leg_b)
            .filter(|link| {
                [link.leg_a, link.leg_b]
                    .iter()
                    .all(|leg| known.contains(leg) || rebuilt.contains(leg))
            })
            .filter(|link| taken.insert(link.leg_a) & taken.insert(link.leg_b))
            .copied()
            .collect()
    }

    /// Decides the recorded resync again with `chain`: its legs, then the
    /// links their verdicts leave offered.
    pub fn replay(&self, chain: &PolicyChain) -> Verdicts {
        let legs = self.offered_legs();
        let verdicts = chain.decide_legs(&legs);
        let rebuilt: IdSet<LegId> = legs
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| v.decision == Decision::Rebuild)
            .map(|(leg, _)| leg.id)
            .collect();
        let links = self.offered_links(&rebuilt);
        let link_verdicts = chain.decide_links(&links);
        Verdicts {
            legs: legs
                .iter()
                .zip(verdicts)
                .map(|(leg, v)| (leg.id, v.decision, v.plugin.as_str().to_string()))
                .collect(),
            links: links
                .iter()
                .zip(link_verdicts)
                .map(|(link, v)| (link.id, v.decision, v.plugin.as_str().to_string()))
                .collect(),
        }
    }
}
