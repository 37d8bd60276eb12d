//! Building a dataset from its file: CSV as people export it (plain text
//! for a set, which is CSV of one column), into an [`fst::Map`] whose
//! outputs index a table of the distinct values.
//!
//! The file is read whole (hashed for its version while it is in memory),
//! its keys copied into one buffer, sorted by index (exports are usually
//! sorted already: then there is nothing to sort), and streamed into the
//! index. A bad line fails the build with its number; nothing half-built
//! is ever served.

use super::{Dataset, DatasetKind, Values};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The largest file (the key buffer is indexed by `u32`).
const MAX_FILE_BYTES: u64 = u32::MAX as u64;

/// Why a dataset cannot be built or granted. Never fatal to a running
/// host: the reload that met it is refused and the working set stays.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read dataset {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error(
        "{}: {bytes} bytes; a dataset file may hold at most {MAX_FILE_BYTES} (split it into several datasets)",
        path.display()
    )]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{}: cannot build its index: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    #[error(
        "plugin {plugin} is granted dataset {name}, but {} has no {name}.set, {name}.map or {name}.prefix",
        dir.display()
    )]
    Missing {
        plugin: String,
        name: String,
        dir: PathBuf,
    },
    #[error("dataset {name} has more than one file in {}: {files}; keep one", dir.display())]
    Ambiguous {
        name: String,
        dir: PathBuf,
        files: String,
    },
}

/// One key while building: where its bytes are in the key buffer, its
/// value's index and its line (for a conflict's message).
#[derive(Clone, Copy)]
struct Entry {
    start: u32,
    len: u32,
    value: u32,
    line: u32,
}

/// Builds the dataset `name` of `kind` from `path`'s content `bytes`.
pub fn build(
    name: &str,
    kind: DatasetKind,
    path: &Path,
    bytes: &[u8],
) -> Result<Dataset, DatasetError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            bytes: bytes.len() as u64,
        });
    }
    let version = crate::policy::cache::hex(&Sha256::digest(bytes))[..16].to_string();
    let line_error = |line: u64, reason: String| DatasetError::Line {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut keys: Vec<u8> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut values = ValueTable::default();
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            line_error(line, format!("not CSV: {e}"))
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        let fields = kind.fields();
        if record.len() != fields {
            let expected = match kind {
                DatasetKind::Set => "1 field (the key)",
                DatasetKind::Map => "2 fields (key,value)",
                DatasetKind::PrefixTable => "2 fields (prefix,value)",
            };
            return Err(line_error(
                line,
                format!("expected {expected}, found {}", record.len()),
            ));
        }
        let key = &record[0];
        if key.is_empty() {
            return Err(line_error(line, "empty key".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(line_error(
                line,
                format!("key of {} bytes; at most {MAX_KEY_BYTES}", key.len()),
            ));
        }
        if std::str::from_utf8(key).is_err() {
            return Err(line_error(line, "the key is not UTF-8".into()));
        }
        let value = match fields {
            1 => 0,
            _ => {
                let value = std::str::from_utf8(&record[1])
                    .map_err(|_| line_error(line, "the value is not UTF-8".into()))?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(line_error(
                        line,
                        format!("value of {} bytes; at most {MAX_VALUE_BYTES}", value.len()),
                    ));
                }
                values.intern(value)
            }
        };
        entries.push(Entry {
            start: keys.len() as u32,
            len: key.len() as u32,
            value,
            line: line.min(u32::MAX as u64) as u32,
        });
        keys.extend_from_slice(key);
    }
    let key = |entry: &Entry| &keys[entry.start as usize..(entry.start + entry.len) as usize];
    if !entries.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
        entries.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.line.cmp(&b.line)));
    }
    let mut builder = fst::MapBuilder::memory();
    let mut last: Option<&Entry> = None;
    let mut distinct = 0u64;
    let index_error = |e: fst::Error| DatasetError::Index {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    for entry in &entries {
        if let Some(last) = last
            && key(last) == key(entry)
        {
            if last.value != entry.value {
                return Err(line_error(
                    entry.line.into(),
                    format!(
                        "key {:?} has the value {:?} here and {:?} on line {}",
                        String::from_utf8_lossy(key(entry)),
                        values.text(entry.value),
                        values.text(last.value),
                        last.line
                    ),
                ));
            }
            continue;
        }
        builder
            .insert(key(entry), entry.value.into())
            .map_err(index_error)?;
        distinct += 1;
        last = Some(entry);
    }
    drop(entries);
    drop(keys);
    let index = fst::Map::new(builder.into_inner().map_err(index_error)?).map_err(index_error)?;
    Ok(Dataset {
        name: name.to_string(),
        kind,
        version,
        entries: distinct,
        file_bytes: bytes.len() as u64,
        index,
        values: values.finish(),
    })
}

/// The distinct values seen so far; value 0 is the empty one (a set's).
struct ValueTable {
    text: String,
    ends: Vec<u32>,
    known: FxHashMap<Box<str>, u32>,
}

impl Default for ValueTable {
    fn default() -> Self {
        let mut table = ValueTable {
            text: String::new(),
            ends: Vec::new(),
            known: FxHashMap::default(),
        };
        table.intern("");
        table
    }
}

impl ValueTable {
    fn intern(&mut self, value: &str) -> u32 {
        if let Some(&index) = self.known.get(value) {
            return index;
        }
        let index = self.ends.len() as u32;
        self.text.push_str(value);
        self.ends.push(self.text.len() as u32);
        self.known.insert(value.into(), index);
        index
    }

    fn text(&self, index: u32) -> &str {
        let index = index as usize;
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.text[start..self.ends[index] as usize]
    }

    fn finish(self) -> Values {
        Values {
            text: self.text.into_boxed_str(),
            ends: self.ends.into_boxed_slice(),
        }
    }
}
