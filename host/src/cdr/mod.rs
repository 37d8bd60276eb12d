//! The ledger: the CDR file, the host's durable memory of money.
//!
//! - [`record`]: one line (START / END / RESUME) and what names a call.
//! - [`index`]: what the ledger says about each call, so every record is
//!   written once.
//! - [`bill`]: the billing rule and the ledger checks (`legsync cdr`).
//! - The writer below: a dedicated thread encodes and appends batches and
//!   fsyncs once for every batch waiting (group commit); records are durable
//!   when [`Pending::durable`] returns, and the host reports or acts on them
//!   only then. A resync stages its STARTs (written as they come) and
//!   commits once at the end. At open, a torn last line (a crash mid-write) is cut off and
//!   the index rebuilt, and the calls the ledger still has open come back as
//!   [`RecoveredCall`]s: the supervisor ends those the engine no longer has,
//!   so no crash, at any moment, loses a call.

pub mod bill;
pub mod index;
pub mod record;

use crate::model::{CallLeg, TerminationReason, now_ms};
use anyhow::Context;
use index::LedgerIndex;
use record::{CdrRecord, RecordKind, StartReason};
use rustc_hash::FxHashMap as HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// What the writer thread is asked to do.
enum Job {
    /// Append these records; fsync first if `sync`, then answer.
    Append {
        records: Vec<CdrRecord>,
        sync: bool,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    /// Make everything appended so far durable, then answer.
    Commit(oneshot::Sender<std::io::Result<()>>),
    /// The host was in sync with the engine at this time (Unix ms).
    Alive(u64),
}

/// A call the ledger had open when the host started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredCall {
    pub leg: CallLeg,
    /// The latest time the host can prove the call was up: its last record,
    /// or the last moment the host was in sync with the engine, whichever
    /// is later. An END for a call lost while the host was down ends here.
    pub proven_up_ms: u64,
}

/// Appends ledger records durably.
#[derive(Clone)]
pub struct CdrWriter {
    path: PathBuf,
    index: Arc<Mutex<LedgerIndex>>,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for CdrWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrWriter")
            .field("path", &self.path)
            .finish()
    }
}

/// Records handed to the writer thread; durable once awaited.
#[must_use = "records are durable only once awaited"]
pub struct Pending {
    written: Option<oneshot::Receiver<std::io::Result<()>>>,
    records: usize,
    path: PathBuf,
}

impl Pending {
    /// Waits until the records are on disk; returns how many there were.
    pub async fn durable(self) -> anyhow::Result<usize> {
        if let Some(written) = self.written {
            written
                .await
                .context("the CDR writer thread is gone")?
                .with_context(|| format!("cannot write the CDR file {}", self.path.display()))?;
        }
        Ok(self.records)
    }
}

/// The sidecar where the writer keeps the host's last moment in sync.
fn alive_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".alive");
    PathBuf::from(name)
}

