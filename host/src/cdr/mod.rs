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
pub mod rotate;

use crate::model::IdMap as HashMap;
use crate::model::{CallLeg, TerminationReason, now_ms};
use anyhow::Context;
use index::LedgerIndex;
use record::{CdrRecord, RecordKind, StartReason};
use std::io::{Seek, Write};
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
    /// The file was rotated: checkpoint what it held, then write to a new
    /// file at the ledger's path.
    Reopen(oneshot::Sender<std::io::Result<()>>),
}

/// How far the ledger is durable: the last record fsynced, and when
/// (wall-clock microseconds, taken right after the fsync returned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurableMark {
    pub record: u64,
    pub at_us: u64,
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
    durable: tokio::sync::watch::Receiver<DurableMark>,
    /// The host named in the ledger's last record, if any.
    written_by: Option<compact_str::CompactString>,
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
    /// The number of the last of these records (0 if none).
    last_record: u64,
    path: PathBuf,
}

impl Pending {
    /// The number of the last of these records (0 if none): durable once
    /// the ledger's durable mark reaches it.
    pub fn last_record(&self) -> u64 {
        self.last_record
    }

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
        let Loaded {
            index,
            recovered,
            good_len,
            written_by,
        } = load(path, &file)?;
        // A torn last line (a crash mid-write) is cut off.
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(std::io::SeekFrom::End(0))?;
        let last_read = index.next_record().saturating_sub(1);
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        let alive = alive_path(path);
        let file = Arc::new(file);
        let flush = spawn_flusher().context("cannot start the CDR flusher thread")?;
        let ledger = path.to_path_buf();
        let last_record = last_read;
        let (durable, durable_rx) = tokio::sync::watch::channel(DurableMark {
            record: last_record,
            at_us: crate::model::now_us(),
        });
        std::thread::Builder::new()
            .name("legsync-cdr".into())
            .spawn(move || {
                Writer {
                    file,
                    path: ledger,
                    alive,
                    flush,
                    last_record,
                    durable_record: last_record,
                    durable,
                }
                .run(receiver)
            })
            .context("cannot start the CDR writer thread")?;
        let writer = CdrWriter {
            path: path.to_path_buf(),
            index: Arc::new(Mutex::new(index)),
            jobs,
            durable: durable_rx,
            written_by,
        };
        Ok((writer, recovered))
    }

    /// START (or RESUME) records for answered legs the host now holds; a
    /// call the ledger has open already gets nothing. Durable once awaited.
    pub fn open_calls<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg, IntoIter: Clone>,
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
        legs: impl IntoIterator<Item = &'a CallLeg, IntoIter: Clone>,
        reason: StartReason,
    ) -> Pending {
        let records = self.start_records(legs, reason);
        self.submit(records, false)
    }

    /// After the file was moved away (logrotate): makes what it holds
    /// durable, writes the checkpoint beside it (see [`rotate`]), and goes
    /// on in a new file at the ledger's path. Durable once awaited.
    pub fn reopen(&self) -> Pending {
        self.ask(Job::Reopen)
    }

    /// Follows how far the ledger is durable (a mark per fsync; a slow
    /// reader sees only the latest).
    pub fn durable_marks(&self) -> tokio::sync::watch::Receiver<DurableMark> {
        self.durable.clone()
    }

    /// Makes every record handed over so far durable.
    pub fn commit(&self) -> Pending {
        self.ask(Job::Commit)
    }

    /// Sends the writer a job that answers when it is done.
    fn ask(&self, job: fn(oneshot::Sender<std::io::Result<()>>) -> Job) -> Pending {
        let (done, written) = oneshot::channel();
        // A gone writer thread drops `done`: `durable` reports it.
        let _ = self.jobs.send(job(done));
        Pending {
            written: Some(written),
            records: 0,
            last_record: 0,
            path: self.path.clone(),
        }
    }

    fn start_records<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg, IntoIter: Clone>,
        reason: StartReason,
    ) -> Vec<CdrRecord> {
        self.lock().open_all(legs, reason, now_ms())
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

    /// The CARRY record (see [`record::RecordKind::Carry`]): every call the
    /// ledger has open is carried under the current epoch. Written at the
    /// end of every resync, once its ENDs are in; durable once awaited.
    pub fn carry(&self) -> Pending {
        let record = self.lock().carry(now_ms());
        self.submit(vec![record], true)
    }

    /// Whether `engine` may give this host controller `epoch` (never below
    /// one the ledger has seen of it).
    pub fn check_epoch(&self, engine: &str, epoch: u64) -> Result<(), index::EpochWentBack> {
        self.lock().check_epoch(engine, epoch)
    }

    /// Records are written by the host named `host` (unique in its pair).
    /// A ledger written under another name is refused: record numbers,
    /// RESUMEs and epochs are a host's own, so a renamed host (the default
    /// name is the machine's, which a VM can change) would split its ledger
    /// in two for `legsync cdr check` and the bill.
    pub fn set_host(&self, host: &str) -> anyhow::Result<()> {
        same_name(&self.path, self.written_by.as_deref(), host)?;
        self.lock().set_host(host);
        Ok(())
    }

    /// What `open` would find wrong with the ledger at `path` for the host
    /// named `host`, without writing anything (`legsync check`): the
    /// ledger, its checkpoint and `.alive` file verified together, the host
    /// name, and a directory the host can write in. Returns how many calls
    /// it has open and the number of its last record.
    pub fn verify(path: &Path, host: &str) -> anyhow::Result<(usize, u64)> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let probe = dir.join(format!(".legsync-check-{}", std::process::id()));
        std::fs::File::create(&probe)
            .with_context(|| format!("cannot write in the ledger's directory {}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the CDR file {}", path.display()));
            }
        };
        let loaded = load(path, &file)?;
        same_name(path, loaded.written_by.as_deref(), host)?;
        let last_record = loaded.index.next_record().saturating_sub(1);
        Ok((loaded.recovered.len(), last_record))
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
        // Numbered as they were made: the last is the highest.
        let last_record = records.last().map_or(0, |r| r.record);
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
            last_record,
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

