//! Rotation: the ledger file can be moved away (logrotate) and the host
//! told to reopen it (`legsync reopen`, SIGUSR1). The host must not need
//! the rotated files to know which calls are open and which have ended
//! (that knowledge is what keeps it from a second END or a lost call after
//! a restart), so at each reopen it writes a **checkpoint** beside the
//! ledger: `cdr.jsonl.checkpoint`, the ledger compacted to the records that
//! matter, in the ledger's own format:
//!
//! - for an open call, its latest START or RESUME (with its parties, for
//!   the END a restart may have to write), after its latest END if any;
//! - for an ended call, its latest END, for [`CLOSED_KEPT_MS`] (a call found
//!   alive again later gets a START instead of a RESUME: the bill is the
//!   same, the later END wins).
//!
//! At open the host replays the checkpoint, then the ledger file. The
//! checkpoint is not billed: `legsync cdr bill` reads the ledger files.

use super::record::{CdrRecord, RecordKind};
use crate::model::IdMap as HashMap;
use anyhow::Context;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// How long an ended call is kept in the checkpoint (7 days).
pub const CLOSED_KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The checkpoint beside `ledger`.
pub fn checkpoint_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// Reads whole records of `reader` in order, calling `each`; returns the
/// length of the whole lines read (a torn last line is not counted).
pub fn replay_lines(
    reader: impl std::io::Read,
    name: &Path,
    mut each: impl FnMut(CdrRecord),
) -> anyhow::Result<u64> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut line = String::new();
    let (mut number, mut good_len) = (0, 0u64);
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", name.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            tracing::warn!(file = %name.display(), line = number, "cutting off a torn last CDR line (a crash mid-write; it was never reported durable)");
            break;
        }
        let record: CdrRecord = serde_json::from_str(&line)
            .with_context(|| format!("{} line {number} is not a CDR record", name.display()))?;
        each(record);
        good_len += read as u64;
    }
    Ok(good_len)
}

/// What the checkpoint keeps of one leg id's latest call.
#[derive(Default)]
struct Kept {
    end: Option<CdrRecord>,
    /// A START or RESUME after `end`: the call is open.
    open: Option<CdrRecord>,
}

/// Compacts `sources` (the old checkpoint, then the rotated ledger file)
/// into the checkpoint's records, in record order.
pub fn compact(sources: &[PathBuf], now_ms: u64) -> anyhow::Result<Vec<CdrRecord>> {
    let mut kept: HashMap<u64, Kept> = HashMap::default();
    for source in sources {
        let file = match std::fs::File::open(source) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", source.display())),
        };
        replay_lines(file, source, |record| {
            let entry = kept.entry(record.leg).or_default();
            let same = |r: &CdrRecord| r.key() == record.key();
            // Another call on this id: the old one's history is over.
            if !entry.end.as_ref().or(entry.open.as_ref()).is_none_or(same) {
                *entry = Kept::default();
            }
            match record.kind {
                RecordKind::Start | RecordKind::Resume => entry.open = Some(record),
                RecordKind::End => {
                    entry.end = Some(record);
                    entry.open = None;
                }
            }
        })?;
    }
    let mut records: Vec<CdrRecord> = kept
        .into_values()
        .flat_map(|k| {
            let recent = |end: &CdrRecord| now_ms.saturating_sub(end.time_ms) < CLOSED_KEPT_MS;
            match k.open {
                Some(open) => vec![k.end, Some(open)],
                None => vec![k.end.filter(recent)],
            }
        })
        .flatten()
        .collect();
    records.sort_by_key(|r| r.record);
    Ok(records)
}

/// Replaces the checkpoint with `records`, durably (tmp, fsync, rename,
/// fsync of the directory).
pub fn write_checkpoint(path: &Path, records: &[CdrRecord]) -> anyhow::Result<()> {
    let tmp = path.with_extension("checkpoint.tmp");
    let mut out = Vec::with_capacity(records.len() * 256);
    for record in records {
        record.write_line(&mut out);
    }
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&out)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