impl CdrWriter {
    /// Opens (or creates) the ledger, repairs a torn last line, rebuilds the
    /// index, and returns the calls it has open.
    pub fn open(path: &Path) -> anyhow::Result<(CdrWriter, Vec<RecoveredCall>)> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the CDR file {}", path.display()))?;
        let mut index = LedgerIndex::default();
        // The parties of every open call, to write their END if the engine
        // no longer has them.
        let mut open: HashMap<u64, CallLeg> = HashMap::default();
        let mut good_len = 0u64;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                break;
            }
            number += 1;
            if !line.ends_with('\n') {
                tracing::warn!(file = %path.display(), line = number, "cutting off a torn last CDR line (a crash mid-write; it was never reported durable)");
                break;
            }
            let record: CdrRecord = serde_json::from_str(&line)
                .with_context(|| format!("{} line {number} is not a CDR record", path.display()))?;
            index.replay(&record);
            match record.kind {
                RecordKind::Start | RecordKind::Resume => {
                    open.insert(record.leg, record.call_leg());
                }
                RecordKind::End => {
                    open.remove(&record.leg);
                }
            }
            good_len += read as u64;
        }
        drop(reader);
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(std::io::SeekFrom::End(0))?;
        let alive_ms = read_alive(&alive_path(path));
        let recovered = index
            .open_calls()
            .filter_map(|(key, seen_ms)| {
                let leg = open.remove(&key.leg)?;
                Some(RecoveredCall {
                    leg,
                    proven_up_ms: seen_ms.max(alive_ms),
                })
            })
            .collect();
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        let alive = alive_path(path);
        let file = Arc::new(file);
        let flush = spawn_flusher(file.clone()).context("cannot start the CDR flusher thread")?;
        std::thread::Builder::new()
            .name("legsync-cdr".into())
            .spawn(move || write_loop(&file, &flush, &alive, receiver))
            .context("cannot start the CDR writer thread")?;
        let writer = CdrWriter {
            path: path.to_path_buf(),
            index: Arc::new(Mutex::new(index)),
            jobs,
        };
        Ok((writer, recovered))
    }

    /// START (or RESUME) records for answered legs the host now holds; a
    /// call the ledger has open already gets nothing. Durable once awaited.
    pub fn open_calls<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg>,
        reason: StartReason,
    ) -> Pending {
        let records = self.start_records(legs, reason);
        self.submit(records, true)
    }

    /// Like [`CdrWriter::open_calls`], for a resync's stream of chunks: the
    /// records are only *written* once awaited; a [`CdrWriter::commit`]
    /// makes them durable. A million STARTs then cost one wait for the
    /// disk instead of a thousand.
    pub fn stage_open_calls<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg>,
        reason: StartReason,
    ) -> Pending {
        let records = self.start_records(legs, reason);
        self.submit(records, false)
    }

    /// Makes every record handed over so far durable.
    pub fn commit(&self) -> Pending {
        let (done, written) = oneshot::channel();
        let _ = self.jobs.send(Job::Commit(done));
        Pending {
            written: Some(written),
            records: 0,
            path: self.path.clone(),
        }
    }

    fn start_records<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg>,
        reason: StartReason,
    ) -> Vec<CdrRecord> {
        let now = now_ms();
        let mut index = self.lock();
        legs.into_iter()
            .filter_map(|leg| index.open(leg, reason, now))
            .collect()
    }

    /// END records for the answered calls among `ended`, each ended at its
    /// own time.
    pub fn close_calls<'a>(
        &self,
        ended: impl IntoIterator<Item = (&'a CallLeg, u64)>,
        reason: TerminationReason,
    ) -> Pending {
        let now = now_ms();
        let records = {
            let mut index = self.lock();
            ended
                .into_iter()
                .flat_map(|(leg, end_ms)| index.close(leg, reason, end_ms, now))
                .collect()
        };
        self.submit(records, true)
    }

    /// Records are written by the host named `host` (unique in its pair).
    pub fn set_host(&self, host: &str) {
        self.lock().set_host(host);
    }

    /// Records hold what `engine` said under controller `epoch` from now on
    /// (set at every accepted connection, before the resync writes).
    pub fn set_epoch(&self, engine: &str, epoch: u64) {
        self.lock().set_epoch(engine, epoch);
    }

    /// The engine and epoch of the latest record or connection.
    pub fn epoch(&self) -> (String, u64) {
        let index = self.lock();
        (index.stamp().engine.to_string(), index.stamp().epoch)
    }

    /// Makes room in the index for `calls` calls in all.
    pub fn reserve_total(&self, calls: usize) {
        self.lock().reserve_total(calls);
    }

    /// Remembers (beside the ledger, off the caller's thread) that the host
    /// was in sync with the engine now: the end time the ledger can prove
    /// for a call lost while the host was down.
    pub fn mark_alive(&self) {
        let _ = self.jobs.send(Job::Alive(now_ms()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(&self, records: Vec<CdrRecord>, sync: bool) -> Pending {
        let count = records.len();
        let written = if records.is_empty() {
            None
        } else {
            let (done, written) = oneshot::channel();
            // A gone writer thread drops `done`: `durable` reports it.
            let _ = self.jobs.send(Job::Append {
                records,
                sync,
                done,
            });
            Some(written)
        };
        Pending {
            written,
            records: count,
            path: self.path.clone(),
        }
    }

    /// Reads every record of a CDR file (for tools and tests).
    pub fn read_all(path: &Path) -> anyhow::Result<Vec<CdrRecord>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("line {}", i + 1)))
            .collect()
    }
}

