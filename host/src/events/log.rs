//! The event log file, written by its own thread.
//!
//! A resync emits a million per-leg events; encoding and writing them on the
//! resync's task cost ~0.15 s of a million-leg takeover, on the critical
//! path. Batches are queued to one thread (`legsync-events`) that writes
//! them in order and only then hands them to full subscribers (the demo,
//! tests), so those never see an event that the file does not have yet.
//! Summaries (state changes, for the admin endpoint) go out at once, from
//! [`super::Events::emit_all`].

use super::{Audit, HostEvent, Line};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::{broadcast, oneshot};

/// What the log thread is asked to do, in order.
enum Job {
    /// Write the batch, flush the file, then pass each event on.
    Write {
        time_ms: u64,
        events: Vec<HostEvent>,
    },
    /// Answer once everything queued before is written.
    Flush(oneshot::Sender<()>),
    /// Flush, then go on in a new file at the same path (logrotate).
    Reopen(oneshot::Sender<std::io::Result<()>>),
}

/// Batches the queue holds before an emitter waits for the thread: a disk
/// that stalls holds the host back as a synchronous write did, instead of
/// piling events up in memory without bound.
const BATCHES_QUEUED: usize = 256;

/// The queue to the log thread. The thread ends when the last clone of the
/// queue is dropped, after writing what it holds.
#[derive(Clone)]
pub(super) struct EventLog {
    jobs: mpsc::SyncSender<Job>,
}

impl EventLog {
    /// Opens (appends to) `path` and starts the thread.
    /// Written events are passed on to `to`.
    pub fn open(
        path: &Path,
        audit: Arc<Audit>,
        to: broadcast::Sender<HostEvent>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file =
            open(path).with_context(|| format!("cannot open the event log {}", path.display()))?;
        let (jobs, queue) = mpsc::sync_channel(BATCHES_QUEUED);
        let mut writer = Writer {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            audit,
            to,
            line: Vec::with_capacity(128),
        };
        std::thread::Builder::new()
            .name("legsync-events".into())
            .spawn(move || {
                for job in queue {
                    writer.run(job);
                }
            })
            .context("cannot start the event log thread")?;
        Ok(EventLog { jobs })
    }

    /// Queues a batch; the thread writes it, then passes it on.
    pub fn write(&self, time_ms: u64, events: Vec<HostEvent>) {
        // The thread only ends when every queue is gone, so this cannot fail.
        let _ = self.jobs.send(Job::Write { time_ms, events });
    }

    /// Returns once everything queued so far is in the file.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Writes what is queued to the old file, then opens a new one at the
    /// same path.
    pub async fn reopen(&self) -> std::io::Result<()> {
        let (done, reopened) = oneshot::channel();
        self.jobs
            .send(Job::Reopen(done))
            .map_err(|_| std::io::Error::other("the event log thread is gone"))?;
        reopened
            .await
            .map_err(|_| std::io::Error::other("the event log thread is gone"))?
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The log thread's state.
struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    audit: Arc<Audit>,
    to: broadcast::Sender<HostEvent>,
    /// One line, reused.
    line: Vec<u8>,
}

impl Writer {
    fn run(&mut self, job: Job) {
        match job {
            Job::Write { time_ms, events } => {
                for event in &events {
                    if let Err(e) = write_line(&mut self.file, &mut self.line, time_ms, event) {
                        self.audit.error(&self.path, &e);
                    }
                }
                if let Err(e) = self.file.flush() {
                    self.audit.error(&self.path, &e);
                }
                self.pass_on(events);
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Reopen(done) => {
                let reopened = self.file.flush().and_then(|()| open(&self.path));
                let _ = done.send(reopened.map(|file| {
                    self.file = std::io::BufWriter::new(file);
                }));
            }
        }
    }

    fn pass_on(&self, events: Vec<HostEvent>) {
        if self.to.receiver_count() > 0 {
            for event in events {
                let _ = self.to.send(event);
            }
        }
    }
}

/// Writes one event's line to `file`, through `buffer` (reused).
pub(super) fn write_line(
    file: &mut impl Write,
    buffer: &mut Vec<u8>,
    time_ms: u64,
    event: &HostEvent,
) -> std::io::Result<()> {
    buffer.clear();
    if !event.write_item_line(time_ms, buffer) {
        buffer.clear();
        serde_json::to_writer(&mut *buffer, &Line { time_ms, event })?;
        buffer.push(b'\n');
    }
    file.write_all(buffer)
}
