//! Reading a host's ledger in record order from a record number, across
//! the pieces logrotate leaves beside it.
//!
//! The shipper reads the file it has open to its end; records past it are
//! in a newer piece (the file was moved away and the host reopened a new
//! one at the ledger's path). At start, or when records are in neither,
//! the piece holding a record is found among the files beside the ledger
//! whose names begin with the ledger's (`cdr.jsonl.1`,
//! `cdr.jsonl-20261206`): by their first record numbers, as pieces are
//! consecutive ranges.

use compact_str::CompactString;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the ledger cannot be read from a record on.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    #[error("cannot read {file}: {source}")]
    Unreadable {
        file: String,
        source: std::io::Error,
    },
    #[error("{file} line {line} is not a CDR record: {reason}")]
    Damaged {
        file: String,
        line: u64,
        reason: String,
    },
    /// The file shrank under the reader: cut in place (logrotate's
    /// `copytruncate`), which the host refuses at its next start.
    #[error(
        "{file} shrank to {length} bytes under the shipper, which had read {read}: it was truncated in place (logrotate's `copytruncate`: use `create` and `legsync reopen` instead)"
    )]
    CutInPlace {
        file: String,
        length: u64,
        read: u64,
    },
    /// No file beside the ledger holds the record.
    #[error(
        "record {record} is in no file beside the ledger {ledger}{found}: put the rotated piece that holds it back beside the ledger (uncompressed, its name beginning with the ledger's); shipping waits for it, and ships nothing past it so that the stream never has a hole"
    )]
    Missing {
        record: u64,
        ledger: String,
        /// What was found instead, said for people.
        found: String,
    },
}

/// One record as the shipper sends it: the ledger line itself, and what
/// names it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub record: u64,
    pub engine: CompactString,
    pub host: CompactString,
    pub epoch: u64,
    pub time_ms: u64,
    /// The line as on disk, without its newline.
    pub line: bytes::Bytes,
}

/// The fields of a ledger line that name it (the rest is carried as is).
#[derive(Deserialize)]
struct Head {
    record: u64,
    #[serde(default)]
    engine: CompactString,
    #[serde(default)]
    host: CompactString,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    time_ms: u64,
}

/// Reads a ledger's records in order, from a record number on.
#[derive(Debug)]
pub struct LedgerReader {
    ledger: PathBuf,
    /// The record to read next.
    next: u64,
    piece: Option<Piece>,
}

#[derive(Debug)]
struct Piece {
    path: PathBuf,
    identity: (u64, u64),
    reader: BufReader<File>,
    /// Lines read so far (for errors).
    line: u64,
    /// Bytes read so far (whole lines and the partial one).
    read: u64,
    /// The start of a line the writer has not finished yet.
    partial: Vec<u8>,
}

impl LedgerReader {
    /// A reader whose next record is `next` (found when first read).
    pub fn new(ledger: &Path, next: u64) -> LedgerReader {
        LedgerReader {
            ledger: ledger.to_path_buf(),
            next,
            piece: None,
        }
    }

    /// The record it reads next.
    pub fn next_record(&self) -> u64 {
        self.next
    }

    /// Appends to `out` the records from the next one up to `upto`, at
    /// most `max`; fewer if the disk has no more yet.
    pub fn read(
        &mut self,
        upto: u64,
        max: usize,
        out: &mut Vec<RawRecord>,
    ) -> Result<(), PieceError> {
        let start = out.len();
        while self.next <= upto && out.len() - start < max {
            if self.piece.is_none() {
                self.piece = Some(locate(&self.ledger, self.next)?);
            }
            let piece = self.piece.as_mut().expect("located above");
            match piece.next_line()? {
                Some(record) if record.record < self.next => continue,
                Some(record) if record.record > self.next => {
                    let found = format!(
                        " ({} jumps from record {} to {})",
                        piece.path.display(),
                        self.next - 1,
                        record.record
                    );
                    return Err(self.missing(found));
                }
                Some(record) => {
                    self.next = record.record + 1;
                    out.push(record);
                }
                // This piece is read to its end, and a later one holds the
                // rest if the file was rotated.
                None => {
                    let now = std::fs::metadata(&self.ledger).ok();
                    let moved = now
                        .as_ref()
                        .is_none_or(|m| (m.dev(), m.ino()) != piece.identity);
                    if let Some(length) = now.map(|m| m.len()).filter(|&l| !moved && l < piece.read)
                    {
                        let error = PieceError::CutInPlace {
                            file: piece.path.display().to_string(),
                            length,
                            read: piece.read,
                        };
                        self.piece = None;
                        return Err(error);
                    }
                    if !moved {
                        // Durable records always reach the file first: the
                        // writer is mid-line, read again later.
                        return Ok(());
                    }
                    let finished = piece.identity;
                    let next = locate(&self.ledger, self.next)?;
                    if next.identity == finished {
                        return Err(self.missing(format!(
                            " ({} ends at record {}, and no piece begins after it)",
                            next.path.display(),
                            self.next - 1
                        )));
                    }
                    self.piece = Some(next);
                }
            }
        }
        Ok(())
    }
}

