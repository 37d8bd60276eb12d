//! Recorded resyncs: what the engine sent and what the host held, so that
//! `legsync replay` can decide the same resync again with any plugin set.
//!
//! Off by default (`[recording] enabled = true`). One file per resync in
//! the recordings directory (default: `recordings/` beside the ledger),
//! `resync-<start ms>.lsrec`, bounded in count and bytes (the oldest go
//! first). A file is a sequence of frames, each a 4-byte little-endian
//! length and a [`Frame`] in postcard (the wire protocol's compact serde):
//! a header, the held table at the start, the snapshot's chunks as they
//! came, the verdicts given then, and an end mark (a file without one was
//! cut short: the host stopped, or the link was lost mid-resync).
//!
//! Writing is off the live path: frames go to a thread of the recorder's
//! own, which writes and prunes.

mod replay;

pub use replay::{Recording, RecordingError, Replayed, Verdicts};

use crate::model::{CallLeg, Decision, LegId, Link, LinkId, PluginName};
use crate::policy::Verdict;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The format of the files this host writes and reads.
pub const FORMAT: u32 = 1;
/// Legs or links per frame.
const FRAME_ITEMS: usize = 4096;

/// `[recording]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Whether resyncs are recorded.
    pub enabled: bool,
    /// Where (default: `recordings/` beside the ledger).
    pub dir: Option<PathBuf>,
    /// Recordings kept (the oldest are deleted past this).
    pub max_files: usize,
    /// Bytes kept in all, in MB.
    pub max_mb: u64,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: None,
            max_files: 10,
            max_mb: 1024,
        }
    }
}

/// The first frame: which resync this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub host: String,
    pub boot_id: u64,
    /// When the resync began: the clock a replay gives plugins (`now-ms`).
    pub started_ms: u64,
    /// The plugin set that decided then (`name@sha256-prefix`).
    pub plugins: Vec<String>,
}

/// One frame of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Header(Header),
    /// Part of the held table at the start: legs (with who adopted each)
    /// and links.
    Held {
        legs: Vec<(CallLeg, String)>,
        links: Vec<Link>,
    },
    /// Snapshot legs, as the engine sent them.
    Legs(Vec<CallLeg>),
    /// Snapshot links, as the engine sent them.
    Links(Vec<Link>),
    /// Verdicts given then to unknown legs: leg, decision, plugin.
    Decided(Vec<(LegId, Decision, String)>),
    /// Verdicts given then to unknown links.
    DecidedLinks(Vec<(LinkId, Decision, String)>),
    /// The resync finished.
    End,
}

/// What the writer thread is told.
enum Message {
    Open(PathBuf),
    Frame(Frame),
    Close,
    /// The resync failed: the file stays, without its end mark.
    Abandon,
}

