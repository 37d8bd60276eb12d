//! The contract's `datasets` interface, as plugins call it.
//!
//! A look-up reads its keys as spans of one buffer and answers with one
//! buffer of values, each distinct value written once per call: a batch
//! of 1,024 legs is one host call, two allocations in the guest.

use super::{Dataset, DatasetKind};
use crate::policy::bindings::legsync::policy::datasets as wit;
use crate::policy::bindings::wit::TextSpan;
use crate::policy::sandbox::PluginState;
use rustc_hash::FxHashMap;

impl From<DatasetKind> for wit::DatasetKind {
    fn from(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::Set => wit::DatasetKind::Set,
            DatasetKind::Map => wit::DatasetKind::Map,
            DatasetKind::PrefixTable => wit::DatasetKind::PrefixTable,
        }
    }
}

impl wit::Host for PluginState {
    fn open(&mut self, name: String) -> Result<wit::DatasetInfo, String> {
        let granted = self.datasets();
        let Some(handle) = granted.handle(&name) else {
            let message = format!(
                "dataset {name} is not granted to plugin {} (grant it in the host config: [policy.plugins.{}] datasets = [\"{name}\"])",
                self.plugin(),
                self.plugin()
            );
            self.refuse_dataset(name);
            return Err(message);
        };
        let dataset = granted.get(handle).expect("a handle found above");
        Ok(wit::DatasetInfo {
            handle,
            kind: dataset.kind().into(),
            version: dataset.version().to_string(),
            entries: dataset.entries(),
        })
    }

    fn contains(&mut self, dataset: u32, keys: wit::KeyBatch) -> wasmtime::Result<Vec<bool>> {
        let dataset = self.dataset(dataset)?;
        Ok(each_key(&keys).map(|key| dataset.contains(key)).collect())
    }

    fn get(&mut self, dataset: u32, keys: wit::KeyBatch) -> wasmtime::Result<wit::Found> {
        let dataset = self.dataset(dataset)?;
        Ok(answer(&keys, |key| {
            dataset.get(key).map(|value| (key.len(), value))
        }))
    }

    fn longest_prefix(
        &mut self,
        dataset: u32,
        keys: wit::KeyBatch,
    ) -> wasmtime::Result<wit::Found> {
        let dataset = self.dataset(dataset)?;
        Ok(answer(&keys, |key| dataset.longest_prefix(key)))
    }
}

impl PluginState {
    /// The dataset behind `handle`; a handle `open` never gave traps the
    /// call (a plugin bug, not data).
    fn dataset(&self, handle: u32) -> wasmtime::Result<&Dataset> {
        self.datasets()
            .get(handle)
            .ok_or_else(|| wasmtime::format_err!("dataset handle {handle} was never opened"))
    }
}

/// The keys of a batch; a span outside the text reads as empty.
fn each_key(keys: &wit::KeyBatch) -> impl Iterator<Item = &[u8]> {
    keys.keys.iter().map(|span| {
        let start = span.start as usize;
        keys.text
            .get(start..start.saturating_add(span.len as usize))
            .unwrap_or(&[])
    })
}

/// One answer per key from `look_up` (matched bytes, value), each
/// distinct value written once into the answer's text.
fn answer<'d>(
    keys: &wit::KeyBatch,
    look_up: impl Fn(&[u8]) -> Option<(usize, &'d str)>,
) -> wit::Found {
    let mut text = Vec::new();
    let mut written: FxHashMap<(usize, usize), TextSpan> = FxHashMap::default();
    let hits = each_key(keys)
        .map(|key| {
            let (matched, value) = look_up(key)?;
            // Values are slices of the dataset's one value table: where
            // they start and their length name them.
            let at = (value.as_ptr() as usize, value.len());
            let span = *written.entry(at).or_insert_with(|| {
                let span = TextSpan {
                    start: text.len() as u32,
                    len: value.len() as u32,
                };
                text.extend_from_slice(value.as_bytes());
                span
            });
            Some(wit::Hit {
                matched: matched as u32,
                value: span,
            })
        })
        .collect();
    wit::Found { text, hits }
}