/// A host's records carry one name: a ledger written under `previous` is
/// refused to a host named `host`.
fn same_name(path: &Path, previous: Option<&str>, host: &str) -> anyhow::Result<()> {
    if let Some(previous) = previous.filter(|p| *p != host) {
        anyhow::bail!(
            "the ledger {} was written by host `{previous}`, and this host is named `{host}`: a host's \
             records must carry one name. Set `name = \"{previous}\"` in the config (or `--name {previous}`), \
             or start a new ledger file for the new name",
            path.display()
        );
    }
    Ok(())
}

/// What the ledger and its sidecars say, read and verified.
struct Loaded {
    index: LedgerIndex,
    recovered: Vec<RecoveredCall>,
    /// The length of the file's whole lines (a torn last line excluded).
    good_len: u64,
    /// The host named in the last record.
    written_by: Option<compact_str::CompactString>,
}

/// Reads the ledger at `path` (open as `file`) with its checkpoint and
/// `.alive` file, and verifies them together; writes nothing.
fn load(path: &Path, file: &std::fs::File) -> anyhow::Result<Loaded> {
    let mut index = LedgerIndex::default();
    // The parties of every open call, to write their END if the engine
    // no longer has them.
    let mut open: HashMap<u64, CallLeg> = HashMap::default();
    let mut written_by = None;
    let (alive_ms, last_written) = read_alive(&alive_path(path))?;
    // When the record the `.alive` file names as durable was written.
    let mut last_written_at = None;
    let mut take = |record: CdrRecord| {
        if record.record == last_written {
            last_written_at = Some(record.time_ms);
        }
        index.replay(&record);
        if written_by.as_ref() != Some(&record.host) {
            written_by = Some(record.host.clone());
        }
        match record.kind {
            RecordKind::Start | RecordKind::Resume => {
                open.insert(record.leg, record.call_leg());
            }
            RecordKind::End => {
                open.remove(&record.leg);
            }
            RecordKind::Carry => {}
        }
    };
    // What the rotated files said, then what this one says.
    let checkpoint_file = rotate::checkpoint_path(path);
    let checkpoint = rotate::read_checkpoint(&checkpoint_file)?;
    let through = checkpoint.through;
    let sealed = through.is_some();
    checkpoint.records.into_iter().for_each(&mut take);
    let mut first_in_file = None;
    let good_len = rotate::replay_lines(file, path, |record| {
        first_in_file.get_or_insert(record.record);
        take(record)
    })?;
    // The file must go on where the checkpoint stops: a gap means the
    // checkpoint is stale or gone, or the file was cut in place.
    if let Some(first) = first_in_file {
        let covered = through.unwrap_or(0);
        anyhow::ensure!(
            first <= covered + 1 || (!sealed && checkpoint_file.exists()),
            "{} starts at record {first}, but {}: records {} to {} are nowhere this host can read. \
             The file was truncated in place (logrotate's `copytruncate`: use `create` and `legsync reopen` instead), \
             or the checkpoint is stale or was deleted. Put the missing records back (cat the rotated pieces \
             before {} and remove the checkpoint), then start again",
            path.display(),
            match through {
                Some(t) => format!(
                    "its checkpoint {} covers records up to {t} only",
                    checkpoint_file.display()
                ),
                None => format!(
                    "there is no checkpoint {} for the records before it",
                    checkpoint_file.display()
                ),
            },
            covered + 1,
            first - 1,
            path.display(),
        );
    }
    let last_read = index.next_record().saturating_sub(1);
    anyhow::ensure!(
        last_written <= last_read,
        "{} ends at record {last_read}, but this host wrote records up to {last_written}: \
         the ledger was rotated without `legsync reopen` (or truncated, as copytruncate does), \
         and the host cannot know which calls are open without those records. Put the rotated \
         piece back in place (cat it before the current file), or, knowing that calls may then \
         be billed twice or lost, move {} away to start anyway",
        path.display(),
        alive_path(path).display()
    );
    // The moment in sync was taken after that record was durable: an
    // earlier one is another ledger's `.alive`, or an old copy.
    if let Some(written_at) = last_written_at {
        anyhow::ensure!(
            alive_ms + ALIVE_SKEW_MS >= written_at,
            "{} says the host was last in sync at {alive_ms} (Unix ms), before record {last_written} \
             it names as durable was written ({written_at}): it is not this ledger's, or an old copy. \
             Remove it to start without it (calls lost while the host was down then end at their last record)",
            alive_path(path).display()
        );
    }
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
    Ok(Loaded {
        index,
        recovered,
        good_len,
        written_by: written_by.filter(|host: &compact_str::CompactString| !host.is_empty()),
    })
}