/// Records resyncs into files; its writer thread is drained when it drops.
pub struct Recorder {
    messages: Option<mpsc::Sender<Message>>,
    writer: Option<std::thread::JoinHandle<()>>,
    recording: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    /// A recorder writing into `dir` (created), keeping at most
    /// `max_files` recordings and `max_bytes` in all.
    pub fn start(dir: &Path, max_files: usize, max_bytes: u64) -> anyhow::Result<Recorder> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the recordings directory {}", dir.display()))?;
        let (messages, inbox) = mpsc::channel();
        let dir = dir.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("legsync-recorder".into())
            .spawn(move || write_all(inbox, &dir, max_files.max(1), max_bytes))?;
        Ok(Recorder {
            messages: Some(messages),
            writer: Some(writer),
            recording: false,
        })
    }

    /// Opens a recording for the resync `header` describes, beginning with
    /// what the host holds.
    pub fn begin(&mut self, header: Header, legs: Vec<(CallLeg, PluginName)>, links: Vec<Link>) {
        let name = format!("resync-{}.lsrec", header.started_ms);
        self.send(Message::Open(PathBuf::from(name)));
        self.recording = true;
        self.frame(Frame::Header(header));
        let mut legs = legs
            .into_iter()
            .map(|(leg, by)| (leg, by.as_str().to_string()));
        let mut links = links.into_iter();
        loop {
            let legs: Vec<_> = legs.by_ref().take(FRAME_ITEMS).collect();
            let links: Vec<_> = links.by_ref().take(FRAME_ITEMS).collect();
            if legs.is_empty() && links.is_empty() {
                break;
            }
            self.frame(Frame::Held { legs, links });
        }
    }

    pub fn legs(&mut self, legs: &[CallLeg]) {
        if self.recording {
            self.frame(Frame::Legs(legs.to_vec()));
        }
    }

    pub fn links(&mut self, links: &[Link]) {
        if self.recording {
            self.frame(Frame::Links(links.to_vec()));
        }
    }

    pub fn decided(&mut self, legs: &[CallLeg], verdicts: &[Verdict]) {
        if self.recording {
            let decided = legs
                .iter()
                .zip(verdicts)
                .map(|(leg, v)| (leg.id, v.decision, v.plugin.as_str().to_string()))
                .collect();
            self.frame(Frame::Decided(decided));
        }
    }

    pub fn decided_links(&mut self, links: &[Link], verdicts: &[Verdict]) {
        if self.recording {
            let decided = links
                .iter()
                .zip(verdicts)
                .map(|(link, v)| (link.id, v.decision, v.plugin.as_str().to_string()))
                .collect();
            self.frame(Frame::DecidedLinks(decided));
        }
    }

    /// The resync finished: the end mark, and the file is closed.
    pub fn finish(&mut self) {
        if std::mem::take(&mut self.recording) {
            self.frame(Frame::End);
            self.send(Message::Close);
        }
    }

    /// The resync failed: the file is closed without its end mark.
    pub fn abandon(&mut self) {
        if std::mem::take(&mut self.recording) {
            self.send(Message::Abandon);
        }
    }

    fn frame(&self, frame: Frame) {
        self.send(Message::Frame(frame));
    }

    fn send(&self, message: Message) {
        if let Some(messages) = &self.messages {
            let _ = messages.send(message);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.abandon();
        drop(self.messages.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: one file at a time; after each, the oldest files go
/// until the bounds hold.
fn write_all(inbox: mpsc::Receiver<Message>, dir: &Path, max_files: usize, max_bytes: u64) {
    let mut file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)> = None;
    for message in inbox {
        match message {
            Message::Open(name) => {
                let path = dir.join(name);
                file = match std::fs::File::create(&path) {
                    Ok(f) => Some((path, std::io::BufWriter::with_capacity(1 << 20, f))),
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "cannot create a resync recording; this resync is not recorded");
                        None
                    }
                };
            }
            Message::Frame(frame) => {
                if let Some((path, out)) = &mut file
                    && let Err(e) = write_frame(out, &frame)
                {
                    tracing::error!(path = %path.display(), error = %e, "cannot write a resync recording; it stops here");
                    file = None;
                }
            }
            Message::Close | Message::Abandon => {
                if let Some((path, mut out)) = file.take() {
                    if let Err(e) = out.flush() {
                        tracing::error!(path = %path.display(), error = %e, "cannot write a resync recording");
                    }
                    drop(out);
                    prune(dir, max_files, max_bytes);
                }
            }
        }
    }
}

/// One frame: its length (4 bytes, little-endian), then its bytes.
pub fn write_frame(out: &mut impl Write, frame: &Frame) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(frame).map_err(std::io::Error::other)?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)
}

/// Deletes the oldest recordings past `max_files` or `max_bytes`.
fn prune(dir: &Path, max_files: usize, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(String, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let size = e.metadata().ok()?.len();
            (name.starts_with("resync-") && name.ends_with(".lsrec"))
                .then(|| (name, size, e.path()))
        })
        .collect();
    // Newest first: names carry the start time.
    files.sort_by_key(|(name, _, _)| std::cmp::Reverse(start_of(name)));
    let mut kept_bytes = 0;
    for (index, (_, size, path)) in files.iter().enumerate() {
        kept_bytes += size;
        let over = index >= max_files || (index > 0 && kept_bytes > max_bytes);
        if over && let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete an old resync recording");
        }
    }
}

fn start_of(name: &str) -> u64 {
    name.trim_start_matches("resync-")
        .trim_end_matches(".lsrec")
        .parse()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_within_both_bounds() {
        let dir = tempfile::tempdir().unwrap();
        for start in [100, 300, 200, 400] {
            std::fs::write(dir.path().join(format!("resync-{start}.lsrec")), [0u8; 10]).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "kept").unwrap();
        prune(dir.path(), 3, 25);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "resync-300.lsrec", "resync-400.lsrec"]);
    }
}
