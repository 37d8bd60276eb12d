//! The CDR file: append-only, one JSON record per line.
//!
//! - [`record`]: the records and the per-call index (END / RESUME rules).
//! - The writer below: a dedicated thread appends batches and fsyncs once
//!   per batch; a caller's records are durable when its `await` returns. At
//!   open, a torn last line (a crash mid-write) is cut off and the index is
//!   rebuilt from the file, so a restart never duplicates a record.

pub mod record;

use crate::model::{CallLeg, TerminationReason};
use anyhow::Context;
use record::{CdrIndex, CdrRecord};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct Batch {
    lines: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Appends CDR records durably.
#[derive(Clone)]
pub struct CdrWriter {
    path: PathBuf,
    index: Arc<Mutex<CdrIndex>>,
    batches: std::sync::mpsc::Sender<Batch>,
}

impl std::fmt::Debug for CdrWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl CdrWriter {
    /// Opens (or creates) the CDR file, repairs a torn last line, and
    /// rebuilds the index from its records.
    pub fn open(path: &Path) -> anyhow::Result<CdrWriter> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the CDR file {}", path.display()))?;
        let mut index = CdrIndex::default();
        let mut good_len = 0u64;
        let mut reader = std::io::BufReader::new(&file);
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
            good_len += read as u64;
        }
        drop(reader);
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        file.seek(std::io::SeekFrom::End(0))?;
        let (batches, receiver) = std::sync::mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("legsync-cdr".into())
            .spawn(move || write_loop(file, receiver))
            .context("cannot start the CDR writer thread")?;
        Ok(CdrWriter {
            path: path.to_path_buf(),
            index: Arc::new(Mutex::new(index)),
            batches,
        })
    }

    /// Writes END records for the answered legs among `ended` (legs without
    /// an answer have nothing to bill; calls that already have an END are
    /// skipped). Returns the records, durable.
    pub async fn end(
        &self,
        ended: &[CallLeg],
        reason: TerminationReason,
        end_ms: u64,
    ) -> anyhow::Result<Vec<CdrRecord>> {
        let records: Vec<CdrRecord> = {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            ended
                .iter()
                .filter_map(|leg| index.end(leg, reason, end_ms))
                .collect()
        };
        self.append(records).await
    }

    /// Writes RESUME records for re-adopted legs whose calls had an END.
    pub async fn resume<'a>(
        &self,
        legs: impl IntoIterator<Item = &'a CallLeg>,
    ) -> anyhow::Result<Vec<CdrRecord>> {
        let records: Vec<CdrRecord> = {
            let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
            legs.into_iter()
                .filter_map(|leg| index.resume(leg))
                .collect()
        };
        self.append(records).await
    }

    async fn append(&self, records: Vec<CdrRecord>) -> anyhow::Result<Vec<CdrRecord>> {
        if records.is_empty() {
            return Ok(records);
        }
        let mut lines = Vec::with_capacity(records.len() * 200);
        for record in &records {
            serde_json::to_writer(&mut lines, record)?;
            lines.push(b'\n');
        }
        let (done, written) = oneshot::channel();
        self.batches
            .send(Batch { lines, done })
            .map_err(|_| anyhow::anyhow!("the CDR writer thread is gone"))?;
        written
            .await
            .context("the CDR writer thread is gone")?
            .with_context(|| format!("cannot write the CDR file {}", self.path.display()))?;
        Ok(records)
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

/// The writer thread: takes every batch waiting, writes them, one fsync,
/// then acknowledges them all.
fn write_loop(mut file: std::fs::File, batches: std::sync::mpsc::Receiver<Batch>) {
    while let Ok(first) = batches.recv() {
        let mut group = vec![first];
        group.extend(batches.try_iter());
        let mut result = Ok(());
        for batch in &group {
            if result.is_ok() {
                result = file.write_all(&batch.lines);
            }
        }
        if result.is_ok() {
            result = file.sync_data();
        }
        for batch in group {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = batch.done.send(outcome);
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
        let writer = CdrWriter::open(&path).unwrap();
        let ended = [answered(1), answered(2)];
        assert_eq!(
            writer
                .end(&ended, TerminationReason::GraceExpired, 5_000)
                .await
                .unwrap()
                .len(),
            2
        );
        drop(writer);
        // A crash mid-write leaves half a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"record\":3,\"kind\":\"en").unwrap();
        drop(file);

        let writer = CdrWriter::open(&path).unwrap();
        assert!(
            writer
                .end(&ended, TerminationReason::GraceExpired, 6_000)
                .await
                .unwrap()
                .is_empty(),
            "already ended: not written twice"
        );
        let resumed = writer.resume(&[answered(1)]).await.unwrap();
        assert_eq!(resumed[0].record, 3, "numbering continues after the cut");
        let records = CdrWriter::read_all(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].resumes, Some(1));
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