/// How far ahead of this machine's clock an `.alive` time may be (a clock
/// stepped back by NTP after the host wrote it).
const ALIVE_SKEW_MS: u64 = 60_000;

/// The sidecar's last moment in sync and last durable record (0, 0 when
/// there is none yet). A sidecar that cannot be read or parsed, or that
/// claims a moment in the future, is refused: the first would skip the
/// rotation check, the second would stamp ENDs with that future time.
fn read_alive(path: &Path) -> anyhow::Result<(u64, u64)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read {} (the ledger's last moment in sync)",
                    path.display()
                )
            });
        }
    };
    let words: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|w: &Vec<u64>| w.len() == 2)
        .with_context(|| {
            format!(
                "{} is damaged: it must hold two numbers (the last moment in sync, in Unix ms, and the last durable record); \
                 remove it to start without it (the rotation check is then skipped once)",
                path.display()
            )
        })?;
    let (alive_ms, record) = (words[0], words[1]);
    let now = now_ms();
    anyhow::ensure!(
        alive_ms <= now + ALIVE_SKEW_MS,
        "{} says the host was in sync at {alive_ms} (Unix ms), {} s after this machine's clock: \
         ENDs would be stamped in the future. Fix the clock, or remove the file (calls lost while the \
         host was down then end at their last record)",
        path.display(),
        (alive_ms - now) / 1000
    );
    Ok((alive_ms, record))
}

/// Flushes staged records to disk in the background (one fsync at a time,
/// kicks coalesced), so that a resync's commit finds most of its million
/// STARTs on disk already instead of waiting for all of them at the end.
/// Each kick carries the file (a reopen changes it).
fn spawn_flusher() -> std::io::Result<std::sync::mpsc::SyncSender<Arc<std::fs::File>>> {
    let (kick, kicks) = std::sync::mpsc::sync_channel::<Arc<std::fs::File>>(1);
    std::thread::Builder::new()
        .name("legsync-cdr-flush".into())
        .spawn(move || {
            while let Ok(file) = kicks.recv() {
                // A failure here is the commit's to report: its own fsync
                // meets the same error.
                let _ = file.sync_data();
            }
        })?;
    Ok(kick)
}

/// The writer thread's state.
struct Writer {
    file: Arc<std::fs::File>,
    path: PathBuf,
    alive: PathBuf,
    flush: std::sync::mpsc::SyncSender<Arc<std::fs::File>>,
    /// The number of the last record written.
    last_record: u64,
    /// The number of the last record known durable (fsynced): what the
    /// `.alive` sidecar claims, so that a restart notices records that
    /// went to a file moved away, and a power loss never makes it claim
    /// records the disk did not keep.
    durable_record: u64,
    /// Told `durable_record` after every fsync.
    durable: tokio::sync::watch::Sender<DurableMark>,
}