impl LedgerReader {
    fn missing(&mut self, found: String) -> PieceError {
        // Found again from the start next time: the piece may come back.
        self.piece = None;
        PieceError::Missing {
            record: self.next,
            ledger: self.ledger.display().to_string(),
            found,
        }
    }
}

impl Piece {
    fn open(path: &Path) -> Result<Piece, PieceError> {
        let unreadable = |source| PieceError::Unreadable {
            file: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        Ok(Piece {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            read: 0,
            partial: Vec::new(),
        })
    }

    /// The next whole line's record; `None` at the end of what is written.
    fn next_line(&mut self) -> Result<Option<RawRecord>, PieceError> {
        let read = self
            .reader
            .read_until(b'\n', &mut self.partial)
            .map_err(|source| PieceError::Unreadable {
                file: self.path.display().to_string(),
                source,
            })?;
        self.read += read as u64;
        if read == 0 || self.partial.last() != Some(&b'\n') {
            return Ok(None);
        }
        self.line += 1;
        let raw = std::mem::take(&mut self.partial);
        let length = raw.len() - 1;
        let head: Head =
            serde_json::from_slice(&raw[..length]).map_err(|e| PieceError::Damaged {
                file: self.path.display().to_string(),
                line: self.line,
                reason: e.to_string(),
            })?;
        let mut line = bytes::Bytes::from(raw);
        line.truncate(length);
        Ok(Some(RawRecord {
            record: head.record,
            engine: head.engine,
            host: head.host,
            epoch: head.epoch,
            time_ms: head.time_ms,
            line,
        }))
    }

    /// The first record's number (`None` for an empty file), the reader
    /// left at the start.
    fn first_record(&mut self) -> Result<Option<u64>, PieceError> {
        let first = self.next_line()?.map(|r| r.record);
        self.reader
            .rewind()
            .map_err(|source| PieceError::Unreadable {
                file: self.path.display().to_string(),
                source,
            })?;
        self.line = 0;
        self.read = 0;
        self.partial.clear();
        Ok(first)
    }
}

/// Endings of compressed pieces, which the shipper cannot read.
const COMPRESSED: [&str; 4] = [".gz", ".xz", ".zst", ".bz2"];

/// The piece holding record `next`: of the ledger and the pieces beside
/// it, the one whose first record is the highest at or below `next`.
fn locate(ledger: &Path, next: u64) -> Result<Piece, PieceError> {
    let dir = ledger
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = ledger
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut candidates = vec![ledger.to_path_buf()];
    let mut compressed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(&name) else {
                continue;
            };
            if !rest.starts_with(['.', '-', '_']) || crate::cdr::bill::sidecar(rest).is_some() {
                continue;
            }
            if COMPRESSED.iter().any(|s| rest.ends_with(s)) {
                compressed.push(file);
                continue;
            }
            candidates.push(entry.path());
        }
    }
    let mut best: Option<(u64, Piece)> = None;
    let mut after: Option<u64> = None;
    for path in candidates {
        let mut piece = match Piece::open(&path) {
            Ok(piece) => piece,
            // The ledger itself may not exist yet (nothing written).
            Err(_) if path == ledger => continue,
            Err(e) => return Err(e),
        };
        let Some(first) = piece.first_record()? else {
            continue;
        };
        if first > next {
            after = Some(after.map_or(first, |a| a.min(first)));
        } else if best.as_ref().is_none_or(|(b, _)| first > *b) {
            best = Some((first, piece));
        }
    }
    // A piece that starts below `next` holds it unless the pieces between
    // are gone: then its records stop short, which reading finds out
    // (records are consecutive); say which is missing here already when
    // nothing starts at or below it.
    match best {
        Some((_, piece)) => Ok(piece),
        None => Err(PieceError::Missing {
            record: next,
            ledger: ledger.display().to_string(),
            found: describe(after, &compressed),
        }),
    }
}

