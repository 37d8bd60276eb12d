//! Reference data for plugins: block lists, number portability, rate
//! tables. An operator drops data files in the plugin directory's
//! `datasets/` folder; the host builds each into an immutable finite-state
//! index ([`fst`]), once, off the live path, and shares it read-only with
//! every instance of every plugin granted it (`[policy.plugins.NAME]
//! datasets = [...]`). Plugins look keys up in batches through the
//! contract's `datasets` interface.
//!
//! A dataset's version is the SHA-256 of its file: a reload that finds a
//! file changed builds the new version beside the old and the new plugin
//! set gets it, so every decision sees exactly one version of every
//! dataset. A file that does not build (a bad line, named with its number)
//! fails the reload and the working version stays.
//!
//! - `build`: parsing a file and building its index.
//! - `store`: the folder, the cache of built versions, the grants.
//! - `serve`: the `datasets` interface plugins call.

mod build;
mod serve;
mod store;

pub use build::{DatasetError, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use store::{DatasetStore, Granted, names_in};

/// How a dataset's file reads, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// `NAME.set`: one key per line (a block list).
    Set,
    /// `NAME.map`: `key,value` per line (a ported number and its carrier).
    Map,
    /// `NAME.prefix`: `prefix,value` per line, looked up by the longest
    /// prefix of a key (a destination's rate class).
    PrefixTable,
}

impl DatasetKind {
    /// The kind of a file named `NAME.EXT`, by its extension.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension {
            "set" => Some(DatasetKind::Set),
            "map" => Some(DatasetKind::Map),
            "prefix" => Some(DatasetKind::PrefixTable),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Set => "set",
            DatasetKind::Map => "map",
            DatasetKind::PrefixTable => "prefix-table",
        }
    }

    /// Fields per line: the key, and for a map or a table its value.
    fn fields(self) -> usize {
        match self {
            DatasetKind::Set => 1,
            DatasetKind::Map | DatasetKind::PrefixTable => 2,
        }
    }
}

/// One built version of a dataset: immutable, shared.
pub struct Dataset {
    name: String,
    kind: DatasetKind,
    /// The first 16 hex digits of the file's SHA-256.
    version: String,
    entries: u64,
    /// The file's size, for the memory figure.
    file_bytes: u64,
    /// Key -> index of its value in `values` (0, the empty value, for a set).
    index: fst::Map<Vec<u8>>,
    values: Values,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

/// The distinct values of a dataset, back to back: value `i` is
/// `text[ends[i - 1]..ends[i]]` (from 0 for the first).
#[derive(Default)]
struct Values {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl Values {
    fn get(&self, index: u64) -> &str {
        let index = index as usize;
        let end = self.ends.get(index).copied().unwrap_or(0) as usize;
        let start = match index {
            0 => 0,
            _ => self.ends.get(index - 1).copied().unwrap_or(0) as usize,
        };
        self.text.get(start..end).unwrap_or("")
    }

    fn bytes(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<u32>()
    }
}

/// What a dataset is, for reports: the reload event, `plugin check`,
/// `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub kind: DatasetKind,
    pub version: String,
    pub entries: u64,
    /// The index and its values in memory.
    pub bytes: u64,
    /// The file it was built from.
    pub file_bytes: u64,
}

impl Dataset {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// The version: the first 16 hex digits of the file's SHA-256.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Distinct keys.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// What it holds in memory: the index and the values.
    pub fn bytes(&self) -> u64 {
        (self.index.as_fst().as_bytes().len() + self.values.bytes()) as u64
    }

    pub fn info(&self) -> DatasetInfo {
        DatasetInfo {
            name: self.name.clone(),
            kind: self.kind,
            version: self.version.clone(),
            entries: self.entries,
            bytes: self.bytes(),
            file_bytes: self.file_bytes,
        }
    }

    /// Whether `key` is one of the dataset's keys (exactly).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key` (exactly); `""` for a key of a set.
    pub fn get(&self, key: &[u8]) -> Option<&str> {
        self.index.get(key).map(|value| self.values.get(value))
    }

    /// The longest key of the dataset that is a prefix of `key` (in
    /// bytes: its length), and its value.
    pub fn longest_prefix(&self, key: &[u8]) -> Option<(usize, &str)> {
        use fst::raw::Output;
        let fst = self.index.as_fst();
        let mut node = fst.root();
        let mut output = Output::zero();
        let mut longest = node
            .is_final()
            .then(|| (0, output.cat(node.final_output())));
        for (at, &byte) in key.iter().enumerate() {
            let Some(transition) = node.find_input(byte).map(|i| node.transition(i)) else {
                break;
            };
            output = output.cat(transition.out);
            node = fst.node(transition.addr);
            if node.is_final() {
                longest = Some((at + 1, output.cat(node.final_output())));
            }
        }
        longest.map(|(len, value)| (len, self.values.get(value.value())))
    }
}

#[cfg(test)]
mod tests;