impl Writer {
    /// Takes every job waiting, encodes and writes their records, one
    /// fsync if any of them asked for it (group commit), then acknowledges
    /// them all. A reopen ends a group: what came before it goes to the
    /// old file.
    fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        let mut lines = Vec::new();
        while let Ok(first) = jobs.recv() {
            // Records of this group, by kind: START, END, RESUME, CARRY.
            let mut kinds = [0u64; 4];
            let mut waiting = Vec::new();
            let mut sync = false;
            let mut alive_ms = None;
            let mut reopen = None;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append {
                        records,
                        sync: now,
                        done,
                    } => {
                        for record in &records {
                            record.write_line(&mut lines);
                            kinds[record.kind as usize] += 1;
                            self.last_record = self.last_record.max(record.record);
                        }
                        sync |= now;
                        waiting.push(done);
                    }
                    Job::Commit(done) => {
                        sync = true;
                        waiting.push(done);
                    }
                    Job::Alive(ms) => alive_ms = Some(ms),
                    Job::Reopen(done) => {
                        reopen = Some(done);
                        break;
                    }
                }
                next = jobs.try_recv().ok();
            }
            let result = self.write(&lines, sync || reopen.is_some());
            if result.is_ok() {
                let names = ["start", "end", "resume", "carry"];
                for (kind, n) in names.into_iter().zip(kinds) {
                    crate::metrics::count(crate::metrics::CDR_RECORDS, "kind", kind, n);
                }
            }
            lines.clear();
            for done in waiting {
                let _ = done.send(copy(&result));
            }
            if let Some(ms) = alive_ms {
                self.mark_alive(ms);
            }
            if let Some(done) = reopen {
                let reopened = result.and_then(|()| self.reopen());
                if let Err(e) = &reopened {
                    tracing::error!(error = %e, file = %self.path.display(), "cannot reopen the CDR file; writing on in the old one");
                }
                let _ = done.send(reopened);
            }
        }
    }

    fn write(&mut self, lines: &[u8], sync: bool) -> std::io::Result<()> {
        let mut file = &*self.file;
        let mut result = file.write_all(lines);
        if result.is_ok() && sync {
            let started = std::time::Instant::now();
            result = file.sync_data();
            crate::metrics::observe(crate::metrics::CDR_FSYNC_SECONDS, started.elapsed());
            if result.is_ok() {
                self.durable_record = self.last_record;
                self.durable.send_replace(DurableMark {
                    record: self.durable_record,
                    at_us: crate::model::now_us(),
                });
            }
        } else if result.is_ok() && !lines.is_empty() {
            // Staged: on its way to disk while the resync goes on.
            let _ = self.flush.try_send(self.file.clone());
        }
        if let Err(e) = &result {
            // Whatever part was written is past a newline boundary or torn;
            // the next open cuts a torn line, and no caller was told durable.
            tracing::error!(error = %e, "cannot write the CDR file");
        }
        result
    }

    /// The old file is durable (written and synced by the caller): its
    /// records and the old checkpoint are compacted into the new
    /// checkpoint, then the ledger's path is opened anew.
    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let other = |e: anyhow::Error| std::io::Error::other(format!("{e:#}"));
        // The old file by its descriptor: wherever it was moved to.
        let old = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        // Not moved (a reopen without a rotation): nothing to compact.
        if same_file(&old, &self.path) {
            tracing::info!(file = %self.path.display(), "reopen: the CDR file was not moved; nothing to do");
            return Ok(());
        }
        let checkpoint = rotate::checkpoint_path(&self.path);
        let previous = rotate::read_checkpoint(&checkpoint).map_err(|e| other(e.into()))?;
        let records = rotate::compact(previous.records, &old, now_ms()).map_err(other)?;
        rotate::write_checkpoint(&checkpoint, &records, self.last_record).map_err(other)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        tracing::info!(file = %self.path.display(), checkpoint = records.len(), "CDR file reopened (rotation); checkpoint written");
        self.file = Arc::new(file);
        Ok(())
    }

    fn mark_alive(&self, ms: u64) {
        let tmp = self.alive.with_extension("alive.tmp");
        let text = format!("{ms} {}\n", self.durable_record);
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.alive))
        {
            tracing::warn!(error = %e, file = %self.alive.display(), "cannot record the last moment in sync");
        }
    }
}

