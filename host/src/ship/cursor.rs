//! The shipping cursor: `<ledger>.shipped`, the last record the stream
//! acknowledged, so that a restarted host resumes where it stopped.
//!
//! Written after the acknowledgements (never before), through a temporary
//! file renamed over it: a crash leaves it behind the stream, never ahead.
//! It also holds the stream sequence of that record's message, from which
//! a restarted host reads where the stream stands (see the shipper).

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cursor beside `ledger`.
pub fn cursor_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".shipped");
    PathBuf::from(name)
}

/// What the cursor says: the stream acknowledged `record` and every
/// record before it, of the host `host`, the last in its message
/// `sequence` (0: not known).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub record: u64,
    pub host: String,
    pub sequence: u64,
}

/// Reads the cursor (record 0 when there is none yet), refusing one that
/// is damaged, another host's, or ahead of the ledger's last record.
pub fn read(path: &Path, host: &str, last_record: u64) -> anyhow::Result<Cursor> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursor::default()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the shipping cursor {}", path.display()));
        }
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let cursor = match (words.len(), number(0), number(2)) {
        (2, Some(record), _) => Cursor {
            record,
            host: words[1].to_string(),
            sequence: 0,
        },
        (3, Some(record), Some(sequence)) => Cursor {
            record,
            host: words[1].to_string(),
            sequence,
        },
        _ => anyhow::bail!(
            "the shipping cursor {} is damaged: it must hold the last record the stream acknowledged, the host's name \
             and the message's stream sequence. Remove it: the host then finds where the stream stands and ships from there",
            path.display()
        ),
    };
    anyhow::ensure!(
        cursor.host == host,
        "the shipping cursor {} is host `{}`'s, and this host is named `{host}`: it belongs with another ledger. \
         Remove it to ship this ledger from its first record",
        path.display(),
        cursor.host
    );
    anyhow::ensure!(
        cursor.record <= last_record,
        "the shipping cursor {} says records up to {} were shipped, but the ledger ends at record {last_record}: \
         it belongs with another ledger, or the ledger was replaced. Remove it to ship this ledger from its first record",
        path.display(),
        cursor.record
    );
    Ok(cursor)
}

/// Replaces the cursor (temporary file, fsync, rename).
pub fn write(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(
        file,
        "{} {} {}",
        cursor.record, cursor.host, cursor.sequence
    )?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_read_back_and_a_damaged_foreign_or_ahead_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(&dir.path().join("cdr.jsonl"));
        assert_eq!(
            read(&path, "pri", 0).unwrap(),
            Cursor::default(),
            "none yet"
        );
        let cursor = Cursor {
            record: 42,
            host: "pri".into(),
            sequence: 7,
        };
        write(&path, &cursor).unwrap();
        assert_eq!(read(&path, "pri", 50).unwrap(), cursor);
        let said = read(&path, "alt", 50).unwrap_err().to_string();
        assert!(
            said.contains("host `pri`'s, and this host is named `alt`"),
            "{said}"
        );
        let said = read(&path, "pri", 41).unwrap_err().to_string();
        assert!(said.contains("the ledger ends at record 41"), "{said}");
        std::fs::write(&path, "42\n").unwrap();
        let said = read(&path, "pri", 50).unwrap_err().to_string();
        assert!(said.contains("is damaged"), "{said}");
    }
}
