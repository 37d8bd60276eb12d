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
//! - the latest CARRY, so that the host still knows how far its engine's
//!   epochs went.
//!
//! Its last line is a **seal**: the last record number it covers and a
//! SHA-256 of the lines before it. At open the host verifies the seal and
//! that the ledger file carries on where the checkpoint stops (its first
//! record at most one past the seal's), then replays the checkpoint and the
//! file. A torn, altered, stale (an earlier rotation's) or missing
//! checkpoint, or a file truncated in place (logrotate's `copytruncate`),
//! stops the start with the file named: guessing would lose or double
//! bills. The checkpoint is not billed: `legsync cdr bill` reads the ledger
//! files.

use super::record::{CdrRecord, RecordKind};
use crate::model::IdMap as HashMap;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
/// length of the whole lines read. A torn last line (no newline: a crash
/// mid-write, perhaps inside a multi-byte character) is not counted,
/// whatever bytes it holds.
pub fn replay_lines(
    reader: impl std::io::Read,
    name: &Path,
    mut each: impl FnMut(CdrRecord),
) -> anyhow::Result<u64> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    let (mut number, mut good_len) = (0, 0u64);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", name.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            tracing::warn!(file = %name.display(), line = number, "cutting off a torn last CDR line (a crash mid-write; it was never reported durable)");
            break;
        }
        let record: CdrRecord = serde_json::from_slice(&line)
            .with_context(|| format!("{} line {number} is not a CDR record", name.display()))?;
        each(record);
        good_len += read as u64;
    }
    Ok(good_len)
}

/// The checkpoint's last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealLine {
    checkpoint: Seal,
}

/// What a checkpoint covers, and the checksum that proves it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    /// Every record up to this number is in the checkpoint or was compacted
    /// away; the ledger file goes on from the next one.
    through: u64,
    /// The records (lines) before the seal.
    records: u64,
    /// SHA-256 of those lines, in hex.
    sha256: String,
}

/// A verified checkpoint.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub records: Vec<CdrRecord>,
    /// The last record number it covers; `None` for a checkpoint written
    /// before checkpoints were sealed (trusted once, sealed at the next
    /// rotation).
    pub through: Option<u64>,
}

/// Why a checkpoint cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the checkpoint {file}: {source}")]
    Unreadable {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "the checkpoint {file} is torn (its last line has no newline): it was not written by the host, or the disk lost its end"
    )]
    Torn { file: String },
    #[error(
        "the checkpoint {file} has been altered: its seal's checksum or record count does not match its lines"
    )]
    Altered { file: String },
    #[error("the checkpoint {file} line {line} is not a CDR record ({reason})")]
    NotARecord {
        file: String,
        line: usize,
        reason: String,
    },
}

/// Reads and verifies the checkpoint at `path` (none: an empty one).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let file = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(source) => return Err(CheckpointError::Unreadable { file, source }),
    };
    if bytes.is_empty() {
        return Ok(Checkpoint::default());
    }
    if bytes.last() != Some(&b'\n') {
        return Err(CheckpointError::Torn { file });
    }
    let body_end = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let (body, last) = bytes.split_at(body_end);
    let seal = serde_json::from_slice::<SealLine>(last)
        .ok()
        .map(|l| l.checkpoint);
    // A checkpoint from before seals: every line a record.
    let body = if seal.is_some() { body } else { &bytes[..] };
    let mut records = Vec::new();
    for (i, line) in body.split_inclusive(|&b| b == b'\n').enumerate() {
        let record = serde_json::from_slice(line).map_err(|e| CheckpointError::NotARecord {
            file: file.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        records.push(record);
    }
    let Some(seal) = seal else {
        tracing::warn!(file = %file, "the checkpoint has no seal (written by an older legsync): trusted this once, sealed at the next rotation");
        return Ok(Checkpoint {
            records,
            through: None,
        });
    };
    if seal.records != records.len() as u64 || seal.sha256 != hex_sha256(body) {
        return Err(CheckpointError::Altered { file });
    }
    Ok(Checkpoint {
        records,
        through: Some(seal.through),
    })
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the checkpoint keeps of one leg id's latest call.
#[derive(Default)]
struct Kept {
    end: Option<CdrRecord>,
    /// A START or RESUME after `end`: the call is open.
    open: Option<CdrRecord>,
}

/// Compacts the old checkpoint's records and the rotated ledger file
/// `rotated` into the new checkpoint's records, in record order.
pub fn compact(
    previous: Vec<CdrRecord>,
    rotated: &Path,
    now_ms: u64,
) -> anyhow::Result<Vec<CdrRecord>> {
    let mut kept: HashMap<u64, Kept> = HashMap::default();
    let mut carry: Option<CdrRecord> = None;
    let mut take = |record: CdrRecord| {
        if record.kind == RecordKind::Carry {
            return carry = Some(record);
        }
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
            RecordKind::Carry => unreachable!("a CARRY returns above"),
        }
    };
    previous.into_iter().for_each(&mut take);
    let file = std::fs::File::open(rotated)
        .with_context(|| format!("cannot read {}", rotated.display()))?;
    replay_lines(file, rotated, &mut take)?;
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
        .chain(carry)
        .collect();
    records.sort_by_key(|r| r.record);
    Ok(records)
}

/// Replaces the checkpoint with `records`, covering every record up to
/// `through`, sealed, durably (tmp, fsync, rename, fsync of the directory).
pub fn write_checkpoint(path: &Path, records: &[CdrRecord], through: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("checkpoint.tmp");
    let mut out = Vec::with_capacity(records.len() * 256);
    for record in records {
        record.write_line(&mut out);
    }
    let seal = SealLine {
        checkpoint: Seal {
            through,
            records: records.len() as u64,
            sha256: hex_sha256(&out),
        },
    };
    serde_json::to_writer(&mut out, &seal)?;
    out.push(b'\n');
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