/// Whether `a` and `b` are the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn copy(result: &std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
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

    /// logrotate moves the file, the host reopens: after a restart that
    /// reads only the new file (the rotated one is elsewhere), the host
    /// still knows its open calls and never writes a second END.
    #[tokio::test]
    async fn rotation_keeps_what_the_host_needs_in_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        let calls = [answered(1), answered(2), answered(3)];
        writer
            .open_calls(&calls, StartReason::Answered)
            .durable()
            .await
            .unwrap();
        let ended = calls[..1].iter().map(|l| (l, 5_000));
        writer
            .close_calls(ended, TerminationReason::Released)
            .durable()
            .await
            .unwrap();
        // Grace-expired: may come back (a RESUME then).
        let ended = calls[1..2].iter().map(|l| (l, 6_000));
        writer
            .close_calls(ended, TerminationReason::GraceExpired)
            .durable()
            .await
            .unwrap();
        std::fs::rename(&path, dir.path().join("cdr.jsonl.1")).unwrap();
        writer.reopen().durable().await.unwrap();
        writer
            .open_calls(&[answered(4)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        writer.mark_alive();
        writer.commit().durable().await.unwrap();
        writer.commit().durable().await.unwrap();
        drop(writer);
        std::fs::rename(dir.path().join("cdr.jsonl.1"), dir.path().join("away")).unwrap();

        let (writer, recovered) = CdrWriter::open(&path).unwrap();
        let mut open: Vec<u64> = recovered.iter().map(|c| c.leg.id).collect();
        open.sort();
        assert_eq!(open, [3, 4], "open before and after the rotation");
        let again = writer.close_calls(
            calls[..1].iter().map(|l| (l, 7_000)),
            TerminationReason::Released,
        );
        assert_eq!(again.durable().await.unwrap(), 0, "no second END");
        let back = writer.open_calls(&calls[1..2], StartReason::Found);
        assert_eq!(back.durable().await.unwrap(), 1);
        let records = CdrWriter::read_all(&path).unwrap();
        let last = records.last().unwrap();
        assert_eq!((last.kind, last.resumes), (RecordKind::Resume, Some(5)));
        assert_eq!(last.record, 7, "numbering continues across the rotation");
    }

    /// Rotated without a reopen (or truncated in place): the host would not
    /// know its calls; it refuses to start and says why.
    #[tokio::test]
    async fn a_rotation_without_reopen_stops_the_start_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        writer
            .open_calls(&[answered(1), answered(2)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        writer.mark_alive();
        writer.commit().durable().await.unwrap();
        writer.commit().durable().await.unwrap();
        drop(writer);
        std::fs::rename(&path, dir.path().join("cdr.jsonl.1")).unwrap();
        let err = format!("{:#}", CdrWriter::open(&path).unwrap_err());
        assert!(
            err.contains("ends at record 0, but this host wrote records up to 2")
                && err.contains("rotated without `legsync reopen`"),
            "{err}"
        );
    }

    /// A ledger rotated once (calls 1-3 answered, 1 released, then the
    /// file moved and reopened, then call 4 answered), closed cleanly.
    async fn rotated_once(dir: &Path) -> PathBuf {
        let path = dir.join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        let calls = [answered(1), answered(2), answered(3)];
        writer
            .open_calls(&calls, StartReason::Answered)
            .durable()
            .await
            .unwrap();
        writer
            .close_calls([(&calls[0], 5_000)], TerminationReason::Released)
            .durable()
            .await
            .unwrap();
        std::fs::rename(&path, dir.join("cdr.jsonl.1")).unwrap();
        writer.reopen().durable().await.unwrap();
        writer
            .open_calls(&[answered(4)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        writer.mark_alive();
        writer.commit().durable().await.unwrap();
        writer.commit().durable().await.unwrap();
        path
    }

    fn open_error(path: &Path) -> String {
        format!("{:#}", CdrWriter::open(path).unwrap_err())
    }

    /// The checkpoint is verified, never trusted: torn, altered, stale
    /// (from an earlier rotation) or deleted, the start refuses, naming it.
    #[tokio::test]
    async fn a_damaged_stale_or_missing_checkpoint_stops_the_start_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = rotated_once(dir.path()).await;
        let checkpoint = rotate::checkpoint_path(&path);
        let good = std::fs::read(&checkpoint).unwrap();
        let (_, recovered) = CdrWriter::open(&path).unwrap();
        assert_eq!(recovered.len(), 3, "calls 2, 3 and 4 are open");

        std::fs::write(&checkpoint, &good[..good.len() - 10]).unwrap();
        assert!(
            open_error(&path).contains("is torn"),
            "{}",
            open_error(&path)
        );
        let altered =
            String::from_utf8(good.clone())
                .unwrap()
                .replacen("\"leg\":2", "\"leg\":9", 1);
        std::fs::write(&checkpoint, altered).unwrap();
        assert!(
            open_error(&path).contains("has been altered"),
            "{}",
            open_error(&path)
        );
        std::fs::remove_file(&checkpoint).unwrap();
        let err = open_error(&path);
        assert!(
            err.contains("starts at record 5, but there is no checkpoint")
                && err.contains("records 1 to 4"),
            "{err}"
        );

        // Stale: the checkpoint of the first rotation after a second one.
        std::fs::write(&checkpoint, &good).unwrap();
        let (writer, _) = CdrWriter::open(&path).unwrap();
        std::fs::rename(&path, dir.path().join("cdr.jsonl.2")).unwrap();
        writer.reopen().durable().await.unwrap();
        writer
            .open_calls(&[answered(5)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        drop(writer);
        std::fs::write(&checkpoint, &good).unwrap();
        let err = open_error(&path);
        assert!(err.contains("covers records up to 4 only"), "{err}");
    }

    /// logrotate's `copytruncate`: the file is copied, then cut to nothing
    /// in place while the host writes on. The next start sees the ledger
    /// begin past record 1 with nothing covering the start, and refuses.
    #[tokio::test]
    async fn a_ledger_truncated_in_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        writer
            .open_calls(&[answered(1), answered(2)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        std::fs::copy(&path, dir.path().join("cdr.jsonl.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        writer
            .close_calls([(&answered(1), 5_000)], TerminationReason::Released)
            .durable()
            .await
            .unwrap();
        drop(writer);
        let err = open_error(&path);
        assert!(
            err.contains("starts at record 3") && err.contains("copytruncate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_alive_file_from_the_future_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        writer
            .open_calls(&[answered(1)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        drop(writer);
        let alive = alive_path(&path);
        // 2100-01-01.
        std::fs::write(&alive, "4102444800000 1\n").unwrap();
        let err = open_error(&path);
        assert!(err.contains("after this machine's clock"), "{err}");
        std::fs::write(&alive, "yesterday\n").unwrap();
        let err = open_error(&path);
        assert!(err.contains("is damaged"), "{err}");
        // From before the record it names was written: an old copy.
        std::fs::write(&alive, "1000 1\n").unwrap();
        let err = open_error(&path);
        assert!(
            err.contains("before record 1 it names as durable was written"),
            "{err}"
        );
        std::fs::write(&alive, format!("{} 1\n", now_ms())).unwrap();
        let (_, recovered) = CdrWriter::open(&path).unwrap();
        assert_eq!(recovered.len(), 1);
    }

    /// A crash mid-write can cut a line inside a multi-byte character: the
    /// line is cut at the last newline like any torn line.
    #[tokio::test]
    async fn a_torn_line_cut_inside_a_character_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let mut call = answered(1);
        call.nap = "SIP_ŁÓDŹ".into();
        let (writer, _) = CdrWriter::open(&path).unwrap();
        writer
            .open_calls(&[call.clone()], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        drop(writer);
        let whole = std::fs::read(&path).unwrap();
        let cut = whole.windows(2).position(|w| w == "Ł".as_bytes()).unwrap() + 1;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&whole[..cut]).unwrap();
        drop(file);
        let (_, recovered) = CdrWriter::open(&path).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn bytes are cut off"
        );
    }

    #[tokio::test]
    async fn a_ledger_written_under_another_host_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&path).unwrap();
        writer.set_host("gw-a").unwrap();
        writer
            .open_calls(&[answered(1)], StartReason::Answered)
            .durable()
            .await
            .unwrap();
        drop(writer);
        let (writer, _) = CdrWriter::open(&path).unwrap();
        let err = format!("{:#}", writer.set_host("ip-10-0-0-7").unwrap_err());
        assert!(
            err.contains("written by host `gw-a`, and this host is named `ip-10-0-0-7`")
                && err.contains("name = \"gw-a\""),
            "{err}"
        );
        writer.set_host("gw-a").unwrap();
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