fn describe(after: Option<u64>, compressed: &[String]) -> String {
    let mut found = match after {
        Some(first) => format!(" (the pieces there begin at record {first})"),
        None => String::new(),
    };
    if !compressed.is_empty() {
        found.push_str(&format!(
            "; compressed pieces are not read ({}): decompress the one holding it",
            compressed.join(", ")
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::CdrWriter;
    use crate::cdr::record::StartReason;

    /// `count` STARTs, durable.
    async fn write(writer: &CdrWriter, from: u64, count: u64) {
        let legs: Vec<_> = (from..from + count)
            .map(|id| crate::model::test_leg(id, 1_000))
            .collect();
        writer
            .open_calls(&legs, StartReason::Found)
            .durable()
            .await
            .unwrap();
    }

    fn numbers(records: &[RawRecord]) -> Vec<u64> {
        records.iter().map(|r| r.record).collect()
    }

    #[tokio::test]
    async fn reads_on_across_a_rotation_and_from_a_rotated_piece_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&ledger).unwrap();
        write(&writer, 1, 3).await;
        let mut reader = LedgerReader::new(&ledger, 2);
        let mut out = Vec::new();
        reader.read(3, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [2, 3], "from the record asked");
        // Rotated while the reader holds the file: 4 goes to the moved
        // piece, 5 and 6 to the new file.
        write(&writer, 4, 1).await;
        std::fs::rename(&ledger, dir.path().join("cdr.jsonl-1")).unwrap();
        writer.reopen().durable().await.unwrap();
        write(&writer, 5, 2).await;
        out.clear();
        reader.read(6, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [4, 5, 6]);
        assert!(out.iter().all(|r| !r.line.ends_with(b"\n")));
        // A restart behind the rotation finds record 2 in the piece.
        let mut restarted = LedgerReader::new(&ledger, 2);
        out.clear();
        restarted.read(6, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [2, 3, 4, 5, 6]);
        // At most `max`, and nothing past `upto`.
        let mut limited = LedgerReader::new(&ledger, 1);
        out.clear();
        limited.read(5, 2, &mut out).unwrap();
        assert_eq!(numbers(&out), [1, 2]);
        limited.read(5, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_missing_piece_is_named_and_a_half_written_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("cdr.jsonl");
        let (writer, _) = CdrWriter::open(&ledger).unwrap();
        write(&writer, 1, 2).await;
        std::fs::rename(&ledger, dir.path().join("cdr.jsonl-1.gz")).unwrap();
        writer.reopen().durable().await.unwrap();
        write(&writer, 3, 1).await;
        let mut out = Vec::new();
        let error = LedgerReader::new(&ledger, 1)
            .read(3, 100, &mut out)
            .unwrap_err();
        assert!(
            matches!(error, PieceError::Missing { record: 1, .. }),
            "{error}"
        );
        let said = error.to_string();
        assert!(
            said.contains("begin at record 3") && said.contains("cdr.jsonl-1.gz"),
            "{said}"
        );

        // A line the writer has not finished is not read, then is.
        let mut reader = LedgerReader::new(&ledger, 3);
        reader.read(3, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [3]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&ledger)
            .unwrap();
        let line = std::fs::read_to_string(&ledger)
            .unwrap()
            .replace("\"record\":3", "\"record\":4");
        let (head, tail) = line.split_at(20);
        std::io::Write::write_all(&mut file, head.as_bytes()).unwrap();
        out.clear();
        reader.read(4, 100, &mut out).unwrap();
        assert!(out.is_empty(), "half a line is not a record");
        std::io::Write::write_all(&mut file, tail.as_bytes()).unwrap();
        reader.read(4, 100, &mut out).unwrap();
        assert_eq!(numbers(&out), [4]);

        // Cut in place under the reader.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ledger)
            .unwrap()
            .set_len(0)
            .unwrap();
        let error = reader.read(5, 100, &mut out).unwrap_err();
        assert!(matches!(error, PieceError::CutInPlace { .. }), "{error}");
    }
}
