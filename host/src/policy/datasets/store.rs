//! Where datasets are found, the versions built so far, and what each
//! plugin is granted.

use super::{Dataset, DatasetError, DatasetInfo, DatasetKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// The versions built so far, by file. Weak: a version lives as long as a
/// plugin set holds it (the live set, a shadow set, a resync finishing on
/// the old set), and a reload that finds its file unchanged reuses it
/// instead of building it again.
#[derive(Debug, Default)]
pub struct DatasetStore {
    built: Mutex<HashMap<PathBuf, Built>>,
}

#[derive(Debug)]
struct Built {
    stamp: Stamp,
    dataset: Weak<Dataset>,
}

/// What says a file is unchanged without reading it: size, modification
/// time and inode (a file replaced by a rename has another inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
        }
    }
}

impl DatasetStore {
    /// The datasets `names` from `dir`, for `plugin`: built, or the
    /// version built before when its file has not changed.
    pub fn grant(
        &self,
        dir: &Path,
        plugin: &str,
        names: &[String],
    ) -> Result<Granted, DatasetError> {
        let datasets = names
            .iter()
            .map(|name| self.load(dir, plugin, name))
            .collect::<Result<_, _>>()?;
        Ok(Granted { datasets })
    }

    fn load(&self, dir: &Path, plugin: &str, name: &str) -> Result<Arc<Dataset>, DatasetError> {
        let (path, kind) = find(dir, plugin, name)?;
        let read_error = |error| DatasetError::Read {
            path: path.clone(),
            error,
        };
        let stamp = Stamp::of(&std::fs::metadata(&path).map_err(read_error)?);
        if let Some(dataset) = self.cached(&path, stamp) {
            return Ok(dataset);
        }
        let bytes = std::fs::read(&path).map_err(read_error)?;
        let started = std::time::Instant::now();
        let dataset = Arc::new(super::build::build(name, kind, &path, &bytes)?);
        drop(bytes);
        tracing::info!(
            dataset = name,
            version = dataset.version(),
            entries = dataset.entries(),
            bytes = dataset.bytes(),
            file_bytes = stamp.len,
            build_ms = started.elapsed().as_millis() as u64,
            "dataset built"
        );
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built.insert(
            path,
            Built {
                stamp,
                dataset: Arc::downgrade(&dataset),
            },
        );
        Ok(dataset)
    }

    fn cached(&self, path: &Path, stamp: Stamp) -> Option<Arc<Dataset>> {
        let built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built
            .get(path)
            .filter(|built| built.stamp == stamp)
            .and_then(|built| built.dataset.upgrade())
    }
}

/// The names of the datasets in `dir` (every `NAME.set`, `NAME.map` and
/// `NAME.prefix`), sorted: what `plugin check --datasets DIR` grants.
pub fn names_in(dir: &Path) -> Result<Vec<String>, DatasetError> {
    let read_error = |error| DatasetError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let kind = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(DatasetKind::from_extension);
        if let (Some(_), Some(stem)) = (kind, path.file_stem().and_then(|s| s.to_str())) {
            names.push(stem.to_string());
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The one file of dataset `name` in `dir`, and its kind.
fn find(dir: &Path, plugin: &str, name: &str) -> Result<(PathBuf, DatasetKind), DatasetError> {
    let found: Vec<(PathBuf, DatasetKind)> = ["set", "map", "prefix"]
        .into_iter()
        .map(|extension| dir.join(format!("{name}.{extension}")))
        .filter(|path| path.is_file())
        .filter_map(|path| {
            let kind = DatasetKind::from_extension(path.extension()?.to_str()?)?;
            Some((path, kind))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(DatasetError::Missing {
            plugin: plugin.to_string(),
            name: name.to_string(),
            dir: dir.to_path_buf(),
        }),
        many => Err(DatasetError::Ambiguous {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            files: many
                .iter()
                .map(|(path, _)| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The datasets one plugin may open, in the order its config grants them:
/// a plugin's handle is the position here.
#[derive(Debug, Clone, Default)]
pub struct Granted {
    datasets: Vec<Arc<Dataset>>,
}

impl Granted {
    /// The handle of the dataset named `name`, if granted.
    pub fn handle(&self, name: &str) -> Option<u32> {
        self.datasets
            .iter()
            .position(|d| d.name() == name)
            .map(|i| i as u32)
    }

    pub fn get(&self, handle: u32) -> Option<&Dataset> {
        self.datasets.get(handle as usize).map(Arc::as_ref)
    }

    pub fn is_empty(&self) -> bool {
        self.datasets.is_empty()
    }

    pub fn infos(&self) -> Vec<DatasetInfo> {
        self.datasets.iter().map(|d| d.info()).collect()
    }

    /// `name@version` of each, comma-separated: what a decision's audit
    /// names (`datasets` in `call-leg-sync` lines).
    pub fn versions(&self) -> String {
        self.datasets
            .iter()
            .map(|d| format!("{}@{}", d.name(), d.version()))
            .collect::<Vec<_>>()
            .join(",")
    }
}