fn read_alive(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Flushes staged records to disk in the background (one fsync at a time,
/// kicks coalesced), so that a resync's commit finds most of its million
/// STARTs on disk already instead of waiting for all of them at the end.
fn spawn_flusher(file: Arc<std::fs::File>) -> std::io::Result<std::sync::mpsc::SyncSender<()>> {
    let (kick, kicks) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("legsync-cdr-flush".into())
        .spawn(move || {
            while kicks.recv().is_ok() {
                // A failure here is the commit's to report: its own fsync
                // meets the same error.
                let _ = file.sync_data();
            }
        })?;
    Ok(kick)
}

/// The writer thread: takes every job waiting, encodes and writes their
/// records, one fsync if any of them asked for it (group commit), then
/// acknowledges them all.
fn write_loop(
    file: &std::fs::File,
    flush: &std::sync::mpsc::SyncSender<()>,
    alive: &Path,
    jobs: std::sync::mpsc::Receiver<Job>,
) {
    let mut file = file;
    let mut lines = Vec::new();
    while let Ok(first) = jobs.recv() {
        // Records of this group, by kind: START, END, RESUME.
        let mut kinds = [0u64; 3];
        let mut waiting = Vec::new();
        let mut sync = false;
        let mut alive_ms = None;
        for job in std::iter::once(first).chain(jobs.try_iter()) {
            match job {
                Job::Append {
                    records,
                    sync: now,
                    done,
                } => {
                    for record in &records {
                        record.write_line(&mut lines);
                        kinds[record.kind as usize] += 1;
                    }
                    sync |= now;
                    waiting.push(done);
                }
                Job::Commit(done) => {
                    sync = true;
                    waiting.push(done);
                }
                Job::Alive(ms) => alive_ms = Some(ms),
            }
        }
        let mut result = file.write_all(&lines);
        if result.is_ok() && sync {
            let started = std::time::Instant::now();
            result = file.sync_data();
            crate::metrics::observe(crate::metrics::CDR_FSYNC_SECONDS, started.elapsed());
        } else if result.is_ok() && !lines.is_empty() {
            // Staged: on its way to disk while the resync goes on.
            let _ = flush.try_send(());
        }
        if result.is_ok() {
            for (kind, n) in ["start", "end", "resume"].into_iter().zip(kinds) {
                crate::metrics::count(crate::metrics::CDR_RECORDS, "kind", kind, n);
            }
        }
        if let Err(e) = &result {
            // Whatever part was written is past a newline boundary or torn;
            // the next open cuts a torn line, and no caller was told durable.
            tracing::error!(error = %e, "cannot write the CDR file");
        }
        lines.clear();
        for done in waiting {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = done.send(outcome);
        }
        if let Some(ms) = alive_ms {
            let tmp = alive.with_extension("alive.tmp");
            if let Err(e) =
                std::fs::write(&tmp, format!("{ms}\n")).and_then(|()| std::fs::rename(&tmp, alive))
            {
                tracing::warn!(error = %e, file = %alive.display(), "cannot record the last moment in sync");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(id: u64) -> CallLeg {
        crate::model::test_leg(id, 1_000)
    }

    #[tokio::test]
    async fn a_torn_line_is_cut_and_a_restart_never_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, recovered) = CdrWriter::open(&path).unwrap();
        assert!(recovered.is_empty());
        let calls = [answered(1), answered(2), answered(3)];
        let written = writer.open_calls(&calls, StartReason::Answered);
        assert_eq!(written.durable().await.unwrap(), 3);
        let ended = calls[..2].iter().map(|l| (l, 5_000));
        let written = writer.close_calls(ended, TerminationReason::GraceExpired);
        assert_eq!(written.durable().await.unwrap(), 2);
        writer.mark_alive();
        drop(writer);
        // A crash mid-write leaves half a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"record\":6,\"kind\":\"en").unwrap();
        drop(file);

        let (writer, recovered) = CdrWriter::open(&path).unwrap();
        assert_eq!(recovered.len(), 1, "call 3 is still open");
        assert_eq!(recovered[0].leg.id, 3);
        assert!(recovered[0].proven_up_ms >= 1_000);
        let again = writer.close_calls(
            calls[..2].iter().map(|l| (l, 6_000)),
            TerminationReason::GraceExpired,
        );
        assert_eq!(again.durable().await.unwrap(), 0, "never written twice");
        let resumed = writer.open_calls(&calls[..1], StartReason::Found);
        assert_eq!(resumed.durable().await.unwrap(), 1);
        let records = CdrWriter::read_all(&path).unwrap();
        assert_eq!(records.len(), 6);
        assert_eq!(records[5].record, 6, "numbering continues after the cut");
        assert_eq!(records[5].resumes, Some(4));
    }

    #[tokio::test]
    async fn staged_records_are_durable_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        let staged = writer.stage_open_calls(&[answered(1), answered(2)], StartReason::Found);
        assert_eq!(staged.durable().await.unwrap(), 2);
        writer.commit().durable().await.unwrap();
        let (_, recovered) = CdrWriter::open(&path).unwrap();
        let mut ids: Vec<u64> = recovered.iter().map(|c| c.leg.id).collect();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn a_file_that_is_not_cdr_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        std::fs::write(&path, "hello\n").unwrap();
        let err = CdrWriter::open(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("line 1 is not a CDR record"),
            "{err:#}"
        );
    }
}
